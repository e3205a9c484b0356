"""Rebuilding a graph node by node with operands remapped: the tool every pass uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from graphc.ir import GradientBroadcast, Graph, Node, Provenance


class Rewriter:
    """Copies nodes of `source` into a fresh graph, renumbering ids in topological order.

    `emit(node, inputs)` appends a copy of `node` with new operand ids; `alias(old, new)`
    makes uses of an old node read an already-emitted new node instead.
    """

    def __init__(self, source: Graph) -> None:
        self.source = source
        self.target = source.copy_structure()
        self.mapping: dict[int, int] = {}

    def new_id(self, old: int) -> int:
        return self.mapping[old]

    def emit(self, node: Node, inputs: tuple[int, ...] | None = None,
             **changes: Any) -> int:
        fields = dict(op=node.op, attrs=node.attrs, shape=node.shape, dtype=node.dtype,
                      role=node.role, where=node.where, name=node.name,
                      provenance=node.provenance)
        if node.provenance is not None and "provenance" not in changes:
            # Provenance names the forward node by id: renumber it like operands (None if
            # that node is gone, e.g. dropped by dead-code elimination).
            forward = self.mapping.get(node.provenance.forward)
            fields["provenance"] = None if forward is None else Provenance(
                forward, node.provenance.rule)
        fields.update(changes)
        new = Node(len(self.target.nodes),
                   inputs=tuple(self.mapping[i] for i in node.inputs) if inputs is None
                   else inputs, **fields)
        self.target.nodes.append(new)
        if new.name is not None and new.op in ("input", "param", "state"):
            self.target._names[new.name] = new.id
        self.mapping[node.id] = new.id
        return new.id

    def alias(self, old: int, new: int) -> None:
        self.mapping[old] = new

    def finish(self) -> Graph:
        g = self.target
        g.outputs = [self.mapping[o] for o in self.source.outputs]
        g.updates = [(name, self.mapping[o]) for name, o in self.source.updates]
        # a check whose operand or gradient was dropped has nothing left to check
        g.gradient_broadcasts = [
            GradientBroadcast(self.mapping[b.operand], self.mapping[b.gradient],
                              self.mapping.get(b.forward, -1), b.axes)
            for b in self.source.gradient_broadcasts
            if b.operand in self.mapping and b.gradient in self.mapping]
        return g


def rewrite(graph: Graph, visit: Callable[[Rewriter, Node], None]) -> Graph:
    """Apply `visit` to every node in order; `visit` must emit or alias each node."""
    rw = Rewriter(graph)
    for node in graph.nodes:
        visit(rw, node)
    return rw.finish()
