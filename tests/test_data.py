"""Tests of femlib.data: the synthetic dataset against its ground truth, and the real-data loader
against small local files (no network: downloads come from a local HTTP server)."""

import hashlib
import http.server
import json
import os
import re
import socket
import threading
import warnings
import zipfile

import numpy as np
import pytest

import femlib
from femlib.data import _real, synthetic_fem
from femlib.signals import FEMDiffraction2D, LazyFEMDiffraction2D

SMALL = {"navigation_shape": (6, 5), "detector_shape": (32, 40), "scale": 0.45}


@pytest.fixture(scope="module")
def default(synthetic_default):
    return synthetic_default  # synthetic_fem(), made once per session (tests/conftest.py)


@pytest.fixture(scope="module")
def no_gradient():
    """The default dataset without its thickness ramp: read (never changed) by four tests."""
    return synthetic_fem(thickness_gradient=False)


def _ring_sums(s, k_lo, k_hi):
    """Ring sums per frame over the unmasked pixels with true corrected k in [k_lo, k_hi)."""
    sim = s.metadata.Simulation
    ny, nx = s.axes_manager.signal_shape[::-1]
    y, x = np.mgrid[0:ny, 0:nx].astype(float)
    d = np.stack([x - sim.center[0], y - sim.center[1]])
    k = np.hypot(*np.einsum("ij,j...->i...", sim.affine[:2, :2], d)) * sim.scale
    ring = (k >= k_lo) & (k < k_hi) & ~sim.beam_stop_mask
    return np.asarray(s.data, dtype=float)[..., ring].sum(axis=-1).ravel()


# ----------------------------------------------------------------------------- synthetic_fem


def test_default_signal(default):
    s = default
    assert isinstance(s, FEMDiffraction2D) and not isinstance(s, LazyFEMDiffraction2D)
    assert s.data.shape == (40, 40, 128, 128) and s.data.dtype == np.float32
    nav, sig = s.axes_manager.navigation_axes, s.axes_manager.signal_axes
    assert [a.name for a in nav] == ["x", "y"] and {a.units for a in nav} == {"nm"}
    assert [a.name for a in sig] == ["kx", "ky"] and {a.units for a in sig} == {"nm^-1"}
    assert s.calibration.scale == pytest.approx(0.14)
    # The calibration is left at the detector middle, without affine: the user finds them.
    np.testing.assert_allclose(s.calibration.center, [63.5, 63.5])
    assert s.calibration.affine is None and s.calibration.mask is None
    sim = s.metadata.Simulation
    np.testing.assert_allclose(sim.center, [64.37, 62.81])
    assert sim.seed == 0 and sim.gain == 4.2 and sim.dose == 3.4e5
    assert s.metadata.General.title == "Synthetic FEM (seed 0)"
    assert s.metadata.Signal.signal_type == "fem_diffraction"


def test_default_affine_maps_ellipse_to_circle(default):
    sim = default.metadata.Simulation
    a = sim.affine[:2, :2]
    theta = sim.rotation
    major = np.array([np.cos(theta), np.sin(theta)])
    minor = np.array([-np.sin(theta), np.cos(theta)])
    # A ring point on the major axis keeps its radius; one on the minor axis (shorter by
    # 1/1.02 on the detector) is stretched onto the same circle.
    np.testing.assert_allclose(a @ major, major, atol=1e-12)
    np.testing.assert_allclose(a @ (minor / 1.02), minor, atol=1e-12)
    np.testing.assert_array_equal(sim.affine[2], [0, 0, 1])


def test_default_mask_threshold(default):
    """design.md's user writes ``mask = summed < 10000``: it must be the beam stop exactly."""
    summed = default.sum()
    mask = default.metadata.Simulation.beam_stop_mask
    np.testing.assert_array_equal(summed.data < 10000, mask)
    assert mask.sum() == 589
    assert summed.data[~mask].min() > 15000  # no pixel near the threshold
    assert summed.data[mask].max() < 2500
    x, y = default.metadata.Simulation.dead_pixels.T
    assert len(x) == 10 and np.all(default.data[..., y, x] == 0)
    c = np.round(default.metadata.Simulation.center).astype(int)
    assert mask[c[1], c[0]]  # the direct beam is behind the stop


