"""FEM variance throughput: one pass for every method and thickness bin.

Reproduce with::

    python benchmarks/bench_variance.py                    # femlib's synthetic data
    python benchmarks/bench_variance.py --dataset issue    # issue 13's Poisson dataset

(``--frames 4096`` for a quick run; ``--help`` for every option.)

What is measured, each the best of ``--repeats`` calls after a warm-up call, on
``--frames`` (default 16384 = 128 x 128 scan) in-memory patterns of 128 x 128 float32 in an
``FEMDiffraction2D`` (``--dataset femlib``: centre (64.3, 62.7) px, scale 0.14 nm^-1/px;
``--dataset issue``: true Poisson x 4.2, centre (63.5, 63.5), scale 0.1 nm^-1/px; both
with a beam-stop mask):

* reference: a plain read pass of the same array, ``data.sum(axis=0)``;
* ``get_azimuthal_integral1d(npt=50, radial_range=(3.0, 5.75), mask=mask)``; target 1.5x;
* ``get_variance(npt=50, gain=4.2, radial_range=(3.0, 5.75), mask=mask)`` (``Omega``);
  target: within 1.5x of the read pass;
* the same with ``method="all"`` (Omega, r, re, VImage from one pass); target: 2.5x;
* ``get_azimuthal_integral2d(npt=100, npt_azim=360)``; target 6x;
* both again with ``thickness=<linear ramp over the scan>, bins=4``: thickness bins share
  the pass, so they should cost (almost) nothing extra;
* if pyxem is importable, pyxem's ``get_variance`` (``Omega``, gain 4.2, same mask and
  range) on the first ``--pyxem-frames`` patterns and on a quarter of them, timed once
  each and scaled to the full dataset as fixed set-up + per-frame cost.

JIT compile time is reported separately. Timings on a shared 2-core machine are noisy: the
load average is printed with the results. Nothing here asserts on a time.
"""

import argparse
import gc
import shlex
import sys
import warnings

import _common as C
import numpy as np


