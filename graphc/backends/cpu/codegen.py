"""CPU code generation: fusion groups -> a program of kernel calls (kernels/cpu/program.py).

Every fusion group becomes an instruction: a kernel (a `numba.cfunc` generated as Python
source) and its argument block, described here symbolically (sizes of nodes, addresses and
strides of arrays) and filled in by the runtime for each combination of feed shapes.

A kernel's source says only what it computes: ops, dtypes, which operands are strided, and
the versions of the library code it calls, never node ids, names or the user's lines. Its
file is named by the hash of that source, so the same computation is one file, compiled once,
for every layer, graph and script that needs it (an edit of the user's script that leaves the
graph alone, a renamed script, another model made of the same layers). What each instruction
does for the user's program (nodes, their lines) is the program's listing, `step.source`.

Views (transpose, slice, reshape) cost nothing: an operand is read in place through its
strides. A kernel that needs contiguous operands (matrix products, gathers, library calls)
gets a copy of a strided one, made by a copy instruction into a scratch buffer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

import graphc
from graphc.backends.cpu.loops import (
    AXIS_KERNEL_OPERANDS,
    FASTMATH,
    axis_kernel_body,
    index_range_lines,
    is_literal,
    loop_body,
    loop_names,
    nest,
    reduction_loops,
)
from graphc.codegen.cache import CacheStats, write_module
from graphc.codegen.common import (
    CTOR,
    Kernel,
    gradients_to_check,
    kernel_library_version,
    module_digest,
)
from graphc.errors import short_location
from graphc.ir import Graph, Node, format_shape
from graphc.kernels.cpu.program import EXECUTOR_SOURCE, library_digest
from graphc.ops import OPS
from graphc.passes.fusion import Group, data_inputs, describe_group
from graphc.passes.memory import MemoryPlan

_DECORATOR = {
    "loop": f"@cfunc(KERNEL_SIGNATURE, fastmath={FASTMATH}, "
            "error_model='numpy', boundscheck=False)",
    # everything else: exact arithmetic (the finiteness check relies on v - v != 0)
    "exact": "@cfunc(KERNEL_SIGNATURE, error_model='numpy', boundscheck=False)",
}
PRELUDE = """import math

import numpy as np
from numba import carray, cfunc

