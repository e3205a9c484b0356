"""Which OpenBLAS kernels the compiled steps' matrix products use.

OpenBLAS picks its kernels from the CPU it detects, and maps some CPUs with AVX-512 (AMD
Zen 4 and 5, for one) to its AVX2 "Haswell" kernels: measured on a 2-core AMD EPYC with
AVX-512 (OpenBLAS 0.3.30 from SciPy), a 128x784x512 float32 product ran at 107 GFLOP/s per
core with the Haswell kernels and 199 GFLOP/s with the AVX-512 "SkylakeX" ones. SciPy's
OpenBLAS, which Numba's `np.dot` calls, reads its kernel choice (`OPENBLAS_CORETYPE`) once,
when it is loaded, and graphc loads it first of all (importing this module does), with:

- `GRAPHC_BLAS_CORETYPE` if set (an OpenBLAS core name such as SkylakeX or Haswell, or
  `detect` to let OpenBLAS choose);
- else `OPENBLAS_CORETYPE` if set: the environment's choice is kept;
- else SkylakeX on a CPU with every AVX-512 extension those kernels use.

The environment is put back afterwards, so processes started later see it unchanged.
"""

from __future__ import annotations

import os

SKYLAKEX_FLAGS = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux), or an empty set."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def preferred_coretype() -> str | None:
    """The OpenBLAS core type graphc loads SciPy's OpenBLAS with, or None to leave the
    choice to OpenBLAS (and to `OPENBLAS_CORETYPE`)."""
    chosen = os.environ.get("GRAPHC_BLAS_CORETYPE")
    if chosen:
        return None if chosen == "detect" else chosen
    if "OPENBLAS_CORETYPE" in os.environ:
        return None
    return "SkylakeX" if SKYLAKEX_FLAGS <= cpu_flags() else None


def load_blas() -> None:
    """Load SciPy's OpenBLAS (Numba's BLAS) with the preferred kernels. Has no effect if it
    is already loaded (the user imported scipy.linalg or scipy.special before graphc)."""
    coretype = preferred_coretype()
    saved = os.environ.get("OPENBLAS_CORETYPE")
    if coretype is not None:
        os.environ["OPENBLAS_CORETYPE"] = coretype
    elif os.environ.get("GRAPHC_BLAS_CORETYPE") == "detect":
        os.environ.pop("OPENBLAS_CORETYPE", None)
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (loads the library)
    except ImportError:
        pass
    finally:
        if saved is None:
            os.environ.pop("OPENBLAS_CORETYPE", None)
        else:
            os.environ["OPENBLAS_CORETYPE"] = saved


load_blas()
