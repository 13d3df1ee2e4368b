"""Shared helpers of the femlib benchmark scripts (not a benchmark itself).

Synthetic data, the detector mask, best-of-N timing, peak-memory polling and table
printing. Every script prints its figures next to a same-run reference (a plain read pass
of the same array), never asserts on a time.
"""

import os
import platform
import threading
import time

import numpy as np

GAIN = 4.2  # detector units per electron of the synthetic data
SCALE = 0.14  # nm^-1 per pixel
CENTER = (64.3, 62.7)  # (x, y) pixels on a 128 x 128 detector
RADIAL_RANGE = (3.0, 5.75)  # nm^-1


# ----------------------------------------------------------------------------- environment
def load_average():
    """The 1, 5 and 15 minute load averages as a string (the machine may be shared)."""
    try:
        one, five, fifteen = os.getloadavg()
        return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"
    except OSError:  # pragma: no cover - not on every platform
        return "load average n/a"


def header(title, argv_line):
    """Print what ran, where, and how busy the machine was."""
    import dask
    import numba

    import femlib

    print(f"# {title}")
    print(f"# command : {argv_line}")
    print(
        f"# machine : {platform.node()} | {os.cpu_count()} cores | {load_average()} | "
        f"python {platform.python_version()}"
    )
    print(
        f"# versions: femlib {femlib.__version__}, numpy {np.__version__}, numba "
        f"{numba.__version__} (serial kernels, parallel through dask), dask "
        f"{dask.__version__}"
    )
    print()


# ----------------------------------------------------------------------------- data
def _profile(r):
    """Mean counts per pixel (electrons) at radius ``r`` (nm^-1) of an amorphous pattern."""
    beam = 400.0 * np.exp(-0.5 * (r / 0.5) ** 2)
    background = 6.0 * np.exp(-r / 4.0)
    rings = 3.0 * np.exp(-0.5 * ((r - 4.1) / 0.35) ** 2) + 1.5 * np.exp(
        -0.5 * ((r - 7.2) / 0.5) ** 2
    )
    return beam + background + rings + 0.5


def mean_pattern(shape=(128, 128), center=CENTER, scale=SCALE):
    """(rows, cols) float64 mean electron counts of the synthetic amorphous pattern."""
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx]
    r = np.hypot(x - center[0], y - center[1]) * scale
    return _profile(r)


