"""Per-position centres (descan): storage in the calibration, the engine (every pattern
integrated at its own centre with exact pixel splitting, the mask fixed on the detector) and
the FEM estimators on descanned synthetic scans with known truth.

The descanned scans are built here from an analytic ring model evaluated at each pattern's
own centre (averaged over 3 x 3 samples per pixel), then Poisson sampled: the counts are
never shifted or interpolated.
"""

import warnings

import hyperspy.api as hs
import numpy as np
import pytest

from femlib import integration as I
from femlib import moments as M
from femlib.signals import FEMDiffraction2D

DET = (64, 64)
C0 = np.array([31.4, 32.3])  # (x, y) pixels, the mean centre
GAIN = 2.0
RANGE = (8.0, 24.0)  # pixels (scale 1)
NPT = 12


# ------------------------------------------------------------------ the model
def profile(r):
    """Mean electrons per pixel at radius r (px): a sharp ring on a decaying background."""
    return 15.0 * np.exp(-r / 30.0) + 60.0 * np.exp(-0.5 * ((r - 16.0) / 2.5) ** 2)


def modulation(r):
    """Radial shape of the structural fluctuation: relative amplitude per unit epsilon."""
    return np.exp(-0.5 * ((r - 15.0) / 6.0) ** 2)


def plane_centres(nav, descan):
    """A plane descan: |shift| = ``descan`` px from the first to the last position."""
    jj, ii = np.meshgrid(np.linspace(0, 1, nav[1]), np.linspace(0, 1, nav[0]))
    d = descan / np.sqrt(2)
    return C0 + np.stack([jj, ii], -1) * d - d / 2


def beam_stop():
    y, x = np.mgrid[0 : DET[0], 0 : DET[1]]
    m = np.hypot(x - C0[0], y - C0[1]) < 7
    m |= (np.abs(x - C0[0]) < 2.5) & (y < C0[1])  # its arm, to the top edge
    return m


def expected_frames(centres, amplitude=0.0, seed=0, sub=3):
    """Noise-free patterns at their own centres: profile * (1 + amplitude * eps_n * g)."""
    rng = np.random.default_rng(seed)
    c = centres.reshape(-1, 2)
    eps = rng.standard_normal(c.shape[0])
    o = (np.arange(sub) + 0.5) / sub - 0.5
    y, x = np.mgrid[0 : DET[0], 0 : DET[1]].astype(float)
    out = np.zeros((c.shape[0],) + DET)
    for oy in o:
        for ox in o:
            r = np.hypot(x[None] + ox - c[:, 0, None, None], y[None] + oy - c[:, 1, None, None])
            out += profile(r) * (1 + amplitude * eps[:, None, None] * modulation(r))
    return out.reshape(centres.shape[:-1] + DET) / sub**2, eps


def true_variance(edges, eps, amplitude):
    """Omega's expectation on the model: var(eps) R^2 / (1 + mean(eps) R)^2 per bin, with
    R the profile-weighted modulation over the bin (1D quadrature, no femlib)."""
    r = np.linspace(edges[0], edges[-1], 40001)
    out = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        rr = r[(r >= a) & (r <= b)]
        p = profile(rr) * rr
        big_r = amplitude * np.trapezoid(p * modulation(rr), rr) / np.trapezoid(p, rr)
        out.append(np.var(eps) * big_r**2 / (1 + np.mean(eps) * big_r) ** 2)
    return np.array(out)


@pytest.fixture(scope="module")
def poisson_scan():
    """Structure-free (pure Poisson) 20 x 20 scan under a 5 px plane descan."""
    centres = plane_centres((20, 20), 5.0)
    mu, _ = expected_frames(centres, 0.0, seed=3)
    counts = np.random.default_rng(4).poisson(mu)
    return (GAIN * counts).astype(np.float32), (GAIN * mu).astype(np.float32), centres


@pytest.fixture(scope="module")
def structured_scan():
    """20 x 20 scan with a known structural variance, under a 5 px plane descan."""
    centres = plane_centres((20, 20), 5.0)
    mu, eps = expected_frames(centres, 0.1, seed=0)
    counts = np.random.default_rng(1).poisson(mu)
    return (GAIN * counts).astype(np.float32), eps, centres


def signal(data, centres, lazy=False):
    s = FEMDiffraction2D(data)
    s.calibration.center = centres
    return s.as_lazy() if lazy else s


