"""Doctest set-up for the examples in ``src/femlib`` (collected with ``--doctest-modules``):
the names every example may use, a non-interactive matplotlib backend, quiet progress bars and
an empty data cache (the examples never download)."""

import matplotlib
import numpy as np
import pytest
from _pytest.doctest import DoctestItem

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _doctest_setup(request, doctest_namespace, monkeypatch, tmp_path):
    if not isinstance(request.node, DoctestItem):
        return
    import hyperspy.api as hs

    import femlib

    doctest_namespace.update(np=np, hs=hs, femlib=femlib)
    monkeypatch.setattr(hs.preferences.General, "show_progressbar", False)
    monkeypatch.setenv("FEMLIB_DATA_DIR", str(tmp_path / "femlib-data"))
