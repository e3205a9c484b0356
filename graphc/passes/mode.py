"""Resolving the training / inference view of a graph (see graphc/ops/mode.py).

`resolve_mode(graph, training)` replaces every `mode_select(train, infer)` by one operand.
The gradient of a mode_select sends a structural zero (`zeros_like(g)`) down the branch
that is not selected; this pass folds such zeros forward through ops that are linear in
them (mul, div by, neg, sums, views, matmul, conv, gathers ...) and drops them where they
are added to a real gradient, so the dead branch's backward code disappears with DCE
instead of computing zeros. Folding uses exact algebra only for these structural zeros
(no gradient flows there), never for zeros the user wrote.

`live_state_updates(graph, outputs, training)` picks the state updates layers declared
(`graph.state_updates`: running statistics, RNG counters) whose layer is used by `outputs`
in that view.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from graphc.ir import Graph, Node
from graphc.passes.rewrite import Rewriter

VIEWS = ("broadcast_to", "broadcast_like", "reshape", "reshape_like", "expand_dims",
         "squeeze", "transpose", "slice", "cast")
# ops whose result is zero when their first operand is
FIRST_LINEAR = VIEWS + ("neg", "sum", "div", "take", "take_grad", "slice_grad", "cumsum",
                        "take_along_axis", "take_along_axis_grad",
                        "conv2d_grad_input", "max_pool2d_grad", "max_pool2d_gather",
                        "avg_pool2d", "avg_pool2d_grad", "max_pool2d", "concat")
# ops whose result is zero when either operand is
BILINEAR = ("mul", "matmul", "conv2d", "conv2d_grad_weight")


def _zero_const(node: Node) -> bool:
    return node.op == "const" and not np.any(node.attrs["value"])


def _is_structural_zero(graph: Graph, nid: int) -> bool:
    """A zeros_like(...) value: a zero constant, maybe broadcast."""
    node = graph.nodes[nid]
    while node.op in ("broadcast_to", "broadcast_like"):
        node = graph.nodes[node.inputs[0]]
    return _zero_const(node)


def resolve_mode(graph: Graph, training: bool) -> Graph:
    """Replace every mode_select by its training (or inference) operand and fold the
    structural zeros the other branch's gradient received.

    Invariant: outputs and updates compute what they compute in the chosen view.
    """
    rw = Rewriter(graph)
    tgt = rw.target
    zero: set[int] = set()   # ids in the new graph known to be structural zeros
    for node in graph.nodes:
        if node.op == "mode_select":
            keep, drop = node.inputs if training else node.inputs[::-1]
            if not _is_structural_zero(graph, drop) and _is_structural_zero(graph, keep):
                zero.add(rw.new_id(keep))
            rw.alias(node.id, rw.new_id(keep))
            continue
        if not node.inputs:
            rw.emit(node)
            continue
        ins = [rw.new_id(i) for i in node.inputs]
        z = [i in zero for i in ins]
        if node.op == "where":  # where(c, Z, 0): an exact zero branch is as good
            z = [zi or _is_structural_zero(tgt, i) for zi, i in zip(z, ins)]
        if node.op in ("add", "sub") and any(z):
            other = ins[0] if z[1] else ins[1]
            if all(z):
                zero.add(rw.emit(node))
                continue
            if (z[1] or node.op == "add") and tgt.nodes[other].shape == node.shape \
                    and tgt.nodes[other].dtype == node.dtype:
                rw.alias(node.id, other)
                continue
        new = rw.emit(node)
        if (node.op in FIRST_LINEAR and z[0] and (node.op != "concat" or all(z))) or \
                (node.op in BILINEAR and any(z)) or \
                (node.op == "where" and z[1] and z[2]):
            zero.add(new)
    return rw.finish()


def resolve_mode_with_mapping(graph: Graph, outputs: Iterable[int], training: bool
                              ) -> tuple[Graph, list[int]]:
    """`resolve_mode` of a fork of `graph` whose outputs are `outputs`; returns the new
    graph and the new ids of `outputs`."""
    program = graph.fork()
    program.outputs = list(outputs)
    program.updates = []
    resolved = resolve_mode(program, training)
    return resolved, list(resolved.outputs)


def has_modes(graph: Graph, ids: Iterable[int]) -> bool:
    from graphc.ir import ancestors

    return any(graph.nodes[i].op == "mode_select" for i in ancestors(graph, ids))


def live_nodes(graph: Graph, roots: Iterable[int], training: bool) -> set[int]:
    """Ancestors of `roots` in one view: a mode_select leads only to its chosen operand."""
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        nid = stack.pop()
        if nid in seen:
            continue
        seen.add(nid)
        node = graph.nodes[nid]
        if node.op == "mode_select":
            stack.append(node.inputs[0 if training else 1])
        else:
            stack.extend(node.inputs)
    return seen


def live_state_updates(graph: Graph, roots: Iterable[int], training: bool
                       ) -> list[tuple[str, int]]:
    """The (state name, new-value node) pairs of `graph.state_updates` that apply when
    `roots` run in this view: the declaring layer's output (its anchor) is used, and the
    layer is in training mode (the view's, unless the layer fixed its own)."""
    declared = getattr(graph, "state_updates", [])
    if not declared:
        return []
    live = live_nodes(graph, roots, training)
    out: list[tuple[str, int]] = []
    for name, nid, anchor, follows_view in declared:
        if anchor in live and (training or not follows_view) and (name, nid) not in out:
            out.append((name, nid))
    return out


def apply_view(program: Graph, training: bool) -> Graph:
    """A program (outputs and updates set) in the training or inference view: the state
    updates of the layers it runs are prepended to its updates, then every mode_select is
    resolved (`resolve_mode`)."""
    roots = list(program.outputs) + [nid for _, nid in program.updates]
    state = live_state_updates(program, roots, training)
    taken = {name for name, _ in program.updates}
    program.updates = [u for u in state if u[0] not in taken] + list(program.updates)
    if not any(n.op == "mode_select" for n in program.nodes):
        return program
    return resolve_mode(program, training)


__all__ = ["apply_view", "has_modes", "live_nodes", "live_state_updates", "resolve_mode",
           "resolve_mode_with_mapping"]
