"""The CPU backend: a scheduled program becomes kernels (codegen.py), their machine code
(compile_kernels.py) and a compiled function that runs them (runtime.py). With batch
sharding (GRAPHC_SHARDS > 1) the step is instead one njit function with parallel regions
(codegen_fused.py, run by graphc/runtime.py's CompiledFunction)."""

from __future__ import annotations

import importlib
import time
from typing import TYPE_CHECKING, Any

import numba
import numpy as np

from graphc.backends.cpu import program_cache
from graphc.backends.cpu.codegen import Program, ProgramWriter, executor_source
from graphc.backends.cpu.codegen_fused import StepWriter
from graphc.backends.cpu.compile_kernels import compile_modules, prestart_workers
from graphc.backends.cpu.runtime import ProgramFunction
from graphc.codegen.cache import CacheStats, load_module, purge, write_module
from graphc.errors import GraphError, user_location
from graphc.ir import Graph
from graphc.kernels.cpu.threads import core_name, shard_count
from graphc.optim import Optimizer
from graphc.passes import LOWERING_CPU
from graphc.runtime import CompiledFunction, CompileReport

if TYPE_CHECKING:
    from graphc.backends import CompileRequest


def require() -> None:
    """The CPU runs everywhere graphc installs."""


def prepare() -> None:
    """Called before the graph passes: load SciPy's OpenBLAS and bind the routines compiled
    code calls (importing kernels/cpu/blas.py; kept machine code needs them bound before it
    is loaded), and start compile workers early if the cache is cold."""
    importlib.import_module("graphc.kernels.cpu.blas")
    prestart_workers(write_module("graphc_kernel", executor_source())[1])


def lowering() -> list[Any]:
    """LOWERING_CPU, unless the batch is sharded (GRAPHC_SHARDS > 1): flattening a batched
    operand into rows merges the batch axis, which sharding must keep."""
    return LOWERING_CPU if shard_count() == 1 else []


def _program_key(request: CompileRequest) -> str | None:
    """The program cache's key of `request` (None: not kept), computed once."""
    if "cpu" not in request.key:
        request.key["cpu"] = program_cache.program_key(
            request.outputs, request.optimizer, request.fetch, request.training) \
            if program_cache.enabled() and shard_count() == 1 else None
    return request.key["cpu"]


def load_compiled(request: CompileRequest, report: CompileReport,
                  single: bool) -> CompiledFunction | None:
    """The step from the program cache (graphc/backends/cpu/program_cache.py), or None."""
    start = time.perf_counter()
    key = _program_key(request)
    if key is None:
        report.program_cache = "not kept (" + program_cache.why_not_kept(request.outputs) + ")"
        return None
    stats = CacheStats()
    user_graph = request.outputs[0].graph
    entry = program_cache.load(key, user_graph, user_location(), stats)
    report.phases["program cache"] = time.perf_counter() - start
    if entry is None:
        return None
    report.program_cache = "loaded from the program cache (no autodiff, passes or codegen)"
    report.nodes_before, report.nodes_after = entry.nodes_before, entry.nodes_after
    return _run_program(entry.program, entry.code, stats, report, request.optimizer, single,
                        user_graph)


def build(program: Graph, report: CompileReport, single: bool,
          request: CompileRequest) -> CompiledFunction:
    """The compiled function of a scheduled `program` (groups and memory plan set)."""
    user_graph = request.outputs[0].graph
    report.blas = _blas_description()
    if program.shards is not None and program.shards.enabled:
        return _compile_fused(program, report, request.optimizer, single, user_graph)
    timings = report.phases
    start = time.perf_counter()
    stats = CacheStats()
    code = ProgramWriter(program, program.groups, program.memory, stats).write()
    timings["codegen"] = time.perf_counter() - start
    key = _program_key(request)
    if key is not None and program_cache.save(key, program, code, user_graph, user_location(),
                                              report.nodes_before):
        report.program_cache = "saved to the program cache"
    return _run_program(program, code, stats, report, request.optimizer, single, user_graph)


def _blas_description() -> str:
    return f"OpenBLAS {core_name()} kernels (SciPy's copy)"


