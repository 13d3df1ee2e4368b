"""A seeded synthetic 4D-STEM dataset of an amorphous sample, with its ground truth."""

import math
import numbers

import numpy as np

__all__ = ["synthetic_fem", "synthetic_flat_field"]

# Mean pattern, as intensity density in electrons per nm^-2 up to the normalisation by the dose
# (the amplitudes are electrons per pixel per frame at the default dose and scale).
_DIRECT_BEAM = (400.0, 0.10)  # amplitude, Gaussian sigma (nm^-1)
_BACKGROUND = ((30.0, 1.5), (9.0, 10.0))  # amplitude, decay length (nm^-1)
_RINGS = ((2.0, 2.6, 0.30), (12.0, 4.3, 0.35), (4.0, 7.4, 0.50))  # amplitude, k, sigma
# Structural modulation components: k_j (nm^-1), v_j (variance), w_j (nm^-1).
_MODULATION = ((3.7, 0.004, 0.30), (4.6, 0.007, 0.35), (7.0, 0.003, 0.50))
# The right half of the scan with ``two_regions=True``: another structure (same number of
# components, so the random draws are the same).
_MODULATION_RIGHT = ((3.9, 0.002, 0.30), (5.0, 0.010, 0.40), (7.3, 0.004, 0.50))

_DEFAULT_DOSE = 3.4e5  # electrons per frame over the whole diffraction plane
_DEFAULT_ROTATION = float(np.deg2rad(30.0))  # radians
_BLACK_LEVEL = 26265.0
_SLOPE = 440.46  # HAADF counts per nm of thickness
_MEAN_THICKNESS = 30.0  # nm
_THICKNESS_GRADIENT = (0.20, 0.02)  # peak-to-peak relative change along scan x, scan y
_HAADF_NOISE = 0.02  # nm-equivalent standard deviation of the HAADF noise
_SCAN_STEP = 1.0  # nm
_BEAM_STOP_RADIUS = 1.3  # nm^-1
_BEAM_STOP_ARM_WIDTH = 5.0  # pixels
_BEAM_STOP_ARM_ANGLE = np.deg2rad(115.0)  # from +x toward +y
_BEAM_STOP_TRANSMISSION = 1e-3
_N_DEAD_PIXELS = 10
_SUBPIXELS = 3  # the pattern is averaged over 3x3 samples per pixel
_CHUNK_BYTES = 48e6  # target size of one lazy chunk
_DEFAULT_CENTER_SHIFT = (0.87, -0.69)  # true centre minus detector middle, per 128 pixels
_MIN_DETECTOR = 16
# Real-scan artefacts (off by default).
_SPOT_K = 4.3  # nm^-1: Bragg spots of a nanocrystal on the strongest ring
_SPOT_SIGMA = 0.2  # nm^-1, Gaussian width of a spot (about a nanobeam's disc)
_SPOT_CONTRAST = 30.0  # spot peak / mean intensity density of the pattern at _SPOT_K
_HOT_RANGE = (3.0, 5.75)  # nm^-1: hot pixels lie in this corrected-radius range
_HOT_AMPLITUDE = (0.25, 8.0)  # telegraph offset / mean detector value of the pixel
_HOT_FLIP = 0.1  # probability per frame that a hot pixel switches state


def _profile(k):
    """Relative intensity density of the mean pattern at corrected radius ``k`` (nm^-1)."""
    k = np.asarray(k, dtype=float)
    amp, sigma = _DIRECT_BEAM
    f = amp * np.exp(-(k**2) / (2 * sigma**2))
    for amp, length in _BACKGROUND:
        f = f + amp * np.exp(-k / length)
    for amp, k0, sigma in _RINGS:
        f = f + amp * np.exp(-((k - k0) ** 2) / (2 * sigma**2))
    return f


def _profile_integral():
    """``F = ∫ f(k) d²k`` over the whole plane (nm^-2 times the amplitude units), in closed form.

    Uses ``∫_0^∞ 2πk exp(-k/L) dk = 2πL²`` and, for a ring,
    ``∫_0^∞ 2πk exp(-(k-k0)²/2σ²) dk = 2π[σ² exp(-k0²/2σ²) + k0 σ √(π/2) (1 + erf(k0/(σ√2)))]``.
    """
    amp, sigma = _DIRECT_BEAM
    total = 2 * math.pi * amp * sigma**2
    for amp, length in _BACKGROUND:
        total += 2 * math.pi * amp * length**2
    for amp, k0, sigma in _RINGS:
        total += (
            2
            * math.pi
            * amp
            * (
                sigma**2 * math.exp(-(k0**2) / (2 * sigma**2))
                + k0 * sigma * math.sqrt(math.pi / 2) * (1 + math.erf(k0 / (sigma * math.sqrt(2))))
            )
        )
    return total


def _true_variance(k, components):
    """``V_true(k) = Σ_j v_j exp(-(k-k_j)²/w_j²)``."""
    k = np.asarray(k, dtype=float)
    v = np.zeros_like(k)
    for kj, vj, wj in components:
        v += vj * np.exp(-((k - kj) ** 2) / wj**2)
    return v


def _distortion_affine(ellipticity, rotation):
    """``A = R(θ) · diag(1, 1 + ellipticity) · R(-θ)`` embedded in a 3x3 matrix."""
    c, s = math.cos(rotation), math.sin(rotation)
    rot = np.array([[c, -s], [s, c]])
    a = np.eye(3)
    a[:2, :2] = rot @ np.diag([1.0, 1.0 + ellipticity]) @ rot.T
    return a


def _corrected_radius(x, y, center, affine, scale):
    """``|A[:2, :2] · (p - c)| · scale`` for pixel coordinates ``x`` (column), ``y`` (row)."""
    dx = x - center[0]
    dy = y - center[1]
    a = affine[:2, :2]
    u = a[0, 0] * dx + a[0, 1] * dy
    v = a[1, 0] * dx + a[1, 1] * dy
    return np.hypot(u, v) * scale


