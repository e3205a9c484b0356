"""Graph -> Graph passes, run in order by `optimize`; `verify` checks the IR invariants."""

from __future__ import annotations

import time
from collections.abc import Callable

from graphc.errors import GraphError
from graphc.ir import Graph
from graphc.passes.cse import eliminate_common_subexpressions
from graphc.passes.dce import eliminate_dead_code
from graphc.passes.simplify import simplify

Pass = Callable[[Graph], Graph]

PIPELINE: list[Pass] = [simplify, eliminate_common_subexpressions, simplify,
                        eliminate_dead_code]


def verify(graph: Graph) -> None:
    """Raise if the graph breaks an IR invariant (ids, topological order, roots in range)."""
    for i, node in enumerate(graph.nodes):
        if node.id != i:
            raise GraphError(f"internal: node at position {i} has id {node.id}")
        for j in node.inputs:
            if not 0 <= j < i:
                raise GraphError(f"internal: node {i} ({node.op}) reads node {j} out of order")
    for nid in list(graph.outputs) + [n for _, n in graph.updates]:
        if not 0 <= nid < len(graph.nodes):
            raise GraphError(f"internal: output or update {nid} is not a node")


def optimize(graph: Graph, passes: list[Pass] | None = None,
             timings: dict[str, float] | None = None) -> Graph:
    """Run `passes` (default PIPELINE), verifying the IR after each."""
    for p in PIPELINE if passes is None else passes:
        start = time.perf_counter()
        graph = p(graph)
        verify(graph)
        if timings is not None:
            timings[p.__name__] = timings.get(p.__name__, 0.0) + time.perf_counter() - start
    return graph


__all__ = ["PIPELINE", "eliminate_common_subexpressions", "eliminate_dead_code", "optimize",
           "simplify", "verify"]