from graphc.kernels.cpu.program import KERNEL_SIGNATURE, address, strided
"""
LOOP_IMPORTS = """from graphc.kernels.cpu.rng import dropout_keep
from graphc.kernels.cpu.scalar import (
    cos_f32, cos_f64, erf_f32, erf_f64, exp_f32, exp_f64, expm1_f32, expm1_f64, log1p_f32,
    log1p_f64, log_f32, log_f64, pow_f32, pow_f64, sigmoid_f32, sigmoid_f64, sin_f32, sin_f64,
    sqrt_f32, sqrt_f64, tanh_f32, tanh_f64,
)
"""

# A reference to an array the runtime resolves for each feed-shape combination:
#   ("node", nid)               the node's value (leaf, pool buffer, or a view of one)
#   ("copy", nid)               a contiguous scratch copy of the node's value
#   ("bcast", nid, out)         a contiguous copy broadcast to `out`'s batch axes
#   ("part", ref, index)        a static slice ((start, stop, step) per axis) of another
Ref = tuple


@dataclass
class Instruction:
    """One call in the program: kernel `kernel` on a block of `args` entries:
    ("int", v), ("size", nid, axis), ("count", nid), ("batch", nid, axes) (product of those
    run-time sizes), ("addr", ref), ("strides", ref) (one entry per axis, in bytes),
    ("batch_strides", ref, nid) (the strides of ref broadcast to the batch axes of the
    product nid: 0 on an axis of size 1 that broadcasts at run time)."""

    kernel: Kernel
    args: list[tuple]
    nodes: list[int]
    what: str
    check: bool = False


@dataclass
class Program:
    """The instructions of a CPU step and what the runtime needs to run them."""

    instructions: list[Instruction]
    kernels: list[Kernel]                    # one per instruction, unique sources shared
    view_sources: dict[int, Ref]             # a reshape of a copied (strided) value
    outputs: list[Ref]
    listing: str = ""
    modules: list[tuple[str, str]] = field(default_factory=list)   # unique (module, path)
    scans: list[Any] = field(default_factory=list)   # ScanCode of each ("scan", k) entry
    executor: tuple[str, str] = ("", "")     # (module, path) of the executor


def _version_line() -> str:
    return (f"# graphc {graphc.__version__}, numba {numba.__version__}, "
            f"program library {library_digest()}")


def _carray(name: str, position: str, shape: str, dtype: str) -> str:
    return f"{name} = carray(address(a[{position}]), {shape}, {CTOR[dtype]})"


def _tuple(items: list[str]) -> str:
    return "(" + ", ".join(items) + ",)" if items else "(1,)"


class ProgramWriter:
    """Builds the program of a scheduled graph and the sources of its kernels."""

    def __init__(self, graph: Graph, groups: list[Group], memory: MemoryPlan,
                 stats: CacheStats | None = None) -> None:
        self.graph = graph
        self.groups = groups
        self.memory = memory
        self.stats = stats
        self.instructions: list[Instruction] = []
        self.contiguous: dict[int, bool] = {}
        self.refs: dict[int, Ref] = {}
        self.view_sources: dict[int, Ref] = {}
        self.copies: dict[Ref, Ref] = {}
        self.sources: dict[str, Kernel] = {}
        self.kernels: list[Kernel] = []
        self.scans: list[Any] = []

    # -- arrays -------------------------------------------------------------------------
    def ref(self, nid: int) -> Ref:
        return self.refs.get(nid, ("node", nid))

    def is_contiguous(self, nid: int) -> bool:
        return self.contiguous.get(nid, True)

    def contiguous_ref(self, nid: int) -> Ref:
        """A C-contiguous array holding `nid`'s value: its own, or a copy made now."""
        if self.is_contiguous(nid):
            return self.ref(nid)
        return self.copy_of(nid, ("copy", nid))

    def copy_of(self, nid: int, target: Ref) -> Ref:
        if target not in self.copies:
            self.emit_copy(self.ref(nid), target, nid, [nid])
            self.copies[target] = target
        return target

    # -- the program --------------------------------------------------------------------
    def write(self) -> Program:
        outputs_left = sum(1 for g in self.groups if g.phase == 1)
        loss_checked = gradients_checked = False
        for group in self.groups:
            if not loss_checked and outputs_left == 0:
                self.emit_loss_check()
                loss_checked = True
            if group.phase == 3 and not gradients_checked:
                self.emit_gradient_check()
                gradients_checked = True
            self.emit_group(group)
            outputs_left -= group.phase == 1
        if not loss_checked:
            self.emit_loss_check()
        for name, nid in self.graph.updates:
            if self.memory.inplace.get(nid) != name:
                leaf = self.graph._names[name]
                self.emit_copy(self.ref(nid), ("node", leaf), nid, [nid])
        outputs = [self.output_ref(nid) for nid in self.graph.outputs]
        self.write_kernel_files()
        program = Program(self.instructions, self.kernels, self.view_sources, outputs,
                          scans=self.scans)
        program.listing = program_listing(self.graph, program)
        program.modules = sorted({(k.module, k.path) for k in self.kernels}.union(
            *[set(scan.code.modules) for scan in self.scans]))
        program.executor = write_module("graphc_kernel", executor_source())
        return program

    def output_ref(self, nid: int) -> Ref:
        """Outputs are read after the step: they must live in the step's own buffers, not
        in a feed (its memory is the caller's) nor in a parameter the update overwrites."""
        root = nid
        while root in self.memory.alias:
            root = self.memory.alias[root]
        if self.graph.nodes[root].op in ("input", "param", "state", "const"):
            return self.copy_of(nid, ("copy", nid))
        return self.ref(nid)

    def kernel(self, source: str, group: Group | None, nodes: list[int]) -> Kernel:
        kernel = Kernel(group or Group("call", list(nodes), 0), f"k{len(self.kernels)}",
                        source, nodes=list(nodes))
        kernel.lines = sorted({self.graph.nodes[n].where for n in nodes})
        self.kernels.append(kernel)
        return kernel

    def add(self, source: str, args: list[tuple], nodes: list[int], what: str,
            group: Group | None = None, check: bool = False) -> Instruction:
        instruction = Instruction(self.kernel(source, group, nodes), args, nodes, what, check)
        self.instructions.append(instruction)
        return instruction

    def write_kernel_files(self) -> None:
        written: dict[str, tuple[str, str]] = {}
        for k in self.kernels:
            if k.source not in written:
                written[k.source] = write_module("graphc_kernel", k.source, self.stats)
            k.module, k.path = written[k.source]

    # -- groups -------------------------------------------------------------------------
    def emit_group(self, group: Group) -> None:
        node = self.graph.nodes[group.root]
        if group.kind == "loop":
            self.emit_loop(group)
        elif group.kind == "matmul":
            self.emit_matmul(node, group)
        elif group.kind == "view":
            self.emit_view(node)
        elif group.kind == "shape":
            self.contiguous[node.id] = True
        elif group.kind == "index":
            self.emit_index(node, group)
        elif group.kind == "call":
            self.emit_call(node, group)
        elif group.kind == "scan":
            self.emit_scan(group)
        else:
            raise NotImplementedError(f"no CPU code for {group.kind} group ({node.op})")

    def emit_view(self, node: Node) -> None:
        src = data_inputs(node)[0]
        if node.op in ("transpose", "slice"):
            self.contiguous[node.id] = False
            return
        if self.is_contiguous(src):
            self.contiguous[node.id] = True
        elif _unit_axes_only(self.graph.nodes[src].shape, node.shape):
            self.contiguous[node.id] = False   # the same strided memory, unit axes changed
        else:
            self.view_sources[node.id] = self.copy_of(src, ("copy", src))
            self.contiguous[node.id] = True

    def emit_loop(self, group: Group) -> None:
        in_place = {}
        for nid in group.stores:
            name = self.memory.inplace.get(nid)
            for load in group.loads:
                leaf = self.graph.nodes[load]
                if name is not None and leaf.op in ("param", "state") and leaf.name == name:
                    in_place[nid] = load
        loads = [n for n in group.loads if not is_literal(self.graph.nodes[n])]
        strided_loads = {n for n in loads if not self.is_contiguous(n)}
        axes = merged_axes(self.graph, group, strided_loads)
        source = loop_kernel_source(self.graph, group, in_place, strided_loads, axes)
        root = self.graph.nodes[group.root]
        space_node = root.inputs[0] if OPS[root.op].kind == "reduce" else root.id
        args: list[tuple] = [("size", space_node, merged[0]) if len(merged) == 1
                             else ("batch", space_node, tuple(merged)) for merged in axes]
        for nid in loads:
            args.append(("addr", self.ref(nid)))
            if nid in strided_loads:
                args.append(("strides", self.ref(nid)))
        for nid in group.stores:
            if nid not in in_place:
                args.append(("addr", self.ref(nid)))
        self.add(source, args, list(group.nodes), describe_group(self.graph, group), group)

    def emit_matmul(self, node: Node, group: Group) -> None:
        batch = len(node.shape) - 2
        args: list[tuple] = [("batch", node.id, tuple(range(batch))) if batch else ("int", 1),
                             ("size", node.id, batch - 1) if batch else ("int", 1),
                             ("size", node.id, batch), ("size", node.inputs[0], -1),
                             ("size", node.id, batch + 1)]
        layouts = []
        for operand in node.inputs:
            entries, layout = self.gemm_operand(operand, node)
            args += entries
            layouts.append(layout)
        args.append(("addr", self.ref(node.id)))
        self.add(gemm_source(node.dtype, *layouts), args, [node.id],
                 describe_group(self.graph, group), group)

    def gemm_operand(self, operand: int, product: Node) -> tuple[list[tuple], int | str]:
        """An operand's block entries for gemm_source and its layout there: 0 (entries:
        address, batched, transposed, row length), read in place when it is contiguous, or
        a contiguous array with its last two axes swapped, otherwise from a contiguous copy
        (broadcast to the product's batch axes if only some of them are its own); or
        "n"/"t" (entries: address, byte strides of every axis) for a transposed view of a
        contiguous array whose last axis stays one of the matrix axes (attention heads
        split off a (batch, time, features) array): BLAS reads it in place, with the
        view's row stride as leading dimension and its batch strides (at most 2).

        A batch axis whose size both operands know only at run time may be 1 in one of them
        then (numpy broadcasts it): such an operand is read through the strides of its
        broadcast to the product's batch ("batch_strides", 0 on a broadcast axis), or,
        with more than 2 batch axes, copied broadcast."""
        node = self.graph.nodes[operand]
        rank = len(node.shape)
        batch = product.shape[:-2]
        if rank == 2 or all(d == 1 for d in node.shape[:-2]):
            batched = 0
        elif node.shape[:-2] == batch and not self.may_broadcast(node, product):
            batched = 1
        elif node.shape[:-2] == batch and rank <= 4:
            layout = self.strided_layout(operand)
            ref = self.ref(operand) if layout is not None else self.contiguous_ref(operand)
            return [("addr", ref), ("batch_strides", ref, product.id)], f"{layout or 'n'}{rank}"
        else:
            ref = self.copy_of(operand, ("bcast", operand, product.id))
            return [("addr", ref), ("int", 1), ("int", ord("n")),
                    ("size", operand, rank - 1)], 0
        if not self.is_contiguous(operand) and node.op == "transpose" \
                and node.attrs["perm"] == (*range(rank - 2), rank - 1, rank - 2) \
                and self.is_contiguous(node.inputs[0]):
            stored = node.inputs[0]
            return [("addr", self.ref(stored)), ("int", batched), ("int", ord("t")),
                    ("size", stored, rank - 1)], 0
        layout = self.strided_layout(operand)
        if batched and layout is not None and 3 <= rank <= 4:
            return [("addr", self.ref(operand)), ("strides", self.ref(operand))], \
                f"{layout}{rank}"
        return [("addr", self.contiguous_ref(operand)), ("int", batched), ("int", ord("n")),
                ("size", operand, rank - 1)], 0

    def may_broadcast(self, operand: Node, product: Node) -> bool:
        """Whether a batch axis of `operand` (of the product's rank) may be 1 at run time
        where the product's is not: both operands' sizes there are known only at run
        time."""
        other = next(self.graph.nodes[i] for i in product.inputs if i != operand.id) \
            if product.inputs[0] != product.inputs[1] else operand
        lead = len(product.shape) - len(other.shape)
        for axis, size in enumerate(operand.shape[:-2]):
            theirs = other.shape[axis - lead] if axis >= lead else 1
            if size is None and theirs != 1:
                return True
        return False

    def strided_layout(self, nid: int) -> str | None:
        """"n" or "t" if `nid` is transposes (views) of a contiguous array whose last axis
        (unit stride) is the view's last or second-to-last axis, else None."""
        perm = self.view_permutation(nid)
        if perm is None or perm == tuple(range(len(perm))):
            return None
        last = len(perm) - 1
        return "n" if perm[-1] == last else "t" if perm[-2] == last else None

    def view_permutation(self, nid: int) -> tuple[int, ...] | None:
        """p such that `nid` is transpose(contiguous array, p) through views, or None."""
        node = self.graph.nodes[nid]
        if self.is_contiguous(nid):
            return tuple(range(len(node.shape)))
        if node.op != "transpose" or nid not in self.memory.alias:
            return None
        inner = self.view_permutation(node.inputs[0])
        return None if inner is None else tuple(inner[p] for p in node.attrs["perm"])

    def emit_index(self, node: Node, group: Group) -> None:
        out = self.ref(node.id)
        what = describe_group(self.graph, group)
        if node.op == "concat":
            start = 0
            axis = node.attrs["axis"]
            for i in node.inputs:
                size = self.graph.nodes[i].shape[axis]
                index = [(None, None, 1)] * len(node.shape)
                index[axis] = (start, start + size, 1)
                self.emit_copy(self.ref(i), ("part", out, tuple(index)), node.id, [node.id],
                               what=what)
                start += size
            return
        if node.op == "slice_grad":
            self.add(fill_source(node.dtype), [("count", node.id), ("addr", out)], [node.id],
                     what)
            index = tuple(tuple(part) for part in node.attrs["index"])
            self.emit_copy(self.ref(node.inputs[0]), ("part", out, index), node.inputs[0],
                           [node.id], what=what)
            return
        operands = [self.contiguous_ref(i) for i in data_inputs(node)]
        ranks = [len(self.graph.nodes[i].shape) for i in data_inputs(node)]
        args: list[tuple] = []
        for i, ref in zip(data_inputs(node), operands):
            args.append(("addr", ref))
            args += [("size", i, a) for a in range(len(self.graph.nodes[i].shape))]
        args.append(("addr", out))
        args += [("size", node.id, a) for a in range(len(node.shape))]
        self.add(index_kernel_source(node, self.graph, ranks), args, [node.id], what, group)

    def emit_call(self, node: Node, group: Group) -> None:
        op = OPS[node.op]
        module, function = op.kernel.split(":")
        operands = data_inputs(node)
        args: list[tuple] = []
        for i in operands:
            args.append(("addr", self.contiguous_ref(i)))
            args += [("size", i, a) for a in range(len(self.graph.nodes[i].shape))]
        args.append(("addr", self.ref(node.id)))
        args += [("size", node.id, a) for a in range(len(node.shape))]
        extra: list[int] = []
        for attr in op.kernel_attrs:
            value = node.attrs[attr]
            extra += [int(v) for v in (value if isinstance(value, tuple) else (value,))]
        args += [("int", v) for v in extra]
        specs = [(self.graph.nodes[i].dtype, len(self.graph.nodes[i].shape)) for i in operands]
        source = call_source(module, function, specs, (node.dtype, len(node.shape)), len(extra))
        self.add(source, args, [node.id], describe_group(self.graph, group), group)

    def emit_scan(self, group: Group) -> None:
        """The body compiled once into its own program, run by one scan instruction
        (graphc/backends/cpu/scan.py)."""
        from graphc.backends.cpu.scan import ScanCode, scan_kernel_source
        from graphc.passes import fusion, memory_planning, schedule_subgraph

        node = self.graph.nodes[group.nodes[0]]
        body = node.attrs["body"]
        graph = schedule_subgraph(body.graph, [fusion, memory_planning])
        code = BodyWriter(graph, graph.groups, graph.memory, self.stats).write()
        operands = [self.contiguous_ref(i) for i in node.inputs]
        results = {self.graph.nodes[n].attrs["index"]: self.ref(n) for n in group.stores}
        self.scans.append(ScanCode(body, graph, code, node.id, operands, results))
        self.add(scan_kernel_source(), [("scan", len(self.scans) - 1)], list(group.nodes),
                 describe_group(self.graph, group) +
                 f": a body of {len(code.instructions)} calls, run once per step", group)

    def emit_copy(self, src: Ref, dst: Ref, nid: int, nodes: list[int],
                  what: str | None = None) -> None:
        """dst[...] = src, `src` holding node `nid`'s value (broadcast to a "bcast" copy's
        shape; `dst` may be a part of an array)."""
        node = self.graph.nodes[nid]
        rank = len(self.graph.nodes[dst[2]].shape) if dst[0] == "bcast" else len(node.shape)
        text = what or f"copy {node.label} into {dst[0]}"
        self.add(copy_source(node.dtype, max(rank, 1)), [("copy_args", src, dst)], nodes, text)

    # -- checks -------------------------------------------------------------------------
    def emit_loss_check(self) -> None:
        floats = [nid for nid in self.graph.outputs
                  if self.graph.nodes[nid].dtype in ("float32", "float64")
                  and self.graph.nodes[nid].shape == ()]
        if floats and self.graph.updates:
            self.emit_finite_check(floats, "the loss is finite")

    def emit_gradient_check(self) -> None:
        """Before the first parameter is written: every computed value the update groups
        read (the gradients) must be finite, or the step stops without updating."""
        checked: list[int] = []
        for nid in gradients_to_check(self.graph, self.groups):
            root = nid
            while root in self.memory.alias:
                root = self.memory.alias[root]
            if root not in checked:
                checked.append(root)
        if checked:
            self.emit_finite_check(checked, "the gradients are finite")

    def emit_finite_check(self, nodes: list[int], what: str) -> None:
        by_dtype: dict[str, list[int]] = {}
        for nid in nodes:
            by_dtype.setdefault(self.graph.nodes[nid].dtype, []).append(nid)
        for dtype, group in by_dtype.items():
            args: list[tuple] = [("int", len(group))]
            for nid in group:
                args += [("addr", self.ref(nid)), ("count", nid)]
            self.add(finite_check_source(dtype), args, group,
                     f"check: {what} ({len(group)} array(s))", check=True)


