"""A signal calibrated by pyxem 0.21 integrates in femlib exactly as the same calibration set
through femlib, and the reverse -- without pyxem installed.

pyxem's ``Calibration`` (pyxem/utils/calibration.py) writes:

* the centre as the signal axes' offsets, ``ax.offset = -c * ax.scale`` for
  ``c`` in ``center`` zipped with the signal axes (x, y) (lines 792-805);
* the affine as given, ``metadata.set_item("General.affine_transformation", affine)``
  (line 300);
* the mask as given, ``metadata.set_item("General.mask", mask)`` (line 309); its
  integrators exclude every non-zero pixel (``img * np.logical_not(mask)``).

Its integration (pyxem/utils/_azimuthal_integrations.py:259-305 and calibration.py:713-723)
draws the polygon of bin ``(r, phi)`` at the detector points
``(row, col) = (r cos(phi + pi/2), r sin(phi + pi/2)) @ S'``, ``S'`` the stored matrix with
its off-diagonal elements negated. The reference below is written from that description.
"""

import hyperspy.api as hs
import numpy as np
import pytest

import femlib
from femlib.calibration import affine_from_stored

ROWS, COLS = 48, 56
CENTER = (27.3, 22.8)  # (x, y) px
SCALE = 0.1
S_PYXEM = np.array([[1.0, 0.04, 0.0], [0.04, 0.93, 0.0], [0.0, 0.0, 1.0]])  # a pyxem affine


def _pyxem_circle_to_detector(stored, r, phi):
    """Detector offsets (x, y) of the polygon vertex ``(r, phi)`` in pyxem's integration."""
    s = np.array(stored, dtype=float)[:2, :2].copy()
    s[0, 1], s[1, 0] = -s[0, 1], -s[1, 0]
    cp = np.stack([r * np.cos(phi + np.pi / 2), r * np.sin(phi + np.pi / 2)], axis=-1)
    row_col = cp @ s
    return row_col[..., 1], row_col[..., 0]


def write_like_pyxem(s, center, affine, mask):
    for ax, c in zip(s.axes_manager.signal_axes, center, strict=True):
        ax.offset = -c * ax.scale
    s.metadata.set_item("General.affine_transformation", affine)
    s.metadata.set_item("General.mask", mask)
    return s


def ring_pattern(n_frames=6, seed=0, radius=1.7, stored=S_PYXEM, noise=True, width=0.05):
    """Poisson frames of a thin ring of radius ``radius`` (nm^-1) in pyxem's geometry for
    the stored matrix ``stored``, on a flat background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:ROWS, :COLS].astype(float)
    # pyxem's k of a pixel: invert its circle -> detector map (a linear map).
    m = np.array(
        [
            _pyxem_circle_to_detector(stored, 1.0, 0.0),
            _pyxem_circle_to_detector(stored, 1.0, np.pi / 2),
        ]
    ).T  # columns: images of the unit vectors (r, phi=0) and (r, phi=pi/2)
    d = np.stack([(xx - CENTER[0]) * SCALE, (yy - CENTER[1]) * SCALE])
    circ = np.linalg.solve(m, d.reshape(2, -1)).reshape(d.shape)
    k = np.hypot(circ[0], circ[1])
    lam = 20 + 400 * np.exp(-0.5 * ((k - radius) / width) ** 2)
    if not noise:
        return np.broadcast_to(lam, (n_frames, 1) + lam.shape).astype(np.float32), k
    frames = rng.poisson(lam, (n_frames, 1) + lam.shape).astype(np.float32)
    return frames, k


def make_signal(frames):
    s = hs.signals.Signal2D(frames.copy())
    s.set_signal_type("fem_diffraction")
    for ax in s.axes_manager.signal_axes:
        ax.scale = SCALE
        ax.units = "nm^-1"
    return s


def beam_stop():
    mask = np.zeros((ROWS, COLS), bool)
    mask[20:26, 25:30] = True
    mask[22:24, :27] = True  # its arm
    return mask


def both(frames, mask=None, stored=S_PYXEM):
    mask = beam_stop() if mask is None else mask
    pyxem_side = write_like_pyxem(make_signal(frames), CENTER, stored.copy(), mask.copy())
    femlib_side = make_signal(frames)
    femlib_side.calibration.center = CENTER
    femlib_side.calibration.affine = affine_from_stored(stored)
    femlib_side.calibration.mask = mask.astype(bool)
    return pyxem_side, femlib_side


def test_reference_is_pyxems_geometry():
    """femlib's radius and (pyxem's) azimuth of pyxem's polygon vertices are r and phi."""
    a = affine_from_stored(S_PYXEM)
    r = np.array([0.5, 1.3, 2.2])[:, None]
    phi = np.linspace(-3.1, 3.1, 9)[None, :]
    x, y = _pyxem_circle_to_detector(S_PYXEM, r, phi)
    u = a[0, 0] * x + a[0, 1] * y
    v = a[1, 0] * x + a[1, 1] * y
    np.testing.assert_allclose(np.hypot(u, v), np.broadcast_to(r, u.shape), rtol=1e-12)
    np.testing.assert_allclose(np.arctan2(-v, u), np.broadcast_to(phi, u.shape), atol=1e-12)


