"""Exact finite-N expectations of the corrected FEM estimators on Poisson data.

For Poisson counts, conditioning on a sum makes the counts multinomial; a tiny detector
then allows every outcome to be enumerated with its exact probability. Each outcome is run
through femlib as its own group (one pass, one ``estimate``), and the probability-weighted
mean of the corrected estimator must be 0 to rounding. The closed forms the old terms
leave (e.g. ``-<1/T>`` of the old VImage term) are checked the same way.
"""

import itertools
import os
import re
import warnings
from math import factorial

import numpy as np
import pytest

from femlib import integration as I
from femlib import moments as M
from femlib import variance as V

G = 2.5  # detector units per electron


def acc(frames, w, states, n_groups=1, n_blocks=M.N_BLOCKS, pixels=False, shot_weights=None,
        scale=G, squares=True):
    """One chunk through the pass with everything r, re and VImage need; ``Q`` with the
    counting model's ``W**2`` (``scale``: the gain) unless shot weights are given."""
    return M.accumulate(frames, w, states, n_groups, n_blocks, pixels, squares,
                        shot_weights=w.squared if shot_weights is None else shot_weights,
                        ratio=squares, pixel_means=squares or pixels, shot_scale=scale)


def _weights(matrix, shape):
    matrix = np.atleast_2d(np.asarray(matrix, float))
    edges = np.arange(matrix.shape[0] + 1, dtype=float)
    return I.AzimuthalWeights.from_matrix(matrix, edges, [-np.pi, np.pi], shape)


def _compositions(total, parts):
    """Every way to put ``total`` indistinguishable counts into ``parts`` cells."""
    for bars in itertools.combinations(range(total + parts - 1), parts - 1):
        edges = (-1,) + bars + (total + parts - 1,)
        yield tuple(edges[i + 1] - edges[i] - 1 for i in range(parts))


def _multinomial(counts, probs):
    counts = np.asarray(counts)
    coef = factorial(int(counts.sum()))
    for c in counts.ravel():
        coef //= factorial(int(c))
    return coef * float(np.prod(np.asarray(probs, float) ** counts))


def _run(outcomes, w, methods, **kw):
    """One group per outcome ``(N, rows, cols)`` of electron counts; frames are ``G * counts``."""
    outcomes = np.asarray(outcomes, float)
    n_groups, n = outcomes.shape[:2]
    frames = G * outcomes.reshape((-1,) + outcomes.shape[2:])
    groups = np.repeat(np.arange(n_groups), n)
    st = M.frame_states(frames.shape[0], groups, n_groups, n_blocks=n)
    m = acc(frames, w, st, n_groups, n_blocks=n, pixels="VImage" in methods)
    return V.estimate(m, w, methods, **kw)


# Split weights: two overlapping "rings" over a 1 x 3 detector (no pixel wholly inside).
SPLIT = [[1.0, 0.5, 0.25], [0.3, 0.45, 0.7]]


@pytest.mark.parametrize("totals, n", [((2, 1, 3), 3), ((4, 2, 1), 2), ((1, 1, 2), 4)])
def test_given_pixel_totals_omega_vimage_and_re_minus_nu_are_exact(totals, n):
    # Given each pixel's total T_p over the N frames, its frames are multinomial(T_p, 1/N),
    # independently per pixel: Omega, VImage, and re less the ring non-uniformity have
    # conditional expectation exactly 0 for any weights.
    shape = (1, 3)
    w = _weights(SPLIT, shape)
    per_pixel = [list(_compositions(t, n)) for t in totals]
    outcomes, probs = [], []
    for combo in itertools.product(*per_pixel):
        counts = np.array(combo).T.reshape(n, *shape)  # (N, 1, 3)
        outcomes.append(counts)
        probs.append(np.prod([_multinomial(c, [1 / n] * n) for c in combo]))
    probs = np.array(probs)
    assert abs(probs.sum() - 1) < 1e-12
    res = _run(outcomes, w, V.METHODS, gain=G)
    sub = _run(outcomes, w, ("re",), gain=G, subtract_nonuniformity=True)
    expect = lambda v: probs @ v  # noqa: E731  (v: (outcomes, K))
    for i, method in enumerate(V.METHODS):
        if method in ("Omega", "VImage"):
            np.testing.assert_allclose(expect(res["variance"][:, i]), 0, atol=1e-12)
    np.testing.assert_allclose(expect(sub["variance"][:, 0]), 0, atol=1e-12)
    # Without the correction the expectation is far from 0 (the test can fail).
    raw = _run(outcomes, w, V.METHODS)
    assert np.all(expect(raw["variance"][:, 0]) > 0.05)
    # The old VImage term G / <D(p)> leaves exactly minus the ring mean of 1 / T_p.
    t = np.asarray(totals, float)
    old_bias = -(np.asarray(SPLIT) @ (1 / t)) / np.sum(SPLIT, axis=1)
    old = raw["variance"][:, 3] - _ring_mean_of_g_over_mean(outcomes, w)
    np.testing.assert_allclose(expect(old), old_bias, rtol=1e-12)


