"""Which OpenBLAS kernels the compiled steps' matrix products use, and loading them fast.

graphc's matrix products run on SciPy's OpenBLAS, which Numba's `np.dot` calls. OpenBLAS
picks its kernels when it is loaded: from `OPENBLAS_CORETYPE` if set, else from the CPU it
detects, and it maps some CPUs with AVX-512 (AMD Zen 4 and 5, for one) to its AVX2 "Haswell"
kernels. Measured on a 2-core AMD EPYC with AVX-512 (OpenBLAS 0.3.30 from SciPy,
`python benchmarks/blas_bench.py`), a 128x784x512 float32 product ran at 109 GFLOP/s on one
core with the Haswell kernels and 204 GFLOP/s with the AVX-512 "SkylakeX" ones.

The kernels are graphc's choice, as PyTorch's and JAX's are theirs (neither reads
`OPENBLAS_CORETYPE`). graphc loads SciPy's OpenBLAS first of all (importing this module
does), with:

- `GRAPHC_BLAS_CORETYPE` if set: an OpenBLAS core name such as SkylakeX or Haswell,
  `detect` to let OpenBLAS detect the CPU, or `env` to follow `OPENBLAS_CORETYPE`;
- else SkylakeX on a CPU with every AVX-512 extension those kernels use;
- else whatever `OPENBLAS_CORETYPE` or OpenBLAS's detection gives.

The environment is put back afterwards, so processes started later see it unchanged. The
choice also holds for `scipy.linalg` in the same process, which shares that library.
NumPy's own OpenBLAS (a separate copy) is not touched.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

SKYLAKEX_FLAGS = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
CYTHON_BLAS = "scipy.linalg.cython_blas"


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
    choice to OpenBLAS (and to `OPENBLAS_CORETYPE`, when `GRAPHC_BLAS_CORETYPE=env`)."""
    chosen = os.environ.get("GRAPHC_BLAS_CORETYPE")
    if chosen:
        return None if chosen in ("detect", "env") else chosen
    return "SkylakeX" if SKYLAKEX_FLAGS <= cpu_flags() else None


class _LinkCythonBlas:
    """Meta path finder: when `scipy.linalg` is imported after `import_cython_blas` loaded
    its submodule, binds `scipy.linalg.cython_blas` as a normal import would have."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "scipy.linalg":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        loader = getattr(spec, "loader", None)
        if loader is not None and hasattr(loader, "exec_module"):
            exec_package = loader.exec_module

            def exec_module(module: ModuleType) -> None:
                exec_package(module)
                if CYTHON_BLAS in sys.modules:
                    module.cython_blas = sys.modules[CYTHON_BLAS]  # type: ignore[attr-defined]

            loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def import_cython_blas() -> ModuleType | None:
    """`scipy.linalg.cython_blas` (which loads SciPy's OpenBLAS), or None without SciPy.

    Loaded on its own, without running `scipy.linalg/__init__`: that imports numpy.testing
    and f2py among others, 0.1-0.2 s of every `import graphc` (Numba only needs the module
    in `sys.modules`).
    """
    if CYTHON_BLAS in sys.modules:
        return sys.modules[CYTHON_BLAS]
    try:
        import scipy
    except ImportError:
        return None
    where = [os.path.join(os.path.dirname(scipy.__file__), "linalg")]
    found = importlib.machinery.PathFinder.find_spec("cython_blas", where)
    if found is None or found.origin is None or "scipy.linalg" in sys.modules:
        import scipy.linalg.cython_blas as module

        return module
    spec = importlib.util.spec_from_file_location(CYTHON_BLAS, found.origin)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[CYTHON_BLAS] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[CYTHON_BLAS]
        raise
    sys.meta_path.insert(0, _LinkCythonBlas())
    return module


def load_blas() -> None:
    """Load SciPy's OpenBLAS (Numba's BLAS) with the preferred kernels. Has no effect on
    the kernels if it is already loaded (the user imported scipy.linalg or scipy.special
    before graphc)."""
    coretype = preferred_coretype()
    saved = os.environ.get("OPENBLAS_CORETYPE")
    if coretype is not None:
        os.environ["OPENBLAS_CORETYPE"] = coretype
    elif os.environ.get("GRAPHC_BLAS_CORETYPE") == "detect":
        os.environ.pop("OPENBLAS_CORETYPE", None)
    try:
        import_cython_blas()
    finally:
        if saved is None:
            os.environ.pop("OPENBLAS_CORETYPE", None)
        else:
            os.environ["OPENBLAS_CORETYPE"] = saved


load_blas()
