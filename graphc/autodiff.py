"""Reverse-mode autodiff: gradient nodes appended to the same graph.

One sweep over the nodes between the output and the wanted inputs, in reverse topological
order (node ids), so the work is linear in graph size and needs no recursion. Gradient rules
may return gradients of a broadcast shape; reducing them back to the operand's shape
(`unbroadcast`) and summing contributions from several uses happen here, once, for all ops.
"""

from __future__ import annotations

from typing import Any

from graphc.errors import RUN_TIME_BROADCAST_ADVICE, GraphError, user_location
from graphc.ir import (
    GradientBroadcast,
    Graph,
    Value,
    ancestors,
    as_values,
    building_gradient,
    format_shape,
    is_float,
)
from graphc.ops import OPS, add, reshape_like, sum, zeros_like


def unbroadcast(g: Value, shape: tuple, ref: Value) -> Value:
    """Sum `g` over the axes that broadcasting added or stretched to reach it from `shape`."""
    if g.shape == shape:
        return g
    extra = g.ndim - len(shape)
    if extra < 0:
        raise GraphError(f"internal: gradient of shape {format_shape(g.shape)} cannot be "
                         f"reduced to {format_shape(shape)}")
    if extra:
        g = sum(g, axis=tuple(range(extra)))
    stretched = tuple(i for i, (gd, d) in enumerate(zip(g.shape, shape)) if d == 1 and gd != 1)
    if stretched:
        g = sum(g, axis=stretched, keepdims=True)
    if g.shape != shape:  # only run-time sizes differ: shapes agree at run time
        g = reshape_like(g, ref)
    return g


def run_time_axes(g: Value, shape: tuple) -> tuple[int, ...]:
    """Axes of an operand of `shape` known only at run time on which its gradient `g` is not
    of size 1: `unbroadcast` cannot tell whether the operand broadcast there."""
    lead = g.ndim - len(shape)
    return tuple(a for a, d in enumerate(shape) if d is None and g.shape[a + lead] != 1)


def _depends_on(graph: Graph, relevant: set[int], wrt: set[int]) -> set[int]:
    """Nodes in `relevant` with a path from some node of `wrt` (through gradient routes).

    Routes end at nodes whose output has no gradient by nature: integer and bool results
    (comparisons, casts to int), stop_gradient and shape queries (dim_size). A node of a
    float result with no gradient rule (a custom_op declared without vjp) is kept on the
    route, so that `grad` can report it instead of silently dropping its gradient.
    """
    live: set[int] = set()
    for nid in sorted(relevant):
        if nid in wrt:
            live.add(nid)
            continue
        custom = graph.custom_gradients.get(nid)
        inputs = custom.inputs if custom is not None else graph.nodes[nid].inputs
        if not any(i in live for i in inputs):
            continue
        if custom is None and _rule(graph, nid) is None and not _lacks_rule(graph, nid, live):
            continue
        live.add(nid)
    return live


def _rule(graph: Graph, nid: int) -> Any:
    op = OPS.get(graph.nodes[nid].op)
    return None if op is None else op.vjp


def _lacks_rule(graph: Graph, nid: int, live: set[int]) -> bool:
    """Whether node `nid` should pass a gradient on but has no rule to do it with: a float
    result computed from a float value `y` depends on (integer and bool results, shape
    queries and stop_gradient legitimately pass nothing)."""
    node = graph.nodes[nid]
    op = OPS.get(node.op)
    if op is None or op.kind == "shape" or node.op == "stop_gradient" or not is_float(node.dtype):
        return False
    return any(i in live and is_float(graph.nodes[i].dtype) for i in node.inputs)


