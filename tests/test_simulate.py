"""femlib.simulate against closed forms, abTEM, and its own lazy/eager paths."""

import math
import sys

import numpy as np
import pytest

import femlib
from femlib.simulate import _kinematic

ase = pytest.importorskip("ase", reason="femlib.simulate's models are ase.Atoms (femlib[sim])")


def _k_grid(n, scale):
    k = (np.arange(n) - n // 2) * scale
    ky, kx = np.meshgrid(k, k, indexing="ij")
    return np.hypot(ky, kx), ky, kx


def _atom(symbol="Zr", at=(20.3, 19.7), cell=40.0):
    return ase.Atoms(symbol, positions=[[at[0], at[1], 5.0]], cell=[cell, cell, 10.0])


def test_import_femlib_imports_neither_ase_nor_abtem():
    import subprocess

    code = (
        "import sys, femlib, femlib.simulate; "
        "print('ase' in sys.modules, 'abtem' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_wavelength_and_sigma_closed_forms():
    # lambda = h c / sqrt(E (2 m c^2 + E)): 12.3984 keV Å / sqrt(200 * 1221.998) at 200 kV.
    assert femlib.simulate.wavelength(200.0) == pytest.approx(0.00250793, rel=1e-5)
    assert femlib.simulate.wavelength(300.0) == pytest.approx(0.00196875, rel=1e-5)
    lam = 0.00250793  # nm
    sigma = 2 * math.pi / (lam * 2e5) * (510.999 + 200) / (2 * 510.999 + 200)
    assert femlib.simulate.interaction_constant(200.0) == pytest.approx(sigma, rel=1e-5)


def test_scattering_factors_match_abtems_lobato_table():
    abtem_param = pytest.importorskip("abtem.parametrizations", reason="abTEM (femlib[sim])")
    p = abtem_param.LobatoParametrization()
    q = np.linspace(0, 20, 41)  # nm^-1
    for symbol in femlib.simulate.SUPPORTED_ELEMENTS:
        ref = p.scattering_factor(symbol)((q / 10) ** 2) / 10  # Å -> nm
        got = femlib.simulate.scattering_factor(symbol, q)
        np.testing.assert_allclose(got, ref, rtol=2e-5)  # abTEM evaluates in float32
    # v_z(q) = 47.878 V Å^2 f_e(q), abTEM's projected scattering factor.
    ref = p.projected_scattering_factor("Cu")((q / 10) ** 2) / 1000  # V Å^3 -> V nm^3
    np.testing.assert_allclose(
        femlib.simulate.projected_scattering_factor("Cu", q), ref, rtol=1e-5
    )


def test_single_atom_is_form_factor_times_probe_transfer():
    """Weak phase, atom under the probe: I(k) = (sigma scale^2)^2 |sum_q A(k-q) v(q)|^2,
    and ~ (sigma scale^2 v(k))^2 N_aperture far from the aperture (|f(k)|^2 x transfer)."""
    scale, n, alpha = 0.25, 48, 5.0
    s = femlib.simulate.nanodiffraction(
        _atom(), semiangle=alpha, positions=[[2.03, 1.97]], detector_shape=(n, n),
        scale=scale, weak_phase=True,
    )
    sim = s.metadata.Simulation
    lam, sigma = sim.wavelength, sim.interaction_constant
    assert s.axes_manager.signal_axes[0].scale == scale
    intensity = s.data[0].astype(float)
    kk, ky, kx = _k_grid(n, scale)
    m = int(np.ceil(alpha * 1e-3 / lam / scale)) + 1
    ay, ax = np.meshgrid(np.arange(-m, m + 1) * scale, np.arange(-m, m + 1) * scale,
                         indexing="ij")
    inside = np.hypot(ay, ax) * lam <= alpha * 1e-3
    conv = sum(
        femlib.simulate.projected_scattering_factor("Zr", np.hypot(ky - y, kx - x))
        for y, x in zip(ay[inside], ax[inside], strict=True)
    )
    expected = (sigma * scale**2) ** 2 * conv**2 / inside.sum()
    dark = kk > 2 * alpha * 1e-3 / lam + 0.5
    np.testing.assert_allclose(intensity[dark], expected[dark], rtol=1e-3)
    # Far from the aperture the transfer is the aperture's area: |f(k)|^2 N_ap.
    far = kk > 5.0
    approx = (sigma * scale**2 * femlib.simulate.projected_scattering_factor("Zr", kk)) ** 2
    ratio = intensity[far] / (approx[far] * inside.sum())
    assert np.all(np.abs(ratio - 1) < 0.03)
    # Isotropic: pixels at the same |k| (transposed, rotated by 90 degrees) agree.
    inner = intensity[1:, 1:]
    np.testing.assert_allclose(inner, inner.T, rtol=2e-3)
    np.testing.assert_allclose(inner, np.rot90(inner), rtol=2e-3)


def test_bright_field_disc_has_the_radius_alpha_over_lambda():
    scale, n = 0.125, 64
    s = femlib.simulate.nanodiffraction(
        _atom("C", at=(10.0, 10.0), cell=80.0), semiangle=3.0, positions=[[1.0, 1.0]],
        detector_shape=(n, n), scale=scale,
    )
    lam = femlib.simulate.wavelength(200.0)
    disc = s.data[0] > 0.5 * s.data[0].max()
    radius = math.sqrt(disc.sum() / math.pi) * scale
    assert radius == pytest.approx(3e-3 / lam, abs=scale / 2)
    assert float(s.data[0].sum()) == pytest.approx(1.0, abs=1e-3)  # a C atom scatters little
    kk, _, _ = _k_grid(n, scale)
    assert kk[disc].max() <= 3e-3 / lam + 1e-9


def test_ideal_gas_gives_fully_developed_speckle():
    rng = np.random.default_rng(5)
    box = np.array([20.0, 20.0, 3.0])  # nm
    n_atoms = int(50 * box.prod())
    gas = ase.Atoms(
        ["Zr"] * n_atoms, positions=rng.random((n_atoms, 3)) * box * 10,
        cell=box * 10, pbc=True,
    )
    s = femlib.simulate.nanodiffraction(
        gas, semiangle=3.0, scan_step=1.0, detector_shape=(48, 48), scale=0.25,
        weak_phase=True,
    )
    data = s.data.reshape(-1, 48, 48).astype(float)
    kk, _, _ = _k_grid(48, 0.25)
    ring = (kk > 3.5) & (kk < 5.5)
    mean = data.mean(axis=0)
    v_pixel = data.var(axis=0) / mean**2  # VImage of the pixel intensities
    assert v_pixel[ring].mean() == pytest.approx(1.0, abs=0.08)
    normalised = (data / mean)[:, ring].ravel()
    assert (normalised > 1).mean() == pytest.approx(math.exp(-1), abs=0.02)
    assert (normalised > 2).mean() == pytest.approx(math.exp(-2), abs=0.015)


def test_crystal_bragg_spot_matches_its_d_spacing():
    a = 0.3615  # Cu fcc, nm; [001] zone: {200} at 2/a, {220} at 2 sqrt(2)/a
    from ase.build import bulk

    crystal = bulk("Cu", "fcc", a=a * 10, cubic=True).repeat((12, 12, 6))
    crystal.positions += [20.0, 20.0, 0.0]
    crystal.set_cell([84.0, 84.0, 30.0])
    crystal.pbc = False
    centre = np.array([20.0 + 6 * a * 10 - 1.0, 20.0 + 6 * a * 10 - 1.0]) / 10  # nm, (x, y)
    s = femlib.simulate.nanodiffraction(
        crystal, semiangle=1.5, positions=[centre], detector_shape=(128, 128), scale=0.125,
    )
    intensity = s.data[0].astype(float)
    kk, ky, kx = _k_grid(128, 0.125)
    for g in (2 / a, 2 * math.sqrt(2) / a):
        for angle in (0.0, 0.5 * math.pi) if g < 6 else (0.25 * math.pi, 0.75 * math.pi):
            gy, gx = g * math.sin(angle), g * math.cos(angle)
            box = np.hypot(ky - gy, kx - gx) < 0.9
            w = intensity[box]
            cy, cx = (ky[box] * w).sum() / w.sum(), (kx[box] * w).sum() / w.sum()
            assert math.hypot(cy, cx) == pytest.approx(g, rel=0.005)


def test_lazy_equals_eager_and_chunks_are_simulated_on_compute():
    model = femlib.simulate.random_packing(box=(4, 4, 1), seed=2)
    kw = dict(semiangle=4.0, scan_step=0.8, detector_shape=(32, 32), scale=0.25)
    eager = femlib.simulate.nanodiffraction(model, **kw)
    lazy = femlib.simulate.nanodiffraction(model, lazy=True, chunks=2, **kw)
    assert lazy._lazy and lazy.data.numblocks[0] == 3
    np.testing.assert_array_equal(lazy.data.compute(), eager.data)
    v_eager = eager.get_variance(npt=8, radial_range=(2.0, 5.0))
    v_lazy = lazy.get_variance(npt=8, radial_range=(2.0, 5.0))
    np.testing.assert_allclose(np.asarray(v_lazy.data), v_eager.data, rtol=1e-10)


def test_calibration_and_metadata():
    model = femlib.simulate.random_packing(box=(4, 4, 1), seed=2)
    s = femlib.simulate.nanodiffraction(
        model, semiangle=4.0, scan_step=1.0, detector_shape=(32, 40), scale=0.25
    )
    assert s.data.shape == (4, 4, 32, 40)
    np.testing.assert_allclose(s.calibration.center, [20, 16])
    assert s.axes_manager.signal_axes[0].units == "nm^-1"
    nav = s.axes_manager.navigation_axes
    assert nav[0].scale == 1.0 and nav[0].offset == 0.5 and nav[0].units == "nm"
    sim = s.metadata.Simulation
    assert sim.method == "kinematic" and sim.energy == 200.0 and sim.gpts % 2 == 0
    assert sim.composition["Zr"] == pytest.approx(0.5, abs=0.01)
    assert sim.positions.shape == (4, 4, 2)
    assert sim.sampling == pytest.approx(1 / (0.25 * sim.gpts))


def _slab_v(method, thickness, seed=4):
    model = femlib.simulate.random_packing(box=(4, 4, thickness), seed=seed)
    s = femlib.simulate.nanodiffraction(
        model, semiangle=4.0, scan_step=0.5, detector_shape=(64, 64), scale=0.25,
        method=method,
    )
    return s.get_variance(npt=30, radial_range=(2.5, 7.0))


def test_kinematic_and_multislice_agree_on_a_thin_slab():
    pytest.importorskip("abtem", reason="abTEM (femlib[sim])")
    vk = _slab_v("kinematic", 1.5)
    vm = _slab_v("multislice", 1.5)
    k = vk.axes_manager[0].axis
    ik, im = int(np.argmax(vk.data)), int(np.argmax(vm.data))
    assert abs(k[ik] - k[im]) <= 0.1 + 1e-9
    assert vk.data[ik] == pytest.approx(vm.data[im], rel=0.10)


def test_multislice_equals_abtem_called_directly():
    abtem = pytest.importorskip("abtem", reason="abTEM (femlib[sim])")
    model = femlib.simulate.random_packing(box=(4, 4, 1), seed=1)
    positions = np.array([[1.0, 2.0], [2.5, 1.5], [3.2, 3.3]])  # (x, y) nm
    s = femlib.simulate.nanodiffraction(
        model, semiangle=4.0, defocus=5.0, positions=positions, detector_shape=(48, 48),
        scale=0.25, method="multislice", gpts=128, slice_thickness=0.2,
    )
    with abtem.config.set({"diagnostics.progress_bar": False}):
        potential = abtem.Potential(
            model, gpts=128, slice_thickness=2.0, projection="infinite",
            parametrization="lobato",
        )
        probe = abtem.Probe(energy=200e3, semiangle_cutoff=4.0, defocus=50.0, soft=False)
        waves = probe.multislice(potential, scan=abtem.CustomScan(positions * 10))
        ref = waves.diffraction_patterns(max_angle=None, fftshift=True).compute().array
    ref = np.swapaxes(ref[:, 64 - 24 : 64 + 24, 64 - 24 : 64 + 24], -1, -2)  # (x, y) -> (y, x)
    np.testing.assert_allclose(s.data, ref, rtol=1e-5, atol=1e-5 * ref.max())


def test_add_counts_poisson_statistics_and_psf():
    model = femlib.simulate.random_packing(box=(4, 4, 1), seed=2)
    s = femlib.simulate.nanodiffraction(
        model, semiangle=4.0, scan_step=1.0, detector_shape=(32, 32), scale=0.25
    )
    before = s.data.copy()
    dose, gain = 2e5, 3.0
    counted = femlib.simulate.add_counts(s, dose, gain=gain, seed=0)
    np.testing.assert_array_equal(s.data, before)  # input untouched
    electrons = counted.data / gain
    np.testing.assert_array_equal(electrons, np.rint(electrons))
    # Poisson: E[N] = dose I and Var[N] = dose I, pooled over pixels in units of the mean.
    lam = dose * s.data.astype(float)
    z = (electrons - lam)[lam > 50] / np.sqrt(lam[lam > 50])
    assert abs(z.mean()) < 0.05 and z.var() == pytest.approx(1.0, abs=0.05)
    # Lazy, any chunking, same counts.
    lazy = femlib.simulate.nanodiffraction(
        model, semiangle=4.0, scan_step=1.0, detector_shape=(32, 32), scale=0.25,
        lazy=True, chunks=3,
    )
    np.testing.assert_array_equal(
        femlib.simulate.add_counts(lazy, dose, gain=gain, seed=0).data.compute(), counted.data
    )
    # With a PSF the noise kernel is G h*h: femlib.noise.DetectorNoise.from_psf matches it.
    from femlib.noise import DetectorNoise

    blurred = femlib.simulate.add_counts(s, dose, gain=gain, psf_sigma=0.7, seed=1)
    h = blurred.metadata.Simulation.psf
    noise = DetectorNoise.from_psf(h, gain)
    assert noise.gain == pytest.approx(gain)
    np.testing.assert_allclose(h, femlib.simulate.psf_kernel(0.7))


def test_counted_scan_variance_is_the_model_variance_within_errors():
    model = femlib.simulate.random_packing(box=(6, 6, 1), seed=6)
    s = femlib.simulate.nanodiffraction(
        model, semiangle=4.0, scan_step=0.5, detector_shape=(48, 48), scale=0.25
    )
    truth = s.get_variance(npt=10, radial_range=(2.5, 5.5))
    counted = femlib.simulate.add_counts(s, 5e4, gain=2.0, seed=3)
    v = counted.get_variance(npt=10, radial_range=(2.5, 5.5), gain=2.0)
    se = v.metadata.FEM.standard_error
    assert np.all(np.abs(v.data - truth.data) < 4 * se + 1e-12)


def test_random_packing_density_composition_and_min_distance():
    from scipy.spatial import cKDTree

    atoms = femlib.simulate.random_packing(
        {"Cu": 0.6, "Zr": 0.4}, density=50.0, box=(3, 3, 2), min_distance=0.22, seed=3
    )
    assert len(atoms) == 900
    assert atoms.get_chemical_formula() == "Cu540Zr360"
    box = np.diag(atoms.cell) / 10
    pos = np.mod(atoms.positions / 10, box)
    d, _ = cKDTree(pos, boxsize=box).query(pos, k=2)
    assert d[:, 1].min() >= 0.22
    again = femlib.simulate.random_packing(
        {"Cu": 0.6, "Zr": 0.4}, density=50.0, box=(3, 3, 2), min_distance=0.22, seed=3
    )
    np.testing.assert_array_equal(again.positions, atoms.positions)


def test_embed_clusters_builds_crystallites_of_the_given_size():
    from scipy.spatial import cKDTree

    host = femlib.simulate.random_packing(box=(5, 5, 3), seed=0)
    model = femlib.simulate.embed_clusters(host, diameter=1.5, fraction=0.15, seed=1)
    info = model.info["clusters"]
    a = info["a"]
    assert a == pytest.approx((4 / 56.0) ** (1 / 3), rel=0.02)
    labels = model.arrays["cluster"]
    box = np.diag(model.cell) / 10
    pos = np.mod(model.positions / 10, box)
    for i, c in enumerate(info["centers"]):
        members = pos[labels == i]
        delta = members - c
        delta -= box * np.rint(delta / box)
        assert np.hypot.reduce(delta, axis=1).max() < 0.75
        d, _ = cKDTree(members, boxsize=box).query(members, k=2)
        np.testing.assert_allclose(d[:, 1], a / math.sqrt(2), rtol=1e-6)  # fcc neighbours
    volume = (labels >= 0).sum() / len(model)
    assert volume == pytest.approx(0.15, abs=0.05)
    d, _ = cKDTree(pos, boxsize=box).query(pos, k=2)
    assert d[:, 1].min() >= 0.22 - 1e-9
    assert len(host) == 4200 and "cluster" not in host.arrays  # host untouched


def test_clusters_raise_the_variance():
    host = femlib.simulate.random_packing(box=(6, 6, 2), seed=8)
    model = femlib.simulate.embed_clusters(host, diameter=1.5, fraction=0.3, seed=8)
    kw = dict(semiangle=4.0, scan_step=0.5, detector_shape=(48, 48), scale=0.25)
    v0 = femlib.simulate.nanodiffraction(host, **kw).get_variance(npt=10,
                                                                  radial_range=(2.5, 5.5))
    v1 = femlib.simulate.nanodiffraction(model, **kw).get_variance(npt=10,
                                                                   radial_range=(2.5, 5.5))
    k = v0.axes_manager[0].axis
    ratio = v1.data / v0.data
    # fcc {111} and {200} of a = 0.415 nm at 4.2 and 4.8 nm^-1: V rises there, not below.
    assert ratio[(k > 4.0) & (k < 5.5)].mean() > 1.15
    assert ratio[k < 3.4].mean() < 1.05


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"positions": [[30.0, 30.0]]}, "no atoms inside the scanned area"),
        ({"gpts": 64}, "antialiasing limit"),
        ({"semiangle": 0.5}, "probe"),
        ({"method": "dynamic"}, "method must be one of"),
        ({"energy": -1.0}, "energy must be a positive"),
        ({"detector_shape": (2, 2)}, "detector_shape"),
        ({"positions": [[1.0, 2.0, 3.0]]}, r"\(n, 2\)"),
    ],
)
def test_bad_input(kwargs, match):
    model = ase.Atoms("Zr", positions=[[10.0, 10.0, 5.0]], cell=[20, 20, 10])
    kw = dict(semiangle=4.0, positions=[[1.0, 1.0]], detector_shape=(48, 48), scale=0.25)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match):
        femlib.simulate.nanodiffraction(model, **kw)


