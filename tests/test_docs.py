"""The documentation builds with no warning, executing the gallery examples (offline)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_without_warnings(tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("FEMLIB_REAL_DATA", None)  # the gallery runs on the synthetic data
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(ROOT / "docs"),
            str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    html = tmp_path / "html"
    assert (html / "auto_examples" / "amorphous_characterization" / "fem.html").exists()
    assert (html / "auto_examples" / "processing" / "azimuthal_integration.html").exists()
    assert (
        html / "auto_examples" / "amorphous_characterization" / "structural_model.html"
    ).exists()
