"""What the code generators of every target share: scalar expressions of fused ops, typed
literals, the record of a generated kernel, and digests of the library code kernels call."""

from __future__ import annotations

import functools
import hashlib
import importlib
from dataclasses import dataclass, field

import numpy as np

from graphc.errors import GraphError, short_location
from graphc.ir import Graph, Node
from graphc.ops import OPS
from graphc.passes.fusion import BROADCASTS, Group

MATH = ("exp", "expm1", "log", "log1p", "sin", "cos", "tanh", "sigmoid", "sqrt", "erf", "pow")
CTOR = {"float32": "np.float32", "float64": "np.float64", "int8": "np.int8",
        "int16": "np.int16", "int32": "np.int32", "int64": "np.int64", "uint8": "np.uint8",
        "uint16": "np.uint16", "uint32": "np.uint32", "uint64": "np.uint64",
        "bool": "np.bool_"}


#: The reductions the code generators implement (a "reduce" op of another name is refused).
REDUCTIONS = ("sum", "max", "min")


def check_reduction(op: str, target: str) -> None:
    """GraphError unless the code generators of `target` know the reduction `op`."""
    if op not in REDUCTIONS:
        raise GraphError(f"no {target} code for the reduction {op!r}: the code generators "
                         f"implement {', '.join(REDUCTIONS)}; evaluate this graph with "
                         f"gc.evaluate, or express {op!r} with those")


def gradients_to_check(graph: Graph, groups: list[Group]) -> list[int]:
    """The values a step checks for NaN and Inf before its first parameter write: the
    computed floats the update groups (phase 3) read and no update group writes (those are
    computed from checked ones, after the check), in order, once each."""
    written = {nid for g in groups if g.phase == 3 for nid in g.stores}
    checked: list[int] = []
    for group in groups:
        if group.phase != 3:
            continue
        for nid in group.loads:
            node = graph.nodes[nid]
            if node.op in ("input", "param", "state", "const") or nid in written \
                    or node.dtype not in ("float32", "float64") or nid in checked:
                continue
            checked.append(nid)
    return checked


def literal(value: np.ndarray, dtype: str) -> str:
    """A scalar constant as typed source (`np.float32(0.5)`): an untyped Python float would
    turn float32 arithmetic into float64."""
    v = value.reshape(()).item()
    if dtype == "bool":
        return "True" if v else "False"
    if isinstance(v, float):
        if np.isnan(v):
            text = "np.nan"
        elif np.isinf(v):
            text = "np.inf" if v > 0 else "-np.inf"
        else:
            text = repr(v)
    else:
        text = repr(int(v))
    return f"{CTOR[dtype]}({text})"


def scalar_expr(node: Node, operands: list[str], graph: Graph, flat: str = "0") -> str:
    """The scalar expression of an elementwise node over operand expressions."""
    if node.op in BROADCASTS:
        return operands[0]
    op = OPS[node.op]
    template = op.scalar or ""
    source_dtype = graph.nodes[node.inputs[0]].dtype if node.inputs else node.dtype
    suffix = "_f64" if source_dtype == "float64" else "_f32"
    for name in MATH:
        template = template.replace(f"_{name}(", f"{name}{suffix}(")
    if node.op == "pow":
        template = f"pow{suffix}({{0}}, {{1}})"
    attrs = {k: v for k, v in node.attrs.items() if k != "dtype"}
    return template.format(*operands, T=CTOR[node.dtype], _flat=flat, **attrs)


@dataclass(repr=False)
class Kernel:
    """One generated kernel: its source, the file it lives in, and what it computes.
    Its repr is one line; `source` is the generated code."""

    group: Group
    name: str
    source: str
    module: str = ""
    path: str = ""
    nodes: list[int] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        shown = [short_location(w) for w in self.lines[:2]]
        where = ", ".join(shown) + (f" +{len(self.lines) - 2}" if len(self.lines) > 2 else "")
        return (f"<{type(self).__name__} {self.name}: {self.group.kind} of {len(self.nodes)} "
                f"node(s) from {where or '?'}; .source is its code>")


@functools.cache
def module_digest(module: str) -> str:
    """sha256 (16 hex digits) of a library module's source file: Numba's cache of a kernel
    does not notice a change in the functions it calls, so generated files name them.
    Read once per process (the module is imported once too)."""
    with open(importlib.import_module(module).__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def kernel_library_version() -> str:
    """Hash of the hand-written scalar kernels generated loops call."""
    digest = hashlib.sha256()
    for name in ("fastmath", "scalar", "rng"):
        module = f"graphc.kernels.cpu.{name}"
        digest.update(module_digest(module).encode())
    return digest.hexdigest()[:16]