def _beam_stop(detector_shape, center, scale):
    """Boolean map of the pixels whose centre lies behind the beam stop (disk plus arm)."""
    ny, nx = detector_shape
    y, x = np.mgrid[0:ny, 0:nx].astype(float)
    dx = x - center[0]
    dy = y - center[1]
    disk = np.hypot(dx, dy) <= _BEAM_STOP_RADIUS / scale
    ux, uy = math.cos(_BEAM_STOP_ARM_ANGLE), math.sin(_BEAM_STOP_ARM_ANGLE)
    along = dx * ux + dy * uy
    across = -dx * uy + dy * ux
    arm = (along >= 0) & (np.abs(across) <= _BEAM_STOP_ARM_WIDTH / 2)
    return disk | arm


def _subpixel_grid(detector_shape):
    """Sub-pixel sample coordinates ``x`` (column), ``y`` (row), broadcast to (ny, nx, S, S)."""
    ny_det, nx_det = detector_shape
    offsets = (np.arange(_SUBPIXELS) - (_SUBPIXELS - 1) / 2) / _SUBPIXELS
    y = np.arange(ny_det)[:, None, None, None] + offsets[None, None, :, None]
    x = np.arange(nx_det)[None, :, None, None] + offsets[None, None, None, :]
    return x, y


def _pattern_terms(center, detector_shape, affine, scale, dose, components, transmission):
    """Expected counts ``base`` (P,) and modulation basis (J, P) of a pattern centred on
    ``center`` (x, y) px, averaged over the sub-pixel samples, times the fixed detector
    ``transmission`` (beam stop, dead pixels)."""
    x, y = _subpixel_grid(detector_shape)
    k_sub = _corrected_radius(x, y, center, affine, scale)  # (ny, nx, S, S)
    pixel_area = scale**2 * abs(np.linalg.det(affine[:2, :2]))
    lam_sub = dose * pixel_area / _profile_integral() * _profile(k_sub)
    base = lam_sub.mean(axis=(2, 3)).ravel() * transmission
    basis = np.empty((len(components), detector_shape[0] * detector_shape[1]))
    for j, (kj, vj, wj) in enumerate(components):
        shape_j = np.sqrt(vj) * np.exp(-((k_sub - kj) ** 2) / (2 * wj**2))
        basis[j] = (lam_sub * shape_j).mean(axis=(2, 3)).ravel() * transmission
    return base, basis


def _spot_terms(center, angles, detector_shape, affine, scale, dose, transmission):
    """Expected counts (P,) of the Bragg spots of a crystalline frame: Gaussians of
    ``_SPOT_SIGMA`` at corrected radius ``_SPOT_K`` and azimuths ``angles``, peak
    ``_SPOT_CONTRAST`` times the mean pattern's intensity density at that radius, averaged
    over the sub-pixel samples like the rest of the pattern."""
    x, y = _subpixel_grid(detector_shape)
    a = affine[:2, :2]
    dx, dy = x - center[0], y - center[1]
    u = (a[0, 0] * dx + a[0, 1] * dy) * scale
    v = (a[1, 0] * dx + a[1, 1] * dy) * scale
    density = np.zeros(u.shape)
    for phi in angles:
        du, dv = u - _SPOT_K * math.cos(phi), v - _SPOT_K * math.sin(phi)
        density += np.exp(-(du**2 + dv**2) / (2 * _SPOT_SIGMA**2))
    density *= _SPOT_CONTRAST * float(_profile(_SPOT_K))
    pixel_area = scale**2 * abs(np.linalg.det(a))
    lam = dose * pixel_area / _profile_integral() * density
    return lam.mean(axis=(2, 3)).ravel() * transmission


class _Artefacts:
    """Real-scan artefacts of :func:`synthetic_fem`, applied frame by frame in
    :func:`_simulate_rows`: per-position centres (descan) under the fixed beam stop, Bragg
    spots on crystalline positions, and random-telegraph offsets on hot pixels."""

    def __init__(self, geometry, center, centers, crystal, spot_angles, hot_index,
                 hot_amplitude, hot_state):
        self.geometry = geometry  # (detector_shape, affine, scale, dose, components, T)
        self.center = center  # (2,) the centre without descan
        self.centers = centers  # (ny, nx, 2) or None
        self.crystal = crystal  # (ny, nx) bool
        self.spot_angles = spot_angles  # (ny, nx, 4)
        self.hot_index = hot_index  # (H,) flat pixel indices
        self.hot_amplitude = hot_amplitude  # (H,) detector units
        self.hot_state = hot_state  # (ny, nx, H) bool

    def expected(self, row, cols, base, basis, coefficients):
        """Expected electrons per pixel of the frames ``cols`` of scan row ``row``."""
        c = coefficients[row, cols]
        if self.centers is None:
            lam = base[None, :] + c @ basis
        else:
            lam = np.empty((c.shape[0], base.size))
            for i, col in enumerate(range(cols.start, cols.stop)):
                b, bb = _pattern_terms(self.centers[row, col], *self.geometry)
                lam[i] = b + c[i] @ bb
        detector_shape, affine, scale, dose, _, transmission = self.geometry
        for i, col in enumerate(range(cols.start, cols.stop)):
            if self.crystal[row, col]:
                centre = self.center if self.centers is None else self.centers[row, col]
                lam[i] += _spot_terms(
                    centre, self.spot_angles[row, col], detector_shape, affine, scale, dose,
                    transmission,
                )
        return lam

    def add_offsets(self, row, cols, values):
        """Telegraph offsets (detector units) added to the hot pixels of these frames."""
        if self.hot_index.size:
            values = np.asarray(values, dtype=np.float64)
            values[:, self.hot_index] += self.hot_amplitude * self.hot_state[row, cols]
        return values


