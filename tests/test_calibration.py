"""Tests of femlib.calibration: centre, affine, mask and scale on a FEMDiffraction2D, their
validation, and their survival through save/load, slicing, sums and copies."""

import copy

import hyperspy.api as hs
import numpy as np
import pytest

from femlib.calibration import Calibration, affine_from_stored, affine_to_stored
from femlib.signals import FEMDiffraction2D, LazyFEMDiffraction2D

ROWS, COLS = 20, 24  # non-square so that an x/y swap shows
NAV = (2, 3)  # array order: 2 rows of 3 probe positions
CENTER = (11.3, 9.6)  # (x, y) pixels
AFFINE_2X2 = np.array([[1.1, 0.05], [0.0, 0.9]])
AFFINE = np.array([[1.1, 0.05, 0.0], [0.0, 0.9, 0.0], [0.0, 0.0, 1.0]])


def make_signal(lazy=False, seed=0):
    """Seeded Poisson patterns (mean 50 counts) as a FEMDiffraction2D, nav (3, 2) x sig (24, 20)."""
    rng = np.random.default_rng(seed)
    s = hs.signals.Signal2D(rng.poisson(50.0, NAV + (ROWS, COLS)).astype(np.float32))
    s.set_signal_type("fem_diffraction")
    return s.as_lazy() if lazy else s


def make_mask():
    mask = np.zeros((ROWS, COLS), bool)
    mask[:2] = True  # e.g. a beam-stop arm along the top
    mask[5, 7] = True  # a dead pixel
    return mask


def calibrate(s):
    s.calibration.scale = 0.25
    s.calibration.units = "nm^-1"
    s.calibration.center = CENTER
    s.calibration.affine = AFFINE_2X2
    s.calibration.mask = make_mask()
    return s


def values(data):
    return np.asarray(data.compute() if hasattr(data, "compute") else data)


def assert_calibration_equal(a, b):
    np.testing.assert_allclose(a.calibration.center, b.calibration.center, rtol=0, atol=1e-12)
    assert a.calibration.scale == b.calibration.scale
    assert a.calibration.units == b.calibration.units
    if b.calibration.affine is None:
        assert a.calibration.affine is None
    else:
        np.testing.assert_array_equal(a.calibration.affine, b.calibration.affine)
    if b.calibration.mask is None:
        assert a.calibration.mask is None
    else:
        assert a.calibration.mask.dtype == bool
        np.testing.assert_array_equal(a.calibration.mask, b.calibration.mask)


def assert_calibrated(s):
    """``s`` carries exactly the calibration set by :func:`calibrate`."""
    np.testing.assert_allclose(s.calibration.center, CENTER, rtol=0, atol=1e-12)
    assert s.calibration.scale == 0.25
    assert s.calibration.units == "nm^-1"
    np.testing.assert_array_equal(s.calibration.affine, AFFINE)
    assert s.calibration.mask.dtype == bool
    np.testing.assert_array_equal(s.calibration.mask, make_mask())


# ------------------------------------------------------------------ accessor
def test_accessor_is_created_once_and_bound_to_its_signal():
    s = make_signal()
    cal = s.calibration
    assert isinstance(cal, Calibration)
    assert cal is s.calibration
    assert cal._signal is s
    assert cal.detector_shape == (ROWS, COLS)
    # Nothing set: centre at the origin of the axes, no affine, no mask.
    np.testing.assert_array_equal(cal.center, [0.0, 0.0])
    assert cal.affine is None
    assert cal.mask is None


# ------------------------------------------------------------------ centre
@pytest.mark.parametrize("lazy", [False, True])
def test_center_round_trip_stored_as_offsets(lazy):
    s = make_signal(lazy)
    x, y = s.axes_manager.signal_axes
    x.scale = y.scale = 0.25
    s.calibration.center = CENTER
    np.testing.assert_allclose(s.calibration.center, CENTER, rtol=0, atol=1e-12)
    assert x.offset == pytest.approx(-11.3 * 0.25, abs=1e-12)
    assert y.offset == pytest.approx(-9.6 * 0.25, abs=1e-12)
    # The calibrated coordinate of a pixel is its (scaled) distance from the centre.
    np.testing.assert_allclose(x.axis, (np.arange(COLS) - 11.3) * 0.25, atol=1e-12)
    np.testing.assert_allclose(y.axis, (np.arange(ROWS) - 9.6) * 0.25, atol=1e-12)
    # The axes are the source of truth: moving them moves the centre.
    x.offset = -1.0
    np.testing.assert_allclose(s.calibration.center, (4.0, 9.6), atol=1e-12)


