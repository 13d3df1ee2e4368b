"""Figures of the user-guide page "Real scans" (docs/user_guide/real_scans.rst).

One synthetic 40 x 40 scan with every artefact (2 % crystalline positions, 8 telegraph hot
pixels in the ring, a 2.5 px descan; seed 0), screened with the documented workflow:

* ``screening_pixels.png``: the bad-pixel map with the reasons, against the truth;
* ``screening_outliers.png``: the crystalline score over the scan and its distribution;
* ``screening_descan.png``: the descan fit (:func:`femlib.screening.plot_descan`);
* ``screening_variance.png``: V(k) with and without screening, against the truth.

Run: ``python benchmarks/screening_figures.py docs/_static``.
"""

import sys
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import femlib  # noqa: E402
from femlib import screening  # noqa: E402

RANGE = (3.0, 5.75)


def main(out):
    warnings.simplefilter("ignore", UserWarning)
    s = femlib.data.synthetic_fem(thickness_gradient=False, crystals=0.02, hot_pixels=8,
                                  descan=2.5, seed=0)
    sim = s.metadata.Simulation
    s.calibration.center = sim.centers.reshape(-1, 2).mean(0)
    s.calibration.affine = sim.affine
    stop = sim.beam_stop_mask & ~sim.bad_pixels
    kw = {"show_progressbar": False}
    bad = s.find_bad_pixels(gain=4.2, mask=stop, **kw)
    mask = stop | bad.data
    centres = s.find_centers(mask=mask, **kw)
    flags = s.find_outlier_patterns(radial_range=RANGE, mask=mask, **kw)
    vkw = {"npt": 50, "gain": 4.2, "radial_range": RANGE, **kw}
    raw = s.get_variance(mask=sim.beam_stop_mask, **vkw)
    screened = s.get_variance(mask=mask, navigation_mask=flags, **vkw)

    md = bad.metadata.Screening.bad_pixels
    fig, ax = plt.subplots(figsize=(5, 4.6))
    ax.imshow(np.log10(np.maximum(s.data.sum(axis=(0, 1), dtype=float), 1)), cmap="gray")
    reasons = np.array(md.reasons)
    for i, reason in enumerate(sorted(set(md.reasons))):
        colour = f"C{i}"
        sel = reasons == reason
        if sel.any():
            ax.plot(*md.pixels[sel].T, "o", mfc="none", mec=colour, ms=8,
                    label=f"{reason} ({sel.sum()})")
    ax.plot(*sim.hot_pixels.T, "+", color="yellow", ms=6, label="true hot pixels")
    ax.set(title="find_bad_pixels: the sum of the scan (log)", xlabel="x (px)",
           ylabel="y (px)")
    ax.legend(loc="lower left", fontsize="small")
    fig.tight_layout()
    fig.savefig(f"{out}/screening_pixels.png", dpi=90)

    om = flags.metadata.Screening.outliers
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    im = a.imshow(om.crystal_score, cmap="viridis", vmax=max(20, om.thresholds.crystal * 2))
    ty, tx = np.nonzero(sim.outliers)
    a.plot(tx, ty, "o", mfc="none", mec="w", ms=7, label="true crystalline")
    fy, fx = np.nonzero(flags.data)
    a.plot(fx, fy, "x", color="r", ms=5, label="flagged")
    a.set(title="crystalline score (robust SD)", xlabel="scan x", ylabel="scan y")
    a.legend(loc="lower left", fontsize="small")
    fig.colorbar(im, ax=a)
    score = np.asarray(om.crystal_score).ravel()
    b.hist(np.clip(score, -5, 60), bins=80, color="0.4")
    b.axvline(om.thresholds.crystal, color="C3", label=f"threshold {om.thresholds.crystal:g}")
    b.set(yscale="log", xlabel="crystalline score (clipped at 60)", ylabel="positions")
    b.legend()
    fig.tight_layout()
    fig.savefig(f"{out}/screening_outliers.png", dpi=90)

    fig = screening.plot_descan(centres)
    err = centres.data - sim.centers
    fig.suptitle(f"find_centers: rms error against the truth "
                 f"{np.sqrt(np.mean(np.sum(err**2, -1))):.3f} px", y=1.0)
    fig.savefig(f"{out}/screening_descan.png", dpi=90, bbox_inches="tight")

    fig, ax = plt.subplots(figsize=(6, 4))
    k = raw.axes_manager.signal_axes[0].axis
    for v, label, colour in ((raw, "no screening", "C3"), (screened, "screened", "C0")):
        se = np.asarray(v.metadata.FEM.standard_error)
        ax.fill_between(k, v.data - se, v.data + se, color=colour, alpha=0.3)
        ax.plot(k, v.data, color=colour, label=label)
    ax.plot(sim.k, sim.variance, "k--", label="truth")
    ax.set(xlim=RANGE, ylim=(-0.002, 0.03), xlabel="k (nm$^{-1}$)", ylabel="V(k)",
           title="all three artefacts (single centre)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{out}/screening_variance.png", dpi=90)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
