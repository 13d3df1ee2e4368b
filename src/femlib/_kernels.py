"""Compiled inner loops (numba). Private: the public API is in :mod:`femlib.integration`
and :mod:`femlib.moments`.

Accumulation is in float64 whatever the input dtype. Every kernel processes eight frames
at a time (:data:`LANES`): their values at the touched pixels are gathered into a
pixel-major tile ``xt[j, :8]`` (in cache; each frame is read once, in address order), then
every bin walks its non-zero weights once, accumulating the eight frames in vector
registers (LLVM vector code written by the intrinsics below: one AVX-512 instruction per
operation, or two AVX2 ones), and writes its results once.

* Few bins (the FEM pass, a 1D integral: hundreds of non-zeros per bin): :func:`ring_moments`,
  two interleaved accumulators per bin and output (the sum of a bin is not limited by the
  latency of one chain of additions), ``I = W D`` and, on request, ``Q = S D`` and
  ``J = W D^2`` from the same loads.
* Many bins (a polar transform: a few non-zeros per bin): :func:`apply_tiled`, one
  accumulator per bin, summed in increasing pixel order (results bit-identical to a scalar
  pixel-major sum); blocks of eight bins are transposed in registers, scaled and written
  with one vector store per frame (:func:`_polar_block`).

Measured single-threaded (CPU time) on 4096 frames of 128 x 128 float32, 50 bins, frames
sorted by state (``python benchmarks/bench_integration.py``; the read pass
``frames.sum(axis=0)`` takes 15 ms): on issue 13's geometry (24584 non-zeros) ``I`` 28 ms,
``I`` and ``Q`` 31 ms, every column with the pixel sums and squares 42 ms; on femlib's
(15922 non-zeros) 17, 20 and 25 ms. The scalar pixel-major kernels these replace (four
frames interleaved, accumulators in memory) took 58, 72 and 149 ms, and 36, 44 and 98 ms. A
100 x 360 polar transform of the 4096 frames into a reused float32 buffer: 98 ms (filling
the buffer takes 22 ms), against 160 ms when each value was stored on its own and 230 ms
for the scalar tiled kernel these replace. scipy.sparse products were several times
slower than any.

The kernels are serial and release the GIL: parallelism comes from dask alone, which runs
one kernel per chunk on its threads (eager data too, on the threaded scheduler) or on its
workers. Nested numba threading inside dask tasks oversubscribes the cores, multiplies
per-thread buffers, and aborts under numba's workqueue threading layer.
"""

import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from femlib._jit import njit

_JIT = {"nogil": True, "cache": True, "fastmath": False}

#: Frames processed together (the lanes of the vector accumulators).
LANES = 8
#: Interleaved accumulators per bin in :func:`ring_moments`.
_CHAINS = 2

_VEC = ir.VectorType(ir.DoubleType(), LANES)
_I64 = ir.IntType(64)


def _splat(builder, value):
    """LLVM IR: the float64 ``value`` in every lane of a vector."""
    one = builder.insert_element(ir.Constant(_VEC, ir.Undefined), value,
                                 ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(_VEC, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))


class _Arrays:
    """LLVM IR access to the numba arrays passed to an intrinsic."""

    def __init__(self, context, builder, typs, values):
        self.context, self.builder = context, builder
        self.typs = typs
        self.arrays = [context.make_array(t)(context, builder, v)
                       for t, v in zip(typs, values, strict=True)]

    def ptr(self, a, *idx):
        """Pointer to element ``idx`` (i64 values) of array number ``a``."""
        return cgutils.get_item_pointer(self.context, self.builder, self.typs[a],
                                        self.arrays[a], list(idx), wraparound=False)

    def scalar(self, a, *idx):
        """Element ``idx`` of array number ``a``, as float64 (or int64 for integers)."""
        dtype = self.typs[a].dtype
        to = types.int64 if isinstance(dtype, types.Integer) else types.float64
        return self.context.cast(self.builder, self.builder.load(self.ptr(a, *idx)), dtype, to)

    def row(self, a, i):
        """Pointer to the 8 float64 starting at ``[i, 0]`` of 2D array number ``a``, as a
        vector pointer."""
        return self.builder.bitcast(self.ptr(a, i, ir.Constant(_I64, 0)), _VEC.as_pointer())


