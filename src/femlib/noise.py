r"""Detector noise models: the noise kernel of an integrating camera and the shot weights.

A counting detector records ``D = G N`` with ``N`` Poisson electrons per pixel and ``G`` the
gain (detector units per electron), so pixels are independent: ``Var(D_p) = G <D_p>``.
An integrating camera spreads each electron's charge over neighbouring pixels with a
point-spread function ``h`` (``sum h = 1``): ``D = G (h * N)``. Two pixels then share noise,

.. math:: \operatorname{Cov}(D_p, D_q) \approx \langle D \rangle\, K(p - q), \qquad
          K(\Delta) = G \sum_x h(x)\, h(x + \Delta),

where ``<D>`` is the local mean (the mean pattern varies slowly on the scale of ``h``). The
**noise kernel** ``K`` sums to the gain, ``sum_Delta K = G``, and its value at zero lag
``K(0) = Var(D_p) / <D_p>`` is smaller than ``G`` as soon as ``h`` spreads charge
(``K = G delta`` for a counting detector). The variance of a weighted ring sum
``I = sum_p w_p D_p`` is then

.. math:: \operatorname{Var}(I) = \sum_{p,q} w_p w_q \langle D_p \rangle K(p - q)
          = \sum_p \langle D_p \rangle\, s_p, \qquad
          s_p = w_p \sum_q K(q - p)\, w_q,

which is what :meth:`DetectorNoise.shot_weights` returns row by row (the *shot weights*
``s``): the FEM pass accumulates ``Q = sum_p s_p D_p`` next to ``I`` and the estimators
subtract ``<Q>`` normalised as each needs (:doc:`/user_guide/noise`).

:class:`DetectorNoise` holds ``K`` on a small odd window. It is made from a known gain
(:meth:`~DetectorNoise.counting`), a known PSF (:meth:`~DetectorNoise.from_psf`), a
flat-field series (:meth:`~DetectorNoise.from_flat_field`) or the FEM scan itself
(:meth:`~DetectorNoise.from_scan`); the measurements themselves (one streaming pass each)
live in ``femlib._noise_measure``. This module is pure numpy/scipy; signals are accepted
duck-typed (anything with ``.data``).
"""

import math
import numbers

import numpy as np
import scipy.sparse as sp

from femlib import _noise_measure as _measure

__all__ = ["DetectorNoise", "DEFAULT_SIZE"]

#: Default kernel window (pixels, odd). For a Gaussian PSF of ``sigma`` pixels the kernel is
#: about a Gaussian of ``sigma * sqrt(2)``: an 11x11 window holds all but 3e-4 of its sum at
#: ``sigma = 1`` px (9x9 would miss 0.4 %, 7x7 3 %) and all but 2 % at 1.5 px, where 15x15
#: is needed. A larger window costs statistical noise in a measured gain (it grows as the
#: window side), hence not larger by default.
DEFAULT_SIZE = 11
_BLOCK_ELEMENTS = 2**22  # float64 elements per work block (32 MiB)