def test_default_mean_pattern(default):
    sim = default.metadata.Simulation
    mean = sim.mean_pattern
    assert mean.shape == (128, 128)
    ok = ~sim.beam_stop_mask
    # ~20 e/px/frame on the first ring, >= 2.5 in the corners, direct beam hidden
    assert 20.0 < mean[ok].max() < 22.0
    assert 2.5 < mean[ok].min() < 2.6
    assert mean[sim.beam_stop_mask].max() < 0.5


def test_haadf_linear_in_thickness(default):
    sim = default.metadata.Simulation
    haadf = default.metadata.HAADF.intensity
    assert type(haadf) is np.ndarray and haadf.shape == (40, 40)  # as in the real files
    t = sim.thickness
    assert t.mean() == pytest.approx(30.0) and sim.mean_thickness == 30.0
    np.testing.assert_allclose([t.min(), t.max()], [26.7, 33.3])
    slope, black = np.polyfit(t.ravel(), haadf.ravel(), 1)
    assert slope == pytest.approx(440.46, rel=1e-3)
    assert black == pytest.approx(26265, rel=1e-3)
    residual = haadf.data - (26265 + 440.46 * t)
    assert residual.std() == pytest.approx(0.02 * 440.46, rel=0.1)


@pytest.mark.parametrize("k0", [3.7, 4.6, 7.0])
def test_stored_truth_is_the_variance_of_the_data(default, no_gradient, k0):
    """The stored V_true(k) at each modulation peak equals the measured variance of thin-ring
    sums (hard bins, true geometry, shot term G/<S>) within 4 standard errors, the standard
    error from the per-frame values (delta method)."""
    sim = default.metadata.Simulation
    assert np.all(np.diff(sim.k) > 0) and sim.k[0] == 0 and sim.k[-1] >= 12.9
    v_true = np.interp(k0, sim.k, sim.variance)
    s = no_gradient
    x = _ring_sums(s, k0 - 0.05, k0 + 0.05)
    mean = x.mean()
    omega = np.mean(x**2) / mean**2 - 1 - sim.gain / mean
    # delta method on (mean of x^2, mean of x): d omega = (dx2 - 2 (x2/m) dx) / m^2
    infl = (x**2 - 2 * np.mean(x**2) / mean * x) / mean**2
    se = infl.std(ddof=1) / np.sqrt(x.size)
    assert v_true > 10 * se  # the check resolves the structure
    assert abs(omega - v_true) < 4 * se


@pytest.mark.parametrize("lazy", [False, True])
def test_reproducible_by_seed(lazy):
    a = synthetic_fem(seed=3, lazy=lazy, **SMALL)
    b = synthetic_fem(seed=3, lazy=lazy, **SMALL)
    c = synthetic_fem(seed=4, lazy=lazy, **SMALL)
    a, b, c = (np.asarray(s.data) for s in (a, b, c))
    np.testing.assert_array_equal(a, b)
    assert np.mean(a != c) > 0.5


def test_seed_none_is_stored_and_replays():
    s = synthetic_fem(seed=None, **SMALL)
    seed = s.metadata.Simulation.seed
    assert isinstance(seed, int)
    np.testing.assert_array_equal(s.data, synthetic_fem(seed=seed, **SMALL).data)