def speckle_basis(shape=(128, 128), center=CENTER, scale=SCALE, n=8, seed=1):
    """(n, P) float32 zero-mean speckle patterns: angular modulations of the rings."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx]
    dx, dy = x - center[0], y - center[1]
    r = np.hypot(dx, dy) * scale
    phi = np.arctan2(dy, dx)
    ring = 3.0 * np.exp(-0.5 * ((r - 4.1) / 0.35) ** 2)
    # Per-frame ring-intensity changes (what Omega sees) and angular speckle (what the
    # ring mean averages away but r and VImage see).
    basis = [ring, 1.5 * np.exp(-0.5 * ((r - 7.2) / 0.5) ** 2)]
    for i in range(n - 2):
        m = 2 + 2 * i
        basis.append(ring * np.cos(m * phi + rng.uniform(0, 2 * np.pi)))
    return np.asarray(basis, dtype=np.float32).reshape(n, -1)


def synthetic_frames(n_frames, shape=(128, 128), gain=GAIN, seed=0, block=1024):
    """Seeded "Poisson-ish" frames, float32 ``(n_frames, rows, cols)`` in detector units.

    ``D = G * (mu_n + sqrt(mu_n) z)`` with ``mu_n`` the mean pattern plus a random mix of
    speckle patterns (so the variance is non-zero and k-dependent) and ``z`` standard
    normal: the normal approximation of Poisson noise, ~10x cheaper to draw than Poisson.
    Generated in blocks so temporaries stay small.
    """
    rng = np.random.default_rng(seed)
    mu = mean_pattern(shape).astype(np.float32).ravel()
    basis = speckle_basis(shape)
    out = np.empty((n_frames, mu.size), dtype=np.float32)
    for i in range(0, n_frames, block):
        n = min(block, n_frames - i)
        coef = rng.standard_normal((n, basis.shape[0]), dtype=np.float32) * 0.15
        m = mu + coef @ basis
        np.maximum(m, 0.0, out=m)
        z = rng.standard_normal((n, mu.size), dtype=np.float32)
        z *= np.sqrt(m)
        z += m
        np.maximum(z, 0.0, out=z)
        z *= gain
        out[i : i + n] = z
    return out.reshape((n_frames,) + tuple(shape))


ISSUE_SCALE = 0.1  # nm^-1 per pixel of the issue-13 dataset
ISSUE_CENTER = (63.5, 63.5)


def issue_frames(n_frames, shape=(128, 128), gain=GAIN, seed=0, block=1024):
    """The independent dataset of issue 13: Poisson counts times ``gain``, float32.

    ``(n_frames, 128, 128)`` (1 GiB for 16384 frames), centre (63.5, 63.5) px, scale
    0.1 nm^-1/px: ``D = G * Poisson(mu_n)``, ``mu_n`` the amorphous mean pattern with a
    random mix of speckle patterns (true Poisson, not the normal approximation).
    """
    rng = np.random.default_rng(seed)
    mu = mean_pattern(shape, ISSUE_CENTER, ISSUE_SCALE).astype(np.float32).ravel()
    basis = speckle_basis(shape, ISSUE_CENTER, ISSUE_SCALE)
    out = np.empty((n_frames, mu.size), dtype=np.float32)
    for i in range(0, n_frames, block):
        n = min(block, n_frames - i)
        coef = rng.standard_normal((n, basis.shape[0]), dtype=np.float32) * 0.15
        m = mu + coef @ basis
        np.maximum(m, 0.0, out=m)
        out[i : i + n] = rng.poisson(m).astype(np.float32) * np.float32(gain)
    return out.reshape((n_frames,) + tuple(shape))


def dataset(name, n_frames, shape=(128, 128)):
    """``(data, mask, center, scale, description)`` of a named benchmark dataset.

    ``"femlib"``: :func:`synthetic_frames` (normal approximation of Poisson), centre
    (64.3, 62.7) px, scale 0.14 nm^-1/px. ``"issue"``: :func:`issue_frames` (Poisson x 4.2,
    centre (63.5, 63.5), scale 0.1 nm^-1/px), the dataset of issue 13. Both with the
    beam-stop mask of :func:`detector_mask`.
    """
    if name == "issue":
        center = (ISSUE_CENTER[0] * shape[1] / 128, ISSUE_CENTER[1] * shape[0] / 128)
        data = issue_frames(n_frames, shape)
        scale = ISSUE_SCALE * 128 / shape[0]
        what = "Poisson x 4.2 (issue 13's dataset)"
    else:
        center = (CENTER[0] * shape[1] / 128, CENTER[1] * shape[0] / 128)
        data = synthetic_frames(n_frames, shape)
        scale = SCALE * 128 / shape[0]
        what = "normal approximation of Poisson x 4.2"
    return data, detector_mask(shape, center), center, scale, what


def detector_mask(shape=(128, 128), center=CENTER, beam_stop=10.0, arm_width=6.0):
    """Beam-stop mask: a disk of ``beam_stop`` px at the centre and its arm toward +x.

    Returns
    -------
    (rows, cols) bool ndarray, True = excluded.
    """
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx]
    disk = np.hypot(x - center[0], y - center[1]) <= beam_stop
    arm = (x >= center[0]) & (np.abs(y - center[1]) <= arm_width / 2)
    return disk | arm


def make_signal(data, lazy=False, center=CENTER, scale=SCALE):
    """An ``FEMDiffraction2D`` (or lazy twin) over ``data`` (N, rows, cols) with a 2D scan."""
    import hyperspy.api as hs

    n = data.shape[0]
    side = int(round(np.sqrt(n)))
    nav = (side, n // side) if side * (n // side) == n else (n,)
    s = hs.signals.Signal2D(data.reshape(nav + data.shape[-2:]))
    if lazy:
        s = s.as_lazy()
    s.set_signal_type("fem_diffraction")
    for ax in s.axes_manager.signal_axes:
        ax.scale = scale
        ax.units = "nm^-1"
    s.calibration.center = center
    s.metadata.General.title = "synthetic"
    return s


# ----------------------------------------------------------------------------- timing
def best_of(fn, repeats=3):
    """Run ``fn`` ``repeats`` times; return (best seconds, list of all seconds)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), times


