"""Plotting of :class:`femlib.signals.FEMVariance1D`: bands, navigation, labels."""

import hyperspy.api as hs
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import PolyCollection

import femlib


@pytest.fixture(scope="module")
def results():
    """A single V(k) and one per thickness bin (2 bins), from a small synthetic scan."""
    s = femlib.data.synthetic_fem(navigation_shape=(12, 12), seed=10)
    truth = s.metadata.Simulation
    s.calibration.center = truth.center
    s.calibration.affine = truth.affine
    kw = dict(npt=25, gain=4.2, radial_range=(3.0, 5.75), mask=np.asarray(truth.beam_stop_mask),
              show_progressbar=False)
    single = s.get_variance(**kw)
    per_bin = s.get_variance(thickness=np.asarray(truth.thickness), bins=2, **kw)
    return single, per_bin


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def bands(ax):
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def assert_band_is_stepped(band, k, lo, hi):
    """Inside every radial bin (a quarter bin either side of its centre) the band spans
    exactly [lo, hi] of that bin: flat like a steps-mid line. A band drawn linearly between
    bin centres has its edges part-way to the neighbours' values there."""
    path = band.get_paths()[0]
    dk = k[1] - k[0]
    eps = 1e-6 * float(np.max(hi) - np.min(lo))
    for i in range(k.size):
        for x in (k[i] - 0.25 * dk, k[i] + 0.25 * dk):
            if not k[0] <= x <= k[-1]:
                continue
            assert path.contains_point((x, hi[i] - eps)), (i, x)
            assert not path.contains_point((x, hi[i] + eps)), (i, x)
            assert path.contains_point((x, lo[i] + eps)), (i, x)
            assert not path.contains_point((x, lo[i] - eps)), (i, x)


def test_band_has_the_step_style_of_the_line(results):
    v, _ = results
    v.plot()
    ax = v._plot.signal_plot.ax
    line = v._plot.signal_plot.ax_lines[0].line
    assert line.get_drawstyle() == "steps-mid"
    (band,) = bands(ax)
    k = v.axes_manager.signal_axes[0].axis
    se = v.standard_error
    # Sanity of the check itself: neighbouring bins differ by far more than eps.
    assert np.min(np.abs(np.diff(v.data + se))) > 1e-3 * np.ptp(v.data)
    assert_band_is_stepped(band, k, v.data - se, v.data + se)
    assert np.allclose(band.get_facecolor()[0][:3], plt.matplotlib.colors.to_rgb(line.get_color()))
    assert ax.get_ylabel() == "V(k)"


def test_plot_curves_bands_are_stepped_like_their_lines(results):
    _, per_bin = results
    ax = per_bin.plot_curves()
    k = per_bin.axes_manager.signal_axes[0].axis
    se = per_bin.standard_error
    assert [ln.get_drawstyle() for ln in ax.lines[:2]] == ["steps-mid"] * 2
    for i, band in enumerate(bands(ax)):
        assert_band_is_stepped(band, k, per_bin.data[i] - se[i], per_bin.data[i] + se[i])
    assert ax.get_xlabel() == "k (nm^-1)" and ax.get_ylabel() == "V(k)"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == list(per_bin.metadata.FEM.labels)


@pytest.mark.parametrize("navigator", ["slider", None, "auto"])
def test_navigator_browses_bins_and_the_band_follows(results, navigator):
    _, per_bin = results
    per_bin.plot(navigator=navigator)
    ax = per_bin._plot.signal_plot.ax
    k = per_bin.axes_manager.signal_axes[0].axis
    se = per_bin.standard_error
    for index in (1, 0):
        per_bin.axes_manager.indices = (index,)
        (band,) = bands(ax)  # the previous bin's band is gone
        lo, hi = per_bin.data[index] - se[index], per_bin.data[index] + se[index]
        assert_band_is_stepped(band, k, lo, hi)
    # Closing the plot disconnects the band from the navigation events.
    per_bin._plot.close()
    per_bin.axes_manager.indices = (1,)


def test_plot_accepts_hyperspy_arguments(results):
    v, _ = results
    v.plot(color="red", autoscale="v")
    assert plt.matplotlib.colors.same_color(v._plot.signal_plot.ax_lines[0].line.get_color(),
                                            "red")
    v.plot(error_band=False)
    assert bands(v._plot.signal_plot.ax) == []


def test_split_parts_are_v_of_k_for_hyperspy(results):
    _, per_bin = results
    parts = per_bin.split()
    for i, part in enumerate(parts):
        assert part.metadata.Signal.quantity == "V(k)"
        np.testing.assert_allclose(part.standard_error, per_bin.standard_error[i])
    parts[1].plot()
    assert parts[1]._plot.signal_plot.ax.get_ylabel() == "V(k)"
    ax = hs.plot.plot_spectra(parts, legend=per_bin.curve_labels(), legend_loc="best")
    legend = sorted(t.get_text() for t in ax.get_legend().get_texts())
    assert legend == sorted(per_bin.curve_labels())
    assert ax.get_xlabel() == "k (nm^-1)"  # the V(k) axis is named k for HyperSpy too


def test_plot_and_plot_curves_label_and_title_alike(results):
    """One label for the k axis in every V(k) figure, and a title saying what is shown."""
    single, per_bin = results
    assert single.metadata.General.title == "V(k), Omega: Synthetic FEM (seed 10)"
    for v in (single, per_bin):
        v.plot()
        ax = v._plot.signal_plot.ax
        curves = v.plot_curves()
        assert ax.get_xlabel() == curves.get_xlabel() == "k (nm^-1)"
        assert ax.get_ylabel() == curves.get_ylabel() == "V(k)"
        assert ax.get_title() == curves.get_title() == v.metadata.General.title
        assert v.axes_manager.signal_axes[0].name == "k"


def test_uncalibrated_axis_is_labelled_in_pixels():
    v = hs.signals.Signal1D(np.array([0.1, 0.3, 0.2, 0.1]))
    v.set_signal_type("fem_variance")
    ax = v.plot_curves()
    assert ax.get_xlabel() == "radius (px)" and "undefined" not in ax.get_xlabel()
    assert bands(ax) == []  # no standard error stored: nothing to shade
    v.plot()
    assert v._plot.signal_plot.ax.get_ylabel() == "V(k)"


def test_legend_only_for_a_readable_number_of_curves():
    many = hs.signals.Signal1D(np.random.default_rng(0).random((20, 8)))
    many.set_signal_type("fem_variance")
    assert many.plot_curves().get_legend() is None
    assert many.plot_curves(legend=True).get_legend() is not None
