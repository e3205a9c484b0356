"""CPU code generation for batch-sharded steps (GRAPHC_SHARDS > 1): fusion groups ->
one `numba.njit` step with parallel regions (graphc/backends/cpu/codegen.py writes the default,
unsharded step).

Each loop group becomes one kernel function in a file named by the hash of its source, so
structurally identical kernels (the optimizer update of every parameter of one shape, the
same bias-add in two graphs) are compiled once. The step function, one njit entry for the
whole program, calls the kernels and BLAS in order. Rank-0 values live in 1-element arrays.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from graphc.backends.cpu.loops import (
    AXIS_KERNEL_OPERANDS,
    FASTMATH,
    axis_kernel_body,
    index_range_lines,
    loop_body,
    loop_names,
    nest,
    reduction_loops,
)
from graphc.codegen.cache import CacheStats, write_module
from graphc.codegen.common import (
    Kernel,
    check_reduction,
    kernel_library_version,
    module_digest,
)
from graphc.ir import Graph, Node, format_shape
from graphc.ops import OPS
from graphc.passes.fusion import Group, data_inputs, describe_group
from graphc.passes.memory import MemoryPlan

# A kernel the step calls once is inlined into it: one function compiles faster than a step
# calling separately compiled kernels (measured 2.6 s vs 4.1 s cold for a 64-128-10 MLP). A
# kernel called several times (the same layer repeated, the same optimizer update) is compiled
# once and called (a 16-layer tanh MLP: 8.2 s instead of 16.3 s inlining every call).
# Kernels are called only from the step: no wrappers for calls from Python or from C.
_DECORATOR = ("@njit(cache=True, nogil=True, INLINE"
              f"fastmath={FASTMATH}, error_model='numpy', boundscheck=False, "
              "no_cpython_wrapper=True, no_cfunc_wrapper=True)")
KERNEL_DECORATOR = "@@KERNEL_DECORATOR@@"
KERNEL_PRELUDE = """import math

import numpy as np
from numba import njit

from graphc.kernels.cpu.rng import dropout_keep
from graphc.kernels.cpu.scalar import (
    cos_f32, cos_f64, erf_f32, erf_f64, exp_f32, exp_f64, expm1_f32, expm1_f64, log1p_f32,
    log1p_f64, log_f32, log_f64, pow_f32, pow_f64, sigmoid_f32, sigmoid_f64, sin_f32, sin_f64,
    sqrt_f32, sqrt_f64, tanh_f32, tanh_f64,
)
"""


@dataclass
class Region:
    """A parallel region being written: the groups of one slot of the shard plan, run by
    every shard on its rows. `names` binds row values to the shard's slices of them."""

    index: int
    lines: list[str] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)
    partials: list[int] = field(default_factory=list)


