"""Elliptical distortion of diffraction rings: point picking, ellipse fits, affine, markers.

Real diffraction rings are ellipses (projector-lens distortion, detector tilt) and their
centre is never the middle pixel. This module finds the centre and the affine that makes the
rings circular, so that the azimuthal average does not smear the peaks.

Conventions
-----------
* Points ``pos`` are ``(row, col)`` pixel coordinates; pixel ``i`` covers
  ``[i - 1/2, i + 1/2]`` and its centre is at ``i``. Inside the fits ``x = col`` and
  ``y = row``.
* An ellipse is ``params = [row_c, col_c, semi_axis_0, semi_axis_1, rotation]`` in pixels
  and radians, with ``semi_axis_0 >= semi_axis_1`` (major first) and ``rotation`` the
  direction of the major axis, measured from ``+x`` (``+col``) toward ``+y`` (``+row``),
  wrapped to ``(-pi/2, pi/2]``. On an image displayed with ``y`` pointing down this is a
  clockwise angle. A circle has an arbitrary ``rotation`` (0 is returned only by chance).
* Centres returned by this module are ``(row, col)``; :class:`femlib.calibration.Calibration`
  takes ``(x, y)``, hence ``s.calibration.center = center[::-1]``.
* The affine ``A`` (3x3) acts on homogeneous pixel offsets ``(x - cx, y - cy, 1)`` and has
  no translation part. With ``ratio = semi_axis_0 / semi_axis_1`` and ``R(t)`` the rotation
  by ``t``::

      A = R(rotation) @ diag(1, ratio) @ R(-rotation)    (embedded in 3x3)

  It stretches the minor axis to the length of the major one: the ellipse is mapped onto
  the circle of radius ``semi_axis_0`` about the centre, and the corrected radius of a
  pixel ``p`` is ``|A (p - c)|`` pixels (times the axis scale in calibrated units), which
  is what ``s.calibration.affine`` and the integration engine expect. ``A`` is the
  identity for a circle. This is ``normalize="major"``, the default, which keeps pyxem's
  k axis; ``"minor"`` and ``"area"`` scale ``A`` so that the minor semi-axis or the
  geometric mean of the two keeps its length (:func:`ellipse_to_affine`).

The fits are the direct least-squares fit [1]_ in its numerically stable form [2]_, and
random sample consensus [3]_ with residuals measured by the Sampson distance [4]_.
The package is pure: numpy, scipy, scikit-image (whose ``ransac`` loop drives
:class:`EllipseRansacModel`) and, lazily and for markers only, ``hyperspy.api``. It is split
by job: ``_fit`` (fits, residuals, affine conversions), ``_ransac`` (robust fit),
``_picking`` (points on the ring, :func:`determine_ellipse`), ``_refine`` (sub-pixel
refinement) and ``_markers`` (HyperSpy markers).

References
----------
.. [1] A. Fitzgibbon, M. Pilu, R. B. Fisher, "Direct least square fitting of ellipses",
   IEEE Trans. Pattern Anal. Mach. Intell. 21 (1999) 476-480.
.. [2] R. Halir, J. Flusser, "Numerically stable direct least squares fitting of
   ellipses", Proc. WSCG (1998) 125-132.
.. [3] M. A. Fischler, R. C. Bolles, "Random sample consensus", Commun. ACM 24 (1981)
   381-395.
.. [4] P. D. Sampson, "Fitting conic sections to 'very scattered' data", Comput. Graph.
   Image Process. 18 (1982) 97-108.
"""

from femlib.ellipse._fit import (
    EllipseFitError,
    affine_to_ellipse,
    ellipse_points,
    ellipse_residuals,
    ellipse_to_affine,
    fit_ellipse,
)
from femlib.ellipse._markers import ellipse_to_markers
from femlib.ellipse._picking import determine_ellipse
from femlib.ellipse._ransac import EllipseRansacModel, fit_ellipse_ransac
from femlib.ellipse._refine import refine_center_affine, ring_peak_radii

__all__ = [
    "EllipseFitError",
    "EllipseRansacModel",
    "affine_to_ellipse",
    "determine_ellipse",
    "ellipse_points",
    "ellipse_residuals",
    "ellipse_to_affine",
    "ellipse_to_markers",
    "fit_ellipse",
    "fit_ellipse_ransac",
    "refine_center_affine",
    "ring_peak_radii",
]
