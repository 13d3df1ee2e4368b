r"""Screening a real scan: bad pixels, outlier patterns and descan, from one pass each.

Pure numerical core (numpy, numba, dask; no HyperSpy): the passes take frames (a numpy or
dask array ``(..., rows, columns)``) and return arrays; the decisions take those arrays and
return flags, scores and fits. :class:`femlib.signals.FEMDiffraction2D` wraps them as
``find_bad_pixels``, ``find_outlier_patterns`` and ``find_centers``.

**Why screening must not look at the variance.** FEM measures the fluctuations of the
diffracted intensity. A criterion that leaves out the patterns that fluctuate most (a cut
on the ring intensity, on its variance, on a chi-square of the pattern against the mean)
biases ``V(k)`` downwards. Each test here targets a signature that the amorphous structure
does not produce:

* **Bad pixels** (:func:`pixel_statistics`, :func:`classify_pixels`): per pixel the
  temporal mean ``<D>`` and variance ``s^2`` (the median of the variances of up to 32
  consecutive sub-blocks of the scan, so that a few bright frames, Bragg spots sweeping
  over a ring, do not make a pixel noisy). *Dead*: no counts (or a constant
  value) where the dimmer neighbours (25th percentile) give at least 20 electrons over the
  scan. *Hot*: a mean
  ``hot`` times above the neighbours'. *Noisy*: ``s^2`` ``noisy`` times above the noise
  model's prediction ``G <D>`` (``gain=G``) or ``K(0) <D>`` (a detector noise model), or
  above what the neighbouring pixels show when that is more (structure, thickness), with a
  significance of at least ``min_z`` standard errors of ``s^2``. Without a noise model the
  prediction is ``s^2`` of the neighbours. The neighbours are the 24 other pixels of the
  5x5 square (unmasked and finite ones), summarised by their 75th percentile, so that a
  pixel on the lit side of a beam-stop edge is compared with lit pixels.
* **Outlier patterns** (:func:`polar_outliers`): from a polar transform of every pattern
  over ``radial_range`` (a few radial bands by ``npt_azim`` sectors), the *crystalline*
  score of a pattern is the largest sector contrast ``m_ka / m_k - 1`` (sector mean over
  ring mean, same band), robust-standardised over the scan (median and MAD): Bragg spots
  put a few sectors of a ring far above the ring, an amorphous speckle does not (and the
  ring-averaged fluctuations that make ``V`` cancel in the contrast). *Dose* jumps and beam
  blanking: the log of the pattern's intensity in the radial range against the median of
  its scan neighbours, robust-standardised. *Non-finite* frames. Thresholds are in robust
  standard deviations of the scan's own distribution.
* **Descan** (:func:`label_sums`, :func:`fit_centers`): sums of neighbouring patterns
  (scan tiles), a ring (ellipse) fit on each with :func:`femlib.ellipse.refine_center_affine`,
  smoothed by a low-order model of the centre over the scan (a plane by default, as descan
  is), evaluated at every position.

Examples
--------
>>> import femlib
>>> from femlib import screening
>>> s = femlib.data.synthetic_fem(navigation_shape=(8, 8), detector_shape=(64, 64),
...                               hot_pixels=3)
>>> sim = s.metadata.Simulation
>>> stats = screening.pixel_statistics(s.data)
>>> found = screening.classify_pixels(stats, gain=4.2,
...                                   mask=sim.beam_stop_mask & ~sim.bad_pixels)
>>> bool((found["bad"] == sim.bad_pixels).all())  # 10 dead and 3 hot pixels
True
"""

import math
import numbers

import numpy as np

__all__ = [
    "N_SUB_BLOCKS",
    "REASONS_PIXEL",
    "REASONS_PATTERN",
    "classify_pixels",
    "fit_centers",
    "label_sums",
    "pixel_statistics",
    "plot_descan",
    "polar_outliers",
    "sub_block_size",
    "tile_labels",
]

#: Bit of each reason in the pixel ``reason`` codes.
REASONS_PIXEL = {"dead": 1, "hot": 2, "noisy": 4, "nonfinite": 8}
#: Bit of each reason in the pattern ``reason`` codes.
REASONS_PATTERN = {"crystalline": 1, "dose": 2, "nonfinite": 4}
_BLOCK_BYTES = 64 * 2**20
_MIN_ELECTRONS = 20.0  # a dead pixel is one with no counts where neighbours expect >= this
_MAD = 1.4826  # MAD -> standard deviation of a normal distribution


