"""Out-of-core throughput and peak memory: a dataset on disk, streamed through dask.

Reproduce with::

    python benchmarks/bench_out_of_core.py --size-gb 2
    python benchmarks/bench_out_of_core.py --size-gb 8 --repeats 1

(``--help`` for every option; the files go to a temporary directory under ``--path`` and
are deleted at the end unless ``--keep``.)

Steps, each in a FRESH Python subprocess so that its peak RSS is its own:

0. write: a synthetic 4D-STEM dataset of uint16 counts (256 x 256 detector by default,
   navigation ``(N / 128, 128)``) is built as a random dask array, chunk by chunk, and
   saved with ``LazySignal2D.save(..., chunks=...)`` (whole frames, ``--chunk-mb`` MiB
   per chunk), so the writer never holds the dataset in memory. ``.zspy`` by default;
   if RosettaSciIO's zspy writer is unusable (it needs zarr < 3), ``.hspy`` (HDF5,
   uncompressed) is used instead and the reason is printed.
1. read pass (the reference): ``da.sum`` of ``hs.load(path, lazy=True).data`` over the
   navigation axes (for information also ``da.max``, which skips numpy's uint16 -> uint64
   upcast of the sum and is closer to pure read + decompression);
2. ``hs.load(path, lazy=True, signal_type="fem_diffraction")``, ``calibration.center``,
   ``get_variance(npt=50, gain=1, radial_range=(3.0, 5.75), mask=mask, method="all",
   thickness=<linear ramp over the scan>, bins=4)`` (and the same with ``Omega`` only);
3. ``get_azimuthal_integral1d(npt=50)`` then ``.data.sum(axis=navigation).compute()``.

Each step makes a warm-up call on a one-chunk slice (numba kernels, imports), then takes
the best of ``--repeats`` full passes. Reported: wall time, throughput (uncompressed GiB
per second), the ratio to the read pass, the RSS before computing and the process's peak
RSS (``ru_maxrss``, which includes Python, HyperSpy and numba themselves). Targets: peak
RSS < 1.5 GB and throughput within 2x of the read pass.

By default the page cache is warm (the file was just written and fits in RAM), which is
the hardest comparison for femlib: the read pass is then pure memory bandwidth plus
decompression. ``--cache cold`` drops the file's pages (``posix_fadvise DONTNEED``)
before every timed pass to include the disk. Timings on a shared 2-core machine are
noisy: the load average is printed. Nothing here asserts on a time.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import _common as C
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
NAV_X = 128  # scan width; the scan height follows from the size


# ----------------------------------------------------------------------------- geometry
def _geometry(detector):
    """Centre (x, y) px, scale nm^-1/px and mask for a ``detector`` x ``detector`` frame."""
    f = detector / 128
    center = (C.CENTER[0] * f, C.CENTER[1] * f)
    scale = C.SCALE / f
    mask = C.detector_mask((detector, detector), center, beam_stop=10 * f, arm_width=6 * f)
    return center, scale, mask


def _layout(size_gb, detector, chunk_mb):
    frame_bytes = detector * detector * 2
    n = max(NAV_X, int(size_gb * 1e9 // frame_bytes) // NAV_X * NAV_X)
    nav = (n // NAV_X, NAV_X)
    per_chunk = max(1, int(chunk_mb * 2**20 // frame_bytes))
    if per_chunk >= NAV_X:
        chunk_nav = (max(1, per_chunk // NAV_X), NAV_X)
    else:
        chunk_nav = (1, per_chunk)
    return nav, chunk_nav + (detector, detector)


# ----------------------------------------------------------------------------- children
def _rss_now():
    import psutil

    return psutil.Process().memory_info().rss


def _peak_rss():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _data_files(path):
    if os.path.isfile(path):
        return [path]
    out = []
    for root, _, files in os.walk(path):
        out += [os.path.join(root, f) for f in files]
    return out


def _drop_cache(path):
    """Ask the kernel to drop the file's clean pages (no root needed, no other file hit)."""
    for f in _data_files(path):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _block_frames(block, block_info=None, mu=None, seed=0):
    """One chunk of uint16 counts: mean pattern x per-frame ring scale, + Poisson-ish noise."""
    loc = block_info[None]["chunk-location"]
    rng = np.random.default_rng([seed, *loc])
    shape = block.shape
    n = int(np.prod(shape[:-2]))
    out = np.empty((n,) + shape[-2:], dtype=np.uint16)
    scale = 1.0 + 0.05 * rng.standard_normal(n).astype(np.float32)
    for i in range(n):  # frame by frame: temporaries stay one frame small
        m = mu * scale[i]
        z = rng.standard_normal(m.shape, dtype=np.float32)
        z *= np.sqrt(m)
        z += m
        np.clip(z, 0, 65535, out=z)
        out[i] = np.rint(z)
    return out.reshape(shape)


