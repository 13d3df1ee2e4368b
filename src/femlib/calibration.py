"""Detector calibration of a diffraction signal: centre, affine distortion, mask, scale.

The :class:`Calibration` object holds no data of its own. It reads and writes the signal's
axes and metadata, so copies, slices, ``sum()`` and save/load keep the calibration for free:

* ``center`` (x, y) in pixels is stored as the signal axes' offsets
  (``offset = -center * scale``): the calibrated coordinate of a pixel is then its distance
  from the centre, and the axes stay the single source of truth.
* per-position centres (descan: one (x, y) per probe position, an array of shape
  navigation shape + ``(2,)``) are stored in ``metadata.Descan.center``, beside the HAADF
  image's ``metadata.HAADF.intensity``, and follow ``inav``, ``rebin`` (averaged),
  ``split``, ``transpose`` and save/load like it. The axes' offsets then hold the mean
  centre, so a reader that knows one centre only (pyxem) sees the scan's mean geometry.
* ``affine`` (3x3) is stored in ``metadata.General.affine_transformation`` in pyxem's
  form (see :func:`affine_to_stored`), so that pyxem and femlib read the same geometry
  from the same file.
* ``mask`` (boolean, detector shaped, True = excluded) is stored in
  ``metadata.General.mask``, where pyxem keeps its mask too.

These are the keys and meanings of pyxem 0.21's ``Calibration`` (its ``center``, ``affine``
and ``mask``): a signal calibrated by either library integrates the same way in both.
The mask and the navigation-shaped metadata also follow slicing, rebinning and
transposition of the signal (:mod:`femlib.signals._state`).

Pixel convention: pixel ``i`` covers ``[i - 1/2, i + 1/2]`` and its centre is at ``i``.
"""

import numpy as np

__all__ = [
    "Calibration",
    "affine_from_stored",
    "affine_to_stored",
    "azimuth_fraction_on_detector",
    "check_affine",
    "check_center",
    "check_centers",
    "check_mask",
]

_AFFINE_KEY = "General.affine_transformation"
_MASK_KEY = "General.mask"  # pyxem's key
#: Where per-position centres (descan) are stored: navigation shape + (2,), pixels, (x, y).
DESCAN_KEY = "Descan.center"


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

    Examples
    --------
    >>> from femlib.calibration import check_center
    >>> check_center((64.3, 62.7))
    array([64.3, 62.7])
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


def check_centers(centers, navigation_shape, detector_shape):
    """Validate per-position centres (descan): one (x, y) in pixels per probe position.

    Parameters
    ----------
    centers : array_like or HyperSpy signal
        Shape ``navigation_shape + (2,)`` (array order of the navigation, then x and y in
        pixels); a signal is read through its ``.data``.
    navigation_shape : tuple of int
        The scan's navigation shape in array order (rows, columns of the scan).
    detector_shape : tuple of 2 ints
        ``(rows, columns)`` of the detector.

    Returns
    -------
    ndarray of float64, shape ``navigation_shape + (2,)``

    Raises
    ------
    ValueError
        If the shape is not ``navigation_shape + (2,)``, a value is not finite, or a centre
        lies outside the detector (a descan larger than the detector allows).

    Examples
    --------
    >>> import numpy as np
    >>> from femlib.calibration import check_centers
    >>> c = np.zeros((2, 3, 2)) + (31.5, 30.0)
    >>> check_centers(c, (2, 3), (64, 64)).shape
    (2, 3, 2)
    """
    data = getattr(centers, "data", centers)
    if hasattr(data, "compute"):
        data = data.compute()
    nav = tuple(int(n) for n in navigation_shape)
    want = nav + (2,)
    try:
        c = np.array(data, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(
            f"center must be one (x, y) in pixels, or an array of shape {want} (navigation "
            f"shape + (2,)) with one (x, y) per probe position; got {centers!r}"
        ) from None
    if c.shape != want:
        raise ValueError(
            f"center must be one (x, y) in pixels, or an array of shape {want} (navigation "
            f"shape + (2,)) with one (x, y) per probe position; got shape {c.shape}"
        )
    bad = ~np.isfinite(c).all(axis=-1)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"center must be finite: {int(bad.sum())} probe position(s) have a NaN or "
            f"infinite centre, e.g. position {where}"
        )
    rows, cols = (int(n) for n in detector_shape)
    off = (c[..., 0] < -0.5) | (c[..., 0] > cols - 0.5) | (c[..., 1] < -0.5) | (
        c[..., 1] > rows - 0.5
    )
    if off.any():
        where = tuple(int(i) for i in np.argwhere(off)[0])
        x, y = c[where]
        raise ValueError(
            f"center of position {where} is ({x:.4g}, {y:.4g}) px, outside the detector "
            f"(x in [-0.5, {cols - 0.5}], y in [-0.5, {rows - 0.5}]): a descan larger than "
            "the detector allows"
        )
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

    Examples
    --------
    >>> from femlib.calibration import check_affine
    >>> check_affine([[1.0, 0.0], [0.0, 1.02]])
    array([[1.  , 0.  , 0.  ],
           [0.  , 1.02, 0.  ],
           [0.  , 0.  , 1.  ]])
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


