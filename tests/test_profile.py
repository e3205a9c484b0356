"""`step.profile(feeds)` and `graphc profile`: per-kernel times of a compiled CPU step."""

from __future__ import annotations

import json

import numpy as np
import pytest

import graphc as gc
from graphc import cli
from graphc.profile import machine_peaks


def _step(name: str) -> gc.runtime.CompiledFunction:
    g = gc.Graph(name, seed=0)
    x = g.input("x", (None, 16))
    y = g.input("y", (None,), dtype="int64")
    h = gc.tanh(gc.nn.linear(x, 32, name="hidden"))
    loss = gc.mean(gc.softmax_cross_entropy(gc.nn.linear(h, 4, name="out"), y))
    return gc.compile(loss, optimizer=gc.optim.Adam(lr=0.1))


def test_profile_times_every_kernel_call_and_restores_the_step(graphc_cache_dir) -> None:
    step = _step("profiled")
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(64, 16)).astype(np.float32),
             "y": rng.integers(0, 4, size=64)}
    params = {k: v.copy() for k, v in step.params.items()}
    result = step.profile(feeds, steps=5)
    for k, v in step.params.items():
        np.testing.assert_array_equal(v, params[k], err_msg=k)
    assert step.state["step"] == 0
    assert all(not np.any(v) for v in step.optimizer_state().values())

    data = result.as_dict()
    json.dumps(data)
    rows = data["rows"]
    assert [r["index"] for r in rows] == list(range(len(step.code.instructions)))
    assert all(r["calls"] == 5 and r["seconds"] >= 0 for r in rows)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    # the first layer's product: 2 * 64 * 32 * 16 flops, reads x and w, writes (64, 32)
    first = next(r for r in rows if r["kind"] == "matmul")
    assert first["flops"] == 2 * 64 * 32 * 16
    assert first["bytes"] == 4 * (64 * 16 + 16 * 32 + 64 * 32)
    assert data["peaks"]["flops"] > 1e8 and data["peaks"]["bytes"] > 1e8
    assert data["peaks"] == machine_peaks()   # measured once per process
    text = str(result)
    assert text.startswith("profile of 5 steps") and "GFLOP/s" in text
    assert len(text.splitlines()) == len(rows) + 2

    # the step still trains from where it was
    assert np.isfinite(step(**feeds))


def test_profile_rejects_bad_arguments(graphc_cache_dir) -> None:
    step = _step("profiled_bad")
    with pytest.raises(gc.GraphError, match="steps >= 1"):
        step.profile({"x": np.zeros((2, 16), np.float32), "y": np.zeros(2, np.int64)}, 0)
    with pytest.raises(gc.FeedError):
        step.profile({"x": np.zeros((2, 16), np.float32)}, 1)


def test_graphc_profile_command(tmp_path, capsys, graphc_cache_dir) -> None:
    script = tmp_path / "model.py"
    script.write_text(
        "import graphc as gc\n"
        "g = gc.Graph('cli_profiled', seed=0)\n"
        "x = g.input('x', (None, 8))\n"
        "y = g.input('y', (None,), dtype='int64')\n"
        "loss = gc.mean(gc.softmax_cross_entropy(gc.nn.linear(x, 3, name='fc'), y))\n")
    out = tmp_path / "profile.json"
    assert cli.main(["profile", str(script), "--steps", "3", "--batch", "16",
                     "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("profile of 3 steps") and "matmul" in printed
    data = json.loads(out.read_text())
    assert data["steps"] == 3 and any(r["flops"] == 2 * 16 * 3 * 8 for r in data["rows"])
