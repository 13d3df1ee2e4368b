"""Tests of the ``femlib`` command line, run as a user runs it: in a subprocess."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import hyperspy.api as hs
import numpy as np
import pytest

import femlib

README = Path(__file__).resolve().parents[1] / "README.md"


def femlib_cmd(*args, cwd):
    """Run ``python -m femlib ARGS`` (stderr is a pipe, not a terminal)."""
    env = dict(os.environ, MPLBACKEND="Agg")
    src = str(Path(femlib.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "femlib", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=600,
    )


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    """The README's main job, ``femlib fem --thickness-bins 8``, in an empty folder."""
    cwd = tmp_path_factory.mktemp("main_job")
    res = femlib_cmd("fem", "--thickness-bins", "8", cwd=cwd)
    assert res.returncode == 0, res.stderr
    return res, cwd / "femlib_out"


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "small.hspy"
    femlib.data.synthetic_fem(navigation_shape=(12, 12), seed=2).save(path)
    return path


def test_version(tmp_path):
    res = femlib_cmd("--version", cwd=tmp_path)
    assert res.returncode == 0
    assert res.stdout == f"femlib {femlib.__version__}\n"
    assert res.stderr == ""


def test_stdout_holds_only_the_summary(main_job):
    res, _ = main_job
    lines = res.stdout.splitlines()
    assert lines[0] == "femlib fem: synthetic dataset (1600 patterns)"
    assert lines[-1].startswith("  wrote femlib_out/: report.html")
    assert all(line.startswith("  ") for line in lines[1:])
    # No progress bar anywhere (stderr is not a terminal): one line per finished step.
    assert "Completed" not in res.stdout + res.stderr and "\r" not in res.stdout + res.stderr
    steps = res.stderr.splitlines()
    assert len(steps) == 5 and all(re.fullmatch(r"femlib: .+ \(\d+\.\d s\)", s) for s in steps)


def test_readme_sample_output_is_the_current_output(main_job):
    """The README's sample block is this run's stdout: it cannot go stale."""
    res, _ = main_job
    text = README.read_text(encoding="utf-8")
    block = re.search(r"recovers the stored truth:\n\n```\n(.*?)```", text, re.S)
    assert block, "README.md lost its sample-output block"
    assert block.group(1) == res.stdout, (
        "README.md's sample output is stale; replace the block with:\n" + res.stdout
    )


def test_summary_recovers_centre_and_peak(main_job):
    text = main_job[0].stdout
    line = next(x for x in text.splitlines() if x.strip().startswith("centre (x, y)"))
    found = np.array([float(v) for v in line.split("(")[-1].split(")")[0].split(",")])
    truth = femlib.data.synthetic_fem().metadata.Simulation
    assert np.hypot(*(found - np.asarray(truth.center))) < 0.2
    peaks = [float(x.split("k =")[1].split(":")[0]) for x in text.splitlines() if "k =" in x]
    k_true = truth.k[np.argmax(truth.variance)]
    bin_width = (5.75 - 3.0) / 50
    assert abs(peaks[0] - k_true) <= bin_width
    assert "  patterns used: 1600 of 1600" in text


def test_report_shows_existing_figures_and_tables(main_job):
    _, out = main_job
    page = (out / "report.html").read_text(encoding="utf-8")
    shown = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(shown) == sorted(p.name for p in out.glob("*.png"))
    assert len(shown) == 4
    for name in shown:
        assert (out / name).stat().st_size > 10_000, name
    # Calibration: the centre printed in the summary; one table row per thickness bin.
    centre = re.search(r"centre \(x, y\): (\(.*?\)) px", main_job[0].stdout).group(1)
    assert f"<td>centre (x, y)</td><td>{centre} px</td>" in page
    assert "<td>input</td><td>synthetic dataset" in page
    bins_table = page.split("<h2>Thickness bins</h2>")[1].split("</table>")[0]
    counts = [int(n) for n in re.findall(r"<td>\d+\.\d+–\d+\.\d+</td><td>(\d+)</td>", bins_table)]
    assert len(counts) == 8 and sum(counts) == 1600
    assert "<h2>Peaks</h2>" in page