def _divide_linear_part_by_det(matrix):
    m = np.array(matrix, dtype=float)
    m[:2, :2] = m[:2, :2] / np.linalg.det(m[:2, :2])
    return m


# The conversion is exact only up to rounding; remembering the matrices set in this session
# lets ``s.calibration.affine`` return exactly what was set (and keeps the weight cache hit).
_SET_AFFINES = {}


def affine_to_stored(affine):
    """femlib's affine in the form stored in ``metadata.General.affine_transformation``.

    femlib's ``A`` maps a pixel's offset from the centre to ring-circular coordinates
    (radius ``|A (p - c)| * scale``). pyxem 0.21 reads the stored matrix ``S`` the other
    way round: it maps its (counter-clockwise) integration polygons onto the detector
    with the adjugate of ``S``, so a pixel's ring-circular coordinates are
    ``S (p - c) / det(S)``. The two agree when ``S = A / det(A)`` (linear 2x2 part;
    the translation column is kept). The map is its own inverse
    (:func:`affine_from_stored` is the same operation).

    Parameters
    ----------
    affine : (3, 3) or (2, 2) array_like
        femlib's affine (see :func:`check_affine`).

    Returns
    -------
    (3, 3) ndarray of float64
        The matrix to store, in pyxem's meaning.

    Raises
    ------
    ValueError
        As :func:`check_affine`.

    Examples
    --------
    >>> import numpy as np
    >>> from femlib.calibration import affine_to_stored
    >>> affine_to_stored(np.diag([1.0, 1.25, 1.0]))  # stretch y by 25 %
    array([[0.8, 0. , 0. ],
           [0. , 1. , 0. ],
           [0. , 0. , 1. ]])
    """
    return _divide_linear_part_by_det(check_affine(affine))


def affine_from_stored(stored, name="metadata.General.affine_transformation"):
    """femlib's affine from the matrix stored in ``metadata.General.affine_transformation``.

    The inverse of :func:`affine_to_stored` (and the same operation): ``A = S / det(S)``
    on the linear 2x2 part. A matrix written there by pyxem 0.21 (for example the affine
    of its ``determine_ellipse``) thus gives femlib the geometry pyxem integrates with.

    Parameters
    ----------
    stored : (3, 3) or (2, 2) array_like
        The stored matrix.
    name : str
        Where it came from, for error messages.

    Returns
    -------
    (3, 3) ndarray of float64

    Raises
    ------
    ValueError
        If the stored matrix is not a finite invertible 3x3 (or 2x2) matrix.

    Examples
    --------
    >>> import numpy as np
    >>> from femlib.calibration import affine_from_stored
    >>> pyxem_affine = np.diag([1.0, 0.8, 1.0])  # pyxem: a circle shrunk by 0.8 along y
    >>> affine_from_stored(pyxem_affine)  # femlib: stretch x by 1.25, k of the major axis
    array([[1.25, 0.  , 0.  ],
           [0.  , 1.  , 0.  ],
           [0.  , 0.  , 1.  ]])
    """
    try:
        s = check_affine(stored)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    return _divide_linear_part_by_det(s)


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

    Examples
    --------
    >>> import numpy as np
    >>> from femlib.calibration import check_mask
    >>> check_mask(np.eye(2, dtype=np.uint8), (2, 2))
    array([[ True, False],
           [False,  True]])
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


