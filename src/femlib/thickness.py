"""Sample thickness from the HAADF signal and grouping of probe positions by thickness.

For an amorphous film the HAADF intensity is linear in thickness,
``HAADF_n = black_level + slope * t_n`` (Hwang & Voyles 2011), so
``t_n = (HAADF_n - black_level) / slope``. FEM variance is computed inside thickness bins
and the bins are averaged (Li et al. 2014), which removes the thickness contribution to
``V(k)``.

References
----------
Hwang & Voyles, Microsc. Microanal. 17 (2011) 67.
Li, Zhang, Besser, Kramer & Voyles, Microsc. Microanal. 20 (2014) 1605.
"""

import warnings

import numpy as np

__all__ = ["thickness_from_haadf", "thickness_from_pattern", "bin_by_thickness", "bin_labels"]


def _data(x):
    d = getattr(x, "data", x)
    if hasattr(d, "compute"):
        d = d.compute()
    return np.asarray(d, dtype=float)


def _number(value, name, units):
    """A real number given as a Python or NumPy scalar (or 0-d array); else TypeError."""
    v = np.asarray(value) if isinstance(value, np.ndarray) else value
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
    if isinstance(v, np.ndarray):
        ok = v.ndim == 0 and v.dtype.kind in "iuf"
    if not ok:
        raise TypeError(f"{name} must be a real number ({units}), got {value!r}")
    return float(v)


def thickness_from_haadf(haadf, black_level, slope):
    """Thickness per probe position from a HAADF image, ``t = (HAADF - black_level) / slope``.

    Parameters
    ----------
    haadf : hyperspy signal or array_like
        HAADF intensity over the probe positions, e.g. ``s.metadata.HAADF.intensity``
        (a numpy array in the real files and in :func:`femlib.data.synthetic_fem`, a
        signal in some others: both are accepted).
    black_level : float
        HAADF reading at zero thickness (detector units).
    slope : float
        HAADF units per nm of thickness; must be positive.

    Returns
    -------
    Same type as ``haadf``
        A signal (same axes, title "Thickness", units nm) for a signal input, else an
        ndarray, in nm.

    Raises
    ------
    TypeError
        If ``slope`` or ``black_level`` is not a real number (e.g. a string or a bool).
    ValueError
        If ``slope`` is not positive or not finite, ``black_level`` is not finite, or no
        position gives a finite thickness.

    Examples
    --------
    >>> import numpy as np
    >>> from femlib.thickness import thickness_from_haadf
    >>> thickness_from_haadf(np.array([26265.0, 26705.46]), 26265, 440.46)
    array([0., 1.])
    """
    slope = _number(slope, "slope", "HAADF units per nm")
    black_level = _number(black_level, "black_level", "HAADF units")
    if not np.isfinite(slope) or slope <= 0:
        raise ValueError(
            f"slope must be a finite positive number (HAADF units per nm), got {slope}"
        )
    if not np.isfinite(black_level):
        raise ValueError(f"black_level must be finite, got {black_level}")
    t = (_data(haadf) - black_level) / slope
    if not np.isfinite(t).any():
        raise ValueError("haadf gives no finite thickness (all values are NaN or inf)")
    if hasattr(haadf, "_deepcopy_with_new_data"):
        out = haadf._deepcopy_with_new_data(t)
        out.metadata.General.title = "Thickness"
        out.metadata.set_item("Signal.quantity", "Thickness (nm)")
        return out
    return t


