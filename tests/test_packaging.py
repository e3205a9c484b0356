"""The kernel library is `graphc.kernels`, never a top-level `kernels` package.

In the repository it is the folder kernels/ beside graphc/ (graphc/_library.py imports it
under graphc's name); installed, it is graphc/kernels (pyproject.toml maps the folder
there). Both layouts are run in new processes: importing graphc and compiling a step put no
`kernels` module in sys.modules, and compile workers import the library without graphc.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A module path of the library without the graphc prefix: an import of the top-level name.
TOP_LEVEL = re.compile(r"(?<![\w./])kernels\.(?:cpu|cuda)\b|^\s*(?:from|import)\s+kernels\b",
                       re.MULTILINE)

PROBE = """
import importlib, json, pkgutil, sys
import graphc
import graphc.kernels
for info in pkgutil.walk_packages(graphc.kernels.__path__, "graphc.kernels."):
    importlib.import_module(info.name)
report = {"library": graphc.kernels.__file__, "graphc": graphc.__file__}
"""

REPORT = """
report["top_level"] = sorted(m for m in sys.modules if m.split(".")[0] == "kernels")
print(json.dumps(report))
"""

# A step whose kernels are compiled by a worker process as well as this one, then run.
STEP = """
import numpy as np
import graphc as gc
from graphc.backends.cpu.compile_kernels import _Worker
worker = _Worker()
report["worker_ready"] = worker.wait_ready(lambda: not worker.alive())
g = gc.Graph("tiny", seed=0)
x = g.input("x", (None, 3))
y = g.input("y", (None,), dtype="int64")
h = gc.nn.dropout(gc.tanh(gc.nn.linear(x, 4, name="fc1")), 0.25)
loss = gc.mean(gc.softmax_cross_entropy(gc.nn.linear(h, 2, name="fc2"), y))
step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))
report["loss"] = float(step(x=np.ones((5, 3), np.float32), y=np.zeros(5, np.int64)))
"""


def run_python(code: str, pythonpath: Path, cwd: Path, cache: Path) -> dict:
    """Run `code` in a new interpreter with only `pythonpath` added; its last line, as JSON."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(pythonpath), GRAPHC_CACHE_DIR=str(cache),
               GRAPHC_COMPILE_WORKERS="1")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_checkout_imports_the_library_under_graphc(tmp_path: Path) -> None:
    report = run_python(PROBE + REPORT, ROOT, ROOT, tmp_path / "cache")
    assert report["top_level"] == []
    assert Path(report["library"]) == ROOT / "kernels" / "__init__.py"
    assert Path(report["graphc"]) == ROOT / "graphc" / "__init__.py"


def test_installed_layout_compiles_and_runs_a_step(tmp_path: Path) -> None:
    # graphc/ with kernels/ inside it, as the wheel installs them, run from elsewhere
    site = tmp_path / "site"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "graphc", site / "graphc", ignore=ignore)
    shutil.copytree(ROOT / "kernels", site / "graphc" / "kernels", ignore=ignore)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    report = run_python(PROBE + STEP + REPORT, site, elsewhere, tmp_path / "cache")
    assert report["top_level"] == []
    assert Path(report["library"]) == site / "graphc" / "kernels" / "__init__.py"
    assert Path(report["graphc"]) == site / "graphc" / "__init__.py"
    assert report["worker_ready"], "a compile worker could not import the kernel library"
    assert report["loss"] > 0


def test_no_source_names_a_top_level_kernels_module() -> None:
    named = []
    for folder in ("graphc", "kernels", "tests", "benchmarks", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            named += [f"{path.relative_to(ROOT)}: {m.group(0).strip()}"
                      for m in TOP_LEVEL.finditer(text)]
    assert named == [], "use graphc.kernels: " + "; ".join(named)