@pytest.mark.parametrize("chunks", [None, 1, 4, (2, 5, 32, 40), (-1, -1, -1, -1)])
def test_lazy_equals_eager(chunks):
    eager = synthetic_fem(**SMALL)
    lazy = synthetic_fem(lazy=True, chunks=chunks, **SMALL)
    assert isinstance(lazy, LazyFEMDiffraction2D)
    rows = {None: 6, 1: 1, 4: 4, (2, 5, 32, 40): 2, (-1, -1, -1, -1): 6}[chunks]
    assert lazy.data.chunks[0][0] == rows
    assert lazy.data.chunks[1:] == ((5,), (32,), (40,))
    np.testing.assert_array_equal(lazy.data.compute(), eager.data)
    np.testing.assert_array_equal(
        lazy.metadata.HAADF.intensity, eager.metadata.HAADF.intensity
    )


@pytest.mark.parametrize(
    ("navigation_shape", "detector_shape", "rows"),
    [((100, 64), (256, 256), 2), ((40, 40), (128, 128), 18), ((5, 400), (256, 256), 1)],
)
def test_lazy_default_chunks_are_whole_rows_of_about_48_mb(navigation_shape, detector_shape, rows):
    s = synthetic_fem(navigation_shape=navigation_shape, detector_shape=detector_shape, lazy=True)
    ny, nx = navigation_shape
    assert set(s.data.chunks[0][:-1]) <= {rows} and sum(s.data.chunks[0]) == ny
    assert s.data.chunks[1:] == ((nx,), (detector_shape[0],), (detector_shape[1],))
    if rows > 1:
        assert 24e6 < rows * nx * np.prod(detector_shape) * 4 <= 48e6


@pytest.mark.parametrize("lazy", [False, True])
def test_summed_pattern_matches_expected_counts(lazy):
    """Without modulation, each pixel's sum over frames is gain * Poisson(Σ_n τ_n λ0(p))."""
    s = synthetic_fem(navigation_shape=(20, 20), modulation=False, lazy=lazy)
    sim = s.metadata.Simulation
    tau_sum = (sim.thickness / sim.mean_thickness).sum()
    expected = sim.gain * tau_sum * sim.mean_pattern
    summed = np.asarray(s.sum().data, dtype=float)
    ok = ~sim.beam_stop_mask
    z = (summed[ok] - expected[ok]) / np.sqrt(sim.gain * expected[ok])
    assert abs(z.mean()) < 0.03
    assert z.std() == pytest.approx(1.0, abs=0.02)
    total = summed.sum() / sim.gain
    assert abs(total - expected.sum() / sim.gain) < 4 * np.sqrt(expected.sum() / sim.gain)


def test_pure_poisson_variance_equals_gain_times_mean():
    s = synthetic_fem(
        detector_shape=(32, 32), scale=0.5, modulation=False, thickness_gradient=False
    )
    sim = s.metadata.Simulation
    assert np.all(sim.variance == 0) and sim.modulation_components.shape == (0, 3)
    np.testing.assert_array_equal(sim.thickness, 30.0)
    frames = s.data.reshape(-1, 32 * 32).astype(float)
    ok = ~sim.beam_stop_mask.ravel()
    ratio = frames.var(axis=0, ddof=1)[ok] / (sim.gain * frames.mean(axis=0)[ok])
    # 1600 frames: each ratio has a relative standard error of about sqrt(2/1600) = 3.5 %
    assert ratio.mean() == pytest.approx(1.0, abs=0.01)
    assert np.all(np.abs(ratio - 1) < 0.2)
    assert ratio.std() == pytest.approx(0.036, abs=0.006)
    # and the means are gain * lambda: standard scores of the 1600-frame means, whose
    # standard error is gain * sqrt(lambda / 1600), are standard normal
    lam = sim.mean_pattern.ravel()[ok]
    z = (frames.mean(axis=0)[ok] - sim.gain * lam) / (sim.gain * np.sqrt(lam / len(frames)))
    assert abs(z.mean()) < 4 / np.sqrt(z.size)
    assert z.std() == pytest.approx(1.0, abs=0.1)
    assert np.abs(z).max() < 5


