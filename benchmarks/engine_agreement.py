"""Do two versions of femlib give the same numbers? Not a timing: the check behind "the
engine change alone moves no result by more than 1e-10" (issue 13).

Reproduce with (``<old>`` any earlier commit, checked out beside the project)::

    git worktree add ../femlib-old <old>
    PYTHONPATH=../femlib-old/src python benchmarks/engine_agreement.py old.npz
    python benchmarks/engine_agreement.py new.npz
    python benchmarks/engine_agreement.py --compare old.npz new.npz

Each run computes, on ``femlib.data.synthetic_fem(navigation_shape=(30, 30))``: V(k) and
its standard error for every method (``Omega``, ``r``, ``re``, ``VImage``) with a gain,
``Omega`` in 3 thickness bins, the 1D integral (40 bins) and the 2D polar transform
(20 x 36), each eager and lazy, and ``Omega`` and ``VImage`` on a two-process
``dask.distributed`` cluster (``--no-distributed`` to skip it). ``--compare`` prints the
largest relative difference of every array (to the largest magnitude of that array) and
whether the NaN patterns agree.
"""

import argparse
import sys

import numpy as np


def compute(path, distributed=True):
    import femlib
    from femlib.data import synthetic_fem

    print("femlib from", femlib.__file__)
    s = synthetic_fem(navigation_shape=(30, 30))
    thick = np.linspace(20, 60, 900).reshape(30, 30)
    kw = dict(npt=40, show_progressbar=False)
    out = {}
    for lazy in (False, True):
        t = s.as_lazy() if lazy else s
        for m in ("Omega", "r", "re", "VImage"):
            v = t.get_variance(method=m, gain=4.2, **kw)
            out[f"{m}_lazy{lazy}"] = np.asarray(v.data, float)
            out[f"{m}_lazy{lazy}_se"] = np.asarray(v.metadata.FEM.standard_error, float)
        v = t.get_variance(method="Omega", gain=4.2, thickness=thick, bins=3, **kw)
        out[f"bins_lazy{lazy}"] = np.asarray(v.data, float)
        for name, sig in (("1d", t.get_azimuthal_integral1d(npt=40)),
                          ("2d", t.get_azimuthal_integral2d(npt=20, npt_azim=36))):
            out[f"{name}_lazy{lazy}"] = np.asarray(sig.data.compute() if lazy else sig.data,
                                                   float)
    if distributed:
        from dask.distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster):
            for m in ("Omega", "VImage"):
                v = s.as_lazy().get_variance(method=m, gain=4.2, **kw)
                v.compute()
                out[f"{m}_distributed"] = np.asarray(v.data, float)
    np.savez(path, **out)
    print(f"saved {len(out)} arrays to {path}")


def compare(a_path, b_path):
    a, b = np.load(a_path), np.load(b_path)
    worst = 0.0
    for k in a.files:
        x, y = a[k], b[k]
        d = float(np.nanmax(np.abs(x - y)) / max(float(np.nanmax(np.abs(x))), 1e-300))
        worst = max(worst, d)
        same = np.array_equal(np.isnan(x), np.isnan(y))
        print(f"{k:20s} {str(x.shape):18s} max relative difference {d:.1e}  NaN pattern "
              f"{'same' if same else 'DIFFERENT'}")
    print(f"largest: {worst:.1e}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", help="output .npz, or two with --compare")
    p.add_argument("--compare", action="store_true", help="compare two saved runs")
    p.add_argument("--no-distributed", action="store_true", help="skip the cluster run")
    args = p.parse_args(argv)
    if args.compare:
        if len(args.paths) != 2:
            sys.exit("--compare takes two .npz files")
        compare(*args.paths)
    else:
        compute(args.paths[0], not args.no_distributed)


if __name__ == "__main__":
    main()
