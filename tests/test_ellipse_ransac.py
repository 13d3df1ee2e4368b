"""femlib.ellipse._ransac: femlib's ellipse model in skimage.measure.ransac.

Includes pyxem 0.21's tests of ``ransac_ellipse_tools`` (``test_ransac_ellipse_tools.py``),
rewritten for femlib's API with their data, limits and tolerances kept; each says which
pyxem test it ports.
"""

import re
import warnings

import numpy as np
import pytest
from skimage.measure import ransac

from femlib import ellipse as E
from femlib.ellipse._fit import _wrap_half_turn


def ring_points_with_outliers(seed, center, ratio, rotation, n=700, n_out=300):
    """Points scattered 0.7 px round an ellipse of major 31 px, plus uniform outliers."""
    rng = np.random.default_rng(seed)
    pts = E.ellipse_points([*center, 31.0, 31.0 / ratio, rotation], n)
    pts += rng.normal(0.0, 0.7, pts.shape)
    out = rng.uniform(5, 123, (n_out, 2))
    return np.vstack([pts, out]), np.r_[np.zeros(n, bool), np.ones(n_out, bool)]


def pyxem_ring(seed=3):
    """pyxem's ring test image: flat ring between the ellipses 30 and 40 px (1.15 ratio)."""
    t = np.ones((100, 100))
    x, y = np.ogrid[-45:55, -50:50]
    t[x**2 + (y * 1.15) ** 2 < 40**2] = 100
    t[x**2 + (y * 1.15) ** 2 < 30**2] = 1
    return t + np.random.RandomState(seed).random((100, 100))


def pyxem_form(affine):
    """femlib's affine written as pyxem's: corrected -> detector, (row, col) ordered."""
    return np.linalg.inv(affine[:2, :2])[::-1, ::-1]


# ------------------------------------------------------------------ the model class


def test_model_class_in_skimage_ransac():
    pts = E.ellipse_points([64.0, 60.0, 31.0, 30.0, 0.5], 40)
    pts[::8] += 12.0
    model, inlier = ransac(pts, E.EllipseRansacModel, 5, 1.0, rng=0)
    np.testing.assert_allclose(model.params, [64.0, 60.0, 31.0, 30.0, 0.5], atol=1e-9)
    np.testing.assert_array_equal(inlier, np.arange(40) % 8 != 0)
    # residuals are the absolute Sampson distances
    # 2 px outside and 1 px inside along the major axis (direction 0.5 rad from +x)
    u = np.array([np.sin(0.5), np.cos(0.5)])  # (row, col)
    probe = np.array([64.0, 60.0]) + np.outer([33.0, 30.0], u)
    np.testing.assert_allclose(model.residuals(probe), [2.0, 1.0], atol=1e-9)
    # a failed fit is a falsy model, which ransac skips
    failed = E.EllipseRansacModel.from_estimate(np.ones((5, 2)))
    assert not failed and failed.params is None
    legacy = E.EllipseRansacModel()
    assert legacy.estimate(pts[1:8]) and legacy.params is not None


# ------------------------------------------------------------------ outliers


@pytest.mark.parametrize(
    ("seed", "center", "ratio", "rotation"),
    [(0, (62.3, 65.7), 1.05, 0.4), (1, (65.1, 61.4), 1.03, -1.2), (2, (63.0, 64.9), 1.1, 1.0)],
)
def test_ransac_with_30_percent_outliers(seed, center, ratio, rotation):
    pts, outlier = ring_points_with_outliers(seed, center, ratio, rotation)
    c, affine, params, pos, inlier = E.determine_ellipse(
        pos=pts, use_ransac=True, return_params=True
    )
    # measured: 0.013-0.084 px, ratio 0.07-0.4 %, 0.4-1.1 deg (least squares: 0.7-3.4 px
    # off); bars about twice that
    assert np.hypot(*(c - center)) < 0.15
    assert abs(params[2] / params[3] / ratio - 1) < 8e-3
    assert abs(np.degrees(_wrap_half_turn(params[4] - rotation))) < 2.5
    assert (inlier & ~outlier).sum() > 0.98 * (~outlier).sum()
    # outliers count only where they fall in the inlier band (2.5-5.5 px half-width here):
    # measured 27-43 of 300, the band's share of the area they are drawn from
    assert (inlier & outlier).sum() < 0.2 * outlier.sum()
    c_lsq, _ = E.determine_ellipse(pos=pts)
    assert np.hypot(*(c_lsq - center)) > 0.5


