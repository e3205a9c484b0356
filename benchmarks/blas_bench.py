"""Float32 matrix products as graphc's compiled steps run them, per OpenBLAS kernel set.

For each kernel set (``GRAPHC_BLAS_CORETYPE``, see kernels/cpu/blas_arch.py) a fresh process
times ``matmul_into(a, b, out)`` (kernels/cpu/blas.py) on the products of the ``mnist``
workload (forward, weight gradient with a transposed operand) with 1 and 2 BLAS threads,
and prints GFLOP/s (median of the rounds).

Run from the repository root::

    python benchmarks/blas_bench.py [--cores Haswell SkylakeX] [--rounds 50]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAPES = ((128, 784, 512, False), (784, 128, 512, True), (128, 512, 512, False))


def measure(rounds: int) -> None:
    """In this process: GFLOP/s of each product, 1 and 2 BLAS threads."""
    sys.path.insert(0, str(REPO_ROOT))
    import numpy as np

    # importing blas loads SciPy's OpenBLAS with the kernels GRAPHC_BLAS_CORETYPE asks for
    from graphc.kernels.cpu.blas import matmul_into
    from graphc.kernels.cpu.threads import core_name, set_blas_threads
    from numba import njit

    @njit(nogil=True)
    def ten_products(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        for _ in range(10):
            matmul_into(a, b, out)

    rng = np.random.default_rng(0)
    for threads in (1, 2):
        set_blas_threads(threads)
        for m, k, n, transposed in SHAPES:
            a = rng.standard_normal((k, m) if transposed else (m, k)).astype(np.float32)
            a = a.T if transposed else a
            b = rng.standard_normal((k, n)).astype(np.float32)
            out = np.zeros((m, n), np.float32)
            ten_products(a, b, out)
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                ten_products(a, b, out)
                times.append((time.perf_counter() - start) / 10)
            rate = 2 * m * k * n / float(np.median(times)) / 1e9
            shape = f"{m}x{k}x{n}{' (a transposed)' if transposed else ''}"
            print(f"{core_name():<10} threads {threads}  {shape:<26} {rate:7.1f} GFLOP/s",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cores", nargs="+", default=["Haswell", "SkylakeX"],
                        help="OpenBLAS kernel sets (GRAPHC_BLAS_CORETYPE values)")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.rounds)
        return
    for core in args.cores:
        env = dict(os.environ, GRAPHC_BLAS_CORETYPE=core)
        subprocess.run([sys.executable, __file__, "--measure", "--rounds", str(args.rounds)],
                       env=env, check=True)


if __name__ == "__main__":
    main()
