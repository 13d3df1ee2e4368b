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


def _make_ring_moments(with_q, with_j, with_pm, with_psq):
    """Compile the FEM pass for one choice of flags (constants, so no branch remains)."""
    # Accumulator columns per bin: I for 4 frames, then Q for 4 frames, then J for 4 frames.
    cq = 4
    cj = 8 if with_q else 4
    ncol = cj + (4 if with_j else 0)

    @numba.njit(**_JIT)
    def kernel(frames, touched, colptr, rowidx, wdata, sdata, states, out, pixsum, pixsq):  # noqa: C901
        n = frames.shape[0]
        nbins = out.shape[2]
        nquad = (n + 3) // 4
        acc = np.empty((nbins, ncol))
        for q in range(nquad):
            f0 = 4 * q
            nf = min(4, n - f0)
            f1 = f0 + min(1, nf - 1)
            f2 = f0 + min(2, nf - 1)
            f3 = f0 + min(3, nf - 1)
            s0 = states[f0]
            s1 = states[f1] if nf > 1 else -1
            s2 = states[f2] if nf > 2 else -1
            s3 = states[f3] if nf > 3 else -1
            acc[:] = 0.0
            for j in range(touched.size):
                p = touched[j]
                x0 = np.float64(frames[f0, p])
                x1 = np.float64(frames[f1, p])
                x2 = np.float64(frames[f2, p])
                x3 = np.float64(frames[f3, p])
                if with_pm:
                    if s0 >= 0:
                        pixsum[s0, j] += x0
                        if with_psq:
                            pixsq[s0, j] += x0 * x0
                    if s1 >= 0:
                        pixsum[s1, j] += x1
                        if with_psq:
                            pixsq[s1, j] += x1 * x1
                    if s2 >= 0:
                        pixsum[s2, j] += x2
                        if with_psq:
                            pixsq[s2, j] += x2 * x2
                    if s3 >= 0:
                        pixsum[s3, j] += x3
                        if with_psq:
                            pixsq[s3, j] += x3 * x3
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
                    if with_q:
                        s = sdata[jj]
                        a[cq] += s * x0
                        a[cq + 1] += s * x1
                        a[cq + 2] += s * x2
                        a[cq + 3] += s * x3
                    if with_j:
                        a[cj] += w0 * x0
                        a[cj + 1] += w1 * x1
                        a[cj + 2] += w2 * x2
                        a[cj + 3] += w3 * x3
            for i in range(nf):
                for k in range(nbins):
                    out[0, f0 + i, k] = acc[k, i]
                    c = 1
                    if with_q:
                        out[c, f0 + i, k] = acc[k, cq + i]
                        c += 1
                    if with_j:
                        out[c, f0 + i, k] = acc[k, cj + i]

    return kernel


_RING_MOMENTS = {}


def ring_moments(frames, touched, colptr, rowidx, wdata, nbins, states, nstates, sdata=None,
                 with_j=False, pixel_means=False, pixel_squares=False):
    """The FEM pass over a chunk, from one read of each frame.

    Parameters
    ----------
    frames : (n, P) ndarray
    touched, colptr, rowidx, wdata : ndarray
        Compressed-column weights ``W`` over the touched pixels.
    nbins : int
    states : (n,) int64 ndarray
        State of every frame; -1 frames are left out of the pixel sums.
    nstates : int
    sdata : ndarray or None
        Shot weights ``S`` with the sparsity (and order) of ``wdata``; None = no ``Q``.
    with_j : bool
        Also compute ``W D^2`` (for the ``r`` and ``re`` estimators).
    pixel_means, pixel_squares : bool
        Also sum every touched pixel (and its square) per state.

    Returns
    -------
    out : (c, n, nbins) ndarray
        Per frame ``I = W D``, then ``Q = S D`` if ``sdata`` is given, then ``J = W D^2``
        if ``with_j``.
    pixsum, pixsq : (nstates, P') ndarray or None
        Per state, the sum of every touched pixel (and of its square) over the state's
        frames. Raw float64 sums suffice per pixel: its variance is at least the Poisson
        term ``G <D>``, so ``S2 - S1^2 / n`` loses at most ``eps`` times the electrons per
        pixel, relatively.
    """
    with_q = sdata is not None
    pixel_means = bool(pixel_means or pixel_squares)
    key = (with_q, bool(with_j), pixel_means, bool(pixel_squares))
    kernel = _RING_MOMENTS.get(key)
    if kernel is None:
        kernel = _RING_MOMENTS[key] = _make_ring_moments(*key)
    out = np.empty((1 + with_q + bool(with_j), frames.shape[0], nbins))
    pixsum = np.zeros((nstates, touched.size) if pixel_means else (0, 0))
    pixsq = np.zeros((nstates, touched.size) if pixel_squares else (0, 0))
    if frames.shape[0]:
        kernel(frames, touched, colptr, rowidx, wdata, wdata if sdata is None else sdata,
               states, out, pixsum, pixsq)
    return out, (pixsum if pixel_means else None), (pixsq if pixel_squares else None)
