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
def _area_in_disk(xs, ys, n, r):  # pragma: no cover
    """Area of the convex polygon ``(xs, ys)[:n]`` inside the disk of radius ``r``.

    The sum over the edges ``a -> b`` of the signed area of triangle ``(O, a, b)``
    intersected with the disk: the edge is cut where it crosses the circle into pieces
    wholly inside (a triangle, half the cross product) or wholly outside (a circular
    sector, ``r^2 / 2`` times its angle). One function for edges and pieces: each helper
    is a compilation of its own.
    """
    rr = r * r
    total = 0.0
    for i in range(n):
        j = i + 1 if i + 1 < n else 0
        ax = xs[i]
        ay = ys[i]
        bx = xs[j]
        by = ys[j]
        dx = bx - ax
        dy = by - ay
        qa = dx * dx + dy * dy
        if qa == 0.0:
            continue
        qb = ax * dx + ay * dy
        qc = ax * ax + ay * ay - rr
        disc = qb * qb - qa * qc
        # Where the edge crosses the circle (none unless disc > 0)
        t1 = 2.0
        t2 = 2.0
        if disc > 0.0:
            sq = math.sqrt(disc)
            t1 = (-qb - sq) / qa
            t2 = (-qb + sq) / qa
        edge = 0.0
        px = ax
        py = ay
        for piece in range(3):
            if piece == 2:
                qx = bx
                qy = by
            else:
                t = t1 if piece == 0 else t2
                if not 0.0 < t < 1.0:
                    continue
                qx = ax + t * dx
                qy = ay + t * dy
            cr = px * qy - py * qx
            mx = 0.5 * (px + qx)
            my = 0.5 * (py + qy)
            if mx * mx + my * my <= rr:
                edge += 0.5 * cr
            else:
                edge += 0.5 * rr * math.atan2(cr, px * qx + py * qy)
            px = qx
            py = qy
        total += edge
    return total


@njit(**_JIT)
def _radial_extent(xs, ys, n):  # pragma: no cover
    """Smallest and largest distance from the origin to a CCW convex polygon."""
    rmax = 0.0
    inside = True
    for i in range(n):
        j = i + 1 if i + 1 < n else 0
        q = xs[i] * xs[i] + ys[i] * ys[i]
        if q > rmax:
            rmax = q
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
        t = t if t > 0.0 else 0.0
        t = t if t < 1.0 else 1.0
        px = xs[i] + t * dx
        py = ys[i] + t * dy
        q = px * px + py * py
        if q < rmin:
            rmin = q
    return math.sqrt(rmin), math.sqrt(rmax)


