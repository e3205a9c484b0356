"""Compiled functions and training steps: own the buffers, validate feeds, call the step."""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from graphc.autodiff import check_gradient_broadcast, gradient_broadcast_checks
from graphc.errors import (
    RUN_TIME_BROADCAST_ADVICE,
    FeedError,
    GraphError,
    IndexRangeError,
    NonFiniteError,
)
from graphc.feeds import check_feeds
from graphc.inspect import KernelList, format_nodes, summarize_nodes
from graphc.interpret import run_nodes
from graphc.ir import Graph, ancestors, format_shape
from graphc.kernels.cpu.threads import blas_threads, shards_for, threads_for
from graphc.ops import OPS
from graphc.ops.registry import InferError


@dataclass
class CompileReport:
    """Seconds per compile phase and what the kernel cache held."""

    phases: dict[str, float] = field(default_factory=dict)
    cache_written: int = 0
    cache_reused: int = 0
    cache_repaired: int = 0
    kernels: int = 0
    unique_kernels: int = 0
    nodes_before: int = 0
    nodes_after: int = 0
    sharding: str = ""   # how the batch is split over threads, or why it is not
    compile_workers: int = 0   # processes beside this one that compiled kernels
    program_cache: str = ""    # "loaded", "saved", or why the program is not kept
    blas: str = ""   # which BLAS library and kernels (OpenBLAS core type) matrix products use
    blas_threads: int = 0   # BLAS threads of the feed shapes prepared last (0: none yet)

    @property
    def total(self) -> float:
        return sum(self.phases.values())

    def record_kernels(self, calls: int, unique: int, stats: Any) -> None:
        """A generated program's kernel calls, its unique kernels, and what their files were
        in the cache (a graphc.codegen.cache.CacheStats)."""
        self.kernels, self.unique_kernels = calls, unique
        self.cache_written, self.cache_reused = stats.written, stats.reused
        self.cache_repaired = stats.repaired

    def __str__(self) -> str:
        rows = [f"  {name:<32} {secs * 1000:9.1f} ms" for name, secs in self.phases.items()]
        return "\n".join([
            f"compile: {self.total:.3f} s, {self.nodes_before} -> {self.nodes_after} nodes, "
            f"{self.kernels} kernels ({self.unique_kernels} unique)", *rows,
            f"  kernel files: {self.cache_written} written, {self.cache_reused} reused from "
            f"the cache, {self.cache_repaired} repaired",
            *([f"  program: {self.program_cache}"] if self.program_cache else []),
            *([f"  threads: {self.sharding}"] if self.sharding else []),
            *([f"  BLAS: {self.blas}, " + (f"{self.blas_threads} thread(s) for the feed shapes "
                                           "prepared last" if self.blas_threads else
                                           "threads chosen per feed shape at the first call")]
              if self.blas else [])])


