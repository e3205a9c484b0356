"""The numpy reference interpreter: the oracle for every compiled result."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from graphc.autodiff import (
    check_gradient_broadcast,
    gradient_broadcast_checks,
    with_checked_operands,
)
from graphc.errors import GraphError, IndexRangeError, NonFiniteError
from graphc.feeds import check_feeds
from graphc.ir import Graph, ancestors, as_values, format_shape
from graphc.ops import OPS


def run_nodes(graph: Graph, output_ids: list[int], feeds: Mapping[str, Any], *,
              check_finite: bool = False, params: Mapping[str, np.ndarray] | None = None
              ) -> dict[int, np.ndarray]:
    """Evaluate the nodes `output_ids` need; returns every computed value by node id."""
    needed = sorted(with_checked_operands(graph, ancestors(graph, output_ids)))
    inputs = [graph.nodes[i] for i in needed if graph.nodes[i].op == "input"]
    all_inputs = [n for n in graph.nodes if n.op == "input"]
    arrays = check_feeds(inputs, feeds, all_inputs=all_inputs)
    storage = graph.param_values if params is None else params
    values: dict[int, np.ndarray] = {}
    bad_leaves: dict[int, str] = {}   # feeds and parameters holding NaN or Inf, described
    broadcast_checks = gradient_broadcast_checks(graph)
    with np.errstate(all="ignore"):
        for nid in needed:
            node = graph.nodes[nid]
            if node.op == "input":
                result = arrays[node.name]
            elif node.op == "param":
                result = storage[node.name]
            elif node.op == "state":
                result = graph.state_values[node.name]
            elif node.op == "const":
                result = node.attrs["value"]
            elif node.op == "scan":   # every result, read by the scan_out nodes
                result = OPS["scan"].ref(*[values[i] for i in node.inputs], **node.attrs)
            else:
                args = [values[i] for i in node.inputs]
                try:
                    result = np.asarray(OPS[node.op].ref(*args, **node.attrs))
                except IndexRangeError as err:
                    shapes = ", ".join(f"{a.shape} {a.dtype}" for a in args)
                    raise IndexRangeError(f"{node.op} {node.label} built at {node.where}: "
                                          f"{err} (operands {shapes})") from None
                except (ValueError, IndexError) as err:
                    shapes = ", ".join(f"{a.shape} {a.dtype}" for a in args)
                    raise GraphError(f"{node.op} {node.label} built at {node.where} failed on "
                                     f"operands {shapes}: {err}") from None
                if result.dtype != node.dtype:
                    raise GraphError(f"internal: {node.op} produced {result.dtype}, declared "
                                     f"{node.dtype}")
                _check_runtime_shape(node, result)
                if check_finite and result.dtype.kind == "f" and not np.all(np.isfinite(result)):
                    sources = [bad_leaves[i] for i in node.inputs if i in bad_leaves]
                    raise NonFiniteError(
                        (f"{sources[0]}, which reaches " if sources else "")
                        + f"{_describe(graph, node)}"
                        + (" first" if sources else " produced a non-finite value (NaN or Inf)"))
            if check_finite and node.op in _LEAVES:
                problem = _leaf_problem(node, np.asarray(result))
                if problem:
                    bad_leaves[nid] = problem
            values[nid] = result
            for check in broadcast_checks.get(nid, ()):
                if check.operand in values and check.gradient in values:
                    check_gradient_broadcast(graph, check, np.shape(values[check.operand]),
                                             np.shape(values[check.gradient]))
    if bad_leaves:   # a non-finite feed or parameter that reached no computed value
        raise NonFiniteError(next(iter(bad_leaves.values())))
    return values


_LEAVES = {"input": "feed", "param": "parameter", "state": "state"}


def _leaf_problem(node: Any, value: np.ndarray) -> str:
    """'the feed 'x' holds a non-finite value (...)' for a feed, parameter or state array
    holding NaN or Inf, else ''."""
    if value.dtype.kind != "f":
        return ""
    bad = np.argwhere(~np.isfinite(value))
    if not len(bad):
        return ""
    where = f" at index {tuple(int(i) for i in bad[0])}" if value.ndim else ""
    return (f"the {_LEAVES[node.op]} {node.name!r} holds a non-finite value "
            f"({value[tuple(bad[0])]}{where}; declared at {node.where})")


def _describe(graph: Graph, node: Any) -> str:
    """A node and the user's line that built it; for a backward node, the forward node it
    is part of the gradient of, and that node's line."""
    if node.provenance is None:
        return f"{node.op} {node.label} built at {node.where}"
    fwd = graph.nodes[node.provenance.forward]
    return (f"{node.op} {node.label}, part of the gradient of {fwd.op} {fwd.label} built at "
            f"{fwd.where} ({node.provenance.rule}),")


def _check_runtime_shape(node: Any, result: np.ndarray) -> None:
    if result.ndim != len(node.shape) or any(
            d is not None and d != s for d, s in zip(node.shape, result.shape)):
        raise GraphError(f"{node.op} {node.label} built at {node.where}: run-time shape "
                         f"{result.shape} does not match its declared shape "
                         f"{format_shape(node.shape)} (run-time sizes disagree)")


def evaluate(outputs: Any, feeds: Mapping[str, Any] | None = None, *,
             check_finite: bool = False, training: bool = False) -> Any:
    """Evaluate a Value or list of Values with numpy, given `feeds` {input_name: array}.

    Returns one array for one Value, else a list. With `check_finite`, the first node that
    produces NaN or Inf raises NonFiniteError naming the node and the user's line.
    `training` picks the view of layers that differ (dropout, batch norm; default: the
    inference view); state (running statistics, RNG steps) is read, never updated.
    """
    from graphc.passes.mode import has_modes, resolve_mode_with_mapping

    values, single = as_values(outputs)
    if not values:
        return []
    graph = values[0].graph
    ids = [v.id for v in values]
    if has_modes(graph, ids):
        graph, ids = resolve_mode_with_mapping(graph, ids, training)
    computed = run_nodes(graph, ids, feeds or {}, check_finite=check_finite)
    # leaves are the graph's own storage: hand out copies, not arrays training will change
    leaves = ("param", "state", "const", "input")
    results = [computed[i].copy() if graph.nodes[i].op in leaves else computed[i]
               for i in ids]
    return results[0] if single else results