def program_listing(graph: Graph, program: Program) -> str:
    """The program as the user reads it: one line per call, with the nodes it computes and
    the lines of the user's code they came from."""
    lines = [f"# CPU step of graph {graph.name!r}: {len(program.instructions)} calls of "
             f"{len({k.module for k in program.kernels})} kernels "
             "(kernels/cpu/program.py runs them in order)"]
    for k, ins in enumerate(program.instructions):
        where = sorted({short_location(graph.nodes[n].where) for n in ins.nodes})
        check = "  [check]" if ins.check else ""
        origin = "" if not where or " from " in ins.what else "  from " + ", ".join(where)
        lines.append(f"{k:4d}  {ins.kernel.module}  {ins.what}{check}{origin}")
        if ins.args and ins.args[0][0] == "scan":
            body = program.scans[ins.args[0][1]].code.listing
            lines += ["      | " + line for line in body.splitlines()]
    return "\n".join(lines) + "\n"


class BodyWriter(ProgramWriter):
    """The program of a scan's body: its outputs, copied from after each step, must be
    contiguous arrays of its own."""

    def output_ref(self, nid: int) -> Ref:
        ref = super().output_ref(nid)
        return ref if self.is_contiguous(nid) or ref[0] == "copy" else \
            self.copy_of(nid, ("copy", nid))


