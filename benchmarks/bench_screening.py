"""Speed of the screening steps, as a ratio to a same-run read pass; lazy equals eager.

Reproduce with::

    python benchmarks/bench_screening.py                  # 16384 frames of 128 x 128
    python benchmarks/bench_screening.py --frames 4096    # quicker

On ``--frames`` in-memory patterns of 128 x 128 float32 (femlib's benchmark data, a 2D
scan, centre (64.3, 62.7) px, beam-stop mask), each the best of ``--repeats`` calls after a
warm-up call (numba compilation is never timed):

* reference: a plain read pass of the same array, ``data.sum(axis=0)``;
* ``find_bad_pixels(gain=4.2, mask=mask)``; target 1.5x;
* ``find_outlier_patterns(radial_range=(3.0, 5.75), mask=mask)``; target 1.5x;
* ``find_centers(mask=mask)`` (the pass and the ring fits of the scan's sum and of its 16
  tiles, which do not grow with the scan; the tile-sum pass alone is printed on its own);
  target 1.5x;
* the same three on the lazy twin (``as_lazy``, 8 chunks of whole scan rows), as a ratio
  to a dask read pass of the same chunks (``lazy.data.sum(axis=0).compute()``), checked
  equal to eager.

Besides the wall-clock ratios, the CPU time of the eager steps (all threads, mean per call)
over that of the read pass: on a machine shared with other jobs the wall clock of a
two-thread step depends on what else runs, its CPU time much less so.

Nothing here asserts on a time.
"""

import argparse
import shlex
import sys
import warnings

import _common as C
import numpy as np

RANGE = (3.0, 5.75)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    C.header("screening steps", "python " + shlex.join(sys.argv))
    data, mask, center, scale, what = C.dataset("femlib", args.frames)
    print(f"# data: {data.shape} {data.dtype} ({C.mib(data.nbytes):.0f} MiB), {what}\n")
    s = C.make_signal(data, center=center, scale=scale)
    lazy = C.make_signal(data, lazy=True, center=center, scale=scale)
    lazy.rechunk(nav_chunks=(max(1, lazy.axes_manager.navigation_shape[1] // 8),
                             lazy.axes_manager.navigation_shape[0]))
    kw = {"show_progressbar": False}
    steps = {
        "find_bad_pixels(gain=4.2, mask)": lambda x: x.find_bad_pixels(gain=4.2, mask=mask,
                                                                       **kw),
        "find_outlier_patterns(radial_range, mask)": lambda x: x.find_outlier_patterns(
            radial_range=RANGE, mask=mask, **kw),
        "find_centers(mask)": lambda x: x.find_centers(mask=mask, **kw),
    }
    read, _, read_cpu = C.best_of_cpu(lambda: data.sum(axis=0), args.repeats)
    read_cpu = sum(read_cpu)
    lazy_read, _ = C.best_of(lambda: lazy.data.sum(axis=0).compute(), args.repeats)
    rows = [("read pass data.sum(axis=0)", f"{read:.3f}", "1.00x", "1.00x", "", ""),
            ("lazy read pass (dask sum, same chunks)", f"{lazy_read:.3f}",
             f"{lazy_read / read:.2f}x", "", "1.00x", "")]
    for name, fn in steps.items():
        fn(s)  # warm-up (JIT)
        eager_t, _, cpu = C.best_of_cpu(lambda fn=fn: fn(s), args.repeats)
        eager = fn(s)
        lazy_t, _ = C.best_of(lambda fn=fn: fn(lazy), args.repeats)
        other = fn(lazy)
        same = np.allclose(np.asarray(other.data, float), np.asarray(eager.data, float),
                           atol=1e-9)
        rows.append((name, f"{eager_t:.3f}", f"{eager_t / read:.2f}x",
                     f"{sum(cpu) / read_cpu:.2f}x", f"{lazy_t / lazy_read:.2f}x",
                     "yes" if same else "NO"))
    # the tile fits alone (no data read): what find_centers adds to its pass
    from femlib import screening

    # (find_centers' default tiles: a quarter of the scan along each axis, 16 tiles)
    labels, _ = screening.tile_labels(s.data.shape[:2], (max(1, s.data.shape[0] // 4),
                                                        max(1, s.data.shape[1] // 4)))
    pass_t, _, cpu = C.best_of_cpu(lambda: screening.label_sums(s.data, labels),
                                   args.repeats)
    rows.append(("  of which the tile-sum pass", f"{pass_t:.3f}", f"{pass_t / read:.2f}x",
                 f"{sum(cpu) / read_cpu:.2f}x", "", ""))
    C.print_table(["step", "seconds (best)", "eager / read", "eager CPU / read CPU",
                   "lazy / lazy read", "lazy == eager"], rows)
    print(f"\n# {C.load_average()}")


if __name__ == "__main__":
    main()
