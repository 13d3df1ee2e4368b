"""
Fluctuation electron microscopy of a metallic glass
===================================================

Fluctuation electron microscopy (FEM) measures medium-range order in amorphous materials
from the *fluctuations* of nanobeam diffraction: a few-nm probe is scanned over a thin
film, one diffraction pattern is recorded per position, and the normalized variance of the
diffracted intensity over positions, ``V(k)``, shows peaks where ordered clusters diffract.
This example runs the whole workflow: calibrate the patterns, mask the beam stop, compute
``V(k)`` corrected for shot noise, and remove the effect of thickness variation.

By default it runs offline on :func:`femlib.data.synthetic_fem`, whose true answer is
known; with ``FEMLIB_REAL_DATA=1`` it downloads the ZrCuAl metallic glass data (Zenodo
record 15490547) and runs on those.
"""

# %%
# Load the data
# -------------
# A 4D-STEM dataset: navigation axes are the probe positions, signal axes the detector in
# reciprocal-space units (nm^-1). Lazy loading (``lazy=True``) streams data larger than
# memory; every step below works the same way.
import os

import hyperspy.api as hs
import matplotlib.pyplot as plt
import numpy as np

import femlib

hs.preferences.General.show_progressbar = False
real = os.environ.get("FEMLIB_REAL_DATA") == "1"
s = femlib.data.zrcual_1(allow_download=True) if real else femlib.data.synthetic_fem()
print(s)
summed = s.sum()

# %%
# Find the centre and the elliptical distortion
# ---------------------------------------------
# Lens aberrations and detector tilt make the amorphous rings ellipses, and the centre is
# never the middle pixel. Averaging around a wrong centre or over an ellipse smears the
# peaks of the azimuthal average, and with them ``V(k)``. ``determine_ellipse`` finds the
# brightest ring, puts ``num_points`` points on it (one ring peak per ray from the centre;
# the beam stop, dark pixels and a margin around them are left out) and fits an ellipse to
# them. It returns the centre ``(row, col)`` and the 3x3 affine that maps the ellipse onto
# a circle of its major semi-axis (the k axis pyxem's affine gives).
center, affine, params, pos = femlib.ellipse.determine_ellipse(
    summed, return_params=True, num_points=500, use_ransac=False
)
# The ring's maximum sits slightly inside its radius where the background falls; refining
# makes the ring's peak radius the same at every azimuth of the polar transform. Its radial
# range defaults to the ring found about the starting centre.
mask = summed < 10000  # beam stop and dead pixels: True = excluded
center, affine = femlib.ellipse.refine_center_affine(summed, center, affine, mask=mask)
print("centre (row, col):", center)
print("axis ratio:", femlib.ellipse.affine_to_ellipse(affine)[0])
if not real:
    print("true centre (row, col):", s.metadata.Simulation.center[::-1])

# %%
# Check the fit: the ellipse must follow the ring all the way round. The markers are in
# pixels; ``signal=summed`` places them in the plot's calibrated coordinates.
el, in_points = femlib.ellipse.ellipse_to_markers(
    ellipse_array=params, points=pos, signal=summed
)
summed.plot(norm="log")
summed.add_marker(el, plot_marker=True)
summed.add_marker(in_points, plot_marker=True)

# %%
# The same check as a labelled figure: the ellipse, the fitted points and the centre on
# the summed pattern, in nm^-1. The masked pixels (beam stop) are grey: they are no
# measurement, so every image of this gallery draws them in grey, not as a dark value.
from matplotlib.patches import Ellipse  # noqa: E402

ax_x, ax_y = summed.axes_manager.signal_axes
extent = [ax_x.axis[0] - ax_x.scale / 2, ax_x.axis[-1] + ax_x.scale / 2,
          ax_y.axis[-1] + ax_y.scale / 2, ax_y.axis[0] - ax_y.scale / 2]
masked_grey = plt.get_cmap("magma").with_extremes(bad="0.6")
fig, ax = plt.subplots(figsize=(5.5, 5))
ax.imshow(np.ma.masked_array(summed.data, mask.data), norm="log", cmap=masked_grey,
          extent=extent)
ax.plot(ax_x.offset + pos[:, 1] * ax_x.scale, ax_y.offset + pos[:, 0] * ax_y.scale, ".",
        ms=2, color="C1", label=f"{len(pos)} fitted points")
ax.add_patch(Ellipse((ax_x.offset + params[1] * ax_x.scale, ax_y.offset + params[0] * ax_y.scale),
                     2 * params[2] * ax_x.scale, 2 * params[3] * ax_y.scale,
                     angle=np.degrees(params[4]), fill=False, color="cyan", lw=1.2,
                     label="fitted ellipse"))
ax.plot(ax_x.offset + center[1] * ax_x.scale, ax_y.offset + center[0] * ax_y.scale, "+",
        color="red", ms=12, mew=2, label="refined centre")
ax.set_xlabel(f"{ax_x.name} ({ax_x.units})")
ax.set_ylabel(f"{ax_y.name} ({ax_y.units})")
ax.legend(loc="upper right", fontsize="small")
plt.show()

# %%
# Calibrate and look at the polar transform
# -----------------------------------------
# ``calibration.center`` takes ``(x, y)`` pixels, hence ``center[::-1]``. In the polar
# transform of the corrected patterns the rings are straight lines. With the mask and
# ``mean=True`` (each bin divided by its unmasked area) the beam stop leaves no dark
# stripe: the bins it hides completely are grey.
s.calibration.center = center[::-1]
s.calibration.affine = affine
az = s.get_azimuthal_integral2d(npt=100, radial_range=(2.0, 8.0), mask=mask, mean=True).sum()
az.plot(cmap="magma")

