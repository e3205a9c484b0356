"""Benchmark the float32 functions of ``graphc.kernels.cpu.fastmath`` against numpy and libm.

For each function and size it prints median wall times (microseconds) of:

* ``numpy``: the numpy ufunc writing into a preallocated float32 array;
* ``njit math``: an ``njit`` loop calling ``math.*`` (scalar libm calls);
* ``njit fast``: the same loop calling the ``*_f32`` function;

and the ratios ``numpy / fast`` and ``math / fast`` (above 1: the fast loop wins).

Run from the repository root::

    python benchmarks/fastmath_bench.py [--sizes 65536 1048576] [--repeat 101]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graphc.kernels.cpu import fastmath

Kernel = Callable[[np.ndarray, np.ndarray], object]


def _loop(fn: Callable[[float], float]) -> Kernel:
    """An ``njit`` loop ``out[i] = fn(a[i])``."""

    @numba.njit
    def kernel(a: np.ndarray, out: np.ndarray) -> None:
        for i in range(a.size):
            out[i] = fn(a[i])

    return kernel


@numba.njit
def _math_sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _np_sigmoid(a: np.ndarray, out: np.ndarray) -> None:
    np.negative(a, out=out)
    np.exp(out, out=out)
    out += np.float32(1.0)
    np.reciprocal(out, out=out)


def _ufunc(f: np.ufunc) -> Kernel:
    def run(a: np.ndarray, out: np.ndarray) -> None:
        f(a, out=out)

    return run


def _math(f: Callable[[float], float]) -> Callable[[float], float]:
    @numba.njit
    def g(x: float) -> float:
        return f(x)

    return g


# name, numpy version, libm scalar function, fast scalar function, input sampler
CASES: list[tuple[str, Kernel, Callable, Callable, Callable]] = [
    (
        "exp",
        _ufunc(np.exp),
        _math(math.exp),
        fastmath.exp_f32,
        lambda g, n: g.uniform(-87.0, 88.0, n),
    ),
    (
        "tanh",
        _ufunc(np.tanh),
        _math(math.tanh),
        fastmath.tanh_f32,
        lambda g, n: g.uniform(-5.0, 5.0, n),
    ),
    (
        "log",
        _ufunc(np.log),
        _math(math.log),
        fastmath.log_f32,
        lambda g, n: g.uniform(1e-3, 1e3, n),
    ),
    (
        "sigmoid",
        _np_sigmoid,
        _math_sigmoid,
        fastmath.sigmoid_f32,
        lambda g, n: g.uniform(-20.0, 20.0, n),
    ),
    (
        "expm1",
        _ufunc(np.expm1),
        _math(math.expm1),
        fastmath.expm1_f32,
        lambda g, n: g.uniform(-5.0, 5.0, n),
    ),
    (
        "log1p",
        _ufunc(np.log1p),
        _math(math.log1p),
        fastmath.log1p_f32,
        lambda g, n: g.uniform(-0.9, 1e3, n),
    ),
]


def median_us(fn: Kernel, a: np.ndarray, out: np.ndarray, repeat: int) -> float:
    """Median wall time of ``fn(a, out)`` in microseconds, after one warm-up call."""
    fn(a, out)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(a, out)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


def main(argv: list[str] | None = None) -> None:
    """Print the timing table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1 << 16, 1 << 20])
    parser.add_argument("--repeat", type=int, default=101, help="timed calls per cell")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    print(f"numba {numba.__version__}, numpy {np.__version__}; median of {args.repeat} calls, us")
    header = (
        f"{'func':8s} {'n':>8s} {'numpy':>9s} {'njit math':>10s} {'njit fast':>10s}"
        f" {'numpy/fast':>11s} {'math/fast':>10s}"
    )
    print(header)
    print("-" * len(header))
    for name, np_fn, math_fn, fast_fn, sample in CASES:
        math_loop, fast_loop = _loop(math_fn), _loop(fast_fn)
        for n in args.sizes:
            a = sample(rng, n).astype(np.float32)
            out = np.empty_like(a)
            t_np = median_us(np_fn, a, out, args.repeat)
            t_math = median_us(math_loop, a, out, args.repeat)
            t_fast = median_us(fast_loop, a, out, args.repeat)
            print(
                f"{name:8s} {n:8d} {t_np:9.1f} {t_math:10.1f} {t_fast:10.1f}"
                f" {t_np / t_fast:11.2f} {t_math / t_fast:10.2f}"
            )


if __name__ == "__main__":
    main()
