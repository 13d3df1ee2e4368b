"""Detector calibration of a diffraction signal: centre, affine distortion, mask, scale.

The :class:`Calibration` object holds no data of its own. It reads and writes the signal's
axes and metadata, so copies, slices, ``sum()`` and save/load keep the calibration for free:

* ``center`` (x, y) in pixels is stored as the signal axes' offsets
  (``offset = -center * scale``): the calibrated coordinate of a pixel is then its distance
  from the centre, and the axes stay the single source of truth.
* ``affine`` (3x3) is stored in ``metadata.General.affine_transformation``.
* ``mask`` (boolean, detector shaped, True = excluded) is stored in
  ``metadata.General.detector_mask``.

Pixel convention: pixel ``i`` covers ``[i - 1/2, i + 1/2]`` and its centre is at ``i``.
"""

import numpy as np

__all__ = ["Calibration", "check_affine", "check_center", "check_mask"]

_AFFINE_KEY = "General.affine_transformation"
_MASK_KEY = "General.detector_mask"


def check_center(center):
    """Validate a centre given as (x, y) in pixels.

    Parameters
    ----------
    center : sequence of 2 floats
        Centre (x, y) in pixels.

    Returns
    -------
    (2,) ndarray of float64

    Raises
    ------
    ValueError
        If ``center`` is not a finite 2-vector.
    """
    try:
        c = np.array(center, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"center must be 2 numbers (x, y) in pixels, got {center!r}") from None
    if c.shape != (2,):
        raise ValueError(
            f"center must be a 2-vector (x, y) in pixels, got an array of shape {c.shape}"
        )
    if not np.all(np.isfinite(c)):
        raise ValueError(f"center must be finite, got {tuple(c.tolist())}")
    return c


