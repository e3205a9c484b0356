"""Loading the OpenBLAS the compiled steps' matrix products run on, without changing it
for anyone else.

graphc's matrix products run on SciPy's OpenBLAS, which Numba's `np.dot` calls. That library
is shared with `scipy.linalg` (and NumPy has its own copy), so graphc leaves it as the user's
environment makes it: `import graphc` loads neither, and the first CPU compile imports
`scipy.linalg.cython_blas` the ordinary way, after NumPy, with the environment untouched. An
`OPENBLAS_CORETYPE` the user set is honoured by both libraries, as without graphc.

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

import importlib
import os
import sys
from types import ModuleType

CYTHON_BLAS = "scipy.linalg.cython_blas"


def requested_coretype() -> str | None:
    """The core type `GRAPHC_BLAS_CORETYPE` asks SciPy's OpenBLAS to be loaded with, or None
    (unset, `detect` or `env`: OpenBLAS's own choice, or `OPENBLAS_CORETYPE`'s)."""
    chosen = os.environ.get("GRAPHC_BLAS_CORETYPE")
    return None if not chosen or chosen in ("detect", "env") else chosen


def import_cython_blas() -> ModuleType | None:
    """`scipy.linalg.cython_blas` (which loads SciPy's OpenBLAS), or None without SciPy.

    The first call loads it, with the kernels of `requested_coretype()` if one is asked for
    and the library is not loaded yet; the environment is restored afterwards."""
    if CYTHON_BLAS in sys.modules:
        return sys.modules[CYTHON_BLAS]
    import numpy  # noqa: F401  (its own OpenBLAS: loaded under the user's environment)

    coretype = requested_coretype()
    saved = os.environ.get("OPENBLAS_CORETYPE")
    if coretype is not None:
        os.environ["OPENBLAS_CORETYPE"] = coretype
    try:
        return importlib.import_module(CYTHON_BLAS)
    except ImportError:
        return None
    finally:
        if saved is None:
            os.environ.pop("OPENBLAS_CORETYPE", None)
        else:
            os.environ["OPENBLAS_CORETYPE"] = saved