def test_csv_agrees_with_get_variance(main_job):
    _, out = main_job
    with open(out / "variance.csv", encoding="utf-8") as f:
        header = next(csv.reader(f))
    values = np.loadtxt(out / "variance.csv", delimiter=",", skiprows=1)
    table = dict(zip(header, values.T, strict=True))
    saved = hs.load(out / "variance.hspy")
    cal = saved.metadata.FEM.Calibration
    s = femlib.data.synthetic_fem()
    s.calibration.center = cal.center
    s.calibration.affine = cal.affine
    mask = s.sum().data < 0.05 * np.median(s.sum().data)
    t = s.metadata.Simulation
    thickness = femlib.thickness.thickness_from_haadf(
        s.metadata.HAADF.intensity, t.black_level, t.slope
    )
    direct = s.get_variance(npt=50, gain=4.2, radial_range=(3.0, 5.75), mask=mask,
                            thickness=thickness, bins=8, show_progressbar=False)
    np.testing.assert_allclose(table["k"], direct.axes_manager.signal_axes[0].axis, rtol=1e-9)
    for i, lab in enumerate(direct.curve_labels()):
        np.testing.assert_allclose(table[f"V[{lab}]"], direct.data[i], rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(table[f"se[{lab}]"], direct.standard_error[i], rtol=1e-8)
    np.testing.assert_allclose(table["V[combined]"], direct.combined().data, rtol=1e-8,
                               atol=1e-12)


def test_file_input_runs_lazily(small_file, tmp_path):
    res = femlib_cmd("fem", small_file, "--gain", "4.2", "--radial-range", "3.0", "5.5",
                     "--mask-below", "1000", "--out", tmp_path / "o", "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""  # --quiet: no progress lines, and nothing to warn about
    assert "(144 patterns)" in res.stdout and "patterns used: 144 of 144" in res.stdout
    assert (tmp_path / "o" / "report.html").exists()


def test_empty_thickness_bins_reported_in_one_line(tmp_path):
    """Many more bins than patterns per bin: one warning line, and the summary counts the
    patterns actually used."""
    res = femlib_cmd("fem", "--thickness-bins", "1000", "--npt", "10", "--out", "o",
                     cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    warn = [x for x in res.stderr.splitlines() if "warning" in x]
    assert len(warn) == 1 and "Warning" not in res.stderr and "cli.py" not in res.stderr
    found = re.search(
        r"femlib: warning: (\d+) of 1000 thickness bins hold fewer than 2 patterns and "
        r"are left out \((\d+) patterns\)", warn[0]
    )
    left_bins, left_patterns = (int(x) for x in found.group(1, 2))
    used = int(re.search(r"patterns used: (\d+) of 1600", res.stdout).group(1))
    assert used + left_patterns == 1600 and 0 < left_patterns < 1600
    kept = int(re.search(r"thickness bins: (\d+) of 1000 hold", res.stdout).group(1))
    assert kept + left_bins == 1000
    # The independent count: bins of equal width over the true thickness.
    t = femlib.data.synthetic_fem().metadata.Simulation
    thickness = (np.asarray(femlib.data.synthetic_fem().metadata.HAADF.intensity)
                 - t.black_level) / t.slope
    counts, _ = np.histogram(thickness, bins=1000)
    assert used == counts[counts >= 2].sum() and kept == (counts >= 2).sum()


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "notes.txt").write_text("hello\n")
    (folder / "corrupt.zspy").write_bytes(b"junk")
    (folder / "broken.zspy").mkdir()
    (folder / "broken.zspy" / ".zgroup").write_text("junk")
    good = folder / "good.hspy"
    femlib.data.synthetic_fem(navigation_shape=(4, 4)).save(good)
    data = good.read_bytes()
    (folder / "truncated.hspy").write_bytes(data[: len(data) // 3])
    hs.signals.Signal2D(np.ones((16, 16))).save(folder / "image.hspy")
    hs.signals.Signal2D(np.ones((3, 3, 16, 16))).save(folder / "no_haadf.hspy")
    return folder


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mask-below", "-5"], "argument --mask-below: must be > 0, got -5"),
        (["--mask-below", "0"], "argument --mask-below: must be > 0, got 0"),
        (["--mask-below", "1e12"], "--mask-below 1e+12 masks every pixel"),
        (["good.hspy", "--seed", "3"], "--seed only applies to the synthetic dataset"),
        (["--seed", "-1"], "argument --seed: must be >= 0"),
        (["notes.txt"], "unsupported file type .txt"),
        (["corrupt.zspy"], "cannot read corrupt.zspy: not a readable zspy file"),
        (["broken.zspy"], "cannot read broken.zspy: not a readable zspy file"),
        (["truncated.hspy"], "cannot read truncated.hspy"),
        (["image.hspy"], "a 4D-STEM stack"),
        (["missing.hspy"], "INPUT missing.hspy does not exist"),
        (["--gain", "0"], "argument --gain: must be > 0"),
        (["--gain", "-2"], "argument --gain: must be > 0"),
        (["--gain", "nan"], "argument --gain: must be finite"),
        (["--npt", "0"], "argument --npt: must be > 0"),
        (["--npt", "2.5"], "argument --npt: expected an integer"),
        (["--method", "foo"], "argument --method: invalid choice: 'foo'"),
        (["--radial-range", "3", "99"], "--radial-range 3 99 lies outside the detector"),
        (["--radial-range", "3", "20"], "outside the detector"),
        (["--radial-range", "5", "3"], "--radial-range must be increasing"),
        (["--radial-range", "-1", "3"], "argument --radial-range: must be >= 0"),
        (["--thickness-bins", "0"], "argument --thickness-bins: must be > 0"),
        (["--thickness-bins", "2", "--slope", "0"], "argument --slope: must not be 0"),
        (["--black-level", "3"], "--black-level only applies with --thickness-bins"),
        (["good.hspy", "--thickness-bins", "2"], "needs --black-level and --slope"),
        (["no_haadf.hspy", "--thickness-bins", "2", "--black-level", "0", "--slope", "1"],
         "--thickness-bins needs a HAADF image in metadata.HAADF.intensity"),
        (["--thickness-bins", "2", "--black-level", "inf"],
         "argument --black-level: must be finite"),
        (["--num-points", "2"], "argument --num-points: must be >= 5"),
        (["--out", "good.hspy"], "--out good.hspy exists and is not a folder"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_option_exits_2_with_one_line_and_no_output(args, message, bad_files):
    out = bad_files / "never_created"
    if "--out" not in args:
        args = [*args, "--out", out]
    res = femlib_cmd("fem", *args, cwd=bad_files)
    lines = res.stderr.splitlines()
    errors = [x for x in lines if x.startswith("femlib: error:")]
    assert res.returncode == 2, res.stderr
    assert len(errors) == 1 and message in errors[0], res.stderr
    # Anything else is a finished-step line, for the errors found after summing.
    assert all(re.fullmatch(r"femlib: .+ \(\d+\.\d s\)", x) for x in lines if x not in errors)
    assert "Traceback" not in res.stderr and "WARNING" not in res.stderr
    assert "ERROR |" not in res.stderr  # no HyperSpy or RosettaSciIO log lines
    assert res.stdout == ""
    assert not out.exists()


def test_python_dash_m_help(tmp_path):
    res = femlib_cmd("fem", "--help", cwd=tmp_path)
    assert res.returncode == 0 and "--thickness-bins" in res.stdout


def test_warnings_are_one_line_without_source(capsys):
    """A library warning, however long and multi-line, becomes one line on stderr."""
    import warnings

    from femlib.cli import _one_line_warnings

    with _one_line_warnings():
        warnings.warn("first line\n  second line", UserWarning, stacklevel=1)
        warnings.warn("x" * 1000, RuntimeWarning, stacklevel=1)
        warnings.warn("old API", DeprecationWarning, stacklevel=1)  # not for CLI users
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "femlib: warning: first line second line"
    assert err[1] == "femlib: warning: " + "x" * 297 + "..."
    assert len(err) == 2


def test_progress_bars_go_to_stderr(capsys):
    """dask's bar writes to stdout by default; the CLI's goes to stderr with the step line."""
    import time

    import dask

    from femlib.cli import _Progress

    slow = dask.delayed(lambda: time.sleep(1.3) or 1)()  # longer than the bar's minimum
    with _Progress(bars=True, lines=True).step("slept"):
        assert dask.compute(slow, scheduler="threads") == (1,)
    out, err = capsys.readouterr()
    assert out == ""
    assert "100% Completed" in err and re.search(r"^femlib: slept \(\d+\.\d s\)$", err, re.M)
    with _Progress(bars=False, lines=False).step("quiet"):
        dask.compute(slow, scheduler="threads")
    assert capsys.readouterr() == ("", "")
