"""thickness_from_pattern: thickness from the high-angle scattering of the patterns."""

import re

import numpy as np
import pytest

import femlib
from femlib.data._synthetic import _corrected_radius
from femlib.thickness import thickness_from_pattern

RANGE = (7.5, 8.9)


@pytest.fixture(scope="module")
def data():
    s = femlib.data.synthetic_fem(
        navigation_shape=(20, 20), detector_shape=(64, 64), scale=0.28, seed=3
    )
    sim = s.metadata.Simulation
    s.calibration.center = sim.center
    s.calibration.affine = sim.affine
    return s


def _plain_annular_sum(s):
    """Independent reference: hard annulus (pixel centres) at the true geometry."""
    sim = s.metadata.Simulation
    y, x = np.mgrid[0 : s.data.shape[-2], 0 : s.data.shape[-1]]
    k = _corrected_radius(x, y, sim.center, sim.affine, sim.scale)
    ann = (k >= RANGE[0]) & (k < RANGE[1]) & ~sim.beam_stop_mask
    total = s.data[..., ann].astype(float).sum(-1)
    return total / total.mean()


@pytest.mark.parametrize("lazy", [False, True])
def test_tracks_true_thickness_as_well_as_annular_sum(data, lazy):
    s = data.as_lazy() if lazy else data
    sim = data.metadata.Simulation
    t = thickness_from_pattern(s, RANGE, mask=sim.beam_stop_mask)
    assert t.data.shape == (20, 20)
    assert not t._lazy
    assert t.axes_manager.signal_axes[0].name == "x"
    assert t.metadata.Signal.quantity == "Relative thickness"
    np.testing.assert_allclose(t.data.mean(), 1.0, rtol=1e-12)
    truth = sim.thickness / sim.thickness.mean()
    plain = _plain_annular_sum(data)
    rms = np.sqrt(np.mean((t.data - truth) ** 2))
    rms_plain = np.sqrt(np.mean((plain - truth) ** 2))
    corr = np.corrcoef(t.data.ravel(), truth.ravel())[0, 1]
    corr_plain = np.corrcoef(plain.ravel(), truth.ravel())[0, 1]
    # Measured (seed 3): both about 0.98 correlation and 1.2 % rms; the thickness ramp is
    # +-10 %, so an estimate that ignored it would have rms ~6 %.
    assert rms <= 1.05 * rms_plain
    assert corr >= corr_plain - 0.005
    assert corr > 0.95 and rms < 0.02


def test_eager_and_lazy_agree(data):
    a = thickness_from_pattern(data, RANGE)
    b = thickness_from_pattern(data.as_lazy(), RANGE)
    np.testing.assert_allclose(b.data, a.data, rtol=1e-12)


def test_slope_and_black_level_give_nm(data):
    rel = thickness_from_pattern(data, RANGE, black_level=1.0)
    mean_signal = data.get_azimuthal_integral1d(
        npt=1, radial_range=RANGE, mean=True
    ).data[..., 0]
    slope = (mean_signal.mean() - 1.0) / 30.0
    nm = thickness_from_pattern(data, RANGE, black_level=1.0, slope=slope)
    assert nm.metadata.Signal.quantity == "Thickness (nm)"
    np.testing.assert_allclose(nm.data, (mean_signal - 1.0) / slope, rtol=1e-12)
    np.testing.assert_allclose(nm.data, 30.0 * rel.data, rtol=1e-12)


def test_usable_as_thickness_for_get_variance(data):
    t = thickness_from_pattern(data, RANGE)
    v = data.get_variance(npt=8, radial_range=(3.0, 5.5), thickness=t, bins=2,
                          show_progressbar=False)
    assert v.axes_manager.navigation_shape == (2,)
    assert sum(v.metadata.FEM.counts) == 400


def test_input_not_modified(data):
    before = data.data.copy()
    thickness_from_pattern(data, RANGE)
    np.testing.assert_array_equal(data.data, before)


def test_annulus_with_no_unmasked_pixel(data):
    mask = np.zeros(data.data.shape[-2:], bool)
    mask[:, :] = True
    with pytest.raises(ValueError, match="contains no unmasked pixel"):
        thickness_from_pattern(data, RANGE, mask=mask)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"slope": 0}, "slope must be a finite non-zero number or None, got 0.0"),
        ({"slope": "a"}, "slope must be a number (intensity per pixel per nm) or None"),
        ({"black_level": np.nan}, "black_level must be finite, got nan"),
        ({"black_level": 1e9}, "the annulus mean intensity minus black_level is not positive"),
    ],
)
def test_bad_arguments(data, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        thickness_from_pattern(data, RANGE, **kwargs)


def test_reversed_radial_range(data):
    with pytest.raises(ValueError, match="radial_range"):
        thickness_from_pattern(data, RANGE[::-1])
    with pytest.raises(ValueError, match="radial_range"):
        thickness_from_pattern(data, None)