def test_pyxem_metadata_gives_the_same_1d_2d_integrals_and_variance():
    frames, _ = ring_pattern()
    px, fl = both(frames)
    np.testing.assert_array_equal(px.calibration.affine, fl.calibration.affine)
    np.testing.assert_array_equal(px.calibration.mask, fl.calibration.mask)
    np.testing.assert_allclose(px.calibration.center, CENTER, atol=1e-12)
    kw = dict(npt=30, radial_range=(0.4, 2.4), show_progressbar=False)
    np.testing.assert_array_equal(
        px.get_azimuthal_integral1d(**kw).data, fl.get_azimuthal_integral1d(**kw).data
    )
    np.testing.assert_array_equal(
        px.get_azimuthal_integral2d(npt_azim=24, **kw).data,
        fl.get_azimuthal_integral2d(npt_azim=24, **kw).data,
    )
    vp = px.get_variance(gain=1.0, **kw)
    vf = fl.get_variance(gain=1.0, **kw)
    np.testing.assert_array_equal(vp.data, vf.data)
    np.testing.assert_array_equal(vp.standard_error, vf.standard_error)


def test_pyxem_ring_lands_at_pyxems_k():
    """A ring of radius 1.7 nm^-1 in pyxem's geometry peaks at 1.7 in femlib's integral
    (read naively, the stored matrix would put it at det(S) * 1.7 = 1.58)."""
    frames, _ = ring_pattern(radius=1.7, n_frames=1, noise=False, width=0.12)
    px, _ = both(frames, mask=np.zeros((ROWS, COLS), bool))
    kw = dict(npt=100, radial_range=(1.0, 2.4), mean=True, show_progressbar=False)
    prof = px.get_azimuthal_integral1d(**kw).mean()
    k = prof.axes_manager.signal_axes[0].axis
    assert abs(k[np.argmax(prof.data)] - 1.7) <= 0.007  # half a bin
    # Every azimuthal sector sees the ring at 1.7: the geometry is pyxem's for each
    # direction, not only on average (the naive reading spreads it over 1.58-1.72).
    polar = px.get_azimuthal_integral2d(npt_azim=36, **kw).mean()
    radius_axis = [ax for ax in polar.axes_manager.signal_axes if ax.name == "Radius"][0]
    data = np.moveaxis(polar.data, radius_axis.index_in_array, 0) - 20.0
    centroid = (k[:, None] * data).sum(axis=0) / data.sum(axis=0)
    np.testing.assert_allclose(centroid, 1.7, atol=0.01)


def test_femlib_calibration_is_what_pyxem_reads():
    """The reverse: femlib's centre, affine and mask, read with pyxem's getters, give
    pyxem's geometry equal to femlib's."""
    s = make_signal(np.zeros((2, 1, ROWS, COLS), np.float32))
    a = femlib.ellipse.ellipse_to_affine(20.0, 18.5, 0.4)
    s.calibration.center = CENTER
    s.calibration.affine = a
    s.calibration.mask = beam_stop()
    # pyxem's getters: -offset / scale, General.affine_transformation, General.mask
    center = [-ax.offset / ax.scale for ax in s.axes_manager.signal_axes]
    np.testing.assert_allclose(center, CENTER, atol=1e-12)
    stored = s.metadata.get_item("General.affine_transformation")
    np.testing.assert_array_equal(s.metadata.get_item("General.mask"), beam_stop())
    r = np.array([0.3, 1.1, 1.9])[:, None]
    phi = np.linspace(-3, 3, 13)[None, :]
    x, y = _pyxem_circle_to_detector(stored, r, phi)
    u = a[0, 0] * x + a[0, 1] * y
    v = a[1, 0] * x + a[1, 1] * y
    np.testing.assert_allclose(np.hypot(u, v), np.broadcast_to(r, u.shape), rtol=1e-12)