def _pyxem_case(data, mask, n_frames, npt):
    """pyxem's Omega estimator on the first ``n_frames`` frames, and on a quarter of them.

    Returns ``(result, note)``; ``result`` is None when pyxem is missing or fails, else a
    dict with the two timings and a linear model ``fixed + per_frame * N`` fitted to them,
    so that its per-call set-up (pyxem builds its pixel slices with shapely on every call)
    is not multiplied when scaling to the full dataset.
    """
    try:
        import pyxem as pxm
    except ImportError:
        return None, "pyxem not installed"
    import inspect

    def signal(n):
        s = pxm.signals.ElectronDiffraction2D(data[:n])
        for ax in s.axes_manager.signal_axes:
            ax.scale = C.SCALE
            ax.units = "nm^-1"
        try:
            s.calibration.center = C.CENTER
        except Exception:  # older pyxem: set the offsets directly
            for ax, c in zip(s.axes_manager.signal_axes, C.CENTER, strict=True):
                ax.offset = -c * ax.scale
        return s

    small, large = signal(max(2, n_frames // 4)), signal(n_frames)
    params = inspect.signature(large.get_variance).parameters
    gain_kw = "gain" if "gain" in params else "dqe"  # renamed in pyxem 0.20
    kw = dict(
        npt=npt,
        method="Omega",
        radial_range=C.RADIAL_RANGE,
        mask=mask,
        show_progressbar=False,
        **{gain_kw: C.GAIN},
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            small.get_variance(**kw)  # warm-up (its numba kernels)
            t_small, _ = C.timed(lambda: small.get_variance(**kw))
            t_large, _ = C.timed(lambda: large.get_variance(**kw))
    except Exception as exc:  # report, do not hide, an API mismatch
        return None, f"pyxem {pxm.__version__} failed: {type(exc).__name__}: {exc}"
    n_small = small.axes_manager.navigation_size
    per_frame = max((t_large - t_small) / (n_frames - n_small), 0.0)
    fixed = max(t_large - per_frame * n_frames, 0.0)
    return {
        "t_small": t_small,
        "t_large": t_large,
        "n_small": n_small,
        "n_large": n_frames,
        "per_frame": per_frame,
        "fixed": fixed,
        "gain_kw": gain_kw,
    }, f"pyxem {pxm.__version__}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=16384, help="number of patterns (16384)")
    p.add_argument("--repeats", type=int, default=3, help="best of N (3)")
    p.add_argument("--bins", type=int, default=4, help="thickness bins (4)")
    p.add_argument("--pyxem-frames", type=int, default=1024, help="frames given to pyxem")
    p.add_argument("--no-cold-jit", action="store_true", help="skip the cold-compile subprocess")
    p.add_argument(
        "--dataset",
        choices=("femlib", "issue"),
        default="femlib",
        help="femlib: normal-approximation frames, scale 0.14; issue: issue 13's Poisson x 4.2 "
        "frames, scale 0.1 nm^-1/px (default femlib)",
    )
    p.add_argument("--no-pyxem", action="store_true", help="skip the pyxem comparison")
    args = p.parse_args(argv)

    import hyperspy.api as hs  # noqa: F401  (registers femlib's signal types)

    C.header("femlib FEM variance", " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv))
    C.print_jit("float32", cold=not args.no_cold_jit)

    shape = (128, 128)
    t_gen, (data, mask, center, scale, what) = C.timed(
        lambda: C.dataset(args.dataset, args.frames, shape)
    )
    s = C.make_signal(data, center=center, scale=scale)
    nav = tuple(s.axes_manager._navigation_shape_in_array)
    thickness = np.linspace(20.0, 60.0, int(np.prod(nav))).reshape(nav)  # nm, a ramp
    nbytes = data.nbytes
    print(
        f"data ({args.dataset}): {args.frames} x 128 x 128 float32 = {C.mib(nbytes):.0f} MiB, "
        f"{what}, scale {scale} nm^-1/px (generated in "
        f"{t_gen:.1f} s), {int(mask.sum())} masked pixels, navigation "
        f"{s.axes_manager.navigation_shape}; thickness ramp 20-60 nm, {args.bins} bins"
    )
    print()

    common = dict(
        npt=50, gain=C.GAIN, radial_range=C.RADIAL_RANGE, mask=mask, show_progressbar=False
    )
    binned = dict(thickness=thickness, bins=args.bins)
    integral = dict(npt=50, radial_range=C.RADIAL_RANGE, mask=mask, show_progressbar=False)
    cases = [
        ("read pass  data.sum(axis=0)", lambda: data.sum(axis=0), None),
        (
            "get_azimuthal_integral1d(npt=50, radial_range, mask)",
            lambda: s.get_azimuthal_integral1d(**integral),
            1.5,
        ),
        (
            "get_variance(npt=50, gain, radial_range, mask)  [Omega]",
            lambda: s.get_variance(**common),
            1.5,
        ),
        ('get_variance(..., method="all")', lambda: s.get_variance(method="all", **common), 2.5),
        (
            "get_azimuthal_integral2d(npt=100, npt_azim=360)",
            lambda: s.get_azimuthal_integral2d(npt=100, npt_azim=360, show_progressbar=False),
            6.0,
        ),
        (
            f"get_variance(..., thickness, bins={args.bins})  [Omega]",
            lambda: s.get_variance(**common, **binned),
            1.5,
        ),
        (
            f'get_variance(..., method="all", thickness, bins={args.bins})',
            lambda: s.get_variance(method="all", **common, **binned),
            2.5,
        ),
    ]
    rows = []
    ref = None
    results = {}
    for name, fn, target in cases:
        t_first, out = C.timed(fn)  # warm-up: builds W, touches every code path
        if "variance" in name:
            results[name] = out
        del out
        gc.collect()
        best, times, (cpu_u, cpu_s) = C.best_of_cpu(fn, args.repeats)
        gc.collect()
        with C.PeakRSS() as mem:
            fn()
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
                f"{C.mib(mem.extra):.0f}",
            ]
        )

    if args.no_pyxem:
        px, note = None, "skipped (--no-pyxem)"
    else:
        px, note = _pyxem_case(data, mask, min(args.pyxem_frames, args.frames), 50)
    if px is not None:
        scaled = px["fixed"] + px["per_frame"] * args.frames
        rows.append(
            [
                f"pyxem get_variance(npt=50, Omega, {px['gain_kw']}=4.2) (scaled)",
                f"{scaled:.3f}",
                f"{px['t_small']:.2f} on {px['n_small']}, {px['t_large']:.2f} on {px['n_large']}",
                "-",
                f"{nbytes / scaled / 2**30:.2f}",
                "-",
                f"{scaled / ref:.1f}x",
                f"femlib Omega is {scaled / float(rows[2][1]):.0f}x faster",
                "-",
            ]
        )
        note += (
            f": timed once on {px['n_small']} and {px['n_large']} frames, scaled to "
            f"{args.frames} as {px['fixed']:.2f} s + {px['per_frame'] * 1e3:.2f} ms/frame"
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
            "peak extra RSS MiB",
        ],
        rows,
    )
    print(f"pyxem comparison: {note}\n")

    # A glance at the answer, so a fast-but-wrong change is visible in the same output.
    v = results[cases[2][0]]
    k = v.axes_manager.signal_axes[0].axis
    i = int(np.argmax(v.data))
    se = v.metadata.FEM.standard_error
    print(
        f"Omega V(k): max {v.data[i]:.4f} +- {se[i]:.4f} at k = {k[i]:.2f} nm^-1 "
        f"({v.metadata.FEM.number_of_patterns} patterns)"
    )


if __name__ == "__main__":
    main()
