"""Dead-code elimination."""

from __future__ import annotations

from graphc.autodiff import with_checked_operands
from graphc.ir import Graph, ancestors
from graphc.passes.rewrite import Rewriter


def eliminate_dead_code(graph: Graph) -> Graph:
    """Keep only nodes that outputs or updates depend on, plus every input and every
    storage an update writes (read by nothing when the program only fills it), and the
    operands whose run-time shapes a gradient's check reads (autodiff.GradientBroadcast).

    Invariant: outputs and updates compute the same values; inputs stay so that the same
    feeds remain valid.
    """
    roots = list(graph.outputs) + [nid for _, nid in graph.updates]
    live = with_checked_operands(graph, ancestors(graph, roots))
    written = {name for name, _ in graph.updates}
    rw = Rewriter(graph)
    for node in graph.nodes:
        if node.id in live or node.op == "input" or (
                node.op in ("param", "state") and node.name in written):
            rw.emit(node)
    return rw.finish()


def drop_unused_gradient_checks(graph: Graph) -> Graph:
    """Keep only the GradientBroadcast checks (autodiff) of gradients the outputs or updates
    use. It runs before any pass aliases nodes: once a gradient reads an equal node (a
    product with ones simplified to its other factor), whether it is used is lost.

    Invariant: nodes, outputs and updates are unchanged.
    """
    if not graph.gradient_broadcasts:
        return graph
    live = ancestors(graph, list(graph.outputs) + [nid for _, nid in graph.updates])
    out = graph.fork()
    out.gradient_broadcasts = [b for b in graph.gradient_broadcasts if b.gradient in live]
    return out
