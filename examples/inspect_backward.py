"""Look at the backward graph of a small model: as text, as a networkx graph, as Graphviz.

Prints the symbolic backward graph (every gradient node with the forward node and rule that
produced it), queries it with networkx, writes it as GraphML (`networkx.write_graphml`) and
Graphviz DOT (`gc.to_dot`), renders an SVG when the `dot` binary is installed, compiles the
training step and shows the generated source of one fused kernel, the step's summaries,
`step.explain()`, `step.profile(...)` and an HTML page (`gc.to_html`). Ends with a line
`wrote <files> to <directory>`.

    python examples/inspect_backward.py [--out inspect_backward_out]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from collections import Counter
from typing import Any

import networkx as nx
import numpy as np

import graphc as gc


def build() -> tuple[gc.Graph, gc.Value]:
    g = gc.Graph("small", seed=0)
    x = g.input("x", (None, 4))
    y = g.input("y", (None,), dtype="int64")
    h = gc.tanh(gc.nn.linear(x, 8, name="hidden"))
    logits = gc.nn.linear(h, 3, name="out")
    loss = gc.mean(gc.softmax_cross_entropy(logits, y))
    return g, loss


def graphml_ready(dg: nx.DiGraph) -> nx.DiGraph:
    """A copy whose attributes GraphML can store (strings and numbers only: tuples, lists
    and None become strings)."""

    def plain(value: Any) -> Any:
        if isinstance(value, (bool, int, float, str)):
            return value
        return "" if value is None else str(value)

    out = nx.DiGraph()
    out.graph.update({k: plain(v) for k, v in dg.graph.items()})
    for node, attrs in dg.nodes(data=True):
        out.add_node(node, **{k: plain(v) for k, v in attrs.items()})
    for src, dst, attrs in dg.edges(data=True):
        out.add_edge(src, dst, **{k: plain(v) for k, v in attrs.items()})
    return out


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="inspect_backward_out",
                        help="directory for the GraphML, DOT and SVG files")
    args = parser.parse_args(argv)

    g, loss = build()
    grads = gc.grad(loss, g.params)
    print("The backward graph, one node per line:")
    print(gc.format_graph(grads))

    dg = gc.to_networkx(grads)
    backward = [n for n, a in dg.nodes(data=True) if a["role"] == "backward"]
    rules = Counter(dg.nodes[n]["rule"] for n in backward)
    print(f"\nnetworkx: {dg.number_of_nodes()} nodes, {dg.number_of_edges()} edges, "
          f"{len(backward)} backward nodes; longest path {nx.dag_longest_path_length(dg)} edges")
    print("backward nodes per gradient rule: "
          + ", ".join(f"{rule} {n}" for rule, n in rules.most_common()))
    for param, grad in zip(g.params, grads):
        upstream = sum(1 for n in nx.ancestors(dg, grad.id) if dg.nodes[n]["role"] == "backward")
        node = dg.nodes[grad.id]
        print(f"  d loss / d {param.name} = {node['label']} ({node['op']}, {node['rule']}), "
              f"{upstream} backward nodes upstream")

    os.makedirs(args.out, exist_ok=True)
    graphml = os.path.join(args.out, "backward.graphml")
    nx.write_graphml(graphml_ready(dg), graphml)
    dot_path = os.path.join(args.out, "backward.dot")
    with open(dot_path, "w", encoding="utf-8") as f:
        f.write(gc.to_dot(grads) + "\n")
    written = [graphml, dot_path]
    dot = shutil.which("dot")
    if dot is None:
        print("\nno SVG: the Graphviz `dot` binary is not installed "
              f"(apt install graphviz / brew install graphviz, then: dot -Tsvg {dot_path})")
    else:
        svg = os.path.join(args.out, "backward.svg")
        subprocess.run([dot, "-Tsvg", dot_path, "-o", svg], check=True)
        written.append(svg)

    step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1, momentum=0.9))
    program = step.program

    def gradient_nodes(kernel: Any) -> int:
        return sum(1 for i in kernel.nodes if program.nodes[i].provenance is not None
                   and "update" not in program.nodes[i].provenance.rule)

    kernel = max(step.kernels, key=gradient_nodes)
    ops = " -> ".join(program.nodes[i].op for i in kernel.nodes)
    print(f"\ncompiled: {len(step.kernels)} fused kernels; {kernel.name} fuses {ops} "
          f"({kernel.group.kind} group) from {', '.join(kernel.lines)}")
    print(f"its generated source ({kernel.path}):\n")
    print(kernel.source)

    print("\nthe compiled step's backward graph, summarised (step.backward.full() lists all):")
    print("\n".join(str(step.backward).splitlines()[:6]))
    print("\nits kernels (step.kernels[i].source is the code):")
    print("\n".join(repr(step.kernels).splitlines()[:6]))
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(64, 4)).astype(np.float32),
             "y": rng.integers(0, 3, size=64)}
    explanation = step.explain(feeds)
    print("\nwhat the compiler decided (step.explain()), first lines:")
    print("\n".join(str(explanation).splitlines()[:9]))
    profile = step.profile(feeds, steps=20)
    print("\nthe three slowest kernel calls (step.profile(feeds)):")
    print("\n".join(str(profile).splitlines()[:5]))
    page = gc.to_html(step, os.path.join(args.out, "step.html"), profile=profile)
    written.append(page)

    print(f"wrote {' '.join(os.path.basename(p) for p in written)} to {args.out}")
    return written


if __name__ == "__main__":
    main()
