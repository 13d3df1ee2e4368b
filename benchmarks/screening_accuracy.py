"""Accuracy of the screening steps on synthetic scans with stored truth (issue 22's table).

For every seed and every artefact (alone and all together) a 40 x 40 scan of 128 x 128
patterns is simulated (``femlib.data.synthetic_fem(thickness_gradient=False, ...)``), then:

* ``V(k)`` without screening: ``get_variance(npt=50, gain=4.2, radial_range=(3.0, 5.75))``
  with the beam-stop mask and the true single centre (for a descan the scan mean of the
  true per-position centres) and affine;
* the documented screening workflow: ``find_bad_pixels(gain=4.2, mask=beam stop)``,
  ``find_centers(mask=mask | bad)``, ``find_outlier_patterns(radial_range, mask=mask |
  bad)``, then ``get_variance(..., mask=mask | bad, navigation_mask=flags)``; with the
  engine's per-position centres (when ``calibration.center`` takes them) the found centres
  are used, otherwise the single centre (and the descan rows say so);
* detection against the truth: hot/noisy pixels whose temporal variance is >= 3x the
  noise model's prediction ``G <D>`` found (recall), false positives among the other
  unmasked pixels; outlier recall and false positives; centre rms error.

``V(k)`` is compared with ``V_true`` at the bin centres: ``V`` at the truth's peak (4.6
nm^-1, relative error) and the rms over k of ``(V - V_true) / SE``.

Run: ``python benchmarks/screening_accuracy.py`` (``--seeds 0 1 2``, ``--quick`` for a
20 x 20 scan). Prints one table per figure, means over the seeds with their range.
"""

import argparse
import time
import warnings

import numpy as np

import femlib

RANGE = (3.0, 5.75)
GAIN = 4.2
SCENARIOS = {
    "clean": {},
    "crystals 2 %": {"crystals": 0.02},
    "8 hot pixels": {"hot_pixels": 8},
    "descan 2.5 px": {"descan": 2.5},
    "descan 5 px": {"descan": 5.0},
    "all three (2.5 px)": {"crystals": 0.02, "hot_pixels": 8, "descan": 2.5},
}


def _errors(v, sim):
    k = v.axes_manager.signal_axes[0].axis
    truth = np.interp(k, sim.k, sim.variance)
    se = np.asarray(v.metadata.FEM.standard_error)
    peak = int(np.argmin(np.abs(k - sim.k[np.argmax(sim.variance)])))
    ring = int(np.argmin(np.abs(k - 4.3)))
    return {
        "peak": 100 * (v.data[peak] / truth[peak] - 1),
        "ring": 100 * (v.data[ring] / truth[ring] - 1),
        "rms_se": float(np.sqrt(np.mean(((v.data - truth) / se) ** 2))),
        "peak_se": float((v.data[peak] - truth[peak]) / se[peak]),
    }


def _per_position_centres_supported(s, centres):
    try:
        s.calibration.center = centres
    except (TypeError, ValueError):
        return False
    return True


def _reference_per_position(s, centres, mask, flags, step=0.05):
    """Omega V(k) with one centre per position, by brute force (not femlib's engine): the
    frames are grouped by centre rounded to ``step`` px and each group is integrated with
    its own exact weight matrix; shot-noise term ``(1 - 1/N) G <sum_p w_np^2 D_np /
    A_n^2> / <I>^2``. With one centre it equals get_variance's Omega (checked to 1e-15).
    A stand-in until ``calibration.center`` takes per-position centres."""
    from femlib import integration

    geo = s.calibration.geometry(mask=mask)
    frames = np.asarray(s.data).reshape(-1, geo["detector_shape"][0] * geo["detector_shape"][1])
    keep = ~np.asarray(flags.data).ravel()
    key = np.round(np.asarray(centres).reshape(-1, 2) / step).astype(np.int64)
    intensity = np.zeros((len(frames), 50))
    shot = np.zeros((len(frames), 50))
    for k in np.unique(key[keep], axis=0):
        sel = np.flatnonzero(keep & (key == k).all(axis=1))
        w = integration.build_weights(
            geo["detector_shape"], k * step, affine=geo["affine"], scale=geo["scale"],
            npt=50, radial_range=RANGE, mask=geo["mask"])
        a = w.area
        d = frames[sel].astype(float)
        intensity[sel] = (d @ w.matrix.T) / a
        shot[sel] = (d @ w.matrix.power(2).T) / a**2
    i, q = intensity[keep], shot[keep]
    m = i.mean(axis=0)
    n = len(i)  # the finite-N shot-noise term, as femlib.variance's Omega
    return (i**2).mean(axis=0) / m**2 - 1 - (1 - 1 / n) * GAIN * q.mean(axis=0) / m**2


