"""Accuracy of every FEM estimator and of its standard error, over many seeds.

Reproduce with::

    python benchmarks/estimator_accuracy.py speckle     # speckle-dominated data vs truth
    python benchmarks/estimator_accuracy.py lowdose     # |V/SE| > 3 at 0.001-0.1 counts/px
    python benchmarks/estimator_accuracy.py psf         # integrating camera, PSF 0.5 / 1 px
    python benchmarks/estimator_accuracy.py absurd      # refusals of absurd inputs

(``--help`` for the sizes; the defaults finish in a few minutes on 2 cores.)

* ``speckle``: :func:`femlib.data.synthetic_speckle` (exponential speckle, ``V`` 0.3-1 at
  low k), counting detector; every estimator with ``gain`` against the same estimator on
  the noise-free frames (:func:`femlib.data.speckle_truth`). Per dose: the electrons per
  ring per frame, and per method the rms over bins and seeds of ``(V - truth) / SE``, its
  largest absolute value and its mean (the bias in standard errors). Target: rms <= 1.5,
  max <= 4.
* ``lowdose``: pure Poisson frames (8 x 8 scan, 32 x 32 detector, gain 1) at 0.001, 0.01
  and 0.1 counts/px/frame, ``method="all"``: the fraction of values with ``|V / SE| > 3``
  among those whose standard error is trusted (``metadata.FEM.standard_error_trusted``),
  and how many are flagged. Target: <= 2 %, and a warning for every flagged one.
* ``psf``: structure-free :func:`femlib.data.synthetic_fem` with a Gaussian PSF of 0.5 and
  1 px (1600 patterns), the noise kernel from a flat field (one per seed) and from the
  scan: mean over the bins and seeds of ``V / SE`` per method, +- its standard error from
  the scatter of the per-seed means (the bins of a seed are correlated). Target: within
  +-0.5.
* ``absurd``: ``bins=10**6``, ``bins=10**7``, ``gain=1e308``, data x 1e300: the error type,
  the message length, and the numpy warnings raised on the way. Target: a ValueError under
  400 characters, no overflow warning.
"""

import argparse
import shlex
import sys
import time
import warnings

import numpy as np

import femlib

METHODS = ("Omega", "r", "re", "VImage")


def _table(rows, header):
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True))  # noqa: E731
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    print()


# ----------------------------------------------------------------------------- speckle
def speckle(args):
    det = args.detector
    rr = tuple(args.range)
    kw = dict(npt=args.npt, radial_range=rr, method="all", show_progressbar=False)
    which = "the truth's own (jackknife)" if args.reference_se else "the estimate's"
    print(f"synthetic_speckle({args.nav}x{args.nav}, {det}x{det}, speckle_size={args.size}, "
          f"gain={args.gain}), npt={args.npt} over {rr[0]}-{rr[1]} nm^-1, "
          f"{args.seeds} seeds per dose; SE: {which}\n")
    rows = []
    for dose in args.doses:
        z = []
        electrons = []
        for seed in range(args.seeds):
            s = femlib.data.synthetic_speckle((args.nav, args.nav), (det, det), dose=dose,
                                              speckle_size=args.size, gain=args.gain,
                                              seed=seed)
            ref = femlib.data.speckle_truth(s, **kw)
            truth = ref.data
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                v = s.get_variance(gain=args.gain, **kw)
            se = (ref if args.reference_se else v).metadata.FEM.standard_error
            z.append((v.data - truth) / se)
            electrons.append(s.metadata.Simulation.mean_pattern.ravel() / args.gain)
        z = np.array(z)  # (seeds, method, k)
        # electrons per ring per frame: the weights applied to the mean pattern
        c = (det - 1) / 2
        w = femlib.integration.build_weights((det, det), (c, c), npt=args.npt,
                                             radial_range=(rr[0] / 0.125, rr[1] / 0.125))
        per_ring = w.matrix @ np.mean(electrons, axis=0)
        row = [f"{dose:g}", f"{per_ring.min():.0f}-{per_ring.max():.0f}"]
        for i in range(len(METHODS)):
            zi = z[:, i]
            row.append(f"{np.sqrt(np.mean(zi**2)):.2f} / {np.abs(zi).max():.2f} / "
                       f"{zi.mean():+.2f}")
        rows.append(row)
    _table(rows, ["dose e/px", "e/ring/frame"] + [f"{m}: rms / max / mean" for m in METHODS])


