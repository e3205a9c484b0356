"""Loading the OpenBLAS the compiled steps' matrix products run on, without changing it
for anyone else.

graphc's matrix products run on SciPy's OpenBLAS (kernels/cpu/blas.py calls its `sgemm` and
`dgemm` by symbol). That library is shared with `scipy.linalg` (and NumPy has its own copy),
so graphc leaves it as the user's environment makes it: `import graphc` loads neither, and
the first CPU compile loads SciPy's copy the ordinary way, after NumPy, with the environment
untouched -- from the file in SciPy's wheel that `scipy.linalg.cython_blas` links, without
importing `scipy.linalg` (0.13-0.19 s, SciPy's array-API layer imports `numpy.f2py`), or,
where SciPy has no such file (built from source, other distributions), by importing
`scipy.linalg.cython_blas` and taking its routines. An `OPENBLAS_CORETYPE` the user set is
honoured by both libraries, as without graphc.

OpenBLAS picks its kernels when it is loaded, and maps some CPUs with AVX-512 (AMD Zen 4 and
5, for one) to its AVX2 "Haswell" kernels. Measured on a 2-core AMD EPYC with AVX-512
(OpenBLAS 0.3.30 from SciPy, `python benchmarks/blas_bench.py`), a 128x784x512 float32
product ran at 109 GFLOP/s on one core with the Haswell kernels and 204 GFLOP/s with the
AVX-512 "SkylakeX" ones. To choose, set `OPENBLAS_CORETYPE` (every OpenBLAS in the process),
or `GRAPHC_BLAS_CORETYPE` (an OpenBLAS core name such as SkylakeX): an explicit request that
SciPy's OpenBLAS, if graphc loads it first, be loaded with those kernels -- which then also
serve `scipy.linalg` in this process. NumPy's copy is loaded before and never touched, and
the environment is put back, so processes started later see it unchanged.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from types import ModuleType

CYTHON_BLAS = "scipy.linalg.cython_blas"
#: The routines compiled code calls (kernels/cpu/blas.py).
ROUTINES = ("sgemm", "dgemm")
#: Names of the thread-count setter in SciPy's OpenBLAS (prefixed in SciPy's wheels).
SETTERS = ("scipy_openblas_set_num_threads", "openblas_set_num_threads")


def requested_coretype() -> str | None:
    """The core type `GRAPHC_BLAS_CORETYPE` asks SciPy's OpenBLAS to be loaded with, or None
    (unset, `detect` or `env`: OpenBLAS's own choice, or `OPENBLAS_CORETYPE`'s)."""
    chosen = os.environ.get("GRAPHC_BLAS_CORETYPE")
    return None if not chosen or chosen in ("detect", "env") else chosen


@contextlib.contextmanager
def _requested_kernels() -> Iterator[None]:
    """Load libraries in the block with the kernels `requested_coretype()` asks for (an
    OpenBLAS reads OPENBLAS_CORETYPE once, when it is loaded); the environment is restored
    afterwards."""
    coretype = requested_coretype()
    saved = os.environ.get("OPENBLAS_CORETYPE")
    if coretype is not None:
        os.environ["OPENBLAS_CORETYPE"] = coretype
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("OPENBLAS_CORETYPE", None)
        else:
            os.environ["OPENBLAS_CORETYPE"] = saved


def _scipy_libraries() -> list[str]:
    """SciPy's OpenBLAS files where SciPy's wheels put them (Linux and Windows: `scipy.libs`
    beside the package; macOS: `scipy/.dylibs`), found without importing SciPy."""
    spec = importlib.util.find_spec("scipy")
    if spec is None or not spec.submodule_search_locations:
        return []
    package = next(iter(spec.submodule_search_locations))
    patterns = [os.path.join(os.path.dirname(package), "scipy.libs", "libscipy_openblas*"),
                os.path.join(package, ".dylibs", "libscipy_openblas*")]
    return sorted(p for pattern in patterns for p in glob.glob(pattern))


def _load(path: str) -> ctypes.CDLL | None:
    try:
        with _requested_kernels():
            return ctypes.CDLL(path)
    except OSError:
        return None


def _address(function: object) -> int:
    return ctypes.cast(function, ctypes.c_void_p).value or 0


def _capsule_address(capsule: object) -> int:
    """The pointer in a Cython `__pyx_capi__` capsule."""
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule)) or 0


@functools.cache
def _openblas() -> tuple[ctypes.CDLL | None, dict[str, int]]:
    """SciPy's OpenBLAS (None if graphc cannot reach it by ctypes) and the addresses of
    ROUTINES in it, loaded on first use.

    The file of SciPy's wheel is loaded directly when there is exactly one that exports
    the routines: the one `scipy.linalg.cython_blas` links. Otherwise the routines come
    from `scipy.linalg.cython_blas` itself."""
    libraries = [lib for lib in map(_load, _scipy_libraries()) if lib is not None]
    direct = [lib for lib in libraries if all(hasattr(lib, f"scipy_{r}_") for r in ROUTINES)]
    if len(direct) == 1:
        return direct[0], {r: _address(getattr(direct[0], f"scipy_{r}_")) for r in ROUTINES}
    module = import_cython_blas()
    if module is None:
        return None, {}
    routines = {r: _capsule_address(module.__pyx_capi__[r]) for r in ROUTINES}
    controlled = (lib for lib in libraries if any(hasattr(lib, n) for n in SETTERS))
    return next(controlled, None), routines


def openblas_library() -> ctypes.CDLL | None:
    """SciPy's OpenBLAS as a ctypes library (thread count, core name), loaded on first use,
    or None where graphc cannot find it."""
    return _openblas()[0]


def gemm_routines() -> dict[str, int]:
    """{"sgemm": address, "dgemm": address} of SciPy's BLAS (Fortran interface), loaded on
    first use. Raises ImportError without SciPy."""
    routines = _openblas()[1]
    if not routines or not all(routines.values()):
        raise ImportError("graphc's CPU matrix products need SciPy's BLAS "
                          "(pip install scipy), and it cannot be loaded")
    return routines


def import_cython_blas() -> ModuleType | None:
    """`scipy.linalg.cython_blas` (which loads SciPy's OpenBLAS), or None without SciPy.

    The first call loads it, with the kernels of `requested_coretype()` if one is asked for
    and the library is not loaded yet; the environment is restored afterwards."""
    if CYTHON_BLAS in sys.modules:
        return sys.modules[CYTHON_BLAS]
    import numpy  # noqa: F401  (its own OpenBLAS: loaded under the user's environment)

    with _requested_kernels():
        try:
            return importlib.import_module(CYTHON_BLAS)
        except ImportError:
            return None