def child_write(a):
    import dask.array as da
    import hyperspy.api as hs

    nav, chunks = _layout(a.size_gb, a.detector, a.chunk_mb)
    center, scale, _ = _geometry(a.detector)
    mu = C.mean_pattern((a.detector, a.detector), center, scale).astype(np.float32)
    shape = nav + (a.detector, a.detector)
    template = da.empty(shape, chunks=chunks, dtype=np.uint16)
    darr = template.map_blocks(_block_frames, mu=mu, dtype=np.uint16)
    s = hs.signals.LazySignal2D(darr)
    for ax in s.axes_manager.signal_axes:
        ax.scale = scale
        ax.units = "nm^-1"
    s.metadata.General.title = "synthetic"
    note = ""
    t0 = time.perf_counter()
    target = a.file
    if a.format == "zspy":
        try:
            s.save(target, chunks=chunks, overwrite=True, show_progressbar=False)
        except Exception as exc:  # RosettaSciIO's zspy writer needs zarr < 3
            import zarr

            shutil.rmtree(target, ignore_errors=True)
            note = (
                f"zspy writer unusable ({type(exc).__name__}: {exc}; zarr {zarr.__version__}); "
                "fell back to .hspy (HDF5, uncompressed)"
            )
            target = os.path.splitext(target)[0] + ".hspy"
            t0 = time.perf_counter()
    if target.endswith(".hspy"):
        comp = None if a.compression == "none" else "gzip"
        s.save(target, chunks=chunks, compression=comp, overwrite=True, show_progressbar=False)
    t = time.perf_counter() - t0
    disk = sum(os.path.getsize(f) for f in _data_files(target))
    return {
        "file": target,
        "seconds": t,
        "nbytes": int(np.prod(shape)) * 2,
        "disk": disk,
        "shape": shape,
        "chunks": chunks,
        "peak_rss": _peak_rss(),
        "note": note,
    }


def _load(path, fem):
    import hyperspy.api as hs

    kw = {"signal_type": "fem_diffraction"} if fem else {}
    return hs.load(path, lazy=True, **kw)


def child_step(a):
    import dask.array as da
    import hyperspy.api as hs  # noqa: F401

    step = a._child
    out = {"step": step}
    if not step.startswith("read"):
        t, _ = C.timed(lambda: C.warm_kernels("uint16"))
        out["jit_first_call"] = t

    s = _load(a.file, fem=not step.startswith("read"))
    nav_ndim = s.axes_manager.navigation_dimension
    nav_axes = tuple(range(nav_ndim))
    detector = s.axes_manager.signal_shape[0]
    center, _, mask = _geometry(detector)
    nav_shape = s.data.shape[:nav_ndim]
    thickness = np.linspace(20.0, 60.0, int(np.prod(nav_shape))).reshape(nav_shape)
    chunk_rows = s.data.chunks[0][0]
    if not step.startswith("read"):
        s.calibration.center = center

    def _computed(v):
        v.compute(show_progressbar=False)  # lazy input gives a lazy V(k)
        return v

    def run(sig, thick):
        if step == "read":
            return da.sum(sig.data, axis=nav_axes).compute()
        if step == "read_max":
            return da.max(sig.data, axis=nav_axes).compute()
        if step == "variance_all":
            return _computed(sig.get_variance(
                npt=50,
                gain=1.0,
                radial_range=C.RADIAL_RANGE,
                mask=mask,
                method="all",
                thickness=thick,
                bins=4,
                show_progressbar=False,
            ))
        if step == "variance_omega":
            return _computed(sig.get_variance(
                npt=50, gain=1.0, radial_range=C.RADIAL_RANGE, mask=mask, show_progressbar=False
            ))
        if step == "integral1d":
            az = sig.get_azimuthal_integral1d(npt=50, show_progressbar=False)
            return az.data.sum(axis=nav_axes).compute()
        raise ValueError(step)

    # Warm-up on the first chunk row of the scan: imports, numba, W (cached in-process).
    part = s.inav[:, :chunk_rows] if nav_ndim == 2 else s.inav[:chunk_rows]
    t_warm, _ = C.timed(lambda: run(part, thickness[:chunk_rows]))
    out["warmup"] = t_warm
    out["rss_before"] = _rss_now()
    import resource

    times, cpu = [], []
    for _ in range(a.repeats):
        if a.cache == "cold":
            _drop_cache(a.file)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t, res = C.timed(lambda: run(s, thickness))
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        times.append(t)
        cpu.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
        del res
    out["times"] = times
    out["cpu"] = cpu
    out["peak_rss"] = _peak_rss()
    return out


