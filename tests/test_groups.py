"""Groups and tiles: femlib.groups and get_variance(groups=..., tiles=...)."""

import re
import warnings

import numpy as np
import pytest

import femlib
from femlib import groups as G

KW = {"npt": 10, "gain": 4.2, "radial_range": (3.0, 7.0), "show_progressbar": False}


def _computed(v):
    """A lazy input gives a lazy V(k): compute it (in place)."""
    if v._lazy:
        v.compute()
    return v


@pytest.fixture(scope="module")
def data():
    s = femlib.data.synthetic_fem(
        navigation_shape=(10, 13), detector_shape=(32, 32), scale=0.56, seed=4
    )
    return s


def _same(a, b):
    np.testing.assert_allclose(a.data, b.data, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(a.standard_error, b.standard_error, rtol=1e-10, atol=1e-14)


# --- pure module


def test_check_groups_accepts_and_counts():
    labels, n = G.check_groups(np.array([[0, 2], [-1, 2]], np.int32), (2, 2))
    assert n == 3 and labels.dtype == np.int64


@pytest.mark.parametrize(
    ("groups", "error", "message"),
    [
        (np.zeros((2, 3), int), ValueError,
         "groups has shape (2, 3) but the navigation shape is (3, 2)"),
        (np.zeros((3, 2)), TypeError, "groups must be integer labels"),
        (np.zeros((3, 2), bool), TypeError, "groups must be integer labels"),
        (np.full((3, 2), -1), ValueError, "groups leaves every probe position out"),
        (np.full((3, 2), -2), ValueError, "groups labels must be >= -1"),
    ],
)
def test_check_groups_bad_input(groups, error, message):
    with pytest.raises(error, match=re.escape(message)):
        G.check_groups(groups, (3, 2))


def test_tile_labels_partial_edge_tiles():
    labels, grid = G.tile_labels((5, 7), (2, 3))
    assert grid == (3, 3)
    counts = np.bincount(labels.ravel()).reshape(grid)
    np.testing.assert_array_equal(counts, [[6, 6, 2], [6, 6, 2], [3, 3, 1]])
    assert labels[4, 6] == 8 and labels[0, 3] == 1


@pytest.mark.parametrize(
    ("shape", "tiles", "message"),
    [
        ((5, 7), (6, 1), "tiles=(6, 1) is larger than the scan (5, 7)"),
        ((5, 7), (1, 8), "tiles=(1, 8) is larger than the scan (5, 7)"),
        ((5, 7), (0, 2), "tiles must be (ty, tx), two positive integers"),
        ((5, 7), (2.0, 2), "tiles must be (ty, tx), two positive integers"),
        ((5, 7), 3, "tiles must be (ty, tx), two positive integers"),
        ((35,), (2, 2), "tiles needs a 2D scan"),
    ],
)
def test_tile_labels_bad_input(shape, tiles, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        G.tile_labels(shape, tiles)


def test_tile_centers_and_combined_labels():
    y, x = G.tile_centers((5, 7), (2, 3), offsets=(10.0, -1.0), scales=(0.5, 2.0))
    np.testing.assert_allclose(y, 10.0 + 0.5 * np.array([0.5, 2.5, 4.0]))
    np.testing.assert_allclose(x, -1.0 + 2.0 * np.array([1.0, 4.0, 6.0]))
    np.testing.assert_array_equal(G.combine_labels([2, 2, -1], [1, -1, 0], 3), [7, -1, -1])


# --- get_variance(groups=...)


@pytest.mark.parametrize("lazy", [False, True])
def test_groups_equal_one_navigation_mask_run_per_label(data, lazy):
    s = data.as_lazy() if lazy else data
    labels = np.zeros((10, 13), int)
    labels[:, 6:] = 1
    labels[3:7, 2:9] = 2
    labels[0, :4] = -1
    v = _computed(s.get_variance(groups=labels, method=["Omega", "r"], **KW))
    assert v.axes_manager.navigation_axes[1].name == "Group"
    assert list(v.metadata.FEM.groups) == [0, 1, 2]
    np.testing.assert_array_equal(v.metadata.FEM.counts, [np.sum(labels == g) for g in range(3)])
    for g in range(3):
        ref = _computed(s.get_variance(navigation_mask=labels != g, method=["Omega", "r"],
                                       **KW))
        _same(v.inav[:, g], ref)
    comb = v.combined()
    assert comb.axes_manager.navigation_axes[0].name == "Method"
    assert "group average" in comb.metadata.General.title


def test_groups_combined_is_count_weighted(data):
    labels = (np.arange(130).reshape(10, 13) % 3).astype(np.int16)
    v = data.get_variance(groups=labels, **KW)
    n = np.asarray(v.metadata.FEM.counts, float)
    np.testing.assert_allclose(v.combined().data, (n[:, None] * v.data).sum(0) / n.sum(),
                               rtol=1e-12)
    assert v.curve_labels() == [f"group {g} (n={int(c)})" for g, c in enumerate(n)]


def test_group_with_fewer_than_two_patterns_left_out(data):
    labels = np.zeros((10, 13), int)
    labels[0, 0] = 3  # groups 1 and 2 are empty, 3 has one pattern
    with pytest.warns(UserWarning, match=re.escape(
        "group(s) with fewer than 2 patterns are left out: group 1 (n=0), group 2 (n=0), "
        "group 3 (n=1)"
    )):
        v = data.get_variance(groups=labels, **KW)
    assert v.axes_manager.navigation_shape == (1,)
    assert not np.isnan(v.data).any()


def test_groups_bad_input_through_get_variance(data):
    with pytest.raises(ValueError, match="groups has shape"):
        data.get_variance(groups=np.zeros((13, 10), int), **KW)
    with pytest.raises(TypeError, match="groups must be integer labels"):
        data.get_variance(groups=np.zeros((10, 13)), **KW)
    with pytest.raises(ValueError, match="groups cannot be combined with tiles or thickness"):
        data.get_variance(groups=np.zeros((10, 13), int), tiles=(2, 2), **KW)


# --- get_variance(tiles=...)


def _tile_slices(shape, tiles):
    (ny, nx), (ty, tx) = shape, tiles
    for i, y0 in enumerate(range(0, ny, ty)):
        for j, x0 in enumerate(range(0, nx, tx)):
            yield i, j, slice(y0, min(y0 + ty, ny)), slice(x0, min(x0 + tx, nx))


@pytest.mark.parametrize("lazy", [False, True])
def test_each_tile_equals_get_variance_of_its_slice(data, lazy):
    s = data.as_lazy() if lazy else data
    v = _computed(s.get_variance(tiles=(4, 5), **KW))
    assert v.axes_manager.navigation_shape == (3, 3)
    ay, ax = v.axes_manager.navigation_axes[1], v.axes_manager.navigation_axes[0]
    assert (ay.name, ax.name, ay.units) == ("y", "x", "nm")
    np.testing.assert_allclose(ay.axis, [1.5, 5.5, 8.5])
    np.testing.assert_allclose(ax.axis, [2.0, 7.0, 11.0])
    np.testing.assert_array_equal(v.metadata.FEM.tile_counts, [[20, 20, 12]] * 2 + [[10, 10, 6]])
    for i, j, rows, cols in _tile_slices((10, 13), (4, 5)):
        ref = _computed(s.inav[cols, rows].get_variance(**KW))
        _same(v.inav[j, i], ref)


def test_tiles_with_thickness_bins_per_tile_combined(data):
    sim = data.metadata.Simulation
    edges = [26.0, 29.0, 31.0, 34.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # empty (tile, bin) cells
        v = data.get_variance(tiles=(5, 7), thickness=sim.thickness, bins=edges, **KW)
    assert v.axes_manager.navigation_shape == (3, 2, 2)
    comb = v.combined()
    assert comb.axes_manager.navigation_shape == (2, 2)
    for i, j, rows, cols in _tile_slices((10, 13), (5, 7)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ref = data.inav[cols, rows].get_variance(
                thickness=sim.thickness[rows, cols], bins=edges, **KW
            )
        counts = np.asarray(ref.metadata.FEM.counts)
        for b, centre in enumerate(ref.axes_manager.navigation_axes[0].axis):
            k = int(np.argmin(np.abs(v.axes_manager.navigation_axes[0].axis - centre)))
            assert counts[k] >= 2
            part = v.inav[k, j, i]
            np.testing.assert_allclose(part.data, ref.data[b], rtol=1e-10)
            np.testing.assert_allclose(part.standard_error, ref.standard_error[b], rtol=1e-10)
        _same(comb.inav[j, i], ref.combined())


def test_tile_with_too_few_patterns_is_nan_with_warning(data):
    s = data.inav[:, :9]  # 9 rows: the last row of 4-row tiles has 1 row
    with pytest.warns(UserWarning, match="tile cell"):
        v = s.get_variance(tiles=(4, 12), **KW)  # last tile column has one position per row
    assert v.axes_manager.navigation_shape == (2, 3)
    assert np.isnan(v.data[2, 1]).all()
    assert np.isfinite(v.data[:2]).all()


def test_tiles_larger_than_scan(data):
    message = "tiles=(11, 2) is larger than the scan (10, 13)"
    with pytest.raises(ValueError, match=re.escape(message)):
        data.get_variance(tiles=(11, 2), **KW)


def test_peak_table_for_every_tile(data):
    v = data.get_variance(tiles=(5, 13), npt=30, gain=4.2, radial_range=(3.0, 8.0),
                          show_progressbar=False)
    table = v.find_peaks(positions=[4.5])
    assert sorted({row["curve"] for row in table}) == [0, 1]


# --- synthetic_fem(two_regions=True) and groups= on it


def test_two_regions_truth_recovered_per_region():
    s = femlib.data.synthetic_fem(navigation_shape=(16, 16), seed=5, two_regions=True,
                                  thickness_gradient=False)
    sim = s.metadata.Simulation
    np.testing.assert_array_equal(sim.region[:, :8], 0)
    np.testing.assert_array_equal(sim.region[:, 8:], 1)
    assert sim.region_variance.shape == (2, sim.k.size)
    np.testing.assert_array_equal(sim.modulation_components, sim.region_components[0])
    s.calibration.center = sim.center
    s.calibration.affine = sim.affine
    v = s.get_variance(npt=40, gain=sim.gain, radial_range=(3.0, 8.5),
                       mask=sim.beam_stop_mask, groups=sim.region, show_progressbar=False)
    k = v.axes_manager.signal_axes[0].axis
    for g in range(2):
        truth = np.interp(k, sim.k, sim.region_variance[g])
        z = (v.data[g] - truth) / v.standard_error[g]
        assert np.sqrt(np.mean(z**2)) < 2.0, g
    # The regions differ: at k = 5.0 the right region's V is 0.010, the left's 0.0023.
    i = int(np.argmin(np.abs(k - 5.0)))
    diff = v.data[1, i] - v.data[0, i]
    assert diff > 5 * np.hypot(v.standard_error[0, i], v.standard_error[1, i])
