"""The compiled kernels (femlib._kernels) against scipy.sparse products, partial tiles and
non-finite frames included."""

import numpy as np
import pytest

from femlib import _kernels
from femlib import integration as I

SHAPE = (20, 22)


@pytest.mark.parametrize("n", [1, 15, 16, 37])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16])
def test_polar_kernel_equals_sparse_product_and_flags_nonfinite_frames(n, dtype):
    rng = np.random.default_rng(n)
    w = I.build_weights(SHAPE, (10.2, 9.7), npt=30, npt_azim=90)
    assert w.area.size > I._BIN_MAJOR_ABOVE  # the tiled bin-major path
    frames = rng.poisson(20.0, (n,) + SHAPE).astype(dtype)
    ref = frames.reshape(n, -1).astype(np.float64) @ w.matrix.T
    got = I.integrate(frames, w, dtype=np.float64)
    np.testing.assert_allclose(got.reshape(n, -1), ref, rtol=1e-13, atol=1e-12)
    out32, bad = I._apply(frames, w, dtype=np.float32)
    np.testing.assert_allclose(out32.reshape(n, -1), ref, rtol=1e-6)
    assert not bad.any()
    if dtype != np.uint16:
        frames = frames.copy()
        frames[n - 1][w.touched[5] // SHAPE[1], w.touched[5] % SHAPE[1]] = np.inf
        _, bad = I._apply(frames, w)
        np.testing.assert_array_equal(np.flatnonzero(bad), [n - 1])


def test_tile_padding_leaves_no_trace():
    w = I.build_weights(SHAPE, (10.2, 9.7), npt=30, npt_azim=90)
    frames = np.random.default_rng(0).random((_kernels.TILE + 3,) + SHAPE)
    whole = I.integrate(frames, w)
    for i in (0, _kernels.TILE, _kernels.TILE + 2):
        np.testing.assert_array_equal(I.integrate(frames[i : i + 1], w)[0], whole[i])


def test_generated_tiled_kernel_is_up_to_date(tmp_path):
    path = tmp_path / "_tiled.py"
    _kernels.write_tiled(str(path))
    with open(_kernels._tiled.__file__) as f:
        assert f.read() == path.read_text()
