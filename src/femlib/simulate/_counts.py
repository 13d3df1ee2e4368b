r"""Detector counts of a noise-free simulated scan: Poisson electrons, gain, detector PSF."""

import math
import numbers

import numpy as np

from femlib.data._synthetic import _apply_psf, _check_psf_sigma, _psf_profile

__all__ = ["add_counts", "psf_kernel"]


def psf_kernel(psf_sigma):
    """The 2D detector PSF ``h`` of :func:`add_counts` (a pixel-integrated Gaussian).

    Parameters
    ----------
    psf_sigma : float
        Gaussian standard deviation in pixels; 0 gives ``[[1.0]]``.

    Returns
    -------
    (m, m) ndarray
        ``h`` with ``sum h = 1`` and odd sides, the outer product of the 1D profile used by
        :func:`femlib.data.synthetic_fem` (truncated at ``ceil(4 sigma) + 1`` pixels). Give it
        to :meth:`femlib.noise.DetectorNoise.from_psf` for the matching noise kernel
        ``K = G h * h``.

    Examples
    --------
    >>> h = psf_kernel(0.5)
    >>> h.shape, round(float(h.sum()), 12)
    ((7, 7), 1.0)
    """
    profile = _psf_profile(_check_psf_sigma(psf_sigma))
    return np.outer(profile, profile)


def _counts_block(block, dose, gain, profile, seed, start):
    """``gain * (h * Poisson(dose I))`` of a block whose first navigation index is ``start``.

    Every index ``i`` of the first navigation axis draws from ``default_rng([seed, i])``,
    so the counts do not depend on the chunking.
    """
    out = np.empty(block.shape, dtype=np.float32)
    for i in range(block.shape[0]):
        rng = np.random.default_rng([seed, start + i])
        lam = np.maximum(np.asarray(block[i], dtype=np.float64), 0.0) * dose
        counts = rng.poisson(lam).astype(np.float64)
        if profile.size > 1:
            counts = _apply_psf(counts, profile)
        out[i] = gain * counts
    return out


def add_counts(s, dose, gain=1.0, psf_sigma=0.0, seed=None):
    r"""The "measured" version of a simulated scan: Poisson electrons, gain and detector PSF.

    .. math:: D_n(p) = G\, \bigl(h \ast N_n\bigr)(p), \qquad
              N_n(p) \sim \mathrm{Poisson}\bigl(\mathrm{dose} \cdot I_n(p)\bigr),

    with ``I_n(p)`` the simulated intensity (the fraction of the incident beam in pixel
    ``p``, as :func:`nanodiffraction` returns it), so ``dose`` is the number of **electrons
    incident per pattern** (per probe position). ``h`` is the pixel-integrated Gaussian PSF
    of ``psf_sigma`` pixels (:func:`psf_kernel`, charge spread past the detector edge is
    lost), the same model as :func:`femlib.data.synthetic_fem`: the PSF acts on electrons,
    so the detector's noise kernel is ``K = G h * h``
    (``femlib.noise.DetectorNoise.from_psf(psf_kernel(psf_sigma), gain)``), and with no PSF
    the counting model ``get_variance(gain=G)`` is exact.

    Parameters
    ----------
    s : FEMDiffraction2D or LazyFEMDiffraction2D
        Noise-free intensities (non-negative), e.g. from :func:`nanodiffraction`.
    dose : float
        Incident electrons per pattern (> 0).
    gain : float, default 1.0
        Detector units per electron (> 0).
    psf_sigma : float, default 0.0
        Detector PSF standard deviation in pixels (>= 0).
    seed : int or None
        Seed of the draws; None draws a fresh one (stored in the metadata). Each index of
        the first navigation axis has its own generator, so lazy and eager give the same
        counts for any chunking.

    Returns
    -------
    FEMDiffraction2D or LazyFEMDiffraction2D
        A new float32 signal (lazy input gives lazy output); ``metadata.Simulation`` gains
        ``dose``, ``gain``, ``psf_sigma``, ``psf`` and ``seed``. The input is not modified.

    Raises
    ------
    ValueError
        A non-positive ``dose`` or ``gain``, a negative ``psf_sigma``, negative or
        non-finite intensities (eager input), or a signal without navigation axes.
    TypeError
        ``s`` is not a signal.

    Examples
    --------
    >>> import femlib, ase
    >>> atoms = ase.Atoms("Zr", positions=[[20.0, 20.0, 5.0]], cell=[40, 40, 10])
    >>> model = femlib.simulate.nanodiffraction(
    ...     atoms, semiangle=5.0, positions=[[2.0, 2.0]], detector_shape=(32, 32), scale=0.25)
    >>> counted = add_counts(model, dose=1e5, gain=2.0, seed=0)
    >>> round(float(counted.data.sum()) / (2.0 * 1e5), 2)  # electrons / dose
    1.0
    """
    for name, value in (("dose", dose), ("gain", gain)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a positive number, got {value!r}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value}")
    dose, gain = float(dose), float(gain)
    psf_sigma = _check_psf_sigma(psf_sigma)
    if not hasattr(s, "axes_manager") or not hasattr(s, "data"):
        raise TypeError(f"s must be a HyperSpy signal, got {type(s).__name__}")
    if s.axes_manager.navigation_dimension < 1:
        raise ValueError("s must have at least one navigation axis (the probe positions)")
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % 2**63)
    elif isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    seed = int(seed)
    profile = _psf_profile(psf_sigma)
    data = s.data  # array order: navigation axes reversed, then signal (ky, kx)
    if s._lazy:
        import dask.array as da

        data = data.rechunk({i: -1 for i in range(1, data.ndim)})

        def block(x, block_info=None):
            start = block_info[0]["array-location"][0][0]
            return _counts_block(x, dose, gain, profile, seed, start)

        counted = da.map_blocks(block, data, dtype=np.float32)
    else:
        arr = np.asarray(data)
        if not np.all(np.isfinite(arr)) or arr.min() < 0:
            raise ValueError("s must hold finite, non-negative intensities")
        counted = _counts_block(arr, dose, gain, profile, seed, 0)
    out = s._deepcopy_with_new_data(counted)
    out.metadata.Signal.quantity = "Counts (detector units)"
    title = out.metadata.General.get_item("title", "") or "Simulated scan"
    out.metadata.General.title = f"{title}, {dose:.3g} e-/pattern"
    for key, value in {
        "dose": dose,
        "dose_units": "electrons per pattern",
        "gain": gain,
        "psf_sigma": psf_sigma,
        "psf": np.outer(profile, profile),
        "seed": seed,
    }.items():
        out.metadata.set_item(f"Simulation.{key}", value)
    return out