def test_bad_models():
    kw = dict(semiangle=4.0, positions=[[1.0, 1.0]], detector_shape=(32, 32), scale=0.25)
    skewed = ase.Atoms("Zr", positions=[[10.0, 10.0, 5.0]], cell=[[20, 0, 0], [5, 20, 0],
                                                                  [0, 0, 10]])
    with pytest.raises(ValueError, match="non-orthogonal"):
        femlib.simulate.nanodiffraction(skewed, **kw)
    small = ase.Atoms("Zr", positions=[[5.0, 5.0, 5.0]], cell=[10, 10, 10], pbc=True)
    with pytest.raises(ValueError, match="larger than the cell"):
        femlib.simulate.nanodiffraction(small, **{**kw, "semiangle": 2.0})
    unknown = ase.Atoms("U", positions=[[10.0, 10.0, 5.0]], cell=[20, 20, 10])
    with pytest.raises(ValueError, match="no scattering-factor parameters for element 'U'"):
        femlib.simulate.nanodiffraction(unknown, **kw)
    with pytest.raises(TypeError, match="ase.Atoms"):
        femlib.simulate.nanodiffraction(np.zeros((3, 3)), **kw)
    with pytest.raises(ValueError, match="dose"):
        femlib.simulate.add_counts(
            femlib.simulate.nanodiffraction(_atom(at=(10.0, 10.0)), **kw), dose=0.0
        )


