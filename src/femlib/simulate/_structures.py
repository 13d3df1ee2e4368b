"""Small structure helpers for examples and tests: a random packing, embedded crystallites.

Real users bring their own models (molecular dynamics, reverse Monte Carlo, ...); these make
two models that differ in medium-range order and nothing else, which is what FEM measures.
"""

import math
import numbers

import numpy as np

from femlib._jit import njit
from femlib.simulate import _potentials

__all__ = ["embed_clusters", "random_packing", "LATTICES"]

#: Lattices :func:`embed_clusters` builds: basis of the cubic cell in units of ``a``.
LATTICES = {
    "fcc": np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
    "bcc": np.array([[0, 0, 0], [0.5, 0.5, 0.5]]),
    "sc": np.array([[0, 0, 0]]),
}
_CELL_CAPACITY = 32
_MAX_ATTEMPTS = 400  # candidate positions per atom before giving up


def _require_ase():
    from femlib.simulate._multislice import require

    return require("ase")


@njit(cache=True)
def _place(cand, box, d, target, pos, n, grid, fill, ncell):  # pragma: no cover - compiled
    """Random sequential addition: accept candidates at least ``d`` from every placed atom
    (periodic box, cell list). Returns the new number of atoms and candidates used."""
    d2 = d * d
    used = 0
    for c in range(cand.shape[0]):
        if n >= target:
            break
        used += 1
        x = cand[c, 0]
        y = cand[c, 1]
        z = cand[c, 2]
        cx = int(x / box[0] * ncell[0]) % ncell[0]
        cy = int(y / box[1] * ncell[1]) % ncell[1]
        cz = int(z / box[2] * ncell[2]) % ncell[2]
        ok = True
        for ix in range(-1, 2):
            if not ok:
                break
            gx = (cx + ix) % ncell[0]
            for iy in range(-1, 2):
                if not ok:
                    break
                gy = (cy + iy) % ncell[1]
                for iz in range(-1, 2):
                    gz = (cz + iz) % ncell[2]
                    for m in range(fill[gx, gy, gz]):
                        j = grid[gx, gy, gz, m]
                        dx = pos[j, 0] - x
                        dx -= box[0] * np.rint(dx / box[0])
                        dy = pos[j, 1] - y
                        dy -= box[1] * np.rint(dy / box[1])
                        dz = pos[j, 2] - z
                        dz -= box[2] * np.rint(dz / box[2])
                        if dx * dx + dy * dy + dz * dz < d2:
                            ok = False
                            break
                    if not ok:
                        break
        if ok and fill[cx, cy, cz] < grid.shape[3]:
            pos[n, 0] = x
            pos[n, 1] = y
            pos[n, 2] = z
            grid[cx, cy, cz, fill[cx, cy, cz]] = n
            fill[cx, cy, cz] += 1
            n += 1
    return n, used


def _check_composition(composition):
    if not isinstance(composition, dict) or not composition:
        raise TypeError(
            f"composition must be a dict of chemical symbols to fractions, got {composition!r}"
        )
    symbols = list(composition)
    fractions = np.array([float(composition[s]) for s in symbols])
    if np.any(~np.isfinite(fractions)) or np.any(fractions < 0) or fractions.sum() <= 0:
        raise ValueError(
            f"composition fractions must be >= 0 with a positive sum, got {composition}"
        )
    for symbol in symbols:
        _potentials._parameters(symbol)
    return symbols, fractions / fractions.sum()


def _species(symbols, fractions, n, rng):
    """Exactly ``n`` symbols in the given fractions (largest remainder), shuffled."""
    raw = fractions * n
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    out = np.repeat(np.array(symbols), counts)
    return out[rng.permutation(n)]


def _positive(value, name, unit):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number ({unit}), got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number ({unit}), got {value}")
    return value


def _rng(seed):
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"seed must be an int, a numpy Generator or None, got {seed!r}")
    return np.random.default_rng(seed)


