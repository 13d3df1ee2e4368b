"""Tests of femlib.report: the outputs of a run, written atomically."""

import csv
import errno
import os
import tempfile
import warnings

import hyperspy.api as hs
import numpy as np
import pytest

from femlib import report, workflow
from femlib.workflow import UsageError

FILES = {"report.html", "variance.csv", "variance.hspy", "peaks.csv", "summed_ellipse.png",
         "polar.png", "variance.png"}


@pytest.fixture(scope="module")
def result():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return workflow.run_fem(synthetic_shape=(8, 8), npt=15, seed=4)


def _leftovers(folder):
    """Temporary folders of femlib beside the outputs."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_writes_every_file_and_nothing_else(result, tmp_path):
    out = tmp_path / "o"
    summary = report.write_outputs(result, out, label="o")
    assert {p.name for p in out.iterdir()} == FILES
    assert summary.splitlines()[-1] == ("  wrote o/: report.html, variance.csv, "
                                        "variance.hspy, peaks.csv and 3 PNG figures")
    assert _leftovers(tmp_path) == []
    # The files hold the result: V(k) in the CSV and the .hspy, the summary in the report.
    with open(out / "variance.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    v = np.array([float(r["V[Omega]"]) for r in rows])
    np.testing.assert_allclose(v, result.variance.data, rtol=1e-9)
    np.testing.assert_array_equal(hs.load(out / "variance.hspy").data, result.variance.data)
    assert summary.splitlines()[0] in (out / "report.html").read_text(encoding="utf-8")
    # Permissions as a plain mkdir gives (mkdtemp's folder is 0700).
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~umask


def test_full_disk_is_one_error_and_leaves_nothing(result, tmp_path, monkeypatch):
    def full(path, var):
        (path.parent / "variance.csv").write_text("half")  # a half-written file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "_write_csv", full)
    with pytest.raises(UsageError, match=r"cannot write the outputs for --out .*o: no space "
                       r"left on the device \(nothing written\)"):
        report.write_outputs(result, tmp_path / "o")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, RuntimeError])
def test_any_failure_while_writing_keeps_the_old_folder(result, tmp_path, monkeypatch, exc):
    out = tmp_path / "o"
    out.mkdir()
    (out / "old.txt").write_text("earlier run")

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(report, "_figures", boom)
    with pytest.raises(exc):
        report.write_outputs(result, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert _leftovers(tmp_path) == []


def test_existing_folder_refused_or_replaced_whole(result, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "variance_bins.png").write_text("stale file of an earlier run")
    with pytest.raises(UsageError, match="exists and is not empty: give --overwrite"):
        report.write_outputs(result, out)
    assert [p.name for p in out.iterdir()] == ["variance_bins.png"]
    report.write_outputs(result, out, overwrite=True)
    assert {p.name for p in out.iterdir()} == FILES  # the stale file is gone
    assert _leftovers(tmp_path) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    report.write_outputs(result, empty)  # an empty folder is no earlier result
    assert {p.name for p in empty.iterdir()} == FILES


def test_another_run_finishing_first_wins(result, tmp_path, monkeypatch):
    """The rename decides: a folder that appears while this run writes is not mixed."""
    out = tmp_path / "o"
    real = report._write_all

    def other_run_meanwhile(res, folder, label, command):
        summary = real(res, folder, label, command)
        out.mkdir()
        (out / "report.html").write_text("the other run's")
        return summary

    monkeypatch.setattr(report, "_write_all", other_run_meanwhile)
    with pytest.raises(UsageError, match="was written by another run while this one ran"):
        report.write_outputs(result, out)
    assert [p.name for p in out.iterdir()] == ["report.html"]
    assert (out / "report.html").read_text() == "the other run's"
    assert _leftovers(tmp_path) == []


def test_check_out_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="exists and is not a folder"):
        report.check_out(tmp_path / "file")
    with pytest.raises(UsageError, match="its parent folder .*missing does not exist"):
        report.check_out(tmp_path / "missing" / "o")

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    with pytest.raises(UsageError, match=r"cannot write in .* \(Permission denied\)"):
        report.check_out(tmp_path / "o")
    assert list(tmp_path.iterdir()) == [tmp_path / "file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_out_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(UsageError, match="cannot write in"):
            report.check_out(ro / "o")
    finally:
        ro.chmod(0o755)


def test_report_without_an_ellipse(result, tmp_path):
    """A run with --center: the figure shows the given centre, the report says so."""
    s_center = tuple(result.center[::-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = workflow.run_fem(synthetic_shape=(8, 8), npt=15, seed=4, center=s_center)
    report.write_outputs(r, tmp_path / "o")
    page = (tmp_path / "o" / "report.html").read_text(encoding="utf-8")
    assert "not fitted: centre given (--center), identity affine" in page


@pytest.mark.parametrize("where", ["check", "partial"])
def test_a_signal_while_a_folder_is_made_leaves_nothing(result, tmp_path, monkeypatch, where):
    """SIGTERM right after the probe (check_out) or the temporary folder (write_outputs) is
    made waits until the folder is removed, or known to the clean-up: nothing is left."""
    import signal
    import tempfile as tf

    from femlib import report

    class Stop(Exception):
        pass

    def handler(signum, frame):
        raise Stop

    real = tf.mkdtemp

    def mkdtemp_then_signal(*args, **kwargs):
        path = real(*args, **kwargs)
        if kwargs.get("suffix", "").endswith(where):
            os.kill(os.getpid(), signal.SIGTERM)  # pending: signals are blocked here
        return path

    previous = signal.signal(signal.SIGTERM, handler)
    monkeypatch.setattr(report.tempfile, "mkdtemp", mkdtemp_then_signal)
    try:
        with pytest.raises(Stop):
            report.write_outputs(result, tmp_path / "o")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert list(tmp_path.iterdir()) == []