def test_default_threshold_scales_with_the_ring_width():
    # the same ring drawn 0.3 px and 3 px wide: the inlier band follows it
    for width in (0.3, 3.0):
        pts = E.ellipse_points([64.0, 64.0, 31.0, 30.0, 0.2], 400)
        pts += np.random.default_rng(4).normal(0.0, width, pts.shape)
        params, inlier = E.fit_ellipse_ransac(pts)
        assert inlier.mean() > 0.9
        np.testing.assert_allclose(params[:2], 64.0, atol=0.1 * width + 0.05)


def test_ransac_is_deterministic_and_seedable():
    pts, _ = ring_points_with_outliers(3, (62.3, 65.7), 1.05, 0.4)
    kw = dict(pos=pts, use_ransac=True, return_params=True)
    first = E.determine_ellipse(**kw)
    again = E.determine_ellipse(**kw)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = E.determine_ellipse(rng=np.random.default_rng(7), **kw)
    assert np.hypot(*(other[0] - first[0])) < 0.05
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['random_state'\]"):
        E.determine_ellipse(random_state=0, **kw)


def test_ransac_failure_messages():
    pts = np.random.default_rng(0).uniform(0, 64, (200, 2))
    for guess, bounded, hint in [
        (True, ", inside the limits", ", or guess_starting_params=False"),
        (False, "", ""),
    ]:
        kw = {"residual_threshold": 0.01, "max_trials": 20, "min_inliers": 20}
        message = re.escape(
            "RANSAC found no ellipse with at least 20 inliers in 20 trials (best: 5 of 200 "
            f"points within residual_threshold=0.01 px{bounded}); try a larger "
            f"residual_threshold or max_trials{hint}"
        )
        before = pts.copy()
        with pytest.raises(E.EllipseFitError, match=message):
            E.fit_ellipse_ransac(pts, guess_starting_params=guess, **kw)
        with pytest.raises(E.EllipseFitError, match=message):
            E.determine_ellipse(pos=pts, use_ransac=True, guess_starting_params=guess, **kw)
        np.testing.assert_array_equal(pts, before)
    line = np.column_stack([np.arange(50.0), 0.5 * np.arange(50.0)])
    with pytest.raises(E.EllipseFitError, match="RANSAC found no ellipse"):
        E.determine_ellipse(pos=line, use_ransac=True, max_trials=50)


def test_ransac_bad_options():
    pts = E.ellipse_points([64.0, 64.0, 31.0, 30.0, 0.0], 30)
    for kw, message in [
        ({"residual_threshold": 0}, "residual_threshold must be a positive"),
        ({"max_trials": 0}, "max_trials must be a positive integer"),
        ({"stop_probability": 0}, r"stop_probability must be in \(0, 1\]"),
        ({"axis_bounds": (2, 1)}, "axis_bounds must be"),
        ({"max_axis_ratio": 0.5}, "max_axis_ratio must be a number >= 1"),
        ({"min_samples": 4}, "min_samples must be an integer >= 5"),
        ({"min_samples": 31}, "min_samples=31 but pos holds only 30 points"),
        ({"center_guess": (1, np.nan)}, "center_guess must be a finite"),
        ({"radius_guess": -3}, "radius_guess must be a positive"),
    ]:
        with pytest.raises(ValueError, match=message):
            E.fit_ellipse_ransac(pts, **kw)
    with pytest.raises(TypeError, match="only apply with use_ransac=True"):
        E.determine_ellipse(pos=pts, max_trials=5)


