"""Tests of femlib.integration: geometry, pixel splitting, accuracy, kernels, errors."""

import warnings

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp

from femlib import integration as I

SHAPE = (96, 112)  # rows, columns: non-square on purpose
CENTER = (55.3, 47.6)  # x, y pixels, off-centre and non-integer
AFFINE = np.array([[1.03, 0.015, 0.0], [0.015, 0.985, 0.0], [0.0, 0.0, 1.0]])


def smooth_pattern(shape=SHAPE, center=CENTER, affine=None):
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    u, v = I._corrected_offsets(xx, yy, np.asarray(center), affine, (1.0, 1.0))
    r = np.hypot(u, v)
    return 100.0 + 60.0 * np.exp(-(((r - 30.0) / 7.0) ** 2)) + 0.2 * u


def exact_reference(image, center, npt, radial_range, affine=None):
    """Azimuthal mean with 48x48 sub-pixel sampling everywhere (converged area overlap)."""
    lo, hi = I._S_MIN, I._S_MAX
    I._S_MIN = I._S_MAX = 48
    try:
        w = I._build(
            image.shape,
            np.asarray(center),
            affine,
            np.ones(2),
            npt,
            1,
            radial_range,
            (-np.pi, np.pi),
            None,
        )
    finally:
        I._S_MIN, I._S_MAX = lo, hi
    return I.integrate(image, w, mean=True)


