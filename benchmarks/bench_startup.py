"""Start-up costs: ``import femlib``, and the first ``get_variance`` of a process on an empty
and on a warm numba cache.

    python benchmarks/bench_startup.py              # best of 3 fresh processes per figure
    python benchmarks/bench_startup.py --repeats 5

Every figure is measured in a fresh Python process (start-up costs are what a new process
pays). The first call is ``get_variance(npt=50, gain=4.2, radial_range=(3.0, 5.75))``
(Omega) on ``femlib.data.synthetic_fem()`` (1600 patterns of 128 x 128 float32), with the
centre and affine of its ground truth:

* *empty cache*: ``NUMBA_CACHE_DIR`` set to a new empty folder, so every kernel the call
  needs is compiled (the pixel splitting that builds the weights, the FEM-pass kernel);
* *warm cache*: a second process on that folder: the kernels are loaded from disk. A third
  one first calls the smallest cached kernel, which pays numba's one-time set-up of a new
  process (its registries, ``scipy.linalg`` for BLAS, its runtime: the same for any numba
  code), then times the call: what is left is femlib's.

Each process also times the same call again (the steady state) and a plain read pass of
the same array, ``data.sum(axis=0)``, printed as the same-run reference. A last process
splits the empty-cache call into its weights (pixel-splitting compile) and the rest. The
processes import femlib from this checkout's ``src`` (put first on ``PYTHONPATH``; the
path is printed). Wall and CPU seconds are printed (the machine may be shared: CPU time is
the steadier of the two). Targets (issue 23): import <= 0.6 s, first call <= 2.5 s on an
empty cache and <= 0.15 s on a warm one.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

import _common as C

_CALL = "dict(npt=50, gain=4.2, radial_range=(3.0, 5.75), show_progressbar=False)"

_IMPORT = """
import json, time
c, t = time.process_time(), time.perf_counter()
import femlib
out = {"import femlib": (time.perf_counter() - t, time.process_time() - c)}
c, t = time.process_time(), time.perf_counter()
femlib.signals
out["+ femlib.signals (what the first call imports)"] = (
    time.perf_counter() - t, time.process_time() - c)
out["femlib"] = femlib.__file__
print(json.dumps(out))
"""

_FIRST = f"""
import json, time
import femlib
s = femlib.data.synthetic_fem()
sim = s.metadata.Simulation
s.calibration.center, s.calibration.affine = sim.center, sim.affine
kw = {_CALL}
out = {{}}
if NUMBA:
    # numba's own set-up in a new process (its registries, scipy.linalg, its runtime),
    # paid by whichever compiled function comes first: here the smallest cached kernel.
    from femlib import _kernels
    c, t = time.process_time(), time.perf_counter()
    _kernels._rows(6, 9)
    out["numba"] = (time.perf_counter() - t, time.process_time() - c)
if SPLIT:
    c, t = time.process_time(), time.perf_counter()
    s._weights(50, 1, (3.0, 5.75), None, None)
    out["weights"] = (time.perf_counter() - t, time.process_time() - c)
c, t = time.process_time(), time.perf_counter()
s.get_variance(**kw)
out["first"] = (time.perf_counter() - t, time.process_time() - c)
c, t = time.process_time(), time.perf_counter()
s.get_variance(**kw)
out["again"] = (time.perf_counter() - t, time.process_time() - c)
best = None
for _ in range(3):
    t = time.perf_counter()
    s.data.sum(axis=0)
    best = min(best or 1e9, time.perf_counter() - t)
out["read"] = (best, best)
from femlib import _kernels
_kernels._rows(6, 9)  # compiled into the cache for the NUMBA process (not timed)
print(json.dumps(out))
"""


# This checkout's package, ahead of any installed femlib in the child processes.
_SRC = pathlib.Path(__file__).resolve().parent.parent / "src"


def _child_env(env=None):
    path = os.environ.get("PYTHONPATH")
    if (_SRC / "femlib").is_dir():
        path = os.pathsep.join(p for p in (str(_SRC), path) if p)
    return {**os.environ, **({"PYTHONPATH": path} if path else {}), **(env or {})}


def _run(code, env=None, split=False, numba=False):
    src = code.replace("SPLIT", str(split)).replace("NUMBA", str(numba))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(src)],
        env=_child_env(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        sys.exit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per figure")
    args = p.parse_args()
    C.header("femlib start-up", " ".join(["python"] + sys.argv))

    rows = {}

    def add(name, value):
        rows.setdefault(name, []).append(value)

    read = []
    where = set()
    for _ in range(args.repeats):
        for k, v in _run(_IMPORT).items():
            if k == "femlib":
                where.add(v)
            else:
                add(k, v)
        with tempfile.TemporaryDirectory(prefix="femlib-numba-") as cache:
            env = {"NUMBA_CACHE_DIR": cache}
            cold = _run(_FIRST, env)
            warm = _run(_FIRST, env)
            floor = _run(_FIRST, env, numba=True)
        add("first get_variance, empty numba cache", cold["first"])
        add("first get_variance, warm numba cache (new process)", warm["first"])
        add("  of the warm call: numba's set-up (first cached kernel)", floor["numba"])
        add("  of the warm call: the rest", floor["first"])
        add("same call again (steady state)", warm["again"])
        read += [cold["read"][0], warm["read"][0]]
        with tempfile.TemporaryDirectory(prefix="femlib-numba-") as cache:
            split = _run(_FIRST, {"NUMBA_CACHE_DIR": cache}, split=True)
        add("  of the empty-cache call: the weights (pixel splitting)", split["weights"])
        add("  of the empty-cache call: the rest (FEM-pass kernel, ...)", split["first"])

    ref = min(read)
    targets = {
        "import femlib": 0.6,
        "first get_variance, empty numba cache": 2.5,
        "first get_variance, warm numba cache (new process)": 0.15,
    }
    print(f"reference: read pass data.sum(axis=0) of the same 1600 x 128 x 128 float32, "
          f"best {ref:.4f} s")
    print(f"({C.load_average()} after the runs; femlib imported from "
          f"{', '.join(sorted(where))})")
    print()
    head = ("step", "best wall s", "all wall s", "CPU s (best)", "vs read", "target")
    width = max(len(k) for k in rows)
    print(f"{head[0]:<{width}}  {head[1]:>11}  {head[2]:<22}  {head[3]:>12}  {head[4]:>8}  "
          f"{head[5]}")
    print("-" * (width + 75))
    for name, values in rows.items():
        walls = sorted(v[0] for v in values)
        cpu = min(v[1] for v in values)
        target = targets.get(name)
        status = "" if target is None else (
            f"<= {target} s " + ("ok" if walls[0] <= target else "MISSED"))
        all_s = " ".join(f"{w:.3f}" for w in walls)
        print(f"{name:<{width}}  {walls[0]:>11.3f}  {all_s:<22}  {cpu:>12.3f}  "
              f"{walls[0] / ref:>7.1f}x  {status}")


if __name__ == "__main__":
    main()