@pytest.mark.parametrize(
    "form",
    [
        lambda m: m,
        lambda m: m.astype(float),  # pyxem accepts any array; non-zero = excluded
        lambda m: m.astype(np.uint8),
        lambda m: hs.signals.Signal2D(m),
    ],
    ids=["bool", "float", "uint8", "Signal2D"],
)
def test_pyxem_mask_forms_are_honoured(form):
    frames, _ = ring_pattern(n_frames=3)
    px = write_like_pyxem(make_signal(frames), CENTER, S_PYXEM.copy(), form(beam_stop()))
    kw = dict(npt=20, radial_range=(0.4, 2.4), show_progressbar=False)
    np.testing.assert_array_equal(
        px.get_azimuthal_integral1d(**kw).data,
        px.get_azimuthal_integral1d(mask=beam_stop(), **kw).data,
    )
    unmasked = px.get_azimuthal_integral1d(mask=np.zeros((ROWS, COLS), bool), **kw)
    assert not np.array_equal(unmasked.data, px.get_azimuthal_integral1d(**kw).data)


def test_explicit_mask_wins_over_an_unusable_stored_one():
    """pyxem also allows a per-position mask signal; femlib cannot use it as a detector
    mask, says so, and an explicit mask= bypasses it."""
    frames, _ = ring_pattern(n_frames=3)
    s = write_like_pyxem(
        make_signal(frames), CENTER, None, np.zeros((3, 1, ROWS, COLS), bool)
    )
    kw = dict(npt=20, radial_range=(0.4, 2.4), show_progressbar=False)
    with pytest.raises(ValueError, match=r"metadata.General.mask has shape \(3, 1, 48, 56\)"):
        s.get_azimuthal_integral1d(**kw)
    ref = make_signal(frames)
    ref.calibration.center = CENTER
    np.testing.assert_array_equal(
        s.get_azimuthal_integral1d(mask=beam_stop(), **kw).data,
        ref.get_azimuthal_integral1d(mask=beam_stop(), **kw).data,
    )


def test_radius_axis_is_pyxems_shifted_by_half_a_bin():
    """pyxem's Radius axis starts at radial_range[0] with step range / npt (bin left
    edges, signals/diffraction2d.py:1802-1807); femlib's values are the bin centres."""
    frames, _ = ring_pattern(n_frames=2)
    px, _ = both(frames)
    r0, r1, npt = 0.4, 2.4, 40
    prof = px.get_azimuthal_integral1d(npt=npt, radial_range=(r0, r1), show_progressbar=False)
    pyxem_axis = r0 + (r1 - r0) / npt * np.arange(npt)
    np.testing.assert_allclose(
        prof.axes_manager.signal_axes[0].axis, pyxem_axis + (r1 - r0) / npt / 2, rtol=1e-12
    )


def test_synthetic_truth_written_like_pyxem_gives_femlibs_variance():
    """On synthetic_fem: the true centre and affine (femlib's matrix, stored as pyxem would
    store the same geometry) and the true beam stop give the same V(k)."""
    s = femlib.data.synthetic_fem(navigation_shape=(8, 10), seed=3)
    sim = s.metadata.Simulation
    a = np.asarray(sim.affine)
    lin = a[:2, :2] / np.linalg.det(a[:2, :2])  # pyxem's matrix for femlib's geometry
    stored = np.eye(3)
    stored[:2, :2] = lin
    px = write_like_pyxem(s.deepcopy(), sim.center, stored, np.asarray(sim.beam_stop_mask))
    s.calibration.center = sim.center
    s.calibration.affine = a
    s.calibration.mask = np.asarray(sim.beam_stop_mask)
    kw = dict(npt=50, gain=4.2, radial_range=(3.0, 5.75), show_progressbar=False)
    np.testing.assert_allclose(px.calibration.affine, a, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(px.get_variance(**kw).data, s.get_variance(**kw).data,
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("phi0", [1.0, -2.0, 2.9])
def test_a_spot_at_pyxems_azimuth_lands_in_femlibs_bin(phi0):
    """A spot drawn at pyxem's (r, phi) lands in the femlib polar bin holding phi: same
    zero and direction (counter-clockwise on screen) through pyxem's stored affine."""
    x0, y0 = _pyxem_circle_to_detector(S_PYXEM, 1.5, phi0)
    yy, xx = np.mgrid[:ROWS, :COLS].astype(float)
    d2 = ((xx - CENTER[0]) * SCALE - x0) ** 2 + ((yy - CENTER[1]) * SCALE - y0) ** 2
    frame = (1.0 + 100 * np.exp(-d2 / (2 * 0.08**2)))[None, None].astype(np.float32)
    px, _ = both(frame, mask=np.zeros((ROWS, COLS), bool))
    polar = px.get_azimuthal_integral2d(
        npt=20, npt_azim=36, radial_range=(1.0, 2.0), show_progressbar=False
    ).inav[0, 0]
    az = polar.axes_manager["Radians"]
    profile = np.moveaxis(polar.data, az.index_in_array, 0).sum(axis=1)
    assert abs(az.axis[np.argmax(profile)] - phi0) <= az.scale / 2 + 1e-9
