"""femlib.ellipse._refine: ring_peak_radii and refine_center_affine."""

import re

import hyperspy.api as hs
import numpy as np
import pytest

import femlib
from femlib import ellipse as E
from femlib.ellipse._fit import _wrap_half_turn

SHAPE = (128, 128)


def ratio_error(params, ratio):
    return abs(params[2] / params[3] / ratio - 1)


@pytest.mark.parametrize(
    ("center", "ratio", "rotation"),
    [((62.3, 65.7), 1.05, 0.4), ((65.1, 61.4), 1.02, -1.2), ((63.6, 64.2), 1.0, 0.0)],
)
@pytest.mark.parametrize("background", [False, True])
def test_refined_rendered_ring(center, ratio, rotation, background, render_ring, disk_mask):
    img = render_ring(center, 31.0, ratio, rotation, background=background)
    mask = disk_mask(center, 10)
    c0, a0 = E.determine_ellipse(img, num_points=1000, mask=mask)
    c, affine, params, peaks = E.refine_center_affine(img, c0, a0, mask=mask, return_params=True)
    # measured: <= 4e-4 px, ratio <= 2e-5, 0.001 deg, major within 0.021 px of 31
    assert np.hypot(*(c - center)) < 0.002
    assert ratio_error(params, ratio) < 1e-4
    if ratio >= 1.02:
        assert abs(np.degrees(_wrap_half_turn(params[4] - rotation))) < 0.05
    assert params[2] == pytest.approx(31.0, abs=0.04)
    phi, radius = E.ring_peak_radii(img, c, affine, (24, 38))
    assert np.all(np.isfinite(radius))
    assert np.std(radius) < 0.005
    assert peaks.shape[1] == 2 and len(peaks) >= 80


def test_refine_removes_a_start_error(render_ring):
    center = (63.6, 64.2)
    img = render_ring(center, 31.0, 1.04, -0.7)
    # a start 1.2 px off with no affine at all
    c, affine = E.refine_center_affine(img, (64.5, 63.4), None)
    assert np.hypot(*(c - center)) < 0.002
    assert E.affine_to_ellipse(affine)[0] == pytest.approx(1.04, abs=1e-4)


def test_default_range_follows_the_brightest_ring(render_ring):
    # two rings: the brighter one at 40 px is refined, and the result matches the explicit
    # range around it
    center = (63.6, 64.2)
    img = render_ring(center, 40.0, 1.03, 0.2) + 0.4 * render_ring(center, 22.0, 1.03, 0.2)
    c0, a0 = E.determine_ellipse(img)
    default = E.refine_center_affine(img, c0, a0, return_params=True)
    explicit = E.refine_center_affine(img, c0, a0, (33, 47), return_params=True)
    assert default[2][2] == pytest.approx(40.0, abs=0.05)
    np.testing.assert_allclose(default[0], explicit[0], atol=2e-3)


def test_no_peak_message_counts_sectors_and_suggests_a_range(render_ring):
    img = render_ring((63.6, 64.2), 31.0, 1.0, 0.0, background=False)
    before = img.copy()
    with pytest.raises(
        E.EllipseFitError,
        match=re.escape(
            "only 0 of 90 azimuthal sectors show a peak inside radial_range=(5, 12) "
            "(calibrated); at least 8 are needed: check the range, the mask and the starting "
            "centre. The brightest ring about this centre suggests radial_range=("
        ),
    ) as info:
        E.refine_center_affine(img, (63.6, 64.2), None, (5, 12))
    lo, hi = (
        float(v) for v in re.findall(r"radial_range=\(([\d.]+), ([\d.]+)\)\.", str(info.value))[0]
    )
    assert lo < 31 < hi
    E.refine_center_affine(img, (63.6, 64.2), None, (lo, hi))  # the suggestion works
    np.testing.assert_array_equal(img, before)
    with pytest.raises(E.EllipseFitError, match="only 0 of 90 azimuthal sectors"):
        E.refine_center_affine(img, (63.6, 64.2), None, (80, 90))  # off the detector
    with pytest.raises(E.EllipseFitError, match=r"only \d of 90 azimuthal sectors"):
        E.refine_center_affine(
            img, (63.6, 64.2), None, (24, 38), mask=np.arange(128 * 128).reshape(SHAPE) % 7 < 6
        )


def test_refine_with_mask_and_garbage(render_ring, disk_mask):
    center = (62.3, 65.7)
    img = render_ring(center, 31.0, 1.05, 0.4)
    mask = disk_mask(center, 10)
    mask[60:66, 64:] = True  # an arm across the ring along +x
    mask.flat[np.random.default_rng(0).choice(img.size, 200, replace=False)] = True
    garbage = img.copy()
    garbage[mask] = 1e6
    start = E.determine_ellipse(img, mask=mask, num_points=800)
    c, affine = E.refine_center_affine(garbage, *start, (24, 38), mask=mask)
    assert np.hypot(*(c - center)) < 0.01
    phi, radius = E.ring_peak_radii(garbage, c, affine, (24, 38), mask=mask)
    dropped = ~np.isfinite(radius)
    assert np.all(dropped[np.abs(phi) < 0.07])
    assert dropped.sum() < 0.25 * len(radius)
    assert np.nanstd(radius) < 0.01
    # without the mask the garbage ruins the ring
    c_bad, _ = E.refine_center_affine(garbage, *start, (24, 38), mask=disk_mask(center, 10))
    assert np.hypot(*(c_bad - center)) > 0.05