def _make_dots(with_q, with_j, q_square=False):
    """Intrinsic ``dots(res, xt, cindex, wdata, sdata, start, stop)``: over the non-zeros
    ``[start, stop)`` of one bin, ``res[0] = sum w x``, then ``res[1] = sum s x`` if
    ``with_q``, then ``sum w x^2`` if ``with_j`` (rows of 8 lanes; ``x = xt[cindex[jj]]``).
    Non-zero ``jj`` goes to accumulator ``(jj - start) % _CHAINS``; they are added at the
    end. No fused multiply-add. ``q_square``: the shot weights are ``w * w``, formed in
    registers (``sdata`` is not read)."""
    n_out = 1 + with_q + with_j

    @intrinsic
    def dots(typingctx, res, xt, cindex, wdata, sdata, start, stop):  # pragma: no cover
        sig = types.void(res, xt, cindex, wdata, sdata, start, stop)

        def codegen(context, builder, signature, args):
            a = _Arrays(context, builder, signature.args[:5], args[:5])
            zero = ir.Constant(_VEC, [0.0] * LANES)
            acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(_CHAINS)]
                   for _ in range(n_out)]
            lo = context.cast(builder, args[5], signature.args[5], types.int64)
            hi = context.cast(builder, args[6], signature.args[6], types.int64)
            chains = ir.Constant(_I64, _CHAINS)
            whole = builder.sdiv(builder.sub(hi, lo), chains)

            def update(jj, chain):
                x = builder.load(a.row(1, a.scalar(2, jj)), align=8)
                w = _splat(builder, a.scalar(3, jj))
                terms = [builder.fmul(w, x)]
                if with_q and q_square:
                    terms.append(builder.fmul(builder.fmul(w, w), x))
                elif with_q:
                    terms.append(builder.fmul(_splat(builder, a.scalar(4, jj)), x))
                if with_j:
                    terms.append(builder.fmul(w, builder.fmul(x, x)))
                for c, term in enumerate(terms):
                    slot = acc[c][chain]
                    builder.store(builder.fadd(builder.load(slot), term), slot)

            with cgutils.for_range(builder, whole, intp=_I64) as loop:
                base = builder.add(lo, builder.mul(loop.index, chains))
                for chain in range(_CHAINS):
                    update(builder.add(base, ir.Constant(_I64, chain)), chain)
            rest = builder.add(lo, builder.mul(whole, chains))
            with cgutils.for_range_slice(builder, rest, hi, ir.Constant(_I64, 1),
                                         intp=_I64) as (jj, _):
                update(jj, 0)
            for c in range(n_out):
                total = builder.load(acc[c][0])
                for chain in range(1, _CHAINS):
                    total = builder.fadd(total, builder.load(acc[c][chain]))
                builder.store(total, a.row(0, ir.Constant(_I64, c)), align=8)
            return context.get_dummy_value()

        return sig, codegen

    return dots


@njit(**_JIT)
def _rows(f0, n):  # pragma: no cover
    """The eight frame rows of the step at ``f0``; past the last frame, the last frame again
    (its results are not written)."""
    last = n - 1
    return (f0, min(f0 + 1, last), min(f0 + 2, last), min(f0 + 3, last),
            min(f0 + 4, last), min(f0 + 5, last), min(f0 + 6, last), min(f0 + 7, last))


# The four variants of the bin sums, as module globals: a kernel that reads them from its
# globals is cached on disk by numba (one holding a fresh intrinsic in a closure is not).
_dots_i = _make_dots(False, False)
_dots_q = _make_dots(True, False)
_dots_j = _make_dots(False, True)
_dots_qj = _make_dots(True, True)
_dots_q2 = _make_dots(True, False, q_square=True)
_dots_q2j = _make_dots(True, True, q_square=True)


