"""gc.nn.gru and gc.nn.lstm against independent numpy implementations of PyTorch's gate
equations (float32 and float64), gradients against central finite differences (float64,
tests/helpers.py tolerances), batch_first, initial states, and compiled (CPU) against the
interpreter (tests/test_scan_compile.py's tolerances)."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from tests.helpers import check_grad_fd

T, B, F, H = 4, 2, 3, 5


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def gru_numpy(x, h, p):
    w_ih, w_hh, b_ih, b_hh = (p[k].astype(float) for k in ("w_ih", "w_hh", "b_ih", "b_hh"))
    ys = []
    for xt in x:
        r = _sigmoid(xt @ w_ih[:, :H] + b_ih[:H] + h @ w_hh[:, :H] + b_hh[:H])
        z = _sigmoid(xt @ w_ih[:, H:2 * H] + b_ih[H:2 * H] + h @ w_hh[:, H:2 * H]
                     + b_hh[H:2 * H])
        n = np.tanh(xt @ w_ih[:, 2 * H:] + b_ih[2 * H:] + r * (h @ w_hh[:, 2 * H:]
                                                             + b_hh[2 * H:]))
        h = (1 - z) * n + z * h
        ys.append(h)
    return np.stack(ys), h


def lstm_numpy(x, h, c, p):
    w_ih, w_hh, b_ih, b_hh = (p[k].astype(float) for k in ("w_ih", "w_hh", "b_ih", "b_hh"))
    ys = []
    for xt in x:
        pre = xt @ w_ih + b_ih + h @ w_hh + b_hh
        i, f = _sigmoid(pre[:, :H]), _sigmoid(pre[:, H:2 * H])
        g, o = np.tanh(pre[:, 2 * H:3 * H]), _sigmoid(pre[:, 3 * H:])
        c = f * c + i * g
        h = o * np.tanh(c)
        ys.append(h)
    return np.stack(ys), h, c


def _params(g: gc.Graph, name: str) -> dict[str, np.ndarray]:
    return {k: g.param_values[f"{name}.{k}"] for k in ("w_ih", "w_hh", "b_ih", "b_hh")}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_gru_matches_pytorch_equations(dtype: str, batch_first: bool) -> None:
    g = gc.Graph(dtype=dtype, seed=3)
    x = g.input("x", (B, T, F) if batch_first else (T, B, F))
    h0 = g.input("h0", (B, H))
    ys, h_final = gc.nn.gru(x, H, name="gru", h0=h0, batch_first=batch_first)
    rng = np.random.default_rng(0)
    xv, hv = rng.normal(size=(T, B, F)), rng.normal(size=(B, H))
    feeds = {"x": (xv.transpose(1, 0, 2) if batch_first else xv).astype(dtype),
             "h0": hv.astype(dtype)}
    got_ys, got_h = gc.evaluate([ys, h_final], feeds)
    want_ys, want_h = gru_numpy(feeds["x"].astype(float).transpose(1, 0, 2) if batch_first
                                else feeds["x"].astype(float), hv.astype(dtype).astype(float),
                                _params(g, "gru"))
    tol = 1e-5 if dtype == "float32" else 1e-13
    assert got_ys.dtype == dtype and got_h.shape == (B, H)
    np.testing.assert_allclose(got_ys, want_ys.transpose(1, 0, 2) if batch_first else want_ys,
                               rtol=0, atol=tol)
    np.testing.assert_allclose(got_h, want_h, rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lstm_matches_pytorch_equations(dtype: str) -> None:
    g = gc.Graph(dtype=dtype, seed=4)
    x = g.input("x", (T, None, F))
    h0, c0 = g.input("h0", (None, H)), g.input("c0", (None, H))
    ys, (h_final, c_final) = gc.nn.lstm(x, H, name="lstm", state=(h0, c0))
    rng = np.random.default_rng(1)
    feeds = {"x": rng.normal(size=(T, B, F)).astype(dtype),
             "h0": rng.normal(size=(B, H)).astype(dtype),
             "c0": rng.normal(size=(B, H)).astype(dtype)}
    got = gc.evaluate([ys, h_final, c_final], feeds)
    want = lstm_numpy(*(feeds[k].astype(float) for k in ("x", "h0", "c0")),
                      _params(g, "lstm"))
    tol = 1e-5 if dtype == "float32" else 1e-13
    for a, b in zip(got, want):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=0, atol=tol)


def test_default_zero_state_and_parameter_shapes() -> None:
    g = gc.Graph(dtype="float64")
    x = g.input("x", (T, B, F))
    ys, h_final = gc.nn.gru(x, H)
    ys2, (h2, c2) = gc.nn.lstm(x, H)
    assert g.param_values["gru0.w_ih"].shape == (F, 3 * H)
    assert g.param_values["lstm0.w_hh"].shape == (H, 4 * H)
    xv = np.random.default_rng(2).normal(size=(T, B, F))
    got_ys, _got_h = gc.evaluate([ys, h_final], {"x": xv})
    want_ys, _want_h = gru_numpy(xv, np.zeros((B, H)), _params(g, "gru0"))
    np.testing.assert_allclose(got_ys, want_ys, rtol=0, atol=1e-13)
    got = gc.evaluate([ys2, h2, c2], {"x": xv})
    want = lstm_numpy(xv, np.zeros((B, H)), np.zeros((B, H)), _params(g, "lstm0"))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)


@pytest.mark.parametrize("layer", ["gru", "lstm"])
def test_gradients_match_finite_differences(layer: str) -> None:
    g = gc.Graph(dtype="float64", seed=5)
    x = g.input("x", (T, B, F))
    rng = np.random.default_rng(6)
    if layer == "gru":
        ys, last = gc.nn.gru(x, H, name="rnn")
    else:
        ys, (last, _) = gc.nn.lstm(x, H, name="rnn")
    loss = gc.sum(ys * g.const(rng.normal(size=(T, B, H)))) + gc.sum(last * last)
    wrt = [x] + g.params
    at = [rng.normal(size=(T, B, F))] + [g.param_values[p.name] for p in g.params]
    check_grad_fd(loss, wrt, at, rng, what=layer)


@pytest.mark.parametrize("layer", ["gru", "lstm"])
def test_compiled_training_gradients_match_interpreter(layer: str) -> None:
    g = gc.Graph(dtype="float64", seed=7)
    x = g.input("x", (T, B, F))
    ys = (gc.nn.gru(x, H) if layer == "gru" else gc.nn.lstm(x, H))[0]
    loss = gc.mean(gc.square(ys))
    outputs = [loss] + gc.grad(loss, [x] + g.params)
    feeds = {"x": np.random.default_rng(8).normal(size=(T, B, F))}
    for a, b in zip(gc.compile(outputs)(**feeds), gc.evaluate(outputs, feeds)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_wrong_input_rank_and_state_shape_are_errors() -> None:
    g = gc.Graph()
    with pytest.raises(gc.GraphError, match=r"gru: xs must be \(time, batch, features\)"):
        gc.nn.gru(g.input("flat", (T, F)), H)
    x = g.input("x", (T, B, F))
    with pytest.raises(gc.GraphError, match=r"lstm: state\[1\] \(c0\) must be"):
        gc.nn.lstm(x, H, state=(g.input("h0", (B, H)), g.input("c0", (B, H + 1))))
