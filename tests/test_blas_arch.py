"""graphc leaves the BLAS libraries of the process as they would be without it
(kernels/cpu/blas_arch.py): `import graphc` and a compile change neither NumPy's nor SciPy's
OpenBLAS kernels, honour a user's OPENBLAS_CORETYPE, leave no import hook behind and put the
environment back; GRAPHC_BLAS_CORETYPE is an explicit request for SciPy's copy. Each case
runs in a new process (a library picks its kernels once, when it is loaded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from graphc.kernels.cpu import blas_arch
from graphc.kernels.cpu.threads import core_name

pytest.importorskip("threadpoolctl")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMPILE = ("g = graphc.Graph('t', seed=0)\n"
           "x = g.input('x', (None, 4))\n"
           "f = graphc.compile([graphc.nn.linear(x, 3, name='fc')])\n"
           "f(x=numpy.ones((2, 4), numpy.float32))\n")

# which kernels each OpenBLAS of the process runs, the environment, the import hooks
REPORT = ("import threadpoolctl, sys\n"
          "cores = {('numpy' if 'numpy.libs' in i['filepath'] else 'scipy'): i['architecture']"
          " for i in threadpoolctl.threadpool_info() if i['internal_api'] == 'openblas'}\n"
          "hooks = [type(f).__module__ for f in sys.meta_path]\n"
          "print(json.dumps({'cores': cores, 'env': os.environ.get('OPENBLAS_CORETYPE'),"
          " 'hooks': [h for h in hooks if h.split('.')[0] == 'graphc']}))\n")


def run(prelude: str, **env: str) -> dict:
    """What REPORT prints in a new process after `prelude` then `import numpy, scipy.linalg`,
    with `env` on top of ours (GRAPHC_/OPENBLAS_CORETYPE removed unless given)."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("OPENBLAS_CORETYPE", "GRAPHC_BLAS_CORETYPE")}
    code = f"import json, os\n{prelude}\nimport numpy, scipy.linalg\n{REPORT}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(base, PYTHONPATH=REPO, **env), timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("env", [{}, {"OPENBLAS_CORETYPE": "Haswell"}])
@pytest.mark.parametrize("prelude", ["import graphc", f"import graphc, numpy\n{COMPILE}"])
def test_graphc_changes_no_blas_library(env: dict, prelude: str) -> None:
    without = run("", **env)
    withgc = run(prelude, **env)
    assert withgc == without
    assert withgc["hooks"] == [] and withgc["env"] == env.get("OPENBLAS_CORETYPE")
    if env:   # the user's choice reaches both libraries
        assert set(withgc["cores"].values()) == {"Haswell"}


def test_an_explicit_graphc_coretype_loads_scipys_copy_with_it() -> None:
    without = run("")
    asked = run(f"import graphc, numpy\n{COMPILE}", GRAPHC_BLAS_CORETYPE="Sandybridge")
    assert asked["cores"]["scipy"] == "Sandybridge"
    assert asked["cores"]["numpy"] == without["cores"]["numpy"]   # NumPy's copy untouched
    assert asked["env"] is None and asked["hooks"] == []


def test_compile_report_names_the_kernels_and_threads() -> None:
    prelude = (f"import graphc, numpy\n{COMPILE}"
               "print(json.dumps(str(f.compile_report)))\n")
    base = {k: v for k, v in os.environ.items() if k != "GRAPHC_BLAS_CORETYPE"}
    out = subprocess.run([sys.executable, "-c", f"import json\n{prelude}"], text=True,
                         capture_output=True, env=dict(base, PYTHONPATH=REPO,
                                                       GRAPHC_BLAS_THREADS="1"), timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.splitlines()[-1])
    line = next(line for line in report.splitlines() if "BLAS:" in line)
    assert "OpenBLAS" in line and "1 thread(s)" in line
    assert line.split("OpenBLAS ")[1].split()[0] not in ("", "unknown")


@pytest.mark.parametrize(("value", "want"), [(None, None), ("detect", None), ("env", None),
                                             ("SkylakeX", "SkylakeX")])
def test_requested_coretype(monkeypatch: pytest.MonkeyPatch, value: str | None,
                            want: str | None) -> None:
    monkeypatch.delenv("GRAPHC_BLAS_CORETYPE", raising=False)
    if value is not None:
        monkeypatch.setenv("GRAPHC_BLAS_CORETYPE", value)
    assert blas_arch.requested_coretype() == want


def test_core_name_is_reported() -> None:
    assert isinstance(core_name(), str) and core_name()
