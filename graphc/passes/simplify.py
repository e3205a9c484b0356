"""Algebraic simplification and constant folding."""

from __future__ import annotations

import numpy as np

from graphc.ir import Graph, Node
from graphc.ops import OPS
from graphc.ops.registry import InferError, broadcast_shapes
from graphc.passes.rewrite import Rewriter

# Constants larger than this are not folded (folding would bloat the program).
_FOLD_LIMIT = 1 << 16


def _const_value(graph: Graph, nid: int) -> np.ndarray | None:
    node = graph.nodes[nid]
    return node.attrs["value"] if node.op == "const" else None


def _is_scalar_const(graph: Graph, nid: int, value: float) -> bool:
    c = _const_value(graph, nid)
    return c is not None and c.size == 1 and bool(np.all(c == value))


def simplify(graph: Graph) -> Graph:
    """Fold constant subexpressions and remove algebraic identities.

    Rules: x*1, 1*x, x+0, 0+x, x-0, x/1 -> x when the result has x's shape and dtype;
    neg(neg x) -> x; cast to the same dtype, stop_gradient, and view ops whose output
    equals their input (same static shape without run-time sizes) -> x; transpose of a
    transpose composes; expand_dims of a squeeze (or the reverse) back to the same shape -> x.
    Any op whose operands are all constants (and whose result is small) is evaluated.
    An elementwise operand that only spreads one value (broadcasts, reshapes of a
    one-element node) reads that node instead, when the result keeps its shape: the
    broadcast then needs no kernel of its own.
    Invariant: every output and update has the same value before and after.
    """
    rw = Rewriter(graph)
    tgt = rw.target
    for node in graph.nodes:
        if node.op in ("input", "param", "state", "const"):
            rw.emit(node)
            continue
        ins = tuple(rw.new_id(i) for i in node.inputs)
        if OPS[node.op].kind == "elementwise":
            ins = _read_spread_values_at_source(tgt, node, ins)
        replacement = _identity(tgt, node, ins)
        if replacement is not None:
            rw.alias(node.id, replacement)
            continue
        folded = _fold(tgt, node, ins)
        if folded is not None:
            rw.emit(node, inputs=(), op="const", attrs={"value": folded}, role="const")
            continue
        rw.emit(node, inputs=ins)
    return rw.finish()


_SPREADS = ("broadcast_to", "broadcast_like", "reshape", "reshape_like", "expand_dims",
            "squeeze")


def _one_element(node: Node) -> bool:
    return all(d == 1 for d in node.shape)


def _read_spread_values_at_source(tgt: Graph, node: Node,
                                  ins: tuple[int, ...]) -> tuple[int, ...]:
    """`ins` with each operand that is a chain of broadcasts and reshapes of a one-element
    node replaced by that node, where the operands still broadcast to `node`'s shape."""
    new = list(ins)
    for k, nid in enumerate(ins):
        src = tgt.nodes[nid]
        if src.op not in _SPREADS:
            continue
        while src.op in _SPREADS and not _one_element(src):
            src = tgt.nodes[src.inputs[0]]
        if src.id == nid or not _one_element(src) or src.dtype != tgt.nodes[nid].dtype:
            continue
        trial = [*new[:k], src.id, *new[k + 1:]]
        try:
            shape = broadcast_shapes(*(tgt.nodes[i].shape for i in trial))
        except InferError:
            continue
        if shape == node.shape:
            new = trial
    return tuple(new)


def _same(tgt: Graph, nid: int, node: Node) -> bool:
    other = tgt.nodes[nid]
    return other.shape == node.shape and other.dtype == node.dtype


def _identity(tgt: Graph, node: Node, ins: tuple[int, ...]) -> int | None:
    op = node.op
    if op in ("mul", "div") and _is_scalar_const(tgt, ins[1], 1) and _same(tgt, ins[0], node):
        return ins[0]
    if op == "mul" and _is_scalar_const(tgt, ins[0], 1) and _same(tgt, ins[1], node):
        return ins[1]
    if op in ("add", "sub") and _is_scalar_const(tgt, ins[1], 0) and _same(tgt, ins[0], node):
        return ins[0]
    if op == "add" and _is_scalar_const(tgt, ins[0], 0) and _same(tgt, ins[1], node):
        return ins[1]
    if op == "neg" and tgt.nodes[ins[0]].op == "neg":
        return tgt.nodes[ins[0]].inputs[0]
    if op == "stop_gradient":
        return ins[0]
    if op in ("cast", "reshape", "reshape_like", "broadcast_to", "broadcast_like", "squeeze",
              "expand_dims") and _same(tgt, ins[0], node) and None not in node.shape:
        return ins[0]
    src = tgt.nodes[ins[0]]
    if op in ("expand_dims", "squeeze", "reshape", "reshape_like") and src.op in (
            "expand_dims", "squeeze", "reshape", "reshape_like"):
        origin = tgt.nodes[src.inputs[0]]
        if origin.shape == node.shape and origin.dtype == node.dtype and (
                node.shape.count(None) <= 1):
            return origin.id
    if op == "transpose" and src.op == "transpose":
        perm = tuple(src.attrs["perm"][p] for p in node.attrs["perm"])
        if perm == tuple(range(len(perm))):
            return src.inputs[0]
    return None


def _fold(tgt: Graph, node: Node, ins: tuple[int, ...]) -> np.ndarray | None:
    if not ins or node.op == "dim_size" or OPS[node.op].kind == "scan" or None in node.shape:
        return None
    values = [_const_value(tgt, i) for i in ins]
    if any(v is None for v in values) or int(np.prod(node.shape)) > _FOLD_LIMIT:
        return None
    with np.errstate(all="ignore"):
        result = np.array(OPS[node.op].ref(*values, **node.attrs), dtype=node.dtype)
    result.setflags(write=False)
    return result
