"""The documentation builds with no warning, executing the gallery examples (offline)."""

import os
import re
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
    # The formulas render offline: MathJax is served from _static, and no built file
    # (page, script or style) refers to a CDN.
    assert (html / "_static" / "mathjax" / "startup.js").is_file()
    fonts = html / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2"
    assert any(fonts.glob("MathJax_Main-Regular.woff"))
    estimators = (html / "user_guide" / "estimators.html").read_text(encoding="utf-8")
    assert 'src="../_static/mathjax/startup.js"' in estimators and "\\frac" in estimators
    cdn = re.compile(r"cdn\.jsdelivr|cdnjs|mathjax@|unpkg\.com")
    offenders = [
        str(f.relative_to(html))
        for f in html.rglob("*")
        if f.suffix in (".html", ".js", ".css") and cdn.search(f.read_text("utf-8", "replace"))
    ]
    assert offenders == []
    # No stray reprs in the gallery's outputs (a cell ending in ax.legend(), plot_spectra).
    stray = re.compile(r"&lt;Axes|&lt;matplotlib\.|\bText\(\d")
    pages = sorted((html / "auto_examples").rglob("*.html"))
    assert [str(f.relative_to(html)) for f in pages if stray.search(f.read_text("utf-8"))] == []
