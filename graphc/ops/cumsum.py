"""Running sums: the `cumsum` primitive (one sequential pass per line of the axis)."""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc.ir import Node, Value, is_float
from graphc.ops.registry import InferError, defop, make, normalize_axes


def _cumsum_infer(nodes: list[Node], axis: int) -> tuple:
    x = nodes[0]
    if not is_float(x.dtype) and x.dtype != "int64":
        raise InferError(f"runs on float or int64 values, got {x.dtype}")
    return x.shape, x.dtype


def _cumsum_ref(x: np.ndarray, axis: int) -> np.ndarray:
    return np.cumsum(x, axis=axis, dtype=x.dtype)


def flip(x: Value, axis: int) -> Value:
    """x reversed along `axis` (a view)."""
    index = [slice(None)] * x.ndim
    index[axis] = slice(None, None, -1)
    return x[tuple(index)]


def _cumsum_vjp(g: Value, out: Value, x: list[Value], needs: tuple, axis: int) -> tuple:
    """d out[j] / d x[i] = 1 for i <= j: the gradient is the reverse running sum."""
    return (flip(make("cumsum", [flip(g, axis)], axis=axis), axis),)


defop("cumsum", "index", _cumsum_infer, _cumsum_ref, vjp=_cumsum_vjp, arity=1)


def cumsum(x: Value, axis: Any = None) -> Value:
    """Running sum along `axis` (numpy's cumsum: None sums the flattened value; ints and
    bools sum in int64). Summed in order, like numpy, so results match it bit for bit."""
    from graphc.ops.elementwise import cast

    if axis is None:
        x, axis = x.reshape((-1,)), 0
    (ax,) = normalize_axes(axis, x.ndim, "cumsum", [x])
    if not is_float(x.dtype):
        x = cast(x, "int64")
    return make("cumsum", [x], axis=ax)
