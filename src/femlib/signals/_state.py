"""Calibration state that follows the signal through HyperSpy's reshaping operations.

Two kinds of metadata are tied to the shape of a :class:`FEMDiffraction2D`:

* the **detector mask** (``metadata.General.mask``): one boolean per detector pixel;
* **navigation-shaped items**: any numpy array, or HyperSpy signal, stored under
  ``metadata`` (outside ``General``, ``Signal``, ``_HyperSpy`` and ``Markers``) whose
  shape is the navigation shape, e.g. ``metadata.HAADF.intensity``: one value per probe
  position; or the navigation shape + ``(2,)``, e.g. the per-position centres of a descan
  (``metadata.Descan.center``): one (x, y) per probe position, each component carried
  like a navigation-shaped item.

HyperSpy deep-copies the metadata into the result of ``isig``/``inav``, ``split``,
``crop``, ``rebin``, ``transpose``, ``swap_axes`` and ``rollaxis`` but does not reshape
it. Every one of those operations is described here by one ``_Plan`` (which old array
dimension and which old indices make up each new index), and ``_State.carry`` applies it to the
stored state: a new detector pixel is masked if any pixel it covers is; a navigation
item is indexed like the data, and averaged over the positions a rebinned position
covers (so that a HAADF calibration -- black level and slope per position -- still
applies). An item whose dimensions no longer match the space it belongs to (e.g. the
mask after ``s.T``, whose detector became the navigation) is dropped with a warning.
"""

import math
import warnings

import numpy as np
from hyperspy.misc.utils import DictionaryTreeBrowser
from hyperspy.signal import BaseSignal

__all__ = ["CalibrationStateMixin", "take_positions"]

_MASK_PATHS = ("General.mask",)
_NOT_NAVIGATION = ("General", "Signal", "_HyperSpy", "Markers")


class _Plan:
    """How the array dimensions of a result are made of those of its source.

    ``kept`` lists, for every array dimension of the result in order, ``(old_dim, lo,
    hi)``: new index ``i`` along it covers the old indices ``lo[i]:hi[i]``. ``fixed`` maps
    old dimensions that were indexed away to the index taken.
    """

    def __init__(self, kept, fixed=None):
        self.kept = kept
        self.fixed = dict(fixed or {})

    @classmethod
    def identity(cls, shape, dims=None):
        dims = range(len(shape)) if dims is None else dims
        return [(d, np.arange(shape[d]), np.arange(shape[d]) + 1) for d in dims]


def _reduce(arr, axis, lo, hi, how):
    if np.all(hi - lo == 1):
        return np.take(arr, lo, axis=axis)
    parts = []
    for a, b in zip(lo, hi, strict=True):
        block = np.take(arr, np.arange(a, b), axis=axis)
        parts.append(block.any(axis=axis) if how == "any" else block.mean(axis=axis))
    return np.stack(parts, axis=axis)


def _remap(arr, dims, plan, how):
    """Apply ``plan`` to ``arr`` whose axes are the old array dimensions ``dims``.

    Returns the new array and the result's array dimensions its axes now are.
    """
    dims = list(dims)
    for ax in reversed(range(len(dims))):
        if dims[ax] in plan.fixed:
            arr = np.take(arr, plan.fixed[dims[ax]], axis=ax)
            del dims[ax]
    new_dims = []
    for new_dim, (old, lo, hi) in enumerate(plan.kept):
        if old in dims:
            arr = _reduce(arr, dims.index(old), lo, hi, how)
            new_dims.append((new_dim, dims.index(old)))
    if len(new_dims) != len(dims):  # an old dimension vanished without an index
        return None, None
    arr = np.transpose(arr, [ax for _, ax in new_dims]) if new_dims else np.asarray(arr)
    return arr, [nd for nd, _ in new_dims]


def _array_dims(signal, navigate):
    return sorted(ax.index_in_array for ax in signal.axes_manager._axes if ax.navigate == navigate)


def _values(x):
    data = getattr(x, "data", x)
    if hasattr(data, "compute"):
        data = data.compute()
    return np.asarray(data)


def _walk(node, prefix=""):
    for key in node.keys():
        value = node[key]
        path = f"{prefix}{key}"
        if isinstance(value, DictionaryTreeBrowser):
            yield from _walk(value, path + ".")
        else:
            yield path, value