def executor_source() -> str:
    """The executor of every program (kernels/cpu/program.py), as a module like a kernel's."""
    return ("# graphc program executor\n" + _version_line() + "\n" + PRELUDE.replace(
        "KERNEL_SIGNATURE, address, strided", "EXECUTOR_SIGNATURE, call_kernel") + "\n" +
        EXECUTOR_SOURCE)


def _unit_axes_only(src: tuple, dst: tuple) -> bool:
    """Whether a reshape from `src` to `dst` only adds or drops axes of size 1 (a view of
    any strided array)."""
    return [d for d in src if d != 1] == [d for d in dst if d != 1]


# -- kernel sources -------------------------------------------------------------------------

def _source(kind: str, title: str, body: list[str], extra_imports: str = "") -> str:
    header = [f"# graphc kernel: {title}", _version_line()]
    return ("\n".join(header) + "\n" + PRELUDE + extra_imports + "\n\n" + _DECORATOR[kind] +
            "\ndef kernel(a):\n" + "\n".join("    " + line for line in body) +
            "\n    return 0\n")


def _operand_shape(shape: tuple, space: tuple) -> list[str]:
    """The operand's shape in the loop's size names (1 on broadcast axes)."""
    if not shape:
        return ["1"]
    offset = len(space) - len(shape)
    return ["1" if d == 1 and space[offset + j] != 1 else f"n{offset + j}"
            for j, d in enumerate(shape)]


