"""Matrix products (run by BLAS when compiled)."""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc.errors import GraphError, user_location
from graphc.ir import Node, Value, format_shape, is_float
from graphc.ops.registry import (
    InferError,
    broadcast_shapes,
    defop,
    describe_operands,
    lift_pair,
    make,
)


def _matmul_infer(nodes: list[Node]) -> tuple:
    a, b = nodes
    if a.dtype != b.dtype:
        raise InferError(f"operand dtypes differ ({a.dtype} vs {b.dtype}); convert one with "
                         "gc.cast")
    if not is_float(a.dtype):
        raise InferError(f"needs floating-point operands, got {a.dtype}")
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise InferError("needs operands with at least 2 dimensions")
    k1, k2 = a.shape[-1], b.shape[-2]
    if k1 is not None and k2 is not None and k1 != k2:
        raise InferError(f"cannot multiply {format_shape(a.shape)} by {format_shape(b.shape)}: "
                         f"inner dimensions {k1} and {k2} differ")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return batch + (a.shape[-2], b.shape[-1]), a.dtype


def _swap_last(x: Value) -> Value:
    from graphc.ops.views import transpose

    perm = tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2)
    return transpose(x, perm)


def _matmul_vjp(g: Value, out: Value, x: list[Value], needs: tuple) -> tuple:
    a, b = x
    return (matmul(g, _swap_last(b)) if needs[0] else None,
            matmul(_swap_last(a), g) if needs[1] else None)


defop("matmul", "matmul", _matmul_infer, np.matmul, vjp=_matmul_vjp, arity=2)


def matmul(a: Any, b: Any) -> Value:
    """Matrix product of the last two axes, broadcasting leading (batch) axes. Like numpy,
    a 1-D `a` is a row vector and a 1-D `b` a column vector, whose axis is then dropped
    from the result (1-D @ 1-D is the inner product, a scalar)."""
    from graphc.ops.views import expand_dims, squeeze

    a, b = lift_pair(a, b, "matmul")
    if a.ndim == 0 or b.ndim == 0:
        raise GraphError("matmul: operands must have at least 1 dimension, got shapes "
                         f"{format_shape(a.shape)} and {format_shape(b.shape)}; use * for "
                         f"scalars\n  operands: {describe_operands([a, b])}\n"
                         f"  at {user_location()}")
    row, column = a.ndim == 1, b.ndim == 1
    if not row and not column:
        return make("matmul", [a, b])
    k1, k2 = a.shape[-1], b.shape[0 if column else -2]
    if k1 is not None and k2 is not None and k1 != k2:
        raise GraphError(f"matmul: cannot multiply {format_shape(a.shape)} by "
                         f"{format_shape(b.shape)}: inner dimensions {k1} and {k2} differ\n"
                         f"  operands: {describe_operands([a, b])}\n  at {user_location()}")
    out = make("matmul", [expand_dims(a, 0) if row else a, expand_dims(b, -1) if column else b])
    dropped = ((-2,) if row else ()) + ((-1,) if column else ())
    return squeeze(out, tuple(out.ndim + d for d in dropped))