def _ring_mean_of_g_over_mean(outcomes, w):
    pix = G * np.asarray(outcomes, float).mean(axis=1).reshape(len(outcomes), -1)
    return (G / pix) @ w.matrix.toarray().T / w.area


@pytest.mark.parametrize("counts, pixels", [((2, 3), 3), ((1, 4, 2), 4), ((5, 1), 2)])
def test_given_frame_ring_sums_r_is_exact_for_hard_uniform_rings(counts, pixels):
    # Hard bin over a uniform ring: given the ring sum M_n (electrons) of each frame, its
    # pixels are multinomial(M_n, 1/P) and E[U - 1 | M_n] = (P - 1) / M_n, which is the
    # term k0 A / I - Q / I^2 (I = G M_n the ring sum, Q = G I for hard bins).
    shape = (1, pixels)
    w = _weights(np.ones(pixels), shape)
    per_frame = [list(_compositions(m, pixels)) for m in counts]
    outcomes, probs = [], []
    for combo in itertools.product(*per_frame):
        outcomes.append(np.array(combo).reshape(len(counts), *shape))
        probs.append(np.prod([_multinomial(c, [1 / pixels] * pixels) for c in combo]))
    probs = np.array(probs)
    res = _run(outcomes, w, ("r",), gain=G)
    np.testing.assert_allclose(probs @ res["variance"][:, 0], 0, atol=1e-12)
    # The design's term <G / I_n(k)> (I_n the ring mean, G P / <G / M_n>) leaves exactly
    # -<1 / M_n>.
    raw = _run(outcomes, w, ("r",))["variance"][:, 0, 0]
    m = np.asarray(counts, float)
    np.testing.assert_allclose(probs @ (raw - np.mean(pixels / m)), -np.mean(1 / m), rtol=1e-12)


@pytest.mark.parametrize("total, n, pixels", [(4, 2, 3), (5, 3, 2), (3, 2, 4)])
def test_given_the_ring_total_every_estimator_is_exact_for_hard_uniform_rings(total, n, pixels):
    # Given the ring's total M over all frames, the N x P cells are multinomial(M, 1/(NP)):
    # re, Omega and VImage have expectation exactly 0; so has re (or r, frames permitting)
    # with the static non-uniformity subtracted, and the non-uniformity itself.
    shape = (1, pixels)
    w = _weights(np.ones(pixels), shape)
    outcomes, probs = [], []
    for cells in _compositions(total, n * pixels):
        outcomes.append(np.array(cells).reshape(n, *shape))
        probs.append(_multinomial(cells, [1 / (n * pixels)] * (n * pixels)))
    probs = np.array(probs)
    methods = ("Omega", "re", "VImage")
    res = _run(outcomes, w, methods, gain=G)
    for i in range(len(methods)):
        np.testing.assert_allclose(probs @ res["variance"][:, i, 0], 0, atol=1e-12)
    np.testing.assert_allclose(probs @ res["ring_nonuniformity"][:, 0], 0, atol=1e-12)
    sub = _run(outcomes, w, ("re",), gain=G, subtract_nonuniformity=True)
    np.testing.assert_allclose(probs @ sub["variance"][:, 0, 0], 0, atol=1e-12)
    # The design's re term G / <I(k)> leaves exactly -1 / M.
    raw = _run(outcomes, w, ("re",))["variance"][:, 0, 0]
    mean_ring = G * total / n
    np.testing.assert_allclose(probs @ (raw - G * pixels / mean_ring), -1 / total, rtol=1e-12)


