"""Tests of femlib.variance on hand-made data with known answers."""

import dask.array as da
import numpy as np
import pytest

from femlib import integration as I
from femlib import moments as M
from femlib import variance as V

SHAPE = (48, 48)
CENTER = (23.4, 24.1)
G = 4.2


def acc(frames, w, states, n_groups=1, n_blocks=M.N_BLOCKS, pixels=False, shot_weights=None,
        scale=G):
    """One chunk through the pass with everything r, re and VImage need; ``Q`` with the
    counting model's ``W**2`` (``scale``: the gain) unless shot weights are given."""
    return M.accumulate(frames, w, states, n_groups, n_blocks, pixels, True,
                        shot_weights=w.squared if shot_weights is None else shot_weights,
                        ratio=True, pixel_means=True, shot_scale=scale)


def poisson_frames(n, seed, lam=25.0, modulation=None, dtype=np.float32, flat=False):
    """Frames ``G * Poisson(lam * (1 + eps_n(r)))``; eps has variance ``modulation(r)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    r = np.hypot(xx - CENTER[0], yy - CENTER[1])
    base = lam * (1 + (0 if flat else 0.5) * np.exp(-(((r - 12) / 4) ** 2)))
    if modulation is None:
        lam_n = np.broadcast_to(base, (n,) + SHAPE)
    else:
        c = rng.uniform(-np.sqrt(3), np.sqrt(3), size=n)
        lam_n = base * (1 + c[:, None, None] * np.sqrt(modulation(r)))
    return (G * rng.poisson(lam_n)).astype(dtype)


def bump(r):
    return 0.006 * np.exp(-(((r - 14.0) / 3.0) ** 2))


def weights(npt=30, rr=(4.0, 22.0), affine=None):
    return I.build_weights(SHAPE, CENTER, affine=affine, npt=npt, radial_range=rr)


def run(frames, w, methods=V.METHODS, gain=G, groups=None, n_groups=1):
    st = M.frame_states(len(frames), groups, n_groups)
    m = acc(frames, w, st, n_groups, pixels="VImage" in methods)
    return V.estimate(m, w, methods, gain)


@pytest.mark.parametrize(
    "affine", [None, np.array([[1.03, 0.02, 0], [0.02, 0.99, 0], [0, 0, 1.0]])]
)
@pytest.mark.parametrize("flat", [False, True])
def test_pure_poisson_is_zero_within_errors(affine, flat):
    # Bins about 0.6 px wide: pixel splitting everywhere. r and re also measure how
    # uneven the mean pattern is inside a ring (their definition), so they are tested on
    # flat rings only; Omega and VImage on a structured pattern too.
    frames = poisson_frames(3000, seed=11, flat=flat)
    w = weights(affine=affine)
    methods = V.METHODS if flat else ("Omega", "VImage")
    corrected = run(frames, w, methods)
    raw = run(frames, w, methods, gain=None)
    for i, method in enumerate(methods):
        v, se = corrected["variance"][0, i], corrected["standard_error"][0, i]
        assert np.mean(np.abs(v) < 3 * se) >= 0.95, method
        assert abs(v.mean()) < 2 * np.sqrt(np.mean(se**2)), method
        # Uncorrected, the shot noise is clearly there.
        assert np.all(raw["variance"][0, i] > 10 * se), method


def test_pixel_splitting_needs_the_squared_weight_correction():
    # pyxem's G/<S> form over-subtracts for split bins: V goes clearly negative.
    frames = poisson_frames(3000, seed=12)
    w = weights(npt=60)
    res = run(frames, w, ("Omega",), gain=None)
    naive = res["variance"][0, 0] - G / _mean_ring_sum(frames, w)  # pyxem: G / <S>
    assert np.median(naive) < -10 * np.median(res["standard_error"][0, 0])


def _mean_ring_sum(frames, w):
    return I.integrate(frames, w).mean(axis=0)


def test_hard_bins_reproduce_g_over_mean_ring_sum():
    frames = poisson_frames(500, seed=13)
    soft = weights(npt=6)
    dense = soft.matrix.toarray()
    hard = np.zeros_like(dense)
    covered = dense.sum(0) > 0
    hard[dense.argmax(0)[covered], np.flatnonzero(covered)] = 1.0
    w = I.AzimuthalWeights.from_matrix(hard, soft.radial_edges, soft.azimuth_edges, SHAPE)
    corr = run(frames, w, ("Omega",), gain=G)["variance"][0, 0]
    raw = run(frames, w, ("Omega",), gain=None)["variance"][0, 0]
    ring_sum = I.integrate(frames.astype(float), w).mean(axis=0)
    # The finite-N term: (1 - 1/N) G / <S> (multinomial frames given the pixel totals).
    np.testing.assert_allclose(raw - corr, (1 - 1 / 500) * G / ring_sum, rtol=1e-10)


def expected_structural(w, lam=400.0):
    """Exact expectations of Omega and VImage for ``poisson_frames(modulation=bump)``.

    With ``lambda_n(p) = b(p) (1 + c_n s(p))``, ``Var(c) = 1``: Omega is
    ``(sum_p w b s)^2 / (sum_p w b)^2`` and VImage the ring mean of ``s(p)^2``.
    """
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    r = np.hypot(xx - CENTER[0], yy - CENTER[1]).ravel()
    b = lam * (1 + 0.5 * np.exp(-(((r - 12) / 4) ** 2)))
    s = np.sqrt(bump(r))
    m = w.matrix
    return (m @ (b * s)) ** 2 / (m @ b) ** 2, (m @ s**2) / w.area


def test_recovers_known_structural_variance():
    frames = poisson_frames(4000, seed=14, lam=400.0, modulation=bump)
    w = weights(npt=20, rr=(6.0, 22.0))
    res = run(frames, w, ("Omega", "VImage"))
    for i, truth in enumerate(expected_structural(w)):
        v, se = res["variance"][0, i], res["standard_error"][0, i]
        peak = np.argmax(truth)
        assert abs(v[peak] / truth[peak] - 1) < 0.1
        assert np.mean(np.abs(v - truth) < 3 * se) >= 0.9
    # The pixel-level truth at the bin centres is within 5 % at the peak (bin smoothing).
    centre_truth = bump(w.radial_centers)
    assert abs(res["variance"][0, 0].max() / centre_truth.max() - 1) < 0.05


def test_standard_error_is_calibrated_over_seeds():
    w = weights(npt=12, rr=(6.0, 20.0))
    values, errors = [], []
    for seed in range(50):
        frames = poisson_frames(400, seed=100 + seed, lam=60.0, modulation=bump)
        res = run(frames, w, V.METHODS)
        values.append(res["variance"][0])
        errors.append(res["standard_error"][0])
    spread = np.std(values, axis=0, ddof=1)  # (M, K)
    mean_se = np.mean(errors, axis=0)
    ratio = np.median(spread / mean_se, axis=1)
    assert np.all(np.abs(ratio - 1) < 0.25), ratio


def test_merge_of_halves_equals_whole_and_is_order_free():
    frames = poisson_frames(301, seed=15)
    w = weights()
    st = M.frame_states(len(frames), None, 1)
    whole = acc(frames, w, st, pixels=True)
    a = acc(frames[:120], w, st[:120], pixels=True)
    b = acc(frames[120:], w, st[120:], pixels=True)
    for m in (M.merge(a, b), M.merge(b, a)):
        np.testing.assert_array_equal(m.count, whole.count)
        np.testing.assert_allclose(m.mean, whole.mean, rtol=1e-12)
        np.testing.assert_allclose(m.m2, whole.m2, rtol=1e-10)
        np.testing.assert_allclose(m.pix_m2, whole.pix_m2, rtol=1e-10)
        r1 = V.estimate(m, w, V.METHODS, G)
        r2 = V.estimate(whole, w, V.METHODS, G)
        np.testing.assert_allclose(r1["variance"], r2["variance"], rtol=1e-10, atol=1e-15)


def test_lazy_chunked_equals_eager(keep_small_chunks):
    frames = poisson_frames(12 * 17, seed=16).reshape((12, 17) + SHAPE)
    w = weights()
    kw = dict(shot_weights=w.squared, methods=V.METHODS, shot_scale=G)
    eager = V.estimate(M.accumulate_moments(frames, w, **kw), w, V.METHODS, G)
    darr = da.from_array(frames, chunks=(5, 4, 48, 24))  # uneven, detector split too
    delayed = M.accumulate_moments(darr, w, compute=False, **kw)
    assert len(delayed.dask) > 20  # many chunks, merged as a tree
    lazy = V.estimate(delayed.compute(), w, V.METHODS, G)
    for key in ("variance", "standard_error", "combined"):
        np.testing.assert_allclose(lazy[key], eager[key], rtol=1e-10, atol=1e-16)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8])
def test_integer_inputs_do_not_overflow(dtype):
    rng = np.random.default_rng(17)
    top = np.iinfo(dtype).max
    frames = rng.integers(top // 2, top + 1, size=(200,) + SHAPE).astype(dtype)
    w = weights()
    a = run(frames, w, V.METHODS, gain=None)
    b = run(frames.astype(np.float64), w, V.METHODS, gain=None)
    np.testing.assert_allclose(a["variance"], b["variance"], rtol=1e-12)


def test_float32_large_counts_small_variance_is_exact():
    # Counts ~1e5 with V ~ 1e-3: naive float32 sums of squares lose this entirely.
    rng = np.random.default_rng(18)
    n = 2000
    scale = 1 + rng.normal(0, np.sqrt(1e-3), size=n)
    frames = (1e5 * scale[:, None, None] * np.ones((n,) + SHAPE)).astype(np.float32)
    w = weights(npt=5)
    v = run(frames, w, ("Omega",), gain=None)["variance"][0, 0]
    ring = I.integrate(frames.astype(np.float64), w)
    truth = ring.var(axis=0) / ring.mean(axis=0) ** 2
    np.testing.assert_allclose(v, truth, rtol=1e-8)


def test_groups_and_combined():
    f1 = poisson_frames(800, seed=19, lam=20.0)
    f2 = poisson_frames(400, seed=20, lam=40.0)
    frames = np.concatenate([f1, f2])
    groups = np.r_[np.zeros(800, int), np.ones(400, int)]
    w = weights()
    res = run(frames, w, ("Omega",), groups=groups, n_groups=2)
    np.testing.assert_array_equal(res["counts"], [800, 400])
    sep = [run(f, w, ("Omega",))["variance"][0, 0] for f in (f1, f2)]
    np.testing.assert_allclose(res["variance"][:, 0], sep, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(
        res["combined"][0], (800 * sep[0] + 400 * sep[1]) / 1200, rtol=1e-10, atol=1e-15
    )
    # Mixing the two intensities without groups inflates V by their relative variance.
    mixed = run(frames, w, ("Omega",))["variance"][0, 0]
    assert np.all(mixed > res["combined"][0] + 0.05)


@pytest.mark.parametrize("method", ["omega", "X", "", ["Omega", "bad"], 3])
def test_bad_method(method):
    with pytest.raises(ValueError, match="method must be one of"):
        V.check_method(method)


@pytest.mark.parametrize("gain", [0, -1.0, np.nan, np.inf, np.float64(-2.0)])
def test_bad_gain_value(gain):
    with pytest.raises(ValueError, match=r"^gain must be a positive finite number"):
        V.check_gain(gain)


@pytest.mark.parametrize("gain", [True, False, np.True_, "4.2", "four", [1.0, 2.0], {}])
def test_non_numeric_gain_is_a_type_error(gain):
    # gain=True used to mean 1 and gain="4.2" was accepted: both are refused by name.
    with pytest.raises(TypeError, match=r"^gain must be a positive number or None, got "):
        V.check_gain(gain)


@pytest.mark.parametrize("gain", [4, 4.2, np.float32(4.2), np.int64(4), np.array(4.2)])
def test_numeric_gain_is_accepted(gain):
    assert V.check_gain(gain) == pytest.approx(float(gain), rel=1e-7)
    assert isinstance(V.check_gain(gain), float)


def test_k0_is_checked_by_name():
    frames = poisson_frames(20, seed=40)
    w = weights(npt=4)
    m = acc(frames, w, M.frame_states(20))
    with pytest.raises(TypeError, match=r"^k0 must be a positive number"):
        V.estimate(m, w, ("Omega",), k0="4.2")
    with pytest.raises(ValueError, match=r"^k0 must be a positive finite"):
        V.estimate(m, w, ("Omega",), k0=-1.0)
    with pytest.raises(TypeError, match="subtract_nonuniformity must be True or False"):
        V.estimate(m, w, ("r",), subtract_nonuniformity="yes")


def test_absurd_gain_warns_that_it_is_probably_wrong():
    frames = poisson_frames(50, seed=41)
    w = weights(npt=6)
    with pytest.warns(RuntimeWarning, match=r"gain \(1e\+09\) is probably wrong") as rec:
        res = run(frames, w, ("Omega", "VImage"), gain=1e9)
    assert {"'Omega'", "'VImage'"} <= {str(r.message).split()[5] for r in rec}
    assert np.all(res["variance"] < -1e3)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right gain: no warning
        run(frames, w, V.METHODS, gain=G)


def test_all_zero_data_warns_about_the_asked_method_only():
    frames = np.zeros((6,) + SHAPE, np.float32)
    w = weights(npt=3)
    for gain in (None, G):
        res = run(frames, w, ("Omega",), gain=gain)
        with pytest.warns(RuntimeWarning) as rec:
            V.warn_undefined(res, w.radial_centers)
        messages = [str(r.message) for r in rec]
        assert len(messages) == 1, messages
        assert "for method 'Omega': the ring has no intensity" in messages[0]
        assert "'r'" not in messages[0] and "VImage" not in messages[0]


def test_moments_count_nonfinite_frames():
    c = np.array([1.0, 3.0, 1.0, 3.0, 5.0, 7.0])
    frames = c[:, None, None] * np.ones((6,) + SHAPE)
    frames[4, 20, 30] = np.nan  # in range
    frames[5, 20, 30] = np.inf
    before = frames.copy()
    w = weights(npt=4)
    m = acc(frames, w, M.frame_states(6))
    np.testing.assert_array_equal(frames, before)
    assert m.n_nonfinite == 2
    assert m.n_frames == 4
    merged = M.merge(m, acc(frames[4:], w, M.frame_states(2)))
    assert merged.n_nonfinite == 4
    np.testing.assert_allclose(V.estimate(m, w)["variance"], 0.25, rtol=1e-12)


def test_r_undefined_rings_warn():
    frames = np.zeros((10,) + SHAPE, np.float32)
    frames[:5] = 1.0
    w = weights()
    res = run(frames, w, ("r",), gain=None)
    with pytest.warns(RuntimeWarning, match="undefined"):
        V.warn_undefined(res, w.radial_centers)


def test_tiny_chunks_are_merged_and_signal_chunks_made_whole(caplog):
    import logging

    frames = poisson_frames(12 * 17, seed=16).reshape((12, 17) + SHAPE)
    darr = da.from_array(frames, chunks=(1, 1, 48, 24))
    with caplog.at_level(logging.INFO, logger="femlib.integration"):
        out = I.prepare_chunks(darr)
    assert out.chunks[-2:] == ((48,), (48,))
    assert out.numblocks[0] * out.numblocks[1] < 12 * 17
    assert sum("whole frames" in r.message for r in caplog.records) == 1


def test_nonfinite_frames_are_left_out_and_counted():
    frames = poisson_frames(300, seed=21)
    bad = frames.copy()
    bad[[3, 50, 51], 20, 30] = np.nan  # an in-range pixel
    bad[7, 0, 0] = np.inf  # outside the radial range: harmless
    w = weights()
    st = M.frame_states(300)
    m = acc(bad, w, st)
    assert m.n_nonfinite == 3 and m.n_frames == 297
    keep = np.setdiff1d(np.arange(300), [3, 50, 51])
    ref = acc(frames[keep], w, st[keep])
    np.testing.assert_allclose(m.mean, ref.mean, rtol=1e-12)


def test_standard_error_is_calibrated_with_groups():
    # Groups that fall on the scan unevenly: every group still spreads over all blocks.
    w = weights(npt=8, rr=(6.0, 20.0))
    groups = np.repeat([0, 1, 2], [137, 91, 172])  # contiguous runs, like a thickness ramp
    values, errors, combined, combined_se = [], [], [], []
    for seed in range(40):
        frames = poisson_frames(400, seed=300 + seed, lam=60.0, modulation=bump)
        res = run(frames, w, ("Omega", "VImage"), groups=groups, n_groups=3)
        values.append(res["variance"])
        errors.append(res["standard_error"])
        combined.append(res["combined"])
        combined_se.append(res["combined_standard_error"])
        assert np.all(np.isfinite(res["standard_error"]))
    ratio = np.std(values, axis=0, ddof=1) / np.mean(errors, axis=0)
    assert np.all(np.abs(np.median(ratio, axis=-1) - 1) < 0.3), np.median(ratio, axis=-1)
    ratio_c = np.std(combined, axis=0, ddof=1) / np.mean(combined_se, axis=0)
    assert np.all(np.abs(np.median(ratio_c, axis=-1) - 1) < 0.3), np.median(ratio_c, axis=-1)


def test_every_group_spreads_over_the_blocks():
    groups = np.tile(np.repeat([0, 1], 10), 6)  # columns alternate between two groups
    st = M.frame_states(groups.size, groups, 2)
    for g in range(2):
        blocks = st[groups == g] - g * M.N_BLOCKS
        np.testing.assert_array_equal(np.bincount(blocks, minlength=M.N_BLOCKS), 3)


def _many_groups(lam, n, n_groups, seed, shape=(20, 20)):
    """``n_groups`` independent pure-Poisson experiments of ``n`` frames, one pass."""
    rng = np.random.default_rng(seed)
    frames = (G * rng.poisson(lam, size=(n_groups * n,) + shape)).astype(np.float32)
    w = I.build_weights(shape, (9.3, 9.6), npt=10, radial_range=(3.0, 9.0))  # 0.6 px bins
    groups = np.repeat(np.arange(n_groups), n)
    st = M.frame_states(frames.shape[0], groups, n_groups)
    m = acc(frames, w, st, n_groups, pixels=True)
    return frames.reshape(n_groups, n, -1).astype(np.float64), w, m


@pytest.mark.parametrize("n, n_groups", [(10, 1000), (100, 200)])
def test_finite_n_poisson_mean_is_zero_and_old_vimage_bias_excluded(n, n_groups):
    # Measured (2000/400 groups, lambda = 2 e/px/frame, see the estimators page): every
    # corrected estimator within 1.5 SE of 0; the old VImage term left -0.053 (N=10) and
    # -0.0054 (N=100), i.e. -<1/T> with T the electrons of a pixel over the N frames.
    frames, w, m = _many_groups(2.0, n, n_groups, seed=50 + n)
    res = V.estimate(m, w, V.METHODS, gain=G)
    per_group = res["variance"].mean(axis=-1)  # (groups, methods): mean over the bins
    mean = per_group.mean(axis=0)
    se = per_group.std(axis=0, ddof=1) / np.sqrt(n_groups)
    assert np.all(np.abs(mean) < 3 * se), (mean, se)
    # The old VImage term G / <D(p)>: bias -<1/T>, clearly excluded.
    pm = frames.mean(axis=1)
    dense = w.matrix.toarray()
    old_shift = ((G / pm) @ dense.T / w.area - (1 - 1 / n) * (G / pm) @ dense.T / w.area)
    old = (res["variance"][:, 3] - old_shift).mean(axis=-1)
    # Given the pixel totals T (electrons over the N frames) the old bias is exactly minus
    # the ring mean of 1/T (-1/(2N) to 6 % here).
    expected_bias = -(((1 / (pm / G * n)) @ dense.T) / w.area).mean()
    assert abs(expected_bias + 1 / (2.0 * n)) < 0.1 / n
    assert abs(old.mean() - expected_bias) < 3 * se[3]
    assert old.mean() < -10 * se[3]


def _static_pattern(shape=(40, 40), centre=(19.6, 20.3)):
    """Mean pattern (electrons) with an azimuthal modulation and a radial slope."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    dx, dy = xx - centre[0], yy - centre[1]
    r, phi = np.hypot(dx, dy), np.arctan2(dy, dx)
    return 20.0 * (1 + 0.15 * np.cos(2 * phi)) * (1 + 0.02 * r)


