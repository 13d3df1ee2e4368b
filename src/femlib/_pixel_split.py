"""Exact pixel splitting (numba): area of every detector pixel inside every annular sector.

Private: the public entry point is :func:`femlib.integration.build_weights`.

An affine map keeps straight lines straight, so a square pixel is a parallelogram in the
corrected coordinates. Its overlap with the sector ``r0 <= r < r1, a0 <= phi < a1`` is found
in two exact steps: the parallelogram is clipped by the two half-planes bounding the azimuth
wedge (a convex polygon stays convex), then the area of that polygon inside the disk of
radius ``r`` is computed in closed form, edge by edge (triangle ``(O, a, b)`` intersected
with the disk: straight pieces inside the circle, circular-sector pieces outside), and the
ring area is ``area(r1) - area(r0)``. Nothing is sampled; the only error is rounding.
"""

import math

import numpy as np

from femlib._jit import njit

_JIT = {"nogil": True, "cache": True, "fastmath": False}
_MAXV = 12  # a parallelogram clipped by two half-planes has at most 6 vertices


@njit(**_JIT)
def _clip(xs, ys, n, dx, dy, sign, ox, oy):  # pragma: no cover
    """Keep the part of polygon ``(xs, ys)[:n]`` where ``sign * cross(d, p) >= 0``."""
    m = 0
    if n == 0:
        return 0
    px = xs[n - 1]
    py = ys[n - 1]
    sp = sign * (dx * py - dy * px)
    for i in range(n):
        cx = xs[i]
        cy = ys[i]
        sc = sign * (dx * cy - dy * cx)
        if sc >= 0.0:
            if sp < 0.0:
                t = sp / (sp - sc)
                ox[m] = px + t * (cx - px)
                oy[m] = py + t * (cy - py)
                m += 1
            ox[m] = cx
            oy[m] = cy
            m += 1
        elif sp >= 0.0:
            t = sp / (sp - sc)
            ox[m] = px + t * (cx - px)
            oy[m] = py + t * (cy - py)
            m += 1
        px = cx
        py = cy
        sp = sc
    return m


@njit(**_JIT)
def _piece(ax, ay, bx, by, rr):  # pragma: no cover
    """Signed area of the piece ``a -> b`` known to lie wholly inside or outside the disk."""
    cr = ax * by - ay * bx
    mx = 0.5 * (ax + bx)
    my = 0.5 * (ay + by)
    if mx * mx + my * my <= rr:
        return 0.5 * cr
    return 0.5 * rr * math.atan2(cr, ax * bx + ay * by)


@njit(**_JIT)
def _edge_in_disk(ax, ay, bx, by, rr):  # pragma: no cover
    """Signed area of triangle ``(O, a, b)`` intersected with the disk ``|p|^2 <= rr``."""
    dx = bx - ax
    dy = by - ay
    qa = dx * dx + dy * dy
    if qa == 0.0:
        return 0.0
    qb = ax * dx + ay * dy
    qc = ax * ax + ay * ay - rr
    disc = qb * qb - qa * qc
    if disc <= 0.0:
        return _piece(ax, ay, bx, by, rr)
    sq = math.sqrt(disc)
    t1 = (-qb - sq) / qa
    t2 = (-qb + sq) / qa
    total = 0.0
    px = ax
    py = ay
    if 0.0 < t1 < 1.0:
        qx = ax + t1 * dx
        qy = ay + t1 * dy
        total += _piece(px, py, qx, qy, rr)
        px = qx
        py = qy
    if 0.0 < t2 < 1.0:
        qx = ax + t2 * dx
        qy = ay + t2 * dy
        total += _piece(px, py, qx, qy, rr)
        px = qx
        py = qy
    return total + _piece(px, py, bx, by, rr)


@njit(**_JIT)
def _area_in_disk(xs, ys, n, r):  # pragma: no cover
    rr = r * r
    total = 0.0
    for i in range(n):
        j = i + 1 if i + 1 < n else 0
        total += _edge_in_disk(xs[i], ys[i], xs[j], ys[j], rr)
    return total


