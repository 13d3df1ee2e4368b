"""Azimuthal integration: detector geometry to a sparse pixel-splitting weight matrix.

The geometry (centre, affine, scale, mask, bins) is turned once into a sparse matrix
``W[k, p]``: the fraction of the area of detector pixel ``p`` that falls into the
(radial, azimuthal) bin ``k``. Applying it to frames is then a single streaming pass
(:func:`integrate`, :func:`integrate_dask`). Matrices are cached per geometry.

Geometry conventions
--------------------
* Pixel ``(row i, column j)`` covers ``[j - 1/2, j + 1/2] x [i - 1/2, i + 1/2]``; its centre
  is ``(x, y) = (j, i)``.
* The affine ``A`` (3x3) acts on homogeneous offsets ``(x - cx, y - cy, 1)``; the corrected
  offset is then scaled by the axis scales: ``(u, v) = diag(sx, sy) (A (p - c))[:2]``.
* Radius ``k = hypot(u, v)`` in calibrated units; azimuth ``phi = atan2(v, u)`` in
  ``(-pi, pi]``: 0 along +x, positive toward +y (rows increase downward in an image, so
  positive angles run clockwise on screen).
* Pixel splitting by sub-pixel sampling: each pixel is divided into ``s x s`` equal
  sub-pixels whose centres are binned. ``s`` is chosen per pixel so every bin is sampled
  several times across the pixel (4 <= s <= 32); the weights of one pixel sum to its
  (unmasked) in-range area fraction.
"""

import functools
import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from femlib import _kernels
from femlib.calibration import check_affine, check_center, check_mask

__all__ = [
    "AzimuthalWeights",
    "build_weights",
    "integrate",
    "integrate_dask",
    "as_native_frames",
    "prepare_chunks",
]

