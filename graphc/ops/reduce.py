"""Reductions (sum, max, min) and the composite mean."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from graphc.ir import Node, Value, is_float
from graphc.ops.registry import InferError, defop, describe_operands, make, normalize_axes


def _reduced_shape(shape: tuple, axes: tuple, keepdims: bool) -> tuple:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _sum_infer(nodes: list[Node], axes: tuple, keepdims: bool) -> tuple:
    x = nodes[0]
    dtype = x.dtype if is_float(x.dtype) else "int64"
    return _reduced_shape(x.shape, axes, keepdims), dtype


def _extreme_infer(nodes: list[Node], axes: tuple, keepdims: bool) -> tuple:
    x = nodes[0]
    if any(x.shape[a] == 0 for a in axes):
        raise InferError("cannot take the max/min over an empty axis")
    return _reduced_shape(x.shape, axes, keepdims), x.dtype


def _sum_ref(x: np.ndarray, axes: tuple, keepdims: bool) -> np.ndarray:
    dtype = x.dtype if x.dtype.kind == "f" else np.int64
    return np.asarray(np.sum(x, axis=axes, keepdims=keepdims, dtype=dtype))


def _max_ref(x: np.ndarray, axes: tuple, keepdims: bool) -> np.ndarray:
    return np.asarray(np.max(x, axis=axes, keepdims=keepdims))


def _min_ref(x: np.ndarray, axes: tuple, keepdims: bool) -> np.ndarray:
    return np.asarray(np.min(x, axis=axes, keepdims=keepdims))


def _keepdims(g: Value, axes: tuple, keepdims: bool) -> Value:
    from graphc.ops.views import expand_dims

    return g if keepdims or not axes else expand_dims(g, axes)


def _sum_vjp(g: Value, out: Value, x: list[Value], needs: tuple, axes: tuple,
             keepdims: bool) -> tuple:
    from graphc.ops.views import broadcast_like

    return (broadcast_like(_keepdims(g, axes, keepdims), x[0]),)


def _extreme_vjp(g: Value, out: Value, x: list[Value], needs: tuple, axes: tuple,
                 keepdims: bool) -> tuple:
    """Ties share the gradient equally (the subgradient PyTorch's amax/amin use)."""
    from graphc.ops.elementwise import cast, equal, where
    from graphc.ops.views import broadcast_like

    hit = equal(x[0], broadcast_like(_keepdims(out, axes, keepdims), x[0]))
    count = sum(cast(hit, x[0].dtype), axis=axes, keepdims=True)
    share = broadcast_like(_keepdims(g, axes, keepdims) / count, x[0])
    return (where(hit, share, x[0].graph.const(0, dtype=x[0].dtype)),)


def _too_few(size: int, at_least: int, what: str) -> str:
    return (f"{what or 'count'}: expected at least {at_least} values along the counted axes, "
            f"got {size}")


def _dim_size_infer(nodes: list[Node], axes: tuple, dtype: str, at_least: int = 0,
                    what: str = "") -> tuple:
    dims = [nodes[0].shape[a] for a in axes]
    if at_least and None not in dims and math.prod(dims) < at_least:
        raise InferError(_too_few(math.prod(dims), at_least, what))
    return (), dtype


def _dim_size_ref(x: np.ndarray, axes: tuple, dtype: str, at_least: int = 0,
                  what: str = "") -> np.ndarray:
    size = math.prod(x.shape[a] for a in axes)
    if size < at_least:
        raise InferError(_too_few(size, at_least, what))
    return np.asarray(size, dtype=dtype)


defop("sum", "reduce", _sum_infer, _sum_ref, vjp=_sum_vjp, arity=1)
defop("max", "reduce", _extreme_infer, _max_ref, vjp=_extreme_vjp, arity=1)
defop("min", "reduce", _extreme_infer, _min_ref, vjp=_extreme_vjp, arity=1)
defop("dim_size", "shape", _dim_size_infer, _dim_size_ref, arity=1)


def sum(x: Value, axis: Any = None, keepdims: bool = False) -> Value:
    """Sum over `axis` (None = all, int or tuple); ints and bools sum to int64."""
    axes = normalize_axes(axis, x.ndim, "sum", [x])
    return make("sum", [x], axes=axes, keepdims=bool(keepdims))


def max(x: Value, axis: Any = None, keepdims: bool = False) -> Value:
    """Maximum over `axis`; tied maxima share the gradient."""
    axes = normalize_axes(axis, x.ndim, "max", [x])
    return make("max", [x], axes=axes, keepdims=bool(keepdims))


def min(x: Value, axis: Any = None, keepdims: bool = False) -> Value:
    """Minimum over `axis`; tied minima share the gradient."""
    axes = normalize_axes(axis, x.ndim, "min", [x])
    return make("min", [x], axes=axes, keepdims=bool(keepdims))


def count(x: Value, axis: Any = None, dtype: str | None = None, *, at_least: int = 0,
          what: str = "") -> Value:
    """Number of elements of `x` along `axis`, as a scalar (run-time sizes included).

    A count below `at_least` is an error naming `what`: when the graph is built for fixed
    sizes, else when a call is fed such sizes (before anything runs)."""
    axes = normalize_axes(axis, x.ndim, "count", [x])
    dt = dtype or x.dtype
    dims = [x.shape[a] for a in axes]
    if all(d is not None for d in dims):
        if math.prod(dims) < at_least:
            from graphc.errors import GraphError, user_location

            raise GraphError(f"{_too_few(math.prod(dims), at_least, what)} (shape "
                             f"{x.shape})\n  at {user_location()}")
        return x.graph.const(math.prod(dims), dtype=dt)
    if at_least:
        return make("dim_size", [x], axes=axes, dtype=dt, at_least=int(at_least), what=what)
    return make("dim_size", [x], axes=axes, dtype=dt)


def mean(x: Value, axis: Any = None, keepdims: bool = False) -> Value:
    """Arithmetic mean over `axis` (floating point)."""
    if not is_float(x.dtype):
        from graphc.errors import GraphError, user_location

        raise GraphError(f"mean needs a floating-point value, got {x.dtype}; cast first\n"
                         f"  operands: {describe_operands([x])}\n  at {user_location()}")
    normalize_axes(axis, x.ndim, "mean", [x])
    return sum(x, axis=axis, keepdims=keepdims) / count(x, axis)