def merged_axes(graph: Graph, group: Group, strided_loads: set[int]) -> list[list[int]]:
    """The loop's axes, adjacent ones merged into one wherever every operand treats them
    alike (C-contiguous over both, or broadcast along both; for a reduction, both reduced
    or both kept): a (B, T, C) bias add runs as a (B*T, C) loop, an elementwise update as
    one flat loop. Fewer loops compile faster and vectorise better, and kernels that differ
    only in rank become one. An axis of static size 1 merges with either neighbour; a
    strided operand's own axes are never merged (its strides are per axis)."""
    root = graph.nodes[group.root]
    reduce_root = OPS[root.op].kind == "reduce"
    space = graph.nodes[root.inputs[0]].shape if reduce_root else root.shape
    rank = len(space)
    if rank <= 1:
        return [[a] for a in range(rank)]
    patterns: list[list[str]] = []   # per operand, per axis: "span", "bcast" or "own"
    for nid in group.loads:
        node = graph.nodes[nid]
        if is_literal(node):
            continue
        offset = rank - len(node.shape)
        row = []
        for a in range(rank):
            if a < offset:
                row.append("bcast")
            elif nid in strided_loads:
                row.append("own")
            else:
                d = node.shape[a - offset]
                row.append("bcast" if d == 1 and space[a] != 1 else "span")
        patterns.append(row)
    if reduce_root:
        reduced = set(root.attrs["axes"])
        patterns.append(["bcast" if a in reduced else "span" for a in range(rank)])
    groups = [[0]]
    for a in range(1, rank):
        last = groups[-1]
        if all(_mergeable(row, last, a, space) for row in patterns):
            last.append(a)
        else:
            groups.append([a])
    return groups