@njit(**_JIT)
def _radial_extent(xs, ys, n):  # pragma: no cover
    """Smallest and largest distance from the origin to a CCW convex polygon."""
    rmax = 0.0
    inside = True
    for i in range(n):
        j = i + 1 if i + 1 < n else 0
        rmax = max(rmax, xs[i] * xs[i] + ys[i] * ys[i])
        if xs[i] * ys[j] - ys[i] * xs[j] < 0.0:
            inside = False
    if inside:
        return 0.0, math.sqrt(rmax)
    rmin = math.inf
    for i in range(n):
        j = i + 1 if i + 1 < n else 0
        dx = xs[j] - xs[i]
        dy = ys[j] - ys[i]
        qa = dx * dx + dy * dy
        t = 0.0 if qa == 0.0 else -(xs[i] * dx + ys[i] * dy) / qa
        t = min(1.0, max(0.0, t))
        px = xs[i] + t * dx
        py = ys[i] + t * dy
        rmin = min(rmin, px * px + py * py)
    return math.sqrt(rmin), math.sqrt(rmax)


@njit(**_JIT)
def _polygon_area(xs, ys, n):  # pragma: no cover
    # Shoelace about the first vertex, not the origin: far from the centre the terms about
    # the origin are (radius / pixel size) times larger than the area and cancel.
    total = 0.0
    for i in range(1, n - 1):
        total += (xs[i] - xs[0]) * (ys[i + 1] - ys[0]) - (ys[i] - ys[0]) * (xs[i + 1] - xs[0])
    return 0.5 * total


@njit(**_JIT)
def _sector_weights(
    xs, ys, n, pixel, jbin, redges, out_bin, out_pix, out_w, count, inv_area, npt_azim
):  # pragma: no cover
    """Append the radial-bin weights of one (already azimuth-clipped) polygon."""
    if n < 3:
        return count
    rlo, rhi = _radial_extent(xs, ys, n)
    npt = redges.size - 1
    r0 = redges[0]
    dr = (redges[npt] - r0) / npt
    if rhi <= r0 or rlo >= redges[npt]:
        return count
    k0 = max(0, math.floor((rlo - r0) / dr) - 1)
    k1 = min(npt - 1, math.floor((rhi - r0) / dr) + 1)
    full = _polygon_area(xs, ys, n)
    e = redges[k0]
    below = 0.0 if e <= rlo else (full if e >= rhi else _area_in_disk(xs, ys, n, e))
    for k in range(k0, k1 + 1):
        e = redges[k + 1]
        upto = 0.0 if e <= rlo else (full if e >= rhi else _area_in_disk(xs, ys, n, e))
        w = (upto - below) * inv_area
        below = upto
        if w > 1e-13:
            out_bin[count] = k * npt_azim + jbin
            out_pix[count] = pixel
            out_w[count] = w
            count += 1
    return count


@njit(**_JIT)
def _grow(out_bin, out_pix, out_w, size):  # pragma: no cover
    """The three output arrays, copied into new ones of ``size`` entries (one helper for
    the three: each helper is a compilation of its own)."""
    # Explicit loops: a slice assignment compiles numba's shape-mismatch message (string
    # formatting), seconds of a cold compile.
    b = np.empty(size, np.int64)
    p = np.empty(size, np.int64)
    w = np.empty(size, np.float64)
    for i in range(out_w.size):
        b[i] = out_bin[i]
        p[i] = out_pix[i]
        w[i] = out_w[i]
    return b, p, w


