"""Tracing a sub-graph (a scan body): Values of enclosing graphs that an op of the body reads
become inputs of the body ("captures"), so the body stays a graph of its own and the values
it closes over become explicit operands of the node that runs it."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from graphc.errors import GraphError, user_location
from graphc.ir import Graph, Value


@dataclass
class Trace:
    """One body being traced: `body` reads values of `outer` (the enclosing graph) through
    the body inputs in `inputs`, in order of first use (`values[k]` feeds `inputs[k]`)."""

    body: Graph
    outer: Graph
    values: list[Value] = field(default_factory=list)
    inputs: list[Value] = field(default_factory=list)
    by_id: dict[int, Value] = field(default_factory=dict)


_traces: contextvars.ContextVar[tuple[Trace, ...]] = contextvars.ContextVar(
    "graphc_traces", default=())


@contextlib.contextmanager
def tracing(body: Graph, outer: Graph) -> Iterator[Trace]:
    """Trace ops into `body`, capturing the values of `outer` (and of graphs enclosing it)
    that they read."""
    trace = Trace(body, outer)
    token = _traces.set(_traces.get() + (trace,))
    try:
        yield trace
    finally:
        _traces.reset(token)


def capture_into_innermost(value: Value, op_name: str) -> Value:
    """`value` as a Value of the body traced innermost (captured if it is not one)."""
    return capture(value, len(_traces.get()) - 1, op_name)


def capture_operands(op_name: str, operands: Sequence[Any]) -> list[Any]:
    """`operands` with values of enclosing graphs replaced by their captures in the body
    being traced, when one of them belongs to that body (otherwise unchanged)."""
    stack = _traces.get()
    if not stack:
        return list(operands)
    body = stack[-1].body
    if not any(isinstance(v, Value) and v.graph is body for v in operands):
        return list(operands)
    return [capture(v, len(stack) - 1, op_name) if isinstance(v, Value) else v
            for v in operands]


def capture(value: Value, level: int, op_name: str) -> Value:
    """`value` as a Value of the body traced at `level` of the stack."""
    stack = _traces.get()
    trace = stack[level]
    if value.graph is trace.body:
        return value
    if value.graph is not trace.outer:
        if level == 0:
            raise GraphError(f"{op_name}: operands come from different graphs\n"
                             f"  at {user_location()}")
        value = capture(value, level - 1, op_name)
    hit = trace.by_id.get(value.id)
    if hit is None:
        node = value.node
        if node.op == "const":   # constants are copied: the body's passes can fold them
            hit = trace.body.const(node.attrs["value"], dtype=node.dtype)
        else:
            hit = trace.body.input(f"capture{len(trace.inputs)}", value.shape, value.dtype)
            trace.values.append(value)
            trace.inputs.append(hit)
        trace.by_id[value.id] = hit
    return hit