class BackwardGraph:
    """The backward and update nodes of a compiled program (printable, with provenance)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.node_ids = [n.id for n in graph.nodes if n.role == "backward"]

    def __len__(self) -> int:
        return len(self.node_ids)

    @property
    def nodes(self) -> list[Any]:
        return [self.graph.nodes[i] for i in self.node_ids]

    def __graphc_listing__(self) -> str:
        return format_nodes(self.graph, self.node_ids, [n for _, n in self.graph.updates])

    def full(self) -> str:
        """Every node with its operands, attributes and provenance (`gc.format_graph`)."""
        return self.__graphc_listing__()

    def __str__(self) -> str:
        return summarize_nodes(self.graph, self.node_ids,
                               f"backward graph of {self.graph.name!r}") + \
            "\n(.full() or gc.format_graph(step.backward) lists operands and attributes)"

    __repr__ = __str__


def _step_array(a: np.ndarray) -> np.ndarray:
    """`a` as the step was compiled for it: C-contiguous and writable (numba types a
    read-only array differently, so a frozen constant or a read-only feed would silently
    compile a second specialisation of the whole step at the first call)."""
    if a.flags.c_contiguous and a.flags.writeable:
        return a
    return np.array(a, order="C", copy=True)


def max_shapes() -> int:
    """How many feed-shape combinations a compiled function keeps buffers for:
    `GRAPHC_MAX_SHAPES`, default 8. A call with another combination drops the least
    recently used one (on CUDA its device buffers too), and a later call with it
    prepares its buffers again (about a millisecond for a small model)."""
    forced = os.environ.get("GRAPHC_MAX_SHAPES")
    return max(1, int(forced)) if forced else 8


class ShapeCache(OrderedDict):
    """Per-feed-shape buffers of a compiled function, least recently used first, at most
    `max_shapes()` of them."""

    def lookup(self, key: tuple, make: Callable[[], Any]) -> Any:
        """The entry for `key`, made by `make()` (evicting the oldest) if there is none."""
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        limit = max_shapes()
        while len(self) > limit:
            self.popitem(last=False)
        return value


class _Signature:
    """Buffers and sizes for one combination of feed shapes."""

    def __init__(self, args: list[Any], sizes: np.ndarray, feed_slots: dict[str, int],
                 blas_threads: int, bounds: np.ndarray, shard_sizes: np.ndarray) -> None:
        self.blas_threads = blas_threads
        self.args = args
        self.sizes = sizes
        self.feed_slots = feed_slots
        # batch sharding: shard s runs rows bounds[s]:bounds[s + 1], with the sizes
        # shard_sizes[s] (its row count on batch axes)
        self.nshards = len(bounds) - 1
        self.bounds = bounds
        self.shard_sizes = shard_sizes
        self.status = np.zeros(1, dtype=np.int64)   # 2: an index was out of range


def _refuse_empty_batch(inputs: list[Any], arrays: dict[str, np.ndarray]) -> None:
    """FeedError for a training step fed 0 rows: its mean loss would be 0/0 (PyTorch gives
    NaN and trains on it); predicting on 0 rows is fine and gives 0 rows."""
    for node in inputs:
        if node.shape and node.shape[0] is None and arrays[node.name].shape[0] == 0:
            raise FeedError(f"input {node.name!r} was fed a batch of 0 rows "
                            f"{arrays[node.name].shape}: a training step needs at least one "
                            f"(declared at {node.where})")


def concrete_shapes(graph: Graph, feeds: dict[str, np.ndarray]) -> dict[int, tuple]:
    """Run-time shape of every node, or GraphError naming the node whose sizes disagree (or
    the operand whose gradient these sizes would make wrong: see GradientBroadcast)."""
    shapes: dict[int, tuple] = {}
    broadcast_checks = gradient_broadcast_checks(graph)
    for node in graph.nodes:
        shapes[node.id] = _run_time_shape(graph, node, shapes, feeds)
        for check in broadcast_checks.get(node.id, ()):
            check_gradient_broadcast(graph, check, shapes[check.operand],
                                     shapes[check.gradient])
    return shapes


#: Besides elementwise ops, the ops whose first operand broadcasts. The compiled targets
#: index an operand's axis as broadcast only where its declared size is 1 (matmul's batch
#: axes are read through run-time strides instead).
_BROADCAST_VIEWS = ("broadcast_to", "broadcast_like")


def check_compiled_broadcasts(graph: Graph, shapes: dict[int, tuple]) -> None:
    """GraphError if, at the run-time `shapes`, an operand of an elementwise op (or of a
    broadcast) would broadcast on an axis whose size the graph leaves to run time: the
    compiled kernels would read it as if it had the result's size there."""
    for node in graph.nodes:
        if node.op in _BROADCAST_VIEWS:
            operands = node.inputs[:1]
        elif node.op in OPS and OPS[node.op].kind == "elementwise":
            operands = node.inputs
        else:
            continue
        result = shapes[node.id]
        for nid in operands:
            operand = graph.nodes[nid]
            lead = len(result) - len(operand.shape)
            for axis, declared in enumerate(operand.shape):
                size = shapes[nid][axis]
                if declared is None and size == 1 and result[axis + lead] != 1:
                    raise GraphError(
                        f"{node.op} {node.label} built at {node.where}: its operand "
                        f"{operand.op} {operand.label} (built at {operand.where}, shape "
                        f"{format_shape(operand.shape)}) is of size 1 on axis {axis} at run "
                        f"time and would broadcast to {result[axis + lead]}. Compiled steps "
                        f"broadcast only axes the graph knows to be 1 (gc.evaluate "
                        f"broadcasts this one as numpy does): {RUN_TIME_BROADCAST_ADVICE}")


def _run_time_shape(graph: Graph, node: Any, shapes: dict[int, tuple],
                    feeds: dict[str, np.ndarray]) -> tuple:
    if node.op == "input":
        return feeds[node.name].shape if node.name in feeds else node.shape
    if node.op in ("param", "state", "const"):
        return node.shape
    if node.op == "scan_out":
        from graphc.ops.scan import result_shapes

        scan = graph.nodes[node.inputs[0]]
        return result_shapes(scan.attrs["body"], [shapes[i] for i in scan.inputs])[
            node.attrs["index"]]
    fake = [SimpleNamespace(shape=shapes[i], dtype=graph.nodes[i].dtype, op="")
            for i in node.inputs]
    try:
        shape, _ = OPS[node.op].infer(fake, **node.attrs)
    except InferError as err:
        raise GraphError(f"{node.op} {node.label} built at {node.where}: {err} "
                         "with the sizes fed at run time") from None
    return shape


