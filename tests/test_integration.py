"""Tests of femlib.integration: exact pixel splitting, the azimuth convention, pyFAI
cross-checks, the streaming engine and its bad input.

Every reference here is independent of femlib's geometry code: closed-form annular-sector
areas, pyxem's and pyFAI's numbers, and a super-sampled overlap written in this file (the
pixel is sampled on an n x n grid of sub-pixel centres, transformed and binned with plain
numpy; its error is measured against the closed forms below and bounded by a margin).
"""

import re
import warnings

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from pyFAI.detectors import Detector
from pyFAI.integrator.azimuthal import AzimuthalIntegrator

from femlib import integration as I
from femlib import moments

SHAPE = (96, 112)  # rows, columns: non-square on purpose
CENTER = (55.3, 47.6)  # x, y pixels, off-centre and non-integer


def rotated_affine(stretch=1.05, angle=0.6):
    """A 5 % stretch along a direction at ``angle`` to +x (what an ellipse fit gives)."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    a = np.eye(3)
    a[:2, :2] = rot @ np.diag([stretch, 1.0]) @ rot.T
    return a


AFFINE = rotated_affine()


# ------------------------------------------------------------------ independent geometry
def corrected(x, y, center, affine=None, scale=(1.0, 1.0)):
    """``(u, v) = diag(scale) A (p - c)`` written out here, not taken from femlib."""
    d = np.stack([np.asarray(x, float) - center[0], np.asarray(y, float) - center[1]])
    lin = np.eye(2) if affine is None else np.asarray(affine)[:2, :2]
    u, v = np.tensordot(lin, d, axes=1)
    return u * scale[0], v * scale[1]


def pyxem_azimuth(u, v):
    """pyxem's azimuth: 0 along +x, counter-clockwise on screen (toward -y, rows up)."""
    return np.arctan2(-v, u)


def sector_area(redges, aedges, affine=None, scale=(1.0, 1.0)):
    """Closed-form area of every annular sector in detector pixels: dphi/2 (r2^2 - r1^2)/|det|."""
    lin = np.eye(2) if affine is None else np.asarray(affine)[:2, :2]
    det = abs(np.linalg.det(np.diag(scale) @ lin))
    return 0.5 * np.diff(np.square(redges))[:, None] * np.diff(aedges)[None, :] / det


def disk_on_detector(radius, shape, center, affine=None, scale=(1.0, 1.0)):
    """True if the whole corrected disk of ``radius`` maps inside the detector."""
    lin = np.eye(2) if affine is None else np.asarray(affine)[:2, :2]
    inv = np.linalg.inv(np.diag(scale) @ lin)
    ext_x, ext_y = radius * np.linalg.norm(inv, axis=1)  # half-widths of the ellipse
    ny, nx = shape
    return (
        center[0] - ext_x >= -0.5
        and center[0] + ext_x <= nx - 0.5
        and center[1] - ext_y >= -0.5
        and center[1] + ext_y <= ny - 0.5
    )


def supersampled_columns(pixels, shape, center, redges, aedges, affine=None, n=256):
    """Overlap fractions of some pixels with every bin by n x n sub-pixel sampling.

    Returns an array (len(pixels), K) with K = (len(redges) - 1) * (len(aedges) - 1),
    bins radius-major; the azimuth is taken modulo 2 pi into ``aedges``' interval.
    """
    npt, na = len(redges) - 1, len(aedges) - 1
    off = (np.arange(n) + 0.5) / n - 0.5
    oy, ox = np.meshgrid(off, off, indexing="ij")
    out = np.zeros((len(pixels), npt * na))
    for m, p in enumerate(pixels):
        row, col = divmod(int(p), shape[1])
        u, v = corrected(col + ox.ravel(), row + oy.ravel(), center, affine)
        r = np.hypot(u, v)
        phi = pyxem_azimuth(u, v)
        phi = aedges[0] + np.mod(phi - aedges[0], 2 * np.pi)
        ir = np.searchsorted(redges, r, side="right") - 1
        ia = np.searchsorted(aedges, phi, side="right") - 1
        ok = (ir >= 0) & (ir < npt) & (ia >= 0) & (ia < na)
        out[m] = np.bincount(ir[ok] * na + ia[ok], minlength=npt * na) / n**2
    return out


