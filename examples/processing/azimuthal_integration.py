"""
Azimuthal integration and the polar transform
=============================================

The polar transform resamples every diffraction pattern onto (radius, azimuth) bins with
**pixel splitting**: each detector pixel contributes to a bin in proportion to the part of
its area inside the bin. The geometry is turned once into a sparse weight matrix, cached,
and applied to all patterns in one streaming pass, eager or lazy.
"""

# %%
# A dataset and its calibration
# -----------------------------
# The synthetic dataset stores its true centre and distortion; here we use them directly
# (the FEM example shows how to find them).
import matplotlib.pyplot as plt
import numpy as np

import femlib

s = femlib.data.synthetic_fem(navigation_shape=(10, 10))
truth = s.metadata.Simulation
s.calibration.center = truth.center  # (x, y) in pixels
s.calibration.affine = truth.affine
s.calibration.mask = truth.beam_stop_mask  # True = excluded pixel
print(s.calibration)

# %%
# Polar transform
# ---------------
# ``npt`` radial bins over ``radial_range`` (calibrated units, here nm^-1) and ``npt_azim``
# azimuthal bins. Azimuth 0 points along +x and positive angles turn toward -y, i.e.
# counter-clockwise on screen (detector rows grow downward), as in pyxem. ``mean=True``
# divides by the covered (unmasked, on-detector) weight of each bin, so the beam-stop arm
# leaves no dark stripe; the bins it hides completely hold no measurement and are drawn
# grey (``metadata.FEM.coverage`` is 0 there).
polar = s.get_azimuthal_integral2d(npt=100, npt_azim=180, radial_range=(1.5, 8.5), mean=True)
polar.sum().plot(cmap="magma")

# %%
# The corrected rings are straight lines. Without the affine they wobble with twice the
# azimuth: the elliptical distortion.
s.calibration.affine = None
wobbly = s.get_azimuthal_integral2d(npt=100, npt_azim=180, radial_range=(3.5, 5.2), mean=True)
s.calibration.affine = truth.affine
straight = s.get_azimuthal_integral2d(npt=100, npt_azim=180, radial_range=(3.5, 5.2), mean=True)
masked_grey = plt.get_cmap("magma").with_extremes(bad="0.6")  # masked bins: grey
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
for ax, p, title in zip(axes, (wobbly, straight), ("no affine", "true affine"), strict=True):
    a, r = p.axes_manager.signal_axes
    hidden = np.asarray(p.metadata.FEM.coverage) == 0
    ax.imshow(np.ma.masked_array(p.sum().data, hidden), aspect="auto", cmap=masked_grey,
              extent=[a.axis[0], a.axis[-1], r.axis[-1], r.axis[0]])
    ax.set_title(title)
    ax.set_xlabel(f"azimuth ({a.units})")
axes[0].set_ylabel(f"k ({r.units})")
fig.tight_layout()
plt.show()

# %%
# 1D azimuthal integral
# ---------------------
# The ring-averaged profile of every pattern; ``metadata.FEM.coverage`` tells which bins
# are only partly on the detector or behind the mask.
profile = s.get_azimuthal_integral1d(npt=200, radial_range=(1.5, 9.5), mean=True)
k = profile.axes_manager.signal_axes[0].axis
fig, ax = plt.subplots()
ax.plot(k, profile.mean().data, label="mean profile")
ax.plot(k, np.asarray(profile.metadata.FEM.coverage) * profile.mean().data.max(), ":",
        label="covered fraction (scaled)")
ax.set_xlabel(f"k ({profile.axes_manager.signal_axes[0].units})")
ax.legend()
plt.show()

# %%
# Lazy data streams
# -----------------
# A lazy signal gives a lazy result with the same values, computed chunk by chunk.
lazy = femlib.data.synthetic_fem(navigation_shape=(10, 10), lazy=True)
lazy.calibration.center = truth.center
lazy.calibration.affine = truth.affine
lazy_profile = lazy.get_azimuthal_integral1d(
    npt=200, radial_range=(1.5, 9.5), mean=True, mask=truth.beam_stop_mask
)
print(lazy_profile)
print("max difference:", float(abs(lazy_profile.data.compute() - profile.data).max()))
