r"""Native kinematic nanodiffraction: one projected-potential slice, one FFT per probe position.

The sample is the phase object ``t(r) = exp(i sigma v_z(r))`` (or its weak-phase form
``1 + i sigma v_z``) of the whole model's projected potential ``v_z``; the pattern of a probe
``P`` at ``r_n`` is ``I_n(k) = |F[P(r - r_n) t(r)](k)|^2`` (Cowley, *Diffraction Physics*,
ch. 13; Kirkland, *Advanced Computing in Electron Microscopy*, ch. 6), with no propagation
inside the sample: good for thin samples, where it is the first term of multislice.

Grid. The detector's reciprocal sampling ``scale`` (nm^-1 per pixel) fixes the field of view of
one pattern, ``1 / scale`` nm: each pattern is the FFT of a ``gpts x gpts`` window of pixel
``dx = 1 / (gpts scale)`` centred on the probe, so a detector pixel is exactly one FFT
frequency. The transmission function is band-limited to 2/3 of the grid's Nyquist frequency
(with a 1 % raised-cosine edge, as abTEM does), so the detector must lie inside that limit.

Potential. ``v_z`` is computed once for the whole scanned region (plus a margin), on one grid of
pixel ``dx``: per element, ``v_z(q) = sum_j v_e(q) exp(-2 pi i q.r_j)`` with the exact
structure factor of the (off-grid) atom positions, evaluated by Gaussian gridding on a 2x
oversampled grid (a type-1 non-uniform FFT, Greengard & Lee, SIAM Rev. 46 (2004) 443), so no
atom is snapped to a pixel. A position's window is then a slice of that grid at the nearest
pixel, and the sub-pixel remainder moves the probe (an exact Fourier phase ramp).
"""

import math

import numpy as np
import scipy.fft as sfft

from femlib._jit import njit
from femlib.simulate import _potentials

__all__ = []

#: abTEM's antialiasing aperture: cut at 2/3 of the Nyquist frequency, raised-cosine taper of
#: width 1 % of 1/dx inside the cut.
ANTIALIAS_CUTOFF = 2.0 / 3.0
ANTIALIAS_TAPER = 0.01
# Gaussian gridding: kernel sigma in fine pixels and half-width of the spread (fine pixels).
# Truncation error exp(-HALF^2 / 2 SIGMA^2) = 6e-9, aliasing exp(-pi^2 SIGMA^2) = 6e-8 at the
# coarse Nyquist frequency.
_GRID_SIGMA = 1.3
_GRID_HALF = 8
# Projected-potential tail kept around a window (nm): beyond it an atom's potential is below
# 1e-6 of its peak for every tabulated element.
_TAIL = 0.8
#: Probe size used by the checks: the diameter holding 90 % of the probe intensity.
PROBE_FRACTION = 0.9


def smooth_even(n):
    """Smallest even integer ``>= n`` with no prime factor above 5 (fast FFT sizes)."""
    n = max(2, int(math.ceil(n)))
    while True:
        if n % 2 == 0:
            m = n
            for p in (2, 3, 5):
                while m % p == 0:
                    m //= p
            if m == 1:
                return n
        n += 1


def detector_limit(gpts, scale):
    """Largest |k| (nm^-1) of the detector kept intact by the antialiasing aperture."""
    return (ANTIALIAS_CUTOFF / 2 - ANTIALIAS_TAPER) * gpts * scale


