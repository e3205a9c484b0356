"""Benchmark the convolution and pooling kernels (kernels/cpu/conv.py, kernels/cpu/pool.py)
against the numpy implementations the interpreter uses (graphc/ops/conv.py: im2col through
sliding_window_view + np.tensordot, i.e. BLAS too).

Prints, per workload and direction, the median wall time (ms) of each and the ratio
numpy / kernel (above 1: the kernel wins). Both run with the same BLAS thread count
(`--threads`, default 1: what compiled steps use for small products).

    python benchmarks/conv_bench.py [--repeat 30] [--threads 1]

Measured on the 2-core Xeon development machine while other jobs ran (load average 4.4:
every absolute number is inflated, roughly 2x for the BLAS-bound rows; the ratios are the
point), float32, numba 0.68.1, numpy 2.4.6, one BLAS thread for both:
`python benchmarks/conv_bench.py --repeat 30`, medians in ms:

    workload                      op               kernel     numpy numpy/kernel
    digits x64 1->16 3x3 p1       conv fwd          0.075     0.138       1.8
                                  conv dx           0.086     0.109       1.3
                                  conv dw           0.085     0.130       1.5
    digits x64 16->32 3x3 p1      conv fwd          0.290     0.399       1.4
                                  conv dx           0.248     0.547       2.2
                                  conv dw           0.297     0.399       1.3
    mnist x64 16->32 3x3 p1       conv fwd         24.819    41.446       1.7
                                  conv dx          23.284    57.939       2.5
                                  conv dw          25.378    36.558       1.4
    cifar x32 3->32 5x5 s2 p2     conv fwd          1.208     1.243       1.0
                                  conv dx           1.053     1.799       1.7
                                  conv dw           1.223     1.195       1.0
    pool digits 64x16x8x8 2x2     max fwd           0.070     1.155      16.5
                                  max grad          0.196     0.648       3.3
                                  avg fwd           0.056     0.514       9.1
                                  avg grad          0.055     0.085       1.5
    pool mnist 64x32x28x28 2x2    max fwd           1.692    48.650      28.7
                                  max grad          8.071    31.971       4.0
                                  avg fwd           1.333    22.172      16.6
                                  avg grad          1.331     1.318       1.0

Where the mnist forward goes (minimum of 30 runs each, same loaded machine): im2col
4.8 ms, the SGEMM 5.9 ms (~78 GFLOP/s on one core), the copy to NCHW 0.13 ms; the whole
forward's minimum swings between 10.4 and 20 ms with the load (the GEMM is the floor).
Chunk sizes of 256 to 16384 columns measured the same within that noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graphc.kernels.cpu import conv, pool
from graphc.kernels.cpu.threads import set_blas_threads

from graphc.ops import conv as ref

CONVS = [
    # name, x shape, (O, kh, kw), stride, padding
    ("digits x64 1->16 3x3 p1", (64, 1, 8, 8), (16, 3, 3), (1, 1), (1, 1)),
    ("digits x64 16->32 3x3 p1", (64, 16, 4, 4), (32, 3, 3), (1, 1), (1, 1)),
    ("mnist x64 16->32 3x3 p1", (64, 16, 28, 28), (32, 3, 3), (1, 1), (1, 1)),
    ("cifar x32 3->32 5x5 s2 p2", (32, 3, 32, 32), (32, 5, 5), (2, 2), (2, 2)),
]
POOLS = [
    ("pool digits 64x16x8x8 2x2", (64, 16, 8, 8), (2, 2)),
    ("pool mnist 64x32x28x28 2x2", (64, 32, 28, 28), (2, 2)),
]


def median_ms(fn: Callable[..., object], args: tuple, repeat: int) -> float:
    """Median wall time of fn(*args) in ms (after one warm-up call)."""
    fn(*args)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def row(name: str, op: str, kernel: float, numpy: float) -> None:
    print(f"{name:<30}{op:<14}{kernel:9.3f} {numpy:9.3f} {numpy / kernel:9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    set_blas_threads(args.threads)          # the OpenBLAS Numba's np.dot calls (SciPy's)
    try:                                     # and numpy's own, for the reference
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.threads, user_api="blas")
    except ImportError:
        print("threadpoolctl is not installed: numpy's BLAS keeps its default thread count")
    rng = np.random.default_rng(0)
    dt = np.dtype(args.dtype)
    r = args.repeat
    print(f"{'workload':<30}{'op':<14}{'kernel':>9} {'numpy':>9} {'numpy/kernel':>9}")
    for name, xs, (o, kh, kw), s, p in CONVS:
        x = rng.standard_normal(xs).astype(dt)
        w = rng.standard_normal((o, xs[1], kh, kw)).astype(dt)
        y = ref.conv2d_ref(x, w, s, p)
        g = rng.standard_normal(y.shape).astype(dt)
        out, dx, dw = np.empty_like(y), np.empty_like(x), np.empty_like(w)
        conv.conv2d_forward(x, w, out, *s, *p)
        assert np.allclose(out, y, rtol=1e-4, atol=1e-3)
        row(name, "conv fwd", median_ms(conv.conv2d_forward, (x, w, out, *s, *p), r),
            median_ms(ref.conv2d_ref, (x, w, s, p), r))
        row("", "conv dx", median_ms(conv.conv2d_grad_input, (g, w, dx, *s, *p), r),
            median_ms(ref.conv2d_grad_input_ref, (g, w, s, p, xs[2:]), r))
        row("", "conv dw", median_ms(conv.conv2d_grad_weight, (x, g, dw, *s, *p), r),
            median_ms(ref.conv2d_grad_weight_ref, (x, g, s, p, (kh, kw)), r))
    for name, xs, k in POOLS:
        x = rng.standard_normal(xs).astype(dt)
        y = ref.max_pool2d_ref(x, k, k)
        g = rng.standard_normal(y.shape).astype(dt)
        out, dx = np.empty_like(y), np.empty_like(x)
        row(name, "max fwd", median_ms(pool.max_pool2d_forward, (x, out, *k, *k), r),
            median_ms(ref.max_pool2d_ref, (x, k, k), r))
        row("", "max grad", median_ms(pool.max_pool2d_grad, (g, x, dx, *k, *k), r),
            median_ms(ref.max_pool2d_grad_ref, (g, x, k, k), r))
        row("", "avg fwd", median_ms(pool.avg_pool2d_forward, (x, out, *k, *k), r),
            median_ms(ref.avg_pool2d_ref, (x, k, k), r))
        row("", "avg grad", median_ms(pool.avg_pool2d_grad, (g, dx, *k, *k), r),
            median_ms(ref.avg_pool2d_grad_ref, (g, k, k, xs[2:]), r))


if __name__ == "__main__":
    main()