def test_ring_nonuniformity_equals_the_mean_pattern_reference_and_is_removed():
    lam = _static_pattern()
    shape = lam.shape
    w = I.build_weights(shape, (19.6, 20.3), npt=8, radial_range=(4.0, 18.0))
    rng = np.random.default_rng(60)
    n = 1500
    frames = (G * rng.poisson(lam, size=(n,) + shape)).astype(np.float64)
    m = acc(frames, w, M.frame_states(n), pixels=True)
    dense = w.matrix.toarray()
    # Independent reference from the mean pattern of the frames.
    pm = frames.reshape(n, -1).mean(axis=0)
    s1, s2 = dense @ pm, dense @ pm**2
    nu_raw = w.area * s2 / s1**2 - 1
    raw = V.estimate(m, w, ("r", "re"))
    np.testing.assert_allclose(raw["ring_nonuniformity"][0], nu_raw, rtol=1e-10)
    # With a gain, unbiased products: A (sum w m^2 - G S / N) / (S^2 - <Q> / N) - 1.
    res = V.estimate(m, w, ("r", "re"), gain=G)
    q = G * (dense**2 @ pm)
    nu_pair = w.area * (s2 - G * s1 / n) / (s1**2 - q / n) - 1
    np.testing.assert_allclose(res["ring_nonuniformity"][0], nu_pair, rtol=1e-10)
    # It estimates the true non-uniformity of lambda inside each ring ...
    lf = lam.ravel()
    truth = w.area * (dense @ lf**2) / (dense @ lf) ** 2 - 1
    nu, nu_se = res["ring_nonuniformity"][0], res["ring_nonuniformity_standard_error"][0]
    assert np.all(np.abs(nu - truth) < 4 * nu_se + 1e-4 * truth), (nu, truth, nu_se)
    assert np.all(truth > 0.005)
    # ... which r and re measure on Poisson data; subtracting it leaves 0 within errors.
    sub = V.estimate(m, w, ("r", "re"), gain=G, subtract_nonuniformity=True)
    for i in range(2):
        v, se = res["variance"][0, i], res["standard_error"][0, i]
        assert np.all(np.abs(v - truth) < 4 * se + 0.01 * truth)
        assert np.all(v > 10 * se)
        vs, ses = sub["variance"][0, i], sub["standard_error"][0, i]
        assert np.all(np.abs(vs) < 4 * ses), (i, vs, ses)
    np.testing.assert_allclose(
        sub["variance"][0], res["variance"][0] - res["ring_nonuniformity"][0], rtol=1e-12
    )


