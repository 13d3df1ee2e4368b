"""A speckle-dominated synthetic FEM dataset with its noise-free truth.

``synthetic_fem`` has ``V(k)`` of about 0.01, where every estimator's shot-noise term is a
small correction. Real patterns of thin amorphous films, and above all of films with
nanocrystals, are speckle: at low ``k`` the ring holds few pixels, the intensity inside it
is close to exponentially distributed and ``V`` is 0.3-1. This model produces such data
with a counting detector, and keeps the noise-free patterns, so that the truth of every
estimator for any binning is the same estimator on them (the reference is computed with the
same weights, as for a simulation).
"""

import math

import numpy as np

from femlib.data._synthetic import _check_positive, _check_seed, _check_shape

__all__ = ["synthetic_speckle", "speckle_truth"]

_MIN_DETECTOR = 16
# Mean pattern relative to ``dose``: a flat floor and two amorphous rings (k in pixels of a
# 64-pixel detector, scaled with the detector).
_FLOOR = 0.35
_RINGS = ((1.0, 0.30, 0.06), (0.6, 0.62, 0.08))  # amplitude, k / k_max, sigma / k_max


def _check_contrast(contrast):
    try:
        lo, hi = (float(v) for v in contrast)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"contrast must be (inner, outer) speckle fractions in [0, 1], got {contrast!r}"
        ) from err
    if not (0 <= lo <= 1 and 0 <= hi <= 1):
        raise ValueError(
            f"contrast must be (inner, outer) speckle fractions in [0, 1], got {contrast!r}"
        )
    return lo, hi


def _speckle_field(rng, shape, size):
    """Unit-mean exponential speckle: ``|h * z|^2`` of white complex Gaussian noise ``z``
    filtered by a Gaussian ``h`` of ``size`` pixels (periodic), normalised by ``sum h^2``.
    Every pixel is exactly Exp(1); the intensity correlation length is ``size``."""
    ny, nx = shape
    z = rng.standard_normal((2, ny, nx))
    z = (z[0] + 1j * z[1]) / math.sqrt(2.0)
    qy = np.fft.fftfreq(ny)[:, None]
    qx = np.fft.fftfreq(nx)[None, :]
    # h(x) ~ exp(-x^2 / (2 (sqrt(2) size)^2)) makes |h * z|^2 correlated over ~ size.
    s2 = 2.0 * size * size
    transfer = np.exp(-2.0 * math.pi**2 * s2 * (qy**2 + qx**2))
    field = np.fft.ifft2(np.fft.fft2(z) * transfer)
    norm = np.sum(np.abs(np.fft.ifft2(transfer)) ** 2)  # sum h^2
    return np.abs(field) ** 2 / norm


