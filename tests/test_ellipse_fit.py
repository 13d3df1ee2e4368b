"""femlib.ellipse._fit: direct least-squares fit, residuals, ellipse <-> affine conversions."""

import re

import numpy as np
import pytest

from femlib import ellipse as E
from femlib.ellipse._fit import _wrap_half_turn


def angle_error_deg(a, b):
    return abs(np.degrees(_wrap_half_turn(a - b)))


# ------------------------------------------------------------------ affine convention


@pytest.mark.parametrize("rotation", [0.0, 0.4, -1.2, np.pi / 2])
def test_affine_maps_fitted_ellipse_onto_circle_of_major_radius(rotation):
    truth = [60.3, 66.8, 31.0, 28.5, rotation]
    params = E.fit_ellipse(E.ellipse_points(truth, 200))
    affine = E.ellipse_to_affine(params[2], params[3], params[4])
    pts = E.ellipse_points(params, 500)
    offsets = np.column_stack([pts[:, 1] - params[1], pts[:, 0] - params[0], np.ones(500)])
    mapped = offsets @ affine.T
    np.testing.assert_allclose(np.hypot(mapped[:, 0], mapped[:, 1]), params[2], atol=1e-9)
    np.testing.assert_array_equal(mapped[:, 2], 1.0)
    np.testing.assert_array_equal(affine[:2, 2], 0.0)


def test_affine_values():
    # rotation 0: the major axis is x, so y (the minor direction) is stretched by the ratio
    np.testing.assert_allclose(E.ellipse_to_affine(31.0, 25.0, 0.0), np.diag([1, 1.24, 1]))
    # rotation 90 deg: the major axis is +y (down on an image), x is stretched
    np.testing.assert_allclose(
        E.ellipse_to_affine(31.0, 25.0, np.pi / 2), np.diag([1.24, 1, 1]), atol=1e-15
    )
    # 45 deg: R diag(1, r) R^T = [[1+r, 1-r], [1-r, 1+r]] / 2; (1, 1) is the major axis
    np.testing.assert_allclose(
        E.ellipse_to_affine(2.0, 1.0, np.pi / 4)[:2, :2], [[1.5, -0.5], [-0.5, 1.5]]
    )
    np.testing.assert_array_equal(E.ellipse_to_affine(30.0, 30.0, 0.7), np.eye(3))


@pytest.mark.parametrize(
    ("normalize", "radius"),
    [("major", 31.0), ("minor", 25.0), ("area", np.sqrt(31.0 * 25.0))],
)
@pytest.mark.parametrize("rotation", [0.0, 0.9, -1.3])
def test_normalize_chooses_the_radius_that_keeps_its_length(normalize, radius, rotation):
    params = [0.0, 0.0, 31.0, 25.0, rotation]
    affine = E.ellipse_to_affine(31.0, 25.0, rotation, normalize=normalize)
    pts = E.ellipse_points(params, 360)
    mapped = np.column_stack([pts[:, 1], pts[:, 0]]) @ affine[:2, :2].T
    np.testing.assert_allclose(np.hypot(*mapped.T), radius, rtol=1e-12)
    # the shape is the same whatever the normalisation
    ratio, rot = E.affine_to_ellipse(affine)
    assert ratio == pytest.approx(31 / 25, rel=1e-12)
    assert angle_error_deg(rot, rotation) < 1e-9
    major, minor, _ = E.affine_to_ellipse(affine, radius=radius)
    assert (major, minor) == pytest.approx((31.0, 25.0), rel=1e-12)


def test_affine_to_ellipse_inverts_ellipse_to_affine():
    affine = E.ellipse_to_affine(31.0, 30.0, 0.3)
    ratio, rotation = E.affine_to_ellipse(affine)
    assert ratio == pytest.approx(31 / 30, rel=1e-12)
    assert rotation == pytest.approx(0.3, abs=1e-12)
    major, minor, rot = E.affine_to_ellipse(affine, radius=31.0)
    assert (major, minor, rot) == pytest.approx((31.0, 30.0, 0.3), rel=1e-12)
    np.testing.assert_allclose(E.ellipse_to_affine(major, minor, rot), affine, atol=1e-14)
    # a rotation applied after the correction changes nothing about the ellipse
    c, s = np.cos(0.9), np.sin(0.9)
    rotated = np.array([[c, -s], [s, c]]) @ affine[:2, :2]
    assert E.affine_to_ellipse(rotated) == pytest.approx((31 / 30, 0.3), rel=1e-12)
    # wrap: a major axis at 100 deg is reported at -80 deg
    ratio, rotation = E.affine_to_ellipse(E.ellipse_to_affine(2.0, 1.0, np.radians(100)))
    assert np.degrees(rotation) == pytest.approx(-80.0, abs=1e-9)


