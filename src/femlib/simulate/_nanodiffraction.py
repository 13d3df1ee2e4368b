"""``nanodiffraction``: a calibrated FEM scan simulated from an atomic model."""

import math
import numbers

import numpy as np

from femlib.simulate import _kinematic, _multislice, _potentials

__all__ = ["nanodiffraction", "METHODS"]

#: Simulation methods of :func:`nanodiffraction`.
METHODS = ("kinematic", "multislice")
_CHUNK_BYTES = 32e6
_FOV_TOLERANCE = 1e-9  # relative: a cell this close to 1/scale is simulated as one abTEM cell


def _positive(value, name, unit):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number ({unit}), got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number ({unit}), got {value}")
    return value


def _finite(value, name, unit):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number ({unit}), got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite ({unit}), got {value}")
    return value


def _shape(value, name):
    try:
        shape = tuple(int(v) for v in value)
        ok = len(shape) == 2 and all(v == w for v, w in zip(shape, value, strict=True))
    except (TypeError, ValueError):
        ok = False
    if not ok or min(shape) < 4:
        raise ValueError(f"{name} must be two integers >= 4 (rows, columns), got {value!r}")
    return shape


def _model_arrays(atoms):
    """Positions (nm, ``(n, 3)`` as ``x, y, z``), symbols, in-plane cell lengths, cell z,
    pbc of a duck-typed ``ase.Atoms``."""
    try:
        xyz = np.asarray(atoms.get_positions(), dtype=float) / 10.0
        symbols = np.asarray(atoms.get_chemical_symbols())
        numbers_ = np.asarray(atoms.get_atomic_numbers())
        cell = np.asarray(atoms.get_cell(), dtype=float) / 10.0
        pbc = np.asarray(atoms.get_pbc(), dtype=bool)
    except AttributeError:
        raise TypeError(
            f"atoms must be an ase.Atoms (or have its get_positions, get_chemical_symbols, "
            f"get_cell and get_pbc methods), got {type(atoms).__name__}"
        ) from None
    if len(xyz) == 0:
        raise ValueError("atoms holds no atoms")
    if not np.all(np.isfinite(xyz)):
        raise ValueError("atoms has non-finite positions")
    off = cell - np.diag(np.diag(cell))
    if np.any(np.abs(off) > 1e-9 * max(1.0, np.abs(cell).max())):
        raise ValueError(
            "atoms has a non-orthogonal cell; femlib.simulate supports orthogonal cells "
            "(a along x, b along y, c along z): orthogonalise it first, e.g. with "
            "abtem.orthogonalize_cell"
        )
    lengths = np.diag(cell).copy()
    for i in range(2):
        if pbc[i] and lengths[i] <= 0:
            raise ValueError(f"atoms is periodic along {'xy'[i]} but its cell length is 0")
    for symbol in np.unique(symbols):
        _potentials._parameters(str(symbol))  # clear error for an unsupported element
    return xyz, symbols, numbers_, lengths, pbc


def _scan_positions(positions, scan_step, lengths, pbc, xyz):
    """Probe positions ``(y, x)`` nm, navigation shape, navigation axes."""
    if positions is None:
        step = _positive(scan_step, "scan_step", "nm")
        lo = np.zeros(2)
        span = lengths[:2].copy()
        for i in range(2):
            if not pbc[i] and span[i] <= 0:
                lo[i] = xyz[:, i].min()
                span[i] = np.ptp(xyz[:, i])
        counts = np.floor(span / step + 1e-9).astype(int)
        if np.any(counts < 1):
            raise ValueError(
                f"scan_step {step} nm is larger than the model ({span[0]:.3g} x "
                f"{span[1]:.3g} nm): use a smaller step or explicit positions"
            )
        x = lo[0] + step * (np.arange(counts[0]) + 0.5)
        y = lo[1] + step * (np.arange(counts[1]) + 0.5)
        scan = np.stack(np.meshgrid(y, x, indexing="ij"), axis=-1)  # (ny, nx, 2) as (y, x)
        axes = [
            {"name": "y", "size": len(y), "scale": step, "offset": y[0], "units": "nm"},
            {"name": "x", "size": len(x), "scale": step, "offset": x[0], "units": "nm"},
        ]
        return scan, axes
    pos = np.asarray(positions, dtype=float)
    if pos.ndim not in (2, 3) or pos.shape[-1] != 2 or pos.size == 0:
        raise ValueError(
            f"positions must be an (n, 2) or (ny, nx, 2) array of probe positions (x, y) "
            f"in nm, got shape {pos.shape}"
        )
    if not np.all(np.isfinite(pos)):
        raise ValueError("positions must be finite")
    scan = pos[..., ::-1].copy()
    names = ("position",) if pos.ndim == 2 else ("row", "column")
    axes = [
        {"name": n, "size": s, "scale": 1.0, "offset": 0.0, "units": ""}
        for n, s in zip(names, pos.shape[:-1], strict=True)
    ]
    return scan, axes


