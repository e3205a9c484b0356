"""Loop-nest source shared by the CPU code generators (codegen.py's kernels and
codegen_fused.py's sharded steps): indexing with broadcasting, nests, reductions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphc.codegen.common import CTOR, check_reduction, literal, scalar_expr
from graphc.ir import Graph, Node
from graphc.ops import OPS
from graphc.passes.fusion import Group, data_inputs

#: Numba fastmath flags of loop kernels: reassociation lets reductions vectorise; NaN and
#: Inf still propagate.
FASTMATH = "{'reassoc', 'nsz', 'contract'}"


def operand_index(shape: tuple, space: tuple) -> str:
    """Index of an operand of static `shape` inside iteration `space`, broadcasting."""
    if not shape:
        return "0"
    offset = len(space) - len(shape)
    parts = []
    for j, d in enumerate(shape):
        i = offset + j
        parts.append("0" if d == 1 and space[i] != 1 else f"i{i}")
    return ", ".join(parts)


def flat_index(rank: int) -> str:
    """The row-major flat index of the loop's element (i0, i1, ...) in the space (n0, ...)."""
    flat = "i0" if rank else "0"
    for a in range(1, rank):
        flat = f"({flat} * n{a} + i{a})"
    return flat


def nest(rank: int, axes, body: list[str], depth: int) -> list[str]:
    lines = []
    for level, a in enumerate(axes):
        lines.append("    " * (depth + level) + f"for i{a} in range(n{a}):")
    inner = depth + len(list(axes))
    lines += ["    " * inner + b for b in body]
    if rank == 0:
        return ["    " * depth + "i0 = 0"] + ["    " * depth + b for b in body]
    return lines


def identity(op: str, dtype: str, full: bool) -> str:
    check_reduction(op, "CPU")
    if op == "sum":
        if dtype in ("float32", "float64"):
            return "0.0" if full else f"{CTOR[dtype]}(0)"
        return "np.int64(0)"
    if dtype in ("float32", "float64"):
        return f"{CTOR[dtype]}(-np.inf)" if op == "max" else f"{CTOR[dtype]}(np.inf)"
    info = np.iinfo(dtype) if dtype != "bool" else None
    if info is None:
        return "False" if op == "max" else "True"
    return f"{CTOR[dtype]}({info.min if op == 'max' else info.max})"


def combine(op: str, acc: str, v: str) -> str:
    check_reduction(op, "CPU")
    if op == "sum":
        return f"{acc} + {v}"
    cmp = ">" if op == "max" else "<"
    return f"{v} if ({v} {cmp} {acc} or {v} != {v}) else {acc}"


def reduction_loops(op: str, dtype: str, axes: list[int], rank: int, body: list[str],
                    value: str, out: str, depth: int = 0, keepdims: bool = False) -> list[str]:
    """The loops of a reduction over loop axes `axes`, indented `depth` levels; the output
    `out` holds the kept axes (and, with `keepdims`, the reduced ones as size 1)."""
    kept = [a for a in range(rank) if a not in axes]
    if keepdims:
        out_index = ", ".join("0" if a in axes else f"i{a}" for a in range(rank)) or "0"
    else:
        out_index = ", ".join(f"i{a}" for a in kept) or "0"
    full = not kept
    init = identity(op, dtype, full)
    if list(axes) == list(range(len(kept), rank)) or rank == 0:
        # reduced axes are the trailing ones: accumulate in a register
        lines = []
        for level, a in enumerate(kept):
            lines.append("    " * (depth + level) + f"for i{a} in range(n{a}):")
        d = depth + len(kept)
        lines.append("    " * d + f"acc = {init}")
        for level, a in enumerate(axes):
            lines.append("    " * (d + level) + f"for i{a} in range(n{a}):")
        inner = d + len(axes)
        if rank == 0:
            lines.append("    " * inner + "i0 = 0")
        lines += ["    " * inner + b for b in body]
        lines.append("    " * inner + f"acc = {combine(op, 'acc', value)}")
        lines.append("    " * d + f"{out}[{out_index}] = acc")
        return lines
    init_body = [f"{out}[{out_index}] = {init}"]
    lines = nest(len(kept), kept, init_body, depth)
    inner = rank
    while inner > 0 and inner - 1 in axes:
        inner -= 1
    if inner < rank:
        # the innermost axes are reduced: accumulate them in a register, then into the
        # output (a store per element would chain every addition through memory)
        for level, a in enumerate(range(inner)):
            lines.append("    " * (depth + level) + f"for i{a} in range(n{a}):")
        d = depth + inner
        lines.append("    " * d + f"acc = {init}")
        for level, a in enumerate(range(inner, rank)):
            lines.append("    " * (d + level) + f"for i{a} in range(n{a}):")
        lines += ["    " * (d + rank - inner) + b for b in body]
        lines.append("    " * (d + rank - inner) + f"acc = {combine(op, 'acc', value)}")
        lines.append("    " * d + f"{out}[{out_index}] = "
                     f"{combine(op, f'{out}[{out_index}]', 'acc')}")
        return lines
    # the innermost axis is kept: accumulate in the output array, a vector of that axis
    lines += nest(rank, range(rank), body + [
        f"{out}[{out_index}] = {combine(op, f'{out}[{out_index}]', value)}"], depth)
    return lines


