"""femlib: fluctuation electron microscopy (FEM) for 4D-STEM data, as a HyperSpy extension.

The numerical modules (:mod:`femlib.calibration`, :mod:`femlib.integration`,
:mod:`femlib.moments`, :mod:`femlib.variance`, :mod:`femlib.noise`, :mod:`femlib.groups`,
:mod:`femlib.thickness`, :mod:`femlib.ellipse`, :mod:`femlib.screening`) work on plain arrays;
:mod:`femlib.signals` wraps them as HyperSpy signals; :mod:`femlib.data` provides synthetic and
real datasets; :mod:`femlib.simulate` simulates scans of atomic models (ASE and abTEM
optional); :mod:`femlib.workflow` runs the command line's steps and :mod:`femlib.report`
writes their results.

Every public module is an attribute of the package (``femlib.noise.DetectorNoise`` after a
plain ``import femlib``), imported on first use: ``import femlib`` itself loads none of
them, nor numpy, HyperSpy, dask or numba.
"""

import importlib

#: The public modules, importable as attributes of the package (loaded on first access).
_MODULES = (
    "calibration",
    "cli",
    "data",
    "ellipse",
    "groups",
    "integration",
    "moments",
    "noise",
    "report",
    "screening",
    "signals",
    "simulate",
    "thickness",
    "variance",
    "workflow",
)

__all__ = ["__version__", *_MODULES]


def __getattr__(name):
    if name in _MODULES:
        # import_module binds the submodule as an attribute of the package: this runs once.
        return importlib.import_module(f"{__name__}.{name}")
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("femlib")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            value = "0.0.0+unknown"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
