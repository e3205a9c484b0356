"""`compile`: the pipeline from a loss (or outputs) to a compiled function.

build -> autodiff -> optimizer nodes -> passes -> fusion -> memory plan -> codegen -> numba
"""

from __future__ import annotations

import time
from typing import Any

import numba
import numpy as np

from graphc.autodiff import grad
from graphc.codegen import backends
from graphc.codegen.build import compile_modules, prestart_workers
from graphc.codegen.cache import CacheStats, load_module, maybe_prune, purge, write_module
from graphc.codegen.cpu import ProgramWriter, executor_source
from graphc.codegen.cpu_fused import StepWriter
from graphc.errors import GraphError, user_location
from graphc.ir import Graph, as_values, building_gradient, format_shape, is_float
from graphc.optim import Optimizer
from graphc.passes import SCHEDULE, SCHEDULE_CUDA, optimize
from graphc.passes.mode import apply_view
from graphc.runtime import CompiledFunction, CompileReport
from graphc.runtime_cpu import ProgramFunction

TARGETS = ("cpu", "cuda")


def build_program(outputs: list[Any], optimizer: Optimizer | None, fetch: list[Any],
                  timings: dict[str, float]) -> Graph:
    """A fork of the user's graph with gradients and optimizer updates appended, and its
    outputs and updates set."""
    graph = outputs[0].graph
    program = graph.fork()
    # The program's own state dict: optimizer moments it adds belong to this step alone
    # (a second step compiled from the graph gets fresh ones); graph-level state such as
    # batch-norm statistics stays shared, array by array.
    program.state_values = dict(graph.state_values)
    if optimizer is None:
        program.outputs = [v.id for v in outputs + fetch]
        return program
    loss = outputs[0]
    if len(outputs) != 1 or loss.shape != () or not is_float(loss.dtype):
        raise GraphError(f"compile with an optimizer needs one scalar floating-point loss; got "
                         f"{format_shape(loss.shape)} {loss.dtype} from {loss.op} at "
                         f"{loss.node.where}\n  at {user_location()}")
    params = [program.value(p.id) for p in graph.params]
    if not params:
        raise GraphError("compile with an optimizer needs a graph with parameters")
    start = time.perf_counter()
    grads = grad(program.value(loss.id), params)
    timings["autodiff"] = time.perf_counter() - start
    start = time.perf_counter()
    with building_gradient(loss.id, f"{type(optimizer).__name__} update"):
        program.updates = optimizer.build(program, params, grads)
    timings["optimizer"] = time.perf_counter() - start
    program.outputs = [loss.id] + [v.id for v in fetch]
    return program


def compile(  # noqa: A001 - the framework's verb
        outputs: Any, optimizer: Optimizer | None = None, target: str = "cpu",
        fetch: Any = None, training: bool | None = None) -> CompiledFunction:
    """Compile a training step (with `optimizer`) or a function of the inputs (without).

    Training: `step = compile(loss, optimizer=Adam(1e-3))`; `step(x=..., y=...)` runs
    forward, backward and the update in one call and returns the loss (and `fetch` values).
    Inference: `f = compile([logits])`; `(out,) = f(x=...)`.

    `training` picks the view of layers that differ (dropout, batch norm): default True
    with an optimizer, False without. In training, the state those layers keep (running
    statistics, dropout's RNG step) is updated inside the step.
    """
    if target not in TARGETS:
        raise GraphError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    backends.require(target)
    values, single = as_values(outputs)
    if not values:
        raise GraphError("compile needs at least one output Value")
    fetch_values, _ = as_values(fetch) if fetch is not None else ([], False)
    timings: dict[str, float] = {}
    report = CompileReport(phases=timings)
    if target == "cpu":
        prestart_workers(write_module("graphc_kernel", executor_source())[1])
    program = build_program(values, optimizer, fetch_values, timings)
    program = apply_view(program, optimizer is not None if training is None else training)
    report.nodes_before = len(program.nodes)
    program = optimize(program, timings=timings)
    report.nodes_after = len(program.nodes)
    program = optimize(program, SCHEDULE if target == "cpu" else SCHEDULE_CUDA,
                       timings=timings)
    groups, memory = program.groups, program.memory
    if program.shards is not None:
        plan = program.shards
        report.sharding = (f"the batch is split into shards run in parallel "
                           f"({plan.regions} parallel region(s) per step)" if plan.enabled
                           else f"one thread: {plan.reason}")
    if target != "cpu":
        fn = backends.build(target, program, groups, memory, report, optimizer, single,
                            values[0].graph)
        fn.compile_args = (outputs, optimizer, fetch, training)
        maybe_prune()
        return fn

    if program.shards is not None and program.shards.enabled:
        fn = _compile_fused(program, report, optimizer, single, values[0].graph)
    else:
        fn = _compile_program(program, report, optimizer, single, values[0].graph)
    fn.compile_args = (outputs, optimizer, fetch, training)
    maybe_prune()
    return fn


