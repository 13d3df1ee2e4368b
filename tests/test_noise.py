"""Tests of femlib.noise: detector noise kernels and shot weights (issue 17)."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.signal import correlate

import femlib
from femlib.data._synthetic import _apply_psf, _psf_profile
from femlib.integration import build_weights
from femlib.noise import DEFAULT_SIZE, DetectorNoise

G = 4.2
SIGMAS = (0.0, 0.5, 1.0)


def psf(sigma):
    """The 2D PSF of the synthetic detector (outer product of its 1D profile)."""
    p = _psf_profile(sigma)
    return np.outer(p, p)


def analytic(sigma, size=DEFAULT_SIZE):
    """``K = G sum_x h(x) h(x + Δ)`` on a ``size`` window (independent of from_psf)."""
    h = psf(sigma)
    k = np.zeros((size, size))
    c = size // 2
    for dy in range(-c, c + 1):
        for dx in range(-c, c + 1):
            shifted = np.zeros_like(h)
            ys = slice(max(0, -dy), h.shape[0] - max(0, dy))
            xs = slice(max(0, -dx), h.shape[1] - max(0, dx))
            yd = slice(max(0, dy), h.shape[0] - max(0, -dy))
            xd = slice(max(0, dx), h.shape[1] - max(0, -dx))
            shifted[ys, xs] = h[yd, xd]  # h(x + Δ) at x
            k[c + dy, c + dx] = G * np.sum(h * shifted)
    return k


# ------------------------------------------------------------------ the model and constructors
def test_counting_is_gain_delta():
    noise = DetectorNoise.counting(G)
    assert noise.gain == G and noise.k0 == G
    np.testing.assert_array_equal(noise.kernel, [[G]])
    assert noise.info["method"] == "counting"


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_from_psf_matches_the_analytic_kernel(sigma):
    noise = DetectorNoise.from_psf(psf(sigma), G)
    c = noise.size[0] // 2
    h = DEFAULT_SIZE // 2
    np.testing.assert_allclose(
        noise.kernel[c - h : c + h + 1, c - h : c + h + 1], analytic(sigma), atol=1e-14
    )
    assert noise.gain == pytest.approx(G, rel=1e-12)
    # The kernel is narrower than the gain: K(0) < G as soon as charge spreads.
    assert noise.k0 < (0.3 if sigma == 1.0 else 1.2) * G


def test_default_window_holds_the_kernel_tails():
    # The documented choice: an 11x11 window keeps all but 3e-4 of sum K at sigma = 1 px.
    full = DetectorNoise.from_psf(psf(1.0), G).kernel
    c = full.shape[0] // 2
    h = DEFAULT_SIZE // 2
    inside = full[c - h : c + h + 1, c - h : c + h + 1].sum()
    assert 1 - inside / G < 3e-4
    assert 1 - full[c - 4 : c + 5, c - 4 : c + 5].sum() / G > 3e-3  # 9x9 would not


# ------------------------------------------------------------------------------ shot weights
def brute_shot_weights(kernel, w_dense, shape):
    """Row by row: ``w * (K ⋆ w)``, pixels outside the detector zero (scipy.signal)."""
    out = []
    for row in w_dense:
        img = row.reshape(shape)
        out.append((img * correlate(img, kernel, mode="same", method="direct")).ravel())
    return np.array(out)


def test_shot_weights_counting_is_gain_times_w_squared_exactly():
    w = build_weights((64, 80), (40.3, 30.6), npt=30, npt_azim=4, radial_range=(3, 28))
    s = DetectorNoise.counting(G).shot_weights(w)
    assert isinstance(s, sp.csr_matrix)
    ref = sp.csr_matrix(w.matrix)
    np.testing.assert_array_equal(s.indptr, ref.indptr)
    np.testing.assert_array_equal(s.indices, ref.indices)
    np.testing.assert_array_equal(s.data, G * ref.data**2)
    np.testing.assert_allclose(s.toarray(), G * w.squared.toarray(), rtol=1e-15, atol=0)


def test_shot_weights_match_a_dense_reference_with_detector_edges():
    rng = np.random.default_rng(0)
    kernel = rng.uniform(0, 1, (5, 7))  # asymmetric on purpose: checks the lag direction
    shape = (20, 26)
    # Rings that run off the detector: pixels outside contribute nothing.
    w = build_weights(shape, (3.2, 15.7), npt=6, npt_azim=3, radial_range=(1, 18))
    noise = DetectorNoise(kernel)
    got = noise.shot_weights(w.matrix, detector_shape=shape)
    ref = brute_shot_weights(kernel, w.matrix.toarray(), shape)
    np.testing.assert_allclose(got.toarray(), ref, rtol=1e-12, atol=1e-14)
    assert got.nnz == w.matrix.nnz
    # The weights object carries its detector shape.
    np.testing.assert_array_equal(noise.shot_weights(w).toarray(), got.toarray())


def test_shot_weights_of_a_square_detector_need_no_shape():
    w = build_weights((24, 24), (11.5, 11.5), npt=5, radial_range=(2, 10))
    noise = DetectorNoise.from_psf(psf(0.5), G)
    ref = brute_shot_weights(noise.kernel, w.matrix.toarray(), (24, 24))
    np.testing.assert_allclose(noise.shot_weights(w.matrix).toarray(), ref, atol=1e-13)


def test_shot_weights_give_the_variance_of_ring_sums():
    """Monte Carlo: Var(sum_p w_p D_p) over PSF-blurred Poisson frames equals
    sum_pq w_p w_q <D_p> K(p - q) = sum_p s_p <D_p> within its sampling error."""
    shape, n = (40, 40), 3000
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:40, 0:40]
    lam = 30.0 * (1 + 0.5 * np.cos(x / 7.0) * np.sin(y / 9.0))  # smooth, non-uniform
    h = _psf_profile(1.0)
    frames = G * _apply_psf(rng.poisson(lam, size=(n,) + shape), h)
    mean_d = G * _apply_psf(lam, h)  # the exact expectation
    w = build_weights(shape, (19.6, 20.3), npt=16, radial_range=(3, 15))  # 0.75 px bins
    sums = frames.reshape(n, -1) @ w.matrix.T.toarray()
    var = sums.var(axis=0, ddof=1)
    model = DetectorNoise.from_psf(psf(1.0), G)
    predicted = model.shot_weights(w) @ mean_d.ravel()
    counting = DetectorNoise.counting(G).shot_weights(w) @ mean_d.ravel()
    ratio = var / predicted
    se = np.sqrt(2 / (n - 1))  # relative sampling error of a variance
    assert np.all(np.abs(ratio - 1) < 4 * se)
    assert abs(ratio.mean() - 1) < 3 * se / np.sqrt(ratio.size)
    # The counting model is far off (it ignores the correlations): the test can tell.
    assert np.all(counting / predicted > 1.3)


# ------------------------------------------------------------------------------- flat field
@pytest.mark.parametrize("sigma", SIGMAS)
def test_flat_field_gain_within_2_percent(sigma):
    flat = femlib.data.synthetic_flat_field(200, (128, 128), dose=100.0, gain=G,
                                            psf_sigma=sigma, seed=11)
    noise = DetectorNoise.from_flat_field(flat)
    assert noise.gain == pytest.approx(G, rel=0.02)
    assert noise.info["n_frames"] == 200
    assert noise.info["mean"] == pytest.approx(100 * G, rel=1e-3)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_flat_field_kernel_matches_the_analytic_kernel(sigma):
    n, shape = 200, (128, 128)
    flat = femlib.data.synthetic_flat_field(n, shape, dose=100.0, gain=G, psf_sigma=sigma,
                                            seed=12)
    noise = DetectorNoise.from_flat_field(flat)
    truth = analytic(sigma)
    # Sampling error of one lag (Gaussian field): sqrt(2 sum_δ K(δ)^2 / (frames * pixels)).
    tol = 5 * np.sqrt(2 * np.sum(truth**2) / (n * (shape[0] - 10) * (shape[1] - 10)))
    np.testing.assert_allclose(noise.kernel, truth, atol=tol)
    assert noise.k0 == pytest.approx(truth[5, 5], rel=0.01)
    np.testing.assert_array_equal(noise.kernel, noise.kernel[::-1, ::-1])  # K(Δ) = K(-Δ)


def test_flat_field_dark_offset_and_fixed_pattern():
    n, shape = 120, (96, 96)
    base = femlib.data.synthetic_flat_field(n, shape, dose=150.0, gain=G, psf_sigma=0.5, seed=3)
    ref = DetectorNoise.from_flat_field(base)
    # A constant offset, a dark frame and a dark series all give the same kernel.
    dark = np.random.default_rng(1).uniform(90, 110, shape)
    with_offset = DetectorNoise.from_flat_field(base + 100.0, offset=100.0)
    with_dark = DetectorNoise.from_flat_field(base + dark, dark=dark)
    series = np.stack([dark - 1, dark + 1])
    with_series = DetectorNoise.from_flat_field(base + dark, dark=series)
    for other in (with_offset, with_dark, with_series):
        np.testing.assert_allclose(other.kernel, ref.kernel, rtol=1e-9, atol=1e-12)
    # An uncorrected offset lowers the normalised kernel by mean / (mean + offset).
    no_dark = DetectorNoise.from_flat_field(base + 100.0)
    mean = 150 * G
    assert no_dark.gain == pytest.approx(ref.gain * mean / (mean + 100), rel=1e-3)
    # A fixed-pattern gain map (+-10 %) does not enter as covariance: the per-pixel mean
    # over frames is removed. Each pixel's K scales with its gain, so the kernel gains
    # <g^2>/<g> (about 1.003), not the spatial variance of the pattern (about 6 %).
    g = np.random.default_rng(2).uniform(0.9, 1.1, shape)
    patterned = DetectorNoise.from_flat_field(base * g)
    expected = ref.gain * np.mean(g**2) / np.mean(g)
    assert patterned.gain == pytest.approx(expected, rel=0.01)


def test_flat_field_mask_leaves_out_hot_pixels():
    flat = femlib.data.synthetic_flat_field(100, (64, 64), dose=100.0, gain=G, seed=5)
    clean = DetectorNoise.from_flat_field(flat, size=5)
    hot = flat.copy()
    hot[:, 30, 30] = np.random.default_rng(0).uniform(0, 1e5, 100)
    mask = np.zeros((64, 64), bool)
    mask[30, 30] = True
    assert abs(DetectorNoise.from_flat_field(hot, size=5).gain / G - 1) > 0.2
    masked = DetectorNoise.from_flat_field(hot, size=5, mask=mask)
    assert masked.gain == pytest.approx(clean.gain, rel=0.01)


@pytest.mark.parametrize("kind", ["dask", "signal"])
def test_flat_field_lazy_and_signal_agree_with_numpy(kind):
    import dask.array as da

    flat = femlib.data.synthetic_flat_field(40, (48, 48), psf_sigma=1.0, seed=4)
    ref = DetectorNoise.from_flat_field(flat, size=7)
    if kind == "dask":
        data = da.from_array(flat, chunks=(7, 48, 48))
    else:
        from hyperspy.signals import Signal2D

        data = Signal2D(flat).as_lazy()
    got = DetectorNoise.from_flat_field(data, size=7)
    np.testing.assert_allclose(got.kernel, ref.kernel, rtol=1e-10, atol=1e-13)


# ------------------------------------------------------------------------------- from scan
@pytest.mark.parametrize(
    "sigma, modulation",
    [(0.0, False), (0.5, False), (1.0, False), (0.5, True), (1.0, True)],
)
def test_from_scan_gain(sigma, modulation):
    """Structure-free and structured scans: the gain within 5 % (sampling ~1.8 % at 1600
    frames) and K(0) within 1.5 % of the analytic kernel."""
    s = femlib.data.synthetic_fem((40, 40), modulation=modulation, psf_sigma=sigma, seed=21)
    noise = DetectorNoise.from_scan(s, mask=s.metadata.Simulation.beam_stop_mask)
    assert noise.gain == pytest.approx(G, rel=0.05)
    assert noise.k0 == pytest.approx(analytic(sigma)[5, 5], rel=0.015)
    assert noise.info["n_pairs"] == 800


def test_from_scan_structure_in_the_annulus_biases_it():
    # Documented limitation: an annulus across a structural peak (7.0 nm^-1) over-estimates
    # the gain; the default high-k annulus does not.
    s = femlib.data.synthetic_fem((40, 40), seed=22)
    mask = s.metadata.Simulation.beam_stop_mask
    default = DetectorNoise.from_scan(s, mask=mask)
    across = DetectorNoise.from_scan(s, mask=mask, radial_range=(6.5, 7.5))
    assert default.gain == pytest.approx(G, rel=0.05)
    assert across.gain > 1.05 * G
    # Without the border subtraction the structure's covariance stays in every lag.
    raw = DetectorNoise.from_scan(s, mask=mask, radial_range=(6.5, 7.5), background=False)
    assert raw.gain > across.gain + 0.1 * G
    assert raw.info["background"] == 0.0
    b = across.info["background"]
    np.testing.assert_allclose(raw.kernel - b, across.kernel, atol=1e-12)


@pytest.mark.parametrize("lazy", [False, True])
def test_from_scan_lazy_equals_eager(lazy):
    s = femlib.data.synthetic_fem((12, 12), (64, 64), psf_sigma=0.5, seed=3)
    mask = s.metadata.Simulation.beam_stop_mask
    ref = DetectorNoise.from_scan(s, mask=mask, size=5)
    other = femlib.data.synthetic_fem((12, 12), (64, 64), psf_sigma=0.5, seed=3, lazy=lazy,
                                      chunks=3)
    got = DetectorNoise.from_scan(other, mask=mask, size=5)
    np.testing.assert_allclose(got.kernel, ref.kernel, rtol=1e-10, atol=1e-13)
    # A plain array (no calibration: radii in pixels from the detector middle) works too.
    arr = DetectorNoise.from_scan(np.asarray(s.data), mask=mask, size=5, radial_range=(20, 60))
    assert arr.gain == pytest.approx(G, rel=0.15)


@pytest.mark.parametrize("lazy", [False, True])
def test_from_scan_leaves_out_the_pairs_of_masked_positions(lazy):
    """Frames pair as (0, 1), (2, 3), ...: masking frame 5 drops the pair (4, 5), which
    gives exactly the kernel of the scan without frames 4 and 5; a NaN frame masked is no
    error."""
    s = femlib.data.synthetic_fem((4, 6), (64, 64), seed=4)
    mask = s.metadata.Simulation.beam_stop_mask
    frames = np.asarray(s.data, dtype=float).reshape(24, 64, 64)
    frames[5] = np.nan
    left_out = np.zeros((4, 6), bool)
    left_out[0, 5] = True
    data = femlib.data.synthetic_fem((4, 6), (64, 64), seed=4).data.astype(float)
    data[0, 5] = np.nan
    if lazy:
        import dask.array as da

        data = da.from_array(data, chunks=(1, 6, 64, 64))
    got = DetectorNoise.from_scan(data, mask=mask, size=5, radial_range=(20, 60),
                                  navigation_mask=left_out)
    ref = DetectorNoise.from_scan(np.delete(frames, [4, 5], axis=0), mask=mask, size=5,
                                  radial_range=(20, 60))
    np.testing.assert_allclose(got.kernel, ref.kernel, rtol=1e-12)
    assert got.info["n_pairs"] == ref.info["n_pairs"] == 11
    with pytest.raises(ValueError, match=r"navigation_mask has shape \(6, 4\) but the "):
        DetectorNoise.from_scan(data, mask=mask, size=5, navigation_mask=left_out.T)
    with pytest.raises(ValueError, match="NaN or infinite"):
        DetectorNoise.from_scan(data, mask=mask, size=5, radial_range=(20, 60))


def test_from_scan_uses_the_calibration_mask():
    s = femlib.data.synthetic_fem((8, 8), (64, 64), seed=1)
    mask = s.metadata.Simulation.beam_stop_mask
    explicit = DetectorNoise.from_scan(s, mask=mask, size=5)
    s.calibration.mask = mask
    np.testing.assert_array_equal(DetectorNoise.from_scan(s, size=5).kernel, explicit.kernel)


# ----------------------------------------------------------------------------- the synthetic
def test_synthetic_psf_conserves_charge_and_blurs():
    s0 = femlib.data.synthetic_fem((3, 3), (64, 64), seed=2)
    s1 = femlib.data.synthetic_fem((3, 3), (64, 64), seed=2, psf_sigma=1.0)
    a, b = s0.data.astype(float), s1.data.astype(float)
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    # The same electrons, spread: totals agree away from the edges, pixel values do not.
    assert b[inner].sum() == pytest.approx(a[inner].sum(), rel=2e-3)
    assert not np.allclose(a, b)
    expected = _apply_psf(a, _psf_profile(1.0))
    np.testing.assert_allclose(b, expected, rtol=1e-6)
    mp = s1.metadata.Simulation.mean_pattern
    np.testing.assert_allclose(mp, _apply_psf(s0.metadata.Simulation.mean_pattern,
                                              _psf_profile(1.0)))
    assert s1.metadata.Simulation.psf_sigma == 1.0


def test_synthetic_psf_lazy_equals_eager():
    eager = femlib.data.synthetic_fem((4, 4), (32, 32), seed=5, psf_sigma=0.5)
    lazy = femlib.data.synthetic_fem((4, 4), (32, 32), seed=5, psf_sigma=0.5, lazy=True,
                                     chunks=1)
    np.testing.assert_array_equal(lazy.data.compute(), eager.data)


def test_synthetic_flat_field_pixel_statistics():
    flat = femlib.data.synthetic_flat_field(400, (40, 40), dose=80.0, gain=G, psf_sigma=0.5,
                                            offset=50.0, seed=9)
    inner = flat[:, 5:-5, 5:-5]
    assert inner.mean() == pytest.approx(50 + 80 * G, rel=2e-3)
    k0 = analytic(0.5)[5, 5]
    assert inner.var(axis=0, ddof=1).mean() == pytest.approx(80 * G * k0, rel=0.02)


# ------------------------------------------------------------------------------------- plot
def test_plot_shows_the_kernel():
    import matplotlib.pyplot as plt

    noise = DetectorNoise.from_psf(psf(0.5), G)
    ax = noise.plot()
    image = ax.get_images()[0]
    np.testing.assert_array_equal(image.get_array(), noise.kernel)
    assert ax.get_xlabel() == "Δx (pixels)"
    plt.close(ax.figure)


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kernel, match",
    [(np.ones((2, 3)), "odd sides"), (np.ones(3), "odd sides"),
     ([[np.nan]], "finite"), ([[0.0]], "positive sum")],
)
def test_bad_kernel(kernel, match):
    with pytest.raises(ValueError, match=match):
        DetectorNoise(kernel)


def test_bad_gain():
    with pytest.raises(ValueError, match="gain must be a positive"):
        DetectorNoise.counting(0)
    with pytest.raises(TypeError, match="gain must be a positive number"):
        DetectorNoise.counting("4.2")
    with pytest.raises(ValueError, match="psf must be"):
        DetectorNoise.from_psf([[-1.0]], 1.0)


def test_bad_flat_field():
    good = femlib.data.synthetic_flat_field(4, (16, 16), seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        DetectorNoise.from_flat_field(good[:1], size=3)
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        DetectorNoise.from_flat_field(good[0])
    with pytest.raises(TypeError, match="real numbers"):
        DetectorNoise.from_flat_field(good.astype(complex))
    sat = np.full((3, 16, 16), 1000, np.uint16)
    sat[1, 4, 4] = np.iinfo(np.uint16).max
    with pytest.raises(ValueError, match="saturated"):
        DetectorNoise.from_flat_field(sat, size=3)
    with pytest.raises(ValueError, match="saturated"):
        DetectorNoise.from_flat_field(good, size=3, saturation=good.max())
    blank = good.copy()
    blank[2] = 0
    with pytest.raises(ValueError, match=r"frame\(s\) \[2\]"):
        DetectorNoise.from_flat_field(blank, size=3)
    nan = good.copy()
    nan[3, 0, 0] = np.nan
    with pytest.raises(ValueError, match="frame 3 holds NaN"):
        DetectorNoise.from_flat_field(nan, size=3)
    with pytest.raises(ValueError, match="dark has shape"):
        DetectorNoise.from_flat_field(good, dark=np.zeros((8, 8)), size=3)
    with pytest.raises(ValueError, match="not both"):
        DetectorNoise.from_flat_field(good, dark=np.zeros((16, 16)), offset=1.0, size=3)
    with pytest.raises(ValueError, match="odd integer"):
        DetectorNoise.from_flat_field(good, size=4)
    with pytest.raises(TypeError, match="odd integer"):
        DetectorNoise.from_flat_field(good, size=3.0)
    with pytest.raises(ValueError, match="larger than the detector"):
        DetectorNoise.from_flat_field(good, size=17)
    with pytest.raises(ValueError, match="mask has shape"):
        DetectorNoise.from_flat_field(good, size=3, mask=np.zeros((4, 4), bool))
    with pytest.raises(TypeError, match="boolean"):
        DetectorNoise.from_flat_field(good, size=3, mask=np.zeros((16, 16)))


def test_bad_scan():
    s = femlib.data.synthetic_fem((2, 2), (32, 32), seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        DetectorNoise.from_scan(s.data[:1, :1], size=3)
    with pytest.raises(ValueError, match="fewer than the window"):
        DetectorNoise.from_scan(s, radial_range=(2.0, 2.05), size=5)
    with pytest.raises(ValueError, match="radial_range must be"):
        DetectorNoise.from_scan(s, radial_range=(3.0, 1.0), size=5)
    with pytest.raises(ValueError, match="radial_range must be"):
        DetectorNoise.from_scan(s, radial_range="far", size=5)
    nan = s.data.astype(float)
    nan[0, 0, 10, 10] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        DetectorNoise.from_scan(nan, radial_range=(0, 100), size=3)


def test_bad_shot_weights_input():
    noise = DetectorNoise.from_psf(psf(0.5), G)
    with pytest.raises(ValueError, match="pass detector_shape"):
        noise.shot_weights(sp.csr_matrix(np.ones((2, 12))))
    with pytest.raises(ValueError, match="has 16 pixels but matrix has 12"):
        noise.shot_weights(sp.csr_matrix(np.ones((2, 12))), detector_shape=(4, 4))
    with pytest.raises(TypeError, match="2D"):
        noise.shot_weights(np.ones(4))


def test_bad_synthetic_psf():
    with pytest.raises(ValueError, match="psf_sigma must be a finite number >= 0"):
        femlib.data.synthetic_fem((2, 2), (32, 32), psf_sigma=-1)
    with pytest.raises(TypeError, match="psf_sigma must be"):
        femlib.data.synthetic_flat_field(2, (8, 8), psf_sigma="wide")
    with pytest.raises(ValueError, match="n_frames"):
        femlib.data.synthetic_flat_field(0)


# ------------------------------------------------------------------------------- end to end
class _Shared:
    """The costly inputs that several end-to-end tests use unchanged, each made once per
    module on first use: the flat-field model of 200 frames of seed ``seed``, the
    structure-free 40 x 40 scan of :func:`calibrated_scan`, and its V(k) with that model.
    Read them, never change them."""

    def __init__(self):
        self._memo = {}

    def _get(self, key, make):
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def flat_model(self, sigma, seed):
        def make():
            flat = femlib.data.synthetic_flat_field(200, (128, 128), gain=G, psf_sigma=sigma,
                                                    seed=seed)
            return DetectorNoise.from_flat_field(flat)

        return self._get(("flat", sigma, seed), make)

    def structure_free_scan(self, sigma, seed):
        return self._get(("scan", sigma, seed),
                         lambda: calibrated_scan(sigma, seed, modulation=False))

    def structure_free_v(self, sigma, seed):
        """All four estimators (ring non-uniformity subtracted) of the structure-free scan
        of ``seed``, corrected with the flat-field model of ``seed + 1``."""
        def make():
            s = self.structure_free_scan(sigma, seed)
            return s.get_variance(noise=self.flat_model(sigma, seed + 1),
                                  mask=s.metadata.Simulation.beam_stop_mask, method="all",
                                  subtract_nonuniformity=True, **E2E)

        return self._get(("v", sigma, seed), make)


@pytest.fixture(scope="module")
def shared():
    return _Shared()


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_get_variance_with_noise_model_end_to_end(sigma, shared):
    """On structure-free PSF-blurred data, the flat-field model removes the counting model's
    error: Omega is zero within its standard error in >= 90 % of the bins; r and re (less
    the ring non-uniformity) and VImage keep a residual of about 1 standard error per bin
    (measured -3e-5 to -6e-5, the same with the exact kernel of the PSF: the model takes the
    mean pattern as locally constant over the PSF, see the noise page), 1000 times smaller
    than the counting model's error. counting(G) equals gain=G to 1e-12."""
    s = shared.structure_free_scan(sigma, 31)  # 40 x 40, true calibration, no gradient
    mask = s.metadata.Simulation.beam_stop_mask
    model = shared.flat_model(sigma, 32)
    kw = dict(npt=50, radial_range=(3.0, 5.75), mask=mask, method="all",
              subtract_nonuniformity=True, show_progressbar=False)
    v = shared.structure_free_v(sigma, 31)  # s.get_variance(noise=model, **kw)
    with warnings.catch_warnings():  # the counting model's error may be > 10x the raw V
        warnings.simplefilter("ignore", RuntimeWarning)
        plain = s.get_variance(gain=G, **kw)
    val, se = v.data[0], v.metadata.FEM.standard_error[0]
    assert np.mean(np.abs(val) < 3 * se) >= 0.9
    assert abs(val.mean()) < np.sqrt(np.mean(se**2))  # neighbouring bins are correlated
    for i in range(1, 4):
        val, se = v.data[i], v.metadata.FEM.standard_error[i]
        rms_se = np.sqrt(np.mean(se**2))
        assert abs(val.mean()) < 2.5 * rms_se
        assert abs(val.mean()) < 2e-3 * abs(plain.data[i].mean())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        counting = s.get_variance(noise=DetectorNoise.counting(G), **kw)
    np.testing.assert_allclose(counting.data, plain.data, rtol=1e-12, atol=1e-15)
    assert v.metadata.FEM.noise_model["k0"] == pytest.approx(model.k0)
    with pytest.raises(ValueError, match="not both"):
        s.get_variance(gain=G, noise=model, **kw)


