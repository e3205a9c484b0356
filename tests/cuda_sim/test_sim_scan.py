"""gc.scan on the CUDA target (simulator, tiny sizes) against the interpreter: forward and
gradients of a reverse and a forward scan with a captured parameter, tuple carries, a
carry swap (new carries read each other's buffers) and a training step with Adam.

Tolerances are test_compile_ops.py's (float32 2e-5 / 1e-5, float64 1e-12)."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc

TOL = {"float32": dict(rtol=2e-5, atol=1e-5), "float64": dict(rtol=1e-12, atol=1e-12)}


def _rnn(dtype: str, reverse: bool):
    g = gc.Graph(dtype=dtype)
    x = g.input("x", (3, 2, 2))
    h0 = g.input("h0", (2, 3))
    rng = np.random.default_rng(0)
    wx = g.param("wx", rng.normal(size=(2, 3)) * 0.5)
    wh = g.param("wh", rng.normal(size=(3, 3)) * 0.5)

    def cell(h, xt):
        new = gc.tanh(xt @ wx + h @ wh)
        return new, gc.sum(new, axis=1)

    h_final, ys = gc.scan(cell, h0, x, reverse=reverse)
    return g, h_final, ys


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_forward_and_gradients_match_interpreter(dtype: str, reverse: bool) -> None:
    g, h_final, ys = _rnn(dtype, reverse)
    loss = gc.sum(h_final * h_final) + gc.sum(ys)
    outputs = [h_final, ys, loss] + gc.grad(loss, [g["x"], g["h0"]] + g.params)
    rng = np.random.default_rng(1)
    feeds = {"x": rng.normal(size=(3, 2, 2)).astype(dtype),
             "h0": rng.normal(size=(2, 3)).astype(dtype)}
    got = gc.compile(outputs, target="cuda")(**feeds)
    for a, b in zip(got, gc.evaluate(outputs, feeds)):
        np.testing.assert_allclose(a, b, **TOL[dtype])


def test_swapped_carries_and_passthrough_outputs() -> None:
    g = gc.Graph(dtype="float64")
    x = g.input("x", (4, 2))

    def body(carry, xt):
        a, b = carry
        return (b, a + xt), a

    (a, b), ys = gc.scan(body, (g.const(np.zeros(2)), g.const(np.ones(2))), x)
    feeds = {"x": np.arange(8.0).reshape(4, 2)}
    got = gc.compile([a, b, ys], target="cuda")(**feeds)
    for u, v in zip(got, gc.evaluate([a, b, ys], feeds)):
        np.testing.assert_allclose(u, v, rtol=0, atol=1e-12)


def test_training_step_with_adam_matches_cpu() -> None:
    _g, h_final, ys = _rnn("float64", False)
    loss = gc.mean(gc.square(ys)) + gc.mean(h_final)
    rng = np.random.default_rng(2)
    feeds = {"x": rng.normal(size=(3, 2, 2)), "h0": rng.normal(size=(2, 3))}
    cuda_step = gc.compile(loss, optimizer=gc.optim.Adam(1e-2), target="cuda")
    cpu_step = cuda_step.to("cpu")
    for _ in range(2):
        np.testing.assert_allclose(cuda_step(**feeds), cpu_step(**feeds), rtol=1e-12)
    for name, value in cpu_step.params.items():
        np.testing.assert_allclose(cuda_step.params[name], value, rtol=0, atol=1e-12)
