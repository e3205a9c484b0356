"""A data-parallel training step: gradients averaged over MPI ranks before the update.

Horovod's design. Each rank runs two compiled programs of the same graph:

  gradients  forward + backward on this rank's batch. Its updates write every parameter's
             gradient (and the loss) into views of one flat buffer per dtype, in place: the
             kernel computing a gradient (a fused loop, a matrix product, a scatter, a
             library kernel) stores it there. Only a gradient that is a view of a value of
             another shape (a bias gradient summed with kept axes, then reshaped) is copied
             in, by one small copy kernel.
  (allreduce) one MPI allreduce (sum) per buffer, in place.
  update     the optimizer, reading the summed gradients from the same views, scaled by
             1/ranks inside its fused kernels; updates parameters and optimizer state.

Two programs rather than one program with a host callback between its phases: the
gradient groups of a one-program step are free to fuse into the update kernels (a gradient
then never exists as an array to reduce), and their pool buffers are reused for other values;
splitting at the graph level gives the reduction real arrays, contiguous in one buffer, with
no change to the code generators.

Every rank sees the same reduced buffer, so the finiteness check (on the reduced gradients
and loss) and the update are the same on every rank, and parameters stay bitwise identical.

Batch-norm running statistics are those of one process fed every rank's rows, as
torch.nn.SyncBatchNorm keeps them. Floating-point state a layer updates is averaged: its new
values travel in the same buffer and the update program writes the mean back. With equal
batches the running mean is then exactly that of the ranks' rows taken as one batch (the
mean of per-rank batch means). A running variance (nn.batch_norm declares it,
ir.RunningVariance) instead sends its rank's batch moments: the global variance is the mean
of per-rank variances plus the variance of per-rank means, with the unbiased correction
over all rows.
Per-rank statistics would differ between ranks, so a checkpoint from rank 0 or an
evaluation would depend on the rank. Integer state (dropout's step counter) stays per rank:
it advances identically everywhere; each rank folds its rank into dropout's seed, so ranks
draw different masks (rank 0 the masks of one process).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import numpy as np

from graphc.autodiff import grad
from graphc.codegen.cache import maybe_prune
from graphc.distributed.comm import MPI, DistributedError, resolve
from graphc.errors import GraphError, NonFiniteError, user_location
from graphc.ir import Graph, RunningVariance, Value, building_gradient
from graphc.ops.random import rank_seed
from graphc.optim import Optimizer
from graphc.passes.mode import apply_view, live_state_updates
from graphc.runtime import CompiledFunction, CompileReport

_GRAD, _MEAN, _LOSS, _STATUS = "grad:", "mean:", "sum:loss", "failed:ranks"
# A running variance's batch moments on each rank, slot "moments:<part>:<state name>"
_MOMENTS, _PARTS = "moments:", ("var", "shift", "shift2", "count")


class _Buffers:
    """One flat buffer per dtype and a named, shaped view into it for each slot."""

    def __init__(self, slots: list[tuple[str, tuple, str]]) -> None:
        sizes: dict[str, int] = {}
        offsets: dict[str, int] = {}
        for name, shape, dtype in slots:
            offsets[name] = sizes.get(dtype, 0)
            sizes[dtype] = offsets[name] + math.prod(shape)
        self.flat = {dtype: np.zeros(size, dtype=dtype) for dtype, size in sizes.items()}
        self.views = {name: self.flat[dtype][offsets[name]:offsets[name] + math.prod(shape)]
                      .reshape(shape) for name, shape, dtype in slots}
        self._finite = {dtype: np.empty(size, dtype=bool) for dtype, size in sizes.items()}

    def finite(self) -> bool:
        """Whether every value of every buffer is finite (no allocation)."""
        return all(np.isfinite(b, out=self._finite[d]).all() for d, b in self.flat.items())

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.flat.values())


def compile_distributed(values: list[Any], optimizer: Optimizer, fetch: list[Any],
                        target: str, training: bool, spec: Any,
                        compile_args: tuple) -> DistributedStep:
    """`compile(loss, optimizer, distributed=spec)`: see DistributedStep."""
    from graphc.compiler import training_loss

    if target != "cpu":
        raise GraphError(f"distributed training runs on the CPU target, not {target!r}\n"
                         f"  at {user_location()}")
    loss = training_loss(values)
    step = DistributedStep(loss, optimizer, fetch, training, resolve(spec))
    step.compile_args = compile_args
    maybe_prune()
    return step


class DistributedStep:
    """A training step averaging gradients over the ranks of an MPI communicator.

    Called like a compiled step, on every rank with that rank's batch (all ranks the same
    batch size, e.g. from `gc.data.batches(..., rank=, world=)`); returns the loss averaged
    over the ranks (and this rank's `fetch` values). Rank 0's parameters and state reach
    every rank when the step is built. A step that fails on one rank (a bad feed) raises on
    every rank, with parameters unchanged everywhere. `save` writes on rank 0 only.
    """

    target = "cpu"

    def __init__(self, loss: Any, optimizer: Optimizer, fetch: list[Any], training: bool,
                 comm: MPI) -> None:
        from graphc import backends
        from graphc.compiler import lower

        self.comm = comm
        self.optimizer = optimizer
        self.graph: Graph = loss.graph
        self.skip_nonfinite = False
        self.check_finite = True
        self.compile_args: tuple = ()
        self.allreduce_seconds = 0.0   # time spent in allreduce calls, all steps
        self.allreduce_calls = 0
        backends.prepare("cpu")
        report = CompileReport()
        start = time.perf_counter()
        gradients, slots, averaged = self._gradient_program(loss, fetch, training,
                                                            report.phases)
        self.buffers = _Buffers(slots)
        update = self._update_program(loss, optimizer, slots, averaged, report.phases)
        for program in (gradients, update):
            program.state_values.update(self.buffers.views)
        self._slot_names = {name for name, _, _ in slots}
        report.phases["distributed programs"] = time.perf_counter() - start
        # the two programs are not the computation a request key describes: never cached
        self._gradients = lower(gradients, "cpu", report, False, backends.CompileRequest(
            [loss], None, [], training, key={"cpu": None}))
        update_report = CompileReport()
        self._update = lower(update, "cpu", update_report, True, backends.CompileRequest(
            [loss], optimizer, [], training, key={"cpu": None}))
        self._update.check_finite = False   # checked on the reduced buffers instead
        for name, secs in update_report.phases.items():
            report.phases[f"update: {name}"] = secs
        self.compile_report = report
        self.update_report = update_report
        self._status = self.buffers.views[_STATUS]
        self._loss_sum = self.buffers.views[_LOSS]
        self.program = _checkpoint_view(self._update.program, self._slot_names)
        self.broadcast_from_main()

    # -- building ------------------------------------------------------------------------
    def _gradient_program(self, loss: Any, fetch: list[Any], training: bool,
                          timings: dict[str, float]
                          ) -> tuple[Graph, list[tuple[str, tuple, str]], list[str]]:
        """The forward + backward program, its buffer slots (name, shape, dtype) and the
        names of the state it averages."""
        graph = self.graph
        program = graph.fork()
        program.state_values = dict(graph.state_values)
        _draw_per_rank(program, self.comm.rank)
        params = [program.value(p.id) for p in graph.params]
        start = time.perf_counter()
        grads = grad(program.value(loss.id), params)
        timings["autodiff"] = time.perf_counter() - start
        slots: list[tuple[str, tuple, str]] = []
        updates: list[tuple[str, int]] = []

        def slot(name: str, shape: tuple, dtype: str, nid: int | None) -> None:
            program.state(name, np.zeros(shape, dtype=dtype))
            slots.append((name, shape, dtype))
            if nid is not None:
                updates.append((name, nid))

        for p, g in zip(params, grads):
            slot(_GRAD + p.name, p.shape, p.dtype, g.id)
        program.outputs = [loss.id] + [v.id for v in fetch]
        roots = list(program.outputs) + [nid for _, nid in updates]
        averaged = []
        variances = graph.running_variances if self.comm.size > 1 else {}
        for name, nid in live_state_updates(program, roots, training):
            node = program.nodes[nid]
            if node.dtype not in ("float32", "float64"):
                continue
            if name in variances:
                for part, value in _batch_moments(program, variances[name]).items():
                    slot(f"{_MOMENTS}{part}:{name}", value.shape, value.dtype, value.id)
            else:
                slot(_MEAN + name, node.shape, node.dtype, nid)
            averaged.append(name)
        slot(_LOSS, (), loss.dtype, loss.id)
        slot(_STATUS, (), loss.dtype, None)
        program.updates = updates
        program = apply_view(program, training)
        program.updates = [u for u in program.updates if u[0] not in averaged]
        return program, slots, averaged

    def _update_program(self, loss: Any, optimizer: Optimizer,
                        slots: list[tuple[str, tuple, str]], averaged: list[str],
                        timings: dict[str, float]) -> Graph:
        """The optimizer program reading the summed gradients (and averaged state)."""
        graph = self.graph
        program = graph.fork()
        program.state_values = dict(graph.state_values)
        summed = {name: program.state(name, np.zeros(shape, dtype=dtype))
                  for name, shape, dtype in slots}
        ranks = self.comm.size

        def mean(value: Any) -> Any:
            return value if ranks == 1 else value * (1.0 / ranks)

        params = [program.value(p.id) for p in graph.params]
        start = time.perf_counter()
        with building_gradient(loss.id, f"{type(optimizer).__name__} update"):
            grads = [mean(summed[_GRAD + p.name]) for p in params]
            program.updates = optimizer.build(program, params, grads)
            program.updates += [(name, self._combined(program, name, summed, mean).id)
                                for name in averaged]
            program.outputs = [mean(summed[_LOSS]).id]
        timings["optimizer"] = time.perf_counter() - start
        return apply_view(program, True)

    def _combined(self, program: Graph, name: str, summed: dict[str, Value],
                  mean: Any) -> Value:
        """The new value of averaged state `name` from the sums over the ranks: their mean,
        or for a running variance, that of the ranks' batches taken as one batch."""
        if _MEAN + name in summed:
            return mean(summed[_MEAN + name])
        from graphc.ops import maximum, square

        moments = self.graph.running_variances[name]
        part = {p: mean(summed[f"{_MOMENTS}{p}:{name}"]) for p in _PARTS}
        # E[(m_r - s)^2] - E[m_r - s]^2, the variance of the rank means m_r around a shift s
        # equal on every rank (>= 0 but for rounding)
        between = maximum(part["shift2"] - square(part["shift"]), 0.0)
        rows = part["count"] * float(self.comm.size)
        unbiased = (part["var"] + between) * (rows / (rows - 1.0))
        return program[name] * (1.0 - moments.momentum) + unbiased * moments.momentum

    # -- user-facing state (as CompiledFunction) -------------------------------------------
    @property
    def params(self) -> dict[str, np.ndarray]:
        """Parameters by name: the live arrays the step updates in place."""
        return self.program.param_values

    @property
    def state(self) -> dict[str, Any]:
        """The step counter (`state["step"]`), shared with the update program."""
        return self._update.state

    @property
    def lr(self) -> Any:
        """The optimizer's learning rate (a float or a schedule `step -> lr`)."""
        return self.optimizer.lr

    @lr.setter
    def lr(self, value: Any) -> None:
        self.optimizer.lr = value

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """Optimizer buffers (moments) and graph state by name, live."""
        return self.program.state_values

    @property
    def input_names(self) -> list[str]:
        """Names of the inputs a call must feed."""
        return self._gradients.input_names

    @property
    def backward(self) -> Any:
        """The backward graph (of the gradient program)."""
        return self._gradients.backward

    @property
    def kernels(self) -> list[Any]:
        """The kernels of the gradient program, then those of the update program."""
        return list(self._gradients.kernels) + list(self._update.kernels)

    @property
    def programs(self) -> tuple[CompiledFunction, CompiledFunction]:
        """(gradient program, update program) as compiled functions."""
        return self._gradients, self._update

    def sync_to_host(self) -> None:
        """A no-op: the CPU step updates the host arrays in place."""

    def sync_to_device(self) -> None:
        """A no-op on the CPU."""

    def broadcast_from_main(self) -> None:
        """Copy rank 0's parameters and state (optimizer moments, running statistics) to
        every rank, and its step counter; collective."""
        arrays = list(self.program.param_values.values()) + \
            list(self.program.state_values.values())
        self.comm.broadcast(arrays)
        self.state["step"] = self.comm.bcast(self.state["step"])

    # -- checkpoints ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> str:
        """Write the checkpoint on rank 0 (atomically, see CompiledFunction.save); every rank
        returns its absolute path once it is complete, or raises CheckpointError if rank 0
        could not write it. Collective: call it on every rank."""
        from graphc.checkpoint import CheckpointError, save

        result: tuple[str, str] = ("", "")
        if self.comm.rank == 0:
            try:
                result = (save(self, path), "")
            except Exception as err:
                result = ("", f"{type(err).__name__}: {err}")
        written, problem = self.comm.bcast(result)
        if problem:
            raise CheckpointError(f"rank 0 could not save {os.fspath(path)!r}: {problem}")
        return written

    def load(self, path: str | os.PathLike, *, params_only: bool = False,
             strict: bool = False) -> dict[str, Any]:
        """Load a checkpoint on every rank (each reads `path`; see CompiledFunction.load).
        If any rank fails, every rank raises CheckpointError naming it. Collective."""
        from graphc.checkpoint import CheckpointError, load

        meta: dict[str, Any] = {}
        problem = ""
        try:
            meta = load(self, path, params_only=params_only, strict=strict)
        except Exception as err:
            problem = f"{type(err).__name__}: {err}"
        problems = self.comm.allgather(problem)
        failed = [f"rank {r}: {p}" for r, p in enumerate(problems) if p]
        if failed:
            raise CheckpointError(f"loading {os.fspath(path)!r} failed on "
                                  f"{len(failed)} rank(s):\n  " + "\n  ".join(failed))
        return meta

    # -- calling -------------------------------------------------------------------------
    def __call__(self, **feeds: Any) -> Any:
        step_number = self.state["step"] + 1
        error: Exception | None = None
        outs: Any = ()
        try:
            outs = self._gradients(**feeds)
        except Exception as err:   # every rank must still join the allreduce
            error = err
        self._status[...] = 0.0 if error is None else 1.0
        start = time.perf_counter()
        self.comm.allreduce(list(self.buffers.flat.values()))
        self.allreduce_seconds += time.perf_counter() - start
        self.allreduce_calls += 1
        if self._status.item() != 0.0:
            self._raise_failure(error, step_number)
        if self.check_finite and not self.buffers.finite():
            loss = self._non_finite(feeds, step_number)
        else:
            loss = self._update()
        return loss if len(outs) == 1 else (loss, *outs[1:])

    def _raise_failure(self, error: Exception | None, step_number: int) -> None:
        reports = self.comm.allgather(
            None if error is None else f"{type(error).__name__}: {error}")
        failed = [(r, text) for r, text in enumerate(reports) if text is not None]
        if error is not None:
            raise error
        listing = "\n  ".join(f"rank {r}: {text}" for r, text in failed)
        raise DistributedError(f"step {step_number}: {len(failed)} other rank(s) failed, so "
                               f"this rank (rank {self.comm.rank}) stops too; parameters and "
                               f"optimizer state were left unchanged on every rank:\n  "
                               f"{listing}")

    def _non_finite(self, feeds: dict[str, Any], step_number: int) -> float:
        """All ranks see the same non-finite reduced buffer: each looks for the first
        non-finite value of its own batch, then all skip the update or raise together."""
        arrays = self._gradients._begin_call(feeds)[0]
        where = self._gradients.first_non_finite(arrays)
        found = [(r, w) for r, w in enumerate(self.comm.allgather(where)) if w is not None]
        if self.skip_nonfinite:
            return self._loss_sum.item() / self.comm.size
        loss_finite = math.isfinite(self._loss_sum.item())
        what = "a gradient averaged over the ranks is not finite (the loss is)" \
            if loss_finite else "the loss averaged over the ranks is not finite"
        detail = "\n  ".join(f"rank {r}: {w}" for r, w in found) or \
            "no rank's values are: the sum over the ranks overflowed"
        raise NonFiniteError(f"step {step_number}: {what}; parameters and optimizer state "
                             f"were left unchanged on every rank. First non-finite value:\n  "
                             f"{detail}")


def _draw_per_rank(program: Graph, rank: int) -> None:
    """Give every rank its own dropout masks: the rank folded into each mask's seed (rank 0
    keeps the seeds, drawing what one process does). Replaces nodes of `program` only."""
    if rank == 0:
        return
    for i, node in enumerate(program.nodes):
        if node.op == "dropout_keep":
            seed = rank_seed(node.attrs["seed"], rank)
            program.nodes[i] = dataclasses.replace(node, attrs={**node.attrs, "seed": seed})


def _batch_moments(program: Graph, moments: RunningVariance) -> dict[str, Value]:
    """This rank's part of a running variance over every rank's batch, by _PARTS: its batch
    variance, its batch mean less the shift, that squared, and its row count."""
    from graphc.ops import square

    centred = program.value(moments.mean) - program.value(moments.shift)
    return {"var": program.value(moments.var), "shift": centred, "shift2": square(centred),
            "count": program.value(moments.count)}


def _checkpoint_view(update: Graph, slots: set[str]) -> Graph:
    """The update program as checkpoints see it: parameters and state, without the
    buffers of the reduction."""
    view = update.fork()
    view.state_values = {k: v for k, v in update.state_values.items() if k not in slots}
    return view


__all__ = ["DistributedError", "DistributedStep", "compile_distributed"]
