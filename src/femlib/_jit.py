"""numba's ``njit`` with an on-disk cache when numba can write one. Private.

femlib's kernels are compiled once and cached on disk (``cache=True``). numba decides where
at decoration time: ``NUMBA_CACHE_DIR``, a ``__pycache__`` beside the source, or the user's
cache folder, whichever it can write. On a read-only install without a writable home (a
container, a cluster worker) it finds none and ``numba.njit(cache=True)`` raises
``RuntimeError: cannot cache function ...: no locator available``. :func:`njit` then
compiles without a cache, in memory (every new process compiles again on first use), and
says so once per process.
"""

import warnings

import numba

_state = {"noted": False}


def _note_uncached(reason):
    if _state["noted"]:
        return
    _state["noted"] = True
    warnings.warn(
        "numba cannot write its cache here (" + str(reason).split(" for file")[0] + "): "
        "femlib's kernels are compiled in memory, again in every new process (a few "
        "seconds on first use). Set NUMBA_CACHE_DIR to a writable folder to cache them.",
        UserWarning,
        stacklevel=3,
    )


def njit(**options):
    """``numba.njit(**options)``; with ``cache=True``, falls back to no cache (and a one-time
    warning) when numba has nowhere to write one.

    Parameters
    ----------
    **options
        numba's ``njit`` options.

    Returns
    -------
    callable
        The decorator.

    Examples
    --------
    >>> @njit(nogil=True)
    ... def twice(x):
    ...     return 2 * x
    >>> twice(21)
    42
    """

    def decorate(func):
        try:
            return numba.njit(**options)(func)
        except RuntimeError as err:
            if not options.get("cache") or "no locator" not in str(err):
                raise
            _note_uncached(err)
            return numba.njit(**{**options, "cache": False})(func)

    return decorate
