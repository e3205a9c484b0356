"""Training / inference views of one graph.

`mode_select(train, infer)` stands for `train` in the training view and `infer` in the
inference view. Layers whose behaviour differs (dropout, batch norm) build both branches and
join them with it; `gc.compile(..., training=...)` and `gc.evaluate(..., training=...)`
resolve every mode_select to one operand before anything runs (graphc.passes.mode), so the
other branch is never computed. Its gradient is `(mode_select(g, 0), mode_select(0, g))`:
after resolution the dead branch receives a structural zero, which the resolution pass
folds away.
"""

from __future__ import annotations

import numpy as np

from graphc.errors import GraphError
from graphc.ir import Node, Value, format_shape
from graphc.ops.registry import InferError, defop, make


def _select_infer(nodes: list[Node]) -> tuple:
    a, b = nodes
    if a.shape != b.shape or a.dtype != b.dtype:
        raise InferError(f"the training and inference branches differ: "
                         f"{format_shape(a.shape)} {a.dtype} vs {format_shape(b.shape)} "
                         f"{b.dtype}")
    return a.shape, a.dtype


def _select_ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    raise GraphError("internal: mode_select reached the interpreter unresolved; evaluate "
                     "through gc.evaluate(..., training=...)")


def _select_vjp(g: Value, out: Value, x: list[Value], needs: tuple) -> tuple:
    from graphc.ops.views import zeros_like

    zero = zeros_like(g)
    return (mode_select(g, zero) if needs[0] else None,
            mode_select(zero, g) if needs[1] else None)


defop("mode_select", "mode", _select_infer, _select_ref, vjp=_select_vjp, arity=2)


def mode_select(train: Value, infer: Value) -> Value:
    """`train` when the graph runs in training mode, `infer` in inference mode."""
    return make("mode_select", [train, infer])


__all__ = ["mode_select"]
