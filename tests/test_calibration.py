"""Tests of femlib.calibration: centre, affine, mask and scale on a FEMDiffraction2D, their
validation, and their survival through save/load, slicing, sums and copies."""

import copy
import re
import warnings

import hyperspy.api as hs
import numpy as np
import pytest

import femlib
from femlib.calibration import Calibration, affine_to_stored
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


# ========================================================================= bad input
def _centred(nav=(3,), det=(16, 16), seed=0):
    s = hs.signals.Signal2D(np.random.default_rng(seed).poisson(50, nav + det).astype(float))
    s.set_signal_type("fem_diffraction")
    s.calibration.center = ((det[1] - 1) / 2, (det[0] - 1) / 2)
    return s


def test_bad_center_leaves_the_signal_alone():
    s = _centred()
    before = s.calibration.center.copy()
    with pytest.raises(ValueError, match=r"center must be a 2-vector \(x, y\) in pixels, got an "
                                         r"array of shape \(3,\)"):
        s.calibration.center = (1, 2, 3)
    with pytest.raises(ValueError, match=r"center must be finite, got \("):
        s.calibration.center = (np.nan, 1.0)
    with pytest.raises(ValueError, match=r"center must be 2 numbers \(x, y\) in pixels, got "
                                         r"\('a', 2\)"):
        s.calibration.center = ("a", 2)
    np.testing.assert_array_equal(s.calibration.center, before)


def test_center_off_detector_is_accepted_then_warns_and_names_the_empty_bins():
    s = _centred()
    s.calibration.center = (100, 100)
    np.testing.assert_array_equal(s.calibration.center, [100, 100])
    with (
        pytest.warns(UserWarning, match=r"of the azimuths of the radial range .* around the "
                                        r"centre \(100, 100\) px"),
        pytest.raises(ValueError, match=re.escape(
            "3 radial bin(s) contain no unmasked pixel (radius 17.77, 53.3, 88.83)")),
    ):
        s.get_variance(npt=4, show_progressbar=False)


def test_bad_affine_and_mask_leave_the_signal_alone():
    s = _centred()
    with pytest.raises(ValueError, match=re.escape(
            "affine must be a 3x3 (or 2x2) matrix, got shape (4, 4)")):
        s.calibration.affine = np.eye(4)
    with pytest.raises(ValueError, match=re.escape(
            "affine must be finite, got a matrix containing NaN or inf")):
        s.calibration.affine = np.full((3, 3), np.nan)
    with pytest.raises(ValueError, match=re.escape(
            "affine must be invertible, got a singular matrix")):
        s.calibration.affine = np.zeros((3, 3))
    with pytest.raises(ValueError, match=re.escape(
            "mask has shape (10, 10) but the detector is (16, 16)")):
        s.calibration.mask = np.zeros((10, 10), bool)
    with pytest.raises(TypeError, match=re.escape(
            "mask must be a boolean array (True = excluded pixel), got dtype float64")):
        s.calibration.mask = np.zeros((16, 16))
    assert s.calibration.affine is None and s.calibration.mask is None
    assert not s.metadata.has_item("General.affine_transformation")


def test_stored_affine_that_is_singular_names_the_key():
    s = _centred()
    s.metadata.set_item("General.affine_transformation", np.zeros((3, 3)))
    with pytest.raises(ValueError, match=re.escape(
            "metadata.General.affine_transformation: affine must be invertible")):
        _ = s.calibration.affine


def test_mask_argument_does_not_touch_the_stored_mask():
    s = _centred()
    stored = np.zeros((16, 16), bool)
    stored[0] = True
    s.calibration.mask = stored
    rows, cols = np.mgrid[:16, :16]
    given = (np.hypot(cols - 7.5, rows - 7.5) > 5) & (np.hypot(cols - 7.5, rows - 7.5) < 6)
    kw = dict(npt=4, radial_range=(1.0, 7.0), show_progressbar=False)
    v_given = s.get_variance(mask=given, **kw)
    ref = _centred()
    np.testing.assert_array_equal(v_given.data, ref.get_variance(mask=given, **kw).data)
    s.get_azimuthal_integral1d(mask=given, **kw)
    np.testing.assert_array_equal(s.calibration.mask, stored)


