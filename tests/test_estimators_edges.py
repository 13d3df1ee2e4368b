"""Estimators at the edges: speckle-dominated data, very low dose, integrating cameras to
second order, absurd inputs. Representative cases, a few seeds; the seed sweeps are in
``benchmarks/estimator_accuracy.py``."""

import warnings

import numpy as np
import pytest

import femlib
from femlib import integration as I
from femlib import moments as M
from femlib import variance as V
from femlib.noise import DetectorNoise
from femlib.signals import FEMDiffraction2D

# ------------------------------------------------------------------ speckle-dominated data


def test_synthetic_speckle_is_exponential_speckle_with_its_truth():
    s = femlib.data.synthetic_speckle((6, 6), (32, 32), dose=50.0, contrast=(1.0, 1.0),
                                      seed=4)
    clean = s.metadata.Simulation.noise_free / s.metadata.Simulation.mean_pattern
    # Fully developed speckle: every pixel Exp(1) around the mean pattern.
    assert clean.mean() == pytest.approx(1.0, abs=0.03)
    assert clean.var() == pytest.approx(1.0, abs=0.08)
    truth = femlib.data.speckle_truth(s, npt=4, radial_range=(0.4, 1.8), method="VImage")
    assert np.all((truth.data > 0.6) & (truth.data < 1.4))  # pixel-level V = beta^2 = 1
    with pytest.raises(ValueError, match="speckle_truth takes no gain"):
        femlib.data.speckle_truth(s, npt=4, gain=1.0)
    with pytest.raises(ValueError, match="contrast must be"):
        femlib.data.synthetic_speckle((2, 2), (32, 32), contrast=(1.5, 0.5))


@pytest.mark.parametrize("dose, gain", [(0.6, 1.0), (40.0, 4.2)])
def test_every_estimator_finds_the_truth_on_speckle(dose, gain):
    # ~20-200 (low dose) and ~1e3-1e4 (high dose) electrons per ring per frame, V 0.3-1:
    # every corrected estimator within 1.5 SE rms of the noise-free truth, none beyond 4.
    kw = dict(npt=8, radial_range=(0.4, 3.9), method="all", show_progressbar=False)
    z = []
    for seed in range(3):
        s = femlib.data.synthetic_speckle((12, 12), (64, 64), dose=dose, gain=gain, seed=seed)
        truth = femlib.data.speckle_truth(s, **kw).data
        v = s.get_variance(gain=gain, **kw)
        z.append((v.data - truth) / v.metadata.FEM.standard_error)
        assert truth[1].max() > 0.3  # r: speckle dominated
    z = np.array(z)
    assert np.all(np.sqrt(np.mean(z**2, axis=(0, 2))) < 1.5), z
    assert np.abs(z).max() < 4


def test_r_per_frame_products_remove_the_first_order_ratio_bias():
    # Hard bins, non-uniform ring, counting model: the per-frame unbiased products give r
    # without bias; the first-order form A J / S^2 - 1 - G A / S + Q / S^2 keeps
    # r_true (1 - 1/M), M the electrons in the ring.
    rng = np.random.default_rng(8)
    pi = np.array([0.4, 0.3, 0.2, 0.1])  # static within-ring probabilities
    true_r = 4 * np.sum(pi**2) - 1
    w = I.AzimuthalWeights.from_matrix(np.ones((1, 4)), np.array([0.0, 1.0]),
                                       [-np.pi, np.pi], (1, 4))
    n, electrons = 40_000, 15.0
    counts = rng.poisson(electrons * pi, size=(n, 1, 4)).astype(float)
    frames = 2.0 * counts
    m = M.accumulate_moments(frames, w, shot_weights=w.squared, methods=("r",), shot_scale=2.0)
    res = V.estimate(m, w, ("r",), gain=2.0)
    v, se = res["variance"][0, 0, 0], res["standard_error"][0, 0, 0]
    assert abs(v - true_r) < 4 * se
    mm = m.mean.sum(0) / m.n_blocks
    first = mm[M._U] - 1 - 2.0 * mm[M._V] + 2.0 * mm[M._Y]
    ok = counts.sum(axis=(1, 2)) >= 1
    expect_first = true_r * (1 - np.mean(1 / counts.sum(axis=(1, 2))[ok]))
    assert first[0] == pytest.approx(expect_first, abs=5 * se)
    assert true_r - first[0] > 5 * se  # the first-order form is measurably biased