def test_agrees_with_pyfai_full_splitting():
    pytest.importorskip("pyFAI")
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    img = smooth_pattern()
    ps = 1e-4  # pixel size (m); r_mm = pixels * 0.1
    det = Detector(pixel1=ps, pixel2=ps, max_shape=SHAPE)
    # pyFAI's pixel i spans [i, i+1] * pixel size: our centre c is at (c + 0.5) there.
    ai = AzimuthalIntegrator(
        dist=0.1, poni1=(CENTER[1] + 0.5) * ps, poni2=(CENTER[0] + 0.5) * ps, detector=det
    )
    npt, rr = 40, (8.0, 44.0)
    # pyFAI shares pixels straddling the ends of its radial range differently (its edge
    # bins are 3e-3 off the exact overlap, ours 3e-5): ask it for two extra bins per side
    # and compare the common bins.
    dr = (rr[1] - rr[0]) / npt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ai.integrate1d(
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
    big = ref_n >= 10
    assert big.sum() == npt
    rel = np.abs(ours / ref_i - 1)[big]
    assert rel.max() < 1e-3, rel.max()


@pytest.mark.parametrize("affine", [None, AFFINE])
def test_narrow_bins_match_converged_area_overlap(affine):
    # Bins of 0.15 px: where pyFAI's 1D splitting itself drifts by ~1 %.
    img = smooth_pattern(affine=affine)
    w = I.build_weights(SHAPE, CENTER, affine=affine, npt=50, radial_range=(20.0, 27.5))
    ours = I.integrate(img, w, mean=True)
    ref = exact_reference(img, CENTER, 50, (20.0, 27.5), affine)
    np.testing.assert_allclose(ours, ref, rtol=5e-4)


@pytest.mark.parametrize("affine", [None, AFFINE])
def test_flux_conservation(affine):
    rng = np.random.default_rng(3)
    img = rng.random(SHAPE) * 100
    mask = np.zeros(SHAPE, bool)
    mask[40:50, 10:60] = True
    w = I.build_weights(SHAPE, CENTER, affine=affine, npt=37, npt_azim=11, mask=mask)
    total = I.integrate(img, w).sum()
    np.testing.assert_allclose(total, img[~mask].sum(), rtol=1e-6)
    # Every unmasked pixel's weights sum to 1 over the full range.
    col = np.asarray(w.matrix.sum(axis=0)).ravel()
    np.testing.assert_allclose(col[~mask.ravel()], 1.0, atol=1e-12)
    assert np.all(col[mask.ravel()] == 0)


def test_subrange_flux_is_the_in_range_area():
    img = np.ones(SHAPE)
    w = I.build_weights(SHAPE, CENTER, npt=10, radial_range=(10.0, 30.0))
    # Pixel splitting: the weighted sum of ones is the annulus area in pixels.
    np.testing.assert_allclose(I.integrate(img, w).sum(), np.pi * (30**2 - 10**2), rtol=2e-4)


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


def test_azimuth_zero_along_plus_x_positive_toward_plus_y():
    w = I.build_weights(SHAPE, (50.0, 40.0), npt=4, npt_azim=8, radial_range=(5, 25))
    for (row, col), expected in [((40, 65), 0.0), ((55, 50), np.pi / 2), ((25, 50), -np.pi / 2)]:
        img = np.zeros(SHAPE)
        img[row, col] = 1.0
        out = I.integrate(img, w).sum(axis=0)  # over radius
        phi = np.angle(np.sum(out * np.exp(1j * w.azimuth_centers)))
        assert abs(phi - expected) < 0.3


def test_azimuth_range_restricts_integration():
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    right = (xx > CENTER[0]).astype(float)
    w_right = I.build_weights(
        SHAPE,
        CENTER,
        npt=8,
        radial_range=(5, 30),
        azimuth_range=(-np.pi / 2 + 0.05, np.pi / 2 - 0.05),
    )
    w_left = I.build_weights(
        SHAPE, CENTER, npt=8, radial_range=(5, 30), azimuth_range=(np.pi / 2 + 0.05, np.pi)
    )
    np.testing.assert_allclose(I.integrate(right, w_right, mean=True), 1.0, atol=1e-12)
    np.testing.assert_allclose(I.integrate(right, w_left, mean=True), 0.0, atol=1e-12)
    full = I.build_weights(SHAPE, CENTER, npt=8, radial_range=(5, 30))
    assert w_right.area.sum() < 0.5 * full.area.sum()


def test_mean_divides_by_covered_weight():
    img = np.full(SHAPE, 7.0)
    mask = np.zeros(SHAPE, bool)
    mask[:, :30] = True
    w = I.build_weights(SHAPE, CENTER, npt=30, mask=mask)  # to the corner: outer bins cut
    assert w.coverage.min() < 0.3 and w.coverage.max() < 1.01
    out = I.integrate(img, w, mean=True)
    covered = w.area > 0
    np.testing.assert_allclose(out[covered], 7.0, rtol=1e-12)


@pytest.mark.parametrize("dtype", [">u2", "<u2", "uint8", "int32", ">f4", "float64", "bool"])
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


def test_weights_are_cached_per_geometry():
    a = I.build_weights(SHAPE, CENTER, npt=20)
    assert I.build_weights(SHAPE, CENTER, npt=20) is a
    mask = np.zeros(SHAPE, bool)
    mask[0, 0] = True
    b = I.build_weights(SHAPE, CENTER, npt=20, mask=mask)
    assert b is not a and b.area.sum() < a.area.sum()
    assert I.build_weights(SHAPE, CENTER, npt=20, mask=mask.copy()) is b


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


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"npt": 0}, "npt must be a positive integer"),
        ({"npt": 2.5}, "npt must be a positive integer"),
        ({"npt": 10, "npt_azim": 0}, "npt_azim must be a positive integer"),
        ({"npt": 10, "radial_range": (20, 10)}, "radial_range must be increasing"),
        ({"npt": 10, "radial_range": (5, 500)}, "outside the detector"),
        ({"npt": 10, "radial_range": (-1, 5)}, "outside the detector"),
        ({"npt": 10, "radial_range": (np.nan, 5)}, "finite"),
        ({"npt": 10, "azimuth_range": (0, 4)}, "azimuth_range"),
        ({"npt": 10, "mask": np.zeros((5, 5), bool)}, r"mask has shape \(5, 5\)"),
        ({"npt": 10, "mask": np.zeros(SHAPE, float) + 0.5}, "mask must be a boolean"),
    ],
)
def test_bad_input_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        I.build_weights(SHAPE, CENTER, **kwargs)


def test_bad_geometry_errors():
    with pytest.raises(ValueError, match="center"):
        I.build_weights(SHAPE, (np.nan, 3.0), npt=3)
    with pytest.raises(ValueError, match="affine"):
        I.build_weights(SHAPE, CENTER, affine=np.zeros((3, 3)), npt=3)
    w = I.build_weights(SHAPE, CENTER, npt=3, radial_range=(1, 10))
    with pytest.raises(ValueError, match="detector shape"):
        I.integrate(np.zeros((2, 5, 5)), w)
    with pytest.raises(TypeError, match="real numbers"):
        I.integrate(np.zeros((2,) + SHAPE, complex), w)


def test_build_256_detector_is_not_per_frame_work():
    # Building is vectorised: a 256x256 2D geometry has ~10^5 non-zeros per matrix.
    I._CACHE.clear()
    w = I.build_weights((256, 256), (130.2, 126.9), npt=100, npt_azim=360)
    assert w.matrix.shape == (36000, 65536)
    assert w.matrix.nnz > 65536