@njit(**_JIT)
def _split(cu, cw, corner_u, corner_w, pixels, redges, aedges, clip, start, count, out_bin,
           out_pix, out_w, work):  # noqa: C901 # pragma: no cover
    """:func:`split_pixels` from pixel ``pixels[start]`` on, appending at ``count``.

    Every buffer comes from the caller (an ``np.empty`` in here compiles numba's
    allocation code): ``work`` is (6 * _MAXV + 2 * aedges.size,) float64 scratch. Returns
    the count of entries and the position of the first pixel not done: ``pixels.size``, or
    one whose entries might not fit in the output arrays (none of its entries is kept; the
    caller grows the arrays and calls again from it). Helpers, ``min`` and ``max`` are
    written out where they were cheap to: each is a compilation of its own.
    """
    npt_azim = aedges.size - 1
    # Integer arguments of the helpers as int64 variables, never literals: a literal
    # argument compiles a helper once more for its literal type.
    four = np.int64(4)
    a0 = aedges[0]
    da = (aedges[npt_azim] - a0) / npt_azim
    px = work[0:_MAXV]
    py = work[_MAXV:2 * _MAXV]
    qx = work[2 * _MAXV:3 * _MAXV]
    qy = work[3 * _MAXV:4 * _MAXV]
    sx = work[4 * _MAXV:5 * _MAXV]
    sy = work[5 * _MAXV:6 * _MAXV]
    dcos = work[6 * _MAXV:6 * _MAXV + aedges.size]
    dsin = work[6 * _MAXV + aedges.size:6 * _MAXV + 2 * aedges.size]
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
    need = 2 * (redges.size + 1)
    npt = redges.size - 1
    r0 = redges[0]
    dr = (redges[npt] - r0) / npt
    for m in range(start, pixels.size):
        first = count  # this pixel's entries start here
        p = pixels[m]
        for i in range(4):
            px[i] = cu[p] + corner_u[i]
            py[i] = cw[p] + corner_w[i]
        rlo, rhi = _radial_extent(px, py, four)
        if rhi <= redges[0] or rlo >= redges[redges.size - 1]:
            continue
        # Candidate azimuthal bins: all of them if the pixel holds the origin (or with one
        # bin over the full circle), else those overlapping the pixel's angular extent
        # (less than pi). (Conditional expressions, not min and max: each of those is a
        # compilation of its own.)
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
                dmin = d if d < dmin else dmin
                dmax = d if d > dmax else dmax
            lo = ca + dmin - 1e-9
            hi = ca + dmax + 1e-9
            shift = lo - a0
            lo = a0 + (shift - two_pi * math.floor(shift / two_pi))
            hi = lo + (dmax - dmin) + 2e-9
            j_lo1 = math.floor((lo - a0) / da)
            jh = math.floor((hi - a0) / da)
            j_hi1 = jh if jh < j_hi1 else j_hi1
            jh = j_lo1 - 1
            j_hi2 = jh if jh < npt_azim - 1 else npt_azim - 1
            jh = math.floor((hi - two_pi - a0) / da)
            j_hi2 = jh if jh < j_hi2 else j_hi2
        for jj in range(2):
            if jj == 0:
                ja = j_lo1 if j_lo1 > 0 else 0
                jb = j_hi1
            else:
                ja = j_lo2
                jb = j_hi2
            for j in range(ja, jb + 1):
                if count + need > out_w.size:
                    return first, m
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
                    # The radial-bin weights of the polygon (sx, sy)[:n] (written out here:
                    # a helper is one more compilation).
                    if n < 3:
                        continue
                    if clip is None:  # the whole pixel
                        slo, shi = rlo, rhi
                    else:
                        slo, shi = _radial_extent(sx, sy, n)
                    if shi <= r0 or slo >= redges[npt]:
                        continue
                    k0 = math.floor((slo - r0) / dr) - 1
                    k0 = k0 if k0 > 0 else 0
                    k1 = math.floor((shi - r0) / dr) + 1
                    k1 = k1 if k1 < npt - 1 else npt - 1
                    # Its area, by the shoelace formula about the first vertex, not the
                    # origin: far from the centre the terms about the origin are (radius /
                    # pixel size) times larger than the area and cancel.
                    full = 0.0
                    for i in range(1, n - 1):
                        full += (sx[i] - sx[0]) * (sy[i + 1] - sy[0]) - (sy[i] - sy[0]) * (
                            sx[i + 1] - sx[0])
                    full *= 0.5
                    # Area below each edge from k0 to k1 + 1, in one call site of the helper.
                    below = 0.0
                    for k in range(k0 - 1, k1 + 1):
                        e = redges[k + 1]
                        upto = 0.0 if e <= slo else (
                            full if e >= shi else _area_in_disk(sx, sy, n, e))
                        w = (upto - below) * inv_area
                        below = upto
                        if k >= k0 and w > 1e-13:
                            out_bin[count] = k * npt_azim + j
                            out_pix[count] = p
                            out_w[count] = w
                            count += 1
    return count, pixels.size


def split_pixels(cu, cw, corner_u, corner_w, pixels, redges, aedges, clip):
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
        Overlap area divided by the pixel area (``sum = 1`` for a pixel wholly in range),
        pixel by pixel in the order of ``pixels``.
    """
    size = max(16, 8 * pixels.size)
    out = (np.empty(size, np.int64), np.empty(size, np.int64), np.empty(size, np.float64))
    work = np.empty(6 * _MAXV + 2 * aedges.size)
    count, done = 0, 0
    while True:
        count, done = _split(cu, cw, corner_u, corner_w, pixels, redges, aedges, clip, done,
                             count, *out, work)
        if done == pixels.size:
            return tuple(a[:count] for a in out)
        # Out of room before pixel `done`: grow (the entries so far kept) and go on.
        size = 2 * size + 2 * (redges.size + 1)
        grown = tuple(np.empty(size, a.dtype) for a in out)
        for a, b in zip(out, grown, strict=True):
            b[:count] = a[:count]
        out = grown