def _with_images(xyz, symbols, numbers_, lengths, pbc, lo, hi):
    """Atoms (``(y, x, z)`` nm) plus the periodic images that fall in ``[lo, hi)`` (y, x)."""
    yxz = xyz[:, [1, 0, 2]]
    parts = [(yxz, symbols, numbers_)]
    shifts = []
    ranges = []
    for axis, cell_axis in ((0, 1), (1, 0)):
        if pbc[cell_axis]:
            length = lengths[cell_axis]
            first = int(math.floor((lo[axis] - yxz[:, axis].max()) / length))
            last = int(math.ceil((hi[axis] - yxz[:, axis].min()) / length))
            ranges.append(range(first, last + 1))
        else:
            ranges.append(range(0, 1))
    for iy in ranges[0]:
        for ix in ranges[1]:
            if iy or ix:
                shifts.append((iy, ix))
    for iy, ix in shifts:
        shifted = yxz + np.array([iy * lengths[1], ix * lengths[0], 0.0])
        parts.append((shifted, symbols, numbers_))
    allpos = np.concatenate([p[0] for p in parts])
    keep = np.all((allpos[:, :2] >= lo) & (allpos[:, :2] < hi), axis=1)
    return (
        allpos[keep],
        np.concatenate([p[1] for p in parts])[keep],
        np.concatenate([p[2] for p in parts])[keep],
    )


class _Simulator:
    """Everything a chunk of probe positions needs (picklable, built once per call)."""

    def __init__(self, method, detector_shape, **kw):
        self.method = method
        self.detector_shape = detector_shape
        self.__dict__.update(kw)

    def __call__(self, scan):
        """Patterns ``scan.shape[:-1] + detector_shape`` (float32) of probes at ``scan``."""
        flat = scan.reshape(-1, 2)
        if self.method == "kinematic":
            out = _kinematic.patterns(
                self.transmission, self.origin, self.dx, self.spectrum, flat,
                self.detector_shape, self.periodic,
            )
        elif self.direct:
            full = _multislice.run_abtem(
                self.atoms, flat[:, ::-1] * 10.0, self.energy, self.semiangle,
                self.defocus, self.gpts, self.slice_thickness,
            )
            out = _multislice.crop(full, self.detector_shape).astype(np.float32)
        else:
            ase = _multislice.require("ase")
            out = np.empty((len(flat),) + self.detector_shape, dtype=np.float32)
            for n, centre in enumerate(flat):
                window, probe = _multislice.window_atoms(
                    ase, self.positions, self.numbers, self.cell_z, centre, self.fov,
                    self.fov / self.gpts,
                )
                full = _multislice.run_abtem(
                    window, [probe], self.energy,
                    self.semiangle, self.defocus, self.gpts, self.slice_thickness,
                )
                out[n] = _multislice.crop(full[0], self.detector_shape)
        return out.reshape(scan.shape[:-1] + self.detector_shape)


