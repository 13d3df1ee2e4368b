"""Compiled inner loops (numba). Private: the public API is in :mod:`femlib.integration`.

All kernels walk the weight matrix pixel-major (CSC over the touched pixels), so each
frame is read in increasing address order, and interleave four frames so that the
accumulations into the same bin form independent dependency chains. Accumulation is in
float64 whatever the input dtype. Measured in ``benchmarks/bench_integration.py``: a
bin-major gather was 3-5x slower and ``scipy.sparse`` products 30-100x slower.
"""

import numba
import numpy as np

_JIT = {"nogil": True, "cache": True, "fastmath": False}


@numba.njit(parallel=True, **_JIT)
def apply_weights(frames, touched, colptr, rowidx, wdata, out):  # pragma: no cover - jit
    """``out[f, k] = sum_p w[k, p] * frames[f, p]`` for every frame ``f``."""
    n = frames.shape[0]
    nbins = out.shape[1]
    nquad = (n + 3) // 4
    for q in numba.prange(nquad):
        f0 = 4 * q
        nf = min(4, n - f0)
        f1 = f0 + min(1, nf - 1)
        f2 = f0 + min(2, nf - 1)
        f3 = f0 + min(3, nf - 1)
        acc = np.zeros((nbins, 4))
        for j in range(touched.size):
            p = touched[j]
            x0 = np.float64(frames[f0, p])
            x1 = np.float64(frames[f1, p])
            x2 = np.float64(frames[f2, p])
            x3 = np.float64(frames[f3, p])
            for jj in range(colptr[j], colptr[j + 1]):
                k = rowidx[jj]
                w = wdata[jj]
                acc[k, 0] += w * x0
                acc[k, 1] += w * x1
                acc[k, 2] += w * x2
                acc[k, 3] += w * x3
        for i in range(nf):
            for k in range(nbins):
                out[f0 + i, k] = acc[k, i]


@numba.njit(parallel=True, **_JIT)
def ring_moments(frames, touched, colptr, rowidx, wdata, out):  # pragma: no cover - jit
    """Per frame, ``out[0] = W D``, ``out[1] = W^2 D`` (elementwise square of the weights) and
    ``out[2] = W D^2``: what every FEM estimator needs from one read of the frame."""
    n = frames.shape[0]
    nbins = out.shape[2]
    nquad = (n + 3) // 4
    for q in numba.prange(nquad):
        f0 = 4 * q
        nf = min(4, n - f0)
        xs = np.empty(4)
        acc = np.zeros((nbins, 3, 4))
        for j in range(touched.size):
            p = touched[j]
            for i in range(4):
                xs[i] = np.float64(frames[f0 + min(i, nf - 1), p])
            for jj in range(colptr[j], colptr[j + 1]):
                k = rowidx[jj]
                w = wdata[jj]
                for i in range(4):
                    wx = w * xs[i]
                    acc[k, 0, i] += wx
                    acc[k, 1, i] += w * wx
                    acc[k, 2, i] += wx * xs[i]
        for i in range(nf):
            for k in range(nbins):
                for m in range(3):
                    out[m, f0 + i, k] = acc[k, m, i]


@numba.njit(**_JIT)
def pixel_moments(frames, touched, state, nstates, second):  # pragma: no cover - jit
    """Per state (group x jackknife block), count, mean and centred M2 of each touched pixel.

    ``state[f]`` is the state of frame ``f`` (-1 = excluded). Welford's update, so a chunk
    is read once; chunks are merged with Chan's formula in :mod:`femlib.variance`.
    """
    npix = touched.size
    count = np.zeros(nstates)
    mean = np.zeros((nstates, npix))
    m2 = np.zeros((nstates, npix)) if second else np.zeros((nstates, 0))
    for f in range(frames.shape[0]):
        s = state[f]
        if s < 0:
            continue
        count[s] += 1.0
        inv = 1.0 / count[s]
        mrow = mean[s]
        if second:
            qrow = m2[s]
            for j in range(npix):
                x = np.float64(frames[f, touched[j]])
                d = x - mrow[j]
                mrow[j] += d * inv
                qrow[j] += d * (x - mrow[j])
        else:
            for j in range(npix):
                mrow[j] += (np.float64(frames[f, touched[j]]) - mrow[j]) * inv
    return count, mean, m2
