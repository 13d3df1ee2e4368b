"""Tests of femlib.signals: HyperSpy registration, class round trips, inputs left untouched,
``inplace=True``."""

import copy
import importlib
import importlib.metadata
import importlib.resources
import importlib.util
import subprocess
import sys
from pathlib import Path

import hyperspy.api as hs
import hyperspy.extensions
import numpy as np
import pytest
import yaml
from hyperspy._signals.lazy import LazySignal

from femlib.signals import (
    FEMDiffraction2D,
    FEMPolar2D,
    FEMVariance1D,
    LazyFEMDiffraction2D,
    LazyFEMPolar2D,
    LazyFEMVariance1D,
)

ROWS, COLS = 20, 24  # non-square so that an x/y swap shows
NAV = (2, 3)  # array order: 2 rows of 3 probe positions

PYXEM_CLASSES = {
    name
    for base in (
        "Diffraction1D",
        "Diffraction2D",
        "ElectronDiffraction1D",
        "ElectronDiffraction2D",
        "PolarDiffraction2D",
        "DiffractionVariance1D",
        "DiffractionVariance2D",
    )
    for name in (base, "Lazy" + base)
}
PYXEM_SIGNAL_TYPES = {
    "diffraction",
    "electron_diffraction",
    "polar_diffraction",
    "diffraction_variance",
}


def _registration():
    text = importlib.resources.files("femlib").joinpath("hyperspy_extension.yaml").read_text()
    return yaml.safe_load(text)["signals"]


REGISTRATION = _registration()


def make_signal(lazy=False, seed=0):
    """Seeded Poisson patterns (mean 50 counts) as a FEMDiffraction2D, nav (3, 2) x sig (24, 20)."""
    rng = np.random.default_rng(seed)
    s = hs.signals.Signal2D(rng.poisson(50.0, NAV + (ROWS, COLS)).astype(np.float32))
    s.set_signal_type("fem_diffraction")
    return s.as_lazy() if lazy else s


def calibrate(s):
    """Give ``s`` a full calibration (centre, affine, mask) and return it."""
    s.calibration.center = (11.3, 9.6)
    s.calibration.affine = [[1.1, 0.05], [0.0, 0.9]]
    mask = np.zeros((ROWS, COLS), bool)
    mask[:2] = True
    mask[5, 7] = True
    s.calibration.mask = mask
    return s


def values(data):
    return np.asarray(data.compute() if hasattr(data, "compute") else data)


# ------------------------------------------------------------------ registration
@pytest.mark.parametrize("name", sorted(REGISTRATION))
def test_registered_class_matches_yaml(name):
    entry = REGISTRATION[name]
    cls = getattr(importlib.import_module(entry["module"]), name)
    assert cls.__name__ == name
    assert cls._lazy is bool(entry["lazy"])
    assert cls._signal_type == entry["signal_type"]
    assert cls._signal_dimension == entry["signal_dimension"]
    assert entry["dtype"] == "real"
    assert not cls._alias_signal_types


@pytest.mark.parametrize(
    ("eager_cls", "lazy_cls", "dim"),
    [
        (FEMDiffraction2D, LazyFEMDiffraction2D, 2),
        (FEMPolar2D, LazyFEMPolar2D, 2),
        (FEMVariance1D, LazyFEMVariance1D, 1),
    ],
)
def test_every_eager_class_has_a_lazy_twin(eager_cls, lazy_cls, dim):
    # HyperSpy's own base order: LazySignal first, then the eager class.
    assert lazy_cls.__bases__ == (LazySignal, eager_cls)
    s = eager_cls(np.zeros((2,) + (3,) * dim))
    lazy = s.as_lazy()
    assert type(lazy) is lazy_cls
    lazy.compute()
    assert type(lazy) is eager_cls


def test_signal_types_are_unique_within_femlib():
    keys = [
        (e["signal_type"], e["signal_dimension"], e["dtype"], e["lazy"])
        for e in REGISTRATION.values()
    ]
    assert len(keys) == len(set(keys))
    assert {e["signal_type"] for e in REGISTRATION.values()} == {
        "fem_diffraction",
        "fem_polar",
        "fem_variance",
    }


def test_no_collision_with_pyxem():
    assert not set(REGISTRATION) & PYXEM_CLASSES
    types = {e["signal_type"] for e in REGISTRATION.values()}
    aliases = {a for e in REGISTRATION.values() for a in e.get("signal_type_aliases", [])}
    assert not (types | aliases) & PYXEM_SIGNAL_TYPES