def _mergeable(row: list[str], group: list[int], a: int, space: tuple) -> bool:
    """Whether axis `a` joins `group` for an operand whose axes are treated as `row`."""
    if row[a] == "own" or any(row[b] == "own" for b in group):
        return False
    if space[a] == 1:
        return True
    kinds = {row[b] for b in group if space[b] != 1}
    return not kinds or kinds == {row[a]}


def loop_kernel_source(graph: Graph, group: Group, in_place: dict[int, int],
                       strided_loads: set[int], axes: list[list[int]] | None = None) -> str:
    """A fused loop kernel over the loop axes `axes` (merged_axes: each a run of adjacent
    axes of the node's space, looped over as one; default: every axis its own). Block: the
    loop's sizes n0.. (one per entry of `axes`), then per loaded array its address (and
    byte strides if strided), then per stored array its address.

    `in_place` maps stores to the loaded array they overwrite at the same index: such an
    array is passed once and written through the same name, so LLVM vectorises the loop
    (two names for one array fail its run-time overlap check and it falls back to scalar
    code: an in-place Adam update of 16K floats took 27 us instead of 3 us).
    """
    names = loop_names(graph, group, in_place)
    root, reduce_root, loads = names.root, names.reduce_root, names.loads
    full_space = graph.nodes[root.inputs[0]].shape if reduce_root else root.shape
    if axes is None:
        axes = [[a] for a in range(len(full_space))]
    space = tuple(_merged_size(full_space, merged) for merged in axes)
    rank = len(space)
    shapes = {nid: _merged_shape(graph.nodes[nid].shape, full_space, axes, space,
                                 nid in strided_loads) for nid in loads}
    # a run is reduced if one of its axes is (merged_axes only joins a reduced axis with
    # kept ones of static size 1, whose reduction changes nothing)
    reduced = [j for j, merged in enumerate(axes) if reduce_root and any(
        a in root.attrs["axes"] and full_space[a] != 1 for a in merged)]

    prologue = [f"n{a} = a[{a}]" for a in range(rank)]
    position = rank
    for nid in loads:
        node = graph.nodes[nid]
        shape = _tuple(_operand_shape(shapes[nid], space))
        if nid in strided_loads:
            strides = _tuple([f"a[{position + 1 + j}]" for j in range(max(len(node.shape), 1))])
            prologue.append(f"{names.arrays[nid]} = strided(address(a[{position}]), {shape}, "
                            f"{strides}, {CTOR[node.dtype]})")
            position += 1 + max(len(node.shape), 1)
        else:
            prologue.append(_carray(names.arrays[nid], str(position), shape, node.dtype))
            position += 1
    for nid in names.own_stores:
        node = graph.nodes[nid]
        if nid == root.id and reduce_root:
            shape = _tuple([f"n{a}" for a in range(rank) if a not in reduced])
        else:
            shape = _tuple(_operand_shape(space, space))
        prologue.append(_carray(names.stores[nid], str(position), shape, node.dtype))
        position += 1

    body = loop_body(graph, names, shapes, space)
    if not reduce_root:
        loops = nest(rank, range(rank), body, 0)
    else:
        loops = reduction_loops(root.op, root.dtype, reduced, rank, body,
                                names.operand(root.inputs[0]), names.stores[root.id])
    title = (f"{group.kind} of {len(group.nodes)} nodes "
             f"({', '.join(graph.nodes[n].op for n in group.nodes)}), "
             f"scalar library {kernel_library_version()}")
    return _source("loop", title, prologue + loops, LOOP_IMPORTS)


def _merged_size(space: tuple, merged: list[int]) -> int | None:
    """The static size of a run of axes (None if any is only known at run time)."""
    size = 1
    for a in merged:
        if space[a] is None:
            return None
        size *= space[a]
    return size


def _merged_shape(shape: tuple, full_space: tuple, axes: list[list[int]], space: tuple,
                  strided: bool) -> tuple:
    """An operand's static shape over the merged loop axes: 1 where it is broadcast, the
    loop's size where it spans. A strided operand keeps its own axes (never merged)."""
    if strided:
        return shape
    offset = len(full_space) - len(shape)
    merged_shape = []
    for j, merged in enumerate(axes):
        spans = any(a >= offset and not (shape[a - offset] == 1 and full_space[a] != 1)
                    for a in merged if full_space[a] != 1)
        merged_shape.append(space[j] if spans or space[j] == 1 else 1)
    return tuple(merged_shape)