_log = logging.getLogger(__name__)
_CACHE = OrderedDict()
_CACHE_SIZE = 8
_S_MIN, _S_MAX = 4, 32
# Above this many bins the tiled bin-major kernel is used (measured: _kernels, benchmarks/).
_BIN_MAJOR_ABOVE = 2048
MIN_CHUNK_BYTES = 16 * 2**20
TARGET_CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True, eq=False)
class AzimuthalWeights:
    """A pixel-splitting weight matrix and what the FEM estimators need from it.

    Attributes
    ----------
    matrix : scipy.sparse.csr_array, shape (K, P)
        ``W[k, p]``: area fraction of pixel ``p`` (flattened row-major) in bin ``k``;
        ``K = npt * npt_azim``, bins ordered radius-major.
    squared : scipy.sparse.csr_array, shape (K, P)
        Elementwise ``W**2`` (shot-noise propagation).
    area : (K,) ndarray
        Covered weight per bin, ``sum_p W[k, p]``, in pixels.
    coverage : (K,) ndarray
        ``area`` divided by the geometric area of the bin in pixels: 1 for a bin wholly on
        the detector and unmasked, less for bins cut by the detector edge or the mask.
    radial_edges : (npt + 1,) ndarray
        Radial bin edges in calibrated units.
    azimuth_edges : (npt_azim + 1,) ndarray
        Azimuthal bin edges in radians.
    detector_shape : tuple of int
        ``(rows, columns)``.
    touched, colptr, rowidx, wdata : ndarray
        The same matrix in compressed-column form over the touched pixels only, for the
        streaming kernels.
    """

    matrix: sp.csr_array
    squared: sp.csr_array
    area: np.ndarray
    coverage: np.ndarray
    radial_edges: np.ndarray
    azimuth_edges: np.ndarray
    detector_shape: tuple
    touched: np.ndarray = field(repr=False)
    colptr: np.ndarray = field(repr=False)
    rowidx: np.ndarray = field(repr=False)
    wdata: np.ndarray = field(repr=False)

    @functools.cached_property
    def compact_squared(self):
        """``W**2`` over the touched pixels only: scipy.sparse, shape (K, len(touched))."""
        shape = (self.area.size, self.touched.size)
        return sp.csc_array((self.wdata**2, self.rowidx, self.colptr), shape=shape).tocsr()

    @functools.cached_property
    def bin_major(self):
        """The matrix for the tiled kernels: CSR rows (bins) over the touched pixels only.

        ``(indptr, cindex, data)``: int64 row pointers, int32 positions in ``touched``
        (increasing within a row), float64 weights.
        """
        shape = (self.area.size, self.touched.size)
        csr = sp.csc_array((self.wdata, self.rowidx, self.colptr), shape=shape).tocsr()
        csr.sort_indices()
        return csr.indptr.astype(np.int64), csr.indices.astype(np.int32), csr.data

    @property
    def npt(self):
        """Number of radial bins."""
        return self.radial_edges.size - 1

    @property
    def npt_azim(self):
        """Number of azimuthal bins."""
        return self.azimuth_edges.size - 1

    @property
    def radial_centers(self):
        """(npt,) radial bin centres, calibrated units."""
        e = self.radial_edges
        return 0.5 * (e[1:] + e[:-1])

    @property
    def azimuth_centers(self):
        """(npt_azim,) azimuthal bin centres, radians."""
        e = self.azimuth_edges
        return 0.5 * (e[1:] + e[:-1])

    @property
    def nbytes(self):
        """Memory held by the matrix and its copies, in bytes."""
        arrays = (self.touched, self.colptr, self.rowidx, self.wdata)
        mats = (self.matrix, self.squared)
        return sum(a.nbytes for a in arrays) + sum(
            m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in mats
        )

    @classmethod
    def from_matrix(
        cls, matrix, radial_edges, azimuth_edges, detector_shape, geometric_area=None
    ):
        """Wrap any ``(K, P)`` weight matrix (e.g. hard bins, custom regions).

        Parameters
        ----------
        matrix : scipy sparse matrix or array, shape (K, P)
            Non-negative weights; ``K = (len(radial_edges) - 1) * (len(azimuth_edges) - 1)``,
            ``P = rows * columns``.
        radial_edges, azimuth_edges : 1D array_like
        detector_shape : tuple of 2 ints
        geometric_area : (K,) array_like or None
            Full area of each bin in pixels, for ``coverage`` (default: ``area``).

        Returns
        -------
        AzimuthalWeights
        """
        csc = sp.csc_array(matrix)
        csc.sum_duplicates()
        csc.eliminate_zeros()
        csc.sort_indices()
        radial_edges = np.asarray(radial_edges, dtype=float)
        azimuth_edges = np.asarray(azimuth_edges, dtype=float)
        nbins = (radial_edges.size - 1) * (azimuth_edges.size - 1)
        shape = tuple(int(n) for n in detector_shape)
        if csc.shape != (nbins, shape[0] * shape[1]):
            raise ValueError(
                f"matrix has shape {csc.shape}, expected (bins, pixels) = "
                f"({nbins}, {shape[0] * shape[1]})"
            )
        if csc.nnz and csc.data.min() < 0:
            raise ValueError("matrix weights must be non-negative")
        csr = csc.tocsr()
        csr.sort_indices()
        squared = csr.copy()
        squared.data **= 2
        area = np.asarray(csr.sum(axis=1)).ravel()
        geo = area if geometric_area is None else np.asarray(geometric_area, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            coverage = np.where(geo > 0, area / np.where(geo > 0, geo, 1), 0.0)
        counts = np.diff(csc.indptr)
        touched = np.flatnonzero(counts)
        return cls(
            matrix=csr,
            squared=squared,
            area=area,
            coverage=coverage,
            radial_edges=radial_edges,
            azimuth_edges=azimuth_edges,
            detector_shape=shape,
            touched=touched.astype(np.int64),
            colptr=np.concatenate([[0], np.cumsum(counts[touched])]).astype(np.int64),
            rowidx=csc.indices.astype(np.int64),
            wdata=csc.data.astype(np.float64),
        )

    def empty_bins(self):
        """Indices ``(radial, azimuthal)`` of bins with no unmasked pixel area.

        Returns
        -------
        (M, 2) ndarray of int
        """
        idx = np.flatnonzero(self.area <= 0)
        return np.column_stack(np.unravel_index(idx, (self.npt, self.npt_azim)))


def _corrected_offsets(x, y, center, affine, scale):
    dx = x - center[0]
    dy = y - center[1]
    if affine is not None:
        dx, dy = (
            affine[0, 0] * dx + affine[0, 1] * dy + affine[0, 2],
            affine[1, 0] * dx + affine[1, 1] * dy + affine[1, 2],
        )
    return dx * scale[0], dy * scale[1]


def _max_radius(shape, center, affine, scale):
    ny, nx = shape
    cx = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    cy = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    u, v = _corrected_offsets(cx, cy, center, affine, scale)
    return float(np.hypot(u, v).max())


def _check_range(value, name, lo, hi, what):
    r = np.asarray(value, dtype=float)
    if r.shape != (2,) or not np.all(np.isfinite(r)):
        raise ValueError(f"{name} must be a pair of finite numbers (start, stop), got {value!r}")
    if r[1] <= r[0]:
        raise ValueError(f"{name} must be increasing (start < stop), got {tuple(r.tolist())}")
    if r[0] < lo - 1e-12 or r[1] > hi + 1e-12:
        raise ValueError(
            f"{name} {tuple(r.tolist())} lies outside the {what} [{lo:.6g}, {hi:.6g}]"
        )
    return float(r[0]), float(r[1])


def _check_npt(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def build_weights(
    detector_shape,
    center,
    affine=None,
    scale=(1.0, 1.0),
    npt=100,
    npt_azim=1,
    radial_range=None,
    azimuth_range=None,
    mask=None,
):
    """Build (or fetch from the cache) the pixel-splitting weight matrix of a geometry.

    Parameters
    ----------
    detector_shape : tuple of 2 ints
        ``(rows, columns)``.
    center : (2,) array_like
        Centre ``(x, y)`` in pixels.
    affine : (3, 3) array_like or None
        Distortion correction acting on pixel offsets from the centre (None = identity).
    scale : float or tuple of 2 floats
        Calibrated size of a pixel along x and y (e.g. ``nm^-1``).
    npt : int
        Number of radial bins.
    npt_azim : int
        Number of azimuthal bins (1 for a 1D azimuthal integral).
    radial_range : (2,) array_like or None
        ``(start, stop)`` in calibrated units. Default: 0 to the largest radius of a
        detector corner.
    azimuth_range : (2,) array_like or None
        ``(start, stop)`` in radians within ``[-pi, pi]``; restricts the integration itself.
        Default: the full circle.
    mask : (rows, columns) bool array_like or None
        True marks excluded pixels; they get weight 0.

    Returns
    -------
    AzimuthalWeights

    Raises
    ------
    ValueError
        For ``npt < 1``, reversed ranges, ranges outside the detector, a mask of the wrong
        shape or a non-finite geometry.

    Examples
    --------
    >>> w = build_weights((64, 64), (31.5, 31.5), npt=20, radial_range=(2, 20))
    >>> w.matrix.shape
    (20, 4096)
    """
    shape = tuple(int(n) for n in detector_shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"detector_shape must be (rows, columns) > 0, got {detector_shape}")
    center = check_center(center)
    affine = check_affine(affine)
    sc = np.broadcast_to(np.asarray(scale, dtype=float), (2,)).copy()
    if not np.all(np.isfinite(sc)) or np.any(sc == 0):
        raise ValueError(f"scale must be finite and non-zero, got {tuple(sc.tolist())}")
    npt = _check_npt(npt, "npt")
    npt_azim = _check_npt(npt_azim, "npt_azim")
    rmax = _max_radius(shape, center, affine, sc)
    radial_range = (0.0, rmax) if radial_range is None else _check_range(
        radial_range, "radial_range", 0.0, rmax, "detector's radii"
    )
    azimuth_range = (-np.pi, np.pi) if azimuth_range is None else _check_range(
        azimuth_range, "azimuth_range", -np.pi, np.pi, "azimuths"
    )
    mask = check_mask(mask, shape)
    mask_key = None if mask is None else hashlib.sha1(np.packbits(mask).tobytes()).hexdigest()
    key = (
        shape,
        tuple(center),
        None if affine is None else affine.tobytes(),
        tuple(sc),
        npt,
        npt_azim,
        radial_range,
        azimuth_range,
        mask_key,
    )
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    weights = _build(shape, center, affine, sc, npt, npt_azim, radial_range, azimuth_range, mask)
    _CACHE[key] = weights
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return weights


def _build(shape, center, affine, scale, npt, npt_azim, radial_range, azimuth_range, mask):
    ny, nx = shape
    r0, r1 = radial_range
    a0, a1 = azimuth_range
    dr = (r1 - r0) / npt
    da = (a1 - a0) / npt_azim
    rows, cols = np.divmod(np.arange(ny * nx), nx)
    u, v = _corrected_offsets(cols.astype(float), rows.astype(float), center, affine, scale)
    rc = np.hypot(u, v)
    # Largest distance from a pixel centre to its corners, after the geometry transform.
    lin = np.eye(2) if affine is None else affine[:2, :2]
    half = float(np.linalg.norm((np.abs(scale)[:, None] * lin) @ np.array([0.5, 0.5])))
    half = max(half, float(np.linalg.norm((np.abs(scale)[:, None] * lin) @ [0.5, -0.5])))
    keep = (rc + half >= r0) & (rc - half <= r1)
    if mask is not None:
        keep &= ~mask.ravel()
    pix = np.flatnonzero(keep)
    # Sub-pixel count per pixel: a few samples across the narrowest bin dimension.
    pix_size = half * np.sqrt(2)  # calibrated size of a pixel
    width = np.full(pix.size, dr / pix_size)
    if npt_azim > 1:
        arc = np.maximum(rc[pix] - half, 0.25 * pix_size) * da / pix_size
        width = np.minimum(width, arc)
    s_pix = np.clip(np.ceil(4.0 / width), _S_MIN, _S_MAX).astype(np.int64)

    ids, bins, vals = [], [], []
    for s in np.unique(s_pix):
        p = pix[s_pix == s]
        off = (np.arange(s) + 0.5) / s - 0.5
        oy, ox = np.meshgrid(off, off, indexing="ij")
        x = cols[p][:, None] + ox.ravel()
        y = rows[p][:, None] + oy.ravel()
        su, sv = _corrected_offsets(x, y, center, affine, scale)
        r = np.hypot(su, sv)
        ir = np.floor((r - r0) / dr).astype(np.int64)
        ir[r == r1] = npt - 1  # the stop of the range is inclusive
        ok = (ir >= 0) & (ir < npt)
        if npt_azim > 1 or azimuth_range != (-np.pi, np.pi):
            phi = np.arctan2(sv, su)
            phi[phi == -np.pi] = np.pi
            ia = np.floor((phi - a0) / da).astype(np.int64)
            ia[phi == a1] = npt_azim - 1
            ok &= (ia >= 0) & (ia < npt_azim)
            flat = ir * npt_azim + ia
        else:
            flat = ir
        ids.append(np.broadcast_to(p[:, None], r.shape)[ok])
        bins.append(flat[ok])
        vals.append(np.full(int(ok.sum()), 1.0 / (s * s)))
    ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    bins = np.concatenate(bins) if bins else np.zeros(0, np.int64)
    vals = np.concatenate(vals) if vals else np.zeros(0)
    nbins = npt * npt_azim
    # COO -> CSC sums the duplicate (bin, pixel) samples.
    matrix = sp.coo_array((vals, (bins, ids)), shape=(nbins, ny * nx)).tocsr()
    radial_edges = np.linspace(r0, r1, npt + 1)
    azimuth_edges = np.linspace(a0, a1, npt_azim + 1)
    det = abs(np.linalg.det(lin)) * abs(scale[0] * scale[1])
    geo_area = 0.5 * np.diff(radial_edges**2)[:, None] * np.diff(azimuth_edges)[None, :] / det
    return AzimuthalWeights.from_matrix(
        matrix, radial_edges, azimuth_edges, shape, geometric_area=geo_area.ravel()
    )


def as_native_frames(data, detector_shape):
    """View frames as a C-contiguous ``(N, P)`` array in native byte order.

    Parameters
    ----------
    data : ndarray, shape (..., rows, columns)
        Frames of any real dtype (big-endian, e.g. ``>u2`` from Merlin files, is converted).
    detector_shape : tuple of 2 ints

    Returns
    -------
    (N, P) ndarray
        A view when possible, else a copy (non-contiguous, non-native or boolean input).

    Raises
    ------
    ValueError
        If the trailing dimensions are not ``detector_shape``.
    TypeError
        If the dtype is not real numeric.
    """
    arr = np.asarray(data)
    if arr.shape[-2:] != tuple(detector_shape):
        raise ValueError(
            f"frames have detector shape {arr.shape[-2:]}, expected {tuple(detector_shape)}"
        )
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    _check_dtype(arr.dtype)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    arr = arr.reshape(-1, arr.shape[-2] * arr.shape[-1])
    return np.ascontiguousarray(arr)


def _check_dtype(dtype):
    kind = np.dtype(dtype).kind
    if kind not in "biuf":
        raise TypeError(f"frames must be real numbers, got dtype {dtype}")


def integrate(frames, weights, mean=False, dtype=np.float64, out=None):
    """Apply a weight matrix to frames: weighted sums (or means) per bin.

    Parameters
    ----------
    frames : ndarray, shape (..., rows, columns)
        Any real dtype, any byte order.
    weights : AzimuthalWeights
    mean : bool
        If True, divide by the covered weight of each bin (the azimuthal mean over the
        unmasked, on-detector part of the bin); bins with no covered weight give 0.
    dtype : dtype
        Output dtype (accumulation is always float64).
    out : ndarray, optional
        Array of shape ``(N, K)`` (N frames, K bins) and dtype ``dtype`` to write into;
        the result is then a view of it.

    Returns
    -------
    ndarray, shape (..., npt) if ``npt_azim == 1`` else (..., npt, npt_azim)

    Examples
    --------
    >>> w = build_weights((32, 32), (15.5, 15.5), npt=8, radial_range=(0, 15))
    >>> integrate(np.ones((3, 32, 32)), w, mean=True).round(6)[0, :3]
    array([1., 1., 1.])
    """
    return _apply(frames, weights, mean, dtype, out)[0]


def _apply(frames, weights, mean=False, dtype=np.float64, out=None):
    """:func:`integrate`, and per frame whether its result holds a NaN or infinity
    (found by the kernel while writing, not by a second pass over the result)."""
    nav = np.shape(frames)[:-2]
    flat = as_native_frames(frames, weights.detector_shape)
    nbins = weights.area.size
    if out is None:
        out = np.empty((flat.shape[0], nbins), dtype=dtype)
    scale = _inverse_area(weights) if mean else np.ones(nbins)
    if nbins > _BIN_MAJOR_ABOVE:
        bad = np.zeros(flat.shape[0], dtype=bool)
        indptr, cindex, data = weights.bin_major
        _kernels.apply_tiled(flat, weights.touched, indptr, cindex, data, scale, out, bad)
    else:
        if flat.shape[0]:
            _kernels.apply_weights(
                flat, weights.touched, weights.colptr, weights.rowidx, weights.wdata, scale, out
            )
        bad = ~np.isfinite(out).all(axis=1)  # a few numbers per frame
    tail = (weights.npt,) if weights.npt_azim == 1 else (weights.npt, weights.npt_azim)
    return out.reshape(nav + tail), bad


def _inverse_area(weights):
    inv = np.zeros_like(weights.area)
    np.divide(1.0, weights.area, out=inv, where=weights.area > 0)
    return inv


def prepare_chunks(darr):
    """Chunk a dask array for streaming: whole frames, and no tiny navigation chunks.

    Navigation chunks smaller than ``MIN_CHUNK_BYTES`` (16 MiB) on average are merged into
    chunks of about ``TARGET_CHUNK_BYTES`` (64 MiB): hundreds of thousands of tiny tasks
    cost more in scheduling than in reading.

    Parameters
    ----------
    darr : dask.array.Array, shape (..., rows, columns)

    Returns
    -------
    dask.array.Array
        ``darr`` itself when nothing needs changing, else a rechunked array; each change is
        logged once at INFO level.

    Examples
    --------
    >>> import dask.array as da
    >>> prepare_chunks(da.zeros((64, 32, 32), chunks=(8, 16, 32))).chunks
    ((64,), (32,), (32,))
    """
    min_chunk_bytes = MIN_CHUNK_BYTES
    target_chunk_bytes = TARGET_CHUNK_BYTES
    nav = darr.ndim - 2
    if any(len(c) > 1 for c in darr.chunks[-2:]):
        _log.info(
            "femlib: rechunking the detector dimensions into whole frames (chunks were %s)",
            darr.chunks[-2:],
        )
        darr = darr.rechunk({nav: -1, nav + 1: -1})
    nblocks = int(np.prod(darr.numblocks[:nav])) if nav else 1
    mean_bytes = darr.nbytes / max(nblocks, 1)
    if nav and nblocks > 1 and mean_bytes < min_chunk_bytes:
        chunks = {i: "auto" for i in range(nav)}
        chunks.update({nav: -1, nav + 1: -1})
        merged = darr.rechunk(chunks, block_size_limit=target_chunk_bytes)
        if int(np.prod(merged.numblocks[:nav])) < nblocks:
            _log.info(
                "femlib: merging %d small navigation chunks (%.2g MB each) into %d",
                nblocks,
                mean_bytes / 2**20,
                int(np.prod(merged.numblocks[:nav])),
            )
            darr = merged
    return darr


def integrate_dask(darr, weights, mean=False, dtype=np.float64):
    """Lazy :func:`integrate` over a dask array, one task per chunk.

    The chunks are made whole frames and small navigation chunks merged first
    (:func:`prepare_chunks`). Non-finite values propagate into the bins they touch, with no
    warning (nothing is looked at before the result is computed).

    Parameters
    ----------
    darr : dask.array.Array, shape (..., rows, columns)
    weights : AzimuthalWeights
        Embedded once in the graph (one key shared by all tasks).
    mean : bool
    dtype : dtype

    Returns
    -------
    dask.array.Array, shape (..., npt) or (..., npt, npt_azim)

    Examples
    --------
    >>> import dask.array as da
    >>> w = build_weights((32, 32), (15.5, 15.5), npt=8, radial_range=(0, 15))
    >>> lazy = integrate_dask(da.ones((4, 3, 32, 32), chunks=(2, 3, 32, 32)), w, mean=True)
    >>> lazy.shape, lazy.compute().round(6)[0, 0, :2]
    ((4, 3, 8), array([1., 1.]))
    """
    import dask
    import dask.array as da

    _check_dtype(darr.dtype)
    darr = prepare_chunks(darr)
    nav = darr.ndim - 2
    two_d = weights.npt_azim > 1
    new_axes = {nav: weights.npt, nav + 1: weights.npt_azim} if two_d else {nav: weights.npt}
    out_ind = tuple(range(nav)) + ((nav, nav + 1) if two_d else (nav,))
    in_ind = tuple(range(nav)) + (nav + 10, nav + 11)
    shared = dask.delayed(weights, pure=True)
    return da.blockwise(
        _integrate_block,
        out_ind,
        darr,
        in_ind,
        shared,
        None,
        mean,
        None,
        dtype,
        None,
        new_axes=new_axes,
        concatenate=True,
        dtype=dtype,
        meta=np.empty((0,) * len(out_ind), dtype=dtype),
    )


def _integrate_block(block, weights, mean, dtype):
    return integrate(block, weights, mean=mean, dtype=dtype)
