"""Inspecting graphs: `gc.format_graph` (with gradient provenance) and networkx export."""

from __future__ import annotations

import re

import networkx as nx
import numpy as np

import graphc as gc
from graphc.ir import ancestors
from tests.helpers import here, short


def _model():
    """A small model; returns the graph, its pieces and where each node was built."""
    g = gc.Graph("inspect", dtype="float64")
    x, x_at = g.input("x", (None, 3)), here()
    y, y_at = g.input("y", (None,), dtype="int64"), here()
    w, w_at = g.param("w", np.ones((3, 4))), here()
    mm, mm_at = x @ w, here()
    act, act_at = gc.tanh(mm), here()
    logits, logits_at = act * 2.0, here()
    ce, ce_at = gc.softmax_cross_entropy(logits, y), here()
    loss, loss_at = gc.mean(ce), here()
    where = dict(x=x_at, y=y_at, w=w_at, mm=mm_at, act=act_at, logits=logits_at, ce=ce_at,
                 loss=loss_at)
    return g, dict(x=x, y=y, w=w, mm=mm, act=act, logits=logits, ce=ce, loss=loss), where


def _line_of(text: str, label: str) -> str:
    (line,) = [ln for ln in text.splitlines() if ln.strip().startswith(f"{label} ")]
    return line


def test_format_graph_shows_gradient_provenance() -> None:
    g, v, where = _model()
    gw, grad_at = gc.grad(v["loss"], v["w"]), here()
    text = gc.format_graph(gw)
    lines = text.splitlines()
    assert lines[0].startswith("graph 'inspect': ")
    assert re.search(r"\(2 input, 1 param, \d+ const, \d+ forward, \d+ backward\)", lines[0])

    # every backward node names its forward node, the rule, and where the forward node was
    # built in this file
    backward = [n for n in g.nodes if n.role == "backward" and n.id in ancestors(g, [gw.id])]
    assert backward
    for n in backward:
        line = _line_of(text, n.label)
        fwd = g.nodes[n.provenance.forward]
        expected = (f"[backward: {n.provenance.rule} of {fwd.label} {fwd.op} "
                    f"({short(fwd.where)})]")
        assert expected in line, (expected, line)
        assert short(grad_at) in line  # the backward node itself was built by gc.grad here

    # concretely: the tanh rule points at the tanh line, the matmul rule at the matmul line
    tanh_line = _line_of(text, next(n for n in backward if n.provenance.rule == "tanh vjp").label)
    assert f"tanh vjp of {v['act'].node.label} tanh ({short(where['act'])})" in tanh_line
    assert "test_inspect.py:" in tanh_line
    out_line = _line_of(text, gw.node.label)
    assert "matmul vjp" in out_line and f"({short(where['mm'])})" in out_line
    assert out_line.endswith("<- output 0")
    # the fused cross-entropy rule is named, on the backward nodes and on its forward node
    assert f"softmax_cross_entropy rule of {v['ce'].node.label}" in text
    assert "[gradient rule: softmax_cross_entropy]" in _line_of(text, v["ce"].node.label)


def test_format_graph_forward_lines() -> None:
    g, v, where = _model()
    text = gc.format_graph(g)
    assert len(text.splitlines()) == 1 + len(g.nodes)
    x_line = _line_of(text, "x")
    assert "input" in x_line and "(None, 3)" in x_line and "float64" in x_line
    assert short(where["x"]) in x_line
    y_line = _line_of(text, "y")
    assert "(None,)" in y_line and "int64" in y_line
    mm_line = _line_of(text, v["mm"].node.label)
    assert "matmul(x, w)" in mm_line and "(None, 4)" in mm_line and short(where["mm"]) in mm_line
    assert "[backward" not in text  # nothing differentiated yet
    # a list of values shows only what they depend on, with their output markers
    sub = gc.format_graph([v["act"], v["mm"]])
    assert "<- output 0" in _line_of(sub, v["act"].node.label)
    assert "<- output 1" in _line_of(sub, v["mm"].node.label)
    assert "softmax" not in sub and "y " not in sub


