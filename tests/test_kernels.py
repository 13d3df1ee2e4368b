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
    # Each bin sums its pixels in pixel order, as a scalar loop does: to the last bit.
    np.testing.assert_array_equal(got.reshape(n, -1), _ring_reference(frames, w))
    out32, bad = I._apply(frames, w, dtype=np.float32)
    np.testing.assert_allclose(out32.reshape(n, -1), ref, rtol=1e-6)
    assert not bad.any()
    if dtype != np.uint16:
        frames = frames.copy()
        frames[n - 1][w.touched[5] // SHAPE[1], w.touched[5] % SHAPE[1]] = np.inf
        _, bad = I._apply(frames, w)
        np.testing.assert_array_equal(np.flatnonzero(bad), [n - 1])


def test_partial_step_leaves_no_trace():
    w = I.build_weights(SHAPE, (10.2, 9.7), npt=30, npt_azim=90)
    frames = np.random.default_rng(0).random((_kernels.LANES + 3,) + SHAPE)
    whole = I.integrate(frames, w)
    for i in (0, _kernels.LANES, _kernels.LANES + 2):
        np.testing.assert_array_equal(I.integrate(frames[i : i + 1], w)[0], whole[i])


def _ring_reference(frames, w):
    """Per frame and bin, ``sum_p w * x`` added in pixel order, one scalar at a time: the
    order the vector kernels keep, so they must agree to the last bit."""
    flat = frames.reshape(frames.shape[0], -1).astype(np.float64)
    out = np.zeros((flat.shape[0], w.area.size))
    for j, p in enumerate(w.touched):
        for jj in range(w.colptr[j], w.colptr[j + 1]):
            k, wk = w.rowidx[jj], w.wdata[jj]
            for f in range(flat.shape[0]):
                out[f, k] = out[f, k] + wk * flat[f, p]
    return out


@pytest.mark.parametrize("n", [1, 7, 8, 9, 21])
@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.dtype(">f8")])
def test_few_bin_kernel_matches_a_scalar_pixel_major_sum(n, dtype):
    rng = np.random.default_rng(n)
    w = I.build_weights(SHAPE, (10.2, 9.7), npt=6, radial_range=(2, 9))
    assert w.area.size <= I._BIN_MAJOR_ABOVE  # the FEM-pass kernel
    frames = rng.poisson(20.0, (n,) + SHAPE).astype(dtype)
    # Two interleaved accumulators per bin: the order of the additions differs, by a few ulp.
    np.testing.assert_allclose(I.integrate(frames, w), _ring_reference(frames, w), rtol=1e-14)


@pytest.mark.parametrize("n", [5, 8, 16, 27])
def test_ring_moments_match_sparse_products_with_mixed_and_excluded_states(n):
    rng = np.random.default_rng(3 + n)
    w = I.build_weights(SHAPE, (10.2, 9.7), npt=6, radial_range=(2, 9))
    frames = rng.poisson(20.0, (n,) + SHAPE).astype(np.float32)
    flat = frames.reshape(n, -1).astype(np.float64)
    # Runs of one state (the shortcut that adds eight frames at once), a mixed step and
    # excluded frames.
    states = np.repeat([0, 1, 2], -(-n // 3))[:n].astype(np.int64)
    states[2] = -1
    indptr, cindex, wdata = w.bin_major
    sdata = 3.0 * wdata**2
    # Frames processed in state order (as the FEM pass does): outputs in that order.
    rows = np.argsort(states, kind="stable")
    out, pixsum, pixsq = _kernels.ring_moments(
        frames.reshape(n, -1), w.touched, indptr, cindex, wdata, states[rows], 3, rows=rows,
        sdata=sdata, with_j=True, pixel_means=True, pixel_squares=True,
    )
    np.testing.assert_allclose(out[0], _ring_reference(frames, w)[rows], rtol=1e-14)
    np.testing.assert_allclose(out[1], (flat @ (3.0 * w.squared.T))[rows], rtol=1e-13)
    np.testing.assert_allclose(out[2], (flat**2 @ w.matrix.T)[rows], rtol=1e-13)
    pix = flat[:, w.touched]
    for s in range(3):
        np.testing.assert_allclose(pixsum[s], pix[states == s].sum(0), rtol=1e-13)
        np.testing.assert_allclose(pixsq[s], (pix[states == s] ** 2).sum(0), rtol=1e-13)


@pytest.mark.parametrize("layout", ["float16", "strided"])
def test_polar_kernel_writes_any_output_array(layout):
    w = I.build_weights(SHAPE, (10.2, 9.7), npt=30, npt_azim=90)
    frames = np.random.default_rng(5).random((9,) + SHAPE)
    ref = I.integrate(frames, w).reshape(9, -1)
    if layout == "float16":
        out = np.empty((9, w.area.size), np.float16)
        np.testing.assert_allclose(I.integrate(frames, w, dtype=np.float16, out=out)
                                   .reshape(9, -1), ref, rtol=2e-3, atol=1e-6)
    else:
        big = np.zeros((9, 2 * w.area.size))
        out = big[:, ::2]  # not C-contiguous: the kernel's vector stores cannot write it
        I.integrate(frames, w, out=out)
        np.testing.assert_array_equal(out, ref)
        assert not big[:, 1::2].any()


def test_kernels_load_from_numba_cache_in_a_new_process(tmp_path):
    """The compiled kernels are cached on disk: a second process loads them (a kernel that
    keeps a fresh intrinsic in a closure would be compiled again by every process)."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from femlib import _kernels as K, integration as I\n"
        "w = I.build_weights((16, 16), (7.5, 7.5), npt=4, radial_range=(1, 7))\n"
        "f = np.ones((9, 256), np.float32)\n"
        "i, c, d = w.bin_major\n"
        "K.ring_moments(f, w.touched, i, c, d, np.zeros(9, np.int64), 1, sdata=d, with_j=True,\n"
        "               pixel_means=True, pixel_squares=True)\n"
        "w2 = I.build_weights((16, 16), (7.5, 7.5), npt=20, npt_azim=120)\n"
        "I.integrate(f.reshape(9, 16, 16), w2)\n"
        "print(len(K._ring_kernel.stats.cache_hits), len(K.apply_tiled.stats.cache_hits))\n"
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, check=True).stdout.split() for _ in range(2)]
    assert runs[0] == ["0", "0"]  # compiled, into the empty cache
    assert runs[1] == ["1", "1"]  # loaded