def azimuth_fraction_on_detector(detector_shape, center, affine, scale, radii, n_azimuth=720):
    """Fraction of the azimuths of each ring that fall on the detector.

    Parameters
    ----------
    detector_shape : (int, int)
        ``(rows, columns)``.
    center : (2,) array_like
        Centre (x, y) in pixels.
    affine : (3, 3) array_like or None
        femlib's affine (pixel offsets -> circular coordinates).
    scale : (float, float)
        Calibrated size of a pixel along x and y.
    radii : array_like
        Ring radii in calibrated units.
    n_azimuth : int
        Azimuths sampled per ring.

    Returns
    -------
    ndarray, shape of ``radii``
        For each radius, the fraction of ``n_azimuth`` equally spaced azimuths whose
        point lies inside the detector (pixel edges included).

    Examples
    --------
    >>> from femlib.calibration import azimuth_fraction_on_detector
    >>> # centred on the detector's corner (pixel edges at -0.5): a quarter of each ring
    >>> azimuth_fraction_on_detector((100, 100), (-0.5, -0.5), None, (1.0, 1.0), [10.0])
    array([0.25])
    >>> azimuth_fraction_on_detector((100, 100), (49.5, 49.5), None, (1.0, 1.0), [10.0])
    array([1.])
    """
    radii = np.atleast_1d(np.asarray(radii, dtype=float))
    phi = (np.arange(n_azimuth) + 0.5) * (2 * np.pi / n_azimuth)
    u = radii[:, None] * np.cos(phi) / scale[0]  # corrected offsets, in pixels
    v = radii[:, None] * np.sin(phi) / scale[1]
    lin = np.eye(2) if affine is None else np.asarray(affine, dtype=float)[:2, :2]
    shift = np.zeros(2) if affine is None else np.asarray(affine, dtype=float)[:2, 2]
    inv = np.linalg.inv(lin)
    dx = inv[0, 0] * (u - shift[0]) + inv[0, 1] * (v - shift[1])
    dy = inv[1, 0] * (u - shift[0]) + inv[1, 1] * (v - shift[1])
    x, y = center[0] + dx, center[1] + dy
    rows, cols = detector_shape
    inside = (x >= -0.5) & (x <= cols - 0.5) & (y >= -0.5) & (y <= rows - 0.5)
    return inside.mean(axis=1)


