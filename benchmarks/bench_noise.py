"""Detector noise: the shot-noise correction with a PSF, counting model vs measured kernel.

Reproduce with::

    python benchmarks/bench_noise.py

(``--seeds 1 --scan 20`` for a quick run; ``--dose 2e4`` for the dose at which issue 17's
table was measured; ``--help`` for every option.)

What is computed (issue 17's table, from femlib's own synthetic data):

* structure-free scans (``synthetic_fem(modulation=False, thickness_gradient=False,
  psf_sigma=σ)``, 40 x 40 frames of 128 x 128, the true geometry and beam-stop mask),
  σ = 0, 0.5, 1 px, several seeds. ``V(k)`` is the ``Omega`` estimator computed here in
  plain numpy from the frames and ``integration.build_weights(...).matrix`` (``npt=50`` over
  3.0-5.75 nm^-1, and ``npt=10``):
  ``V = m2/N / <I>^2 - (1 - 1/N) <Q> / <I>^2``, ``I = W D``, ``Q = S D`` with ``S`` the shot
  weights of a noise model: the counting model ``DetectorNoise.counting(4.2)`` (what
  ``gain=4.2`` means), the kernel from a 200-frame flat field of the same detector
  (``DetectorNoise.from_flat_field``) and the kernel from the scan itself
  (``DetectorNoise.from_scan``). Printed: the mean corrected V over bins and seeds, its
  standard error (the scatter of the per-seed, per-bin values over sqrt(count)) and the mean
  per-bin standard error (delta method on the fourth moment);
* structured scans (``modulation=True``): the same estimator with the flat-field model, peak
  V near 4.6 nm^-1 against ``V_true`` — what the PSF does to the structural V;
* timings of ``shot_weights`` (128^2 detector, 50 bins; 256^2, 360 bins) and of
  ``from_flat_field``/``from_scan``, next to a plain read pass of the same array.

Nothing asserts on a time; the machine may be shared (the load average is printed).
"""

import argparse
import shlex
import sys
import time

import _common as C
import numpy as np

import femlib
from femlib.integration import build_weights
from femlib.noise import DetectorNoise


def omega(frames, w, s):
    """Corrected Omega per bin, its delta-method standard error.

    ``frames`` (N, P) float64, ``w`` and ``s`` (K, P) sparse (weights, shot weights).
    """
    n = frames.shape[0]
    i = np.asarray((w @ frames.T).T)  # (N, K)
    q = np.asarray((s @ frames.T).T)
    mi = i.mean(axis=0)
    dev = i - mi
    m2 = (dev**2).mean(axis=0)
    m4 = (dev**4).mean(axis=0)
    v = m2 / mi**2 - (1 - 1 / n) * q.mean(axis=0) / mi**2
    se = np.sqrt((m4 - m2**2) / n) / mi**2
    return v, se


DOSE = 3.4e5


def scan(sigma, seed, n, modulation):
    s = femlib.data.synthetic_fem(
        (n, n), modulation=modulation, thickness_gradient=False, psf_sigma=sigma, seed=seed,
        dose=DOSE,
    )
    sim = s.metadata.Simulation
    frames = s.data.reshape(n * n, -1).astype(np.float64)
    return s, frames, sim


def weights(sim, npt):
    return build_weights(
        sim.beam_stop_mask.shape,
        sim.center,
        affine=sim.affine,
        scale=sim.scale,
        npt=npt,
        radial_range=C.RADIAL_RANGE,
        mask=sim.beam_stop_mask,
    )


