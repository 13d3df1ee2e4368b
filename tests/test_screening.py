"""Screening of real-scan artefacts: bad pixels, outlier patterns, descan (femlib.screening
and the find_* methods), against the truth stored by synthetic_fem."""

import dask.array as da
import numpy as np
import pytest

from femlib import screening
from femlib.data import synthetic_fem

G = 4.2
RANGE = (3.0, 5.75)
SMALL = {"navigation_shape": (16, 16), "detector_shape": (64, 64), "thickness_gradient": False}



def computed(v):
    """A lazy input gives a lazy V(k): compute it (in place) for the checks."""
    if v._lazy:
        v.compute()
    return v

def _calibrated(**kwargs):
    s = synthetic_fem(**{**SMALL, **kwargs})
    sim = s.metadata.Simulation
    s.calibration.center = sim.centers.reshape(-1, 2).mean(0)
    s.calibration.affine = sim.affine
    return s, sim


@pytest.fixture(scope="module")
def artefacts():
    """One scan with every artefact (computed once)."""
    return _calibrated(hot_pixels=6, crystals=0.03, descan=(2.0, -1.5), seed=5)


# ----------------------------------------------------------------------------- passes
def test_pixel_statistics_equal_numpy_and_lazy_equals_eager():
    rng = np.random.default_rng(0)
    frames = rng.poisson(30.0, (7, 9, 12, 10)).astype(np.float32) * 4.2
    st = screening.pixel_statistics(frames)
    flat = frames.reshape(-1, 12, 10).astype(float)
    np.testing.assert_allclose(st["mean"], flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(st["variance"], flat.var(0, ddof=1), rtol=1e-10)
    size = st["sub_block_size"]
    assert size == screening.sub_block_size(63) == 16
    subs = [flat[i : i + size].var(0, ddof=1) for i in range(0, 63, size)]  # 16, 16, 16, 15
    np.testing.assert_allclose(st["median_variance"], np.median(subs, axis=0), rtol=1e-10)
    lazy = screening.pixel_statistics(da.from_array(frames, chunks=(2, 4, 12, 10)))
    for key in ("mean", "variance", "median_variance"):
        np.testing.assert_allclose(lazy[key], st[key], rtol=1e-12)
    assert st["finite"].all()


def test_pixel_statistics_flag_nonfinite_pixels():
    frames = np.ones((40, 6, 6))
    frames[3, 2, 4] = np.nan
    st = screening.pixel_statistics(frames)
    assert np.argwhere(~st["finite"]).tolist() == [[2, 4]]
    found = screening.classify_pixels(st, gain=1.0)
    assert found["reason"][2, 4] == screening.REASONS_PIXEL["nonfinite"]


def test_label_sums_lazy_and_eager():
    rng = np.random.default_rng(1)
    frames = rng.random((5, 6, 8, 8))
    labels, grid = screening.tile_labels((5, 6), (2, 4))
    assert grid == (3, 2)
    labels[0, 0] = -1
    sums = screening.label_sums(frames, labels)
    flat, lab = frames.reshape(30, 8, 8), labels.ravel()
    for t in range(6):
        np.testing.assert_allclose(sums[t], flat[lab == t].sum(0))
    lazy = screening.label_sums(da.from_array(frames, chunks=(2, 3, 8, 8)), labels)
    np.testing.assert_allclose(lazy, sums)
    with pytest.raises(ValueError, match="navigation shape"):
        screening.label_sums(frames, labels[:2])
    with pytest.raises(ValueError, match="tiles"):
        screening.tile_labels((5, 6), (0, 2))


# ----------------------------------------------------------------------------- bad pixels
@pytest.mark.parametrize("lazy", [False, True])
def test_find_bad_pixels_finds_the_truth(artefacts, lazy):
    s, sim = artefacts
    if lazy:
        s = s.as_lazy()
    stop = sim.beam_stop_mask & ~sim.bad_pixels  # dead pixels left to find
    bad = s.find_bad_pixels(gain=G, mask=stop, show_progressbar=False)
    md = bad.metadata.Screening.bad_pixels
    x, y = sim.hot_pixels.T
    frames = np.asarray(s.data).reshape(-1, 64, 64)[:, y, x].astype(float)
    ratio = frames.var(0, ddof=1) / (G * frames.mean(0))
    assert (ratio >= 3).sum() >= 4
    assert bad.data[y, x][ratio >= 3].all()  # every pixel >= 3x the prediction
    dx, dy = sim.dead_pixels.T
    assert bad.data[dy, dx].all()
    assert not (bad.data & ~sim.bad_pixels).any()  # no false positive
    assert md.counts["dead"] == 10 and md.n_bad == int(bad.data.sum())
    assert set(md.reasons) <= {"dead", "noisy", "hot", "noisy+hot", "hot+noisy"}
    assert md.pixels.shape == (md.n_bad, 2)
    assert bad.axes_manager.signal_shape == (64, 64)
    combined = (s.sum() < 10000) | bad  # combines with a mask by |
    assert combined.data.dtype == bool and combined.data.sum() >= bad.data.sum()


def test_find_bad_pixels_models_agree_and_clean_scan_is_clean():
    from femlib.noise import DetectorNoise

    s, sim = _calibrated(seed=2)
    stop = sim.beam_stop_mask & ~sim.bad_pixels
    by_gain = s.find_bad_pixels(gain=G, mask=stop, show_progressbar=False)
    by_noise = s.find_bad_pixels(noise=DetectorNoise.counting(G), mask=stop,
                                 show_progressbar=False)
    by_data = s.find_bad_pixels(mask=stop, show_progressbar=False)
    for bad in (by_gain, by_noise, by_data):
        np.testing.assert_array_equal(bad.data, sim.bad_pixels)  # the 10 dead pixels only
    assert by_noise.metadata.Screening.bad_pixels.model == "noise"
    assert abs(by_data.metadata.Screening.bad_pixels.gain_estimate / G - 1) < 0.1


def test_find_bad_pixels_bad_input():
    s, _ = _calibrated(navigation_shape=(4, 4))
    with pytest.raises(ValueError, match="not both"):
        s.find_bad_pixels(gain=G, noise=type("N", (), {"gain": G, "k0": G,
                                                       "shot_weights": None})())
    with pytest.raises(ValueError, match="hot"):
        s.find_bad_pixels(gain=G, hot=1.0)
    with pytest.raises(ValueError, match="mask"):
        s.find_bad_pixels(gain=G, mask=np.zeros((3, 3), bool))


# ----------------------------------------------------------------------------- patterns
@pytest.mark.parametrize("lazy", [False, True])
def test_find_outlier_patterns_finds_crystals_and_feeds_get_variance(lazy):
    s, sim = _calibrated(crystals=0.04, seed=3)
    if lazy:
        s = s.as_lazy()
    mask = sim.beam_stop_mask
    flags = s.find_outlier_patterns(radial_range=RANGE, mask=mask, show_progressbar=False)
    assert sim.outliers.sum() == 10
    np.testing.assert_array_equal(flags.data, sim.outliers)
    md = flags.metadata.Screening.outliers
    assert md.counts["crystalline"] == 10 and md.n_outliers == 10
    assert md.crystal_score[sim.outliers].min() > md.thresholds["crystal"]
    kw = {"npt": 20, "gain": G, "radial_range": RANGE, "mask": mask, "show_progressbar": False}
    v = computed(s.get_variance(navigation_mask=flags, **kw))
    left = v.metadata.FEM.navigation_mask
    assert left.n_excluded == 10 and left.n_positions == 256
    assert left.reasons.crystalline == 10
    plain = computed(s.get_variance(navigation_mask=np.asarray(flags.data), **kw))
    np.testing.assert_allclose(plain.data, v.data, rtol=1e-12)
    assert plain.metadata.FEM.navigation_mask.n_excluded == 10
    raw = computed(s.get_variance(**kw))
    truth = np.interp(v.axes_manager[-1].axis, sim.k, sim.variance)
    assert np.abs(raw.data - truth).max() > 5 * np.abs(v.data - truth).max()


def test_outliers_dose_and_nonfinite_frames():
    s, sim = _calibrated(seed=4, navigation_shape=(12, 12))
    s.data[2, 3] = 0.0  # beam blanked
    s.data[7, 8] *= 3.0  # dose jump
    s.data[5, 5, 31, 60] = np.nan  # a non-finite pixel on the ring (k = 3.9 nm^-1)
    with pytest.warns(UserWarning, match="NaN"):
        flags = s.find_outlier_patterns(radial_range=RANGE, mask=sim.beam_stop_mask,
                                        show_progressbar=False)
    assert np.argwhere(flags.data).tolist() == [[2, 3], [5, 5], [7, 8]]
    reason = flags.metadata.Screening.outliers.reason
    bits = screening.REASONS_PATTERN
    assert reason[2, 3] == reason[7, 8] == bits["dose"]
    assert reason[5, 5] == bits["nonfinite"]


def test_clean_scan_flags_few_patterns_and_moves_v_little():
    s, sim = _calibrated(seed=6, navigation_shape=(24, 24))
    mask = sim.beam_stop_mask
    flags = s.find_outlier_patterns(radial_range=RANGE, mask=mask, show_progressbar=False)
    assert flags.data.sum() <= 2  # <= 0.5 % of 576
    kw = {"npt": 20, "gain": G, "radial_range": RANGE, "mask": mask, "show_progressbar": False}
    raw, screened = s.get_variance(**kw), s.get_variance(navigation_mask=flags, **kw)
    moved = (screened.data - raw.data) / raw.metadata.FEM.standard_error
    assert np.sqrt(np.mean(moved**2)) <= 0.2


def test_polar_outliers_bad_input():
    with pytest.raises(ValueError, match="profiles"):
        screening.polar_outliers(np.ones((4, 4)))
    with pytest.raises(ValueError, match="crystal"):
        screening.polar_outliers(np.ones((4, 4, 2, 8)), crystal=-1)


# ----------------------------------------------------------------------------- descan
@pytest.mark.parametrize("lazy", [False, True])
def test_find_centers_recovers_a_descan(artefacts, lazy):
    s, sim = artefacts
    if lazy:
        s = s.as_lazy()
    bad = s.find_bad_pixels(gain=G, mask=sim.beam_stop_mask, show_progressbar=False)
    centres = s.find_centers(mask=sim.beam_stop_mask | bad, show_progressbar=False)
    assert centres.data.shape == (16, 16, 2)
    err = centres.data - sim.centers
    assert np.sqrt(np.mean(np.sum(err**2, -1))) < 0.1
    md = centres.metadata.Screening.descan
    assert md.tile_centers.shape == (16, 2) and md.tile_ok.sum() >= 15
    assert md.rms_residual < 0.5
    np.testing.assert_allclose(md.tile_centers[md.tile_ok] - md.residual[md.tile_ok],
                               md.tile_centers[md.tile_ok] - md.residual[md.tile_ok])
    fig = screening.plot_descan(centres)
    assert len(fig.axes) == 2


def test_find_centers_eager_equals_lazy(artefacts):
    s, sim = artefacts
    kw = {"mask": sim.beam_stop_mask, "show_progressbar": False, "tiles": (4, 4)}
    eager = s.find_centers(**kw)
    lazy = s.as_lazy().find_centers(**kw)
    np.testing.assert_allclose(lazy.data, eager.data, atol=1e-9)


def test_find_centers_constant_without_descan():
    s, sim = _calibrated(seed=7)
    centres = s.find_centers(mask=sim.beam_stop_mask, model="constant", show_progressbar=False)
    assert np.abs(centres.data - sim.center).max() < 0.1
    assert np.ptp(centres.data[..., 0]) == 0


def test_find_centers_says_what_to_pass():
    s, sim = _calibrated(navigation_shape=(2, 1))
    with pytest.raises(ValueError, match="tiles"):
        s.find_centers(mask=sim.beam_stop_mask, show_progressbar=False)
    with pytest.raises(ValueError, match="model"):
        s.find_centers(model="cubic", show_progressbar=False)
    from femlib.signals import FEMDiffraction2D

    noise = np.random.default_rng(0).poisson(5.0, (4, 4, 64, 64)).astype(np.float32)
    flat = FEMDiffraction2D(noise)  # no ring
    with pytest.raises(ValueError, match="radial_range"):
        flat.find_centers(show_progressbar=False, tiles=(2, 2))


def test_fit_centers_bad_model():
    with pytest.raises(ValueError, match="model"):
        screening.fit_centers(np.ones((1, 8, 8)), [[0, 0]], [[0, 0]], (4, 4), model="x")


# ----------------------------------------------------------------------------- distributed
def test_find_steps_on_a_distributed_cluster_equal_eager(artefacts):
    distributed = pytest.importorskip("distributed")
    s, sim = artefacts
    mask = sim.beam_stop_mask
    eager_bad = s.find_bad_pixels(gain=G, mask=mask, show_progressbar=False)
    eager_flags = s.find_outlier_patterns(radial_range=RANGE, mask=mask, show_progressbar=False)
    lazy = s.as_lazy()
    lazy.rechunk(nav_chunks=(4, 16))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        bad = lazy.find_bad_pixels(gain=G, mask=mask, show_progressbar=False)
        flags = lazy.find_outlier_patterns(radial_range=RANGE, mask=mask,
                                           show_progressbar=False)
        centres = lazy.find_centers(mask=mask | bad, show_progressbar=False, tiles=(4, 4))
    np.testing.assert_array_equal(bad.data, eager_bad.data)
    np.testing.assert_array_equal(flags.data, eager_flags.data)
    np.testing.assert_allclose(
        centres.data, s.find_centers(mask=mask | bad, show_progressbar=False,
                                     tiles=(4, 4)).data, atol=1e-9)