class Calibration:
    """Calibration of a diffraction signal, reached as ``s.calibration``.

    Parameters
    ----------
    signal : hyperspy signal with two signal dimensions
        The signal whose axes and metadata hold the calibration.

    Examples
    --------
    >>> import numpy as np
    >>> import hyperspy.api as hs
    >>> s = hs.signals.Signal2D(np.ones((2, 3, 16, 20)))
    >>> s.set_signal_type("fem_diffraction")
    >>> s.calibration.center = (9.5, 7.5)          # (x, y) in pixels
    >>> s.calibration.affine = np.diag([1.0, 1.02, 1.0])
    >>> mask = np.zeros((16, 20), bool)
    >>> mask[:, :2] = True                          # True = excluded
    >>> s.calibration.mask = mask
    >>> s.calibration
    <Calibration center=(9.500, 7.500) px, scale=1 <undefined>, affine=set, mask=set>
    >>> s.isig[2:, 1:15].calibration.mask.shape     # the mask follows the crop
    (14, 18)

    One centre per probe position (descan), navigation shape + (2,):

    >>> centres = np.zeros((2, 3, 2)) + (9.5, 7.5)
    >>> centres[1, :, 0] += 0.6                     # the second scan row moved right
    >>> s.calibration.center = centres
    >>> s.calibration.center.shape, s.inav[2, 1].calibration.center.tolist()
    ((2, 3, 2), [10.1, 7.5])
    >>> s.calibration.geometry()["center"]          # the axes hold the mean centre
    array([9.8, 7.5])
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
    def _navigation_shape(self):
        return tuple(self._signal.axes_manager._navigation_shape_in_array)

    def _stored(self, key):
        """The array stored under ``metadata.<key>`` (a signal's data, computed if lazy), or
        None."""
        value = self._signal.metadata.get_item(key)
        if value is None:
            return None
        data = getattr(value, "data", value)
        return data.compute() if hasattr(data, "compute") else data

    @property
    def centers(self):
        """Per-position centres, navigation shape + ``(2,)`` (x, y pixels), or None.

        None when one centre serves every position (no descan), including when the stored
        array no longer matches the navigation shape (e.g. after ``s.sum()``, whose
        single pattern keeps the mean centre in its axes).
        """
        data = self._stored(DESCAN_KEY)
        if data is None:
            return None
        c = np.asarray(data, dtype=float)
        if c.shape != self._navigation_shape + (2,):
            return None
        return c.copy()

    @property
    def center(self):
        """Centre (x, y) in pixels, or one per probe position (descan); None sets the
        detector middle.

        One centre is stored as the signal axes' offsets, so the calibrated coordinate of a
        pixel is its distance from the centre. Per-position centres (an array of shape
        navigation shape + ``(2,)``, or a signal holding one, e.g. from ``find_centers``)
        are stored in ``metadata.Descan.center`` and follow ``inav``/``rebin``/save/load
        like the HAADF image; the axes' offsets then hold their mean. Reading returns what
        was set: the (2,) centre, or the per-position array. Setting per-position centres
        that are all equal stores the single centre (exactly today's geometry).
        """
        c = self.centers
        if c is not None:
            return c
        x, y = self._axes
        return np.array([-x.offset / x.scale, -y.offset / y.scale])

    @center.setter
    def center(self, value):
        if value is None:
            ny, nx = self.detector_shape
            value = ((nx - 1) / 2, (ny - 1) / 2)
        data = getattr(value, "data", value)
        if hasattr(data, "compute"):
            data = data.compute()
        if np.ndim(data) > 1:
            per = check_centers(data, self._navigation_shape, self.detector_shape)
            flat = per.reshape(-1, 2)
            if flat.shape[0] and np.all(flat == flat[0]):
                c = flat[0].copy()  # one centre for all: the single-centre path
                per = None
            else:
                c = flat.mean(axis=0)
        else:
            c = check_center(data)
            per = None
        md = self._signal.metadata
        if md.has_item(DESCAN_KEY):
            md.Descan.__delattr__("center")
            if not md.Descan.keys():
                md.__delattr__("Descan")
        for axis, ci in zip(self._axes, c, strict=True):
            axis.offset = -ci * axis.scale
        if per is not None:
            md.set_item(DESCAN_KEY, per)

    @property
    def affine(self):
        """(3, 3) ndarray or None: maps pixel offsets from the centre to circular rings.

        Stored in ``metadata.General.affine_transformation`` in pyxem's form
        (:func:`affine_to_stored`); reading converts back, so a matrix set by pyxem gives
        femlib pyxem's geometry and the reverse.
        """
        value = self._signal.metadata.get_item(_AFFINE_KEY)
        if value is None:
            return None
        stored = np.asarray(getattr(value, "data", value), dtype=float)
        exact = _SET_AFFINES.get(stored.tobytes()) if stored.shape == (3, 3) else None
        return exact.copy() if exact is not None else affine_from_stored(stored)

    @affine.setter
    def affine(self, value):
        md = self._signal.metadata
        if value is None:
            if md.has_item(_AFFINE_KEY):
                md.General.__delattr__("affine_transformation")
            return
        a = check_affine(value)
        stored = affine_to_stored(a)
        if len(_SET_AFFINES) > 256:
            _SET_AFFINES.clear()
        _SET_AFFINES[stored.tobytes()] = a
        md.set_item(_AFFINE_KEY, stored)

    @property
    def mask(self):
        """(rows, columns) bool ndarray or None: True marks excluded pixels.

        Read from ``metadata.General.mask`` (pyxem's key; a boolean or 0/1 array, or a
        signal holding one; non-zero = excluded, as pyxem reads it). Setting writes
        ``General.mask``.

        Raises
        ------
        ValueError
            If the stored mask does not have the detector's shape (e.g. a per-position
            mask); pass ``mask=`` explicitly to the method instead.
        """
        data = self._stored(_MASK_KEY)
        if data is None:
            return None
        m = np.asarray(data)
        if m.dtype != bool:
            if not (np.issubdtype(m.dtype, np.number) or m.dtype == object):
                raise TypeError(f"metadata.{_MASK_KEY} must be a boolean array, got {m.dtype}")
            m = m.astype(bool)  # pyxem excludes every non-zero pixel
        if m.shape != self.detector_shape:
            raise ValueError(
                f"metadata.{_MASK_KEY} has shape {m.shape} but the detector is "
                f"{self.detector_shape}: pass mask= explicitly, or set "
                "s.calibration.mask"
            )
        return m.copy()

    @mask.setter
    def mask(self, value):
        m = check_mask(value, self.detector_shape)
        general = self._signal.metadata.General
        if general.has_item("mask"):
            general.__delattr__("mask")
        if m is not None:
            self._signal.metadata.set_item(_MASK_KEY, m)

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
        center = self._mean_center()
        for axis in self._axes:
            axis.scale = value
        for axis, ci in zip(self._axes, center, strict=True):
            axis.offset = -ci * axis.scale

    def _mean_center(self):
        x, y = self._axes
        return np.array([-x.offset / x.scale, -y.offset / y.scale])

    @property
    def units(self):
        """Units of the signal axes, e.g. ``"nm^-1"``."""
        return self._axes[0].units

    @units.setter
    def units(self, value):
        for axis in self._axes:
            axis.units = value

    def geometry(self, mask=None):
        """The calibration as plain values for the integration engine.

        Parameters
        ----------
        mask : bool array, boolean signal or None
            A mask that replaces the stored one (the stored one is then not read at
            all). None: the stored mask.

        Returns
        -------
        dict
            ``detector_shape``, ``center`` (x, y pixels: the one centre, or the mean of the
            per-position centres), ``centers`` (``(N, 2)`` per-position centres in flat
            navigation order, or None when one centre serves every position), ``affine``
            (3x3 or None), ``scale`` (x, y), ``mask`` (bool array or None).

        Raises
        ------
        ValueError
            If the two signal axes have a zero or non-finite scale, or a mask has the
            wrong shape.
        """
        x, y = self._axes
        scale = (float(x.scale), float(y.scale))
        if not all(np.isfinite(scale)) or 0 in scale:
            raise ValueError(f"signal axes scale must be finite and non-zero, got {scale}")
        centers = self.centers
        if centers is not None:
            centers = check_centers(centers, self._navigation_shape, self.detector_shape)
        return {
            "detector_shape": self.detector_shape,
            "center": check_center(self._mean_center()),
            "centers": None if centers is None else centers.reshape(-1, 2),
            "affine": self.affine,
            "scale": scale,
            "mask": self.mask if mask is None else check_mask(mask, self.detector_shape),
        }

    def __repr__(self):
        c = self._mean_center()
        per = " (mean of per-position centres)" if self.centers is not None else ""
        return (
            f"<Calibration center=({c[0]:.3f}, {c[1]:.3f}) px{per}, scale={self.scale:g} "
            f"{self.units}, affine={'set' if self.affine is not None else 'identity'}, "
            f"mask={'set' if self.mask is not None else 'none'}>"
        )
