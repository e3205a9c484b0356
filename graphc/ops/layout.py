"""Constants and layout composites: arange, tril, triu, pad."""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc.errors import GraphError, user_location
from graphc.ir import Graph, Value, format_shape
from graphc.ops.elementwise import where
from graphc.ops.registry import describe_operands
from graphc.ops.views import broadcast_like, broadcast_to, concat, take

PAD_MODES = ("constant", "edge", "reflect", "symmetric", "wrap")


def arange(graph_or_like: Graph | Value, start: float, stop: float | None = None,
           step: float = 1, dtype: Any = None) -> Value:
    """numpy's arange as a constant of a graph (given, or the graph of a Value given):
    `arange(g, 5)` is 0..4, `arange(g, 2, 8, 3)` is 2, 5. Ints give int64; floats the
    graph's float dtype (numpy would give float64), unless `dtype` says."""
    graph = graph_or_like.graph if isinstance(graph_or_like, Value) else graph_or_like
    if not isinstance(graph, Graph):
        raise GraphError(f"arange: needs a Graph or a Value to make the constant in, got "
                         f"{type(graph_or_like).__name__}\n  at {user_location()}")
    try:
        values = np.arange(start, stop, step) if stop is not None else np.arange(start)
    except (TypeError, ValueError, ZeroDivisionError) as err:
        raise GraphError(f"arange: {err}\n  at {user_location()}") from None
    return graph.const(values, dtype=dtype)


def tril(x: Value, k: int = 0) -> Value:
    """x with the entries above the k-th diagonal of its last two axes set to 0 (a 1-D x
    is broadcast to a square matrix first, like numpy)."""
    return _triangle(x, k, "tril", lambda n, m: np.tri(n, m, k, dtype=bool))


def triu(x: Value, k: int = 0) -> Value:
    """x with the entries below the k-th diagonal of its last two axes set to 0."""
    return _triangle(x, k, "triu", lambda n, m: ~np.tri(n, m, k - 1, dtype=bool))


def _triangle(x: Value, k: int, name: str, mask: Any) -> Value:
    if x.ndim == 0:
        raise GraphError(f"{name} needs a value with at least 1 dimension\n"
                         f"  operands: {describe_operands([x])}\n  at {user_location()}")
    n, m = (x.shape[-1], x.shape[-1]) if x.ndim == 1 else x.shape[-2:]
    if n is None or m is None:
        raise GraphError(f"{name}: the last two axes of {format_shape(x.shape)} need sizes "
                         f"known when the graph is built\n  at {user_location()}")
    zero = False if x.dtype == "bool" else 0
    return where(x.graph.const(mask(n, m)), x, zero)


def pad(x: Value, pad_width: Any, mode: str = "constant", constant_values: Any = 0) -> Value:
    """numpy's pad: `pad_width` is an int, (before, after), or one (before, after) per axis;
    modes "constant" (`constant_values` likewise per axis), "edge", "reflect", "symmetric"
    and "wrap". The gradient takes the original entries back (summing over the copies the
    non-constant modes make)."""
    if mode not in PAD_MODES:
        raise GraphError(f"pad: mode {mode!r} is not supported; use one of "
                         f"{', '.join(PAD_MODES)}\n  at {user_location()}")
    widths = _per_axis(pad_width, x.ndim, "pad_width", integer=True)
    values = _per_axis(constant_values, x.ndim, "constant_values", integer=False)
    out = x
    for axis, (before, after) in enumerate(widths):
        if before == 0 and after == 0:
            continue
        n = out.shape[axis]
        if n is None:
            raise GraphError(f"pad: axis {axis} of {format_shape(x.shape)} has a run-time "
                             f"size; only axes of known size can be padded\n"
                             f"  at {user_location()}")
        if mode == "constant":
            parts = [_block(out, axis, before, values[axis][0]), out,
                     _block(out, axis, after, values[axis][1])]
            out = concat([p for p in parts if p is not None], axis=axis)
        else:
            if n == 0:
                raise GraphError(f"pad: cannot pad the empty axis {axis} in mode {mode!r}\n"
                                 f"  at {user_location()}")
            source = np.pad(np.arange(n), (before, after), mode=mode)
            out = take(out, source, axis=axis)
    return out


def _per_axis(spec: Any, ndim: int, what: str, integer: bool) -> list[tuple]:
    """numpy's (before, after) forms, broadcast to one pair per axis."""
    array = np.asarray(spec)
    try:
        pairs = np.broadcast_to(array, (ndim, 2))
    except ValueError:
        raise GraphError(f"pad: {what} {spec!r} is not an int, a (before, after) pair or one "
                         f"pair per axis of a {ndim}-D value\n  at {user_location()}") from None
    if integer:
        if array.dtype.kind not in "iu" or np.any(pairs < 0):
            raise GraphError(f"pad: {what} must be non-negative integers, got {spec!r}\n"
                             f"  at {user_location()}")
        return [(int(b), int(a)) for b, a in pairs]
    if array.dtype.kind not in "biuf":
        raise GraphError(f"pad: {what} must be numbers, got {spec!r}\n  at {user_location()}")
    return [(b.item(), a.item()) for b, a in pairs]


def _block(x: Value, axis: int, width: int, value: Any) -> Value | None:
    """A block of `value`, shaped like x but `width` long on `axis` (None if width is 0)."""
    if width == 0:
        return None
    fill = x.graph.const(value, dtype=x.dtype)
    shape = list(x.shape)
    shape[axis] = width
    if None not in shape:
        return broadcast_to(fill, tuple(shape))
    if x.shape[axis] == 0:
        raise GraphError("pad: constant padding of an empty axis next to axes of run-time "
                         f"size is not supported\n  at {user_location()}")
    first = tuple(slice(0, 1) if k == axis else slice(None) for k in range(x.ndim))
    row = broadcast_like(fill, x[first])  # one entry on the axis, run-time sizes elsewhere
    return take(row, np.zeros(width, dtype=np.int64), axis=axis)
