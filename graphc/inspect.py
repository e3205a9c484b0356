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


#: The width of a summary line (`step.kernels`, `step.backward`).
SUMMARY_WIDTH = 100


def clip(line: str, width: int = SUMMARY_WIDTH) -> str:
    """`line` cut to `width` characters, ending in '...' when cut."""
    return line if len(line) <= width else line[:width - 3] + "..."


def _counted(counts: dict[str, int], limit: int = 6) -> str:
    """'a 3, b 2, ... +N more' of the most frequent keys."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k} {n}" for k, n in ranked[:limit])
    return text + (f", +{len(ranked) - limit} more" if len(ranked) > limit else "")


def _locations(wheres: list[str]) -> str:
    shown = sorted({short_location(w) for w in wheres})
    return ", ".join(shown[:2]) + (f" +{len(shown) - 2}" if len(shown) > 2 else "")


def summarize_nodes(graph: Graph, ids: list[int], title: str) -> str:
    """A header (node counts by role, op and gradient rule) and one line of at most
    SUMMARY_WIDTH characters per node: label, op, shape, dtype, user line, and for backward
    nodes the rule and the forward node it came from."""
    nodes = [graph.nodes[i] for i in ids]
    roles: dict[str, int] = {}
    rules: dict[str, int] = {}
    for n in nodes:
        roles[n.role] = roles.get(n.role, 0) + 1
        if n.provenance is not None:
            rules[n.provenance.rule] = rules.get(n.provenance.rule, 0) + 1
    lines = [clip(f"{title}: {len(nodes)} nodes ({_counted(roles)})")]
    if rules:
        lines.append(clip(f"  rules: {_counted(rules)}"))
    wheres = {short_location(n.where) for n in nodes}
    if len(wheres) == 1 and len(nodes) > 1:   # e.g. every gradient node of one grad() call
        lines.append(f"  every node built at {wheres.pop()}")
        wheres = set()
    rows = []
    for n in nodes:
        origin = ""
        if n.provenance is not None:
            fwd = graph.nodes[n.provenance.forward]
            origin = f"<- {n.provenance.rule} of {fwd.label} ({short_location(fwd.where)})"
        rows.append((n.label, n.op, format_shape(n.shape), n.dtype,
                     short_location(n.where) if wheres else "", origin))
    caps = (8, 14, 16, 7, 24)
    widths = [min(cap, max((len(r[k]) for r in rows), default=0)) for k, cap in enumerate(caps)]
    for row in rows:
        cells = "  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths) if w)
        lines.append(clip(f"  {cells}  {row[-1]}".rstrip()))
    return "\n".join(lines)


def summarize_kernels(kernels: list[Any], graph: Graph) -> str:
    """A header (calls, unique kernels, calls per group kind) and one line of at most
    SUMMARY_WIDTH characters per kernel call: index, name, group kind, node count, ops and
    the user lines they came from."""
    kinds: dict[str, int] = {}
    for k in kernels:
        kinds[k.group.kind] = kinds.get(k.group.kind, 0) + 1
    unique = len({k.source for k in kernels})
    lines = [clip(f"{len(kernels)} kernel calls of {unique} unique kernels "
                  f"({_counted(kinds)})"), "  (kernels[i].source is a kernel's generated code)"]
    for i, k in enumerate(kernels):
        ops: list[str] = []
        for nid in k.nodes:
            if graph.nodes[nid].op not in ops:
                ops.append(graph.nodes[nid].op)
        where = _locations([graph.nodes[nid].where for nid in k.nodes])
        lines.append(clip(f"  {i:4d} {k.name:<6} {k.group.kind:<6} {len(k.nodes):3d} nodes  "
                          f"{where:<26} {','.join(ops)}"))
    return "\n".join(lines)


class KernelList(list):
    """The kernels of a compiled step, in call order: a list whose repr is a summary, one
    line per kernel (`kernels[i].source` is a kernel's generated code)."""

    def __init__(self, kernels: list[Any], graph: Graph) -> None:
        super().__init__(kernels)
        self.graph = graph

    def __repr__(self) -> str:
        return summarize_kernels(self, self.graph)

    __str__ = __repr__


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


__all__ = ["KernelList", "describe", "format_graph", "summarize_kernels", "summarize_nodes",
           "to_dot", "to_networkx", "Value"]
