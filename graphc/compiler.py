"""`compile`: the pipeline from a loss (or outputs) to a compiled function.

build -> autodiff -> optimizer nodes -> passes -> fusion -> memory plan, then the target's
backend (graphc/backends/): codegen -> machine code -> runtime.
"""

from __future__ import annotations

import time
from typing import Any

from graphc import backends
from graphc.autodiff import grad
from graphc.codegen.cache import maybe_prune
from graphc.errors import GraphError, user_location
from graphc.explain import record_compile
from graphc.ir import Graph, as_values, building_gradient, format_shape, is_float
from graphc.optim import Optimizer
from graphc.passes import SCHEDULE, SCHEDULE_CUDA, optimize
from graphc.passes.mode import apply_view
from graphc.runtime import CompiledFunction, CompileReport


def training_loss(outputs: list[Any]) -> Any:
    """The one scalar floating-point loss a training step minimises, of a graph with
    parameters, or GraphError saying what is wrong."""
    loss = outputs[0]
    if len(outputs) != 1 or loss.shape != () or not is_float(loss.dtype):
        raise GraphError(f"compile with an optimizer needs one scalar floating-point loss; got "
                         f"{format_shape(loss.shape)} {loss.dtype} from {loss.op} at "
                         f"{loss.node.where}\n  at {user_location()}")
    if not loss.graph.params:
        raise GraphError("compile with an optimizer needs a graph with parameters")
    return loss


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
    loss = training_loss(outputs)
    params = [program.value(p.id) for p in graph.params]
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
        fetch: Any = None, training: bool | None = None, distributed: Any = None
        ) -> Any:
    """Compile a training step (with `optimizer`) or a function of the inputs (without).

    Training: `step = compile(loss, optimizer=Adam(1e-3))`; `step(x=..., y=...)` runs
    forward, backward and the update in one call and returns the loss (and `fetch` values).
    Inference: `f = compile([logits])`; `(out,) = f(x=...)`.

    `training` picks the view of layers that differ (dropout, batch norm): default True
    with an optimizer, False without. In training, the state those layers keep (running
    statistics, dropout's RNG step) is updated inside the step.

    `distributed="mpi"` (or `graphc.distributed.MPI(comm)`): data-parallel training, the
    gradients averaged over the ranks before each update (graphc/distributed/).
    """
    backends.require(target)
    values, single = as_values(outputs)
    if not values:
        raise GraphError("compile needs at least one output Value")
    fetch_values, _ = as_values(fetch) if fetch is not None else ([], False)
    timings: dict[str, float] = {}
    report = CompileReport(phases=timings)
    backends.prepare(target)
    if distributed is not None:
        from graphc.distributed.step import compile_distributed

        if optimizer is None:
            raise GraphError("compile(distributed=...) averages gradients over ranks: it needs "
                             f"an optimizer\n  at {user_location()}")
        return compile_distributed(values, optimizer, fetch_values, target,
                                   True if training is None else training, distributed,
                                   (outputs, optimizer, fetch, training))
    request = backends.CompileRequest(values, optimizer, fetch_values, training)
    fn = backends.load_compiled(target, request, report, single)
    if fn is None:
        program = build_program(values, optimizer, fetch_values, timings)
        program = apply_view(program, optimizer is not None if training is None else training)
        fn = lower(program, target, report, single, request)
    fn.compile_args = (outputs, optimizer, fetch, training)
    record_compile(fn, values, optimizer, target, fetch_values, training)
    maybe_prune()
    return fn


def lower(program: Graph, target: str, report: CompileReport, single: bool,
          request: backends.CompileRequest) -> CompiledFunction:
    """A program in its view (outputs and updates set) through the passes and the target's
    backend: its compiled function."""
    timings = report.phases
    report.nodes_before = len(program.nodes)
    program = optimize(program, timings=timings)
    program = optimize(program, backends.lowering(target), timings=timings)
    report.nodes_after = len(program.nodes)
    program = optimize(program, SCHEDULE if target == "cpu" else SCHEDULE_CUDA,
                       timings=timings)
    plan = program.shards
    if plan is not None:
        report.sharding = (f"the batch is split into shards run in parallel "
                           f"({plan.regions} parallel region(s) per step)" if plan.enabled
                           else f"one thread: {plan.reason}")
    return backends.build(target, program, report, single, request)
