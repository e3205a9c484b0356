"""`scan`: a loop over the leading axis of its sequences, with JAX's `lax.scan` semantics.

    final_carry, ys = gc.scan(fn, init, xs)     # fn(carry, x_t) -> (new_carry, y_t)

The body `fn` is traced once into a graph of its own (`ScanBody.graph`); the whole loop is
ONE node of the IR, `scan`, whose results are read through `scan_out` nodes: the final
carries, the stacked per-step outputs `ys`, and the carries each step started from, stacked
(the residuals the gradient reads; built only when a gradient asks for them). Values of the
enclosing graph that the body reads (a cell's weights) become operands of the scan node
(captures), so their gradients, summed over the steps, flow to them.

Gradient: the vjp of a scan is another scan, running the steps in reverse, whose body is the
vjp of the forward body. It stores the carries of every step (the residuals) and recomputes
the body's intermediate values from them in each backward step, so the memory kept between
forward and backward is T carries, not T copies of every intermediate. The backward scan's
carries are the carry cotangents and one gradient accumulator per captured value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.errors import GraphError, user_location
from graphc.ir import Graph, Node, Value, format_shape, is_float
from graphc.ops.capture import capture_into_innermost, tracing
from graphc.ops.reduce import sum as reduce_sum
from graphc.ops.registry import OPS, InferError, defop, make
from graphc.ops.views import zeros_like

FORBIDDEN_IN_BODY = ("param", "state")


@dataclass(frozen=True, eq=False)
class ScanBody:
    """The traced body of a scan: `graph` and the ids of its inputs and outputs.

    Inputs: `carries` (the carry at the start of a step), `xs` (step t of each sequence) and
    `captures` (values of the enclosing graph, the same at every step). Outputs
    (`graph.outputs`): the new carries, then the per-step outputs `ys`. `reverse`: the steps
    run from the last to the first (ys stay aligned with xs).
    """

    graph: Graph
    carries: tuple[int, ...]
    xs: tuple[int, ...]
    captures: tuple[int, ...]
    reverse: bool

    @property
    def n_carry(self) -> int:
        return len(self.carries)

    @property
    def n_ys(self) -> int:
        return len(self.graph.outputs) - len(self.carries)

    @property
    def outputs(self) -> list[Node]:
        return [self.graph.nodes[i] for i in self.graph.outputs]

    def __repr__(self) -> str:
        return (f"ScanBody({len(self.carries)} carries, {len(self.xs)} xs, "
                f"{len(self.captures)} captures, {self.n_ys} ys, "
                f"{len(self.graph.nodes)} nodes{', reverse' if self.reverse else ''})")

    def input_names(self) -> list[str]:
        return [self.graph.nodes[i].name for i in self.carries + self.xs + self.captures]

    def result_count(self) -> int:
        """Results of the scan node: final carries, ys, stacked start-of-step carries."""
        return 2 * self.n_carry + self.n_ys


# -- the ops ----------------------------------------------------------------------------

def body_structure(body: ScanBody) -> str:
    """A digest of the body's graph (ops, operands, shapes, dtypes, attributes, constants)
    and of how the scan reads it: the scan node keeps it as an attribute, so anything that
    compares nodes by attributes (a checkpoint's program fingerprint) tells two bodies apart."""
    digest = hashlib.sha256()

    def text(value: Any) -> str:
        if isinstance(value, np.ndarray):
            return f"array{value.shape}{value.dtype}{hashlib.sha256(value.tobytes()).hexdigest()}"
        return "" if isinstance(value, ScanBody) else repr(value)   # nested: its structure

    for node in body.graph.nodes:
        attrs = sorted((k, text(v)) for k, v in node.attrs.items())
        digest.update(repr((node.op, node.inputs, node.shape, node.dtype, node.name, attrs))
                      .encode())
    digest.update(repr((body.graph.outputs, body.carries, body.xs, body.captures,
                        body.reverse)).encode())
    return digest.hexdigest()[:32]


def _scan_infer(nodes: list[Node], body: ScanBody, structure: str) -> tuple:
    expected = [body.graph.nodes[i] for i in body.carries + body.xs + body.captures]
    if len(nodes) != len(expected):
        raise InferError(f"internal: {len(nodes)} operands for a body of {len(expected)} inputs")
    return (), "bool"


def result_shapes(body: ScanBody, operand_shapes: Sequence[tuple]) -> list[tuple]:
    """Shapes of the scan's results given the shapes of its operands (run-time sizes filled
    in when the operands' are)."""
    from graphc.runtime import concrete_shapes

    nc, nx = body.n_carry, len(body.xs)
    length = operand_shapes[nc][0]
    feeds = {}
    for nid, shape in zip(body.carries + body.xs + body.captures,
                          list(operand_shapes[:nc]) + [s[1:] for s in operand_shapes[nc:nc + nx]]
                          + list(operand_shapes[nc + nx:])):
        feeds[body.graph.nodes[nid].name] = ShapeOnly(shape)
    shapes = concrete_shapes(body.graph, feeds)
    outs = [shapes[i] for i in body.graph.outputs]
    finals = list(operand_shapes[:nc])
    ys = [(length,) + tuple(s) for s in outs[nc:]]
    stacked = [(length,) + tuple(s) for s in operand_shapes[:nc]]
    return finals + ys + stacked


class ShapeOnly:
    """A stand-in feed with only a shape (concrete_shapes reads `.shape`)."""

    def __init__(self, shape: tuple) -> None:
        self.shape = tuple(shape)


def result_types(body: ScanBody, operands: Sequence[Node]) -> list[tuple[tuple, str]]:
    """(shape, dtype) of every result of a scan with `operands` (static shapes)."""
    shapes = result_shapes(body, [n.shape for n in operands])
    dtypes = [n.dtype for n in body.outputs] + \
        [body.graph.nodes[i].dtype for i in body.carries]
    dtypes = [operands[k].dtype for k in range(body.n_carry)] + dtypes[body.n_carry:]
    return list(zip(shapes, dtypes))


def run_scan(*arrays: np.ndarray, body: ScanBody, structure: str = ""
             ) -> tuple[np.ndarray, ...]:
    """The numpy reference: the body run step by step with the interpreter. Returns every
    result (final carries, stacked ys, stacked start-of-step carries)."""
    from graphc.interpret import run_nodes

    nc, nx = body.n_carry, len(body.xs)
    names = body.input_names()
    carries = [np.asarray(a) for a in arrays[:nc]]
    xs = arrays[nc:nc + nx]
    captures = arrays[nc + nx:]
    length = xs[0].shape[0]
    for x in xs:
        if x.shape[0] != length:
            raise ValueError(f"scan: sequences of different lengths {length} and {x.shape[0]}")
    shapes = result_shapes(body, [a.shape for a in arrays])
    dtypes = [n.dtype for n in body.outputs[nc:]]
    ys = [np.empty(s, dtype=d) for s, d in zip(shapes[nc:nc + body.n_ys], dtypes)]
    starts = [np.empty((length,) + c.shape, dtype=c.dtype) for c in carries]
    steps = range(length - 1, -1, -1) if body.reverse else range(length)
    for t in steps:
        for k, c in enumerate(carries):
            starts[k][t] = c
        feeds = dict(zip(names, carries + [x[t] for x in xs] + list(captures)))
        values = run_nodes(body.graph, list(body.graph.outputs), feeds)
        outs = [values[i] for i in body.graph.outputs]
        carries = outs[:nc]
        for y, out in zip(ys, outs[nc:]):
            y[t] = out
    return tuple(carries) + tuple(ys) + tuple(starts)


def _scan_out_infer(nodes: list[Node], index: int) -> tuple:
    raise InferError("internal: a scan_out's shape comes from its scan (result_types)")


def _scan_vjp(cotangents: dict[int, Value], out: Value, inputs: list[Value],
              needs: Sequence[bool], body: ScanBody, structure: str) -> list[Value | None]:
    """Gradients of a scan's operands from the cotangents of its results (by result index):
    a reverse scan over the vjp of the body (see the module docstring)."""
    return _backward_scan(cotangents, out, inputs, needs, body)


def _scan_out_vjp(g: Value, out: Value, inputs: list[Value], needs: Sequence[bool],
                  index: int) -> list[Value | None]:
    """A scan's results are differentiated together: autodiff gathers the cotangents of
    every scan_out of one scan and hands them to the scan's vjp (graphc/autodiff.py)."""
    raise GraphError("internal: scan_out cotangents are gathered by autodiff, not chained")


defop("scan", "scan", _scan_infer, run_scan, vjp=_scan_vjp)
defop("scan_out", "scan", _scan_out_infer, lambda results, index: results[index],
      vjp=_scan_out_vjp, arity=1)


def scan_results(node: Value) -> dict[int, Value]:
    """The scan_out nodes of scan `node` that exist, by result index."""
    graph = node.graph
    return {n.attrs["index"]: Value(graph, n.id) for n in graph.nodes[node.id + 1:]
            if n.op == "scan_out" and n.inputs == (node.id,)}


def scan_result(node: Value, index: int) -> Value:
    """Result `index` of scan `node` (its scan_out node, added if there is none yet)."""
    existing = scan_results(node).get(index)
    if existing is not None:
        return existing
    body: ScanBody = node.node.attrs["body"]
    operands = [node.graph.nodes[i] for i in node.node.inputs]
    shape, dtype = result_types(body, operands)[index]
    new = node.graph.add_node("scan_out", (node.id,), {"index": index}, shape, dtype)
    return Value(node.graph, new.id)


def _scan_node(body: ScanBody, operands: list[Value]) -> Value:
    return make("scan", operands, body=body, structure=body_structure(body))


# -- the user's function ------------------------------------------------------------------

def _as_list(values: Any, what: str) -> tuple[list[Any], bool]:
    if isinstance(values, Value):
        return [values], True
    if isinstance(values, (tuple, list)):
        return list(values), False
    raise GraphError(f"scan: {what} must be a Value or a tuple or list of Values, got "
                     f"{type(values).__name__}\n  at {user_location()}")


def scan(fn: Callable[[Any, Any], tuple[Any, Any]], init: Any, xs: Any, *,
         reverse: bool = False) -> tuple[Any, Any]:
    """Loop `fn(carry, x_t) -> (new_carry, y_t)` over axis 0 of `xs`; returns
    `(final_carry, ys)` with the y_t stacked on a new axis 0 (JAX's `lax.scan`).

    `init` and the carry are a Value or a tuple/list of Values (the body must return a carry
    of the same structure, shapes and dtypes); `xs` a Value or tuple/list of Values with
    equal leading sizes; `y_t` a Value, a tuple/list of Values or None. `reverse=True` runs
    the steps from the last to the first, ys staying aligned with xs. The body is traced
    once; values of the enclosing graph it reads become operands of the scan (gradients flow
    to them). Gradients store the carry of every step and recompute the body's intermediate
    values in the backward scan.
    """
    carries, carry_single = _as_list(init, "init")
    seqs, xs_single = _as_list(xs, "xs")
    values = carries + seqs
    if not seqs:
        raise GraphError(f"scan: xs must hold at least one sequence\n  at {user_location()}")
    for v in values:
        if not isinstance(v, Value):
            raise GraphError(f"scan: init and xs must be graphc Values, got "
                             f"{type(v).__name__}\n  at {user_location()}")
    outer = values[0].graph
    if any(v.graph is not outer for v in values):
        raise GraphError(f"scan: init and xs come from different graphs\n  at {user_location()}")
    length = None
    for x in seqs:
        if x.ndim == 0:
            raise GraphError(f"scan: a sequence in xs must have a leading axis to scan over, "
                             f"got shape ()\n  at {user_location()}")
        if x.shape[0] is not None:
            if length is not None and length != x.shape[0]:
                raise GraphError(f"scan: the sequences in xs have different lengths "
                                 f"({length} and {x.shape[0]})\n  at {user_location()}")
            length = x.shape[0]
    body = Graph(f"{outer.name}.scan", seed=outer.seed, dtype=outer.dtype)
    carry_in = [body.input(f"carry{k}", c.shape, c.dtype) for k, c in enumerate(carries)]
    x_in = [body.input(f"x{k}", x.shape[1:], x.dtype) for k, x in enumerate(seqs)]
    with tracing(body, outer) as trace:
        result = fn(carry_in[0] if carry_single else type(init)(carry_in),
                    x_in[0] if xs_single else type(xs)(x_in))
        new_carries, ys, ys_single = _check_result(result, carries, body)
    _check_body(body)
    body.outputs = [v.id for v in new_carries + ys]
    spec = ScanBody(body, tuple(v.id for v in carry_in), tuple(v.id for v in x_in),
                    tuple(v.id for v in trace.inputs), bool(reverse))
    node = _scan_node(spec, carries + seqs + trace.values)
    finals = [scan_result(node, k) for k in range(len(carries))]
    stacked = [scan_result(node, len(carries) + k) for k in range(len(ys))]
    final = finals[0] if carry_single else type(init)(finals)
    if ys_single is None:
        return final, None
    return final, stacked[0] if ys_single else type(result[1])(stacked)


def _check_result(result: Any, carries: list[Value], body: Graph
                  ) -> tuple[list[Value], list[Value], bool | None]:
    """The body's (new carries, ys, whether ys is one Value (None: no ys)), checked against
    the carry it was given."""
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise GraphError(f"scan: the body must return a pair (new_carry, y), got "
                         f"{type(result).__name__}\n  at {user_location()}")
    new, y = result
    new_list, _ = _as_list(new, "the body's new carry")
    if len(new_list) != len(carries):
        raise GraphError(f"scan: the body returns {len(new_list)} carries, init has "
                         f"{len(carries)}\n  at {user_location()}")

    def in_body(v: Any, what: str) -> Value:
        if not isinstance(v, Value):
            raise GraphError(f"scan: the body's {what} must be a graphc Value, got "
                             f"{type(v).__name__}\n  at {user_location()}")
        return capture_into_innermost(v, "scan") if v.graph is not body else v

    checked = []
    for k, (v, c) in enumerate(zip(new_list, carries)):
        v = in_body(v, f"carry {k}")
        if v.shape != c.shape or v.dtype != c.dtype:
            raise GraphError(f"scan: the body returns carry {k} as {format_shape(v.shape)} "
                             f"{v.dtype}, but init's carry {k} is {format_shape(c.shape)} "
                             f"{c.dtype}; the carry must keep its shape and dtype\n"
                             f"  at {user_location()}")
        checked.append(v)
    if y is None:
        return checked, [], None
    ys, single = _as_list(y, "the body's y")
    return checked, [in_body(v, f"y {k}") for k, v in enumerate(ys)], single


def _check_body(body: Graph) -> None:
    for node in body.nodes:
        if node.op in FORBIDDEN_IN_BODY:
            raise GraphError(f"scan: the body creates the {node.op} {node.name!r} (at "
                             f"{node.where}); create parameters and state outside the body "
                             f"and use them inside\n  at {user_location()}")
        if OPS.get(node.op) is not None and OPS[node.op].kind == "mode":
            raise GraphError(f"scan: the body uses a layer with training and inference views "
                             f"({node.op} at {node.where}), not supported inside a scan\n"
                             f"  at {user_location()}")


# -- the gradient -------------------------------------------------------------------------

def _backward_scan(cotangents: dict[int, Value], out: Value, inputs: list[Value],
                   needs: Sequence[bool], body: ScanBody) -> list[Value | None]:
    from graphc.autodiff import grad

    nc, nx, ny = body.n_carry, len(body.xs), body.n_ys
    init, seqs, caps = inputs[:nc], inputs[nc:nc + nx], inputs[nc + nx:]
    fwd = body.graph
    outs = [Value(fwd, i) for i in fwd.outputs]
    graph = body.graph.fork()
    graph.name = f"{fwd.name}.vjp"
    float_carries = [k for k in range(nc) if is_float(init[k].dtype)]
    wanted_xs = [j for j in range(nx) if needs[nc + j] and is_float(seqs[j].dtype)]
    wanted_caps = [j for j in range(len(caps)) if needs[nc + nx + j]
                   and is_float(caps[j].dtype)]
    gy_index = [j for j in range(ny) if nc + j in cotangents]
    gres_index = [k for k in float_carries if nc + ny + k in cotangents]

    def body_value(node_id: int) -> Value:
        return Value(graph, node_id)

    def fresh(prefix: str, like: Value) -> Value:
        return graph.input(graph.fresh_name(prefix), like.shape, like.dtype)

    cot = {k: fresh("cot_carry", init[k]) for k in float_carries}
    acc = {j: fresh("acc", caps[j]) for j in wanted_caps}
    gy = {j: fresh("cot_y", outs[nc + j]) for j in gy_index}
    gres = {k: fresh("cot_start", init[k]) for k in gres_index}
    terms = [reduce_sum(body_value(outs[k].id) * cot[k]) for k in float_carries]
    terms += [reduce_sum(body_value(outs[nc + j].id) * gy[j]) for j in gy_index
              if is_float(outs[nc + j].dtype)]
    total = terms[0] if terms else graph.const(0.0)
    for term in terms[1:]:
        total = total + term
    wrt = [body_value(body.carries[k]) for k in float_carries] + \
        [body_value(body.xs[j]) for j in wanted_xs] + \
        [body_value(body.captures[j]) for j in wanted_caps]
    grads = grad(total, wrt) if wrt else []
    g_carry = grads[:len(float_carries)]
    g_xs = grads[len(float_carries):len(float_carries) + len(wanted_xs)]
    g_caps = grads[len(float_carries) + len(wanted_xs):]
    new_cot = [g + gres[k] if k in gres else g for k, g in zip(float_carries, g_carry)]
    new_acc = [acc[j] + g for j, g in zip(wanted_caps, g_caps)]
    graph.outputs = [v.id for v in new_cot + new_acc + g_xs]
    spec = ScanBody(graph, tuple(cot[k].id for k in float_carries) +
                    tuple(acc[j].id for j in wanted_caps),
                    tuple(body.carries) + tuple(body.xs) + tuple(gy[j].id for j in gy_index) +
                    tuple(gres[k].id for k in gres_index),
                    tuple(body.captures), not body.reverse)

    starts = [scan_result(out, nc + ny + k) for k in range(nc)]
    operands = [cotangents[k] if k in cotangents else zeros_like(init[k])
                for k in float_carries]
    operands += [zeros_like(caps[j]) for j in wanted_caps]
    operands += starts + list(seqs) + [cotangents[nc + j] for j in gy_index]
    operands += [cotangents[nc + ny + k] for k in gres_index]
    operands += list(caps)
    node = _scan_node(spec, operands)
    gradients: list[Value | None] = [None] * len(inputs)
    for position, k in enumerate(float_carries):
        if needs[k]:
            gradients[k] = scan_result(node, position)
    for position, j in enumerate(wanted_caps):
        gradients[nc + nx + j] = scan_result(node, len(float_carries) + position)
    n_new_carry = len(float_carries) + len(wanted_caps)
    for position, j in enumerate(wanted_xs):
        gradients[nc + j] = scan_result(node, n_new_carry + position)
    return gradients
