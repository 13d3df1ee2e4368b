"""Measuring a detector's noise kernel: from a flat-field series and from the FEM scan.

The estimation half of :mod:`femlib.noise` (the model, :class:`femlib.noise.DetectorNoise`,
holds the kernel and uses it). Each function is one streaming pass over the frames and
returns the kernel and its provenance; ``DetectorNoise.from_flat_field`` and
``DetectorNoise.from_scan`` wrap them (their docstrings describe the methods).
"""

import math
import numbers

import numpy as np

_MIN_FLAT_FRAMES = 2
_BLOCK_ELEMENTS = 2**22  # float64 elements per work block (32 MiB)


def _check_size(size, detector_shape=None):
    if isinstance(size, bool) or not isinstance(size, numbers.Integral):
        raise TypeError(f"size must be an odd integer >= 1 (window side in pixels), got {size!r}")
    size = int(size)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be an odd integer >= 1 (window side in pixels), got {size}")
    if detector_shape is not None and size > min(detector_shape):
        raise ValueError(
            f"size {size} is larger than the detector {tuple(detector_shape)}: use a window "
            "of at most the smaller detector side"
        )
    return size


def _half_lags(half):
    """Lags ``(dy, dx)`` of one half of a ``(2 half + 1)^2`` window (the other half mirrors)."""
    return [
        (dy, dx)
        for dy in range(0, half + 1)
        for dx in range(-half, half + 1)
        if dy > 0 or dx >= 0
    ]


def _pair_slices(shape, dy, dx):
    """Slices ``a, b`` of a ``shape`` image such that ``img[a]`` and ``img[b]`` are the pixel
    pairs ``(p, p + (dy, dx))`` lying wholly on the detector (``dy >= 0``)."""
    ny, nx = shape
    if dx >= 0:
        return (slice(0, ny - dy), slice(0, nx - dx)), (slice(dy, ny), slice(dx, nx))
    return (slice(0, ny - dy), slice(-dx, nx)), (slice(dy, ny), slice(0, nx + dx))


def _frames_of(data, name):
    """``(n, rows, cols)`` view (numpy or dask) of an array or a signal's ``.data``."""
    data = _unwrap(data)
    if not hasattr(data, "ndim"):
        try:
            data = np.asarray(data)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{name} must be an array (frames, rows, columns) or a signal with .data, "
                f"got {type(data).__name__}"
            ) from err
    if data.ndim < 3:
        raise ValueError(
            f"{name} must have at least 3 dimensions (frames, rows, columns), got shape "
            f"{tuple(data.shape)}"
        )
    if np.dtype(data.dtype).kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers, got dtype {data.dtype}")
    return data.reshape((-1,) + tuple(data.shape[-2:]))


def _unwrap(value):
    """A signal's ``.data``; arrays (numpy's ``.data`` is a buffer) pass through."""
    if isinstance(value, np.ndarray) or _is_dask(value):
        return value
    return getattr(value, "data", value)


def _is_dask(a):
    return type(a).__module__.startswith("dask")


def _blocks(frames, per_block):
    """Yield numpy blocks of consecutive frames (a dask array is computed block by block)."""
    n = frames.shape[0]
    for start in range(0, n, per_block):
        block = frames[start : start + per_block]
        yield start, (block.compute() if _is_dask(block) else np.asarray(block))


def _stream(frames, func, per_block):
    """Sum ``func(start, block)`` (a tuple of arrays) over blocks of frames, in one pass.

    For dask input the blocks are delayed tasks summed in a tree, so memory stays bounded
    by a few blocks whatever the size of the data.
    """
    if _is_dask(frames):
        import dask

        frames = frames.rechunk({0: per_block, 1: -1, 2: -1})
        starts = np.concatenate([[0], np.cumsum(frames.chunks[0])[:-1]])
        parts = [
            dask.delayed(func)(int(s), blk)
            for s, blk in zip(starts, frames.to_delayed().ravel(), strict=True)
        ]
        while len(parts) > 1:
            parts = [
                dask.delayed(_add)(*parts[i : i + 8]) for i in range(0, len(parts), 8)
            ]
        return dask.compute(parts[0])[0]
    total = None
    for start, block in _blocks(frames, per_block):
        part = func(start, block)
        total = part if total is None else _add(total, part)
    return total


