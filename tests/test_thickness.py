"""Tests of femlib.thickness: HAADF -> thickness, binning, labels, and the HAADF forms the
real files (numpy array) and other sources (signal) use."""

import re

import hyperspy.api as hs
import numpy as np
import pytest

import femlib
from femlib import thickness

BAD_BINS = [
    (0, "bins must be a positive integer or a sequence of edges, got 0"),
    (-1, "bins must be a positive integer or a sequence of edges, got -1"),
    (1.5, "bins must be a positive integer or a sequence of >= 2 finite edges, got 1.5"),
    (True, "bins must be a positive integer or a sequence of >= 2 finite edges, got True"),
    ([3.0], "bins must be a positive integer or a sequence of >= 2 finite edges, got [3.0]"),
    ([1.0, np.nan], "bins must be a positive integer or a sequence of >= 2 finite edges"),
    ([3.0, 1.0], "bins edges must be strictly increasing, got [3. 1.]"),
]


def test_thickness_is_linear_in_haadf():
    haadf = 26265.0 + 440.46 * np.array([[10.0, 20.0], [30.0, 40.5]])
    np.testing.assert_allclose(
        thickness.thickness_from_haadf(haadf, 26265, 440.46), [[10, 20], [30, 40.5]],
        rtol=1e-12,
    )


def test_array_and_signal_haadf_agree_and_keep_their_form():
    haadf = np.random.default_rng(0).normal(27000, 300, (4, 5))
    sig = hs.signals.Signal2D(haadf.copy())
    from_array = thickness.thickness_from_haadf(haadf, 26265, 440.46)
    from_signal = thickness.thickness_from_haadf(sig, 26265, 440.46)
    assert type(from_array) is np.ndarray
    assert isinstance(from_signal, hs.signals.Signal2D)
    assert from_signal.metadata.General.title == "Thickness"
    np.testing.assert_array_equal(from_signal.data, from_array)
    np.testing.assert_array_equal(sig.data, haadf)  # input untouched


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"slope": "a"}, "slope must be a real number (HAADF units per nm), got 'a'"),
        ({"slope": None}, "slope must be a real number (HAADF units per nm), got None"),
        ({"slope": True}, "slope must be a real number (HAADF units per nm), got True"),
        ({"slope": [440.46]}, "slope must be a real number (HAADF units per nm), got [440.46]"),
        ({"black_level": "x"}, "black_level must be a real number (HAADF units), got 'x'"),
        ({"black_level": 1j}, "black_level must be a real number (HAADF units), got 1j"),
    ],
)
def test_non_numeric_slope_or_black_level_is_a_type_error(kw, message):
    kw = {"black_level": 0.0, "slope": 1.0, **kw}
    with pytest.raises(TypeError, match=re.escape(message)):
        thickness.thickness_from_haadf(np.ones(4), **kw)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"slope": 0}, "slope must be a finite positive number (HAADF units per nm), got 0.0"),
        ({"slope": -440.46},
         "slope must be a finite positive number (HAADF units per nm), got -440.46"),
        ({"slope": np.nan}, "slope must be a finite positive number (HAADF units per nm), got nan"),
        ({"black_level": np.inf}, "black_level must be finite, got inf"),
    ],
)
def test_bad_slope_or_black_level_value(kw, message):
    haadf = np.ones(4)
    kw = {"black_level": 0.0, "slope": 1.0, **kw}
    with pytest.raises(ValueError, match=re.escape(message)):
        thickness.thickness_from_haadf(haadf, **kw)
    np.testing.assert_array_equal(haadf, 1.0)


def test_numpy_scalars_are_numbers():
    t = thickness.thickness_from_haadf(np.array([3.0]), np.float32(1.0), np.int64(2))
    np.testing.assert_array_equal(t, [1.0])
    t = thickness.thickness_from_haadf(np.array([3.0]), np.array(1.0), np.array(2.0))
    np.testing.assert_array_equal(t, [1.0])


