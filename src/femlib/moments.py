r"""The FEM pass: one streaming read of the frames into mergeable moments.

Pure numerical core (numpy, numba, dask; no HyperSpy). :func:`accumulate_moments` is the
public pass; :mod:`femlib.variance` turns its :class:`Moments` into ``V(k)``.

Notation: ``D_n(p)`` is pixel ``p`` of frame ``n``, ``w_kp`` the weights of radial bin ``k``
with ``A_k = sum_p w_kp``, and ``s_kp`` the *shot weights* of a noise model (for the counting
model of gain ``G``, ``s_kp = G w_kp^2``), with the sparsity of ``w``.

Per frame the kernel forms, in one read of the frame,

* ``I = sum_p w_kp D(p)`` (ring sum, not divided by ``A_k``),
* ``Q = sum_p s_kp D(p)`` (only with shot weights),
* ``J = sum_p w_kp D(p)^2`` (only for ``r`` and ``re``),

and from them ``U = J A / I^2`` and ``V = A / I`` (``r``, ``re``) and ``Y = Q / I^2`` (``r``
with shot weights), and for ``r`` with shot weights the per-frame unbiased products
``P = A J / (I^2 - c Q)`` and ``H = A I / (I^2 - c Q)`` (``c``: ``shot_scale``, the factor
that turns ``Q`` into detector units); in a frame with less than two electrons' worth of
signal (``I^2 < 2 c Q``) they fall back to ``P = U + c Y`` and ``H = V``.

A :class:`Moments` holds, per *state* ``s = group * n_blocks + block`` (a group label
per frame, jackknife block by rank inside the group), the frame count, the means of those
columns (order :data:`COLUMNS`; columns not asked for are 0), the centred
sum of squares of ``I`` and, when asked, per touched pixel the mean (``VImage``, ``r``,
``re``: the ring non-uniformity) and the centred sum of squares (``VImage``). Moments of
disjoint frame sets merge exactly with Chan's pairwise formulas (:func:`merge`), so chunks
reduce in any order, as a tree, on threads or a cluster.

Frames with a NaN or infinite value in a weighted pixel are left out and counted.
"""

import sys
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from femlib import _kernels
from femlib.integration import _check_dtype, as_native_frames, prepare_chunks

__all__ = [
    "COLUMNS",
    "N_BLOCKS",
    "Moments",
    "accumulate",
    "accumulate_moments",
    "frame_states",
    "merge",
    "needs",
    "with_zero_frames",
]

N_BLOCKS = 20
Q_PER_FRAME = False
#: Columns of :attr:`Moments.mean`, in order.
COLUMNS = ("I", "Q", "J", "U", "V", "Y", "P", "H")
_I, _Q, _J, _U, _V, _Y, _P, _H = range(8)
_METHODS = ("Omega", "r", "re", "VImage")
# Eager frames are cut into dask tasks of about this many bytes: enough tasks for every
# core, small enough to bound each task's temporaries.
BLOCK_BYTES = 64 * 2**20


@dataclass
class Moments:
    """Mergeable one-pass moments, per state ``s = group * n_blocks + block``.

    Attributes
    ----------
    count : (S,) ndarray
        Number of frames per state.
    mean : (S, 8, K) ndarray
        Means over the state's frames of the columns :data:`COLUMNS`
        (``I, Q, J, U, V, Y, P, H``); columns that were not accumulated hold 0.
    m2 : (S, K) ndarray
        Centred sum of squares of ``I``.
    pix_mean : (S, P') ndarray or None
        Per touched pixel mean (for ``VImage``, ``r``, ``re``).
    pix_m2 : (S, P') ndarray or None
        Per touched pixel centred sum of squares (``VImage`` only).
    n_groups, n_blocks : int
    n_nonfinite : int
        Frames left out because a weighted pixel was NaN or infinite.
    zero_count : (S,) ndarray or None
        Frames left out per state because every ring sum was exactly 0 (a missing chunk of
        a zarr store reads as zeros), with ``leave_out_zero`` (else 0);
        :func:`with_zero_frames` puts them back.
    squares : bool
        Whether ``J``, ``U`` and ``V`` were accumulated.
    shot : bool
        Whether ``Q`` was accumulated (shot weights given).
    ratio : bool
        Whether ``Y``, ``P`` and ``H`` were accumulated.
    shot_scale : float
        The factor that turned ``Q`` into detector units in ``P`` and ``H`` (the gain for
        the counting model's ``Q = sum W^2 D``, 1 for a noise model's shot weights).

    Examples
    --------
    >>> from femlib.integration import build_weights
    >>> w = build_weights((16, 16), (7.5, 7.5), npt=4, radial_range=(1, 7))
    >>> m = accumulate_moments(np.ones((5, 16, 16)), w, n_blocks=5)
    >>> m.mean.shape, m.n_frames, COLUMNS[int(np.argmax(m.mean[0, :, 0] > 0))]
    ((5, 8, 4), 5, 'I')
    """

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    pix_mean: np.ndarray | None
    pix_m2: np.ndarray | None
    n_groups: int
    n_blocks: int
    n_nonfinite: int = 0
    squares: bool = True
    shot: bool = False
    ratio: bool = False
    #: Frames left out because a bin had no unmasked pixel around their own centre
    #: (descan only).
    n_uncovered: int = 0
    #: Whether the columns are per-frame ring *means* (descan: ``I/A_n``, ``Q/A_n^2``,
    #: ``J/A_n`` with each frame's own areas); the estimators then take ``A = 1``.
    per_frame_area: bool = False
    shot_scale: float = 1.0
    zero_count: np.ndarray | None = None

    @property
    def n_frames(self):
        """Total number of frames accumulated."""
        return int(self.count.sum())