def nanodiffraction(
    atoms,
    energy=200.0,
    semiangle=2.0,
    defocus=0.0,
    scan_step=1.0,
    positions=None,
    detector_shape=(128, 128),
    scale=0.125,
    method="kinematic",
    lazy=False,
    gpts=None,
    weak_phase=False,
    slice_thickness=0.1,
    chunks=None,
):
    r"""Simulated nanobeam diffraction scan of an atomic model: a calibrated FEM dataset.

    Each probe position ``r_n`` gives the noise-free pattern ``I_n(k) = |Psi_n(k)|^2`` of a
    coherent probe (aperture semi-angle ``semiangle``, ``defocus``) through the model, in
    units of the fraction of the incident beam per detector pixel (an empty sample's pattern
    sums to 1). One pattern is the FFT of a ``gpts x gpts`` window of side ``1 / scale`` nm
    centred on the probe, so detector pixels are FFT frequencies spaced ``scale``; the
    transmission function is band-limited to 2/3 of the grid's Nyquist frequency, which
    must contain the detector. Atoms are frozen (no thermal diffuse scattering).

    ``method="kinematic"`` (native, fast): the whole projected potential ``v_z`` as one
    phase object ``t = exp(i sigma v_z)`` (``1 + i sigma v_z`` with ``weak_phase=True``),
    ``Psi_n = F[P(r - r_n) t]``: single scattering by the projected structure, good for thin
    samples (``docs/user_guide/simulation.rst`` gives the thickness where it departs from
    multislice). ``method="multislice"``: abTEM's multislice with slices of
    ``slice_thickness`` on the same grid (``pip install femlib[sim]``), for thick samples.

    Parameters
    ----------
    atoms : ase.Atoms
        The model, positions in Å, with an orthogonal cell (the beam runs along -z through
        the whole model). Periodic directions (``atoms.pbc``) are tiled with images.
    energy : float, default 200.0
        Beam energy in keV.
    semiangle : float, default 2.0
        Probe convergence semi-angle in mrad.
    defocus : float, default 0.0
        Defocus in nm (abTEM's sign: positive = underfocus, ``C10 = -defocus``).
    scan_step : float, default 1.0
        Step of the square scan grid over the cell's x-y extent (nm), first position at
        half a step; ignored when ``positions`` is given.
    positions : (n, 2) or (ny, nx, 2) array_like or None
        Explicit probe positions ``(x, y)`` in nm, model coordinates (Å / 10).
    detector_shape : (int, int), default (128, 128)
        Detector rows, columns; ``k = 0`` is at pixel ``(rows // 2, cols // 2)``.
    scale : float, default 0.125
        Reciprocal sampling in nm^-1 per pixel (field of view ``1 / scale`` nm).
    method : {"kinematic", "multislice"}
        See above.
    lazy : bool, default False
        Return a :class:`~femlib.signals.LazyFEMDiffraction2D` whose chunks (scan rows)
        are simulated when computed: ``get_variance`` on it is one streaming pass.
    gpts : int or None
        Window side in pixels (even); None = the smallest fast size whose antialiasing
        limit holds the detector's corners.
    weak_phase : bool, default False
        Kinematic route only: the weak-phase object ``1 + i sigma v_z``.
    slice_thickness : float, default 0.1
        Multislice only: slice thickness in nm.
    chunks : int or None
        Scan rows (or positions, for an ``(n, 2)`` list) per lazy chunk; None = about
        32 MB of patterns.

    Returns
    -------
    FEMDiffraction2D or LazyFEMDiffraction2D
        Float32 patterns, navigation ``(y, x)`` in nm for a grid scan; signal axes ``ky,
        kx`` in ``nm^-1`` with the pattern centre as the axes' origin.
        ``metadata.Simulation`` holds every parameter, the probe positions (``(x, y)`` nm),
        the grid (``gpts``, ``sampling`` in nm), ``wavelength`` (nm), ``interaction_constant``
        (rad / V nm), ``probe_diameter`` (nm, 90 % of the intensity), the model's
        ``composition`` (atom fractions), ``n_atoms``, ``cell`` (nm) and ``thickness`` (nm).

    Raises
    ------
    ValueError
        No atoms inside the scanned area; a detector beyond the antialiasing limit of
        ``gpts``; a probe larger than the cell or than half the field of view; a
        non-orthogonal cell; an element without scattering-factor parameters; bad numbers.
    ImportError
        ``method="multislice"`` without abTEM (the message names ``pip install
        femlib[sim]``).

    References
    ----------
    E. J. Kirkland, *Advanced Computing in Electron Microscopy*, 2nd ed. (Springer, 2010).
    I. Lobato and D. Van Dyck, Acta Cryst. A 70 (2014) 636 (scattering factors).
    J. Madsen and T. Susi, Open Res. Europe 1 (2021) 24 (abTEM).

    Examples
    --------
    >>> import ase
    >>> atoms = ase.Atoms("Zr", positions=[[20.0, 20.0, 5.0]], cell=[40, 40, 10])
    >>> s = nanodiffraction(atoms, semiangle=5.0, positions=[[2.0, 2.0]],
    ...                     detector_shape=(32, 32), scale=0.25)
    >>> s
    <FEMDiffraction2D, title: Simulated nanodiffraction (kinematic), dimensions: (1|32, 32)>
    >>> s.metadata.Simulation.gpts
    100
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    energy = _positive(energy, "energy", "keV")
    semiangle = _positive(semiangle, "semiangle", "mrad")
    defocus = _finite(defocus, "defocus", "nm")
    scale = _positive(scale, "scale", "nm^-1 per pixel")
    slice_thickness = _positive(slice_thickness, "slice_thickness", "nm")
    detector_shape = _shape(detector_shape, "detector_shape")
    if method == "multislice":
        _multislice.require("abtem")
        ase = _multislice.require("ase")
        if weak_phase:
            raise ValueError("weak_phase applies to method='kinematic' only")
    xyz, symbols, numbers_, lengths, pbc = _model_arrays(atoms)

    lam = _potentials.wavelength(energy)
    aperture = semiangle * 1e-3 / lam
    minimum = _kinematic.default_gpts(detector_shape, scale, aperture)
    if gpts is None:
        gpts = minimum
    elif isinstance(gpts, bool) or not isinstance(gpts, numbers.Integral) or gpts % 2:
        raise ValueError(f"gpts must be an even integer (window side in pixels), got {gpts!r}")
    gpts = int(gpts)
    reach = _kinematic.detector_reach(detector_shape, scale, aperture)
    limit = _kinematic.detector_limit(gpts, scale)
    if reach > limit:
        raise ValueError(
            f"detector_shape {detector_shape} at scale {scale} nm^-1 needs frequencies up to "
            f"{reach:.3g} nm^-1 (its corner plus the probe aperture's radius "
            f"{aperture:.3g} nm^-1), beyond the antialiasing limit {limit:.3g} nm^-1 of a "
            f"{gpts}-pixel grid (2/3 of its Nyquist frequency): use gpts >= {minimum} "
            "(or None), a smaller detector or a smaller scale"
        )
    fov = 1.0 / scale
    dx = fov / gpts
    sigma = _potentials.interaction_constant(energy)
    spectrum = _kinematic.probe_spectrum(gpts, dx, lam, semiangle, defocus)
    diameter = _kinematic.probe_diameter(spectrum, dx)
    for i in range(2):
        if pbc[i] and diameter > lengths[i]:
            raise ValueError(
                f"the probe ({diameter:.3g} nm across, 90 % of its intensity) is larger than "
                f"the cell ({lengths[0]:.3g} x {lengths[1]:.3g} nm): it would see its own "
                "periodic images; use a larger model or a larger semiangle"
            )
    if diameter > fov / 2:
        raise ValueError(
            f"the probe ({diameter:.3g} nm across) is larger than half the field of view "
            f"1/scale = {fov:.3g} nm: use a smaller scale or a larger semiangle"
        )

    scan, nav_axes = _scan_positions(positions, scan_step, lengths, pbc, xyz)
    flat = scan.reshape(-1, 2)
    probe_r = diameter / 2
    lo_scan, hi_scan = flat.min(axis=0) - probe_r, flat.max(axis=0) + probe_r
    near, _, _ = _with_images(xyz, symbols, numbers_, lengths, pbc, lo_scan, hi_scan)
    if len(near) == 0:
        raise ValueError(
            f"no atoms inside the scanned area (y {lo_scan[0]:.3g} to {hi_scan[0]:.3g} nm, "
            f"x {lo_scan[1]:.3g} to {hi_scan[1]:.3g} nm, probe radius included): check the "
            "positions (x, y in nm, model coordinates = Å / 10)"
        )
    margin = fov / 2 + _kinematic._TAIL + 4 * dx
    allpos, allsym, allnum = _with_images(
        xyz, symbols, numbers_, lengths, pbc, flat.min(axis=0) - margin,
        flat.max(axis=0) + margin,
    )

    cell_z = lengths[2] if lengths[2] > 0 else float(xyz[:, 2].max()) + 0.1
    thickness = lengths[2] if lengths[2] > 0 else float(np.ptp(xyz[:, 2]))
    if method == "kinematic":
        pixels = lengths[:2] / dx
        if pbc[0] and pbc[1] and np.all(np.abs(pixels - np.round(pixels)) < 1e-6):
            # A cell of whole pixels: one period of the potential serves every window.
            model = _kinematic.KinematicModel(
                xyz[:, [1, 0]], symbols, flat, gpts, dx, sigma, weak_phase,
                cell=(lengths[1], lengths[0]),
            )
        else:
            model = _kinematic.KinematicModel(
                allpos[:, :2], allsym, flat, gpts, dx, sigma, weak_phase
            )
        sim = _Simulator(
            method, detector_shape, transmission=model.transmission, origin=model.origin,
            dx=dx, spectrum=spectrum.astype(np.complex128), periodic=model.periodic,
        )
    else:
        direct = bool(
            pbc[0] and pbc[1]
            and abs(lengths[0] - fov) <= _FOV_TOLERANCE * fov
            and abs(lengths[1] - fov) <= _FOV_TOLERANCE * fov
        )
        if lengths[2] <= 0 or np.any(xyz[:, 2] < 0) or np.any(xyz[:, 2] > lengths[2]):
            raise ValueError(
                "method='multislice' needs a cell with a z length that holds every atom "
                "(0 <= z <= c); set atoms.cell[2, 2] or center the atoms"
            )
        common = {
            "energy": energy, "semiangle": semiangle, "defocus": defocus, "gpts": gpts,
            "slice_thickness": slice_thickness, "direct": direct,
        }
        if direct:
            model_atoms = ase.Atoms(
                numbers=numbers_, positions=xyz * 10.0, cell=np.diag(lengths * 10.0),
                pbc=True,
            )
            sim = _Simulator(method, detector_shape, atoms=model_atoms, **common)
        else:
            sim = _Simulator(
                method, detector_shape, positions=allpos, numbers=allnum, cell_z=cell_z,
                fov=fov, **common,
            )

    data = _run(sim, scan, detector_shape, lazy, chunks)

    from femlib.signals import FEMDiffraction2D, LazyFEMDiffraction2D

    sig_axes = [
        {"name": name, "size": n, "scale": scale, "offset": -(n // 2) * scale,
         "units": "nm^-1", "navigate": False}
        for name, n in zip(("ky", "kx"), detector_shape, strict=True)
    ]
    for ax in nav_axes:
        ax["navigate"] = True
    cls = LazyFEMDiffraction2D if lazy else FEMDiffraction2D
    s = cls(data, axes=nav_axes + sig_axes)
    s.metadata.General.title = f"Simulated nanodiffraction ({method})"
    s.metadata.Signal.quantity = "Intensity (fraction of the incident beam per pixel)"
    unique, counts = np.unique(symbols, return_counts=True)
    info = {
        "method": method,
        "energy": energy,
        "semiangle": semiangle,
        "defocus": defocus,
        "scale": scale,
        "detector_shape": detector_shape,
        "gpts": gpts,
        "sampling": dx,
        "field_of_view": fov,
        "wavelength": lam,
        "interaction_constant": sigma,
        "probe_diameter": diameter,
        "positions": scan[..., ::-1].copy(),
        "scan_step": scan_step if positions is None else None,
        "composition": {str(u): c / len(symbols) for u, c in zip(unique, counts, strict=True)},
        "n_atoms": len(symbols),
        "cell": lengths,
        "thickness": thickness,
        "parametrization": "lobato",
    }
    if method == "kinematic":
        info["weak_phase"] = bool(weak_phase)
    else:
        info["slice_thickness"] = slice_thickness
        info["abtem_version"] = _multislice.require("abtem").__version__
    for key, value in info.items():
        if value is not None:
            s.metadata.set_item(f"Simulation.{key}", value)
    return s


def _run(sim, scan, detector_shape, lazy, chunks):
    """Simulate chunk by chunk along the first navigation axis (eager or lazy)."""
    nav = scan.shape[:-1]
    per_row = int(np.prod(nav[1:])) if len(nav) > 1 else 1
    if chunks is None:
        rows = max(1, int(_CHUNK_BYTES // (per_row * np.prod(detector_shape) * 4)))
    elif isinstance(chunks, bool) or not isinstance(chunks, numbers.Integral) or chunks < 1:
        raise ValueError(f"chunks must be a positive integer (scan rows per chunk), got {chunks!r}")
    else:
        rows = int(chunks)
    starts = range(0, nav[0], rows)
    if not lazy:
        return np.concatenate([sim(scan[i : i + rows]) for i in starts])
    import dask
    import dask.array as da

    sim_d = dask.delayed(sim, pure=True)
    blocks = [
        da.from_delayed(
            sim_d(scan[i : i + rows]),
            shape=scan[i : i + rows].shape[:-1] + tuple(detector_shape),
            dtype=np.float32,
        )
        for i in starts
    ]
    return da.concatenate(blocks, axis=0)
