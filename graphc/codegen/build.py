"""Compiling a program's kernels. A kernel whose machine code is kept (kernels/cpu/program.py)
is loaded from it; the others are compiled by importing their module (Numba compiles its
`cfunc`), shared out among worker processes when there are enough of them to pay for a
worker's start, and their machine code is kept for the next time.

Measured on 2 cores: a kernel takes about 0.1 s to compile, a worker about 0.6 s to start
(Python, Numba and its first compilation), so one worker beside this process halves the
time of a cold 2-block transformer's 40-odd kernels.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

from graphc.codegen.cache import load_module, purge
from kernels.cpu.program import DamagedObjectError, load_object, save_object

# Below this many kernels to compile, a worker costs more than it saves.
MIN_KERNELS_PER_WORKER = 8

# A worker imports only numba and the kernel library, not graphc (whose import loads SciPy).
_WORKER = """
import importlib.util, os, sys
from kernels.cpu.program import save_object
for path in sys.argv[1:]:
    module = os.path.basename(path)[:-3]
    spec = importlib.util.spec_from_file_location(module, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    spec.loader.exec_module(mod)
    save_object(mod.kernel, path)
"""


def worker_count(uncached: int) -> int:
    """Worker processes for `uncached` kernels: one per MIN_KERNELS_PER_WORKER kernels,
    at most one per core beside this process; GRAPHC_COMPILE_WORKERS overrides (0: none)."""
    explicit = os.environ.get("GRAPHC_COMPILE_WORKERS")
    if explicit is not None and explicit.strip():
        return max(0, int(explicit))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    return max(0, min(cores - 1, uncached // MIN_KERNELS_PER_WORKER))


_loaded: dict[str, int] = {}   # module -> kernel address, for this process
_compiled = 0                  # kernels this process compiled (not loaded)


def compile_count() -> int:
    """How many kernels this process has compiled so far (kept machine code not counted)."""
    return _compiled


@dataclass
class BuildResult:
    """What compile_modules did: every module's kernel address, the worker processes it
    started, and how many modules' kept machine code was damaged (and rebuilt)."""

    addresses: dict[str, int]
    workers: int
    damaged: int


def compile_modules(modules: list[tuple[str, str]], timings: dict[str, float] | None = None
                    ) -> BuildResult:
    """The kernel address of every (module, path), compiling what has no machine code kept."""
    start = time.perf_counter()
    damaged = 0
    for module, path in modules:
        if module not in _loaded:
            try:
                address = load_object(path)
            except DamagedObjectError:
                damaged += 1
                continue
            if address is not None:
                _loaded[module] = address
    missing = [(m, p) for m, p in modules if m not in _loaded]
    workers = worker_count(len(missing))
    procs: list[subprocess.Popen] = []
    # this process takes the first share, each worker one of the rest
    shares = [missing[k::workers + 1] for k in range(workers + 1)]
    for share in shares[1:]:
        procs.append(subprocess.Popen([sys.executable, "-c", _WORKER, *[p for _, p in share]],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for module, path in shares[0]:
        _loaded[module] = _compile(module, path)
    for proc in procs:
        proc.wait()
    for share in shares[1:]:
        for module, path in share:
            # a worker that failed leaves no machine code: compile here (and see the error)
            try:
                address = load_object(path)
            except DamagedObjectError:
                address = None
            _loaded[module] = address if address is not None else _compile(module, path)
    if timings is not None:
        timings["kernels"] = time.perf_counter() - start
    return BuildResult({m: _loaded[m] for m, _ in modules}, len(procs), damaged)


def _compile(module: str, path: str) -> int:
    """Compile (or load from Numba's cache) the kernel of a module, keeping its machine code."""
    global _compiled
    _compiled += 1
    try:
        kernel = load_module(module, path).kernel
    except Exception:
        # A damaged Numba cache entry raises whatever unpickling raises; start it afresh.
        purge(module, path)
        kernel = load_module(module, path).kernel
    try:
        save_object(kernel, path)
    except (OSError, RuntimeError):
        pass   # loaded from Numba's cache (no object code at hand) or not writable
    return kernel.address
