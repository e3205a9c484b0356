"""Compiling a program's kernels. A kernel whose machine code is kept (kernels/cpu/program.py)
is loaded from it; the others are compiled by importing their module (Numba compiles its
`cfunc`), shared with worker processes, and their machine code is kept for the next time.

Workers take kernels one at a time from the queue this process compiles from, so a slow
kernel, or a worker still starting, never holds the others up. Workers stay for the rest
of the process (their start costs more than most kernels), and exit when it does (their
input closes).

Measured on 2 cores: a kernel takes 0.1-0.2 s to compile, a worker about 1 s to start
(Python, Numba, its first compilation).
"""

from __future__ import annotations

import atexit
import collections
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from graphc import _library
from graphc.codegen.cache import load_module, purge
from graphc.kernels.cpu.program import DamagedObjectError, load_object, object_path, save_object

# Below this many kernels to compile, no worker is started (one already running is used).
MIN_KERNELS_PER_WORKER = 8

# A worker imports only numba and the kernel library, not graphc (whose import loads SciPy):
# its argument is graphc/_library.py, which imports the library without graphc.
# It says "ready" once Numba is warm (its first compilation sets up the compiler, a third of
# a second), then reads one module path per line and answers one line per path, in order.
_WORKER = """
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("graphc._library", sys.argv[1])
library = importlib.util.module_from_spec(spec)
spec.loader.exec_module(library)
library.import_without_graphc()
del spec, library
from numba import cfunc
from graphc.kernels.cpu.program import KERNEL_SIGNATURE, save_object
cfunc(KERNEL_SIGNATURE)(lambda block: block[0] * 0)
sys.stdout.write("ready\\n")
sys.stdout.flush()
for line in sys.stdin:
    path = line.rstrip("\\n")
    module = os.path.basename(path)[:-3]
    try:
        spec = importlib.util.spec_from_file_location(module, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[module] = mod
        spec.loader.exec_module(mod)
        save_object(mod.kernel, path)
        answer = "ok"
    except Exception:
        answer = "failed"
    sys.stdout.write(answer + " " + path + "\\n")
    sys.stdout.flush()
"""


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(uncached: int) -> int:
    """Worker processes for `uncached` kernels: one per MIN_KERNELS_PER_WORKER kernels,
    at most one per core beside this process; GRAPHC_COMPILE_WORKERS overrides (0: none).
    """
    explicit = os.environ.get("GRAPHC_COMPILE_WORKERS")
    if explicit is not None and explicit.strip():
        return max(0, int(explicit))
    return max(0, min(_usable_cores() - 1, uncached // MIN_KERNELS_PER_WORKER))


class _Worker:
    """A compile worker process. Used by one feeder thread at a time (compile_modules); a
    reader thread of its own queues what it says."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONIOENCODING="utf-8")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, _library.__file__], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, encoding="utf-8", bufsize=1)
        self.ready = False   # said so: warm, kernels handed to it start at once
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read_all, daemon=True).start()

    def _read_all(self) -> None:
        try:
            for line in self.proc.stdout:
                self._lines.put(line.rstrip("\n"))
        except (OSError, ValueError):
            pass
        self._lines.put("")   # it exited

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, give_up: Callable[[], bool]) -> bool:
        """Whether it is ready, waiting until it is or `give_up()` says to stop waiting."""
        while not self.ready:
            try:
                line = self._lines.get(timeout=0.02)
            except queue.Empty:
                if give_up():
                    return False
                continue
            if line != "ready":
                return False   # it exited while starting
            self.ready = True
        return True

    def compile(self, path: str) -> bool:
        """Compile the kernel at `path` there (keeping its machine code); False if that
        failed or the worker is gone."""
        try:
            self.proc.stdin.write(path + "\n")
            self.proc.stdin.flush()
        except OSError:
            return False
        return self._lines.get() == "ok " + path

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


_workers: list[_Worker] = []
_owner = os.getpid()           # a forked child does not share its parent's workers
_loaded: dict[str, int] = {}   # module -> kernel address, for this process
_compiled = 0                  # kernels compiled for this process, here or by its workers


def _close_workers() -> None:
    for worker in _workers:
        worker.close()
    _workers.clear()


atexit.register(_close_workers)


def _pool(wanted: int) -> list[_Worker]:
    """The running workers, started up to `wanted` (those running are kept even if more)."""
    global _owner
    if os.getpid() != _owner:
        _owner = os.getpid()
        _workers.clear()
    _workers[:] = [w for w in _workers if w.alive()]
    while len(_workers) < wanted:
        try:
            _workers.append(_Worker())
        except OSError:
            break
    return list(_workers)


def prestart_workers(executor_path: str) -> None:
    """Start compile workers now, so that their start (about a second) overlaps the graph
    passes and code generation, when the cache looks cold: the executor, which every
    program shares, has no machine code kept at `executor_path`. Warm caches start none."""
    if _workers or os.path.exists(object_path(executor_path)):
        return
    _pool(worker_count(2 * MIN_KERNELS_PER_WORKER))


def compile_count() -> int:
    """How many kernels have been compiled for this process so far, by it or its workers
    (machine code loaded from the cache not counted)."""
    return _compiled


@dataclass
class BuildResult:
    """What compile_modules did: every module's kernel address, the worker processes that
    compiled kernels, and how many modules' kept machine code was damaged (and rebuilt)."""

    addresses: dict[str, int]
    workers: int
    damaged: int


def compile_modules(modules: list[tuple[str, str]], timings: dict[str, float] | None = None
                    ) -> BuildResult:
    """The kernel address of every (module, path), compiling what has no machine code kept."""
    global _compiled
    start = time.perf_counter()
    damaged = 0
    missing: dict[str, str] = {}   # path -> module, in order
    for module, path in modules:
        if module in _loaded or path in missing:
            continue
        try:
            address = load_object(path)
        except DamagedObjectError:
            damaged += 1
            address = None
        if address is None:
            missing[path] = module
        else:
            _loaded[module] = address
    workers = _pool(worker_count(len(missing))) if missing else []
    if os.environ.get("GRAPHC_COMPILE_WORKERS", "").strip():
        workers = workers[:worker_count(len(missing))]
    # One queue, longest first (by source size), so that no one is left with a long kernel
    # at the end: this thread compiles from it, and a feeder thread per worker hands the
    # next kernel to its worker as soon as it answers (the feeders wait on pipes, so they
    # run while this thread compiles).
    todo = collections.deque(sorted(missing, key=_source_size, reverse=True))
    lock = threading.Lock()
    done: list[tuple[str, bool]] = []   # (path, compiled) by workers
    used: set[int] = set()

    def take() -> str | None:
        with lock:
            return todo.popleft() if todo else None

    def feed(worker: _Worker) -> None:
        # a worker still starting when this thread has taken every kernel is not waited for
        if not worker.wait_ready(lambda: not todo):
            return
        while (path := take()) is not None:
            used.add(id(worker))
            compiled = worker.compile(path)
            done.append((path, compiled))
            if not compiled and not worker.alive():
                return

    feeders = [threading.Thread(target=feed, args=(w,), daemon=True) for w in workers]
    for feeder in feeders:
        feeder.start()
    try:
        while (path := take()) is not None:
            _loaded[missing[path]] = _compile(missing[path], path)
            _compiled += 1
    finally:
        with lock:   # an error here: the workers finish what they have and stop
            todo.clear()
        for feeder in feeders:
            feeder.join()
    for path, compiled in done:
        address = None
        if compiled:
            try:
                address = load_object(path)
            except DamagedObjectError:
                address = None
        if address is None:   # it failed: compile here (and see the error)
            address = _compile(missing[path], path)
        _loaded[missing[path]] = address
        _compiled += 1
    if timings is not None:
        timings["kernels"] = time.perf_counter() - start
    return BuildResult({m: _loaded[m] for m, _ in modules}, len(used), damaged)


def _source_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _compile(module: str, path: str) -> int:
    """Compile the kernel of a module here, keeping its machine code."""
    try:
        kernel = load_module(module, path).kernel
    except Exception:
        purge(module, path)   # a module half imported before: start it afresh
        kernel = load_module(module, path).kernel
    try:
        save_object(kernel, path)
    except (OSError, RuntimeError):
        pass   # not writable: compiled again next time
    return kernel.address