# ------------------------------------------------- end to end: the scan's model, the residual
N_SCAN = (40, 40)
E2E = dict(npt=50, radial_range=(3.0, 5.75), show_progressbar=False)


def calibrated_scan(sigma, seed, **kwargs):
    """A 40x40 synthetic scan with its true calibration (no thickness gradient)."""
    s = femlib.data.synthetic_fem(N_SCAN, thickness_gradient=False, psf_sigma=sigma, seed=seed,
                                  **kwargs)
    sim = s.metadata.Simulation
    s.calibration.center = sim.center
    s.calibration.affine = sim.affine
    return s


@pytest.mark.parametrize("sigma, seed", [(0.5, 31), (0.5, 41), (1.0, 31), (1.0, 41)])
def test_noise_model_from_the_scan_end_to_end(sigma, seed, shared):
    """Structure-free PSF-blurred scans, the kernel from a flat field and from the scan.

    Omega is zero within its standard error (measured |mean| <= 0.5 rms SE, >= 98 % of the
    bins within 3 SE). With the locally-flat model r, re (less the ring non-uniformity) and
    VImage kept a mean of up to 2 rms SE with a per-bin pattern of up to 6 SE that the
    exact per-pixel noise predicted bin by bin (correlation 0.89-0.96); with the
    second-order PSF term their mean is within 1.1 rms SE with the flat-field kernel
    (within 1.5 with the scan's, whose K(0) carries its own error) and >= 90 % of the bins
    are within 3 SE.
    """
    s = shared.structure_free_scan(sigma, seed)  # calibrated_scan(sigma, seed, no modulation)
    mask = s.metadata.Simulation.beam_stop_mask
    flat_model = shared.flat_model(sigma, seed + 1)
    models = (flat_model, DetectorNoise.from_scan(s, mask=mask))
    for model, limit in zip(models, (1.1, 1.5), strict=True):
        if model is flat_model:
            v = shared.structure_free_v(sigma, seed)
        else:
            v = s.get_variance(noise=model, mask=mask, method="all",
                               subtract_nonuniformity=True, **E2E)
        se = v.metadata.FEM.standard_error
        rms_se = np.sqrt(np.mean(se**2, axis=-1))
        omega = v.data[0]
        assert abs(omega.mean()) < rms_se[0]
        assert np.mean(np.abs(omega) < 3 * se[0]) >= 0.9
        for i in (1, 2, 3):
            val = v.data[i]
            # The second-order PSF term (DetectorNoise.curvature) removes most of the
            # locally-flat model's residual (measured mean -0.07 to +0.36 rms SE at 1 px
            # with the flat-field kernel, against -1.33 to -0.83 before; +0.12 to +0.98 at
            # 0.5 px, where it over-corrects); the scan's kernel adds its own K(0) error
            # (-0.73 to +1.18).
            assert abs(val.mean()) < limit * rms_se[i]
            assert np.mean(np.abs(val) < 3 * se[i]) >= 0.9