@njit(**_JIT)
def _ring_kernel(frames, rows, touched, indptr, cindex, wdata, sdata, states, out,  # noqa: C901
                 pixsum, pixsq, with_j, xt, res, st):  # pragma: no cover
    """The FEM pass (:func:`ring_moments`); pixel sums where ``pixsum`` (and squares where
    ``pixsq``) has columns. ``sdata`` None: no ``Q``; ``with_j`` None: no ``J``. Both are
    told apart by type, so each variant of the bin sums is a specialisation of its own,
    compiled on first use (numba prunes the ``is None`` branches before typing).

    The buffers come from the caller: ``xt`` (touched.size, 8) and ``res`` (3, 8) float64,
    ``st`` (8,) int64. An ``np.empty`` in here would compile numba's allocation code, and
    ``min`` or a helper one more function each: they are written out."""
    n = rows.size
    nbins = out.shape[2]
    n_out = out.shape[0]
    with_pm = pixsum.shape[1] > 0
    with_psq = pixsq.shape[1] > 0
    last = n - 1
    for f0 in range(0, n, LANES):
        nf = LANES if LANES < n - f0 else n - f0
        # The eight frame rows of the step; past the last frame, the last frame again (its
        # results are not written).
        r = (rows[f0], rows[f0 + 1 if f0 + 1 < last else last],
             rows[f0 + 2 if f0 + 2 < last else last], rows[f0 + 3 if f0 + 3 < last else last],
             rows[f0 + 4 if f0 + 4 < last else last], rows[f0 + 5 if f0 + 5 < last else last],
             rows[f0 + 6 if f0 + 6 < last else last], rows[f0 + 7 if f0 + 7 < last else last])
        # Eight frames of one state (the usual case: frames come sorted by state) add their
        # values to the pixel sums at once. Past the last frame: -1, left out.
        same = nf == LANES
        for i in range(LANES):
            st[i] = states[f0 + i] if i < nf else -1
            same = same and st[i] == st[0]
        s0 = st[0]
        same = same and s0 >= 0
        for j in range(touched.size):
            # Pixel p of the eight frame rows, as float64 (written out here: a helper is
            # one more compilation).
            p = touched[j]
            x = (np.float64(frames[r[0], p]), np.float64(frames[r[1], p]),
                 np.float64(frames[r[2], p]), np.float64(frames[r[3], p]),
                 np.float64(frames[r[4], p]), np.float64(frames[r[5], p]),
                 np.float64(frames[r[6], p]), np.float64(frames[r[7], p]))
            for i in range(LANES):
                xt[j, i] = x[i]
            if not with_pm:
                continue
            if same:
                pixsum[s0, j] += ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]))
                if with_psq:
                    pixsq[s0, j] += ((x[0] * x[0] + x[1] * x[1]) + (x[2] * x[2] + x[3] * x[3])) + (
                        (x[4] * x[4] + x[5] * x[5]) + (x[6] * x[6] + x[7] * x[7]))
            else:
                for i in range(LANES):
                    if st[i] >= 0:
                        pixsum[st[i], j] += x[i]
                        if with_psq:
                            pixsq[st[i], j] += x[i] * x[i]
        for k in range(nbins):
            lo, hi = indptr[k], indptr[k + 1]
            if sdata is None:
                if with_j is None:
                    _dots_i(res, xt, cindex, wdata, wdata, lo, hi)
                else:
                    _dots_j(res, xt, cindex, wdata, wdata, lo, hi)
            elif with_j is None:
                _dots_q(res, xt, cindex, wdata, sdata, lo, hi)
            else:
                _dots_qj(res, xt, cindex, wdata, sdata, lo, hi)
            for c in range(n_out):
                for i in range(nf):
                    out[c, f0 + i, k] = res[c, i]