class _State:
    """The shape-tied metadata of a signal, captured before an operation."""

    def __init__(self, signal):
        self.nav_dims = _array_dims(signal, True)
        self.sig_dims = _array_dims(signal, False)
        shape = signal.data.shape
        self.nav_shape = tuple(shape[d] for d in self.nav_dims)
        sig_shape = tuple(shape[d] for d in self.sig_dims)
        md = signal.metadata
        self.mask = None
        for path in _MASK_PATHS:
            value = md.get_item(path)
            if value is not None:
                m = _values(value)
                if m.shape == sig_shape:  # anything else is not ours to reshape
                    self.mask = (path, m.astype(bool))
                break
        self.items = []
        if not self.nav_dims:
            return
        for top in md.keys():
            if top in _NOT_NAVIGATION or not isinstance(md[top], DictionaryTreeBrowser):
                continue
            for path, value in _walk(md[top], top + "."):
                data = value.data if isinstance(value, BaseSignal) else value
                if isinstance(data, np.ndarray) or hasattr(data, "dask"):
                    if tuple(data.shape) in (self.nav_shape, self.nav_shape + (2,)):
                        self.items.append((path, value))

    def carry(self, result, plan, stacklevel=3):
        """Write this state, reshaped by ``plan``, into ``result``'s metadata."""
        new_nav = _array_dims(result, True)
        new_sig = _array_dims(result, False)
        md = result.metadata
        dropped = []
        if self.mask is not None:
            path, m = self.mask
            new, dims = _remap(m, self.sig_dims, plan, "any")
            _delete(md, _MASK_PATHS)
            if dims is not None and dims == new_sig and len(dims) == 2:
                md.set_item("General.mask", new)
            else:
                dropped.append(path)
        for path, value in self.items:
            data = _values(value)
            new, dims = _remap_item(data, self.nav_dims, self.nav_shape, plan)
            if dims is None or dims != new_nav:
                _delete(md, (path,))
                dropped.append(path)
                continue
            md.set_item(path, _like(value, new, result))
        if dropped:
            warnings.warn(
                "metadata item(s) no longer match the signal's shape after this operation "
                "and were removed: " + ", ".join(dropped),
                UserWarning,
                stacklevel=stacklevel + 1,
            )


def _remap_item(data, nav_dims, nav_shape, plan):
    """:func:`_remap` of a navigation item; an item of shape nav + (2,) (per-position
    (x, y) pairs) component by component."""
    how = "any" if data.dtype == bool else "mean"
    if data.shape == tuple(nav_shape):
        return _remap(data, nav_dims, plan, how)
    parts = [_remap(data[..., i], nav_dims, plan, how) for i in range(data.shape[-1])]
    if parts[0][1] is None:
        return None, None
    return np.stack([p[0] for p in parts], axis=-1), parts[0][1]


def _delete(md, paths):
    for path in paths:
        if md.has_item(path):
            *parents, leaf = path.split(".")
            node = md.get_item(".".join(parents)) if parents else md
            node.__delattr__(leaf)


def _like(original, data, result):
    """``data`` in the form of ``original``: an ndarray, or a signal whose axes are the
    navigation axes of ``result``."""
    if not isinstance(original, BaseSignal):
        return data
    axes = [
        dict(ax.get_axis_dictionary(), navigate=False)
        for ax in result.axes_manager._axes
        if ax.navigate
    ]
    if axes and np.ndim(data) != len(axes):  # e.g. (x, y) pairs: kept as an array
        return data
    kwargs = {"axes": axes} if axes else {}
    new = BaseSignal(
        np.atleast_1d(data) if not axes else data,
        metadata=original.metadata.as_dictionary(),
        **kwargs,
    )
    new._assign_subclass()
    return new


def take_positions(source, result, positions):
    """Give ``result`` the navigation-shaped metadata of ``source`` at ``positions``.

    Parameters
    ----------
    source : FEMDiffraction2D
        The signal whose ``metadata`` holds navigation-shaped items.
    result : FEMDiffraction2D
        A signal with a single navigation axis holding ``source``'s probe positions
        ``positions`` (flat indices in array order), e.g. one part of
        :meth:`FEMDiffraction2D.split_by_thickness`.
    positions : 1D array of int
    """
    state = _State(source)
    n = int(np.prod(state.nav_shape))
    for path, value in state.items:
        data = _values(value)
        data = data.reshape((n,) + data.shape[len(state.nav_shape):])
        data = data[np.asarray(positions, dtype=np.int64)]
        result.metadata.set_item(path, _like(value, data, result))


def _slice_plan(shape, array_slices):
    kept, fixed = [], {}
    for d, sl in enumerate(array_slices):
        if isinstance(sl, (int, np.integer)):
            fixed[d] = int(sl) % shape[d]
        else:
            idx = np.arange(shape[d])[sl]
            kept.append((d, idx, idx + 1))
    for d in range(len(array_slices), len(shape)):
        kept.append((d, np.arange(shape[d]), np.arange(shape[d]) + 1))
    return _Plan(kept, fixed)


def _bin_plan(old_shape, new_shape, factors):
    kept = []
    for d, (n, m, f) in enumerate(zip(old_shape, new_shape, factors, strict=True)):
        f = float(f)
        lo = np.array([min(int(math.floor(i * f + 1e-9)), n - 1) for i in range(m)])
        hi = np.array(
            [max(lo[i] + 1, min(n, int(math.ceil((i + 1) * f - 1e-9)))) for i in range(m)]
        )
        kept.append((d, lo, hi))
    return _Plan(kept)


def _order_plan(shape, order):
    return _Plan(_Plan.identity(shape, order))


