"""User-defined primitives: `gc.custom_op` declares one (through `defop`, like every built-in
op) from user code and returns the function that applies it.

    softplus = gc.custom_op(
        "user_softplus",
        ref=lambda x: np.logaddexp(x, x.dtype.type(0)),          # numpy: the interpreter
        scalar="(max({0}, {T}(0)) + _log({T}(1) + _exp(-abs({0}))))",  # fused Numba body
        vjp=lambda g, out, x: g * gc.sigmoid(x),                  # graph ops: gc.grad works
    )
    y = softplus(x)

`scalar` is the elementwise body inlined into fused loops: `{0}`, `{1}`... are the operands
(scalars of the operand dtype), `{T}` the output dtype's constructor (`np.float32`), and
`_exp _expm1 _log _log1p _sin _cos _tanh _sigmoid _sqrt _erf` the per-dtype math functions
of kernels/cpu/scalar.py;
attributes passed to the op appear as `{name}`. Without `scalar`, give `kernel=
"module:function"`: a Numba function the compiled step calls as fn(*operands, out,
*attrs named in `kernel_attrs`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from graphc.errors import GraphError, user_location
from graphc.ir import Node, Value
from graphc.ops.registry import OPS, InferError, OpDef, broadcast_shapes, defop, lift, make

_CUSTOM: set[str] = set()


def custom_op(name: str, ref: Callable[..., Any], *, vjp: Callable[..., Any] | None = None,
              scalar: str | None = None, shape: Callable[..., Sequence[int | None]] | None = None,
              dtype: str | Callable[..., str] | None = None, kernel: str | None = None,
              kernel_attrs: Sequence[str] = (), arity: int | None = None
              ) -> Callable[..., Value]:
    """Declare the primitive `name` and return `apply(*operands, **attrs) -> Value`.

    ref(*arrays, **attrs): the numpy definition (the interpreter and the test oracle).
    vjp(g, out, *operands, **attrs): the gradient of each operand given the output gradient
        `g` (built with graph ops; None where an operand gets none). Without it the op has
        no gradient.
    scalar: the fusable elementwise body (see the module doc); or kernel="module:function".
    shape(*operand_shapes, **attrs): the output shape (default: operands broadcast).
    dtype: the output dtype, a function of the operand dtypes (default: the first's).
    Declaring a name again replaces the earlier custom op (built-in names are refused).
    """
    if name in OPS and name not in _CUSTOM:
        raise GraphError(f"custom_op: {name!r} is a built-in op; choose another name\n"
                         f"  at {user_location()}")
    if (scalar is None) == (kernel is None):
        raise GraphError(f"custom_op {name!r}: give exactly one of scalar= (a fusable "
                         f"elementwise body) or kernel= ('module:function')\n"
                         f"  at {user_location()}")

    def out_dtype(dtypes: list[str]) -> str:
        if dtype is None:
            return dtypes[0]
        return dtype(*dtypes) if callable(dtype) else str(dtype)

    def infer(nodes: list[Node], **attrs: Any) -> tuple:
        if arity is not None and len(nodes) != arity:
            raise InferError(f"takes {arity} operands, got {len(nodes)}")
        if shape is None:
            dims = broadcast_shapes(*(n.shape for n in nodes))
        else:
            try:
                dims = tuple(shape(*(n.shape for n in nodes), **attrs))
            except (ValueError, TypeError) as err:
                raise InferError(str(err)) from None
        return dims, out_dtype([n.dtype for n in nodes])

    def reference(*arrays: np.ndarray, **attrs: Any) -> np.ndarray:
        result = np.asarray(ref(*arrays, **attrs))
        return result.astype(out_dtype([a.dtype.name for a in arrays]), copy=False)

    def rule(g: Value, out: Value, inputs: list[Value], needs: tuple, **attrs: Any) -> tuple:
        grads = vjp(g, out, *inputs, **attrs)  # type: ignore[misc]
        if isinstance(grads, Value) or grads is None:
            grads = (grads,)
        grads = tuple(grads)
        if len(grads) != len(inputs):
            raise GraphError(f"custom_op {name!r}: vjp returned {len(grads)} gradients for "
                             f"{len(inputs)} operands")
        return grads

    OPS.pop(name, None)
    op: OpDef = defop(name, "elementwise" if scalar is not None else "call", infer, reference,
                      vjp=rule if vjp is not None else None, scalar=scalar, arity=arity,
                      kernel=kernel, kernel_attrs=tuple(kernel_attrs))
    _CUSTOM.add(name)

    def apply(*operands: Any, **attrs: Any) -> Value:
        like = next((v for v in operands if isinstance(v, Value)), None)
        if like is None:
            raise GraphError(f"{name}: needs at least one graphc Value operand\n"
                             f"  at {user_location()}")
        return make(name, [lift(v, like, name) for v in operands], **attrs)

    apply.__name__ = name
    apply.__doc__ = f"The custom op {name!r} (declared with gc.custom_op)."
    apply.op = op  # type: ignore[attr-defined]
    return apply


__all__ = ["custom_op"]
