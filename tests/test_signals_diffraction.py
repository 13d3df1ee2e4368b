"""FEMDiffraction2D's methods on bad and edge-case input (the get_variance, integral and
split_by_thickness rows of ``docs/user_guide/errors.rst``).

Every test asserts the exception and its message (or the exact documented numbers and
warnings) and that the input signal -- data, dtype, metadata and axes -- and any array
argument are unchanged afterwards. Hand-made frames with known answers are used throughout:
uniform frames ``D_n(p) = c_n`` give ``Omega = re = VImage = <c^2> / <c>^2 - 1`` and
``r = 0`` whatever the geometry.
"""

import contextlib
import copy
import re
import warnings

import dask.array as da
import hyperspy.api as hs
import numpy as np
import pytest
from hyperspy.defaults_parser import preferences

from femlib.signals import FEMDiffraction2D, LazyFEMDiffraction2D

# The bin checks are thickness.bin_by_thickness's: the same table as its own tests (the
# tests folder is on sys.path under pytest's default rootdir import).
from test_thickness import BAD_BINS

DET = (16, 16)
CENTER = (7.5, 7.5)  # (x, y): the middle of the detector
RR = (1.0, 7.0)  # radial range used with npt=4: bin edges 1, 2.5, 4, 5.5, 7
RADII = "1.75, 3.25, 4.75, 6.25"  # the bin centres, as the warnings print them
IN_RANGE = (7, 12)  # (row, col) at radius 4.53 (bin 2, azimuth bin 2 of 4)
OUT_OF_RANGE = (0, 0)  # radius 10.6: no weight for RR


@pytest.fixture(autouse=True)
def _no_progressbar(monkeypatch):
    monkeypatch.setattr(preferences.General, "show_progressbar", False)


# --------------------------------------------------------------------------- helpers


def _signal(frames, lazy=False, chunks=None):
    """``FEMDiffraction2D`` (or lazy) of hand-made frames, centred on the detector."""
    s = hs.signals.Signal2D(np.asarray(frames))
    s.set_signal_type("fem_diffraction")
    s.calibration.center = CENTER
    s.metadata.General.title = "bad input"
    if lazy:
        s = s.as_lazy()
        if chunks is not None:
            s.data = s.data.rechunk(chunks)
    return s


def _uniform(c, dtype=float, shape=DET):
    """Frames ``D_n(p) = c_n``."""
    c = np.asarray(c)
    return (c[:, None, None] * np.ones((c.size,) + shape)).astype(dtype)


def _poisson(nav=(3,), seed=0):
    return np.random.default_rng(seed).poisson(50, nav + DET).astype(float)


def _empty_part(lazy):
    """The empty part of ``split_by_thickness`` (a navigation axis of size 0)."""
    s = _signal(_poisson(nav=(3,)), lazy)
    with pytest.warns(UserWarning, match="empty thickness bin"):
        part = s.split_by_thickness(np.array([20.0, 21.0, 22.0]), [0, 10, 30])[0]
    assert part.data.shape == (0,) + DET
    return part


def _exploding(nav=4):
    """A lazy signal whose data raise when read: argument checks must come first."""

    def boom(block):
        raise RuntimeError("the data were read")

    darr = da.from_array(np.zeros((nav,) + DET), chunks=(1,) + DET).map_blocks(boom, dtype=float)
    s = hs.signals.Signal2D(darr).as_lazy()
    s.set_signal_type("fem_diffraction")
    s.calibration.center = CENTER
    return s


