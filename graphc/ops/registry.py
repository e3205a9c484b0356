"""`defop`: every primitive op is declared once, with its shape rule, numpy reference,
fusable scalar body and gradient rule side by side."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.errors import GraphError, user_location
from graphc.ir import Graph, Shape, Value, format_shape
from graphc.ops.capture import capture_operands

# Kinds tell the compiler how an op is scheduled:
#   elementwise  out[i] = f(broadcast inputs[i]); `scalar` gives f as a source template
#   reduce       reduction over `axes` (attrs: axes, keepdims)
#   matmul       batched matrix product, run by BLAS
#   view         data movement only (reshape, transpose, broadcast, slice, concat, ...)
#   index        gathers, scatters and running sums (take, take_grad, slice_grad, cumsum,
#                take_along_axis, take_along_axis_grad)
#   leaf         input, param, const
#   call         a hand-written library kernel (`kernel`, "module:function") the step calls
#                as fn(*operands, out, *attrs named in `kernel_attrs`, tuples flattened)
#   mode         mode_select: resolved to one operand at compile time (never code-generated)
#   scan         a loop over a sub-graph (graphc/ops/scan.py): `scan` runs it, its results
#                are read through `scan_out` nodes
KINDS = ("elementwise", "reduce", "matmul", "view", "index", "leaf", "shape", "call", "mode",
         "scan")


class InferError(Exception):
    """Raised by shape rules; `make` turns it into a GraphError with the user's line."""


@dataclass(frozen=True)
class OpDef:
    """Everything graphc knows about one primitive.

    infer(inputs: list[Node], **attrs) -> (shape, dtype)     raises InferError
    ref(*arrays, **attrs) -> ndarray                          the numpy oracle
    vjp(g, out, inputs, needs, **attrs) -> gradients          built from public ops; None =
                                                              no gradient for that input
    scalar: source template of the elementwise body: {0}, {1}... are operands, {T} the output
            dtype constructor (e.g. np.float32), {T0} the first operand's; `_exp`, `_expm1`,
            `_log`, `_log1p`, `_sin`, `_cos`, `_tanh`, `_sigmoid`, `_sqrt`, `_erf` name math
            functions the code generators bind per dtype (graphc/codegen/common.py MATH);
            {_flat} is the element's flat (row-major) index in the loop (counter-based RNGs).
    kernel: "module:function" of the hand-written kernel a "call" op runs (kernels/cpu),
            kernel_attrs the attrs passed after the output buffer.
    batch: how a "call" op splits over a batch on axis 0 of its operands (graphc/passes/
           sharding.py): "rows" (output row r reads only operand rows r: conv2d, pooling),
           "sum" (the output sums over the rows: conv2d_grad_weight), None (cannot split).
    """

    name: str
    kind: str
    infer: Callable[..., tuple[Shape, str]]
    ref: Callable[..., Any]
    vjp: Callable[..., Sequence[Value | None]] | None = None
    scalar: str | None = None
    arity: int | None = None
    kernel: str | None = None
    kernel_attrs: tuple[str, ...] = ()
    batch: str | None = None


OPS: dict[str, OpDef] = {}


def defop(name: str, kind: str, infer: Callable[..., tuple[Shape, str]], ref: Callable[..., Any],
          vjp: Callable[..., Sequence[Value | None]] | None = None, scalar: str | None = None,
          arity: int | None = None, kernel: str | None = None,
          kernel_attrs: tuple[str, ...] = (), batch: str | None = None) -> OpDef:
    """Declare and register a primitive op (`kernel`: the CPU library function of a "call"
    op, as "module:function")."""
    if name in OPS:
        raise ValueError(f"op {name!r} is declared twice")
    if kind not in KINDS:
        raise ValueError(f"op {name!r}: unknown kind {kind!r}")
    if kind == "elementwise" and scalar is None:
        raise ValueError(f"elementwise op {name!r} needs a scalar template")
    if kind == "call" and (kernel is None or ":" not in kernel):
        raise ValueError(f"call op {name!r} needs a kernel named 'module:function'")
    if batch not in (None, "rows", "sum"):
        raise ValueError(f"op {name!r}: batch must be 'rows', 'sum' or None, got {batch!r}")
    op = OpDef(name, kind, infer, ref, vjp, scalar, arity, kernel, tuple(kernel_attrs), batch)
    OPS[name] = op
    return op


def describe_operands(values: Sequence[Value]) -> str:
    return ", ".join(f"{format_shape(v.shape)} {v.dtype}" for v in values)


