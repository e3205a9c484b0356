"""`step.explain()`: kept forward values, memory plan, fusion decisions, recompile keys."""

from __future__ import annotations

import json

import numpy as np

import graphc as gc


def _model(name: str) -> tuple[gc.Graph, gc.Value]:
    g = gc.Graph(name, seed=0)
    x = g.input("x", (None, 4))
    y = g.input("y", (None,), dtype="int64")
    h = gc.tanh(gc.nn.linear(x, 8, name="hidden"))
    loss = gc.mean(gc.softmax_cross_entropy(gc.nn.linear(h, 3, name="out"), y))
    return g, loss


def _feeds(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(batch, 4)).astype(np.float32),
            "y": rng.integers(0, 3, size=batch)}


def test_explain_names_kept_values_memory_and_fusion(graphc_cache_dir: str) -> None:
    _, loss = _model("explain_small")
    step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1, momentum=0.9))
    step(**_feeds(16))
    step(**_feeds(8))
    info = step.explain()
    data = info.as_dict()
    json.dumps(data)   # plain data

    # the tanh output is kept: the tanh vjp and the second layer's matmul vjp read it
    program = step.program
    tanh = next(n for n in program.nodes if n.op == "tanh")
    kept = {k["id"]: k for k in data["kept"]}
    assert tanh.id in kept
    assert kept[tanh.id]["bytes"] == 8 * 8 * 4   # the last call's batch of 8, float32
    rules = {r["rule"].split(" of ")[0] for r in kept[tanh.id]["read_by"]}
    assert {"tanh vjp", "matmul vjp"} <= rules
    assert all(program.nodes[k["id"]].role == "forward" for k in data["kept"])

    mem = data["memory"]
    assert 0 < mem["pool_bytes_peak"] <= mem["unshared_bytes"]
    assert {u["storage"] for u in mem["in_place"]} | \
        {u["storage"] for u in mem["copied_updates"]} == {name for name, _ in program.updates}
    values = [v for s in mem["shared"] for v in s["values"]]
    assert len(values) == len(set(values)) == mem["values"]

    members = [n for grp in data["groups"] for n in grp["nodes"]]
    compute = [n.label for n in program.nodes if n.op not in ("input", "param", "state",
                                                              "const")]
    assert sorted(members) == sorted(compute)
    reasons = [r for grp in data["groups"] for r in grp["not_fused"]]
    assert any("a BLAS call" in r for r in reasons)
    assert any("computes the gradients, this node the outputs" in r for r in reasons)

    specs = data["recompiles"]["specialisations"]
    assert [s["feeds"] for s in specs] == ["x (16, 4), y (16,)", "x (8, 4), y (8,)"]
    assert specs[1]["changed"] == ["x (16, 4) -> (8, 4)", "y (16,) -> (8,)"]

    text = str(info)
    assert "forward values kept" in text and "memory plan" in text and "not fused:" in text
    assert "x (16, 4) -> (8, 4)" in text


def test_explain_sized_by_feeds_before_any_call(graphc_cache_dir: str) -> None:
    _, loss = _model("explain_feeds")
    step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))
    unsized = step.explain().as_dict()
    assert unsized["sizes"].startswith("batch axes of size 1")
    sized = step.explain(_feeds(32)).as_dict()
    tanh = next(n.id for n in step.program.nodes if n.op == "tanh")
    by_id = {k["id"]: k["bytes"] for k in sized["kept"]}
    assert by_id[tanh] == 32 * 8 * 4
    assert {k["id"]: k["bytes"] for k in unsized["kept"]}[tanh] == 8 * 4


def test_compiling_again_says_what_changed(graphc_cache_dir: str) -> None:
    g, loss = _model("explain_again")
    first = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))
    assert first.compiled_again is None
    again = gc.compile(loss, optimizer=gc.optim.Adam(lr=0.1))
    assert "optimizer: SGD -> Adam" in again.compiled_again
    g.input("extra", (None, 2))
    third = gc.compile(loss, optimizer=gc.optim.Adam(lr=0.1))
    assert third.compiled_again == ["inputs extra: absent -> (None, 2) float32"]
    assert "compiled again: inputs extra" in str(third.explain())