def _other_registrations():
    """Signals registered by HyperSpy itself and every extension other than femlib."""
    others = dict(copy.deepcopy(hyperspy.extensions.EXTENSIONS["signals"]))
    for ep in importlib.metadata.entry_points(group="hyperspy.extensions"):
        if ep.name == "femlib":
            continue
        path = Path(importlib.util.find_spec(ep.name).origin).parent / "hyperspy_extension.yaml"
        others.update(yaml.safe_load(path.read_text()).get("signals", {}))
    return others


def test_no_collision_with_other_extensions():
    others = _other_registrations()
    assert "Signal2D" in others  # sanity: HyperSpy's own classes are included
    assert not set(REGISTRATION) & set(others)
    other_types = {e.get("signal_type", "") for e in others.values()}
    other_types |= {a for e in others.values() for a in e.get("signal_type_aliases", [])}
    ours = {e["signal_type"] for e in REGISTRATION.values()}
    assert not ours & other_types
    # Nobody registered after femlib overwrote its entries.
    for name, entry in REGISTRATION.items():
        assert hyperspy.extensions.ALL_EXTENSIONS["signals"][name] == entry


def test_entry_point_points_at_femlib():
    eps = [
        ep
        for ep in importlib.metadata.entry_points(group="hyperspy.extensions")
        if ep.name == "femlib"
    ]
    assert len(eps) == 1
    assert eps[0].value == "femlib"
    # HyperSpy looks for the yaml beside the module the entry point names.
    path = Path(importlib.util.find_spec(eps[0].name).origin).parent / "hyperspy_extension.yaml"
    assert path.is_file()
    # What HyperSpy loaded through the entry point resolves every femlib signal type, eager
    # and lazy, to femlib's class.
    found = {
        name: entry
        for name, entry in hyperspy.extensions.ALL_EXTENSIONS["signals"].items()
        if entry["module"].startswith("femlib")
    }
    assert len(found) == 6
    for name, entry in found.items():
        dim = entry["signal_dimension"]
        s = hs.signals.BaseSignal(np.zeros((2,) + (3,) * dim)).transpose(signal_axes=dim)
        if entry["lazy"]:
            s = s.as_lazy()
        s.set_signal_type(entry["signal_type"])
        assert type(s).__name__ == name