def test_format_graph_of_deep_graph_is_fast_and_complete() -> None:
    g = gc.Graph("deep")
    h = g.input("x", (2,))
    for _ in range(1500):
        h = gc.tanh(h) * 0.9
    text = gc.format_graph(gc.grad(gc.sum(h), g["x"]))
    assert text.count("[backward:") >= 1500


def test_to_networkx_round_trips_nodes_edges_roles() -> None:
    g, v, _ = _model()
    gw = gc.grad(v["loss"], v["w"])
    dg = g.to_networkx()
    assert isinstance(dg, nx.DiGraph)
    assert dg.number_of_nodes() == len(g.nodes)
    assert set(dg.nodes) == set(range(len(g.nodes)))
    expected_edges = {(i, n.id) for n in g.nodes for i in n.inputs}
    assert set(dg.edges) == expected_edges
    assert nx.is_directed_acyclic_graph(dg)
    for n in g.nodes:
        attrs = dg.nodes[n.id]
        assert attrs["op"] == n.op and attrs["role"] == n.role
        assert attrs["shape"] == n.shape and attrs["dtype"] == n.dtype
        assert attrs["label"] == n.label and attrs["where"] == n.where
        if n.provenance is not None:
            assert attrs["grad_of"] == n.provenance.forward and attrs["rule"] == n.provenance.rule
    roles = {a["role"] for _, a in dg.nodes(data=True)}
    assert roles == {"input", "param", "const", "forward", "backward"}
    by_role = {r: {i for i, a in dg.nodes(data=True) if a["role"] == r} for r in roles}
    assert by_role["input"] == {v["x"].id, v["y"].id}
    assert by_role["param"] == {v["w"].id}
    assert gw.id in by_role["backward"] and v["mm"].id in by_role["forward"]
    # the module-level function and the method agree
    assert set(gc.to_networkx(g).edges) == expected_edges


def test_to_networkx_of_values_is_the_dependency_subgraph() -> None:
    g, v, _ = _model()
    gw = gc.grad(v["loss"], v["w"])
    dg = gc.to_networkx(gw)
    needed = ancestors(g, [gw.id])
    assert set(dg.nodes) == needed and dg.number_of_nodes() < len(g.nodes)
    assert set(dg.edges) == {(i, n) for n in needed for i in g.nodes[n].inputs}
    assert dg.graph["outputs"] == [gw.id]
    # every node reaches the output
    assert all(nx.has_path(dg, n, gw.id) for n in dg.nodes)


def test_to_networkx_repeated_operand() -> None:
    g = gc.Graph("sq")
    x = g.input("x", (3,))
    y = x * x
    dg = g.to_networkx()
    assert dg.number_of_edges() == 1
    assert dg.edges[x.id, y.id]["operands"] == [0, 1]


def test_to_dot_lists_every_node_and_edge() -> None:
    g, v, _ = _model()
    gc.grad(v["loss"], v["w"])
    dot = gc.to_dot(g)
    assert dot.startswith('digraph "inspect" {') and dot.rstrip().endswith("}")
    assert dot.count(" -> ") == g.to_networkx().number_of_edges()
    assert len(re.findall(r"^\s+n\d+ \[label=", dot, flags=re.M)) == len(g.nodes)
    assert "mistyrose" in dot  # backward nodes are coloured


def test_node_where_points_at_this_file() -> None:
    g, v, where = _model()
    assert v["mm"].node.where == where["mm"]
    assert v["x"].node.where == where["x"]
    # composites record the user's line for every node they create
    ce_nodes = [n for n in g.nodes if n.id > v["logits"].id and n.id <= v["ce"].id]
    assert ce_nodes and all(n.where == where["ce"] for n in ce_nodes)