def check_affine(affine):
    """Validate an affine transformation.

    Parameters
    ----------
    affine : (3, 3) or (2, 2) array_like or None
        Matrix acting on homogeneous pixel offsets ``(x - cx, y - cy, 1)``. A 2x2 matrix is
        embedded in a 3x3 one without translation. None means identity.

    Returns
    -------
    (3, 3) ndarray of float64 or None

    Raises
    ------
    ValueError
        If the matrix has the wrong shape, is not finite or is singular.
    """
    if affine is None:
        return None
    try:
        a = np.array(affine, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"affine must be a 3x3 matrix of numbers, got {affine!r}") from None
    if a.shape == (2, 2):
        full = np.eye(3)
        full[:2, :2] = a
        a = full
    if a.shape != (3, 3):
        raise ValueError(f"affine must be a 3x3 (or 2x2) matrix, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("affine must be finite, got a matrix containing NaN or inf")
    if abs(np.linalg.det(a[:2, :2])) < 1e-12:
        raise ValueError("affine must be invertible, got a singular matrix")
    return a


def check_mask(mask, detector_shape, name="mask"):
    """Validate a detector mask.

    Parameters
    ----------
    mask : array_like of bool, a boolean HyperSpy signal, or None
        True marks excluded pixels (beam stop, dead pixels).
    detector_shape : tuple of 2 ints
        ``(rows, columns)`` of the detector.
    name : str
        Argument name used in error messages.

    Returns
    -------
    (rows, columns) ndarray of bool or None

    Raises
    ------
    TypeError
        If the mask is not boolean (0/1 integer arrays are accepted).
    ValueError
        If the shape differs from the detector's.
    """
    if mask is None:
        return None
    data = getattr(mask, "data", mask)
    if hasattr(data, "compute"):
        data = data.compute()
    m = np.array(data)  # a copy: later edits of the caller's array must not leak in
    if m.dtype != bool:
        if np.issubdtype(m.dtype, np.integer) and np.isin(m, (0, 1)).all():
            m = m.astype(bool)
        else:
            raise TypeError(
                f"{name} must be a boolean array (True = excluded pixel), got dtype {m.dtype}"
            )
    if m.shape != tuple(detector_shape):
        raise ValueError(
            f"{name} has shape {m.shape} but the detector is {tuple(detector_shape)}"
        )
    return m


class Calibration:
    """Calibration of a diffraction signal, reached as ``s.calibration``.

    Parameters
    ----------
    signal : hyperspy signal with two signal dimensions
        The signal whose axes and metadata hold the calibration.

    Examples
    --------
    >>> s = femlib.data.synthetic_fem()  # doctest: +SKIP
    >>> s.calibration.center = (64.3, 62.7)  # doctest: +SKIP
    >>> s.calibration.affine = np.eye(3)  # doctest: +SKIP
    """

    def __init__(self, signal):
        self._signal = signal

    @property
    def _axes(self):
        return self._signal.axes_manager.signal_axes  # (x, y)

    @property
    def detector_shape(self):
        """(rows, columns) of the detector."""
        x, y = self._axes
        return (y.size, x.size)

    @property
    def center(self):
        """Centre (x, y) in pixels; None sets the detector middle.

        Stored as the signal axes' offsets, so the calibrated coordinate of a pixel is its
        distance from the centre.
        """
        x, y = self._axes
        return np.array([-x.offset / x.scale, -y.offset / y.scale])

    @center.setter
    def center(self, value):
        if value is None:
            ny, nx = self.detector_shape
            value = ((nx - 1) / 2, (ny - 1) / 2)
        c = check_center(value)
        for axis, ci in zip(self._axes, c, strict=True):
            axis.offset = -ci * axis.scale

    @property
    def affine(self):
        """(3, 3) ndarray or None: maps pixel offsets from the centre to circular rings."""
        md = self._signal.metadata
        if not md.has_item(_AFFINE_KEY):
            return None
        value = md.get_item(_AFFINE_KEY)
        return None if value is None else np.array(value, dtype=float)

    @affine.setter
    def affine(self, value):
        a = check_affine(value)
        md = self._signal.metadata
        if a is None:
            if md.has_item(_AFFINE_KEY):
                md.General.__delattr__("affine_transformation")
        else:
            md.set_item(_AFFINE_KEY, a)

    @property
    def mask(self):
        """(rows, columns) bool ndarray or None: True marks excluded pixels."""
        md = self._signal.metadata
        if not md.has_item(_MASK_KEY):
            return None
        value = md.get_item(_MASK_KEY)
        return None if value is None else np.array(value, dtype=bool)

    @mask.setter
    def mask(self, value):
        m = check_mask(value, self.detector_shape)
        md = self._signal.metadata
        if m is None:
            if md.has_item(_MASK_KEY):
                md.General.__delattr__("detector_mask")
        else:
            md.set_item(_MASK_KEY, m)

    @property
    def scale(self):
        """Calibrated size of one pixel (both signal axes); setting keeps the centre in pixels."""
        return self._axes[0].scale

    @scale.setter
    def scale(self, value):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"scale must be a positive finite number, got {value!r}") from None
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"scale must be a positive finite number, got {value}")
        center = self.center
        for axis in self._axes:
            axis.scale = value
        self.center = center

    @property
    def units(self):
        """Units of the signal axes, e.g. ``"nm^-1"``."""
        return self._axes[0].units

    @units.setter
    def units(self, value):
        for axis in self._axes:
            axis.units = value

    def geometry(self):
        """The calibration as plain values for the integration engine.

        Returns
        -------
        dict
            ``detector_shape``, ``center`` (x, y pixels), ``affine`` (3x3 or None),
            ``scale`` (x, y), ``mask`` (bool array or None).

        Raises
        ------
        ValueError
            If the two signal axes have different scales' signs or a non-finite scale.
        """
        x, y = self._axes
        scale = (float(x.scale), float(y.scale))
        if not all(np.isfinite(scale)) or 0 in scale:
            raise ValueError(f"signal axes scale must be finite and non-zero, got {scale}")
        return {
            "detector_shape": self.detector_shape,
            "center": check_center(self.center),
            "affine": self.affine,
            "scale": scale,
            "mask": self.mask,
        }

    def __repr__(self):
        c = self.center
        return (
            f"<Calibration center=({c[0]:.3f}, {c[1]:.3f}) px, scale={self.scale:g} "
            f"{self.units}, affine={'set' if self.affine is not None else 'identity'}, "
            f"mask={'set' if self.mask is not None else 'none'}>"
        )
