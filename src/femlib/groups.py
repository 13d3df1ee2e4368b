"""Group labels of probe positions: user groups, scan tiles, and tiles x thickness bins.

A *group* is any set of probe positions that gets its own ``V(k)`` from the single pass
over the data: every position carries an integer label ``0 .. n_groups - 1``, or -1 to
leave it out. Thickness bins are one case; this module makes and checks the others:

* :func:`check_groups`: labels given by the user (e.g. regions of a segmentation);
* :func:`tile_labels`: tiles of ``ty x tx`` probe positions of the scan, row by row;
  the last row/column of tiles is kept as smaller tiles when the scan is not a multiple
  of the tile size (their counts say so);
* :func:`combine_labels`: a thickness bin inside every tile, ``label = tile * n_bins + bin``;
* :func:`tile_centers`: the tile centres in the scan's calibrated units;
* :func:`combine_within`: the frame-weighted mean over the bins of each tile, with its
  jackknife standard error, as the thickness-bin average of Li et al. (2014).

Pure numpy: no HyperSpy.

References
----------
Li, Zhang, Besser, Kramer & Voyles, Microsc. Microanal. 20 (2014) 1605.
"""

import numbers

import numpy as np

__all__ = ["check_groups", "tile_labels", "combine_labels", "tile_centers", "combine_within"]


def check_groups(groups, navigation_shape):
    """Check user group labels against the navigation shape.

    Parameters
    ----------
    groups : array_like of int
        One label per probe position, navigation shaped (array order, e.g. ``(rows,
        columns)`` of the scan): ``0, 1, ...`` or -1 to leave the position out. A HyperSpy
        signal's ``.data`` is used.
    navigation_shape : tuple of int
        Navigation shape in array order.

    Returns
    -------
    labels : ndarray of int64, navigation shaped
    n_groups : int
        ``labels.max() + 1``; labels that no position carries give empty groups.

    Raises
    ------
    TypeError
        If the labels are not integers (booleans and floats are refused).
    ValueError
        If the shape differs from ``navigation_shape``, a label is below -1, or every
        position is left out.

    Examples
    --------
    >>> labels, n = check_groups([[0, 0, 1], [1, -1, 1]], (2, 3))
    >>> n, labels.ravel().tolist()
    (2, [0, 0, 1, 1, -1, 1])
    """
    g = np.asarray(getattr(groups, "data", groups))
    if hasattr(g, "compute"):
        g = np.asarray(g.compute())
    if g.dtype == bool or not np.issubdtype(g.dtype, np.integer):
        raise TypeError(
            f"groups must be integer labels (0, 1, ..., -1 = left out), got dtype {g.dtype}"
        )
    shape = tuple(int(n) for n in navigation_shape)
    if g.shape != shape:
        raise ValueError(
            f"groups has shape {g.shape} but the navigation shape is {shape} "
            "(one label per probe position)"
        )
    if g.size and g.min() < -1:
        raise ValueError(f"groups labels must be >= -1 (-1 = left out), got {int(g.min())}")
    if not (g >= 0).any():
        raise ValueError("groups leaves every probe position out (all labels are -1)")
    return g.astype(np.int64), int(g.max()) + 1


def _check_tiles(tiles, navigation_shape):
    try:
        t = tuple(tiles)
    except TypeError:
        t = ()
    if len(t) != 2 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in t
    ):
        raise ValueError(f"tiles must be (ty, tx), two positive integers, got {tiles!r}")
    shape = tuple(int(n) for n in navigation_shape)
    if len(shape) != 2:
        raise ValueError(
            f"tiles needs a 2D scan (two navigation axes), the navigation shape is {shape}"
        )
    if t[0] > shape[0] or t[1] > shape[1]:
        raise ValueError(
            f"tiles={tuple(int(v) for v in t)} is larger than the scan {shape} (rows, columns)"
        )
    return int(t[0]), int(t[1]), shape


