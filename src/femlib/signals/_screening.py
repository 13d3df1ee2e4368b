"""HyperSpy shell of :mod:`femlib.screening`: argument checks, one pass, wrapping.

The methods of :class:`femlib.signals.FEMDiffraction2D` (``find_bad_pixels``,
``find_outlier_patterns``, ``find_centers``) call these functions; the numbers come from
:mod:`femlib.screening`.
"""

import numpy as np
from hyperspy.signals import BaseSignal, Signal1D, Signal2D

from femlib import screening as _screening


def _mask_array(signal, mask):
    """The detector mask as a bool array (explicit, else the stored one), or None."""
    if mask is None:
        return signal.calibration.mask
    from femlib.calibration import check_mask

    return check_mask(mask, signal.calibration.detector_shape)


def _title(what, signal):
    source = signal.metadata.General.title
    return f"{what} of {source}" if source else what


def _detector_signal(signal, data, title):
    axes = signal.axes_manager._get_signal_axes_dicts()
    for ax in axes:
        ax["navigate"] = False
    out = Signal2D(data, axes=axes)
    out.metadata.General.title = title
    return out


def _navigation_signal(signal, data, title):
    axes = signal.axes_manager._get_navigation_axes_dicts()
    for ax in axes:
        ax["navigate"] = False
    cls = Signal2D if len(axes) == 2 else (Signal1D if len(axes) == 1 else BaseSignal)
    out = cls(data, axes=axes)
    out.metadata.General.title = title
    return out


def _noise_factor(gain, noise):
    from femlib.signals.diffraction import _check_noise

    gain, noise = _check_noise(gain, noise)
    return gain, (None if noise is None else float(noise.k0)), noise


def find_bad_pixels(signal, gain, noise, mask, hot, noisy, min_z, show_progressbar):
    from femlib.signals.diffraction import _compute

    gain, k0, noise = _noise_factor(gain, noise)
    mask = _mask_array(signal, mask)
    work = _screening.pixel_statistics(signal.data, compute=False)
    stats = _compute(work, show_progressbar, scheduler=None if signal._lazy else "threads")
    found = _screening.classify_pixels(stats, gain=gain, k0=k0, mask=mask, hot=hot,
                                       noisy=noisy, min_z=min_z)
    bad = found["bad"]
    rows, cols = np.nonzero(bad)
    codes = found["reason"][rows, cols]
    names = [_names(c, _screening.REASONS_PIXEL) for c in codes]
    counts = {k: int(((found["reason"] & bit) > 0).sum())
              for k, bit in _screening.REASONS_PIXEL.items()}
    out = _detector_signal(signal, bad, _title("Bad pixels", signal))
    out.metadata.set_item("Screening.bad_pixels", {
        "n_bad": int(bad.sum()),
        "n_pixels": int(bad.size),
        "counts": counts,
        "pixels": np.column_stack([cols, rows]).astype(np.int64),
        "reasons": names,
        "noise_score": found["noise_score"][rows, cols],
        "hot_score": found["hot_score"][rows, cols],
        "reason_map": found["reason"],
        "reason_bits": dict(_screening.REASONS_PIXEL),
        "model": found["model"],
        "gain": gain if gain is not None else (None if noise is None else float(noise.gain)),
        "k0": k0,
        "gain_estimate": found["gain_estimate"],
        "n_frames": int(stats["n_frames"]),
        "thresholds": {"hot": hot, "noisy": noisy, "min_z": min_z},
    })
    return out


def _names(code, table):
    return "+".join(name for name, bit in table.items() if code & bit) or "none"


def find_outlier_patterns(signal, radial_range, mask, npt, npt_azim, crystal, dose,
                          show_progressbar):
    # The one pass that reads the data: the engine's polar transform (what
    # get_azimuthal_integral2d(npt, npt_azim, mean=True) computes, float32, without
    # wrapping it in a signal), so per-position centres (descan) apply to it as to every
    # integration.
    weights = signal._weights(npt, npt_azim, radial_range, None, mask)
    data = signal._integrate(weights, True, np.float32, show_progressbar)
    if signal._lazy:
        from femlib.signals.diffraction import _compute

        data = _compute(data, show_progressbar)
    coverage = weights.coverage.reshape(weights.npt, weights.npt_azim)
    found = _screening.polar_outliers(data, coverage=coverage, crystal=crystal, dose=dose)
    flags = found["outlier"]
    counts = {k: int(((found["reason"] & bit) > 0).sum())
              for k, bit in _screening.REASONS_PATTERN.items()}
    out = _navigation_signal(signal, flags, _title("Outlier patterns", signal))
    r_step = float(weights.radial_edges[1] - weights.radial_edges[0])
    r_first = float(weights.radial_centers[0])
    out.metadata.set_item("Screening.outliers", {
        "n_outliers": int(flags.sum()),
        "n_positions": int(flags.size),
        "counts": counts,
        "reason": found["reason"],
        "reason_bits": dict(_screening.REASONS_PATTERN),
        "crystal_score": found["crystal_score"],
        "dose_score": found["dose_score"],
        "contrast": found["contrast"],
        "intensity": found["intensity"],
        "thresholds": {"crystal": found["crystal"], "dose": found["dose"]},
        "radial_range": (r_first - r_step / 2, r_first + (weights.npt - 0.5) * r_step),
        "npt": int(npt),
        "npt_azim": int(npt_azim),
    })
    return out