class StepWriter:
    """Builds the step function and the kernels it calls."""

    def __init__(self, graph: Graph, groups: list[Group], memory: MemoryPlan,
                 stats: CacheStats | None = None) -> None:
        self.stats = stats
        self.graph = graph
        self.groups = groups
        self.memory = memory
        self.args: list[tuple[str, object]] = []   # (kind, key) per array argument
        self.arg_index: dict[tuple[str, object], int] = {}
        self.size_slots: list[tuple[int, int]] = []  # (node id, axis) per sizes[] entry
        self.size_index: dict[tuple[int, int], int] = {}
        self.names: dict[int, str] = {}
        self.kernels: list[Kernel] = []
        self.body: list[str] = []
        self.contiguous: dict[int, bool] = {}
        self.call_imports: set[str] = set()   # library kernels of "call" groups
        self.call_digests: dict[str, str] = {}
        self.shards = graph.shards if graph.shards is not None and graph.shards.enabled \
            else None
        self.region: Region | None = None
        self.region_sources: list[str] = []
        self.lazy_views: set[int] = set()   # views of row values, bound where they are used
        self.split = False   # the group being written shares its rows out among the shards
        self.parallel = False   # the step has parallel regions
        self.has_index_kernels = False   # take kernels, which report a bad index in status

    # -- naming ---------------------------------------------------------------------
    def arg(self, kind: str, key: object) -> str:
        k = (kind, key)
        if k not in self.arg_index:
            self.arg_index[k] = len(self.args)
            self.args.append(k)
        return f"a{self.arg_index[k]}"

    def dim(self, nid: int, axis: int) -> str:
        d = self.graph.nodes[nid].shape[axis]
        if d is not None:
            return str(d)
        key = (nid, axis)
        if key not in self.size_index:
            self.size_index[key] = len(self.size_slots)
            self.size_slots.append(key)
        # in a parallel region, the sizes of the shard (its rows on batch axes)
        table = "sizes" if self.region is None else "ssz"
        return f"{table}[{self.size_index[key]}]"

    def shape_tuple(self, nid: int) -> str:
        node = self.graph.nodes[nid]
        if not node.shape:
            return "(1,)"
        dims = [self.dim(nid, a) for a in range(len(node.shape))]
        return "(" + ", ".join(dims) + ",)"

    def value(self, nid: int) -> str:
        """The name of a node's array where code is being written (in a parallel region,
        the shard's rows of a row value), binding leaves and views on first use."""
        if self.region is not None and self.shards.is_row(nid):
            local = self.region.names.get(nid)
            if local is None:
                if nid in self.lazy_views:
                    self.emit_view(self.graph.nodes[nid])
                    return self.region.names[nid]
                local = f"{self.full_value(nid)}_s"
                self.body.append(f"{local} = {self.full_value(nid)}[lo:hi]")
                self.region.names[nid] = local
            return local
        return self.full_value(nid)

    def full_value(self, nid: int) -> str:
        """The step-level name of a node's whole array."""
        if nid in self.names:
            return self.names[nid]
        if nid in self.lazy_views:
            region, self.region = self.region, None
            body, self.body = self.body, self.step_body if region is not None else self.body
            try:
                self.emit_view(self.graph.nodes[nid])
            finally:
                self.region, self.body = region, body
            return self.names[nid]
        node = self.graph.nodes[nid]
        if node.op == "input":
            name = self.arg("feed", node.name)
        elif node.op in ("param", "state"):
            name = self.arg(node.op, node.name)
        elif node.op == "const":
            name = self.arg("const", nid)
        else:
            raise KeyError(nid)
        self.names[nid] = name
        self.contiguous[nid] = True
        return name

    # -- whole step -------------------------------------------------------------------
    def write(self) -> str:
        regions = self.shards.region if self.shards is not None else [None] * len(self.groups)
        split = self.shards.split if self.shards is not None else [False] * len(self.groups)
        outputs_left = sum(1 for g in self.groups if g.phase == 1)
        loss_checked = gradients_checked = False
        for group, region, shared_rows in zip(self.groups, regions, split):
            self.split = shared_rows
            if self.shards is not None and group.kind == "view" \
                    and self.shards.is_row(group.root):
                self.lazy_views.add(group.root)
                outputs_left -= group.phase == 1
                continue
            if self.region is not None and region != self.region.index:
                self.close_region()
            # the loss check runs once every output is computed, outside parallel regions
            if not loss_checked and outputs_left == 0 and self.region is None:
                self.emit_check()
                loss_checked = True
            if group.phase == 3 and not gradients_checked:
                self.emit_gradient_check()
                gradients_checked = True
            if region is not None and self.region is None:
                self.open_region(region)
            self.emit_group(group)
            outputs_left -= group.phase == 1
        if self.region is not None:
            self.close_region()
        if not loss_checked:
            self.emit_check()
        for name, nid in self.graph.updates:
            if self.memory.inplace.get(nid) != name:
                kind = "param" if name in self.graph.param_values else "state"
                self.body.append(f"{self.arg(kind, name)}[...] = {self.value(nid)}"
                                 if self.graph.nodes[nid].shape else
                                 f"{self.arg(kind, name)}[0] = {self.value(nid)}[0]")
        for k, nid in enumerate(self.graph.outputs):
            self.body.append(f"out{k} = {self.value(nid)}")
        outs = "".join(f"out{k}, " for k in range(len(self.graph.outputs)))
        self.body.append(f"return True, ({outs})")
        self.write_kernel_files()
        params = ", ".join([f"a{i}" for i in range(len(self.args))] +
                           ["sizes", "check", "nshards", "bounds", "shard_sizes", "status"])
        imports = sorted({f"from {k.module} import kernel as {k.name}" for k in self.kernels}
                         | self.call_imports)
        # library modules the step calls (Numba's cache of the step does not track them)
        versions = [f"# {m} sha256 {module_digest(m)}"
                    for m in ("graphc.kernels.cpu.blas", "graphc.kernels.cpu.linalg",
                              "graphc.kernels.cpu.checks")]
        shards = "graphc.kernels.cpu.shards"
        versions += [f"# {shards} sha256 {module_digest(shards)}"] if self.region_sources else []
        lines = ["import numpy as np", "from numba import njit, prange", "", *versions,
                 "from graphc.kernels.cpu.blas import matmul_into",
                 "from graphc.kernels.cpu.linalg import batched_matmul",
                 "from graphc.kernels.cpu.checks import all_finite",
                 "from graphc.kernels.cpu.shards import extreme_partials, sum_partials",
                 *imports, "", "", *self.region_sources,
                 STEP_DECORATOR_PARALLEL if self.parallel else STEP_DECORATOR,
                 f"def step({params}):"]
        lines += ["    " + line for line in self.body]
        return "\n".join(lines) + "\n"

    def write_kernel_files(self) -> None:
        """Choose inline or shared compilation per kernel and write the source files."""
        uses: dict[str, int] = {}
        for k in self.kernels:
            uses[k.source] = uses.get(k.source, 0) + 1
        for k in self.kernels:
            shared = uses[k.source] > 1
            inline = "" if shared else "inline='always', "
            source = k.source.replace(KERNEL_DECORATOR, _DECORATOR.replace("INLINE", inline))
            if not shared:
                # compiled into this step only: the file can say exactly what it computes
                source = self.describe(k) + source
            k.source = source
            k.module, k.path = write_module("graphc_kernel", k.source, self.stats)

    def describe(self, kernel: Kernel) -> str:
        """Header lines: the nodes a kernel fuses and the user lines they came from."""
        lines = [f"# graph {self.graph.name!r}: fuses {len(kernel.nodes)} node(s)"]
        for nid in kernel.nodes:
            node = self.graph.nodes[nid]
            lines.append(f"#   {node.label} = {node.op} {format_shape(node.shape)} {node.dtype}"
                         f"  ({node.role}, {node.where})")
        return "\n".join(lines) + "\n"

    def emit_check(self) -> None:
        floats = [nid for nid in self.graph.outputs
                  if self.graph.nodes[nid].dtype in ("float32", "float64")
                  and self.graph.nodes[nid].shape == ()]
        if not floats or not self.graph.updates:
            return
        cond = " or ".join(f"not np.isfinite({self.value(n)}[0])" for n in floats)
        outs = "".join(f"{self.value(n)}, " for n in self.graph.outputs)
        self.body.append(f"if check and ({cond}):")
        self.body.append(f"    return False, ({outs})")

    def emit_gradient_check(self) -> None:
        """Before the first parameter is written: every computed value the update groups
        read (the gradients) must be finite, or the step returns without updating."""
        checked: list[str] = []
        for group in self.groups:
            if group.phase != 3:
                continue
            for nid in group.loads:
                node = self.graph.nodes[nid]
                if node.op in ("input", "param", "state", "const") or node.dtype not in (
                        "float32", "float64"):
                    continue
                name = self.value(nid)
                if name not in checked:
                    checked.append(name)
        outs = "".join(f"{self.value(n)}, " for n in self.graph.outputs)
        if self.has_index_kernels:   # an index out of range stops the step here
            self.body.append("if status[0] != 0:")
            self.body.append(f"    return False, ({outs})")
        if not checked:
            return
        cond = " and ".join(f"all_finite({name})" for name in checked)
        self.body.append(f"if check and not ({cond}):")
        self.body.append(f"    return False, ({outs})")

    # -- parallel regions ------------------------------------------------------------
    def open_region(self, index: int) -> None:
        self.region = Region(index)
        self.step_body, self.body = self.body, self.region.lines

    def close_region(self) -> None:
        """Write the region as a function of one shard and a parallel loop over shards,
        call it, and combine the shards' partial results in shard order."""
        region, self.region = self.region, None
        self.body = self.step_body
        assigned = {line.split(" = ")[0] for line in region.lines if " = " in line}
        external: list[str] = []
        for line in region.lines:
            for name in re.findall(r"\b(?:a|v|p)\d+\b", line):
                if name not in external and name not in assigned:
                    external.append(name)
        fn = f"region{region.index}"
        arrays = ", ".join(external)
        lines = [STEP_DECORATOR,
                 f"def {fn}(s, nshards, lo, hi, ssz, status, {arrays}):"]
        lines += ["    " + line for line in region.lines]
        self.region_sources.append("\n".join(lines) + "\n\n")
        # One shard runs on this thread (waking the pool would leave its threads spinning
        # against BLAS's). The shard index is an int64 in both calls (prange's is unsigned,
        # a literal 0 would be a constant), so one compiled function serves both.
        self.body += ["if nshards == 1:",
                      f"    {fn}(nshards - 1, nshards, bounds[0], bounds[1], shard_sizes[0], "
                      f"status, {arrays})",
                      "else:",
                      "    for s in prange(nshards):",
                      f"        {fn}(np.int64(s), nshards, bounds[s], bounds[s + 1], "
                      f"shard_sizes[s], status, {arrays})"]
        self.parallel = True
        for nid in region.partials:
            how = self.shards.combine[nid]
            check_reduction(how, "CPU")
            call = "sum_partials(" if how == "sum" else "extreme_partials("
            last = "" if how == "sum" else f", {how == 'max'}"
            self.body.append(f"{call}{self.arg('partial', nid)}, nshards, "
                             f"{self.bind_store(nid)}{last})")

    def bind_store(self, nid: int) -> str:
        if self.region is not None:
            if self.shards.status[nid] == "partial":
                part = f"{self.arg('partial', nid)}_s"
                self.body.append(f"{part} = {self.arg('partial', nid)}[s]")
                self.region.partials.append(nid)
                return part
            full = self.bind_full_store(nid)
            local = f"{full}_s"
            self.body.append(f"{local} = {full}[lo:hi]")
            self.region.names[nid] = local
            return local
        return self.bind_full_store(nid)

    def bind_full_store(self, nid: int) -> str:
        if nid in self.memory.inplace:
            name = self.memory.inplace[nid]
            kind = "param" if name in self.graph.param_values else "state"
            target = self.arg(kind, name)
        else:
            target = self.arg("pool", nid)
        self.names[nid] = target
        self.contiguous[nid] = True
        return target

    def emit_group(self, group: Group) -> None:
        node = self.graph.nodes[group.root]
        self.body.append(f"# {describe_group(self.graph, group)}")
        if group.kind == "loop":
            self.emit_loop(group)
        elif group.kind == "matmul":
            self.emit_matmul(node)
        elif group.kind == "view":
            self.emit_view(node)
        elif group.kind == "shape":
            self.names[node.id] = self.arg("dim", node.id)
            self.contiguous[node.id] = True
        elif group.kind == "index":
            self.emit_index(node)
        elif group.kind == "call":
            self.emit_call(node)
        else:
            raise NotImplementedError(f"no CPU code for {group.kind} group ({node.op})")

    # -- groups ---------------------------------------------------------------------
    def emit_matmul(self, node: Node) -> None:
        a, b = (self.value(i) for i in node.inputs)
        out = self.bind_store(node.id)
        if len(node.shape) == 2:
            self.body.append(f"matmul_into({a}, {b}, {out})")
            return
        na, nb = (self.graph.nodes[i] for i in node.inputs)
        batch = len(node.shape) - 2
        sa = self.batch_view(a, na, node, batch)
        sb = self.batch_view(b, nb, node, batch)
        so = f"{out}.reshape((-1, {self.dim(node.id, batch)}, {self.dim(node.id, batch + 1)}))"
        self.body.append(f"batched_matmul({sa}, {sb}, {so})")

    def batch_view(self, name: str, operand: Node, node: Node, batch: int) -> str:
        """`name` as a contiguous 3-D (batch, rows, cols) array, its batch broadcast."""
        full = f"np.ascontiguousarray({name})"
        rows = self.dim(operand.id, len(operand.shape) - 2)
        cols = self.dim(operand.id, len(operand.shape) - 1)
        if len(operand.shape) == 2 or all(d == 1 for d in operand.shape[:-2]):
            return f"{full}.reshape((1, {rows}, {cols}))"
        if operand.shape[:-2] == node.shape[:-2]:
            return f"{full}.reshape((-1, {rows}, {cols}))"
        target = "(" + ", ".join(self.dim(node.id, a) for a in range(batch)) + f", {rows}, {cols})"
        stretched = f"np.ascontiguousarray(np.broadcast_to({name}, {target}))"
        return f"{stretched}.reshape((-1, {rows}, {cols}))"

    def emit_view(self, node: Node) -> None:
        src_id = data_inputs(node)[0]
        src = self.value(src_id)
        contiguous = self.contiguous.get(src_id, True)
        if node.op == "transpose":
            perm = node.attrs["perm"]
            expr = f"{src}.T" if len(perm) == 2 else f"{src}.transpose({tuple(perm)})"
            contiguous = False
        elif node.op == "slice":
            parts = []
            for start, stop, step in node.attrs["index"]:
                parts.append(f"{'' if start is None else start}:{'' if stop is None else stop}"
                             f":{step}")
            expr = f"{src}[{', '.join(parts)}]"
            contiguous = False
        else:
            base = src if contiguous else f"np.ascontiguousarray({src})"
            expr = f"{base}.reshape({self.shape_tuple(node.id)})"
            contiguous = True
        name = f"v{node.id}"
        if self.region is not None and self.shards.is_row(node.id):
            name += "_s"
            self.region.names[node.id] = name
        else:
            self.names[node.id] = name
        self.body.append(f"{name} = {expr}")
        self.contiguous[node.id] = contiguous

    def emit_index(self, node: Node) -> None:
        out = self.bind_store(node.id)
        if node.op == "concat":
            start = 0
            axis = node.attrs["axis"]
            for i in node.inputs:
                size = self.graph.nodes[i].shape[axis]
                index = [":"] * len(node.shape)
                index[axis] = f"{start}:{start + size}"
                self.body.append(f"{out}[{', '.join(index)}] = {self.value(i)}")
                start += size
            return
        if node.op == "slice_grad":
            g = self.value(node.inputs[0])
            parts = [f"{'' if s is None else s}:{'' if e is None else e}:{st}"
                     for s, e, st in node.attrs["index"]]
            self.body.append(f"{out}[...] = 0")
            self.body.append(f"{out}[{', '.join(parts)}] = {g}")
            return
        kernel = self.add_kernel(Group("index", [node.id], 0), index_kernel_source(
            node, self.graph))
        operands = [self.value(i) for i in data_inputs(node)]
        self.body.append(f"{kernel.name}({', '.join(operands + [out, 'status'])})")
        self.has_index_kernels = True

    def emit_call(self, node: Node) -> None:
        """A library kernel (OpDef.kernel, "module:function") called as
        fn(*operands, out, *int attrs): conv2d, pooling and their gradients."""
        op = OPS[node.op]
        module, function = op.kernel.split(":")
        self.call_imports.add(f"from {module} import {function}")
        if module not in self.call_digests:
            # Numba's cache of the step does not notice a changed callee: name its source
            self.call_digests[module] = module_digest(module)
            self.body.append(f"# {module} sha256 {self.call_digests[module]}")
        operands = []
        for i in data_inputs(node):
            name = self.value(i)
            operands.append(name if self.contiguous.get(i, True)
                            else f"np.ascontiguousarray({name})")
        out = self.bind_store(node.id)
        extra: list[str] = []
        for attr in op.kernel_attrs:
            value = node.attrs[attr]
            extra += [repr(int(v)) for v in (value if isinstance(value, tuple) else (value,))]
        self.body.append(f"{function}({', '.join(operands + [out] + extra)})")

    def add_kernel(self, group: Group, source: str) -> Kernel:
        kernel = Kernel(group, f"k{len(self.kernels)}", source, nodes=list(group.nodes))
        kernel.lines = sorted({self.graph.nodes[n].where for n in group.nodes})
        self.kernels.append(kernel)
        return kernel

    def in_place_pairs(self, group: Group) -> dict[int, int]:
        """Stores that overwrite an array the group also loads: {store node: load node}."""
        pairs = {}
        for nid in group.stores:
            name = self.memory.inplace.get(nid)
            for load in group.loads:
                leaf = self.graph.nodes[load]
                if name is not None and leaf.op in ("param", "state") and leaf.name == name:
                    pairs[nid] = load
        return pairs

    def emit_loop(self, group: Group) -> None:
        in_place = self.in_place_pairs(group)
        source, loads = loop_kernel_source(self.graph, group, in_place)
        kernel = self.add_kernel(group, source)
        root = self.graph.nodes[group.root]
        reduce_root = OPS[root.op].kind == "reduce"
        space_node = root.inputs[0] if reduce_root else root.id
        sizes = [self.dim(space_node, a) for a in range(len(self.graph.nodes[space_node].shape))]
        operands = [self.value(i) for i in loads]
        if self.split:
            stores = [self.bind_full_store(n) for n in group.stores if n not in in_place]
            sizes, operands, stores = self.split_rows(group, space_node, sizes, loads,
                                                      operands, stores)
        else:
            stores = [self.bind_store(n) for n in group.stores if n not in in_place]
        args = [non_literal(size) for size in sizes] + operands + stores
        packs = pack_arguments(args)
        if packs is not None:
            args = [f"({', '.join(pack)},)" for pack in packs]
        self.body.append(f"{kernel.name}({', '.join(args)})")

    def split_rows(self, group: Group, space_node: int, sizes: list[str], loads: list[int],
                   operands: list[str], stores: list[str]
                   ) -> tuple[list[str], list[str], list[str]]:
        """This shard's share of the rows of an update loop (a fixed shape): rows
        [lo, hi) of every operand of the loop's shape; operands the same for every row are
        passed whole."""
        space = self.graph.nodes[space_node].shape
        k = len(self.kernels)
        lo, hi = f"lo{k}", f"hi{k}"
        self.body.append(f"{lo} = ({space[0]} * s) // nshards")
        self.body.append(f"{hi} = ({space[0]} * (s + 1)) // nshards")
        operands = [f"{name}[{lo}:{hi}]" if self.graph.nodes[nid].shape == space else name
                    for nid, name in zip(loads, operands)]
        stores = [f"{name}[{lo}:{hi}]" for name in stores]
        return [f"{hi} - {lo}"] + sizes[1:], operands, stores


