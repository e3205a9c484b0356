"""Compiling a program's kernels: each generated module is imported (Numba compiles its
`cfunc`, or loads it from Numba's cache beside the file), the ones not yet cached shared out
among worker processes when there are enough of them to pay for a worker's start.

Measured on 2 cores: a kernel takes about 0.1 s to compile, a worker about 0.6 s to start
(Python, Numba and its first compilation), so one worker beside this process halves the
time of a cold 2-block transformer's 40-odd kernels.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

from graphc.codegen.cache import load_module, purge

# Below this many kernels to compile, a worker costs more than it saves.
MIN_KERNELS_PER_WORKER = 8

_WORKER = """
import importlib.util, sys
for path in sys.argv[1:]:
    module = path.rsplit("/", 1)[-1][:-3]
    spec = importlib.util.spec_from_file_location(module, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    spec.loader.exec_module(mod)
"""


def is_cached(module: str, path: str) -> bool:
    """Whether Numba's cache beside `path` has an index for the module's kernel."""
    pattern = os.path.join(os.path.dirname(path), "__pycache__", glob.escape(module) + ".*.nbi")
    return bool(glob.glob(pattern))


def worker_count(uncached: int) -> int:
    """Worker processes for `uncached` kernels: one per MIN_KERNELS_PER_WORKER kernels,
    at most one per core beside this process; GRAPHC_COMPILE_WORKERS overrides (0: none)."""
    explicit = os.environ.get("GRAPHC_COMPILE_WORKERS")
    if explicit is not None and explicit.strip():
        return max(0, int(explicit))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    return max(0, min(cores - 1, uncached // MIN_KERNELS_PER_WORKER))


def compile_modules(modules: list[tuple[str, str]], timings: dict[str, float] | None = None
                    ) -> tuple[dict[str, int], int]:
    """Import every (module, path) and return ({module: kernel address}, workers used).
    A module whose cache entry is unusable is purged and compiled afresh."""
    start = time.perf_counter()
    uncached = [(m, p) for m, p in modules if m not in sys.modules and not is_cached(m, p)]
    workers = worker_count(len(uncached))
    procs: list[subprocess.Popen] = []
    if workers:
        # this process takes the first share, each worker one of the rest
        shares = [uncached[k::workers + 1] for k in range(workers + 1)]
        for share in shares[1:]:
            procs.append(subprocess.Popen(
                [sys.executable, "-c", _WORKER, *[p for _, p in share]],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        mine = {m for m, _ in shares[0]}
        for module, path in uncached:
            if module in mine:
                _load(module, path)
        for proc in procs:
            proc.communicate()
    addresses = {module: _load(module, path) for module, path in modules}
    if timings is not None:
        timings["kernels"] = time.perf_counter() - start
    return addresses, len(procs)


def _load(module: str, path: str) -> int:
    try:
        return load_module(module, path).kernel.address
    except Exception:
        # A damaged Numba cache entry raises whatever unpickling raises; start it afresh.
        purge(module, path)
        return load_module(module, path).kernel.address