@pytest.mark.parametrize("lazy", [False, True])
def test_center_none_is_detector_middle(lazy):
    s = make_signal(lazy)
    s.calibration.center = None
    np.testing.assert_array_equal(s.calibration.center, [(COLS - 1) / 2, (ROWS - 1) / 2])
    np.testing.assert_array_equal(s.calibration.center, [11.5, 9.5])


def test_changing_scale_keeps_center_in_pixels():
    s = make_signal()
    s.calibration.center = CENTER
    s.calibration.scale = 0.5
    np.testing.assert_allclose(s.calibration.center, CENTER, atol=1e-12)
    assert s.calibration.scale == 0.5
    x, y = s.axes_manager.signal_axes
    assert (x.scale, y.scale) == (0.5, 0.5)
    assert x.offset == pytest.approx(-11.3 * 0.5, abs=1e-12)
    assert y.offset == pytest.approx(-9.6 * 0.5, abs=1e-12)
    s.calibration.scale = 0.03
    np.testing.assert_allclose(s.calibration.center, CENTER, atol=1e-12)
    assert y.offset == pytest.approx(-9.6 * 0.03, abs=1e-12)


def test_units_set_both_axes():
    s = make_signal()
    s.calibration.units = "nm^-1"
    assert [a.units for a in s.axes_manager.signal_axes] == ["nm^-1", "nm^-1"]
    assert s.calibration.units == "nm^-1"


# ------------------------------------------------------------------ affine
@pytest.mark.parametrize("lazy", [False, True])
def test_affine_round_trip(lazy):
    s = make_signal(lazy)
    a = np.array([[1.2, 0.1, 0.0], [-0.05, 0.8, 0.0], [0.0, 0.0, 1.0]])
    s.calibration.affine = a
    np.testing.assert_array_equal(s.calibration.affine, a)
    # Stored in pyxem's meaning: S = A / det(A) on the linear part.
    det = 1.2 * 0.8 + 0.1 * 0.05
    np.testing.assert_allclose(
        s.metadata.General.affine_transformation,
        [[1.2 / det, 0.1 / det, 0.0], [-0.05 / det, 0.8 / det, 0.0], [0.0, 0.0, 1.0]],
        rtol=1e-15,
    )
    assert s.calibration.affine.dtype == np.float64


def test_affine_2x2_is_embedded():
    s = make_signal()
    s.calibration.affine = AFFINE_2X2.tolist()
    got = s.calibration.affine
    assert got.shape == (3, 3)
    np.testing.assert_array_equal(got, AFFINE)
    np.testing.assert_allclose(
        s.metadata.General.affine_transformation, affine_to_stored(AFFINE), rtol=1e-15
    )


def test_affine_none_removes():
    s = make_signal()
    s.calibration.affine = AFFINE
    s.calibration.affine = None
    assert s.calibration.affine is None
    assert not s.metadata.has_item("General.affine_transformation")
    s.calibration.affine = None  # removing twice is fine
    assert s.calibration.affine is None


# ------------------------------------------------------------------ mask
@pytest.mark.parametrize("lazy", [False, True])
def test_mask_round_trip(lazy):
    s = make_signal(lazy)
    s.calibration.mask = make_mask()
    got = s.calibration.mask
    assert got.dtype == bool
    assert got.shape == (ROWS, COLS)
    np.testing.assert_array_equal(got, make_mask())
    np.testing.assert_array_equal(s.metadata.General.mask, make_mask())  # pyxem's key
    assert not s.metadata.has_item("General.detector_mask")
    assert got.sum() == 2 * COLS + 1