@pytest.fixture(scope="module")
def sharp_high_dose_omega():
    """Omega of the structured seed-31 scan at 1000x the dose with no PSF: the structural
    V(k) of the very frames of :func:`test_structured_v_with_both_noise_models` before any
    blur (same seed, so the same structure coefficients), and its ground truth."""
    s = calibrated_scan(0.0, 31, dose=3.4e8)
    v = s.get_variance(gain=G, mask=s.metadata.Simulation.beam_stop_mask, **E2E)
    sim = s.metadata.Simulation
    return v.data, np.interp(v.axes_manager.signal_axes[0].axis, sim.k, sim.variance)


@pytest.mark.parametrize("sigma, peak_ratio", [(0.5, 0.969), (1.0, 0.903)])
def test_structured_v_with_both_noise_models(sigma, peak_ratio, sharp_high_dose_omega,
                                            shared):
    """Structured data. V(k) with the flat-field kernel and with the scan's kernel agree
    within a standard error (Omega: measured 0.20 and 0.03 SE at most; VImage 0.75 and
    0.54), and both agree with the structural V(k) as the PSF leaves it -- the same frames
    at 1000x the dose, where the shot noise is negligible -- within one standard error in
    rms (Omega: 0.70-0.83; VImage less the structure-free model residual: 1.09 and 0.68).
    The PSF itself lowers the 4.6 nm^-1 peak by the paired factor of the noise page (0.969
    at 0.5 px, 0.903 at 1 px): physics, not noise."""
    s = calibrated_scan(sigma, 31)
    sim = s.metadata.Simulation
    mask = sim.beam_stop_mask
    kw = dict(mask=mask, method=["Omega", "VImage"], **E2E)
    models = (shared.flat_model(sigma, 32), DetectorNoise.from_scan(s, mask=mask))
    v_flat, v_scan = (s.get_variance(noise=m, **kw) for m in models)
    high = calibrated_scan(sigma, 31, dose=1000 * sim.dose)
    reference = high.get_variance(noise=DetectorNoise.from_psf(psf(sigma), G), **kw).data
    se = v_flat.metadata.FEM.standard_error
    # Omega: the two kernels, and the structural V(k) of the blurred speckle.
    assert np.all(np.abs(v_flat.data[0] - v_scan.data[0]) < 0.5 * se[0])
    for v in (v_flat, v_scan):
        z = (v.data[0] - reference[0]) / se[0]
        assert np.sqrt(np.mean(z**2)) < 1
        assert np.all(np.abs(z) < 3.5)
    # VImage: the same; the second-order PSF term leaves no structure-free residual to
    # take off (the locally-flat model needed the exact residual subtracted here).
    assert np.all(np.abs(v_flat.data[1] - v_scan.data[1]) < se[1])
    for v in (v_flat, v_scan):
        z = (v.data[1] - reference[1]) / se[1]
        assert np.sqrt(np.mean(z**2)) < 1.5
    # What the PSF does to the structure: the peak is lower by the blur, paired with the
    # same frames recorded without a PSF (which reproduce the ground truth there).
    sharp, truth = sharp_high_dose_omega
    k = v_flat.axes_manager.signal_axes[0].axis
    peak = (k > 4.3) & (k < 4.9)
    assert sharp[peak].mean() == pytest.approx(truth[peak].mean(), rel=0.04)
    assert reference[0][peak].mean() / sharp[peak].mean() == pytest.approx(peak_ratio, abs=0.005)
    assert v_flat.data[0][peak].mean() < truth[peak].mean() - 1.5 * se[0][peak].mean()


