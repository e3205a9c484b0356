"""Which OpenBLAS kernels graphc's matrix products run (kernels/cpu/blas_arch.py).

The choice itself is environment logic (checked here with the CPU flags and environment
replaced); its effect on speed is measured by benchmarks/run.py, not asserted. Loading
leaves the environment as it found it, so subprocesses see the user's settings.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kernels.cpu import blas_arch
from kernels.cpu.threads import core_name

AVX512 = set(blas_arch.SKYLAKEX_FLAGS) | {"avx2", "fma"}


@pytest.mark.parametrize(("env", "flags", "want"), [
    ({}, AVX512, "SkylakeX"),                                   # AVX-512 CPU, nothing set
    ({}, {"avx2", "fma"}, None),                                # no AVX-512: OpenBLAS decides
    ({}, AVX512 - {"avx512bw"}, None),                          # an extension missing
    ({"OPENBLAS_CORETYPE": "Haswell"}, AVX512, "SkylakeX"),     # graphc's choice, not numpy's
    ({"GRAPHC_BLAS_CORETYPE": "env", "OPENBLAS_CORETYPE": "Haswell"}, AVX512, None),
    ({"GRAPHC_BLAS_CORETYPE": "SkylakeX", "OPENBLAS_CORETYPE": "Haswell"}, set(), "SkylakeX"),
    ({"GRAPHC_BLAS_CORETYPE": "detect"}, AVX512, None),
])
def test_preferred_coretype(monkeypatch: pytest.MonkeyPatch, env: dict, flags: set,
                            want: str | None) -> None:
    for var in ("OPENBLAS_CORETYPE", "GRAPHC_BLAS_CORETYPE"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(blas_arch, "cpu_flags", lambda: flags)
    assert blas_arch.preferred_coretype() == want


@pytest.mark.parametrize("env", [{}, {"OPENBLAS_CORETYPE": "Haswell"},
                                 {"GRAPHC_BLAS_CORETYPE": "detect", "OPENBLAS_CORETYPE": "Zen"}])
def test_loading_leaves_the_environment_unchanged(monkeypatch: pytest.MonkeyPatch,
                                                  env: dict) -> None:
    for var in ("OPENBLAS_CORETYPE", "GRAPHC_BLAS_CORETYPE"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    before = dict(os.environ)
    blas_arch.load_blas()
    assert dict(os.environ) == before


def run_python(code: str, **env: str) -> list[str]:
    """The words a new Python process running `code` prints, with `env` added to ours."""
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


CORE_NAME = "import graphc, os; from kernels.cpu.threads import core_name; print(core_name())"


def test_a_new_process_runs_the_kernels_asked_for() -> None:
    """GRAPHC_BLAS_CORETYPE reaches SciPy's OpenBLAS when graphc loads it first."""
    code = CORE_NAME[:-1] + ", os.environ.get('OPENBLAS_CORETYPE'))"
    out = run_python(code, GRAPHC_BLAS_CORETYPE="Haswell", OPENBLAS_CORETYPE="Prescott")
    if out[0] == "unknown":
        pytest.skip("SciPy's OpenBLAS does not report its kernels here")
    assert out == ["Haswell", "Prescott"]   # graphc's choice, the environment untouched


def test_env_follows_openblas_coretype() -> None:
    out = run_python(CORE_NAME, GRAPHC_BLAS_CORETYPE="env", OPENBLAS_CORETYPE="Sandybridge")
    if out[0] == "unknown":
        pytest.skip("SciPy's OpenBLAS does not report its kernels here")
    assert out == ["Sandybridge"]


def test_scipy_linalg_imported_later_is_whole() -> None:
    """graphc loads scipy.linalg.cython_blas without running scipy.linalg's __init__; a
    later `import scipy.linalg` still binds the submodule and works."""
    assert run_python(
        "import sys, numpy as np, graphc\n"
        "assert 'scipy.linalg' not in sys.modules\n"
        "import scipy.linalg\n"
        "import scipy.linalg.cython_blas as cb\n"
        "assert scipy.linalg.cython_blas is cb is sys.modules['scipy.linalg.cython_blas']\n"
        "assert np.allclose(scipy.linalg.inv(np.diag([2.0, 4.0])), np.diag([0.5, 0.25]))\n"
        "print('ok')\n") == ["ok"]


def test_scipy_linalg_imported_first_is_used() -> None:
    assert run_python(
        "import scipy.linalg, graphc\n"
        "from kernels.cpu.blas_arch import import_cython_blas\n"
        "assert import_cython_blas() is scipy.linalg.cython_blas\n"
        "print('ok')\n") == ["ok"]


def test_core_name_is_reported() -> None:
    assert isinstance(core_name(), str) and core_name()