def grad(y: Value, xs: Any) -> Any:
    """Symbolic gradient of scalar `y` with respect to each of `xs` (inputs or params).

    Returns Values in the same graph (a list, or one Value if `xs` is one Value). Gradients
    of values `y` does not depend on are zeros of their shape. The gradient nodes are
    ordinary nodes marked as backward, so they can be printed, evaluated, compiled and
    differentiated again.
    """
    targets, single = as_values(xs)
    if not isinstance(y, Value):
        raise GraphError(f"grad: y must be a graphc Value, got {type(y).__name__}\n"
                         f"  at {user_location()}")
    graph = y.graph
    if y.shape != ():
        raise GraphError(f"grad: y must be a scalar, got shape {format_shape(y.shape)} from "
                         f"{y.op} at {y.node.where}; reduce it first (e.g. gc.mean)\n"
                         f"  at {user_location()}")
    if not is_float(y.dtype):
        raise GraphError(f"grad: y must be floating point, got {format_shape(y.shape)} "
                         f"{y.dtype} from {y.op} at {y.node.where}\n  at {user_location()}")
    for x in targets:
        if x.graph is not graph:
            raise GraphError(f"grad: {x!r} belongs to a different graph than y\n"
                             f"  at {user_location()}")
        if not is_float(x.dtype):
            raise GraphError(f"grad: {x.node.label} has dtype {x.dtype}; only floating-point "
                             f"values have gradients\n  at {user_location()}")

    wrt = {x.id for x in targets}
    relevant = _depends_on(graph, ancestors(graph, [y.id], through_custom=True), wrt)
    contributions: dict[int, list[Value]] = {}
    totals: dict[int, Value] = {}
    if y.id in relevant:
        with building_gradient(y.id, "seed: d y / d y = 1"):
            contributions[y.id] = [graph.const(1, dtype=y.dtype)]

    # A scan has several results, each read through a scan_out node: their cotangents are
    # gathered (by result index) and handed to the scan's vjp together, once.
    scan_cotangents: dict[int, dict[int, Value]] = {}
    for nid in sorted(relevant, reverse=True):
        parts = contributions.pop(nid, None)
        node = graph.nodes[nid]
        if node.op == "scan" and nid in scan_cotangents:
            _scan_gradients(graph, node, scan_cotangents.pop(nid), relevant, contributions)
            continue
        if not parts:
            continue
        with building_gradient(nid, f"sum of {len(parts)} gradient contributions"):
            total = parts[0]
            for part in parts[1:]:
                total = add(total, part)
        totals[nid] = total
        if node.op == "scan_out":
            scan_cotangents.setdefault(node.inputs[0], {})[node.attrs["index"]] = total
            continue
        custom = graph.custom_gradients.get(nid)
        if custom is not None:
            input_ids, rule, rule_name = custom.inputs, custom.rule, f"{custom.name} rule"
            attrs: dict[str, Any] = {}
        else:
            op = OPS.get(node.op)
            if op is None or op.vjp is None or not node.inputs:
                if _lacks_rule(graph, nid, relevant):
                    raise GraphError(
                        f"grad: {node.op} ({node.label}, built at {node.where}) has no "
                        f"gradient rule, and the value differentiated depends on its operands "
                        f"through it; declare one (custom_op(..., vjp=...)) or cut the path on "
                        f"purpose with gc.stop_gradient\n  at {user_location()}")
                continue
            input_ids, rule, rule_name, attrs = node.inputs, op.vjp, f"{node.op} vjp", node.attrs
        needs = tuple(i in relevant and is_float(graph.nodes[i].dtype) for i in input_ids)
        if not any(needs):
            continue
        inputs = [Value(graph, i) for i in input_ids]
        with building_gradient(nid, rule_name):
            grads = rule(total, Value(graph, nid), inputs, needs, **attrs)
            for inp, need, gi in zip(inputs, needs, grads):
                if not need or gi is None:
                    continue
                axes = run_time_axes(gi, inp.shape)
                if axes:
                    graph.gradient_broadcasts.append(GradientBroadcast(inp.id, gi.id, nid, axes))
                gi = unbroadcast(gi, inp.shape, inp)
                contributions.setdefault(inp.id, []).append(gi)

    results = []
    for x in targets:
        if x.id in totals:
            results.append(totals[x.id])
        else:
            with building_gradient(x.id, "zero: y does not depend on this value"):
                results.append(zeros_like(x))
    return results[0] if single else results


def gradient_broadcast_checks(graph: Graph) -> dict[int, list[GradientBroadcast]]:
    """The graph's GradientBroadcast checks by the later of their two nodes: the node after
    whose evaluation both sizes are known."""
    checks: dict[int, list[GradientBroadcast]] = {}
    for check in graph.gradient_broadcasts:
        checks.setdefault(max(check.operand, check.gradient), []).append(check)
    return checks


def with_checked_operands(graph: Graph, live: set[int]) -> set[int]:
    """`live` (nodes to evaluate) and what the operands of the graph's GradientBroadcast
    checks of live gradients need: an operand's run-time shape is what its check reads."""
    missing = [b.operand for b in graph.gradient_broadcasts
               if b.gradient in live and b.operand not in live]
    return live | ancestors(graph, missing) if missing else live


def check_gradient_broadcast(graph: Graph, check: GradientBroadcast, operand: tuple,
                             gradient: tuple) -> None:
    """GraphError if, at the run-time shapes of `check`'s operand and gradient, the operand
    broadcast on an axis whose size the graph left to run time, so that its gradient was
    not summed over that axis (see GradientBroadcast)."""
    lead = len(gradient) - len(operand)
    for axis in check.axes:
        if operand[axis] == 1 and gradient[axis + lead] != 1:
            raise GraphError(_broadcast_message(graph, check, axis, gradient[axis + lead]))


def _broadcast_message(graph: Graph, check: GradientBroadcast, axis: int, size: int) -> str:
    operand = graph.nodes[check.operand]
    if 0 <= check.forward < len(graph.nodes):
        forward = graph.nodes[check.forward]
        through = f"in {forward.op} {forward.label} built at {forward.where}"
    else:   # the program computes that op's gradient without computing the op
        through = "where it is used"
    return (f"{operand.op} {operand.label} (built at {operand.where}, shape "
            f"{format_shape(operand.shape)}) is of size 1 on axis {axis} at run time and "
            f"broadcasts to {size} {through}. Its gradient is summed over broadcast axes "
            f"whose sizes the graph knows, and this one it leaves to run time, so the "
            f"gradient would be wrong: {RUN_TIME_BROADCAST_ADVICE}")


def _scan_gradients(graph: Graph, node: Any, cotangents: dict[int, Value], relevant: set[int],
                    contributions: dict[int, list[Value]]) -> None:
    """Send the gradients of a scan's operands (one backward scan for all its results)."""
    needs = tuple(i in relevant and is_float(graph.nodes[i].dtype) for i in node.inputs)
    if not any(needs):
        return
    inputs = [Value(graph, i) for i in node.inputs]
    with building_gradient(node.id, "scan vjp: a reverse scan over the body's vjp"):
        grads = OPS["scan"].vjp(cotangents, Value(graph, node.id), inputs, needs,
                                **node.attrs)
    for inp, need, gi in zip(inputs, needs, grads):
        if need and gi is not None:
            contributions.setdefault(inp.id, []).append(gi)
