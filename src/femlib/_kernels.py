"""Compiled inner loops (numba). Private: the public API is in :mod:`femlib.integration`
and :mod:`femlib.moments`.

Accumulation is in float64 whatever the input dtype. Few bins (a 1D integral, the FEM
pass): pixel-major over the touched pixels, eight frames at a time. The eight values of a
pixel are read once into a vector, and each of the pixel's non-zero weights then updates
its bin's eight accumulators with one vector multiply-add (:func:`_axpy8`, LLVM vector code:
one AVX-512 instruction, or two AVX2 ones). Per frame and bin the pixels are summed in the
same order as a scalar pixel-major loop: the results are bit-identical to it. Many bins (a
polar transform): bin-major over eight frames at a time (below), the output written once.

Measured on 4096 frames of 128 x 128 float32, 50 bins, 15922 non-zero weights, one thread
(``benchmarks/``; the read pass ``frames.sum(axis=0)`` takes 15 ms): the eight-frame vector
kernel 15.7 ms; the scalar pixel-major kernel that interleaved four frames 34-37 ms;
bin-major tiled kernels (frames gathered into a pixel-major tile, scalar accumulators in
registers) 27 ms at best; scipy.sparse products several times slower than any. A 100 x 360
polar transform of 2048 such frames into float32: 80 ms with :func:`_dot8`, 115 ms with
the scalar tiled kernel it replaced (read pass 8 ms, filling the output 11 ms).

The kernels are serial and release the GIL: parallelism comes from dask alone, which runs
one kernel per chunk on its threads (eager data too, on the threaded scheduler) or on its
workers. Nested numba threading inside dask tasks oversubscribes the cores, multiplies
per-thread buffers, and aborts under numba's workqueue threading layer.
"""

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

_JIT = {"nogil": True, "cache": True, "fastmath": False}

#: Frames processed together by the few-bin kernels (the width of :func:`_axpy8`).
LANES = 8


_VEC = ir.VectorType(ir.DoubleType(), LANES)


def _splat(builder, value):
    """LLVM IR: the float64 ``value`` in every lane of a vector."""
    one = builder.insert_element(ir.Constant(_VEC, ir.Undefined), value,
                                 ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(_VEC, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))


@intrinsic
def _axpy8(typingctx, acc, k, w, x):  # pragma: no cover - compiled
    """``acc[k, :8] += w * x`` for a C-contiguous float64 ``acc`` of 8 columns and a tuple
    ``x`` of 8 floats: one vector load, multiply, add and store (no fused multiply-add, so
    each lane rounds exactly as the scalar ``a += w * x``)."""
    sig = types.void(acc, k, w, x)

    def codegen(context, builder, signature, args):
        acc_t, k_t, w_t, _ = signature.args
        arr = context.make_array(acc_t)(context, builder, args[0])
        row = context.cast(builder, args[1], k_t, types.int64)
        zero = ir.Constant(ir.IntType(64), 0)
        ptr = cgutils.get_item_pointer(context, builder, acc_t, arr, [row, zero],
                                       wraparound=False)
        vptr = builder.bitcast(ptr, _VEC.as_pointer())
        xv = ir.Constant(_VEC, ir.Undefined)
        for i in range(LANES):
            xv = builder.insert_element(xv, builder.extract_value(args[3], i),
                                        ir.Constant(ir.IntType(32), i))
        wv = _splat(builder, context.cast(builder, args[2], w_t, types.float64))
        total = builder.fadd(builder.load(vptr, align=8), builder.fmul(wv, xv))
        builder.store(total, vptr, align=8)
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(**_JIT)
def _rows(f0, n):  # pragma: no cover
    """The eight frame rows of the step at ``f0``; past the last frame, the last frame again
    (its results are not written)."""
    last = n - 1
    return (f0, min(f0 + 1, last), min(f0 + 2, last), min(f0 + 3, last),
            min(f0 + 4, last), min(f0 + 5, last), min(f0 + 6, last), min(f0 + 7, last))