def test_noise_model_k0_and_shot_weights_plug_in():
    # The counting model written as a noise model (k0 = G, shot weights G W^2) gives the
    # gain=G result to rounding.
    rng = np.random.default_rng(3)
    shape = (12, 12)
    w = I.build_weights(shape, (5.7, 6.2), npt=4, radial_range=(1.0, 5.5))
    frames = G * rng.poisson(30.0, size=(60,) + shape)
    st = M.frame_states(60)
    m_gain = acc(frames, w, st, pixels=True)
    m_model = acc(frames, w, st, pixels=True, shot_weights=G * w.squared, scale=1.0)
    a = V.estimate(m_gain, w, V.METHODS, gain=G, subtract_nonuniformity=True)
    b = V.estimate(m_model, w, V.METHODS, k0=G, subtract_nonuniformity=True)
    for key in ("variance", "standard_error", "ring_nonuniformity"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="gain .* or k0 .* not both"):
        V.estimate(m_model, w, V.METHODS, gain=G, k0=G)


def test_split_ring_r_residual_is_second_order():
    # Split weights: r's term k0 A / I - Q / I^2 is right to first order in 1/I only.
    # Measured (400k frames): residual +0.0023 +- 0.0003 at 14 electrons per ring (weighted),
    # 0.5 % of the term and about 0.45 / I_e^2; at 47 electrons +0.00003 +- 0.0001.
    wts = np.array([1, 0.8, 0.5, 0.3, 0.9, 0.2, 0.6, 0.4])
    w = _weights(wts, (1, 8))
    rng = np.random.default_rng(70)
    n, mu = 200_000, 3.0
    frames = G * rng.poisson(mu, size=(n, 1, 8)).astype(float)
    m = acc(frames, w, M.frame_states(n))
    res = V.estimate(m, w, ("r",), gain=G)
    raw = V.estimate(m, w, ("r",))["variance"][0, 0, 0]
    v, se = res["variance"][0, 0, 0], res["standard_error"][0, 0, 0]
    term = raw - v
    electrons = mu * wts.sum()
    assert 0 < v < 1 / electrons**2  # second order, positive
    assert v > 4 * se  # but measurably not zero: the test sees the residual
    assert v < 0.01 * term


# --- Independent numpy reference of estimate() (written for the mutation run,
# docs/dev/mutation.rst): every output of estimate() recomputed from the frames with plain
# numpy, the estimator formulas of the design (module docstring of femlib.variance), the
# block rule "i-th frame of a group -> block i mod B" and the delete-a-block jackknife.


def _ref_parts(frames, wm, method, k0, qw):
    """Uncorrected and corrected estimator of ``frames (N, P)``; ``qw``: shot weights in
    detector units (K, P), ``k0`` the kernel at zero lag (0: no correction)."""
    n = len(frames)
    area = wm.sum(1)
    s = frames @ wm.T  # (N, K) ring sums
    q = frames @ qw.T
    j = (frames**2) @ wm.T
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "Omega":
            raw = s.var(0) / s.mean(0) ** 2
            return raw, raw - (n - 1) / n * q.mean(0) / s.mean(0) ** 2
        if method == "r":
            # Per frame: A (J - k0 S) / (S^2 - Q) with two electrons' worth of signal,
            # else the first-order A J / S^2 - k0 A / S + Q / S^2.
            good = (s > 0) & (s**2 - q >= q)
            pair = area * (j - k0 * s) / (s**2 - q)
            first = area * j / s**2 - k0 * area / s + q / s**2
            return np.mean(j * area / s**2, 0) - 1, np.mean(np.where(good, pair, first), 0) - 1
        if method == "re":
            sm, qm, jm = s.mean(0), q.mean(0), j.mean(0)
            raw = jm * area / sm**2 - 1
            good = (sm > 0) & (sm**2 - qm / n >= qm / n)
            pair = area * (jm - k0 * sm) / (sm**2 - qm / n) - 1
            first = raw - (k0 * area / sm - qm / (n * sm**2))
            return raw, np.where(good, pair, first)
        m, var = frames.mean(0), frames.var(0)
        ok = m > 0
        den = wm @ ok
        raw = wm @ np.where(ok, var / m**2, 0) / den
        term = wm @ np.where(ok, (n - 1) / n * k0 / m, 0) / den
    return raw, raw - term