@pytest.mark.parametrize("lazy", [False, True])
def test_mask_from_boolean_signal(lazy):
    s = make_signal(lazy)
    summed = s.sum()
    threshold = 290.0  # frame sums are Poisson(300): a fraction of the pixels is below
    mask = summed < threshold
    s.calibration.mask = mask
    expected = values(s.data).sum(axis=(0, 1)) < threshold
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(s.calibration.mask, expected)
    assert isinstance(s.metadata.General.mask, np.ndarray)


def test_mask_integer_zero_one_is_accepted():
    s = make_signal()
    s.calibration.mask = make_mask().astype(np.uint8)
    assert s.calibration.mask.dtype == bool
    np.testing.assert_array_equal(s.calibration.mask, make_mask())


def test_mask_none_removes():
    s = make_signal()
    s.calibration.mask = make_mask()
    s.calibration.mask = None
    assert s.calibration.mask is None
    assert not s.metadata.has_item("General.mask")
    s.calibration.mask = None
    assert s.calibration.mask is None


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ((1.0,), r"center.*\(1,\)"),
        ((1.0, 2.0, 3.0), r"center.*\(3,\)"),
        ([[1.0, 2.0]], r"center.*\(1, 2\)"),
        ((np.nan, 2.0), "center must be finite"),
        ((1.0, np.inf), "center must be finite"),
        ((-np.inf, 2.0), "center must be finite"),
    ],
)
def test_center_validation(value, message):
    s = make_signal()
    s.calibration.center = CENTER
    with pytest.raises(ValueError, match=message):
        s.calibration.center = value
    np.testing.assert_allclose(s.calibration.center, CENTER, atol=1e-12)  # unchanged


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.eye(4), r"affine.*\(4, 4\)"),
        (np.ones(3), r"affine.*\(3,\)"),
        (np.ones((2, 3)), r"affine.*\(2, 3\)"),
        ([[np.nan, 0.0], [0.0, 1.0]], "affine must be finite"),
        (np.diag([1.0, np.inf, 1.0]), "affine must be finite"),
        (np.zeros((2, 2)), "affine must be invertible"),
        ([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 1.0]], "affine must be invertible"),
    ],
)
def test_affine_validation(value, message):
    s = make_signal()
    s.calibration.affine = AFFINE
    with pytest.raises(ValueError, match=message):
        s.calibration.affine = value
    np.testing.assert_array_equal(s.calibration.affine, AFFINE)  # unchanged


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (np.zeros((COLS, ROWS), bool), ValueError, r"mask has shape \(24, 20\).*\(20, 24\)"),
        (np.zeros((ROWS, COLS - 1), bool), ValueError, r"mask has shape \(20, 23\)"),
        (np.zeros((2, ROWS, COLS), bool), ValueError, r"mask has shape \(2, 20, 24\)"),
        (np.zeros((ROWS, COLS)), TypeError, "mask must be a boolean array.*float64"),
        (np.full((ROWS, COLS), 0.5, np.float32), TypeError, "mask must be .*float32"),
        (np.full((ROWS, COLS), 2), TypeError, "mask must be a boolean array"),
    ],
)
def test_mask_validation(value, error, message):
    s = make_signal()
    s.calibration.mask = make_mask()
    with pytest.raises(error, match=message):
        s.calibration.mask = value
    np.testing.assert_array_equal(s.calibration.mask, make_mask())  # unchanged


def test_mask_signal_of_wrong_shape_is_rejected():
    s = make_signal()
    other = hs.signals.Signal2D(np.zeros((COLS, ROWS), bool))
    with pytest.raises(ValueError, match="mask has shape"):
        s.calibration.mask = other


@pytest.mark.parametrize("value", [0, 0.0, -0.5, np.nan, np.inf, -np.inf])
def test_scale_validation(value):
    s = make_signal()
    s.calibration.center = CENTER
    s.calibration.scale = 0.25
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        s.calibration.scale = value
    assert s.calibration.scale == 0.25  # unchanged
    assert [a.scale for a in s.axes_manager.signal_axes] == [0.25, 0.25]
    np.testing.assert_allclose(s.calibration.center, CENTER, atol=1e-12)