def ring_moments(frames, touched, indptr, cindex, wdata, states, nstates, rows=None,
                 sdata=None, with_j=False, pixel_means=False, pixel_squares=False):
    """The FEM pass over a chunk, from one read of each frame.

    Parameters
    ----------
    frames : (n, P) ndarray
    touched : (P',) int ndarray
        Pixels with a non-zero weight.
    indptr, cindex, wdata : ndarray
        CSR weights ``W`` (rows = bins) with column indices into ``touched``
        (``AzimuthalWeights.bin_major``).
    states : (n,) int64 ndarray
        State of every frame in processing order; -1 frames are left out of the pixel
        sums.
    nstates : int
    rows : (n,) int64 ndarray or None
        Frame processed at each position (None: in order). Frames of one state side by
        side make the pixel sums cheaper.
    sdata : ndarray or None
        Shot weights ``S`` with the sparsity and order of ``wdata``; None = no ``Q``.
    with_j : bool
        Also compute ``W D^2`` (for the ``r`` and ``re`` estimators).
    pixel_means, pixel_squares : bool
        Also sum every touched pixel (and its square) per state.

    Returns
    -------
    out : (c, n, nbins) ndarray
        Per frame (in processing order) ``I = W D``, then ``Q = S D`` if ``sdata`` is
        given, then ``J = W D^2`` if ``with_j``.
    pixsum, pixsq : (nstates, P') ndarray or None
        Per state, the sum of every touched pixel (and of its square) over the state's
        frames. Raw float64 sums suffice per pixel: its variance is at least the Poisson
        term ``G <D>``, so ``S2 - S1^2 / n`` loses at most ``eps`` times the electrons per
        pixel, relatively.
    """
    with_q = sdata is not None
    pixel_means = bool(pixel_means or pixel_squares)
    n = frames.shape[0]
    rows = np.arange(n) if rows is None else np.asarray(rows, np.int64)
    out = np.empty((1 + with_q + bool(with_j), n, indptr.size - 1))
    pixsum = np.zeros((nstates, touched.size) if pixel_means else (0, 0))
    pixsq = np.zeros((nstates, touched.size) if pixel_squares else (0, 0))
    if n:
        _ring_kernel(frames, rows, touched, indptr, cindex, wdata, sdata, states, out,
                     pixsum, pixsq, True if with_j else None, np.empty((touched.size, LANES)),
                     np.empty((3, LANES)), np.empty(LANES, np.int64))
    return out, (pixsum if pixel_means else None), (pixsq if pixel_squares else None)


def apply_few(frames, touched, indptr, cindex, wdata, scale, out):
    """``out[f, k] = scale[k] * sum_p w[k, p] * frames[f, p]`` for few bins (a 1D
    integral): :func:`ring_moments` without pixel sums, ``out`` of any float dtype."""
    sums, _, _ = ring_moments(frames, touched, indptr, cindex, wdata,
                              np.full(frames.shape[0], -1, np.int64), 0)
    np.multiply(sums[0], scale, out=out, casting="unsafe")


# ----------------------------------------------------------------------------- many bins
@intrinsic
def _dot8(typingctx, xt, cindex, wdata, start, stop):  # pragma: no cover - compiled
    """``sum_{jj in [start, stop)} wdata[jj] * xt[cindex[jj], :8]`` as a tuple of 8 floats,
    accumulated in one vector register (in index order, no fused multiply-add)."""
    ret = types.UniTuple(types.float64, LANES)
    sig = ret(xt, cindex, wdata, start, stop)

    def codegen(context, builder, signature, args):
        a = _Arrays(context, builder, signature.args[:3], args[:3])
        acc = cgutils.alloca_once_value(builder, ir.Constant(_VEC, [0.0] * LANES))
        lo = context.cast(builder, args[3], signature.args[3], types.int64)
        hi = context.cast(builder, args[4], signature.args[4], types.int64)
        with cgutils.for_range_slice(builder, lo, hi, ir.Constant(_I64, 1), intp=_I64) as (jj, _):
            x = builder.load(a.row(0, a.scalar(1, jj)), align=8)
            w = _splat(builder, a.scalar(2, jj))
            builder.store(builder.fadd(builder.load(acc), builder.fmul(w, x)), acc)
        total = builder.load(acc)
        lanes = [builder.extract_element(total, ir.Constant(ir.IntType(32), i))
                 for i in range(LANES)]
        return context.make_tuple(builder, ret, lanes)

    return sig, codegen


def _transpose8(builder, vs):
    """LLVM IR: the transpose of eight 8-lane vectors, ``rows[i][b] = vs[b][i]`` (three
    stages of two-vector shuffles)."""

    def shuffle(x, y, mask):
        return builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(ir.IntType(32), LANES),
                                                        mask))

    t = list(vs)
    for d, lo, hi in ((1, [0, 8, 2, 10, 4, 12, 6, 14], [1, 9, 3, 11, 5, 13, 7, 15]),
                      (2, [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]),
                      (4, [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15])):
        nxt = [None] * LANES
        for p in range(LANES):
            if p & d == 0:
                nxt[p], nxt[p + d] = shuffle(t[p], t[p + d], lo), shuffle(t[p], t[p + d], hi)
        t = nxt
    return t