def gemm_source(dtype: str, layout_a: int | str = 0, layout_b: int | str = 0) -> str:
    """out[i] (m, n) = a[i] (m, k) @ b[i] (k, n) for i < batch, through BLAS. Block: batch,
    the size of the last batch axis, m, k, n; then for a and for b, by its layout (see
    ProgramWriter.gemm_operand): 0: address, whether it has a batch axis (0: every i reads
    matrix 0), ord("t") if it is stored transposed (as (k, m), or (n, k)) else ord("n"),
    its row length in memory; "n3", "n4", "t3", "t4" (a strided view of that rank whose
    matrices are row-major or transposed): address, byte strides of its axes; then the
    address of out.
    Every matrix product of every model of this dtype and these layouts is this one
    kernel."""
    item = np.dtype(dtype).itemsize
    gemm = "gemm_f64" if dtype == "float64" else "gemm_f32"
    body = ["batch = a[0]", "inner = a[1]", "m = a[2]", "k = a[3]", "n = a[4]"]
    position = 5
    for name, layout, rows, cols in (("a", layout_a, "m", "k"), ("b", layout_b, "k", "n")):
        body.append(f"p{name} = a[{position}]")
        if layout == 0:
            body += [f"s{name}0 = a[{position + 1}] * {rows} * {cols} * {item}",
                     f"s{name}1 = 0", f"inner_{name} = 1",
                     f"t{name} = a[{position + 2}]", f"ld{name} = max(a[{position + 3}], 1)"]
            position += 4
            continue
        # a strided view: byte strides of its batch axes (one or two), then of its rows
        # and columns; one of those two is the item size
        trans, rank = str(layout)[0], int(str(layout)[1])
        row, col = position + rank - 1, position + rank
        body += [f"s{name}0 = a[{position + 1}]",
                 f"s{name}1 = a[{position + 2}]" if rank == 4 else f"s{name}1 = 0",
                 f"inner_{name} = inner" if rank == 4 else f"inner_{name} = 1",
                 f"t{name} = {ord(trans)}",
                 f"ld{name} = max(a[{row if trans == 'n' else col}] // {item}, 1)"]
        position += 1 + rank
    body += [f"pc = a[{position}]",
             "if k == 0:",
             f"    out = carray(address(pc), (batch * m * n,), {CTOR[dtype]})",
             "    for i in range(batch * m * n):",
             "        out[i] = 0",
             "    return 0",
             "if m == 0 or n == 0:",
             "    return 0",
             # row-major out = a @ b is column-major out^T = b^T a^T: BLAS gets b first
             "for i in range(batch):",
             "    ia0 = i // inner_a",
             "    ia1 = i - ia0 * inner_a",
             "    ib0 = i // inner_b",
             "    ib1 = i - ib0 * inner_b",
             f"    {gemm}(tb, ta, n, m, k, pb + ib0 * sb0 + ib1 * sb1, ldb,",
             "           pa + ia0 * sa0 + ia1 * sa1, lda,",
             f"           pc + i * (m * n * {item}), n)"]
    title = f"matrix product {dtype}" + (f" ({layout_a}, {layout_b})" if layout_a or layout_b
                                         else "")
    return _source("exact", title, body, f"from graphc.kernels.cpu.blas import {gemm}\n")


def copy_source(dtype: str, rank: int) -> str:
    """dst[...] = src over `rank` axes, both strided. Block: sizes, address of src, its byte
    strides, address of dst, its byte strides."""
    dims = [f"n{a}" for a in range(rank)]
    shape = _tuple(dims)
    src_strides = _tuple([f"a[{rank + 1 + j}]" for j in range(rank)])
    dst_strides = _tuple([f"a[{2 * rank + 2 + j}]" for j in range(rank)])
    index = ", ".join(f"i{a}" for a in range(rank))
    body = [f"n{a} = a[{a}]" for a in range(rank)]
    body += [f"src = strided(address(a[{rank}]), {shape}, {src_strides}, {CTOR[dtype]})",
             f"dst = strided(address(a[{2 * rank + 1}]), {shape}, {dst_strides}, "
             f"{CTOR[dtype]})"]
    body += nest(rank, range(rank), [f"dst[{index}] = src[{index}]"], 0)
    return _source("exact", f"copy {dtype} rank {rank}", body)


def fill_source(dtype: str) -> str:
    """A contiguous array set to zero. Block: element count, address."""
    body = ["n = a[0]", _carray("out", "1", "(n,)", dtype), "for i in range(n):",
            f"    out[i] = {CTOR[dtype]}(0)"]
    return _source("exact", f"zero fill {dtype}", body)