@pytest.mark.parametrize("modulation", [True, False])
def test_ring_variance_recovers_true_variance(modulation, request):
    """Omega with the hard-bin shot-noise term G/<S> at the V peak (4.6 nm^-1)."""
    s = (request.getfixturevalue("no_gradient") if modulation
         else synthetic_fem(modulation=False, thickness_gradient=False))
    sums = _ring_sums(s, 4.55, 4.65)
    gain = s.metadata.Simulation.gain
    omega = np.mean(sums**2) / np.mean(sums) ** 2 - 1 - gain / np.mean(sums)
    assert np.mean(sums) / gain > 2000  # electrons per frame in this thin ring
    if modulation:
        v_true = np.interp(4.6, s.metadata.Simulation.k, s.metadata.Simulation.variance)
        assert v_true == pytest.approx(0.0070, abs=1e-4)
        assert omega == pytest.approx(v_true, rel=0.08)
    else:
        assert abs(omega) < 4e-5  # standard error ~ sqrt(2/1600) * G/<S> = 1.5e-5


def test_thickness_gradient_adds_thickness_variance():
    s = synthetic_fem(modulation=False)
    sums = _ring_sums(s, 4.2, 4.4)
    tau = (s.metadata.Simulation.thickness / 30.0).ravel()
    omega = np.mean(sums**2) / np.mean(sums) ** 2 - 1 - 4.2 / np.mean(sums)
    v_tau = np.mean(tau**2) - 1
    # uniform ramps of +-10 % (x) and +-1 % (y) over 40 steps: (0.2² + 0.02²) / 12 * 41 / 39
    assert v_tau == pytest.approx((0.2**2 + 0.02**2) / 12 * 41 / 39, rel=1e-12)
    assert omega == pytest.approx(v_tau, rel=0.05)


def test_integer_dtypes_round_and_saturate():
    ref = synthetic_fem(dtype="float64", **SMALL).data
    electrons = ref / 4.2
    np.testing.assert_allclose(electrons, np.round(electrons), atol=1e-9)
    u16 = synthetic_fem(dtype="uint16", **SMALL).data
    assert u16.dtype == np.uint16
    np.testing.assert_array_equal(u16, np.rint(ref))
    u8 = synthetic_fem(dtype=np.uint8, **SMALL).data
    np.testing.assert_array_equal(u8, np.minimum(np.rint(ref), 255))
    assert u8.max() == 255
    f32 = synthetic_fem(**SMALL).data
    np.testing.assert_array_equal(f32, ref.astype(np.float32))


def test_dose_gain_and_detector_shape():
    a = synthetic_fem(detector_shape=(64, 96), dose=1.7e5, gain=1.0, scale=0.28, seed=1)
    sim = a.metadata.Simulation
    np.testing.assert_allclose(sim.center, [47.5 + 0.87 * 96 / 128, 31.5 - 0.69 * 64 / 128])
    np.testing.assert_allclose(a.calibration.center, [47.5, 31.5])
    assert a.data.shape == (40, 40, 64, 96)
    ref = synthetic_fem(detector_shape=(64, 96), scale=0.28, seed=1).metadata.Simulation
    # counts per pixel are proportional to the dose
    np.testing.assert_allclose(sim.mean_pattern, ref.mean_pattern / 2)
    assert np.all(np.mod(a.data, 1) == 0)  # gain 1: counts are electrons