def left_out_summary(navigation_mask, excluded):
    """``metadata.FEM.navigation_mask`` of get_variance: how many positions were left out
    by ``navigation_mask`` and, for flags of find_outlier_patterns, why."""
    summary = {"n_excluded": int(excluded.sum()), "n_positions": int(excluded.size)}
    md = getattr(navigation_mask, "metadata", None)
    if md is not None and md.has_item("Screening.outliers.counts"):
        counts = md.get_item("Screening.outliers.counts")
        summary["reasons"] = {k: int(v) for k, v in counts.as_dictionary().items()}
    return summary


def find_centers(signal, mask, tiles, radial_range, model, navigation_mask, n_azimuth,
                 show_progressbar):
    from femlib.ellipse import EllipseFitError, determine_ellipse, refine_center_affine
    from femlib.ellipse._refine import _prepare, _resolve_range
    from femlib.signals.diffraction import _compute

    nav_shape = tuple(signal.axes_manager._navigation_shape_in_array)
    if len(nav_shape) not in (1, 2):
        raise ValueError(
            f"find_centers needs a 1D or 2D scan, got navigation shape {nav_shape}"
        )
    grid_shape = nav_shape if len(nav_shape) == 2 else (1,) + nav_shape
    if tiles is None:
        tiles = tuple(max(1, n // 4) for n in grid_shape)
    labels, grid = _screening.tile_labels(grid_shape, tiles)
    excluded = signal._navigation_mask(navigation_mask).reshape(grid_shape)
    labels = np.where(excluded, -1, labels)
    n_tiles = grid[0] * grid[1]
    need = {"constant": 1, "plane": 3, "quadratic": 6}.get(model)
    if need is None:
        raise ValueError(f"model must be 'plane', 'quadratic' or 'constant', got {model!r}")
    if int((~excluded).sum()) < 2 or n_tiles < need:
        raise ValueError(
            f"{int((~excluded).sum())} usable position(s) in {n_tiles} tile(s) of {tiles}: "
            f"model={model!r} needs at least {need} tiles; pass smaller tiles= or "
            "model='constant'"
        )
    mask = _mask_array(signal, mask)
    work = _screening.label_sums(signal.data.reshape(grid_shape + signal.data.shape[-2:])
                                 if len(nav_shape) == 1 else signal.data,
                                 labels, n_tiles, compute=False)
    sums = _compute(work, show_progressbar, scheduler=None if signal._lazy else "threads")
    counts = np.bincount(labels[labels >= 0], minlength=n_tiles)
    yy, xx = np.mgrid[0 : grid_shape[0], 0 : grid_shape[1]].astype(float)
    pos_sum = np.zeros((n_tiles, 2))
    sel = labels >= 0
    np.add.at(pos_sum, labels[sel], np.column_stack([yy[sel], xx[sel]]))
    used = counts > 0
    tile_pos = pos_sum[used] / counts[used, None]
    total = sums.sum(axis=0)
    scale = float(abs(signal.axes_manager.signal_axes[0].scale))
    try:
        rc, affine = determine_ellipse(total, mask=mask, num_points=200)[:2]
        rr = None if radial_range is None else tuple(float(r) / scale for r in radial_range)
        rc, affine = refine_center_affine(total, rc, affine, radial_range=rr, mask=mask,
                                          n_azimuth=n_azimuth, units="pixel")
        image, bad = _prepare(total, mask)
        r0, r1 = _resolve_range(image, bad, rc, affine, rr, 1.0)
    except (EllipseFitError, ValueError) as err:
        raise ValueError(
            "find_centers found no ring to fit in the sum of the scan: give radial_range "
            "around a diffraction ring (calibrated units) and mask the beam stop "
            f"({err})"
        ) from None
    positions = np.column_stack([yy.ravel(), xx.ravel()])
    fit = _screening.fit_centers(
        sums[used], tile_pos, positions, rc[::-1], affine=affine, radial_range=(r0, r1),
        mask=mask, model=model, n_azimuth=n_azimuth,
    )
    centers = fit["centers"].reshape(nav_shape + (2,))
    axes = signal.axes_manager._get_navigation_axes_dicts() + [
        {"name": "Centre", "units": "px", "size": 2, "navigate": False}
    ]
    out = Signal1D(centers, axes=axes)
    out.metadata.General.title = _title("Pattern centres (x, y)", signal)
    out.metadata.set_item("Screening.descan", {
        "model": model,
        "tiles": tuple(int(t) for t in tiles),
        "grid": tuple(int(g) for g in grid),
        "tile_positions": fit["tile_positions"],
        "tile_centers": fit["tile_centers"],
        "tile_ok": fit["tile_ok"],
        "tile_counts": counts[used],
        "residual": fit["residual"],
        "rms_residual": fit["rms_residual"],
        "coefficients": fit["coefficients"],
        "n_failed": len(fit["errors"]),
        "center": rc[::-1].copy(),
        "affine": affine,
        "radial_range_px": (float(r0), float(r1)),
    })
    return out
