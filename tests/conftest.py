"""Shared test configuration."""

import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture(scope="session")
def synthetic_default():
    """``femlib.data.synthetic_fem()`` with its defaults (1600 patterns of 128 x 128, a few
    seconds to make), made once per test process and shared by the modules that need the
    default dataset itself. Read it, never change it: ``.deepcopy()`` it first."""
    import femlib

    return femlib.data.synthetic_fem()


@pytest.fixture
def keep_small_chunks(monkeypatch):
    """Let lazy tests run with many tiny chunks (normally merged for speed)."""
    import femlib.integration

    monkeypatch.setattr(femlib.integration, "MIN_CHUNK_BYTES", 0)


# ------------------------------------------------------------------ ellipse tests


def _render_ring(center, major, ratio, rotation, sigma=1.5, background=True, shape=(128, 128)):
    """A ring whose peak is the ellipse (major, major / ratio, rotation) about (row, col).

    Written from the geometry alone (no femlib): the profile is a Gaussian in the corrected
    radius ``|R diag(1, ratio) R^T (p - c)|`` on a decaying background (whose slope is what
    biases picking the brightest pixels).
    """
    import numpy as np

    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(float)
    c, s = np.cos(rotation), np.sin(rotation)
    dx, dy = cols - center[1], rows - center[0]
    along = c * dx + s * dy  # major-axis direction
    across = -s * dx + c * dy
    rho = np.hypot(along, ratio * across)
    img = 1000.0 * np.exp(-((rho - major) ** 2) / (2 * sigma**2))
    if background:
        img += 3000.0 * np.exp(-rho / 15.0)
    return img


@pytest.fixture
def render_ring():
    """The ring renderer :func:`_render_ring` (a function, to call with its parameters)."""
    return _render_ring


@pytest.fixture
def disk_mask():
    """``disk_mask(center, radius, shape=(128, 128))``: True inside the disk."""
    import numpy as np

    def make(center, radius, shape=(128, 128)):
        rows, cols = np.mgrid[: shape[0], : shape[1]]
        return np.hypot(rows - center[0], cols - center[1]) < radius

    return make
