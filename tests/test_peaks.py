"""FEMVariance1D.find_peaks: peak table with standard errors, against synthetic truth."""

import csv
import io
import re

import numpy as np
import pytest

import femlib
from femlib.signals import FEMVariance1D

TRUE_POSITIONS = [3.7, 4.6, 7.0]


def _variance(seed, shape=(16, 16), **kwargs):
    s = femlib.data.synthetic_fem(navigation_shape=shape, seed=seed, thickness_gradient=False)
    sim = s.metadata.Simulation
    s.calibration.center = sim.center
    s.calibration.affine = sim.affine
    v = s.get_variance(
        npt=80, gain=sim.gain, radial_range=(3.0, 8.5), mask=sim.beam_stop_mask,
        show_progressbar=False, **kwargs,
    )
    return v, sim


@pytest.fixture(scope="module")
def seeds():
    return [_variance(seed) for seed in range(6)]


def _z(table, sim):
    out = []
    for row, (kj, vj, _) in zip(table, sim.modulation_components, strict=True):
        assert row["converged"], row["message"]
        out.append(
            [(row["position"] - kj) / row["position_se"], (row["height"] - vj) / row["height_se"]]
        )
    return np.array(out)


def test_recovers_peaks_with_calibrated_errors(seeds):
    z = np.concatenate(
        [_z(v.find_peaks(positions=TRUE_POSITIONS, background_order=0), sim) for v, sim in seeds]
    )
    # The truth is V_true's components (k_j, v_j) in metadata.Simulation. Measured over
    # 8 seeds: rms z 1.1 (positions) and 1.6 (heights; mean -1.0, the pixel and bin widths
    # smooth the peaks by a few percent); HyperSpy's own errors give 4.1 for the heights.
    assert np.abs(z).max() < 4.5
    rms = np.sqrt((z**2).mean(axis=0))
    assert 0.6 < rms[0] < 1.8
    assert 0.6 < rms[1] < 2.2


def test_automatic_search_finds_the_three_peaks(seeds):
    v, sim = seeds[0]
    table = v.find_peaks(n_peaks=3)
    assert table.errors == "jackknife"
    assert [row["peak"] for row in table] == [0, 1, 2]
    np.testing.assert_allclose([row["position"] for row in table], TRUE_POSITIONS, atol=0.05)
    # All significant maxima: the same three (no noise peak at 3 SE).
    assert len(v.find_peaks()) == 3


def test_fit_errors_are_too_small_for_correlated_noise(seeds):
    v, sim = seeds[1]
    jack = v.find_peaks(positions=TRUE_POSITIONS, errors="jackknife")
    fit = v.find_peaks(positions=TRUE_POSITIONS, errors="fit")
    assert fit.errors == "fit"
    for a, b in zip(jack, fit, strict=True):
        assert a["height"] == pytest.approx(b["height"], rel=1e-6)
        assert b["height_se"] < a["height_se"]


def test_every_curve_of_a_binned_result(seeds):
    s = femlib.data.synthetic_fem(navigation_shape=(16, 16), seed=7)
    sim = s.metadata.Simulation
    s.calibration.center = sim.center
    s.calibration.affine = sim.affine
    v = s.get_variance(npt=80, gain=sim.gain, radial_range=(3.0, 8.5),
                       mask=sim.beam_stop_mask, thickness=sim.thickness, bins=2,
                       show_progressbar=False)
    table = v.find_peaks(positions=TRUE_POSITIONS)
    assert [row["curve"] for row in table] == [0, 0, 0, 1, 1, 1]
    assert table[0]["label"] == v.curve_labels()[0]
    assert all(row["converged"] for row in table)
    combined = v.combined().find_peaks(positions=TRUE_POSITIONS)
    assert combined.errors == "jackknife"
    assert len(combined) == 3


def test_table_prints_and_writes_csv(seeds, tmp_path):
    v, _ = seeds[2]
    table = v.find_peaks(positions=TRUE_POSITIONS)
    text = str(table)
    assert text.splitlines()[0].split()[:4] == ["curve", "label", "peak", "position"]
    assert len(text.splitlines()) == 4
    path = tmp_path / "peaks.csv"
    table.to_csv(path)
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert len(rows) == 3
    assert float(rows[1]["height"]) == table[1]["height"]
    assert rows[1]["converged"] == "True"


def _curve(values, se=1e-4):
    v = FEMVariance1D(np.asarray(values, float))
    v.axes_manager.signal_axes[0].scale = 0.1
    v.axes_manager.signal_axes[0].offset = 3.0
    v._set_standard_error(np.full(len(values), se))
    return v


def test_failed_fit_is_reported_per_curve_not_silent():
    v = _curve([0.0, 1e-3, 2e-3, 1e-3, 0.0])  # 5 points for 1 peak + linear background
    with pytest.warns(UserWarning, match="peak fit failed for 1 curve"):
        table = v.find_peaks(positions=[3.2, 3.3])
    assert [row["converged"] for row in table] == [False, False]
    assert "5 usable points for 8 free parameters" in table[0]["message"]


def test_curve_without_peak_gets_a_flagged_row():
    rng = np.random.default_rng(0)
    v = _curve(rng.normal(0, 1e-4, 40))
    with pytest.warns(UserWarning, match="no significant peak found"):
        table = v.find_peaks()
    assert len(table) == 1
    assert table[0]["peak"] == -1 and not table[0]["converged"]


def test_fit_errors_without_replicates():
    k = 3.0 + 0.1 * np.arange(40)
    v = _curve(5e-3 * np.exp(-4 * np.log(2) * (k - 4.5) ** 2 / 0.6**2) + 1e-3)
    table = v.find_peaks()
    assert table.errors == "fit"
    assert table[0]["position"] == pytest.approx(4.5, abs=1e-6)
    assert table[0]["height"] == pytest.approx(5e-3, rel=1e-5)
    assert table[0]["fwhm"] == pytest.approx(0.6, rel=1e-5)
    with pytest.raises(ValueError, match=re.escape("errors='jackknife' needs")):
        v.find_peaks(errors="jackknife")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"errors": "x"}, "errors must be 'auto', 'jackknife' or 'fit'"),
        ({"n_peaks": 0}, "n_peaks must be a positive integer or None"),
        ({"background_order": -1}, "background_order must be a non-negative integer"),
        ({"positions": [1.0]}, "positions must be finite radii within [3, 6.9]"),
    ],
)
def test_bad_arguments(kwargs, message):
    v = _curve(np.ones(40))
    with pytest.raises(ValueError, match=re.escape(message)):
        v.find_peaks(**kwargs)
