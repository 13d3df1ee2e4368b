"""
Comparing with a structural model
=================================

A measured ``V(k)`` is interpreted by comparing it with the ``V(k)`` of structural models.
:mod:`femlib.simulate` makes that comparison happen on one axis: a model (an
``ase.Atoms``: from molecular dynamics, reverse Monte Carlo, or the small helpers used
here) becomes a simulated scan with the detector sampling of the measurement, the scan gets
the counting noise of a real dose, and the same ``get_variance`` call that a measured scan
gets returns ``V(k)`` with its standard errors.

Two Zr50Cu45Al5 models, identical except for their medium-range order:

* a random packing of hard spheres (:func:`femlib.simulate.random_packing`): short-range
  order only;
* the same packing with 20 % of its volume replaced by randomly oriented fcc crystallites
  of 1.5 nm (:func:`femlib.simulate.embed_clusters`), at the same number density: a
  paracrystalline model.

This page needs ASE (``pip install femlib[sim]``); the kinematic simulation is native.
"""

# %%
# Two models
# ----------
import hyperspy.api as hs
import matplotlib.pyplot as plt
import numpy as np

import femlib.simulate as fs

hs.preferences.General.show_progressbar = False
host = fs.random_packing(
    {"Zr": 0.5, "Cu": 0.45, "Al": 0.05}, density=56.0, box=(12, 12, 3), seed=0
)
clustered = fs.embed_clusters(host, diameter=1.5, fraction=0.2, lattice="fcc", seed=1)
print(host.get_chemical_formula(), "|", clustered.get_chemical_formula())
print(
    f"{len(clustered.info['clusters']['centers'])} clusters, fcc a = "
    f"{clustered.info['clusters']['a']:.3f} nm"
)

# %%
# Simulated scans
# ---------------
# 200 kV, a 2 mrad probe (about 0.8 nm resolution), probe positions 1 nm apart, a
# 128 x 128 detector at 0.125 nm^-1 per pixel: a 3 nm thick sample is in the kinematic
# regime (:doc:`/user_guide/simulation`). ``lazy=True`` would stream the patterns into
# ``get_variance`` chunk by chunk, as for a measured scan that does not fit in memory.
kw = dict(energy=200.0, semiangle=2.0, scan_step=1.0, detector_shape=(128, 128), scale=0.125)
scans = {
    "random packing": fs.nanodiffraction(host, **kw),
    "with 1.5 nm clusters": fs.nanodiffraction(clustered, **kw),
}
for name, s in scans.items():
    print(name, s)

fig, axes = plt.subplots(1, 2, figsize=(8, 4))
for ax, (name, s) in zip(axes, scans.items(), strict=True):
    ax.imshow(np.log10(s.inav[5, 5].data + 1e-7), extent=[-8, 8, 8, -8], cmap="inferno")
    ax.set_title(name)
    ax.set_xlabel("$k_x$ (nm$^{-1}$)")
axes[0].set_ylabel("$k_y$ (nm$^{-1}$)")
fig.tight_layout()

# %%
# Counts, then V(k) as for a measurement
# --------------------------------------
# :func:`femlib.simulate.add_counts` draws Poisson electrons at a dose of 1e5 incident
# electrons per pattern, times a gain of 4.2 detector units per electron. The variance is
# then the measured scan's call: the shot-noise term is subtracted with the gain, and the
# standard error comes from the same pass.
variances = {}
for name, s in scans.items():
    counted = fs.add_counts(s, dose=1e5, gain=4.2, seed=2)
    variances[name] = counted.get_variance(npt=40, gain=4.2, radial_range=(2.0, 7.0))

fig, ax = plt.subplots(figsize=(6, 4))
for name, v in variances.items():
    k = v.axes_manager[0].axis
    se = v.metadata.FEM.standard_error
    ax.plot(k, v.data, label=name)
    ax.fill_between(k, v.data - se, v.data + se, alpha=0.3)
a = clustered.info["clusters"]["a"]
for hkl, g in (("111", np.sqrt(3) / a), ("200", 2 / a), ("220", np.sqrt(8) / a)):
    ax.axvline(g, color="0.6", lw=0.8, ls=":")
    ax.text(g, ax.get_ylim()[1] * 0.95, hkl, ha="center", va="top", fontsize=8)
ax.set_xlabel("$k$ (nm$^{-1}$)")
ax.set_ylabel("$V(k)$")
_ = ax.legend()

# %%
# The difference, judged against the errors
# -----------------------------------------
# ``z(k) = (V_clusters - V_random) / sqrt(SE_clusters^2 + SE_random^2)``. The standard
# errors treat probe positions as independent; positions 1 nm apart with a 0.8 nm probe
# are nearly so, closer steps would make the errors too small.
v0, v1 = variances["random packing"], variances["with 1.5 nm clusters"]
se0, se1 = v0.metadata.FEM.standard_error, v1.metadata.FEM.standard_error
z = (v1.data - v0.data) / np.hypot(se0, se1)
k = v0.axes_manager[0].axis
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(k, z, "k.-")
ax.axhline(0, color="0.5", lw=0.8)
ax.axhspan(-2, 2, color="0.85", label="|z| < 2")
ax.set_xlabel("$k$ (nm$^{-1}$)")
ax.set_ylabel("z")
ax.legend()
peak = int(np.argmax(z))
print(f"largest difference at k = {k[peak]:.2f} nm^-1: z = {z[peak]:.1f}")
print(f"bins with |z| > 3: {int((np.abs(z) > 3).sum())} of {len(z)}")
