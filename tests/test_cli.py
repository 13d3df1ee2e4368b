"""Tests of the ``femlib`` command line."""

import csv
import subprocess
import sys

import hyperspy.api as hs
import numpy as np
import pytest

import femlib
from femlib.cli import main


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fem")
    code = main(["fem", "--out", str(out), "--quiet", "--thickness-bins", "8"])
    return code, out


def test_synthetic_run_writes_outputs(synthetic_run, capsys):
    code, out = synthetic_run
    assert code == 0
    for name in (
        "variance.csv",
        "variance.hspy",
        "summed_ellipse.png",
        "polar.png",
        "variance.png",
        "variance_bins.png",
    ):
        assert (out / name).stat().st_size > 0, name


def test_summary_recovers_centre_and_peak(tmp_path, capsys):
    assert main(["fem", "--out", str(tmp_path), "--quiet"]) == 0
    text = capsys.readouterr().out
    line = next(x for x in text.splitlines() if x.strip().startswith("centre (x, y)"))
    found = np.array([float(v) for v in line.split("(")[-1].split(")")[0].split(",")])
    truth = femlib.data.synthetic_fem().metadata.Simulation
    assert np.hypot(*(found - np.asarray(truth.center))) < 0.2
    peaks = [float(x.split("k =")[1].split(":")[0]) for x in text.splitlines() if "k =" in x]
    k_true = truth.k[np.argmax(truth.variance)]
    bin_width = (5.75 - 3.0) / 50
    assert abs(peaks[0] - k_true) <= bin_width


def test_csv_agrees_with_get_variance(synthetic_run):
    _, out = synthetic_run
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
    direct = s.get_variance(
        npt=50,
        gain=4.2,
        radial_range=(3.0, 5.75),
        mask=mask,
        thickness=thickness,
        bins=8,
        show_progressbar=False,
    )
    np.testing.assert_allclose(table["k"], direct.axes_manager.signal_axes[0].axis, rtol=1e-9)
    labels = direct.curve_labels()
    for i, lab in enumerate(labels):
        np.testing.assert_allclose(table[f"V[{lab}]"], direct.data[i], rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(table[f"se[{lab}]"], direct.standard_error[i], rtol=1e-8)
    np.testing.assert_allclose(table["V[combined]"], direct.combined().data, rtol=1e-8, atol=1e-12)


def test_file_input_runs_lazily(tmp_path, capsys):
    s = femlib.data.synthetic_fem(navigation_shape=(12, 12), seed=2)
    path = tmp_path / "small.hspy"
    s.save(path)
    code = main(
        [
            "fem",
            str(path),
            "--gain",
            "4.2",
            "--radial-range",
            "3.0",
            "5.5",
            "--mask-below",
            "1000",
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    assert code == 0
    assert "144 patterns" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.hspy"], "does not exist"),
        (["--gain", "0"], "gain must be a positive"),
        (["--gain", "-2"], "gain must be a positive"),
        (["--npt", "0"], "--npt must be a positive"),
        (["--method", "foo"], "method must be one of"),
        (["--radial-range", "3", "99"], "outside the detector"),
        (["--radial-range", "5", "3"], "radial_range must be increasing"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, tmp_path, capsys):
    code = main(["fem", *args, "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_not_4d_input(tmp_path, capsys):
    path = tmp_path / "image.hspy"
    hs.signals.Signal2D(np.ones((16, 16))).save(path)
    assert main(["fem", str(path), "--out", str(tmp_path), "--quiet"]) == 2
    assert "4D-STEM" in capsys.readouterr().err


def test_python_dash_m():
    res = subprocess.run(
        [sys.executable, "-m", "femlib", "fem", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--thickness-bins" in res.stdout
