"""Sphinx configuration of the femlib documentation.

Build (offline, warnings are errors)::

    python -m sphinx -W -b html docs docs/_build/html

Nothing here needs the network: there are no intersphinx inventories, the gallery examples
must run on local data, and MathJax is served with the pages (the JavaScript and fonts of
the ``sphinx-mathjax-offline`` package are copied into ``_static/mathjax``), so the formulas
render with no network access when the pages are read too.
"""

import importlib
import importlib.util
import os
import re
import shutil
from pathlib import Path

# Plots are rendered to files: never open a window, whatever the caller's environment.
os.environ["MPLBACKEND"] = "Agg"

import matplotlib  # noqa: E402

matplotlib.use("Agg", force=True)

from sphinx.util import logging as sphinx_logging  # noqa: E402

import femlib  # noqa: E402

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"

# -- Project -------------------------------------------------------------------------------
project = "femlib"
author = "femlib developers"
copyright = "femlib developers"  # noqa: A001 - Sphinx's name
release = femlib.__version__
version = ".".join(release.split(".")[:2])

# -- General -------------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "matplotlib.sphinxext.plot_directive",
]
# sphinx.ext.intersphinx is deliberately not enabled: the build must run offline.

templates_path = ["_templates"]
# Only .rst files are sources. The gallery pages sphinx-gallery writes into auto_examples/
# are sources (never exclude them); the .py, .ipynb and .zip files beside them are not.
exclude_patterns = [
    "_build",
    "_templates",
    "**.ipynb_checkpoints",
    "Thumbs.db",
    ".DS_Store",
    "sg_execution_times.rst",
    "**/sg_execution_times.rst",
]
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
language = "en"
default_role = "literal"  # `x` renders as code, never as an unresolved cross-reference
pygments_style = "sphinx"
add_module_names = False
nitpicky = False

# -- MathJax, served with the pages -------------------------------------------------------
# The MathJax 3 files come from the sphinx-mathjax-offline package (a docs extra); only the
# parts the pages load are copied (see _copy_mathjax). MathJax's combined components
# (tex-chtml.js ...) and its menu bundle the speech-rule engine, which fetches its data
# from a CDN: they are left out, so the built site holds no CDN address at all. The page
# loads the loader (startup.js) and the TeX input and HTML output components with it; the
# fonts are found beside the script, whatever the depth of the page.
mathjax_path = "mathjax/startup.js"
mathjax3_config = {
    "loader": {"load": ["input/tex", "output/chtml", "a11y/assistive-mml"]},
}
# What startup.js loads, relative to the package's static/mathjax folder.
_MATHJAX_PARTS = (
    "startup.js",
    "core.js",
    "input/tex.js",
    "input/tex",  # the TeX extensions the autoloader fetches on demand
    "output/chtml.js",
    "output/chtml",  # its font data and woff-v2 fonts
    "a11y/assistive-mml.js",
)


def _mathjax_source():
    spec = importlib.util.find_spec("sphinx-mathjax-offline")  # the package's import name
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the documentation serves MathJax from the sphinx-mathjax-offline package: "
            'install the docs extra (python -m pip install -e ".[docs]")'
        )
    return Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax"


def _copy_mathjax(app, exc):
    if exc is not None or app.builder.format != "html":
        return
    src = _mathjax_source()
    dest = Path(app.outdir) / "_static" / "mathjax"
    for part in _MATHJAX_PARTS:
        if (src / part).is_dir():
            shutil.copytree(src / part, dest / part, dirs_exist_ok=True)
        else:
            (dest / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / part, dest / part)


# -- autodoc / autosummary -----------------------------------------------------------------
autosummary_generate = True  # stubs go to docs/api/generated (the :toctree: of api.rst)
autosummary_generate_overwrite = True
autosummary_imported_members = False
autosummary_ignore_module_all = False
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"
autoclass_content = "class"
autodoc_inherit_docstrings = False  # never show HyperSpy's docstrings as femlib's

# -- numpydoc ------------------------------------------------------------------------------
numpydoc_show_class_members = False  # the class template lists only femlib's own members
numpydoc_show_inherited_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_validation_checks = set()
# Cross-reference parameter types, but only the names below: everything else in a type
# ("(N, 2) ndarray of float", "bool or None") stays plain text, so nothing can dangle.
numpydoc_xref_param_type = True
numpydoc_xref_ignore = "all"
_XREF = {
    "Calibration": "femlib.calibration.Calibration",
    "AzimuthalWeights": "femlib.integration.AzimuthalWeights",
    "Moments": "femlib.moments.Moments",
    "EllipseFitError": "femlib.ellipse.EllipseFitError",
    "FEMDiffraction2D": "femlib.signals.FEMDiffraction2D",
    "LazyFEMDiffraction2D": "femlib.signals.LazyFEMDiffraction2D",
    "FEMPolar2D": "femlib.signals.FEMPolar2D",
    "LazyFEMPolar2D": "femlib.signals.LazyFEMPolar2D",
    "FEMVariance1D": "femlib.signals.FEMVariance1D",
    "LazyFEMVariance1D": "femlib.signals.LazyFEMVariance1D",
}
numpydoc_xref_aliases = {**_XREF, **{v: v for v in _XREF.values()}}  # short and full names

