"""Dead-code elimination."""

from __future__ import annotations

from graphc.ir import Graph, ancestors
from graphc.passes.rewrite import Rewriter


def eliminate_dead_code(graph: Graph) -> Graph:
    """Keep only nodes that outputs or updates depend on, plus every input.

    Invariant: outputs and updates compute the same values; inputs stay so that the same
    feeds remain valid.
    """
    roots = list(graph.outputs) + [nid for _, nid in graph.updates]
    live = ancestors(graph, roots)
    rw = Rewriter(graph)
    for node in graph.nodes:
        if node.id in live or node.op == "input":
            rw.emit(node)
    return rw.finish()