def _run_program(program: Graph, code: Program, stats: CacheStats, report: CompileReport,
                 optimizer: Optimizer | None, single: bool,
                 user_graph: Graph) -> CompiledFunction:
    """The CPU step as a program of kernel calls (codegen.py): machine code of its kernels,
    and the function that runs them."""
    timings = report.phases
    report.blas = _blas_description()
    report.record_kernels(len(code.instructions), len(code.modules), stats)
    built = compile_modules(code.modules + [code.executor], timings)
    report.compile_workers = built.workers
    report.cache_repaired += built.damaged
    return ProgramFunction(program, code, built.addresses, report, optimizer, single,
                           user_graph)


def _compile_fused(program: Graph, report: CompileReport, optimizer: Optimizer | None,
                   single: bool, user_graph: Graph) -> CompiledFunction:
    """A batch-sharded CPU step: one njit function with parallel regions
    (codegen_fused.py)."""
    timings = report.phases
    groups, memory = program.groups, program.memory
    start = time.perf_counter()
    stats = CacheStats()
    writer = StepWriter(program, groups, memory, stats)
    step_source = writer.write()
    step_module, step_path = write_module("graphc_step", step_source, stats)
    timings["codegen"] = time.perf_counter() - start
    report.record_kernels(len(writer.kernels), len({k.module for k in writer.kernels}), stats)

    start = time.perf_counter()
    step_fn, rebuilt = _load_step(writer, step_module, step_path, program)
    report.cache_repaired += rebuilt
    timings["numba compile / cache load"] = time.perf_counter() - start
    return CompiledFunction(program, step_fn, writer, report, optimizer, single,
                            user_graph, step_source, step_path, memory.slot)


def _signature(writer: StepWriter, program: Graph) -> tuple:
    """Numba types of the step's arguments (arrays are C-contiguous, rank 0 as (1,))."""
    types = []
    for kind, key in writer.args:
        if kind == "feed" or kind in ("param", "state"):
            node = program.nodes[program._names[key]] if key in program._names else None
            dtype, rank = node.dtype, len(node.shape)
        elif kind in ("const", "dim", "pool"):
            node = program.nodes[key]
            dtype, rank = node.dtype, len(node.shape)
        elif kind == "partial":  # one slice per shard
            node = program.nodes[key]
            dtype, rank = node.dtype, max(len(node.shape), 1) + 1
        else:
            raise GraphError(f"internal: unknown argument kind {kind}")
        types.append(numba.types.Array(numba.from_dtype(np.dtype(dtype)), max(rank, 1), "C"))
    types.append(numba.types.Array(numba.types.int64, 1, "C"))   # sizes
    types.append(numba.types.boolean)                           # check
    types.append(numba.types.int64)                             # nshards
    types.append(numba.types.Array(numba.types.int64, 1, "C"))   # bounds
    types.append(numba.types.Array(numba.types.int64, 2, "C"))   # shard_sizes
    types.append(numba.types.Array(numba.types.int64, 1, "C"))   # status
    return tuple(types)


def _load_step(writer: StepWriter, module: str, path: str, program: Graph) -> tuple[Any, int]:
    """Import the step and its kernels and compile (or load from Numba's cache) for the
    step's argument types. An unusable cache entry is dropped and compiled afresh.

    A Numba typing or lowering error is no damaged cache: it is reported at once.
    Returns (step function, 1 if the Numba cache had to be dropped and rebuilt else 0)."""
    signature = _signature(writer, program)

    def load() -> Any:
        for kernel in writer.kernels:
            load_module(kernel.module, kernel.path)
        fn = load_module(module, path).step
        fn.compile(signature)
        return fn

    try:
        return load(), 0
    except numba.core.errors.NumbaError as err:
        # a typing or lowering error of the generated code: the cache is not the cause
        raise GraphError(f"compiling the step failed: {err}") from err
    except Exception as err:
        # A damaged cache entry: Numba unpickles its index and data files, so junk in them
        # raises whatever pickle raises (UnpicklingError, EOFError, KeyError, ...); the
        # retry below starts from a clean cache.
        for kernel in writer.kernels:
            purge(kernel.module, kernel.path)
        purge(module, path)
        try:
            return load(), 1
        except Exception as again:
            raise GraphError(f"compiling the step failed: {again} (first attempt: {err})") \
                from again
