"""The BLAS thread count of the OpenBLAS that Numba's `np.dot` calls (SciPy's copy).

Small matrix products run faster on one thread: with several, OpenBLAS spends more time
waking and synchronising threads than multiplying (measured: a 64-128-128-10 MLP step took
3.9 ms with 2 threads, 0.21 ms with 1, on a 2-core machine). Large ones gain from all cores.
"""

from __future__ import annotations

import ctypes
import glob
import os

from kernels.cpu.blas_arch import import_cython_blas

_SETTERS = ("scipy_openblas_set_num_threads", "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads", "openblas_get_num_threads")
_CORENAMES = ("scipy_openblas_get_corename", "openblas_get_corename")


def _library() -> ctypes.CDLL | None:
    """SciPy's OpenBLAS (the copy Numba's `np.dot` calls), or None."""
    if import_cython_blas() is None:
        return None
    import scipy

    libs = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "libscipy_openblas*.so*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if any(hasattr(lib, n) for n in _SETTERS):
            return lib
    return None


def _load() -> tuple[object | None, object | None]:
    lib = _library()
    if lib is None:
        return None, None
    setter = next((getattr(lib, n) for n in _SETTERS if hasattr(lib, n)), None)
    getter = next((getattr(lib, n) for n in _GETTERS if hasattr(lib, n)), None)
    return setter, getter


def core_name() -> str:
    """The kernels SciPy's OpenBLAS runs (e.g. "Haswell", "SkylakeX"), or "unknown"."""
    lib = _library()
    fn = next((getattr(lib, n) for n in _CORENAMES if hasattr(lib, n)), None) if lib else None
    if fn is None:
        return "unknown"
    fn.restype = ctypes.c_char_p
    return fn().decode().strip()


_setter, _getter = _load()
_current: int | None = None
MAX_THREADS = _getter() if _getter is not None else (os.cpu_count() or 1)


def available() -> bool:
    """Whether the thread count of Numba's BLAS can be controlled here."""
    return _setter is not None


def set_blas_threads(n: int) -> None:
    """Use `n` BLAS threads for the matrix products of compiled steps (cheap if unchanged)."""
    global _current
    if _setter is None or n == _current:
        return
    _setter(int(n))
    _current = n


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
    return 1 if flops < 32e6 else MAX_THREADS


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