def random_packing(
    composition=None, density=56.0, box=(8, 8, 3), min_distance=0.22, seed=0
):
    """A random packing of hard spheres in a periodic box (random sequential addition).

    Atoms are placed one at a time at uniformly random positions, keeping those at least
    ``min_distance`` from every atom already placed (periodic distances), until the box holds
    ``round(density * volume)`` atoms; the species are then assigned at random in the given
    fractions. The result has short-range order (an excluded volume, a first-neighbour
    peak) and no medium-range order: the reference model of FEM. (Random sequential addition
    jams at a packing fraction of 0.38; ``pi/6 density min_distance^3`` must stay below it.)

    Parameters
    ----------
    composition : dict or None
        Chemical symbol -> atom fraction (normalised to sum 1); None =
        ``{"Zr": 0.5, "Cu": 0.45, "Al": 0.05}``.
    density : float, default 56.0
        Number density in atoms per nm^3.
    box : (float, float, float), default (8, 8, 3)
        Box lengths x, y, z in nm (z is along the beam).
    min_distance : float, default 0.22
        Closest allowed distance between two atoms in nm.
    seed : int, numpy.random.Generator or None, default 0
        Random state.

    Returns
    -------
    ase.Atoms
        Positions in Å in the periodic orthogonal cell ``10 * box`` (Å); ``info`` holds the
        parameters.

    Raises
    ------
    ValueError
        Bad numbers, an unknown element, or a packing too dense to reach.
    ImportError
        Without ASE (``pip install femlib[sim]``).

    Examples
    --------
    >>> atoms = random_packing(box=(2, 2, 2), seed=1)
    >>> len(atoms), atoms.get_chemical_formula()
    (448, 'Al22Cu202Zr224')
    """
    ase = _require_ase()
    if composition is None:
        composition = {"Zr": 0.5, "Cu": 0.45, "Al": 0.05}
    symbols, fractions = _check_composition(composition)
    density = _positive(density, "density", "atoms per nm^3")
    d = float(min_distance)
    if not (math.isfinite(d) and d >= 0):
        raise ValueError(f"min_distance must be >= 0 (nm), got {min_distance!r}")
    try:
        box = np.array([float(b) for b in box])
    except (TypeError, ValueError):
        raise TypeError(f"box must be three lengths in nm, got {box!r}") from None
    if box.shape != (3,) or np.any(~np.isfinite(box)) or np.any(box <= 0):
        raise ValueError(f"box must be three positive lengths in nm, got {box!r}")
    if d > 0 and np.any(box < 3 * d):
        raise ValueError(f"box {tuple(box)} must be at least 3 min_distance ({d} nm) long")
    fraction = math.pi / 6 * density * d**3
    if fraction > 0.36:
        raise ValueError(
            f"density {density} atoms/nm^3 with min_distance {d} nm is a packing fraction of "
            f"{fraction:.3f}, beyond what random sequential addition reaches (0.38): lower "
            "one of them"
        )
    rng = _rng(seed)
    target = int(round(density * np.prod(box)))
    if target < 1:
        raise ValueError(f"density {density} in box {tuple(box)} makes no atom")
    pos = np.empty((target, 3))
    if d > 0:
        ncell = np.maximum(1, np.floor(box / d)).astype(np.int64)
        grid = np.empty(tuple(ncell) + (_CELL_CAPACITY,), dtype=np.int64)
        fill = np.zeros(tuple(ncell), dtype=np.int64)
        n, tried = 0, 0
        while n < target:
            if tried > _MAX_ATTEMPTS * target:
                raise ValueError(
                    f"could not place {target} atoms {d} nm apart in {tuple(box)} nm (placed "
                    f"{n}): lower density or min_distance"
                )
            batch = rng.random((max(1024, 4 * (target - n)), 3)) * box
            n, used = _place(batch, box, d, target, pos, n, grid, fill, ncell)
            tried += used
    else:
        pos[:] = rng.random((target, 3)) * box
    species = _species(symbols, fractions, target, rng)
    atoms = ase.Atoms(symbols=list(species), positions=pos * 10.0, cell=box * 10.0, pbc=True)
    atoms.info.update(
        {"density": density, "box": tuple(box), "min_distance": d,
         "composition": dict(zip(symbols, fractions.tolist(), strict=True))}
    )
    return atoms


