"""femlib: fluctuation electron microscopy (FEM) for 4D-STEM data, as a HyperSpy extension.

The numerical modules (:mod:`femlib.integration`, :mod:`femlib.variance`,
:mod:`femlib.ellipse`, :mod:`femlib.thickness`) work on plain arrays; :mod:`femlib.signals`
wraps them as HyperSpy signals; :mod:`femlib.data` provides synthetic and real datasets;
:mod:`femlib.simulate` simulates scans of atomic models (ASE and abTEM optional).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("femlib")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

from femlib import (  # noqa: E402
    calibration,
    data,
    ellipse,
    integration,
    screening,
    signals,
    simulate,
    thickness,
    variance,
)

__all__ = [
    "__version__",
    "calibration",
    "data",
    "ellipse",
    "integration",
    "screening",
    "signals",
    "simulate",
    "thickness",
    "variance",
]