def _descan_centers(descan, center, navigation_shape, detector_shape):
    """Per-position centres (ny, nx, 2) of a linear descan, or None for no descan.

    ``descan`` is the shift (dx, dy) px of the pattern at the far scan corner relative to
    the first position (a float ``d`` is ``(0.8 d, -0.6 d)``); in between the shift is the
    plane ``(dx (3 fx + fy) / 4, dy (fx + 3 fy) / 4)``, ``fx``, ``fy`` in [0, 1] the
    fractional scan column and row, so that both components vary along both scan axes.
    """
    if descan is None:
        return None
    if isinstance(descan, numbers.Real) and not isinstance(descan, bool):
        d = float(descan)
        shift = np.array([0.8 * d, -0.6 * d])
    else:
        try:
            shift = np.array(descan, dtype=float)
        except (TypeError, ValueError):
            shift = np.zeros(0)
        if shift.shape != (2,):
            raise TypeError(
                "descan must be None, a float (px at the far scan corner) or a pair "
                f"(dx, dy) px, got {descan!r}"
            )
    if not np.all(np.isfinite(shift)):
        raise ValueError(f"descan must be finite, got {tuple(shift.tolist())}")
    if not shift.any():
        return None
    limit = min(detector_shape) / 8
    if np.hypot(*shift) > limit:
        raise ValueError(
            f"descan of {np.hypot(*shift):.3g} px at the far corner is larger than this "
            f"detector allows (at most {limit:.3g} px, 1/8 of {min(detector_shape)} pixels: "
            "the pattern must stay around the beam stop)"
        )
    ny, nx = navigation_shape
    fx = (np.arange(nx) / (nx - 1) if nx > 1 else np.zeros(1))[None, :]
    fy = (np.arange(ny) / (ny - 1) if ny > 1 else np.zeros(1))[:, None]
    centers = np.empty((ny, nx, 2))
    centers[..., 0] = center[0] + shift[0] * (3 * fx + fy) / 4
    centers[..., 1] = center[1] + shift[1] * (fx + 3 * fy) / 4
    hi = np.array([detector_shape[1] - 1, detector_shape[0] - 1])
    if (centers < 0).any() or (centers > hi).any():
        raise ValueError(
            f"descan {tuple(shift.tolist())} px moves the centre off the detector; "
            "use a smaller descan or a centre further from the edge"
        )
    return centers