def test_all_nan_haadf():
    haadf = np.full((2, 3), np.nan)
    with pytest.raises(ValueError, match=re.escape(
            "haadf gives no finite thickness (all values are NaN or inf)")):
        thickness.thickness_from_haadf(haadf, 0.0, 1.0)
    with pytest.raises(ValueError, match=re.escape("thickness has no finite value: cannot bin")):
        thickness.bin_by_thickness(haadf, 2)
    with pytest.raises(ValueError, match="haadf gives no finite thickness"):
        thickness.thickness_from_haadf(hs.signals.Signal2D(haadf), 0.0, 1.0)


def test_some_nan_haadf_is_left_out_of_the_bins_with_a_warning():
    haadf = np.array([1.0, np.nan, 3.0, 4.0])
    t = thickness.thickness_from_haadf(haadf, 1.0, 0.5)
    np.testing.assert_array_equal(t, [0.0, np.nan, 4.0, 6.0])
    with pytest.warns(UserWarning, match=re.escape(
            "1 of 4 probe positions are excluded from the thickness bins (1 non-finite, "
            "0 outside [0, 6] nm)")):
        index, edges = thickness.bin_by_thickness(t, 2)
    np.testing.assert_array_equal(index, [0, -1, 1, 1])
    np.testing.assert_array_equal(edges, [0.0, 3.0, 6.0])


@pytest.mark.parametrize("bins, message", BAD_BINS)
def test_bad_bins(bins, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        thickness.bin_by_thickness(np.linspace(1, 4, 4), bins)


def test_equal_bins_span_the_positions_used():
    """A position left out by navigation_mask (say a crystal, of extreme intensity) does
    not stretch the equal-width bins."""
    s = femlib.data.synthetic_fem(navigation_shape=(6, 6), detector_shape=(32, 32), seed=1)
    t = np.linspace(10.0, 20.0, 36).reshape(6, 6)
    t[0, 0] = 500.0
    left_out = np.zeros((6, 6), bool)
    left_out[0, 0] = True
    s.calibration.center = s.metadata.Simulation.center
    v = s.get_variance(npt=4, gain=4.2, radial_range=(1.0, 2.0), thickness=t, bins=2,
                       navigation_mask=left_out, show_progressbar=False)
    edges = np.asarray(v.metadata.FEM.thickness_edges)
    lo = t.ravel()[1]  # the thinnest position used
    np.testing.assert_allclose(edges, [lo, (lo + 20.0) / 2, 20.0])
    assert list(v.metadata.FEM.counts) == [17, 18]  # 35 positions, the top edge inclusive


def test_equal_bins_match_the_seeds_linspace():
    """bins=n uses the seed's edges, np.linspace(min, max, n + 1), top edge inclusive."""
    t = np.random.default_rng(1).uniform(26, 34, (5, 7))
    index, edges = thickness.bin_by_thickness(t, 2)
    np.testing.assert_array_equal(edges, np.linspace(np.min(t, axis=(0, 1)),
                                                     np.max(t, axis=(0, 1)), 3))
    np.testing.assert_array_equal(index == 0, (t >= edges[0]) & (t < edges[1]))
    np.testing.assert_array_equal(index == 1, (t >= edges[1]) & (t <= edges[2]))


def test_labels():
    assert thickness.bin_labels([17.0, 18.0, 19.5], [812, 3]) == [
        "17.0\u201318.0 nm (n=812)", "18.0\u201319.5 nm (n=3)"]


def test_synthetic_haadf_is_an_array_that_gives_the_true_thickness():
    s = femlib.data.synthetic_fem(navigation_shape=(6, 8), detector_shape=(32, 32), seed=2)
    sim = s.metadata.Simulation
    haadf = s.metadata.HAADF.intensity
    assert type(haadf) is np.ndarray and haadf.shape == (6, 8)
    # the seed's own code on it
    t = (haadf - 26265) / 440.46
    bins = np.linspace(np.min(t, axis=(0, 1)), np.max(t, axis=(0, 1)), 3)
    assert len(bins) - 1 == 2
    np.testing.assert_allclose(t, np.asarray(sim.thickness), atol=0.1)  # 0.02 nm noise
    np.testing.assert_allclose(
        thickness.thickness_from_haadf(haadf, sim.black_level, sim.slope), t, rtol=1e-12
    )