@njit(**_JIT)
def split_pixels(
    cu, cw, corner_u, corner_w, pixels, redges, aedges, clip
):  # pragma: no cover
    """Exact overlap of every pixel with every (radial, azimuthal) bin.

    Parameters
    ----------
    cu, cw : (P,) float64
        Pixel centres in corrected coordinates, ``w`` pointing so that the azimuth is
        ``atan2(w, u)``.
    corner_u, corner_w : (4,) float64
        Offsets of the four corners from the centre, counter-clockwise in ``(u, w)``.
    pixels : (M,) int64
        Flat indices of the pixels to split (unmasked, possibly in range).
    redges, aedges : float64
        Radial and azimuthal bin edges (``aedges`` increasing, span <= 2 pi).
    clip : True or None
        True: clip by the azimuthal bins; None: one azimuthal bin covering the whole
        circle, no clipping at all. None is a type of its own: numba prunes the clipping
        code before typing it, so a 1D integral never compiles it.

    Returns
    -------
    bins, pix : int64 arrays; weights : float64 array
        Overlap area divided by the pixel area (``sum = 1`` for a pixel wholly in range).
    """
    npt_azim = aedges.size - 1
    # Integer arguments of the helpers as int64 variables, never literals: a literal
    # argument compiles a helper once more for its literal type.
    four = np.int64(4)
    a0 = aedges[0]
    da = (aedges[npt_azim] - a0) / npt_azim
    dcos = np.empty(aedges.size)
    dsin = np.empty(aedges.size)
    for i in range(aedges.size):
        dcos[i] = math.cos(aedges[i])
        dsin[i] = math.sin(aedges[i])
    two_pi = 2.0 * math.pi
    # Sectors wider than pi are not convex: cut each into two halves of at most pi.
    halves = da > math.pi + 1e-12
    mid = a0 + 0.5 * da
    mcos = math.cos(mid)
    msin = math.sin(mid)
    parea = 0.0
    for i in range(4):
        j = (i + 1) % 4
        parea += 0.5 * (corner_u[i] * corner_w[j] - corner_w[i] * corner_u[j])
    inv_area = 1.0 / parea
    cap = max(16, 8 * pixels.size)
    out_bin = np.empty(cap, np.int64)
    out_pix = np.empty(cap, np.int64)
    out_w = np.empty(cap, np.float64)
    count = np.int64(0)
    px = np.empty(_MAXV)
    py = np.empty(_MAXV)
    qx = np.empty(_MAXV)
    qy = np.empty(_MAXV)
    sx = np.empty(_MAXV)
    sy = np.empty(_MAXV)
    for m in range(pixels.size):
        p = pixels[m]
        for i in range(4):
            px[i] = cu[p] + corner_u[i]
            py[i] = cw[p] + corner_w[i]
        rlo, rhi = _radial_extent(px, py, four)
        if rhi <= redges[0] or rlo >= redges[redges.size - 1]:
            continue
        # Candidate azimuthal bins: all of them if the pixel holds the origin (or with one
        # bin over the full circle), else those overlapping the pixel's angular extent
        # (less than pi).
        j_lo1 = 0
        j_hi1 = npt_azim - 1
        j_lo2 = 0
        j_hi2 = -1
        if clip is not None and rlo > 0.0:
            ca = math.atan2(cw[p], cu[p])
            dmin = 0.0
            dmax = 0.0
            for i in range(4):
                d = math.atan2(py[i], px[i]) - ca
                d -= two_pi * math.floor((d + math.pi) / two_pi)
                dmin = min(dmin, d)
                dmax = max(dmax, d)
            lo = ca + dmin - 1e-9
            hi = ca + dmax + 1e-9
            shift = lo - a0
            lo = a0 + (shift - two_pi * math.floor(shift / two_pi))
            hi = lo + (dmax - dmin) + 2e-9
            j_lo1 = math.floor((lo - a0) / da)
            j_hi1 = min(npt_azim - 1, math.floor((hi - a0) / da))
            j_hi2 = min(npt_azim - 1, j_lo1 - 1, math.floor((hi - two_pi - a0) / da))
        for jj in range(2):
            if jj == 0:
                ja = max(0, j_lo1)
                jb = j_hi1
            else:
                ja = j_lo2
                jb = j_hi2
            for j in range(ja, jb + 1):
                need = 2 * (redges.size + 1)
                if count + need > out_w.size:
                    size = 2 * out_w.size + need
                    out_bin, out_pix, out_w = _grow(out_bin, out_pix, out_w, size)
                # One call site per helper (each call site is compiled on its own): the
                # whole pixel (full circle), the sector between the edges of bin j, or its
                # halves [a_j, mid] and [mid, a_j+1] (a sector wider than pi, npt_azim == 1).
                for h in range(1 if clip is None or not halves else 2):
                    if clip is None:
                        n = four
                        for i in range(4):
                            sx[i] = px[i]
                            sy[i] = py[i]
                    else:
                        c0, s0, c1, s1 = dcos[j], dsin[j], dcos[j + 1], dsin[j + 1]
                        if halves:
                            if h == 0:
                                c1, s1 = mcos, msin
                            else:
                                c0, s0 = mcos, msin
                        n = _clip(px, py, four, c0, s0, 1.0, qx, qy)
                        n = _clip(qx, qy, n, c1, s1, -1.0, sx, sy)
                    count = _sector_weights(
                        sx, sy, n, p, j, redges, out_bin, out_pix, out_w, count, inv_area,
                        npt_azim,
                    )
    return out_bin[:count].copy(), out_pix[:count].copy(), out_w[:count].copy()
