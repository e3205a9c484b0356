"""The CUDA runtime: a CompiledFunction whose parameters, optimizer state and
intermediates live on the GPU (or in Numba's CUDA simulator).

Per call only the feeds go to the device (plus one small array of run-time scalars: the
learning rate and bias corrections) and only the requested outputs come back. The
kernels and instructions come from graphc/backends/cuda/codegen.py; here they become launches,
once per combination of feed shapes: buffers for the memory plan's pool slots, the
(offset, strides) of every view, grid sizes.

A training step runs in three stretches: forward (its outputs come back; a non-finite loss
stops here), backward (then every gradient the updates read is checked on the device into
one flag, and one int comes back; a non-finite gradient or an index out of range stops
here), and the updates. A stop raises what the CPU target raises, with the parameters and
optimizer state unchanged.

Parameters and the graph's state (batch-norm statistics, dropout counters) are shared by
all CUDA functions of a graph through one DeviceStore (so `predict = gc.compile([logits],
target="cuda")` sees what the training step learnt, without a round trip); optimizer
moments belong to their step, as on the CPU. The host arrays (`graph.param_values`, the
program's `state_values`: what CPU functions, checkpoints and `gc.evaluate` use) are synced
on demand:

- `step.params` / `step.optimizer_state()` / `step.save()` copy the device values to the
  host arrays first (`sync_to_host()`) and return those host arrays: writing into them
  changes nothing on the device until `step.sync_to_device()`;
- `step.load()` copies the checkpoint into the host arrays, then to the device;
- a host array that was replaced by another array object (an assignment into
  `graph.param_values`) is uploaded before the next call; one changed in place needs
  `step.sync_to_device()`.
"""

from __future__ import annotations

import copy
import math
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.backends.cuda.codegen import (
    Assign,
    Call,
    CudaKernel,
    CudaStepWriter,
    Dim,
    FiniteCheck,
    Index,
    LaunchConfig,
    Loop,
    Materialize,
    Matmul,
    PhaseSwitch,
    ScanLoop,
    View,
    simulator_enabled,
)
from graphc.codegen.cache import CacheStats, load_module, purge
from graphc.errors import GraphError
from graphc.ir import Graph, Value, as_values
from graphc.passes.fusion import Group, data_inputs
from graphc.passes.memory import MemoryPlan
from graphc.runtime import CompiledFunction, CompileReport

_STORE_ATTR = "_graphc_cuda_store"


def _cuda() -> Any:
    from numba import cuda

    return cuda


# -- the CUDA simulator ---------------------------------------------------------------------

_SHARED_LOCK = threading.Lock()


def make_simulator_shared_arrays_thread_safe() -> None:
    """Fix a race in Numba's CUDA simulator (numba-cuda's simulator/kernelapi.py): the
    simulator runs each CUDA thread as a Python thread and gives a kernel's threads their
    `cuda.shared.array` by looking up (file, line) of the call in a dict per launch; on a
    miss it creates the array with `np.empty` and stores it, with no lock. Two threads of
    the first block that both miss before either stores each get an array of their own: the
    loser writes its part of the tile (matmul) or its partial sum (tree reduction) where no
    other thread reads it, and the others read `np.empty` garbage there (often the previous
    launch's shared array, recycled by numpy's allocator: plausible but wrong values, now
    and then NaN). With the tests' 0.1 ms GIL switch interval this made about one simulator
    suite run in six compute a different training step. Here the miss path is serialised,
    so every thread of a launch gets the one array; otherwise the same semantics (keyed by
    the caller's file and line, uninitialised like the GPU's shared memory). Idempotent."""
    try:
        from numba.cuda.simulator import kernelapi
    except ImportError:
        return
    shared = getattr(kernelapi, "FakeCUDAShared", None)
    if shared is None or getattr(shared.array, "_graphc_thread_safe", False):
        return
    original = shared.array

    def array(self: Any, shape: Any, dtype: Any, alignment: Any = None) -> Any:
        if alignment is not None or (not isinstance(shape, tuple) and shape == 0):
            return original(self, shape, dtype, alignment)  # errors, dynamic shared memory
        if isinstance(dtype, kernelapi.types.Type):
            dtype = kernelapi.numpy_support.as_dtype(dtype)
        frame = sys._getframe(1)
        caller = (frame.f_code.co_filename, frame.f_lineno)
        res = self._allocations.get(caller)
        if res is None:
            with _SHARED_LOCK:
                res = self._allocations.get(caller)
                if res is None:
                    res = np.empty(shape, dtype)
                    self._allocations[caller] = res
        return res

    array._graphc_thread_safe = True  # type: ignore[attr-defined]
    shared.array = array


class _SimulatorLaunch:
    """A launch on the simulator, configured when it runs: there `kernel[grid, block]`
    sets the grid and block on the kernel object itself and returns it, so launchers kept
    in a plan would all run with the configuration set last (by any plan, of any function
    sharing the kernel file)."""

    def __init__(self, fn: Any, grid: Any, block: Any) -> None:
        self.fn, self.grid, self.block = fn, grid, block

    def __call__(self, *args: Any) -> None:
        self.fn[self.grid, self.block](*args)


