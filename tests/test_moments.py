"""The FEM pass (femlib.moments): moments against a plain numpy reference, eager = lazy,
only the asked quantities, shot weights, and get_variance's gain/noise wiring."""

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp

from femlib import integration as I
from femlib import moments as M
from femlib import variance as V
from femlib.noise import DetectorNoise
from femlib.signals import FEMDiffraction2D

SHAPE = (24, 26)
CENTER = (12.3, 11.6)
NAV = (7, 9)
G = 3.0


def make_frames(seed=0, nav=NAV, dtype=np.float32):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    r = np.hypot(xx - CENTER[0], yy - CENTER[1])
    base = 30.0 * (1 + 0.6 * np.exp(-(((r - 7) / 2.5) ** 2)))
    c = rng.uniform(-1, 1, size=nav + (1, 1))
    lam = base * (1 + 0.3 * c * np.exp(-(((r - 7) / 2) ** 2)))
    return (G * rng.poisson(lam)).astype(dtype)


def weights(npt=6):
    return I.build_weights(SHAPE, CENTER, npt=npt, radial_range=(2.0, 11.0))


def smooth_shot(w):
    return _smooth(w.matrix)


def _smooth(matrix):
    """Shot weights of a non-trivial (correlated) noise model: W * (K * W), K a 3-tap
    kernel along x, summing to G."""
    k = {-1: 0.25 * G, 0: 0.5 * G, 1: 0.25 * G}
    dense = matrix.toarray().reshape(-1, *SHAPE)
    conv = sum(v * np.roll(dense, s, axis=2) for s, v in k.items())
    return sp.csr_array(np.where(dense > 0, dense * conv, 0.0).reshape(dense.shape[0], -1))


def reference(frames, w, labels, n_groups, shot, n_blocks=M.N_BLOCKS, scale=1.0):
    """Moments by brute force in float64 (two-pass centred sums), state by state;
    ``scale``: the factor turning ``Q`` into detector units in ``P``, ``H``."""
    f = frames.reshape(-1, SHAPE[0] * SHAPE[1]).astype(np.float64)
    wm = w.matrix.toarray()
    sm = shot.toarray()
    ring = f @ wm.T
    q = f @ sm.T
    j = (f * f) @ wm.T
    a = w.area
    # r's per-frame products: A J / (I^2 - cQ) and A I / (I^2 - cQ) with I^2 >= 2 c Q,
    # else J A / I^2 + c Q / I^2 and A / I.
    cq = scale * q
    good = (ring > 0) & (ring**2 - cq >= cq)
    p_col = np.where(good, a * j / (ring**2 - cq), j * a / ring**2 + cq / ring**2)
    h_col = np.where(good, a * ring / (ring**2 - cq), a / ring)
    cols = np.stack([ring, q, j, j * a / ring**2, a / ring, q / ring**2, p_col, h_col], axis=1)
    states = M.frame_states(f.shape[0], np.ravel(labels), n_groups, n_blocks)
    tp = w.touched
    ns = n_groups * n_blocks
    count = np.zeros(ns)
    mean = np.zeros((ns, len(M.COLUMNS), w.area.size))
    m2 = np.zeros((ns, w.area.size))
    pm = np.zeros((ns, tp.size))
    pq = np.zeros((ns, tp.size))
    for s in range(ns):
        sel = states == s
        count[s] = sel.sum()
        if count[s]:
            mean[s] = cols[sel].mean(0)
            m2[s] = ((ring[sel] - ring[sel].mean(0)) ** 2).sum(0)
            pm[s] = f[sel][:, tp].mean(0)
            pq[s] = ((f[sel][:, tp] - pm[s]) ** 2).sum(0)
    return M.Moments(count, mean, m2, pm, pq, n_groups, n_blocks, 0, True, True, True,
                     shot_scale=scale)


def assert_moments_close(got, ref, rtol=1e-10):
    np.testing.assert_array_equal(got.count, ref.count)
    np.testing.assert_allclose(got.mean, ref.mean, rtol=rtol, atol=0)
    np.testing.assert_allclose(got.m2, ref.m2, rtol=rtol, atol=1e-9 * ref.m2.max())
    if ref.pix_mean is not None:
        np.testing.assert_allclose(got.pix_mean, ref.pix_mean, rtol=rtol)
    if ref.pix_m2 is not None:
        np.testing.assert_allclose(got.pix_m2, ref.pix_m2, rtol=1e-9)


