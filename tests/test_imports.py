"""Importing femlib: the namespace, what ``import femlib`` loads, and numba without a cache.

Every test runs Python in a subprocess: what a fresh interpreter imports, and how it
behaves when numba has nowhere to write its cache, cannot be seen from inside the test
process (it has imported everything already).
"""

import os
import pkgutil
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

import femlib

SRC = Path(femlib.__file__).resolve().parent.parent


def _run(code, env=None, pythonpath=SRC, user=None, timeout=240):
    full = {**os.environ, **(env or {})}
    full["PYTHONPATH"] = os.pathsep.join(
        [str(pythonpath)] + ([full["PYTHONPATH"]] if full.get("PYTHONPATH") else [])
    )
    cmd = [sys.executable, "-c", textwrap.dedent(code)]
    if user is not None:
        import pwd

        entry = pwd.getpwnam(user)
        cmd = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
               "--clear-groups", *cmd]
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=timeout)


def test_every_public_module_is_listed_in_all():
    public = {m.name for m in pkgutil.iter_modules(femlib.__path__) if not m.name.startswith("_")}
    assert public == set(femlib.__all__) - {"__version__"}


def test_public_modules_are_attributes_of_a_plain_import():
    out = _run(
        """
        import sys
        import femlib
        heavy = [m for m in ("numpy", "hyperspy", "dask", "numba", "scipy", "matplotlib")
                 if m in sys.modules]
        print("heavy:", heavy)
        assert femlib.noise.DetectorNoise.__name__ == "DetectorNoise"
        assert femlib.groups.tile_labels and femlib.moments.accumulate_moments
        for name in femlib.__all__:
            getattr(femlib, name)
        from femlib import __version__, variance  # from-imports go through __getattr__
        print("ok", sorted(set(femlib.__all__) - set(dir(femlib))))
        """
    )
    assert out.returncode == 0, out.stderr
    assert "heavy: []" in out.stdout
    assert "ok []" in out.stdout


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="module 'femlib' has no attribute 'nosuch'"):
        femlib.nosuch  # noqa: B018