@numba.njit(**_JIT)
def _load8(frames, r, p):  # pragma: no cover
    """Pixel ``p`` of the eight frame rows ``r``, as float64."""
    return (np.float64(frames[r[0], p]), np.float64(frames[r[1], p]),
            np.float64(frames[r[2], p]), np.float64(frames[r[3], p]),
            np.float64(frames[r[4], p]), np.float64(frames[r[5], p]),
            np.float64(frames[r[6], p]), np.float64(frames[r[7], p]))


@numba.njit(**_JIT)
def apply_weights(frames, touched, colptr, rowidx, wdata, scale, out):  # pragma: no cover
    """``out[f, k] = scale[k] * sum_p w[k, p] * frames[f, p]``, pixel-major (few bins).

    ``out`` may be any float dtype: it is written once, with no temporary.
    """
    n = frames.shape[0]
    nbins = out.shape[1]
    acc = np.empty((nbins, LANES))
    for f0 in range(0, n, LANES):
        r = _rows(f0, n)
        acc[:] = 0.0
        for j in range(touched.size):
            x = _load8(frames, r, touched[j])
            for jj in range(colptr[j], colptr[j + 1]):
                _axpy8(acc, rowidx[jj], wdata[jj], x)
        for i in range(min(LANES, n - f0)):
            for k in range(nbins):
                out[f0 + i, k] = acc[k, i] * scale[k]


def _make_ring_moments(with_q, with_j, with_pm, with_psq):
    """Compile the FEM pass for one choice of flags (constants, so no branch remains)."""

    @numba.njit(**_JIT)
    def kernel(frames, touched, colptr, rowidx, wdata, sdata, states, out, pixsum, pixsq):  # noqa: C901
        n = frames.shape[0]
        nbins = out.shape[2]
        acc = np.empty((nbins, LANES))
        acc_q = np.empty((nbins if with_q else 0, LANES))
        acc_j = np.empty((nbins if with_j else 0, LANES))
        st = np.empty(LANES, np.int64)
        for f0 in range(0, n, LANES):
            nf = min(LANES, n - f0)
            r = _rows(f0, n)
            # Frames of one state (the usual case: states are runs of frames) add their
            # eight values to the pixel sums at once; past the last frame: -1, left out.
            same = nf == LANES
            for i in range(LANES):
                st[i] = states[f0 + i] if i < nf else -1
                same = same and st[i] == st[0]
            s0 = st[0]
            same = same and s0 >= 0
            acc[:] = 0.0
            if with_q:
                acc_q[:] = 0.0
            if with_j:
                acc_j[:] = 0.0
            for j in range(touched.size):
                x = _load8(frames, r, touched[j])
                if with_pm:
                    if same:
                        pixsum[s0, j] += ((x[0] + x[1]) + (x[2] + x[3])) + (
                            (x[4] + x[5]) + (x[6] + x[7]))
                        if with_psq:
                            pixsq[s0, j] += ((x[0] * x[0] + x[1] * x[1])
                                             + (x[2] * x[2] + x[3] * x[3])) + (
                                (x[4] * x[4] + x[5] * x[5]) + (x[6] * x[6] + x[7] * x[7]))
                    else:
                        for i in range(LANES):
                            if st[i] >= 0:
                                pixsum[st[i], j] += x[i]
                                if with_psq:
                                    pixsq[st[i], j] += x[i] * x[i]
                if with_j:
                    x2 = (x[0] * x[0], x[1] * x[1], x[2] * x[2], x[3] * x[3],
                          x[4] * x[4], x[5] * x[5], x[6] * x[6], x[7] * x[7])
                for jj in range(colptr[j], colptr[j + 1]):
                    k = rowidx[jj]
                    _axpy8(acc, k, wdata[jj], x)
                    if with_q:
                        _axpy8(acc_q, k, sdata[jj], x)
                    if with_j:
                        _axpy8(acc_j, k, wdata[jj], x2)
            for i in range(nf):
                for k in range(nbins):
                    out[0, f0 + i, k] = acc[k, i]
                    c = 1
                    if with_q:
                        out[c, f0 + i, k] = acc_q[k, i]
                        c += 1
                    if with_j:
                        out[c, f0 + i, k] = acc_j[k, i]

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


