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


# ----------------------------------------------------------------------------- lazy results
@pytest.fixture(scope="module")
def small():
    s = femlib.data.synthetic_fem(navigation_shape=(10, 10), detector_shape=(64, 64),
                                  scale=0.28, seed=3)
    s.calibration.center = s.metadata.Simulation.center
    s.calibration.affine = s.metadata.Simulation.affine
    kw = dict(npt=12, gain=4.2, radial_range=(3.0, 5.75), show_progressbar=False)
    return s, kw


def _assert_same(lazy, eager):
    assert type(lazy).__name__ == "FEMVariance1D"
    np.testing.assert_array_equal(lazy.data, eager.data)
    np.testing.assert_array_equal(lazy.standard_error, eager.standard_error)
    fem_l, fem_e = lazy.metadata.FEM.as_dictionary(), eager.metadata.FEM.as_dictionary()
    assert sorted(fem_l) == sorted(fem_e)
    assert fem_l["number_of_patterns"] == fem_e["number_of_patterns"]
    assert lazy.axes_manager.shape == eager.axes_manager.shape
    assert lazy.curve_labels() == eager.curve_labels()


@pytest.mark.parametrize(
    "extra",
    [{}, {"method": "all"}, {"bins": 3}, {"tiles": (5, 5)}, {"bins": 2, "tiles": (5, 10)}],
)
def test_lazy_input_gives_a_lazy_variance_whose_compute_equals_eager(small, extra):
    s, kw = small
    if "bins" in extra:
        extra = {"thickness": s.metadata.HAADF.intensity, **extra}
    eager = s.get_variance(**kw, **extra)
    lazy = s.as_lazy().get_variance(**kw, **extra)
    assert type(lazy).__name__ == "LazyFEMVariance1D"
    # axes are known before the pass; the error and the counts are not there yet
    assert lazy.axes_manager.shape == eager.axes_manager.shape
    assert [a.name for a in lazy.axes_manager._axes] == [a.name for a in eager.axes_manager._axes]
    assert not lazy.metadata.has_item("FEM.standard_error")
    assert lazy.metadata.FEM.radial_range == eager.metadata.FEM.radial_range
    assert lazy.compute(show_progressbar=False) is None  # in place, as HyperSpy's
    _assert_same(lazy, eager)


def test_lazy_variance_data_alone_computes_the_values(small):
    s, kw = small
    lazy = s.as_lazy().get_variance(**kw)
    np.testing.assert_array_equal(lazy.data.compute(), s.get_variance(**kw).data)


def test_dask_compute_of_several_lazy_results_reads_the_data_once(small):
    import dask
    import dask.array as da

    s, kw = small
    reads = []

    def read(block):
        if block.size:  # dask calls it once on an empty array for the dtype
            reads.append(block.shape)
        return block

    data = da.from_array(s.data, chunks=(5, 10, 64, 64))
    lazy = s._deepcopy_with_new_data(data.map_blocks(read, dtype=data.dtype))
    lazy = lazy.as_lazy()
    v1 = lazy.get_variance(**kw)
    v2 = lazy.get_variance(method="VImage", **kw)
    assert not reads
    r1, r2 = dask.compute(v1, v2)
    assert len(reads) == data.npartitions == 2  # one read of each chunk for both
    _assert_same(r1, s.get_variance(**kw))
    _assert_same(r2, s.get_variance(method="VImage", **kw))


def test_lazy_warnings_and_errors_of_the_pass_come_with_compute(small):
    s, kw = small
    data = s.data.copy()
    cx, cy = s.calibration.center
    data[0, 0, round(cy), round(cx) + 15] = np.nan  # 4.2 nm^-1 from the centre: in range
    lazy = s._deepcopy_with_new_data(data).as_lazy().get_variance(**kw)
    with pytest.warns(UserWarning, match=r"^1 pattern\(s\) with NaN"):
        lazy.compute(show_progressbar=False)
    assert lazy.metadata.FEM.number_of_patterns == 99


@pytest.mark.parametrize("preference", [True, False])
def test_eager_progress_bar_follows_hyperspy_preference(small, capsys, preference):
    s, kw = small
    kw = {k: v for k, v in kw.items() if k != "show_progressbar"}
    old = hs.preferences.General.show_progressbar
    hs.preferences.General.show_progressbar = preference
    try:
        s.get_variance(**kw)  # a pass of a fraction of a second draws no bar
        assert "Completed" not in capsys.readouterr().out
        s.get_variance(show_progressbar=True, **kw)  # asked for: drawn
        assert "100% Completed" in capsys.readouterr().out
    finally:
        hs.preferences.General.show_progressbar = old
