"""Exact finite-N expectations of the corrected FEM estimators on Poisson data.

For Poisson counts, conditioning on a sum makes the counts multinomial; a tiny detector
then allows every outcome to be enumerated with its exact probability. Each outcome is run
through femlib as its own group (one pass, one ``estimate``), and the probability-weighted
mean of the corrected estimator must be 0 to rounding. The closed forms the old terms
leave (e.g. ``-<1/T>`` of the old VImage term) are checked the same way.
"""

import itertools
from math import factorial

import numpy as np
import pytest

from femlib import integration as I
from femlib import variance as V

G = 2.5  # detector units per electron


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
    st = V.frame_states(frames.shape[0], groups, n_groups, n_blocks=n)
    m = V.accumulate(frames, w, st, n_groups, n_blocks=n, pixels="VImage" in methods)
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
    st = V.frame_states(60)
    m_gain = V.accumulate(frames, w, st, pixels=True)
    m_model = V.accumulate(frames, w, st, pixels=True, shot_weights=G * w.squared)
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
    m = V.accumulate(frames, w, V.frame_states(n))
    res = V.estimate(m, w, ("r",), gain=G)
    raw = V.estimate(m, w, ("r",))["variance"][0, 0, 0]
    v, se = res["variance"][0, 0, 0], res["standard_error"][0, 0, 0]
    term = raw - v
    electrons = mu * wts.sum()
    assert 0 < v < 1 / electrons**2  # second order, positive
    assert v > 4 * se  # but measurably not zero: the test sees the residual
    assert v < 0.01 * term