def _equal(a, b):
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (
            isinstance(b, (list, tuple))
            and len(a) == len(b)
            and all(_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        nan_ok = a.dtype.kind in "fc"
        return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=nan_ok)
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _snapshot(obj):
    if hasattr(obj, "axes_manager"):
        data = obj.data
        return {
            "class": type(obj),
            "data_object": data.name if hasattr(data, "dask") else id(data),
            "data": np.array(data),
            "metadata": copy.deepcopy(obj.metadata.as_dictionary()),
            "axes": copy.deepcopy(obj.axes_manager._get_axes_dicts()),
        }
    return np.array(obj, copy=True)


@contextlib.contextmanager
def untouched(*objects):
    """Assert that signals (data, dtype, metadata, axes) and arrays are left unchanged."""
    before = [_snapshot(o) for o in objects]
    yield
    for obj, snap in zip(objects, before, strict=True):
        after = _snapshot(obj)
        assert _equal(snap, after), f"input modified: {type(obj).__name__}"


@contextlib.contextmanager
def no_warning_about(text):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert not [w for w in caught if text in str(w.message)], [str(w.message) for w in caught]


def _v(s, method="Omega", **kw):
    """get_variance, computed: a lazy input gives a LazyFEMVariance1D, computed here (its
    warnings and errors of the pass come with compute())."""
    kw.setdefault("radial_range", RR)
    v = s.get_variance(npt=4, method=method, **kw)
    if s._lazy:
        assert type(v).__name__ == "LazyFEMVariance1D"
        v.compute()
    return v


NONFINITE_MSG = (
    "{n} pattern(s) with NaN or infinite values in unmasked pixels of the radial range were "
    "left out (mask those pixels, or exclude the positions with navigation_mask)"
)
INTEGRAL_NONFINITE_MSG = (
    "{n} pattern(s) have NaN or infinite values in unmasked pixels; the bins they touch are "
    "NaN/inf in the result (mask those pixels)"
)
UNDEFINED_MSG = f"V(k) is undefined (NaN) in 4 radial bin(s) (radius {RADII})"


def _msg(template, **kw):
    return re.escape(template.format(**kw))


def _omega(c):
    """``<c^2> / <c>^2 - 1``: Omega, re and VImage of uniform frames ``c_n``."""
    c = np.asarray(c, dtype=float)
    return np.mean(c**2) / np.mean(c) ** 2 - 1


# =========================================================================== get_variance
# --- wrong dimensionality


@pytest.mark.parametrize("lazy", [False, True])
def test_variance_single_pattern_raises(lazy):
    s = _signal(_poisson(nav=()), lazy)
    assert s.axes_manager.navigation_dimension == 0
    with (
        untouched(s),
        pytest.raises(
            ValueError,
            match=re.escape(
                "only 1 usable pattern(s) (after navigation_mask, thickness edges and 0 "
                "non-finite): V(k) needs at least 2"
            ),
        ),
    ):
        _v(s)


@pytest.mark.parametrize("lazy", [False, True])
def test_variance_any_number_of_navigation_axes(lazy):
    c = np.array([1.0, 3.0] * 12)
    frames = _uniform(c).reshape((2, 3, 4) + DET)  # three navigation axes
    s = _signal(frames, lazy)
    with untouched(s):
        v = _v(s, method="all")
    np.testing.assert_allclose(v.data[[0, 2, 3]], 0.25, rtol=1e-12)
    np.testing.assert_allclose(v.data[1], 0.0, atol=1e-12)
    assert v.metadata.FEM.number_of_patterns == 24


def test_variance_signal_without_two_signal_axes_is_not_fem_diffraction():
    s = hs.signals.Signal1D(np.ones((3, 16)))
    s.set_signal_type("fem_diffraction")
    assert type(s) is hs.signals.Signal1D
    with untouched(s), pytest.raises(AttributeError, match="has no attribute 'get_variance'"):
        s.get_variance(npt=4)


def test_variance_empty_navigation_axis_eager():
    s = _empty_part(lazy=False)
    with untouched(s), pytest.raises(ValueError, match=re.escape("only 0 usable pattern(s)")):
        _v(s)


def test_variance_empty_navigation_axis_lazy():
    s = _empty_part(lazy=True)
    with (
        untouched(s),
        pytest.raises(
            ValueError,
            match=re.escape(
                "only 0 usable pattern(s) (after navigation_mask, thickness edges and 0 non-finite)"
            ),
        ),
    ):
        _v(s)


# --- mask


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("shape", [(10, 10), (16, 15), (3, 16, 16)])
def test_variance_mask_wrong_shape(lazy, shape):
    s = _signal(_poisson(), lazy)
    mask = np.zeros(shape, bool)
    with (
        untouched(s, mask),
        pytest.raises(
            ValueError, match=re.escape(f"mask has shape {shape} but the detector is (16, 16)")
        ),
    ):
        _v(s, mask=mask)


def test_variance_mask_signal_wrong_shape():
    s = _signal(_poisson())
    mask = s.inav[0].isig[:8, :8] < 10
    with (
        untouched(s, mask),
        pytest.raises(
            ValueError, match=re.escape("mask has shape (8, 8) but the detector is (16, 16)")
        ),
    ):
        _v(s, mask=mask)


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize(
    "mask, dtype",
    [
        (np.zeros(DET), "float64"),
        (np.full(DET, 2), "int64"),
        (np.zeros(DET, complex), "complex128"),
    ],
)
def test_variance_mask_wrong_dtype(lazy, mask, dtype):
    s = _signal(_poisson(), lazy)
    with (
        untouched(s, mask),
        pytest.raises(
            TypeError,
            match=re.escape(
                f"mask must be a boolean array (True = excluded pixel), got dtype {dtype}"
            ),
        ),
    ):
        _v(s, mask=mask)


def test_variance_mask_float_signal_rejected():
    """The common slip: ``mask=s.sum()`` instead of ``mask=s.sum() < threshold``."""
    s = _signal(_poisson())
    mask = s.sum()
    with untouched(s, mask), pytest.raises(TypeError, match="got dtype float64"):
        _v(s, mask=mask)


@pytest.mark.parametrize("lazy", [False, True])
def test_variance_mask_accepted_forms_agree(lazy):
    s = _signal(_poisson(nav=(6,)), lazy)
    m = np.zeros(DET, bool)
    m[IN_RANGE] = True
    ref = _v(s, mask=m).data
    forms = [
        m.astype(np.uint8),
        m.astype(int),
        hs.signals.Signal2D(m),
        hs.signals.Signal2D(m).as_lazy(),
    ]
    for form in forms:
        with untouched(s, form):
            np.testing.assert_array_equal(_v(s, mask=form).data, ref)


# --- NaN / inf


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_variance_nonfinite_pixel_leaves_frame_out(lazy, bad, keep_small_chunks):
    frames = _uniform([1.0, 3.0, 1.0, 3.0, 5.0])
    frames[4][IN_RANGE] = bad
    s = _signal(frames, lazy, chunks=(2, 16, 16))
    with untouched(s), pytest.warns(UserWarning, match=_msg(NONFINITE_MSG, n=1)):
        v = _v(s, method="all")
    # frame 4 left out: c = (1, 3, 1, 3)
    np.testing.assert_allclose(v.data[[0, 2, 3]], 0.25, rtol=1e-12)
    np.testing.assert_allclose(v.data[1], 0.0, atol=1e-12)
    assert v.metadata.FEM.number_of_patterns == 4


@pytest.mark.parametrize("lazy", [False, True])
def test_variance_nonfinite_whole_frames(lazy, keep_small_chunks):
    frames = _uniform([1.0, np.nan, 3.0, 1.0, np.inf, 3.0])
    s = _signal(frames, lazy, chunks=(2, 16, 16))
    with untouched(s), pytest.warns(UserWarning, match=_msg(NONFINITE_MSG, n=2)):
        v = _v(s)
    np.testing.assert_allclose(v.data, 0.25, rtol=1e-12)
    assert v.metadata.FEM.number_of_patterns == 4


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("where", ["masked", "out_of_range", "navigation_masked"])
def test_variance_nonfinite_harmless_where_not_weighted(lazy, where):
    frames = _uniform([1.0, 3.0, 1.0, 3.0, 5.0])
    mask = np.zeros(DET, bool)
    mask[IN_RANGE] = True
    nav_mask = np.zeros(5, bool)
    kw = {}
    if where == "masked":
        frames[:, IN_RANGE[0], IN_RANGE[1]] = np.nan
        kw["mask"] = mask
    elif where == "out_of_range":
        frames[:, OUT_OF_RANGE[0], OUT_OF_RANGE[1]] = np.inf
    else:
        frames[4] = np.nan
        nav_mask[4] = True
        kw["navigation_mask"] = nav_mask
    s = _signal(frames, lazy)
    with untouched(s, mask, nav_mask), no_warning_about("NaN"):
        v = _v(s, **kw)
    c = [1, 3, 1, 3] if where == "navigation_masked" else [1, 3, 1, 3, 5]
    np.testing.assert_allclose(v.data, _omega(c), rtol=1e-12)


@pytest.mark.parametrize("lazy", [False, True])
def test_variance_fewer_than_two_finite_frames(lazy):
    frames = _uniform([1.0, np.nan, np.nan])
    s = _signal(frames, lazy)
    with (
        untouched(s),
        pytest.warns(UserWarning, match=_msg(NONFINITE_MSG, n=2)),
        pytest.raises(
            ValueError,
            match=re.escape(
                "only 1 usable pattern(s) (after navigation_mask, thickness edges and 2 "
                "non-finite): V(k) needs at least 2"
            ),
        ),
    ):
        _v(s)


# --- negative values


@pytest.mark.parametrize("lazy", [False, True])
def test_variance_negative_values_used_as_they_are(lazy):
    s = _signal(_uniform([-1.0, 3.0, -1.0, 3.0]), lazy)  # <c> = 1, <c^2> = 5
    with untouched(s), pytest.warns(RuntimeWarning, match=re.escape(UNDEFINED_MSG)):
        v = _v(s, method="all")
    np.testing.assert_allclose(v.data[0], 4.0, rtol=1e-12)  # Omega
    assert np.isnan(v.data[1]).all()  # r: ring mean <= 0 in frames 0 and 2
    np.testing.assert_allclose(v.data[2], 4.0, rtol=1e-12)  # re
    np.testing.assert_allclose(v.data[3], 4.0, rtol=1e-12)  # VImage: every pixel mean is 1


@pytest.mark.parametrize("lazy", [False, True])
def test_variance_vimage_ignores_pixels_with_non_positive_mean(lazy):
    frames = _uniform([1.0, 3.0, 1.0, 3.0])  # V = 0.25 per pixel
    frames[:, :, :8] = np.array([-1.0, -5.0, -1.0, 0.5])[:, None, None]  # mean -1.625
    s = _signal(frames, lazy)
    with untouched(s):
        v = _v(s, method="VImage")
    np.testing.assert_allclose(v.data, 0.25, rtol=1e-12)
    frames = frames.copy()
    frames[:, :, :8] = 0.0  # pixels that never received counts: likewise left out
    s = _signal(frames, lazy)
    with untouched(s):
        v = _v(s, method=["r", "VImage"])
    np.testing.assert_allclose(v.data[0], 1.0, rtol=1e-12)  # r: half the ring is 0
    np.testing.assert_allclose(v.data[1], 0.25, rtol=1e-12)


@pytest.mark.parametrize("lazy", [False, True])
def test_variance_all_pixels_non_positive_gives_nan_with_warning(lazy):
    s = _signal(_uniform([-1.0, -2.0, -1.0, -2.0]), lazy)  # <c^2> / <c>^2 - 1 = 1/9
    with untouched(s), pytest.warns(RuntimeWarning, match=re.escape(UNDEFINED_MSG)):
        v = _v(s, method="all")
    np.testing.assert_allclose(v.data[[0, 2]], 1 / 9, rtol=1e-12)
    assert np.isnan(v.data[[1, 3]]).all()


# --- integer dtypes


INT_CASES = [
    ("uint8", [250, 50, 250, 50], 4 / 9),  # 250**2 overflows uint8 and int16
    ("uint16", [60000, 20000, 60000, 20000], 0.25),  # 60000**2 overflows int32
    (">u2", [60000, 20000, 60000, 20000], 0.25),  # big-endian (Merlin files)
    ("int32", [60000, 20000, 60000, 20000], 0.25),
]


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("dtype, c, expected", INT_CASES)
def test_variance_integer_dtypes_do_not_overflow(lazy, dtype, c, expected):
    s = _signal(_uniform(c, dtype), lazy)
    with untouched(s):
        v = _v(s, method="all", gain=1.0)
    # with gain 1 the shot-noise terms are 1 / <I> (and friends), tiny here: compare with
    # the same data as float64
    ref = _v(_signal(_uniform(c, float)), method="all", gain=1.0).data
    np.testing.assert_allclose(v.data, ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(_v(s, method="all").data[[0, 2, 3]], expected, rtol=1e-12)
    np.testing.assert_allclose(_v(s, method="all").data[1], 0.0, atol=1e-12)


def test_variance_boolean_data_read_as_0_1():
    frames = _poisson(nav=(6,)) > 50
    s = _signal(frames)
    with untouched(s):
        v = _v(s, method="all").data
    np.testing.assert_allclose(v, _v(_signal(frames.astype(float)), method="all").data, rtol=1e-12)


@pytest.mark.parametrize(
    "method", ["get_variance", "get_azimuthal_integral1d", "get_azimuthal_integral2d"]
)
def test_complex_data(method):
    frames = _poisson().astype(complex)
    s = hs.signals.Signal2D(frames)
    s.set_signal_type("fem_diffraction")  # HyperSpy keeps complex data a ComplexSignal2D
    with untouched(s), pytest.raises(AttributeError, match=f"has no attribute '{method}'"):
        getattr(s, method)(npt=4)
    message = re.escape("frames must be real numbers, got dtype complex128")
    s = FEMDiffraction2D(frames)
    with untouched(s), pytest.raises(TypeError, match=message):
        getattr(s, method)(npt=4)
    s = LazyFEMDiffraction2D(da.from_array(frames))
    with untouched(s), pytest.raises(TypeError, match=message):
        getattr(s, method)(npt=4)  # lazy too: raised by the call, nothing computed


# --- radial range, bins


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize(
    "method", ["get_variance", "get_azimuthal_integral1d", "get_azimuthal_integral2d"]
)
def test_empty_radial_range(lazy, method):
    s = _signal(_poisson(), lazy)
    with (
        untouched(s),
        pytest.raises(
            ValueError, match=re.escape("radial_range must be increasing (start < stop), got (")
        ),
    ):
        getattr(s, method)(npt=4, radial_range=(3, 3))


def test_range_messages_print_plain_numbers():
    s = _signal(_poisson())
    with pytest.raises(ValueError, match=re.escape("got (3.0, 3.0)")):
        _v(s, radial_range=(3, 3))


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("method", ["get_variance", "get_azimuthal_integral1d"])
def test_radial_bins_with_no_pixel(lazy, method):
    # Exact pixel splitting gives every bin on the detector some area: bins are empty only
    # where the mask covers them. The 2x2 masked pixels around the centre cover radius < 1.
    s = _signal(_poisson(), lazy)
    mask = np.zeros(DET, bool)
    mask[7:9, 7:9] = True
    with (
        untouched(s),
        pytest.raises(
            ValueError,
            match=re.escape(
                "50 radial bin(s) contain no unmasked pixel (radius 0.01, 0.03, 0.05, 0.07, "
                "0.09, 0.11, 0.13, 0.15, 0.17, 0.19 and 40 more); narrow radial_range, use "
                "fewer bins (npt) or check the mask"
            ),
        ),
    ):
        getattr(s, method)(npt=100, radial_range=(0, 2), mask=mask)


def _annulus_mask(r_in=2.5, r_out=6.5):
    rows, cols = np.mgrid[: DET[0], : DET[1]]
    r = np.hypot(cols - CENTER[0], rows - CENTER[1])
    return (r > r_in) & (r < r_out)


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("method", ["get_variance", "get_azimuthal_integral1d"])
def test_radial_bins_emptied_by_the_mask(lazy, method):
    s = _signal(_poisson(), lazy)
    mask = _annulus_mask()
    with (
        untouched(s, mask),
        pytest.raises(
            ValueError,
            match=re.escape("2 radial bin(s) contain no unmasked pixel (radius 3.5, 4.5)"),
        ),
    ):
        getattr(s, method)(npt=8, radial_range=(0, 8), mask=mask)


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("mean", [False, True])
def test_integral2d_bins_with_no_pixel_hold_zero(lazy, mean):
    s = _signal(_uniform([1.0, 2.0]), lazy)
    mask = _annulus_mask()
    with untouched(s, mask):
        p = s.get_azimuthal_integral2d(npt=8, npt_azim=4, radial_range=(0, 8), mask=mask, mean=mean)
    data = np.asarray(p.data)
    cov = p.metadata.FEM.coverage
    np.testing.assert_array_equal(cov[3:5], 0.0)  # radii 3.5 and 4.5, as in 1D
    np.testing.assert_array_equal(data[:, 3:5], 0.0)
    assert (cov[[0, 1, 2, 5, 6, 7]] > 0).all() and (data[:, [1, 2, 5, 6, 7]] > 0).all()


# --- thickness


@pytest.mark.parametrize("lazy", [False, True])
def test_variance_thickness_all_nan(lazy):
    s = _signal(_poisson(nav=(2, 3)), lazy)
    t = np.full((2, 3), np.nan)
    with (
        untouched(s, t),
        pytest.raises(ValueError, match=re.escape("thickness has no finite value: cannot bin")),
    ):
        _v(s, thickness=t, bins=2)


@pytest.mark.parametrize("lazy", [False, True])
def test_variance_thickness_some_nan(lazy):
    frames = _uniform([1.0, 3.0, 1.0, 3.0, 7.0, 9.0]).reshape((2, 3) + DET)
    s = _signal(frames, lazy)
    t = np.array([[10.0, 10.0, 10.0], [10.0, np.nan, np.nan]])
    with (
        untouched(s, t),
        pytest.warns(
            UserWarning,
            match=re.escape(
                "2 of 6 probe positions are excluded from the thickness bins (2 non-finite, "
                "0 outside [10, 10] nm)"
            ),
        ),
    ):
        v = _v(s, thickness=t, bins=1)
    np.testing.assert_allclose(v.data, 0.25, rtol=1e-12)
    np.testing.assert_array_equal(v.metadata.FEM.counts, [4])


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("shape", [(3,), (3, 2), (2, 3, 1)])
def test_variance_thickness_wrong_shape(lazy, shape):
    s = _signal(_poisson(nav=(2, 3)), lazy)
    t = np.ones(shape)
    with (
        untouched(s, t),
        pytest.raises(
            ValueError,
            match=re.escape(f"thickness has shape {shape} but the navigation shape is (2, 3)"),
        ),
    ):
        _v(s, thickness=t, bins=2)


def test_variance_thickness_without_bins_and_converse():
    s = _signal(_poisson(nav=(2, 3)))
    t = np.ones((2, 3))
    with untouched(s, t):
        with pytest.raises(
            ValueError,
            match=re.escape("thickness needs bins: an int (equal bins) or a list of edges"),
        ):
            _v(s, thickness=t)
        with pytest.raises(
            ValueError,
            match=re.escape("bins needs thickness: pass thickness=... (nm per position)"),
        ):
            _v(s, bins=2)




@pytest.mark.parametrize("bins, message", BAD_BINS)
def test_variance_bad_bins(bins, message):
    s = _signal(_poisson(nav=(2, 3)))
    t = np.linspace(10, 20, 6).reshape(2, 3)
    with untouched(s, t), pytest.raises(ValueError, match=re.escape(message)):
        _v(s, thickness=t, bins=bins)


def test_variance_non_numeric_bins():
    s = _signal(_poisson(nav=(2, 3)))
    t = np.linspace(10, 20, 6).reshape(2, 3)
    with untouched(s, t), pytest.raises((TypeError, ValueError), match="bins"):
        _v(s, thickness=t, bins="a")


@pytest.mark.parametrize("lazy", [False, True])
def test_variance_thickness_bins_with_fewer_than_two_patterns(lazy):
    frames = _uniform([1.0, 3.0, 1.0, 3.0, 9.0, 5.0]).reshape((2, 3) + DET)
    s = _signal(frames, lazy)
    t = np.array([[20.0, 20.0, 20.0], [20.0, 27.0, 40.0]])
    edges = [10.0, 11.0, 25.0, 30.0, 50.0]  # n = 0, 4, 1, 1
    with (
        no_warning_about("undefined"),
        untouched(s, t),
        pytest.warns(
            UserWarning,
            match=re.escape(
                "thickness bin(s) with fewer than 2 patterns are left out: "
                "10.0\u201311.0 nm (n=0), 25.0\u201330.0 nm (n=1), 30.0\u201350.0 nm (n=1)"
            ),
        ),
    ):
        v = _v(s, thickness=t, bins=edges)
    assert v.metadata.FEM.empty_bins == [
        "10.0\u201311.0 nm (n=0)",
        "25.0\u201330.0 nm (n=1)",
        "30.0\u201350.0 nm (n=1)",
    ]
    np.testing.assert_allclose(v.data, 0.25, rtol=1e-12)
    np.testing.assert_array_equal(v.metadata.FEM.counts, [0, 4, 1, 1])


def test_variance_no_thickness_bin_with_two_patterns():
    s = _signal(_poisson(nav=(2, 2)))
    t = np.array([[1.0, 2.0], [3.0, 4.0]])
    with untouched(s, t), pytest.raises(ValueError, match="thickness bin"):
        _v(s, thickness=t, bins=[0.5, 1.5, 2.5, 3.5, 4.5])


@pytest.mark.parametrize("lazy", [False, True])
def test_variance_positions_outside_thickness_edges(lazy):
    frames = _uniform([1.0, 3.0, 1.0, 3.0, 9.0, 5.0]).reshape((2, 3) + DET)
    s = _signal(frames, lazy)
    t = np.array([[20.0, 21.0, 22.0], [23.0, 19.0, 33.0]])
    with (
        untouched(s, t),
        pytest.warns(
            UserWarning,
            match=re.escape(
                "2 of 6 probe positions are excluded from the thickness bins (0 non-finite, "
                "2 outside [20, 32] nm)"
            ),
        ),
    ):
        v = _v(s, thickness=t, bins=[20, 32])
    np.testing.assert_allclose(v.data, 0.25, rtol=1e-12)


# --- gain, method, npt, ranges, navigation_mask


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize(
    "gain, shown",
    [
        (0, "0"),
        (-1.5, "-1.5"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (-float("inf"), "-inf"),
    ],
)
def test_variance_bad_gain(lazy, gain, shown):
    s = _signal(_poisson(), lazy)
    with (
        untouched(s),
        pytest.raises(
            ValueError,
            match=re.escape(
                "gain must be a positive finite number (detector units per electron) or None, "
                f"got {shown}"
            ),
        ),
    ):
        _v(s, gain=gain)


@pytest.mark.parametrize("gain", ["a", [1.0, 2.0], {}])
def test_variance_non_numeric_gain(gain):
    s = _signal(_poisson())
    with (
        untouched(s),
        pytest.raises(
            TypeError, match=re.escape(f"gain must be a positive number or None, got {gain!r}")
        ),
    ):
        _v(s, gain=gain)


@pytest.mark.parametrize(
    "kw, exc, message",
    [
        ({"gain": 0}, ValueError, "gain must be a positive finite number"),
        ({"method": "x"}, ValueError, "method must be one of"),
        ({"mask": np.zeros((3, 3), bool)}, ValueError, "mask has shape (3, 3)"),
        ({"radial_range": (3, 3)}, ValueError, "radial_range must be increasing"),
        ({"thickness": np.full(4, np.nan), "bins": 2}, ValueError, "thickness has no finite"),
        ({"navigation_mask": np.zeros(3, bool)}, ValueError, "navigation_mask has shape (3,)"),
        ({"npt": 0}, ValueError, "npt must be a positive integer, got 0"),
    ],
)
def test_arguments_are_checked_before_the_data_are_read(kw, exc, message):
    s = _exploding()
    kw = {"npt": 4, **kw}
    with pytest.raises(exc, match=re.escape(message)):
        s.get_variance(**kw)
    with pytest.raises(RuntimeError, match="the data were read"):
        s.get_variance(npt=4).compute()


@pytest.mark.parametrize("method", ["omega", "OMEGA", "all_of_them", [], ["Omega", "x"]])
def test_variance_unknown_method(method):
    s = _signal(_poisson())
    with (
        untouched(s),
        pytest.raises(
            ValueError,
            match=re.escape(
                "method must be one of Omega, r, re, VImage or 'all' (or a list of them), "
                f"got {method!r}"
            ),
        ),
    ):
        _v(s, method=method)


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize(
    "method", ["get_variance", "get_azimuthal_integral1d", "get_azimuthal_integral2d"]
)
@pytest.mark.parametrize("npt", [0, -3, 50.0, True])
def test_bad_npt(lazy, method, npt):
    s = _signal(_poisson(), lazy)
    with (
        untouched(s),
        pytest.raises(ValueError, match=re.escape(f"npt must be a positive integer, got {npt!r}")),
    ):
        getattr(s, method)(npt=npt)


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize(
    "method", ["get_variance", "get_azimuthal_integral1d", "get_azimuthal_integral2d"]
)
def test_reversed_radial_range(lazy, method):
    s = _signal(_poisson(), lazy)
    with (
        untouched(s),
        pytest.raises(
            ValueError, match=re.escape("radial_range must be increasing (start < stop)")
        ),
    ):
        getattr(s, method)(npt=4, radial_range=(10, 2))


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize(
    "method", ["get_variance", "get_azimuthal_integral1d", "get_azimuthal_integral2d"]
)
@pytest.mark.parametrize(
    "rr, message",
    [
        ((2, 100), "lies outside the detector's radii [0, 11.3137]"),
        ((-1, 3), "lies outside the detector's radii [0, 11.3137]"),
        ((np.nan, 3), "radial_range must be a pair of finite numbers (start, stop), got (nan, 3)"),
        ((1, 2, 3), "radial_range must be a pair of finite numbers (start, stop), got (1, 2, 3)"),
    ],
)
def test_radial_range_outside_detector_or_not_finite(lazy, method, rr, message):
    s = _signal(_poisson(), lazy)
    with untouched(s), pytest.raises(ValueError, match=re.escape(message)):
        getattr(s, method)(npt=4, radial_range=rr)


@pytest.mark.parametrize("lazy", [False, True])
def test_navigation_mask_wrong_shape_or_dtype(lazy):
    s = _signal(_poisson(nav=(2, 3)), lazy)
    wrong_shape = np.zeros((3, 2), bool)
    wrong_dtype = np.zeros((2, 3))
    with untouched(s, wrong_shape, wrong_dtype):
        with pytest.raises(
            ValueError,
            match=re.escape("navigation_mask has shape (3, 2) but the navigation shape is (2, 3)"),
        ):
            _v(s, navigation_mask=wrong_shape)
        with pytest.raises(
            TypeError,
            match=re.escape("navigation_mask must be boolean (True = excluded), got float64"),
        ):
            _v(s, navigation_mask=wrong_dtype)


# ======================================================================= split_by_thickness


@pytest.mark.parametrize("lazy", [False, True])
def test_split_thickness_wrong_shape_or_all_nan(lazy):
    s = _signal(_poisson(nav=(2, 3)), lazy)
    wrong, nan = np.ones(3), np.full((2, 3), np.nan)
    with untouched(s, wrong, nan):
        with pytest.raises(
            ValueError,
            match=re.escape("thickness has shape (3,) but the navigation shape is (2, 3)"),
        ):
            s.split_by_thickness(wrong, 2)
        with pytest.raises(
            ValueError, match=re.escape("thickness has no finite value: cannot bin")
        ):
            s.split_by_thickness(nan, 2)


@pytest.mark.parametrize(
    "bins, message",
    BAD_BINS
    + [
        (None, "thickness needs bins: an int (equal bins) or a list of edges"),
    ],
)
def test_split_bad_bins(bins, message):
    s = _signal(_poisson(nav=(2, 3)))
    t = np.linspace(10, 20, 6).reshape(2, 3)
    with untouched(s, t), pytest.raises(ValueError, match=re.escape(message)):
        s.split_by_thickness(t, bins)


@pytest.mark.parametrize("lazy", [False, True])
def test_split_positions_outside_or_nan_are_left_out(lazy):
    s = _signal(_uniform(np.arange(6.0)).reshape((2, 3) + DET), lazy)
    t = np.array([[20.0, 21.0, np.nan], [23.0, 19.0, 25.0]])
    with (
        untouched(s, t),
        pytest.warns(
            UserWarning,
            match=re.escape(
                "2 of 6 probe positions are excluded from the thickness bins (1 non-finite, "
                "1 outside [20, 30] nm)"
            ),
        ),
    ):
        parts = s.split_by_thickness(t, [20, 22, 30])
    assert [np.asarray(p.data)[:, 0, 0].tolist() for p in parts] == [[0.0, 1.0], [3.0, 5.0]]


@pytest.mark.parametrize("lazy", [False, True])
def test_split_empty_bin_warns_and_returns_an_empty_part(lazy):
    s = _signal(_poisson(nav=(2, 3)), lazy)
    t = np.linspace(20, 30, 6).reshape(2, 3)
    with (
        untouched(s, t),
        pytest.warns(
            UserWarning,
            match=re.escape(
                "empty thickness bin(s), returned with no position: 0.0\u201310.0 nm (n=0)"
            ),
        ),
    ):
        parts = s.split_by_thickness(t, [0, 10, 30])
    assert [p.data.shape[0] for p in parts] == [0, 6]
    assert parts[0].axes_manager.navigation_axes[0].size == 0


# ====================================================== get_azimuthal_integral1d / 2d
@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("nav", [(), (2,), (2, 3, 2)])
def test_integral_any_number_of_navigation_axes(lazy, nav):
    n = int(np.prod(nav))
    frames = _uniform(np.arange(1.0, n + 1)).reshape(nav + DET)
    s = _signal(frames, lazy)
    with untouched(s):
        one = s.get_azimuthal_integral1d(npt=4, radial_range=RR, mean=True)
        two = s.get_azimuthal_integral2d(npt=4, npt_azim=4, radial_range=RR, mean=True)
    expected = np.arange(1.0, n + 1).reshape(nav)
    np.testing.assert_allclose(
        np.asarray(one.data), np.broadcast_to(expected[..., None], nav + (4,)), rtol=1e-12
    )
    np.testing.assert_allclose(
        np.asarray(two.data), np.broadcast_to(expected[..., None, None], nav + (4, 4)), rtol=1e-6
    )


@pytest.mark.parametrize("method", ["get_azimuthal_integral1d", "get_azimuthal_integral2d"])
def test_integral_empty_navigation_axis_eager(method):
    s = _empty_part(lazy=False)
    with untouched(s):
        out = getattr(s, method)(npt=4, radial_range=RR)
    assert out.data.shape[0] == 0


@pytest.mark.parametrize("method", ["get_azimuthal_integral1d", "get_azimuthal_integral2d"])
def test_integral_empty_navigation_axis_lazy(method):
    s = _empty_part(lazy=True)
    with untouched(s):
        out = getattr(s, method)(npt=4, radial_range=RR)
    out.compute()
    assert out.data.shape[0] == 0


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("method", ["get_azimuthal_integral1d", "get_azimuthal_integral2d"])
def test_integral_mask_wrong_shape_or_dtype(lazy, method):
    s = _signal(_poisson(), lazy)
    bad_shape, bad_dtype = np.zeros((10, 10), bool), np.zeros(DET)
    with untouched(s, bad_shape, bad_dtype):
        with pytest.raises(
            ValueError, match=re.escape("mask has shape (10, 10) but the detector is (16, 16)")
        ):
            getattr(s, method)(npt=4, mask=bad_shape)
        with pytest.raises(
            TypeError,
            match=re.escape(
                "mask must be a boolean array (True = excluded pixel), got dtype float64"
            ),
        ):
            getattr(s, method)(npt=4, mask=bad_dtype)


def _nan_frames(bad=np.nan):
    frames = _uniform([1.0, 2.0, 3.0])
    frames[1][IN_RANGE] = bad
    return frames


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_integral1d_nonfinite_eager_propagates_with_warning(bad):
    s = _signal(_nan_frames(bad))
    with untouched(s), pytest.warns(UserWarning, match=_msg(INTEGRAL_NONFINITE_MSG, n=1)):
        out = s.get_azimuthal_integral1d(npt=4, radial_range=RR, mean=True)
    expected = np.array([[1.0] * 4, [2.0, 2.0, bad, 2.0], [3.0] * 4])
    np.testing.assert_allclose(out.data, expected, rtol=1e-12)


def test_integral2d_nonfinite_eager_propagates_with_warning():
    frames = _nan_frames()
    frames[2] = np.nan  # a whole frame
    s = _signal(frames)
    with untouched(s), pytest.warns(UserWarning, match=_msg(INTEGRAL_NONFINITE_MSG, n=2)):
        out = s.get_azimuthal_integral2d(npt=4, npt_azim=4, radial_range=RR, mean=True)
    bad = np.isnan(out.data)
    assert not bad[0].any()
    assert np.flatnonzero(bad[1].ravel()).tolist() == [2 * 4 + 2]  # radial bin 2, azimuth 2
    assert bad[2].all()
    np.testing.assert_allclose(out.data[1][~bad[1]], 2.0, rtol=1e-6)


@pytest.mark.parametrize("method", ["get_azimuthal_integral1d", "get_azimuthal_integral2d"])
def test_integral_nonfinite_lazy_propagates_without_warning(method):
    s = _signal(_nan_frames(), lazy=True)
    kw = {"npt_azim": 4} if method.endswith("2d") else {}
    with untouched(s), no_warning_about("NaN"):
        out = getattr(s, method)(npt=4, radial_range=RR, mean=True, **kw)
        out.compute()
    bad = np.isnan(out.data.reshape(3, -1))
    assert bad.sum(axis=1).tolist() == [0, 1, 0]


@pytest.mark.parametrize("lazy", [False, True])
def test_integral_nonfinite_in_masked_pixel_is_harmless(lazy):
    s = _signal(_nan_frames(), lazy)
    mask = np.zeros(DET, bool)
    mask[IN_RANGE] = True
    with untouched(s, mask), no_warning_about("NaN"):
        out = s.get_azimuthal_integral1d(npt=4, radial_range=RR, mean=True, mask=mask)
        out = np.asarray(out.data)
    np.testing.assert_allclose(out, np.repeat([[1.0], [2.0], [3.0]], 4, axis=1), rtol=1e-12)


@pytest.mark.parametrize("lazy", [False, True])
def test_integral_negative_values_integrated_as_any(lazy):
    s = _signal(_uniform([-2.0, 0.5]), lazy)
    with untouched(s):
        out = s.get_azimuthal_integral1d(npt=4, radial_range=RR, mean=True)
        summed = s.get_azimuthal_integral1d(npt=4, radial_range=RR)
    np.testing.assert_allclose(np.asarray(out.data), [[-2.0] * 4, [0.5] * 4], rtol=1e-12)
    area = summed.metadata.FEM.coverage * np.pi * np.diff(np.linspace(*RR, 5) ** 2)
    np.testing.assert_allclose(np.asarray(summed.data)[0], -2.0 * area, rtol=1e-9)


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize(
    "dtype, value", [("uint8", 255), ("uint16", 65535), (">u2", 65535), ("int32", 2**31 - 1)]
)
def test_integral_integer_dtypes_do_not_overflow(lazy, dtype, value):
    frames = _uniform([value, 1], dtype)
    s = _signal(frames, lazy)
    with untouched(s):
        one = s.get_azimuthal_integral1d(npt=4, radial_range=RR)
        two = s.get_azimuthal_integral2d(npt=4, npt_azim=4, radial_range=RR)
    ref = _signal(frames.astype(float))
    ref1 = ref.get_azimuthal_integral1d(npt=4, radial_range=RR).data
    ref2 = ref.get_azimuthal_integral2d(npt=4, npt_azim=4, radial_range=RR).data
    assert one.data.dtype == np.float64 and two.data.dtype == np.float32
    one, two = np.asarray(one.data), np.asarray(two.data)
    np.testing.assert_array_equal(one, ref1)
    np.testing.assert_array_equal(two, ref2)
    assert one[0, -1] > 50 * value  # a ring of ~59 pixels: the sum exceeds the dtype
    np.testing.assert_allclose(one[1], one[0] / value, rtol=1e-12)


@pytest.mark.parametrize("lazy", [False, True])
def test_integral2d_azimuth_range_outside_or_reversed(lazy):
    s = _signal(_poisson(), lazy)
    with untouched(s):
        with pytest.raises(
            ValueError,
            match=re.escape(
                "azimuth_range (-4.0, 1.0) lies outside the azimuths: give it within "
                "[-pi, pi] or within [0, 2pi] (radians)"
            ),
        ):
            s.get_azimuthal_integral2d(npt=4, azimuth_range=(-4, 1))
        with pytest.raises(
            ValueError, match=re.escape("azimuth_range must be increasing (start < stop)")
        ):
            s.get_azimuthal_integral1d(npt=4, azimuth_range=(1, -1))
        with pytest.raises(
            ValueError, match=re.escape("npt_azim must be a positive integer, got 0")
        ):
            s.get_azimuthal_integral2d(npt=4, npt_azim=0)


# --------------------------------------------------------------------------- all-zero patterns
ZERO_MSG = r"^{n} pattern\(s\) are exactly 0 in the whole radial range \(1, 7\)"


@pytest.mark.parametrize("lazy", [False, True])
def test_variance_all_zero_patterns_are_left_out_as_missing_data(lazy):
    # 50 counts per pixel: an empty pattern has no chance; three of them are a missing chunk.
    frames = _poisson(nav=(4, 5), seed=3)
    frames[1, 1:4] = 0.0
    s = _signal(frames, lazy, chunks=(2, 5, 16, 16))
    with pytest.warns(UserWarning, match=ZERO_MSG.format(n=3) + r".* 17 hold 7\d\d\d electrons"):
        v = _v(s, gain=1.0)
    excluded = np.zeros((4, 5), bool)
    excluded[1, 1:4] = True
    with no_warning_about("exactly 0"):
        ref = _v(_signal(frames), gain=1.0, navigation_mask=excluded)
    np.testing.assert_allclose(v.data, ref.data, rtol=1e-12)
    assert v.metadata.FEM.number_of_zero_patterns == 3
    assert v.metadata.FEM.number_of_patterns == 17
    assert not ref.metadata.has_item("FEM.number_of_zero_patterns")


@pytest.mark.parametrize("lazy", [False, True])
def test_variance_plausible_zero_patterns_are_kept(lazy):
    from femlib.integration import build_weights

    # 0.02 counts per pixel: about 3 in the radial range, an empty pattern every ~20.
    frames = np.random.default_rng(4).poisson(0.02, (10, 20) + DET).astype(float)
    w = build_weights(DET, CENTER, npt=4, radial_range=RR)
    ring = frames.reshape(200, -1) @ w.matrix.T
    assert 3 <= int(np.sum(~ring.any(axis=1))) <= 30
    with no_warning_about("exactly 0"):
        v = _v(_signal(frames, lazy, chunks=(5, 20, 16, 16)))
    # uncorrected Omega over all 200 patterns, zeros included
    np.testing.assert_allclose(v.data, (ring**2).mean(0) / ring.mean(0) ** 2 - 1, rtol=1e-12)
    assert v.metadata.FEM.number_of_patterns == 200


# --------------------------------------------------------------------------- odd bins
def test_variance_single_bin_warns_once_naming_the_range():
    s = _signal(_poisson(nav=(6,)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s.get_variance(npt=1, radial_range=(2.0, 6.0))
    msgs = [str(w.message) for w in caught]
    assert msgs == [
        "npt=1 gives a single radial bin over radial_range=(2.0, 6.0) (2, 6): V is one "
        "number averaged over the rings, not a curve of k; use npt >= 2 (e.g. 50)"
    ]


@pytest.mark.parametrize("lazy", [False, True])
def test_variance_range_narrower_than_a_pixel_warns_once_naming_it(lazy):
    s = _signal(_poisson(nav=(6,)), lazy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s.get_variance(npt=4, radial_range=(3.0, 3.5))
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1
    assert msgs[0].startswith(
        "radial_range=(3.0, 3.5) is narrower (0.5) than one detector pixel (1 calibrated "
        "units)"
    )


def test_variance_ordinary_bins_do_not_warn():
    s = _signal(_poisson(nav=(6,)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.get_variance(npt=2, radial_range=(3.0, 4.0))


def test_off_detector_warning_says_when_the_range_is_the_default():
    s = _signal(_poisson(nav=(3,)))
    s.calibration.center = (0.0, 0.0)
    with pytest.warns(UserWarning) as caught:
        s.get_azimuthal_integral1d(npt=4)
    (msg,) = [str(w.message) for w in caught]
    assert re.match(r"only \d+% of the azimuths of the radial range \(0, 21\.92\) \(the default "
                    r"of radial_range=None: 0 to the farthest detector corner\) lie", msg)
    with pytest.warns(UserWarning) as caught:
        s.get_azimuthal_integral1d(npt=4, radial_range=(1.0, 7.0))
    (msg,) = [str(w.message) for w in caught]
    assert msg.startswith("only 30% of the azimuths of the radial range (1, 7) lie on")