def blurred_truth(k, sigma_k):
    """V_true of the synthetic modulation after a radial Gaussian blur of ``sigma_k``:
    each component ``sqrt(v) exp(-(k-k_j)^2 / 2w^2)`` becomes ``w/w'`` times as high and
    ``w' = sqrt(w^2 + sigma_k^2)`` wide, so ``v_j -> v_j w^2/w'^2`` and ``w -> w'``."""
    from femlib.data._synthetic import _MODULATION

    out = np.zeros_like(k)
    for kj, vj, wj in _MODULATION:
        w2 = wj**2 + sigma_k**2
        out += vj * wj**2 / w2 * np.exp(-((k - kj) ** 2) / w2)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="scans per PSF width")
    p.add_argument("--scan", type=int, default=40, help="scan side (frames = side^2)")
    p.add_argument("--flat-frames", type=int, default=200, help="frames of the flat field")
    p.add_argument("--sigmas", default="0,0.5,1", help="PSF widths in pixels")
    p.add_argument("--dose", type=float, default=DOSE, help="electrons per frame")
    args = p.parse_args(argv)
    globals()["DOSE"] = args.dose
    C.header("Detector noise: shot-noise correction with a PSF", shlex.join(sys.argv))
    sigmas = [float(x) for x in args.sigmas.split(",")]

    rows = []
    structured = []
    models_info = []
    for sigma in sigmas:
        acc = {}
        peak = []
        for seed in range(args.seeds):
            flat = femlib.data.synthetic_flat_field(
                args.flat_frames, (128, 128), dose=100.0, gain=C.GAIN, psf_sigma=sigma,
                seed=1000 + seed,
            )
            s, frames, sim = scan(sigma, seed, args.scan, False)
            models = {
                "counting": DetectorNoise.counting(C.GAIN),
                "flat field": DetectorNoise.from_flat_field(flat),
                "from scan": DetectorNoise.from_scan(s, mask=sim.beam_stop_mask),
            }
            models_info.append(
                (sigma, seed, models["flat field"].gain, models["from scan"].gain)
            )
            for npt in (50, 10):
                w = weights(sim, npt)
                for name, model in models.items():
                    v, se = omega(frames, w.matrix, model.shot_weights(w))
                    acc.setdefault((npt, name), []).append((v, se))
            # Structured scan of the same seed: what the PSF does to the structural V.
            s, frames, sim = scan(sigma, seed, args.scan, True)
            w = weights(sim, 50)
            v, se = omega(frames, w.matrix, models["flat field"].shot_weights(w))
            k = w.radial_centers
            truth = np.interp(k, sim.k, sim.variance)
            peak.append((v, se, truth, k))
        for (npt, name), vals in acc.items():
            v = np.concatenate([a for a, _ in vals])
            se = np.concatenate([b for _, b in vals])
            rows.append((sigma, npt, name, v.mean(), v.std(ddof=1) / np.sqrt(v.size), se.mean()))
        structured.append((sigma, peak))

    print("## Structure-free scans: mean corrected Omega V over bins and seeds")
    print(f"{args.seeds} seed(s), {args.scan ** 2} frames of 128x128, "
          f"radial range {C.RADIAL_RANGE} nm^-1")
    print()
    print("| PSF σ (px) | npt | noise model | mean V | SE of the mean | mean per-bin SE |")
    print("| --- | --- | --- | --- | --- | --- |")
    for sigma, npt, name, mv, sem, mse in sorted(rows, key=lambda r: (-r[1], r[0])):
        print(f"| {sigma:g} | {npt} | {name} | {mv:+.6f} | {sem:.6f} | {mse:.6f} |")
    print()
    print("## Gains of the measured kernels (true 4.2)")
    print("| PSF σ | seed | flat field gain (rel. error) | from_scan gain (rel. error) |")
    print("| --- | --- | --- | --- |")
    for sigma, seed, gf, gs in models_info:
        print(f"| {sigma:g} | {seed} | {gf:.4f} ({gf / C.GAIN - 1:+.4f}) "
              f"| {gs:.4f} ({gs / C.GAIN - 1:+.4f}) |")
    print()
    print("## Structured scans (flat-field model): V around the 4.6 nm^-1 peak")
    print("Same seeds for every σ (same electrons, only the PSF differs): the ratio to σ = 0")
    print("is paired. Predicted: the modulation blurred radially by σ * scale (nm^-1).")
    print()
    print("| PSF σ (px) | mean V, 4.3-4.9 nm^-1 | mean per-bin SE | V_true there "
          "| ratio to σ = 0 | predicted |")
    print("| --- | --- | --- | --- | --- | --- |")
    ref = None
    for sigma, peak in structured:
        v = np.stack([a for a, *_ in peak])
        se = np.stack([b for _, b, *_ in peak])
        truth = peak[0][2]
        k = peak[0][3]
        sel = (k > 4.3) & (k < 4.9)
        per_seed = v[:, sel].mean(axis=1)
        ref = per_seed if ref is None else ref
        ratio = per_seed / ref
        rse = ratio.std(ddof=1) / np.sqrt(ratio.size) if ratio.size > 1 else np.nan
        pred = blurred_truth(k, sigma * 0.14)[sel].mean() / blurred_truth(k, 0.0)[sel].mean()
        print(f"| {sigma:g} | {per_seed.mean():.5f} | {se[:, sel].mean():.5f} "
              f"| {truth[sel].mean():.5f} "
              f"| {ratio.mean():.3f} ± {rse:.3f} | {pred:.3f} |")
    print()

    print("## Timings (best of 3)")
    model = DetectorNoise.from_psf(np.ones((3, 3)) / 9 + np.pad([[1.0]], 1), C.GAIN)
    model = DetectorNoise(np.pad(model.kernel, 3))  # an 11x11 window, all lags non-zero
    print("| what | seconds |")
    print("| --- | --- |")
    for shape, npt, naz in (((128, 128), 50, 1), ((256, 256), 360, 1), ((256, 256), 50, 36)):
        w = build_weights(shape, (shape[1] / 2 - 0.3, shape[0] / 2 + 0.2), npt=npt,
                          npt_azim=naz)
        best = min(_timed(model.shot_weights, w) for _ in range(3))
        print(f"| shot_weights {shape[0]}^2, {npt}x{naz} bins, nnz {w.matrix.nnz}, 11x11 "
              f"kernel | {best:.3f} |")
    flat = femlib.data.synthetic_flat_field(200, (128, 128), psf_sigma=1.0)
    print(f"| read pass of a 200x128x128 flat field | "
          f"{min(_timed(flat.sum, 0) for _ in range(3)):.3f} |")
    print(f"| from_flat_field on it | "
          f"{min(_timed(DetectorNoise.from_flat_field, flat) for _ in range(3)):.3f} |")
    s, frames, sim = scan(1.0, 0, args.scan, True)
    print(f"| read pass of the {args.scan ** 2}-frame scan | "
          f"{min(_timed(s.data.sum, (0, 1)) for _ in range(3)):.3f} |")
    mask = sim.beam_stop_mask
    t = min(_timed(DetectorNoise.from_scan, s, mask=mask) for _ in range(3))
    print(f"| from_scan on it | {t:.3f} |")


def _timed(func, *args, **kwargs):
    t = time.perf_counter()
    func(*args, **kwargs)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
