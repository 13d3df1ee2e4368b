"""Multislice nanodiffraction through abTEM (optional dependency: ``pip install femlib[sim]``).

The same grid as the kinematic route (``gpts x gpts`` pixels over a field of view of
``1 / scale`` nm), abTEM's infinite projection of the Lobato potential in slices of
``slice_thickness``, abTEM's probe (``semiangle_cutoff``, ``defocus``), its antialiasing, and
its diffraction patterns, cropped to the detector. abTEM works in Å and indexes arrays
``(x, y)``; femlib in nm and ``(y, x)``: the conversion happens here only.
"""

import numpy as np

__all__ = []

SIM_EXTRA = "pip install femlib[sim]"


def require(name):
    """Import an optional dependency, or raise an ImportError naming the extra."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(
            f"{name} is needed for this part of femlib.simulate; install it with "
            f"`{SIM_EXTRA}` (abTEM and ASE)"
        ) from err


def abtem_parameters(energy, semiangle, defocus, gpts, slice_thickness):
    """Keyword arguments of ``abtem.Potential`` and ``abtem.Probe`` (abTEM units: eV, Å)."""
    potential = {
        "gpts": (gpts, gpts),
        "slice_thickness": slice_thickness * 10.0,
        "projection": "infinite",
        "parametrization": "lobato",
    }
    probe = {
        "energy": energy * 1e3,
        "semiangle_cutoff": semiangle,
        "defocus": defocus * 10.0,
        "soft": False,  # the hard aperture of the kinematic route
    }
    return potential, probe


def crop(array, detector_shape):
    """abTEM patterns ``(..., x, y)``, fftshifted on ``gpts``, to femlib's ``(..., ny, nx)``."""
    gpts = array.shape[-1]
    ny, nx = detector_shape
    c0 = gpts // 2 - nx // 2
    r0 = gpts // 2 - ny // 2
    return np.swapaxes(array[..., c0 : c0 + nx, r0 : r0 + ny], -1, -2)


def run_abtem(atoms, scan_xy, energy, semiangle, defocus, gpts, slice_thickness):
    """abTEM multislice of ``atoms`` (its own cell) for probes at ``scan_xy`` (Å, ``(m, 2)``).

    Returns the full fftshifted patterns ``(m, gpts, gpts)`` in abTEM's ``(x, y)`` order.
    """
    abtem = require("abtem")
    pot_kw, probe_kw = abtem_parameters(energy, semiangle, defocus, gpts, slice_thickness)
    with abtem.config.set({"diagnostics.progress_bar": False}):
        potential = abtem.Potential(atoms, **pot_kw)
        probe = abtem.Probe(**probe_kw)
        waves = probe.multislice(potential, scan=abtem.CustomScan(np.asarray(scan_xy)))
        dp = waves.diffraction_patterns(max_angle=None, block_direct=False, fftshift=True)
        return np.asarray(dp.compute(scheduler="synchronous").array)


def window_atoms(atoms_module, positions, numbers, cell_z, centre, fov, dx):
    """The atoms of the ``fov`` x ``fov`` nm window around ``centre`` (``(y, x)`` nm) as a
    periodic cell (ase.Atoms, Å), and the probe position in it (``(x, y)`` Å).

    The window starts on a whole pixel of the model's grid (pixel ``dx``, origin 0), so the
    atoms keep their sub-pixel positions relative to abTEM's grid and the probe carries the
    sub-pixel remainder, as in the kinematic route: on a periodic model this is the one-cell
    simulation exactly (abTEM's deposit of atoms on the grid is not translation invariant).
    """
    gpts = int(round(fov / dx))
    start = (np.floor(centre / dx) - gpts // 2) * dx
    rel = positions[:, :2] - start
    keep = np.all((rel >= 0) & (rel < fov), axis=1)
    xyz = np.column_stack([rel[keep, 1], rel[keep, 0], positions[keep, 2]]) * 10.0
    atoms = atoms_module.Atoms(
        numbers=numbers[keep], positions=xyz, cell=[fov * 10.0, fov * 10.0, cell_z * 10.0],
        pbc=True,
    )
    probe = (centre - start)[::-1] * 10.0
    return atoms, probe
