"""femlib.simulate: kinematic vs abTEM multislice speed, streaming memory, and where they part.

Three parts (``--part speed|memory|thickness|all``):

* speed: the same 2 nm thick Zr50Cu45Al5 random packing (8 x 8 nm periodic cell), the same
  grid (128 x 128 detector at 0.125 nm^-1/px, the default window of the simulation), 200 kV,
  2 mrad: seconds per pattern of ``nanodiffraction(method="kinematic")`` and of
  ``method="multislice"`` (abTEM, slices of 0.1 nm), each after a warm-up (numba compile,
  FFTW planning); the reference is a read pass ``data.sum(axis=0)`` of the simulated scan.
* memory: a lazy kinematic scan of ``--positions`` patterns and ``get_variance`` on it, one
  pass: peak RSS above the start against the size of the whole scan and of one chunk.
* thickness: V(k) of the kinematic and multislice routes for slabs of increasing thickness
  (4 x 4 nm cell, 64 x 64 detector at 0.25 nm^-1/px, 4 mrad, scan step 0.5 nm): the
  relative difference of the V(k) peak height and the peak positions.
"""

import argparse
import sys

import _common as c
import numpy as np


def _model(thickness, box=8.0, seed=0):
    import femlib.simulate as fs

    return fs.random_packing(box=(box, box, thickness), seed=seed)


def speed(repeats, steps=(1.0, 0.5)):
    import femlib.simulate as fs

    atoms = _model(2.0)
    base = dict(energy=200.0, semiangle=2.0, detector_shape=(128, 128), scale=0.125)
    fs.nanodiffraction(atoms, positions=[[1.0, 1.0]], **base)  # warm-up (numba)
    fs.nanodiffraction(atoms, method="multislice", positions=[[1.0, 1.0]], **base)  # FFTW
    for step in steps:
        kw = dict(base, scan_step=step)
        t_kin, times_kin, cpu_kin = c.best_of_cpu(
            lambda kw=kw: fs.nanodiffraction(atoms, **kw), repeats)
        s = fs.nanodiffraction(atoms, **kw)
        n = int(np.prod(s.data.shape[:2]))
        data = s.data.reshape(n, 128, 128)
        t_read, _ = c.best_of(lambda data=data: data.sum(axis=0), repeats)
        t_ms, times_ms, cpu_ms = c.best_of_cpu(
            lambda kw=kw: fs.nanodiffraction(atoms, method="multislice", **kw),
            max(1, repeats - 1),
        )
        gpts = s.metadata.Simulation.gpts
        print(f"## speed: {len(atoms)} atoms, 8 x 8 x 2 nm, {n} positions (step {step} nm), "
              f"window {gpts}^2 px, detector 128^2")
        ck, cm = sum(cpu_kin), sum(cpu_ms)
        rows = [
            ["read pass data.sum(axis=0)", f"{t_read * 1e3 / n:.3f}", "", "1.0", ""],
            ["kinematic (incl. potential)", f"{t_kin * 1e3 / n:.2f}", f"{ck * 1e3 / n:.2f}",
             f"{t_kin / t_read:.0f}", ", ".join(f"{t:.2f}" for t in times_kin)],
            ["multislice (abTEM, 0.1 nm slices)", f"{t_ms * 1e3 / n:.1f}",
             f"{cm * 1e3 / n:.1f}", f"{t_ms / t_read:.0f}",
             ", ".join(f"{t:.2f}" for t in times_ms)],
        ]
        c.print_table(["route", "wall ms / pattern", "CPU ms / pattern", "x read pass",
                       "runs (s)"], rows)
        print(f"abTEM multislice / kinematic per pattern: wall {t_ms / t_kin:.1f}x, CPU "
              f"{cm / ck:.1f}x (target >= 10x: {'ok' if t_ms / t_kin >= 10 else 'MISSED'})\n")


def memory(positions):
    import femlib.simulate as fs

    atoms = _model(3.0, box=16.0, seed=1)
    side = int(round(np.sqrt(positions)))
    step = 16.0 / side
    kw = dict(semiangle=2.0, scan_step=step, detector_shape=(128, 128), scale=0.125)
    small = fs.nanodiffraction(atoms, positions=[[1.0, 1.0], [2.0, 2.0]], lazy=True, **kw)
    small.get_variance(npt=50, radial_range=(2.0, 7.0), show_progressbar=False)  # warm-up
    with c.PeakRSS() as rss:
        s = fs.nanodiffraction(atoms, lazy=True, **kw)
        v = s.get_variance(npt=50, radial_range=(2.0, 7.0), show_progressbar=False)
    whole = s.data.nbytes
    chunk = s.data.blocks[0].nbytes
    print(f"## memory: lazy kinematic scan of {s.data.shape[0]} x {s.data.shape[1]} patterns "
          f"(128^2 float32) + get_variance, one pass")
    rows = [[f"{c.mib(whole):.0f}", f"{c.mib(chunk):.1f}", f"{c.mib(rss.extra):.0f}",
             f"{rss.extra / chunk:.1f}", f"{float(np.nanmax(v.data)):.4f}"]]
    c.print_table(["scan (MiB)", "one chunk (MiB)", "peak RSS above start (MiB)",
                   "peak / chunk", "max V"], rows)


def thickness(values):
    import femlib.simulate as fs

    print("## thickness: kinematic vs multislice V(k) (4 x 4 nm cell, 64 positions, "
          "k = 2.5 to 7 nm^-1, outside the bright-field disc of 1.6 nm^-1)")
    rows = []
    for t in values:
        atoms = _model(t, box=4.0, seed=4)
        kw = dict(semiangle=4.0, scan_step=0.5, detector_shape=(64, 64), scale=0.25)
        vk = fs.nanodiffraction(atoms, **kw).get_variance(
            npt=30, radial_range=(2.5, 7.0), show_progressbar=False)
        vm = fs.nanodiffraction(atoms, method="multislice", **kw).get_variance(
            npt=30, radial_range=(2.5, 7.0), show_progressbar=False)
        k = vk.axes_manager[0].axis
        ik, im = int(np.argmax(vk.data)), int(np.argmax(vm.data))
        # Mean relative difference over the whole k range as well as at the peak.
        rel = np.abs(vk.data / vm.data - 1)
        rows.append([f"{t:g}", f"{k[ik]:.2f}", f"{k[im]:.2f}", f"{vk.data[ik]:.4f}",
                     f"{vm.data[im]:.4f}", f"{vk.data[ik] / vm.data[im] - 1:+.1%}",
                     f"{rel.mean():.1%}"])
    c.print_table(["t (nm)", "k peak kin", "k peak ms", "V peak kin", "V peak ms",
                   "peak height diff", "mean |diff|"], rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", default="all", choices=["speed", "memory", "thickness", "all"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--positions", type=int, default=4096, help="memory part: patterns")
    p.add_argument("--thickness", type=float, nargs="+", default=[1, 2, 3, 5, 8, 12, 20])
    args = p.parse_args(argv)
    c.header("femlib.simulate", "python benchmarks/bench_simulate.py " + " ".join(
        argv if argv is not None else sys.argv[1:]))
    if args.part in ("speed", "all"):
        speed(args.repeats)
    if args.part in ("memory", "all"):
        memory(args.positions)
    if args.part in ("thickness", "all"):
        thickness(args.thickness)


if __name__ == "__main__":
    main()
