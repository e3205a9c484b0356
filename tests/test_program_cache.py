"""The program cache (graphc/backends/cpu/program_cache.py): a graph compiled before, from
any script and any process, is loaded instead of compiled, with the user's current lines."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

import graphc as gc
from graphc.backends.cpu import program_cache
from graphc.codegen import cache

LOADED = "loaded from the program cache (no autodiff, passes or codegen)"
SAVED = "saved to the program cache"

MODEL = """
import graphc as gc

def build(name, width):
    g = gc.Graph(name, seed=0)
    x = g.input("x", (None, 8))
    y = g.input("y", (None,), dtype="int64")
    h = gc.tanh(gc.nn.linear(x, width, name="fc1"))
    logits = gc.nn.linear(h, 3, name="fc2")
    return gc.mean(gc.softmax_cross_entropy(logits, y))
"""


def _model(source: str, filename: str, name: str, width: int = 16) -> gc.Value:
    namespace: dict = {}
    exec(compile(source, filename, "exec"), namespace)
    return namespace["build"](name, width)


def _feeds(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((12, 8)).astype(np.float32),
            "y": rng.integers(0, 3, 12)}


def _train(step: gc.CompiledFunction, steps: int = 3) -> list[float]:
    return [step(**_feeds(i)) for i in range(steps)]


def _unique() -> str:
    return f"prog-{uuid.uuid4().hex[:8]}"


def test_same_graph_compiled_again_is_loaded_and_trains_identically() -> None:
    name = _unique()
    first = gc.compile(_model(MODEL, "model.py", name), optimizer=gc.optim.Adam(1e-2))
    second = gc.compile(_model(MODEL, "model.py", name), optimizer=gc.optim.Adam(1e-2))
    assert first.compile_report.program_cache == SAVED
    assert second.compile_report.program_cache == LOADED
    assert "autodiff" not in second.compile_report.phases
    assert _train(first) == _train(second)
    for key, value in first.params.items():
        np.testing.assert_array_equal(value, second.params[key])
    assert first.compile_report.nodes_after == second.compile_report.nodes_after


def test_loaded_program_names_the_lines_of_the_script_that_built_it() -> None:
    name = _unique()
    gc.compile(_model(MODEL, "/old/place/model.py", name), optimizer=gc.optim.SGD(0.1))
    edited = "# a comment\n\n# and another\n" + MODEL
    step = gc.compile(_model(edited, "/new/place/renamed.py", name),
                      optimizer=gc.optim.SGD(0.1))
    assert step.compile_report.program_cache == LOADED
    wheres = {n.where for n in step.program.nodes}
    assert not any("/old/place" in w for w in wheres)
    # `h = gc.tanh(...)` is line 9 of MODEL, 12 after the three added lines
    assert any(w == "/new/place/renamed.py:12" for w in wheres)
    assert "renamed.py:12" in step.source and "model.py" not in step.source
    assert all("model.py" not in line for k in step.kernels for line in k.lines)
    assert "renamed.py" in str(step.backward)


def test_changed_width_is_compiled_not_loaded() -> None:
    name = _unique()
    gc.compile(_model(MODEL, "model.py", name, width=16), optimizer=gc.optim.SGD(0.1))
    wider = gc.compile(_model(MODEL, "model.py", name, width=24), optimizer=gc.optim.SGD(0.1))
    assert wider.compile_report.program_cache == SAVED
    other_optimizer = gc.compile(_model(MODEL, "model.py", name, width=16),
                                 optimizer=gc.optim.SGD(0.1, momentum=0.9))
    assert other_optimizer.compile_report.program_cache == SAVED
    inference = gc.compile([_model(MODEL, "model.py", name, width=16)])
    assert inference.compile_report.program_cache == SAVED


def test_loaded_step_starts_with_fresh_optimizer_state() -> None:
    name = _unique()
    first = gc.compile(_model(MODEL, "model.py", name), optimizer=gc.optim.Adam(1e-2))
    _train(first)
    moments = {k: v.copy() for k, v in first.optimizer_state().items()}
    second = gc.compile(_model(MODEL, "model.py", name), optimizer=gc.optim.Adam(1e-2))
    assert second.compile_report.program_cache == LOADED
    assert moments and all(not np.any(second.optimizer_state()[k]) for k in moments)
    _train(second)
    for key, value in moments.items():
        np.testing.assert_array_equal(first.optimizer_state()[key], value)


def test_damaged_entry_is_dropped_and_compiled_again() -> None:
    name = _unique()
    loss = _model(MODEL, "model.py", name)
    optimizer = gc.optim.SGD(0.1)
    gc.compile(loss, optimizer=optimizer)
    key = program_cache.program_key([loss], optimizer, [], None)
    path = cache._blob_path("graphc_program", key)[2]
    with open(path, "wb") as f:
        f.write(b"\x80\x05not a pickle at all")
    step = gc.compile(_model(MODEL, "model.py", name), optimizer=gc.optim.SGD(0.1))
    assert step.compile_report.program_cache == SAVED
    again = gc.compile(_model(MODEL, "model.py", name), optimizer=gc.optim.SGD(0.1))
    assert again.compile_report.program_cache == LOADED
    assert _train(step) == _train(again)


def test_custom_ops_and_switched_off_cache_are_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    twice = gc.custom_op("twice_for_cache_test", lambda a: 2 * a, scalar="({0} + {0})",
                         vjp=lambda g, out, a: g * 2)
    g = gc.Graph(_unique())
    x = g.input("x", (None, 4))
    loss = gc.mean(twice(gc.nn.linear(x, 2, name="fc")))
    step = gc.compile(loss, optimizer=gc.optim.SGD(0.1))
    assert step.compile_report.program_cache.startswith("not kept")
    monkeypatch.setenv("GRAPHC_PROGRAM_CACHE", "0")
    off = gc.compile(_model(MODEL, "model.py", _unique()), optimizer=gc.optim.SGD(0.1))
    assert "GRAPHC_PROGRAM_CACHE" in off.compile_report.program_cache


def test_another_process_loads_the_program(tmp_path: os.PathLike) -> None:
    name = _unique()
    script = tmp_path / "train.py"
    script.write_text(MODEL + f"""
import numpy as np
step = gc.compile(build({name!r}, 16), optimizer=gc.optim.Adam(1e-2))
rng = np.random.default_rng(0)
loss = step(x=rng.standard_normal((12, 8)).astype(np.float32), y=rng.integers(0, 3, 12))
print(step.compile_report.program_cache, "|", repr(loss))
""")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    runs = [subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                           env=env, timeout=600) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    first, second = (run.stdout.strip().splitlines()[-1].split(" | ") for run in runs)
    assert first[0] == SAVED and second[0] == LOADED
    assert first[1] == second[1]