# ------------------------------------------------------------------ pyxem's tests


@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("return_params", [True, False])
@pytest.mark.parametrize("guess_starting_params", [True, False])
def test_pyxem_determine_ellipse_ransac(mask, return_params, guess_starting_params):
    """pyxem TestDetermineEllipse.test_determine_ellipse_ransac: 50 points, centre within
    1.5 px (``decimal=0``), affine ``diag(1, 0.87)`` to 1 decimal (pyxem's form)."""
    t = pyxem_ring()
    m = np.zeros((100, 100), bool) if mask else None
    # pyxem's explicit limits when not guessing: ratio 1.2, 6 samples, 20 px, 1000 trials
    kw = (
        {}
        if guess_starting_params
        else {"max_axis_ratio": 1.2, "min_samples": 6, "residual_threshold": 20, "max_trials": 1000}
    )
    out = E.determine_ellipse(
        t,
        mask=m,
        use_ransac=True,
        num_points=50,
        return_params=return_params,
        guess_starting_params=guess_starting_params,
        **kw,
    )
    center, affine = out[0], out[1]
    assert len(out) == (5 if return_params else 2)
    # measured: 0.046 px and 0.003 (pyxem's bars: 1.5 px, 0.15)
    assert np.abs(center - [45, 50]).max() < 0.2
    assert np.abs(pyxem_form(affine) - np.diag([1.0, 0.87])).max() < 0.02


def test_pyxem_ransac_on_pyxems_brightest_pixels():
    """The same ring with pyxem's own picking (the 50 brightest pixels, spread over the
    10 px wide ring): RANSAC with the default inlier distance lands within pyxem's 1.5 px.
    A fixed 3 px distance (femlib 0.1's default) lands 1.6-3.4 px off on these points."""
    errors, fixed = [], []
    for seed in range(3, 43):
        t = pyxem_ring(seed)
        idx = np.argsort(t.ravel(), kind="stable")[-50:]
        pos = np.column_stack(np.unravel_index(idx, t.shape)).astype(float)
        center, affine = E.determine_ellipse(pos=pos, use_ransac=True)
        errors.append(np.abs(center - [45, 50]).max())
        if seed == 3:  # pyxem's seed: measured 0.33 px
            assert errors[-1] < 1.5
            assert np.abs(pyxem_form(affine) - np.diag([1.0, 0.87])).max() < 0.15
        center, _ = E.determine_ellipse(pos=pos, use_ransac=True, residual_threshold=3.0)
        fixed.append(np.abs(center - [45, 50]).max())
    # measured over these 40 seeds: median 0.57, 90th percentile 0.99, max 1.66 px (the
    # scatter of 50 points over a 10 px band); with 3 px: 1.52, 2.16, 2.96 px
    assert np.median(errors) < 0.8
    assert np.percentile(errors, 90) < 1.5
    assert np.median(fixed) > 1.2


@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("return_params", [True, False])
def test_pyxem_determine_ellipse_no_ransac(mask, return_params):
    """pyxem test_determine_ellipse_no_ransac: rows 40-49 masked; centre to 1.5 px, affine
    to 2 decimals."""
    t = pyxem_ring(0)
    m = None
    if mask:
        m = np.zeros((100, 100), bool)
        m[40:50, :] = True
    out = E.determine_ellipse(t, mask=m, use_ransac=False, return_params=return_params)
    # measured 0.05 px, 0.003
    assert np.abs(out[0] - [45, 50]).max() < 0.2
    assert np.abs(pyxem_form(out[1]) - np.diag([1.0, 0.87])).max() < 0.015


def test_pyxem_picked_points_lie_on_the_ring():
    """pyxem test_get_max_pos: every picked point lies inside the ring (here: between the
    two ellipses bounding it)."""
    t = pyxem_ring(1)
    *_, pos = E.determine_ellipse(t, num_points=100, return_params=True)
    rho = np.hypot(pos[:, 0] - 45, (pos[:, 1] - 50) * 1.15)
    assert pos.shape == (100, 2)
    assert np.all((rho > 30) & (rho < 40))