# %%
# Screen the scan: bad pixels, descan, outlier patterns
# -----------------------------------------------------
# A real scan carries artefacts that FEM's statistics do not forgive: a noisy pixel inside
# the ring adds variance that no shot-noise term removes, a crystal under the probe puts
# Bragg spots on the ring, and a descan moves the pattern under the fixed beam stop. Each
# step below is one streaming pass (see :doc:`/user_guide/real_scans`). Dead, hot and
# noisy pixels (temporal variance far above ``G <D>``) join the mask:
bad = s.find_bad_pixels(gain=4.2, mask=mask)
print(bad.metadata.Screening.bad_pixels.counts)
mask = mask | bad

# %%
# The pattern centre of every position, from ring fits on tiles of the scan, smoothed by a
# plane. The counts are never shifted: when the centre moves, ``calibration.center`` takes
# one ``(x, y)`` per position and the integration moves the geometry instead.
centres = s.find_centers(mask=mask)
drift = np.ptp(centres.data.reshape(-1, 2), axis=0)
print("descan across the scan (x, y) px:", drift.round(3))
femlib.screening.plot_descan(centres)
plt.show()
if drift.max() > 0.1:
    s.calibration.center = centres

# %%
# Patterns to leave out: Bragg spots (a few azimuthal sectors of a ring far above the
# ring), beam blanking or dose jumps, non-finite frames, each judged against the scan's own
# distribution. No test looks at how much a pattern fluctuates as a whole: that is the
# signal.
flags = s.find_outlier_patterns(radial_range=(3.0, 5.75), mask=mask)
print(flags.metadata.Screening.outliers.counts)

# %%
# The variance V(k)
# -----------------
# With ring means :math:`I_n(k) = \sum_p w_{kp} D_n(p) / \sum_p w_{kp}` (pixel-splitting
# weights :math:`w_{kp}`, beam-stop pixels masked), the default estimator is
#
# .. math:: V_\Omega(k) = \frac{\langle I^2(k)\rangle_n}{\langle I(k)\rangle_n^2} - 1
#           - G\,\frac{\sum_p w_{kp}^2 \langle D(p)\rangle_n}
#                     {\left(\sum_p w_{kp} \langle D(p)\rangle_n\right)^2},
#
# where the last term removes Poisson shot noise (``gain`` :math:`G` detector units per
# electron). With pixel splitting the :math:`\sum w^2` form is the right one; the hard-bin
# form :math:`G/\langle S\rangle` over-subtracts and drives ``V`` negative for narrow bins
# (Daulton et al., Ultramicroscopy 110 (2010) 1279). The band is one standard error
# (jackknife over probe positions). Everything comes from one pass over the data.
variance = s.get_variance(npt=50, gain=4.2, radial_range=(3.0, 5.75), mask=mask,
                          navigation_mask=flags)
print("left out:", variance.metadata.FEM.navigation_mask)
variance.plot()

# %%
# The four estimators of Daulton et al. come from the same pass:
report = s.get_variance(npt=50, gain=4.2, radial_range=(3.0, 5.75), mask=mask, method="all")
ax = report.plot_curves()  # all four on one axes; report.plot() browses them

# %%
# Thickness
# ---------
# Diffracted intensity grows with sample thickness, so thickness variation across the scan
# adds its own relative variance to ``V(k)``. The HAADF signal is linear in thickness for
# amorphous films, ``t = (HAADF - black_level) / slope`` (Hwang & Voyles, Microsc.
# Microanal. 17 (2011) 67). Grouping the patterns into thickness bins and averaging the
# per-bin ``V(k)`` removes it (Li et al., Microsc. Microanal. 20 (2014) 1605). All bins
# are computed in the same single pass; no copy of the data is made.
thickness = femlib.thickness.thickness_from_haadf(
    s.metadata.HAADF.intensity, black_level=26265, slope=440.46
)
hs.signals.Signal2D(thickness).plot(cmap="viridis")  # a numpy array, as stored
per_bin = s.get_variance(
    npt=50, gain=4.2, radial_range=(3.0, 5.7), mask=mask, thickness=thickness, bins=2
)
ax = hs.plot.plot_spectra(per_bin.split(), legend=per_bin.curve_labels())
ax.set_ylabel("V(k)")  # HyperSpy says "Intensity"; per_bin.plot_curves() labels it itself
plt.show()

# %%
# With more bins the remaining thickness variance inside a bin shrinks. The combined
# (frame-weighted) curve sits below the unbinned one by about the relative thickness
# variance of the scan.
per_bin = s.get_variance(
    npt=50, gain=4.2, radial_range=(3.0, 5.75), mask=mask, thickness=thickness, bins=8
)
combined = per_bin.combined()
fig, ax = plt.subplots()
k = variance.axes_manager.signal_axes[0].axis
ax.plot(k, variance.data, label="whole scan")
ax.fill_between(k, combined.data - combined.standard_error,
                combined.data + combined.standard_error, alpha=0.3, color="C1")
ax.plot(k, combined.data, color="C1", label="8 thickness bins, combined")
if not real:
    truth = s.metadata.Simulation
    ax.plot(truth.k, truth.variance, "k--", label="true V(k)")
ax.set_xlim(3.0, 5.75)
ax.set_xlabel(f"k ({variance.axes_manager.signal_axes[0].units})")  # as femlib's plots
ax.set_ylabel("V(k)")
ax.legend()
plt.show()