# The step and its region functions: numpy's error model, as in the kernels inlined into
# them (a float division by zero gives inf or NaN, which the step's checks report). No C
# callback wrapper (for passing a jitted function as a first-class value), which nothing
# uses: for a step taking hundreds of arrays it is a large function of its own (a step of 80
# kernel calls on 240 arrays compiled in 2.6 s without it, 4.0 s with it).
STEP_DECORATOR = "@njit(cache=True, nogil=True, error_model='numpy', no_cfunc_wrapper=True)"
# Only the explicit prange loops of the regions run in parallel: Numba's other parallel
# transformations (array expressions, setitem, reductions) would add a fork and join each.
STEP_DECORATOR_PARALLEL = (
    "@njit(cache=True, nogil=True, error_model='numpy', no_cfunc_wrapper=True, "
    "parallel={'prange': True, "
    "'setitem': False, 'numpy': False, 'reduction': False, 'comprehension': False, "
    "'stencil': False, 'fusion': False, 'inplace_binop': False})")


# CPython compiles a call with more than 30 arguments (its STACK_USE_GUIDELINE) as
# f(*tuple), which Numba cannot inline ("Calling a closure with *args is unsupported"): a
# kernel with more operands takes them packed in tuples of at most this many.
MAX_CALL_ARGS = 30