def _ref_nu(frames, wm, k0, qw):
    n = len(frames)
    m = frames.mean(0)
    s1, s2, qm = wm @ m, wm @ m**2, qw @ m
    area = wm.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = area * s2 / s1**2 - 1
        good = (s1 > 0) & (s1**2 - qm / n >= qm / n)
        pair = area * (s2 - k0 * s1 / n) / (s1**2 - qm / n) - 1
        return np.where(good, pair, raw - (k0 * area / s1 - qm / s1**2) / n)


def _ref_estimate(frames, wm, method, k0, qw, subtract):
    v = _ref_parts(frames, wm, method, k0, qw)[1]
    if subtract and method in ("r", "re"):
        v = v - _ref_nu(frames, wm, k0, qw)
    return v


def _ref_floor(frames, wm, method, k0, qw):
    """The shot noise's own standard error, first order: ``sqrt(2 / (N - 1)) / n_e`` with
    ``n_e`` the electrons of one value (ring sum, pixel, or pixel of the ring)."""
    n = len(frames)
    if not k0:
        return np.zeros(wm.shape[0])
    s, q = (frames @ wm.T).mean(0), (frames @ qw.T).mean(0)
    area = wm.sum(1)
    if method == "Omega":
        return np.sqrt(2 / (n - 1)) * q / s**2
    if method == "VImage":
        lam = frames.mean(0) / k0
        ok = lam > 0
        var = np.where(ok, 2 / (n - 1) / np.where(ok, lam, 1) ** 2, 0)
        return np.sqrt(wm**2 @ var) / (wm @ ok)
    p_eff = area**2 / (wm**2).sum(1)
    return np.sqrt(2 / (p_eff * (n - 1))) * k0 * area / s


def _ref_jackknife(values_b):
    """(B', K) leave-one-block-out values of the present blocks -> standard error."""
    b = len(values_b)
    return np.sqrt((b - 1) / b * ((values_b - values_b.mean(0)) ** 2).sum(0))