# -- matplotlib plot directive (figures drawn at build time) -------------------------------
plot_include_source = False
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 120)]
plot_pre_code = "import numpy as np\nimport matplotlib.pyplot as plt\n"
plot_rcparams = {"figure.autolayout": False, "savefig.bbox": "tight"}
plot_apply_rcparams = True

# -- sphinx-gallery ------------------------------------------------------------------------
if not (EXAMPLES / "README.rst").is_file():
    raise RuntimeError(
        f"the gallery needs {EXAMPLES / 'README.rst'} (and one README.rst per example "
        "folder); the documentation is built from a full checkout of the repository"
    )

sphinx_gallery_conf = {
    "examples_dirs": ["../examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"/",  # execute every example
    "within_subsection_order": "FileNameSortKey",
    "doc_module": ("femlib",),
    "backreferences_dir": "api/generated/backreferences",
    "matplotlib_animations": False,
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "image_scrapers": ("matplotlib",),
    "remove_config_comments": True,
    "show_memory": False,
    "plot_gallery": "True",
    # The execution-times pages load jQuery and DataTables from CDNs: not written (and
    # stale copies from older builds excluded below), so the site needs no network.
    "write_computation_times": False,
}

# Examples run inside the build: keep their output free of progress bars.
try:
    from hyperspy.defaults_parser import preferences as _hs_preferences

    _hs_preferences.General.show_progressbar = False
except Exception:  # pragma: no cover - HyperSpy layout changed; progress bars are cosmetic
    pass

# -- HTML ----------------------------------------------------------------------------------
try:
    import pydata_sphinx_theme  # noqa: F401

    html_theme = "pydata_sphinx_theme"
    html_theme_options = {
        "navigation_with_keys": False,
        "show_toc_level": 2,
        "navbar_align": "left",
        "secondary_sidebar_items": ["page-toc"],
        "footer_start": ["copyright"],
        "footer_end": ["sphinx-version"],
    }
except ImportError:  # fall back to Sphinx's bundled theme
    html_theme = "alabaster"
    html_theme_options = {}
html_title = f"femlib {release}"
html_show_sourcelink = False
html_static_path = []

# -- Coverage check: every public name of femlib is listed in api.rst ----------------------
_API_MODULES = (
    "femlib.calibration",
    "femlib.integration",
    "femlib.variance",
    "femlib.thickness",
    "femlib.ellipse",
    "femlib.signals",
    "femlib.data",
    "femlib.simulate",
)


def _public_names(modname):
    mod = importlib.import_module(modname)
    names = getattr(mod, "__all__", None)
    if names is None:  # no __all__: the public callables defined in the module itself
        names = [
            n
            for n, obj in vars(mod).items()
            if not n.startswith("_")
            and callable(obj)
            and getattr(obj, "__module__", "").startswith(modname)
        ]
    return sorted(names)


def _check_api_coverage(app):
    """Warn (an error under -W) for a public name that api.rst does not list."""
    logger = sphinx_logging.getLogger("femlib.docs")
    text = (Path(app.srcdir) / "api.rst").read_text(encoding="utf-8")
    listed = set()
    module = None
    for line in text.splitlines():
        m = re.match(r"\s*\.\. currentmodule:: (\S+)", line)
        if m:
            module = m.group(1)
            continue
        m = re.match(r"\s{3,}(~?[A-Za-z_][\w.]*)\s*$", line)
        if m and module:
            listed.add(f"{module}.{m.group(1).lstrip('~')}")
    for modname in _API_MODULES:
        for name in _public_names(modname):
            if f"{modname}.{name}" not in listed:
                logger.warning("api.rst does not list the public name %s.%s", modname, name)


def _local_xrefs_only(app, config):
    """Drop numpydoc's default type links (to Python's and NumPy's inventories).

    numpydoc adds them to ``numpydoc_xref_aliases_complete`` when the configuration is
    read; without intersphinx every one of them would be an unresolved reference.
    """
    config.numpydoc_xref_aliases_complete = dict(config.numpydoc_xref_aliases)


def setup(app):
    app.connect("config-inited", _local_xrefs_only, priority=900)  # after numpydoc's own
    app.connect("builder-inited", _check_api_coverage)
    _mathjax_source()  # fail at the start of the build, not after it, when it is missing
    app.connect("build-finished", _copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
