"""Looking at graphs: a text listing with gradient provenance, and networkx export."""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc.errors import short_location
from graphc.ir import Graph, Node, Value, ancestors, as_values, format_shape


def _select(target: Any) -> tuple[Graph, list[int], list[int]]:
    """(graph, node ids to show, requested output ids)."""
    if isinstance(target, Graph):
        return target, list(range(len(target.nodes))), list(target.outputs)
    values, _ = as_values(target)
    if not values:
        raise ValueError("nothing to show: no values given")
    graph = values[0].graph
    ids = [v.id for v in values]
    return graph, sorted(ancestors(graph, ids)), ids


def _format_attr(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return format_shape(value.shape) + " array"
    return repr(value)


def describe(node: Node, graph: Graph) -> str:
    """`op(operands; attrs)` for one node."""
    if node.op == "const":
        value = node.attrs["value"]
        shown = repr(value.item()) if value.ndim == 0 else f"array{format_shape(value.shape)}"
        return f"const {shown}"
    if node.op in ("input", "param", "state"):
        return node.op
    operands = [graph.nodes[i].label for i in node.inputs]
    attrs = [f"{k}={_format_attr(v)}" for k, v in node.attrs.items()]
    return f"{node.op}({', '.join(operands + attrs)})"


def provenance_text(node: Node, graph: Graph) -> str:
    """'<rule> of <forward node> (<its line>)' for a backward node, '' otherwise."""
    if node.provenance is None:
        return ""
    fwd = graph.nodes[node.provenance.forward]
    return (f"{node.provenance.rule} of {fwd.label} {fwd.op} "
            f"({short_location(fwd.where)})")


def format_graph(target: Any) -> str:
    """A listing, one node per line in topological order: name, op and operands, shape,
    dtype and the user's file:line. Backward nodes are marked with the forward node and the
    rule that produced them; requested outputs are marked `<- output k`."""
    if hasattr(target, "__graphc_listing__"):
        return target.__graphc_listing__()
    graph, ids, outputs = _select(target)
    return format_nodes(graph, ids, outputs)


def format_nodes(graph: Graph, ids: list[int], outputs: list[int]) -> str:
    """The `format_graph` listing of the nodes `ids` of `graph`."""
    nodes = [graph.nodes[i] for i in ids]
    counts: dict[str, int] = {}
    for n in nodes:
        counts[n.role] = counts.get(n.role, 0) + 1
    summary = ", ".join(f"{counts[r]} {r}" for r in ("input", "param", "const", "forward",
                                                     "backward") if r in counts)
    rows = []
    for n in nodes:
        rows.append((n.label, describe(n, graph), format_shape(n.shape), n.dtype,
                     short_location(n.where), n))
    widths = [max((len(r[k]) for r in rows), default=0) for k in range(4)]
    out_index = {nid: k for k, nid in enumerate(outputs)}
    lines = [f"graph {graph.name!r}: {len(nodes)} nodes ({summary})"]
    for label, desc, shape, dtype, where, n in rows:
        line = (f"  {label:<{widths[0]}} = {desc:<{widths[1]}}  {shape:<{widths[2]}}  "
                f"{dtype:<{widths[3]}}  {where}")
        if n.role == "backward":
            line += f"  [backward: {provenance_text(n, graph)}]"
        if n.id in graph.custom_gradients:
            line += f"  [gradient rule: {graph.custom_gradients[n.id].name}]"
        if n.id in out_index:
            line += f"  <- output {out_index[n.id]}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def to_networkx(target: Any) -> Any:
    """A `networkx.DiGraph`: one node per graph node (keyed by id) with attributes `op`,
    `shape`, `dtype`, `role`, `label`, `where` (and `grad_of`, `rule` for backward nodes);
    an edge operand -> user with attribute `operands` (the operand positions)."""
    import networkx as nx

    graph, ids, outputs = _select(target)
    dg = nx.DiGraph(name=graph.name, outputs=list(outputs))
    for i in ids:
        n = graph.nodes[i]
        attrs = dict(op=n.op, shape=n.shape, dtype=n.dtype, role=n.role, label=n.label,
                     where=n.where)
        if n.provenance is not None:
            attrs.update(grad_of=n.provenance.forward, rule=n.provenance.rule)
        dg.add_node(i, **attrs)
    for i in ids:
        for pos, src in enumerate(graph.nodes[i].inputs):
            if dg.has_edge(src, i):
                dg.edges[src, i]["operands"].append(pos)
            else:
                dg.add_edge(src, i, operands=[pos])
    return dg


def to_dot(target: Any) -> str:
    """Graphviz DOT text of the graph; backward nodes are drawn in a second colour."""
    dg = to_networkx(target)
    colours = {"input": "lightblue", "param": "gold", "const": "grey90", "forward": "white",
               "backward": "mistyrose"}
    lines = [f'digraph "{dg.graph.get("name", "graph")}" {{', "  rankdir=TB;",
             '  node [shape=box, style=filled, fontname="Helvetica", fontsize=10];']
    for i, a in dg.nodes(data=True):
        text = f"{a['label']}\\n{a['op']} {format_shape(a['shape'])} {a['dtype']}"
        lines.append(f'  n{i} [label="{text}", fillcolor="{colours[a["role"]]}"];')
    for src, dst in dg.edges():
        lines.append(f"  n{src} -> n{dst};")
    lines.append("}")
    return "\n".join(lines)


__all__ = ["describe", "format_graph", "to_dot", "to_networkx", "Value"]