# ============================================================ state follows the signal
def state_signal(lazy=False, haadf="array"):
    """Calibrated signal with a mask and navigation-shaped metadata (HAADF as an array or a
    Signal2D, and a second array under another node)."""
    s = calibrate(make_signal(lazy))
    h = np.arange(NAV[0] * NAV[1], dtype=float).reshape(NAV) * 10 + 26265.0
    s.metadata.set_item("HAADF.intensity", h if haadf == "array" else hs.signals.Signal2D(h))
    s.metadata.set_item("Extra.flags", np.arange(6).reshape(NAV) % 2 == 0)
    return s


def haadf_of(s):
    h = s.metadata.HAADF.intensity
    return np.asarray(getattr(h, "data", h))


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize(
    "crop",
    [(slice(2, 20), slice(1, 17)), (slice(None, None, 2), slice(3, None)), (5, slice(None))],
    ids=["isig[2:20, 1:17]", "isig[::2, 3:]", "isig[5, :]"],
)
def test_mask_follows_isig(lazy, crop):
    s = state_signal(lazy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = s.isig[crop]
    dropped = [str(w.message) for w in caught if "no longer match" in str(w.message)]
    assert len(dropped) == (c.axes_manager.signal_dimension != 2)
    x, y = crop
    expected = make_mask()[y, x]
    if c.axes_manager.signal_dimension == 2:
        np.testing.assert_array_equal(c.calibration.mask, expected)
        np.testing.assert_array_equal(c.metadata.General.mask, expected)  # pyxem's key
    else:  # a line of the detector is no detector: the mask is dropped, not left stale
        assert not c.metadata.has_item("General.mask")
    np.testing.assert_array_equal(haadf_of(c), haadf_of(s))
    np.testing.assert_array_equal(s.calibration.mask, make_mask())  # the source is untouched


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("haadf", ["array", "signal"])
@pytest.mark.parametrize(
    "index", [(slice(1, 3), slice(0, 1)), (slice(None, None, -1), 1), (2, 0)],
    ids=["inav[1:3, 0:1]", "inav[::-1, 1]", "inav[2, 0]"],
)
def test_navigation_metadata_follows_inav(lazy, haadf, index):
    s = state_signal(lazy, haadf)
    t = s.inav[index]
    array_index = index[::-1]
    np.testing.assert_array_equal(haadf_of(t).squeeze(), haadf_of(s)[array_index].squeeze())
    np.testing.assert_array_equal(
        np.asarray(t.metadata.Extra.flags), np.asarray(s.metadata.Extra.flags)[array_index]
    )
    assert isinstance(t.metadata.HAADF.intensity, np.ndarray if haadf == "array" else
                      hs.signals.BaseSignal)
    if haadf == "signal" and t.axes_manager.navigation_dimension:
        # the HAADF signal's axes are the sliced scan axes
        assert [a.size for a in t.metadata.HAADF.intensity.axes_manager.signal_axes] == [
            a.size for a in t.axes_manager.navigation_axes
        ]
    np.testing.assert_array_equal(t.calibration.mask, make_mask())


def test_sub_scan_thickness_has_the_sub_scan_shape():
    s = state_signal()
    sub = s.inav[:, 0:1]
    t = femlib.thickness.thickness_from_haadf(sub.metadata.HAADF.intensity, 26265, 10.0)
    assert t.shape == sub.axes_manager._navigation_shape_in_array
    np.testing.assert_array_equal(t, (haadf_of(s)[0:1, :] - 26265) / 10.0)


@pytest.mark.parametrize("lazy", [False, True])
def test_mask_follows_signal_rebin_any_pixel_masked(lazy):
    s = state_signal(lazy)
    r = s.rebin(scale=(1, 1, 2, 2))
    expected = make_mask().reshape(ROWS // 2, 2, COLS // 2, 2).any(axis=(1, 3))
    np.testing.assert_array_equal(r.calibration.mask, expected)
    assert r.calibration.mask.sum() > make_mask().sum() / 4  # the dead pixel still counts
    np.testing.assert_array_equal(haadf_of(r), haadf_of(s))


def test_mask_follows_rebin_that_crops():
    # One pattern (no navigation axes): a rebin that crops takes HyperSpy's numba
    # _linear_bin, whose first compilation for 4D data costs ~80 s on a fresh install
    # (~5 s for 2D); the mask logic only sees the signal axes.
    s = state_signal().inav[0, 0]
    assert s.axes_manager.navigation_dimension == 0
    r = s.rebin(scale=(3, 3))  # 24 x 20 -> 8 x 6, the last 2 rows dropped
    expected = make_mask()[:18, :24].reshape(6, 3, 8, 3).any(axis=(1, 3))
    np.testing.assert_array_equal(r.calibration.mask, expected)


@pytest.mark.parametrize("haadf", ["array", "signal"])
def test_navigation_metadata_follows_navigation_rebin_as_a_mean(haadf):
    s = state_signal(haadf=haadf)
    r = s.rebin(scale=(3, 2, 1, 1))
    np.testing.assert_array_equal(haadf_of(r), [[haadf_of(s).mean()]])
    np.testing.assert_array_equal(r.metadata.Extra.flags, [[True]])  # boolean: any
    np.testing.assert_array_equal(r.calibration.mask, make_mask())


def test_mask_follows_transpose_and_swap_axes():
    s = state_signal()
    t = s.transpose(signal_axes=[3, 2])  # detector rows <-> columns
    np.testing.assert_array_equal(t.calibration.mask, make_mask().T)
    np.testing.assert_array_equal(haadf_of(t), haadf_of(s))
    sw = s.swap_axes(0, 1)  # the two scan axes
    np.testing.assert_array_equal(haadf_of(sw), haadf_of(s).T)
    np.testing.assert_array_equal(sw.calibration.mask, make_mask())
    ro = s.rollaxis(2, 3)
    np.testing.assert_array_equal(ro.calibration.mask, make_mask().T)


def test_full_transpose_drops_what_no_longer_fits_with_a_warning():
    s = state_signal()
    with pytest.warns(UserWarning, match="no longer match the signal's shape.*General.mask"):
        t = s.T
    assert not t.metadata.has_item("General.mask")
    assert not t.metadata.has_item("HAADF.intensity")


def test_mask_and_haadf_follow_crop_in_place():
    s = state_signal()
    s.crop_signal(left=3, right=20, top=2, bottom=15)
    np.testing.assert_array_equal(s.calibration.mask, make_mask()[2:15, 3:20])
    s.crop(0, 1, 3)  # scan x
    np.testing.assert_array_equal(haadf_of(s), (np.arange(6).reshape(NAV) * 10 + 26265.0)[:, 1:3])


def test_split_by_thickness_carries_the_navigation_metadata():
    s = state_signal()
    t = haadf_of(s)
    parts = s.split_by_thickness(t, 2)
    index, _ = femlib.thickness.bin_by_thickness(t, 2)
    for b, part in enumerate(parts):
        np.testing.assert_array_equal(haadf_of(part), t[index == b])
        np.testing.assert_array_equal(part.metadata.Extra.flags,
                                      np.asarray(s.metadata.Extra.flags)[index == b])
        np.testing.assert_array_equal(part.calibration.mask, make_mask())


@pytest.mark.parametrize("lazy", [False, True])
def test_cropped_signal_integrates_with_its_cropped_mask(lazy):
    s = state_signal(lazy)
    c = s.isig[3:21, 2:18]
    kw = dict(npt=5, radial_range=(0.5, 1.8), show_progressbar=False)
    explicit = c.get_variance(mask=make_mask()[2:18, 3:21], **kw)
    np.testing.assert_array_equal(c.get_variance(**kw).data, explicit.data)
    # an explicit mask always wins
    none = np.zeros((16, 18), bool)
    assert not np.array_equal(c.get_variance(mask=none, **kw).data, explicit.data)


def test_synthetic_haadf_follows_inav_to_the_thickness_truth():
    s = femlib.data.synthetic_fem(navigation_shape=(6, 8), detector_shape=(32, 32), seed=1)
    sub = s.inav[2:7, 1:4]
    sim = sub.metadata.Simulation
    t = femlib.thickness.thickness_from_haadf(
        sub.metadata.HAADF.intensity, sim.black_level, sim.slope
    )
    assert t.shape == (3, 5)
    np.testing.assert_allclose(t, np.asarray(sim.thickness), atol=0.1)  # HAADF noise 0.02 nm


# ------------------------------------------------------------------ property: crops and slices
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def crops(draw):
    y0 = draw(st.integers(0, 6))
    y1 = draw(st.integers(y0 + 12, ROWS))
    x0 = draw(st.integers(0, 6))
    x1 = draw(st.integers(x0 + 12, COLS))
    n0 = draw(st.integers(0, NAV[0] - 1))
    n1 = draw(st.integers(n0 + 1, NAV[0]))
    m0 = draw(st.integers(0, NAV[1] - 1))
    m1 = draw(st.integers(m0 + 1, NAV[1]))
    return (y0, y1, x0, x1), (n0, n1, m0, m1)


@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(crops())
def test_random_crops_and_navigation_slices_equal_explicit_state(crop):
    (y0, y1, x0, x1), (n0, n1, m0, m1) = crop
    s = state_signal()
    s.calibration.center = (x0 + (x1 - x0) / 2 - 0.3, y0 + (y1 - y0) / 2 + 0.2)
    sub = s.inav[m0:m1, n0:n1].isig[x0:x1, y0:y1]
    mask = make_mask()[y0:y1, x0:x1]
    thickness = (haadf_of(s)[n0:n1, m0:m1] - 26265.0) / 10.0
    assert sub.calibration.mask.shape == mask.shape
    kw = dict(npt=3, radial_range=(0.3, 1.4), show_progressbar=False)
    ref = s.deepcopy()
    ref.calibration.mask = None
    ref = ref.inav[m0:m1, n0:n1].isig[x0:x1, y0:y1]
    np.testing.assert_array_equal(
        sub.get_azimuthal_integral1d(**kw).data,
        ref.get_azimuthal_integral1d(mask=mask, **kw).data,
    )
    got = femlib.thickness.thickness_from_haadf(sub.metadata.HAADF.intensity, 26265.0, 10.0)
    np.testing.assert_array_equal(got, thickness)


# ------------------------------------------------------------------ guards
def test_unset_centre_warns_once_naming_centre_and_range():
    s = hs.signals.Signal2D(np.ones((2, 16, 16)))
    s.set_signal_type("fem_diffraction")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s.get_azimuthal_integral1d(npt=4, radial_range=(2.0, 6.0), show_progressbar=False)
    msgs = [str(w.message) for w in caught if "azimuths" in str(w.message)]
    assert len(msgs) == 1
    assert "radial range (2, 6)" in msgs[0] and "centre (0, 0) px" in msgs[0], msgs
    # On a ring of radius r around pixel (0, 0) the detector (edges at -0.5) holds a quarter
    # of the azimuths plus 2 asin(0.5 / r) / (2 pi); mean over the bin centres 2.5 ... 5.5.
    r = np.array([2.5, 3.5, 4.5, 5.5])
    expected = np.mean(0.25 + np.arcsin(0.5 / r) / np.pi)
    assert "looks unset" in msgs[0] and f"only {expected:.0%} " in msgs[0]


def test_radial_range_mostly_off_the_detector_warns():
    s = _centred(det=(16, 16))
    with pytest.warns(UserWarning, match=r"only \d+% of the azimuths of the radial range "
                                         r"\(8, 10\) lie on the detector around the centre "
                                         r"\(7.5, 7.5\) px$"):
        s.get_azimuthal_integral1d(npt=2, radial_range=(8.0, 10.0), show_progressbar=False)


def test_centred_range_on_the_detector_does_not_warn():
    s = _centred(det=(16, 16))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s.get_azimuthal_integral1d(npt=4, show_progressbar=False)  # 0 .. the far corner
        s.get_variance(npt=4, radial_range=(1.0, 7.0), show_progressbar=False)
    assert not [w for w in caught if "azimuths" in str(w.message)]


def test_azimuth_fraction_on_detector_closed_forms():
    from femlib.calibration import azimuth_fraction_on_detector

    # centre on an edge's midpoint: half of a small ring is on the detector
    f = azimuth_fraction_on_detector((64, 64), (31.5, -0.5), None, (1.0, 1.0), [5.0, 10.0])
    np.testing.assert_allclose(f, 0.5, atol=2 / 720)
    # an affine that squeezes y by 2 keeps the ring inside a detector half as tall
    f = azimuth_fraction_on_detector((12, 40), (19.5, 5.5), np.diag([1.0, 2.0, 1.0]),
                                     (1.0, 1.0), [10.0])
    np.testing.assert_allclose(f, 1.0)


def test_mask_and_haadf_follow_split():
    s = state_signal()
    halves = s.split(axis=2, number_of_parts=2)  # detector x in two
    np.testing.assert_array_equal(halves[0].calibration.mask, make_mask()[:, :12])
    np.testing.assert_array_equal(halves[1].calibration.mask, make_mask()[:, 12:])
    columns = s.split(axis=0)  # one part per scan column, the axis removed
    for i, part in enumerate(columns):
        np.testing.assert_array_equal(haadf_of(part), haadf_of(s)[:, i])
        np.testing.assert_array_equal(part.calibration.mask, make_mask())