def test_importing_hyperspy_emits_no_femlib_warning():
    code = (
        "import logging, warnings\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "warnings.simplefilter('always')\n"
        "import numpy as np\n"
        "import hyperspy.api as hs\n"
        "s = hs.signals.Signal2D(np.zeros((2, 4, 4)))\n"
        "s.set_signal_type('fem_diffraction')\n"
        "print(type(s).__name__)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "FEMDiffraction2D"
    assert "femlib" not in res.stderr.lower(), res.stderr
    # No HyperSpy logging warning at all (e.g. "signal_type not understood").
    assert "WARNING" not in res.stderr, res.stderr


# ------------------------------------------------------------------ class round trips
CASES = [
    (hs.signals.Signal2D, (2, 3, 8, 10), "fem_diffraction", FEMDiffraction2D, LazyFEMDiffraction2D),
    (hs.signals.Signal2D, (2, 3, 8, 10), "fem_polar", FEMPolar2D, LazyFEMPolar2D),
    (hs.signals.Signal1D, (2, 3, 16), "fem_variance", FEMVariance1D, LazyFEMVariance1D),
]
CASE_IDS = [c[2] for c in CASES]


@pytest.mark.parametrize(("base", "shape", "signal_type", "eager", "lazy"), CASES, ids=CASE_IDS)
def test_set_signal_type_eager_lazy_round_trip(base, shape, signal_type, eager, lazy, caplog):
    data = np.random.default_rng(1).normal(size=shape)
    s = base(data)
    with caplog.at_level("WARNING"):
        s.set_signal_type(signal_type)
    assert not caplog.records
    assert type(s) is eager
    assert s.metadata.Signal.signal_type == signal_type
    ls = s.as_lazy()
    assert type(ls) is lazy
    assert ls.metadata.Signal.signal_type == signal_type
    ls.compute()
    assert type(ls) is eager
    np.testing.assert_array_equal(ls.data, data)
    # and back to the plain HyperSpy class
    s.set_signal_type("")
    assert type(s) is base


@pytest.mark.parametrize("lazy_load", [False, True])
@pytest.mark.parametrize(("base", "shape", "signal_type", "eager", "lazy"), CASES, ids=CASE_IDS)
def test_load_with_signal_type(tmp_path, base, shape, signal_type, eager, lazy, lazy_load):
    data = np.random.default_rng(2).normal(size=shape)
    path = tmp_path / "plain.hspy"
    base(data).save(path)
    s = hs.load(path, lazy=lazy_load, signal_type=signal_type)
    assert type(s) is (lazy if lazy_load else eager)
    np.testing.assert_array_equal(values(s.data), data)


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize(("base", "shape", "signal_type", "eager", "lazy_cls"), CASES, ids=CASE_IDS)
def test_saved_femlib_signal_reloads_as_its_class(
    tmp_path, base, shape, signal_type, eager, lazy_cls, lazy
):
    data = np.random.default_rng(3).normal(size=shape)
    s = base(data)
    s.set_signal_type(signal_type)
    path = tmp_path / "typed.hspy"
    s.save(path)
    r = hs.load(path, lazy=lazy)  # no signal_type: it is stored in the file
    assert type(r) is (lazy_cls if lazy else eager)
    np.testing.assert_array_equal(values(r.data), data)


# ------------------------------------------------------------------ inputs left untouched
def _snapshot(s):
    return {
        "data": values(s.data).copy(),
        "metadata": copy.deepcopy(s.metadata.as_dictionary()),
        "axes": copy.deepcopy(s.axes_manager._get_axes_dicts()),
        "center": s.calibration.center.copy(),
        "affine": s.calibration.affine.copy(),
        "mask": s.calibration.mask.copy(),
        "class": type(s),
    }


def _assert_unchanged(s, snap, data_obj):
    assert s.data is data_obj
    assert type(s) is snap["class"]
    np.testing.assert_array_equal(values(s.data), snap["data"])
    np.testing.assert_equal(s.metadata.as_dictionary(), snap["metadata"])
    np.testing.assert_equal(s.axes_manager._get_axes_dicts(), snap["axes"])
    np.testing.assert_array_equal(s.calibration.center, snap["center"])
    np.testing.assert_array_equal(s.calibration.affine, snap["affine"])
    np.testing.assert_array_equal(s.calibration.mask, snap["mask"])


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize(
    "call",
    [
        lambda s, m: s.get_azimuthal_integral1d(npt=10, show_progressbar=False),
        lambda s, m: s.get_azimuthal_integral1d(npt=10, mask=m, mean=True, show_progressbar=False),
        lambda s, m: s.get_azimuthal_integral2d(npt=10, npt_azim=8, show_progressbar=False),
        lambda s, m: s.get_variance(npt=10, show_progressbar=False),
        lambda s, m: s.get_variance(npt=10, gain=2.0, mask=m, method="all", show_progressbar=False),
    ],
    ids=["az1d", "az1d-mask-mean", "az2d", "variance", "variance-gain-mask-all"],
)
def test_methods_do_not_modify_input(lazy, call):
    s = calibrate(make_signal(lazy))
    snap = _snapshot(s)
    data_obj = s.data
    other_mask = s.sum() < 280  # a boolean signal, different from the stored mask
    result = call(s, other_mask)
    assert result is not None and result is not s
    _assert_unchanged(s, snap, data_obj)
    # The result does not share the input's metadata either.
    result.metadata.General.title = "changed"
    assert s.metadata.General.title == snap["metadata"]["General"]["title"]


# ------------------------------------------------------------------ inplace=True
@pytest.mark.parametrize("lazy", [False, True])
def test_azimuthal_integral2d_inplace(lazy):
    s = make_signal(lazy)
    s.calibration.center = (11.3, 9.6)
    expected = s.get_azimuthal_integral2d(npt=6, npt_azim=8, show_progressbar=False)
    frame_sums = values(s.data).sum(axis=(-2, -1), dtype=float)
    assert s.get_azimuthal_integral2d(npt=6, npt_azim=8, inplace=True) is None
    assert type(s) is (LazyFEMPolar2D if lazy else FEMPolar2D)
    assert s.metadata.Signal.signal_type == "fem_polar"
    assert s.axes_manager.navigation_shape == (3, 2)
    assert [a.name for a in s.axes_manager.signal_axes] == ["Radians", "Radius"]
    assert s.axes_manager.signal_shape == (8, 6)
    np.testing.assert_array_equal(values(s.data), values(expected.data))
    # Default ranges cover the whole detector: every count lands in some bin.
    np.testing.assert_allclose(values(s.data).sum(axis=(-2, -1)), frame_sums, rtol=1e-5)
    assert s.metadata.FEM.Integration.npt == 6


@pytest.mark.parametrize("lazy", [False, True])
def test_azimuthal_integral1d_inplace(lazy):
    s = make_signal(lazy)
    s.calibration.center = (11.3, 9.6)
    expected = s.get_azimuthal_integral1d(npt=7, show_progressbar=False)
    frame_sums = values(s.data).sum(axis=(-2, -1), dtype=float)
    assert s.get_azimuthal_integral1d(npt=7, inplace=True) is None
    assert s.axes_manager.signal_dimension == 1
    assert s._lazy is lazy
    assert isinstance(s, hs.signals.Signal1D)
    assert not isinstance(s, FEMDiffraction2D)
    assert s.axes_manager.navigation_shape == (3, 2)
    assert s.axes_manager.signal_axes[0].name == "Radius"
    assert s.data.shape == NAV + (7,)
    np.testing.assert_array_equal(values(s.data), values(expected.data))
    np.testing.assert_allclose(values(s.data).sum(axis=-1), frame_sums, rtol=1e-10)


def test_installing_femlib_pulls_no_pyxem():
    """No runtime requirement of femlib, direct or transitive, is pyxem."""
    import importlib.metadata
    import re

    seen, todo = set(), ["femlib"]
    while todo:
        name = todo.pop()
        try:
            reqs = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for req in reqs:
            if "extra ==" in req:
                continue  # optional extras are not pulled by a plain install
            dep = re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0].lower().replace("_", "-")
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    assert "hyperspy" in seen and "numpy" in seen
    assert "pyxem" not in seen


