"""The seed's script, verbatim (pyxem names swapped for femlib's), on ``synthetic_fem()``.

The seed is design.md's user code plus its thickness filter: thickness from the HAADF array
stored in the metadata, ``np.linspace`` bins between ``np.min``/``np.max(thickness, axis=(0,
1))``, one boolean mask per bin, ``signal.data[m.data, :, :]`` to make one signal per bin,
``get_variance`` on each and ``hs.plot.plot_spectra`` of the results. Its two V(k) are
checked against the stored truth and against femlib's one-pass
``get_variance(thickness=..., bins=2)`` of the same data.
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest

SEED_SCRIPT = """
import hyperspy.api as hs
import numpy as np
import femlib

s = femlib.data.synthetic_fem()
summed = s.sum()
center, affine, params, pos = femlib.ellipse.determine_ellipse(
    summed, return_params=True, num_points=500, use_ransac=False)
el, in_points = femlib.ellipse.ellipse_to_markers(ellipse_array=params, points=pos)
summed.add_marker(el, plot_marker=True)

s.calibration.center = center[::-1]
s.calibration.affine = affine
az = s.get_azimuthal_integral2d(npt=100).sum().isig[:, 2.0:8.0]

mask = summed < 10000
variance = s.get_variance(npt=50, gain=4.2, radial_range=(3.0, 5.75), mask=mask)
variance.plot()

haadf = s.metadata.HAADF.intensity
thickness = (haadf - 26265) / 440.46
bins = np.linspace(np.min(thickness, axis=(0, 1)), np.max(thickness, axis=(0, 1)), 3)
masks = [hs.signals.Signal2D((thickness >= bins[i]) & (thickness < bins[i + 1]))
         for i in range(len(bins) - 2)]
masks.append(hs.signals.Signal2D((thickness >= bins[-2]) & (thickness <= bins[-1])))

filtered = []
for m in masks:
    signal = s
    f = hs.signals.Signal2D(signal.data[m.data, :, :])
    f.set_signal_type("fem_diffraction")
    for ax, ax_s in zip(f.axes_manager.signal_axes, signal.axes_manager.signal_axes):
        ax.scale, ax.offset, ax.units = ax_s.scale, ax_s.offset, ax_s.units
    f.calibration.affine = affine
    filtered.append(f)

variances = [f.get_variance(npt=50, gain=4.2, radial_range=(3.0, 5.7), mask=mask)
             for f in filtered]
hs.plot.plot_spectra(variances, legend=[f"{bins[i]:.1f}-{bins[i + 1]:.1f} nm"
                                        for i in range(len(bins) - 1)])
"""


@pytest.fixture(scope="module")
def seed_run():
    namespace = {}
    exec(compile(SEED_SCRIPT, "seed_script", "exec"), namespace)  # noqa: S102 - the test
    yield namespace
    plt.close("all")


def _smoothed_truth(s, w):
    """Omega's expectation for the stored modulation seen through the bins ``w``, with the
    true geometry (as in test_fem_synthetic)."""
    from femlib import integration

    t = s.metadata.Simulation
    ny, nx = s.data.shape[-2:]
    yy, xx = np.mgrid[:ny, :nx].astype(float)
    u, v = integration._corrected_offsets(
        xx, yy, np.asarray(t.center), np.asarray(t.affine), (t.scale, t.scale)
    )
    k = np.hypot(u, v).ravel()
    lam = np.asarray(t.mean_pattern).ravel()
    out = np.zeros(w.npt)
    for kj, vj, wj in np.asarray(t.modulation_components):
        g = np.exp(-((k - kj) ** 2) / (2 * wj**2))
        out += vj * ((w.matrix @ (lam * g)) / (w.matrix @ lam)) ** 2
    return out


def test_seed_script_runs_and_splits_into_two_bins(seed_run):
    ns = seed_run
    assert type(ns["haadf"]) is np.ndarray  # stored as the real files store it
    assert len(ns["bins"]) == 3
    counts = [f.axes_manager.navigation_shape[0] for f in ns["filtered"]]
    assert sum(counts) == 1600 and min(counts) > 500
    assert len(ns["variances"]) == 2
    assert all(v.data.shape == (50,) for v in ns["variances"])
    lines = plt.gca().get_lines()
    assert len(lines) >= 2


def test_seed_bins_recover_the_truth(seed_run):
    """Each bin's V(k) is the true V(k) seen through the bins, plus the thickness variation
    left inside the bin: ``(1 + V_tau,b)(1 + V) - 1`` with ``V_tau,b`` from the stored
    thickness of the bin's positions."""
    ns = seed_run
    s = ns["s"]
    sim = s.metadata.Simulation
    t_true = np.asarray(sim.thickness)
    for m, v in zip(ns["masks"], ns["variances"], strict=True):
        tau = t_true[m.data]
        v_tau = tau.var() / tau.mean() ** 2
        w = ns["filtered"][0]._weights(50, 1, (3.0, 5.7), None, ns["mask"])
        expected = (1 + v_tau) * (1 + _smoothed_truth(s, w)) - 1
        k = v.axes_manager.signal_axes[0].axis
        assert abs(k[np.argmax(v.data)] - 4.6) < 0.06  # the true peak
        peak = np.argmax(expected)
        assert abs(v.data[peak] / expected[peak] - 1) < 0.10
        z = (v.data - expected) / v.standard_error
        assert np.mean(np.abs(z) < 3) >= 0.9
        assert abs(np.mean(z)) < 1.0


def test_seed_bins_equal_femlibs_one_pass(seed_run):
    ns = seed_run
    s = ns["s"]
    per_bin = s.get_variance(
        npt=50, gain=4.2, radial_range=(3.0, 5.7), mask=ns["mask"],
        thickness=ns["thickness"], bins=2, show_progressbar=False,
    )
    np.testing.assert_allclose(per_bin.metadata.FEM.thickness_edges, ns["bins"], rtol=1e-12)
    for b, v in enumerate(ns["variances"]):
        np.testing.assert_allclose(per_bin.data[b], v.data, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(
            per_bin.metadata.FEM.standard_error[b], v.standard_error, rtol=1e-9, atol=1e-12
        )