def synthetic_speckle(
    navigation_shape=(16, 16),
    detector_shape=(64, 64),
    dose=1.0,
    speckle_size=1.0,
    contrast=(1.0, 0.5),
    gain=1.0,
    scale=0.125,
    seed=0,
):
    r"""Simulate speckle-dominated FEM patterns (counting detector) with their truth.

    Frame ``n`` records ``D_n(p) = G \, \mathcal{N}_n(p)``, ``\mathcal{N}`` Poisson with mean

    .. math:: \mu_n(p) = \mathrm{dose} \; f(k_p) \,
              \bigl[1 - \beta(k_p) + \beta(k_p)\, E_n(p)\bigr],

    where ``f`` is the mean profile (a floor and two rings, 1 at the first ring's peak),
    ``E_n`` an exponential speckle (every pixel exactly Exp(1), a new independent field per
    frame, intensity correlation length ``speckle_size`` pixels) and ``beta`` the speckle
    fraction, linear in ``k`` from ``contrast[0]`` at the centre to ``contrast[1]`` at the
    largest radius of a circle on the detector. A pixel's normalized variance is then
    ``beta^2`` (1 for fully developed speckle); ring-averaged estimators see less as the
    ring holds more speckles.

    The truth of any estimator, for any binning, is that estimator on the noise-free
    frames ``G mu_n`` (stored), without shot-noise correction: :func:`speckle_truth`.

    Parameters
    ----------
    navigation_shape : tuple of 2 int, default (16, 16)
        Scan (rows, columns).
    detector_shape : tuple of 2 int, default (64, 64)
        Detector (rows, columns), each at least 16.
    dose : float, default 1.0
        Electrons per pixel per frame at the first ring's peak.
    speckle_size : float, default 1.0
        Intensity correlation length of the speckle, pixels (> 0).
    contrast : (float, float), default (1.0, 0.5)
        Speckle fraction ``beta`` at the centre and at the edge, each in [0, 1].
    gain : float, default 1.0
        Detector units per electron.
    scale : float, default 0.125
        Reciprocal-space pixel size, nm^-1.
    seed : int or None, default 0
        Seed of every draw.

    Returns
    -------
    FEMDiffraction2D
        Float32 patterns, calibrated (``nm^-1``) with the true centre set;
        ``metadata.Simulation`` holds ``center`` (x, y, pixels), ``scale``, ``gain``,
        ``dose``, ``speckle_size``, ``contrast``, ``k`` and ``pixel_variance`` (``beta^2``
        on that grid), ``mean_pattern`` (``G dose f``) and ``noise_free`` (the frames
        ``G mu_n``, float64, the shape of the data).

    Raises
    ------
    ValueError
        For a detector side below 16, non-positive ``dose``, ``speckle_size``, ``gain`` or
        ``scale``, or a contrast outside [0, 1].
    TypeError
        For a non-numeric parameter or a bad seed.

    Examples
    --------
    >>> import femlib
    >>> s = femlib.data.synthetic_speckle((4, 4), (32, 32), dose=2.0, seed=1)
    >>> s.data.shape
    (4, 4, 32, 32)
    >>> truth = femlib.data.speckle_truth(s, npt=4, radial_range=(0.5, 1.8), method="r")
    >>> bool(truth.data[0] > 0.3)
    True
    """
    navigation_shape = _check_shape(navigation_shape, "navigation_shape", 1)
    detector_shape = _check_shape(detector_shape, "detector_shape", _MIN_DETECTOR)
    dose = _check_positive(dose, "dose")
    speckle_size = _check_positive(speckle_size, "speckle_size")
    gain = _check_positive(gain, "gain")
    scale = _check_positive(scale, "scale")
    lo, hi = _check_contrast(contrast)
    seed = _check_seed(seed)
    ny, nx = detector_shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    y, x = np.mgrid[0:ny, 0:nx].astype(float)
    radius = np.hypot(x - cx, y - cy)  # pixels
    kmax = min(cx, cy)
    u = radius / kmax
    profile = _FLOOR + sum(a * np.exp(-((u - k) ** 2) / (2 * w * w)) for a, k, w in _RINGS)
    beta = np.clip(lo + (hi - lo) * u, 0.0, 1.0)
    base = dose * profile
    n_frames = int(np.prod(navigation_shape))
    rng = np.random.default_rng(seed)
    noise_free = np.empty((n_frames, ny, nx))
    data = np.empty((n_frames, ny, nx), dtype=np.float32)
    for n in range(n_frames):
        speckle = _speckle_field(rng, detector_shape, speckle_size)
        mu = base * (1.0 - beta + beta * speckle)
        noise_free[n] = gain * mu
        data[n] = gain * rng.poisson(mu)

    from femlib.signals import FEMDiffraction2D

    axes = [
        {"name": name, "size": size, "scale": 1.0, "offset": 0.0, "units": "nm",
         "navigate": True}
        for name, size in zip(("y", "x"), navigation_shape, strict=True)
    ] + [
        {"name": name, "size": size, "scale": scale, "offset": 0.0, "units": "nm^-1",
         "navigate": False}
        for name, size in zip(("ky", "kx"), detector_shape, strict=True)
    ]
    shape = tuple(navigation_shape) + tuple(detector_shape)
    s = FEMDiffraction2D(data.reshape(shape), axes=axes)
    s.metadata.General.title = f"Synthetic speckle (seed {seed})"
    s.metadata.Signal.quantity = "Intensity (detector units)"
    s.calibration.center = (cx, cy)
    k_grid = np.round(np.arange(int(math.ceil(kmax * scale * 100)) + 1) * 0.01, 10)
    beta_k = np.clip(lo + (hi - lo) * k_grid / (kmax * scale), 0.0, 1.0)
    truth = {
        "center": np.array([cx, cy]),
        "scale": scale,
        "gain": gain,
        "dose": dose,
        "speckle_size": speckle_size,
        "contrast": (lo, hi),
        "k": k_grid,
        "pixel_variance": beta_k**2,
        "mean_pattern": gain * base,
        "noise_free": noise_free.reshape(shape),
        "seed": seed,
    }
    for key, value in truth.items():
        s.metadata.set_item(f"Simulation.{key}", value)
    return s


def speckle_truth(s, **kwargs):
    """The noise-free ``V(k)`` of a :func:`synthetic_speckle` dataset, for any binning.

    The same :meth:`~femlib.signals.FEMDiffraction2D.get_variance` on the stored noise-free
    frames ``metadata.Simulation.noise_free``, with the signal's calibration and without a
    shot-noise correction: the reference each corrected estimator must reproduce.

    Parameters
    ----------
    s : FEMDiffraction2D
        A dataset of :func:`synthetic_speckle` (or any signal with
        ``metadata.Simulation.noise_free`` of its data's shape).
    **kwargs
        Passed to ``get_variance`` (``npt``, ``radial_range``, ``method``, ``mask``, ...);
        ``gain`` and ``noise`` are refused (the truth has no shot noise).

    Returns
    -------
    FEMVariance1D

    Raises
    ------
    ValueError
        If ``s`` holds no noise-free frames of its shape, or ``gain``/``noise`` is given.

    Examples
    --------
    >>> import femlib
    >>> s = femlib.data.synthetic_speckle((4, 4), (32, 32), seed=2)
    >>> femlib.data.speckle_truth(s, npt=3, radial_range=(0.5, 1.8)).data.shape
    (3,)
    """
    for name in ("gain", "noise"):
        if kwargs.get(name) is not None:
            raise ValueError(f"speckle_truth takes no {name}: the truth has no shot noise")
    clean = s.metadata.get_item("Simulation.noise_free") if s.metadata.has_item(
        "Simulation.noise_free") else None
    if not isinstance(clean, np.ndarray) or clean.shape != tuple(s.data.shape):
        raise ValueError(
            "s must hold its noise-free frames in metadata.Simulation.noise_free (the shape "
            "of its data), as femlib.data.synthetic_speckle makes"
        )
    ref = s._deepcopy_with_new_data(clean)
    ref.metadata.Simulation.noise_free = None
    kwargs.setdefault("show_progressbar", False)
    return ref.get_variance(**kwargs)