def non_literal(size: str) -> str:
    """A size argument as the step passes it to a kernel. Numba compiles a jitted function
    that jitted code calls with a constant once per value of the constant (the kernel shared
    by two parameters of shapes (64, 128) and (128, 128) compiled twice): a fixed size goes
    as an `np.int64`, typed as any other int64."""
    return f"np.int64({size})" if size.isdigit() else size


def pack_arguments(names: list[str]) -> list[list[str]] | None:
    """`names` split into tuples of at most MAX_CALL_ARGS, or None if a plain call fits."""
    if len(names) <= MAX_CALL_ARGS:
        return None
    return [names[k:k + MAX_CALL_ARGS] for k in range(0, len(names), MAX_CALL_ARGS)]


def loop_kernel_source(graph: Graph, group: Group, in_place: dict[int, int] | None = None
                       ) -> tuple[str, list[int]]:
    """Source of a fused loop kernel and the nodes it loads, in argument order.

    `in_place` maps stores to the loaded array they overwrite at the same index: such an
    array is passed once and written through the same name, so LLVM vectorises the loop
    (two names for one array fail its run-time overlap check and it falls back to scalar
    code: an in-place Adam update of 16K floats took 27 us instead of 3 us).
    """
    names = loop_names(graph, group, in_place or {})
    root, reduce_root, loads = names.root, names.reduce_root, names.loads
    space = graph.nodes[root.inputs[0]].shape if reduce_root else root.shape
    rank = len(space)
    body = loop_body(graph, names, {nid: graph.nodes[nid].shape for nid in loads}, space)

    sizes = [f"n{a}" for a in range(rank)]
    params = sizes + [names.arrays[n] for n in loads] + \
        [names.stores[n] for n in names.own_stores]
    packs = pack_arguments(params)
    if packs is None:
        lines = [KERNEL_DECORATOR, f"def kernel({', '.join(params)}):"]
    else:
        lines = [KERNEL_DECORATOR, f"def kernel({', '.join(f'p{k}' for k in range(len(packs)))}):"]
        lines += [f"    {', '.join(pack)}, = p{k}" for k, pack in enumerate(packs)]
    if not reduce_root:
        lines += nest(rank, range(rank), body, 1)
    else:
        lines += reduction_loops(root.op, root.dtype, list(root.attrs["axes"]), rank, body,
                                 names.operand(root.inputs[0]), names.stores[root.id],
                                 depth=1,
                                 keepdims=root.attrs["keepdims"])
    header = [f"# graphc kernel: {group.kind} of {len(group.nodes)} nodes "
              f"({', '.join(graph.nodes[n].op for n in group.nodes)})",
              f"# scalar library {kernel_library_version()}"]
    return "\n".join(header) + "\n" + KERNEL_PRELUDE + "\n\n" + "\n".join(lines) + "\n", loads