# ----------------------------------------------------------------------------- kernels
def _numba_kernels():
    from femlib._jit import njit

    @njit(cache=True, nogil=True)
    def pixel_moments(flat, sub, shift, s1, s2):  # pragma: no cover - compiled
        # Sums of (x - shift) and (x - shift)^2 per sub-block and pixel, four frames of a
        # sub-block at a time (one load and store of the sums per four frames; the pixel
        # loop vectorises). Branch-free: a non-finite value makes its sub-block's sums
        # non-finite, found afterwards.
        nf, npix = flat.shape
        f = 0
        while f < nf:
            b = sub[f]
            r1, r2 = s1[b], s2[b]
            if f + 3 < nf and sub[f + 3] == b:
                x0, x1, x2, x3 = flat[f], flat[f + 1], flat[f + 2], flat[f + 3]
                for p in range(npix):
                    c = shift[p]
                    d0 = x0[p] - c
                    d1 = x1[p] - c
                    d2 = x2[p] - c
                    d3 = x3[p] - c
                    r1[p] += (d0 + d1) + (d2 + d3)
                    r2[p] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
                f += 4
            else:
                x = flat[f]
                for p in range(npix):
                    d = x[p] - shift[p]
                    r1[p] += d
                    r2[p] += d * d
                f += 1

    @njit(cache=True, nogil=True)
    def label_add(flat, labels, out):  # pragma: no cover - compiled
        # out[label] += frame, four frames of one label at a time where they follow.
        nf, npix = flat.shape
        f = 0
        while f < nf:
            lab = labels[f]
            if lab < 0:
                f += 1
                continue
            o = out[lab]
            if f + 3 < nf and labels[f + 1] == lab and labels[f + 2] == lab \
                    and labels[f + 3] == lab:
                x0, x1, x2, x3 = flat[f], flat[f + 1], flat[f + 2], flat[f + 3]
                for p in range(npix):
                    o[p] += (np.float64(x0[p]) + x1[p]) + (np.float64(x2[p]) + x3[p])
                f += 4
            else:
                x = flat[f]
                for p in range(npix):
                    o[p] += x[p]
                f += 1

    from femlib._pairwise import pairwise_sum

    # numpy's order of summation; a module global, not a closure variable, so that numba
    # caches the kernels that call it
    global _pairwise_sum
    _pairwise_sum = pairwise_sum()

    @njit(cache=True, nogil=True)
    def sort_columns(stack, m, pairs, n):  # pragma: no cover - compiled
        # Rows m.. of stack set to +inf, then the first n columns sorted along the rows by
        # the compare-exchange network pairs (a module global, as _pairwise_sum).
        for i in range(m, stack.shape[0]):
            stack[i, :] = np.inf
        for q in range(pairs.shape[0]):
            lo = stack[pairs[q, 0]]
            hi = stack[pairs[q, 1]]
            for t in range(n):
                u, v = lo[t], hi[t]
                lo[t] = min(u, v)
                hi[t] = max(u, v)

    global _sort_columns
    _sort_columns = sort_columns

    @njit(cache=True, nogil=True, error_model="numpy")
    def polar_rows(p, use, n_use, band, top, finite):  # pragma: no cover - compiled
        # Per pattern: the band means over the used sectors (non-finite values as 0),
        # the largest finite sector contrast m_ka / m_k - 1 (-inf if none) and whether
        # every used bin is finite; one pass over (N, K, A).
        nn, nk, na = p.shape
        clean = np.empty(na)
        term = np.empty(na)
        for n in range(nn):
            ok = True
            best = -np.inf
            for k in range(nk):
                for a in range(na):
                    v = np.float64(p[n, k, a])
                    if not np.isfinite(v):
                        if use[k, a]:
                            ok = False
                        v = 0.0
                    clean[a] = v
                    term[a] = v if use[k, a] else v * 0.0
                b = _pairwise_sum(term, 0, na) / max(n_use[k], 1)
                band[n, k] = b
                if n_use[k] == 0:
                    continue
                # x / b - 1 is monotonic in x (rounding too): the largest contrast is that
                # of the largest (b > 0) or smallest (b < 0) value, when it is finite.
                hi = -np.inf
                lo = np.inf
                for a in range(na):
                    if use[k, a]:
                        hi = max(hi, clean[a])
                        lo = min(lo, clean[a])
                x = (hi if b > 0 else lo) / b - 1.0
                if b != 0 and np.isfinite(b) and np.isfinite(x):
                    best = max(best, x)
                    continue
                for a in range(na):  # b = 0 or an overflow: value by value
                    if use[k, a]:
                        x = clean[a] / b - 1.0
                        if np.isfinite(x) and x > best:
                            best = x
            top[n] = best
            finite[n] = ok

    @njit(cache=True, nogil=True, error_model="numpy")
    def finish_moments(n, mean, m2, enough, pairs, grand, var, med, finite):  # pragma: no cover
        # Per pixel, over the S sub-blocks (in order, as numpy's sums over axis 0): the
        # scan's mean and variance from the finite sub-blocks (Chan's formulas), whether
        # every sub-block is finite, and the median of the long-enough sub-blocks'
        # variances (infinite for a non-finite one; the scan's variance if the median is
        # not finite). Blocks of pixels; the variances sorted by the compare-exchange
        # network ``pairs`` (of a power of two >= S, padded with +inf) across the block.
        ns, npix = mean.shape
        size = pairs.max() + 1 if pairs.shape[0] else 1
        nb = 256
        stack = np.empty((max(size, ns), nb))
        total = np.empty(nb)
        acc = np.empty(nb)
        sq = np.empty(nb)
        every = np.empty(nb, np.bool_)
        m = 0
        for b in range(ns):
            m += 1 if enough[b] else 0
        for p0 in range(0, npix, nb):
            cnt = min(nb, npix - p0)
            total[:] = 0.0
            acc[:] = 0.0
            sq[:] = 0.0
            every[:] = True
            for b in range(ns):
                for t in range(cnt):
                    mu, q = mean[b, p0 + t], m2[b, p0 + t]
                    ok = np.isfinite(mu) and np.isfinite(q)
                    every[t] = every[t] and ok
                    w = n[b] if ok else 0.0
                    total[t] += w
                    acc[t] += w * (mu if ok else 0.0)
            for t in range(cnt):
                grand[p0 + t] = acc[t] / max(total[t], 1.0)
                finite[p0 + t] = every[t]
            row = 0
            for b in range(ns):
                for t in range(cnt):
                    mu, q = mean[b, p0 + t], m2[b, p0 + t]
                    ok = np.isfinite(mu) and np.isfinite(q)
                    w = n[b] if ok else 0.0
                    d = (mu if ok else 0.0) - grand[p0 + t]
                    sq[t] += (q if ok else 0.0) + w * (d * d)
                if enough[b]:
                    for t in range(cnt):
                        mu, q = mean[b, p0 + t], m2[b, p0 + t]
                        ok = np.isfinite(mu) and np.isfinite(q)
                        stack[row, t] = q / max(n[b] - 1.0, 1.0) if ok and n[b] > 1 else np.inf
                    row += 1
            for t in range(cnt):
                var[p0 + t] = sq[t] / max(total[t] - 1.0, 1.0) if total[t] > 1 else 0.0
            if m == 0:
                for t in range(cnt):
                    med[p0 + t] = var[p0 + t]
                continue
            _sort_columns(stack, m, pairs, nb)
            h = m // 2
            for t in range(cnt):
                x = stack[h, t] if m % 2 else (stack[h - 1, t] + stack[h, t]) / 2.0
                med[p0 + t] = x if np.isfinite(x) else var[p0 + t]

    @njit(cache=True, nogil=True, error_model="numpy")
    def neighbour_quantiles(image, valid, fracs, half, pairs, out):  # pragma: no cover
        # out[k, y, x]: the quantile fracs[k] (linear interpolation between the sorted
        # values, as numpy's percentile) of the valid pixels of the (2 half + 1)^2 square
        # around (y, x) but itself; only finite values count (a NaN or an invalid or
        # outside pixel sorts last, as +inf, which never reaches the finite ranks). A row of
        # pixels at a time: the neighbours gathered from a padded copy, sorted by the
        # compare-exchange network ``pairs`` (of a power of two >= the neighbours, padded
        # with +inf) across the row.
        ny, nx = image.shape
        w = 2 * half + 1
        size = pairs.max() + 1 if pairs.shape[0] else 1
        vals = np.full((ny + 2 * half, nx + 2 * half), np.inf)
        fin = np.zeros((ny + 2 * half, nx + 2 * half), np.int64)
        for y in range(ny):
            for x in range(nx):
                if valid[y, x]:
                    v = image[y, x]
                    fin[y + half, x + half] = 1 if np.isfinite(v) else 0
                    vals[y + half, x + half] = v if v == v else np.inf
        stack = np.empty((max(size, w * w - 1), nx))
        count = np.empty(nx, np.int64)
        for y in range(ny):
            m = 0
            count[:] = 0
            for dy in range(w):
                for dx in range(w):
                    if dy == half and dx == half:
                        continue
                    row = vals[y + dy]
                    frow = fin[y + dy]
                    for t in range(nx):
                        stack[m, t] = row[t + dx]
                        count[t] += frow[t + dx]
                    m += 1
            _sort_columns(stack, m, pairs, nx)
            for k in range(fracs.shape[0]):
                for t in range(nx):
                    c = count[t]
                    if c == 0:
                        out[k, y, t] = np.nan
                        continue
                    pos = (c - 1) * fracs[k]
                    lo = int(np.floor(pos))
                    hi = min(lo + 1, c - 1)
                    out[k, y, t] = stack[lo, t] + (stack[hi, t] - stack[lo, t]) * (pos - lo)

    return pixel_moments, label_add, polar_rows, finish_moments, neighbour_quantiles


