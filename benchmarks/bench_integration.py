"""Azimuthal integration throughput, weight-matrix build time, and numba vs scipy.sparse.

Reproduce with::

    python benchmarks/bench_integration.py                    # femlib's synthetic data
    python benchmarks/bench_integration.py --dataset issue    # issue 13's Poisson dataset

(``--frames 4096`` for a quick run; ``--help`` for every option.)

What is measured, each the best of ``--repeats`` calls after a warm-up call:

1. In memory, ``--frames`` (default 16384 = 128 x 128 scan) patterns of 128 x 128 float32,
   an ``FEMDiffraction2D`` with centre (64.3, 62.7) px, scale 0.14 nm^-1/px and a
   beam-stop mask (disk of 10 px + arm):

   * reference: a plain read pass of the same array, ``data.sum(axis=0)``;
   * ``get_azimuthal_integral1d(npt=50, radial_range=(3.0, 5.75), mask=mask)``;
     target: within 1.5x of the read pass;
   * ``get_azimuthal_integral2d(npt=100, npt_azim=360)``; target: within 6x (its output,
     100 x 360 float32 per frame, is 2.2x larger than the input). Two informational rows
     split its time: the numba kernel alone into a reused float64 buffer (the arithmetic),
     and ``np.ones`` of the result's shape (the floor set by writing the result).

2. Building the weight matrix W for a 256 x 256 detector from an empty cache
   (``femlib.integration._CACHE.clear()``): 1D npt=50 and 2D npt=100 x 360; target < 1 s.

3. The numba kernel against ``scipy.sparse`` (``frames @ W.matrix.T``) on a subset of
   ``--subset`` frames, for the 1D and 2D matrices: why the kernels are compiled.

JIT compile time is reported separately (first call in this process, and a cold compile in
a subprocess with an empty numba cache). Timings on a shared 2-core machine are noisy: the
load average is printed with the results. Nothing here asserts on a time.
"""

import argparse
import gc
import shlex
import sys

