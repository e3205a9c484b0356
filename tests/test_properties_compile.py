"""Property test: random small graphs, compiled, against the interpreter and against
finite differences (float64).

A drawn program is a chain of 1-3 steps from a menu of elementwise, broadcasting,
reduction, matmul, transpose and reshape blocks applied to x (run-time batch, 3 columns),
with inputs `row` (3,), `col` (batch, 1) and a parameter W (3, 3) mixed in. Every block
keeps the (batch, 3) shape so any chain is valid. Hypothesis also draws the batch size (run
time, no recompile) and the data.

Compile time is bounded: a block's constants are fixed (scalar literals would change the
generated code), weights are array constants or fed inputs, and graphs are built by one
function, so two examples with the same chain generate the same source and share one
compiled step; at most `max_examples` (15) distinct steps are compiled.

Checks, per example:
* compiled forward value and gradients (w.r.t. x, row, col and W) equal the interpreter's
  within 1e-11 relative to the largest magnitude (float64; fastmath reassociation and FMA
  contraction only reorder roundings: ~1e-15 per op, measured < 1e-14);
* the compiled gradient matches a central finite difference of the compiled forward along a
  random direction (W perturbed in place through `compiled.params`, which the step reads
  live): tests/helpers.py tolerances (5e-8 of sum |g_i v_i| + 1e-9, h = 1e-6). Blocks are
  smooth (no relu/abs/max kinks at the evaluated points: `max` is only used as a stop-
  gradient shift inside softmax), so the central difference is accurate.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import graphc as gc
from graphc.backends.cpu.compile_kernels import compile_count
from tests.helpers import (
    assert_directional_match,
    directional_scale,
    inner,
    numeric_directional_derivative,
    random_like,
)

Block = Callable[[gc.Value, SimpleNamespace], gc.Value]

BLOCKS: dict[str, Block] = {
    "tanh": lambda v, c: gc.tanh(v),
    "sigmoid_scaled": lambda v, c: gc.sigmoid(v) * 2.0 - 1.0,
    "log1p_square": lambda v, c: gc.log(gc.square(v) + 1.0),
    "exp_tanh": lambda v, c: gc.exp(gc.tanh(v)),
    "gelu": lambda v, c: gc.gelu(v),
    "add_row": lambda v, c: v + c.row,
    "mul_col": lambda v, c: v * c.col,
    "div_positive": lambda v, c: v / (gc.square(c.row) + 1.0),
    "center_rows": lambda v, c: v - gc.mean(v, axis=-1, keepdims=True),
    "scale_by_batch_sum": lambda v, c: v * gc.tanh(gc.sum(v, axis=0, keepdims=True)),
    "softmax": lambda v, c: gc.softmax(v) * 3.0,
    "logsumexp": lambda v, c: v - gc.logsumexp(v, axis=-1, keepdims=True) * 0.5,
    "matmul": lambda v, c: v @ c.W,
    "gram": lambda v, c: v @ (gc.transpose(v) @ v) * 0.1,
    "transpose_roundtrip": lambda v, c: gc.transpose(gc.sigmoid(gc.transpose(v)) * c.col.T),
    "reshape_roundtrip": lambda v, c: gc.reshape(gc.tanh(gc.reshape(v, (-1,))) * 1.5, (-1, 3)),
    "broadcast_batch_mean": lambda v, c: gc.broadcast_to(gc.mean(v, axis=0, keepdims=True),
                                                         v) * v,
    "total_norm": lambda v, c: v * gc.rsqrt(gc.sum(gc.square(v)) + 1.0),
}

_COMPILED: dict[tuple[str, ...], tuple] = {}


def build(chain: tuple[str, ...]) -> tuple:
    """(compiled program, [out, f, *grads]) for a chain; built once per chain."""
    if chain in _COMPILED:
        return _COMPILED[chain]
    g = gc.Graph("prop", dtype="float64")
    x = g.input("x", (None, 3))
    row = g.input("row", (3,))
    col = g.input("col", (None, 1))
    w = g.param("W", np.eye(3))
    c = SimpleNamespace(row=row, col=col, W=w)
    v = x
    for name in chain:
        v = BLOCKS[name](v, c)
    assert v.shape == (None, 3), (chain, v.shape)
    out = v + x * c.row  # every input reaches the output
    weights = g.input("weights", (None, 3))  # fed, so the generated code does not vary
    f = gc.sum(out * weights) + gc.sum(w * w) * 0.01
    grads = gc.grad(f, [x, row, col, w])
    compiled = gc.compile([out, f, *grads])
    _COMPILED[chain] = (compiled, [out, f, *grads])
    return _COMPILED[chain]


def _close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11 * scale, err_msg=what)


@settings(max_examples=15, deadline=None)
@given(chain=st.lists(st.sampled_from(sorted(BLOCKS)), min_size=1, max_size=3).map(tuple),
       batch=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_random_graph_compiled_matches_interpreter_and_finite_differences(
        chain: tuple[str, ...], batch: int, seed: int) -> None:
    compiled, outputs = build(chain)
    compiled_before = compile_count()
    rng = np.random.default_rng(seed)
    W = np.eye(3) + 0.3 * rng.standard_normal((3, 3))
    compiled.params["W"][...] = W
    feeds = {"x": rng.standard_normal((batch, 3)), "row": rng.standard_normal(3),
             "col": rng.standard_normal((batch, 1)),
             "weights": rng.standard_normal((batch, 3))}

    got = compiled(**feeds)
    want = gc.evaluate(outputs, feeds)
    names = ["out", "f", "d/dx", "d/drow", "d/dcol", "d/dW"]
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape, (name, a.shape, b.shape)
        assert np.all(np.isfinite(b)), f"{chain}: reference {name} not finite"
        _close(a, b, f"{chain} {name} (batch {batch})")

    point = [feeds["x"], feeds["row"], feeds["col"], W]
    grads = [np.asarray(gv) for gv in got[2:]]

    def f_compiled(x: np.ndarray, row: np.ndarray, col: np.ndarray, w: np.ndarray) -> float:
        compiled.params["W"][...] = w
        return float(compiled(x=x, row=row, col=col, weights=feeds["weights"])[1])

    direction = random_like(rng, point)
    numeric = numeric_directional_derivative(f_compiled, point, direction)
    compiled.params["W"][...] = W
    assert_directional_match(inner(grads, direction), numeric,
                             directional_scale(grads, direction),
                             what=f"{chain} batch {batch}")
    assert compile_count() == compiled_before  # new batch sizes never recompile