_KERNELS = None
_pairwise_sum = None
_sort_columns = None


def _kernels():
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = _numba_kernels()
    return _KERNELS


def _native(block):
    from femlib.integration import as_native_frames

    block = np.asarray(block)
    return as_native_frames(block, block.shape[-2:])


# ----------------------------------------------------------------------------- passes
#: Frames are grouped into at most this many consecutive sub-blocks; the per-pixel
#: variance is also kept per sub-block, whose median is blind to a few bright frames.
N_SUB_BLOCKS = 32
_MIN_SUB_FRAMES = 16


def sub_block_size(n_frames):
    """Frames per sub-block of :func:`pixel_statistics`: ``max(16, ceil(n / 32))``.

    Parameters
    ----------
    n_frames : int
        Number of frames of the scan.

    Returns
    -------
    int

    Examples
    --------
    >>> sub_block_size(1600), sub_block_size(100)
    (50, 16)
    """
    return max(_MIN_SUB_FRAMES, -(-int(n_frames) // N_SUB_BLOCKS))


def _moments_block(block, start, size):
    """Per sub-block (count, mean, centred sum of squares) of one block of frames, the
    block's frames being ``start, start + 1, ...`` of the scan."""
    flat = _native(block)
    nf, npix = flat.shape
    if nf == 0:
        return {}
    index = (start + np.arange(nf)) // size
    lo = int(index[0])
    sub = (index - lo).astype(np.int64)
    nsub = int(sub[-1]) + 1
    s1, s2 = np.zeros((nsub, npix)), np.zeros((nsub, npix))
    shift = flat[0].astype(np.float64)
    shift = np.where(np.isfinite(shift), shift, 0.0)
    _kernels()[0](flat, sub, shift, s1, s2)
    n = np.bincount(sub, minlength=nsub).astype(np.float64)[:, None]
    mean = shift + s1 / n
    m2 = np.maximum(s2 - s1 * s1 / n, 0.0)
    return {lo + b: (n[b, 0], mean[b], m2[b]) for b in range(nsub)}


def _chan(a, b):
    na, ma, qa = a
    nb, mb, qb = b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), qa + qb + delta * delta * (na * nb / n)


def _merge_moments(a, b):
    """Merge two blocks' sub-block moments (Chan's formulas where a sub-block straddles)."""
    out = dict(a)
    for key, value in b.items():
        out[key] = _chan(out[key], value) if key in out else value
    return out


def _tree(parts, merge):
    import dask

    parts = list(parts)
    while len(parts) > 1:
        parts = [
            dask.delayed(merge, pure=False)(parts[i], parts[i + 1]) if i + 1 < len(parts)
            else parts[i]
            for i in range(0, len(parts), 2)
        ]
    return parts[0]


def _frame_blocks(frames):
    """Blocks of whole frames: a dask array's chunks (Delayed) or views of a numpy array,
    with the number of frames of each and whether the input is lazy."""
    import dask.array as da

    from femlib.integration import prepare_chunks

    if isinstance(frames, da.Array):
        if frames.ndim < 3:
            raise ValueError(f"frames must be (..., rows, columns), got shape {frames.shape}")
        darr = prepare_chunks(frames)
        darr = darr.reshape((-1,) + darr.shape[-2:], merge_chunks=False)
        return list(darr.to_delayed().ravel()), darr.chunks[0], True
    arr = np.asarray(frames)
    if arr.ndim < 3:
        raise ValueError(f"frames must be (..., rows, columns), got shape {arr.shape}")
    flat = arr.reshape((-1,) + arr.shape[-2:])
    step = max(1, int(_BLOCK_BYTES // max(flat[0].nbytes if len(flat) else 1, 1)))
    blocks = [flat[i : i + step] for i in range(0, len(flat), step)]
    return blocks, tuple(len(b) for b in blocks), False


def _compute(work, lazy, compute):
    if not compute:
        return work
    import dask

    (out,) = dask.compute(work, scheduler=None if lazy else "threads")
    return out


def pixel_statistics(frames, compute=True):
    """Per-pixel temporal count, mean and variance of a scan, in one pass.

    The frames are cut (in scan order) into at most :data:`N_SUB_BLOCKS` consecutive
    sub-blocks of :func:`sub_block_size` frames. A compiled loop reduces each block of
    frames to per-pixel sums of ``x - x_0`` and ``(x - x_0)^2`` in float64 per sub-block
    (``x_0`` the block's first frame, so no precision is lost to large means); blocks and
    sub-blocks merge with Chan's pairwise formulas, so the result does not depend on the
    chunking. Besides the scan's variance, the median over the sub-blocks of their
    variance is kept: a few bright frames (Bragg spots, cosmic rays) raise the variance of
    a few sub-blocks only, a noisy pixel that of every one.

    Parameters
    ----------
    frames : ndarray or dask.array.Array, shape (..., rows, columns)
        Any real dtype. Eager input runs as dask tasks on threads, lazy input on the active
        scheduler (a ``distributed`` client too).
    compute : bool
        If False, return a ``dask.delayed.Delayed`` of the result.

    Returns
    -------
    dict
        ``n_frames`` (int), ``mean`` and ``variance`` (rows, columns; the unbiased sample
        variance over the scan), ``median_variance`` (the median over the sub-blocks of
        their unbiased variance), ``finite`` (bool: no NaN or infinity in the pixel; a
        non-finite pixel's statistics come from its finite sub-blocks) and
        ``sub_block_size``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> frames = rng.poisson(50.0, (400, 8, 8)).astype("float32")
    >>> st = pixel_statistics(frames)
    >>> bool(np.allclose(st["mean"], frames.mean(0), rtol=1e-6))
    True
    >>> bool(np.allclose(st["variance"], frames.var(0, ddof=1), rtol=1e-6))
    True
    """
    import dask

    blocks, sizes, lazy = _frame_blocks(frames)
    shape = tuple(np.shape(frames)[-2:])
    n_frames = int(sum(sizes))
    size = sub_block_size(n_frames)
    starts = np.cumsum((0,) + tuple(sizes))[:-1]
    parts = [dask.delayed(_moments_block, pure=False)(b, int(s), size)
             for b, s in zip(blocks, starts, strict=True)]
    if not parts:
        raise ValueError("frames hold no pattern")
    work = dask.delayed(_finish_moments, pure=False)(_tree(parts, _merge_moments), shape,
                                                     n_frames, size)
    return _compute(work, lazy, compute)


def _finish_moments(moments, shape, n_frames, size):
    keys = sorted(moments)
    n = np.array([moments[k][0] for k in keys], dtype=np.float64)
    mean = np.stack([moments[k][1] for k in keys])
    m2 = np.stack([moments[k][2] for k in keys])
    enough = n >= max(2, size // 2)  # a short last sub-block is left out of the median
    npix = mean.shape[1]
    grand, var, med = np.empty(npix), np.empty(npix), np.empty(npix)
    finite = np.empty(npix, bool)
    # Non-finite sub-blocks are left out of the mean and variance and count as infinitely
    # noisy in the median (their pixel is flagged anyway).
    _kernels()[3](n, mean, m2, enough, _sorting_network(int(enough.sum())), grand, var,
                  med, finite)
    return {
        "n_frames": n_frames,
        "mean": grand.reshape(shape),
        "variance": var.reshape(shape),
        "median_variance": med.reshape(shape),
        "finite": finite.reshape(shape),
        "sub_block_size": size,
    }


def tile_labels(navigation_shape, tiles):
    """Label of every probe position by scan tile, and the tile grid.

    Parameters
    ----------
    navigation_shape : tuple of int
        ``(rows, columns)`` of the scan (a 1D scan is one row).
    tiles : (int, int)
        Positions per tile ``(ty, tx)``; edge tiles are smaller.

    Returns
    -------
    labels : ndarray of int64, navigation shaped
    grid : (int, int)
        Number of tiles along the scan rows and columns.

    Examples
    --------
    >>> labels, grid = tile_labels((4, 6), (2, 3))
    >>> grid, labels[3, 5]
    ((2, 2), np.int64(3))
    """
    nav = tuple(int(n) for n in navigation_shape)
    if len(nav) == 1:
        nav = (1,) + nav
    if len(nav) != 2:
        raise ValueError(f"navigation_shape must have 1 or 2 dimensions, got {nav}")
    try:
        ty, tx = (int(t) for t in tiles)
    except (TypeError, ValueError):
        raise ValueError(f"tiles must be two positive integers (ty, tx), got {tiles!r}") from None
    if ty < 1 or tx < 1:
        raise ValueError(f"tiles must be two positive integers (ty, tx), got {tiles!r}")
    gy, gx = -(-nav[0] // ty), -(-nav[1] // tx)
    iy = np.arange(nav[0]) // ty
    ix = np.arange(nav[1]) // tx
    labels = (iy[:, None] * gx + ix[None, :]).astype(np.int64)
    return labels.reshape(tuple(int(n) for n in navigation_shape)), (gy, gx)


def _label_block(block, labels, n_labels):
    flat = _native(block)
    out = np.zeros((n_labels, flat.shape[1]))
    _kernels()[1](flat, np.ascontiguousarray(labels, dtype=np.int64), out)
    return out


def label_sums(frames, labels, n_labels=None, compute=True):
    """Sum of the frames of every label (e.g. scan tiles), in one pass, float64.

    Parameters
    ----------
    frames : ndarray or dask.array.Array, shape (..., rows, columns)
    labels : int array_like, shape ``frames.shape[:-2]``
        Label per frame; -1 leaves a frame out.
    n_labels : int or None
        Default ``labels.max() + 1``.
    compute : bool
        If False, return a ``dask.delayed.Delayed``.

    Returns
    -------
    (n_labels, rows, columns) ndarray
        Non-finite values propagate into their label's sum.

    Examples
    --------
    >>> frames = np.arange(4 * 2 * 2, dtype=float).reshape(4, 2, 2)
    >>> label_sums(frames, [0, 1, 0, -1])[0].tolist()
    [[8.0, 10.0], [12.0, 14.0]]
    """
    import dask

    nav = tuple(np.shape(frames)[:-2])
    lab = np.asarray(labels)
    if lab.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers (-1 = left out), got {lab.dtype}")
    if lab.shape != nav and lab.size != int(np.prod(nav)):
        raise ValueError(f"labels must have the navigation shape {nav}, got {lab.shape}")
    lab = lab.astype(np.int64).ravel()
    if n_labels is None:
        n_labels = int(lab.max(initial=-1)) + 1
    if lab.max(initial=-1) >= n_labels or lab.min(initial=0) < -1:
        raise ValueError(f"labels must be -1 or in [0, n_labels={n_labels})")
    blocks, sizes, lazy = _frame_blocks(frames)
    bounds = np.cumsum((0,) + tuple(sizes))
    parts = [
        dask.delayed(_label_block, pure=False)(b, lab[i:j], n_labels)
        for b, i, j in zip(blocks, bounds[:-1], bounds[1:], strict=True)
    ]
    shape = tuple(np.shape(frames)[-2:])
    work = dask.delayed(np.reshape, pure=False)(_tree(parts, np.add), (n_labels,) + shape)
    return _compute(work, lazy, compute)


# ----------------------------------------------------------------------------- bad pixels
def _check_factor(value, name, minimum=1.0):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number > {minimum}, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= minimum:
        raise ValueError(f"{name} must be a finite number > {minimum}, got {value}")
    return value


def _sorting_network(n):
    """Compare-exchange pairs of Batcher's odd-even merge sort of the smallest power of two
    >= ``n`` values, in order."""
    size = 1 << max(int(n) - 1, 0).bit_length()
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def _neighbour_quantile(image, valid, q=75.0, size=5):
    """``q``-th percentile (linear interpolation) of the other valid pixels of the ``size``
    x ``size`` square around each pixel (NaN where none is valid); ``q`` may be a sequence,
    giving one image per value."""
    qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
    image = np.asarray(image, dtype=np.float64)
    out = np.empty((len(qs),) + image.shape)
    _kernels()[4](image, np.asarray(valid, dtype=np.bool_), qs / 100.0, size // 2,
                  _sorting_network(size * size - 1), out)
    return out if np.ndim(q) else out[0]


def classify_pixels(stats, gain=None, k0=None, mask=None, hot=3.0, noisy=2.0, min_z=5.0):
    """Dead, hot and noisy pixels from the per-pixel statistics of a scan.

    Parameters
    ----------
    stats : dict
        :func:`pixel_statistics` of the scan.
    gain : float or None
        Detector units per electron of a counting detector: the noise model predicts the
        temporal variance ``gain * <D>``.
    k0 : float or None
        The noise kernel at zero lag, ``K(0)`` of a :class:`femlib.noise.DetectorNoise`:
        the prediction is ``k0 * <D>``. Give at most one of ``gain`` and ``k0``; with
        neither, the gain is estimated as the median of ``s^2 / <D>`` over the pixels
        (reported as ``gain_estimate``) and noisy pixels are judged against their
        neighbours only.
    mask : (rows, columns) bool array or None
        Pixels already excluded (beam stop): never flagged, never used as neighbours.
    hot : float
        A pixel is hot when its mean exceeds ``hot`` times its neighbours' (and by
        ``min_z`` standard errors).
    noisy : float
        A pixel is noisy when its variance exceeds ``noisy`` times the prediction (and by
        ``min_z`` standard errors of the variance).
    min_z : float
        Significance required of a hot or noisy pixel, in standard errors.

    Returns
    -------
    dict
        ``bad`` (bool, detector shaped), ``reason`` (int codes, bits of
        :data:`REASONS_PIXEL`), ``noise_score`` (variance over prediction), ``hot_score``
        (mean over the neighbours'), ``prediction`` (the predicted variance),
        ``gain_estimate`` and the thresholds.

    Raises
    ------
    ValueError
        For both ``gain`` and ``k0``, a non-positive one, thresholds <= 1 or a mask of the
        wrong shape.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> frames = 4.2 * rng.poisson(30.0, (500, 16, 16))
    >>> frames[:, 5, 7] += 300 * (rng.random(500) < 0.5)  # a telegraph pixel
    >>> found = classify_pixels(pixel_statistics(frames), gain=4.2)
    >>> np.argwhere(found["bad"]).tolist(), int(found["reason"][5, 7])
    ([[5, 7]], 4)
    """
    from femlib import variance as _variance

    if gain is not None and k0 is not None:
        raise ValueError("give gain or a noise model (k0), not both")
    if gain is not None:
        gain = _variance.check_gain(gain)
    if k0 is not None:
        k0 = _variance.check_gain(k0, name="noise.k0")
    hot = _check_factor(hot, "hot")
    noisy = _check_factor(noisy, "noisy")
    min_z = _check_factor(min_z, "min_z", 0.0)
    mean, var = stats["mean"], stats["median_variance"]
    shape = mean.shape
    n = max(int(stats["n_frames"]), 1)
    masked = np.zeros(shape, bool) if mask is None else np.asarray(mask, bool)
    if masked.shape != shape:
        raise ValueError(f"mask has shape {masked.shape} but the detector is {shape}")
    nonfinite = ~stats["finite"] & ~masked
    usable = ~masked & ~nonfinite
    lit = usable & (mean > 0)
    factor = gain if gain is not None else k0
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(lit, var / np.where(lit, mean, 1.0), np.nan)
    estimate = float(np.nanmedian(ratio)) if lit.any() else float("nan")
    g = factor if factor is not None else estimate
    if not (g > 0):
        g = 1.0
    # Temporal variance over the noise model, and the neighbours' level of it (structure
    # and thickness add variance to every pixel of a region alike; a bad pixel is alone).
    near_ratio = _neighbour_quantile(ratio / g, lit)
    level = np.where(np.isfinite(near_ratio), near_ratio, 1.0)
    level = np.maximum(level, 1.0) if factor is not None else level
    prediction = g * mean * level
    with np.errstate(invalid="ignore", divide="ignore"):
        noise_score = np.where(lit, var / np.where(prediction > 0, prediction, np.inf), 0.0)
        electrons = np.maximum(mean, 1e-300) / g
        # Standard error of a median of sub-block variances (about 1.25x that of a mean).
        se_rel = 1.25 * np.sqrt((2.0 + 1.0 / electrons) / n)
        noisy_z = (noise_score - 1.0) / se_rel
    is_noisy = lit & (noise_score > noisy) & (noisy_z > min_z)
    near_mean, low_mean = _neighbour_quantile(mean, usable, q=(75.0, 25.0))
    near_var = _neighbour_quantile(var, usable)
    with np.errstate(invalid="ignore", divide="ignore"):
        hot_score = np.where(
            usable & (near_mean > 0), mean / np.where(near_mean > 0, near_mean, 1.0), 0.0
        )
        hot_z = (mean - near_mean) / np.sqrt(np.maximum(near_var, g * near_mean) / n)
    is_hot = usable & (hot_score > hot) & (hot_z > min_z)
    # Dead: judged against the dimmer neighbours (25th percentile), so that a pixel just
    # behind a beam-stop edge, half of whose neighbours are lit, is not dead.
    expected = np.where(np.isfinite(low_mean), low_mean, 0.0) * n / g
    is_dead = usable & (var == 0) & (expected >= _MIN_ELECTRONS) & (mean < low_mean)
    reason = (
        REASONS_PIXEL["dead"] * is_dead
        + REASONS_PIXEL["hot"] * is_hot
        + REASONS_PIXEL["noisy"] * is_noisy
        + REASONS_PIXEL["nonfinite"] * nonfinite
    ).astype(np.int64)
    return {
        "bad": reason > 0,
        "reason": reason,
        "noise_score": noise_score,
        "hot_score": hot_score,
        "prediction": prediction,
        "gain_estimate": estimate,
        "model": "gain" if gain is not None else ("noise" if k0 is not None else "estimated"),
        "hot": hot,
        "noisy": noisy,
        "min_z": min_z,
    }


# ----------------------------------------------------------------------------- patterns
def _robust_z(x, valid):
    """``(x - median) / (1.4826 MAD)`` over the valid entries (0 elsewhere)."""
    z = np.zeros(x.shape)
    if valid.sum() < 3:
        return z
    v = x[valid]
    med = np.median(v)
    mad = _MAD * np.median(np.abs(v - med))
    if not mad > 0:
        mad = max(np.std(v), np.finfo(float).tiny)
    z[valid] = (v - med) / mad
    return z


def polar_outliers(profiles, coverage=None, crystal=6.0, dose=8.0, min_coverage=0.5):
    """Outlier patterns from their polar transforms over the ring(s).

    Parameters
    ----------
    profiles : ndarray, shape navigation + (K, A)
        Mean intensity per pixel in K radial bands by A azimuthal sectors of every pattern
        (e.g. ``get_azimuthal_integral2d(npt=K, npt_azim=A, mean=True)``).
    coverage : (K, A) ndarray or None
        Covered fraction of every bin; sectors below ``min_coverage`` of their band's best
        one are ignored (beam-stop arm, detector edge). None: all used.
    crystal : float
        Threshold on the crystalline score, in robust standard deviations.
    dose : float
        Threshold on the dose score (both signs), in robust standard deviations.
    min_coverage : float
        See ``coverage``.

    Returns
    -------
    dict
        ``outlier`` (bool, navigation shaped), ``reason`` (int codes, bits of
        :data:`REASONS_PATTERN`), ``crystal_score`` and ``dose_score`` (robust z, navigation
        shaped), ``contrast`` (the largest sector contrast of each pattern), ``intensity``
        (mean intensity in the range) and the thresholds.

    Notes
    -----
    Crystalline score: ``c_n = max_{k,a} (m_nka / m_nk - 1)`` with ``m_nk`` the mean of
    band ``k`` over its used sectors, standardised as ``(c_n - median c) / (1.4826 MAD c)``
    over the scan. Dose score: ``d_n = log T_n - median_{3x3} log T`` with ``T_n`` the
    band-averaged intensity, standardised likewise; a pattern with ``T_n <= 0`` (blanked) is
    a dose outlier. Neither depends on the ring-averaged fluctuations that make ``V(k)``:
    they cancel in the contrast, and the dose threshold lies far outside them.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> prof = rng.poisson(400.0, (10, 10, 2, 16)) / 1.0
    >>> prof[3, 4, 1, 5] *= 4  # a Bragg spot
    >>> prof[7, 2] = 0.0       # beam blanked
    >>> out = polar_outliers(prof)
    >>> np.argwhere(out["outlier"]).tolist()
    [[3, 4], [7, 2]]
    """
    crystal = _check_factor(crystal, "crystal", 0.0)
    dose = _check_factor(dose, "dose", 0.0)
    p = np.asarray(profiles)
    if p.dtype not in (np.float32, np.float64):
        p = p.astype(np.float64)
    if p.ndim < 3:
        raise ValueError(f"profiles must be navigation + (K, A), got shape {p.shape}")
    nav, (k, a) = p.shape[:-2], p.shape[-2:]
    flat = np.ascontiguousarray(p.reshape(-1, k, a))  # float32 is read as float64
    use = np.ones((k, a), bool)
    if coverage is not None:
        cov = np.asarray(coverage, dtype=float).reshape(k, a)
        best = cov.max(axis=1, keepdims=True)
        use = (cov > 0) & (cov >= min_coverage * best)
    n_use = use.sum(axis=1)
    # One compiled pass: band means (N, K), largest sector contrast, finite flags.
    band = np.empty((len(flat), k))
    c = np.empty(len(flat))
    finite = np.empty(len(flat), bool)
    _kernels()[2](flat, use, n_use.astype(np.int64), band, c, finite)
    total = (band * (n_use > 0)).sum(axis=1) / max(int((n_use > 0).sum()), 1)
    lit = finite & (total > 0)
    c = np.where(lit & np.isfinite(c), c, 0.0)
    crystal_z = _robust_z(c, lit)
    logt = np.log(np.where(lit, total, 1.0))
    grid = logt.reshape(nav if len(nav) == 2 else (1, -1))
    valid_grid = lit.reshape(grid.shape)
    fill = np.median(logt[lit]) if lit.any() else 0.0
    from scipy import ndimage  # here: importing femlib.signals should not load it

    local = ndimage.median_filter(np.where(valid_grid, grid, fill), size=3, mode="nearest")
    d = (grid - local).ravel()
    dose_z = _robust_z(d, lit)
    is_crystal = lit & (crystal_z > crystal)
    is_dose = finite & ((~lit) | (np.abs(dose_z) > dose))
    reason = (
        REASONS_PATTERN["crystalline"] * is_crystal
        + REASONS_PATTERN["dose"] * is_dose
        + REASONS_PATTERN["nonfinite"] * ~finite
    ).astype(np.int64)
    return {
        "outlier": (reason > 0).reshape(nav),
        "reason": reason.reshape(nav),
        "crystal_score": crystal_z.reshape(nav),
        "dose_score": dose_z.reshape(nav),
        "contrast": c.reshape(nav),
        "intensity": total.reshape(nav),
        "crystal": crystal,
        "dose": dose,
    }


# ----------------------------------------------------------------------------- descan
_MODELS = {"constant": 1, "plane": 3, "quadratic": 6}


def _design(yx, model):
    y, x = yx[:, 0], yx[:, 1]
    cols = [np.ones_like(y)]
    if model in ("plane", "quadratic"):
        cols += [x, y]
    if model == "quadratic":
        cols += [x * x, x * y, y * y]
    return np.column_stack(cols)


def fit_centers(tile_images, tile_positions, navigation_positions, start_center, affine=None,
                radial_range=None, mask=None, model="plane", n_azimuth=90, max_iter=3):
    """Per-position pattern centres: a ring fit on every tile sum, smoothed by a model.

    Each tile image is fitted with :func:`femlib.ellipse.refine_center_affine` (from
    ``start_center`` and ``affine``, on the ring in ``radial_range``); the tile centres are
    then fitted by least squares with a low-order polynomial of the scan position (tiles
    further than 4 robust standard deviations from a first fit are dropped, then refitted),
    which is evaluated at every position.

    Parameters
    ----------
    tile_images : (T, rows, columns) ndarray
        Sum of the patterns of every tile.
    tile_positions : (T, 2) ndarray
        Mean scan position ``(row, column)`` (in scan steps) of every tile's patterns.
    navigation_positions : (N, 2) ndarray
        Scan positions ``(row, column)`` to evaluate the model at.
    start_center : (2,) array_like
        Starting centre ``(x, y)`` px (e.g. from the scan's sum).
    affine : (3, 3) array_like or None
        Starting affine (the rings' distortion).
    radial_range : (float, float) or None
        Ring to fit, corrected pixels; None: the brightest ring about the start.
    mask : (rows, columns) bool or None
        Excluded pixels (beam stop, bad pixels): rays crossing them are dropped.
    model : {"plane", "quadratic", "constant"}
        Smoothing model of the centre over the scan: ``c(y, x) = a + b x + c y`` (plane,
        what a linear descan gives), plus ``x^2, xy, y^2`` (quadratic), or one centre.
    n_azimuth : int
        Azimuthal sectors of the ring fits.
    max_iter : int
        Iterations of each tile's refinement (it starts from the scan's fit, a few pixels
        off at most).

    Returns
    -------
    dict
        ``centers`` (N, 2) x, y px; ``tile_centers`` (T, 2) x, y px of the raw fits (NaN
        where a fit failed); ``tile_ok`` (T,) fitted and kept; ``residual`` (T, 2) raw minus
        model; ``rms_residual`` (px, over the kept tiles); ``coefficients`` (2, M);
        ``model``; ``errors`` (message per failed tile).

    Raises
    ------
    ValueError
        For an unknown model or fewer usable tiles than the model has parameters (with the
        number of failed fits and a suggestion).

    Examples
    --------
    >>> rows, cols = np.mgrid[:64, :64]
    >>> def ring(cx, cy):
    ...     return 100 * np.exp(-(np.hypot(cols - cx, rows - cy) - 20) ** 2 / 4) + 10
    >>> pos = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    >>> images = np.stack([ring(31.5 + 0.5 * c, 30.0 + 0.3 * r) for r, c in pos])
    >>> fit = fit_centers(images, pos, pos, (31.5, 30.0), radial_range=(12, 28))
    >>> fit["centers"].round(3).tolist()
    [[31.5, 30.0], [32.0, 30.0], [31.5, 30.3], [32.0, 30.3]]
    """
    from femlib.ellipse import EllipseFitError, refine_center_affine

    if model not in _MODELS:
        raise ValueError(
            f"model must be one of 'plane', 'quadratic', 'constant', got {model!r}"
        )
    images = np.asarray(tile_images, dtype=float)
    tpos = np.asarray(tile_positions, dtype=float).reshape(-1, 2)
    npos = np.asarray(navigation_positions, dtype=float).reshape(-1, 2)
    start = np.asarray(start_center, dtype=float)
    raw = np.full((len(images), 2), np.nan)
    errors = {}

    def fit(t):
        image = images[t]
        if not np.isfinite(image).any() or not image.any():
            return t, None, "no counts"
        try:
            c, _ = refine_center_affine(
                image, start[::-1], affine, radial_range=radial_range, mask=mask,
                n_azimuth=n_azimuth, units="pixel", max_iter=max_iter,
            )
        except (EllipseFitError, ValueError, np.linalg.LinAlgError) as err:
            return t, None, str(err)
        return t, c[::-1], None

    # The fits are independent and mostly in compiled code that releases the GIL: on
    # dask's thread pool, which lives across calls (starting threads for every call costs
    # more than a fit on a busy machine).
    import dask
    from dask.threaded import get as threaded

    (results,) = dask.compute([dask.delayed(fit, pure=False)(t) for t in range(len(images))],
                              scheduler=threaded)
    for t, c, err in results:
        if err is None:
            raw[t] = c
        else:
            errors[t] = err
    ok = np.isfinite(raw).all(axis=1)
    fit_model = model
    need = _MODELS[fit_model]
    if ok.sum() < need:
        detail = f" (first failure: {next(iter(errors.values()))})" if errors else ""
        raise ValueError(
            f"only {int(ok.sum())} of {len(images)} tiles gave a ring fit but model="
            f"{model!r} needs {need}{detail}; use larger tiles, model='constant', give "
            "radial_range around a ring and a mask of the beam stop"
        )
    design = _design(tpos, fit_model)
    keep = ok.copy()
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(design[keep], raw[keep], rcond=None)
        res = raw - design @ coef
        dist = np.hypot(res[:, 0], res[:, 1])
        scale = _MAD * np.median(dist[keep]) if keep.sum() > need else 0.0
        new = ok & (dist <= 4 * max(scale, 0.02))
        if new.sum() < need or (new == keep).all():
            break
        keep = new
    coef, *_ = np.linalg.lstsq(design[keep], raw[keep], rcond=None)
    res = raw - design @ coef
    centers = _design(npos, fit_model) @ coef
    return {
        "centers": centers,
        "tile_centers": raw,
        "tile_positions": tpos,
        "tile_ok": keep,
        "residual": res,
        "rms_residual": float(np.sqrt(np.mean(np.sum(res[keep] ** 2, axis=1)))),
        "coefficients": coef.T,
        "model": model,
        "errors": errors,
    }


def plot_descan(fit, ax=None, scale=None):
    """Figure of a descan fit: the raw tile centres and the model, as shifts over the scan.

    Parameters
    ----------
    fit : dict or signal
        The result of :func:`fit_centers`, or the signal returned by
        ``FEMDiffraction2D.find_centers`` (its ``metadata.Screening.descan``).
    ax : (2,) matplotlib Axes or None
        Two axes (shift field, residuals); None makes a new figure.
    scale : float or None
        Arrow scale (matplotlib ``quiver``); None is automatic.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> rows, cols = np.mgrid[:64, :64]
    >>> images = np.stack([100 * np.exp(-(np.hypot(cols - 31.5 - 0.5 * c, rows - 30) - 20)
    ...                    ** 2 / 4) + 10 for c in range(4)])
    >>> pos = np.column_stack([np.zeros(4), np.arange(4.0)])
    >>> fig = plot_descan(fit_centers(images, pos, pos, (31.5, 30), radial_range=(12, 28)))
    >>> len(fig.axes)
    2
    """
    import matplotlib.pyplot as plt

    if not isinstance(fit, dict):
        md = fit.metadata.Screening.descan
        fit = md.as_dictionary() if hasattr(md, "as_dictionary") else dict(md)
    raw = np.asarray(fit["tile_centers"], dtype=float)
    res = np.asarray(fit["residual"], dtype=float)
    pos = np.asarray(fit["tile_positions"], dtype=float)
    ok = np.asarray(fit["tile_ok"], dtype=bool)
    model = raw - res
    if ax is None:
        fig, ax = plt.subplots(1, 2, figsize=(9, 4))
    else:
        fig = ax[0].figure
    ref = np.nanmean(model[ok], axis=0)
    ax[0].quiver(pos[ok, 1], pos[ok, 0], *(raw[ok] - ref).T, color="k", angles="xy",
                 scale=scale, label="tile fits")
    ax[0].quiver(pos[ok, 1], pos[ok, 0], *(model[ok] - ref).T, color="C1", angles="xy",
                 scale=scale, alpha=0.7, label=f"{fit['model']} model")
    if (~ok).any():
        ax[0].plot(pos[~ok, 1], pos[~ok, 0], "rx", label="failed / dropped")
    ax[0].set(xlabel="scan x (steps)", ylabel="scan y (steps)",
              title="pattern centre minus its mean (px)")
    # quiver does not widen the limits to its arrows: one tile spacing of margin.
    for axis, set_lim, flip in ((1, ax[0].set_xlim, False), (0, ax[0].set_ylim, True)):
        p = np.unique(pos[:, axis])
        pad = float(np.diff(p).min()) if p.size > 1 else 1.0
        lim = (p.min() - pad, p.max() + pad)
        set_lim(lim[::-1] if flip else lim)
    ax[0].legend(loc="upper right", fontsize="small")
    ax[1].plot(res[ok, 0], res[ok, 1], "o", ms=3)
    ax[1].axhline(0, color="0.7")
    ax[1].axvline(0, color="0.7")
    ax[1].set(xlabel="residual x (px)", ylabel="residual y (px)",
              title=f"fit residual, rms {fit['rms_residual']:.3f} px")
    ax[1].set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    return fig
