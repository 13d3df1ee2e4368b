"""numpy's pairwise summation as a compiled function, for kernels whose sums must equal
``ndarray.sum`` along a row to the last bit. Private.

numpy adds up to 8 values one by one, up to 128 in eight interleaved accumulators, and
splits longer runs in two halves (the first a multiple of 8). Recursion would keep numba
from caching the kernels that call it, so the halves are walked with an explicit stack.
"""

import numpy as np

_FUNCS = []
_block = None  # the compiled sum of <= 128 values, set by pairwise_sum


def pairwise_sum():
    """The compiled ``pairwise_sum(x, lo, n)``: the sum of ``x[lo : lo + n]`` (built on
    first use).

    Returns
    -------
    numba dispatcher

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal(1000)
    >>> bool(pairwise_sum()(x, 3, 990) == x[3:993].sum())
    True
    """
    if _FUNCS:
        return _FUNCS[0]
    from femlib._jit import njit

    global _block  # a module global, not a closure variable: numba caches its callers

    @njit(cache=True, nogil=True)
    def block(x, lo, n):  # pragma: no cover - compiled
        if n < 8:
            s = 0.0
            for i in range(n):
                s += x[lo + i]
            return s
        r0, r1, r2, r3 = x[lo], x[lo + 1], x[lo + 2], x[lo + 3]
        r4, r5, r6, r7 = x[lo + 4], x[lo + 5], x[lo + 6], x[lo + 7]
        i = 8
        while i < n - n % 8:
            r0 += x[lo + i]
            r1 += x[lo + i + 1]
            r2 += x[lo + i + 2]
            r3 += x[lo + i + 3]
            r4 += x[lo + i + 4]
            r5 += x[lo + i + 5]
            r6 += x[lo + i + 6]
            r7 += x[lo + i + 7]
            i += 8
        s = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            s += x[lo + i]
            i += 1
        return s

    _block = block

    @njit(cache=True, nogil=True)
    def pairwise(x, lo, n):  # pragma: no cover - compiled
        if n <= 128:
            return _block(x, lo, n)
        # (start, length, halves done) of the open ranges, and the sums waiting to be added
        start = np.empty(64, np.int64)
        length = np.empty(64, np.int64)
        stage = np.empty(64, np.int64)
        sums = np.empty(64)
        top, held = 0, 0
        start[0], length[0], stage[0] = lo, n, 0
        top = 1
        while top > 0:
            a, m, k = start[top - 1], length[top - 1], stage[top - 1]
            if m <= 128:
                top -= 1
                sums[held] = _block(x, a, m)
                held += 1
                continue
            half = m // 2
            half -= half % 8
            if k < 2:
                stage[top - 1] = k + 1
                start[top] = a if k == 0 else a + half
                length[top] = half if k == 0 else m - half
                stage[top] = 0
                top += 1
            else:
                top -= 1
                held -= 1
                sums[held - 1] = sums[held - 1] + sums[held]
        return sums[0]

    _FUNCS.append(pairwise)
    return pairwise