# ----------------------------------------------------------------------------- low dose
def lowdose(args):
    from femlib.signals import FEMDiffraction2D

    print(f"pure Poisson, 8 x 8 scan, 32 x 32 detector, gain 1, npt={args.npt_low} over "
          f"2-15 px, method='all', {args.seeds_low} seeds per dose\n")
    rows = []
    for dose in args.low_doses:
        big = flagged = total = warned = big_all = total_all = 0
        spread, med_se = [], []
        for seed in range(args.seeds_low):
            rng = np.random.default_rng(seed)
            s = FEMDiffraction2D(rng.poisson(dose, (8, 8, 32, 32)).astype(np.float32))
            s.calibration.center = (15.5, 15.5)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                v = s.get_variance(npt=args.npt_low, gain=1.0, radial_range=(2.0, 15.0),
                                   method="all", show_progressbar=False)
            se = v.metadata.FEM.standard_error
            trusted = v.metadata.FEM.get_item("standard_error_trusted", np.ones(se.shape, bool))
            ok = np.isfinite(v.data) & np.isfinite(se) & trusted
            total += ok.sum()
            flagged += (~trusted).sum()
            big += (np.abs(v.data[ok] / se[ok]) > 3).sum()
            fin = np.isfinite(v.data) & np.isfinite(se)
            total_all += fin.sum()
            big_all += (np.abs(v.data[fin] / se[fin]) > 3).sum()
            warned += any("standard error" in str(c.message) and "not" in str(c.message)
                          for c in caught) and (~trusted).any()
            spread.append(v.data)
            med_se.append(se)
        spread = np.nanstd(np.array(spread), axis=0)
        ratio = np.nanmedian(spread / np.nanmedian(np.array(med_se), axis=0))
        rows.append([f"{dose:g}", f"{total}", f"{flagged}",
                     f"{100 * big / max(total, 1):.2f} %",
                     f"{100 * big_all / max(total_all, 1):.2f} %", f"{warned}", f"{ratio:.2f}"])
    _table(rows, ["counts/px/frame", "trusted values", "flagged values", "|V/SE|>3 (trusted)",
                  "|V/SE|>3 (all finite)", "seeds warned", "spread/median SE"])


# ----------------------------------------------------------------------------- PSF
def psf(args):
    from femlib.noise import DetectorNoise

    print(f"synthetic_fem(({args.psf_nav}, {args.psf_nav}), modulation=False, "
          f"thickness_gradient=False, dose={args.psf_dose:g}, psf_sigma=...), true geometry, "
          f"npt={args.psf_npt} over 3-5.75 nm^-1, method='all', subtract_nonuniformity=True, "
          f"{args.psf_seeds} seeds\n")
    rows = []
    for sigma in args.sigmas:
        res = {"flat field": [], "from scan": []}
        for seed in range(args.psf_seeds):
            # A flat field per seed: one flat field's own K(0) error (0.1-0.3 %) would
            # otherwise shift every seed alike (0.3 standard errors of VImage per 0.1 %).
            flat = femlib.data.synthetic_flat_field(200, (128, 128), dose=100.0, gain=4.2,
                                                    psf_sigma=sigma, seed=1000 + seed)
            flat_model = DetectorNoise.from_flat_field(flat)
            s = femlib.data.synthetic_fem((args.psf_nav, args.psf_nav), modulation=False,
                                          thickness_gradient=False, psf_sigma=sigma,
                                          dose=args.psf_dose, seed=100 + seed)
            sim = s.metadata.Simulation
            s.calibration.center = sim.center
            s.calibration.affine = sim.affine
            mask = sim.beam_stop_mask
            models = {"flat field": flat_model,
                      "from scan": DetectorNoise.from_scan(s, mask=mask)}
            for name, model in models.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    v = s.get_variance(npt=args.psf_npt, noise=model, radial_range=(3.0, 5.75),
                                       mask=mask, method="all", subtract_nonuniformity=True,
                                       show_progressbar=False)
                res[name].append(v.data / v.metadata.FEM.standard_error)
        for name, z in res.items():
            # The bins of one seed are correlated: the error of the mean comes from the
            # scatter of the per-seed means.
            per_seed = np.array(z).mean(axis=2)  # (seeds, method)
            err = per_seed.std(axis=0, ddof=1) / np.sqrt(len(per_seed))
            rows.append([f"{sigma:g}", name] + [f"{per_seed[:, i].mean():+.2f} +- {err[i]:.2f}"
                                                for i in range(4)])
    _table(rows, ["PSF sigma px", "noise model"] + [f"{m} mean V/SE" for m in METHODS])