def test_units_calibrated_by_default(render_ring, disk_mask):
    img = render_ring((62.3, 65.7), 31.0, 1.05, 0.4)
    start = E.determine_ellipse(img, num_points=800, mask=disk_mask((64, 64), 10))
    s = hs.signals.Signal2D(img)
    for axis in s.axes_manager.signal_axes:
        axis.scale = 0.14
        axis.offset = -9.0
    in_px = E.refine_center_affine(s, *start, (24, 38), units="pixel")
    in_cal = E.refine_center_affine(s, *start, (24 * 0.14, 38 * 0.14))
    np.testing.assert_allclose(in_cal[0], in_px[0], atol=1e-9)
    np.testing.assert_allclose(in_cal[1], in_px[1], atol=1e-9)
    # a plain array has no calibration: its unit is the pixel
    np.testing.assert_allclose(
        E.refine_center_affine(img, *start, (24, 38))[0], in_px[0], atol=1e-9
    )
    phi, radius = E.ring_peak_radii(s, *in_px, (3.36, 5.32))
    assert np.mean(radius) == pytest.approx(31.0 * 0.14, abs=0.005)
    with pytest.raises(ValueError, match="equal signal-axis scales"):
        s.axes_manager.signal_axes[1].scale = 0.2
        E.refine_center_affine(s, *start)


@pytest.mark.parametrize(
    ("normalize", "factor"), [("major", 1.0), ("minor", 1 / 1.05), ("area", 1 / np.sqrt(1.05))]
)
def test_refine_normalize(normalize, factor, render_ring):
    center = (62.3, 65.7)
    img = render_ring(center, 31.0, 1.05, 0.4)
    start = E.determine_ellipse(img, normalize="minor")  # any starting normalisation
    c, affine = E.refine_center_affine(img, *start, normalize=normalize)
    assert np.hypot(*(c - center)) < 0.002
    phi, radius = E.ring_peak_radii(img, c, affine)
    assert np.mean(radius) == pytest.approx(31.0 * factor, abs=0.03)


def test_synthetic_fem_ring_is_circular_after_refinement(synthetic_default):
    s = synthetic_default  # femlib.data.synthetic_fem(), read only
    summed = s.sum()
    mask = summed < 10000
    sim = s.metadata.Simulation
    center, affine = E.determine_ellipse(summed, mask=mask, num_points=500)
    center, affine, params, _ = E.refine_center_affine(
        summed, center, affine, mask=mask, return_params=True
    )
    # bar 0.05 px; measured 0.0026 px, affine within 7e-5 of the truth
    assert np.hypot(*(center - np.asarray(sim.center)[::-1])) < 0.01
    np.testing.assert_allclose(affine, sim.affine, atol=5e-4)
    assert params[2] == pytest.approx(4.3 / 0.14, abs=0.1)
    # independent check with femlib.integration: the ring peak per azimuthal bin
    w = femlib.integration.build_weights(
        summed.data.shape,
        center[::-1],
        affine,
        npt=56,
        npt_azim=36,
        radial_range=(24.0, 38.0),
        mask=mask.data,
    )
    polar = femlib.integration.integrate(summed.data, w, mean=True)
    full = np.all(np.asarray(w.coverage).reshape(56, 36) > 0.95, axis=0)
    r = 0.5 * (w.radial_edges[1:] + w.radial_edges[:-1])
    peaks = []
    for prof in polar[:, full].T:
        prof = prof - np.interp(r, r[[0, -1]], prof[[0, -1]])
        i = int(np.clip(np.argmax(prof), 3, 52))
        coef = np.polyfit(r[i - 3 : i + 4] - r[i], prof[i - 3 : i + 4], 2)
        peaks.append(r[i] - coef[1] / (2 * coef[0]))
    assert len(peaks) >= 30
    assert np.std(peaks) < 0.1  # measured 0.042 px, the floor of this estimator


def test_refine_bad_input(render_ring):
    img = render_ring((62.3, 65.7), 31.0, 1.05, 0.4)
    c, a = (62.3, 65.7), np.eye(3)
    for rr in [(38, 24), (-2, 10)]:
        message = re.escape(f"radial_range must be finite with 0 <= r_min < r_max, got {rr}")
        with pytest.raises(ValueError, match=message):
            E.refine_center_affine(img, c, a, rr)
        with pytest.raises(ValueError, match=message):
            E.ring_peak_radii(img, c, a, rr)
    with pytest.raises(ValueError, match="at least 2 pixels"):
        E.refine_center_affine(img, c, a, (30, 31))
    with pytest.raises(ValueError, match="pair"):
        E.refine_center_affine(img, c, a, 30)
    with pytest.raises(ValueError, match="units must be 'calibrated' or 'pixel'"):
        E.refine_center_affine(img, c, a, (24, 38), units="nm")
    with pytest.raises(ValueError, match="center must be a finite"):
        E.refine_center_affine(img, (np.nan, 3), a, (24, 38))
    with pytest.raises(ValueError, match="singular"):
        E.refine_center_affine(img, c, np.zeros((3, 3)), (24, 38))
    with pytest.raises(ValueError, match="n_azimuth"):
        E.refine_center_affine(img, c, a, (24, 38), n_azimuth=4)
    with pytest.raises(ValueError, match="max_iter"):
        E.refine_center_affine(img, c, a, (24, 38), max_iter=0)
    with pytest.raises(ValueError, match="peak_width"):
        E.refine_center_affine(img, c, a, (24, 38), peak_width=-1)
    with pytest.raises(ValueError, match="normalize must be one of"):
        E.refine_center_affine(img, c, a, normalize="x")
    with pytest.raises(ValueError, match=re.escape("mask has shape (3, 3) but the detector")):
        E.refine_center_affine(img, c, a, mask=np.zeros((3, 3), bool))
    with pytest.raises(TypeError, match="mask must be a boolean array"):
        E.ring_peak_radii(img, c, a, mask=np.zeros(SHAPE))