class CompiledFunction:
    """A compiled program: call it with feeds by input name.

    With an optimizer (a training step), each call runs forward, backward and the update,
    and returns the loss (a float), or (loss, *fetches) when `fetch` was given. Without,
    it returns the outputs as arrays (a tuple if compiled from a list).

    Calls from several threads are safe and run one at a time. Buffers are kept for the
    last `max_shapes()` feed-shape combinations (GRAPHC_MAX_SHAPES).
    """

    def __init__(self, program: Graph, step_fn: Callable[..., Any], writer: Any,
                 report: CompileReport, optimizer: Any, single: bool, user_graph: Graph,
                 step_source: str, step_path: str, slots: dict[int, int]) -> None:
        self.program = program
        self._fn = step_fn
        self._args_spec = list(writer.args)
        self._size_slots = list(writer.size_slots)
        self._slots = slots
        self.kernels = KernelList(writer.kernels, program)
        self.compile_report = report
        self.optimizer = optimizer
        self.graph = user_graph
        self.source = step_source
        self.path = step_path
        self.backward = BackwardGraph(program)
        self.state: dict[str, Any] = {"step": 0}
        self.skip_nonfinite = False
        self.check_finite = True
        self._single = single
        self._plans = ShapeCache()
        # One call at a time: a call writes its feeds into argument tables and buffers
        # shared by calls with the same feed shapes (and a training step its parameters).
        self._lock = threading.Lock()
        needed = ancestors(program, list(program.outputs) + [n for _, n in program.updates])
        self._inputs = [n for n in program.nodes if n.op == "input" and n.id in needed
                        and not n.name.startswith("@")]
        self._hyper = {n.name: np.zeros(1, dtype=n.dtype) for n in program.nodes
                       if n.op == "input" and n.name.startswith("@")}
        self._user_inputs = [n for n in user_graph.nodes if n.op == "input"]

    # -- user-facing state -------------------------------------------------------------
    @property
    def params(self) -> dict[str, np.ndarray]:
        """Parameters by name: the live arrays the step updates in place."""
        return self.program.param_values

    @property
    def lr(self) -> Any:
        """The optimizer's learning rate (a float or a schedule `step -> lr`)."""
        return None if self.optimizer is None else self.optimizer.lr

    @lr.setter
    def lr(self, value: Any) -> None:
        if self.optimizer is None:
            raise GraphError("this compiled function has no optimizer")
        self.optimizer.lr = value

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """Optimizer buffers (moments) by name, live."""
        return self.program.state_values

    @property
    def input_names(self) -> list[str]:
        """Names of the inputs a call must feed, in the order the graph declared them."""
        return [n.name for n in self._inputs]

    # -- inspection ------------------------------------------------------------------------
    def explain(self, feeds: dict[str, Any] | None = None) -> Any:
        """What the compiler decided (graphc/explain.py): forward values the backward keeps,
        the memory plan, fusion groups and why neighbours were not fused, and what changed
        in the compile key. Sized for `feeds`, else the last call's feeds. Prints as a
        report; `.as_dict()` gives the data."""
        from graphc.explain import explain

        return explain(self, feeds)

    def profile(self, feeds: dict[str, Any], steps: int = 50) -> Any:
        """Time every kernel call of this CPU step over `steps` runs on `feeds`
        (graphc/profile.py), against this machine's measured FLOP/s and bytes/s peaks.
        Parameters, optimizer state and the step counter are restored afterwards. Prints
        as a table; `.as_dict()` gives the data."""
        from graphc.profile import profile

        return profile(self, feeds, steps)

    # -- checkpoints ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> str:
        """Write parameters, graph state (optimizer moments), `state["step"]` and a
        fingerprint of the program to `path` (an .npz archive), atomically: an interrupted
        save leaves an existing checkpoint intact. Returns the absolute path."""
        from graphc.checkpoint import save

        return save(self, path)

    def load(self, path: str | os.PathLike, *, params_only: bool = False,
             strict: bool = False) -> dict[str, Any]:
        """Copy a checkpoint written by `save` into this function's arrays, in place (every
        compiled function of the graph sees the values). Raises CheckpointError, before
        copying anything, naming each parameter that is missing, extra, or of another shape
        or dtype. `params_only` loads parameters alone; `strict` also refuses a training
        checkpoint from a program with another fingerprint. Returns its metadata."""
        from graphc.checkpoint import load

        return load(self, path, params_only=params_only, strict=strict)

    # -- targets (graphc/backends/cuda/runtime.py overrides these for target="cuda") -------
    target = "cpu"

    def sync_to_host(self) -> None:
        """Make the host arrays (`params`, `optimizer_state()`) current. A no-op on the CPU,
        whose step updates them in place; on CUDA, copies the device values back."""

    def sync_to_device(self) -> None:
        """Push changes made to the host arrays to where the step runs (CUDA); a no-op
        on the CPU."""

    def to(self, target: str) -> CompiledFunction:
        """This function compiled again for `target` ("cpu" or "cuda"), starting from copies
        of its parameters, optimizer state and step counter."""
        from graphc.backends.cuda.runtime import retarget

        return retarget(self, target)

    # -- calling -------------------------------------------------------------------------
    def _begin_call(self, feeds: dict[str, Any]) -> tuple[dict[str, np.ndarray], int, tuple]:
        """Validate the feeds and set this step's hyperparameters: (feed arrays, the step
        number this call will be, the feed-shape key of its buffers)."""
        arrays = check_feeds(self._inputs, feeds, all_inputs=self._user_inputs)
        if self.optimizer is not None:
            _refuse_empty_batch(self._inputs, arrays)
        step_number = self.state["step"] + 1
        if self.optimizer is not None:
            for name, value in self.optimizer.hypers(step_number).items():
                self._hyper[f"@{name}"][0] = value
        return arrays, step_number, tuple(arrays[n.name].shape for n in self._inputs)

    def __call__(self, **feeds: Any) -> Any:
        """Run the program on `feeds` (see the class docstring). Thread-safe: concurrent
        calls of one compiled function run one after the other."""
        with self._lock:
            return self._call(feeds)

    def _call(self, feeds: dict[str, Any]) -> Any:
        arrays, step_number, key = self._begin_call(feeds)
        sig = self._plans.lookup(key, lambda: self._prepare(arrays))
        args = sig.args
        for name, slot in sig.feed_slots.items():
            a = arrays[name]
            a = _step_array(a)
            args[slot] = a.reshape(1) if a.ndim == 0 else a
        with blas_threads(sig.blas_threads):
            ok, outs = self._fn(*args, sig.sizes,
                                self.check_finite and self.optimizer is not None,
                                sig.nshards, sig.bounds, sig.shard_sizes, sig.status)
        if sig.status[0]:   # a take kernel's range check
            sig.status[0] = 0
            raise self._index_error(arrays, "take")
        if not ok:
            return self._non_finite(arrays, outs)
        if self.optimizer is not None:
            self.state["step"] = step_number
        return self._results(outs)

    def _results(self, outs: tuple) -> Any:
        results = []
        for nid, arr in zip(self.program.outputs, outs):
            shape = self.program.nodes[nid].shape
            results.append(arr[0].item() if shape == () and self.optimizer is not None
                           else (arr.reshape(()).copy() if shape == () else arr.copy()))
        if self.optimizer is not None:
            return results[0] if len(results) == 1 else tuple(results)
        return results[0] if self._single else tuple(results)

    def _index_error(self, arrays: dict[str, np.ndarray], where: str) -> IndexRangeError:
        """The error for a step a kernel stopped on an index out of range: the reference
        interpreter's, which names the node, its line, the index and the valid range
        (`where`, what the kernel knew, if the interpreter finds nothing)."""
        feeds = dict(arrays)
        feeds.update({k: v.reshape(()) for k, v in self._hyper.items()})
        roots = list(self.program.outputs) + [nid for _, nid in self.program.updates]
        message = f"{where}: an index is out of range for the axis it indexes"
        try:
            run_nodes(self.program, roots, feeds)
        except GraphError as err:   # IndexRangeError, or an op's own reference refusing
            message = str(err)
        if self.optimizer is not None:
            message += "; parameters and optimizer state were left unchanged"
        return IndexRangeError(message)

    def first_non_finite(self, arrays: dict[str, np.ndarray]) -> str | None:
        """The first NaN or Inf the reference interpreter meets running this program on
        `arrays` (validated feeds), described with its node and user line; None if none."""
        feeds = dict(arrays)
        feeds.update({k: v.reshape(()) for k, v in self._hyper.items()})
        roots = list(self.program.outputs) + [nid for _, nid in self.program.updates]
        try:
            run_nodes(self.program, roots, feeds, check_finite=True)
        except NonFiniteError as err:
            return str(err)
        return None

    def _non_finite(self, arrays: dict[str, np.ndarray], outs: tuple) -> Any:
        where = self.first_non_finite(arrays) or "not found by the reference interpreter"
        if self.skip_nonfinite:
            return self._results(outs)
        loss_finite = all(np.all(np.isfinite(o)) for o in outs if o.dtype.kind == "f")
        what = "a gradient is not finite (the loss is)" if loss_finite else \
            "the loss is not finite"
        raise NonFiniteError(f"step {self.state['step'] + 1}: {what}; parameters and "
                             f"optimizer state were left unchanged. First non-finite value: "
                             f"{where}")

    def _shapes(self, arrays: dict[str, np.ndarray]) -> dict[int, tuple]:
        """Every node's shape for these feeds (hyperparameters included)."""
        feeds = dict(arrays)
        feeds.update({k: v.reshape(()) for k, v in self._hyper.items()})
        shapes = concrete_shapes(self.program, feeds)
        check_compiled_broadcasts(self.program, shapes)
        return shapes

    def _prepare(self, arrays: dict[str, np.ndarray]) -> _Signature:
        shapes = self._shapes(arrays)
        sizes = np.array([shapes[nid][axis] for nid, axis in self._size_slots] or [0],
                         dtype=np.int64)
        nshards, bounds, shard_sizes = self._shards(shapes, sizes)
        args: list[Any] = []
        feed_slots: dict[str, int] = {}
        slot_size: dict[int, int] = {}
        for kind, key in self._args_spec:
            if kind == "pool":
                slot = self._slots[key]
                slot_size[slot] = max(slot_size.get(slot, 1), math.prod(shapes[key]))
        storage = {}
        for kind, key in self._args_spec:
            if kind == "pool":
                slot = self._slots[key]
                if slot not in storage:
                    storage[slot] = np.zeros(slot_size[slot], dtype=self.program.nodes[key].dtype)
        for k, (kind, key) in enumerate(self._args_spec):
            if kind == "feed":
                if key in self._hyper:
                    args.append(self._hyper[key])
                else:
                    feed_slots[key] = k
                    args.append(None)
            elif kind in ("param", "state"):
                store = self.program.param_values if kind == "param" else \
                    self.program.state_values
                arr = store[key]
                args.append(arr.reshape(1) if arr.ndim == 0 else arr)
            elif kind == "const":
                value = _step_array(self.program.nodes[key].attrs["value"])
                args.append(value.reshape(1) if value.ndim == 0 else value)
            elif kind == "dim":
                node = self.program.nodes[key]
                src = shapes[node.inputs[0]]
                count = math.prod(src[a] for a in node.attrs["axes"])
                args.append(np.array([count], dtype=node.dtype))
            elif kind == "partial":
                node = self.program.nodes[key]
                args.append(np.zeros((nshards,) + (shapes[key] or (1,)), dtype=node.dtype))
            else:  # a view into the pool storage its slot shares with dead values
                shape = shapes[key] or (1,)
                args.append(storage[self._slots[key]][:math.prod(shape)].reshape(shape))
        flops = max((2.0 * math.prod(shapes[n.id]) * shapes[n.inputs[0]][-1]
                     for n in self.program.nodes if n.op == "matmul"), default=0.0)
        # one BLAS thread per shard: the shards are the parallelism
        blas = threads_for(flops) if nshards == 1 else 1
        self.compile_report.blas_threads = blas
        return _Signature(args, sizes, feed_slots, blas, bounds, shard_sizes)

    def _shards(self, shapes: dict[int, tuple], sizes: np.ndarray
                ) -> tuple[int, np.ndarray, np.ndarray]:
        """(shard count, row bounds, per-shard sizes) for these feed shapes."""
        plan = self.program.shards
        enabled = plan is not None and plan.enabled
        rows = {shapes[n.id][0] for n in self._inputs
                if enabled and plan.status.get(n.id) == "row"}
        if len(rows) != 1:
            # nothing to split, or inputs of different batch sizes: one shard of everything
            # (slices past an input's end stop at its end)
            return 1, np.array([0, max(rows, default=0)], dtype=np.int64), sizes.reshape(1, -1)
        batch = rows.pop()
        nshards = shards_for(batch)
        bounds = np.array([batch * s // nshards for s in range(nshards + 1)], dtype=np.int64)
        shard_sizes = np.repeat(sizes.reshape(1, -1), nshards, axis=0)
        for k, (nid, axis) in enumerate(self._size_slots):
            if plan.batch_axis(nid) == axis:
                shard_sizes[:, k] = np.diff(bounds)
        return nshards, bounds, shard_sizes