# ----------------------------------------------------------------------------- absurd
def absurd(args):
    from femlib.signals import FEMDiffraction2D

    rng = np.random.default_rng(0)
    base = rng.poisson(5.0, (6, 6, 32, 32)).astype(np.float64)

    def make(scale=1.0):
        s = FEMDiffraction2D(base * scale)
        s.calibration.center = (15.5, 15.5)
        return s

    thickness = np.linspace(10, 50, 36).reshape(6, 6)
    cases = {
        "bins=10**6": lambda: make().get_variance(npt=5, gain=1.0, thickness=thickness,
                                                  bins=10**6, show_progressbar=False),
        "bins=10**7": lambda: make().get_variance(npt=5, gain=1.0, thickness=thickness,
                                                  bins=10**7, show_progressbar=False),
        "npt=10**9": lambda: make().get_variance(npt=10**9, gain=1.0, show_progressbar=False),
        "gain=1e308": lambda: make().get_variance(npt=5, gain=1e308, method="all",
                                                  show_progressbar=False),
        "data x 1e300": lambda: make(1e300).get_variance(npt=5, gain=1.0, method="all",
                                                         show_progressbar=False),
        "data x 1e300, no gain": lambda: make(1e300).get_variance(npt=5, method="all",
                                                                  show_progressbar=False),
    }
    rows = []
    for name, call in cases.items():
        t = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                call()
                outcome, length, msg = "no error", 0, ""
            except Exception as err:  # noqa: BLE001 - reported, that is the point
                outcome, length, msg = type(err).__name__, len(str(err)), str(err)
        numpy_warnings = sum("overflow" in str(c.message) or "invalid value" in str(c.message)
                             for c in caught)
        rows.append([name, outcome, length, numpy_warnings,
                     f"{time.perf_counter() - t:.2f} s", msg[:90]])
    _table(rows, ["input", "raises", "message chars", "numpy warnings", "time", "message"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sections", nargs="*", default=["speckle", "lowdose", "psf", "absurd"],
                   help="any of speckle, lowdose, psf, absurd (default: all)")
    p.add_argument("--seeds", type=int, default=6, help="speckle seeds per dose (6)")
    p.add_argument("--nav", type=int, default=20, help="speckle scan side (20)")
    p.add_argument("--npt", type=int, default=12, help="speckle bins (12)")
    p.add_argument("--size", type=float, default=1.0, help="speckle size, px (1.0)")
    p.add_argument("--gain", type=float, default=1.0, help="speckle detector gain (1.0)")
    p.add_argument("--detector", type=int, default=64, help="speckle detector side (64)")
    p.add_argument("--range", type=float, nargs=2, default=[0.4, 3.9],
                   help="speckle radial range, nm^-1 at 0.125 nm^-1/px (0.4 3.9)")
    p.add_argument("--reference-se", action="store_true",
                   help="divide by the truth's own standard error (as issue 24 did)")
    p.add_argument("--doses", type=float, nargs="+", default=[0.25, 2.0, 20.0, 150.0],
                   help="speckle doses, electrons/px at the first ring (0.25 2 20 150)")
    p.add_argument("--seeds-low", type=int, default=150, help="low-dose seeds (150)")
    p.add_argument("--npt-low", type=int, default=6, help="low-dose bins (6)")
    p.add_argument("--low-doses", type=float, nargs="+", default=[0.001, 0.01, 0.1])
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--psf-seeds", type=int, default=12,
                   help="psf seeds (12: the error of the mean about 0.1-0.2 V/SE)")
    p.add_argument("--psf-nav", type=int, default=40)
    p.add_argument("--psf-npt", type=int, default=25)
    p.add_argument("--psf-dose", type=float, default=2e4,
                   help="synthetic_fem dose (2e4: about 1.2 e/px/frame on the first ring)")
    args = p.parse_args(argv)
    print(f"# femlib estimator accuracy | femlib {femlib.__version__} | command: "
          f"python benchmarks/estimator_accuracy.py {shlex.join(sys.argv[1:])}\n")
    for name in args.sections:
        print(f"## {name}")
        t = time.perf_counter()
        {"speckle": speckle, "lowdose": lowdose, "psf": psf, "absurd": absurd}[name](args)
        print(f"({time.perf_counter() - t:.0f} s)\n")


if __name__ == "__main__":
    main()