def _compile_program(program: Graph, report: CompileReport, optimizer: Optimizer | None,
                     single: bool, user_graph: Graph) -> CompiledFunction:
    """The CPU step as a program of kernel calls (graphc/codegen/cpu.py)."""
    timings = report.phases
    start = time.perf_counter()
    stats = CacheStats()
    code = ProgramWriter(program, program.groups, program.memory, stats).write()
    timings["codegen"] = time.perf_counter() - start
    report.kernels = len(code.instructions)
    report.unique_kernels = len(code.modules)
    report.cache_written, report.cache_reused = stats.written, stats.reused
    report.cache_repaired = stats.repaired
    built = compile_modules(code.modules + [code.executor], timings)
    report.compile_workers = built.workers
    report.cache_repaired += built.damaged
    return ProgramFunction(program, code, built.addresses, report, optimizer, single,
                           user_graph)


def _compile_fused(program: Graph, report: CompileReport, optimizer: Optimizer | None,
                   single: bool, user_graph: Graph) -> CompiledFunction:
    """A batch-sharded CPU step: one njit function with parallel regions
    (graphc/codegen/cpu_fused.py)."""
    timings = report.phases
    groups, memory = program.groups, program.memory
    start = time.perf_counter()
    stats = CacheStats()
    writer = StepWriter(program, groups, memory, stats)
    step_source = writer.write()
    step_module, step_path = write_module("graphc_step", step_source, stats)
    timings["codegen"] = time.perf_counter() - start
    report.kernels = len(writer.kernels)
    report.unique_kernels = len({k.module for k in writer.kernels})
    report.cache_written, report.cache_reused = stats.written, stats.reused
    report.cache_repaired = stats.repaired

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
    return tuple(types)


def _load_step(writer: StepWriter, module: str, path: str, program: Graph) -> tuple[Any, int]:
    """Import the step and its kernels and compile (or load from Numba's cache) for the
    step's argument types. An unusable cache entry is dropped and compiled afresh.

    Returns (step function, 1 if the Numba cache had to be dropped and rebuilt else 0)."""
    signature = _signature(writer, program)
    try:
        for kernel in writer.kernels:
            load_module(kernel.module, kernel.path)
        fn = load_module(module, path).step
        fn.compile(signature)
        return fn, 0
    except Exception as err:
        # Any damaged cache entry: Numba unpickles its index and data files, so junk in them
        # raises whatever pickle raises (UnpicklingError, EOFError, KeyError, ...); the
        # retry below starts from a clean cache.
        for kernel in writer.kernels:
            purge(kernel.module, kernel.path)
        purge(module, path)
        try:
            for kernel in writer.kernels:
                load_module(kernel.module, kernel.path)
            fn = load_module(module, path).step
            fn.compile(signature)
            return fn, 1
        except Exception as again:
            raise GraphError(f"compiling the step failed: {again} (first attempt: {err})") \
                from again