# ------------------------------------------------------------------ very low dose


def _low_dose(dose, seed, npt=6):
    rng = np.random.default_rng(seed)
    s = FEMDiffraction2D(rng.poisson(dose, (8, 8, 32, 32)).astype(np.float32))
    s.calibration.center = (15.5, 15.5)
    return s.get_variance(npt=npt, gain=1.0, radial_range=(2.0, 15.0), method="all",
                          show_progressbar=False)


def test_low_dose_standard_errors_are_flagged_with_the_counts_per_bin():
    with pytest.warns(RuntimeWarning, match=r"standard error of V\(k\) is not trustworthy .* "
                      r"electrons per bin per frame\), fewer than 10") as rec:
        v = _low_dose(0.001, 0)
    assert not v.metadata.FEM.standard_error_trusted.any()
    assert all(len(str(r.message)) < 400 for r in rec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v = _low_dose(0.1, 0)
    assert v.metadata.FEM.standard_error_trusted.all()


def test_low_dose_trusted_errors_are_calibrated():
    # 0.01 and 0.1 counts/px/frame: no trusted value beyond 3 SE over 30 seeds; the error
    # bars are neither too small (the jackknife alone was 4-16x too small at 0.001-0.01)
    # nor much too large (rms of V/SE close to 1 at 0.1).
    w = I.build_weights((32, 32), (15.5, 15.5), npt=6, radial_range=(2.0, 15.0))
    for dose in (0.01, 0.1):
        z = []
        for seed in range(30):
            f = np.random.default_rng(seed).poisson(dose, (64, 32, 32)).astype(float)
            m = M.accumulate_moments(f, w, shot_weights=w.squared, methods=V.METHODS)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = V.estimate(m, w, V.METHODS, gain=1.0)
            ok = res["standard_error_trusted"][0] & np.isfinite(res["variance"][0])
            z.append(np.where(ok, res["variance"][0] / res["standard_error"][0], np.nan))
        z = np.array(z)
        assert np.nanmax(np.abs(z)) < 3.5
        if dose == 0.1:
            assert 0.7 < np.sqrt(np.nanmean(z**2)) < 1.2


def test_the_shot_floor_is_the_first_order_error_of_pure_noise():
    # Omega on hard-bin Poisson data: sqrt(2 / (N - 1)) / n_e with n_e electrons per ring.
    w = I.AzimuthalWeights.from_matrix(np.ones((1, 6)), np.array([0.0, 1.0]),
                                       [-np.pi, np.pi], (1, 6))
    f = 3.0 * np.random.default_rng(1).poisson(5.0, (40, 1, 6)).astype(float)
    m = M.accumulate_moments(f, w, shot_weights=w.squared, shot_scale=3.0)
    res = V.estimate(m, w, ("Omega",), gain=3.0)
    n_e = f.sum(axis=(1, 2)).mean() / 3.0
    assert res["shot_standard_error"][0, 0, 0] == pytest.approx(np.sqrt(2 / 39) / n_e)
    assert res["shot_pairs"][0, 0, 0] == pytest.approx(40 * n_e**2 / 2)
    none = V.estimate(m, w, ("Omega",))  # no correction: electrons unknown, nothing flagged
    assert none["standard_error_trusted"].all() and not none["shot_standard_error"].any()


# ------------------------------------------------------------------ integrating cameras


def test_curvature_of_a_psf_and_of_a_measured_kernel():
    from femlib.data._synthetic import _psf_profile

    for sigma in (0.5, 1.0):
        p = _psf_profile(sigma)
        exact = DetectorNoise.from_psf(np.outer(p, p), 4.2)
        # c = (mu2(h^2 / sum h^2) - mu2(h)) / 2, about -sigma^2 / 4 at 1 px
        x = np.arange(p.size) - p.size // 2
        q = p**2 / np.sum(p**2)
        c = 0.5 * (np.sum(q * x**2) - np.sum(p * x**2))
        np.testing.assert_allclose(exact.curvature, (c, c), rtol=1e-12)
        # A bare kernel: a pixel-integrated Gaussian with its k0 / gain.
        np.testing.assert_allclose(DetectorNoise(exact.kernel).curvature, (c, c), rtol=1e-3)
    assert DetectorNoise.from_psf(np.outer(_psf_profile(1.0), _psf_profile(1.0)),
                                  1.0).curvature[0] == pytest.approx(-0.2706, abs=1e-4)


def test_second_differences_step_around_untouched_pixels():
    # A quadratic mean pattern: every stencil (centred, one-sided past a hole or the edge
    # of the touched region) gives its exact second derivatives.
    shape = (9, 9)
    y, x = np.mgrid[0:9, 0:9].astype(float)
    pattern = 3.0 + 0.5 * x**2 - 0.25 * y**2 + 0.1 * x * y
    touched = np.flatnonzero(~((y == 4) & (x == 5)))  # a hole, and the detector's edges
    lap = V._Curvature((2.0, 3.0), touched, shape)
    got = lap(pattern.ravel()[touched][None])[0]
    np.testing.assert_allclose(got, 2.0 * (-0.5) + 3.0 * 1.0, rtol=1e-12)


def test_second_order_psf_term_removes_the_per_pixel_residual():
    # Structure-free scan, PSF 1 px, the PSF's exact kernel: the locally-flat model leaves
    # r, re and VImage negative; with the second-order term their mean V / SE is ~0.
    s = femlib.data.synthetic_fem((24, 24), (64, 64), modulation=False,
                                  thickness_gradient=False, psf_sigma=1.0, dose=4e3,
                                  scale=0.28, seed=7)
    sim = s.metadata.Simulation
    s.calibration.center, s.calibration.affine = sim.center, sim.affine
    from femlib.data._synthetic import _psf_profile

    p = _psf_profile(1.0)
    model = DetectorNoise.from_psf(np.outer(p, p), sim.gain)

    class Flat:  # the same kernel, without the second-order term
        gain, k0, kernel = model.gain, model.k0, model.kernel
        shot_weights = model.shot_weights

    kw = dict(npt=12, radial_range=(3.0, 7.5), mask=sim.beam_stop_mask, method="all",
              subtract_nonuniformity=True, show_progressbar=False)
    new = s.get_variance(noise=model, **kw)
    old = s.get_variance(noise=Flat(), **kw)
    z_new = (new.data / new.metadata.FEM.standard_error).mean(axis=1)
    z_old = (old.data / old.metadata.FEM.standard_error).mean(axis=1)
    assert np.all(np.abs(z_new) < 0.6), z_new
    assert z_new[0] == z_old[0]  # Omega: no per-pixel term
    assert np.all(np.abs(z_new[1:]) < np.abs(z_old[1:])), (z_new, z_old)


# ------------------------------------------------------------------ absurd inputs


def _small(scale=1.0):
    s = FEMDiffraction2D(np.random.default_rng(0).poisson(5.0, (6, 6, 32, 32)) * scale)
    s.calibration.center = (15.5, 15.5)
    return s


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: _small().get_variance(npt=5, gain=1.0, thickness=np.arange(36.0).reshape(6, 6),
                                       bins=10**6, show_progressbar=False),
         r"^bins=1000000 asks for more thickness bins than there are probe positions \(36\)"),
        (lambda: _small().get_variance(npt=5, gain=1.0, thickness=np.arange(36.0).reshape(6, 6),
                                       bins=10**7, show_progressbar=False), r"^bins=10000000"),
        (lambda: _small().get_variance(npt=5, gain=1e308, method="all",
                                       show_progressbar=False),
         r"^gain=1e\+308 with ring sums up to .* overflows float64"),
        (lambda: _small(1e300).get_variance(npt=5, gain=1.0, method="all",
                                            show_progressbar=False),
         r"^frames hold values up to 1.*e\+301, whose squares overflow float64"),
        (lambda: _small(1e300).get_variance(npt=5, show_progressbar=False),
         r"^ring sums reach .* the estimators square them"),
    ],
)
def test_absurd_inputs_are_refused_shortly_and_quietly(call, message):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow warning on the way
        with pytest.raises(ValueError, match=message) as err:
            call()
    assert len(str(err.value)) < 400


def test_too_many_groups_are_refused_before_allocating():
    w = I.build_weights((32, 32), (15.5, 15.5), npt=5, radial_range=(2.0, 15.0))
    labels = np.zeros(4, np.int64)
    with pytest.raises(ValueError, match=r"^10000000 states .* GiB of moments") as err:
        M.accumulate_moments(np.ones((4, 32, 32)), w, labels, n_groups=10**7 // 20,
                             methods=V.METHODS)
    assert len(str(err.value)) < 400
