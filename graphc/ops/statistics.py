"""Statistics composed from reductions: var, std, argmax, argmin."""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc.errors import GraphError, user_location
from graphc.ir import Value, is_float
from graphc.ops.cumsum import cumsum
from graphc.ops.elementwise import equal, sqrt, square, where
from graphc.ops.reduce import count, max, mean, min, sum
from graphc.ops.registry import describe_operands, normalize_axes
from graphc.ops.views import broadcast_like, reshape, squeeze

_NO_HIT = np.iinfo(np.int64).max


def var(x: Value, axis: Any = None, keepdims: bool = False, ddof: int = 0) -> Value:
    """Variance over `axis`: sum((x - mean)^2) / (n - ddof). numpy's default ddof=0 (the
    population variance); PyTorch's `var` defaults to the unbiased ddof=1."""
    if not is_float(x.dtype):
        raise GraphError(f"var needs a floating-point value, got {x.dtype}; cast first\n"
                         f"  operands: {describe_operands([x])}\n  at {user_location()}")
    normalize_axes(axis, x.ndim, "var", [x])
    centred = x - mean(x, axis=axis, keepdims=True)
    return sum(square(centred), axis=axis, keepdims=keepdims) / (count(x, axis) - ddof)


def std(x: Value, axis: Any = None, keepdims: bool = False, ddof: int = 0) -> Value:
    """Standard deviation, sqrt(var(x, axis, keepdims, ddof)); numpy's default ddof=0,
    PyTorch's `std` defaults to ddof=1."""
    return sqrt(var(x, axis=axis, keepdims=keepdims, ddof=ddof))


def argmax(x: Value, axis: int | None = None, keepdims: bool = False) -> Value:
    """Index (int64) of the first maximum along `axis` (None: of the flattened value); a NaN
    counts as the maximum, like numpy. Integer result: no gradient."""
    return _first_extreme(x, axis, keepdims, max, "argmax")


def argmin(x: Value, axis: int | None = None, keepdims: bool = False) -> Value:
    """Index (int64) of the first minimum along `axis`; a NaN counts as the minimum."""
    return _first_extreme(x, axis, keepdims, min, "argmin")


def _first_extreme(x: Value, axis: int | None, keepdims: bool, extreme: Any,
                   name: str) -> Value:
    if isinstance(axis, (tuple, list)):
        raise GraphError(f"{name}: axis must be an int or None, got {axis!r}\n"
                         f"  at {user_location()}")
    flat = x.reshape((-1,)) if axis is None else x
    (ax,) = normalize_axes(0 if axis is None else axis, flat.ndim, name, [x])
    best = extreme(flat, axis=ax, keepdims=True)
    hit = equal(flat, best)
    if is_float(flat.dtype):  # the extreme is NaN exactly when some entry is: those win
        hit = where(equal(flat, flat), hit, True)
    found = min(where(hit, _positions(flat, ax), _NO_HIT), axis=ax, keepdims=True)
    if axis is None:
        return reshape(found, (1,) * x.ndim) if keepdims else reshape(found, ())
    return found if keepdims else squeeze(found, ax)


def _positions(x: Value, axis: int) -> Value:
    """0, 1, 2, ... along `axis` (int64), broadcastable against x."""
    n = x.shape[axis]
    if n is not None:
        shape = [1] * x.ndim
        shape[axis] = n
        return x.graph.const(np.arange(n, dtype=np.int64).reshape(shape))
    ones = broadcast_like(x.graph.const(1, dtype="int64"), x)
    return cumsum(ones, axis=axis) - 1