def run(kwargs, seed, nav, reference=False):
    s = femlib.data.synthetic_fem(
        navigation_shape=nav, thickness_gradient=False, seed=seed, **kwargs
    )
    sim = s.metadata.Simulation
    stop = sim.beam_stop_mask & ~sim.bad_pixels  # the beam stop alone (dead pixels to find)
    mask = sim.beam_stop_mask
    single = sim.centers.reshape(-1, 2).mean(axis=0)
    s.calibration.center = single
    s.calibration.affine = sim.affine
    vkw = {"npt": 50, "gain": GAIN, "radial_range": RANGE, "show_progressbar": False}
    raw = s.get_variance(mask=mask, **vkw)
    out = {"raw": _errors(raw, sim)}
    t = {}

    t0 = time.perf_counter()
    bad = s.find_bad_pixels(gain=GAIN, mask=stop, show_progressbar=False)
    t["bad"] = time.perf_counter() - t0
    truth_bad = sim.bad_pixels
    frames = s.data.reshape(-1, *s.data.shape[-2:])
    hot = sim.hot_pixels
    if len(hot):
        d = frames[:, hot[:, 1], hot[:, 0]].astype(float)
        ratio = d.var(axis=0, ddof=1) / (GAIN * d.mean(axis=0))
        strong = ratio >= 3
        out["hot_recall"] = (bad.data[hot[:, 1], hot[:, 0]][strong].mean()
                             if strong.any() else np.nan)
        out["hot_n_strong"] = int(strong.sum())
    dead = sim.dead_pixels
    out["dead_recall"] = bad.data[dead[:, 1], dead[:, 0]].mean()
    others = ~stop & ~truth_bad
    out["pixel_fp"] = 100 * (bad.data & others).sum() / others.sum()
    full = stop | bad.data

    t0 = time.perf_counter()
    centres = s.find_centers(mask=full, show_progressbar=False)
    t["centers"] = time.perf_counter() - t0
    err = centres.data - sim.centers
    out["centre_rms"] = float(np.sqrt(np.mean(np.sum(err**2, axis=-1))))
    engine = _per_position_centres_supported(s, centres.data)
    if not engine:
        s.calibration.center = single
    out["engine"] = engine

    t0 = time.perf_counter()
    flags = s.find_outlier_patterns(radial_range=RANGE, mask=full, show_progressbar=False)
    t["outliers"] = time.perf_counter() - t0
    truth_out = sim.outliers
    out["outlier_recall"] = flags.data[truth_out].mean() if truth_out.any() else np.nan
    out["outlier_fp"] = 100 * flags.data[~truth_out].mean()
    out["n_flagged"] = int(flags.data.sum())
    screened = s.get_variance(mask=full, navigation_mask=flags, **vkw)
    out["screened"] = _errors(screened, sim)
    if reference and "descan" in kwargs and not engine:
        ref = _reference_per_position(s, centres.data, full, flags)
        k = screened.axes_manager.signal_axes[0].axis
        truth = np.interp(k, sim.k, sim.variance)
        se_s = np.asarray(screened.metadata.FEM.standard_error)
        peak = int(np.argmin(np.abs(k - sim.k[np.argmax(sim.variance)])))
        ring = int(np.argmin(np.abs(k - 4.3)))
        out["reference"] = {
            "peak": 100 * (ref[peak] / truth[peak] - 1),
            "ring": 100 * (ref[ring] / truth[ring] - 1),
            "rms_se": float(np.sqrt(np.mean(((ref - truth) / se_s) ** 2))),
            "peak_se": float((ref[peak] - truth[peak]) / se_s[peak]),
        }
    se = np.asarray(raw.metadata.FEM.standard_error)
    out["moved_se"] = float(np.sqrt(np.mean(((screened.data - raw.data) / se) ** 2)))
    out["pixels_flagged"] = 100 * bad.data.sum() / bad.data.size
    t0 = time.perf_counter()
    np.asarray(s.data).sum(axis=0)
    t["read"] = time.perf_counter() - t0
    out["times"] = t
    return out


