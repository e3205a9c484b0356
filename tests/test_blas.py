"""The matrix products of compiled code (kernels/cpu/blas.py): `matmul_into` against numpy
for both storage orders of each operand, and a warm start that calls SciPy's OpenBLAS
without importing `scipy.linalg`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from graphc.kernels.cpu.blas import matmul_into
from numba import njit
from numba.core.errors import TypingError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# float64 products of O(1) values over k <= 40 terms: BLAS and numpy may sum in different
# orders, ~k ulps apart; float32 likewise at its own epsilon.
TOL = {np.float64: 1e-12, np.float32: 1e-5}


def _layouts(rng: np.random.Generator, rows: int, cols: int, dtype: type) -> dict:
    """A (rows, cols) matrix in C order, in Fortran order, and as the transpose of a C
    array (Fortran-ordered to Numba, as conv kernels pass weights)."""
    base = rng.standard_normal((rows, cols)).astype(dtype)
    return {"C": base, "F": np.asfortranarray(base), "transposed": base.T.copy().T}


@njit
def _product(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    matmul_into(a, b, out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("m", "k", "n"), [(5, 7, 3), (1, 6, 4), (6, 1, 5), (4, 6, 1),
                                           (1, 1, 1), (17, 40, 9)])
def test_matmul_into_matches_numpy_for_both_orders(dtype: type, m: int, k: int,
                                                   n: int) -> None:
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    lefts, rights = _layouts(rng, m, k, dtype), _layouts(rng, k, n, dtype)
    want = lefts["C"].astype(np.float64) @ rights["C"].astype(np.float64)
    for out_name, out in _layouts(rng, m, n, dtype).items():
        for a_name, a in lefts.items():
            for b_name, b in rights.items():
                out[...] = np.nan
                _product(a, b, out)
                err = np.max(np.abs(out - want)) / max(1.0, np.max(np.abs(want)))
                assert err <= TOL[dtype], (a_name, b_name, out_name, err)


def test_matmul_into_refuses_strided_operands_when_compiled() -> None:
    a = np.ones((4, 6))[:, ::2]
    with pytest.raises(TypingError, match="C- or Fortran-ordered"):
        _product(a, np.ones((3, 2)), np.zeros((4, 2)))


@pytest.mark.parametrize(("m", "k", "n"), [(0, 3, 4), (3, 0, 4), (3, 4, 0)])
def test_matmul_into_with_an_empty_axis(m: int, k: int, n: int) -> None:
    a, b = np.ones((m, k)), np.ones((k, n))
    out = np.full((m, n), np.nan)
    _product(a, b, out)
    assert np.array_equal(out, np.zeros((m, n)))     # an empty sum is 0, as in numpy


def test_matmul_into_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shapes"):
        _product(np.ones((2, 3)), np.ones((4, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="shapes"):
        _product(np.ones((2, 3)), np.ones((3, 2)), np.zeros((3, 2)))


WARM = ("import json, sys, numpy, graphc\n"
        "g = graphc.Graph('t', seed=0)\n"
        "x = g.input('x', (None, 4))\n"
        "f = graphc.compile([graphc.nn.linear(x, 3, name='fc')])\n"
        "out = f(x=numpy.ones((2, 4), numpy.float32))\n"
        "print(json.dumps({'linalg': 'scipy.linalg' in sys.modules,"
        " 'out': numpy.asarray(out).tolist()}))\n")


def test_a_warm_start_calls_blas_without_importing_scipy_linalg(tmp_path: object) -> None:
    """The second process loads the step from the program cache: its matrix product runs
    on SciPy's OpenBLAS, bound by symbol, and `scipy.linalg` (0.13-0.19 s to import) is
    never imported. The first compiles, and Numba's compiler imports it."""
    env = dict(os.environ, PYTHONPATH=REPO, GRAPHC_CACHE_DIR=str(tmp_path))
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", WARM], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout.splitlines()[-1]))
    assert runs[1]["linalg"] is False
    assert runs[1]["out"] == runs[0]["out"]


FALLBACK = ("import json, sys, numpy, graphc\n"
            "from graphc.kernels.cpu import blas_arch\n"
            "blas_arch._scipy_libraries = lambda: []   # as where SciPy has no wheel's file\n"
            "from graphc.kernels.cpu.blas import matmul_into\n"
            "from numba import njit\n"
            "rng = numpy.random.default_rng(0)\n"
            "a, b = rng.standard_normal((5, 7)), rng.standard_normal((7, 3))\n"
            "out = numpy.zeros((5, 3))\n"
            "njit(lambda a, b, out: matmul_into(a, b, out))(a, b.T.copy().T, out)\n"
            "print(json.dumps({'linalg': 'scipy.linalg' in sys.modules,"
            " 'err': float(abs(out - a @ b).max())}))\n")


def test_without_the_wheels_library_the_routines_come_from_cython_blas() -> None:
    """Where SciPy's OpenBLAS file cannot be found (SciPy built from source, other
    distributions), the routines are taken from `scipy.linalg.cython_blas`."""
    env = dict(os.environ, PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["linalg"] is True and result["err"] < 1e-12