def computed(v):
    """A lazy input gives a lazy V(k): compute it (in place) for the checks."""
    if v._lazy:
        v.compute()
    return v


def kwargs(**kw):
    return dict(npt=NPT, radial_range=RANGE, mask=beam_stop(), show_progressbar=False, **kw)


# ------------------------------------------------------------------ calibration
def make(nav=(3, 4), seed=0):
    rng = np.random.default_rng(seed)
    s = hs.signals.Signal2D(rng.poisson(5.0, nav + (20, 24)).astype(np.float32))
    s.set_signal_type("fem_diffraction")
    return s


def centre_map(nav=(3, 4)):
    ii, jj = np.mgrid[0 : nav[0], 0 : nav[1]]
    return np.stack([11.0 + 0.3 * jj, 9.0 + 0.2 * ii], -1)


@pytest.mark.parametrize("lazy", [False, True])
def test_per_position_centres_round_trip_with_the_mean_in_the_offsets(lazy):
    s = make()
    s = s.as_lazy() if lazy else s
    c = centre_map()
    s.calibration.center = c
    np.testing.assert_array_equal(s.calibration.center, c)
    np.testing.assert_array_equal(s.metadata.Descan.center, c)
    x, y = s.axes_manager.signal_axes
    np.testing.assert_allclose([-x.offset / x.scale, -y.offset / y.scale],
                               c.reshape(-1, 2).mean(0), atol=1e-12)
    assert "mean of per-position centres" in repr(s.calibration)
    s.calibration.center = (10.0, 9.5)  # back to one centre: the per-position ones go
    assert not s.metadata.has_item("Descan")
    np.testing.assert_allclose(s.calibration.center, (10.0, 9.5), atol=1e-12)


def test_equal_per_position_centres_are_stored_as_one():
    s = make()
    s.calibration.center = np.zeros((3, 4, 2)) + (10.3, 9.7)
    assert s.calibration.centers is None
    assert not s.metadata.has_item("Descan")
    assert s.calibration.center.tolist() == [10.3, 9.7]


def test_centres_from_a_signal():
    s = make()
    c = hs.signals.BaseSignal(centre_map())
    s.calibration.center = c
    np.testing.assert_array_equal(s.calibration.center, centre_map())


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.zeros((4, 3, 2)) + 10, r"center must be one \(x, y\).*\(3, 4, 2\).*\(4, 3, 2\)"),
        (np.zeros((3, 4, 3)) + 10, r"center.*\(3, 4, 2\).*got shape \(3, 4, 3\)"),
        (np.where(np.arange(24).reshape(3, 4, 2) == 5, np.nan, 10.0),
         r"center must be finite.*position \(0, 2\)"),
        (np.where(np.arange(24).reshape(3, 4, 2) == 0, 30.0, 10.0),
         r"center of position \(0, 0\) is \(30, 10\) px, outside the detector.*descan larger "
         "than the detector allows"),
    ],
)
def test_bad_per_position_centres_name_the_argument(value, message):
    s = make()
    s.calibration.center = centre_map()
    with pytest.raises(ValueError, match=message):
        s.calibration.center = value
    np.testing.assert_array_equal(s.calibration.center, centre_map())  # unchanged


@pytest.mark.parametrize("lazy", [False, True])
def test_centres_follow_inav_rebin_split_and_save(tmp_path, lazy):
    s = make()
    s = s.as_lazy() if lazy else s
    c = centre_map()
    s.calibration.center = c
    np.testing.assert_array_equal(s.inav[1:3, 1:].calibration.center, c[1:, 1:3])
    np.testing.assert_array_equal(s.inav[2, 1].calibration.center, c[1, 2])
    binned = s.rebin(scale=(2, 1, 1, 1))  # pairs of scan columns averaged
    np.testing.assert_allclose(binned.calibration.center, 0.5 * (c[:, ::2] + c[:, 1::2]))
    parts = s.split(axis=1, number_of_parts=3)  # the scan rows
    for i, part in enumerate(parts):
        np.testing.assert_array_equal(part.calibration.center, c[i])
    s.save(tmp_path / "descan.hspy")
    back = hs.load(tmp_path / "descan.hspy", lazy=lazy)
    np.testing.assert_array_equal(back.calibration.center, c)
    # A pattern summed over the scan keeps the mean centre only.
    assert s.sum().calibration.centers is None