def _fmt(values, spec="{:.2f}"):
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if values.size == 0:
        return "n/a"
    if values.size == 1:
        return spec.format(values[0])
    lo, hi = spec.format(values.min()), spec.format(values.max())
    return f"{spec.format(values.mean())} ({lo}..{hi})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="20 x 20 scans")
    parser.add_argument("--only", nargs="*", default=None, help="scenario names")
    parser.add_argument("--reference", action="store_true",
                        help="descan rows: also V(k) with the found per-position centres by "
                             "a brute-force integration (slow), while the engine lacks them")
    args = parser.parse_args()
    nav = (20, 20) if args.quick else (40, 40)
    warnings.simplefilter("ignore", UserWarning)
    print(f"# screening accuracy, scans {nav} x (128, 128), seeds {args.seeds}")
    results = {}
    for name, kwargs in SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        results[name] = [run(kwargs, seed, nav, args.reference) for seed in args.seeds]
        print(f"# done: {name}", flush=True)
    print()
    print("| what the scan carries | V at 4.6 nm^-1 (peak), no screening | V at 4.3 nm^-1 "
          "(ring), no screening | rms error (SE), no screening | V at 4.6, screened | V at "
          "4.3, screened | rms error (SE), screened | peak error (SE), screened |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, rs in results.items():
        note = "" if all(r["engine"] for r in rs) or "descan" not in name and "all" not in name \
            else " (single centre: no engine)"
        print(
            f"| {name}{note} | {_fmt([r['raw']['peak'] for r in rs], '{:+.0f}')} % | "
            f"{_fmt([r['raw']['ring'] for r in rs], '{:+.0f}')} % | "
            f"{_fmt([r['raw']['rms_se'] for r in rs], '{:.1f}')} | "
            f"{_fmt([r['screened']['peak'] for r in rs], '{:+.0f}')} % | "
            f"{_fmt([r['screened']['ring'] for r in rs], '{:+.0f}')} % | "
            f"{_fmt([r['screened']['rms_se'] for r in rs], '{:.1f}')} | "
            f"{_fmt([r['screened']['peak_se'] for r in rs], '{:+.1f}')} |"
        )
    refs = {n: rs for n, rs in results.items() if all("reference" in r for r in rs)}
    if refs:
        print()
        print("| descan, screened with the found per-position centres (brute-force "
              "reference) | V at 4.6 | V at 4.3 | rms error (SE) | peak error (SE) |")
        print("| --- | --- | --- | --- | --- |")
        for name, rs in refs.items():
            ref = [r["reference"] for r in rs]
            print(f"| {name} | {_fmt([x['peak'] for x in ref], '{:+.0f}')} % | "
                  f"{_fmt([x['ring'] for x in ref], '{:+.0f}')} % | "
                  f"{_fmt([x['rms_se'] for x in ref], '{:.1f}')} | "
                  f"{_fmt([x['peak_se'] for x in ref], '{:+.1f}')} |")
    print()
    print("| what the scan carries | hot pixels >= 3x found | dead found | pixel FP % | "
          "outlier recall | outlier FP % | centre rms error (px) | V moved (SE rms) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, rs in results.items():
        print(
            f"| {name} | {_fmt([r.get('hot_recall') for r in rs])} | "
            f"{_fmt([r['dead_recall'] for r in rs])} | "
            f"{_fmt([r['pixel_fp'] for r in rs], '{:.3f}')} | "
            f"{_fmt([r['outlier_recall'] for r in rs])} | "
            f"{_fmt([r['outlier_fp'] for r in rs], '{:.2f}')} | "
            f"{_fmt([r['centre_rms'] for r in rs], '{:.3f}')} | "
            f"{_fmt([r['moved_se'] for r in rs], '{:.2f}')} |"
        )
    print()
    print("# timing: see benchmarks/bench_screening.py (these scans are too small and the "
          "first calls compile)")


if __name__ == "__main__":
    main()
