"""Common-subexpression elimination."""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc.ir import Graph
from graphc.passes.rewrite import Rewriter


def _hashable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


def eliminate_common_subexpressions(graph: Graph) -> Graph:
    """Merge nodes with the same op, operands, attributes and dtype (and equal constants).

    Invariant: every remaining node computes what each node merged into it computed.
    Leaves with identity (inputs, params, state) are never merged.
    """
    rw = Rewriter(graph)
    seen: dict[tuple, int] = {}
    for node in graph.nodes:
        if node.op in ("input", "param", "state"):
            rw.emit(node)
            continue
        key = (node.op, tuple(rw.new_id(i) for i in node.inputs), _hashable(node.attrs),
               node.dtype, node.shape)
        if key in seen:
            rw.alias(node.id, seen[key])
        else:
            seen[key] = rw.emit(node)
    return rw.finish()
