"""Cache identity: kernels are keyed by what they compute, never by where the user's code is.

Each case runs user scripts in new processes on one fresh GRAPHC_CACHE_DIR, as a user would:
the same graph from an edited, renamed or moved script compiles nothing; a changed layer
compiles only the kernels it changed; generated kernels hold no path or line of user code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

MODEL = """
import json, sys
import numpy as np
import graphc as gc
from graphc.backends.cpu.compile_kernels import compile_count

g = gc.Graph("mlp", seed=0)
x = g.input("x", (None, 12))
y = g.input("y", (None,), dtype="int64")
h = gc.tanh(gc.nn.linear(x, {hidden}, name="fc1"))
h = gc.relu(gc.nn.linear(h, 16, name="fc2"))
loss = gc.mean(gc.softmax_cross_entropy(gc.nn.linear(h, 3, name="fc3"), y))
step = gc.compile(loss, optimizer=gc.optim.Adam(lr=1e-2))
rng = np.random.default_rng(0)
value = step(x=rng.normal(size=(8, 12)).astype(np.float32), y=rng.integers(0, 3, size=8))
r = step.compile_report
print(json.dumps({{"written": r.cache_written, "reused": r.cache_reused,
                  "unique": r.unique_kernels, "compiled": compile_count(),
                  "workers": r.compile_workers,
                  "loss": value, "paths": sorted({{k.path for k in step.kernels}}),
                  "source": step.source}}))
"""


def run_script(path: Path, cache: Path, workers: int = 0) -> dict:
    env = dict(os.environ, GRAPHC_CACHE_DIR=str(cache), GRAPHC_COMPILE_WORKERS=str(workers))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(path)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    base = tmp_path_factory.mktemp("identity")
    cache = base / "cache"
    script = write(base / "a" / "train.py", MODEL.format(hidden=24))
    return cache, run_script(script, cache), script


def test_cold_compile_writes_and_compiles_every_kernel(first_run: tuple) -> None:
    _, cold, _ = first_run
    assert cold["written"] == cold["unique"] and cold["reused"] == 0
    assert cold["compiled"] == cold["unique"] + 1   # every kernel and the executor


def test_edited_renamed_moved_script_compiles_nothing(first_run: tuple, tmp_path: Path) -> None:
    cache, cold, _ = first_run
    edited = "# a comment\n\n# another one, and blank lines\n\n" + MODEL.format(hidden=24)
    script = write(tmp_path / "elsewhere" / "renamed_model.py", edited)
    warm = run_script(script, cache)
    assert warm["written"] == 0 and warm["reused"] == cold["unique"]
    assert warm["compiled"] == 0, "an edit that keeps the graph compiled kernels"
    assert warm["paths"] == cold["paths"]
    assert warm["loss"] == cold["loss"]
    # provenance stays visible beside the code: the listing names the new script
    assert "renamed_model.py" in warm["source"] and "renamed_model.py" not in cold["source"]


def test_model_built_from_another_script_shares_kernels(first_run: tuple,
                                                        tmp_path: Path) -> None:
    cache, _, first = first_run
    # the same model defined in a module and built by a second script that imports it
    module = write(tmp_path / "lib" / "models_lib.py", textwrap.dedent(f"""
        def build():
            exec(open({str(first)!r}).read(), globals())
    """))
    runner = write(tmp_path / "run_other.py",
                   f"import sys\nsys.path.insert(0, {str(module.parent)!r})\n"
                   "import models_lib\nmodels_lib.build()\n")
    warm = run_script(runner, cache)
    assert warm["compiled"] == 0 and warm["written"] == 0


def test_changed_width_compiles_only_what_changed(first_run: tuple, tmp_path: Path) -> None:
    cache, cold, _ = first_run
    changed = run_script(write(tmp_path / "wider.py", MODEL.format(hidden=40)), cache)
    # sizes are run-time arguments: a new width is the same computation
    assert changed["written"] == 0 and changed["compiled"] == 0
    assert changed["loss"] != cold["loss"]


def test_changed_op_misses_the_cache_for_its_kernels_only(first_run: tuple,
                                                          tmp_path: Path) -> None:
    cache, cold, _ = first_run
    text = MODEL.format(hidden=24).replace("gc.tanh(", "gc.sigmoid(")
    changed = run_script(write(tmp_path / "sigmoid.py", text), cache)
    assert 0 < changed["written"] < cold["unique"]
    assert changed["compiled"] == changed["written"]


def test_kernel_sources_hold_no_user_path_or_line(first_run: tuple) -> None:
    _, cold, script = first_run
    for path in cold["paths"]:
        text = Path(path).read_text()
        assert str(script.parent) not in text and "train.py" not in text, path


def test_worker_processes_compile_the_same_kernels(first_run: tuple, tmp_path: Path) -> None:
    _, cold, script = first_run
    # two workers beside the compiling process, on an empty cache: each takes kernels from
    # the one queue; their machine code is loaded here and computes the same loss
    shared = run_script(script, tmp_path / "cache", workers=2)
    assert shared["workers"] >= 1, "no worker compiled a kernel"
    assert shared["compiled"] == cold["compiled"] and shared["written"] == cold["written"]
    assert shared["loss"] == cold["loss"]