def make(op_name: str, inputs: Sequence[Value], **attrs: Any) -> Value:
    """Build a node of primitive `op_name`; shape errors name the op, operands and user line."""
    op = OPS[op_name]
    inputs = capture_operands(op_name, inputs)
    graph = _graph_of(op_name, inputs)
    if op.arity is not None and len(inputs) != op.arity:
        raise GraphError(f"{op_name} takes {op.arity} operands, got {len(inputs)}")
    nodes = [v.node for v in inputs]
    try:
        shape, dtype = op.infer(nodes, **attrs)
    except InferError as err:
        raise GraphError(f"{op_name}: {err}\n  operands: {describe_operands(inputs)}\n"
                         f"  at {user_location()}") from None
    node = graph.add_node(op_name, [v.id for v in inputs], attrs, shape, dtype)
    return Value(graph, node.id)


def _graph_of(op_name: str, inputs: Sequence[Value]) -> Graph:
    graphs = {id(v.graph): v.graph for v in inputs if isinstance(v, Value)}
    if len(graphs) != 1 or not all(isinstance(v, Value) for v in inputs):
        if len(graphs) > 1:
            raise GraphError(f"{op_name}: operands come from different graphs\n"
                             f"  at {user_location()}")
        raise GraphError(f"{op_name}: needs at least one graphc Value operand\n"
                         f"  at {user_location()}")
    return next(iter(graphs.values()))


def lift(x: Any, like: Value, op_name: str) -> Value:
    """`x` as a Value of `like`'s graph: Python/numpy scalars and arrays become constants of
    `like`'s dtype, so a float literal never promotes a float32 graph to float64."""
    if isinstance(x, Value):
        return x
    if isinstance(x, (bool, np.bool_)):
        return like.graph.const(x, dtype="bool" if like.dtype == "bool" else like.dtype)
    array = np.asarray(x)
    if array.dtype.kind not in "biuf":
        raise GraphError(f"{op_name}: cannot use {type(x).__name__} {x!r} as an operand\n"
                         f"  at {user_location()}")
    if array.dtype.kind == "f" and like.dtype not in ("float32", "float64"):
        if not np.all(np.mod(array, 1) == 0):
            raise GraphError(f"{op_name}: cannot combine a {like.dtype} value with the float "
                             f"constant {x!r}; cast the value first (gc.cast)\n"
                             f"  at {user_location()}")
    return like.graph.const(array, dtype=like.dtype)


def lift_pair(a: Any, b: Any, op_name: str) -> tuple[Value, Value]:
    if isinstance(a, Value):
        return a, lift(b, a, op_name)
    if isinstance(b, Value):
        return lift(a, b, op_name), b
    raise GraphError(f"{op_name}: needs at least one graphc Value operand\n  at {user_location()}")


# -- shape helpers shared by op declarations ---------------------------------------------

def broadcast_shapes(*shapes: Shape) -> Shape:
    """numpy broadcasting where `None` (run-time size) matches anything but a mismatch."""
    ndim = max((len(s) for s in shapes), default=0)
    out: list[int | None] = []
    for axis in range(ndim):
        dims = [s[axis - ndim + len(s)] for s in shapes if axis - ndim + len(s) >= 0]
        known = {d for d in dims if d is not None and d != 1}
        if len(known) > 1:
            raise InferError("shapes " + " and ".join(format_shape(s) for s in shapes)
                             + " cannot be broadcast together")
        if known:
            out.append(known.pop())
        elif any(d is None for d in dims):
            out.append(None)
        else:
            out.append(1)
    return tuple(out)


def normalize_axes(axis: Any, ndim: int, op: str | None = None,
                   operands: Sequence[Value] = ()) -> tuple[int, ...]:
    """Axis argument (None, int or tuple) as a sorted tuple of non-negative axes.

    `op` and `operands` (when given) name the op and its operands in the error message.
    """
    prefix = f"{op}: " if op else ""
    context = f"\n  operands: {describe_operands(operands)}" if operands else ""
    if axis is None:
        return tuple(range(ndim))
    items = axis if isinstance(axis, (tuple, list)) else (axis,)
    axes = []
    for a in items:
        if not isinstance(a, (int, np.integer)) or not -ndim <= a < ndim:
            raise GraphError(f"{prefix}axis {a!r} is out of range for a value with {ndim} "
                             f"dimensions{context}\n  at {user_location()}")
        axes.append(int(a) % ndim)
    if len(set(axes)) != len(axes):
        raise GraphError(f"{prefix}repeated axis in {axis!r}{context}\n  at {user_location()}")
    return tuple(sorted(axes))