class DetectorNoise:
    r"""The noise kernel ``K(Δ)`` of a detector, in detector units per electron.

    ``K(Δ) = Cov(D_p, D_{p+Δ}) / <D>`` on an odd window centred on zero lag
    (:attr:`kernel`, read-only, window :attr:`size`); :attr:`gain` is ``sum K`` and
    :attr:`k0` the value at zero lag, the per-pixel variance-to-mean ratio. See
    :mod:`femlib.noise` for the model and :doc:`/user_guide/noise` for the derivation.

    Parameters
    ----------
    kernel : (ny, nx) array_like
        ``K`` with odd sides, zero lag at the centre ``[ny // 2, nx // 2]``; rows are detector
        rows. Must be finite with a positive sum.
    info : dict, optional
        Provenance, stored as :attr:`info` (default ``{"method": "kernel"}``).

    Attributes
    ----------
    info : dict
        How the kernel was made (``method`` and, for measured kernels, ``n_frames``, ``n_pairs``
        or ``background``).

    Raises
    ------
    ValueError
        For a kernel that is not 2D with odd sides, not finite, or with ``sum K <= 0``.

    Examples
    --------
    >>> noise = DetectorNoise.counting(4.2)
    >>> noise.gain, noise.k0
    (4.2, 4.2)
    >>> blurred = DetectorNoise([[0.0, 0.1, 0.0], [0.1, 1.0, 0.1], [0.0, 0.1, 0.0]])
    >>> round(blurred.gain, 6), blurred.k0
    (1.4, 1.0)
    """

    def __init__(self, kernel, info=None):
        k = np.array(kernel, dtype=float)
        if k.ndim != 2 or k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
            raise ValueError(
                f"kernel must be a 2D array with odd sides (zero lag at the centre), got "
                f"shape {k.shape}"
            )
        if not np.all(np.isfinite(k)):
            raise ValueError("kernel must be finite")
        if not k.sum() > 0:
            raise ValueError(f"kernel must have a positive sum (the gain), got {k.sum()}")
        k.setflags(write=False)
        self._kernel = k
        self.info = dict(info or {"method": "kernel"})

    @property
    def kernel(self):
        """(ny, nx) ndarray: ``K(Δ)``, zero lag at the centre (read-only)."""
        return self._kernel

    @property
    def gain(self):
        """float: ``sum K``, detector units per electron."""
        return float(self._kernel.sum())

    @property
    def k0(self):
        """float: ``K(0) = Var(D_p) / <D_p>``."""
        ny, nx = self._kernel.shape
        return float(self._kernel[ny // 2, nx // 2])

    @property
    def curvature(self):
        r"""(float, float): the second-order term ``(c_y, c_x)`` of the per-pixel noise, px².

        The model ``Var(D_p) = k0 <D_p>`` holds where the mean pattern is locally flat; to
        second order ``Var(D_p) = k0 (<D_p> + c_y ∂²<D>/∂y² + c_x ∂²<D>/∂x²)`` with
        ``c = (μ2(ĥ) - μ2(h)) / 2`` per axis, ``μ2`` the second moment of the PSF ``h``
        and of ``ĥ = h² / Σ h²`` (user guide, noise page). From :meth:`from_psf` it is
        computed from the PSF; for any other kernel the PSF is taken to be a Gaussian
        integrated over the pixel (what :func:`femlib.data.synthetic_fem` simulates) with
        the kernel's ``k0 / gain = Σ h²``. 0 for the counting model.

        Examples
        --------
        >>> DetectorNoise.counting(4.2).curvature
        (0.0, 0.0)
        >>> psf = DetectorNoise.from_psf([[0, 0.1, 0], [0.1, 0.6, 0.1], [0, 0.1, 0]], 1.0)
        >>> [round(c, 4) for c in psf.curvature]
        [-0.075, -0.075]
        """
        if "curvature" in self.info:
            cy, cx = self.info["curvature"]
            return (float(cy), float(cx))
        ratio = self.k0 / self.gain
        if not 0 < ratio < 1:
            return (0.0, 0.0)
        c = _gaussian_curvature(math.sqrt(ratio))
        return (c, c)

    @property
    def size(self):
        """tuple of int: the window ``(ny, nx)``."""
        return self._kernel.shape

    def __repr__(self):
        ny, nx = self.size
        return (
            f"<DetectorNoise gain={self.gain:.6g} k0={self.k0:.6g} window={ny}x{nx} "
            f"({self.info.get('method', 'kernel')})>"
        )

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def counting(cls, gain):
        """The independent-pixel model ``K = G δ``: what ``gain=G`` means.

        Parameters
        ----------
        gain : float
            Detector units per electron, positive.

        Returns
        -------
        DetectorNoise
            A 1x1 kernel; ``shot_weights(W)`` is ``G W**2``.

        Raises
        ------
        TypeError, ValueError
            For a non-numeric or non-positive gain.

        Examples
        --------
        >>> DetectorNoise.counting(4.2).kernel
        array([[4.2]])
        """
        if isinstance(gain, bool) or not isinstance(gain, numbers.Real):
            raise TypeError(f"gain must be a positive number, got {gain!r}")
        gain = float(gain)
        if not math.isfinite(gain) or gain <= 0:
            raise ValueError(f"gain must be a positive finite number, got {gain}")
        return cls([[gain]], info={"method": "counting"})

    @classmethod
    def from_psf(cls, psf, gain):
        """The kernel of a known PSF: ``K(Δ) = G Σ_x h(x) h(x + Δ)``.

        Parameters
        ----------
        psf : (ny, nx) array_like
            The charge spread ``h`` of one electron, odd sides, centred; normalised here to
            sum 1 (charge conservation).
        gain : float
            Detector units per electron.

        Returns
        -------
        DetectorNoise
            Window ``(2 ny - 1, 2 nx - 1)``; ``gain`` equals ``gain`` up to rounding.

        Raises
        ------
        ValueError
            For a PSF that is not 2D with odd sides, has negative values or a zero sum, or
            a non-positive gain.

        Examples
        --------
        >>> noise = DetectorNoise.from_psf([[0, 0, 0], [0.1, 0.8, 0.1], [0, 0, 0]], 4.0)
        >>> noise.size, round(noise.gain, 12), round(noise.k0, 12)
        ((5, 5), 4.0, 2.64)
        """
        from scipy.signal import correlate

        g = cls.counting(gain).gain
        h = np.array(psf, dtype=float)
        if h.ndim != 2 or h.shape[0] % 2 == 0 or h.shape[1] % 2 == 0:
            raise ValueError(f"psf must be a 2D array with odd sides, got shape {h.shape}")
        if not np.all(np.isfinite(h)) or np.any(h < 0) or not h.sum() > 0:
            raise ValueError("psf must be finite and non-negative with a positive sum")
        h = h / h.sum()
        k = g * correlate(h, h, mode="full", method="direct")
        return cls(k, info={"method": "psf", "curvature": _psf_curvature(h)})

    @classmethod
    def from_flat_field(
        cls, flat, dark=None, offset=None, size=DEFAULT_SIZE, mask=None, saturation=None
    ):
        r"""Measure the kernel from a flat-field series (uniformly illuminated frames).

        For each lag ``Δ`` in the window, the covariance over frames of the pixel pairs
        ``(p, p + Δ)`` (each pixel centred by its own mean over the frames, so a fixed-pattern
        gain non-uniformity does not enter), summed over all pairs on the detector and
        divided by the sum of the pairs' mean intensities:

        .. math:: K(Δ) = \frac{\sum_p \widehat{\operatorname{Cov}}_n(D_p, D_{p+Δ})}
                              {\sum_p (\bar D_p + \bar D_{p+Δ}) / 2}.

        ``Cov`` uses ``n - 1`` (unbiased). One streaming pass over the frames (a dask array
        is reduced block by block). Pixels whose mean is not positive (dead), that are
        masked, or that lie within ``size // 2`` of the detector edge (they lose charge past
        the edge, which raises their ``K(0)``) are left out.

        Parameters
        ----------
        flat : (n, rows, cols) array_like, dask array or signal
            The frames (any leading dimensions are flattened). A signal is read through its
            ``.data``.
        dark : (rows, cols) or (m, rows, cols) array_like, or signal, optional
            Dark frame (a dark series is averaged), subtracted from every frame.
        offset : float, optional
            A constant dark level to subtract instead. Give ``dark`` or ``offset``, not both.
        size : int, default :data:`DEFAULT_SIZE`
            Odd window side in pixels.
        mask : (rows, cols) bool array, optional
            Pixels to leave out (True), e.g. hot pixels.
        saturation : float, optional
            Raw value at or above which a pixel is saturated. Default: the maximum of an
            integer dtype (none for floats).

        Returns
        -------
        DetectorNoise
            ``info`` holds ``method="flat_field"``, ``n_frames`` and ``mean`` (detector units
            per pixel per frame after the dark).

        Raises
        ------
        ValueError
            Fewer than 2 frames, saturated pixels, a frame with a non-positive mean after
            the dark (a blank frame), non-finite values, a dark or mask of the wrong shape,
            both ``dark`` and ``offset``, or a bad ``size``.
        TypeError
            For input that is not an array of real numbers.

        Examples
        --------
        >>> import femlib
        >>> flat = femlib.data.synthetic_flat_field(100, (64, 64), dose=200, gain=4.2,
        ...                                         psf_sigma=0.5, offset=100.0, seed=1)
        >>> noise = DetectorNoise.from_flat_field(flat, offset=100.0, size=5)
        >>> abs(noise.gain / 4.2 - 1) < 0.03  # a 5x5 window holds this PSF's kernel
        True
        >>> round(noise.k0, 2)  # the analytic K(0) of this PSF is 1.12
        1.12
        """
        return cls(*_measure.flat_field_kernel(flat, dark, offset, size, mask, saturation))

    @classmethod
    def from_scan(
        cls, s, mask=None, radial_range=None, size=DEFAULT_SIZE, offset=None, background=True,
        navigation_mask=None,
    ):
        r"""Estimate the kernel from the FEM scan itself, without a flat field.

        **Method.** Frames are taken in non-overlapping pairs of scan neighbours ``(n, n+1)``
        (row-major order; pairs do not straddle the blocks of 32 MiB read at a time). The
        difference ``d = D_n - D_{n+1}`` removes the mean pattern and the slow thickness
        variation; its noise covariance is ``(<D_n> + <D_{n+1}>) K``. Inside an annulus of
        pixels (high k by default, where the structural speckle is weakest),

        .. math:: K_\mathrm{raw}(Δ) = \frac{\sum_{\text{pairs}} \sum_p d_p\, d_{p+Δ}}
                  {\sum_{\text{pairs}} \sum_p (s_p + s_{p+Δ}) / 2},
                  \qquad s = D_n + D_{n+1},

        over the pixel pairs with both pixels in the annulus (pixels within ``size // 2`` of
        the detector edge are left out, as in :meth:`from_flat_field`). The structure of two
        different probe positions does not cancel in ``d``: it adds ``<D> V_s(k)`` times its
        correlation over the lag. The speckle (and any residual thickness step) varies slowly over a
        window of a few pixels, so it is estimated as the mean of ``K_raw`` on the window's
        border (where the noise kernel has decayed) and subtracted from every lag:
        ``K = K_raw - background``.

        **Residual bias.** What is left is the part of the structural covariance that
        changes across the window (speckle narrower than the window) plus the kernel's own
        tail on the border (below 1e-4 of the gain for a Gaussian PSF of σ ≤ 1 px in the
        default window). On femlib's synthetic data it is below 1 % of the gain with the
        default annulus (see :doc:`/user_guide/noise`); use a flat field when the speckle is
        as fine as the PSF.

        Parameters
        ----------
        s : signal or array_like, shape (..., rows, cols)
            The scan; a HyperSpy signal is read through ``.data`` (numpy or dask: one
            streaming pass with bounded memory) and its ``calibration`` (centre, affine,
            scale, mask) defines the radii. A plain array uses the detector middle as the
            centre and radii in pixels.
        mask : (rows, cols) bool array, optional
            Pixels to leave out (True): beam stop, dead or hot pixels. Default: the signal's
            ``calibration.mask`` if any.
        radial_range : (float, float), optional
            Annulus ``(start, stop)`` in calibrated units (pixels for an array). Default:
            from 0.9 of the largest radius of a circle on the detector to the detector
            corners.
        size : int, default :data:`DEFAULT_SIZE`
            Odd window side in pixels.
        offset : float or (rows, cols) array, optional
            Dark level subtracted before the normalisation (it cancels in ``d``).
        background : bool, default True
            Subtract the border mean (the slowly varying structural covariance). It removes
            most of the structure's bias but about triples the statistical error of the gain
            (the border mean is multiplied by the window's area); False keeps ``K_raw``, for
            an annulus known to be free of structure.
        navigation_mask : bool array, optional
            Probe positions to leave out (True, navigation shaped), e.g. the outlier
            patterns of ``find_outlier_patterns``: a pair with either position left out is
            not used (Bragg spots of a crystalline pattern do not cancel in ``d`` and would
            inflate the kernel by orders of magnitude).

        Returns
        -------
        DetectorNoise
            ``info`` holds ``method="scan"``, ``n_pairs``, ``n_pixels`` (annulus),
            ``radial_range`` (the annulus used) and ``background`` (the subtracted floor,
            per lag).

        Raises
        ------
        ValueError
            Fewer than 2 frames, an annulus with fewer than ``size**2`` pixels, a mask of the
            wrong shape, a bad ``radial_range`` or ``size``, non-finite values in the annulus
            or a non-positive mean there.

        Examples
        --------
        >>> import femlib
        >>> s = femlib.data.synthetic_fem((16, 16), (64, 64), modulation=False, seed=3)
        >>> noise = DetectorNoise.from_scan(s, mask=s.metadata.Simulation.beam_stop_mask,
        ...                                 size=5)
        >>> abs(noise.gain / 4.2 - 1) < 0.05
        True
        """
        return cls(*_measure.scan_kernel(s, mask, radial_range, size, offset, background,
                                         navigation_mask))

    # -- use ----------------------------------------------------------------------------
    def shot_weights(self, matrix, detector_shape=None):
        r"""Shot weights ``s_kp = w_kp Σ_q K(q - p) w_kq`` of a weight matrix.

        ``Σ_p s_kp <D_p>`` is the noise variance of the ring sum ``Σ_p w_kp D_p``. Pixels
        outside the detector contribute nothing. Computed as one gather per kernel lag over
        the non-zeros of ``W`` (blocks of bins scattered into a zero-padded dense image).

        Parameters
        ----------
        matrix : scipy sparse matrix (K, P), or an object with ``.matrix`` and
            ``.detector_shape`` (e.g. :class:`femlib.integration.AzimuthalWeights`)
            The weights ``W``, pixels flattened row-major.
        detector_shape : (rows, cols), optional
            Needed for a bare matrix unless the detector is square (``P`` a perfect square).

        Returns
        -------
        scipy.sparse.csr_matrix, shape (K, P)
            Same sparsity as ``W`` (same stored entries), in detector units per electron.
            For :meth:`counting` ``(G)`` this is exactly ``G * W**2``.

        Raises
        ------
        ValueError
            If the detector shape is unknown or does not match ``P``.
        TypeError
            If ``matrix`` is not a 2D sparse or dense matrix.

        Examples
        --------
        >>> import scipy.sparse as sp
        >>> w = sp.csr_matrix(np.array([[1.0, 0.5, 0.0, 0.0]]))  # top row of a 2x2 detector
        >>> noise = DetectorNoise([[0.0, 0.0, 0.0], [0.5, 2.0, 0.5], [0.0, 0.0, 0.0]])
        >>> noise.shot_weights(w).toarray()  # 1 * (2 * 1 + 0.5 * 0.5), 0.5 * (2 * 0.5 + 0.5 * 1)
        array([[2.25, 0.75, 0.  , 0.  ]])
        >>> DetectorNoise.counting(4.0).shot_weights(w).toarray()
        array([[4., 1., 0., 0.]])
        """
        if detector_shape is None and hasattr(matrix, "detector_shape"):
            detector_shape = matrix.detector_shape
        matrix = getattr(matrix, "matrix", matrix)
        if sp.issparse(matrix):
            w = sp.csr_matrix(matrix)
        else:
            arr = np.asarray(matrix)
            if arr.ndim != 2:
                raise TypeError(
                    f"matrix must be a 2D (bins, pixels) sparse matrix, got shape {arr.shape}"
                )
            w = sp.csr_matrix(arr.astype(float))
        nbins, npix = w.shape
        if detector_shape is None:
            side = math.isqrt(npix)
            if side * side != npix:
                raise ValueError(
                    f"matrix has {npix} pixels, not a square detector: pass detector_shape"
                )
            detector_shape = (side, side)
        ny, nx = (int(v) for v in detector_shape)
        if ny * nx != npix:
            raise ValueError(
                f"detector_shape {(ny, nx)} has {ny * nx} pixels but matrix has {npix}"
            )
        w = w.copy()
        w.sort_indices()
        data = w.data.astype(np.float64)
        kern = self._kernel
        hy, hx = kern.shape[0] // 2, kern.shape[1] // 2
        nz = [(dy - hy, dx - hx, kern[dy, dx]) for dy, dx in zip(*np.nonzero(kern), strict=True)]
        if len(nz) == 1 and nz[0][:2] == (0, 0):
            # The counting model: exactly G W**2, as the independent-pixel code computes it.
            out = nz[0][2] * data**2
            return sp.csr_matrix((out, w.indices.copy(), w.indptr.copy()), shape=w.shape)
        py, px = ny + 2 * hy, nx + 2 * hx
        rows_of = np.repeat(np.arange(nbins), np.diff(w.indptr))
        r, c = np.divmod(w.indices.astype(np.int64), nx)
        acc = np.zeros_like(data)
        per_block = max(1, _BLOCK_ELEMENTS // (py * px))
        for b0 in range(0, nbins, per_block):
            b1 = min(nbins, b0 + per_block)
            lo, hi = w.indptr[b0], w.indptr[b1]
            if hi == lo:
                continue
            dense = np.zeros((b1 - b0) * py * px)
            flat = (rows_of[lo:hi] - b0) * (py * px) + (r[lo:hi] + hy) * px + (c[lo:hi] + hx)
            dense[flat] = data[lo:hi]
            part = np.zeros(hi - lo)
            for dy, dx, kv in nz:
                part += kv * dense[flat + (dy * px + dx)]
            acc[lo:hi] = part
        return sp.csr_matrix((data * acc, w.indices.copy(), w.indptr.copy()), shape=w.shape)

    def plot(self, ax=None, **kwargs):
        """Show ``K(Δ)`` as an image (matplotlib), zero lag at the centre.

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Where to draw; a new figure by default.
        **kwargs
            Passed to ``ax.imshow`` (e.g. ``cmap``).

        Returns
        -------
        matplotlib.axes.Axes

        Examples
        --------
        >>> ax = DetectorNoise.counting(4.2).plot()
        >>> ax.get_title()
        'noise kernel K: gain 4.2, K(0) 4.2'
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots()
        ny, nx = self.size
        hy, hx = ny // 2, nx // 2
        kwargs.setdefault("cmap", "viridis")
        image = ax.imshow(
            self._kernel, extent=(-hx - 0.5, hx + 0.5, hy + 0.5, -hy - 0.5), **kwargs
        )
        ax.figure.colorbar(image, ax=ax, label="K (detector units per electron)")
        ax.set_xlabel("Δx (pixels)")
        ax.set_ylabel("Δy (pixels)")
        ax.set_title(f"noise kernel K: gain {self.gain:.4g}, K(0) {self.k0:.4g}")
        return ax


def _second_moments(h):
    """Centred second moments ``(μ2_y, μ2_x)`` of a non-negative 2D array of sum 1."""
    y, x = np.mgrid[0 : h.shape[0], 0 : h.shape[1]].astype(float)
    my, mx = (h * y).sum(), (h * x).sum()
    return float((h * (y - my) ** 2).sum()), float((h * (x - mx) ** 2).sum())


def _psf_curvature(h):
    """``(c_y, c_x) = (μ2(h²/Σh²) - μ2(h)) / 2`` of a PSF ``h`` of sum 1."""
    sq = h * h / np.sum(h * h)
    return tuple(0.5 * (a - b) for a, b in zip(_second_moments(sq), _second_moments(h),
                                                strict=True))


def _pixel_gaussian(sigma):
    """1D profile of a Gaussian of ``sigma`` px integrated over each pixel, sum 1."""
    if sigma <= 0:
        return np.ones(1)
    half = int(math.ceil(5 * sigma)) + 1
    edges = (np.arange(-half, half + 2) - 0.5) / (sigma * math.sqrt(2))
    profile = np.diff([math.erf(e) for e in edges])
    return profile / profile.sum()


def _curvature_table():
    sigmas = np.concatenate([np.linspace(0.0, 0.2, 21)[:-1], np.geomspace(0.2, 8.0, 200)])
    s1, c = [], []
    for sigma in sigmas:
        p = _pixel_gaussian(sigma)
        s1.append(float(np.sum(p * p)))
        c.append(_psf_curvature(np.outer(np.ones(1), p))[1])
    return np.array(s1), np.array(c)


_CURVATURE_TABLE = None


def _gaussian_curvature(sum_sq_1d):
    """``c`` of a pixel-integrated Gaussian PSF whose 1D profile has ``sum p^2`` given."""
    global _CURVATURE_TABLE
    if _CURVATURE_TABLE is None:
        _CURVATURE_TABLE = _curvature_table()
    s1, c = _CURVATURE_TABLE  # s1 decreases with sigma
    return float(np.interp(sum_sq_1d, s1[::-1], c[::-1]))