def test_centres_follow_split_by_thickness():
    s = make()
    c = centre_map()
    s.calibration.center = c
    t = np.arange(12.0).reshape(3, 4)
    low, high = s.split_by_thickness(t, [0.0, 5.5, 12.0])
    np.testing.assert_array_equal(low.calibration.center, c.reshape(-1, 2)[:6])
    np.testing.assert_array_equal(high.calibration.center, c.reshape(-1, 2)[6:])


# ------------------------------------------------------------------ the engine
def test_descan_weights_equal_a_build_per_frame():
    """Rounded centres on the 1/10 px grid: every frame's sums and areas are those of its own
    build_weights (mask, affine, azimuthal bins), to rounding."""
    rng = np.random.default_rng(1)
    shape = (48, 56)
    c = np.round(rng.uniform(20, 30, (15, 2)) * 10) / 10
    affine = np.array([[1.05, 0.03, 0], [0.0, 0.97, 0], [0, 0, 1]])
    mask = np.zeros(shape, bool)
    mask[20:26] = True
    mask[3, 4] = True
    frames = rng.poisson(5.0, (15,) + shape).astype(np.float32)
    geo = dict(npt=7, npt_azim=3, radial_range=(0.3, 1.5), mask=mask)
    dw = I.build_descan_weights(shape, c, affine, (0.1, 0.12), **geo)
    assert dw.rounding_error == (0.0, 0.0)
    sums, areas = I.integrate_descan(frames, dw, return_area=True)
    for n in range(15):
        w = I.build_weights(shape, c[n], affine, (0.1, 0.12), **geo)
        np.testing.assert_allclose(sums[n].ravel(), I.integrate(frames[n], w).ravel(),
                                   rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(areas[n], w.area, rtol=1e-12, atol=1e-9)


def test_centres_are_rounded_to_the_subpixel_grid():
    c = np.array([[20.04, 21.26], [22.55, 19.91]])
    dw = I.build_descan_weights((48, 48), c, npt=2, radial_range=(3, 9), subpixel=10)
    np.testing.assert_allclose(dw.centers, [[20.0, 21.3], [22.6, 19.9]], atol=1e-12)
    err_max, err_rms = dw.rounding_error
    assert err_max == pytest.approx(np.hypot(0.04, 0.04), abs=1e-9)
    assert err_rms == pytest.approx(np.sqrt((0.04**2 * 2 + 0.05**2 + 0.01**2) / 2), abs=1e-9)


@pytest.mark.parametrize("lazy", [False, True])
def test_integrals_use_each_patterns_own_centre(poisson_scan, lazy):
    data, _, centres = poisson_scan
    s = signal(data[:3, :4], centres[:3, :4], lazy)
    mask = beam_stop()
    one = s.get_azimuthal_integral1d(npt=NPT, radial_range=RANGE, mask=mask, mean=True,
                                     show_progressbar=False)
    polar = s.get_azimuthal_integral2d(npt=6, npt_azim=8, radial_range=RANGE, mask=mask,
                                       show_progressbar=False)
    if lazy:
        one.compute(show_progressbar=False)
        polar.compute(show_progressbar=False)
    assert one.metadata.FEM.Integration.descan.per_position_centres
    rounded = np.round(centres[:3, :4] * 10) / 10
    for i in range(3):
        for j in range(4):
            w1 = I.build_weights(DET, rounded[i, j], npt=NPT, radial_range=RANGE, mask=mask)
            w2 = I.build_weights(DET, rounded[i, j], npt=6, npt_azim=8, radial_range=RANGE,
                                 mask=mask)
            np.testing.assert_allclose(one.data[i, j], I.integrate(data[i, j], w1, mean=True),
                                       rtol=1e-12)
            np.testing.assert_allclose(polar.data[i, j], I.integrate(data[i, j], w2),
                                       rtol=1e-6)


@pytest.mark.parametrize("lazy", [False, True])
def test_equal_centres_through_the_descan_engine_equal_one_centre(poisson_scan, lazy):
    """The descan pass (centres on the sub-pixel grid, all equal) gives today's single-centre
    results, for groups, tiles, thickness bins and navigation masks too."""
    data, _, _ = poisson_scan
    c = (31.4, 32.3)
    one = signal(data, c, lazy)
    nav = data.shape[:2]
    t = np.linspace(20, 40, 400).reshape(nav)
    skip = np.zeros(nav, bool)
    skip[0, :5] = True
    groups = np.arange(400).reshape(nav) % 3
    groups[0, 7] = -1
    cases = [dict(method=["Omega", "r", "re"]), dict(thickness=t, bins=2),
             dict(tiles=(10, 10)), dict(groups=groups, navigation_mask=skip)]
    geo = one.calibration.geometry(mask=beam_stop())
    dw = I.build_descan_weights(DET, np.tile(c, (400, 1)), npt=NPT, radial_range=RANGE,
                                mask=geo["mask"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case in cases:
            ref = computed(one.get_variance(gain=GAIN, **kwargs(**case)))
            # The signal would take the single-centre path: call the descan pass directly.
            one._weights = lambda *a, **k: dw  # noqa: B023
            got = computed(one.get_variance(gain=GAIN, **kwargs(**case)))
            del one._weights
            np.testing.assert_allclose(got.data, ref.data, rtol=1e-10, atol=1e-14)
            np.testing.assert_allclose(got.metadata.FEM.standard_error,
                                       ref.metadata.FEM.standard_error, rtol=1e-10, atol=1e-14)


def test_one_centre_for_all_is_todays_path(poisson_scan):
    data, _, _ = poisson_scan
    a = signal(data, (31.43, 32.27))
    b = signal(data, np.zeros(data.shape[:2] + (2,)) + (31.43, 32.27))
    va = a.get_variance(gain=GAIN, **kwargs())
    vb = b.get_variance(gain=GAIN, **kwargs())
    np.testing.assert_array_equal(va.data, vb.data)
    assert "descan" not in vb.metadata.FEM.Calibration


@pytest.mark.parametrize("lazy", [False, True])
def test_pure_poisson_under_descan_gives_zero_omega(poisson_scan, lazy):
    data, _, centres = poisson_scan
    v = computed(signal(data, centres, lazy).get_variance(gain=GAIN, **kwargs()))
    z = v.data / v.metadata.FEM.standard_error
    assert np.sqrt(np.mean(z**2)) < 1.5 and np.abs(z).max() < 3.5, z
    # One centre for the whole scan: the moving ring under the fixed beam stop is "variance".
    single = signal(data, C0).get_variance(gain=GAIN, **kwargs())
    zs = single.data / single.metadata.FEM.standard_error
    assert zs.min() > 5, zs


@pytest.mark.parametrize("lazy", [False, True])
def test_pure_poisson_under_descan_r_and_re_are_their_noise_free_values(poisson_scan, lazy):
    """r and re also see the static non-uniformity of the ring inside each bin: on pure
    Poisson data the corrected estimate is the noise-free one, within its error."""
    data, mu, centres = poisson_scan
    kw = kwargs(method=["Omega", "r", "re"])
    v = computed(signal(data, centres, lazy).get_variance(gain=GAIN, **kw))
    noise_free = signal(mu, centres).get_variance(**kw)
    z = (v.data - noise_free.data) / v.metadata.FEM.standard_error
    assert np.sqrt(np.mean(z**2)) < 1.5 and np.abs(z).max() < 3.5, z
    assert np.abs(noise_free.data[0]).max() < 1e-5  # Omega: no structure, no variance


@pytest.mark.parametrize("lazy", [False, True])
def test_descanned_scan_matches_its_truth_only_with_per_position_centres(
    structured_scan, lazy
):
    data, eps, centres = structured_scan
    truth = true_variance(np.linspace(*RANGE, NPT + 1), eps, 0.1)
    v = computed(signal(data, centres, lazy).get_variance(gain=GAIN, **kwargs()))
    z = (v.data - truth) / v.metadata.FEM.standard_error
    assert np.sqrt(np.mean(z**2)) < 0.6 and np.abs(z).max() < 1.5, z
    np.testing.assert_allclose(v.data, truth, rtol=0.08)
    single = signal(data, C0).get_variance(gain=GAIN, **kwargs())
    zs = (single.data - truth) / single.metadata.FEM.standard_error
    assert np.sqrt(np.mean(zs**2)) > 2.5, zs


def test_noise_model_counting_equals_gain_under_descan(structured_scan):
    from femlib.noise import DetectorNoise

    data, _, centres = structured_scan
    s = signal(data[:8], centres[:8])
    a = s.get_variance(gain=GAIN, **kwargs(method=["Omega", "r"]))
    b = s.get_variance(noise=DetectorNoise.counting(GAIN), **kwargs(method=["Omega", "r"]))
    np.testing.assert_allclose(b.data, a.data, rtol=1e-10, atol=1e-15)


def test_tiles_equal_the_tiles_own_sub_scans(structured_scan):
    data, _, centres = structured_scan
    s = signal(data, centres)
    tiles = s.get_variance(gain=GAIN, tiles=(10, 10), **kwargs())
    part = s.inav[10:, :10].get_variance(gain=GAIN, **kwargs())  # rows 0-9, columns 10-19
    np.testing.assert_allclose(tiles.data[0, 1], part.data, rtol=1e-10)


def test_thickness_from_pattern_uses_each_centre(poisson_scan):
    from femlib.thickness import thickness_from_pattern

    data, _, centres = poisson_scan
    s = signal(data[:2, :3], centres[:2, :3])
    t = thickness_from_pattern(s, radial_range=(25.0, 29.0), slope=1.0)
    rounded = np.round(centres[:2, :3] * 10) / 10
    for i in range(2):
        for j in range(3):
            w = I.build_weights(DET, rounded[i, j], npt=1, radial_range=(25.0, 29.0))
            assert t.data[i, j] == pytest.approx(I.integrate(data[i, j], w, mean=True)[0],
                                                 rel=1e-12)


# ------------------------------------------------------------------ refused and bad input
def test_vimage_and_nonuniformity_are_refused_under_descan(poisson_scan):
    data, _, centres = poisson_scan
    s = signal(data[:4], centres[:4])
    with pytest.raises(ValueError, match="'VImage' is not available with per-position"):
        s.get_variance(gain=GAIN, **kwargs(method="all"))
    with pytest.raises(ValueError, match="subtract_nonuniformity is not available"):
        s.get_variance(gain=GAIN, subtract_nonuniformity=True, **kwargs(method="r"))
    with pytest.raises(ValueError, match="VImage needs per-pixel sums"):
        dw = s._weights(NPT, radial_range=RANGE)
        M.accumulate_moments(data[:4], dw, methods=["VImage"])


def test_radial_range_leaving_the_detector_for_some_centre_names_center(poisson_scan):
    data, _, _ = poisson_scan
    s = FEMDiffraction2D(data[0, :2])
    s.calibration.center = np.array([(10.0, 10.0), (32.0, 32.0)])
    # From the mean centre (21, 21) the far corner is 60 px away, from (32, 32) 45.3 px.
    with pytest.raises(ValueError, match=r"leaves the detector around the centre \(32, 32\) "
                                         r"px of probe position 1 .*descan larger than the "
                                         r"detector.*center"):
        s.get_variance(npt=4, radial_range=(10.0, 50.0), show_progressbar=False)


def test_a_ring_wholly_masked_for_some_positions_names_center(poisson_scan):
    data, _, centres = poisson_scan
    s = signal(data, centres)
    # An annulus masked around the last centre: the ring inside it is wholly masked for the
    # positions near the last one, and partly seen from the others.
    y, x = np.mgrid[0 : DET[0], 0 : DET[1]]
    c = centres[-1, -1]
    r = np.hypot(x - c[0], y - c[1])
    mask = (r > 14.5) & (r < 20.5)
    with pytest.raises(ValueError, match=r"probe position\(s\) a radial bin has no unmasked "
                                         r"pixel .*own centre \(s.calibration.center"):
        s.get_variance(npt=1, gain=GAIN, radial_range=(16.0, 19.0), mask=mask,
                       show_progressbar=False)


def test_centres_follow_a_swap_of_the_navigation_axes():
    s = make()
    c = centre_map()
    s.calibration.center = c
    swapped = s.swap_axes(0, 1)  # the two navigation axes
    np.testing.assert_array_equal(swapped.calibration.center, np.swapaxes(c, 0, 1))


def test_default_range_with_centres_spread_around_the_middle():
    """From the mean centre (the middle) the far corner is nearer than from any centre: the
    default radial range reaches the nearest far corner of the centres."""
    frames = np.random.default_rng(0).poisson(5.0, (2, 64, 64)).astype(np.float32)
    dw = I.build_descan_weights((64, 64), [(10.0, 10.0), (53.0, 53.0)], npt=8)
    assert dw.radial_edges[-1] == pytest.approx(np.hypot(53.5, 53.5))
    got = I.integrate_descan(frames, dw)
    for n, c in enumerate([(10.0, 10.0), (53.0, 53.0)]):
        w = I.build_weights((64, 64), c, npt=8, radial_range=(0, np.hypot(53.5, 53.5)))
        np.testing.assert_allclose(got[n], I.integrate(frames[n], w), rtol=1e-12)