@pytest.mark.parametrize(
    ("attr", "value"),
    [("center", ("a", "b")), ("affine", "abc"), ("scale", None), ("scale", "a")],
)
def test_non_numeric_input_names_the_argument(attr, value):
    s = make_signal()
    with pytest.raises((TypeError, ValueError), match=attr):
        setattr(s.calibration, attr, value)


@pytest.mark.parametrize("attr", ["affine", "mask"])
def test_setting_copies_the_callers_array(attr):
    s = make_signal()
    value = AFFINE.copy() if attr == "affine" else make_mask()
    setattr(s.calibration, attr, value)
    value[...] = 0  # a singular affine / an empty mask, set behind the accessor's back
    expected = AFFINE if attr == "affine" else make_mask()
    np.testing.assert_array_equal(getattr(s.calibration, attr), expected)


# ------------------------------------------------------------------ survival
@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("ext", ["hspy", "zspy"])
def test_calibration_survives_save_load(tmp_path, ext, lazy):
    s = calibrate(make_signal(lazy))
    path = tmp_path / f"x.{ext}"
    s.save(path)
    r = hs.load(path, lazy=lazy)
    assert type(r) is (LazyFEMDiffraction2D if lazy else FEMDiffraction2D)
    assert r.calibration._signal is r
    assert_calibrated(r)
    assert_calibration_equal(r, s)
    np.testing.assert_array_equal(values(r.data), values(s.data))


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize(
    ("index", "data_index"),
    [
        ((slice(1, 3), slice(0, 2)), (slice(0, 2), slice(1, 3))),
        ((0, 0), (0, 0)),
        ((2, 1), (1, 2)),
    ],
    ids=["inav[1:3,0:2]", "inav[0,0]", "inav[2,1]"],
)
def test_calibration_survives_inav(lazy, index, data_index):
    s = calibrate(make_signal(lazy))
    t = s.inav[index]
    assert type(t) is type(s)
    assert t.calibration._signal is t
    assert_calibrated(t)
    np.testing.assert_array_equal(values(t.data), values(s.data)[data_index])


@pytest.mark.parametrize("lazy", [False, True])
def test_calibration_survives_sum(lazy):
    s = calibrate(make_signal(lazy))
    summed = s.sum()
    assert type(summed) is type(s)
    assert summed.axes_manager.navigation_dimension == 0
    assert_calibrated(summed)
    np.testing.assert_allclose(values(summed.data), values(s.data).sum(axis=(0, 1)))


@pytest.mark.parametrize("lazy", [False, True])
def test_calibration_survives_as_lazy_and_compute(lazy):
    s = calibrate(make_signal(lazy))
    other = s.as_lazy() if not lazy else s.deepcopy()
    if lazy:
        other.compute()
    assert type(other) is (FEMDiffraction2D if lazy else LazyFEMDiffraction2D)
    assert_calibrated(other)


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize(
    "copier", [copy.deepcopy, lambda s: s.deepcopy()], ids=["copy.deepcopy", "s.deepcopy"]
)
def test_calibration_survives_copies_independently(lazy, copier):
    s = calibrate(make_signal(lazy))
    cal = s.calibration  # the cached accessor exists before copying
    c = copier(s)
    assert type(c) is type(s)
    assert c.calibration._signal is c
    assert c.calibration is not cal
    assert_calibrated(c)
    # Changing the copy's calibration leaves the original alone, in every part.
    c.calibration.center = (3.0, 4.0)
    c.calibration.scale = 0.5
    c.calibration.units = "1/A"
    c.calibration.affine = np.diag([2.0, 0.5, 1.0])
    mask = c.calibration.mask
    mask[...] = True  # even through the getter's array
    c.calibration.mask = ~make_mask()
    np.testing.assert_allclose(c.calibration.center, (3.0, 4.0), atol=1e-12)
    assert s.calibration is cal
    assert cal._signal is s
    assert_calibrated(s)