def detector_reach(detector_shape, scale, aperture):
    """Largest frequency (nm^-1) a detector pixel's intensity depends on: the corner radius
    plus the probe aperture's radius ``aperture = alpha / lambda`` (each pixel is the
    potential's spectrum convolved with the aperture)."""
    ny, nx = detector_shape
    return scale * math.hypot(ny // 2 + 0.5, nx // 2 + 0.5) + aperture


def default_gpts(detector_shape, scale, aperture):
    """The smallest fast grid whose antialiasing limit contains :func:`detector_reach`."""
    reach = detector_reach(detector_shape, scale, aperture)
    return smooth_even(reach / scale / (ANTIALIAS_CUTOFF / 2 - ANTIALIAS_TAPER))


def antialias_aperture(q, dx):
    """abTEM-style band limit on frequencies ``q`` (nm^-1) of a grid of pixel ``dx`` (nm)."""
    cutoff = ANTIALIAS_CUTOFF / (2 * dx)
    taper = ANTIALIAS_TAPER / dx
    out = 0.5 * (1 + np.cos(np.pi * (q - cutoff + taper) / taper))
    out = np.where(q > cutoff - taper, out, 1.0)
    out[q > cutoff] = 0.0
    return out


def probe_spectrum(gpts, dx, wavelength, semiangle, defocus):
    """Probe wave function in Fourier space on a ``gpts`` grid (unshifted FFT layout).

    ``A(k) exp(-i chi(k))`` with the hard aperture ``lambda |k| <= alpha`` and
    ``chi = pi lambda C10 k^2``, ``C10 = -defocus`` (abTEM's convention: a positive defocus
    is an underfocus), normalised to ``sum |A|^2 = 1`` so that an empty sample's pattern sums
    to 1.
    """
    k = sfft.fftfreq(gpts, dx)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    inside = np.sqrt(k2) * wavelength <= semiangle * 1e-3
    if inside.sum() < 1:
        raise ValueError(
            f"the probe aperture (semiangle {semiangle} mrad) holds no frequency of the grid "
            f"(spacing {1 / (gpts * dx):.4g} nm^-1): use a larger semiangle or a smaller scale"
        )
    chi = np.pi * wavelength * (-defocus) * k2
    a = np.where(inside, np.exp(-1j * chi), 0.0)
    return a / np.sqrt(inside.sum())


def probe_at(spectrum, dx, cy, cx):
    """Real-space probe centred at window pixel coordinates ``(cy, cx)`` (complex64)."""
    gpts = spectrum.shape[0]
    k = sfft.fftfreq(gpts, dx)
    ramp = np.exp(-2j * np.pi * k[:, None] * cy * dx) * np.exp(-2j * np.pi * k[None, :] * cx * dx)
    return sfft.ifft2(spectrum * ramp).astype(np.complex64)


def probe_diameter(spectrum, dx, fraction=PROBE_FRACTION):
    """Diameter (nm) of the disc around the probe centre holding ``fraction`` of its intensity."""
    gpts = spectrum.shape[0]
    p = np.abs(probe_at(spectrum, dx, gpts // 2, gpts // 2)) ** 2
    y, x = np.indices(p.shape)
    r = np.hypot(y - gpts // 2, x - gpts // 2).ravel()
    order = np.argsort(r)
    cum = np.cumsum(p.ravel()[order])
    cum /= cum[-1]
    return 2 * dx * r[order][np.searchsorted(cum, fraction)]


@njit(cache=True, nogil=True)
def _spread(fine, ys, xs, sigma, half):  # pragma: no cover - compiled
    ny, nx = fine.shape
    n = 2 * half + 1
    wy = np.empty(n, dtype=fine.dtype)
    wx = np.empty(n, dtype=fine.dtype)
    c = 1.0 / (2.0 * sigma * sigma)
    for j in range(ys.size):
        iy = int(np.floor(ys[j])) - half
        ix = int(np.floor(xs[j])) - half
        for a in range(n):
            d = iy + a - ys[j]
            wy[a] = np.exp(-d * d * c)
            d = ix + a - xs[j]
            wx[a] = np.exp(-d * d * c)
        if iy >= 0 and ix >= 0 and iy + n <= ny and ix + n <= nx:
            for a in range(n):
                for b in range(n):
                    fine[iy + a, ix + b] += wy[a] * wx[b]
        else:  # periodic wrap at the grid edge
            for a in range(n):
                row = (iy + a) % ny
                for b in range(n):
                    fine[row, (ix + b) % nx] += wy[a] * wx[b]


def projected_potential(positions, symbols, shape, dx):
    """Projected potential ``v_z`` (V nm) on a periodic grid of ``shape`` pixels of ``dx`` nm.

    Parameters
    ----------
    positions : (n, 2) ndarray
        Atom positions ``(y, x)`` in nm relative to the grid origin (pixel ``(0, 0)``).
    symbols : (n,) array of str
        Chemical symbols.
    shape : (int, int)
        Even grid shape.
    dx : float
        Pixel size in nm.
    """
    gy, gx = shape
    h = dx / 2
    s = _GRID_SIGMA * h
    qy = sfft.fftfreq(gy, dx)
    qx = sfft.rfftfreq(gx, dx)
    q = np.hypot(qy[:, None], qx[None, :])
    kernel = 2 * np.pi * s**2 * np.exp(-2 * np.pi**2 * s**2 * q**2)  # Gaussian's transform
    # Coarse frequencies inside the fine (2x) spectrum.
    rows = np.r_[0 : gy // 2, 2 * gy - gy // 2 : 2 * gy]
    total = np.zeros((gy, gx // 2 + 1), dtype=np.complex64)
    fine = np.zeros((2 * gy, 2 * gx), dtype=np.float32)  # the patterns are float32 too
    for symbol in np.unique(symbols):
        pick = symbols == symbol
        fine[:] = 0.0
        _spread(
            fine,
            np.ascontiguousarray(positions[pick, 0] / h),
            np.ascontiguousarray(positions[pick, 1] / h),
            _GRID_SIGMA,
            _GRID_HALF,
        )
        spectrum = sfft.rfft2(fine)[rows, : gx // 2 + 1]  # sum_m f_m exp(-2 pi i q x_m)
        weight = _potentials.projected_scattering_factor(str(symbol), q) * (h * h) / kernel
        total += spectrum * weight.astype(np.float32)
    return sfft.irfft2(total, s=(gy, gx)) / (dx * dx)


def transmission(v_z, dx, sigma, weak_phase=False):
    """Band-limited transmission function (complex64) of the projected potential ``v_z``."""
    phase = (sigma * v_z).astype(np.float32)
    t = (1.0 + 1j * phase if weak_phase else np.exp(1j * phase)).astype(np.complex64)
    gy, gx = t.shape
    q = np.hypot(sfft.fftfreq(gy, dx)[:, None], sfft.fftfreq(gx, dx)[None, :])
    band = antialias_aperture(q, dx).astype(np.float32)
    return sfft.ifft2(sfft.fft2(t, overwrite_x=True) * band, overwrite_x=True).astype(np.complex64)


class KinematicModel:
    """The transmission function of a model over the region a scan needs, built once.

    Parameters
    ----------
    positions : (n, 2) ndarray
        Atom positions ``(y, x)`` in nm (periodic images already added).
    symbols : (n,) ndarray of str
        Chemical symbols.
    scan : (m, 2) ndarray
        Probe positions ``(y, x)`` in nm.
    gpts : int
        Window side in pixels.
    dx : float
        Pixel size in nm.
    sigma : float
        Interaction constant in rad / (V nm).
    weak_phase : bool
        ``t = 1 + i sigma v_z`` instead of ``exp(i sigma v_z)``.
    cell : (float, float) or None
        In-plane cell lengths ``(Ly, Lx)`` (nm) of a model periodic in x and y whose
        lengths are whole numbers of pixels: the potential is then computed on the periodic
        cell itself (``positions`` without images) and windows wrap around it; None = one
        grid over the scanned region plus a margin.
    """

    def __init__(
        self, positions, symbols, scan, gpts, dx, sigma, weak_phase=False, cell=None
    ):
        self.gpts = gpts
        self.dx = dx
        self.periodic = cell is not None
        if self.periodic:
            shape = tuple(int(round(length / dx)) for length in cell)
            self.origin = np.zeros(2)
            rel = np.mod(positions, np.array(shape) * dx)
            v_z = projected_potential(rel, symbols, shape, dx)
            self.transmission = transmission(v_z, dx, sigma, weak_phase)
            return
        margin = int(math.ceil(_TAIL / dx)) + _GRID_HALF
        low = scan.min(axis=0)
        span = np.ceil((scan.max(axis=0) - low) / dx).astype(int)
        shape = tuple(smooth_even(s + gpts + 2 * margin + 2) for s in span)
        self.origin = low - (gpts // 2 + margin + 1) * dx
        rel = positions - self.origin
        extent = np.array(shape) * dx
        keep = np.all((rel >= 0) & (rel < extent), axis=1)
        v_z = projected_potential(rel[keep], symbols[keep], shape, dx)
        self.transmission = transmission(v_z, dx, sigma, weak_phase)


def patterns(trans, origin, dx, spectrum, scan, detector_shape, periodic=False):
    """Diffraction patterns ``(m, ny, nx)`` (float32) of probes at ``scan`` (``(m, 2)``, nm).

    Each pattern is ``|FFT(P t_window)|^2``, fftshifted so that ``k = 0`` is at pixel
    ``(ny // 2, nx // 2)``, cropped to the detector. ``periodic``: ``trans`` is one period
    of the sample and windows wrap around it.
    """
    gpts = spectrum.shape[0]
    ny, nx = detector_shape
    # Detector pixel (i, j) is the frequency (i - ny // 2, j - nx // 2): its unshifted index.
    rows = (np.arange(ny) - ny // 2) % gpts
    cols = (np.arange(nx) - nx // 2) % gpts
    out = np.empty((len(scan), ny, nx), dtype=np.float32)
    probes = {}
    for n, pos in enumerate(scan):
        u = (pos - origin) / dx
        i0 = np.floor(u).astype(int)
        frac = u - i0
        key = (round(float(frac[0]), 9), round(float(frac[1]), 9))
        probe = probes.get(key)
        if probe is None:
            if len(probes) > 64:
                probes.clear()
            probe = probes[key] = probe_at(
                spectrum, dx, gpts // 2 + key[0], gpts // 2 + key[1]
            )
        if periodic:
            wy = (np.arange(gpts) + i0[0] - gpts // 2) % trans.shape[0]
            wx = (np.arange(gpts) + i0[1] - gpts // 2) % trans.shape[1]
            window = trans[wy][:, wx]
        else:
            window = trans[
                i0[0] - gpts // 2 : i0[0] + gpts - gpts // 2,
                i0[1] - gpts // 2 : i0[1] + gpts - gpts // 2,
            ]
        wave = sfft.fft2(probe * window, overwrite_x=True)[rows][:, cols]
        out[n] = wave.real**2 + wave.imag**2
    return out