def test_affine_bad_input():
    with pytest.raises(ValueError, match="minor must be a positive"):
        E.ellipse_to_affine(31.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=re.escape("major must be a positive finite number")):
        E.ellipse_to_affine(0, 1, 0)
    with pytest.raises(ValueError, match="rotation must be a finite angle"):
        E.ellipse_to_affine(31.0, 30.0, np.nan)
    with pytest.raises(ValueError, match="normalize must be one of 'major', 'minor', 'area'"):
        E.ellipse_to_affine(31.0, 30.0, 0.0, normalize="mean")
    with pytest.raises(ValueError, match="3x3"):
        E.affine_to_ellipse(np.eye(4))
    with pytest.raises(ValueError, match="singular"):
        E.affine_to_ellipse(np.diag([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="translation"):
        E.affine_to_ellipse([[1, 0, 3], [0, 1, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match="radius must be a positive"):
        E.affine_to_ellipse(np.eye(3), radius=-1)


# ------------------------------------------------------------------ pyxem's k axis


def pyxem_corrected_radius(pos, params_rc):
    """Corrected radius of ``(row, col)`` points under pyxem 0.21's affine, from its source.

    pyxem fits scikit-image's ``EllipseModel`` to ``(row, col)`` points, giving ``(xc, yc,
    a, b, theta)`` with ``x`` = row, and builds its affine as ``_ellipse_to_affine(b, a,
    theta)``: major := b, minor := a, swapped (and ``pi / 2`` added to the angle) when
    minor > major; then the angle becomes ``pi / 2 - angle`` (plus ``pi`` if negative) and
    the matrix is ``Q diag(1, minor / major) Q^T``, ``Q`` the rotation by it. Its
    integration flips the signs of the off-diagonal terms and maps corrected ``(row, col)``
    control points onto the detector as ``d = cp @ M``. So a detector offset ``d`` has the
    corrected coordinates ``cp = d @ inv(M)``.
    """
    xc, yc, a, b, theta = params_rc
    major, minor, rot = b, a, theta
    if minor > major:
        major, minor, rot = minor, major, rot + np.pi / 2
    rot = np.pi / 2 - rot
    if rot < 0:
        rot += np.pi
    q = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    m = q @ np.diag([1.0, minor / major]) @ q.T
    m[0, 1], m[1, 0] = -m[0, 1], -m[1, 0]
    d = np.asarray(pos) - [xc, yc]
    return np.hypot(*(d @ np.linalg.inv(m)).T)


@pytest.mark.parametrize("ellipticity", [0.02, 0.06])
@pytest.mark.parametrize("rotation", [0.0, 0.5, -1.1, 1.4])
def test_default_normalisation_reproduces_pyxems_k_axis(ellipticity, rotation):
    major = 30.7
    truth = np.array([62.8, 64.4, major, major / (1 + ellipticity), rotation])
    pos = E.ellipse_points(truth, 90)
    # pyxem's EllipseModel on (row, col) points: x = row, so its angle is measured from the
    # row axis: theta_rc = pi/2 - rotation, semi-axes in the same order
    params_rc = (truth[0], truth[1], truth[2], truth[3], np.pi / 2 - rotation)
    k_pyxem = pyxem_corrected_radius(pos, params_rc)
    np.testing.assert_allclose(k_pyxem, major, rtol=1e-12)  # the ring is a circle in pyxem
    # EllipseModel may report the minor axis first, 90 degrees on: the same geometry
    params_swapped = (truth[0], truth[1], truth[3], truth[2], -rotation)
    np.testing.assert_allclose(pyxem_corrected_radius(pos, params_swapped), k_pyxem, rtol=1e-12)
    d = np.column_stack([pos[:, 1] - truth[1], pos[:, 0] - truth[0]])
    for normalize, factor in [
        ("major", 1.0),
        ("minor", 1 / (1 + ellipticity)),
        ("area", 1 / np.sqrt(1 + ellipticity)),
    ]:
        affine = E.ellipse_to_affine(*truth[2:], normalize=normalize)
        k_femlib = np.hypot(*(d @ affine[:2, :2].T).T)
        # k-scale difference femlib / pyxem - 1: 0 for "major", -e for "minor",
        # about -e/2 for "area"
        np.testing.assert_allclose(k_femlib / k_pyxem, factor, rtol=1e-12)


# ------------------------------------------------------------------ least-squares fit


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ([64.2, 61.7, 31.0, 30.0, 0.5], [64.2, 61.7, 31.0, 30.0, 0.5]),
        ([64.2, 61.7, 31.0, 30.0, 2.0], [64.2, 61.7, 31.0, 30.0, 2.0 - np.pi]),
        # minor given first: reported major first, rotated by 90 degrees
        ([10.0, 200.0, 20.0, 30.0, 0.3], [10.0, 200.0, 30.0, 20.0, 0.3 - np.pi / 2]),
        ([64.0, 64.0, 40.0, 40.0 / 1.3, np.pi / 2], [64.0, 64.0, 40.0, 40.0 / 1.3, np.pi / 2]),
    ],
)
def test_fit_exact_points(given, expected):
    params = E.fit_ellipse(E.ellipse_points(given, 37))
    np.testing.assert_allclose(params, expected, atol=1e-9)


def test_ellipse_points_follow_the_parametric_form():
    # written out: x = col_c + a cos t cos th - b sin t sin th, y = row_c + a cos t sin th + ...
    t = np.linspace(0, 2 * np.pi, 7, endpoint=False)
    a, b, th = 31.0, 24.0, 0.5
    x = 70 + a * np.cos(t) * np.cos(th) - b * np.sin(t) * np.sin(th)
    y = 50 + a * np.cos(t) * np.sin(th) + b * np.sin(t) * np.cos(th)
    np.testing.assert_allclose(E.ellipse_points([50, 70, a, b, th], 7), np.column_stack([y, x]))


def test_fit_partial_arc_and_far_from_origin():
    truth = [1500.0, -2300.5, 31.0, 29.0, -0.7]
    pts = E.ellipse_points(truth, 360)[:120]  # a third of the ellipse
    np.testing.assert_allclose(E.fit_ellipse(pts), truth, atol=1e-7)


def test_residuals_are_distances():
    params = [0.0, 0.0, 30.0, 20.0, 0.0]
    pts = np.array([[0.0, 32.0], [22.5, 0.0], [0.0, -28.0], [0.0, 0.0]])  # (row, col)
    np.testing.assert_allclose(E.ellipse_residuals(pts, params), [2.0, 2.5, -2.0, -20.0])


def test_fit_bad_points():
    cases = [
        (np.ones((4, 2)), "pos must hold at least 5 points to fit an ellipse, got 4"),
        (
            np.ones((6, 3)),
            "pos must be an (N, 2) array of (row, col) pixel coordinates, "
            "got an array of shape (6, 3)",
        ),
        (np.full((6, 2), np.nan), "pos must be finite, got NaN or inf coordinates"),
    ]
    for pos, message in cases:
        before = pos.copy()
        for f in (
            E.fit_ellipse,
            E.fit_ellipse_ransac,
            lambda p: E.determine_ellipse(pos=p),
        ):
            with pytest.raises(ValueError, match=re.escape(message)):
                f(pos)
        np.testing.assert_array_equal(pos, before)


def test_fit_degenerate_points():
    line = np.column_stack([np.arange(6.0), np.arange(6.0)])
    with pytest.raises(
        E.EllipseFitError, match=re.escape("the points are collinear: cannot fit an ellipse")
    ):
        E.fit_ellipse(line)
    with pytest.raises(
        E.EllipseFitError, match=re.escape("all points coincide: cannot fit an ellipse")
    ):
        E.fit_ellipse(np.ones((6, 2)))
    with pytest.raises(E.EllipseFitError, match="collinear|no ellipse|degenerate"):
        E.fit_ellipse(np.column_stack([np.arange(10.0), 2 * np.arange(10.0)]))
    assert issubclass(E.EllipseFitError, ValueError)


def test_bad_ellipse_parameters():
    with pytest.raises(ValueError, match=re.escape("params must be [row_c, col_c,")):
        E.ellipse_points(np.ones(4))
    with pytest.raises(ValueError, match="finite with positive semi-axes"):
        E.ellipse_points([1, 1, -1, 1, 0])
    with pytest.raises(ValueError, match="num must be a positive integer"):
        E.ellipse_points([1, 1, 2, 1, 0], num=0)
