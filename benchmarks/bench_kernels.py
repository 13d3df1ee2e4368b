"""The compiled kernels alone, on one thread: where the time of a pass goes.

Reproduce with::

    python benchmarks/bench_kernels.py                    # femlib's synthetic data
    python benchmarks/bench_kernels.py --dataset issue    # issue 13's Poisson dataset

What is measured, each the best of ``--repeats`` calls after a warm-up call, in CPU
seconds of this process (``time.process_time``: one thread, no dask), on ``--frames``
(4096) in-memory patterns of 128 x 128 float32:

* reference: a plain read pass of the same array, ``frames.sum(axis=0)``;
* the FEM-pass kernel (:func:`femlib._kernels.ring_moments`) for the 1D weights of
  ``get_variance`` (``npt=50``, ``radial_range=(3.0, 5.75)`` nm^-1, beam-stop mask), frames
  sorted by state (20 jackknife blocks) as the pass sorts them: ``I`` alone (the 1D
  integral, ``Omega`` without a gain), ``I`` and ``Q`` (``Omega`` with a gain), and every
  column with the per-pixel sums and squares (``method="all"``);
* the polar kernel (:func:`femlib._kernels.apply_tiled`) for 100 x 360 bins into a reused
  float32 buffer, and filling that buffer (the write floor).

These are the figures quoted in :mod:`femlib._kernels`. Nothing here asserts on a time.
"""

import argparse
import shlex
import sys
import time

import _common as C
import numpy as np


def _cpu_best(fn, repeats):
    fn()  # warm-up: numba compilation or cache load
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=4096, help="number of patterns (4096)")
    p.add_argument("--repeats", type=int, default=7, help="best of N (7)")
    p.add_argument("--dataset", choices=("femlib", "issue"), default="femlib",
                   help="femlib: scale 0.14 nm^-1/px; issue: issue 13's, scale 0.1")
    args = p.parse_args(argv)

    from femlib import _kernels
    from femlib.integration import build_weights

    C.header(
        "femlib kernels, one thread",
        " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv),
    )
    data, mask, center, scale, what = C.dataset(args.dataset, args.frames)
    flat = data.reshape(args.frames, -1)
    w1 = build_weights(data.shape[1:], center, scale=(scale, scale), npt=50,
                       radial_range=C.RADIAL_RANGE, mask=mask)
    w2 = build_weights(data.shape[1:], center, scale=(scale, scale), npt=100, npt_azim=360)
    indptr, cindex, wdata = w1.bin_major
    sdata = C.GAIN * wdata**2
    states = np.sort(np.arange(args.frames) % 20).astype(np.int64)
    print(f"data ({args.dataset}): {args.frames} x 128 x 128 float32, {what}; 1D weights: "
          f"{wdata.size} non-zeros over {w1.touched.size} pixels; 2D: "
          f"{w2.bin_major[2].size} non-zeros\n")

    def ring(shot, squares, pixels):
        return lambda: _kernels.ring_moments(
            flat, w1.touched, indptr, cindex, wdata, states, 20, None,
            sdata if shot else None, squares, pixels, pixels)

    out2 = np.zeros((args.frames, w2.area.size), np.float32)
    bad = np.zeros(args.frames, bool)
    ip2, ci2, wd2 = w2.bin_major
    cases = [
        ("read pass  frames.sum(axis=0)", lambda: flat.sum(axis=0)),
        ("FEM pass: I (1D integral, Omega without gain)", ring(False, False, False)),
        ("FEM pass: I, Q (Omega with gain)", ring(True, False, False)),
        ('FEM pass: I, Q, J, pixel sums and squares ("all")', ring(True, True, True)),
        ("polar 100 x 360 into a reused float32 buffer", lambda: _kernels.apply_tiled(
            flat, w2.touched, ip2, ci2, wd2, np.ones(w2.area.size), out2, bad)),
        ("(floor) fill that buffer", lambda: out2.fill(1.0)),
    ]
    rows, ref = [], None
    for name, fn in cases:
        t = _cpu_best(fn, args.repeats)
        ref = ref or t
        rows.append([name, f"{t * 1e3:.1f}", f"{t / ref:.2f}x"])
    print(f"CPU ms, best of {args.repeats} ({C.load_average()})")
    C.print_table(["kernel", "cpu ms", "vs read"], rows)


if __name__ == "__main__":
    main()