@pytest.mark.parametrize("kind", ["gain", "k0", "none"])
@pytest.mark.parametrize("subtract", [False, True])
@pytest.mark.parametrize("level", [1.0, 0.03])
def test_estimate_equals_an_independent_numpy_reference(kind, subtract, level):
    # Three groups (7 frames, 4 frames, 1 frame) over B = 3 blocks, one frame left out,
    # split weights over a 2 x 3 detector, one pixel without counts: every output of
    # estimate() (per group, jackknife, standard errors, combined, non-uniformity) against
    # plain numpy on the frames. level 0.03: a few electrons per ring, below two electrons'
    # worth of signal in the means too, so that the first-order branches of r, re and the
    # non-uniformity are taken (level 1 takes them in some frames of r only).
    rng = np.random.default_rng(11)
    shape, b = (2, 3), 3
    wm = np.array([[1.0, 0.5, 0.25, 0.8, 0.0, 0.6], [0.3, 0.45, 0.7, 0.2, 0.9, 0.1]])
    w = _weights(wm, shape)
    groups = np.array([0, 1, 0, 0, -1, 1, 0, 2, 0, 1, 0, 0, 1])
    frames = rng.uniform(1.0, 9.0, size=(groups.size,) + shape)
    frames[:, 0, 2] = 0.0  # a pixel with zero mean: VImage leaves it out
    frames[3, 1, 1] = 30.0  # a strong outlier: the blocks differ clearly
    frames *= level
    shot = 1.7 * wm**2 + 0.2 * wm  # a noise model's shot weights (detector units)
    kw, k0, qw = {
        "gain": ({"gain": G}, G, G * wm**2),
        "k0": ({"k0": 1.9}, 1.9, shot),
        "none": ({}, 0.0, 0 * wm),
    }[kind]
    st = M.frame_states(groups.size, groups, 3, n_blocks=b)
    m = acc(frames, w, st, 3, n_blocks=b, pixels=True,
            shot_weights=shot if kind == "k0" else None, scale=G if kind == "gain" else 1.0)
    with warnings.catch_warnings():
        # At a few electrons per ring the corrections dwarf the raw variance (warned).
        warnings.filterwarnings("ignore", "the shot-noise correction", RuntimeWarning)
        res = V.estimate(m, w, V.METHODS, subtract_nonuniformity=subtract, **kw)
    flat = frames.reshape(groups.size, -1)
    members = [flat[groups == g] for g in range(3)]
    np.testing.assert_array_equal(res["counts"], [7, 4, 1])
    np.testing.assert_array_equal(res["used_groups"], [True, True, False])
    assert res["methods"] == V.METHODS
    floors = np.zeros((2, len(V.METHODS), 2))
    for g in (0, 1):
        x = members[g]
        block = np.arange(len(x)) % b
        for i, method in enumerate(V.METHODS):
            full = _ref_estimate(x, wm, method, k0, qw, subtract)
            np.testing.assert_allclose(res["variance"][g, i], full, rtol=1e-10)
            loo = np.array([_ref_estimate(x[block != k], wm, method, k0, qw, subtract)
                            for k in range(b)])
            np.testing.assert_allclose(res["jackknife"][g, :, i], loo, rtol=1e-10)
            np.testing.assert_allclose(res["jackknife_standard_error"][g, i],
                                       _ref_jackknife(loo), rtol=1e-9)
            floor = _ref_floor(x, wm, method, k0, qw)
            np.testing.assert_allclose(res["shot_standard_error"][g, i], floor, rtol=1e-9)
            np.testing.assert_allclose(res["standard_error"][g, i],
                                       np.fmax(_ref_jackknife(loo), floor), rtol=1e-9)
            floors[g, i] = floor
        nu = _ref_nu(x, wm, k0, qw)
        np.testing.assert_allclose(res["ring_nonuniformity"][g], nu, rtol=1e-10)
        nu_loo = np.array([_ref_nu(x[block != k], wm, k0, qw) for k in range(b)])
        np.testing.assert_allclose(res["ring_nonuniformity_standard_error"][g],
                                   _ref_jackknife(nu_loo), rtol=1e-9)
    # The one-frame group: its jackknife is NaN where its block is empty, its V is not used.
    assert np.isnan(res["jackknife"][2, 1:]).all()
    # Combined: frame-weighted over the used groups; its jackknife weights each group by the
    # frames left after dropping the block.
    n_g = np.array([7.0, 4.0])
    n_gb = np.array([[3.0, 2.0, 2.0], [2.0, 1.0, 1.0]])
    for i in range(len(V.METHODS)):
        v = res["variance"][:2, i]
        np.testing.assert_allclose(res["combined"][i], n_g @ v / 11, rtol=1e-12)
        wj = n_g[:, None] - n_gb  # (G, B)
        cj = np.einsum("gb,gbk->bk", wj, res["jackknife"][:2, :, i]) / wj.sum(0)[:, None]
        np.testing.assert_allclose(res["combined_jackknife"][:, i], cj, rtol=1e-12)
        comb_floor = np.sqrt(((n_g[:, None] / 11) ** 2 * floors[:, i] ** 2).sum(0))
        np.testing.assert_allclose(res["combined_standard_error"][i],
                                   np.fmax(_ref_jackknife(cj), comb_floor), rtol=1e-9)
    nu = res["ring_nonuniformity"][:2]
    np.testing.assert_allclose(res["combined_ring_nonuniformity"], n_g @ nu / 11, rtol=1e-12)
    nu_j = np.array([[_ref_nu(x[np.arange(len(x)) % b != k], wm, k0, qw) for k in range(b)]
                     for x in members[:2]])
    cj = np.einsum("gb,gbk->bk", n_g[:, None] - n_gb, nu_j) / (n_g[:, None] - n_gb).sum(0)[:, None]
    np.testing.assert_allclose(res["combined_ring_nonuniformity_standard_error"],
                               _ref_jackknife(cj), rtol=1e-9)


# mutmut's trampolines add stack frames, so warning stack levels can only be checked in a
# plain run (docs/dev/mutation.rst).
_UNDER_MUTMUT = "MUTANT_UNDER_TEST" in os.environ


def _omega_frames():
    """12 frames on a 1 x 6 detector, three hard rings of two pixels, the last one dark."""
    rng = np.random.default_rng(5)
    frames = rng.uniform(5.0, 15.0, size=(12, 1, 6))
    frames[..., 4:] = 0.0
    w = _weights([[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]], (1, 6))
    return frames, w