@pytest.mark.parametrize("lazy", [False, True])
def test_get_variance_stores_and_subtracts_the_ring_nonuniformity(lazy):
    import femlib

    s = femlib.data.synthetic_fem(
        navigation_shape=(12, 12), detector_shape=(64, 64), modulation=False, seed=5, lazy=lazy
    )
    sim = s.metadata.Simulation
    s.calibration.center = tuple(np.asarray(sim.center))
    s.calibration.affine = np.asarray(sim.affine)
    kw = dict(npt=12, gain=4.2, radial_range=(3.0, 5.75), show_progressbar=False)
    v = s.get_variance(method=["Omega", "r", "re"], **kw)
    vs = s.get_variance(method=["Omega", "r", "re"], subtract_nonuniformity=True, **kw)
    if lazy:  # lazy input gives a lazy V(k): the pass runs at compute()
        v.compute()
        vs.compute()
    fem = v.metadata.FEM
    assert fem.subtract_nonuniformity is False and vs.metadata.FEM.subtract_nonuniformity
    # Reference from the mean pattern of the data and the weights get_variance uses.
    frames = np.asarray(s.data, dtype=np.float64).reshape(144, -1)
    pm = frames.mean(axis=0)
    w = s._weights(12, 1, (3.0, 5.75), None, None)
    dense = w.matrix.toarray()
    s1 = dense @ pm
    raw = w.area * (dense @ pm**2) / s1**2 - 1
    q = 4.2 * (dense**2 @ pm)
    pair = w.area * (dense @ pm**2 - 4.2 * s1 / 144) / (s1**2 - q / 144) - 1
    np.testing.assert_allclose(fem.ring_nonuniformity, pair, rtol=1e-9)
    # To first order in 1 / N the non-uniformity less its shot content (k0 A / S - Q / S^2)
    shot = (4.2 * w.area / s1 - q / s1**2) / 144
    np.testing.assert_allclose(fem.ring_nonuniformity, raw - shot, rtol=1e-3, atol=1e-6)
    assert fem.ring_nonuniformity_standard_error.shape == (12,)
    np.testing.assert_allclose(vs.data[0], v.data[0], rtol=1e-12)  # Omega unchanged
    np.testing.assert_allclose(vs.data[1:], v.data[1:] - fem.ring_nonuniformity, rtol=1e-9)
    # Omega alone: no per-pixel means were needed, nothing stored.
    assert "ring_nonuniformity" not in s.get_variance(**kw).metadata.FEM
    with pytest.raises(TypeError, match="subtract_nonuniformity must be True or False"):
        s.get_variance(subtract_nonuniformity="no", **kw)