def _add(*parts):
    return tuple(sum(vals) for vals in zip(*parts, strict=True))


def _as_offset(value, name, detector_shape):
    """A scalar or a detector-shaped dark image (a dark series is averaged)."""
    if value is None:
        return 0.0
    value = _unwrap(value)
    if _is_dask(value):
        value = value.compute()
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name} must be a number, a (rows, columns) dark frame or a dark series, "
            f"got {type(value).__name__}"
        ) from err
    if arr.ndim > 2:
        arr = arr.reshape((-1,) + arr.shape[-2:]).mean(axis=0)
    if arr.ndim == 2 and arr.shape != tuple(detector_shape):
        raise ValueError(
            f"{name} has shape {arr.shape} but the detector is {tuple(detector_shape)}"
        )
    if arr.ndim == 1:
        raise ValueError(f"{name} must be a number or a (rows, columns) dark frame")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def _as_mask(mask, detector_shape):
    if mask is None:
        return np.zeros(detector_shape, bool)
    arr = np.asarray(_unwrap(mask))
    if arr.dtype != bool:
        raise TypeError(f"mask must be a boolean array (True = excluded), got dtype {arr.dtype}")
    if arr.shape != tuple(detector_shape):
        raise ValueError(
            f"mask has shape {arr.shape} but the detector is {tuple(detector_shape)}"
        )
    return arr


