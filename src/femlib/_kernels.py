"""Compiled inner loops (numba). Private: the public API is in :mod:`femlib.integration`.

Accumulation is in float64 whatever the input dtype, and every kernel interleaves four
frames so that the updates of one bin form independent dependency chains. Few bins (a 1D
integral, FEM rings): pixel-major over the touched pixels, reading each frame in address
order into a small accumulator. Many bins (a polar transform): bin-major, so no accumulator
spills out of cache and the output is written once in its final dtype. Measured in
``benchmarks/`` (16384 frames of 128x128): scipy.sparse products were 12-26x slower for 1D
and 2-4x for 2D; the pixel-major kernel took 3x longer than the bin-major one on 36000 bins,
and the bin-major one 1.4x longer than pixel-major on 50 bins.

The kernels are serial and release the GIL: parallelism comes from dask alone, which runs
one kernel per chunk on its threads (eager data too, on the threaded scheduler) or on its
workers. Nested numba threading inside dask tasks oversubscribes the cores, multiplies
per-thread buffers, and aborts under numba's workqueue threading layer.
"""

import numba
import numpy as np

_JIT = {"nogil": True, "cache": True, "fastmath": False}


@numba.njit(**_JIT)
def apply_weights(frames, touched, colptr, rowidx, wdata, scale, out):  # pragma: no cover
    """``out[f, k] = scale[k] * sum_p w[k, p] * frames[f, p]``, pixel-major (few bins).

    ``out`` may be any float dtype: it is written once, with no temporary.
    """
    n = frames.shape[0]
    nbins = out.shape[1]
    nquad = (n + 3) // 4
    for q in range(nquad):
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
                out[f0 + i, k] = acc[k, i] * scale[k]


@numba.njit(**_JIT)
def apply_weights_by_bin(frames, indptr, indices, data, scale, out):  # pragma: no cover
    """As :func:`apply_weights`, bin-major (many bins, e.g. a polar transform).

    A pixel-major accumulator of tens of thousands of bins spills out of cache; here each
    bin gathers its pixels from four frames at once and is written straight to ``out``.
    """
    n = frames.shape[0]
    nbins = out.shape[1]
    nquad = (n + 3) // 4
    for q in range(nquad):
        f0 = 4 * q
        nf = min(4, n - f0)
        f1 = f0 + min(1, nf - 1)
        f2 = f0 + min(2, nf - 1)
        f3 = f0 + min(3, nf - 1)
        for k in range(nbins):
            a0 = 0.0
            a1 = 0.0
            a2 = 0.0
            a3 = 0.0
            for jj in range(indptr[k], indptr[k + 1]):
                p = indices[jj]
                w = data[jj]
                a0 += w * np.float64(frames[f0, p])
                a1 += w * np.float64(frames[f1, p])
                a2 += w * np.float64(frames[f2, p])
                a3 += w * np.float64(frames[f3, p])
            c = scale[k]
            out[f0, k] = a0 * c
            if nf > 1:
                out[f1, k] = a1 * c
            if nf > 2:
                out[f2, k] = a2 * c
            if nf > 3:
                out[f3, k] = a3 * c


def _make_ring_moments(with_j, with_sq):
    """Compile the FEM pass for one choice of flags (constants, so no branch remains)."""

    @numba.njit(**_JIT)
    def kernel(frames, touched, colptr, rowidx, wdata, states, out, pixsum, pixsq):  # noqa: C901
        n = frames.shape[0]
        nbins = out.shape[2]
        nquad = (n + 3) // 4
        for q in range(nquad):
            ps = pixsum
            pq = pixsq
            f0 = 4 * q
            nf = min(4, n - f0)
            f1 = f0 + min(1, nf - 1)
            f2 = f0 + min(2, nf - 1)
            f3 = f0 + min(3, nf - 1)
            s0 = states[f0]
            s1 = states[f1] if nf > 1 else -1
            s2 = states[f2] if nf > 2 else -1
            s3 = states[f3] if nf > 3 else -1
            acc = np.zeros((nbins, 8 if with_j else 4))
            for j in range(touched.size):
                p = touched[j]
                x0 = np.float64(frames[f0, p])
                x1 = np.float64(frames[f1, p])
                x2 = np.float64(frames[f2, p])
                x3 = np.float64(frames[f3, p])
                if s0 >= 0:
                    ps[s0, j] += x0
                    if with_sq:
                        pq[s0, j] += x0 * x0
                if s1 >= 0:
                    ps[s1, j] += x1
                    if with_sq:
                        pq[s1, j] += x1 * x1
                if s2 >= 0:
                    ps[s2, j] += x2
                    if with_sq:
                        pq[s2, j] += x2 * x2
                if s3 >= 0:
                    ps[s3, j] += x3
                    if with_sq:
                        pq[s3, j] += x3 * x3
                for jj in range(colptr[j], colptr[j + 1]):
                    a = acc[rowidx[jj]]
                    w = wdata[jj]
                    w0 = w * x0
                    w1 = w * x1
                    w2 = w * x2
                    w3 = w * x3
                    a[0] += w0
                    a[1] += w1
                    a[2] += w2
                    a[3] += w3
                    if with_j:
                        a[4] += w0 * x0
                        a[5] += w1 * x1
                        a[6] += w2 * x2
                        a[7] += w3 * x3
            for i in range(nf):
                for k in range(nbins):
                    out[0, f0 + i, k] = acc[k, i]
                    if with_j:
                        out[1, f0 + i, k] = acc[k, 4 + i]

    return kernel


_RING_MOMENTS = {(j, q): _make_ring_moments(j, q) for j in (False, True) for q in (False, True)}


def ring_moments(frames, touched, colptr, rowidx, wdata, nbins, states, nstates, with_j,
                 with_sq=False):
    """The FEM pass over a chunk, from one read of each frame.

    Parameters
    ----------
    frames : (n, P) ndarray
    touched, colptr, rowidx, wdata : ndarray
        Compressed-column weights over the touched pixels.
    nbins : int
    states : (n,) int64 ndarray
        State of every frame; -1 frames are left out of the pixel sums.
    nstates : int
    with_j : bool
        Also compute ``W D^2`` (for the ``r`` and ``re`` estimators).
    with_sq : bool
        Also sum the squares of every touched pixel per state (for ``VImage``).

    Returns
    -------
    out : (1 or 2, n, nbins) ndarray
        ``W D`` per frame, then ``W D^2`` if ``with_j``.
    pixsum, pixsq : (nstates, P') ndarray
        Per state, the sum of every touched pixel (and of its square, or None) over the
        state's frames. Raw float64 sums suffice per pixel: its variance is at least the
        Poisson term ``G <D>``, so ``S2 - S1^2 / n`` loses at most ``eps`` times the
        electrons per pixel, relatively.
    """
    out = np.empty((2 if with_j else 1, frames.shape[0], nbins))
    pixsum = np.zeros((nstates, touched.size))
    pixsq = np.zeros((nstates, touched.size) if with_sq else (0, 0))
    if frames.shape[0]:
        _RING_MOMENTS[bool(with_j), bool(with_sq)](
            frames, touched, colptr, rowidx, wdata, states, out, pixsum, pixsq
        )
    return out, pixsum, (pixsq if with_sq else None)