# ----------------------------------------------------------------------------- parent
def _spawn(args, child, extra=()):
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--_child",
        child,
        "--file",
        args.file,
        "--size-gb",
        str(args.size_gb),
        "--detector",
        str(args.detector),
        "--chunk-mb",
        str(args.chunk_mb),
        "--repeats",
        str(args.repeats),
        "--format",
        args.format,
        "--compression",
        args.compression,
        "--cache",
        args.cache,
        *extra,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
    if res.returncode:
        sys.stderr.write(res.stderr[-4000:])
        raise SystemExit(f"child {child!r} failed with exit code {res.returncode}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gb", type=float, default=2.0, help="dataset size in GB (2)")
    p.add_argument("--path", default=None, help="directory for the dataset (a tmp dir)")
    p.add_argument(
        "--detector", type=int, default=256, choices=(128, 256), help="detector side (256)"
    )
    p.add_argument("--chunk-mb", type=float, default=32, help="MiB per chunk (32)")
    p.add_argument("--repeats", type=int, default=3, help="best of N (3)")
    p.add_argument("--format", choices=("zspy", "hspy"), default="zspy")
    p.add_argument(
        "--compression",
        choices=("none", "default"),
        default="none",
        help="hspy only: none or gzip (zspy always uses its Blosc default)",
    )
    p.add_argument(
        "--cache",
        choices=("warm", "cold"),
        default="warm",
        help="page cache before each timed pass (warm)",
    )
    p.add_argument("--keep", action="store_true", help="keep the dataset")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--file", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._child:
        res = child_write(args) if args._child == "write" else child_step(args)
        print(json.dumps(res))
        return

    C.header("femlib out of core", " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv))
    base = args.path or tempfile.gettempdir()
    os.makedirs(base, exist_ok=True)
    need = args.size_gb * 1e9 * 1.1
    free = shutil.disk_usage(base).free
    if free < need:
        raise SystemExit(f"{base} has {free / 1e9:.1f} GB free, {need / 1e9:.1f} GB needed")
    workdir = tempfile.mkdtemp(prefix="femlib-bench-", dir=base)
    args.file = os.path.join(workdir, f"synthetic.{args.format}")
    try:
        _run(args, free)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(args, free):
    w = _spawn(args, "write")
    if w["note"]:
        print(f"NOTE: {w['note']}")
    args.file = w["file"]
    print(
        f"dataset: {w['file']}\n  shape {tuple(w['shape'])} uint16 = {w['nbytes'] / 1e9:.2f} GB "
        f"({w['disk'] / 1e9:.2f} GB on disk, {free / 1e9:.0f} GB were free), chunks "
        f"{tuple(w['chunks'])} = {np.prod(w['chunks']) * 2 / 2**20:.0f} MiB\n"
        f"  written in {w['seconds']:.1f} s ({w['nbytes'] / w['seconds'] / 2**30:.2f} GiB/s), "
        f"writer peak RSS {w['peak_rss'] / 2**20:.0f} MiB; page cache: {args.cache}"
    )
    print()
    steps = [
        ("read", "read pass  da.sum(hs.load(lazy).data, nav)", None),
        ("read_max", "(info) read pass  da.max(..., nav): no uint64 upcast", None),
        ("variance_all", 'get_variance(method="all", thickness, bins=4)', 2.0),
        ("variance_omega", "get_variance(npt=50, gain, radial_range, mask)  [Omega]", 1.2),
        ("integral1d", "get_azimuthal_integral1d(npt=50).data.sum(nav)", 2.0),
    ]
    rows = []
    ref = ref_cpu = None
    for key, name, target in steps:
        r = _spawn(args, key)
        best = min(r["times"])
        cpu = min(r["cpu"])
        if ref is None:
            ref, ref_cpu = best, cpu
        ratio = best / ref
        peak = r["peak_rss"]
        rows.append(
            [
                name,
                f"{best:.2f}",
                " ".join(f"{t:.2f}" for t in r["times"]),
                f"{r['warmup']:.2f}",
                f"{w['nbytes'] / best / 2**30:.2f}",
                f"{ratio:.2f}x",
                "-" if target is None else f"<= {target:g}x {C.verdict(ratio, target)}",
                f"{cpu:.2f} ({cpu / ref_cpu:.2f}x)",
                f"{r['rss_before'] / 2**20:.0f}",
                f"{peak / 2**20:.0f}",
                f"< 1.5 GB {C.verdict(peak / 1e9, 1.5)}",
            ]
        )
        print(f"  {key}: done ({C.load_average()})", flush=True)
    print()
    print(f"Out of core, {w['nbytes'] / 1e9:.1f} GB ({C.load_average()})")
    C.print_table(
        [
            "operation",
            "best s",
            "all s",
            "warm-up s",
            "GiB/s",
            "vs read",
            "target",
            "cpu s (vs read)",
            "RSS before MiB",
            "peak RSS MiB",
            "RSS target",
        ],
        rows,
    )
    print(
        "warm-up = the same operation on the first chunk row of the scan (numba kernels "
        "loaded, W built);\ncpu s = user + system CPU seconds of the fastest pass (all "
        "threads): less sensitive than wall time to other work on the machine;\n"
        "peak RSS = ru_maxrss of the step's own fresh process (interpreter + HyperSpy + "
        "numba + dask included)."
    )


if __name__ == "__main__":
    main()
