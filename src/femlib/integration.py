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
* Radius ``k = hypot(u, v)`` in calibrated units; azimuth ``phi = atan2(-v, u)``, pyxem's
  convention: 0 along +x, positive toward -y, i.e. counter-clockwise on screen (rows
  increase downward in a displayed image). Ranges are given in ``[-pi, pi]`` or
  ``[0, 2 pi]``.
* Exact pixel splitting: the affine keeps straight edges, so a pixel is a parallelogram in
  the corrected coordinates; its weight in a bin is the exact area of its overlap with the
  annular sector (clipped by the two azimuth half-planes, then intersected with the disks
  analytically) divided by its own area. The weights of one unmasked pixel sum to the
  fraction of its area inside the radial and azimuthal ranges.

Descan (one centre per frame): :func:`build_descan_weights` builds the exact unmasked
weights once per sub-pixel fraction of the centres and gives every frame its fraction's
weights shifted by the integer part of its centre, less what falls off the detector or on
masked pixels (:class:`DescanWeights`, :func:`integrate_descan`). The counts are never
interpolated; see the geometry page of the user guide.
"""

import functools
import hashlib
import logging
import numbers
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from femlib import _kernels, _pixel_split
from femlib.calibration import check_affine, check_center, check_mask

__all__ = [
    "AzimuthalWeights",
    "DESCAN_SUBPIXEL",
    "DescanWeights",
    "build_descan_weights",
    "build_weights",
    "integrate",
    "integrate_dask",
    "integrate_descan",
    "integrate_descan_dask",
    "as_native_frames",
    "prepare_chunks",
]

_log = logging.getLogger(__name__)
_CACHE = OrderedDict()
_CACHE_SIZE = 8
# Above this many bins the polar kernel (one accumulator per bin, output written directly)
# is used; below, the FEM-pass kernel (two accumulators per bin; see femlib._kernels).
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
    def bin_major_order(self):
        """The CSR structure of the matrix over the touched pixels (rows = bins), for the
        bin-major kernels.

        ``(indptr, cindex, order)``: int64 row pointers, int32 positions in ``touched``
        (increasing within a row), and for every entry its position in ``wdata`` (so
        ``wdata[order]`` are the weights in this order).
        """
        shape = (self.area.size, self.touched.size)
        pos = np.arange(1, self.wdata.size + 1, dtype=np.float64)  # no explicit zero
        csr = sp.csc_array((pos, self.rowidx, self.colptr), shape=shape).tocsr()
        csr.sort_indices()
        order = csr.data.astype(np.int64) - 1
        return csr.indptr.astype(np.int64), csr.indices.astype(np.int32), order

    @functools.cached_property
    def bin_major(self):
        """``(indptr, cindex, data)``: :attr:`bin_major_order` with the float64 weights."""
        indptr, cindex, order = self.bin_major_order
        return indptr, cindex, self.wdata[order]

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

        Examples
        --------
        Two hard bins on a 2 x 2 detector: the left column and the right column.

        >>> m = np.array([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
        >>> w = AzimuthalWeights.from_matrix(m, [0.0, 1.0, 2.0], [-np.pi, np.pi], (2, 2))
        >>> integrate(np.array([[1.0, 2.0], [3.0, 4.0]]), w).tolist()
        [4.0, 6.0]
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


def _as_pair(value, name):
    """``value`` as a float pair; TypeError for non-numbers, ValueError for a bad shape."""
    try:
        r = np.asarray(value)
    except (TypeError, ValueError):
        r = np.asarray(None)
    if r.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a pair of numbers (start, stop), got {value!r}")
    r = r.astype(float)
    if r.shape != (2,) or not np.all(np.isfinite(r)):
        raise ValueError(f"{name} must be a pair of finite numbers (start, stop), got {value!r}")
    if r[1] <= r[0]:
        raise ValueError(f"{name} must be increasing (start < stop), got {tuple(r.tolist())}")
    return r


def _check_range(value, name, lo, hi, what):
    r = _as_pair(value, name)
    if r[0] < lo - 1e-12 or r[1] > hi + 1e-12:
        raise ValueError(
            f"{name} {tuple(r.tolist())} lies outside the {what} [{lo:.6g}, {hi:.6g}]"
        )
    return float(r[0]), float(r[1])


def _check_azimuth_range(value):
    """Azimuths within ``[-pi, pi]`` or within ``[0, 2 pi]`` (radians), as pyxem takes them."""
    r = _as_pair(value, "azimuth_range")
    tol = 1e-12
    if not (r[0] >= -np.pi - tol and r[1] <= np.pi + tol) and not (
        r[0] >= -tol and r[1] <= 2 * np.pi + tol
    ):
        raise ValueError(
            f"azimuth_range {tuple(r.tolist())} lies outside the azimuths: give it within "
            "[-pi, pi] or within [0, 2pi] (radians)"
        )
    return float(r[0]), float(r[1])


def _check_npt(value, name):
    if not isinstance(value, (numbers.Number, np.number)):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# Limits of a weight matrix: it is held four times (CSR, squared, CSC arrays for the kernels)
# at 12-16 bytes per non-zero, and every frame's result holds one value per bin.
_MAX_NNZ = 2 * 10**7
_MAX_BINS = 10**7


def _check_size(shape, center, affine, scale, npt, npt_azim, radial_range, azimuth_range):
    """Refuse bin counts whose weight matrix would not fit in memory, saying why."""
    nbins = npt * npt_azim
    what = f"npt={npt}, npt_azim={npt_azim}"
    if nbins > _MAX_BINS:
        raise ValueError(
            f"{what} asks for {nbins:.3g} bins (npt * npt_azim); at most {_MAX_BINS:.0e} are "
            "accepted: use fewer bins"
        )
    ny, nx = shape
    rows, cols = np.divmod(np.arange(ny * nx), nx)
    u, v = _corrected_offsets(cols.astype(float), rows.astype(float), center, affine, scale)
    rc = np.hypot(u, v)
    lin = np.diag(scale) @ (np.eye(2) if affine is None else affine[:2, :2])
    half = float(np.abs(lin).sum(axis=1).max()) * 0.5 * np.sqrt(2)
    dr = (radial_range[1] - radial_range[0]) / npt
    da = (azimuth_range[1] - azimuth_range[0]) / npt_azim
    near = (rc + half > radial_range[0]) & (rc - half < radial_range[1])
    n_r = np.minimum(npt, np.ceil(2 * half / dr) + 1)
    span = np.where(rc > half, 2 * np.arcsin(np.minimum(half / np.maximum(rc, 1e-300), 1)), 7)
    n_a = np.minimum(npt_azim, np.ceil(span / da) + 1)
    nnz = float(np.sum((n_r * n_a)[near]))
    if nnz > _MAX_NNZ:
        raise ValueError(
            f"{what} would give the weight matrix about {nnz:.2g} non-zero weights "
            f"(~{nnz * 64 / 2**30:.2g} GiB); at most {_MAX_NNZ:.0e} are accepted. Bins much "
            f"narrower than a pixel add no information: use about {nnz / _MAX_NNZ:.2g}x "
            "fewer bins"
        )


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
    """Build (or fetch from the cache) the exact pixel-splitting weight matrix of a geometry.

    ``W[k, p]`` is the area of pixel ``p`` inside the annular sector ``k`` divided by the
    area of the pixel (both in corrected coordinates), computed exactly: the pixel, a
    parallelogram after the affine, is clipped by the sector's two azimuth half-planes and
    intersected with the two disks analytically. The weights are therefore areas in detector
    pixels: ``sum_p W[k, p]`` is the covered area of bin ``k`` in pixels, and the weights of
    an unmasked pixel sum to the fraction of it inside the ranges.

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
        ``(start, stop)`` in radians, within ``[-pi, pi]`` or within ``[0, 2 pi]``;
        restricts the integration itself. The azimuth is pyxem's: 0 along +x,
        counter-clockwise on a displayed image (toward -y, up). Default: the full circle
        ``(-pi, pi)``.
    mask : (rows, columns) bool array_like or None
        True marks excluded pixels; they get weight 0.

    Returns
    -------
    AzimuthalWeights

    Raises
    ------
    TypeError
        If ``npt``, ``npt_azim``, ``radial_range`` or ``azimuth_range`` is not made of
        numbers.
    ValueError
        For ``npt < 1``, reversed ranges, ranges outside the detector or the azimuths, a
        mask of the wrong shape, a non-finite geometry, or so many bins that the matrix
        would hold more than 2e7 non-zero weights (or more than 1e7 bins).

    Examples
    --------
    A ring wholly on the detector gets exactly its area, ``pi (r1^2 - r0^2)`` pixels:

    >>> w = build_weights((64, 64), (31.5, 31.5), npt=1, radial_range=(10, 20))
    >>> w.matrix.shape
    (1, 4096)
    >>> bool(abs(w.area[0] - np.pi * (20**2 - 10**2)) < 1e-9)
    True

    Four quadrants, counter-clockwise on screen from +x; the pixel right of and above
    the centre lies in the first one:

    >>> w = build_weights((8, 8), (3.5, 3.5), npt=1, npt_azim=4, azimuth_range=(0, 2 * np.pi))
    >>> w.matrix[:, 2 * 8 + 5].toarray().ravel().round(6).tolist()  # row 2, column 5
    [1.0, 0.0, 0.0, 0.0]
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
    azimuth_range = (
        (-np.pi, np.pi) if azimuth_range is None else _check_azimuth_range(azimuth_range)
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
    _check_size(shape, center, affine, sc, npt, npt_azim, radial_range, azimuth_range)
    weights = _build(shape, center, affine, sc, npt, npt_azim, radial_range, azimuth_range, mask)
    _CACHE[key] = weights
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return weights


def _build(shape, center, affine, scale, npt, npt_azim, radial_range, azimuth_range, mask):
    ny, nx = shape
    lin = np.eye(2) if affine is None else affine[:2, :2]
    shift = np.zeros(2) if affine is None else affine[:2, 2]
    # Corrected coordinates with the second axis flipped, (u, w) = (u, -v): the azimuth is
    # then atan2(w, u), pyxem's (counter-clockwise on screen), and polygons are ordinary.
    flip = np.diag([scale[0], -scale[1]])
    lin_f = flip @ lin
    rows, cols = np.divmod(np.arange(ny * nx), nx)
    off = np.stack([cols - center[0], rows - center[1]]).astype(float)
    cu, cw = lin_f @ off + (flip @ shift)[:, None]
    corners = lin_f @ np.array([[-0.5, 0.5, 0.5, -0.5], [-0.5, -0.5, 0.5, 0.5]])
    if np.linalg.det(lin_f) < 0:  # keep the corners counter-clockwise
        corners = corners[:, ::-1]
    r0, r1 = radial_range
    rc = np.hypot(cu, cw)
    half = float(np.hypot(corners[0], corners[1]).max())
    keep = (rc + half > r0) & (rc - half < r1)
    if mask is not None:
        keep &= ~mask.ravel()
    radial_edges = np.linspace(r0, r1, npt + 1)
    azimuth_edges = np.linspace(azimuth_range[0], azimuth_range[1], npt_azim + 1)
    full_circle = npt_azim == 1 and azimuth_range[1] - azimuth_range[0] >= 2 * np.pi - 1e-12
    bins, pix, vals = _pixel_split.split_pixels(
        np.ascontiguousarray(cu),
        np.ascontiguousarray(cw),
        np.ascontiguousarray(corners[0]),
        np.ascontiguousarray(corners[1]),
        np.flatnonzero(keep).astype(np.int64),
        radial_edges,
        azimuth_edges,
        None if full_circle else True,
    )
    # COO -> CSR (duplicates, from the two halves of a sector wider than pi, are summed).
    matrix = sp.coo_array((vals, (bins, pix)), shape=(npt * npt_azim, ny * nx)).tocsr()
    det = abs(np.linalg.det(lin_f))
    geo_area = 0.5 * np.diff(radial_edges**2)[:, None] * np.diff(azimuth_edges)[None, :] / det
    return AzimuthalWeights.from_matrix(
        matrix, radial_edges, azimuth_edges, shape, geometric_area=geo_area.ravel()
    )


def as_native_frames(data, detector_shape):
    """View frames as a C-contiguous ``(N, P)`` array in native byte order.

    Parameters
    ----------
    data : ndarray, shape (..., rows, columns)
        Frames of any real dtype (big-endian, e.g. ``>u2`` from Merlin files, is converted;
        float16 is read as float32).
    detector_shape : tuple of 2 ints

    Returns
    -------
    (N, P) ndarray
        A view when possible, else a copy (non-contiguous, non-native, boolean or float16
        input).

    Raises
    ------
    ValueError
        If the trailing dimensions are not ``detector_shape``.
    TypeError
        If the dtype is not real numeric.

    Examples
    --------
    >>> frames = np.arange(2 * 3 * 4, dtype=">u2").reshape(2, 3, 4)  # big-endian
    >>> flat = as_native_frames(frames, (3, 4))
    >>> flat.shape, flat.dtype.isnative, int(flat[1, 0])
    ((2, 12), True, 12)
    >>> as_native_frames(np.ones((1, 3, 4), np.float16), (3, 4)).dtype
    dtype('float32')
    """
    arr = np.asarray(data)
    if arr.shape[-2:] != tuple(detector_shape):
        raise ValueError(
            f"frames have detector shape {arr.shape[-2:]}, expected {tuple(detector_shape)}"
        )
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind == "f" and arr.dtype.itemsize < 4:
        # The kernels have no half-precision loops: read float16 as float32 (exact).
        arr = arr.astype(np.float32)
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
    indptr, cindex, data = weights.bin_major
    if nbins > _BIN_MAJOR_ABOVE:
        bad = np.zeros(flat.shape[0], dtype=bool)
        # The kernel writes C-ordered float32 or float64 rows with vector stores.
        direct = out.dtype in (np.float32, np.float64) and out.flags.c_contiguous
        dest = out if direct else np.empty(out.shape)
        _kernels.apply_tiled(flat, weights.touched, indptr, cindex, data, scale, dest, bad)
        if not direct:
            out[...] = dest
    else:
        _kernels.apply_few(flat, weights.touched, indptr, cindex, data, scale, out)
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
    >>> darr = da.zeros((1000, 64, 64), chunks=(10, 32, 32))  # split frames, tiny chunks
    >>> prepare_chunks(darr).chunks[1:]  # whole frames
    ((64,), (64,))
    >>> prepare_chunks(darr).numblocks[0] < darr.numblocks[0]  # merged navigation chunks
    True
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
    >>> w = build_weights((16, 16), (7.5, 7.5), npt=4, radial_range=(1, 7))
    >>> frames = da.ones((6, 16, 16), chunks=(2, 16, 16))
    >>> out = integrate_dask(frames, w, mean=True)
    >>> out.shape, out.compute().round(6)[0].tolist()
    ((6, 4), [1.0, 1.0, 1.0, 1.0])
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


# ----------------------------------------------------------------------------- descan
#: Per-position centres are rounded to ``1 / DESCAN_SUBPIXEL`` pixel (each axis): at most
#: 0.05 px off, 0.029 px rms per axis (0.041 px in the plane) for the default 10.
DESCAN_SUBPIXEL = 10
_TABLES = OrderedDict()
_TABLES_SIZE = 512
_DESCAN = OrderedDict()  # the last few per-scan descan geometries


@dataclass(frozen=True, eq=False)
class DescanWeights:
    """Pixel-splitting weights for frames that each have their own centre (descan).

    Every centre is rounded to ``1 / subpixel`` pixel. Its sub-pixel fraction selects one of
    at most ``subpixel**2`` *tables*: the exact, unmasked weights of that fraction on a
    virtual detector centred on the ring; its integer part is a shift of the table's pixel
    indices onto the detector. A frame then uses the table's entries that land on an
    unmasked detector pixel, with its own bin areas ``A_nk`` (the kernels sum them from the
    same entries). The counts are never interpolated: only the geometry moves.

    Attributes
    ----------
    reference : AzimuthalWeights
        The geometry of the mean centre (with the mask): bins, ``coverage`` and ``area``
        reported for the scan.
    tables : tuple of AzimuthalWeights
        The unmasked weights of every sub-pixel fraction in use, on the virtual detector
        ``tables[0].detector_shape`` (the centre at ``half + fraction``).
    packed : tuple of ndarray
        The tables end to end, as :func:`femlib._kernels.descan_moments` takes them.
    frame_geometry : (N, 3) int64 ndarray
        Per frame (flat navigation order): its table, and the row and column shift from
        the table's virtual pixels to the detector's.
    valid : (P,) uint8 ndarray
        1 for an unmasked detector pixel.
    centers : (N, 2) ndarray
        The rounded centres (x, y) in pixels actually used.
    subpixel : int
    detector_shape : tuple of int
    split : tuple of ndarray
        Per table, its pixels that land on an unmasked detector pixel for every frame of
        the table (read without checks) and the others (checked frame by frame; their
        weights leave the frame's bin areas): ``(f_off, fast, s_off, slow, s_ptr, s_bin,
        s_w)``.

    Examples
    --------
    Three frames, two of them a whole pixel apart (same sub-pixel fraction, one table):

    >>> dw = build_descan_weights((32, 32), [(15.5, 15.5), (16.5, 15.5), (15.8, 16.2)],
    ...                           npt=3, radial_range=(2, 8))
    >>> len(dw.tables), dw.frame_geometry[:, 0].tolist()
    (2, [0, 0, 1])
    """

    reference: AzimuthalWeights
    tables: tuple
    packed: tuple = field(repr=False)
    frame_geometry: np.ndarray = field(repr=False)
    valid: np.ndarray = field(repr=False)
    centers: np.ndarray = field(repr=False)
    subpixel: int = DESCAN_SUBPIXEL
    detector_shape: tuple = ()
    split: tuple = field(default=None, repr=False)

    def __getattr__(self, name):
        # Bins and report values are the reference geometry's (npt, radial_edges, ...).
        if name in ("npt", "npt_azim", "radial_edges", "azimuth_edges", "radial_centers",
                    "azimuth_centers", "coverage", "area"):
            return getattr(self.reference, name)
        raise AttributeError(name)

    def __reduce__(self):
        # Shipped to workers without the per-table AzimuthalWeights (the kernels read the
        # packed copy): half the bytes of the graph.
        state = {k: v for k, v in self.__dict__.items() if k in ("_rounding", "_key")}
        args = (self.reference, (), self.packed, self.frame_geometry, self.valid, self.centers,
                self.subpixel, self.detector_shape, self.split)
        return (_rebuild_descan, (args, state))

    def __dask_tokenize__(self):
        # The build key (centres, geometry): dask neither hashes nor traverses the tables.
        return ("femlib.DescanWeights", self.__dict__.get("_key", id(self)))

    @property
    def n_frames(self):
        """Number of frames (probe positions)."""
        return self.frame_geometry.shape[0]

    @property
    def rounding_error(self):
        """``(max, rms)`` distance in pixels between the given and the rounded centres is at
        most ``(sqrt(2) / 2, 1 / sqrt(6))`` times ``1 / subpixel``; this returns the
        measured ``(max, rms)`` of the last build (see :func:`build_descan_weights`)."""
        return self.__dict__.get("_rounding", (np.nan, np.nan))

    def pack_shot(self, per_table):
        """Shot weights of every table (one sparse (K, P_virtual) matrix each, e.g. a noise
        model's ``shot_weights(table)``), aligned and packed like the weights."""
        from femlib.moments import _shot_data

        return np.concatenate([_shot_data(t, s) for t, s in zip(self.tables, per_table,
                                                                  strict=True)])

    @property
    def squared(self):
        """The counting model's shot weights ``W**2``, packed like the weights."""
        sq = self.__dict__.get("_squared")
        if sq is None:
            sq = self.__dict__["_squared"] = self.packed[7] ** 2
        return sq


def _rebuild_descan(args, state):
    out = DescanWeights(*args)
    out.__dict__.update(state)
    return out


def _lin(affine, scale):
    lin = np.eye(2) if affine is None else affine[:2, :2]
    return np.diag(scale) @ lin


def _max_radii(shape, centers, affine, scale):
    """Largest radius of a detector corner around each centre: (N,)."""
    ny, nx = shape
    cx = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    cy = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    u, v = _corrected_offsets(cx[None], cy[None], (centers[:, :1], centers[:, 1:2]), affine,
                              scale)
    return np.hypot(u, v).max(axis=1)


def _tables(half, fractions, subpixel, affine, scale, npt, npt_azim, radial_range,
            azimuth_range):
    """The unmasked weights of each sub-pixel fraction on the virtual (2 half + 1)^2 grid:
    from the cache, the missing ones built in parallel (dask's threads; the pixel
    splitting releases the GIL)."""
    import dask

    shape = (2 * half + 1, 2 * half + 1)
    common = (half, subpixel, None if affine is None else affine.tobytes(), tuple(scale), npt,
              npt_azim, radial_range, azimuth_range)
    keys = [(tuple(int(f) for f in fr),) + common for fr in fractions]
    missing = [i for i, k in enumerate(keys) if k not in _TABLES]
    build = dask.delayed(_build, pure=True)
    todo = [build(shape, (half + fractions[i][0] / subpixel, half + fractions[i][1] / subpixel),
                  affine, np.asarray(scale), npt, npt_azim, radial_range, azimuth_range, None)
            for i in missing]
    built = dask.compute(*todo, scheduler="threads") if todo else ()
    out = []
    new = dict(zip((keys[i] for i in missing), built, strict=True))
    for k in keys:
        w = new.get(k)
        if w is None:
            w = _TABLES[k]
            _TABLES.move_to_end(k)
        else:
            _TABLES[k] = w
        out.append(w)
    while len(_TABLES) > _TABLES_SIZE:
        _TABLES.popitem(last=False)
    return tuple(out)


def build_descan_weights(
    detector_shape,
    centers,
    affine=None,
    scale=(1.0, 1.0),
    npt=100,
    npt_azim=1,
    radial_range=None,
    azimuth_range=None,
    mask=None,
    subpixel=None,
):
    """Exact pixel-splitting weights for per-frame centres (descan), without interpolation.

    Each centre is rounded to ``1 / subpixel`` pixel; the exact unmasked weights of each
    sub-pixel fraction are built once (cached across calls) on a virtual detector around
    the ring, and every frame takes them shifted by the integer part of its centre, less
    the entries off the detector or on masked pixels (so each frame has its own exact bin
    areas). The mask stays fixed on the detector; only the ring geometry moves.

    Parameters
    ----------
    detector_shape : tuple of 2 ints
    centers : (N, 2) array_like
        Centre (x, y) in pixels of every frame (flat navigation order).
    affine, scale, npt, npt_azim, azimuth_range, mask
        As :func:`build_weights`.
    radial_range : (2,) array_like or None
        As :func:`build_weights`; it must stay on the detector around *every* centre.
        Default: 0 to the smallest, over the frames, of the farthest corner radius.
    subpixel : int or None
        Rounding of the centres: ``1 / subpixel`` pixel per axis (None:
        :data:`DESCAN_SUBPIXEL`, read at the call): at most ``0.5 / subpixel`` px per axis, ``0.29 /
        subpixel`` px rms per axis for centres spread over many pixels.

    Returns
    -------
    DescanWeights

    Raises
    ------
    ValueError
        As :func:`build_weights`; for centres that are not an (N, 2) finite array; when the
        radial range leaves the detector around some frame's centre (naming ``center``).

    Examples
    --------
    Two frames whose centres differ by 2.3 px: each gets a ring wholly on the detector
    with its exact area.

    >>> dw = build_descan_weights((64, 64), [(31.5, 31.5), (33.8, 31.5)], npt=1,
    ...                           radial_range=(10, 20))
    >>> frames = np.ones((2, 64, 64))
    >>> sums, areas = integrate_descan(frames, dw, return_area=True)
    >>> bool(np.allclose(areas, np.pi * (20**2 - 10**2)))
    True
    """
    shape = tuple(int(n) for n in detector_shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"detector_shape must be (rows, columns) > 0, got {detector_shape}")
    c = np.asarray(centers, dtype=float)
    if c.ndim != 2 or c.shape[1] != 2 or c.shape[0] < 1:
        raise ValueError(f"centers must have shape (N, 2) (x, y per frame), got {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError("center must be finite: per-position centres hold NaN or inf")
    affine = check_affine(affine)
    sc = np.broadcast_to(np.asarray(scale, dtype=float), (2,)).copy()
    if not np.all(np.isfinite(sc)) or np.any(sc == 0):
        raise ValueError(f"scale must be finite and non-zero, got {tuple(sc.tolist())}")
    npt = _check_npt(npt, "npt")
    npt_azim = _check_npt(npt_azim, "npt_azim")
    subpixel = DESCAN_SUBPIXEL if subpixel is None else subpixel
    if isinstance(subpixel, bool) or not isinstance(subpixel, (int, np.integer)) or subpixel < 1:
        raise ValueError(f"subpixel must be a positive integer, got {subpixel!r}")
    subpixel = int(subpixel)
    q = np.rint(c * subpixel).astype(np.int64)
    whole = np.floor_divide(q, subpixel)
    frac = q - whole * subpixel
    used = q / subpixel
    rmax = _max_radii(shape, used, affine, sc)
    worst = int(np.argmin(rmax))
    r_lim = float(rmax[worst])
    if radial_range is None:
        radial_range = (0.0, r_lim)
    else:
        r = _as_pair(radial_range, "radial_range")
        if r[0] < -1e-12:
            raise ValueError(f"radial_range {tuple(r.tolist())} must start at 0 or above")
        if r[1] > r_lim + 1e-12:
            x, y = used[worst]
            raise ValueError(
                f"radial_range {tuple(r.tolist())} leaves the detector around the centre "
                f"({x:.4g}, {y:.4g}) px of probe position {worst} (flat index), where the "
                f"farthest corner is at {r_lim:.6g}: a descan larger than the detector "
                "allows for this range. Narrow radial_range, or check center (one (x, y), "
                "or an array of navigation shape + (2,))"
            )
        radial_range = (float(r[0]), float(r[1]))
    azimuth_range = (
        (-np.pi, np.pi) if azimuth_range is None else _check_azimuth_range(azimuth_range)
    )
    mask = check_mask(mask, shape)
    mask_key = None if mask is None else hashlib.sha1(np.packbits(mask).tobytes()).hexdigest()
    key = (shape, hashlib.sha1(c.tobytes()).hexdigest(), c.shape,
           None if affine is None else affine.tobytes(), tuple(sc), npt, npt_azim,
           radial_range, azimuth_range, mask_key, subpixel)
    hit = _DESCAN.get(key)
    if hit is not None:
        _DESCAN.move_to_end(key)
        return hit
    mean_center = c.mean(axis=0)
    # The reference geometry (mean centre, with the mask): the bins and the reported
    # coverage. The radial range may pass the mean centre's farthest corner (centres spread
    # around the middle): it is then built directly, without the single-centre range check.
    _check_size(shape, mean_center, affine, sc, npt, npt_azim, radial_range, azimuth_range)
    if radial_range[1] <= _max_radius(shape, mean_center, affine, sc):
        reference = build_weights(shape, mean_center, affine, sc, npt, npt_azim,
                                  radial_range, azimuth_range, mask)
    else:
        reference = _build(shape, mean_center, affine, sc, npt, npt_azim, radial_range,
                           azimuth_range, mask)
    # Virtual grid: every pixel within the outer radius of a centre in [0, 1)^2, plus margin.
    lin = _lin(affine, sc)
    smin = float(np.linalg.svd(lin, compute_uv=False).min())
    trans = 0.0 if affine is None else float(np.hypot(*(np.diag(sc) @ affine[:2, 2])))
    half = int(np.ceil((radial_range[1] + trans) / smin + 1.0)) + 2
    keys, table_of = np.unique(frac[:, 0] * subpixel + frac[:, 1], return_inverse=True)
    tables = _tables(half, [(int(k // subpixel), int(k % subpixel)) for k in keys], subpixel,
                     affine, sc, npt, npt_azim, radial_range, azimuth_range)
    packed = _pack(tables)
    geo = np.empty((c.shape[0], 3), np.int64)
    geo[:, 0] = table_of.ravel()
    geo[:, 1] = whole[:, 1] - half  # detector row = virtual row + dy
    geo[:, 2] = whole[:, 0] - half
    valid = np.ones(shape[0] * shape[1], np.uint8) if mask is None else (
        ~mask.ravel()).astype(np.uint8)
    out = DescanWeights(reference, tables, packed, geo, valid, used, subpixel, shape,
                        _split_pixels(tables, geo, valid, shape))
    err = np.hypot(*(used - c).T)
    out.__dict__["_rounding"] = (float(err.max()), float(np.sqrt(np.mean(err**2))))
    out.__dict__["_key"] = hashlib.sha1(repr(key).encode()).hexdigest()
    _DESCAN[key] = out
    if len(_DESCAN) > 4:
        _DESCAN.popitem(last=False)
    return out


def _split_pixels(tables, geometry, valid, shape):
    """Per table, its pixels that every frame using it finds on an unmasked detector pixel
    (``fast``) and the others (``slow``, with their weights per bin, which a frame that
    loses the pixel takes out of its areas): ``(f_off, fast, s_off, slow, s_ptr, s_bin,
    s_w)``."""
    ny, nx = shape
    ok_pixel = valid.astype(bool)
    fast, slow, f_off, s_off = [], [], [0], [0]
    s_ptr, s_bin, s_w = [np.zeros(1, np.int64)], [], []
    n_entries = 0
    for t, w in enumerate(tables):
        r, c = np.divmod(w.touched, w.detector_shape[1])
        shifts = np.unique(geometry[geometry[:, 0] == t, 1:], axis=0)
        rr = r[None, :] + shifts[:, :1]
        cc = c[None, :] + shifts[:, 1:]
        on = (rr >= 0) & (rr < ny) & (cc >= 0) & (cc < nx)
        good = on.copy()
        good[on] = ok_pixel[(rr * nx + cc)[on]]
        always = good.all(axis=0) if shifts.size else np.ones(r.size, bool)
        sj = np.flatnonzero(~always)
        fast.append(np.flatnonzero(always))
        slow.append(sj)
        f_off.append(f_off[-1] + fast[-1].size)
        s_off.append(s_off[-1] + sj.size)
        # The slow pixels' entries (pixel-major): a frame that loses one subtracts them.
        lo, hi = w.colptr[sj], w.colptr[sj + 1]
        counts = hi - lo
        idx = np.repeat(lo - np.cumsum(np.r_[0, counts[:-1]]), counts) + np.arange(counts.sum())
        s_bin.append(w.rowidx[idx])
        s_w.append(w.wdata[idx])
        s_ptr.append(n_entries + np.cumsum(counts))
        n_entries += int(counts.sum())
    i64 = np.int64
    return (np.asarray(f_off, i64), np.concatenate(fast).astype(i64), np.asarray(s_off, i64),
            np.concatenate(slow).astype(i64), np.concatenate(s_ptr).astype(i64),
            np.concatenate(s_bin).astype(np.int32), np.concatenate(s_w).astype(np.float64))


def _pack(tables):
    parts = {name: [] for name in ("vrow", "vcol", "ind", "cidx", "wd", "area")}
    t_off, i_off, c_off = [0], [0], [0]
    for w in tables:
        indptr, cindex, data = w.bin_major
        r, col = np.divmod(w.touched, w.detector_shape[1])
        parts["vrow"].append(r)
        parts["vcol"].append(col)
        parts["ind"].append(indptr)
        parts["cidx"].append(cindex)
        parts["wd"].append(data)
        parts["area"].append(w.area)
        t_off.append(t_off[-1] + r.size)
        i_off.append(i_off[-1] + indptr.size)
        c_off.append(c_off[-1] + data.size)
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    i64 = np.int64
    return (np.asarray(t_off, i64), cat["vrow"].astype(np.int32), cat["vcol"].astype(np.int32),
            np.asarray(i_off, i64), cat["ind"].astype(i64), np.asarray(c_off, i64),
            cat["cidx"].astype(np.int32), cat["wd"].astype(np.float64),
            cat["area"].astype(np.float64))


def _descan_sums(flat, dweights, geometry, sdata=None, with_j=False, rows=None):
    """Kernel call: ``(c, n, K)`` sums of the frames ``flat`` (geometry rows aligned)."""
    geometry = np.asarray(geometry, np.int64).reshape(-1, 3)
    table = np.ascontiguousarray(geometry[:, 0])
    if rows is None:
        rows = np.argsort(table, kind="stable")
    return _kernels.descan_moments(
        flat, rows, table, np.ascontiguousarray(geometry[:, 1]),
        np.ascontiguousarray(geometry[:, 2]), dweights.detector_shape, dweights.valid,
        dweights.packed, dweights.split,
        dweights.packed[7] if isinstance(sdata, str) else sdata, with_j,
        q_square=isinstance(sdata, str),  # "W**2": the counting model, w^2 in registers
    ), rows


# Frames per kernel call when integrating: bounds the float64 temporaries of many bins.
_DESCAN_STEP_BYTES = 32 * 2**20


def integrate_descan(frames, dweights, geometry=None, mean=False, dtype=np.float64, out=None,
                     return_area=False):
    """:func:`integrate` with every frame at its own centre (:func:`build_descan_weights`).

    Parameters
    ----------
    frames : ndarray, shape (..., rows, columns)
    dweights : DescanWeights
    geometry : (n, 3) int array or None
        The frames' rows of ``dweights.frame_geometry`` (default: all of them, for all
        frames).
    mean : bool
        Divide by each frame's own covered area of the bin (0 where it has none).
    dtype, out
        As :func:`integrate`.
    return_area : bool
        Also return the ``(..., K)`` per-frame bin areas.

    Returns
    -------
    ndarray, shape (..., npt) or (..., npt, npt_azim); and the areas with ``return_area``

    Examples
    --------
    >>> dw = build_descan_weights((32, 32), [(15.5, 15.5), (17.0, 14.0)], npt=2,
    ...                           radial_range=(3, 9))
    >>> integrate_descan(np.ones((2, 32, 32)), dw, mean=True).round(12).tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """
    return _apply_descan(frames, dweights, geometry, mean, dtype, out, return_area)[0]


def _apply_descan(frames, dweights, geometry=None, mean=False, dtype=np.float64, out=None,
                  return_area=False):
    nav = np.shape(frames)[:-2]
    flat = as_native_frames(frames, dweights.detector_shape)
    n = flat.shape[0]
    geometry = dweights.frame_geometry if geometry is None else np.asarray(geometry)
    geometry = geometry.reshape(-1, 3)
    if geometry.shape[0] != n:
        raise ValueError(f"geometry has {geometry.shape[0]} rows for {n} frames")
    nbins = dweights.npt * dweights.npt_azim
    if out is None:
        out = np.empty((n, nbins), dtype=dtype)
    areas = np.empty((n, nbins)) if return_area else None
    bad = np.zeros(n, bool)
    step = max(1, int(_DESCAN_STEP_BYTES // (16 * max(nbins, 1))))
    for i in range(0, n, step):
        j = min(n, i + step)
        sums, rows = _descan_sums(flat[i:j], dweights, geometry[i:j])
        vals = np.empty((j - i, nbins))
        vals[rows] = sums[0]
        area = np.empty((j - i, nbins))
        area[rows] = sums[-1]
        if mean:
            inv = np.zeros_like(area)
            np.divide(1.0, area, out=inv, where=area > 0)
            vals *= inv
        out[i:j] = vals
        bad[i:j] = ~np.isfinite(vals).all(axis=1)
        if return_area:
            areas[i:j] = area
    tail = (dweights.npt,) if dweights.npt_azim == 1 else (dweights.npt, dweights.npt_azim)
    result = out.reshape(nav + tail)
    if return_area:
        return (result, areas.reshape(nav + (nbins,))), bad
    return result, bad


def integrate_descan_dask(darr, dweights, mean=False, dtype=np.float64):
    """Lazy :func:`integrate_descan` over a dask array (one task per chunk).

    Parameters
    ----------
    darr : dask.array.Array, shape (..., rows, columns)
        Its frames in the order of ``dweights.frame_geometry``.
    dweights : DescanWeights
    mean : bool
    dtype : dtype

    Returns
    -------
    dask.array.Array, shape (..., npt) or (..., npt, npt_azim)

    Examples
    --------
    >>> import dask.array as da
    >>> dw = build_descan_weights((16, 16), [(7.5, 7.5), (8.0, 7.0)] * 3, npt=2,
    ...                           radial_range=(1, 6))
    >>> out = integrate_descan_dask(da.ones((6, 16, 16), chunks=(2, 16, 16)), dw, mean=True)
    >>> out.shape, out.compute().round(12)[3].tolist()
    ((6, 2), [1.0, 1.0])
    """
    import dask
    import dask.array as da

    _check_dtype(darr.dtype)
    darr = prepare_chunks(darr)
    nav = darr.ndim - 2
    geo = da.from_array(dweights.frame_geometry.reshape(darr.shape[:nav] + (3,)),
                        chunks=darr.chunks[:nav] + ((3,),))
    two_d = dweights.npt_azim > 1
    new_axes = ({nav: dweights.npt, nav + 1: dweights.npt_azim} if two_d
                else {nav: dweights.npt})
    out_ind = tuple(range(nav)) + ((nav, nav + 1) if two_d else (nav,))
    in_ind = tuple(range(nav)) + (nav + 10, nav + 11)
    shared = dask.delayed(dweights, pure=True, traverse=False)
    return da.blockwise(
        _descan_block, out_ind, darr, in_ind, geo, tuple(range(nav)) + (nav + 12,),
        shared, None, mean, None, dtype, None,
        new_axes=new_axes, concatenate=True, dtype=dtype,
        meta=np.empty((0,) * len(out_ind), dtype=dtype),
    )


def _descan_block(block, geo, dweights, mean, dtype):
    return integrate_descan(block, dweights, geo.reshape(-1, 3), mean=mean, dtype=dtype)