def _check_fraction(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _check_count(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise TypeError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _make_artefacts(geometry, center, centers, crystals, hot_pixels, navigation_shape, stop,
                    dead, base, gain, seed):
    """The :class:`_Artefacts` of a scan, or None when it has none (the clean data).

    Each artefact draws from its own generator, so adding one leaves the others' draws (and
    the clean scan's) unchanged."""
    if centers is None and crystals == 0 and hot_pixels == 0:
        return None
    ny, nx = navigation_shape
    n_frames = ny * nx
    rng = np.random.default_rng([seed, 0, 1])
    crystal = np.zeros(n_frames, bool)
    crystal[rng.choice(n_frames, size=int(round(crystals * n_frames)), replace=False)] = True
    phi0 = rng.uniform(0.0, 2 * math.pi, n_frames)
    delta = rng.uniform(math.pi / 6, 5 * math.pi / 6, n_frames)
    angles = np.stack([phi0, phi0 + math.pi, phi0 + delta, phi0 + delta + math.pi], axis=1)
    detector_shape, affine, scale = geometry[:3]
    rng = np.random.default_rng([seed, 0, 2])
    y, x = np.mgrid[0 : detector_shape[0], 0 : detector_shape[1]].astype(float)
    k = _corrected_radius(x, y, center, affine, scale).ravel()
    ok = ~stop.ravel() & (k >= _HOT_RANGE[0]) & (k <= _HOT_RANGE[1])
    ok[dead] = False
    candidates = np.flatnonzero(ok)
    if hot_pixels > candidates.size:
        raise ValueError(
            f"hot_pixels={hot_pixels} but only {candidates.size} pixels lie in the range "
            f"{_HOT_RANGE} nm^-1 of this detector"
        )
    hot = np.sort(rng.choice(candidates, size=hot_pixels, replace=False))
    amplitude = rng.uniform(*_HOT_AMPLITUDE, size=hot_pixels) * gain * base[hot]
    start = rng.random(hot_pixels) < 0.5
    flips = rng.random((n_frames, hot_pixels)) < _HOT_FLIP
    state = start[None, :] ^ (np.cumsum(flips, axis=0) % 2 == 1)
    return _Artefacts(
        geometry, center, centers, crystal.reshape(ny, nx), angles.reshape(ny, nx, 4), hot,
        amplitude, state.reshape(ny, nx, hot_pixels),
    )


def _artefact_truth(artefacts, center, centers, navigation_shape, dead, detector_shape):
    """The artefacts' ground truth for ``metadata.Simulation`` (also for a clean scan)."""
    ny, nx = navigation_shape
    if centers is None:
        centers = np.broadcast_to(np.asarray(center, float), (ny, nx, 2)).copy()
    descan = centers[-1, -1] - centers[0, 0]
    hot_mask = np.zeros(detector_shape, bool)
    if artefacts is None:
        crystal = np.zeros(navigation_shape, bool)
        hot = np.zeros(0, np.int64)
        amplitude = np.zeros(0)
    else:
        crystal = artefacts.crystal.copy()
        hot, amplitude = artefacts.hot_index, artefacts.hot_amplitude
    hot_y, hot_x = np.unravel_index(hot, detector_shape)
    hot_mask.ravel()[hot] = True
    bad = hot_mask.copy()
    bad.ravel()[dead] = True
    return {
        "descan": descan,
        "centers": centers,
        "crystals": crystal,
        "outliers": crystal.copy(),
        "hot_pixels": np.stack([hot_x, hot_y], axis=1).reshape(-1, 2),
        "hot_pixel_amplitude": np.asarray(amplitude, dtype=float),
        "hot_pixel_mask": hot_mask,
        "bad_pixels": bad,
    }


def _thickness_map(navigation_shape, gradient):
    """Thickness (nm) per probe position: linear ramps along scan x (±10 %) and y (±1 %)."""
    ny, nx = navigation_shape
    if not gradient:
        return np.full(navigation_shape, _MEAN_THICKNESS)
    gx, gy = _THICKNESS_GRADIENT
    fx = np.linspace(-0.5, 0.5, nx) if nx > 1 else np.zeros(1)
    fy = np.linspace(-0.5, 0.5, ny) if ny > 1 else np.zeros(1)
    return _MEAN_THICKNESS * (1 + gx * fx[None, :] + gy * fy[:, None])


def _psf_profile(sigma):
    """1D charge profile of the detector PSF: a Gaussian of ``sigma`` pixels integrated over
    each pixel, truncated at ``ceil(4 sigma) + 1`` pixels and normalised to sum 1 (the 2D PSF
    is its outer product with itself). ``sigma = 0`` gives ``[1.0]``."""
    if sigma == 0:
        return np.ones(1)
    half = int(math.ceil(4 * sigma)) + 1
    edges = (np.arange(-half, half + 2) - 0.5) / (sigma * math.sqrt(2))
    cdf = np.array([math.erf(e) for e in edges])
    profile = np.diff(cdf)
    return profile / profile.sum()


def _apply_psf(counts, profile):
    """Spread electron counts ``(..., rows, cols)`` with the separable PSF ``profile``.

    Charge is conserved except what spreads past the detector edge, which is lost (zero
    padding), as on a real detector.
    """
    if profile.size == 1:
        return counts
    from scipy.ndimage import convolve1d

    out = convolve1d(counts.astype(np.float64), profile, axis=-1, mode="constant")
    return convolve1d(out, profile, axis=-2, mode="constant")


def _simulate_rows(
    start, stop, base, basis, coefficients, tau, seed, gain, dtype, frame_shape, psf=None,
    artefacts=None,
):
    """Frames of scan rows ``start`` to ``stop``: ``gain · (h ∗ Poisson(λ_n))``.

    Each row draws from its own generator ``default_rng([seed, row])``, so a frame does not
    depend on how the rows are grouped into chunks. Within a row the frames are drawn a few at a
    time to bound the float64 temporaries (about 8 MB); a ``Generator`` consumes its stream
    sequentially, so this gives the same numbers as one draw for the whole row.

    ``artefacts`` (an :class:`_Artefacts` or None) replaces the fixed ``base``/``basis`` by
    each frame's own (descan), adds Bragg spots to the expected counts of its crystalline
    frames and telegraph offsets to its hot pixels after the gain; None gives the clean data.
    """
    nx = tau.shape[1]
    npix = base.size
    out = np.empty((stop - start, nx, npix), dtype=dtype)
    integer = np.issubdtype(dtype, np.integer)
    top = np.iinfo(dtype).max if integer else None
    step = max(1, 2**20 // npix)
    for i, row in enumerate(range(start, stop)):
        rng = np.random.default_rng([seed, row])
        for j in range(0, nx, step):
            cols = slice(j, min(j + step, nx))
            if artefacts is None:
                lam = base[None, :] + coefficients[row, cols] @ basis  # (frames, pixels)
            else:
                lam = artefacts.expected(row, cols, base, basis, coefficients)
            lam *= tau[row, cols, None]
            np.maximum(lam, 0.0, out=lam)  # exact zeros stay zeros; guards rounding only
            if psf is None:
                values = gain * rng.poisson(lam)
            else:
                counts = rng.poisson(lam).reshape((-1,) + tuple(frame_shape))
                values = gain * _apply_psf(counts, psf).reshape(counts.shape[0], npix)
            if artefacts is not None:
                values = artefacts.add_offsets(row, cols, values)
            if integer:
                values = np.minimum(np.rint(values), top)
            out[i, cols] = values
    return out.reshape((stop - start, nx) + tuple(frame_shape))


def _check_shape(value, name, minimum):
    try:
        shape = tuple(value)
    except TypeError:
        shape = ()
    if not (
        len(shape) == 2
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in shape)
        and min(shape) >= minimum
    ):
        raise ValueError(
            f"{name} must be a tuple of two integers >= {minimum} (rows, columns), got {value!r}"
        )
    return tuple(int(v) for v in shape)


def _check_positive(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def _check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError as err:
        raise TypeError(
            f"dtype must be a numpy float or integer dtype (e.g. 'float32', 'uint16'), "
            f"got {dtype!r}"
        ) from err
    if dt.kind not in "fiu":
        raise TypeError(
            f"dtype must be a numpy float or integer dtype (e.g. 'float32', 'uint16'), got {dt}"
        )
    return dt


def _check_seed(seed):
    if seed is None:
        return int(np.random.SeedSequence().entropy)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(f"seed must be a non-negative integer or None, got {seed!r}")
    return int(seed)


def _check_psf_sigma(value, name="psf_sigma"):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a non-negative real number (pixels), got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (pixels), got {value}")
    return value


def _rows_per_chunk(chunks, navigation_shape, frame_shape, itemsize):
    ny, nx = navigation_shape
    full = (nx,) + tuple(frame_shape)
    if chunks is None:
        return int(min(ny, max(1, _CHUNK_BYTES // (np.prod(full) * itemsize))))
    if isinstance(chunks, numbers.Integral) and not isinstance(chunks, bool):
        rows = int(chunks)
    else:
        try:
            chunks = tuple(chunks)
        except TypeError:
            chunks = None
        if (
            chunks is None
            or len(chunks) != 4
            or any(c not in (-1, None, f) for c, f in zip(chunks[1:], full, strict=True))
            or isinstance(chunks[0], bool)
            or not isinstance(chunks[0], numbers.Integral)
        ):
            raise ValueError(
                "chunks must be None, an int (scan rows per chunk) or a tuple "
                f"(rows, {nx}, {frame_shape[0]}, {frame_shape[1]}) of whole scan rows, "
                f"got {chunks!r}"
            )
        rows = int(chunks[0])
    if rows == -1:
        rows = ny
    if rows < 1:
        raise ValueError(f"chunks must give at least one scan row per chunk, got {rows}")
    return min(rows, ny)


def synthetic_fem(
    navigation_shape=(40, 40),
    detector_shape=(128, 128),
    dose=_DEFAULT_DOSE,
    gain=4.2,
    ellipticity=0.02,
    rotation=_DEFAULT_ROTATION,
    center=None,
    scale=0.14,
    modulation=True,
    thickness_gradient=True,
    seed=0,
    dtype="float32",
    lazy=False,
    chunks=None,
    two_regions=False,
    psf_sigma=0.0,
    descan=None,
    crystals=0.0,
    hot_pixels=0,
):
    r"""Simulate a 4D-STEM FEM dataset of an amorphous film, with its ground truth.

    The patterns have elliptically distorted amorphous rings around an off-centre direct beam
    hidden by a beam stop, dead pixels, a thickness gradient across the scan, a structural
    modulation of known normalized variance, and Poisson shot noise times a detector gain.
    The returned signal's calibration is left at the detector middle (no affine): finding the
    centre and the distortion is the user's job, the truth is in ``metadata.Simulation``.

    **Model.** Pixel ``p`` (column ``x``, row ``y``) has the corrected radius

    .. math:: k_p = \lVert A_{2\times2} (p - c) \rVert \, s,
              \qquad A = R(\theta)\,\mathrm{diag}(1, 1 + e)\,R(-\theta),

    with ``c`` the true centre, ``s = scale``, ``e = ellipticity`` and ``θ = rotation`` the
    direction of the major axis of the ring ellipses (from +x toward +y): ``A`` maps the
    ellipses onto circles of radius equal to their major semi-axis, so on the detector the
    minor axis lies along ``θ + 90°``. The mean pattern is the intensity density

    .. math:: f(k) = 400\, e^{-k^2/2(0.1)^2} + 30\, e^{-k/1.5} + 9\, e^{-k/10}
              + \sum_i a_i\, e^{-(k - k_i)^2 / 2\sigma_i^2},

    rings ``(a_i, k_i, σ_i)`` = (2, 2.6, 0.30), (12, 4.3, 0.35), (4, 7.4, 0.50) (``k`` in
    nm^-1), normalised so that the whole diffraction plane receives ``dose`` electrons per frame:
    ``λ0(k) = dose · f(k) / F · s² |det A|`` electrons per pixel, ``F = ∫ f d²k`` (closed form).
    At the defaults the amplitudes are electrons per pixel per frame: about 20 on the first ring,
    6 at ``k = 8`` and 2.5 in the detector corners. The structural modulation of frame ``n`` is

    .. math:: \varepsilon_n(k) = \sum_j c_{nj} \sqrt{v_j}\, e^{-(k - k_j)^2 / 2 w_j^2},
              \qquad c_{nj} \sim \mathcal{U}[-\sqrt3, \sqrt3]

    (unit variance, bounded so that intensities stay positive), with ``(k_j, v_j, w_j)`` =
    (3.7, 0.004, 0.30), (4.6, 0.007, 0.35), (7.0, 0.003, 0.50); it is radially symmetric in
    corrected ``k`` and its true normalized variance is

    .. math:: V_\mathrm{true}(k) = \sum_j v_j\, e^{-(k - k_j)^2 / w_j^2}

    (peak 0.0070 at 4.6 nm^-1). The detector image of frame ``n`` is

    .. math:: D_n(p) = G \cdot \mathrm{Poisson}\!\left(\tau_n\, T(p)\, \tfrac19 \sum_{s}
              \lambda_0(k_s) \left(1 + \varepsilon_n(k_s)\right)\right),

    the inner sum running over 3x3 sub-pixel samples ``s`` of pixel ``p`` (offsets
    ``-1/3, 0, 1/3`` around the pixel centre; pixel ``i`` covers ``[i - 1/2, i + 1/2]``),
    ``G = gain`` and ``τ_n = t_n / t̄`` the relative thickness. ``T(p)`` is 1e-3 for the pixels
    whose centre lies behind the beam stop (a disk of radius ``1.3 / s`` pixels around the true
    centre, measured on the detector, and a 5-pixel-wide arm from the centre to the detector
    edge at 115° from +x toward +y), 0 for 10 seeded dead pixels outside it and 1 elsewhere.
    The thickness is ``t̄ = 30`` nm with linear ramps from 0.9 t̄ to 1.1 t̄ across scan x and
    ±1 % along scan y (mean exactly t̄), and the HAADF signal is
    ``HAADF_n = black_level + slope · t_n + η_n``, ``η_n ~ N(0, (0.02 slope)²)`` (0.02 nm of
    thickness), with ``black_level = 26265`` and ``slope = 440.46``.

    Note that the whole-scan normalized variance contains the thickness variation too:
    ``(1 + V_τ)(1 + V_true) - 1`` with ``V_τ`` the normalized variance of ``τ_n`` (3.5e-3 with
    the default gradient); binning by thickness removes it.

    With default parameters ``s.sum()`` is below 10000 exactly on the beam stop and the dead
    pixels, and above it everywhere else, so ``summed < 10000`` is the detector mask.

    Parameters
    ----------
    navigation_shape : tuple of 2 int, default (40, 40)
        Scan (rows, columns); the scan step is 1 nm.
    detector_shape : tuple of 2 int, default (128, 128)
        Detector (rows, columns), each at least 16.
    dose : float, default 3.4e5
        Mean number of electrons per frame over the whole diffraction plane, before the beam
        stop, at the mean thickness. The counts per pixel are proportional to it.
    gain : float, default 4.2
        Detector units per electron.
    ellipticity : float, default 0.02
        ``major / minor - 1`` of the ring ellipses, in ``[0, 1)``.
    rotation : float, default ``np.deg2rad(30)``
        Direction of the major axis (radians, from +x toward +y).
    center : (x, y) floats or None, default None
        True centre in pixels. None puts it off the detector middle by (0.87, -0.69) pixels per
        128 pixels of detector, i.e. (64.37, 62.81) on a 128x128 detector.
    scale : float, default 0.14
        Detector pixel size in nm^-1.
    modulation : bool, default True
        Add the structural modulation; False gives pure Poisson data (``V_true = 0``).
    thickness_gradient : bool, default True
        Ramp the thickness across the scan; False keeps it at ``t̄`` everywhere.
    seed : int or None, default 0
        Seed of every random draw; None draws a fresh one (stored in the metadata).
    dtype : str or numpy dtype, default "float32"
        A float dtype keeps ``gain · N`` unrounded; an integer dtype rounds it to the nearest
        integer and saturates at the dtype's maximum.
    lazy : bool, default False
        Return a :class:`~femlib.signals.LazyFEMDiffraction2D` computed chunk by chunk, so
        datasets larger than memory can be made. Its values equal the eager ones.
    chunks : int or tuple of 4 int or None, default None
        Lazy only: scan rows per chunk (an int, or ``(rows, nx, ny_det, nx_det)`` with whole
        scan rows). None aims at about 48 MB per chunk.
    two_regions : bool, default False
        Give the right half of the scan (columns ``>= nx // 2``) another structure: the
        modulation components (3.9, 0.002, 0.30), (5.0, 0.010, 0.40), (7.3, 0.004, 0.50)
        instead of the ones above (the left half keeps them). The per-region truth is in
        ``metadata.Simulation``: ``region`` (scan shaped, 0 = left, 1 = right),
        ``region_components`` ((2, J, 3)) and ``region_variance`` ((2, len(k))); then
        ``variance`` and ``modulation_components`` describe the left region.
    psf_sigma : float, default 0
        Point-spread function of an integrating detector, in pixels: each frame's electron
        counts are spread by a charge-conserving Gaussian of this standard deviation (integrated
        over the pixels, normalised to sum 1; charge spread past the detector edge is lost)
        before the gain, ``D_n = G · (h ∗ N_n)``, which correlates the noise of neighbouring
        pixels (see :mod:`femlib.noise`). 0 (default) is a counting detector, with data
        bit-for-bit those of earlier versions. With a PSF the beam-stop edge is blurred, so
        ``summed < 10000`` is no longer exactly the beam stop: use
        ``metadata.Simulation.beam_stop_mask``.
    descan : float, (dx, dy) or None, default None
        Real-scan artefact: the pattern moves linearly over the scan under the fixed beam
        stop (and the fixed dead pixels). ``(dx, dy)`` px is the shift at the far scan
        corner relative to the first position (whose centre is ``center``); in between
        the centre is the plane ``c + (dx (3 fx + fy) / 4, dy (fx + 3 fy) / 4)``, ``fx``,
        ``fy`` in [0, 1] the fractional scan column and row. A float ``d`` is
        ``(0.8 d, -0.6 d)``. Every pattern is evaluated analytically around its own centre
        (nothing is interpolated). At most 1/8 of the detector's smaller side.
    crystals : float, default 0
        Real-scan artefact: the fraction of positions (chosen at random) over a
        nanocrystal, whose pattern gains four Bragg spots (two Friedel pairs, random
        orientation) on the strongest ring (corrected radius 4.3 nm^-1): Gaussians of 0.2
        nm^-1 whose peak is 30 times the mean pattern's intensity density there, counted
        with the rest (Poisson).
    hot_pixels : int, default 0
        Real-scan artefact: pixels (chosen at random among the unmasked ones with
        corrected radius in 3.0-5.75 nm^-1) with random-telegraph offsets: each switches
        between 0 and an offset of 0.25 to 8 times its mean value (uniform) with
        probability 0.1 per frame, added after the gain.

        The artefacts draw from their own generators: adding one leaves the others' and
        the clean scan's random draws unchanged (the Poisson draws of a scan row change
        only when a crystal lies in it), and the defaults give exactly the clean data.

    Returns
    -------
    FEMDiffraction2D or LazyFEMDiffraction2D
        Navigation axes ``y``, ``x`` in nm; signal axes ``ky``, ``kx`` in ``nm^-1`` centred on
        the detector middle. ``metadata.HAADF.intensity`` is the HAADF image (a numpy
        array over the scan, as in the real files); ``metadata.Simulation`` holds the ground
        truth: ``center`` (x, y) px,
        ``affine`` (3x3), ``ellipticity``, ``rotation``, ``scale``, ``gain``, ``dose``,
        ``black_level``, ``slope``, ``thickness`` (nm, scan shaped), ``mean_thickness``,
        ``k`` (nm^-1 grid, step 0.01), ``variance`` (``V_true`` on ``k``),
        ``modulation_components`` ((J, 3): ``k_j, v_j, w_j``), ``mean_pattern`` (expected
        electrons per pixel per frame at the mean thickness, ``T · λ0``), ``beam_stop_mask``
        (bool, detector shaped, dead pixels included), ``dead_pixels`` ((10, 2) x, y),
        ``modulation``, ``thickness_gradient``, ``psf_sigma``, ``seed`` and the
        artefacts' truth: ``centers`` (navigation shape + (2,), x, y px per position;
        ``center`` everywhere without descan), ``descan`` (far-corner shift, px),
        ``crystals`` and ``outliers`` (bool, scan shaped), ``hot_pixels`` ((H, 2) x, y),
        ``hot_pixel_amplitude`` (detector units), ``hot_pixel_mask`` and ``bad_pixels``
        (bool, detector shaped: the hot and the dead pixels). With a PSF
        ``mean_pattern`` is the blurred expectation ``h ∗ (T · λ0)``.

    Raises
    ------
    ValueError
        For a bad shape, a non-positive ``dose``, ``gain`` or ``scale``, an ``ellipticity``
        outside ``[0, 1)``, a negative ``psf_sigma``, a centre outside the detector, bad
        ``chunks``, a descan larger than the detector allows, ``crystals`` outside [0, 1]
        or more hot pixels than the ring holds.
    TypeError
        For a non-numeric parameter, a dtype that is neither float nor integer, a seed that
        is not a non-negative integer, a ``descan`` that is not a number or pair, or a
        ``hot_pixels`` that is not a non-negative integer.

    References
    ----------
    Daulton, Bondi & Kelton, Ultramicroscopy 110 (2010) 1279 (normalized variance);
    Hwang & Voyles, Microsc. Microanal. 17 (2011) 67 (HAADF thickness).

    Examples
    --------
    >>> s = femlib.data.synthetic_fem()
    >>> s
    <FEMDiffraction2D, title: Synthetic FEM (seed 0), dimensions: (40, 40|128, 128)>
    >>> s.metadata.Simulation.center
    array([64.37, 62.81])
    >>> mask = s.sum() < 10000  # the beam stop, as stored in the ground truth
    >>> bool((mask.data == s.metadata.Simulation.beam_stop_mask).all())
    True

    A real scan's artefacts, with their truth:

    >>> r = femlib.data.synthetic_fem(navigation_shape=(10, 10), detector_shape=(64, 64),
    ...                               descan=(2.0, 1.0), crystals=0.05, hot_pixels=3)
    >>> sim = r.metadata.Simulation
    >>> sim.centers[-1, -1] - sim.centers[0, 0], int(sim.outliers.sum()), len(sim.hot_pixels)
    (array([2., 1.]), 5, 3)
    """
    navigation_shape = _check_shape(navigation_shape, "navigation_shape", 1)
    detector_shape = _check_shape(detector_shape, "detector_shape", _MIN_DETECTOR)
    dose = _check_positive(dose, "dose")
    gain = _check_positive(gain, "gain")
    scale = _check_positive(scale, "scale")
    if isinstance(ellipticity, bool) or not isinstance(ellipticity, numbers.Real):
        raise TypeError(f"ellipticity must be a real number in [0, 1), got {ellipticity!r}")
    ellipticity = float(ellipticity)
    if not 0 <= ellipticity < 1:
        raise ValueError(f"ellipticity must be in [0, 1), got {ellipticity}")
    if isinstance(rotation, bool) or not isinstance(rotation, numbers.Real):
        raise TypeError(f"rotation must be a real number (radians), got {rotation!r}")
    rotation = float(rotation)
    if not math.isfinite(rotation):
        raise ValueError(f"rotation must be finite, got {rotation}")
    dtype = _check_dtype(dtype)
    seed = _check_seed(seed)
    psf_sigma = _check_psf_sigma(psf_sigma)
    crystals = _check_fraction(crystals, "crystals")
    hot_pixels = _check_count(hot_pixels, "hot_pixels")
    ny_det, nx_det = detector_shape
    if center is None:
        center = np.array(
            [
                (nx_det - 1) / 2 + _DEFAULT_CENTER_SHIFT[0] * nx_det / 128,
                (ny_det - 1) / 2 + _DEFAULT_CENTER_SHIFT[1] * ny_det / 128,
            ]
        )
    else:
        try:
            center = np.asarray(center, dtype=float)
        except (TypeError, ValueError) as err:
            raise TypeError(f"center must be (x, y) in pixels or None, got {center!r}") from err
        if center.shape != (2,) or not np.all(np.isfinite(center)):
            raise ValueError(f"center must be a finite (x, y) pair in pixels, got {center!r}")
        if not (0 <= center[0] <= nx_det - 1 and 0 <= center[1] <= ny_det - 1):
            raise ValueError(
                f"center must lie on the detector, 0 <= x <= {nx_det - 1} and "
                f"0 <= y <= {ny_det - 1}, got {tuple(center.tolist())}"
            )
    rows_per_chunk = _rows_per_chunk(chunks, navigation_shape, detector_shape, dtype.itemsize)
    centers = _descan_centers(descan, center, navigation_shape, detector_shape)

    affine = _distortion_affine(ellipticity, rotation)
    components = np.array(_MODULATION if modulation else [], dtype=float).reshape(-1, 3)

    # Random draws that are small enough to make up front, always in this order so that the
    # dead pixels and the HAADF noise do not depend on ``modulation``.
    n_frames = navigation_shape[0] * navigation_shape[1]
    rng = np.random.default_rng(seed)
    coefficients = rng.uniform(-math.sqrt(3), math.sqrt(3), size=(n_frames, len(_MODULATION)))
    haadf_noise = rng.normal(0.0, _HAADF_NOISE * _SLOPE, size=navigation_shape)
    stop = _beam_stop(detector_shape, center, scale)
    candidates = np.flatnonzero(~stop)
    if candidates.size < _N_DEAD_PIXELS:
        raise ValueError(
            f"detector_shape {detector_shape} with scale {scale} leaves fewer than "
            f"{_N_DEAD_PIXELS} pixels outside the beam stop; use a larger detector or scale"
        )
    dead = np.sort(rng.choice(candidates, size=_N_DEAD_PIXELS, replace=False))
    coefficients = coefficients[:, : len(components)]
    region = np.zeros(navigation_shape, np.int64)
    if two_regions:
        region[:, navigation_shape[1] // 2 :] = 1
        right = np.array(_MODULATION_RIGHT if modulation else [], dtype=float).reshape(-1, 3)
        # Each frame drives only its own region's components (same draws as one region).
        in_right = region.ravel()[:, None] == 1
        coefficients = np.concatenate(
            [np.where(in_right, 0.0, coefficients), np.where(in_right, coefficients, 0.0)], axis=1
        )
        region_components = np.stack([components, right])
        components = np.concatenate([components, right])

    # Mean pattern and modulation basis per pixel, averaged over sub-pixel samples.
    transmission = np.where(stop, _BEAM_STOP_TRANSMISSION, 1.0).ravel()
    transmission[dead] = 0.0
    geometry = (detector_shape, affine, scale, dose, components, transmission)
    base, basis = _pattern_terms(center, *geometry)

    thickness = _thickness_map(navigation_shape, thickness_gradient)
    tau = thickness / _MEAN_THICKNESS
    coefficients = coefficients.reshape(navigation_shape + (len(components),))
    args = (base, basis, coefficients, tau, seed, gain, dtype, detector_shape)
    psf = _psf_profile(psf_sigma) if psf_sigma > 0 else None
    artefacts = _make_artefacts(
        geometry, center, centers, crystals, hot_pixels, navigation_shape, stop, dead, base,
        gain, seed,
    )

    ny, nx = navigation_shape
    if lazy:
        import dask.array as da
        from dask.base import tokenize

        def block(block_info=None):
            (start, stop_), *_ = block_info[None]["array-location"]
            return _simulate_rows(start, stop_, *args, psf=psf, artefacts=artefacts)

        row_chunks = (rows_per_chunk,) * (ny // rows_per_chunk)
        if ny % rows_per_chunk:
            row_chunks += (ny % rows_per_chunk,)
        data = da.map_blocks(
            block,
            chunks=(row_chunks, (nx,), (ny_det,), (nx_det,)),
            dtype=dtype,
            meta=np.empty((0, 0, 0, 0), dtype=dtype),
            name="femlib-synthetic-"
            + tokenize(args, rows_per_chunk, psf_sigma, None if artefacts is None else (
                centers, crystals, hot_pixels)),
        )
    else:
        data = _simulate_rows(0, ny, *args, psf=psf, artefacts=artefacts)

    from femlib.signals import FEMDiffraction2D, LazyFEMDiffraction2D

    nav_axes = [
        {"name": name, "size": size, "scale": _SCAN_STEP, "offset": 0.0, "units": "nm"}
        for name, size in zip(("y", "x"), navigation_shape, strict=True)
    ]
    sig_axes = [
        {
            "name": name,
            "size": size,
            "scale": scale,
            "offset": -(size - 1) / 2 * scale,
            "units": "nm^-1",
        }
        for name, size in zip(("ky", "kx"), detector_shape, strict=True)
    ]
    for ax in nav_axes:
        ax["navigate"] = True
    for ax in sig_axes:
        ax["navigate"] = False
    cls = LazyFEMDiffraction2D if lazy else FEMDiffraction2D
    s = cls(data, axes=nav_axes + sig_axes)
    s.metadata.General.title = f"Synthetic FEM (seed {seed})"
    s.metadata.Signal.quantity = "Intensity (detector units)"

    # A plain array over the scan, as in the real files (the seed's thickness filter
    # relies on it: np.min(..., axis=(0, 1)) and boolean indexing of s.data).
    s.metadata.set_item("HAADF.intensity", _BLACK_LEVEL + _SLOPE * thickness + haadf_noise)

    k_max = _corrected_radius(
        np.array([0.0, nx_det - 1, 0.0, nx_det - 1]),
        np.array([0.0, 0.0, ny_det - 1, ny_det - 1]),
        center,
        affine,
        scale,
    ).max()
    k_grid = np.round(np.arange(int(math.ceil(k_max * 100)) + 1) * 0.01, 10)
    mask = stop.ravel().copy()
    mask[dead] = True
    dead_yx = np.unravel_index(dead, detector_shape)
    truth = {
        "center": center.copy(),
        "affine": affine,
        "ellipticity": ellipticity,
        "rotation": rotation,
        "scale": scale,
        "gain": gain,
        "dose": dose,
        "black_level": _BLACK_LEVEL,
        "slope": _SLOPE,
        "thickness": thickness,
        "mean_thickness": _MEAN_THICKNESS,
        "k": k_grid,
        "variance": _true_variance(
            k_grid, components[: len(components) // (2 if two_regions else 1)]
        ),
        "modulation_components": components[: len(components) // (2 if two_regions else 1)],
        "mean_pattern": (
            base.reshape(detector_shape)
            if psf is None
            else _apply_psf(base.reshape(detector_shape), psf)
        ),
        "beam_stop_mask": mask.reshape(detector_shape),
        "dead_pixels": np.stack([dead_yx[1], dead_yx[0]], axis=1),
        "modulation": bool(modulation),
        "thickness_gradient": bool(thickness_gradient),
        "psf_sigma": psf_sigma,
        "seed": seed,
    }
    truth.update(
        _artefact_truth(artefacts, center, centers, navigation_shape, dead, detector_shape)
    )
    if two_regions:
        truth["two_regions"] = True
        truth["region"] = region
        truth["region_components"] = region_components
        truth["region_variance"] = np.stack(
            [_true_variance(k_grid, c) for c in region_components]
        )
    for key, value in truth.items():
        s.metadata.set_item(f"Simulation.{key}", value)
    return s


def synthetic_flat_field(
    n_frames=100,
    detector_shape=(128, 128),
    dose=100.0,
    gain=4.2,
    psf_sigma=0.0,
    offset=0.0,
    seed=0,
):
    r"""Simulate a flat-field series: uniformly illuminated frames of the synthetic detector.

    The detector model is that of :func:`synthetic_fem`: frame ``n`` is

    .. math:: F_n = \mathrm{offset} + G \cdot (h \ast N_n), \qquad
              N_n(p) \sim \mathrm{Poisson}(\mathrm{dose}),

    with ``h`` the charge-conserving Gaussian PSF of ``psf_sigma`` pixels (charge spread past
    the detector edge is lost, so the outermost few pixels see slightly less) and
    ``G = gain``. Use it with :meth:`femlib.noise.DetectorNoise.from_flat_field`.

    Parameters
    ----------
    n_frames : int, default 100
        Number of frames (at least 1).
    detector_shape : tuple of 2 int, default (128, 128)
        Detector (rows, columns), each at least 1.
    dose : float, default 100
        Mean electrons per pixel per frame.
    gain : float, default 4.2
        Detector units per electron.
    psf_sigma : float, default 0
        PSF standard deviation in pixels (0 = counting detector).
    offset : float, default 0
        Constant added to every pixel (a dark level).
    seed : int or None, default 0
        Seed of the Poisson draws; frame ``n`` uses ``default_rng([seed, n])``.

    Returns
    -------
    (n_frames, rows, columns) ndarray of float64

    Raises
    ------
    ValueError
        For a bad shape or frame count, a non-positive ``dose`` or ``gain``, a negative
        ``psf_sigma`` or a non-finite ``offset``.
    TypeError
        For a non-numeric parameter or a seed that is not a non-negative integer.

    Examples
    --------
    >>> import femlib
    >>> flat = femlib.data.synthetic_flat_field(20, (32, 32), dose=50, gain=4.2)
    >>> flat.shape
    (20, 32, 32)
    >>> round(float(flat.mean()) / (50 * 4.2), 2)
    1.0
    """
    if isinstance(n_frames, bool) or not isinstance(n_frames, numbers.Integral) or n_frames < 1:
        raise ValueError(f"n_frames must be an integer >= 1, got {n_frames!r}")
    detector_shape = _check_shape(detector_shape, "detector_shape", 1)
    dose = _check_positive(dose, "dose")
    gain = _check_positive(gain, "gain")
    psf_sigma = _check_psf_sigma(psf_sigma)
    if isinstance(offset, bool) or not isinstance(offset, numbers.Real):
        raise TypeError(f"offset must be a real number, got {offset!r}")
    offset = float(offset)
    if not math.isfinite(offset):
        raise ValueError(f"offset must be finite, got {offset}")
    seed = _check_seed(seed)
    profile = _psf_profile(psf_sigma)
    out = np.empty((int(n_frames),) + detector_shape)
    for n in range(int(n_frames)):
        rng = np.random.default_rng([seed, n])
        counts = rng.poisson(dose, size=detector_shape)
        out[n] = offset + gain * _apply_psf(counts, profile)
    return out
