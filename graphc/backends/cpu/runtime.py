"""The CPU target's compiled functions: a program of kernel calls (graphc/backends/cpu/codegen.py)
run by the executor of kernels/cpu/program.py.

For each combination of feed shapes, a plan fills the program's argument blocks into one
int64 table: sizes, the addresses of parameters, buffers and scratch copies, and byte strides
of views. Feeds change at every call: the plan records where their addresses go (with the
offset of each view into them) and a call writes them there before running the program.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.backends.cpu.codegen import Program
from graphc.errors import GraphError
from graphc.ir import Graph
from graphc.kernels.cpu.program import STATUS_INDEX_RANGE, STATUS_NOT_FINITE
from graphc.kernels.cpu.threads import blas_threads, threads_for
from graphc.ops.scan import ShapeOnly
from graphc.passes.memory import VIEW_OPS
from graphc.runtime import (
    CompiledFunction,
    CompileReport,
    _step_array,
    check_compiled_broadcasts,
    concrete_shapes,
)

# The executor's C signature (kernels/cpu/program.py); ctypes releases the GIL for the call.
_EXECUTOR = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)


@dataclass
class _Plan:
    """The filled program for one combination of feed shapes."""

    table: np.ndarray           # every block, back to back
    blocks: np.ndarray          # address of each instruction's block
    patches: dict[str, tuple[np.ndarray, np.ndarray]]   # feed -> (table positions, offsets)
    outputs: list[np.ndarray]   # where the step leaves its outputs
    keep: list[Any]             # arrays the table points into
    blas_threads: int
    status: np.ndarray          # where the executor writes the status that stopped it


class _Kernels:
    """What CompiledFunction reads of a writer: its kernels (no step arguments)."""

    def __init__(self, kernels: list[Any]) -> None:
        self.kernels = kernels
        self.args: list = []
        self.size_slots: list = []


class ProgramFunction(CompiledFunction):
    """A CPU step: the program of kernel calls and, per feed-shape combination, its plan."""

    def __init__(self, program: Graph, code: Program, addresses: dict[str, int],
                 report: CompileReport, optimizer: Any, single: bool,
                 user_graph: Graph) -> None:
        super().__init__(program, None, _Kernels(code.kernels), report, optimizer, single,
                         user_graph, code.listing, "", program.memory.slot)
        self.code = code
        self._functions = np.array([addresses[i.kernel.module] for i in code.instructions],
                                   dtype=np.int64)
        self._is_check = np.array([i.check for i in code.instructions], dtype=np.uint8)
        self._execute = _EXECUTOR(addresses[code.executor[0]])
        self._addresses = addresses

    def _call(self, feeds: dict[str, Any]) -> Any:
        arrays, step_number, key = self._begin_call(feeds)
        plan = self._plans.lookup(key, lambda: self._plan(arrays))
        table = plan.table
        held = []
        for name, (positions, offsets) in plan.patches.items():
            a = _step_array(arrays[name])
            held.append(a)
            table[positions] = a.ctypes.data + offsets
        check = self.check_finite and self.optimizer is not None
        with blas_threads(plan.blas_threads):
            index = self._execute(self._functions.ctypes.data, plan.blocks.ctypes.data,
                                  self._is_check.ctypes.data, len(self._functions), check,
                                  plan.status.ctypes.data)
        del held
        status = int(plan.status[0]) if index >= 0 else 0
        plan.status[0] = 0
        if status == STATUS_NOT_FINITE:
            return self._non_finite(arrays, plan.outputs)
        if status == STATUS_INDEX_RANGE:
            node = self.program.nodes[self.code.instructions[index].nodes[0]]
            raise self._index_error(arrays, f"{node.op} {node.label} built at {node.where}")
        if status:
            raise GraphError(f"internal: instruction {index} stopped the step with status "
                             f"{status}")
        if self.optimizer is not None:
            self.state["step"] = step_number
        return self._results(plan.outputs)

    # -- plans ---------------------------------------------------------------------------
    def _plan(self, arrays: dict[str, np.ndarray]) -> _Plan:
        plan = build_plan(self.program, self.code, self._shapes(arrays), self._hyper,
                          self._addresses)
        self.compile_report.blas_threads = plan.blas_threads
        return plan


def _batch_strides(array: np.ndarray, product: tuple) -> list[int]:
    """Byte strides of a matrix product's operand broadcast to the product's batch axes
    (0 on an axis of size 1 that broadcasts). A matrix axis of size 1 gets the stride it
    would have in a contiguous array (as stored, or stored transposed): its own stride is
    arbitrary there, and BLAS checks the leading dimension taken from it."""
    strides = list(np.broadcast_to(array, tuple(product[:-2]) + array.shape[-2:]).strides)
    rows, cols = array.shape[-2:]
    if rows == 1:
        strides[-2] = max(cols, 1) * array.itemsize
    if cols == 1:
        strides[-1] = max(rows, 1) * array.itemsize
    return [int(s) for s in strides]


def build_plan(program: Graph, code: Program, shapes: dict[int, tuple],
               hyper: dict[str, np.ndarray], addresses: dict[str, int]) -> _Plan:
    """The filled program `code` of `program` for the run-time `shapes` (a scan's body
    program gets its own plan, filled by the scan instruction's block)."""
    resolver = _Resolver(program, code, shapes, hyper, addresses)
    values: list[int] = []
    patches: dict[str, list[tuple[int, int]]] = {}
    starts: list[int] = []
    for instruction in code.instructions:
        starts.append(len(values))
        for arg in instruction.args:
            resolver.expand(arg, values, patches)
    table = np.array(values or [0], dtype=np.int64)
    blocks = table.ctypes.data + 8 * np.array(starts, dtype=np.int64)
    patch_arrays = {name: (np.array([p for p, _ in entries], dtype=np.int64),
                           np.array([o for _, o in entries], dtype=np.int64))
                    for name, entries in patches.items()}
    outputs = [resolver.array(ref)[0] for ref in code.outputs]
    flops = max((_product_flops(node, shapes) for node in program.nodes), default=0.0)
    return _Plan(table, blocks, patch_arrays, outputs,
                 [table, resolver.keep, resolver.storage],
                 threads_for(flops), np.zeros(1, dtype=np.int64))


_CONV_OPERANDS = {"conv2d": (1, None), "conv2d_grad_input": (1, 0),
                  "conv2d_grad_weight": (None, 1)}   # op: (weight, output-shaped operand)


def _product_flops(node: Any, shapes: dict[int, tuple]) -> float:
    """FLOPs of the largest BLAS product a node runs (matmul; convolutions' im2col GEMMs),
    0 for other nodes."""
    if node.op == "matmul":
        return 2.0 * math.prod(shapes[node.id]) * shapes[node.inputs[0]][-1]
    if node.op not in _CONV_OPERANDS:
        return 0.0
    from graphc.kernels.cpu.conv import largest_gemm_flops  # (it loads the BLAS library)

    weight, out = (shapes[node.id] if k is None else shapes[node.inputs[k]]
                   for k in _CONV_OPERANDS[node.op])
    return largest_gemm_flops(out[0], weight, out[2] * out[3])


class _Resolver:
    """Arrays of a program's references for one combination of run-time shapes. A feed
    resolves to a placeholder of its shape; addresses inside it are patched at each call."""

    def __init__(self, program: Graph, code: Program, shapes: dict[int, tuple],
                 hyper: dict[str, np.ndarray], addresses: dict[str, int]) -> None:
        self.program = program
        self.addresses = addresses
        self.code = code
        self.shapes = shapes
        self.hyper = hyper
        self.memory = program.memory
        self.cache: dict[Any, tuple[np.ndarray, str | None]] = {}
        self.placeholders: dict[str, np.ndarray] = {}
        self.keep: list[np.ndarray] = []
        sizes: dict[int, int] = {}
        dtypes: dict[int, str] = {}
        for nid, slot in self.memory.slot.items():
            sizes[slot] = max(sizes.get(slot, 1), math.prod(shapes[nid]))
            dtypes[slot] = program.nodes[nid].dtype
        self.storage = {slot: np.zeros(size, dtype=dtypes[slot]) for slot, size in sizes.items()}

    def shape(self, nid: int) -> tuple:
        return self.shapes[nid] or (1,)

    def array(self, ref: tuple) -> tuple[np.ndarray, str | None]:
        """(array, name of the feed it lies in or None)."""
        hit = self.cache.get(ref)
        if hit is None:
            hit = self._resolve(ref)
            self.cache[ref] = hit
        return hit

    def _resolve(self, ref: tuple) -> tuple[np.ndarray, str | None]:
        kind = ref[0]
        if kind == "node":
            return self._node(ref[1])
        if kind == "copy":
            node = self.program.nodes[ref[1]]
            return self._scratch(self.shape(ref[1]), node.dtype), None
        if kind == "bcast":
            operand, out = self.shapes[ref[1]], self.shapes[ref[2]]
            return self._scratch(out[:-2] + operand[-2:], self.program.nodes[ref[1]].dtype), None
        if kind == "part":
            base, feed = self.array(ref[1])
            return base[tuple(slice(*part) for part in ref[2])], feed
        raise GraphError(f"internal: unknown array reference {ref!r}")

    def _scratch(self, shape: tuple, dtype: str) -> np.ndarray:
        a = np.zeros(shape, dtype=dtype)
        self.keep.append(a)
        return a

    def _node(self, nid: int) -> tuple[np.ndarray, str | None]:
        node = self.program.nodes[nid]
        shape = self.shape(nid)
        if nid in self.code.view_sources:
            base, feed = self.array(self.code.view_sources[nid])
            return _view_reshape(base, shape, node), feed
        if node.op == "input":
            if node.name in self.hyper:
                return self.hyper[node.name], None
            if node.name not in self.placeholders:
                self.placeholders[node.name] = np.empty(shape, dtype=node.dtype)
            return self.placeholders[node.name], node.name
        if node.op in ("param", "state"):
            store = self.program.param_values if node.op == "param" else \
                self.program.state_values
            a = store[node.name]
            return (a.reshape(1) if a.ndim == 0 else a), None
        if node.op == "const":
            value = _step_array(node.attrs["value"])
            self.keep.append(value)
            return (value.reshape(1) if value.ndim == 0 else value), None
        if node.op == "dim_size":
            src = self.shapes[node.inputs[0]]
            count = math.prod(src[a] for a in node.attrs["axes"])
            a = self._scratch((1,), node.dtype)
            a[0] = count
            return a, None
        if nid in self.memory.alias and node.op in VIEW_OPS:
            base, feed = self.array(("node", self.memory.alias[nid]))
            if node.op == "transpose":
                return base.transpose(node.attrs["perm"]), feed
            if node.op == "slice":
                index = tuple(slice(s, e, st) for s, e, st in node.attrs["index"])
                return base[index], feed
            return _view_reshape(base, shape, node), feed
        if nid in self.memory.inplace:
            name = self.memory.inplace[nid]
            store = self.program.param_values if name in self.program.param_values else \
                self.program.state_values
            a = store[name]
            return (a.reshape(1) if a.ndim == 0 else a), None
        if nid in self.memory.slot:
            flat = self.storage[self.memory.slot[nid]]
            return flat[:math.prod(shape)].reshape(shape), None
        raise GraphError(f"internal: node {node.label} ({node.op}) has no storage")

    def expand(self, arg: tuple, values: list[int], patches: dict[str, list]) -> None:
        kind = arg[0]
        if kind == "int":
            values.append(int(arg[1]))
        elif kind == "size":
            values.append(int(self.shapes[arg[1]][arg[2]]))
        elif kind == "count":
            values.append(int(math.prod(self.shapes[arg[1]])))
        elif kind == "batch":
            values.append(int(math.prod(self.shapes[arg[1]][a] for a in arg[2])))
        elif kind == "addr":
            self._address(*self.array(arg[1]), values, patches)
        elif kind == "strides":
            values.extend(int(s) for s in self.array(arg[1])[0].strides)
        elif kind == "batch_strides":
            values.extend(_batch_strides(self.array(arg[1])[0], self.shapes[arg[2]]))
        elif kind == "copy_args":
            src, src_feed = self.array(arg[1])
            dst, dst_feed = self.array(arg[2])
            if dst_feed is not None:
                raise GraphError("internal: a copy into a feed")
            src = np.broadcast_to(src.reshape(src.shape or (1,)), dst.shape)
            values.extend(int(d) for d in dst.shape)
            self._address(src, src_feed, values, patches)
            values.extend(int(s) for s in src.strides)
            self._address(dst, None, values, patches)
            values.extend(int(s) for s in dst.strides)
        elif kind == "scan":
            self._scan_block(self.code.scans[arg[1]], values, patches)
        else:
            raise GraphError(f"internal: unknown block entry {arg!r}")

    def _scan_block(self, scan: Any, values: list[int], patches: dict[str, list]) -> None:
        """A scan instruction's block (graphc/backends/cpu/scan.py): the body's own plan for
        these shapes, and how each step feeds it and reads its outputs."""
        body = scan.body
        node = self.program.nodes[scan.scan]
        nc, nx = body.n_carry, len(body.xs)
        outer = [self.array(ref) for ref in scan.operands]
        shapes = [self.shapes[i] for i in node.inputs]
        length = int(shapes[nc][0])
        feed_shapes = {}
        names = body.input_names()
        for k, name in enumerate(names):
            shape = shapes[k][1:] if nc <= k < nc + nx else shapes[k]
            feed_shapes[name] = ShapeOnly(shape)
        body_shapes = concrete_shapes(scan.graph, feed_shapes)
        check_compiled_broadcasts(scan.graph, body_shapes)
        sub = build_plan(scan.graph, scan.code, body_shapes, {}, self.addresses)
        functions = np.array([self.addresses[i.kernel.module] for i in scan.code.instructions]
                             or [0], dtype=np.int64)
        carries = [self._scratch(shapes[k] or (1,), self.program.nodes[node.inputs[k]].dtype)
                   for k in range(nc)]
        self.keep += [sub, functions]

        links: list[tuple[int, Any, int]] = []   # (sub-table position, base, stride)
        for k, name in enumerate(names):
            positions, offsets = sub.patches.get(name, ((), ()))
            if k < nc:
                base, stride = (carries[k], None), 0
            else:
                base, stride = outer[k], 0
                if k < nc + nx:
                    stride = int(outer[k][0].strides[0]) if outer[k][0].ndim else 0
            for position, offset in zip(positions, offsets):
                links.append((int(position), base, int(offset), stride))
        sub_outputs = sub.outputs
        ny = body.n_ys

        def nbytes(a: np.ndarray) -> int:
            return int(a.size * a.itemsize)

        before = [(outer[k], 0, (carries[k], None), 0, nbytes(carries[k])) for k in range(nc)]
        pre, post, after = [], [], []
        for k in range(nc):
            post.append(((sub_outputs[k], None), 0, (carries[k], None), 0, nbytes(carries[k])))
            if k in scan.results:
                after.append(((carries[k], None), 0, self.array(scan.results[k]), 0,
                              nbytes(carries[k])))
            start = scan.results.get(nc + ny + k)
            if start is not None:
                target = self.array(start)
                pre.append(((carries[k], None), 0, target, nbytes(carries[k]),
                            nbytes(carries[k])))
        for j in range(ny):
            ref = scan.results.get(nc + j)
            if ref is not None:
                out = sub_outputs[nc + j]
                post.append(((out, None), 0, self.array(ref), nbytes(out), nbytes(out)))

        values += [length, len(scan.code.instructions), int(functions.ctypes.data),
                   int(sub.blocks.ctypes.data) if len(sub.blocks) else 0, int(body.reverse),
                   len(links), len(before), len(pre), len(post), len(after)]
        for position, base, offset, stride in links:
            values.append(int(sub.table.ctypes.data) + 8 * position)
            self._address(*base, values, patches)
            values += [offset, stride]
        for copies in (before, pre, post, after):
            for src, src_step, dst, dst_step, count in copies:
                self._address(*src, values, patches)
                values.append(src_step)
                self._address(*dst, values, patches)
                values += [dst_step, count]

    def _address(self, a: np.ndarray, feed: str | None, values: list[int],
                 patches: dict[str, list]) -> None:
        address = a.ctypes.data if a.size else self.placeholder_base(feed, a)
        if feed is not None:
            base = self.placeholders[feed].ctypes.data
            patches.setdefault(feed, []).append((len(values), address - base))
        values.append(int(address))

    def placeholder_base(self, feed: str | None, a: np.ndarray) -> int:
        # an empty view: any address inside its base does (nothing is read)
        return self.placeholders[feed].ctypes.data if feed is not None else a.ctypes.data


def _view_reshape(base: np.ndarray, shape: tuple, node: Any) -> np.ndarray:
    """`base` seen with another shape, never copied (a copy would hold stale values)."""
    view = base.view()
    try:
        view.shape = shape
    except AttributeError:
        raise GraphError(f"internal: {node.op} {node.label} is not a view of its operand's "
                         "memory") from None
    return view
