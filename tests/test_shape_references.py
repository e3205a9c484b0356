"""A computed value used only for its shape (`zeros_like(h)`, `broadcast_to(a, h)`,
`reshape_like(a, h)`) is never run: its run-time shape follows from its operands', so the
step computes nothing for it and keeps no buffer for it. Compiled (serial and batch-sharded)
results equal the interpreter's. (The CUDA target: tests/cuda_sim/test_sim_regressions.py.)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import graphc as gc

Build = Callable[[gc.Value, gc.Value, gc.Value], gc.Value]

# references of every group kind a kernel would have to store: a BLAS product, a gather,
# a concat, a running sum, a library call (pooling), a loop ending in a reduction
REFERENCES: dict[str, Build] = {
    "matmul": lambda x, w, i: x @ w,
    "take": lambda x, w, i: gc.take(x, i),
    "concat": lambda x, w, i: gc.concat([x, gc.exp(x)], axis=1),
    "cumsum": lambda x, w, i: gc.cumsum(x, axis=1),
    "reduce": lambda x, w, i: gc.sum(gc.exp(x), axis=1, keepdims=True),
    "pool": lambda x, w, i: gc.reshape(gc.ops.max_pool2d(gc.reshape(x, (-1, 1, 2, 2)), 2),
                                       (-1, 1)),
}
USES: dict[str, Callable[[gc.Value, gc.Value], gc.Value]] = {
    "zeros_like": lambda x, ref: gc.zeros_like(ref) + 1.5,
    "broadcast_to": lambda x, ref: gc.broadcast_to(gc.sum(x * x), ref) * 2.0,
    "reshape_like": lambda x, ref: gc.ops.reshape_like(gc.exp(ref), ref[:, :1]),
}
FEEDS = {"x": np.arange(12, dtype=np.float64).reshape(3, 4) / 10.0, "i": np.array([2, 0])}


def _graph(reference: str, use: str) -> tuple[gc.Graph, gc.Value, gc.Value]:
    g = gc.Graph(f"shape_ref_{reference}_{use}", dtype="float64", seed=0)
    x = g.input("x", (None, 4))
    i = g.input("i", (None,), dtype="int64")
    w = g.param("w", np.linspace(-1.0, 1.0, 12).reshape(4, 3))
    ref = REFERENCES[reference](x, w, i)
    if use == "reshape_like":   # a value of ref's size, reshaped like ref[:, :1]
        ref = gc.sum(ref, axis=1, keepdims=True)
    out = USES[use](x, ref)
    return g, out, gc.sum(out * out) + gc.sum(w * w)


@pytest.mark.parametrize("use", list(USES))
@pytest.mark.parametrize("reference", list(REFERENCES))
def test_a_computed_shape_reference_compiles_and_matches_the_interpreter(
        reference: str, use: str) -> None:
    _, out, _ = _graph(reference, use)
    want = gc.evaluate(out, FEEDS)
    (got,) = gc.compile([out])(**FEEDS)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shards", ["1", "2"])
@pytest.mark.parametrize("reference", ["matmul", "take", "cumsum"])
def test_a_training_step_with_a_shape_reference_matches_the_interpreter(
        reference: str, shards: str, monkeypatch) -> None:
    monkeypatch.setenv("GRAPHC_SHARDS", shards)
    g, _, loss = _graph(reference, "zeros_like")
    w = g.param_values["w"].copy()
    (dw,) = gc.evaluate(gc.grad(loss, [g["w"]]), FEEDS)
    want = gc.evaluate(loss, FEEDS)
    step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.5))
    got = step(**FEEDS)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(g.param_values["w"], w - 0.5 * dw, rtol=1e-12, atol=1e-15)


def test_a_value_used_only_for_its_shape_is_not_run() -> None:
    _, out, _ = _graph("matmul", "zeros_like")
    program = gc.compile([out]).program
    ops = {program.nodes[n].op for group in program.groups for n in group.nodes}
    assert "matmul" not in ops
    assert not any(program.nodes[n].op == "matmul" for n in program.memory.slot)
