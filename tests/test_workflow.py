"""Tests of femlib.workflow: the CLI's steps as a library function, on tiny synthetic scans
and on rosettasciio's real camera files (tests/data/rsciio)."""

import warnings
import zipfile
from pathlib import Path

import hyperspy.api as hs
import numpy as np
import pytest

import femlib
from femlib import workflow
from femlib.workflow import UsageError

RSCIIO = Path(__file__).resolve().parent / "data" / "rsciio"


@pytest.fixture(scope="module")
def small():
    """A 12 x 12 synthetic scan (128 x 128 detector) and its workflow result."""
    s = femlib.data.synthetic_fem(navigation_shape=(12, 12), seed=3)
    s.metadata.set_item("Test.center_before", s.calibration.center.copy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = workflow.run_fem(s, npt=20, gain=4.2, radial_range=(3.0, 5.75))
    return s, result


def test_run_fem_on_a_signal_recovers_the_truth_and_leaves_it_unchanged(small):
    s, r = small
    truth = s.metadata.Simulation
    # The caller's signal keeps its calibration: the workflow worked on a copy.
    np.testing.assert_array_equal(s.calibration.center, s.metadata.Test.center_before)
    assert not np.allclose(s.calibration.center, r.center[::-1])
    np.testing.assert_array_equal(r.signal.calibration.center, r.center[::-1])
    assert r.signal.data is s.data  # a copy of the signal's metadata, not of its data
    assert r.source == "signal" and r.n_total == r.n_used == 144 and r.n_nonfinite == 0
    np.testing.assert_allclose(r.center[::-1], truth.center, atol=0.05)
    # V(k) is get_variance's with the workflow's calibration and mask, to the last bit.
    t = s.deepcopy()
    t.calibration.center = r.center[::-1]
    t.calibration.affine = r.affine
    direct = t.get_variance(npt=20, gain=4.2, radial_range=(3.0, 5.75), mask=r.mask,
                            show_progressbar=False)
    np.testing.assert_array_equal(r.variance.data, direct.data)
    assert set(r.timings) >= {"sum", "ellipse", "variance", "polar", "peaks"}
    np.testing.assert_array_equal(r.summed.data, s.data.sum(axis=(0, 1)))


def test_nan_frames_are_left_out_and_counted(small):
    s, r = small
    bad = s.deepcopy()
    bad.data[2, 5] = np.nan
    bad.data[7, 1, 10, 10] = np.inf
    with pytest.warns(UserWarning, match="2 of 144 patterns hold NaN or infinite values"):
        rb = workflow.run_fem(bad, npt=20, gain=4.2, radial_range=(3.0, 5.75),
                              center=tuple(r.center[::-1]))
    assert rb.n_nonfinite == 2 and rb.n_used == 142
    keep = np.ones((12, 12), bool)
    keep[2, 5] = keep[7, 1] = False
    np.testing.assert_allclose(rb.summed.data, s.data[keep].sum(axis=0), rtol=1e-6)
    t = s.deepcopy()
    t.calibration.center = r.center[::-1]
    direct = t.get_variance(npt=20, gain=4.2, radial_range=(3.0, 5.75), mask=rb.mask,
                            navigation_mask=~keep, show_progressbar=False)
    np.testing.assert_allclose(rb.variance.data, direct.data, rtol=1e-12)
    assert any("NaN" in w for w in rb.warnings)


def test_given_center_skips_the_ellipse_fit(small):
    s, r = small
    x, y = s.metadata.Simulation.center
    rc = workflow.run_fem(s, npt=20, gain=4.2, radial_range=(3.0, 5.75), center=(x, y))
    assert rc.ellipse is None and rc.points is None
    np.testing.assert_array_equal(rc.center, [y, x])
    np.testing.assert_array_equal(rc.affine, np.eye(3))
    assert "(given)" in rc.summary().splitlines()[2]


def test_mask_file_and_scale(small, tmp_path):
    s, r = small
    mask = np.zeros((128, 128), bool)
    mask[:, :10] = True
    np.save(tmp_path / "mask.npy", mask)
    # Without the beam stop in the mask the direct beam's pixels would be found hot.
    rm = workflow.run_fem(s, npt=20, gain=4.2, radial_range=(3.0, 5.75), bad_pixels="none",
                          mask=str(tmp_path / "mask.npy"), center=tuple(r.center[::-1]))
    np.testing.assert_array_equal(rm.mask, mask)  # --mask alone replaces the threshold
    assert rm.threshold is None
    rb = workflow.run_fem(s, npt=20, gain=4.2, radial_range=(3.0, 5.75), mask_below=1000,
                          mask=mask, center=tuple(r.center[::-1]))
    np.testing.assert_array_equal(rb.mask, mask | (r.summed.data < 1000))
    # --scale: the pixel size in the given units (half the scale: the k axis halves).
    rs = workflow.run_fem(s, npt=20, gain=4.2, radial_range=(1.5, 2.875), scale=(0.07, "x"),
                          center=tuple(r.center[::-1]), mask=r.mask)
    assert rs.signal_units == "x" and rs.detector_scale == 0.07
    rc = workflow.run_fem(s, npt=20, gain=4.2, radial_range=(3.0, 5.75),
                          center=tuple(r.center[::-1]), mask=r.mask)
    np.testing.assert_allclose(rs.variance.data, rc.variance.data, rtol=1e-9)
    # The same mask from a TIFF (0/1) and a HyperSpy file (boolean).
    hs.signals.Signal2D(mask.astype(np.uint8)).save(tmp_path / "mask.tif")
    hs.signals.Signal2D(mask).save(tmp_path / "mask.hspy")
    for name in ("mask.tif", "mask.hspy"):
        np.testing.assert_array_equal(workflow._read_mask(tmp_path / name, (128, 128)), mask)
    np.save(tmp_path / "m.npy", np.zeros((4, 4), bool))
    with pytest.raises(UsageError, match=r"--mask .*m.npy has shape \(4, 4\) but the "
                       r"detector is \(128, 128\)"):
        workflow.run_fem(s, mask=str(tmp_path / "m.npy"))


def test_haadf_file_gives_the_thickness_bins(small, tmp_path):
    s, r = small
    haadf = np.asarray(s.metadata.HAADF.intensity)
    np.save(tmp_path / "haadf.npy", haadf)
    plain = s.deepcopy()
    del plain.metadata.HAADF
    t = s.metadata.Simulation
    opts = dict(npt=20, gain=4.2, radial_range=(3.0, 5.75), center=tuple(r.center[::-1]),
                mask=r.mask, thickness_bins=2, black_level=t.black_level, slope=t.slope)
    with pytest.raises(UsageError, match="needs a HAADF image"):
        workflow.run_fem(plain, **opts)
    rh = workflow.run_fem(plain, haadf=str(tmp_path / "haadf.npy"), **opts)
    expected, _ = np.histogram((haadf - t.black_level) / t.slope, bins=2)
    np.testing.assert_array_equal(rh.variance.metadata.FEM.counts, expected)
    with pytest.raises(UsageError, match=r"--haadf .* has shape \(3, 3\) but the scan is"):
        workflow.run_fem(plain, haadf=np.ones((3, 3)), **opts)


def test_odd_inputs_warn_once_naming_the_given_range(small):
    s, r = small
    opts = dict(gain=4.2, center=tuple(r.center[::-1]), mask=r.mask)
    with pytest.warns(UserWarning) as record:
        workflow.run_fem(s, npt=1, radial_range=(3.0, 5.75), **opts)
    texts = [str(w.message) for w in record]
    assert sum("--npt 1 gives a single radial bin" in t for t in texts) == 1
    with pytest.warns(UserWarning) as record:
        workflow.run_fem(s, npt=5, radial_range=(4.0, 4.01), **opts)
    texts = [str(w.message) for w in record]
    narrow = [t for t in texts if "narrower than one detector pixel" in t]
    assert len(narrow) == 1 and "--radial-range 4 4.01" in narrow[0] and "0.14" in narrow[0]


def test_no_warning_about_a_range_the_user_did_not_give(tmp_path):
    """The default radial range and the polar transform's range are the workflow's own:
    no partial-ring warning about them (a Merlin file, centre far off the middle, warned
    about "(0, 289.6)" twice)."""
    folder = _merlin(tmp_path)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        r = workflow.run_fem(str(folder / "001_4x2_6bit.mib"), center=(20.0, 110.0))
    assert not [w for w in record if "azimuths of the radial range" in str(w.message)]
    assert r.n_total == 8 and r.radial_range[0] == 0


def test_ellipse_errors_name_the_cli_options():
    no_ring = np.random.default_rng(0).poisson(50, (64, 64)).astype(float)
    opts = workflow.FEMOptions()
    with pytest.raises(UsageError) as info:
        workflow._calibrate(no_ring, np.zeros((64, 64), bool), opts)
    text = str(info.value)
    assert text.startswith("cannot fit the ring ellipse: ") and "--center X Y" in text
    assert "pos=" not in text and "max_trials" not in text and "_" not in text


@pytest.mark.parametrize("exc", [RuntimeError("blosc decompression failed"),
                                 OSError("Can't read data (inflate() failed)"),
                                 ValueError("destination buffer too small")])
def test_reader_failure_mid_pass_is_one_usage_error(exc):
    def fail():
        raise exc

    with pytest.raises(UsageError, match=r"cannot read the patterns in scan.zspy \("
                       + type(exc).__name__):
        workflow._reading(Path("scan.zspy"), fail)
    with pytest.raises(type(exc)):  # the synthetic dataset has no reader: a bug, shown
        workflow._reading(None, fail)


def test_femlib_diagnosis_mid_pass_is_not_a_read_error():
    def diagnose():
        workflow._check_pair((1.0, 2.0, 3.0), "--x")  # a femlib ValueError (UsageError)

    with pytest.raises(UsageError, match="--x takes no value or two radii"):
        workflow._reading(Path("scan.zspy"), diagnose)

    def femlib_value_error():
        femlib.variance.check_gain(-1.0)

    with pytest.raises(ValueError) as info:
        workflow._reading(Path("scan.zspy"), femlib_value_error)
    assert not isinstance(info.value, UsageError)


# --- files ----------------------------------------------------------------------------


@pytest.fixture
def zspy(tmp_path):
    path = tmp_path / "scan.zspy"
    s = femlib.data.synthetic_fem(navigation_shape=(8, 6), detector_shape=(32, 32), seed=1)
    s.save(path, chunks=(4, 3, 32, 32))
    return path


def _chunk_files(path):
    return sorted(p for p in path.rglob("*") if p.is_file() and "data" in p.parts
                  and not p.name.startswith("."))


def test_missing_chunks_are_found_by_count_and_position(zspy):
    assert workflow.missing_chunks(zspy).n_missing == 0
    files = _chunk_files(zspy)
    assert len(files) == 4  # a 2 x 2 grid of chunks over the 8 x 6 scan
    # The chunk at grid index (1, 0): rows 4-7, columns 0-2 of the scan.
    victim = next(p for p in files if p.relative_to(zspy).parts[-4:] == ("1", "0", "0", "0"))
    victim.unlink()
    found = workflow.missing_chunks(zspy)
    assert (found.n_missing, found.n_chunks) == (1, 4)
    expected = np.zeros((8, 6), bool)
    expected[4:8, 0:3] = True
    np.testing.assert_array_equal(found.positions, expected)
    assert found.describe() == ("1 of 4 chunks of the data are missing, holding 12 of 48 "
                                "probe positions (x 0-2, y 4-7)")
    with pytest.raises(UsageError, match=r"scan.zspy is incomplete: 1 of 4 chunks .* "
                       r"12 of 48 probe positions \(x 0-2, y 4-7\)"):
        workflow.load(zspy)


def test_store_without_the_data_chunks_is_not_read_as_zeros(zspy):
    for p in _chunk_files(zspy):
        p.unlink()
    with pytest.raises(UsageError, match="4 of 4 chunks of the data are missing"):
        workflow.load(zspy)


def _merlin(tmp_path):
    folder = tmp_path / "merlin"
    with zipfile.ZipFile(RSCIIO / "quantumdetector" / "Merlin_navigation4x2_ROI.zip") as z:
        z.extractall(folder)
    return folder


def test_topspin_picks_the_4d_signal_or_lists_them():
    path = RSCIIO / "topspin" / "topspin_test_A.app5"
    s = workflow.load(path)
    assert s.data.shape == (2, 5, 14, 12) and s.axes_manager.navigation_dimension == 2
    with pytest.raises(UsageError, match=r"--signal 0 of .* is \(\|56, 8\) .*not a 4D-STEM "
                       r"stack.*the file holds: \[0\] \(\|56, 8\).*\[1\] \(5, 2\|12, 14\)"):
        workflow.load(path, signal=0)
    with pytest.raises(UsageError, match=r"--signal 2: .* holds 2 signal\(s\): \[0\]"):
        workflow.load(path, signal=2)
    assert workflow.load(path, signal=1).data.shape == (2, 5, 14, 12)


def test_arina_needs_its_reader_and_holds_a_4d_scan(tmp_path):
    master = RSCIIO / "arina" / "test_00_master.h5"
    with pytest.raises(UsageError, match="name the reader with --reader NAME"):
        workflow.load(master)
    s = workflow.load(master, reader="ARINA")  # any case
    assert s.axes_manager.navigation_shape == (4, 4)
    assert s.axes_manager.signal_shape == (192, 192)
    # The test file's frames are blank: refused in one line, not fitted as noise.
    with pytest.raises(UsageError, match="holds only zero counts in its 16 patterns"):
        workflow.run_fem(str(master), reader="arina")
    with pytest.raises(UsageError, match=r"--reader nope: no such reader; choose from .*"
                       r"Arina"):
        workflow.run_fem(str(master), reader="nope")


def test_blockfile_runs_with_a_given_center():
    path = RSCIIO / "blockfile" / "test1.blo"
    with pytest.raises(UsageError, match="cannot fit the ring ellipse.*--center X Y"):
        workflow.run_fem(str(path))
    r = workflow.run_fem(str(path), center=(72.0, 72.0), npt=10)
    assert r.n_total == r.n_used == 6 and r.signal_units == "cm"
    assert np.isfinite(r.variance.data).all()


def test_corrupt_chunk_is_one_usage_error(zspy):
    victim = _chunk_files(zspy)[0]
    victim.write_bytes(b"\x02\x01" + b"junk" * 40)
    with pytest.raises(UsageError, match="cannot read the patterns in"):
        workflow.run_fem(str(zspy), center=(16.0, 16.0), npt=5, radial_range=(0.5, 1.5))


def test_copied_data_are_the_shared_ones():
    """The copies in tests/data/rsciio carry their provenance."""
    readme = (RSCIIO / "README.md").read_text(encoding="utf-8")
    assert "bc254db14cd7d4d23169b11aeb622a0a7eac1fbe" in readme
    assert "GPL-3.0-or-later" in readme


# --- screening: --bad-pixels, --outliers, --descan --------------------------------------
SCREEN = {"navigation_shape": (20, 20), "detector_shape": (64, 64),
          "thickness_gradient": False}
FEM = {"npt": 20, "gain": 4.2, "radial_range": (3.0, 5.75)}
OFF = {"bad_pixels": "none", "outliers": "none", "descan": "none"}


@pytest.fixture(scope="module")
def dirty():
    """A scan with hot pixels, 3 % crystalline positions and a descan, screened (the
    default) and not."""
    s = femlib.data.synthetic_fem(**SCREEN, hot_pixels=6, crystals=0.03,
                                  descan=(2.0, -1.5), seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return s, workflow.run_fem(s, **FEM), workflow.run_fem(s, **FEM, **OFF)


def test_screening_finds_the_artefacts_of_the_scan(dirty):
    s, r, raw = dirty
    sim, sc = s.metadata.Simulation, r.screening
    flags = sc.navigation_mask
    assert flags[sim.outliers].mean() >= 0.95 and flags[~sim.outliers].mean() <= 0.005
    assert sc.n_bad_pixels >= 4 and not (sc.bad_pixel_mask & ~sim.bad_pixels).any()
    assert sc.descan_applied and sc.descan > 1.0
    assert np.sqrt(((sc.centers.data - sim.centers) ** 2).sum(-1).mean()) < 0.1
    assert r.n_used == 400 - int(flags.sum())
    reasons = sc.position_reasons()
    assert sum(reasons.values()) == int(flags.sum()) and all("crystalline" in k
                                                               for k in reasons)
    line = r.summary().splitlines()[5]
    why = workflow._why
    assert line == (f"  left out: {sc.n_bad_pixels} bad pixels ({why(sc.pixel_reasons())}), "
                    f"{int(flags.sum())} of 400 positions ({why(reasons)})")
    assert raw.screening.n_bad_pixels == raw.screening.n_positions == 0
    assert raw.summary().splitlines()[6] == "  descan: not searched (--descan none)"


def test_screened_variance_is_the_library_workflow_and_near_the_truth(dirty):
    s, r, raw = dirty
    sim, sc = s.metadata.Simulation, r.screening
    # The documented library calls with what the steps found give the same V(k).
    t = s.deepcopy()
    t.calibration.center = sc.centers.data
    t.calibration.affine = r.affine
    direct = t.get_variance(**FEM, mask=r.mask, navigation_mask=sc.navigation_mask,
                            show_progressbar=False)
    np.testing.assert_allclose(r.variance.data, direct.data, rtol=1e-12)
    np.testing.assert_array_equal(r.mask, raw.mask | sc.bad_pixel_mask)
    truth = np.interp(r.variance.axes_manager[-1].axis, sim.k, sim.variance)

    def rms_se(v):
        return float(np.sqrt((((v.data - truth) / v.standard_error) ** 2).mean()))

    assert rms_se(r.variance) < 1.5 < 2.0 < rms_se(raw.variance)


def test_screening_leaves_a_clean_scan_as_it_was():
    s = femlib.data.synthetic_fem(**SCREEN, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r, raw = workflow.run_fem(s, **FEM), workflow.run_fem(s, **FEM, **OFF)
    sc = r.screening
    assert sc.n_bad_pixels == sc.n_positions == 0 and not sc.descan_applied
    assert sc.descan < workflow.DESCAN_MIN_PX and sc.centers is not None
    np.testing.assert_array_equal(r.variance.data, raw.variance.data)
    assert r.summary().splitlines()[5:7] == [
        "  left out: no bad pixels, no positions",
        f"  descan: {sc.descan:.3f} px at most, below 0.1 px: one centre for every position",
    ]


def test_bad_pixels_from_a_file_and_vimage_keeps_one_centre(dirty, tmp_path):
    s, r, _ = dirty
    bad = np.zeros((64, 64), bool)
    bad[40, 7] = bad[3, 50] = True
    np.save(tmp_path / "bad.npy", bad)
    with pytest.warns(UserWarning, match=r"moves by up to \d\.\d\d px .*VImage needs one"):
        rf = workflow.run_fem(s, **FEM, bad_pixels=str(tmp_path / "bad.npy"),
                              outliers="none", method="VImage")
    sc = rf.screening
    np.testing.assert_array_equal(sc.bad_pixel_mask, bad)
    assert rf.mask[40, 7] and rf.mask[3, 50] and sc.bad_pixels is None
    assert not sc.descan_applied and "VImage needs one centre" in sc.descan_note
    assert np.shape(rf.signal.calibration.center) == (2,)
    assert "2 bad pixels (2 from --bad-pixels)" in rf.summary()
    np.save(tmp_path / "wrong.npy", bad[:10])
    with pytest.raises(UsageError, match=r"--bad-pixels .*wrong.npy has shape \(10, 64\)"):
        workflow.run_fem(s, **FEM, bad_pixels=str(tmp_path / "wrong.npy"))
    with pytest.raises(UsageError, match="--bad-pixels .*missing.npy does not exist"):
        workflow.run_fem(s, **FEM, bad_pixels=str(tmp_path / "missing.npy"))
    with pytest.raises(UsageError, match="--outliers takes auto or none, got 'yes'"):
        workflow.run_fem(s, **FEM, outliers="yes")


def test_small_scans_are_not_screened(small):
    s, _ = small
    r = workflow.run_fem(s.inav[:9, :9], **FEM)  # 81 patterns
    lines = r.summary().splitlines()
    assert lines[5] == ("  left out: bad pixels not searched (81 patterns, fewer than 100), "
                        "outliers not searched (81 patterns, fewer than 100)")
    assert lines[6] == "  descan: not searched (81 patterns, fewer than 100)"


def test_noise_from_scan_and_thickness_bins_leave_the_outliers_out():
    """Crystalline pairs do not cancel in the scan's noise estimate (it grows ~200-fold
    with them in); the thickness bins span the positions used."""
    s = femlib.data.synthetic_fem(**SCREEN, crystals=0.03, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = workflow.run_fem(s, npt=20, radial_range=(3.0, 5.75), noise_from_scan=(),
                             thickness_bins=3, thickness_from_pattern=())
    flags = r.screening.navigation_mask
    assert flags is not None and flags.sum() == r.n_total - r.n_used
    with_crystals = femlib.noise.DetectorNoise.from_scan(r.signal, mask=r.mask)
    assert with_crystals.gain > 50 * r.noise.gain and r.noise.gain < 2 * 4.2
    assert r.noise.info["n_pairs"] < with_crystals.info["n_pairs"]
    assert r.bins_line == "thickness bins: 3 of 3 hold 2 or more patterns"


def test_default_pattern_annulus_stays_on_the_detector_under_a_descan(dirty):
    s, r, _ = dirty  # per-position centres up to ~1.2 px from their mean
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt = workflow.run_fem(s, **FEM, thickness_bins=2, thickness_from_pattern=())
    assert rt.screening.descan_applied
    centers = rt.screening.centers.data.reshape(-1, 2)
    scale = float(s.axes_manager.signal_axes[0].scale)
    # The farthest pixel centre of every position (x, y), in calibrated units, without
    # the affine's few per cent: the annulus ends inside the nearest of them.
    corners = np.array([(0, 0), (63, 0), (0, 63), (63, 63)], float)
    far = np.hypot(*(corners[None] - centers[:, None]).transpose(2, 0, 1)).max(1) * scale
    assert rt.annulus[1] <= 1.05 * far.min() < 1.05 * far.max()
    whole = workflow._outer_annulus(rt.summed)[1]  # one centre: the scan-mean's corners
    assert rt.annulus[1] < whole