# ----------------------------------------------------------------------------- many bins
# A polar transform (thousands of bins, a few non-zeros each): bin-major, the output written
# once. Eight frames are gathered at the touched pixels into a pixel-major tile ``xt[j, :8]``
# (in cache); every bin then sums its non-zeros in a vector register (:func:`_dot8`) and
# writes its eight results. Per bin the pixels are summed in increasing pixel order, as a
# pixel-major loop does: results are bit-identical to the straightforward sum.
@intrinsic
def _dot8(typingctx, xt, cindex, wdata, start, stop):  # pragma: no cover - compiled
    """``sum_{jj in [start, stop)} wdata[jj] * xt[cindex[jj], :8]`` as a tuple of 8 floats,
    accumulated in one vector register (in index order, no fused multiply-add)."""
    ret = types.UniTuple(types.float64, LANES)
    sig = ret(xt, cindex, wdata, start, stop)

    def codegen(context, builder, signature, args):
        xt_t, ci_t, w_t, s_t, e_t = signature.args
        xa = context.make_array(xt_t)(context, builder, args[0])
        ca = context.make_array(ci_t)(context, builder, args[1])
        wa = context.make_array(w_t)(context, builder, args[2])
        i64 = ir.IntType(64)
        acc = cgutils.alloca_once_value(builder, ir.Constant(_VEC, [0.0] * LANES))
        start = context.cast(builder, args[3], s_t, types.int64)
        stop = context.cast(builder, args[4], e_t, types.int64)
        step = ir.Constant(i64, 1)
        with cgutils.for_range_slice(builder, start, stop, step, intp=i64) as (jj, _):
            pc = cgutils.get_item_pointer(context, builder, ci_t, ca, [jj], wraparound=False)
            j = context.cast(builder, builder.load(pc), ci_t.dtype, types.int64)
            px = cgutils.get_item_pointer(context, builder, xt_t, xa, [j, ir.Constant(i64, 0)],
                                          wraparound=False)
            x = builder.load(builder.bitcast(px, _VEC.as_pointer()), align=8)
            pw = cgutils.get_item_pointer(context, builder, w_t, wa, [jj], wraparound=False)
            w = _splat(builder, context.cast(builder, builder.load(pw), w_t.dtype, types.float64))
            builder.store(builder.fadd(builder.load(acc), builder.fmul(w, x)), acc)
        total = builder.load(acc)
        lanes = [builder.extract_element(total, ir.Constant(ir.IntType(32), i))
                 for i in range(LANES)]
        return context.make_tuple(builder, ret, lanes)

    return sig, codegen


@numba.njit(**_JIT)
def apply_tiled(frames, touched, indptr, cindex, wdata, scale, out, bad):  # pragma: no cover
    """``out[f, k] = scale[k] * sum_p w[k, p] * frames[f, p]``, bin-major (many bins).

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
    n = frames.shape[0]
    nbins = indptr.size - 1
    xt = np.empty((touched.size, LANES))
    for f0 in range(0, n, LANES):
        nf = min(LANES, n - f0)
        r = _rows(f0, n)
        for j in range(touched.size):
            p = touched[j]
            for i in range(LANES):
                xt[j, i] = frames[r[i], p]
        # z[i] turns NaN when a value of frame i is NaN or infinite.
        z = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        for k in range(nbins):
            a = _dot8(xt, cindex, wdata, indptr[k], indptr[k + 1])
            c = scale[k]
            if nf == LANES:
                out[f0, k] = a[0] * c
                out[f0 + 1, k] = a[1] * c
                out[f0 + 2, k] = a[2] * c
                out[f0 + 3, k] = a[3] * c
                out[f0 + 4, k] = a[4] * c
                out[f0 + 5, k] = a[5] * c
                out[f0 + 6, k] = a[6] * c
                out[f0 + 7, k] = a[7] * c
            else:
                for i in range(nf):
                    out[f0 + i, k] = a[i] * c
            z = (z[0] + a[0] * 0.0, z[1] + a[1] * 0.0, z[2] + a[2] * 0.0, z[3] + a[3] * 0.0,
                 z[4] + a[4] * 0.0, z[5] + a[5] * 0.0, z[6] + a[6] * 0.0, z[7] + a[7] * 0.0)
        for i in range(nf):
            bad[f0 + i] = z[i] != 0.0