def test_progress_bar_draws_and_its_thread_ends_with_the_computation():
    import io

    import dask.array as da

    from femlib._progress import ProgressBar

    out = io.StringIO()
    bar = ProgressBar(dt=30.0, out=out)  # dask's own bar would hold the exit for 30 s
    with bar:
        assert da.ones(6, chunks=2).sum().compute() == 6
    assert "100% Completed" in out.getvalue()
    assert bar._wake.is_set() and not bar._timer.is_alive()


# ------------------------------------------------------------------ plots
def test_polar_plot_labels_k_and_draws_uncovered_bins_grey():
    """FEMPolar2D.plot: the axes named as femlib names them, and exactly the bins no
    unmasked pixel reaches (coverage 0) covered by a grey layer above the data."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    rng = np.random.default_rng(0)
    s = FEMDiffraction2D(rng.poisson(20.0, NAV + (ROWS, COLS)).astype(np.float32))
    s.axes_manager.signal_axes[0].units = s.axes_manager.signal_axes[1].units = "nm^-1"
    s.calibration.center = (11.3, 9.6)
    mask = np.zeros((ROWS, COLS), bool)
    mask[:10, 11:] = True  # a quadrant: whole azimuthal bins behind it
    polar = s.get_azimuthal_integral2d(npt=6, npt_azim=8, radial_range=(1.0, 7.0),
                                       mask=mask, mean=True, show_progressbar=False)
    uncovered = np.asarray(polar.metadata.FEM.coverage) == 0
    assert 0 < uncovered.sum() < uncovered.size
    image = polar.sum()
    try:
        image.plot(cmap="magma")
        ax = image._plot.signal_plot.ax
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("azimuth (rad)", "k (nm^-1)")
        assert ax.get_title() == image.metadata.General.title
        data, grey = ax.images
        np.testing.assert_array_equal(np.ma.getmaskarray(grey.get_array()), ~uncovered)
        assert grey.get_extent() == data.get_extent()
        assert grey.get_zorder() > data.get_zorder()
        np.testing.assert_allclose(grey.cmap(1.0), to_rgba("0.6"))
        # Cropped with isig, the coverage no longer matches the bins shown: no grey layer.
        cropped = image.isig[:, 2.0:6.0]
        cropped.plot()
        assert len(cropped._plot.signal_plot.ax.images) == 1
    finally:
        plt.close("all")
