"""Weight-matrix build time and size, and what the weights cost at integration time.

Reproduce with::

    python benchmarks/bench_weights.py

What is measured, each the best of ``--repeats`` calls after a warm-up call (so numba
compilation is never timed):

1. Building W (:func:`femlib.integration.build_weights`) from an empty cache
   (``_CACHE.clear()`` before every call) for 128 x 128 and 256 x 256 detectors: 1D
   ``npt=50`` and 2D ``npt=100, npt_azim=360`` over the whole detector, centre slightly
   off the middle. Printed with the number of non-zero weights (nnz) and the matrix size.
   Target (issue 12): 2D 100 x 360 on 256 x 256 in < 1 s.

2. Applying W to ``--frames`` (4096) in-memory patterns of 128 x 128 float32 with
   :func:`femlib.integration.integrate` (one serial kernel), against a plain read pass of
   the same array, ``frames.sum(axis=0)``: the 1D integral used by ``get_variance``
   (``npt=50``, ``radial_range=(3.0, 5.75)`` nm^-1, scale 0.14 nm^-1/px, beam-stop mask)
   and the 2D polar transform (100 x 360). Target (issue 12): the exact weights cost
   nothing at integration time, i.e. the ratios do not grow against the sampled weights
   (run the same script on the previous version to compare).

Timings on a shared 2-core machine are noisy: the load average is printed with the
results. Nothing here asserts on a time.
"""

import argparse
import shlex
import sys
import time

import _common as C
import numpy as np


def _build_time(integration, shape, repeats, **kw):
    center = (shape[1] / 2 + 0.3, shape[0] / 2 - 0.2)

    def build():
        integration._CACHE.clear()
        return integration.build_weights(shape, center, **kw)

    build()  # warm-up: numba compilation or cache load
    best, _ = C.best_of(build, repeats)
    return best, build()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=4096, help="number of patterns (4096)")
    p.add_argument("--repeats", type=int, default=3, help="best of N (3)")
    args = p.parse_args(argv)

    from femlib import integration

    C.header(
        "femlib weight matrix: build time, size, integration cost",
        " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv),
    )
    print(f"# femlib.integration from {integration.__file__}")
    print()

    rows = []
    for side in (128, 256):
        for label, kw in (
            ("1D npt=50", {"npt": 50}),
            ("2D 100x360", {"npt": 100, "npt_azim": 360}),
        ):
            t, w = _build_time(integration, (side, side), args.repeats, **kw)
            rows.append(
                [
                    f"{side}x{side}",
                    label,
                    f"{t * 1e3:.1f}",
                    f"{w.matrix.nnz}",
                    f"{w.matrix.nnz / side**2:.2f}",
                    f"{C.mib(w.nbytes):.2f}",
                ]
            )
    print("## Building W from an empty cache (target: 2D 100x360 on 256x256 < 1 s)")
    C.print_table(["detector", "bins", "build ms", "nnz", "nnz/pixel", "W MiB"], rows)
    print()

    frames = C.synthetic_frames(args.frames)
    shape = frames.shape[1:]
    mask = C.detector_mask(shape)
    geo = {"center": C.CENTER, "scale": C.SCALE}
    w1 = integration.build_weights(shape, npt=50, radial_range=C.RADIAL_RANGE, mask=mask, **geo)
    w2 = integration.build_weights(shape, npt=100, npt_azim=360, **geo)

    read, _ = C.best_of(lambda: frames.sum(axis=0), args.repeats)
    rows = [["read pass frames.sum(axis=0)", f"{read:.3f}", "1.00", "-"]]
    for label, w, dtype in (
        ("integrate 1D npt=50 (float64 out)", w1, np.float64),
        ("integrate 2D 100x360 (float32 out)", w2, np.float32),
    ):
        out = np.empty((frames.shape[0], w.area.size), dtype=dtype)
        integration.integrate(frames[:8], w, dtype=dtype)  # warm-up (JIT)
        t, _ = C.best_of(
            lambda w=w, out=out, dtype=dtype: integration.integrate(
                frames, w, dtype=dtype, out=out
            ),
            args.repeats,
        )
        rows.append([label, f"{t:.3f}", f"{t / read:.2f}", f"{w.matrix.nnz}"])
    print(
        f"## Applying W to {frames.shape[0]} frames of {shape[0]}x{shape[1]} float32 "
        f"({C.mib(frames.nbytes):.0f} MiB), best of {args.repeats}, one serial kernel"
    )
    C.print_table(["pass", "seconds", "x read", "nnz"], rows)
    print()
    print(f"# {C.load_average()} at {time.strftime('%H:%M:%S')}")


if __name__ == "__main__":
    main()