def test_custom_center():
    s = synthetic_fem(center=(20.25, 18.5), **SMALL)
    np.testing.assert_allclose(s.metadata.Simulation.center, [20.25, 18.5])
    mask = s.metadata.Simulation.beam_stop_mask
    assert mask[18, 20] and mask[19, 20]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"navigation_shape": (4,)}, ValueError, "navigation_shape"),
        ({"navigation_shape": (0, 4)}, ValueError, "navigation_shape"),
        ({"detector_shape": (8, 128)}, ValueError, "detector_shape must be a tuple of two"),
        ({"detector_shape": (64.0, 64)}, ValueError, "detector_shape"),
        ({"dose": 0}, ValueError, "dose must be a positive"),
        ({"dose": "a lot"}, TypeError, "dose"),
        ({"gain": -4.2}, ValueError, "gain must be a positive"),
        ({"scale": np.inf}, ValueError, "scale"),
        ({"ellipticity": -0.1}, ValueError, r"ellipticity must be in \[0, 1\)"),
        ({"ellipticity": 1.0}, ValueError, r"ellipticity must be in \[0, 1\)"),
        ({"rotation": np.nan}, ValueError, "rotation"),
        ({"dtype": "complex64"}, TypeError, "dtype must be a numpy float or integer"),
        ({"dtype": "not-a-dtype"}, TypeError, "dtype"),
        ({"dtype": bool}, TypeError, "dtype"),
        ({"seed": -1}, TypeError, "seed must be a non-negative integer"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"center": (200, 10)}, ValueError, "center must lie on the detector"),
        ({"center": (1, 2, 3)}, ValueError, "center"),
        ({"lazy": True, "chunks": (2, 2, 32, 32)}, ValueError, "whole scan rows"),
        ({"lazy": True, "chunks": 0}, ValueError, "chunks"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        synthetic_fem(**{"navigation_shape": (3, 3), "detector_shape": (32, 32), **kwargs})


# -------------------------------------------------------------------------- real datasets


@pytest.fixture
def zspy(tmp_path):
    """A small dataset saved as a zipped ``.zspy`` store in ``tmp_path/remote``.

    The Zenodo files are zarr stores in zip archives; a directory store zipped with relative
    member names is the same thing. Returns (path, signal, md5).
    """
    s = synthetic_fem(**SMALL)
    store = tmp_path / "store.zspy"
    with warnings.catch_warnings():  # rosettasciio's zspy writer uses a zarr-2 API zarr deprecates
        warnings.simplefilter("ignore", FutureWarning)
        s.save(store)
    remote = tmp_path / "remote"
    remote.mkdir()
    path = remote / "pos1-1.zspy"
    with zipfile.ZipFile(path, "w") as zf:
        for member in sorted(store.rglob("*")):
            if member.is_file():
                zf.write(member, member.relative_to(store).as_posix())
    return path, s, hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("FEMLIB_DATA_DIR", str(folder))
    return folder


@pytest.fixture
def server(zspy, monkeypatch):
    """A local HTTP server standing in for Zenodo, serving the ``remote`` folder."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(zspy[0].parent), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(_real, "_BASE_URL", f"http://127.0.0.1:{httpd.server_port}/")
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_registry_drives_pooch(monkeypatch):
    """Each loader asks pooch for its own registered file at its Zenodo download URL."""
    registry = _real._pooch()
    assert registry.registry == _real._REGISTRY
    assert len(set(_real._REGISTRY.values())) == 3
    assert all(h.startswith("md5:") and len(h) == 4 + 32 for h in _real._REGISTRY.values())
    for name in _real._REGISTRY:
        assert registry.get_url(name) == (
            f"https://zenodo.org/records/15490547/files/{name}?download=1"
        )
    asked = []
    monkeypatch.setattr(_real, "_load", lambda name, allow_download, **kw: asked.append(name))
    for func in (femlib.data.zrcual_1, femlib.data.zrcual_2, femlib.data.zrcual_3):
        func()
    assert asked == ["pos1-1.zspy", "pos5-1.zspy", "pos6-1.zspy"]


def test_cache_folder_from_environment(cache, monkeypatch):
    assert _real._data_dir() == cache
    monkeypatch.delenv("FEMLIB_DATA_DIR")
    assert _real._data_dir().name == "femlib"


@pytest.mark.parametrize(
    ("func", "name"),
    [
        (femlib.data.zrcual_1, "pos1-1.zspy"),
        (femlib.data.zrcual_2, "pos5-1.zspy"),
        (femlib.data.zrcual_3, "pos6-1.zspy"),
    ],
)
def test_missing_file_without_download(cache, func, name):
    with pytest.raises(FileNotFoundError) as info:
        func()
    message = str(info.value)
    for text in (name, str(cache), "allow_download=True", "FEMLIB_DATA_DIR", "15490547"):
        assert text in message
    assert not cache.exists() or not any(cache.iterdir())


@pytest.mark.parametrize("lazy", [False, True])
def test_load_cached_file(cache, zspy, monkeypatch, lazy):
    path, ref, md5 = zspy
    data = ref.data
    cache.mkdir()
    (cache / "pos1-1.zspy").write_bytes(path.read_bytes())
    monkeypatch.setitem(_real._REGISTRY, "pos1-1.zspy", f"md5:{md5}")
    s = femlib.data.zrcual_1(lazy=lazy)
    assert type(s) is (LazyFEMDiffraction2D if lazy else FEMDiffraction2D)
    np.testing.assert_array_equal(np.asarray(s.data), data)
    assert s.axes_manager.signal_shape == (40, 32)
    assert s.calibration.scale == pytest.approx(0.45) and s.calibration.units == "nm^-1"
    np.testing.assert_array_equal(
        s.metadata.HAADF.intensity, ref.metadata.HAADF.intensity
    )
    np.testing.assert_allclose(np.asarray(s.metadata.Simulation.center), [19.771875, 15.3275])
    stamp = json.loads((cache / "pos1-1.zspy.verified").read_text())
    assert stamp["hash"] == f"md5:{md5}"
    # second load goes through the stamp, without re-hashing
    monkeypatch.setattr("pooch.file_hash", lambda *a, **k: pytest.fail("re-hashed"))
    np.testing.assert_array_equal(np.asarray(femlib.data.zrcual_1(lazy=lazy).data), data)


def test_cached_file_with_wrong_hash(cache, zspy):
    path, _, _ = zspy
    cache.mkdir()
    (cache / "pos1-1.zspy").write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match="does not match its md5:2195347310aa"):
        femlib.data.zrcual_1()


def test_changed_file_is_hashed_again(cache, zspy, monkeypatch):
    path, _, md5 = zspy
    cache.mkdir()
    cached = cache / "pos1-1.zspy"
    cached.write_bytes(path.read_bytes())
    monkeypatch.setitem(_real._REGISTRY, "pos1-1.zspy", f"md5:{md5}")
    femlib.data.zrcual_1()
    raw = bytearray(cached.read_bytes())
    raw[-30] ^= 0xFF  # same size, other content
    cached.write_bytes(bytes(raw))
    st = cached.stat()
    os.utime(cached, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match="checksum"):
        femlib.data.zrcual_1()


def test_download(cache, zspy, server, monkeypatch):
    path, ref, md5 = zspy
    monkeypatch.setitem(_real._REGISTRY, "pos1-1.zspy", f"md5:{md5}")
    s = femlib.data.zrcual_1(allow_download=True)
    np.testing.assert_array_equal(s.data, ref.data)
    assert (cache / "pos1-1.zspy").read_bytes() == path.read_bytes()
    assert (cache / "pos1-1.zspy.verified").is_file()


def test_download_with_wrong_hash(cache, zspy, server):
    with pytest.raises(ValueError, match="download of pos1-1.zspy .* does not match"):
        femlib.data.zrcual_1(allow_download=True)
    assert not (cache / "pos1-1.zspy").exists()


def test_download_network_failure(cache, monkeypatch):
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(_real, "_BASE_URL", f"http://127.0.0.1:{port}/")
    with pytest.raises(ConnectionError, match="could not download pos6-1.zspy"):
        femlib.data.zrcual_3(allow_download=True)


# ------------------------------------------------------------------------- bad input


def test_data_not_cached_without_download(monkeypatch, tmp_path):
    monkeypatch.setenv("FEMLIB_DATA_DIR", str(tmp_path))
    with pytest.raises(
        FileNotFoundError,
        match=re.escape(
            f"pos1-1.zspy (ZrCuAl metallic glass, Zenodo record 15490547) is not in the femlib "
            f"data cache {tmp_path}. Pass allow_download=True"
        ),
    ) as info:
        femlib.data.zrcual_1()
    assert "FEMLIB_DATA_DIR" in str(info.value)


def test_data_bad_checksum(monkeypatch, tmp_path):
    monkeypatch.setenv("FEMLIB_DATA_DIR", str(tmp_path))
    (tmp_path / "pos5-1.zspy").write_text("not the dataset")
    with pytest.raises(
        ValueError,
        match=re.escape(f"the cached file {tmp_path / 'pos5-1.zspy'} does not match its md5:"),
    ):
        femlib.data.zrcual_2()


@pytest.mark.parametrize(
    "raised, exc, message",
    [
        (OSError("no route to host"), ConnectionError, "could not download pos6-1.zspy"),
        (ValueError("MD5 hash of downloaded file"), ValueError, "the download of pos6-1.zspy from"),
    ],
)
def test_data_failed_download(monkeypatch, tmp_path, raised, exc, message):
    import pooch

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setenv("FEMLIB_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(pooch.Pooch, "fetch", fail)
    with pytest.raises(exc, match=re.escape(message)):
        femlib.data.zrcual_3(allow_download=True)


@pytest.mark.parametrize(
    "kw, exc, message",
    [
        (
            {"navigation_shape": (0, 3)},
            ValueError,
            "navigation_shape must be a tuple of two integers >= 1 (rows, columns), got (0, 3)",
        ),
        ({"dose": -1}, ValueError, "dose must be a positive finite number, got -1.0"),
        ({"gain": 0}, ValueError, "gain must be a positive finite number, got 0.0"),
        ({"scale": 0}, ValueError, "scale must be a positive finite number, got 0.0"),
        ({"ellipticity": 1}, ValueError, "ellipticity must be in [0, 1), got 1.0"),
        ({"center": (1000, 1)}, ValueError, "center must lie on the detector"),
        ({"chunks": (0, 3)}, ValueError, "chunks must be None, an int"),
        ({"gain": "a"}, TypeError, "gain must be a positive real number, got 'a'"),
        ({"dtype": "complex64"}, TypeError, "dtype must be a numpy float or integer dtype"),
        ({"seed": "a"}, TypeError, "seed must be a non-negative integer or None, got 'a'"),
    ],
)
def test_synthetic_fem_bad_parameters(kw, exc, message):
    kw = {"navigation_shape": (2, 2), "detector_shape": (32, 32), **kw}
    with pytest.raises(exc, match=re.escape(message)):
        femlib.data.synthetic_fem(**kw)


# ----------------------------------------------------------------------------- artefacts
ART = {"navigation_shape": (6, 5), "detector_shape": (48, 48)}


def test_artefacts_default_is_the_clean_scan_and_truth_is_stored():
    clean = synthetic_fem(**ART)
    sim = clean.metadata.Simulation
    assert not sim.crystals.any() and not sim.outliers.any() and sim.hot_pixels.shape == (0, 2)
    np.testing.assert_array_equal(sim.centers, np.broadcast_to(sim.center, (6, 5, 2)))
    np.testing.assert_array_equal(sim.descan, [0.0, 0.0])
    np.testing.assert_array_equal(sim.bad_pixels, _dead_mask(sim))
    again = synthetic_fem(descan=None, crystals=0.0, hot_pixels=0, **ART)
    np.testing.assert_array_equal(again.data, clean.data)


def _dead_mask(sim):
    m = np.zeros(sim.beam_stop_mask.shape, bool)
    x, y = sim.dead_pixels.T
    m[y, x] = True
    return m


def test_hot_pixels_only_touch_their_pixels():
    clean = synthetic_fem(**ART)
    hot = synthetic_fem(hot_pixels=5, **ART)
    sim = hot.metadata.Simulation
    changed = (hot.data != clean.data).any(axis=(0, 1))
    np.testing.assert_array_equal(changed, sim.hot_pixel_mask)
    x, y = sim.hot_pixels.T
    k = np.hypot(*(sim.affine[:2, :2] @ np.stack([x - sim.center[0], y - sim.center[1]])))
    assert (k * sim.scale >= 3.0).all() and (k * sim.scale <= 5.75).all()
    offsets = (hot.data - clean.data)[..., y, x].reshape(-1, 5)
    for j, a in enumerate(sim.hot_pixel_amplitude):  # telegraph: 0 or the amplitude
        assert np.allclose(np.unique(offsets[:, j].round(2)), [0, round(a, 2)], atol=0.02) or \
            np.allclose(np.unique(offsets[:, j].round(2)), [round(a, 2)], atol=0.02)


def test_descan_centres_are_a_plane_with_the_far_corner_shift():
    s = synthetic_fem(descan=(3.0, -2.0), **ART)
    sim = s.metadata.Simulation
    c = sim.centers
    np.testing.assert_allclose(c[-1, -1] - c[0, 0], [3.0, -2.0])
    np.testing.assert_allclose(c[0, 0], sim.center)
    np.testing.assert_allclose(sim.descan, [3.0, -2.0])
    # a plane: second differences vanish
    np.testing.assert_allclose(np.diff(c, 2, axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(np.diff(c, 2, axis=1), 0, atol=1e-12)
    # the pattern moves, the beam stop does not: the first frame's ring is centred on c[0,0]
    far = synthetic_fem(descan=(3.0, -2.0), modulation=False, **{**ART, "navigation_shape": (2, 2)})
    assert far.metadata.Simulation.beam_stop_mask.sum() == sim.beam_stop_mask.sum()
    d = np.abs(synthetic_fem(descan=1.5, **ART).metadata.Simulation.descan)
    np.testing.assert_allclose(np.hypot(*d), 1.5)


def test_crystals_are_bragg_spots_on_the_ring():
    kw = {**ART, "detector_shape": (80, 80)}  # the ring (30.7 px) on the detector
    clean = synthetic_fem(**kw)
    s = synthetic_fem(crystals=0.2, **kw)
    sim = s.metadata.Simulation
    assert sim.crystals.sum() == 6 and (sim.outliers == sim.crystals).all()
    extra = s.data.astype(float) - clean.data
    quiet = ~sim.crystals.any(axis=1)  # each scan row has its own generator
    assert quiet.any() and np.abs(extra[quiet]).max() == 0
    gain = sim.gain
    spot = extra[sim.crystals].reshape(6, -1).sum(1) / gain
    assert (spot > 1000).all()  # thousands of electrons in the spots


@pytest.mark.parametrize("lazy_chunks", [1, 4])
def test_artefacts_lazy_equals_eager(lazy_chunks):
    kw = {"descan": 2.0, "crystals": 0.1, "hot_pixels": 3, **ART}
    eager = synthetic_fem(**kw)
    lazy = synthetic_fem(lazy=True, chunks=lazy_chunks, **kw)
    np.testing.assert_array_equal(lazy.data.compute(), eager.data)


def test_artefacts_bad_input():
    with pytest.raises(ValueError, match="larger than this detector allows"):
        synthetic_fem(descan=20.0, **ART)
    with pytest.raises(TypeError, match="descan"):
        synthetic_fem(descan=(1.0, 2.0, 3.0), **ART)
    with pytest.raises(ValueError, match="crystals"):
        synthetic_fem(crystals=1.5, **ART)
    with pytest.raises(TypeError, match="hot_pixels"):
        synthetic_fem(hot_pixels=-1, **ART)