@pytest.mark.parametrize("rotation", np.linspace(0, 2 * np.pi, 10))
def test_pyxem_determine_ellipse_ring(rotation, render_ring, disk_mask):
    """pyxem test_determine_ellipse_ring: semi-axes 63 and 70 px at any rotation, a disk at
    the centre masked by a 40 px square; after the correction the ring is sharp (pyxem:
    fewer than 11 of 100 radial bins lit). Here: the ring's corrected radius is the same
    at every azimuth within 0.1 px."""
    img = render_ring((100.0, 100.0), 70.0, 70 / 63, rotation, sigma=1.0, shape=(200, 200))
    img += 30 * disk_mask((100, 100), 5, shape=(200, 200))
    mask = np.zeros((200, 200), bool)
    mask[80:120, 80:120] = True
    center, affine = E.determine_ellipse(img, mask=mask, use_ransac=False, num_points=2000)
    phi, radius = E.ring_peak_radii(img, center, affine, (60, 80), mask=mask)
    assert np.all(np.isfinite(radius))
    # measured: spread 0.02 px, mean 70.0
    assert np.ptp(radius) < 0.1
    assert np.mean(radius) == pytest.approx(70.0, abs=0.1)


def test_pyxem_residual_threshold():
    """pyxem test_residual_threshold: 20 points on a circle of 90 px and one 5 px off it:
    a 1 px inlier distance leaves it out, a larger one takes it in."""
    pts = E.ellipse_points([100.0, 100.0, 90.0, 90.0, 0.0], 20)
    pts = np.vstack([pts, [100.0, 5.0 - 0.0]])  # 95 px from the centre
    kw = dict(
        center_guess=(100, 100),
        radius_guess=90,
        center_tolerance=0.2,
        axis_bounds=(85 / 90, 95 / 90),
        max_axis_ratio=1.1,
        min_samples=15,
        max_trials=100,
    )
    _, inlier0 = E.fit_ellipse_ransac(pts, residual_threshold=1, **kw)
    _, inlier1 = E.fit_ellipse_ransac(pts, residual_threshold=5.5, **kw)
    assert inlier0.sum() == 20 and not inlier0[-1]
    assert inlier1.sum() == 21


def test_pyxem_min_samples_and_outlier():
    """pyxem test_min_samples: an ellipse 21 x 20 px and a point 5.4 px outside it on the
    major axis; 20-point samples; 3 px leaves the point out, 6 px takes it in."""
    pts = E.ellipse_points([55.0, 43.6, 21.0, 20.0, 0.0], 20)
    pts = np.vstack([pts, [55.0, 43.6 + 26.4]])
    kw = dict(center_guess=(55, 43.6), radius_guess=20, axis_bounds=(0.75, 2), min_samples=20)
    _, inlier0 = E.fit_ellipse_ransac(pts, residual_threshold=3, max_trials=100, **kw)
    assert inlier0[:-1].all() and not inlier0[-1]
    _, inlier1 = E.fit_ellipse_ransac(pts, residual_threshold=6, max_trials=100, **kw)
    assert inlier1.all()


@pytest.mark.parametrize(
    ("kw", "found"),
    [
        ({"center_tolerance": 6 / 20}, True),  # pyxem test_rf_lim: 6 px passes, 3 px fails
        ({"center_tolerance": 3 / 20}, False),
        ({"axis_bounds": (19 / 20, 23 / 20)}, True),  # test_semi_len_min / _max
        ({"axis_bounds": (25 / 20, 30 / 20)}, False),
        ({"axis_bounds": (0.5, 15 / 20)}, False),
    ],
)
def test_pyxem_single_frame_limits(kw, found):
    """pyxem TestGetEllipseModelRansacSingleFrame: 25 points on an ellipse 21 x 20 px; a
    model is found, within 0.1 px, exactly when the limits allow it."""
    truth = [55.0, 50.0, 21.0, 20.0, 2.0 - np.pi / 2]
    pts = E.ellipse_points(truth, 25)
    opts = dict(
        center_guess=(50.0, 50.0) if "center_tolerance" in kw else (55.0, 50.0),
        radius_guess=20.0,
        residual_threshold=10,
        max_trials=100,
        min_samples=5,
    )
    opts.update({"center_tolerance": 0.1, "axis_bounds": (0.5, 2.0)})
    opts.update(kw)
    if found:
        params, inlier = E.fit_ellipse_ransac(pts, **opts)
        assert inlier.all()
        np.testing.assert_allclose(params[:4], truth[:4], atol=0.1)
        assert abs(_wrap_half_turn(params[4] - truth[4])) < 0.1
    else:
        with pytest.raises(E.EllipseFitError, match="RANSAC found no ellipse"):
            E.fit_ellipse_ransac(pts, **opts)