def flat_field_kernel(flat, dark, offset, size, mask, saturation):
    """``(kernel, info)`` of :meth:`femlib.noise.DetectorNoise.from_flat_field`."""
    frames = _frames_of(flat, "flat")
    n, ny, nx = (int(v) for v in frames.shape)
    if n < _MIN_FLAT_FRAMES:
        raise ValueError(
            f"flat holds {n} frame(s): the covariance over frames needs at least "
            f"{_MIN_FLAT_FRAMES} (tens to hundreds give a gain to 1 %)"
        )
    size = _check_size(size, (ny, nx))
    if dark is not None and offset is not None:
        raise ValueError("give either dark (a frame) or offset (a number), not both")
    base = _as_offset(dark if dark is not None else offset, "dark" if dark is not None
                      else "offset", (ny, nx))
    half = size // 2
    excluded = _as_mask(mask, (ny, nx)) | _border((ny, nx), half)
    if saturation is None and np.dtype(frames.dtype).kind in "iu":
        saturation = np.iinfo(frames.dtype).max
    lags = _half_lags(half)
    per_block = max(1, _BLOCK_ELEMENTS // (ny * nx))

    def partial(start, block):
        raw = np.asarray(block, dtype=np.float64)
        if not np.all(np.isfinite(raw)):
            bad = start + int(np.flatnonzero(~np.isfinite(raw).all(axis=(1, 2)))[0])
            raise ValueError(f"flat frame {bad} holds NaN or infinite values")
        nsat = 0 if saturation is None else int(np.count_nonzero(raw >= saturation))
        d = raw - base
        d[:, excluded] = 0.0
        means = d.mean(axis=(1, 2))
        s = d.sum(axis=0)
        lag = np.array(
            [np.einsum("nij,nij->", d[(slice(None),) + a], d[(slice(None),) + b])
             for a, b in (_pair_slices((ny, nx), dy, dx) for dy, dx in lags)]
        )
        first = np.zeros(n)
        first[start : start + len(means)] = means
        return (s, lag, np.array([nsat]), first)

    s, lag, nsat, frame_means = _stream(frames, partial, per_block)
    if nsat[0]:
        raise ValueError(
            f"flat has {int(nsat[0])} saturated pixel value(s) (>= {saturation}): use "
            "frames below saturation, or mask the saturated pixels"
        )
    blank = np.flatnonzero(frame_means <= 0)
    if blank.size:
        raise ValueError(
            f"flat frame(s) {blank[:10].tolist()} have a non-positive mean after the dark "
            "(blank or zero frames): remove them, or check dark/offset"
        )
    mean = s / n
    good = (~excluded) & (mean > 0)
    if not good.any():
        raise ValueError("flat has no pixel with a positive mean after the dark and mask")
    s = np.where(good, s, 0.0)
    k = np.zeros((size, size))
    for (dy, dx), lsum in zip(lags, lag, strict=True):
        a, b = _pair_slices((ny, nx), dy, dx)
        # Centred cross-products: sum_n d_p d_q - S_p S_q / n, per pair, summed.
        cov = (lsum - np.sum(s[a] * s[b]) / n) / (n - 1)
        pairs = good[a] & good[b]
        norm = 0.5 * np.sum(np.where(pairs, mean[a] + mean[b], 0.0))
        # Pairs with a left-out pixel add nothing to cov (zeroed) and nothing to norm.
        k[half + dy, half + dx] = cov / norm if norm > 0 else 0.0
        k[half - dy, half - dx] = k[half + dy, half + dx]
    info = {"method": "flat_field", "n_frames": n, "mean": float(mean[good].mean())}
    return k, info


def scan_kernel(s, mask, radial_range, size, offset, background, navigation_mask=None):
    """``(kernel, info)`` of :meth:`femlib.noise.DetectorNoise.from_scan`."""
    frames = _frames_of(s, "s")
    n, ny, nx = (int(v) for v in frames.shape)
    if n < 2:
        raise ValueError(f"s holds {n} frame(s): from_scan needs at least 2")
    skip = _skipped_frames(navigation_mask, s, n)
    size = _check_size(size, (ny, nx))
    geo = None
    cal = getattr(s, "calibration", None)
    if cal is not None and hasattr(cal, "geometry"):
        geo = cal.geometry()
    if mask is None and geo is not None:
        mask = geo["mask"]
    excluded = _as_mask(mask, (ny, nx)) | _border((ny, nx), size // 2)
    base = _as_offset(offset, "offset", (ny, nx))
    radius, rmax_in = _radii((ny, nx), geo)
    if radial_range is None:
        lo, hi = 0.9 * rmax_in, np.inf
    else:
        try:
            lo, hi = (float(v) for v in radial_range)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"radial_range must be (start, stop) with start < stop, got {radial_range!r}"
            ) from err
        if not (math.isfinite(lo) and lo >= 0 and hi > lo):
            raise ValueError(
                f"radial_range must be (start, stop) with 0 <= start < stop, got "
                f"{radial_range!r}"
            )
    region = (radius >= lo) & (radius <= hi) & ~excluded
    if region.sum() < size * size:
        raise ValueError(
            f"the annulus radial_range=({lo:.4g}, {hi:.4g}) holds {int(region.sum())} "
            f"unmasked pixels, fewer than the window's {size * size}: widen it"
        )
    half = size // 2
    lags = _half_lags(half)
    per_block = max(2, (_BLOCK_ELEMENTS // (ny * nx)) // 2 * 2)
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    # Work on the annulus's bounding box (plus nothing: pairs outside the region are 0).
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    reg = region[box]
    bshape = reg.shape
    base_box = base[box] if np.ndim(base) else base

    def partial(start, block):
        raw = np.asarray(block[(slice(None),) + box], dtype=np.float64)
        m = raw.shape[0] // 2 * 2
        if m == 0:
            return (np.zeros(bshape), np.zeros(len(lags)), np.zeros(2))
        first, second = raw[0:m:2], raw[1:m:2]
        d = first - second
        t = first + second - 2 * base_box
        d[:, ~reg] = 0.0
        t[:, ~reg] = 0.0
        left_out = skip[start : start + m : 2] | skip[start + 1 : start + m : 2]
        d[left_out] = 0.0  # a pair with a position left out adds nothing
        t[left_out] = 0.0
        nonfinite = float(np.count_nonzero(~np.isfinite(d)))
        lag = np.array(
            [np.einsum("nij,nij->", d[(slice(None),) + a], d[(slice(None),) + b])
             for a, b in (_pair_slices(bshape, dy, dx) for dy, dx in lags)]
        )
        return (t.sum(axis=0), lag, np.array([m // 2 - int(left_out.sum()), nonfinite]))

    t, lag, counts = _stream(frames, partial, per_block)
    if counts[1]:
        raise ValueError(
            f"s has {int(counts[1])} NaN or infinite value(s) in the annulus: mask them"
        )
    n_pairs = int(counts[0])
    if n_pairs < 1:
        raise ValueError("s gives no pair of neighbouring frames")
    if not t.sum() > 0:
        raise ValueError(
            "the annulus has a non-positive mean intensity: check offset, mask and "
            "radial_range"
        )
    raw_k = np.zeros((size, size))
    for (dy, dx), lsum in zip(lags, lag, strict=True):
        a, b = _pair_slices(bshape, dy, dx)
        pairs = reg[a] & reg[b]
        norm = 0.5 * np.sum(np.where(pairs, t[a] + t[b], 0.0))
        value = lsum / norm if norm > 0 else 0.0
        raw_k[half + dy, half + dx] = value
        raw_k[half - dy, half - dx] = value
    if background and size >= 3:
        border = np.ones((size, size), bool)
        border[1:-1, 1:-1] = False
        background = float(raw_k[border].mean())
    else:
        background = 0.0
    info = {
        "method": "scan",
        "n_pairs": n_pairs,
        "n_pixels": int(region.sum()),
        "radial_range": (lo, hi),
        "background": background,
    }
    return raw_k - background, info


def _skipped_frames(navigation_mask, s, n):
    """The flat (n,) bool array of frames left out (True), from ``navigation_mask``."""
    if navigation_mask is None:
        return np.zeros(n, bool)
    m = np.asarray(getattr(navigation_mask, "data", navigation_mask))
    if m.dtype != bool:
        raise TypeError(f"navigation_mask must be boolean (True = left out), got {m.dtype}")
    shape = tuple(np.shape(_unwrap(s))[:-2])
    if m.shape != shape:
        raise ValueError(
            f"navigation_mask has shape {m.shape} but the scan's navigation shape is {shape}"
        )
    return m.reshape(n)


def _border(shape, width):
    """The ``width`` outermost rows and columns: their pixels lose charge past the edge, so
    their variance-to-mean ratio is not the bulk one; both estimators leave them out."""
    out = np.zeros(shape, bool)
    if width:
        out[:width] = out[-width:] = True
        out[:, :width] = out[:, -width:] = True
    return out


def _radii(shape, geo):
    """Radius of every pixel centre and the radius of the largest circle on the detector.

    With a calibration: ``|A (p - c)| * scale`` in calibrated units; without: pixels from the
    detector middle.
    """
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx].astype(float)
    if geo is None:
        cx, cy = (nx - 1) / 2, (ny - 1) / 2
        a = np.eye(2)
        sx = sy = 1.0
    else:
        cx, cy = geo["center"]
        a = np.eye(2) if geo["affine"] is None else np.asarray(geo["affine"])[:2, :2]
        sx, sy = (abs(v) for v in geo["scale"])
    dx, dy = x - cx, y - cy
    u = (a[0, 0] * dx + a[0, 1] * dy) * sx
    v = (a[1, 0] * dx + a[1, 1] * dy) * sy
    radius = np.hypot(u, v)
    edge = np.zeros(shape, bool)
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    return radius, float(radius[edge].min())