import _common as C
import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=16384, help="number of patterns (16384)")
    p.add_argument("--detector", type=int, default=128, help="detector side in pixels (128)")
    p.add_argument("--repeats", type=int, default=3, help="best of N (3)")
    p.add_argument("--subset", type=int, default=1024, help="frames for numba vs scipy (1024)")
    p.add_argument("--build-detector", type=int, default=256, help="detector side for W (256)")
    p.add_argument("--no-cold-jit", action="store_true", help="skip the cold-compile subprocess")
    p.add_argument(
        "--dataset",
        choices=("femlib", "issue"),
        default="femlib",
        help="femlib: normal-approximation frames, scale 0.14; issue: issue 13's Poisson x 4.2 "
        "frames, scale 0.1 nm^-1/px (default femlib)",
    )
    args = p.parse_args(argv)

    import hyperspy.api as hs  # noqa: F401  (registers femlib's signal types)
    import scipy.sparse  # noqa: F401

    from femlib import integration

    C.header(
        "femlib azimuthal integration",
        " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv),
    )
    C.print_jit("float32", cold=not args.no_cold_jit)

    shape = (args.detector, args.detector)
    t_gen, (data, mask, center, scale, what) = C.timed(
        lambda: C.dataset(args.dataset, args.frames, shape)
    )
    s = C.make_signal(data, center=center, scale=scale)
    nbytes = data.nbytes
    print(
        f"data ({args.dataset}, {what}): {args.frames} x {shape[0]} x {shape[1]} float32 = "
        f"{C.mib(nbytes):.0f} MiB "
        f"(generated in {t_gen:.1f} s), {int(mask.sum())} masked pixels, "
        f"navigation {s.axes_manager.navigation_shape}"
    )
    print()

    # ---------------------------------------------------------------- 1. in memory
    def read_pass():
        return data.sum(axis=0)

    def integral1d():
        return s.get_azimuthal_integral1d(
            npt=50, radial_range=C.RADIAL_RANGE, mask=mask, show_progressbar=False
        )

    def integral2d():
        return s.get_azimuthal_integral2d(npt=100, npt_azim=360, show_progressbar=False)

    # The 2D kernel alone: femlib's own block size, writing into one reused float32 buffer
    # (no fresh memory).
    geo = s.calibration.geometry()
    w2d = integration.build_weights(shape, geo["center"], scale=geo["scale"], npt=100, npt_azim=360)
    flat = data.reshape(len(data), -1)
    step = max(1, (256 * 2**20) // flat[0].nbytes)
    buf = np.empty((min(step, len(flat)), w2d.area.size), np.float32)

    def kernel2d():
        for i in range(0, len(flat), step):
            blk = data[i : i + step]
            integration.integrate(blk, w2d, dtype=np.float32, out=buf[: len(blk)])

    cases = [
        ("read pass  data.sum(axis=0)", read_pass, None),
        ("get_azimuthal_integral1d(npt=50, radial_range, mask)", integral1d, 1.5),
        ("get_azimuthal_integral2d(npt=100, npt_azim=360)", integral2d, 6.0),
        ("(info) 2D kernel only, into a reused float32 buffer", kernel2d, None),
        # What writing the 2D result alone costs: fresh memory, first touch, one write.
        (
            "(info) floor for 2D: np.ones(result shape, float32)",
            lambda: np.ones((args.frames, 100, 360), np.float32),
            None,
        ),
    ]
    rows = []
    ref = None
    for name, fn, target in cases:
        t_first, out = C.timed(fn)  # warm-up: builds W (cached), touches the code paths
        out_bytes = getattr(getattr(out, "data", out), "nbytes", 0)
        del out
        gc.collect()
        best, times, (cpu_u, cpu_s) = C.best_of_cpu(fn, args.repeats)
        gc.collect()
        with C.PeakRSS() as mem:
            fn()
        gc.collect()
        if ref is None:
            ref = best
        ratio = best / ref
        rows.append(
            [
                name,
                f"{best:.3f}",
                " ".join(f"{t:.3f}" for t in times),
                f"{t_first:.3f}",
                f"{nbytes / best / 2**30:.2f}",
                f"{cpu_u:.2f}/{cpu_s:.2f}",
                f"{ratio:.2f}x",
                "-" if target is None else f"<= {target:g}x {C.verdict(ratio, target)}",
                f"{C.mib(out_bytes):.0f}",
                f"{C.mib(mem.extra):.0f}",
            ]
        )
    print(f"In memory ({C.load_average()})")
    C.print_table(
        [
            "operation",
            "best s",
            "all s",
            "warm-up s",
            "GiB/s",
            "cpu user/sys s",
            "vs read",
            "target",
            "output MiB",
            "peak extra RSS MiB",
        ],
        rows,
    )
    print(
        "warm-up = first call in this process (includes building W; the kernels were "
        "already loaded above).\ncpu user/sys = CPU seconds per call over the repeats; "
        "system time is mostly page faults on fresh memory.\npeak extra RSS = peak "
        "resident memory above the level before the call (result + temporaries), polled "
        "every 5 ms.\n"
    )

    # ---------------------------------------------------------------- 2. building W
    bshape = (args.build_detector, args.build_detector)
    bcenter = (C.CENTER[0] * bshape[1] / 128, C.CENTER[1] * bshape[0] / 128)
    bmask = C.detector_mask(bshape, bcenter, beam_stop=20.0, arm_width=12.0)
    builds = [
        ("1D npt=50", dict(npt=50)),
        ("1D npt=50, radial_range, mask", dict(npt=50, radial_range=C.RADIAL_RANGE, mask=bmask)),
        ("2D npt=100 x 360", dict(npt=100, npt_azim=360)),
        ("2D npt=100 x 360, mask", dict(npt=100, npt_azim=360, mask=bmask)),
    ]
    scale = C.SCALE * 128 / bshape[0]
    rows = []
    for name, kw in builds:
        times = []
        for _ in range(args.repeats):
            integration._CACHE.clear()
            t, w = C.timed(
                lambda kw=kw: integration.build_weights(bshape, bcenter, scale=scale, **kw)
            )
            times.append(t)
        rows.append(
            [
                f"{bshape[0]}x{bshape[1]} {name}",
                f"{min(times):.3f}",
                " ".join(f"{t:.3f}" for t in times),
                f"{w.matrix.nnz}",
                f"{C.mib(w.nbytes):.1f}",
                f"< 1 s {C.verdict(min(times), 1.0)}",
            ]
        )
    integration._CACHE.clear()
    print(f"Building W from an empty cache ({C.load_average()})")
    C.print_table(["geometry", "best s", "all s", "nnz", "W MiB", "target"], rows)

    # ---------------------------------------------------------------- 3. numba vs scipy
    frames = data[: args.subset]
    sub = frames.reshape(len(frames), -1)
    geo = s.calibration.geometry()
    w1 = integration.build_weights(
        shape, geo["center"], scale=geo["scale"], npt=50, radial_range=C.RADIAL_RANGE, mask=mask
    )
    w2 = integration.build_weights(shape, geo["center"], scale=geo["scale"], npt=100, npt_azim=360)
    rows = []
    for name, w in (("1D npt=50, radial_range, mask", w1), ("2D npt=100 x 360", w2)):

        def kern(w=w):
            return integration.integrate(frames, w)

        mat_t = w.matrix.T.tocsr()  # transposed once, outside the timing

        def scipy_csr(w=w):
            return np.asarray(sub @ w.matrix.T)

        def scipy_pre(mat_t=mat_t):
            return np.asarray(sub @ mat_t)

        a, b = kern(), scipy_csr()
        diff = float(np.max(np.abs(a.reshape(b.shape) - b)) / np.max(np.abs(b)))
        tk, _ = C.best_of(kern, args.repeats)
        ts, _ = C.best_of(scipy_csr, args.repeats)
        tp, _ = C.best_of(scipy_pre, args.repeats)
        rows.append(
            [
                name,
                f"{tk * 1e3:.1f}",
                f"{ts * 1e3:.1f}",
                f"{ts / tk:.1f}x",
                f"{tp * 1e3:.1f}",
                f"{tp / tk:.1f}x",
                f"{diff:.1e}",
            ]
        )
    print(
        f"numba kernel vs scipy.sparse on {args.subset} frames, float32 input ({C.load_average()})"
    )
    C.print_table(
        [
            "matrix",
            "numba ms",
            "frames @ W.matrix.T ms",
            "slower",
            "frames @ (W.T as CSR) ms",
            "slower",
            "max rel diff",
        ],
        rows,
    )
    print(
        "Both on one thread: scipy upcasts the float32 frames to float64; the kernel reads "
        "each frame once,\nin address order, four frames at a time (in femlib, dask runs "
        "one kernel per chunk on every core).\n"
    )


if __name__ == "__main__":
    main()