def smooth_pattern(shape=SHAPE, center=CENTER, affine=None):
    """A ring on a background with gradients along x and y (breaks every symmetry)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    u, v = corrected(xx, yy, center, affine)
    r = np.hypot(u, v)
    return 100.0 + 60.0 * np.exp(-(((r - 30.0) / 7.0) ** 2)) + 0.2 * u - 0.3 * v


# =========================================================== exact areas (issue 12)
@pytest.mark.parametrize("affine", [None, AFFINE], ids=["identity", "affine"])
@pytest.mark.parametrize("scale", [(1.0, 1.0), (0.02, 0.02)])
def test_every_sector_on_the_detector_has_its_exact_area(affine, scale):
    sc = np.asarray(scale)
    rr = (0.0, 40.0 * sc[0])
    w = I.build_weights(
        SHAPE, CENTER, affine=affine, scale=scale, npt=40, npt_azim=90, radial_range=rr
    )
    assert disk_on_detector(rr[1], SHAPE, CENTER, affine, scale)  # all 3600 sectors
    exact = sector_area(w.radial_edges, w.azimuth_edges, affine, scale).ravel()
    rel = np.abs(w.area / exact - 1)
    assert rel.max() < 1e-6, rel.max()  # measured 2e-13 (the issue asks 1e-6)
    np.testing.assert_allclose(w.coverage, 1.0, rtol=1e-6)


@pytest.mark.parametrize("affine", [None, AFFINE], ids=["identity", "affine"])
def test_whole_rings_have_their_exact_area(affine):
    w = I.build_weights(SHAPE, CENTER, affine=affine, npt=37, radial_range=(0.0, 42.0))
    assert disk_on_detector(42.0, SHAPE, CENTER, affine)
    exact = sector_area(w.radial_edges, [0, 2 * np.pi], affine).ravel()
    np.testing.assert_allclose(w.area, exact, rtol=1e-9, atol=0)


@pytest.mark.parametrize("affine", [None, AFFINE], ids=["identity", "affine"])
@pytest.mark.parametrize("npt_azim", [1, 2, 11])
def test_flux_conservation(affine, npt_azim):
    rng = np.random.default_rng(3)
    img = rng.random(SHAPE) * 100
    mask = np.zeros(SHAPE, bool)
    mask[40:50, 10:60] = True
    w = I.build_weights(SHAPE, CENTER, affine=affine, npt=37, npt_azim=npt_azim, mask=mask)
    total = I.integrate(img, w).sum()
    np.testing.assert_allclose(total, img[~mask].sum(), rtol=1e-9)
    # Every unmasked pixel's weights sum to 1 over the full range; masked pixels weigh 0.
    col = np.asarray(w.matrix.sum(axis=0)).ravel()
    np.testing.assert_allclose(col[~mask.ravel()], 1.0, atol=1e-9)
    assert np.all(col[mask.ravel()] == 0)


def test_subrange_flux_is_the_annulus_area():
    w = I.build_weights(SHAPE, CENTER, npt=10, radial_range=(10.0, 30.0))
    # Pixel splitting: the weighted sum of ones is the annulus area in pixels.
    total = I.integrate(np.ones(SHAPE), w).sum()
    np.testing.assert_allclose(total, np.pi * (30**2 - 10**2), rtol=1e-12)


def test_pyxem_equal_sector_areas():
    # pyxem's test_get_slices_and_factors: 100 x 100 detector, scale 0.1, centred,
    # 100 radial x 360 azimuthal bins over (0, 4) and (0, 2 pi): the sectors of one ring
    # have equal areas to 0.01 px^2 and the disk has area pi 40^2 px^2 (atol 1 there).
    w = I.build_weights(
        (100, 100),
        (49.5, 49.5),
        scale=0.1,
        npt=100,
        npt_azim=360,
        radial_range=(0, 4),
        azimuth_range=(0, 2 * np.pi),
    )
    areas = w.area.reshape(100, 360)
    spread = areas.max(axis=1) - areas.min(axis=1)
    assert spread.max() < 0.01
    assert spread.max() < 1e-11  # measured 5e-13: exact up to rounding
    np.testing.assert_allclose(areas.sum(), np.pi * 40**2, rtol=1e-12)


@pytest.mark.parametrize("affine", [None, AFFINE], ids=["identity", "affine"])
def test_partial_overlaps_match_supersampling(affine):
    # Pixels straddling bin edges, near the centre (many azimuth bins per pixel) and at
    # the detector edge, against 256 x 256 sub-pixel sampling. The sampling error of a
    # fraction is below 4 / 256 of the edge length inside the pixel; measured 1e-3.
    center = (20.3, 17.8)
    shape = (40, 44)
    redges = np.linspace(0.0, 26.0, 27)
    aedges = np.linspace(-np.pi, np.pi, 25)
    w = I.build_weights(
        shape, center, affine=affine, npt=26, npt_azim=24, radial_range=(0.0, 26.0)
    )
    rng = np.random.default_rng(11)
    near = [18 * 44 + 20, 17 * 44 + 20, 18 * 44 + 21, 17 * 44 + 19]  # around the centre
    pixels = np.concatenate([near, rng.choice(shape[0] * shape[1], 60, replace=False)])
    ref = supersampled_columns(pixels, shape, center, redges, aedges, affine)
    ours = w.matrix[:, pixels].toarray().T
    assert np.abs(ours - ref).max() < 2e-3
    assert (ours > 0).sum(axis=1).max() >= 12  # the centre pixels do split over many bins


def test_sector_wider_than_pi_and_whole_circle():
    # One azimuthal bin over 3/2 of the circle: the wedge is not convex.
    rr = (0.0, 40.0)
    wide = I.build_weights(SHAPE, CENTER, npt=8, radial_range=rr, azimuth_range=(0, 1.5 * np.pi))
    exact = sector_area(wide.radial_edges, [0, 1.5 * np.pi]).ravel()
    np.testing.assert_allclose(wide.area, exact, rtol=1e-9)
    # npt_azim=2: two half-planes.
    halves = I.build_weights(SHAPE, CENTER, npt=8, npt_azim=2, radial_range=rr)
    np.testing.assert_allclose(halves.area, np.repeat(exact / 3 * 2, 2), rtol=1e-9)
    # A restricted range and its complement add up to the whole ring, pixel by pixel.
    rest = I.build_weights(
        SHAPE, CENTER, npt=8, radial_range=rr, azimuth_range=(1.5 * np.pi, 2 * np.pi)
    )
    ring = I.build_weights(SHAPE, CENTER, npt=8, radial_range=rr)
    diff = (wide.matrix + rest.matrix - ring.matrix).toarray()
    assert np.abs(diff).max() < 1e-12


def test_masked_pixels_weigh_nothing_and_partial_bins_show_coverage():
    mask = np.zeros(SHAPE, bool)
    mask[:, :30] = True
    w = I.build_weights(SHAPE, CENTER, npt=30, mask=mask)  # to the corner: outer bins cut
    assert w.matrix[:, np.flatnonzero(mask)].nnz == 0
    assert w.coverage.min() < 0.3 and w.coverage.max() < 1 + 1e-9
    out = I.integrate(np.full(SHAPE, 7.0), w, mean=True)
    covered = w.area > 0
    np.testing.assert_allclose(out[covered], 7.0, rtol=1e-12)


@pytest.mark.parametrize("corner", [(0, 0), (0, -1), (-1, 0), (-1, -1)])
def test_every_corner_pixel_is_integrated(corner):
    img = np.zeros(SHAPE)
    img[corner] = 1.0
    w = I.build_weights(SHAPE, CENTER, npt=60)
    out = I.integrate(img, w)
    assert out.sum() == pytest.approx(1.0, abs=1e-12)
    row, col = np.array(corner) % SHAPE
    r = np.hypot(col - CENTER[0], row - CENTER[1])
    k = np.average(w.radial_centers, weights=out)
    assert abs(k - r) < 1.0


# ================================================================= pyFAI cross-checks
PS = 1e-4  # pyFAI pixel size (m); r_mm = pixels * 0.1


def _pyfai(shape=SHAPE, center=CENTER):
    det = Detector(pixel1=PS, pixel2=PS, max_shape=shape)
    # pyFAI's pixel i spans [i, i+1] * pixel size: our centre c is at (c + 0.5) there.
    return AzimuthalIntegrator(
        dist=0.1, poni1=(center[1] + 0.5) * PS, poni2=(center[0] + 0.5) * PS, detector=det
    )


def test_agrees_with_pyfai_1d_full_splitting():
    img = smooth_pattern()
    npt, rr = 40, (8.0, 44.0)
    # pyFAI shares pixels straddling the ends of its radial range differently (its edge
    # bins are off by up to 3e-3): ask it for two extra bins per side, compare the rest.
    dr = (rr[1] - rr[0]) / npt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _pyfai().integrate1d(
            img,
            npt + 4,
            unit="r_mm",
            radial_range=((rr[0] - 2 * dr) * 0.1, (rr[1] + 2 * dr) * 0.1),
            method=("full", "csr", "cython"),
            correctSolidAngle=False,
        )
    ref_r, ref_i, ref_n = (a[2:-2] for a in (ref.radial, ref.intensity, ref.count))
    w = I.build_weights(SHAPE, CENTER, npt=npt, radial_range=rr)
    ours = I.integrate(img, w, mean=True)
    np.testing.assert_allclose(w.radial_centers, ref_r * 10, rtol=0, atol=1e-4)
    assert (ref_n >= 10).all()
    rel = np.abs(ours / ref_i - 1)
    assert rel.max() < 1e-3, rel.max()  # measured 5e-5


def test_agrees_with_pyfai_2d_full_splitting():
    img = smooth_pattern()
    npt, npt_azim, rr = 40, 36, (4.0, 44.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _pyfai().integrate2d(
            img,
            npt,
            npt_azim,
            unit="r_mm",
            radial_range=(rr[0] * 0.1, rr[1] * 0.1),
            azimuth_range=(-180, 180),
            method=("full", "csr", "cython"),
            correctSolidAngle=False,
        )
    w = I.build_weights(SHAPE, CENTER, npt=npt, npt_azim=npt_azim, radial_range=rr)
    ours = I.integrate(img, w, mean=True)
    # pyFAI's chi runs clockwise on screen, pyxem's (and femlib's) azimuth the other way:
    # femlib's bin j is pyFAI's bin npt_azim - 1 - j over the same (-180, 180) range.
    np.testing.assert_allclose(-w.azimuth_centers[::-1], np.deg2rad(ref.azimuthal), atol=1e-6)
    np.testing.assert_allclose(w.radial_centers, ref.radial * 10, atol=1e-4)
    rel = np.abs(ours[:, ::-1] / ref.intensity.T - 1)
    assert np.all(w.coverage > 1 - 1e-9)  # every bin wholly on the detector
    interior = rel[1:-1]
    assert interior.max() < 1e-3, interior.max()  # measured 7e-4
    # pyFAI's first and last radial bins (pixels straddling the range ends) are further
    # off: measured 2.2e-3 and 4.7e-3 (documented in the geometry page).
    assert rel[[0, -1]].max() < 1e-2


# ======================================================== azimuth as pyxem (issue 18)
def _one_pixel(shape, row, col):
    img = np.zeros(shape)
    img[row, col] = 1.0
    return img


@pytest.mark.parametrize(
    "pixel, expected",
    [
        ((40, 65), 0.0),  # (row, col) right of the centre (50, 40): +x
        ((25, 50), np.pi / 2),  # above (smaller row): counter-clockwise on screen
        ((40, 35), np.pi),  # left
        ((55, 50), -np.pi / 2),  # below
    ],
)
def test_azimuth_zero_along_plus_x_counter_clockwise_on_screen(pixel, expected):
    row, col = pixel
    w = I.build_weights(SHAPE, (50.0, 40.0), npt=4, npt_azim=8, radial_range=(5, 25))
    out = I.integrate(_one_pixel(SHAPE, row, col), w).sum(axis=0)  # over radius
    phi = np.angle(np.sum(out * np.exp(1j * w.azimuth_centers)))
    assert abs(np.angle(np.exp(1j * (phi - expected)))) < 0.3


@pytest.mark.parametrize(
    "azimuth_range, expected",
    [
        ((0 * np.pi / 2, 1 * np.pi / 2), 1),
        ((1 * np.pi / 2, 2 * np.pi / 2), 0),
        ((2 * np.pi / 2, 3 * np.pi / 2), 2),
        ((3 * np.pi / 2, 4 * np.pi / 2), 3),
    ],
)
def test_pyxem_quadrants(azimuth_range, expected):
    # pyxem's test_azimuthal_integration_range: the image [[0, 1], [2, 3]] centred in the
    # middle unwraps counter-clockwise from +x as 1, 0, 2, 3 over [0, 2 pi). (10 is added
    # so that the quadrant holding 0 is told from the bins off the detector.)
    data = np.arange(4.0).reshape(2, 2) + 10
    w = I.build_weights((2, 2), (0.5, 0.5), npt=10, npt_azim=10, azimuth_range=azimuth_range)
    out = I.integrate(data, w, mean=True)
    assert (out != 0).sum() > 20
    np.testing.assert_allclose(out[out != 0], expected + 10, rtol=1e-12)


def test_ranges_in_minus_pi_pi_and_zero_two_pi_agree():
    img = smooth_pattern()
    a = I.build_weights(SHAPE, CENTER, npt=12, npt_azim=8, radial_range=(5, 40))
    b = I.build_weights(
        SHAPE, CENTER, npt=12, npt_azim=8, radial_range=(5, 40), azimuth_range=(0, 2 * np.pi)
    )
    # (-pi, pi) in 8 bins is (0, 2 pi) rolled by 4 bins.
    np.testing.assert_allclose(
        np.roll(I.integrate(img, a), -4, axis=1), I.integrate(img, b), rtol=1e-12
    )
    np.testing.assert_allclose(b.azimuth_centers, (np.arange(8) + 0.5) * np.pi / 4)
    # The same sector given either way.
    c = I.build_weights(SHAPE, CENTER, npt=12, radial_range=(5, 40), azimuth_range=(-3, -1))
    d = I.build_weights(
        SHAPE, CENTER, npt=12, radial_range=(5, 40), azimuth_range=(2 * np.pi - 3, 2 * np.pi - 1)
    )
    np.testing.assert_allclose(I.integrate(img, c), I.integrate(img, d), rtol=1e-9)


def test_azimuth_range_restricts_integration():
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    right = (xx > CENTER[0] + 0.5).astype(float)
    up = (yy < CENTER[1] - 0.5).astype(float)
    kw = {"npt": 8, "radial_range": (5, 30)}
    half = np.pi / 2 - 0.1
    w_right = I.build_weights(SHAPE, CENTER, azimuth_range=(-half, half), **kw)
    w_left = I.build_weights(SHAPE, CENTER, azimuth_range=(np.pi / 2 + 0.1, np.pi), **kw)
    w_up = I.build_weights(SHAPE, CENTER, azimuth_range=(0.1, np.pi - 0.1), **kw)
    np.testing.assert_allclose(I.integrate(right, w_right, mean=True), 1.0, atol=1e-12)
    np.testing.assert_allclose(I.integrate(right, w_left, mean=True), 0.0, atol=1e-12)
    np.testing.assert_allclose(I.integrate(up, w_up, mean=True), 1.0, atol=1e-12)
    exact = sector_area(w_up.radial_edges, [0.1, np.pi - 0.1]).ravel()
    np.testing.assert_allclose(w_up.area, exact, rtol=1e-9)


# ================================================================== guards (issue 18)
def test_float16_frames_are_read_as_float32():
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 50, size=(3,) + SHAPE).astype(np.float16)
    w = I.build_weights(SHAPE, CENTER, npt=10, radial_range=(2, 40))
    ref = I.integrate(frames.astype(np.float32), w)
    np.testing.assert_array_equal(I.integrate(frames, w), ref)
    lazy = I.integrate_dask(da.from_array(frames, chunks=(1,) + SHAPE), w).compute()
    np.testing.assert_array_equal(lazy, ref)
    assert I.as_native_frames(frames, SHAPE).dtype == np.float32


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"npt": "10"}, "npt"),
        ({"npt": None}, "npt"),
        ({"npt": 10, "npt_azim": "4"}, "npt_azim"),
        ({"npt": 10, "radial_range": ("3", "5")}, "radial_range"),
        ({"npt": 10, "radial_range": (3, None)}, "radial_range"),
        ({"npt": 10, "radial_range": "35"}, "radial_range"),
        ({"npt": 10, "azimuth_range": ("0", "1")}, "azimuth_range"),
        ({"npt": 10, "azimuth_range": [[0, 1], 2]}, "azimuth_range"),
    ],
)
def test_non_numeric_arguments_raise_type_error(kwargs, name):
    with pytest.raises(TypeError, match=rf"^{name} must be a"):
        I.build_weights(SHAPE, CENTER, **kwargs)


@pytest.mark.parametrize("npt, npt_azim", [(10**6, 1), (1000, 10**5), (5000, 5000)])
def test_huge_npt_is_refused_with_a_readable_message(npt, npt_azim):
    I._CACHE.clear()
    with pytest.raises(ValueError, match=r"npt=\d+, npt_azim=\d+ (would give|asks for)") as e:
        I.build_weights((256, 256), (127.5, 127.5), npt=npt, npt_azim=npt_azim)
    assert "fewer bins" in str(e.value)


def test_many_bins_that_fit_are_accepted():
    # Bins of 1/20 pixel still build (about 1.3e6 non-zeros).
    w = I.build_weights((64, 64), (31.5, 31.5), npt=640, radial_range=(0, 32))
    assert w.matrix.nnz > 64 * 64 * 20
    exact = sector_area(w.radial_edges, [0, 2 * np.pi]).ravel()
    np.testing.assert_allclose(w.area, exact, rtol=1e-9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"npt": 0}, "npt must be a positive integer, got 0"),
        ({"npt": 2.5}, "npt must be a positive integer, got 2.5"),
        ({"npt": True}, "npt must be a positive integer, got True"),
        ({"npt": 10, "npt_azim": 0}, "npt_azim must be a positive integer"),
        ({"npt": 10, "radial_range": (20, 10)}, "radial_range must be increasing"),
        ({"npt": 10, "radial_range": (5, 500)}, "outside the detector"),
        ({"npt": 10, "radial_range": (-1, 5)}, "outside the detector"),
        ({"npt": 10, "radial_range": (np.nan, 5)}, "finite"),
        ({"npt": 10, "radial_range": (1, 2, 3)}, "a pair of finite numbers"),
        ({"npt": 10, "azimuth_range": (0, 7)}, "lies outside the azimuths"),
        ({"npt": 10, "azimuth_range": (-4, 1)}, "lies outside the azimuths"),
        ({"npt": 10, "azimuth_range": (-1, 4)}, "lies outside the azimuths"),
        ({"npt": 10, "azimuth_range": (1, 1)}, "azimuth_range must be increasing"),
        ({"npt": 10, "mask": np.zeros((5, 5), bool)}, r"mask has shape \(5, 5\)"),
        ({"npt": 10, "mask": np.zeros(SHAPE, float) + 0.5}, "mask must be a boolean"),
    ],
)
def test_bad_input_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        I.build_weights(SHAPE, CENTER, **kwargs)


def test_bad_geometry_errors():
    bw = I.build_weights
    with pytest.raises(ValueError, match="center"):
        bw(SHAPE, (np.nan, 3.0), npt=3)
    with pytest.raises(ValueError, match="affine"):
        bw(SHAPE, CENTER, affine=np.zeros((3, 3)), npt=3)
    with pytest.raises(ValueError, match=re.escape("scale must be finite and non-zero")):
        bw((32, 32), (15.5, 15.5), scale=0)
    with pytest.raises(ValueError, match=re.escape("center must be a 2-vector")):
        bw((32, 32), (1, 2, 3))
    with pytest.raises(ValueError, match=re.escape("affine must be invertible")):
        bw((32, 32), (15.5, 15.5), affine=np.zeros((2, 2)))


# ============================================================== the streaming engine
@pytest.mark.parametrize(
    "dtype", [">u2", "<u2", "uint8", "int32", ">f4", "float16", "float64", "bool"]
)
def test_dtypes_and_byte_orders(dtype):
    rng = np.random.default_rng(5)
    base = rng.integers(0, 2 if dtype == "bool" else 200, size=(3,) + SHAPE)
    w = I.build_weights(SHAPE, CENTER, npt=20, radial_range=(2, 40))
    ref = I.integrate(base.astype(float), w)
    np.testing.assert_allclose(I.integrate(base.astype(dtype), w), ref, rtol=1e-12)


def test_lazy_equals_eager_with_uneven_chunks():
    rng = np.random.default_rng(6)
    data = rng.poisson(20, size=(7, 5) + SHAPE).astype(np.float32)
    w = I.build_weights(SHAPE, CENTER, npt=25, npt_azim=12, radial_range=(3, 40))
    eager = I.integrate(data, w)
    lazy = I.integrate_dask(da.from_array(data, chunks=(3, 2, 50, 60)), w).compute()
    np.testing.assert_array_equal(lazy, eager)
    assert eager.shape == (7, 5, 25, 12)
    # The sums are the matrix product with an independent pixel-by-pixel loop.
    frame = data[3, 1].astype(float).ravel()
    dense = w.matrix.toarray()
    np.testing.assert_allclose(eager[3, 1].ravel(), dense @ frame, rtol=1e-12)


def test_weights_are_cached_per_geometry():
    a = I.build_weights(SHAPE, CENTER, npt=20)
    assert I.build_weights(SHAPE, CENTER, npt=20) is a
    mask = np.zeros(SHAPE, bool)
    mask[0, 0] = True
    b = I.build_weights(SHAPE, CENTER, npt=20, mask=mask)
    assert b is not a and b.area.sum() == pytest.approx(a.area.sum() - 1, abs=1e-9)
    assert I.build_weights(SHAPE, CENTER, npt=20, mask=mask.copy()) is b
    c = I.build_weights(SHAPE, CENTER, npt=20, azimuth_range=(0, 2 * np.pi))
    assert c is not a


def test_squared_weights_and_area():
    w = I.build_weights(SHAPE, CENTER, npt=15, radial_range=(3, 30))
    np.testing.assert_allclose(w.squared.toarray(), w.matrix.toarray() ** 2)
    np.testing.assert_allclose(w.area, w.matrix.toarray().sum(1))


def test_from_matrix_hard_bins():
    m = sp.random(4, SHAPE[0] * SHAPE[1], density=0.05, random_state=1, format="csr")
    m.data[:] = 1.0
    w = I.AzimuthalWeights.from_matrix(m, np.arange(5.0), [-np.pi, np.pi], SHAPE)
    img = np.random.default_rng(2).random(SHAPE)
    np.testing.assert_allclose(I.integrate(img, w), m @ img.ravel())


def test_frames_of_the_wrong_detector():
    w = I.build_weights((32, 32), (15.5, 15.5), npt=4)
    for frames in (np.ones((2, 16, 16)), np.ones(32)):
        before = frames.copy()
        message = f"frames have detector shape {frames.shape[-2:]}, expected (32, 32)"
        with pytest.raises(ValueError, match=re.escape(message)):
            I.integrate(frames, w)
        with pytest.raises(ValueError, match=re.escape("frames have detector shape")):
            moments.accumulate(frames, w, moments.frame_states(2))
        np.testing.assert_array_equal(frames, before)


@pytest.mark.parametrize("dtype", [complex, object, "U1"])
def test_non_real_frames(dtype):
    w = I.build_weights((32, 32), (15.5, 15.5), npt=4)
    frames = np.ones((2, 32, 32)).astype(dtype)
    message = re.escape(f"frames must be real numbers, got dtype {frames.dtype}")
    before = frames.copy()
    with pytest.raises(TypeError, match=message):
        I.integrate(frames, w)
    with pytest.raises(TypeError, match=message):
        moments.accumulate(frames, w, moments.frame_states(2))
    assert frames.dtype == before.dtype and (frames == before).all()