class _ScanRun:
    """A scan's launches, run from Python: copies before the loop; per step i the copies
    feeding the body (`pre`), the body's launches, the copies of its outputs (`post`) and
    of the new carries into the carry buffers (`settle`); copies after the loop. Each copy
    is (launcher, src, dst, src step, dst step): the offsets advance by i times the steps."""

    def __init__(self, length: int, reverse: bool, body: list[tuple[Any, tuple]]) -> None:
        self.length, self.reverse, self.body = length, reverse, body
        self.before: list[tuple] = []
        self.pre: list[tuple] = []
        self.post: list[tuple] = []
        self.settle: list[tuple] = []
        self.after: list[tuple] = []

    @staticmethod
    def _copy(copies: list[tuple], i: int) -> None:
        for fn, src, dst, src_step, dst_step in copies:
            shape = src.shape or (1,)
            ss = src.strides if src.shape else (0,)
            ds = dst.strides if dst.shape else (0,)
            fn(*shape, src.buf, src.offset + i * src_step, *ss,
               dst.buf, dst.offset + i * dst_step, *ds)

    def __call__(self) -> None:
        self._copy(self.before, 0)
        for t in range(self.length):
            i = self.length - 1 - t if self.reverse else t
            self._copy(self.pre, i)
            for launch, args in self.body:
                launch(*args)
            self._copy(self.post, i)
            self._copy(self.settle, i)
        self._copy(self.after, 0)


def c_strides(shape: tuple) -> tuple:
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= max(d, 1)
    return tuple(reversed(strides))


@dataclass
class Layout:
    """A value on the device: flat buffer, offset and strides in elements."""

    buf: Any
    offset: int
    shape: tuple
    strides: tuple

    @property
    def contiguous(self) -> bool:
        """C-contiguous from `offset` (the strides of size-1 axes do not matter)."""
        return all(d == 1 or s == c for d, s, c in
                   zip(self.shape, self.strides, c_strides(self.shape)))

    @property
    def dense(self) -> bool:
        return self.offset == 0 and self.contiguous


def _flat(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1)