def _probe_order(signal, method, *args, **kwargs):
    """The array order that ``method`` (a permutation of axes) gives, found by running
    HyperSpy's own method on a tiny stand-in whose dimensions have distinct sizes."""
    axes = [
        dict(ax.get_axis_dictionary(), size=i + 2) for i, ax in enumerate(signal.axes_manager._axes)
    ]
    for a in axes:
        a.pop("axis", None)  # non-uniform axes: keep only the name and flags
        if "offset" not in a:
            a.update(offset=0.0, scale=1.0)
            a.pop("_type", None)
    stand_in = BaseSignal(np.zeros([a["size"] for a in axes], dtype=np.int8), axes=axes)
    out = getattr(BaseSignal, method)(stand_in, *args, **kwargs)
    return [s - 2 for s in out.data.shape]


class CalibrationStateMixin:
    """Makes the detector mask and the navigation-shaped metadata follow ``isig``/``inav``,
    ``split``, ``crop``/``crop_signal``, ``rebin``, ``transpose`` (and ``T``,
    ``as_signal2D``), ``swap_axes`` and ``rollaxis``."""

    def _slicer(self, slices, isNavigation=None, out=None):
        array_slices = self._get_array_slices(slices, isNavigation)
        state = _State(self)
        plan = _slice_plan(self.data.shape, array_slices)
        result = super()._slicer(slices, isNavigation, out)
        target = result if out is None else out
        if isinstance(target, BaseSignal):
            state.carry(target, plan, stacklevel=4)  # user -> isig/inav -> _slicer
        return result

    def crop(self, axis, start=None, end=None, convert_units=False):
        ax = self.axes_manager[axis]
        i1, i2 = ax._get_index(start), ax._get_index(end)
        d = ax.index_in_array
        state = _State(self)
        shape = self.data.shape
        super().crop(axis, start=start, end=end, convert_units=convert_units)
        idx = np.arange(shape[d])[i1:i2]
        sizes = [idx.size if k == d else n for k, n in enumerate(shape)]
        kept, fixed = [], {}
        squeezed = self.data.ndim < len(shape)
        for k, n in enumerate(sizes):
            lo = idx if k == d else np.arange(n)
            if squeezed and n == 1:
                fixed[k] = int(lo[0])
            else:
                kept.append((k, lo, lo + 1))
        state.carry(self, _Plan(kept, fixed), stacklevel=4)  # also via crop_signal

    def rebin(self, new_shape=None, scale=None, crop=True, dtype=None, out=None, **kwargs):
        factors = self._validate_rebin_args_and_get_factors(new_shape=new_shape, scale=scale)
        state = _State(self)
        shape = self.data.shape
        result = super().rebin(
            new_shape=new_shape, scale=scale, crop=crop, dtype=dtype, out=out, **kwargs
        )
        target = out if out is not None else result
        state.carry(target, _bin_plan(shape, target.data.shape, factors))
        return result

    def split(self, axis="auto", number_of_parts="auto", step_sizes="auto"):
        # The axis HyperSpy splits along, resolved as BaseSignal.split resolves it.
        am = self.axes_manager
        if axis != "auto":
            d = am[axis].index_in_array
        elif self.metadata.has_item("_HyperSpy.Stacking_history"):
            d = am[self.metadata._HyperSpy.Stacking_history.axis].index_in_array
        else:
            d = am[-1 + 1j].index_in_array
        state = _State(self)
        shape = self.data.shape
        parts = super().split(axis=axis, number_of_parts=number_of_parts, step_sizes=step_sizes)
        start = 0
        for part in parts:
            removed = part.data.ndim < len(shape)
            size = 1 if removed else part.data.shape[d]
            if removed:
                plan = _Plan(_Plan.identity(shape, [k for k in range(len(shape)) if k != d]),
                             {d: start})
            else:
                idx = np.arange(start, start + size)
                kept = _Plan.identity(shape)
                kept[d] = (d, idx, idx + 1)
                plan = _Plan(kept)
            state.carry(part, plan)
            start += size
        return parts

    def transpose(self, signal_axes=None, navigation_axes=None, optimize=False):
        order = _probe_order(self, "transpose", signal_axes, navigation_axes)
        state = _State(self)
        result = super().transpose(
            signal_axes=signal_axes, navigation_axes=navigation_axes, optimize=optimize
        )
        state.carry(result, _order_plan(self.data.shape, order))
        return result

    def swap_axes(self, axis1, axis2, optimize=False):
        order = _probe_order(self, "swap_axes", axis1, axis2)
        state = _State(self)
        result = super().swap_axes(axis1, axis2, optimize=optimize)
        state.carry(result, _order_plan(self.data.shape, order))
        return result

    def rollaxis(self, axis, to_axis, optimize=False):
        order = _probe_order(self, "rollaxis", axis, to_axis)
        state = _State(self)
        result = super().rollaxis(axis, to_axis, optimize=optimize)
        state.carry(result, _order_plan(self.data.shape, order))
        return result
