"""The CUDA simulator's `cuda.shared.array` as graphc runs it: one array per launch and call
site, even when the threads of a block ask for it at the same time.

Numba's simulator (numba-cuda simulator/kernelapi.py) looks the array up in a dict and, on
a miss, creates and stores it without a lock: two threads that both miss get arrays of their
own, and a tiled matmul or tree reduction then reads uninitialised memory (this made the
simulator suite's bit-for-bit reproducibility test fail about one run in six).
graphc.backends.cuda.runtime.make_simulator_shared_arrays_thread_safe serialises the miss path.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from graphc.backends.cuda.codegen import simulator_enabled
from graphc.backends.cuda.runtime import make_simulator_shared_arrays_thread_safe

pytestmark = pytest.mark.skipif(not simulator_enabled(), reason="the CUDA simulator only")


class _SlowDim:
    """A dimension whose conversion gives up the GIL: np.empty then takes long enough for
    every other thread to reach the lookup too (without the fix, each makes its own)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __index__(self) -> int:
        time.sleep(0.002)
        return self.n


def test_threads_of_a_block_get_one_shared_array() -> None:
    from numba.cuda.simulator.kernelapi import FakeCUDAShared

    make_simulator_shared_arrays_thread_safe()
    make_simulator_shared_arrays_thread_safe()  # idempotent
    shared = FakeCUDAShared(0)
    threads = 8
    start = threading.Barrier(threads)
    got: list[object] = [None] * threads

    def thread(k: int) -> None:
        start.wait()
        got[k] = shared.array((_SlowDim(4),), np.float32)  # one call site, as in a kernel

    workers = [threading.Thread(target=thread, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len({id(a) for a in got}) == 1
    first = got[0]
    assert isinstance(first, np.ndarray)
    assert first.shape == (4,) and first.dtype == np.float32
    # another call site is another array; dynamic shared memory (size 0) is unchanged
    assert shared.array((4,), np.float32) is not first
    assert shared.array(0, np.dtype(np.float32)).size == 0