def test_pyxem_semi_len_ratio_lim():
    """pyxem test_semi_len_ratio_lim: a circle of 100 px and an ellipse 100 x 190 px about
    the same centre; a ratio limit of 1.11 returns the circle, 2.0 may return the ellipse."""
    circle = E.ellipse_points([210.0, 200.0, 100.0, 100.0, 0.0], 20)
    ellipse = E.ellipse_points([210.0, 200.0, 190.0, 100.0, 0.0], 20)
    pts = np.vstack([circle, ellipse])
    # 5-point samples (pyxem draws 15 of the 40 points, which almost never are all from
    # one curve: its test checks only the 2.0 case)
    kw = dict(
        center_guess=(210, 200),
        radius_guess=100,
        center_tolerance=0.2,
        axis_bounds=(0.95, 1.95),
        min_samples=5,
        max_trials=200,
        residual_threshold=1,
    )
    params, inlier = E.fit_ellipse_ransac(pts, max_axis_ratio=1.11, **kw)
    assert params[2] / params[3] <= 1.11
    # the two minor-axis vertices of the ellipse lie on the circle too
    assert inlier[:20].all() and inlier[20:].sum() == 2
    ratios = []
    for seed in range(6):
        params, _ = E.fit_ellipse_ransac(pts, max_axis_ratio=2.0, rng=seed, **kw)
        ratios.append(params[2] / params[3])
    assert max(ratios) > 1.8


def test_pyxem_limits_respected_on_1000_random_point_sets():
    """pyxem test_no_values_out_of_bounds: 200 random integer points in [0, 200)^2, centre
    limit 20 px about (100, 100), semi-axes in [50, 100], ratio below 1.15, 15-point
    samples, 5 trials: every model returned respects every limit."""
    limits = dict(
        center_guess=(100, 100),
        radius_guess=100,
        center_tolerance=0.2,
        axis_bounds=(0.5, 1.0),
        max_axis_ratio=1.15,
    )

    def inside(e):
        return (
            np.hypot(e[0] - 100, e[1] - 100) <= 20
            and 50 <= e[3] <= e[2] <= 100
            and e[2] <= 1.15 * e[3]
        )

    returned = raw_broken = 0
    for seed in range(1000):
        pts = np.random.default_rng(seed).integers(0, 200, size=(200, 2)).astype(float)
        try:
            params, _ = E.fit_ellipse_ransac(
                pts, min_samples=15, max_trials=5, residual_threshold=10, rng=seed, **limits
            )
        except E.EllipseFitError:
            continue
        returned += 1
        assert inside(params), (seed, params)
        if seed < 200:
            # scikit-image alone refits the winner to its inliers without re-checking
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, _ = ransac(
                    pts,
                    E.EllipseRansacModel,
                    15,
                    10,
                    max_trials=5,
                    rng=seed,
                    is_model_valid=lambda m, s: inside(m.params),
                )
            raw_broken += bool(model) and not inside(model.params)
    # measured: 570 of 1000 sets return a model; skimage's own final models break the
    # limits in 78 of 639 returned (1000 sets), which is why femlib re-checks
    assert returned > 400
    assert raw_broken > 0