def test_first_get_variance_does_not_import_what_it_does_not_need():
    out = _run(
        """
        import sys
        import femlib
        s = femlib.data.synthetic_fem(navigation_shape=(4, 4), detector_shape=(32, 32))
        s.calibration.center = s.metadata.Simulation.center
        s.get_variance(npt=4, gain=4.2, radial_range=(1.0, 2.0), show_progressbar=False)
        print([m for m in ("scipy.signal", "scipy.ndimage", "matplotlib.pyplot",
                           "femlib.ellipse", "femlib.noise", "skimage") if m in sys.modules])
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_command_imports_only_the_standard_library_before_main():
    """``femlib`` and ``python -m femlib`` handle SIGINT/SIGTERM from the first line of
    ``main()`` (one line, exit 130/143): the heavy imports happen inside it. Before it the
    interpreter loads femlib.cli alone, standard library only (a few ms), so Ctrl-C while
    numpy or HyperSpy load is "femlib: interrupted", not a traceback."""
    out = _run(
        """
        import sys
        import femlib.__main__
        heavy = ("numpy", "scipy", "hyperspy", "dask", "numba", "matplotlib", "rsciio")
        print(sorted({m.split(".")[0] for m in sys.modules} & set(heavy)))
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_interrupt_while_the_command_imports_is_one_line(monkeypatch, capsys):
    from femlib import cli

    def interrupted(name, *args, **kwargs):
        if name in ("femlib", "femlib.workflow", "femlib.report"):
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", interrupted)
    code = cli.main(["fem", "--synthetic-shape", "4", "4"])
    monkeypatch.undo()
    assert code == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err == "femlib: interrupted\n"


def test_hyperspy_finds_the_signal_classes_by_their_import_path():
    out = _run(
        """
        import numpy as np
        import hyperspy.api as hs
        s = hs.signals.Signal2D(np.zeros((2, 8, 8)))
        s.set_signal_type("fem_diffraction")
        v = hs.signals.Signal1D(np.zeros(4))
        v.set_signal_type("fem_variance")
        print(type(s).__name__, type(s.as_lazy()).__name__, type(v).__name__)
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["FEMDiffraction2D", "LazyFEMDiffraction2D", "FEMVariance1D"]


# ----------------------------------------------------------------------------- numba cache
_NO_CACHE_CODE = """
    import warnings
    import numpy as np
    import femlib
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from femlib import _kernels, _pixel_split, integration, moments
    notes = [str(w.message) for w in caught if "NUMBA_CACHE_DIR" in str(w.message)]
    print("notes:", len(notes))
    # A compiled kernel runs (the smallest: a full compile of the FEM pass takes seconds).
    print("rows:", _kernels._rows(6, 9))
"""


def _read_only_copy(root):
    """femlib copied under ``root`` where no numba cache can be written: a file named
    ``__pycache__`` in the package (numba's cache beside the source)."""
    pkg = Path(root) / "site" / "femlib"
    shutil.copytree(SRC / "femlib", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for folder in [pkg, *[p for p in pkg.rglob("*") if p.is_dir()]]:
        (folder / "__pycache__").write_text("")
    return pkg.parent


def test_import_and_kernels_work_when_numba_cannot_cache(tmp_path):
    site = _read_only_copy(tmp_path)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    out = _run(
        _NO_CACHE_CODE,
        pythonpath=site,
        env={
            "NUMBA_CACHE_DIR": str(blocker / "numba"),  # cannot be created
            "XDG_CACHE_HOME": str(blocker),  # nor the user's cache folder
            "HOME": str(tmp_path),
            "PYTHONDONTWRITEBYTECODE": "1",
        },
    )
    assert out.returncode == 0, out.stderr
    assert "notes: 1" in out.stdout  # one warning, however many kernels
    assert "rows: (6, 7, 8, 8, 8, 8, 8, 8)" in out.stdout


@pytest.mark.skipif(
    shutil.which("setpriv") is None or not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="needs setpriv and root to run as an unprivileged user",
)
def test_read_only_install_as_unprivileged_user():
    # As on a cluster worker: the install is read-only for the user, who has no home.
    root = Path(tempfile.mkdtemp(prefix="femlib-ro-"))
    try:
        site = root / "site"
        shutil.copytree(SRC / "femlib", site / "femlib",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for p in [root, *root.rglob("*")]:
            p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
                    | (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH if p.is_dir() else 0))
        out = _run(
            _NO_CACHE_CODE,
            pythonpath=site,
            user="nobody",
            env={"HOME": "/nonexistent", "NUMBA_CACHE_DIR": str(root / "cache"),
                 "XDG_CACHE_HOME": "/nonexistent"},
        )
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(stat.S_IRWXU)
        shutil.rmtree(root)
    assert out.returncode == 0, out.stderr
    assert "notes: 1" in out.stdout
    assert "rows: (6, 7, 8, 8, 8, 8, 8, 8)" in out.stdout


# ----------------------------------------------------------------------------- stdout
def test_cli_main_job_without_numexpr_prints_only_the_summary(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    # As if numexpr were not installed (importlib.util.find_spec then returns None).
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['numexpr'] = None\n")
    out = _run(
        f"""
        import sys
        from femlib.cli import main
        sys.exit(main(["fem", "--synthetic-shape", "12", "12", "--out",
                       {str(tmp_path / "out")!r}]))
        """,
        pythonpath=f"{shim}{os.pathsep}{SRC}",
    )
    assert out.returncode == 0, out.stderr
    assert "Numexpr" not in out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("femlib fem: synthetic dataset (144 patterns)")
    assert lines[-1].startswith("  wrote ")
    assert all(line.startswith("  ") for line in lines[1:])