def labels_two_groups():
    lab = np.zeros(NAV, np.int64)
    lab[:, 5:] = 1
    lab[0, 0] = -1
    lab[3, 4] = -1
    return lab


@pytest.mark.parametrize("lazy", [False, True])
def test_pass_equals_numpy_reference(lazy, keep_small_chunks):
    frames = make_frames()
    w = weights()
    shot = smooth_shot(w)
    lab = labels_two_groups()
    data = da.from_array(frames, chunks=(2, 4, 12, 13)) if lazy else frames
    got = M.accumulate_moments(data, w, lab, shot_weights=shot, methods=M._METHODS,
                               block_bytes=5 * frames[0, 0].nbytes)
    ref = reference(frames, w, lab, 2, shot)
    assert got.n_groups == 2 and got.shot and got.ratio and got.squares
    assert_moments_close(got, ref)
    # Without r, Q's per-state mean comes from the per-state pixel sums: the same numbers.
    for methods in (["Omega"], ["Omega", "re"], ["VImage"]):
        part = M.accumulate_moments(data, w, lab, shot_weights=shot, methods=methods,
                                    block_bytes=5 * frames[0, 0].nbytes)
        assert part.shot and not part.ratio
        np.testing.assert_allclose(part.mean[:, :3], np.where(
            part.mean[:, :3] == 0, 0.0, ref.mean[:, :3]), rtol=1e-10, atol=0)
        np.testing.assert_allclose(part.mean[:, 1], ref.mean[:, 1], rtol=1e-10)
        assert (part.pix_mean is None) == (methods == ["Omega"])


def test_only_the_asked_quantities_are_accumulated():
    frames = make_frames(1)
    w = weights()
    om = M.accumulate_moments(frames, w)  # Omega, no correction
    assert om.pix_mean is None and om.pix_m2 is None
    assert not (om.squares or om.shot or om.ratio)
    assert np.all(om.mean[:, 1:] == 0)  # only I
    shot = M.accumulate_moments(frames, w, shot_weights=G * w.squared)
    assert shot.shot and np.all(shot.mean[:, 2:] == 0) and np.all(shot.mean[:, 1] > 0)
    r = M.accumulate_moments(frames, w, methods=["r"], shot_weights=G * w.squared)
    assert r.pix_mean is not None and r.pix_m2 is None and r.ratio
    re = M.accumulate_moments(frames, w, methods=["re"], shot_weights=G * w.squared)
    assert re.pix_m2 is None and not re.ratio and np.all(re.mean[:, 5:] == 0)
    vi = M.accumulate_moments(frames, w, methods=["VImage"])
    assert vi.pix_m2 is not None and not vi.squares
    # Omega's I and m2 do not depend on what else was accumulated.
    np.testing.assert_allclose(r.mean[:, 0], om.mean[:, 0], rtol=1e-13)
    np.testing.assert_allclose(vi.m2, om.m2, rtol=1e-12)


def test_eager_frames_are_wrapped_without_copy():
    frames = make_frames(2)
    blocks, chunks, lazy = M._blocks(frames, block_bytes=10 * frames[0, 0].nbytes)
    assert not lazy and chunks == ((10,) * 6 + (3,),)
    assert all(np.shares_memory(b, frames) for b in blocks)


def test_counting_model_is_g_times_w_squared_and_k0_is_g():
    w = weights()
    model = DetectorNoise.counting(G)
    sw = model.shot_weights(w)
    assert model.k0 == G and model.gain == G
    np.testing.assert_allclose(sw.toarray(), G * w.matrix.toarray() ** 2, rtol=1e-15)
    assert sw is not w.matrix and not np.shares_memory(sw.data, w.matrix.data)


