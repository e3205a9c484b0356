"""Recurrent layers built on `gc.scan`: `gru` and `lstm` (exported as gc.nn.gru, gc.nn.lstm).

Gate conventions are PyTorch's (torch.nn.GRU / torch.nn.LSTM, one layer, one direction):

    GRU   r = sigmoid(x W_ir + b_ir + h W_hr + b_hr)
          z = sigmoid(x W_iz + b_iz + h W_hz + b_hz)
          n = tanh(x W_in + b_in + r * (h W_hn + b_hn))
          h' = (1 - z) * n + z * h
    LSTM  i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (x W_i* + b_i* + h W_h* + b_h*)
          c' = f * c + i * g;   h' = o * tanh(c')

Parameters `name.w_ih` (features, G*hidden), `name.w_hh` (hidden, G*hidden), `name.b_ih`,
`name.b_hh` (G*hidden,), gates side by side in the order above (GRU r|z|n, LSTM i|f|g|o):
PyTorch's weight_ih_l0 transposed (graphc multiplies x @ w), drawn like PyTorch's from
U(-1/sqrt(hidden), 1/sqrt(hidden)) with the graph's seeded generator. The input projection
of every step is one matrix product before the scan; the scan carries only the recurrence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from graphc.errors import GraphError, user_location
from graphc.ir import Value
from graphc.ops import sigmoid, swapaxes, tanh, zeros_like
from graphc.ops.scan import scan


def _params(xs: Value, hidden: int, gates: int, name: str | None, layer: str
            ) -> tuple[Value, Value, Value, Value]:
    if xs.ndim != 3:
        raise GraphError(f"{layer}: xs must be (time, batch, features) (or (batch, time, "
                         f"features) with batch_first=True), got shape {xs.shape}\n"
                         f"  at {user_location()}")
    features = xs.shape[2]
    if features is None:
        raise GraphError(f"{layer}: the feature axis of {xs.shape} must have a fixed size\n"
                         f"  at {user_location()}")
    if not isinstance(hidden, int) or hidden <= 0:
        raise GraphError(f"{layer}: hidden must be a positive int, got {hidden!r}\n"
                         f"  at {user_location()}")
    graph = xs.graph
    prefix = name if name is not None else graph.fresh_name(layer)
    bound = 1.0 / np.sqrt(hidden)

    def draw(*shape: int) -> np.ndarray:
        return graph.rng.uniform(-bound, bound, size=shape)

    return (graph.param(f"{prefix}.w_ih", draw(features, gates * hidden)),
            graph.param(f"{prefix}.w_hh", draw(hidden, gates * hidden)),
            graph.param(f"{prefix}.b_ih", draw(gates * hidden)),
            graph.param(f"{prefix}.b_hh", draw(gates * hidden)))


def _run(xs: Value, hidden: int, gates: int, name: str | None, layer: str,
         batch_first: bool, init: Any, cell: Callable[..., Any]) -> tuple[Value, Any]:
    """Project every step's input at once, scan `cell(carry, projected_x_t, w_hh, b_hh)`,
    return (ys, final carry) with ys in the layout of xs."""
    seq = swapaxes(xs, 0, 1) if batch_first else xs
    w_ih, w_hh, b_ih, b_hh = _params(seq, hidden, gates, name, layer)
    projected = seq @ w_ih + b_ih                       # (T, B, gates * hidden)
    zeros = zeros_like(projected[0][:, 0:hidden])       # (B, hidden)
    carry = init(zeros)
    final, ys = scan(lambda c, x: cell(c, x, w_hh, b_hh), carry, projected)
    return (swapaxes(ys, 0, 1) if batch_first else ys), final


def _check_state(state: Any, zeros: Value, what: str, layer: str) -> Value:
    if state is None:
        return zeros
    if not isinstance(state, Value) or len(state.shape) != 2 or any(
            a is not None and b is not None and a != b
            for a, b in zip(state.shape, zeros.shape)):
        raise GraphError(f"{layer}: {what} must be a Value of shape (batch, hidden) = "
                         f"{zeros.shape}, got {getattr(state, 'shape', type(state).__name__)}"
                         f"\n  at {user_location()}")
    return state


def gru(xs: Value, hidden: int, name: str | None = None, h0: Value | None = None,
        batch_first: bool = False) -> tuple[Value, Value]:
    """A GRU over `xs` (time, batch, features), or (batch, time, features) with
    `batch_first`; returns (ys, h_T): every step's hidden state (in xs's layout) and the
    last one (batch, hidden). `h0` defaults to zeros. Gates as PyTorch's (module docstring).
    """
    def cell(h: Value, x: Value, w_hh: Value, b_hh: Value) -> tuple[Value, Value]:
        gh = h @ w_hh + b_hh
        r = sigmoid(x[:, 0:hidden] + gh[:, 0:hidden])
        z = sigmoid(x[:, hidden:2 * hidden] + gh[:, hidden:2 * hidden])
        n = tanh(x[:, 2 * hidden:] + r * gh[:, 2 * hidden:])
        new = (1.0 - z) * n + z * h
        return new, new

    ys, h_final = _run(xs, hidden, 3, name, "gru", batch_first,
                       lambda zeros: _check_state(h0, zeros, "h0", "gru"), cell)
    return ys, h_final


def lstm(xs: Value, hidden: int, name: str | None = None,
         state: tuple[Value, Value] | None = None,
         batch_first: bool = False) -> tuple[Value, tuple[Value, Value]]:
    """An LSTM over `xs` (time, batch, features), or (batch, time, features) with
    `batch_first`; returns (ys, (h_T, c_T)). `state` = (h0, c0) defaults to zeros. Gates as
    PyTorch's (module docstring)."""
    def cell(carry: tuple[Value, Value], x: Value, w_hh: Value, b_hh: Value
             ) -> tuple[tuple[Value, Value], Value]:
        h, c = carry
        pre = x + h @ w_hh + b_hh
        i = sigmoid(pre[:, 0:hidden])
        f = sigmoid(pre[:, hidden:2 * hidden])
        g = tanh(pre[:, 2 * hidden:3 * hidden])
        o = sigmoid(pre[:, 3 * hidden:])
        c_new = f * c + i * g
        h_new = o * tanh(c_new)
        return (h_new, c_new), h_new

    def init(zeros: Value) -> tuple[Value, Value]:
        h0, c0 = state if state is not None else (None, None)
        return (_check_state(h0, zeros, "state[0] (h0)", "lstm"),
                _check_state(c0, zeros, "state[1] (c0)", "lstm"))

    ys, (h_final, c_final) = _run(xs, hidden, 4, name, "lstm", batch_first, init, cell)
    return ys, (h_final, c_final)
