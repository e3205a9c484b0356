"""The BLAS thread count of the OpenBLAS compiled steps call (SciPy's copy).

Small matrix products run faster on one thread: with several, OpenBLAS spends more time
waking and synchronising threads than multiplying (measured: a 64-128-128-10 MLP step took
3.9 ms with 2 threads, 0.21 ms with 1, on a 2-core machine). Large ones gain from all cores.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Iterator
from typing import Any

from graphc.kernels.cpu.blas_arch import SETTERS, openblas_library

_GETTERS = ("scipy_openblas_get_num_threads", "openblas_get_num_threads")
_CORENAMES = ("scipy_openblas_get_corename", "openblas_get_corename")


def _function(names: tuple[str, ...]) -> Any:
    lib = openblas_library()
    return next((getattr(lib, n) for n in names if hasattr(lib, n)), None) if lib else None


def core_name() -> str:
    """The kernels SciPy's OpenBLAS runs (e.g. "Haswell", "SkylakeX"), or "unknown"."""
    fn = _function(_CORENAMES)
    if fn is None:
        return "unknown"
    fn.restype = ctypes.c_char_p
    return fn().decode().strip()


def available() -> bool:
    """Whether the thread count of the compiled steps' BLAS can be controlled here."""
    return _function(SETTERS) is not None


def current_threads() -> int | None:
    """SciPy's OpenBLAS thread count now, or None if it cannot be read."""
    getter = _function(_GETTERS)
    return int(getter()) if getter is not None else None


@functools.cache
def max_threads() -> int:
    """The thread count SciPy's OpenBLAS started with (all cores, unless the environment
    says otherwise)."""
    return current_threads() or os.cpu_count() or 1


def set_blas_threads(n: int) -> None:
    """Use `n` BLAS threads from now on (benchmarks; a compiled step sets its own count for
    the call and then restores this one: `blas_threads`)."""
    setter = _function(SETTERS)
    if setter is not None:
        setter(int(n))


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Run the block with `n` BLAS threads, then put back the count set before (SciPy's
    OpenBLAS is shared with the rest of the process)."""
    setter, before = _function(SETTERS), current_threads()
    if setter is None or before is None or before == n:
        yield
        return
    setter(int(n))
    try:
        yield
    finally:
        setter(before)


def limit_threads(n: int) -> None:
    """Use at most `n` BLAS threads for compiled steps from now on (one of several processes
    sharing the machine: its share of the cores)."""
    global MAX_THREADS
    MAX_THREADS = max(1, int(n))


def threads_for(flops: float) -> int:
    """Threads worth using for the largest matrix product of a step (2*m*k*n flops; a
    convolution's im2col GEMMs count too: 2 threads took a 64x1x28x28 CNN step from 15.9 to
    14.4 ms on a quiet 2-core machine).

    `GRAPHC_BLAS_THREADS` overrides. Below ~32 MFLOP per product, waking a second thread
    costs more than it saves; on a machine whose other core is busy, two threads made even
    a 6 MFLOP product ~100x slower (15 ms instead of 0.1 ms), so only large ones use more.
    """
    forced = os.environ.get("GRAPHC_BLAS_THREADS")
    if forced:
        return max(1, int(forced))
    return 1 if flops < 32e6 else max_threads()


def shard_count() -> int:
    """How many shards a batch-sharded step splits its batch into: `GRAPHC_SHARDS`, default
    1 (a serial step). Parallel regions pay at run time only for small models run for many
    steps: measured on 2 cores, a 64-128-128-10 MLP step (batch 64) took 0.10-0.145 ms with
    2 shards against 0.125-0.135 ms serial, but compiled in 6.3 s instead of 3.0 s; the
    784-512-512-10 step (batch 128) was no faster (2.5-2.7 ms; BLAS already used both
    cores). Results depend on the count (partial sums are added per shard)."""
    forced = os.environ.get("GRAPHC_SHARDS")
    return max(1, int(forced)) if forced else 1


def shards_for(batch: int) -> int:
    """Shards for a batch of `batch` rows: every shard gets at least one row."""
    return max(1, min(shard_count(), batch))