def test_large_correction_warning_threshold_and_message():
    # The warning fires when sum_k |term| > 10 sum_k |raw| over the finite bins (the dark
    # ring is NaN and left out); term is linear in the gain, so the threshold gain is known.
    frames, w = _omega_frames()
    m = acc(frames, w, M.frame_states(12))
    wm = w.matrix.toarray()
    raw, corrected = _ref_parts(frames.reshape(12, -1), wm, "Omega", 1.0, wm**2)
    term1 = raw - corrected
    ok = np.isfinite(raw)
    g_crit = 10 * np.abs(raw[ok]).sum() / np.abs(term1[ok]).sum()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        V.estimate(m, w, ("Omega",), gain=0.99 * g_crit)
    with pytest.warns(RuntimeWarning) as rec:
        V.estimate(m, w, ("Omega",), gain=1.01 * g_crit)
    assert len(rec) == 1
    assert str(rec[0].message) == (
        "the shot-noise correction of method 'Omega' is 10.1 times its uncorrected variance "
        f"(summed over the radial bins): the gain ({1.01 * g_crit:g}) is probably wrong; "
        "it must be in detector units per electron (the counts one electron gives)"
    )
    if not _UNDER_MUTMUT:
        assert rec[0].filename == __file__  # points at the caller of estimate()
    with pytest.warns(RuntimeWarning, match=r"the noise model \(k0 = 1e\+06\) is probably"):
        V.estimate(m, w, ("re",), k0=1e6)  # re's term carries k0 A / <S>


def test_large_correction_warning_when_the_raw_variance_is_zero():
    frames = np.full((6, 1, 6), 3.0)
    w = _omega_frames()[1]
    m = acc(frames, w, M.frame_states(6))
    with pytest.warns(RuntimeWarning) as rec:
        V.estimate(m, w, ("Omega",), gain=G)
    assert [str(r.message).split(" (summed")[0] for r in rec] == [
        "the shot-noise correction of method 'Omega' is non-zero while its uncorrected "
        "variance is 0"
    ]


def test_warn_undefined_messages_exactly():
    # A hand-made result: group 1 is unused (its NaNs are not looked at); NaN bins of the
    # used groups are united; the SE message counts only bins whose value is defined.
    nan = np.nan
    v = np.ones((3, 4, 7))
    se = np.full((3, 4, 7), 0.1)
    v[0, 0, :3] = nan
    v[2, 0, 3:6] = nan  # Omega: 6 bins in all -> five radii and "..."
    v[1] = nan  # unused group
    se[1] = nan
    v[0, 1, 6] = nan  # r: one bin
    se[0, 1, [1, 2, 6]] = nan  # r: SE undefined in bins 1, 2 (bin 6 is already NaN)
    v[2, 2, :5] = nan  # re: exactly five bins, no "..."
    res = {"used_groups": np.array([True, False, True]), "variance": v,
           "standard_error": se, "methods": V.METHODS}
    radii = np.arange(7) + 0.5

    def caller():
        V.warn_undefined(res, radii)

    with pytest.warns(RuntimeWarning) as rec:
        caller()  # stacklevel 3: the warning points here
    line = caller.__code__.co_firstlineno + 4
    assert [str(r.message) for r in rec] == [
        "V(k) is undefined (NaN) in 6 radial bin(s) (radius 0.5, 1.5, 2.5, 3.5, 4.5...) for "
        "method 'Omega': the ring has no intensity (its mean over the frames is 0)",
        "V(k) is undefined (NaN) in 1 radial bin(s) (radius 6.5) for method 'r': a frame's "
        "ring mean is <= 0",
        "the standard error of V(k) is undefined (NaN) in 2 radial bin(s) (radius 1.5, 2.5) "
        "for method 'r': leaving out one jackknife block leaves the ring without intensity "
        "(too few counts)",
        "V(k) is undefined (NaN) in 5 radial bin(s) (radius 0.5, 1.5, 2.5, 3.5, 4.5) for "
        "method 're': the ring has no intensity (its mean over the frames is 0)",
    ]
    assert {r.category for r in rec} == {RuntimeWarning}
    if not _UNDER_MUTMUT:
        assert {(r.filename, r.lineno) for r in rec} == {(__file__, line)}


