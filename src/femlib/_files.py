"""Reading the files of a ``femlib fem`` run: the dataset (any RosettaSciIO reader, its
4D-STEM signal, missing chunks of a zarr store) and the arrays options name (mask, HAADF,
flat field). Public through :mod:`femlib.workflow`."""

import contextlib
import dataclasses
import warnings
from pathlib import Path

import numpy as np

from femlib._errors import UsageError  # noqa: F401 - raised here, public in workflow


def _readable_extensions():
    from rsciio import IO_PLUGINS

    return {ext.lower() for plugin in IO_PLUGINS for ext in plugin["file_extensions"]}


def _reader_names():
    from rsciio import IO_PLUGINS

    return sorted({plugin["name"] for plugin in IO_PLUGINS}, key=str.lower)


def check_reader(name):
    """The RosettaSciIO reader called ``name`` (any case), as RosettaSciIO spells it.

    Raises
    ------
    UsageError
        No reader has that name; the message lists the names.

    Examples
    --------
    >>> check_reader("arina")
    'Arina'
    """
    names = _reader_names()
    found = [n for n in names if n.lower() == str(name).lower()]
    if not found:
        raise UsageError(f"--reader {name}: no such reader; choose from {', '.join(names)}")
    return found[0]


@contextlib.contextmanager
def _silenced_loggers(*names):
    """Keep HyperSpy's and RosettaSciIO's log lines off the terminal while reading a file:
    a read failure is reported in one line of its own."""
    import logging

    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _reason(exc):
    # Some readers leave an unformatted "%r" in their messages.
    text = " ".join(str(exc).replace(": %r", "").replace("%r", "").split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _hs_load(path, reader, lazy):
    import inspect

    import hyperspy.api as hs

    kwargs = {}
    if reader is not None:
        # HyperSpy 2.4 renamed reader= to file_format=.
        key = "file_format" if "file_format" in inspect.signature(hs.load).parameters else (
            "reader")
        kwargs[key] = reader
    with _silenced_loggers("hyperspy", "rsciio"), warnings.catch_warnings(), \
            _quiet_streams():
        warnings.simplefilter("ignore")
        return hs.load(str(path), lazy=lazy, **kwargs)


@contextlib.contextmanager
def _quiet_streams():
    """Some readers print progress bars (Topspin: tqdm on stderr) or notes: the CLI's
    stdout is the summary's and its stderr one line per event."""
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def _describe(sig):
    am = sig.axes_manager
    nav = [ax.size for ax in am.navigation_axes]
    det = [ax.size for ax in am.signal_axes]
    shape = f"({', '.join(map(str, nav))}|{', '.join(map(str, det))})"
    title = sig.metadata.General.title
    return f"{shape} {type(sig).__name__}" + (f" '{title}'" if title else "")


def _is_4dstem(sig):
    am = sig.axes_manager
    return am.signal_dimension == 2 and am.navigation_dimension >= 1


def load(path, reader=None, signal=None):
    """Load a 4D-STEM file as a (lazy where the reader can) ``FEMDiffraction2D``.

    Parameters
    ----------
    path : str or pathlib.Path
        Any file RosettaSciIO reads.
    reader : str or None
        The reader's name (``"arina"``, ``"topspin"``, ...) where the extension is
        ambiguous.
    signal : int or None
        Which signal of a file that holds several; default: the only 4D-STEM one.

    Returns
    -------
    FEMDiffraction2D or LazyFEMDiffraction2D

    Raises
    ------
    UsageError
        The file cannot be read, holds no (or several) 4D-STEM signals, holds non-real
        data, or is a zarr store with missing chunks (:func:`missing_chunks`).

    Examples
    --------
    >>> import tempfile, pathlib, femlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "scan.zspy"
    >>> femlib.data.synthetic_fem(navigation_shape=(4, 4), detector_shape=(32, 32)).save(path)
    >>> load(path).data.shape
    (4, 4, 32, 32)
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".")
    name = check_reader(reader) if reader is not None else None
    try:
        try:
            s = _hs_load(path, name, lazy=True)
        except NotImplementedError:  # readers without lazy loading (Arina)
            s = _hs_load(path, name, lazy=False)
    except Exception as exc:  # noqa: BLE001 - any reader failure is unreadable input here
        hint = ""
        if "multiple file readers" in str(exc).lower() or "reader" in str(exc).lower():
            hint = "; name the reader with --reader NAME"
        raise UsageError(f"cannot read {path}: not a readable {fmt} file ({_reason(exc)})"
                         f"{hint}") from None
    signals = s if isinstance(s, list) else [s]
    # A reader that gives the 4D data as signal axes only (Arina: (|192, 192, 4, 4)).
    signals = [x.transpose(signal_axes=2) if x.axes_manager.navigation_dimension == 0
               and x.axes_manager.signal_dimension >= 3 else x for x in signals]
    listing = "; ".join(f"[{i}] {_describe(x)}" for i, x in enumerate(signals))
    if signal is not None:
        if signal >= len(signals):
            raise UsageError(f"--signal {signal}: {path} holds {len(signals)} signal(s): "
                             f"{listing}")
        s = signals[signal]
        if not _is_4dstem(s):
            raise UsageError(f"--signal {signal} of {path} is {_describe(s)}, not a 4D-STEM "
                             f"stack (probe positions x 2D patterns); the file holds: "
                             f"{listing}")
    else:
        found = [x for x in signals if _is_4dstem(x)]
        if len(found) > 1:
            raise UsageError(f"{path} holds {len(found)} 4D-STEM signals; choose one with "
                             f"--signal INDEX: {listing}")
        if not found:
            s = signals[0]
            nav, sig = s.axes_manager.navigation_dimension, s.axes_manager.signal_dimension
            held = (f"a {nav}+{sig}D signal" if len(signals) == 1
                    else f"no 4D-STEM signal ({listing})")
            raise UsageError(
                f"{path} holds {held}; a 4D-STEM stack (probe positions x 2D patterns) "
                "is needed"
            )
        s = found[0]
    dtype = s.data.dtype
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise UsageError(f"{path} holds {dtype} data; real-valued intensities are needed")
    if path.suffix.lower() == ".zspy" or path.is_dir():
        found = missing_chunks(path, shape=s.data.shape)
        if found is not None and found.n_missing:
            raise UsageError(f"{path} is incomplete: {found.describe()}; zarr would read "
                             "them as zero patterns: copy the store again")
    nav = s.axes_manager.navigation_dimension
    try:  # a truncated or corrupt file often loads lazily and fails on the first read
        np.asarray(s.data[(0,) * nav])
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"cannot read the patterns in {path} ({_reason(exc)})") from None
    s.set_signal_type("fem_diffraction")
    return s


@dataclasses.dataclass
class MissingChunks:
    """The chunks missing from a zarr store and the probe positions they hold.

    Attributes
    ----------
    n_missing, n_chunks : int
        Missing chunks and chunks of the full grid.
    positions : ndarray of bool
        Navigation-shaped (array order): True where a pattern lies in a missing chunk.
    keys : list of str
        The missing chunk keys (up to 20).
    """

    n_missing: int
    n_chunks: int
    positions: np.ndarray
    keys: list

    def describe(self):
        """One line: the count of chunks and of positions, and where the positions are.

        Examples
        --------
        >>> m = MissingChunks(1, 4, np.pad(np.ones((2, 2), bool), ((0, 2), (2, 0))), ["0.1"])
        >>> m.describe()
        '1 of 4 chunks of the data are missing, holding 4 of 16 probe positions (x 2-3, y 0-1)'
        """
        pos = self.positions
        n_pos = int(pos.sum())
        where = []
        names = ["x", "y"] if pos.ndim == 2 else ["index"] if pos.ndim == 1 else [
            f"axis {i}" for i in range(pos.ndim)]
        # Navigation axes in HyperSpy order: x is the last array axis.
        for name, axis in zip(names, range(pos.ndim - 1, -1, -1), strict=True):
            hit = np.flatnonzero(pos.any(axis=tuple(a for a in range(pos.ndim) if a != axis)))
            if hit.size:
                where.append(f"{name} {hit[0]}-{hit[-1]}" if hit.size > 1 else f"{name} "
                             f"{hit[0]}")
        return (f"{self.n_missing} of {self.n_chunks} chunks of the data are missing, "
                f"holding {n_pos} of {pos.size} probe positions ({', '.join(where)})")


def _zarr_arrays(group):
    import zarr

    out = []
    for _, item in group.items():
        if isinstance(item, zarr.Array):
            out.append(item)
        else:
            out.extend(_zarr_arrays(item))
    return out


def missing_chunks(path, shape=None):
    """Compare a zarr store's chunk files with its chunk grid (zarr reads missing chunks as
    zeros, which would be counted as patterns).

    Parameters
    ----------
    path : str or pathlib.Path
        A ``.zspy`` (or other zarr directory) store.
    shape : tuple of int or None
        The data's shape, to pick the array among the store's (default: the largest
        array with 3 or more dimensions).

    Returns
    -------
    MissingChunks or None
        None when the store is not zarr or holds no such array. The first
        ``len(shape) - 2`` axes are the navigation axes.

    Examples
    --------
    >>> import tempfile, pathlib, femlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "scan.zspy"
    >>> s = femlib.data.synthetic_fem(navigation_shape=(4, 4), detector_shape=(32, 32))
    >>> s.save(path, chunks=(2, 2, 32, 32))
    >>> missing_chunks(path).n_missing
    0
    """
    import zarr

    try:
        root = zarr.open(str(path), mode="r")
    except Exception:  # noqa: BLE001 - not a zarr store: nothing to say here
        return None
    arrays = [root] if isinstance(root, zarr.Array) else _zarr_arrays(root)
    if shape is not None:
        arrays = [a for a in arrays if tuple(a.shape) == tuple(shape)]
    else:
        arrays = [a for a in arrays if a.ndim >= 3]
    if not arrays:
        return None
    arr = max(arrays, key=lambda a: int(np.prod(a.shape)))
    try:
        return _missing_in(arr)
    except AttributeError:  # a zarr without the v2 store API: cannot tell
        return None


def _missing_in(arr):
    n_chunks = int(np.prod(arr.cdata_shape))
    nav = arr.ndim - 2
    positions = np.zeros(arr.shape[:nav], bool)
    if arr.nchunks_initialized >= n_chunks:
        return MissingChunks(0, n_chunks, positions, [])
    keys = []
    n_missing = 0
    for index in np.ndindex(*arr.cdata_shape):
        key = arr._chunk_key(index)
        if key in arr.chunk_store:
            continue
        n_missing += 1
        if len(keys) < 20:
            keys.append(key)
        box = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index[:nav], arr.chunks[:nav],
                                                               strict=True))
        positions[box] = True
    return MissingChunks(n_missing, n_chunks, positions, keys)


def _read_array(value, option):
    """An array from a .npy, .tif or HyperSpy file (or an array given in Python)."""
    if not isinstance(value, str | Path):
        return np.asarray(getattr(value, "data", value))
    path = Path(value)
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        sig = _hs_load(path, None, lazy=False)
        if isinstance(sig, list):
            sig = sig[0]
        return np.asarray(sig.data)
    except Exception as exc:  # noqa: BLE001 - any reader failure is unreadable input here
        raise UsageError(f"cannot read {option} {path} ({_reason(exc)})") from None


def _name(value):
    return str(value) if isinstance(value, str | Path) else "(an array)"


def _read_frames(name, option, detector_shape, series):
    """The frames of a flat-field or dark file (numpy memory map or dask array), checked
    before any work: readable, real numbers, frames of the detector's shape."""
    path = Path(name)
    try:
        if path.suffix.lower() == ".npy":
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            sig = _hs_load(path, None, lazy=True)
            if isinstance(sig, list):
                sig = next((x for x in sig if x.axes_manager.signal_dimension == 2), sig[0])
            data = sig.data
    except Exception as exc:  # noqa: BLE001 - any reader failure is unreadable input here
        raise UsageError(f"cannot read {option} {path} ({_reason(exc)})") from None
    dtype = np.dtype(data.dtype)
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise UsageError(f"{option} {path} holds {dtype} data; real-valued frames are needed")
    shape = tuple(int(n) for n in data.shape)
    needed = "(frames, rows, cols)" if series else "(rows, cols) or (frames, rows, cols)"
    if len(shape) < (3 if series else 2):
        raise UsageError(f"{option} {path} has shape {shape}; a series {needed} is needed"
                         if series else f"{option} {path} has shape {shape}; {needed} is needed")
    if shape[-2:] != tuple(detector_shape):
        raise UsageError(
            f"{option} {path} has frames of {shape[-2]} x {shape[-1]} px but the detector is "
            f"{detector_shape[0]} x {detector_shape[1]} px"
        )
    n_frames = int(np.prod(shape[:-2]))
    if series and n_frames < 2:
        raise UsageError(f"{option} {path} holds {n_frames} frame; the noise kernel needs "
                         "at least 2 (tens to hundreds give the gain to 1 %)")
    return data