def index_kernel_source(node: Node, graph: Graph) -> str:
    """Gather and scatter-add kernels (take, take_grad, take_along_axis(_grad)) and running
    sums (cumsum) for one rank combination. An index outside its range (index_range_lines)
    sets status[0] = 2 (an exception would be lost in a parallel region) and the step returns
    before its updates.

    Both loop over the gathered shape `x.shape[:axis] + idx.shape + x.shape[axis + 1:]`
    (take's output, take_grad's incoming gradient) and differ only in the last line.
    cumsum and take_along_axis(_grad) get the loop nests of loops.axis_kernel_body.
    """
    axis = node.attrs["axis"]
    header = f"# graphc kernel: {node.op} along axis {axis}\n"
    if node.op in AXIS_KERNEL_OPERANDS:
        params = ", ".join(AXIS_KERNEL_OPERANDS[node.op] + ("out", "status"))
        body = axis_kernel_body(node.op, axis, len(node.shape), "status[0] = 2; return")
        lines = [KERNEL_DECORATOR, f"def kernel({params}):"] + ["    " + b for b in body]
        return header + KERNEL_PRELUDE + "\n\n" + "\n".join(lines) + "\n"
    idx = graph.nodes[node.inputs[1]]
    table = graph.nodes[node.inputs[0] if node.op == "take" else node.inputs[2]]
    outer = [f"p{a}" for a in range(axis)]
    inner = [f"j{a}" for a in range(len(idx.shape))]
    rest = [f"q{a}" for a in range(len(table.shape) - axis - 1)]
    gathered = ", ".join(outer + inner + rest) or "0"
    scattered = ", ".join(outer + ["t"] + rest)
    if node.op == "take":
        params, driver = "x, idx, out, status", "out"
        pre_lines = [f"n = x.shape[{axis}]"]
        last = f"out[{gathered}] = x[{scattered}]"
    else:
        params, driver = "g, idx, out, status", "g"
        pre_lines = [f"n = out.shape[{axis}]", "out[...] = 0"]
        last = f"out[{scattered}] += g[{gathered}]"
    loops = [(v, f"{driver}.shape[{k}]") for k, v in enumerate(outer + inner + rest)]
    body = [f"t = idx[{', '.join(inner) if inner else '0'}]",
            *index_range_lines(node.attrs["wrap"], ["status[0] = 2", "return"]), last]
    lines = [KERNEL_DECORATOR, f"def kernel({params}):"] + ["    " + p for p in pre_lines]
    depth = 1
    for var, bound in loops:
        lines.append("    " * depth + f"for {var} in range({bound}):")
        depth += 1
    lines += ["    " * depth + b for b in body]
    return header + KERNEL_PRELUDE + "\n\n" + "\n".join(lines) + "\n"


def kernel_file_name(kernel: Kernel) -> str:
    return os.path.basename(kernel.path)
