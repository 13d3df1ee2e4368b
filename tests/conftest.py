"""Shared test configuration."""

import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture
def keep_small_chunks(monkeypatch):
    """Let lazy tests run with many tiny chunks (normally merged for speed)."""
    import femlib.integration

    monkeypatch.setattr(femlib.integration, "MIN_CHUNK_BYTES", 0)