def test_shot_weights_of_the_wrong_shape_or_sparsity_are_refused():
    frames = make_frames(3)
    w = weights()
    with pytest.raises(ValueError, match="shot_weights has shape"):
        M.accumulate_moments(frames, w, shot_weights=sp.csr_array((3, 4)))
    extra = w.matrix.toarray()
    extra[0, np.flatnonzero(extra[0] == 0)[0]] = 1.0
    with pytest.raises(ValueError, match="sparsity"):
        M.accumulate_moments(frames, w, shot_weights=sp.csr_array(extra))
    with pytest.raises(TypeError, match="shot_weights"):
        M.accumulate_moments(frames, w, shot_weights=np.ones(3))


def test_bad_labels_and_methods():
    frames = make_frames(4)
    w = weights()
    with pytest.raises(ValueError, match="one entry per frame"):
        M.accumulate_moments(frames, w, labels=np.zeros(5, int))
    with pytest.raises(TypeError, match="integers"):
        M.accumulate_moments(frames, w, labels=np.zeros(NAV))
    with pytest.raises(ValueError, match="n_groups"):
        M.accumulate_moments(frames, w, labels=np.full(NAV, 3), n_groups=2)
    with pytest.raises(ValueError, match="methods"):
        M.accumulate_moments(frames, w, methods=["omega"])