def embed_clusters(
    atoms, diameter=1.5, fraction=0.2, lattice="fcc", a=None, min_distance=0.22, seed=0
):
    """Replace spherical regions of a model by randomly oriented crystallites (paracrystal).

    Cluster centres are drawn at random, at least ``diameter + min_distance`` apart
    (periodic), until the clusters fill ``fraction`` of the volume; inside each sphere the
    host atoms are replaced by the sites of a cubic lattice in a random orientation (random
    species in the host's composition), and host atoms closer than ``min_distance`` to a
    cluster atom are removed (a thin depleted shell around each cluster: about 7 % fewer
    atoms at a cluster fraction of 0.2). With the default lattice constant the
    crystallites have the host's number density, so the models differ mainly in their
    medium-range order. Random placement without overlap limits ``fraction`` to about
    0.25 for 1.5 nm clusters.

    Parameters
    ----------
    atoms : ase.Atoms
        The host model (orthogonal periodic cell), e.g. from :func:`random_packing`. It is
        not modified.
    diameter : float, default 1.5
        Cluster diameter in nm.
    fraction : float, default 0.2
        Volume fraction of the clusters, in ``[0, 0.5]``.
    lattice : {"fcc", "bcc", "sc"}, default "fcc"
        Crystal lattice of the clusters.
    a : float or None
        Lattice constant in nm; None = the one giving the host's number density.
    min_distance : float, default 0.22
        Closest host-cluster distance in nm.
    seed : int, numpy.random.Generator or None, default 0
        Random state.

    Returns
    -------
    ase.Atoms
        A new model. The per-atom array ``"cluster"`` is the cluster index (-1 = host);
        ``info["clusters"]`` holds ``centers`` (nm), ``diameter``, ``lattice`` and ``a``.

    Raises
    ------
    ValueError
        Bad numbers, an unknown lattice, a non-periodic or non-orthogonal cell, or clusters
        that do not fit.

    Examples
    --------
    >>> host = random_packing(box=(4, 4, 3), seed=0)
    >>> model = embed_clusters(host, diameter=1.5, fraction=0.2, seed=0)
    >>> len(model.info["clusters"]["centers"]), int((model.arrays["cluster"] >= 0).sum()) > 0
    (5, True)
    """
    ase = _require_ase()
    from scipy.spatial import cKDTree
    from scipy.spatial.transform import Rotation

    if lattice not in LATTICES:
        raise ValueError(f"lattice must be one of {tuple(LATTICES)}, got {lattice!r}")
    diameter = _positive(diameter, "diameter", "nm")
    fraction = float(fraction)
    if not (0 <= fraction <= 0.5):
        raise ValueError(f"fraction must be in [0, 0.5] (volume fraction), got {fraction}")
    d = float(min_distance)
    if not (math.isfinite(d) and d >= 0):
        raise ValueError(f"min_distance must be >= 0 (nm), got {min_distance!r}")
    cell = np.asarray(atoms.get_cell(), dtype=float) / 10.0
    if np.any(np.abs(cell - np.diag(np.diag(cell))) > 1e-9) or not np.all(atoms.get_pbc()):
        raise ValueError("atoms must have an orthogonal cell periodic in x, y and z")
    box = np.diag(cell)
    if np.any(box < diameter + d):
        raise ValueError(f"diameter {diameter} nm does not fit in the cell {tuple(box)} nm")
    rng = _rng(seed)
    pos = np.mod(atoms.get_positions() / 10.0, box)
    symbols = np.asarray(atoms.get_chemical_symbols())
    volume = float(np.prod(box))
    density = len(pos) / volume
    basis = LATTICES[lattice]
    if a is None:
        a = (len(basis) / density) ** (1 / 3)
    a = _positive(a, "a", "nm")
    radius = diameter / 2
    n_clusters = int(round(fraction * volume / (math.pi / 6 * diameter**3)))
    if fraction > 0:
        n_clusters = max(n_clusters, 1)
    centers = []
    attempts = 0
    while len(centers) < n_clusters:
        attempts += 1
        if attempts > 10000 * max(1, n_clusters):
            raise ValueError(
                f"could not fit {n_clusters} clusters of {diameter} nm in {tuple(box)} nm: "
                "lower fraction or diameter"
            )
        c = rng.random(3) * box
        ok = True
        for other in centers:
            delta = c - other
            delta -= box * np.rint(delta / box)
            if np.hypot.reduce(delta) < diameter + d:
                ok = False
                break
        if ok:
            centers.append(c)
    keep = np.ones(len(pos), dtype=bool)
    new_pos, new_label = [], []
    m = int(math.ceil(radius / a)) + 1
    cells = np.stack(np.meshgrid(*[np.arange(-m, m + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    sites = (cells[:, None, :] + basis[None, :, :]).reshape(-1, 3) * a
    for i, c in enumerate(centers):
        delta = pos - c
        delta -= box * np.rint(delta / box)
        keep &= np.hypot.reduce(delta, axis=1) >= radius
        rotated = Rotation.random(random_state=rng).apply(sites)
        inside = rotated[np.hypot.reduce(rotated, axis=1) < radius]
        new_pos.append(np.mod(inside + c, box))
        new_label.append(np.full(len(inside), i))
    cluster_pos = np.concatenate(new_pos) if new_pos else np.empty((0, 3))
    labels = np.concatenate(new_label) if new_label else np.empty(0, dtype=int)
    if len(cluster_pos) and d > 0:
        tree = cKDTree(cluster_pos, boxsize=box * (1 + 1e-12))
        dist, _ = tree.query(np.mod(pos, box), distance_upper_bound=d)
        keep &= ~np.isfinite(dist)
    unique, counts = np.unique(symbols, return_counts=True)
    cluster_species = _species(list(unique), counts / counts.sum(), len(cluster_pos), rng)
    all_pos = np.concatenate([pos[keep], cluster_pos])
    all_sym = list(symbols[keep]) + list(cluster_species)
    out = ase.Atoms(symbols=all_sym, positions=all_pos * 10.0, cell=box * 10.0, pbc=True)
    out.info.update(dict(atoms.info))
    out.info["clusters"] = {
        "centers": np.array(centers).reshape(-1, 3),
        "diameter": diameter,
        "lattice": lattice,
        "a": a,
    }
    out.new_array("cluster", np.concatenate([np.full(int(keep.sum()), -1), labels]).astype(int))
    return out
