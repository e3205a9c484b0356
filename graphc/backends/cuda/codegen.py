"""CUDA code generation: the CPU target's fusion groups and memory plan, emitted as
`numba.cuda` kernels (graphc/backends/cpu/codegen.py is the njit twin; both share the groups, the
memory plan, the scalar templates of graphc/ops and the kernel-file cache).

Data layout. Every device array is a flat, C-contiguous 1-D buffer: a parameter, a feed,
a pool slot of the memory plan. A value is (buffer, offset, shape, strides), so views
(transpose, slice, expand_dims, squeeze, reshape of a contiguous value) cost nothing:
kernels read their operands through an offset and per-axis strides, computed per feed
shape by the runtime (graphc/backends/cuda/runtime.py). Every kernel therefore has a signature
known here (int64 scalars and 1-D arrays), which lets the runtime compile it eagerly and
the tests compile it to PTX without a GPU.

Groups:
  loop     one grid-stride kernel per group, from the same scalar templates as the CPU
           (`exp_f32` & co. come from kernels/cuda/scalar.py). A group ending in a
           reduction gets a block-per-output kernel with a fixed-order shared-memory tree
           and a thread-per-output kernel for short rows (kernels/cuda/reduce.py).
  matmul   the tiled shared-memory kernel of kernels/cuda/linalg.py, operands by strides.
  view     no kernel; a reshape of a strided value is copied (the CPU's ascontiguousarray).
  index    take / take_grad / concat / slice_grad / cumsum / take_along_axis(_grad):
           kernels/cuda/index.py.
  call     convolution and pooling (and their gradients): kernels/cuda/conv.py.
  shape    dim sizes, computed on the host per feed shape.

The emitter produces kernel files (through graphc/codegen/cache.py) and a list of
instructions, which the runtime turns into launches once per feed shape.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphc.codegen.cache import CacheStats, write_module
from graphc.codegen.common import (
    Kernel,
    check_reduction,
    gradients_to_check,
    literal,
    scalar_expr,
)
from graphc.errors import GraphError
from graphc.ir import Graph, Node
from graphc.kernels.cuda import conv as conv_kernels
from graphc.kernels.cuda.common import (
    CTOR,
    DECORATOR,
    PRELUDE,
    Param,
    header,
    signature,
    strided,
    unravel,
)
from graphc.kernels.cuda.index import (
    copy_source,
    cumsum_source,
    fill_zero_source,
    finite_check_source,
    take_along_grad_source,
    take_along_source,
    take_grad_source,
    take_source,
)
from graphc.kernels.cuda.linalg import matmul_source
from graphc.kernels.cuda.reduce import reduction_source
from graphc.ops import OPS
from graphc.passes.fusion import Group, data_inputs, describe_group
from graphc.passes.memory import MemoryPlan

SIMULATOR_HINT = ("to run CUDA code without a GPU, use Numba's CUDA simulator: set "
                  "NUMBA_ENABLE_CUDASIM=1 in the environment before Python imports numba "
                  "(e.g. `NUMBA_ENABLE_CUDASIM=1 python train.py`); it runs kernels as "
                  "Python, for tests on tiny sizes only")


class CudaUnavailableError(GraphError):
    """`target="cuda"` was asked for but cannot run here (no numba-cuda, driver or GPU)."""


def simulator_enabled() -> bool:
    """Whether Numba runs CUDA kernels in its simulator (NUMBA_ENABLE_CUDASIM=1 at import)."""
    from numba.core import config

    return bool(config.ENABLE_CUDASIM)


def numba_cuda_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("numba_cuda") is not None


def require_cuda() -> None:
    """Return if CUDA kernels can run (a GPU, or the simulator); else raise
    CudaUnavailableError saying why and how to use the simulator instead."""
    if simulator_enabled():
        try:
            import numba.cuda  # noqa: F401
        except ImportError as err:
            raise CudaUnavailableError(
                f"target='cuda': the CUDA simulator is enabled but numba.cuda cannot be "
                f"imported ({err}); install it with pip install 'graphc[cuda]'") from None
        return
    env = os.environ.get("NUMBA_ENABLE_CUDASIM", "")
    late = (" (NUMBA_ENABLE_CUDASIM is set now, but numba was imported before it was set, "
            "so the simulator is off: set it before the first import of numba or graphc)"
            if env not in ("", "0") else "")
    if not numba_cuda_installed():
        raise CudaUnavailableError(
            "target='cuda' needs the numba-cuda package, which is not installed: "
            "pip install 'graphc[cuda]' (or pip install numba-cuda; add the [cu12] extra, "
            f"numba-cuda[cu12], for the CUDA toolkit libraries). Or {SIMULATOR_HINT}{late}.")
    try:
        from numba import cuda
    except ImportError as err:
        raise CudaUnavailableError(f"target='cuda': numba.cuda cannot be imported ({err}). "
                                   f"Or {SIMULATOR_HINT}{late}.") from None
    try:
        available = cuda.is_available()
    except Exception:  # a broken driver install raises from the probe itself
        available = False
    if available:
        return
    reason = None
    try:
        reason = cuda.cuda_error()
    except Exception as err:
        reason = str(err)
    if reason:
        text = " ".join(str(reason).split())
        why = ("no CUDA driver was found (the NVIDIA driver library libcuda is not "
               "installed or not on the library path)" if "driver library" in text
               else f"the CUDA driver could not be initialised: {text}")
    else:
        why = "the CUDA driver found no usable GPU"
    raise CudaUnavailableError(f"target='cuda' cannot run here: {why}. Compile with "
                               f"target='cpu', or {SIMULATOR_HINT}{late}.")


# -- launch configuration ------------------------------------------------------------------

@dataclass
class LaunchConfig:
    """Block sizes and tiles. `reduce_threads` and `tile` are baked into kernel sources;
    the rest is read when launches are prepared. Results depend on `reduce_threads`,
    `tile` and `small_reduction` (summation order), never on `threads` or `max_blocks`."""

    threads: int = 256          # elementwise, row reductions, gathers, copies
    reduce_threads: int = 128   # block of a tree reduction (a power of two)
    tile: int = 16              # matmul tile (block tile x tile)
    max_blocks: int = 4096      # grid-stride loops cover the rest
    small_reduction: int = 32   # rows of at most this many elements: one thread per row


def default_config() -> LaunchConfig:
    """The GPU configuration, or a tiny one on the simulator (each simulated thread is a
    Python thread: few threads, few barriers)."""
    if simulator_enabled():
        return LaunchConfig(threads=4, reduce_threads=4, tile=4, max_blocks=2,
                            small_reduction=8)
    return LaunchConfig()


# -- kernels and instructions -------------------------------------------------------------

@dataclass(repr=False)
class CudaKernel(Kernel):
    """A generated CUDA kernel file: `functions` maps each kernel function in it to the
    signatures it is launched with."""

    functions: dict[str, list[str]] = field(default_factory=dict)
    params: dict[str, list[Param]] = field(default_factory=dict)

    def add(self, function: str, params: list[Param]) -> None:
        sig = signature(params)
        sigs = self.functions.setdefault(function, [])
        if sig not in sigs:
            sigs.append(sig)
        self.params.setdefault(function, params)


@dataclass
class LoadSpec:
    """How a loop kernel reads one operand: `dense` ones by the element's linear index
    (same shape as the iteration space, C-contiguous, offset 0); the others by offset and
    strides of the operand axes in `axes` (size-1 axes broadcast and take no stride)."""

    nid: int
    dense: bool
    axes: list[int]


@dataclass
class Loop:
    kernel: CudaKernel
    group: Group
    space: int                 # node whose (run-time) shape is the iteration space
    loads: list[LoadSpec]
    stores: list[int]
    reduce_axes: tuple | None  # None: elementwise


@dataclass
class Matmul:
    kernel: CudaKernel
    node: int
    copy: CudaKernel | None    # materialises a batch operand whose strides do not flatten


@dataclass
class View:
    node: int


@dataclass
class Materialize:
    """A reshape of a strided value: copy the source into a dense buffer first."""

    kernel: CudaKernel
    node: int


@dataclass
class Dim:
    node: int


@dataclass
class Index:
    kind: str                  # the index op: take, take_grad, concat, slice_grad, ...
    kernel: CudaKernel
    node: int
    fill: CudaKernel | None = None


@dataclass
class Call:
    """A library op with a hand-written kernel (convolution, pooling: kernels/cuda/conv.py)."""

    kernel: CudaKernel
    node: int


@dataclass
class PhaseSwitch:
    """Outputs are complete: copy them to the host and check the loss before updates."""


@dataclass
class Assign:
    """An update that could not be written in place: copy the value into the storage."""

    kernel: CudaKernel
    kind: str                  # param or state
    name: str
    node: int


@dataclass
class ScanLoop:
    """A scan: its body's scheduled graph, compiled into a CUDA function of its own when the
    step is built (`function`), run once per step from Python; `copies` the copy kernels that
    move carries, sequence rows and outputs, by (rank, dtype)."""

    group: Group
    node: int
    body: Graph
    copies: dict[tuple[int, str], CudaKernel]
    function: Any = None


@dataclass
class FiniteCheck:
    """Before the first update: every gradient the updates read is checked on the device,
    each check OR-ing into one flag the step reads once."""

    checks: list[tuple[CudaKernel, int]]   # (kernel, node) per checked array


Instruction = (Loop | Matmul | View | Materialize | Dim | Index | Call | PhaseSwitch | Assign
               | ScanLoop | FiniteCheck)


def _library_version() -> str:
    """Hash of the device scalar library generated kernels call (Numba's disk cache does
    not track callees, so a change to it must change every generated file)."""
    import graphc.kernels.cuda.scalar as sc

    digest = hashlib.sha256()
    with open(sc.__file__, "rb") as f:
        digest.update(f.read())
    return digest.hexdigest()[:16]


def _identity(op: str, dtype: str) -> str:
    check_reduction(op, "CUDA")
    if op == "sum":
        return f"{CTOR[dtype]}(0)"
    if dtype in ("float32", "float64"):
        return f"{CTOR[dtype]}(-math.inf)" if op == "max" else f"{CTOR[dtype]}(math.inf)"
    if dtype == "bool":
        return "False" if op == "max" else "True"
    info = np.iinfo(dtype)
    return f"{CTOR[dtype]}({info.min if op == 'max' else info.max})"


def _combine(op: str) -> str:
    check_reduction(op, "CUDA")
    if op == "sum":
        return "{a} + {b}"
    cmp = ">" if op == "max" else "<"
    return "{b} if ({b} " + cmp + " {a} or {b} != {b}) else {a}"


class CudaStepWriter:
    """Builds the CUDA kernels of a program and the instructions that run them."""

    def __init__(self, graph: Graph, groups: list[Group], memory: MemoryPlan,
                 stats: CacheStats | None = None, config: LaunchConfig | None = None) -> None:
        self.graph = graph
        self.groups = groups
        self.memory = memory
        self.stats = stats
        self.config = config or default_config()
        self.kernels: list[CudaKernel] = []
        self.instructions: list[Instruction] = []
        self.dense: dict[int, bool] = {}
        self.listing: list[str] = []
        self._shared: dict[str, CudaKernel] = {}
        self.source = ""
        self._library = _library_version()

    # -- whole program ------------------------------------------------------------------
    def write(self) -> str:
        """Generate everything; returns the launch listing (the step's `source`)."""
        # the outputs are complete before the first gradient or update group (an update
        # group may compute its own gradient: then no gradient group comes first)
        switch = next((k for k, g in enumerate(self.groups) if g.phase >= 2),
                      len(self.groups))
        updates = next((k for k, g in enumerate(self.groups) if g.phase == 3), None)
        for k, group in enumerate(self.groups):
            if k == switch:
                self.phase_switch()
            if k == updates:
                self.finite_check()
            self.emit_group(group)
        if switch == len(self.groups):
            self.phase_switch()
        for name, nid in self.graph.updates:
            if self.memory.inplace.get(nid) != name:
                kind = "param" if name in self.graph.param_values else "state"
                node = self.graph.nodes[nid]
                kernel = self.helper("copy", *copy_source(max(len(node.shape), 1),
                                                          node.dtype))
                self.instructions.append(Assign(kernel, kind, name, nid))
                self.listing.append(f"{kind} {name} <- {self.label(nid)} ({kernel.name})")
        for kernel in self.kernels:
            kernel.module, kernel.path = write_module("graphc_cuda", kernel.source, self.stats)
        outs = ", ".join(self.label(n) for n in self.graph.outputs)
        lines = ["# graphc CUDA step: what runs, in order, for each call (kernels in "
                 "step.kernels).", "# Every array lives on the device; feeds are copied in, "
                 f"outputs ({outs}) copied out.", *self.listing]
        self.source = "\n".join(lines) + "\n"
        return self.source

    def label(self, nid: int) -> str:
        return self.graph.nodes[nid].label

    def phase_switch(self) -> None:
        self.instructions.append(PhaseSwitch())
        self.listing.append("# outputs complete: copied to the host; a non-finite loss stops "
                            "here, before any update")

    def finite_check(self) -> None:
        """Check the gradients the updates read (gradients_to_check), as the CPU target
        does."""
        checked = gradients_to_check(self.graph, self.groups)
        if not checked:
            return
        checks = []
        for nid in checked:
            node = self.graph.nodes[nid]
            kernel = self.helper("finite check", *finite_check_source(
                max(len(node.shape), 1), node.dtype))
            checks.append((kernel, nid))
        self.instructions.append(FiniteCheck(checks))
        self.listing.append(f"# finite check of {len(checked)} gradient(s) "
                            f"({', '.join(self.label(n) for n in checked)}) into one device "
                            "flag, read before any update")

    def is_dense(self, nid: int) -> bool:
        if nid not in self.dense:
            node = self.graph.nodes[nid]
            if node.op == "input":
                self.dense[nid] = not node.name.startswith("@")  # hypers share a buffer
            elif node.op in ("param", "state", "const"):
                self.dense[nid] = True
            else:
                raise GraphError(f"internal: node {node.label} ({node.op}) read before it "
                                 "was computed")
        return self.dense[nid]

    # -- kernels ------------------------------------------------------------------------
    def new_kernel(self, group: Group, title: str, body: str) -> CudaKernel:
        source = header(title, self._library) + PRELUDE + "\n\n" + body
        kernel = CudaKernel(group, f"k{len(self.kernels)}", source, nodes=list(group.nodes))
        kernel.lines = sorted({self.graph.nodes[n].where for n in group.nodes})
        self.kernels.append(kernel)
        return kernel

    def helper(self, title: str, body: str, params: list[Param],
               node: int | None = None) -> CudaKernel:
        """A template kernel (copy, fill, matmul...): one file per distinct source."""
        kernel = self._shared.get(body)
        if kernel is None:
            group = Group("index", [node] if node is not None else [], 0)
            kernel = self.new_kernel(group, title, body)
            self._shared[body] = kernel
        kernel.add("kernel", params)
        return kernel

    # -- groups -------------------------------------------------------------------------
    def emit_group(self, group: Group) -> None:
        node = self.graph.nodes[group.root]
        self.listing.append(f"# {describe_group(self.graph, group)}")
        if group.kind == "loop":
            self.emit_loop(group)
        elif group.kind == "matmul":
            self.emit_matmul(node)
        elif group.kind == "view":
            self.emit_view(node)
        elif group.kind == "shape":
            self.instructions.append(Dim(node.id))
            self.dense[node.id] = True
            self.listing.append(f"{node.label} = size (host)")
        elif group.kind == "index":
            self.emit_index(node)
        elif group.kind == "call":
            self.emit_call(node)
        elif group.kind == "scan":
            self.emit_scan(group)
        else:
            raise GraphError(f"no CUDA code for {group.kind} group ({node.op})")

    def emit_scan(self, group: Group) -> None:
        from graphc.passes import SCHEDULE_CUDA, schedule_subgraph

        node = self.graph.nodes[group.nodes[0]]
        body = schedule_subgraph(node.attrs["body"].graph, SCHEDULE_CUDA)
        copies = {}
        for n in body.nodes:
            if n.op == "input" or n.id in body.outputs:
                rank = max(len(n.shape), 1)
                copies[(rank, n.dtype)] = self.helper("copy", *copy_source(rank, n.dtype))
        for i in node.inputs:
            self.is_dense(i)
        self.instructions.append(ScanLoop(group, node.id, body, copies))
        for nid in group.stores:
            self.dense[nid] = True
        self.listing.append(f"scan over {self.label(node.inputs[node.attrs['body'].n_carry])}"
                            f": a body of {len(body.groups)} groups launched once per step")

    def emit_view(self, node: Node) -> None:
        src = data_inputs(node)[0]
        dense = self.is_dense(src)
        if node.op in ("reshape", "reshape_like") and not dense:
            srcn = self.graph.nodes[src]
            kernel = self.helper("copy", *copy_source(max(len(srcn.shape), 1), srcn.dtype),
                                 node=node.id)
            self.instructions.append(Materialize(kernel, node.id))
            self.dense[node.id] = True
            self.listing.append(f"{node.label} = contiguous copy of {self.label(src)} "
                                f"({kernel.name}), reshaped")
            return
        self.instructions.append(View(node.id))
        self.dense[node.id] = dense and node.op in ("reshape", "reshape_like", "expand_dims",
                                                    "squeeze")
        self.listing.append(f"{node.label} = {node.op} view of {self.label(src)}")

    def emit_matmul(self, node: Node) -> None:
        kernel = self.helper("matmul", *matmul_source(self.config.tile, node.dtype),
                             node=node.id)
        kernel.nodes = sorted(set(kernel.nodes) | {node.id})
        copy = None
        if len(node.shape) > 2:
            copy = self.helper("copy", *copy_source(len(node.shape), node.dtype))
        for i in node.inputs:
            self.is_dense(i)
        self.instructions.append(Matmul(kernel, node.id, copy))
        self.dense[node.id] = True
        a, b = (self.label(i) for i in node.inputs)
        self.listing.append(f"{node.label} = {a} @ {b} ({kernel.name}, tiled)")

    def emit_call(self, node: Node) -> None:
        if not conv_kernels.supported(node.op):
            raise GraphError(f"{node.op} ({node.label}, built at {node.where}) has no CUDA "
                             "kernel yet; compile this graph with target='cpu'")
        kernel = self.helper(node.op, *conv_kernels.call_source(node.op, node.dtype),
                             node=node.id)
        for i in data_inputs(node):
            self.is_dense(i)
        self.instructions.append(Call(kernel, node.id))
        self.dense[node.id] = True
        operands = ", ".join(self.label(i) for i in data_inputs(node))
        self.listing.append(f"{node.label} = {node.op}({operands}) ({kernel.name})")

    def emit_index(self, node: Node) -> None:
        shape_rank = max(len(node.shape), 1)
        if node.op == "concat":
            kernel = self.helper("copy", *copy_source(shape_rank, node.dtype), node=node.id)
            self.instructions.append(Index("concat", kernel, node.id))
        elif node.op == "slice_grad":
            kernel = self.helper("copy", *copy_source(shape_rank, node.dtype), node=node.id)
            fill = self.helper("fill", *fill_zero_source(node.dtype))
            self.instructions.append(Index("slice_grad", kernel, node.id, fill))
        elif node.op == "take":
            x, idx = (self.graph.nodes[i] for i in node.inputs)
            kernel = self.helper("take", *take_source(len(x.shape), node.attrs["axis"],
                                                      len(idx.shape), x.dtype, idx.dtype,
                                                      node.attrs["wrap"]),
                                 node=node.id)
            self.instructions.append(Index("take", kernel, node.id))
        elif node.op == "take_grad":
            g, idx, ref = (self.graph.nodes[i] for i in node.inputs)
            kernel = self.helper("take_grad", *take_grad_source(
                len(ref.shape), node.attrs["axis"], len(idx.shape), g.dtype, idx.dtype,
                node.attrs["wrap"]),
                node=node.id)
            self.instructions.append(Index("take_grad", kernel, node.id))
        elif node.op == "cumsum":
            kernel = self.helper("cumsum", *cumsum_source(len(node.shape), node.attrs["axis"],
                                                          node.dtype), node=node.id)
            self.instructions.append(Index("cumsum", kernel, node.id))
        elif node.op in ("take_along_axis", "take_along_axis_grad"):
            source = (take_along_source if node.op == "take_along_axis"
                      else take_along_grad_source)
            operand, idx = (self.graph.nodes[i] for i in node.inputs[:2])
            kernel = self.helper(node.op, *source(len(node.shape), node.attrs["axis"],
                                                  operand.dtype, idx.dtype), node=node.id)
            self.instructions.append(Index(node.op, kernel, node.id))
        else:
            raise GraphError(f"no CUDA code for index op {node.op}")
        for i in data_inputs(node):
            self.is_dense(i)
        self.dense[node.id] = True
        operands = ", ".join(self.label(i) for i in data_inputs(node))
        self.listing.append(f"{node.label} = {node.op}({operands}) ({kernel.name})")

    def emit_loop(self, group: Group) -> None:
        for nid in group.loads:
            self.is_dense(nid)
        body, spec = loop_kernel_source(self.graph, group, self.dense, self.config)
        root = self.graph.nodes[group.root]
        title = (f"{group.kind} of {len(group.nodes)} nodes "
                 f"({', '.join(self.graph.nodes[n].op for n in group.nodes)})")
        kernel = self.new_kernel(group, title, body)
        for function in (("kernel", "kernel_rows") if spec.reduce_axes is not None
                         else ("kernel",)):
            kernel.add(function, spec.params)
        for nid in group.stores:
            self.dense[nid] = True
        self.instructions.append(Loop(kernel, group, spec.space, spec.loads, list(group.stores),
                                      spec.reduce_axes))
        loads = " ".join(self.label(s.nid) for s in spec.loads) or "-"
        stores = " ".join(self.label(n) + (" (in place)" if n in self.memory.inplace else "")
                          for n in group.stores)
        what = "reduce" if spec.reduce_axes is not None else "elementwise"
        self.listing.append(f"{stores} = {what} {kernel.name}({loads}) over the shape of "
                            f"{self.label(spec.space)}"
                            + ("" if root.id == spec.space else f", {root.op} root"))


@dataclass
class LoopKernelSpec:
    space: int
    loads: list[LoadSpec]
    params: list[Param]
    reduce_axes: tuple | None


def loop_kernel_source(graph: Graph, group: Group, dense: dict[int, bool],
                       config: LaunchConfig) -> tuple[str, LoopKernelSpec]:
    """Source of a fused loop kernel (two kernels for a reduction) and how to call it."""
    root = graph.nodes[group.root]
    reduce_root = OPS[root.op].kind == "reduce"
    body_ids = group.nodes[:-1] if reduce_root else group.nodes
    space_node = root.inputs[0] if reduce_root else root.id
    space = graph.nodes[space_node].shape
    rank = len(space)
    sizes = [f"n{a}" for a in range(rank)]
    names = [f"i{a}" for a in range(rank)]
    loads: list[int] = []
    literals: dict[int, str] = {}
    for nid in group.loads:
        node = graph.nodes[nid]
        if node.op == "const" and node.attrs["value"].size == 1 and node.shape == ():
            literals[nid] = literal(node.attrs["value"], node.dtype)
        else:
            loads.append(nid)
    local = {nid: f"t{k}" for k, nid in enumerate(loads + body_ids)}
    store_names = {nid: f"y{k}" for k, nid in enumerate(group.stores)}
    params: list[Param] = [("int", s) for s in sizes]
    specs: list[LoadSpec] = []
    body: list[str] = []
    needs_lin = False
    for k, nid in enumerate(loads):
        node = graph.nodes[nid]
        params.append((node.dtype, f"x{k}"))
        if dense.get(nid, False) and node.shape == space:
            specs.append(LoadSpec(nid, True, []))
            body.append(f"{local[nid]} = x{k}[lin]")
            needs_lin = True
            continue
        offset = rank - len(node.shape)
        axes = [j for j, d in enumerate(node.shape) if d != 1]
        params.append(("int", f"o{k}"))
        params += [("int", f"s{k}_{j}") for j in axes]
        specs.append(LoadSpec(nid, False, axes))
        index = strided(f"o{k}", [names[offset + j] for j in axes], [f"s{k}_{j}" for j in axes])
        body.append(f"{local[nid]} = x{k}[{index}]")

    def operand(i: int) -> str:
        return literals.get(i, local.get(i, ""))

    for nid in body_ids:
        node = graph.nodes[nid]
        expr = scalar_expr(node, [operand(i) for i in data_inputs(node)], graph, "lin")
        needs_lin = needs_lin or "{_flat}" in (OPS[node.op].scalar or "")
        body.append(f"{local[nid]} = {expr}")
        if nid in store_names:
            body.append(f"{store_names[nid]}[lin] = {local[nid]}")
            needs_lin = True
    params += [(graph.nodes[n].dtype, y) for n, y in store_names.items()]
    signature_names = ", ".join(name for _, name in params)

    if not reduce_root:
        uses_index = any(not s.dense for s in specs)
        lines = [DECORATOR, f"def kernel({signature_names}):",
                 f"    total = {' * '.join(sizes) or '1'}",
                 "    for lin in range(cuda.grid(1), total, cuda.gridsize(1)):"]
        if uses_index:
            lines += unravel("lin", names, sizes, " " * 8)
        lines += ["        " + line for line in body]
        source = "\n".join(lines) + "\n"
        return source, LoopKernelSpec(space_node, specs, params, None)

    axes = tuple(root.attrs["axes"])
    kept = [a for a in range(rank) if a not in axes]
    if root.op == "sum":
        if root.dtype in ("float32", "float64"):
            acc_dtype = "float64" if not kept else root.dtype  # the CPU's float64 loss sum
        else:
            acc_dtype = "int64"
    else:
        acc_dtype = root.dtype
    source = reduction_source(params, sizes, kept, list(axes), body, operand(root.inputs[0]),
                              _identity(root.op, acc_dtype), acc_dtype, _combine(root.op),
                              store_names[root.id], config.reduce_threads, needs_lin)
    return source, LoopKernelSpec(space_node, specs, params, axes)
