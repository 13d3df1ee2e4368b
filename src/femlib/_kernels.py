"""Compiled inner loops (numba). Private: the public API is in :mod:`femlib.integration`
and :mod:`femlib.moments`.

Accumulation is in float64 whatever the input dtype. Few bins (a 1D integral, the FEM
pass): pixel-major over the touched pixels, four frames interleaved so that the updates of
one bin form independent dependency chains, each frame read in address order into a small
accumulator. Many bins (a polar transform): tiled and bin-major (below), the output written
once. Measured on 4096 frames of 128 x 128 float32, CPU seconds (``benchmarks/``): for 50
bins a tiled bin-major kernel was no faster than the pixel-major one (0.97-1.1x), for a
100 x 360 polar transform it takes 0.65-0.7x the time of the earlier bin-major kernel that
interleaved four frames; scipy.sparse products were several times slower than either.

The kernels are serial and release the GIL: parallelism comes from dask alone, which runs
one kernel per chunk on its threads (eager data too, on the threaded scheduler) or on its
workers. Nested numba threading inside dask tasks oversubscribes the cores, multiplies
per-thread buffers, and aborts under numba's workqueue threading layer.
"""

import numba
import numpy as np

from femlib import _tiled

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


# ----------------------------------------------------------------------------- tiled kernels
# Frames are processed in tiles of TILE: a tile is gathered at the touched pixels into a
# pixel-major buffer ``xt[j, i]`` (float64, in cache; the TILE frames are read side by side,
# each in address order), then every bin walks its non-zeros once per tile, accumulating the
# TILE frames in registers (explicit scalars: numba keeps them in registers, where an array
# accumulator would be stored back on every non-zero), and writes each result once. The
# kernels' source is generated for TILE and the asked quantities, so no branch remains in
# the inner loop. Per bin the pixels are summed in increasing pixel order, as a pixel-major
# loop does: results are bit-identical to the straightforward sum.
TILE = 16


def _gen(name, body_args, gather_extra, bin_vars, bin_update, bin_finish):
    """Source of one tiled kernel (see the comment above)."""
    T = TILE
    lines = [f"def {name}({body_args}):"]
    lines += [
        "    n = frames.shape[0]",
        "    nbins = indptr.size - 1",
        f"    xt = np.zeros((touched.size, {T}))",
        # Whole tiles only (the wrapper pads the last one): every loop bound is a constant.
        f"    for f0 in range(0, n - {T - 1}, {T}):",
        "        for j in range(touched.size):",
        "            p = touched[j]",
        f"            for i in range({T}):",
        "                xt[j, i] = np.float64(frames[f0 + i, p])",
    ]
    lines += ["        " + g for g in gather_extra]
    lines += ["        for k in range(nbins):"]
    for v in bin_vars:
        lines += [f"            {v}{i} = 0.0" for i in range(T)]
    lines += [
        "            for jj in range(indptr[k], indptr[k + 1]):",
        "                j = cindex[jj]",
    ]
    for upd in bin_update:
        lines += ["                " + u for u in upd(T)]
    lines += ["            " + f for f in bin_finish(T)]
    return "\n".join(lines) + "\n"


_TILED_HEADER = '''"""Generated by ``femlib._kernels.write_tiled()`` : do not edit.

Kept as a file (not compiled from a string at run time) so that numba caches it on disk.
"""

import numpy as np

'''


def write_tiled(path=None):
    """Regenerate ``femlib/_tiled.py`` (after changing :data:`TILE` or the generator)."""
    import os

    path = path or os.path.join(os.path.dirname(__file__), "_tiled.py")
    with open(path, "w") as f:
        f.write(_TILED_HEADER + "\n" + _apply_source(True))


def _apply_source(check):
    T = TILE

    def update(T):
        return ["w = wdata[jj]"] + [f"a{i} += w * xt[j, {i}]" for i in range(T)]

    def finish(T):
        out = ["c = scale[k]"]
        for i in range(T):
            out += [f"out[f0 + {i}, k] = a{i} * c"]
            if check:
                out += [f"z{i} += a{i} * 0.0"]
        return out

    gather = [f"z{i} = 0.0" for i in range(T)] if check else []
    src = _gen("apply", "frames, touched, indptr, cindex, wdata, scale, out, bad", gather,
               ["a"], [update], finish)
    if check:
        # Per frame: z is NaN when any output value of the frame is NaN or infinite.
        src = src.rstrip("\n").split("\n")
        src += [f"        bad[f0 + {i}] = z{i} != 0.0" for i in range(T)]
        src = "\n".join(src) + "\n"
    return src


def apply_tiled(frames, touched, indptr, cindex, wdata, scale, out, bad):
    """``out[f, k] = scale[k] * sum_p w[k, p] * frames[f, p]``, tiled, bin-major.

    Parameters
    ----------
    frames : (n, P) ndarray
    touched : (P',) int ndarray
        Pixels with a non-zero weight.
    indptr, cindex, wdata : ndarray
        CSR weights (rows = bins) with column indices into ``touched``; ``wdata`` float32
        or float64 (products are taken in float64).
    scale : (K,) ndarray
    out : (n, K) ndarray
        Written once, in its own dtype.
    bad : (n,) bool ndarray
        Set to whether a value of the frame's output is NaN or infinite (a NaN or infinity
        in a weighted pixel), found while the output is written.
    """
    kernel = _apply_tile
    n = frames.shape[0]
    whole = n - n % TILE
    if whole:
        kernel(frames, touched, indptr, cindex, wdata, scale, out, bad)
    if whole < n:
        pad, pad_out, pad_bad = _padded(frames[whole:]), np.empty((TILE,) + out.shape[1:],
                                                                   out.dtype), np.empty(TILE, bool)
        kernel(pad, touched, indptr, cindex, wdata, scale, pad_out, pad_bad)
        out[whole:] = pad_out[: n - whole]
        bad[whole:] = pad_bad[: n - whole]


_apply_tile = numba.njit(**_JIT)(_tiled.apply)


def _padded(frames):
    """The last, partial tile of frames, padded with zero frames to a whole tile."""
    pad = np.zeros((TILE,) + frames.shape[1:], frames.dtype)
    pad[: frames.shape[0]] = frames
    return pad