def test_missing_optional_dependency_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ase", None)  # import ase -> ImportError
    with pytest.raises(ImportError, match=r"pip install femlib\[sim\]"):
        femlib.simulate.random_packing(box=(2, 2, 2))
    monkeypatch.setitem(sys.modules, "ase", ase)
    monkeypatch.setitem(sys.modules, "abtem", None)
    with pytest.raises(ImportError, match=r"pip install femlib\[sim\]"):
        femlib.simulate.nanodiffraction(_atom(), method="multislice", semiangle=4.0,
                                        positions=[[2.0, 2.0]], detector_shape=(32, 32),
                                        scale=0.25)


def test_grid_helpers():
    assert _kinematic.smooth_even(271) == 288
    assert _kinematic.smooth_even(7) == 8
    # The default grid keeps the corner plus the aperture inside the antialiasing limit.
    g = _kinematic.default_gpts((128, 128), 0.125, 0.8)
    assert _kinematic.detector_limit(g, 0.125) >= _kinematic.detector_reach((128, 128),
                                                                              0.125, 0.8)


def test_periodic_cell_path_equals_the_tiled_grid_path():
    """A cell of whole pixels is simulated on one period; the general path tiles images."""
    from femlib.simulate import _potentials
    from femlib.simulate._nanodiffraction import _with_images

    model = femlib.simulate.random_packing(box=(4, 4, 1), seed=2)
    s = femlib.simulate.nanodiffraction(
        model, semiangle=4.0, scan_step=1.0, detector_shape=(32, 32), scale=0.25
    )
    sim = s.metadata.Simulation
    scan = sim.positions.reshape(-1, 2)[:, ::-1]
    dx = sim.sampling
    xyz = model.positions / 10
    symbols = np.array(model.get_chemical_symbols())
    allpos, allsym, _ = _with_images(
        xyz, symbols, np.zeros(len(symbols)), np.array([4.0, 4.0, 1.0]),
        np.array([True, True, True]), scan.min(0) - 4, scan.max(0) + 4,
    )
    grid = _kinematic.KinematicModel(
        allpos[:, :2], allsym, scan, sim.gpts, dx, _potentials.interaction_constant(200.0)
    )
    assert not grid.periodic
    spectrum = _kinematic.probe_spectrum(sim.gpts, dx, sim.wavelength, 4.0, 0.0)
    tiled = _kinematic.patterns(grid.transmission, grid.origin, dx, spectrum, scan, (32, 32))
    data = s.data.reshape(-1, 32, 32)
    np.testing.assert_allclose(tiled, data, rtol=2e-3, atol=1e-4 * data.max())


def test_multislice_window_path_matches_the_periodic_cell_path():
    """A model larger than the field of view is simulated window by window (one abTEM run
    per position); on a tiled periodic model it reproduces the one-cell run."""
    pytest.importorskip("abtem", reason="abTEM (femlib[sim])")
    model = femlib.simulate.random_packing(box=(4, 4, 1), seed=5)
    kw = dict(semiangle=4.0, detector_shape=(32, 32), scale=0.25, method="multislice",
              slice_thickness=0.25)
    positions = np.array([[1.3, 2.1], [2.6, 0.9]])
    direct = femlib.simulate.nanodiffraction(model, positions=positions, **kw)
    tiled = model.repeat((3, 3, 1))
    tiled.pbc = False
    windows = femlib.simulate.nanodiffraction(tiled, positions=positions + 4.0, **kw)
    # Windows start on whole pixels: the same atoms on the same grid, the same patterns.
    np.testing.assert_allclose(windows.data, direct.data, rtol=1e-3,
                               atol=1e-5 * direct.data.max())