def tile_labels(navigation_shape, tiles):
    """Label every probe position with its scan tile.

    Parameters
    ----------
    navigation_shape : (int, int)
        Scan ``(rows, columns)``.
    tiles : (int, int)
        Tile size ``(ty, tx)`` in probe positions (rows, columns). When the scan is not a
        multiple of it, the last row and column of tiles are smaller (kept, not dropped).

    Returns
    -------
    labels : ndarray of int64, shape ``navigation_shape``
        Tile index ``i * n_tx + j`` of tile row ``i`` and column ``j``.
    grid : (int, int)
        Number of tiles ``(n_ty, n_tx)``.

    Raises
    ------
    ValueError
        If ``tiles`` is not two positive integers, is larger than the scan, or the scan is
        not 2D.

    Examples
    --------
    >>> labels, grid = tile_labels((3, 5), (2, 2))
    >>> grid
    (2, 3)
    >>> labels
    array([[0, 0, 1, 1, 2],
           [0, 0, 1, 1, 2],
           [3, 3, 4, 4, 5]])
    """
    ty, tx, (ny, nx) = _check_tiles(tiles, navigation_shape)
    grid = (-(-ny // ty), -(-nx // tx))
    rows = np.arange(ny) // ty
    cols = np.arange(nx) // tx
    return (rows[:, None] * grid[1] + cols[None, :]).astype(np.int64), grid


def combine_labels(tiles, bins, n_bins):
    """Labels of (tile, thickness bin) pairs: ``tile * n_bins + bin``; -1 if either is -1.

    Parameters
    ----------
    tiles, bins : array_like of int, same shape
        Tile label and thickness-bin index of every position (-1 = left out).
    n_bins : int
        Number of thickness bins.

    Returns
    -------
    ndarray of int64

    Examples
    --------
    >>> combine_labels([0, 0, 1, 1], [0, 1, 1, -1], 2).tolist()
    [0, 1, 3, -1]
    """
    t = np.asarray(tiles, np.int64)
    b = np.asarray(bins, np.int64)
    if t.shape != b.shape:
        raise ValueError(f"tiles {t.shape} and bins {b.shape} labels must have the same shape")
    return np.where((t >= 0) & (b >= 0), t * int(n_bins) + b, -1)


def tile_centers(navigation_shape, tiles, offsets=(0.0, 0.0), scales=(1.0, 1.0)):
    """Centres of the tiles in calibrated scan units, along rows (y) and columns (x).

    A tile's centre is the mean position of its probe positions, so a smaller edge tile
    is centred on its own positions.

    Parameters
    ----------
    navigation_shape : (int, int)
        Scan ``(rows, columns)``.
    tiles : (int, int)
        Tile size ``(ty, tx)``.
    offsets, scales : (float, float)
        Offset and step of the scan's y (rows) and x (columns) axes.

    Returns
    -------
    y, x : ndarray
        Tile centres, ``(n_ty,)`` and ``(n_tx,)``.

    Examples
    --------
    >>> tile_centers((3, 5), (2, 2), scales=(1.0, 0.5))
    (array([0.5, 2. ]), array([0.25, 1.25, 2.  ]))
    """
    ty, tx, (ny, nx) = _check_tiles(tiles, navigation_shape)
    out = []
    for n, t, off, sc in zip((ny, nx), (ty, tx), offsets, scales, strict=True):
        start = np.arange(0, n, t)
        stop = np.minimum(start + t, n) - 1
        out.append(off + sc * 0.5 * (start + stop))
    return tuple(out)


def combine_within(variance, jackknife, counts, n_outer):
    """Frame-weighted mean of ``V`` over the inner groups (e.g. thickness bins) of each
    outer group (e.g. tile), with the delete-a-block jackknife standard error.

    Groups with fewer than 2 frames get weight 0. The jackknife blocks follow
    :func:`femlib.moments.frame_states`: block ``b`` of a group of ``n`` frames holds
    ``n // B + (b < n % B)`` of them, which gives the leave-one-out weights.

    Parameters
    ----------
    variance : (G, M, K) ndarray
        Per group, method and bin; ``G = n_outer * n_inner``, inner index fastest.
    jackknife : (G, B, M, K) ndarray
        Leave-one-block-out estimates (NaN where a group has no frame in the block).
    counts : (G,) array_like of int
        Frames per group.
    n_outer : int

    Returns
    -------
    combined, standard_error : (n_outer, M, K) ndarray
        NaN for an outer group with no inner group of 2 or more frames.
    combined_jackknife : (B, n_outer, M, K) ndarray

    Examples
    --------
    >>> v = np.array([1.0, 3.0, 5.0, 5.0]).reshape(4, 1, 1)
    >>> jk = np.repeat(v[:, None], 2, axis=1)
    >>> c, se, _ = combine_within(v, jk, [2, 6, 4, 0], 2)
    >>> c.ravel().tolist(), se.ravel().tolist()
    ([2.5, 5.0], [0.0, 0.0])
    """
    v = np.asarray(variance, float)
    g, m, k = v.shape
    n_inner = g // int(n_outer)
    jk = np.asarray(jackknife, float)
    nblocks = jk.shape[1]
    n = np.asarray(counts, np.int64).reshape(n_outer, n_inner)
    used = n >= 2
    per_block = n[..., None] // nblocks + (np.arange(nblocks) < n[..., None] % nblocks)
    # A block with no frame of a group leaves that group's estimate unchanged.
    jk = np.where(np.isnan(jk) & (per_block.reshape(g, nblocks) == 0)[..., None, None],
                  v[:, None], jk)
    vv = v.reshape(n_outer, n_inner, m, k)
    jk = jk.reshape(n_outer, n_inner, nblocks, m, k)
    w = np.where(used, n, 0).astype(float)
    wl = np.where(used[..., None], n[..., None] - per_block, 0).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        comb = np.einsum("ti,timk->tmk", w, np.where(used[..., None, None], vv, 0.0))
        comb /= w.sum(1)[:, None, None]
        cj = np.einsum("tib,tibmk->tbmk", wl, np.where(used[..., None, None, None], jk, 0.0))
        cj /= wl.sum(1)[:, :, None, None]
        present = ((per_block > 0) & used[..., None]).any(1)  # (T, B)
        p = present[:, :, None, None]
        nb = p.sum(1)
        mean = np.where(p, cj, 0.0).sum(1) / nb
        dev = np.where(p, cj - mean[:, None], 0.0)
        se = np.sqrt((nb - 1) / nb * (dev**2).sum(1))
    return comb, se, np.moveaxis(np.where(p, cj, np.nan), 1, 0)