def finite_check_source(dtype: str) -> str:
    """Status 1 if any element of the listed contiguous arrays is NaN or infinite.
    Block: array count, then address and element count of each.

    `v - v` is 0 for every finite `v` and NaN for NaN and +-Inf (compiled without fast-math
    flags, under which it would fold to 0); OR-ing the comparisons vectorises."""
    body = ["bad = 0", "for j in range(a[0]):",
            "    n = a[2 + 2 * j]",
            f"    v = carray(address(a[1 + 2 * j]), (n,), {CTOR[dtype]})",
            "    for i in range(n):",
            "        bad |= (v[i] - v[i]) != 0",
            "if bad:",
            "    return 1"]
    return _source("exact", f"finiteness check {dtype}", body)


def index_kernel_source(node: Node, graph: Graph, ranks: list[int]) -> str:
    """Gather (take) and scatter-add (take_grad) kernels for one rank combination; status 2
    for an index outside its range (index_range_lines). Block: per operand its address and
    sizes, then the output's.

    Both loop over the gathered shape `x.shape[:axis] + idx.shape + x.shape[axis + 1:]`
    (take's output, take_grad's incoming gradient) and differ only in the last line.
    cumsum and take_along_axis(_grad) get the loop nests of loops.axis_kernel_body.
    """
    axis = node.attrs["axis"]
    dtypes = [graph.nodes[i].dtype for i in data_inputs(node)]
    title = (f"{node.op} along axis {axis}, {' '.join(dtypes)} -> {node.dtype}, ranks "
             f"{ranks} -> {len(node.shape)}")
    if node.op in AXIS_KERNEL_OPERANDS:
        body = _carrays(list(AXIS_KERNEL_OPERANDS[node.op]), ranks, dtypes, node)
        return _source("exact", title, body + axis_kernel_body(node.op, axis, len(node.shape),
                                                                "return 2"))
    idx = graph.nodes[node.inputs[1]]
    table = graph.nodes[node.inputs[0] if node.op == "take" else node.inputs[2]]
    names = ["x", "idx"] if node.op == "take" else ["g", "idx"]
    body, position = [], 0
    for name, rank, dtype in zip(names, ranks, dtypes):
        dims = _tuple([f"a[{position + 1 + j}]" for j in range(rank)])
        body.append(_carray(name, str(position), dims, dtype))
        position += 1 + rank
    out_dims = _tuple([f"a[{position + 1 + j}]" for j in range(max(len(node.shape), 1))])
    body.append(_carray("out", str(position), out_dims, node.dtype))
    outer = [f"p{a}" for a in range(axis)]
    inner = [f"j{a}" for a in range(len(idx.shape))]
    rest = [f"q{a}" for a in range(len(table.shape) - axis - 1)]
    gathered = ", ".join(outer + inner + rest) or "0"
    scattered = ", ".join(outer + ["t"] + rest)
    if node.op == "take":
        driver = "out"
        body.append(f"n = x.shape[{axis}]")
        last = f"out[{gathered}] = x[{scattered}]"
    else:
        driver = "g"
        body += [f"n = out.shape[{axis}]", "out[...] = 0"]
        last = f"out[{scattered}] += g[{gathered}]"
    loops = [(v, f"{driver}.shape[{k}]") for k, v in enumerate(outer + inner + rest)]
    inner_body = [f"t = idx[{', '.join(inner) if inner else '0'}]",
                  *index_range_lines(node.attrs["wrap"], ["return 2"]), last]
    depth = 0
    for var, bound in loops:
        body.append("    " * depth + f"for {var} in range({bound}):")
        depth += 1
    body += ["    " * depth + b for b in inner_body]
    return _source("exact", title, body)


def _carrays(names: list[str], ranks: list[int], dtypes: list[str], out: Node) -> list[str]:
    """Lines binding the operands `names` and `out` from a block of per-array address and
    sizes."""
    lines, position = [], 0
    for name, rank, dtype in zip(names + ["out"], ranks + [len(out.shape)],
                                 dtypes + [out.dtype]):
        dims = _tuple([f"a[{position + 1 + j}]" for j in range(rank)])
        lines.append(_carray(name, str(position), dims, dtype))
        position += 1 + rank
    return lines


def call_source(module: str, function: str, operands: list[tuple[str, int]],
                out: tuple[str, int], extra: int) -> str:
    """A call of the library kernel `module.function(*operands, out, *ints)` on contiguous
    arrays. Block: per operand its address and sizes, the output's, then the ints."""
    body, names, position = [], [], 0
    for k, (dtype, rank) in enumerate(operands + [out]):
        name = f"v{k}"
        dims = _tuple([f"a[{position + 1 + j}]" for j in range(rank)])
        body.append(_carray(name, str(position), dims, dtype))
        names.append(name)
        position += 1 + rank
    names += [f"a[{position + j}]" for j in range(extra)]
    body.append(f"{function}({', '.join(names)})")
    title = f"call {module}.{function} ({module} sha256 {module_digest(module)})"
    return _source("exact", title, body, f"from {module} import {function}\n")


def describe_shape(node: Node) -> str:
    return f"{format_shape(node.shape)} {node.dtype}"