class DeviceStore:
    """Device copies of a graph's parameters and state, shared by its CUDA functions.

    `dirty` holds the entries whose device value is newer than the host array;
    `mirror[key]` is the host array object last synced with (a replaced host array is
    uploaded again)."""

    def __init__(self, params: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> None:
        self.host = {"param": params, "state": state}
        self.device: dict[tuple[str, str], Any] = {}
        self.mirror: dict[tuple[str, str], np.ndarray] = {}
        self.dirty: set[tuple[str, str]] = set()

    def upload(self, key: tuple[str, str]) -> None:
        host = self.host[key[0]][key[1]]
        flat = _flat(host) if host.size else np.zeros(1, dtype=host.dtype)
        buf = self.device.get(key)
        if buf is None:
            self.device[key] = _cuda().to_device(flat)
        else:
            if buf.size != flat.size or buf.dtype != flat.dtype:
                raise GraphError(f"{key[0]} {key[1]!r} was replaced by an array of another "
                                 f"size or dtype ({host.shape} {host.dtype})")
            buf.copy_to_device(flat)
        self.mirror[key] = host
        self.dirty.discard(key)

    def buffer(self, key: tuple[str, str]) -> Any:
        if key not in self.device or self.mirror[key] is not self.host[key[0]][key[1]]:
            self.upload(key)
        return self.device[key]

    def refresh(self, keys: list[tuple[str, str]]) -> None:
        """Upload the entries whose host array was replaced since the last sync."""
        for key in keys:
            if self.mirror.get(key) is not self.host[key[0]][key[1]]:
                self.upload(key)

    def to_host(self) -> None:
        for key in sorted(self.dirty):
            host = self.host[key[0]].get(key[1])
            if host is not None and self.mirror.get(key) is host and host.size:
                host[...] = self.device[key].copy_to_host()[:host.size].reshape(host.shape)
        self.dirty.clear()

    def to_device(self) -> None:
        for key in list(self.device):
            if key[1] in self.host[key[0]]:
                self.upload(key)


def device_store(graph: Graph) -> DeviceStore:
    store = graph.__dict__.get(_STORE_ATTR)
    if store is None or store.host["param"] is not graph.param_values \
            or store.host["state"] is not graph.state_values:
        store = DeviceStore(graph.param_values, graph.state_values)
        setattr(graph, _STORE_ATTR, store)
    return store


class _Writer:
    """What CompiledFunction's constructor reads from a code writer."""

    def __init__(self, kernels: list[CudaKernel]) -> None:
        self.args: list = []
        self.size_slots: list = []
        self.kernels = kernels


@dataclass
class _Plan:
    """Launches for one combination of feed shapes."""

    phase1: list[tuple[Any, tuple]]
    phase2: list[tuple[Any, tuple]]
    checks: list[tuple[Any, tuple]]   # the gradient checks, setting the step's one flag
    phase3: list[tuple[Any, tuple]]   # the updates, launched once the flag reads clear
    feeds: dict[str, Any]
    outputs: list[tuple[Layout, tuple]]
    launched: list[str]        # what each launch is, in order (for tests and debugging)


#: Index instructions that report an index out of range through the error flag.
GATHERS = ("take", "take_grad", "take_along_axis", "take_along_axis_grad")


def _blocks(work: int, threads: int, config: LaunchConfig) -> int:
    return max(1, min(math.ceil(work / threads), config.max_blocks))


class CudaCompiledFunction(CompiledFunction):
    """A compiled program running on a CUDA device (see the module docstring)."""

    target = "cuda"

    def __init__(self, program: Graph, writer: CudaStepWriter, report: CompileReport,
                 optimizer: Any, single: bool, user_graph: Graph, memory: MemoryPlan,
                 functions: dict[tuple[str, str], Any]) -> None:
        super().__init__(program, None, _Writer(writer.kernels), report, optimizer, single,
                         user_graph, writer.source, "", memory.slot)
        self._instructions = writer.instructions
        self._memory = memory
        self._config = writer.config
        self._functions = functions
        self._consts: dict[int, Any] = {}
        # Parameters and the graph's own state (batch-norm statistics) live in the graph's
        # DeviceStore, shared by its CUDA functions; state this program added (optimizer
        # moments, in program.state_values only) in a store of this function.
        shared = device_store(user_graph)
        own = DeviceStore({}, program.state_values)
        self._stores: dict[tuple[str, str], DeviceStore] = {}
        for node in program.nodes:
            key = (node.op, node.name)
            if node.op == "param" or (node.op == "state" and user_graph.state_values.get(
                    node.name) is program.state_values.get(node.name)):
                self._stores[key] = shared
            elif node.op == "state":
                self._stores[key] = own
        for key, store in self._stores.items():  # keep a device copy only where it is newer
            if key not in store.device or key not in store.dirty:
                store.upload(key)
        self._hyper_names: dict[str, list[str]] = {}
        for name, arr in self._hyper.items():
            self._hyper_names.setdefault(arr.dtype.name, []).append(name)
        self._hyper_bufs = {dt: _cuda().to_device(np.zeros(len(names), dtype=dt))
                            for dt, names in self._hyper_names.items()}
        self._takes = any(isinstance(i, Index) and i.kind in GATHERS
                          for i in self._instructions)
        self._err = _cuda().to_device(np.zeros(1, dtype=np.int32))
        self._nonfinite_flag = _cuda().to_device(np.zeros(1, dtype=np.int32))
        self._updated = [("param" if name in program.param_values else "state", name)
                         for name, _ in program.updates]

    # -- host <-> device -------------------------------------------------------------------
    def sync_to_host(self) -> None:
        """Copy the device's parameters and state into the graph's host arrays."""
        for store in self._distinct_stores():
            store.to_host()

    def sync_to_device(self) -> None:
        """Copy the graph's host arrays (parameters, state) to the device."""
        for store in self._distinct_stores():
            store.to_device()

    def _distinct_stores(self) -> list[DeviceStore]:
        return list({id(s): s for s in self._stores.values()}.values())

    def _buffer(self, kind: str, name: str) -> Any:
        return self._stores[(kind, name)].buffer((kind, name))

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Parameters by name: host copies, refreshed from the device on each access.
        Writing into them changes the device only after `sync_to_device()`."""
        self.sync_to_host()
        return self.program.param_values

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """Optimizer buffers by name: host copies, refreshed from the device."""
        self.sync_to_host()
        return self.program.state_values

    def save(self, *args: Any, **kwargs: Any) -> Any:
        self.sync_to_host()
        return super().save(*args, **kwargs)

    def load(self, *args: Any, **kwargs: Any) -> Any:
        self.sync_to_host()
        meta = super().load(*args, **kwargs)
        self.sync_to_device()
        return meta

    def to(self, target: str) -> CompiledFunction:
        """This function compiled for `target` ("cpu" or "cuda"), with copies of the
        parameters, optimizer state and step counter; nothing device-side is shared."""
        return retarget(self, target)

    # -- calling ---------------------------------------------------------------------------
    def _call(self, feeds: dict[str, Any]) -> Any:
        arrays, step_number, key = self._begin_call(feeds)
        plan = self._plans.lookup(key, lambda: self._prepare(arrays))
        for key, store in self._stores.items():
            store.refresh([key])
        for name, buf in plan.feeds.items():
            a = arrays[name]
            if a.size:
                buf.copy_to_device(_flat(a))
        for dt, names in self._hyper_names.items():
            self._hyper_bufs[dt].copy_to_device(
                np.array([self._hyper[n][0] for n in names], dtype=dt))
        if self._takes:
            self._err.copy_to_device(np.zeros(1, dtype=np.int32))
        for launch, args in plan.phase1:
            launch(*args)
        outs = tuple(self._fetch(layout, shape) for layout, shape in plan.outputs)
        self._check_indices(arrays)
        if self.check_finite and self.optimizer is not None and self.program.updates:
            for nid, arr in zip(self.program.outputs, outs):
                node = self.program.nodes[nid]
                if node.shape == () and node.dtype in ("float32", "float64") \
                        and not np.isfinite(arr[0]):
                    return self._non_finite(arrays, outs)
        if plan.phase2 or plan.phase3:
            for key in self._updated:  # from here the device is ahead of the host
                self._stores[key].dirty.add(key)
            for launch, args in plan.phase2:
                launch(*args)
            self._check_indices(arrays)
            if plan.checks and self.check_finite:
                self._nonfinite_flag.copy_to_device(np.zeros(1, dtype=np.int32))
                for launch, args in plan.checks:
                    launch(*args)
                if self._nonfinite_flag.copy_to_host()[0]:
                    return self._non_finite(arrays, outs)
            for launch, args in plan.phase3:
                launch(*args)
        if self.optimizer is not None:
            self.state["step"] = step_number
        return self._results(outs)

    def _check_indices(self, arrays: dict[str, np.ndarray]) -> None:
        if self._takes and self._err.copy_to_host()[0]:
            raise self._index_error(arrays, "take")

    def _non_finite(self, arrays: dict[str, np.ndarray], outs: tuple) -> Any:
        self.sync_to_host()  # the interpreter names the first bad node from host values
        return super()._non_finite(arrays, outs)

    @staticmethod
    def _fetch(layout: Layout, shape: tuple) -> np.ndarray:
        n = math.prod(shape)
        dtype = np.dtype(layout.buf.dtype)
        if n == 0:
            return np.zeros(shape, dtype=dtype)
        if layout.contiguous:
            host = layout.buf[layout.offset:layout.offset + n].copy_to_host()
            return host.reshape(shape or (1,))
        full = layout.buf.copy_to_host()
        view = np.ndarray(shape, dtype=dtype, buffer=full, offset=layout.offset * dtype.itemsize,
                          strides=tuple(s * dtype.itemsize for s in layout.strides))
        return np.array(view).reshape(shape or (1,))

    # -- preparing launches for one feed shape ---------------------------------------------
    def _prepare(self, arrays: dict[str, np.ndarray]) -> _Plan:
        cuda = _cuda()
        shapes = self._shapes(arrays)
        program, memory, config = self.program, self._memory, self._config
        slot_size: dict[int, int] = {}
        slot_dtype: dict[int, str] = {}
        for nid, slot in memory.slot.items():
            slot_size[slot] = max(slot_size.get(slot, 1), math.prod(shapes[nid]))
            slot_dtype[slot] = program.nodes[nid].dtype
        pool = {slot: cuda.to_device(np.zeros(size, dtype=slot_dtype[slot]))
                for slot, size in slot_size.items()}
        feed_bufs = {n.name: cuda.to_device(np.zeros(max(arrays[n.name].size, 1),
                                                     dtype=n.dtype))
                     for n in self._inputs}
        hyper_at = {name: (dt, k) for dt, names in self._hyper_names.items()
                    for k, name in enumerate(names)}
        layouts: dict[int, Layout] = {}

        def dense(buf: Any, nid: int) -> Layout:
            shape = tuple(shapes[nid])
            return Layout(buf, 0, shape, c_strides(shape))

        def layout(nid: int) -> Layout:
            if nid in layouts:
                return layouts[nid]
            node = program.nodes[nid]
            if node.op == "input":
                if node.name in hyper_at:
                    dt, k = hyper_at[node.name]
                    out = Layout(self._hyper_bufs[dt], k, (), ())
                else:
                    out = dense(feed_bufs[node.name], nid)
            elif node.op in ("param", "state"):
                out = dense(self._buffer(node.op, node.name), nid)
            elif node.op == "const":
                if nid not in self._consts:
                    value = node.attrs["value"]
                    self._consts[nid] = cuda.to_device(
                        _flat(value) if value.size else np.zeros(1, dtype=value.dtype))
                out = dense(self._consts[nid], nid)
            else:
                raise GraphError(f"internal: {node.label} ({node.op}) has no device value")
            layouts[nid] = out
            return out

        def store(nid: int) -> Layout:
            if nid in memory.inplace:
                name = memory.inplace[nid]
                kind = "param" if name in program.param_values else "state"
                out = dense(self._buffer(kind, name), nid)
            else:
                out = dense(pool[memory.slot[nid]], nid)
            layouts[nid] = out
            return out

        phase1: list[tuple[Any, tuple]] = []
        phase2: list[tuple[Any, tuple]] = []
        checks: list[tuple[Any, tuple]] = []
        phase3: list[tuple[Any, tuple]] = []
        launches = phase1

        launched: list[str] = []

        def launch(kernel: CudaKernel, function: str, grid: Any, block: Any,
                   args: list, what: str) -> None:
            launched.append(f"{what} {kernel.name}.{function} grid={grid} block={block}")
            launches.append((self._configure(kernel, function, grid, block), tuple(args)))

        def copy(kernel: CudaKernel, shape: tuple, src: Layout, dst: Layout,
                 what: str = "copy") -> None:
            if not shape:
                shape, ss, ds = (1,), (0,), (0,)
            else:
                ss, ds = src.strides, dst.strides
            total = math.prod(shape)
            args = [*shape, src.buf, src.offset, *ss, dst.buf, dst.offset, *ds]
            launch(kernel, "kernel", _blocks(total, config.threads, config), config.threads,
                   args, what)

        for instr in self._instructions:
            if isinstance(instr, PhaseSwitch):
                launches = phase2
            elif isinstance(instr, FiniteCheck):
                launches = checks
                for kernel, nid in instr.checks:
                    value = layout(nid)
                    shape, strides = (value.shape, value.strides) if value.shape else \
                        ((1,), (0,))
                    launch(kernel, "kernel", _blocks(math.prod(shape), config.threads, config),
                           config.threads, [*shape, value.buf, value.offset, *strides,
                                            self._nonfinite_flag], "finite check")
                launches = phase3
            elif isinstance(instr, Loop):
                self._prepare_loop(instr, shapes, layout, store, launch)
            elif isinstance(instr, View):
                node = program.nodes[instr.node]
                layouts[instr.node] = view_layout(node, layout(data_inputs(node)[0]),
                                                  tuple(shapes[instr.node]))
            elif isinstance(instr, Materialize):
                node = program.nodes[instr.node]
                src_id = data_inputs(node)[0]
                src = layout(src_id)
                buf = cuda.to_device(np.zeros(max(math.prod(src.shape), 1), dtype=node.dtype))
                copy(instr.kernel, src.shape, src, Layout(buf, 0, src.shape,
                                                          c_strides(src.shape)), "reshape-copy")
                layouts[instr.node] = dense(buf, instr.node)
            elif isinstance(instr, Dim):
                node = program.nodes[instr.node]
                count = math.prod(shapes[node.inputs[0]][a] for a in node.attrs["axes"])
                layouts[instr.node] = Layout(cuda.to_device(np.array([count], dtype=node.dtype)),
                                             0, (), ())
            elif isinstance(instr, Matmul):
                self._prepare_matmul(instr, shapes, layout, store, launch, copy)
            elif isinstance(instr, Index):
                self._prepare_index(instr, shapes, layout, store, launch, copy)
            elif isinstance(instr, Call):
                self._prepare_call(instr, layout, store, launch)
            elif isinstance(instr, ScanLoop):
                launched.append(f"scan {program.nodes[instr.node].label}")
                launches.append((self._prepare_scan(instr, shapes, layout, store), ()))
            elif isinstance(instr, Assign):
                value = layout(instr.node)
                target = dense(self._buffer(instr.kind, instr.name), instr.node)
                copy(instr.kernel, value.shape, value, target, "assign")
            else:
                raise GraphError(f"internal: unknown CUDA instruction {instr!r}")
        outputs = [(layout(nid), tuple(shapes[nid])) for nid in program.outputs]
        return _Plan(phase1, phase2, checks, phase3, feed_bufs, outputs, launched)

    def _configure(self, kernel: CudaKernel, function: str, grid: Any, block: Any) -> Any:
        """The launcher of `kernel.function` on `grid` x `block`."""
        fn = self._functions[(kernel.module, function)]
        if simulator_enabled():
            return _SimulatorLaunch(fn, grid, block)
        with warnings.catch_warnings():  # small grids are expected: tiny tensors
            warnings.filterwarnings("ignore", message=".*under-utilization.*")
            return fn[grid, block]

    def _prepare_scan(self, instr: ScanLoop, shapes: dict, layout: Any, store: Any
                      ) -> _ScanRun:
        """The launches of a scan: its body's plan for these shapes, run once per step."""
        node = self.program.nodes[instr.node]
        body = node.attrs["body"]
        nc, nx, ny = body.n_carry, len(body.xs), body.n_ys
        operands = [layout(i) for i in node.inputs]
        length = int(shapes[node.inputs[nc]][0])
        sub = instr.function
        names = body.input_names()
        body_shapes = [tuple(shapes[i]) for i in node.inputs]
        body_shapes[nc:nc + nx] = [s[1:] for s in body_shapes[nc:nc + nx]]
        by_name = {n.name: n for n in instr.body.nodes if n.op == "input"}
        fake = {name: np.zeros(shape, dtype=by_name[name].dtype)
                for name, shape in zip(names, body_shapes) if name in by_name}
        plan = sub._prepare(fake)
        run = _ScanRun(length, body.reverse, plan.phase1 + plan.phase2)
        cuda = _cuda()

        def copy(src: Layout, dst: Layout, src_step: int, dst_step: int) -> tuple:
            shape = src.shape or (1,)
            kernel = instr.copies[(len(shape), np.dtype(src.buf.dtype).name)]
            blocks = _blocks(math.prod(shape), self._config.threads, self._config)
            return (self._configure(kernel, "kernel", blocks, self._config.threads),
                    src, dst, src_step, dst_step)

        def fed(name: str, shape: tuple) -> Layout | None:
            buf = plan.feeds.get(name)
            return None if buf is None else Layout(buf, 0, shape, c_strides(shape))

        carries = [fed(names[k], body_shapes[k]) for k in range(nc)]
        scratch = [Layout(cuda.to_device(np.zeros(max(math.prod(body_shapes[k]), 1),
                                                  dtype=operands[k].buf.dtype)), 0,
                          body_shapes[k], c_strides(body_shapes[k])) for k in range(nc)]
        for k in range(nc):   # the carries live in the body's feed buffers (or scratch)
            carries[k] = carries[k] or scratch[k]
            run.before.append(copy(operands[k], carries[k], 0, 0))
        for j in range(nx + len(body.captures)):
            target = fed(names[nc + j], body_shapes[nc + j])
            if target is None:
                continue
            src = operands[nc + j]
            if j < nx:   # row i of the sequence
                row = Layout(src.buf, src.offset, src.shape[1:], src.strides[1:])
                step = src.strides[0] if src.shape and src.shape[0] else 0
                run.pre.append(copy(row, target, step, 0))
            else:
                run.before.append(copy(src, target, 0, 0))
        results = {self.program.nodes[n].attrs["index"]: store(n)
                   for n in instr.group.stores}
        for k in range(nc):
            start = results.get(nc + ny + k)
            if start is not None:
                row = Layout(start.buf, start.offset, start.shape[1:], start.strides[1:])
                run.pre.append(copy(carries[k], row, 0, start.strides[0]))
        outs = [out for out, _ in plan.outputs]
        for j in range(ny):   # ys first: they may read a carry's buffer
            target = results.get(nc + j)
            if target is not None:
                row = Layout(target.buf, target.offset, target.shape[1:], target.strides[1:])
                run.post.append(copy(outs[nc + j], row, 0, target.strides[0]))
        carry_bufs = {id(c.buf) for c in carries}
        for k in range(nc):   # new carries that read a carry buffer go through scratch
            unchanged = outs[k].buf is carries[k].buf and (
                outs[k].offset, outs[k].shape, outs[k].strides) == (
                carries[k].offset, carries[k].shape, carries[k].strides)
            if id(outs[k].buf) in carry_bufs and not unchanged:
                run.post.append(copy(outs[k], scratch[k], 0, 0))
                run.settle.append(copy(scratch[k], carries[k], 0, 0))
            elif not unchanged:
                run.settle.append(copy(outs[k], carries[k], 0, 0))
            if k in results:
                run.after.append(copy(carries[k], results[k], 0, 0))
        return run

    def _prepare_loop(self, instr: Loop, shapes: dict, layout: Any, store: Any,
                      launch: Any) -> None:
        config = self._config
        space = tuple(shapes[instr.space])
        args: list[Any] = list(space)
        for spec in instr.loads:
            lay = layout(spec.nid)
            if spec.dense and not lay.dense:
                raise GraphError(f"internal: {self.program.nodes[spec.nid].label} was "
                                 f"compiled as contiguous but is {lay}")
            args.append(lay.buf)
            if not spec.dense:
                args.append(lay.offset)
                args += [lay.strides[j] for j in spec.axes]
        for nid in instr.stores:
            args.append(store(nid).buf)
        total = math.prod(space)
        if instr.reduce_axes is None:
            launch(instr.kernel, "kernel", _blocks(total, config.threads, config),
                   config.threads, args, "elementwise")
            return
        nred = math.prod(space[a] for a in instr.reduce_axes)
        nout = math.prod(d for a, d in enumerate(space) if a not in instr.reduce_axes)
        if nred <= config.small_reduction:
            launch(instr.kernel, "kernel_rows", _blocks(nout, config.threads, config),
                   config.threads, args, "reduce-rows")
        else:
            launch(instr.kernel, "kernel", max(1, min(nout, config.max_blocks)),
                   config.reduce_threads, args, "reduce-tree")

    def _prepare_matmul(self, instr: Matmul, shapes: dict, layout: Any, store: Any,
                        launch: Any, copy: Any) -> None:
        cuda, config = _cuda(), self._config
        node = self.program.nodes[instr.node]
        out_shape = tuple(shapes[node.id])
        batch = out_shape[:-2]
        m, n = out_shape[-2], out_shape[-1]
        k = shapes[node.inputs[0]][-1]
        operands = []
        for i in node.inputs:
            lay = layout(i)
            sb = flat_batch_stride(lay, batch)
            if sb is None:  # broadcast batch dims that do not flatten: copy, as the CPU does
                full = batch + lay.shape[-2:]
                eff = broadcast_strides(lay, batch)
                buf = cuda.to_device(np.zeros(max(math.prod(full), 1), dtype=node.dtype))
                dst = Layout(buf, 0, full, c_strides(full))
                copy(instr.copy, full, Layout(lay.buf, lay.offset, full, eff + lay.strides[-2:]),
                     dst, "matmul-batch-copy")
                lay, sb = dst, math.prod(lay.shape[-2:])
            operands.append((lay, sb))
        out = store(node.id)
        nbatch = math.prod(batch)
        args: list[Any] = [m, n, k, nbatch]
        for lay, sb in operands:
            args += [lay.buf, lay.offset, sb, lay.strides[-2], lay.strides[-1]]
        args.append(out.buf)
        tile = config.tile
        jobs = nbatch * math.ceil(m / tile) * math.ceil(n / tile)
        launch(instr.kernel, "kernel", max(1, min(jobs, config.max_blocks)), (tile, tile), args,
               "matmul")

    def _prepare_call(self, instr: Call, layout: Any, store: Any, launch: Any) -> None:
        """Convolution / pooling: parameters by name (kernels/cuda/conv.py)."""
        from graphc.kernels.cuda import conv as conv_kernels

        node = self.program.nodes[instr.node]
        values: dict[str, Any] = {}
        tensors = dict(zip(conv_kernels.operands(node.op),
                           (layout(i) for i in data_inputs(node))))
        tensors["out"] = store(node.id)
        for name, dims in conv_kernels.DIMS[node.op].items():
            lay = tensors[name]
            values.update(zip(dims.split(), lay.shape))
            if name == "out":
                values[name] = lay.buf
            else:
                values[f"{name}_"], values[f"{name}_o"] = lay.buf, lay.offset
                values.update({f"{name}_s{k}": s for k, s in enumerate(lay.strides)})
        for attr, names in conv_kernels.ATTRS.items():
            if attr in node.attrs:
                values.update(zip(names, node.attrs[attr]))
        params = instr.kernel.params["kernel"]
        total = math.prod(tensors["out"].shape)
        launch(instr.kernel, "kernel", _blocks(total, self._config.threads, self._config),
               self._config.threads, [values[name] for _, name in params], node.op)

    def _prepare_index(self, instr: Index, shapes: dict, layout: Any, store: Any,
                       launch: Any, copy: Any) -> None:
        config = self._config
        node = self.program.nodes[instr.node]
        out = store(node.id)
        axis = node.attrs.get("axis")
        total = math.prod(out.shape)
        blocks = _blocks(total, config.threads, config)
        if instr.kind == "take":
            x, idx = (layout(i) for i in node.inputs)
            args = [*out.shape, x.shape[axis], x.buf, x.offset, *x.strides,
                    idx.buf, idx.offset, *idx.strides, out.buf, self._err]
            launch(instr.kernel, "kernel", blocks, config.threads, args, "take")
        elif instr.kind == "take_grad":
            g, idx = (layout(i) for i in node.inputs[:2])
            args = [*out.shape, *idx.shape, g.buf, g.offset, *g.strides,
                    idx.buf, idx.offset, *idx.strides, out.buf, self._err]
            launch(instr.kernel, "kernel", blocks, config.threads, args, "take_grad")
        elif instr.kind == "cumsum":
            x = layout(node.inputs[0])
            lines = total // max(out.shape[axis], 1)
            launch(instr.kernel, "kernel", _blocks(lines, config.threads, config),
                   config.threads, [*out.shape, x.buf, x.offset, *x.strides, out.buf], "cumsum")
        elif instr.kind in ("take_along_axis", "take_along_axis_grad"):
            operand, idx = (layout(i) for i in node.inputs[:2])
            along = operand.shape[axis] if instr.kind == "take_along_axis" else idx.shape[axis]
            args = [*out.shape, along, operand.buf, operand.offset, *operand.strides,
                    idx.buf, idx.offset, *idx.strides, out.buf, self._err]
            launch(instr.kernel, "kernel", blocks, config.threads, args, instr.kind)
        elif instr.kind == "concat":
            start = 0
            for i in node.inputs:
                src = layout(i)
                dst = Layout(out.buf, start * out.strides[axis], src.shape, out.strides)
                copy(instr.kernel, src.shape, src, dst, "concat")
                start += src.shape[axis]
        elif instr.kind == "slice_grad":
            launch(instr.fill, "kernel", blocks, config.threads, [total, out.buf], "fill")
            g = layout(node.inputs[0])
            dst = slice_layout(out, node.attrs["index"])
            copy(instr.kernel, g.shape, g, dst, "slice_grad")
        else:
            raise GraphError(f"internal: unknown index instruction {instr.kind}")


# -- layouts ----------------------------------------------------------------------------------

def slice_layout(src: Layout, index: tuple) -> Layout:
    offset, shape, strides = src.offset, [], []
    for d, s, (start, stop, step) in zip(src.shape, src.strides, index):
        r = range(*slice(start, stop, step).indices(d))
        if len(r):
            offset += r.start * s
        shape.append(len(r))
        strides.append(s * r.step)
    return Layout(src.buf, offset, tuple(shape), tuple(strides))


def view_layout(node: Any, src: Layout, shape: tuple) -> Layout:
    """The layout of view `node` of `src` (shape: the view's run-time shape)."""
    if node.op in ("reshape", "reshape_like"):
        return Layout(src.buf, src.offset, shape, c_strides(shape))  # src is contiguous
    if node.op == "transpose":
        perm = node.attrs["perm"]
        return Layout(src.buf, src.offset, tuple(src.shape[p] for p in perm),
                      tuple(src.strides[p] for p in perm))
    if node.op == "slice":
        return slice_layout(src, node.attrs["index"])
    if node.op == "expand_dims":
        strides = list(src.strides)
        for a in node.attrs["axes"]:
            strides.insert(a, 0)
        return Layout(src.buf, src.offset, shape, tuple(strides))
    if node.op == "squeeze":
        axes = node.attrs["axes"]
        return Layout(src.buf, src.offset, shape,
                      tuple(s for a, s in enumerate(src.strides) if a not in axes))
    raise GraphError(f"internal: no CUDA view for {node.op}")


def broadcast_strides(lay: Layout, batch: tuple) -> tuple:
    """Strides of `lay`'s batch axes broadcast against `batch` (0 where broadcast)."""
    rb = len(lay.shape) - 2
    eff = []
    for d in range(len(batch)):
        j = d - (len(batch) - rb)
        eff.append(0 if j < 0 or lay.shape[j] == 1 else lay.strides[j])
    return tuple(eff)


def flat_batch_stride(lay: Layout, batch: tuple) -> int | None:
    """One stride z -> offset for the flattened batch index, or None if there is none."""
    eff = broadcast_strides(lay, batch)
    live = [d for d in range(len(batch)) if batch[d] != 1]
    if not live or all(eff[d] == 0 for d in live):
        return 0
    sb = eff[live[-1]]
    for d in live:
        if eff[d] != sb * math.prod(batch[d + 1:]):
            return None
    return sb


# -- building --------------------------------------------------------------------------------

def _load_kernels(writer: CudaStepWriter) -> dict[tuple[str, str], Any]:
    functions: dict[tuple[str, str], Any] = {}
    compile_now = not simulator_enabled()
    if not compile_now:
        make_simulator_shared_arrays_thread_safe()
    for kernel in writer.kernels:
        module = load_module(kernel.module, kernel.path)
        for function, sigs in kernel.functions.items():
            fn = getattr(module, function)
            if compile_now:
                for sig in sigs:
                    fn.compile(sig)
            functions[(kernel.module, function)] = fn
    return functions


def build(program: Graph, groups: list[Group], memory: MemoryPlan, report: CompileReport,
          optimizer: Any, single: bool, user_graph: Graph,
          config: LaunchConfig | None = None) -> CudaCompiledFunction:
    """Generate, load and compile the CUDA kernels of `program`; the compiled function."""
    timings = report.phases
    start = time.perf_counter()
    stats = CacheStats()
    writer = CudaStepWriter(program, groups, memory, stats, config)
    writer.write()
    for instr in writer.instructions:   # each scan body: a function of its own
        if isinstance(instr, ScanLoop):
            instr.function = build(instr.body, instr.body.groups, instr.body.memory,
                                   CompileReport(), None, False, instr.body, config)
    timings["codegen"] = time.perf_counter() - start
    report.record_kernels(len(writer.kernels), len({k.module for k in writer.kernels}), stats)
    start = time.perf_counter()
    try:
        functions = _load_kernels(writer)
    except (ImportError, SyntaxError, EOFError, OSError, ValueError) as err:
        for kernel in writer.kernels:
            purge(kernel.module, kernel.path)
        try:
            functions = _load_kernels(writer)
        except Exception as again:
            raise GraphError(f"compiling the CUDA kernels failed: {again} (first attempt: "
                             f"{err})") from again
    timings["cuda compile / cache load"] = time.perf_counter() - start
    return CudaCompiledFunction(program, writer, report, optimizer, single, user_graph,
                                memory, functions)


def retarget(fn: CompiledFunction, target: str) -> CompiledFunction:
    """`fn` compiled again for `target` on a detached copy of its graph: the new function
    starts from copies of `fn`'s parameters, optimizer state and step counter and shares no
    storage with it (on the host or on a device)."""
    from graphc.compiler import compile as compile_graph

    args = getattr(fn, "compile_args", None)
    if args is None:
        raise GraphError("this compiled function does not record how it was compiled; "
                         "compile it again with gc.compile(..., target=...)")
    fn.sync_to_host()
    outputs, optimizer, fetch, training = args
    values, single = as_values(outputs)
    graph = values[0].graph
    detached = graph.fork()
    detached.param_values = {k: np.array(v, copy=True) for k, v in graph.param_values.items()}
    detached.state_values = {k: np.array(v, copy=True) for k, v in graph.state_values.items()}
    saved = {k: np.array(v, copy=True) for k, v in fn.program.state_values.items()}
    moved = [Value(detached, v.id) for v in values]
    moved_fetch = None if fetch is None else [Value(detached, v.id) for v in as_values(fetch)[0]]
    new = compile_graph(moved[0] if single else moved, optimizer=copy.copy(optimizer),
                        target=target, fetch=moved_fetch, training=training)
    for name, value in saved.items():  # compiling made fresh optimizer state: restore it
        arr = new.program.state_values.get(name)
        if arr is not None and arr.shape == value.shape:
            arr[...] = value
    new.sync_to_device()
    new.state = copy.deepcopy(fn.state)
    new.skip_nonfinite, new.check_finite = fn.skip_nonfinite, fn.check_finite
    return new