def bin_by_thickness(thickness, bins):
    """Assign every probe position to a thickness bin.

    Parameters
    ----------
    thickness : hyperspy signal or array_like
        Thickness per probe position (nm).
    bins : int or sequence of float
        A number of equal-width bins between the smallest and largest finite thickness
        (the top edge is inclusive, so no position is lost), or increasing explicit edges.

    Returns
    -------
    index : ndarray of int, shape of ``thickness``
        Bin of every position; -1 for positions outside explicit edges or with a
        non-finite thickness (counted in a warning).
    edges : (n_bins + 1,) ndarray
        Bin edges in nm.

    Raises
    ------
    ValueError
        If ``bins`` is not a positive integer or an increasing sequence of at least two
        finite edges, or no thickness is finite.

    Examples
    --------
    >>> import numpy as np
    >>> from femlib.thickness import bin_by_thickness
    >>> idx, edges = bin_by_thickness(np.array([1.0, 2.0, 3.0, 4.0]), 2)
    >>> idx, edges
    (array([0, 0, 1, 1]), array([1. , 2.5, 4. ]))
    """
    t = _data(thickness)
    finite = np.isfinite(t)
    if not finite.any():
        raise ValueError("thickness has no finite value: cannot bin")
    if isinstance(bins, (int, np.integer)) and not isinstance(bins, bool):
        if bins < 1:
            raise ValueError(f"bins must be a positive integer or a sequence of edges, got {bins}")
        lo, hi = t[finite].min(), t[finite].max()
        if hi == lo:
            hi = lo + 1e-9 * max(abs(lo), 1.0)
        edges = np.linspace(lo, hi, int(bins) + 1)
    else:
        try:
            edges = np.asarray(bins, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(
                "bins must be a positive integer or a sequence of >= 2 finite edges, "
                f"got {bins!r}"
            ) from None
        if edges.ndim != 1 or edges.size < 2 or not np.all(np.isfinite(edges)):
            raise ValueError(
                f"bins must be a positive integer or a sequence of >= 2 finite edges, got {bins!r}"
            )
        if np.any(np.diff(edges) <= 0):
            raise ValueError(f"bins edges must be strictly increasing, got {edges}")
    nb = edges.size - 1
    index = np.full(t.shape, -1, dtype=np.int64)
    inside = finite & (t >= edges[0]) & (t <= edges[-1])
    index[inside] = np.clip(np.searchsorted(edges, t[inside], side="right") - 1, 0, nb - 1)
    excluded = int((~inside).sum())
    if excluded:
        warnings.warn(
            f"{excluded} of {t.size} probe positions are excluded from the thickness bins "
            f"({int((~finite).sum())} non-finite, {excluded - int((~finite).sum())} outside "
            f"[{edges[0]:.4g}, {edges[-1]:.4g}] nm)",
            UserWarning,
            stacklevel=2,
        )
    return index, edges


def bin_labels(edges, counts, units="nm"):
    """Legend labels such as ``"17.0–18.0 nm (n=812)"`` for thickness bins.

    Parameters
    ----------
    edges : (n_bins + 1,) array_like
    counts : (n_bins,) array_like of int
    units : str

    Returns
    -------
    list of str

    Examples
    --------
    >>> from femlib.thickness import bin_labels
    >>> bin_labels([17.0, 18.0, 19.0], [812, 0])
    ['17.0–18.0 nm (n=812)', '18.0–19.0 nm (n=0)']
    """
    return [
        f"{a:.1f}\u2013{b:.1f} {units} (n={int(n)})"
        for a, b, n in zip(edges[:-1], edges[1:], counts, strict=True)
    ]


def thickness_from_pattern(s, radial_range, mask=None, black_level=0.0, slope=None):
    """Thickness per probe position from the high-angle scattering in the patterns themselves.

    With no HAADF detector, the mean intensity of an annulus at high scattering vector
    (beyond the amorphous rings) plays its role: for a thin amorphous film it is linear in
    thickness like the HAADF signal (Hwang & Voyles 2011). The annulus uses the same exact
    pixel-splitting weights as the azimuthal integrals, and the patterns are read once,
    chunk by chunk for lazy data.

    Parameters
    ----------
    s : femlib.signals.FEMDiffraction2D or LazyFEMDiffraction2D
        The patterns, with their calibration (centre, affine) set.
    radial_range : (float, float)
        Inner and outer radius of the annulus in the signal's calibrated units (e.g.
        ``nm^-1``); choose it beyond the rings, where the modulation is weak.
    mask : bool array, boolean Signal2D or None
        Detector pixels to exclude (True). Default: ``s.calibration.mask``.
    black_level : float
        Annulus mean intensity at zero thickness (detector units per pixel), subtracted
        first.
    slope : float or None
        Annulus mean intensity per nm of thickness. None returns the relative thickness
        ``(I_n - black_level) / mean_n(I_n - black_level)`` (mean 1 over the finite
        positions); a number returns ``(I_n - black_level) / slope`` in nm.

    Returns
    -------
    hyperspy Signal2D (or BaseSignal for other navigation dimensions)
        The thickness over the navigation axes of ``s`` (the navigation axes become its
        signal axes, as for ``metadata.HAADF.intensity``), computed (not lazy) also for
        lazy ``s``; accepted by ``get_variance(thickness=...)``. Title "Thickness",
        ``metadata.Signal.quantity`` "Thickness (nm)" or "Relative thickness".

    Raises
    ------
    ValueError
        If the annulus holds no unmasked pixel, ``radial_range`` is reversed or off the
        detector, ``slope`` is 0 or not finite, ``black_level`` is not finite, or the
        relative thickness is undefined (mean intensity minus black level not positive).

    References
    ----------
    Hwang & Voyles, Microsc. Microanal. 17 (2011) 67.

    Examples
    --------
    >>> import femlib
    >>> s = femlib.data.synthetic_fem(navigation_shape=(4, 6), detector_shape=(32, 32),
    ...                               scale=0.56, seed=1)
    >>> t = femlib.thickness.thickness_from_pattern(s, radial_range=(8.0, 8.8))
    >>> t.data.shape, round(float(t.data.mean()), 6)
    ((4, 6), 1.0)
    """
    if slope is not None:
        try:
            slope = float(slope)
        except (TypeError, ValueError):
            raise ValueError(
                f"slope must be a number (intensity per pixel per nm) or None, got {slope!r}"
            ) from None
        if not np.isfinite(slope) or slope == 0:
            raise ValueError(f"slope must be a finite non-zero number or None, got {slope}")
    try:
        black_level = float(black_level)
    except (TypeError, ValueError):
        raise ValueError(f"black_level must be a number, got {black_level!r}") from None
    if not np.isfinite(black_level):
        raise ValueError(f"black_level must be finite, got {black_level}")
    if radial_range is None:
        raise ValueError("radial_range must be (inner, outer) radii in calibrated units")
    w = s._weights(1, 1, radial_range, None, mask)
    if not w.area.sum() > 0:
        lo, hi = w.radial_edges[[0, -1]]
        raise ValueError(
            f"the annulus radial_range=({lo:.4g}, {hi:.4g}) contains no unmasked pixel: "
            "widen it, move it onto the detector or check the mask"
        )
    # npt=1 with mean=True is the pixel-split annulus mean, as in get_azimuthal_integral1d.
    mean = s._integral_signal(w, False, True, False, False)
    if mean._lazy:
        mean.compute(show_progressbar=False)
    intensity = np.asarray(mean.data[..., 0], dtype=float) - black_level
    if slope is None:
        finite = np.isfinite(intensity)
        ref = intensity[finite].mean() if finite.any() else np.nan
        if not ref > 0:
            raise ValueError(
                "the annulus mean intensity minus black_level is not positive on average "
                f"({ref:.4g}): the relative thickness is undefined"
            )
        t = intensity / ref
        quantity = "Relative thickness"
    else:
        t = intensity / slope
        quantity = "Thickness (nm)"
    # The navigation axes of the annulus means become signal axes, as for the HAADF image;
    # only the title and quantity are kept (not the patterns' simulation or HAADF metadata).
    out = mean.isig[0].T
    out.data = t
    for key in list(out.metadata.as_dictionary()):
        if key not in ("General", "Signal"):
            out.metadata.__delattr__(key)
    out.metadata.General.title = "Thickness"
    out.metadata.set_item("Signal.quantity", quantity)
    return out
