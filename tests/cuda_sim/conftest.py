"""The CUDA target on Numba's CUDA simulator.

These tests need NUMBA_ENABLE_CUDASIM=1 set before numba is first imported, so they run in
a process of their own: tests/test_cuda.py starts `python -m pytest tests/cuda_sim` with
the variable set (part of the default `python -m pytest` run). In any other process the
files here are not collected. Run them directly with

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda_sim

or on a real GPU with GRAPHC_CUDA_GPU_TESTS=1 instead of NUMBA_ENABLE_CUDASIM=1.

The simulator runs each CUDA thread as a Python thread (~150 us each) and its
`syncthreads` polls, costing a whole GIL switch interval (5 ms by default): a 0.1 ms
interval makes barrier-heavy kernels (tree reductions, tiled matmul) ~10x faster. The
code generator picks tiny blocks on the simulator (graphc.backends.cuda.codegen.default_config).
"""

from __future__ import annotations

import os
import sys


def simulating() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"):
        return False
    from numba.core import config

    return bool(config.ENABLE_CUDASIM)


def on_gpu() -> bool:
    """GRAPHC_CUDA_GPU_TESTS=1 runs this suite on a real GPU (tests/test_cuda.py does,
    when one is present)."""
    return os.environ.get("GRAPHC_CUDA_GPU_TESTS") == "1" and not simulating()


def pytest_configure(config) -> None:  # type: ignore[no-untyped-def]
    if simulating():
        # The simulator runs device code as Python on numpy scalars: the dropout hash's
        # intended uint64 wrap-around and inf - inf in the non-finite test warn there.
        for text in ("overflow encountered in scalar", "invalid value encountered in scalar"):
            config.addinivalue_line("filterwarnings", f"ignore:{text}:RuntimeWarning")


if simulating():
    sys.setswitchinterval(1e-4)
elif not on_gpu():
    collect_ignore_glob = ["test_*.py"]