#: Index ops along one axis whose loop nests `axis_kernel_body` writes, and the names of
#: their value operands (the output is `out`).
AXIS_KERNEL_OPERANDS = {"cumsum": ("x",), "take_along_axis": ("x", "idx"),
                        "take_along_axis_grad": ("g", "idx")}


def index_range_lines(wrap: bool, error: list[str]) -> list[str]:
    """Lines checking the index `t` against the axis length `n`, running `error` outside
    [-n, n) with `wrap` (a negative `t` then counts from the end, as in numpy) or outside
    [0, n) without."""
    lines = ["if t < 0:", "    t += n"] if wrap else []
    return lines + ["if t < 0 or t >= n:"] + ["    " + e for e in error]


def axis_kernel_body(op: str, axis: int, rank: int, error: str) -> list[str]:
    """Loop nest of a running sum or a gather/scatter-add along `axis` over C-contiguous
    `rank`-D arrays named as in AXIS_KERNEL_OPERANDS and `out`; `error` is the statement an
    index out of range runs.

    cumsum                out[.., i, ..] = out[.., i - 1, ..] + x[.., i, ..] (numpy's order)
    take_along_axis       out[p] = x[p with axis -> idx[p]]
    take_along_axis_grad  out = 0; out[p with axis -> idx[p]] += g[p], p in C order
    """
    here = [f"i{k}" for k in range(rank)]
    at = ", ".join(here)
    picked = ", ".join("t" if k == axis else f"i{k}" for k in range(rank))
    if op == "cumsum":
        prev = ", ".join(f"i{k} - 1" if k == axis else f"i{k}" for k in range(rank))
        body = [f"if i{axis} == 0:", f"    out[{at}] = x[{at}]", "else:",
                f"    out[{at}] = out[{prev}] + x[{at}]"]
        return _loops("out", rank, body)
    wrap = [f"t = idx[{at}]", *index_range_lines(True, [error])]
    if op == "take_along_axis":
        return [f"n = x.shape[{axis}]"] + _loops("out", rank, wrap + [
            f"out[{at}] = x[{picked}]"])
    if op == "take_along_axis_grad":
        return [f"n = out.shape[{axis}]", "out[...] = 0"] + _loops("g", rank, wrap + [
            f"out[{picked}] += g[{at}]"])
    raise NotImplementedError(f"no CPU code for the index op {op!r}")


def _loops(driver: str, rank: int, body: list[str]) -> list[str]:
    lines = ["    " * k + f"for i{k} in range({driver}.shape[{k}]):" for k in range(rank)]
    return lines + ["    " * rank + b for b in body]


def is_literal(node: Node) -> bool:
    """A scalar constant, written into a loop's source instead of loaded."""
    return node.op == "const" and node.attrs["value"].size == 1 and node.shape == ()


@dataclass
class LoopNames:
    """The names in a fused loop's source: loaded arrays x0.., stored arrays y0.. (a store
    made in place writes through its load's name), scalars t0.., scalar constants inline.
    `body` are the group's nodes computed per element (a reduction root is not)."""

    root: Node
    reduce_root: bool
    body: list[int]
    loads: list[int]
    literals: dict[int, str]
    arrays: dict[int, str]
    own_stores: list[int]
    stores: dict[int, str]
    scalars: dict[int, str]

    def operand(self, nid: int) -> str:
        return self.literals.get(nid, self.scalars.get(nid, ""))


def loop_names(graph: Graph, group: Group, in_place: dict[int, int]) -> LoopNames:
    """Names for the loop kernel of `group` (`in_place`: store -> the load it overwrites)."""
    root = graph.nodes[group.root]
    reduce_root = OPS[root.op].kind == "reduce"
    body = group.nodes[:-1] if reduce_root else group.nodes
    loads: list[int] = []
    literals: dict[int, str] = {}
    for nid in group.loads:
        node = graph.nodes[nid]
        if is_literal(node):
            literals[nid] = literal(node.attrs["value"], node.dtype)
        else:
            loads.append(nid)
    arrays = {nid: f"x{k}" for k, nid in enumerate(loads)}
    own_stores = [nid for nid in group.stores if nid not in in_place]
    stores = {nid: f"y{k}" for k, nid in enumerate(own_stores)}
    stores.update({nid: arrays[load] for nid, load in in_place.items()})
    scalars = {nid: f"t{k}" for k, nid in enumerate(loads + body)}
    return LoopNames(root, reduce_root, body, loads, literals, arrays, own_stores, stores,
                     scalars)


def loop_body(graph: Graph, names: LoopNames, load_shapes: dict[int, tuple],
              space: tuple) -> list[str]:
    """The per-element statements: every load read at the loop's index (broadcast from its
    `load_shapes` entry), every node's scalar expression, and the stores."""
    lines = [f"{names.scalars[nid]} = {names.arrays[nid]}"
             f"[{operand_index(load_shapes[nid], space)}]" for nid in names.loads]
    full = f"[{operand_index(space, space)}]"
    for nid in names.body:
        node = graph.nodes[nid]
        expr = scalar_expr(node, [names.operand(i) for i in data_inputs(node)], graph,
                           flat_index(len(space)))
        lines.append(f"{names.scalars[nid]} = {expr}")
        if nid in names.stores:
            lines.append(f"{names.stores[nid]}{full} = {names.scalars[nid]}")
    return lines