def test_vimage_leaves_out_the_pixels_next_to_the_mask():
    """Holes in the illumination (masked): the second-order term fails next to them, and
    VImage leaves those pixels out. Known answer: to O(1/N) the corrected VImage is the
    ring mean of ``(1 - 1/N) (Var_p - k0 (m + c lap m)) / m^2`` with the exact
    ``Var_p = G^2 (h^2 * lam)_p`` of the simulation; 3000 frames of Poisson electrons."""
    from scipy.ndimage import convolve1d

    from femlib import moments, variance
    from femlib.variance import _Curvature

    n, side, gain = 3000, 32, 4.2
    p = _psf_profile(0.5)
    lam = np.full((side, side), 3.0)
    mask = np.zeros((side, side), bool)
    mask[2:-2:5, 2:-2:5] = True  # no electrons land there
    lam[mask] = 0.0

    def blur(a, q):
        return convolve1d(convolve1d(a, q, axis=-1, mode="constant"), q, axis=-2,
                          mode="constant")

    rng = np.random.default_rng(5)
    frames = gain * blur(rng.poisson(lam, (n, side, side)).astype(float), p)
    noise = DetectorNoise.from_psf(np.outer(p, p), gain)
    c = (side - 1) / 2
    w = build_weights((side, side), (c, c), npt=2, radial_range=(3.0, 13.0), mask=mask)
    m = moments.accumulate_moments(frames, w, shot_weights=noise.shot_weights(w),
                                   methods=["VImage"], shot_scale=1.0)
    t, wc = w.touched, w.matrix[:, w.touched]
    mu, var = gain * blur(lam, p).ravel()[t], gain**2 * blur(lam, p**2).ravel()[t]
    lap = _Curvature(noise.curvature, t, w.detector_shape, mask)
    resid = (1 - 1 / n) * (var - noise.k0 * (mu + lap(mu))) / mu**2
    for guard, keep in ((mask, lap.keep), (None, np.ones(t.size, bool))):
        r = variance.estimate(m, w, ["VImage"], k0=noise.k0, curvature=noise.curvature,
                              mask=guard)
        v, se = r["variance"][0, 0], r["standard_error"][0, 0]
        predicted = (wc @ np.where(keep, resid, 0.0)) / (wc @ keep.astype(float))
        assert np.all(np.abs(v - predicted) < 3 * se)
        if guard is None:
            assert np.all(predicted > 4 * se)  # what the mask's neighbours did
            unguarded = predicted
        else:
            guarded = predicted
    assert np.all(np.abs(guarded) < unguarded / 3)
    assert lap.keep.mean() < 0.75  # a lattice of holes: the guard matters here


def test_vimage_mask_argument_checked():
    from femlib import moments, variance

    w = build_weights((8, 8), (3.5, 3.5), npt=2, radial_range=(1.0, 3.0))
    m = moments.accumulate_moments(np.ones((4, 8, 8)), w, methods=["VImage"])
    with pytest.raises(ValueError, match="mask must be a boolean array of the detector"):
        variance.estimate(m, w, ["VImage"], mask=np.zeros((4, 4), bool))
