"""Simulated nanodiffraction of atomic models, so that a model meets the data on one axis.

:func:`nanodiffraction` turns an ``ase.Atoms`` model into a calibrated, noise-free
:class:`~femlib.signals.FEMDiffraction2D` scan (natively with the kinematic phase-object
route, or through abTEM's multislice), :func:`add_counts` makes it a "measured" scan
(Poisson electrons, gain, detector PSF), and :func:`random_packing` / :func:`embed_clusters`
make simple models with and without medium-range order. The result goes through the same
``get_variance`` pass as a measured scan (:doc:`/user_guide/simulation`).

ASE and abTEM are optional (``pip install femlib[sim]``): importing this module imports
neither; the functions that need them say so.
"""

from femlib.simulate._counts import add_counts, psf_kernel
from femlib.simulate._nanodiffraction import METHODS, nanodiffraction
from femlib.simulate._potentials import (
    SUPPORTED_ELEMENTS,
    interaction_constant,
    projected_scattering_factor,
    scattering_factor,
    wavelength,
)
from femlib.simulate._structures import LATTICES, embed_clusters, random_packing

__all__ = [
    "LATTICES",
    "METHODS",
    "SUPPORTED_ELEMENTS",
    "add_counts",
    "embed_clusters",
    "interaction_constant",
    "nanodiffraction",
    "projected_scattering_factor",
    "psf_kernel",
    "random_packing",
    "scattering_factor",
    "wavelength",
]