def test_nonfinite_frames_are_left_out_and_counted():
    frames = make_frames(5)
    w = weights()
    bad = frames.copy()
    ring_pixel = np.unravel_index(w.touched[3], SHAPE)
    bad[1, 2][ring_pixel] = np.nan
    bad[4, 0][ring_pixel] = np.inf
    keep = np.ones(NAV, bool)
    keep[1, 2] = keep[4, 0] = False
    lab = np.where(keep, 0, -1)
    got = M.accumulate_moments(bad, w, lab, shot_weights=G * w.squared, methods=["VImage", "r"])
    ref = M.accumulate_moments(frames, w, lab, shot_weights=G * w.squared,
                               methods=["VImage", "r"])
    got_all = M.accumulate_moments(bad, w, shot_weights=G * w.squared, methods=["VImage", "r"])
    assert got_all.n_nonfinite == 2 and got_all.n_frames == ref.n_frames
    # Left out exactly as if labelled -1 (the jackknife blocks then differ: compare sums).
    for a, b in ((got_all.count @ got_all.mean[:, 0], ref.count @ ref.mean[:, 0]),
                 (got_all.count @ got_all.pix_mean, ref.count @ ref.pix_mean)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert got.n_nonfinite == 0  # already labelled out


def test_merge_of_halves_equals_whole_with_and_without_pixel_squares():
    frames = make_frames(6).reshape(-1, *SHAPE)
    w = weights()
    st = M.frame_states(len(frames))
    for kw in ({"pixels": True}, {"pixel_means": True}):
        whole = M.accumulate(frames, w, st, shot_weights=w.squared, ratio=True, **kw)
        a = M.accumulate(frames[:20], w, st[:20], shot_weights=w.squared, ratio=True, **kw)
        b = M.accumulate(frames[20:], w, st[20:], shot_weights=w.squared, ratio=True, **kw)
        m = M.merge(b, a)
        assert_moments_close(m, whole, rtol=1e-11)
        assert (m.pix_m2 is None) == ("pixel_means" in kw)


# ----------------------------------------------------------------------------- the signal
def make_signal(seed=7):
    s = FEMDiffraction2D(make_frames(seed))
    s.calibration.center = CENTER
    return s


class _Kernel3:
    """A noise model with a 3-tap kernel along x (the interface get_variance accepts)."""

    gain = G
    k0 = 0.5 * G

    def shot_weights(self, weights):
        return _smooth(weights.matrix)


@pytest.mark.parametrize("lazy", [False, True])
def test_get_variance_is_the_estimators_on_the_reference_moments(lazy, keep_small_chunks):
    s = make_signal()
    lab = labels_two_groups()
    thickness = np.where(lab == 1, 40.0, 20.0)
    nav_mask = lab < 0
    kw = dict(npt=6, radial_range=(2.0, 11.0), method="all", thickness=thickness,
              bins=[10.0, 30.0, 50.0], navigation_mask=nav_mask, show_progressbar=False)
    t = s.as_lazy() if lazy else s
    if lazy:
        t.data = t.data.rechunk((2, 3) + SHAPE)
    w = weights()
    for model, call in ((None, {"gain": G}), (_Kernel3(), {"noise": _Kernel3()}), (None, {})):
        v = t.get_variance(**kw, **call)
        if lazy:  # a lazy V(k): the pass runs here
            v.compute()
        # gain=G: the pass sums W^2 D and the estimators multiply by G; a noise model's
        # shot weights are in detector units and its k0 enters the estimators.
        shot = w.squared if model is None else model.shot_weights(w)
        ref = reference(s.data, w, lab, 2, shot, scale=G if model is None and call else 1.0)
        if model is not None:
            res = V.estimate(ref, w, V.METHODS, k0=model.k0)
        elif call:
            res = V.estimate(ref, w, V.METHODS, gain=G)
        else:
            res = V.estimate(_no_shot(ref), w, V.METHODS)
        np.testing.assert_allclose(v.data, res["variance"], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(v.metadata.FEM.standard_error, res["standard_error"],
                                   rtol=1e-9, atol=1e-13)
        assert v.metadata.FEM.gain == (G if call else None)


def _no_shot(m):
    mean = m.mean.copy()
    mean[:, [1, 5]] = 0.0
    return M.Moments(m.count, mean, m.m2, m.pix_mean, m.pix_m2, m.n_groups, m.n_blocks)


def test_gain_equals_the_counting_noise_model_and_both_is_an_error():
    s = make_signal(8)
    kw = dict(npt=6, radial_range=(2.0, 11.0), method="all", show_progressbar=False)
    a = s.get_variance(gain=G, **kw)
    b = s.get_variance(noise=DetectorNoise.counting(G), **kw)
    np.testing.assert_allclose(a.data, b.data, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        a.metadata.FEM.standard_error, b.metadata.FEM.standard_error, rtol=1e-12, atol=1e-15
    )
    with pytest.raises(ValueError, match="not both"):
        s.get_variance(gain=G, noise=DetectorNoise.counting(G), **kw)
    with pytest.raises(TypeError, match="k0, shot_weights"):
        s.get_variance(noise=object(), **kw)
    with pytest.raises(ValueError, match="gain"):
        s.get_variance(gain=-1.0, **kw)


def test_moments_count_nonfinite_frames_and_leave_the_input_alone():
    # Uniform frames; a NaN and an inf in a weighted pixel.
    w = I.build_weights((16, 16), (7.5, 7.5), npt=4, radial_range=(1.0, 7.0))
    frames = np.ones((6, 16, 16)) * np.array([1.0, 3.0, 1.0, 3.0, 5.0, 7.0])[:, None, None]
    frames[4][7, 12] = np.nan
    frames[5][7, 12] = np.inf
    before = frames.copy()
    m = M.accumulate(frames, w, M.frame_states(6))
    np.testing.assert_array_equal(frames, before)
    assert m.n_nonfinite == 2 and m.n_frames == 4
    merged = M.merge(m, M.accumulate(frames[4:], w, M.frame_states(2)))
    assert merged.n_nonfinite == 4 and merged.n_frames == 4
    # c = (1, 3, 1, 3): <I> = 2 A, centred sum of squares 4 A^2.
    total = merged.count @ merged.mean[:, 0] / merged.n_frames
    np.testing.assert_allclose(total, 2 * w.area, rtol=1e-12)


def test_counting_shortcut_and_general_shot_weights_agree():
    """W**2 itself takes a shortcut; an equal matrix goes through the general alignment."""
    w = I.build_weights((16, 16), (7.3, 7.9), npt=5, radial_range=(1, 7))
    frames = np.random.default_rng(4).poisson(6.0, (30, 16, 16)).astype(np.float32)
    a = M.accumulate_moments(frames, w, shot_weights=w.squared, methods=("r",))
    b = M.accumulate_moments(frames, w, shot_weights=w.squared.copy(), methods=("r",))
    np.testing.assert_array_equal(a.mean, b.mean)
    ref_q = (frames.reshape(30, -1).astype(float) @ w.squared.T).mean(0)
    np.testing.assert_allclose(a.mean[:, 1].T @ a.count / a.count.sum(), ref_q, rtol=1e-12)
