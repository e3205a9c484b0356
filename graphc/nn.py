"""Layers: functions that create their parameters in the input's graph."""

from __future__ import annotations

import numpy as np

from graphc.errors import GraphError, user_location
from graphc.ir import Value
from graphc.ops import add, matmul


def linear(x: Value, units: int, name: str | None = None, bias: bool = True,
           init: str = "glorot") -> Value:
    """`x @ w + b` with parameters `name.w` (in_features, units) and `name.b` (units,).

    `init` is "glorot" (uniform, for tanh/sigmoid/linear outputs) or "he" (normal, for ReLU),
    drawn from the graph's seeded generator; the bias starts at zero.
    """
    fan_in = x.shape[-1]
    if fan_in is None:
        raise GraphError(f"linear: the last axis of {x.shape} must have a fixed size\n"
                         f"  at {user_location()}")
    graph = x.graph
    prefix = name if name is not None else graph.fresh_name("linear")
    if init == "glorot":
        limit = np.sqrt(6.0 / (fan_in + units))
        w0 = graph.rng.uniform(-limit, limit, size=(fan_in, units))
    elif init == "he":
        w0 = graph.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, units))
    else:
        raise GraphError(f"linear: init must be 'glorot' or 'he', got {init!r}\n"
                         f"  at {user_location()}")
    w = graph.param(f"{prefix}.w", w0)
    out = matmul(x, w)
    if bias:
        out = add(out, graph.param(f"{prefix}.b", np.zeros(units)))
    return out
