"""Graph -> Graph passes, run in order by `optimize`; `verify` checks the IR invariants."""

from __future__ import annotations

import time
from collections.abc import Callable

from graphc.errors import GraphError
from graphc.ir import Graph
from graphc.passes.cse import eliminate_common_subexpressions
from graphc.passes.dce import drop_unused_gradient_checks, eliminate_dead_code
from graphc.passes.fusion import fuse
from graphc.passes.matmul import flatten_matmuls
from graphc.passes.memory import plan_memory
from graphc.passes.sharding import plan_shards
from graphc.passes.simplify import simplify

Pass = Callable[[Graph], Graph]

PIPELINE: list[Pass] = [drop_unused_gradient_checks, simplify,
                        eliminate_common_subexpressions, simplify, eliminate_dead_code]

# Rewrites for the CPU target that keep every value up to the order in which floating-point
# sums are taken (so not bitwise, unlike PIPELINE): run after PIPELINE, before SCHEDULE.
LOWERING_CPU: list[Pass] = [flatten_matmuls, simplify, eliminate_dead_code]


def fusion(graph: Graph) -> Graph:
    """Annotate the graph with its fusion groups (`graph.groups`, in execution order).

    Invariant: nodes, outputs and updates are unchanged (the interpreter gives the same
    results); every compute node whose value the outputs or updates read belongs to
    exactly one group (one used only for its shape to none).
    """
    out = graph.fork()
    out.groups = fuse(out)
    return out


def sharding(graph: Graph) -> Graph:
    """Annotate a fused graph with its batch-sharding plan (`graph.shards`) and reorder its
    groups into serial slots and parallel regions (graphc/passes/sharding.py).

    Invariant: nodes, outputs and updates are unchanged; the groups are the same groups in
    another topological order, with every update group after all other groups.
    """
    out = graph.fork()
    out.groups, out.shards = plan_shards(out, graph.groups)
    return out


def memory_planning(graph: Graph) -> Graph:
    """Annotate a fused graph with its memory plan (`graph.memory`): buffer slots shared by
    values never live at once, views, and updates written in place.

    Invariant: nodes, outputs and updates are unchanged; no buffer is overwritten while a
    later group still reads the value it held.
    """
    out = graph.fork()
    out.groups = graph.groups
    out.shards = graph.shards
    out.memory = plan_memory(out, out.groups)
    return out


SCHEDULE: list[Pass] = [fusion, sharding, memory_planning]
# The CUDA target parallelises within each kernel instead: no batch sharding.
SCHEDULE_CUDA: list[Pass] = [fusion, memory_planning]


def schedule_subgraph(graph: Graph, schedule: list[Pass]) -> Graph:
    """A sub-graph (a scan's body, its outputs set) through the simplification passes and
    then `schedule` (fusion and memory planning of a target)."""
    return optimize(optimize(graph.fork(), PIPELINE), schedule)


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


__all__ = ["LOWERING_CPU", "PIPELINE", "SCHEDULE", "SCHEDULE_CUDA",
           "drop_unused_gradient_checks", "eliminate_common_subexpressions",
           "eliminate_dead_code", "flatten_matmuls", "fusion", "memory_planning", "optimize",
           "schedule_subgraph", "sharding", "simplify", "verify"]