def best_of_cpu(fn, repeats=3):
    """Like :func:`best_of`, plus the mean (user, system) CPU seconds per call.

    A large system time means page faults: fresh memory for results and temporaries,
    which on a virtual machine can cost more than the computation.
    """
    import resource

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    best, times = best_of(fn, repeats)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return (
        best,
        times,
        (
            (r1.ru_utime - r0.ru_utime) / repeats,
            (r1.ru_stime - r0.ru_stime) / repeats,
        ),
    )


def timed(fn):
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class PeakRSS:
    """Context manager polling this process's RSS in a thread; ``.peak`` and ``.extra``.

    ``extra`` is the peak minus the RSS on entry: the transient memory of the block
    (temporaries, results), to within the polling interval.
    """

    def __init__(self, interval=0.005):
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self.start = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def extra(self):
        return self.peak - self.start


def mib(nbytes):
    return nbytes / 2**20


# ----------------------------------------------------------------------------- tables
def print_table(columns, rows):
    """Print ``rows`` (lists of already-formatted strings) under ``columns``, aligned."""
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]
    line = "  ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)))
    print()


def verdict(ratio, target):
    """``ok`` when ``ratio <= target``, else ``MISSED`` (informational, never an assert)."""
    return "ok" if ratio <= target else "MISSED"


_JIT_CALLS = r"""
import numpy as np
from femlib import integration, moments

w1 = integration.build_weights((32, 32), (15.5, 15.5), npt=8, radial_range=(0, 15))
w2 = integration.build_weights((32, 32), (15.5, 15.5), npt=64, npt_azim=64)


def jit_calls(dtype):
    f = np.ones((8, 32, 32), dtype=dtype)
    sw = 4.2 * w1.squared
    return {
        "integrate 1D (FEM-pass kernel)": lambda: integration.integrate(f, w1),
        "integrate 2D (polar kernel)": lambda: integration.integrate(f, w2),
        "FEM pass, Omega": lambda: moments.accumulate_moments(f, w1, shot_weights=sw),
        "FEM pass, all methods": lambda: moments.accumulate_moments(
            f, w1, shot_weights=sw, methods=("Omega", "r", "re", "VImage")),
    }
"""

_COLD_JIT = _JIT_CALLS + r"""
import json, sys, time
out = {}
for name, call in jit_calls(np.dtype(sys.argv[1])).items():
    t0 = time.perf_counter()
    call()
    out[name] = time.perf_counter() - t0
print(json.dumps(out))
"""


def cold_jit_seconds(dtype="float32"):
    """Compile time of each kernel path for ``dtype`` frames, from an empty numba cache.

    Runs in a subprocess whose ``NUMBA_CACHE_DIR`` is a fresh temporary directory, so
    nothing is loaded from femlib's on-disk cache. Returns ``{path: seconds}`` or None.
    """
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="femlib-jit-") as tmp:
        env = dict(os.environ, NUMBA_CACHE_DIR=tmp)
        res = subprocess.run(
            [sys.executable, "-c", _COLD_JIT, str(np.dtype(dtype))],
            env=env,
            capture_output=True,
            text=True,
        )
    if res.returncode:
        print(res.stderr[-2000:])
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def warm_kernels(dtype="float32"):
    """First call of each kernel path in this process (cache load or compile): {name: s}."""
    scope = {}
    exec(_JIT_CALLS, scope)  # noqa: S102 - our own constant source, shared with the subprocess
    return {name: timed(call)[0] for name, call in scope["jit_calls"](np.dtype(dtype)).items()}


def print_jit(dtype, cold=True):
    """Print the JIT table: first call in this process, and a cold compile (subprocess)."""
    warm = warm_kernels(dtype)
    coldt = cold_jit_seconds(dtype) if cold else None
    rows = []
    for name, t in warm.items():
        c = "skipped" if coldt is None else f"{coldt[name]:.2f} s"
        rows.append([name, str(np.dtype(dtype)), f"{t:.2f} s", c])
    print("JIT (not included in any timing below)")
    print_table(["kernel", "frames dtype", "first call here", "cold compile (empty cache)"], rows)