@intrinsic
def _polar_block(typingctx, out, f0, k0, xt, indptr, cindex, wdata, scale, z):  # pragma: no cover
    """Eight bins ``k0 .. k0 + 7`` of eight frames ``f0 .. f0 + 7``: each bin summed over
    ``xt`` in one vector register as :func:`_dot8` does, ``z += sum * 0`` (NaN for a
    non-finite sum), then the 8 x 8 block transposed in registers, scaled, and written
    with one vector store per frame (``out`` float32 or float64)."""
    sig = types.void(out, f0, k0, xt, indptr, cindex, wdata, scale, z)

    def codegen(context, builder, signature, args):
        pick = (0, 3, 4, 5, 6, 7, 8)  # out, xt, indptr, cindex, wdata, scale, z
        a = _Arrays(context, builder, [signature.args[i] for i in pick], [args[i] for i in pick])
        f0 = context.cast(builder, args[1], signature.args[1], types.int64)
        k0 = context.cast(builder, args[2], signature.args[2], types.int64)
        zero = ir.Constant(_VEC, [0.0] * LANES)
        sums = []
        for b in range(LANES):
            k = builder.add(k0, ir.Constant(_I64, b))
            lo = a.scalar(2, k)
            hi = a.scalar(2, builder.add(k, ir.Constant(_I64, 1)))
            acc = cgutils.alloca_once_value(builder, zero)
            with cgutils.for_range_slice(builder, lo, hi, ir.Constant(_I64, 1),
                                         intp=_I64) as (jj, _):
                x = builder.load(a.row(1, a.scalar(3, jj)), align=8)
                w = _splat(builder, a.scalar(4, jj))
                builder.store(builder.fadd(builder.load(acc), builder.fmul(w, x)), acc)
            sums.append(builder.load(acc))
        zptr = builder.bitcast(a.ptr(6, ir.Constant(_I64, 0)), _VEC.as_pointer())
        zv = builder.load(zptr, align=8)
        for v in sums:
            zv = builder.fadd(zv, builder.fmul(v, zero))
        builder.store(zv, zptr, align=8)
        sv = builder.load(builder.bitcast(a.ptr(5, k0), _VEC.as_pointer()), align=8)
        dtype = context.get_value_type(signature.args[0].dtype)
        ovec = ir.VectorType(dtype, LANES)
        for i, row in enumerate(_transpose8(builder, sums)):
            row = builder.fmul(row, sv)
            if dtype != ir.DoubleType():
                row = builder.fptrunc(row, ovec)
            dst = a.ptr(0, builder.add(f0, ir.Constant(_I64, i)), k0)
            builder.store(row, builder.bitcast(dst, ovec.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(**_JIT)
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
    scale : (K,) float64 ndarray
    out : (n, K) float32 or float64 ndarray
        Written once.
    bad : (n,) bool ndarray
        Set to whether a value of the frame's output is NaN or infinite (a NaN or infinity
        in a weighted pixel), found while the output is written.
    """
    n = frames.shape[0]
    nbins = indptr.size - 1
    xt = np.empty((touched.size, LANES))
    z = np.empty(LANES)  # z[i] turns NaN when a value of frame i is NaN or infinite
    for f0 in range(0, n, LANES):
        nf = min(LANES, n - f0)
        r = _rows(f0, n)
        for j in range(touched.size):
            p = touched[j]
            for i in range(LANES):
                xt[j, i] = frames[r[i], p]
        z[:] = 0.0
        k1 = nbins - nbins % LANES if nf == LANES else 0
        for k0 in range(0, k1, LANES):
            _polar_block(out, f0, k0, xt, indptr, cindex, wdata, scale, z)
        for k in range(k1, nbins):  # the last bins, and every bin of a partial step
            a = _dot8(xt, cindex, wdata, indptr[k], indptr[k + 1])
            c = scale[k]
            for i in range(nf):
                out[f0 + i, k] = a[i] * c
                z[i] += a[i] * 0.0
        for i in range(nf):
            bad[f0 + i] = z[i] != 0.0


# ----------------------------------------------------------------------------- descan
@njit(**_JIT)
def _fill_shifted(frames, r, o, vp, fast, xt):  # pragma: no cover
    """Tile of eight frames ``r`` at the table pixels ``fast`` (each on an unmasked
    detector pixel for every frame of the table), shifted by ``o``:
    ``xt[j, i] = frames[r[i], vp[j] + o[i]]``."""
    for jj in range(fast.size):
        j = fast[jj]
        b = vp[j]
        xt[j, 0] = np.float64(frames[r[0], b + o[0]])
        xt[j, 1] = np.float64(frames[r[1], b + o[1]])
        xt[j, 2] = np.float64(frames[r[2], b + o[2]])
        xt[j, 3] = np.float64(frames[r[3], b + o[3]])
        xt[j, 4] = np.float64(frames[r[4], b + o[4]])
        xt[j, 5] = np.float64(frames[r[5], b + o[5]])
        xt[j, 6] = np.float64(frames[r[6], b + o[6]])
        xt[j, 7] = np.float64(frames[r[7], b + o[7]])


@njit(**_JIT)
def _descan_kernel(frames, rows, table, dy, dx, ny, nx, valid, t_off, vrow,  # noqa: C901
                   vcol, i_off, indptr, c_off, cindex, wdata, sdata, area, f_off, fast,
                   s_off, slow, s_ptr, s_bin, s_w, out, with_q, with_j,
                   q_square):  # pragma: no cover
    """:func:`descan_moments` (frames at positions ``rows``, grouped by table)."""
    n = rows.size
    nbins = out.shape[2]
    n_out = out.shape[0]
    res = np.empty((3, LANES))
    ddy = np.empty(LANES, np.int64)
    ddx = np.empty(LANES, np.int64)
    lost = np.zeros((LANES, nbins))
    # One tile and index buffer for every table (a fresh large buffer per table costs its
    # page faults every time).
    nt_max = 0
    for t in range(t_off.size - 1):
        nt_max = max(nt_max, t_off[t + 1] - t_off[t])
    xt_all = np.empty((nt_max, LANES))
    vp_all = np.empty(nt_max, np.int64)
    g0 = 0
    while g0 < n:
        t = table[rows[g0]]
        g1 = g0 + 1
        while g1 < n and table[rows[g1]] == t:
            g1 += 1
        t0, t1 = t_off[t], t_off[t + 1]
        nt = t1 - t0
        ip = indptr[i_off[t]:i_off[t + 1]]
        ci = cindex[c_off[t]:c_off[t + 1]]
        wd = wdata[c_off[t]:c_off[t + 1]]
        sd = sdata[c_off[t]:c_off[t + 1]]
        fj = fast[f_off[t]:f_off[t + 1]]
        sj = slow[s_off[t]:s_off[t + 1]]
        full = area[t * nbins:(t + 1) * nbins]
        vp = vp_all[:nt]
        for j in range(nt):
            vp[j] = vrow[t0 + j] * nx + vcol[t0 + j]
        xt = xt_all[:nt]
        for f0 in range(g0, g1, LANES):
            nf = min(LANES, g1 - f0)
            step = _rows(f0, g1)
            r = (rows[step[0]], rows[step[1]], rows[step[2]], rows[step[3]],
                 rows[step[4]], rows[step[5]], rows[step[6]], rows[step[7]])
            for i in range(LANES):
                ddy[i] = dy[r[i]]
                ddx[i] = dx[r[i]]
            o = (ddy[0] * nx + ddx[0], ddy[1] * nx + ddx[1], ddy[2] * nx + ddx[2],
                 ddy[3] * nx + ddx[3], ddy[4] * nx + ddx[4], ddy[5] * nx + ddx[5],
                 ddy[6] * nx + ddx[6], ddy[7] * nx + ddx[7])
            _fill_shifted(frames, r, o, vp, fj, xt)
            # The few pixels that some frame of the table finds masked or off the detector:
            # checked one by one; their weights leave that frame's bin areas.
            lost[:, :] = 0.0
            for jj in range(sj.size):
                j = sj[jj]
                g = s_off[t] + jj
                for i in range(LANES):
                    rr = vrow[t0 + j] + ddy[i]
                    cc = vcol[t0 + j] + ddx[i]
                    if rr >= 0 and rr < ny and cc >= 0 and cc < nx and valid[rr * nx + cc]:
                        xt[j, i] = frames[r[i], rr * nx + cc]
                    else:
                        xt[j, i] = 0.0
                        for e in range(s_ptr[g], s_ptr[g + 1]):
                            lost[i, s_bin[e]] += s_w[e]
            for k in range(nbins):
                lo, hi = ip[k], ip[k + 1]
                if with_q and q_square and with_j:
                    _dots_q2j(res, xt, ci, wd, sd, lo, hi)
                elif with_q and q_square:
                    _dots_q2(res, xt, ci, wd, sd, lo, hi)
                elif with_q and with_j:
                    _dots_qj(res, xt, ci, wd, sd, lo, hi)
                elif with_q:
                    _dots_q(res, xt, ci, wd, sd, lo, hi)
                elif with_j:
                    _dots_j(res, xt, ci, wd, sd, lo, hi)
                else:
                    _dots_i(res, xt, ci, wd, sd, lo, hi)
                for c in range(n_out - 1):
                    for i in range(nf):
                        out[c, f0 + i, k] = res[c, i]
                for i in range(nf):
                    a = full[k] - lost[i, k]
                    # What is left of a wholly lost bin is rounding: exactly 0.
                    out[n_out - 1, f0 + i, k] = a if a > 1e-9 * full[k] else 0.0
        g0 = g1


def descan_moments(frames, rows, table, dy, dx, detector_shape, valid, tables, split,
                   sdata=None, with_j=False, q_square=False):
    """Ring sums of frames that each have their own geometry (descan), one read per frame.

    Every frame uses one of a few *tables*: unmasked pixel-splitting weights on a virtual
    detector, one per sub-pixel fraction of the centre. The frame's integer shift moves the
    table's pixel indices onto the detector; entries that leave the detector or fall on an
    invalid (masked) pixel are dropped. Frames of one table are processed eight at a time.

    Parameters
    ----------
    frames : (n, P) ndarray
    rows : (n,) int64 ndarray
        Processing order: the frames of one table side by side.
    table : (n,) int64 ndarray
        Table of every frame.
    dy, dx : (n,) int64 ndarray
        Detector row (column) = table row (column) + ``dy`` (``dx``).
    detector_shape : (int, int)
    valid : (P,) uint8 ndarray
        1 for a usable (unmasked) detector pixel.
    tables : tuple of ndarray
        ``(t_off, vrow, vcol, i_off, indptr, c_off, cindex, wdata, area)``: the tables
        packed end to end (table ``t``'s touched pixels ``vrow/vcol[t_off[t]:t_off[t+1]]``,
        its CSR row pointers ``indptr[i_off[t]:i_off[t+1]]`` into its entries
        ``cindex/wdata[c_off[t]:c_off[t+1]]``, its unmasked bin areas ``area[t K:(t+1)
        K]``). A frame's bin areas are the table's less the weights of its pixels that are
        off the detector or masked (few: no pass over all the weights).
    sdata : ndarray or None
        Shot weights aligned with ``wdata``; None = no ``Q``.
    with_j : bool
        Also compute ``W D^2``.
    q_square : bool
        The shot weights are ``wdata**2`` (the counting model per unit gain): formed in
        registers instead of read from ``sdata`` (less memory traffic per table).
    split : tuple of ndarray
        ``(f_off, fast, s_off, slow, s_ptr, s_bin, s_w)``: per table, its pixels (local
        indices) that are on an unmasked detector pixel for every frame of the table
        (``fast[f_off[t]:f_off[t+1]]``, read without checks) and the others (``slow``,
        checked one by one), with the bins and weights of slow pixel ``g`` (global index
        ``s_off[t] + jj``) in ``s_bin/s_w[s_ptr[g]:s_ptr[g+1]]``.

    Returns
    -------
    (c, n, nbins) ndarray
        Per frame (in processing order) ``I = W D``, then ``Q`` if ``sdata``, then ``J`` if
        ``with_j``, and last the frame's own bin areas ``A = sum_p w`` over its valid
        pixels.
    """
    t_off, vrow, vcol, i_off, indptr, c_off, cindex, wdata, area = tables
    with_q = sdata is not None
    n = frames.shape[0]
    nbins = int(i_off[1] - i_off[0] - 1)
    out = np.empty((2 + with_q + bool(with_j), rows.size, nbins))
    if n and rows.size:
        f_off, fast, s_off, slow, s_ptr, s_bin, s_w = split
        _descan_kernel(frames, np.asarray(rows, np.int64), table, dy, dx,
                       int(detector_shape[0]), int(detector_shape[1]), valid, t_off, vrow,
                       vcol, i_off, indptr, c_off, cindex, wdata,
                       wdata if sdata is None else sdata, area, f_off, fast, s_off, slow,
                       s_ptr, s_bin, s_w, out, with_q, bool(with_j),
                       bool(q_square and with_q))
    return out