def needs(methods, shot=False):
    """What the pass must accumulate for ``methods``.

    Parameters
    ----------
    methods : sequence of str
        Any of ``"Omega"``, ``"r"``, ``"re"``, ``"VImage"``.
    shot : bool
        Whether a shot-noise correction (shot weights) is asked for.

    Returns
    -------
    dict
        ``squares`` (``J, U, V``: r, re), ``ratio`` (``Y, P, H``: r with shot weights),
        ``pixel_means`` (VImage, r, re), ``pixel_squares`` (VImage).

    Examples
    --------
    >>> needs(["Omega"])
    {'squares': False, 'ratio': False, 'pixel_means': False, 'pixel_squares': False}
    >>> needs(["r"], shot=True)["ratio"]
    True
    """
    methods = set(methods)
    bad = methods - set(_METHODS)
    if bad or not methods:
        raise ValueError(f"methods must be a non-empty list of {', '.join(_METHODS)}, "
                         f"got {sorted(methods)!r}")
    ring = bool({"r", "re"} & methods)
    return {
        "squares": ring,
        "ratio": "r" in methods and bool(shot),
        "pixel_means": ring or "VImage" in methods,
        "pixel_squares": "VImage" in methods,
    }


def frame_states(n_frames, groups=None, n_groups=1, n_blocks=N_BLOCKS):
    """State of every frame: ``group * n_blocks + block``, -1 for excluded frames.

    The ``i``-th frame of a group (in scan order) goes to jackknife block ``i mod
    n_blocks``, so every group with ``n >= n_blocks`` frames fills all blocks evenly,
    whatever the scan shape or how the groups fall on the scan; the assignment is fixed
    before the pass and does not depend on chunking.

    Parameters
    ----------
    n_frames : int
    groups : (n_frames,) int array or None
        Group label of each frame, -1 = excluded. None = all in group 0.
    n_groups : int
    n_blocks : int
        Jackknife blocks.

    Returns
    -------
    (n_frames,) ndarray of int64

    Examples
    --------
    >>> frame_states(5, [0, 1, 0, -1, 1], n_groups=2, n_blocks=2)
    array([ 0,  2,  1, -1,  3])
    """
    g = np.zeros(n_frames, np.int64) if groups is None else np.asarray(groups, np.int64)
    if g.shape != (n_frames,):
        raise ValueError(f"groups must have one entry per frame ({n_frames}), got {g.shape}")
    if g.max(initial=-1) >= n_groups or g.min(initial=-1) < -1:
        raise ValueError(f"groups must be -1 (left out) or in [0, n_groups={n_groups})")
    order = np.argsort(g, kind="stable")
    sorted_g = g[order]
    first = np.searchsorted(sorted_g, sorted_g, side="left")
    rank = np.empty(n_frames, np.int64)
    rank[order] = np.arange(n_frames) - first
    return np.where(g >= 0, g * n_blocks + rank % n_blocks, -1)


# ----------------------------------------------------------------------------- one chunk
@dataclass(frozen=True)
class _Plan:
    """What every chunk task needs besides its frames (shipped once per graph)."""

    n_groups: int
    n_blocks: int
    squares: bool
    ratio: bool
    pixel_means: bool
    pixel_squares: bool
    shot_scale: float = 1.0
    leave_out_zero: bool = False


def _shot_data(weights, shot_weights):
    """Shot weights as a data array aligned with the kernels' weights,
    ``weights.bin_major[2]`` (same non-zeros, same order)."""
    if shot_weights is None:
        return None
    if shot_weights is weights.squared:  # the counting model: W**2, aligned by construction
        return weights.bin_major[2] ** 2
    if not sp.issparse(shot_weights):
        dense = np.asarray(shot_weights)
        if dense.ndim != 2 or dense.dtype.kind not in "biuf":
            raise TypeError(
                "shot_weights must be a scipy.sparse matrix, a 2D real array or None, got "
                f"{type(shot_weights).__name__} of shape {dense.shape}"
            )
        shot_weights = sp.csr_array(dense)
    k, npix = weights.area.size, int(np.prod(weights.detector_shape))
    if shot_weights.shape != (k, npix):
        raise ValueError(
            f"shot_weights has shape {shot_weights.shape}, expected (bins, pixels) = "
            f"({k}, {npix}), the shape of the weight matrix"
        )
    coo = sp.coo_array(shot_weights)
    coo.sum_duplicates()
    # Linear index (pixel-major, the order of weights.wdata) of every entry.
    skey = coo.col.astype(np.int64) * k + coo.row
    cols = np.repeat(weights.touched.astype(np.int64), np.diff(weights.colptr))
    wkey = cols * k + weights.rowidx
    order = np.argsort(skey)
    skey, sval = skey[order], coo.data[order].astype(np.float64)
    pos = np.searchsorted(skey, wkey)
    pos_c = np.minimum(pos, max(skey.size - 1, 0))
    hit = (pos < skey.size) & (skey[pos_c] == wkey) if skey.size else np.zeros(0, bool)
    out = np.zeros(wkey.size)
    out[hit] = sval[pos_c[hit]]
    if np.count_nonzero(sval) > np.count_nonzero(out):
        raise ValueError("shot_weights has non-zeros where the weight matrix has none: it "
                         "must have the sparsity of the weights (W * (K * W))")
    if not np.all(np.isfinite(out)):
        raise ValueError("shot_weights must be finite")
    return out[weights.bin_major_order[2]]


