"""`gc.to_html(values_or_step, path)`: one self-contained HTML file to explore a graph.

The layout is computed here (layers are networkx topological generations; inside a layer,
nodes of one fusion kernel sit side by side) and drawn by the page's own script on a canvas
that paints only what is in view, so it stays usable at thousands of nodes. No network: the
script and styles are inline (graphc/html_view.js, graphc/html_view.css).
"""

from __future__ import annotations

import json
import os
from typing import Any

from graphc.errors import short_location
from graphc.inspect import _select
from graphc.ir import Graph, format_shape

X_STEP, Y_STEP = 150, 64
_HERE = os.path.dirname(os.path.abspath(__file__))


def _kernels_of(target: Any) -> list[dict[str, Any]]:
    """The fused kernels of a compiled step (instruction order), or [] for plain values."""
    code = getattr(target, "code", None)
    if code is not None:   # the CPU program: one entry per instruction
        return [{"name": ins.kernel.name, "kind": ins.kernel.group.kind, "what": ins.what,
                 "nodes": list(ins.nodes), "source": ins.kernel.source}
                for ins in code.instructions]
    return [{"name": k.name, "kind": k.group.kind, "what": f"{k.group.kind} {k.name}",
             "nodes": list(k.nodes), "source": k.source}
            for k in getattr(target, "kernels", [])]


def _scopes(graph: Graph, ids: list[int]) -> dict[int, str]:
    """A layer name for each node: the prefix of a parameter it reads (`b0.fc1` of
    `b0.fc1.w`), else its forward node's (gradients), else its latest operand's."""
    scope: dict[int, str] = {}
    for i in ids:
        n = graph.nodes[i]
        if n.op in ("param", "state") and n.name:
            scope[i] = n.name.rpartition(".")[0] or n.name
            continue
        params = [scope[j] for j in n.inputs if graph.nodes[j].op in ("param", "state")
                  and j in scope]
        if params:
            scope[i] = params[0]
        elif n.provenance is not None and n.provenance.forward in scope:
            scope[i] = scope[n.provenance.forward]
        else:
            named = [scope[j] for j in sorted(n.inputs, reverse=True) if scope.get(j)]
            scope[i] = named[0] if named else (n.name or "")
    return scope


def page_data(target: Any, profile: Any = None) -> dict[str, Any]:
    """What the page shows, as plain data: nodes (with layout), edges, kernels, profile."""
    import networkx as nx

    graph_target = target.program if hasattr(target, "program") else target
    graph, ids, _ = _select(graph_target)
    kernels = _kernels_of(target)
    kernel_of: dict[int, int] = {}
    for k, kernel in enumerate(kernels):
        for nid in kernel["nodes"]:
            kernel_of.setdefault(nid, k)
    chosen = set(ids)
    dg = nx.DiGraph()
    dg.add_nodes_from(ids)
    dg.add_edges_from((j, i) for i in ids for j in graph.nodes[i].inputs if j in chosen)
    scope = _scopes(graph, ids)
    nodes = []
    for y, layer in enumerate(nx.topological_generations(dg)):
        layer.sort(key=lambda i: (kernel_of.get(i, -1), i))
        for x, i in enumerate(layer):
            n = graph.nodes[i]
            row = {"id": i, "label": n.label, "op": n.op, "shape": format_shape(n.shape),
                   "dtype": n.dtype, "role": n.role, "where": short_location(n.where),
                   "scope": scope.get(i, ""), "kernel": kernel_of.get(i, -1),
                   "x": x * X_STEP, "y": y * Y_STEP}
            if n.provenance is not None:
                row.update(grad_of=n.provenance.forward, rule=n.provenance.rule)
            nodes.append(row)
    nodes.sort(key=lambda r: r["id"])
    edges = [[j, i] for i in ids for j in sorted(set(graph.nodes[i].inputs)) if j in chosen]
    data: dict[str, Any] = {"name": graph.name, "nodes": nodes, "edges": edges,
                            "kernels": kernels, "profile": None}
    if profile is not None:
        data["profile"] = profile.as_dict() if hasattr(profile, "as_dict") else profile
    return data


def render_html(data: dict[str, Any]) -> str:
    """The page for `page_data(...)`: one HTML document with its script and styles inline."""
    with open(os.path.join(_HERE, "html_view.js"), encoding="utf-8") as f:
        script = f.read()
    with open(os.path.join(_HERE, "html_view.css"), encoding="utf-8") as f:
        style = f.read()
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    title = f"graphc: {data['name']}".replace("&", "&amp;").replace("<", "&lt;")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{style}</style></head>
<body>
<div id="side">
  <h1>{title}</h1>
  <div id="legend"></div>
  <input id="search" type="search" placeholder="search name, op or file:line">
  <div id="results"></div>
  <div class="row"><input id="prefix" placeholder="collapse layer: name prefix (b0.)">
    <button id="collapse">collapse</button><button id="expand">expand all</button></div>
  <div id="details"><p class="hint">Click a node. Drag to pan, wheel to zoom.</p></div>
  <pre id="source"></pre>
  <div id="profile"></div>
</div>
<canvas id="view"></canvas>
<script id="graph-data" type="application/json">{payload}</script>
<script>{script}</script>
</body></html>
"""


def to_html(target: Any, path: str | os.PathLike, profile: Any = None) -> str:
    """Write one self-contained HTML file (no network) showing `target` -- a compiled step
    (forward, backward and update nodes with their fused kernels and generated sources) or
    Values / a Graph -- with search, gradient provenance on click, layer collapsing and,
    given `profile` (a `step.profile(...)` result), a sortable profile table. Returns the
    absolute path."""
    html = render_html(page_data(target, profile))
    path = os.path.abspath(os.fspath(path))
    with open(path, "w", encoding="utf-8") as f:
        f.write(html)
    return path
