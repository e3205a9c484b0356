"""Dead-code elimination."""

from __future__ import annotations

from graphc.ir import Graph, ancestors
from graphc.passes.rewrite import Rewriter


def eliminate_dead_code(graph: Graph) -> Graph:
    """Keep only nodes that outputs or updates depend on, plus every input and every
    storage an update writes (read by nothing when the program only fills it).

    Invariant: outputs and updates compute the same values; inputs stay so that the same
    feeds remain valid.
    """
    roots = list(graph.outputs) + [nid for _, nid in graph.updates]
    live = ancestors(graph, roots)
    written = {name for name, _ in graph.updates}
    rw = Rewriter(graph)
    for node in graph.nodes:
        if node.id in live or node.op == "input" or (
                node.op in ("param", "state") and node.name in written):
            rw.emit(node)
    return rw.finish()