def _table_tasks(table, n_tasks):
    """Frames split into ``n_tasks`` sets of about equal size, cut between tables where
    possible: frame indices sorted by table, one array per task."""
    order = np.argsort(table, kind="stable")
    n = order.size
    if n_tasks <= 1 or n == 0:
        return [order]
    sorted_t = table[order]
    cuts = [0]
    for i in range(1, n_tasks):
        at = int(round(i * n / n_tasks))
        # Move the cut to the nearest table boundary within half a task.
        lo = np.searchsorted(sorted_t, sorted_t[min(at, n - 1)], side="left")
        hi = np.searchsorted(sorted_t, sorted_t[min(at, n - 1)], side="right")
        best = lo if at - lo <= hi - at else hi
        cuts.append(best if abs(best - at) <= n / (2 * n_tasks) else at)
    cuts.append(n)
    cuts = sorted(set(cuts))
    return [order[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def _descan_shot_data(dweights, shot_weights):
    """Shot weights for descan weights: None, or one value per packed weight (e.g.
    ``dweights.squared``, or ``dweights.pack_shot(...)`` of a noise model)."""
    if shot_weights is None:
        return None
    if shot_weights is dweights.squared:
        return "W**2"  # formed in the kernel's registers: nothing to ship or read
    s = np.asarray(shot_weights, dtype=np.float64)
    if s.shape != dweights.packed[7].shape:
        raise ValueError(
            "shot_weights for descan weights must hold one value per packed weight "
            f"(shape {dweights.packed[7].shape}: dweights.squared or dweights.pack_shot), "
            f"got shape {s.shape}"
        )
    if not np.all(np.isfinite(s)):
        raise ValueError("shot_weights must be finite")
    return s


def accumulate(frames, weights, states, n_groups=1, n_blocks=N_BLOCKS, pixels=False,
               squares=True, *, shot_weights=None, ratio=False, pixel_means=None,
               shot_scale=1.0):
    """Moments of one chunk of frames (one read of the chunk).

    Parameters
    ----------
    frames : ndarray, shape (..., rows, columns)
        Any real dtype (accumulated in float64).
    weights : femlib.integration.AzimuthalWeights
    states : int array, shape (...)
        State of each frame (:func:`frame_states`), -1 = excluded.
    n_groups, n_blocks : int
    pixels : bool
        Accumulate the per-pixel means and centred sums of squares (``VImage``).
    squares : bool
        Accumulate ``J``, ``U``, ``V`` (``r``, ``re``).
    shot_weights : scipy.sparse matrix (K, P) or None
        Shot weights with the sparsity of ``weights.matrix``; ``Q`` is accumulated with
        them. None: ``Q`` is 0.
    ratio : bool
        Accumulate ``Y = Q / I^2`` and the per-frame products ``P``, ``H`` of ``r`` (needs
        ``shot_weights`` and ``squares``).
    pixel_means : bool or None
        Accumulate the per-pixel means; default ``pixels``.
    shot_scale : float
        Factor turning ``Q`` into detector units in ``P`` and ``H``: the gain when
        ``shot_weights`` is ``W**2`` (the counting model per unit gain), 1 for a noise
        model's shot weights.

    Returns
    -------
    Moments

    Examples
    --------
    >>> from femlib.integration import build_weights
    >>> w = build_weights((16, 16), (7.5, 7.5), npt=4, radial_range=(1, 7))
    >>> frames = np.random.default_rng(0).poisson(5.0, (10, 16, 16)).astype(np.float32)
    >>> m = accumulate(frames, w, frame_states(10, n_blocks=2), n_blocks=2)
    >>> m.count
    array([5., 5.])
    >>> bool(np.allclose(m.mean[:, 0].sum(0) / 2, (frames.reshape(10, -1) @ w.matrix.T).mean(0)))
    True
    """
    plan = _Plan(n_groups, n_blocks, bool(squares),
                 bool(ratio and squares and shot_weights is not None),
                 bool(pixels if pixel_means is None else pixel_means or pixels), bool(pixels),
                 shot_scale=_check_scale(shot_scale))
    return _accumulate_chunk(frames, states, weights, _shot_data(weights, shot_weights), plan)


#: Largest ring sum (detector units) the pass accepts: the estimators square it (and
#: multiply it by the gain), which must stay far from float64's 1.8e308.
MAX_SUM = 1e150


def _refuse_overflow(flat, rows, nonfinite, states, weights):
    """A frame whose sums are not finite although its weighted pixels are: its values
    overflow float64 when squared; refuse with a message, not a silent exclusion."""
    bad = rows[nonfinite & (states >= 0)]
    if not bad.size:
        return
    pix = flat[bad][:, weights.touched] if flat.ndim == 2 else None
    if pix is None or not np.all(np.isfinite(pix)):
        return
    raise ValueError(
        f"frames hold values up to {float(np.abs(pix).max()):.3g}, whose squares overflow "
        "float64 (the estimators need D^2 and the squared ring sums): rescale the data "
        f"(ring sums must stay below {MAX_SUM:.0e})"
    )


def _accumulate_chunk(frames, states, weights, sdata, plan):
    flat = as_native_frames(frames, weights.detector_shape)
    states = np.asarray(states, dtype=np.int64).ravel()
    if states.size != flat.shape[0]:
        raise ValueError(f"states has {states.size} entries for {flat.shape[0]} frames")
    nstates = plan.n_groups * plan.n_blocks
    k = weights.area.size
    shot = sdata is not None
    # Q per frame, from the loads that give I: one more vector multiply-add per non-zero
    # weight costs less than per-state pixel sums (benchmarks/README.md).
    pixel_sums = plan.pixel_means
    # The kernel takes the frames in state order (eight frames of one state add to the pixel
    # sums at once); everything below works in that order.
    rows = np.argsort(states, kind="stable")
    states = states[rows]
    indptr, cindex, wdata = weights.bin_major

    def run(st, ring=True):
        return _kernels.ring_moments(
            flat, weights.touched, indptr, cindex, wdata, st, nstates, rows,
            sdata if ring else None, plan.squares and ring, pixel_sums,
            plan.pixel_squares,
        )

    sums, pixsum, pixsq = run(states)
    # A NaN/inf in any weighted pixel poisons the frame: leave the frame out, count it
    # (rare: the chunk's pixel sums are then taken again without those frames).
    nonfinite = ~np.isfinite(sums).all(axis=(0, 2))
    if nonfinite.any():
        _refuse_overflow(flat, rows, nonfinite, states, weights)
    top = np.abs(np.where(np.isfinite(sums[0]), sums[0], 0.0)).max(initial=0.0)
    if top > MAX_SUM:
        raise ValueError(
            f"ring sums reach {top:.3g} detector units: the estimators square them, which "
            f"overflows float64 above about {MAX_SUM:.0e}; rescale the data"
        )
    n_nonfinite = int((nonfinite & (states >= 0)).sum())
    if n_nonfinite:
        states = np.where(nonfinite, -1, states)
        if pixel_sums:
            _, pixsum, pixsq = run(states, ring=False)
    # On request, frames exactly 0 in every bin are left out too and counted per state
    # (the caller decides whether they are plausible shot noise, with_zero_frames, or
    # missing data). They add nothing to the pixel sums: those need no second run.
    zero = (states >= 0) & ~np.any(sums[0] != 0, axis=1) & plan.leave_out_zero
    zero_count = np.bincount(states[zero], minlength=nstates).astype(float)
    if zero.any():
        states = np.where(zero, -1, states)
    count = np.bincount(states[states >= 0], minlength=nstates).astype(float)
    ring = sums[0]
    cols, per_frame = [_I], [ring]
    if shot:
        cols.append(_Q)
        per_frame.append(sums[1])
    if plan.squares or plan.ratio:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            inv = np.where(ring > 0, weights.area / ring, np.nan)  # A / I
            if plan.squares:
                j = sums[2 if shot else 1]
                cols += [_J, _U, _V]
                per_frame += [j, j * inv * inv / weights.area, inv]
            if plan.ratio:
                cols += [_Y, _P, _H]
                y = sums[1] * inv * inv / weights.area**2  # Q / I^2
                # Per-frame unbiased products (counting model, D = G N):
                # E[J - k0 I] = sum w mu^2 and E[I^2 - c Q] = (sum w mu)^2, so
                # r_n + 1 = P - k0 H with P = A J / (I^2 - cQ), H = A I / (I^2 - cQ).
                # With less than two electrons' worth of signal (I^2 < 2 c Q; for hard
                # bins: one electron, where J - G I = I^2 - cQ = 0) the first-order form
                # A J / I^2 + c Q / I^2 - k0 A / I takes over.
                cq = plan.shot_scale * sums[1]
                den = ring * ring - cq
                good = (ring > 0) & (den >= cq)
                h_col = np.where(good, weights.area * ring / np.where(good, den, 1.0), inv)
                p_col = np.where(good, j * h_col / np.where(good, ring, 1.0),
                                 j * inv * inv / weights.area + plan.shot_scale * y)
                per_frame += [y, p_col, h_col]
    mean, m2 = _state_means(states, count, cols, per_frame, nstates, k)
    pix_mean = pix_m2 = None
    if plan.pixel_means:
        safe = np.maximum(count, 1.0)[:, None]
        pix_mean = pixsum / safe
        if plan.pixel_squares:
            pix_m2 = np.maximum(pixsq - pixsum * pix_mean, 0.0)
    return Moments(count, mean, m2, pix_mean, pix_m2, plan.n_groups, plan.n_blocks,
                   n_nonfinite, plan.squares, shot, plan.ratio,
                   shot_scale=plan.shot_scale, zero_count=zero_count)


def _state_means(states, count, cols, per_frame, nstates, k):
    """Per-state means of the per-frame columns and the centred sum of squares of ``I``."""
    mean = np.zeros((nstates, len(COLUMNS), k))
    m2 = np.zeros((nstates, k))
    # Per-state sums over frames sorted by state (reduceat: no Python loop over states, and
    # no BLAS call whose own threads would compete with dask's). Frames usually come in state
    # order already: then no column is copied.
    valid = np.flatnonzero(states >= 0)
    order = valid[np.argsort(states[valid], kind="stable")]
    if order.size:
        present = np.flatnonzero(count > 0)
        sizes = count[present].astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        in_order = order.size == states.size and bool(np.all(order[1:] > order[:-1]))
        for c, x in zip(cols, per_frame, strict=True):
            x = x if in_order else x[order]
            mean[present, c] = np.add.reduceat(x, starts, axis=0) / count[present, None]
            if c == _I:
                dev = x - np.repeat(mean[present, _I], sizes, axis=0)
                m2[present] = np.add.reduceat(dev * dev, starts, axis=0)
    return mean, m2


def _accumulate_descan_chunk(frames, states, geometry, dweights, sdata, plan, rows=None):
    """:func:`_accumulate_chunk` for frames with their own centres (descan): the columns
    are per-frame ring means with each frame's own bin areas (module docstring).

    ``rows``: the frames to take (default all); eager data passes the whole array and,
    per task, the frames of a few tables, so that each table serves many frames.
    """
    from femlib.integration import _descan_sums

    flat = as_native_frames(frames, dweights.detector_shape)
    states = np.asarray(states, dtype=np.int64).ravel()
    geometry = np.asarray(geometry, np.int64).reshape(-1, 3)
    if states.size != flat.shape[0] or geometry.shape[0] != flat.shape[0]:
        raise ValueError(f"states/geometry have {states.size}/{geometry.shape[0]} entries "
                         f"for {flat.shape[0]} frames")
    nstates = plan.n_groups * plan.n_blocks
    k = dweights.npt
    shot = sdata is not None
    # Only the frames that count, grouped by table for the kernel; the state means do not
    # depend on the order.
    rows = np.arange(flat.shape[0]) if rows is None else np.asarray(rows, np.int64)
    keep = rows[states[rows] >= 0]
    keep = keep[np.argsort(geometry[keep, 0], kind="stable")]
    sums, _ = _descan_sums(flat, dweights, geometry, sdata, plan.squares, rows=keep)
    kept_states = states[keep]
    area = sums[-1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        nonfinite = ~np.isfinite(sums[:-1]).all(axis=(0, 2))
        uncovered = ~(area > 0).all(axis=1) & ~nonfinite
        kept_states = np.where(nonfinite | uncovered, -1, kept_states)
        ring = sums[0]
        inv_a = 1.0 / area
        cols, per_frame = [_I], [ring * inv_a]
        if shot:
            cols.append(_Q)
            per_frame.append(sums[1] * inv_a * inv_a)
        if plan.squares or plan.ratio:
            inv = np.where(ring > 0, area / ring, np.nan)  # A_n / I
            if plan.squares:
                j = sums[2 if shot else 1]
                cols += [_J, _U, _V]
                per_frame += [j * inv_a, j * inv * inv * inv_a, inv]
            if plan.ratio:
                # r's per-frame unbiased products as in _accumulate_chunk, with the frame's
                # own bin areas (P and H are ratios: no further normalisation).
                cols += [_Y, _P, _H]
                y = sums[1] * inv * inv * inv_a * inv_a  # Q / I^2
                cq = plan.shot_scale * sums[1]
                den = ring * ring - cq
                good = (ring > 0) & (den >= cq)
                h_col = np.where(good, area * ring / np.where(good, den, 1.0), inv)
                p_col = np.where(good, j * h_col / np.where(good, ring, 1.0),
                                 j * inv * inv * inv_a + plan.shot_scale * y)
                per_frame += [y, p_col, h_col]
    good = kept_states >= 0
    count = np.bincount(kept_states[good], minlength=nstates).astype(float)
    mean, m2 = _state_means(kept_states, count, cols, per_frame, nstates, k)
    return Moments(count, mean, m2, None, None, plan.n_groups, plan.n_blocks,
                   int(nonfinite.sum()), plan.squares, shot, plan.ratio,
                   int(uncovered.sum()), True, shot_scale=plan.shot_scale)


#: Largest float64 moments one block of frames may hold (every task allocates them).
MAX_STATE_BYTES = 2**31


def _check_state_memory(n_states, weights, need):
    """Refuse, before anything is allocated, moments too large for memory (e.g. a million
    thickness bins): ``n_states`` x (columns x bins + pixels) float64 per block of frames."""
    per_state = (len(COLUMNS) + 1) * weights.area.size
    if need["pixel_means"]:
        per_state += (2 if need["pixel_squares"] else 1) * weights.touched.size
    size = 8.0 * n_states * per_state
    if size > MAX_STATE_BYTES:
        raise ValueError(
            f"{n_states} states (groups x {N_BLOCKS} jackknife blocks) would need "
            f"{size / 2**30:.3g} GiB of moments per block of frames (at most "
            f"{MAX_STATE_BYTES / 2**30:g}): use fewer groups, thickness bins or tiles"
        )


def _check_scale(shot_scale):
    value = float(shot_scale)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"shot_scale must be a positive finite number, got {shot_scale!r}")
    return value


# ----------------------------------------------------------------------------- merging
def merge(a, b):
    """Merge the moments of two disjoint sets of frames (exact, order-independent).

    Parameters
    ----------
    a, b : Moments

    Returns
    -------
    Moments

    Examples
    --------
    >>> from femlib.integration import build_weights
    >>> w = build_weights((16, 16), (7.5, 7.5), npt=4, radial_range=(1, 7))
    >>> f = np.random.default_rng(1).poisson(5.0, (8, 16, 16)).astype(np.float32)
    >>> st = frame_states(8, n_blocks=1)
    >>> whole = accumulate(f, w, st, n_blocks=1)
    >>> halves = merge(accumulate(f[:3], w, st[:3], n_blocks=1),
    ...                accumulate(f[3:], w, st[3:], n_blocks=1))
    >>> bool(np.allclose(halves.m2, whole.m2))
    True
    """
    if a.mean.shape != b.mean.shape:
        raise ValueError("cannot merge moments of different geometries or groupings")
    if a.ratio and b.ratio and a.shot_scale != b.shot_scale:
        raise ValueError("cannot merge moments accumulated with different shot_scale")
    n, mean, m2 = _merge_arrays(a.count, a.mean, a.m2, b.count, b.mean, b.m2, ring=True)
    pm = pq = None
    if a.pix_mean is not None and b.pix_mean is not None:
        _, pm, pq = _merge_arrays(a.count, a.pix_mean, a.pix_m2, b.count, b.pix_mean, b.pix_m2)
    zeros = None if a.zero_count is None or b.zero_count is None else (
        a.zero_count + b.zero_count)
    return Moments(
        n, mean, m2, pm, pq, a.n_groups, a.n_blocks, a.n_nonfinite + b.n_nonfinite,
        a.squares and b.squares, a.shot and b.shot, a.ratio and b.ratio,
        a.n_uncovered + b.n_uncovered, a.per_frame_area and b.per_frame_area, a.shot_scale,
        zero_count=zeros,
    )


def with_zero_frames(m):
    """``m`` with the all-zero frames it left out (:attr:`Moments.zero_count`) put back.

    Exactly the moments of a pass that had kept them: their ``I``, ``Q``, ``J`` and pixel
    values are 0, their ``U``, ``V``, ``Y`` undefined (NaN, as for any frame with an empty
    ring).

    Parameters
    ----------
    m : Moments

    Returns
    -------
    Moments

    Examples
    --------
    >>> from femlib.integration import build_weights
    >>> w = build_weights((16, 16), (7.5, 7.5), npt=4, radial_range=(1, 7))
    >>> f = np.ones((6, 16, 16))
    >>> f[2] = 0.0
    >>> m = accumulate_moments(f, w, n_blocks=1, leave_out_zero=True)
    >>> m.n_frames, int(m.zero_count.sum()), with_zero_frames(m).n_frames
    (5, 1, 6)
    """
    if m.zero_count is None or not m.zero_count.any():
        return m
    z = m.zero_count
    mean = np.zeros_like(m.mean)
    if m.squares or m.ratio:
        mean[:, [_U, _V, _Y, _P, _H]] = np.where(z[:, None, None] > 0, np.nan, 0.0)
    pm = None if m.pix_mean is None else np.zeros_like(m.pix_mean)
    pq = None if m.pix_m2 is None else np.zeros_like(m.pix_m2)
    zeros = Moments(z, mean, np.zeros_like(m.m2), pm, pq, m.n_groups, m.n_blocks, 0,
                    m.squares, m.shot, m.ratio, per_frame_area=m.per_frame_area,
                    shot_scale=m.shot_scale, zero_count=np.zeros_like(z))
    out = merge(m, zeros)
    out.zero_count = np.zeros_like(z)
    return out


def _merge_arrays(na, ma, qa, nb, mb, qb, ring=False):
    n = na + nb
    safe = np.where(n > 0, n, 1.0)
    fb = (nb / safe).reshape(n.shape + (1,) * (ma.ndim - n.ndim))
    delta = mb - ma
    mean = ma + delta * fb
    if qa is None or qb is None:  # per-pixel means without second moments (r, re)
        return n, mean, None
    d = delta[..., _I, :] if ring else delta
    w = (na * nb / safe).reshape(n.shape + (1,) * (d.ndim - n.ndim))
    return n, mean, qa + qb + d * d * w


# ----------------------------------------------------------------------------- the pass
def _accumulate_block(frames, states, weights, sdata, plan, geometry=None, rows=None):
    if geometry is not None:
        return _accumulate_descan_chunk(frames, states, geometry, weights, sdata, plan, rows)
    return _accumulate_chunk(frames, states, weights, sdata, plan)


def _accumulate_tree(frames, states, weights, sdata, plan, geometry=None, rows=None):
    """One dask task per block of frames, their moments merged pairwise as a tree
    (``geometry``: per block, the frames' descan geometry rows; ``rows``: per block, the
    frames of the block to take)."""
    import dask

    shared = dask.delayed(weights, pure=True, traverse=False)
    # Not hashed (pure=False): descan shot weights run to megabytes, and the graph is new on
    # every call anyway.
    shot = None if sdata is None else dask.delayed(sdata, pure=False, traverse=False)
    part = dask.delayed(_accumulate_block, pure=False)
    geometry = [None] * len(frames) if geometry is None else geometry
    rows = [None] * len(frames) if rows is None else rows
    parts = [part(f, s, shared, shot, plan, g, r)
             for f, s, g, r in zip(frames, states, geometry, rows, strict=True)]
    combine = dask.delayed(merge, pure=True)
    while len(parts) > 1:
        nxt = [combine(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]


def _blocks(frames, block_bytes):
    """Blocks of whole frames for the tree: a dask array's chunks (as Delayed), or views of
    a numpy array (no copy: dask's ``from_array`` copies numpy chunks and hashes the data).

    Returns ``(blocks, navigation chunks, lazy)``.
    """
    # Frames cannot be a dask array before dask.array is imported (importing it for the
    # test costs the first call of a process a few tenths of a second).
    da = sys.modules.get("dask.array")
    if da is not None and isinstance(frames, da.Array):
        _check_dtype(frames.dtype)  # at the call: a lazy pass may run much later
        darr = prepare_chunks(frames)
        return list(darr.to_delayed().ravel()), darr.chunks[:-2], True
    arr = np.asarray(frames)
    if arr.ndim < 2:
        raise ValueError(f"frames must be (..., rows, columns), got shape {arr.shape}")
    flat = arr.reshape((-1,) + arr.shape[-2:])  # a view for C-ordered input
    frame_bytes = max(flat[0].nbytes if len(flat) else 1, 1)
    step = max(1, int(block_bytes // frame_bytes))
    starts = range(0, max(len(flat), 1), step)
    blocks = [flat[i : i + step] for i in starts]
    return blocks, (tuple(len(b) for b in blocks),), False


def accumulate_moments(frames, weights, labels=None, shot_weights=None, methods=("Omega",),
                       n_groups=None, n_blocks=N_BLOCKS, compute=True,
                       block_bytes=BLOCK_BYTES, shot_scale=1.0, leave_out_zero=False):
    """The FEM pass: one read of the frames into the moments ``methods`` need.

    Eager (numpy) and lazy (dask) frames take the same path, a dask graph of one task per
    block of frames whose moments are merged pairwise as a tree: numpy frames are cut into
    views (no copy, no hashing) and run on the threaded scheduler; dask frames run chunk by
    chunk on the active scheduler (a ``distributed`` client too). Each block is reduced to
    its :class:`Moments` by one kernel call.

    Parameters
    ----------
    frames : ndarray or dask.array.Array, shape (..., rows, columns)
        Any real dtype and byte order.
    weights : femlib.integration.AzimuthalWeights or DescanWeights
        Radial weights ``W`` (K bins), or per-frame weights of a descan
        (:func:`femlib.integration.build_descan_weights`; then only ``Omega``, ``r``,
        ``re``, and ``shot_weights`` packed as ``weights.squared``).
    labels : int array_like of shape ``frames.shape[:-2]`` (or flat) or None
        Group label per frame, ``-1`` = left out (e.g. thickness bins, navigation mask,
        scan tiles). None: every frame in group 0.
    shot_weights : scipy.sparse matrix (K, P) or None
        Shot weights of a noise model (``noise.shot_weights(weights.matrix)``; the counting
        model of gain ``G`` is ``G W**2``), with the sparsity of ``weights.matrix``. ``Q``
        (and, for ``r``, ``Y``) is accumulated with them. None: no shot-noise columns.
    methods : sequence of str
        Estimators the moments are for (:func:`needs`): ``"Omega"`` needs only ``I`` (and
        ``Q``); ``"r"``, ``"re"`` add ``J, U, V`` and the per-pixel means; ``"VImage"``
        the per-pixel means and squares.
    n_groups : int or None
        Number of groups; default ``max(labels) + 1`` (at least 1).
    n_blocks : int
        Jackknife blocks per group (:func:`frame_states`).
    compute : bool
        If False, return a ``dask.delayed.Delayed`` (compute it with any scheduler; eager
        input wants ``scheduler="threads"``).
    block_bytes : int
        Size of the dask tasks that eager frames are cut into.
    shot_scale : float
        Factor turning ``Q`` into detector units for ``r``'s per-frame products ``P``,
        ``H``: the gain ``G`` with ``shot_weights=W**2`` (what
        :func:`femlib.variance.estimate` with ``gain=G`` expects), 1 (default) for a noise
        model's shot weights.
    leave_out_zero : bool
        Leave out the frames whose ring sums are all exactly 0 and count them per state
        (:attr:`Moments.zero_count`; :func:`with_zero_frames` puts them back): the caller
        tells missing data (a missing chunk of a zarr store reads as zeros) from shot noise
        after the pass, still one pass.

    Returns
    -------
    Moments or dask.delayed.Delayed
        The merged moments of all frames (``n_groups * n_blocks`` states).

    Raises
    ------
    ValueError
        For labels of the wrong shape or out of range, shot weights of the wrong shape or
        sparsity, frames whose detector shape is not the weights'.

    Examples
    --------
    >>> from femlib.integration import build_weights
    >>> w = build_weights((16, 16), (7.5, 7.5), npt=4, radial_range=(1, 7))
    >>> frames = np.random.default_rng(0).poisson(5.0, (6, 7, 16, 16)).astype(np.float32)
    >>> labels = np.repeat([0, 1], 21).reshape(6, 7)
    >>> m = accumulate_moments(frames, w, labels, shot_weights=w.squared * 1.0)
    >>> m.count.reshape(m.n_groups, m.n_blocks).sum(1)
    array([21., 21.])
    >>> ring = frames.reshape(42, -1) @ w.matrix.T
    >>> bool(np.allclose(m.mean[:20, 0].T @ m.count[:20] / 21, ring[:21].mean(0)))
    True
    """
    import dask

    from femlib.integration import DescanWeights

    descan = isinstance(weights, DescanWeights)
    need = needs(methods, shot_weights is not None)
    if descan:
        if need["pixel_squares"]:
            raise ValueError(
                "method VImage needs per-pixel sums over the frames, which per-frame "
                "centres (descan) do not keep (the pixels move with the centre): use Omega, "
                "r or re"
            )
        need["pixel_means"] = False  # no ring non-uniformity of r and re with descan
        sdata = _descan_shot_data(weights, shot_weights)
    else:
        sdata = _shot_data(weights, shot_weights)
    nav = tuple(np.shape(frames)[:-2])
    blocks, nav_chunks, lazy = _blocks(frames, block_bytes)
    n_frames = int(np.prod(nav))
    if labels is None:
        flat_labels = np.zeros(n_frames, np.int64)
    else:
        lab = np.asarray(labels)
        if lab.size != n_frames or (lab.ndim > 1 and lab.shape != nav):
            raise ValueError(
                f"labels must have one entry per frame, shape {nav}, got {lab.shape}"
            )
        if lab.dtype.kind not in "iu":
            raise TypeError(f"labels must be integers (-1 = left out), got {lab.dtype}")
        flat_labels = lab.astype(np.int64).ravel()
    if n_groups is None:
        n_groups = max(int(flat_labels.max(initial=-1)) + 1, 1)
    states = frame_states(n_frames, flat_labels, n_groups, n_blocks)
    gblocks = None
    if descan and weights.n_frames != n_frames:
        raise ValueError(f"the descan weights have {weights.n_frames} frame geometries for "
                         f"{n_frames} frames")
    if lazy:
        import dask.array as da

        sblocks = da.from_array(states.reshape(nav), chunks=nav_chunks).to_delayed().ravel()
        if descan:
            gblocks = list(da.from_array(weights.frame_geometry.reshape(nav + (3,)),
                                         chunks=nav_chunks + ((3,),)).to_delayed().ravel())
    else:
        bounds = np.cumsum((0,) + nav_chunks[0])
        sblocks = [states[i:j] for i, j in zip(bounds[:-1], bounds[1:], strict=True)]
    rblocks = None
    if descan and not lazy:
        # Eager descan: as many tasks as blocks, but each takes the frames of a few tables
        # from the whole array (no copy), so that each table's weights serve many frames.
        # One (N, rows, columns) view when possible (a single copy otherwise).
        whole = as_native_frames(frames, weights.detector_shape).reshape(
            (-1,) + tuple(weights.detector_shape))
        rblocks = _table_tasks(weights.frame_geometry[:, 0], len(blocks))
        blocks = [whole] * len(rblocks)
        sblocks = [states] * len(rblocks)
        gblocks = [weights.frame_geometry] * len(rblocks)
    _check_state_memory(n_groups * n_blocks, weights, need)
    plan = _Plan(n_groups, n_blocks, need["squares"], need["ratio"], need["pixel_means"],
                 need["pixel_squares"], shot_scale=_check_scale(shot_scale),
                 leave_out_zero=bool(leave_out_zero))
    work = _accumulate_tree(blocks, list(sblocks), weights, sdata, plan, gblocks, rblocks)
    if not compute:
        return work
    if lazy:
        (result,) = dask.compute(work)
    else:  # the threaded scheduler by itself ("threads" makes dask import distributed)
        from dask.threaded import get

        (result,) = dask.compute(work, scheduler=get)
    return result