def test_warn_untrusted_standard_error_message_exactly():
    # Hand-made: the untrusted bins of the used groups are united; a bin whose value or
    # standard error is NaN is not called untrusted; the unused group is not looked at;
    # the pairs and electrons quoted are those of the untrusted bins only.
    v = np.ones((3, 4, 7))
    se = np.full((3, 4, 7), 0.1)
    trusted = np.ones((3, 4, 7), bool)
    pairs = np.full((3, 4, 7), 50.0)
    electrons = np.full((3, 4, 7), 9.0)
    trusted[0, 0, [1, 2]] = trusted[2, 0, 4] = False  # Omega: bins 1, 2, 4
    pairs[0, 0, [1, 2]], pairs[2, 0, 4] = (3.0, 4.0), 0.5
    electrons[0, 0, [1, 2]], electrons[2, 0, 4] = (2.0, 2.5), 0.25
    trusted[1] = False  # unused group
    pairs[1] = 1e-3
    trusted[0, 3, 5] = False  # VImage: bin 5, but its value is NaN
    v[0, 3, 5] = np.nan
    trusted[2, 3, 6] = False  # VImage: bin 6, but its SE is NaN
    se[2, 3, 6] = np.nan
    res = {"used_groups": np.array([True, False, True]), "variance": v,
           "standard_error": se, "methods": V.METHODS, "standard_error_trusted": trusted,
           "shot_pairs": pairs, "shot_electrons": electrons}
    with pytest.warns(RuntimeWarning) as rec:
        V.warn_undefined(res, np.arange(7) + 0.5)
    assert [str(r.message) for r in rec] == [
        "the standard error of V(k) is not trustworthy in 3 radial bin(s) (radius 1.5, "
        "2.5, 4.5) for method 'Omega': V rests on 0.5-4 expected coincident electron pairs "
        "(0.25-2.5 electrons per bin per frame), fewer than 10; use more patterns, wider "
        "bins or Omega",
        "V(k) is undefined (NaN) in 1 radial bin(s) (radius 5.5) for method 'VImage': "
        + V._UNDEFINED_CAUSE["VImage"],
        "the standard error of V(k) is undefined (NaN) in 1 radial bin(s) (radius 6.5) "
        "for method 'VImage': leaving out one jackknife block leaves the ring without "
        "intensity (too few counts)",
    ]
    assert {r.category for r in rec} == {RuntimeWarning}


def test_estimate_refuses_moments_that_lack_what_a_method_needs():
    import dataclasses

    frames, w = _omega_frames()
    st = M.frame_states(12)
    plain = acc(frames, w, st, squares=False)
    with pytest.raises(ValueError, match="^VImage needs per-pixel moments"):
        V.estimate(plain, w, ("Omega", "VImage"))
    for method in ("r", "re"):
        with pytest.raises(ValueError, match="^r and re need the ring sums of D"):
            V.estimate(plain, w, (method,))
    no_pixels = dataclasses.replace(acc(frames, w, st), pix_mean=None)
    with pytest.raises(ValueError, match="^subtract_nonuniformity needs the per-pixel"):
        V.estimate(no_pixels, w, ("re",), subtract_nonuniformity=True)
    # Without per-pixel means the non-uniformity is absent, not made up.
    res = V.estimate(plain, w, ("Omega",), subtract_nonuniformity=True)
    for key in ("ring_nonuniformity", "ring_nonuniformity_standard_error",
                "combined_ring_nonuniformity", "combined_ring_nonuniformity_standard_error"):
        assert res[key] is None
    # The Omega estimate itself is unchanged by the flag and equals the reference.
    raw, _ = _ref_parts(frames.reshape(12, -1), w.matrix.toarray(), "Omega", 0.0,
                        0 * w.matrix.toarray())
    np.testing.assert_allclose(res["variance"][0, 0], raw, rtol=1e-10)
    one = acc(frames[:1], w, M.frame_states(1))
    with pytest.raises(ValueError, match="no group holds two or more frames"):
        V.estimate(one, w)


@pytest.mark.parametrize("method, expected", [
    ("all", V.METHODS), ("re", ("re",)), (["VImage", "r"], ("VImage", "r")),
    (("Omega",), ("Omega",)), (iter(["r", "re"]), ("r", "re")),
])
def test_check_method_accepts(method, expected):
    assert V.check_method(method) == expected


@pytest.mark.parametrize("method", [[], (), None, "ALL", ["all"]])
def test_check_method_refuses_with_the_accepted_names(method):
    msg = (r"^method must be one of Omega, r, re, VImage or 'all' \(or a list of them\), "
           f"got {re.escape(repr(method))}$")
    with pytest.raises(ValueError, match=msg):
        V.check_method(method)


def test_check_gain_names_the_argument_and_reads_0d_arrays():
    assert V.check_gain(np.array(2.5)) == 2.5
    assert V.check_gain(None) is None
    assert V.check_gain(1e-300) == 1e-300
    with pytest.raises(TypeError, match=r"^k0 must be a positive number or None, got array"):
        V.check_gain(np.array([2.5]), "k0")
    with pytest.raises(ValueError, match=r"^k0 must be a positive finite number \(detector "
                       r"units per electron\) or None, got 0$"):
        V.check_gain(0, "k0")


def test_a_dark_ring_is_nan_without_numpy_warnings():
    # 0 / 0 and x / 0 inside the estimators are expected (a ring with no counts): they give
    # NaN quietly, and the user hears about it once, from warn_undefined, by method.
    import warnings

    frames, w = _omega_frames()
    m = acc(frames, w, M.frame_states(12), pixels=True)
    m_k0 = acc(frames, w, M.frame_states(12), pixels=True, shot_weights=G * w.squared, scale=1)
    for kw in ({"gain": G}, {"k0": G}, {}):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            res = V.estimate(m_k0 if "k0" in kw else m, w, V.METHODS,
                             subtract_nonuniformity=True, **kw)
        assert np.isnan(res["variance"][0, :, 2]).all()
        assert np.isfinite(res["variance"][0, :, :2]).all()
        assert np.isnan(res["ring_nonuniformity"][0, 2])


def test_jackknife_counts_only_the_blocks_a_group_has_frames_in():
    # Group 0: 5 frames over B = 3 blocks; group 1: 2 frames (block 2 empty); group 2: no
    # frame at all (0 / 0 inside, quietly). Group 1's error comes from its 2 present
    # blocks: sqrt((2 - 1) / 2 * sum (v_b - mean v_b)^2) over the two one-frame estimates.
    import warnings

    frames, w = _omega_frames()
    groups = np.array([0, 1, 0, 0, 1, 0, 0])
    x = frames[: groups.size]
    st = M.frame_states(groups.size, groups, 3, n_blocks=3)
    m = acc(x, w, st, 3, n_blocks=3, pixels=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = V.estimate(m, w, ("Omega", "VImage"), gain=G)
    wm = w.matrix.toarray()
    flat = x.reshape(groups.size, -1)
    for g, blocks in ((0, 3), (1, 2)):
        xg = flat[groups == g]
        for i, method in enumerate(("Omega", "VImage")):
            loo = np.array([_ref_estimate(xg[np.arange(len(xg)) % 3 != k], wm, method, G,
                                          G * wm**2, False) for k in range(blocks)])
            np.testing.assert_allclose(res["jackknife_standard_error"][g, i, :2],
                                       _ref_jackknife(loo)[:2], rtol=1e-9)
    assert np.isnan(res["jackknife"][1, 2]).all()  # the empty block is marked, not used
    assert np.isnan(res["variance"][2]).all() and not res["used_groups"][2]


def test_estimate_counts_frames_as_integers():
    """``counts`` are frame numbers (integers), per group, as get_variance stores them."""
    w = I.build_weights((12, 12), (5.5, 5.5), npt=2, radial_range=(1.0, 5.0))
    frames = np.random.default_rng(5).poisson(20.0, (9, 12, 12)).astype(float)
    groups = np.array([0, 0, 0, 1, 1, 1, 1, -1, 0])
    m = acc(frames, w, M.frame_states(9, groups, 2), n_groups=2)
    res = V.estimate(m, w, ("Omega",), gain=1.0)
    assert res["counts"].dtype.kind == "i"
    np.testing.assert_array_equal(res["counts"], [4, 4])
