"""gc.scan: forward against a Python loop in numpy, gradients against central finite
differences (float64, tests/helpers.py tolerances) through carries, sequences and captured
values, second order, and the errors a wrong body gets."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from tests.helpers import check_grad_fd, check_hvp_fd

T, B, F = 5, 2, 3


def _rnn_graph(dtype: str = "float64", reverse: bool = False):
    g = gc.Graph(dtype=dtype)
    x = g.input("x", (T, B, F))
    h0 = g.input("h0", (B, F))
    w = g.param("W", np.random.default_rng(0).normal(size=(F, F)) * 0.5)
    b = g.param("b", np.random.default_rng(1).normal(size=(F,)))

    def cell(h, xt):
        new = gc.tanh(h @ w + xt + b)
        return new, new * new

    h_final, ys = gc.scan(cell, h0, x, reverse=reverse)
    return g, x, h0, w, b, h_final, ys


def _rnn_numpy(x, h0, w, b, reverse=False):
    h, ys = h0, np.zeros_like(x)
    steps = range(len(x) - 1, -1, -1) if reverse else range(len(x))
    for t in steps:
        h = np.tanh(h @ w + x[t] + b)
        ys[t] = h * h
    return h, ys


def _feeds(rng):
    return {"x": rng.normal(size=(T, B, F)), "h0": rng.normal(size=(B, F))}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reverse", [False, True])
def test_forward_matches_numpy_loop(dtype: str, reverse: bool) -> None:
    g, _x, _h0, _w, _b, h_final, ys = _rnn_graph(dtype, reverse)
    feeds = _feeds(np.random.default_rng(2))
    got_h, got_ys = gc.evaluate([h_final, ys], feeds)
    want_h, want_ys = _rnn_numpy(feeds["x"], feeds["h0"], g.param_values["W"].astype(float),
                                 g.param_values["b"].astype(float), reverse)
    assert got_h.dtype == dtype and got_ys.dtype == dtype
    assert got_ys.shape == (T, B, F)
    tol = 1e-6 if dtype == "float32" else 1e-14   # T chained tanh steps of O(1) values
    np.testing.assert_allclose(got_h, want_h, rtol=0, atol=tol)
    np.testing.assert_allclose(got_ys, want_ys, rtol=0, atol=tol)


@pytest.mark.parametrize("reverse", [False, True])
def test_gradients_through_carry_xs_and_captured_params(reverse: bool) -> None:
    g, x, h0, w, b, h_final, ys = _rnn_graph("float64", reverse)
    rng = np.random.default_rng(3)
    loss = gc.sum(h_final * g.const(rng.normal(size=(B, F)))) + gc.sum(
        ys * g.const(rng.normal(size=(T, B, F))))
    feeds = _feeds(rng)
    check_grad_fd(loss, [x, h0, w, b],
                  [feeds["x"], feeds["h0"], g.param_values["W"], g.param_values["b"]], rng,
                  what="scan rnn")


def test_gradient_of_final_carry_only_and_of_ys_only() -> None:
    g, x, h0, w, _b, h_final, ys = _rnn_graph()
    rng = np.random.default_rng(4)
    feeds = _feeds(rng)
    at = [feeds["x"], feeds["h0"], g.param_values["W"]]
    check_grad_fd(gc.sum(h_final * h_final), [x, h0, w], at, rng, what="final carry")
    check_grad_fd(gc.sum(ys), [x, h0, w], at, rng, what="ys")


def test_tuple_carries_several_xs_and_int_sequence() -> None:
    """Two carries (one integer counter), two float sequences and an integer one; ys a
    tuple. The counter and the integer sequence have no gradient."""
    g = gc.Graph(dtype="float64")
    a = g.input("a", (4, 3))
    c = g.input("c", (4, 3))
    k = g.input("k", (4,), dtype="int64")
    s0 = g.input("s0", (3,))
    scale = g.param("scale", np.array([0.5, -1.0, 2.0]))

    def body(carry, xs):
        s, n = carry
        at, ct, kt = xs
        s2 = s * gc.sigmoid(at) + ct * scale * gc.cast(kt, "float64")
        return (s2, n + kt), (s2 * 2.0, gc.sum(s2))

    (s_final, n_final), (y1, y2) = gc.scan(body, (s0, g.const(0, dtype="int64")), (a, c, k))
    rng = np.random.default_rng(5)
    feeds = {"a": rng.normal(size=(4, 3)), "c": rng.normal(size=(4, 3)),
             "k": np.array([1, 2, 0, 3]), "s0": rng.normal(size=3)}
    got = gc.evaluate([s_final, n_final, y1, y2], feeds)
    s, n, y1s, y2s = feeds["s0"], 0, [], []
    for t in range(4):
        s = s * (1 / (1 + np.exp(-feeds["a"][t]))) + feeds["c"][t] * scale_value(g) * \
            feeds["k"][t]
        n += feeds["k"][t]
        y1s.append(2 * s)
        y2s.append(s.sum())
    np.testing.assert_allclose(got[0], s, atol=1e-14)
    assert got[1] == n and got[1].dtype == np.int64
    np.testing.assert_allclose(got[2], np.stack(y1s), atol=1e-14)
    np.testing.assert_allclose(got[3], np.array(y2s), atol=1e-14)
    loss = gc.sum(s_final) + gc.sum(y1 * y1) + gc.sum(y2)
    check_grad_fd(loss, [a, c, s0, scale],
                  [feeds["a"], feeds["c"], feeds["s0"], g.param_values["scale"]], rng,
                  fixed={"k": feeds["k"]}, what="tuple carries")


def scale_value(g: gc.Graph) -> np.ndarray:
    return g.param_values["scale"]


def test_second_order_through_scan() -> None:
    g, _x, h0, w, _b, h_final, ys = _rnn_graph()
    rng = np.random.default_rng(6)
    feeds = _feeds(rng)
    loss = gc.sum(h_final) + gc.sum(ys)
    check_hvp_fd(loss, [w, h0], [g.param_values["W"], feeds["h0"]], rng,
                 fixed={"x": feeds["x"]}, what="scan hvp")


def test_nested_scan_gradients() -> None:
    """A scan inside a scan's body, capturing a parameter from the outermost graph."""
    g = gc.Graph(dtype="float64")
    x = g.input("x", (3, 4, 2))
    w = g.param("w", np.array([0.7, -0.4]))

    def outer(acc, row):
        def inner(c, v):
            c2 = gc.tanh(c * w + v)
            return c2, None

        last, _ = gc.scan(inner, acc, row)
        return last, gc.sum(last)

    final, sums = gc.scan(outer, g.const(np.zeros(2)), x)
    rng = np.random.default_rng(7)
    xv = rng.normal(size=(3, 4, 2))
    c, want = np.zeros(2), []
    for r in xv:
        for v in r:
            c = np.tanh(c * g.param_values["w"] + v)
        want.append(c.sum())
    got_final, got_sums = gc.evaluate([final, sums], {"x": xv})
    np.testing.assert_allclose(got_final, c, atol=1e-14)
    np.testing.assert_allclose(got_sums, want, atol=1e-14)
    check_grad_fd(gc.sum(sums) + gc.sum(final), [x, w], [xv, g.param_values["w"]], rng,
                  what="nested scan")


def test_run_time_length() -> None:
    g = gc.Graph(dtype="float64")
    x = g.input("x", (None, 2))
    total, partial = gc.scan(lambda c, xt: (c + xt, c), g.const(np.zeros(2)), x)
    assert partial.shape == (None, 2)
    xv = np.arange(14.0).reshape(7, 2)
    got_total, got_partial = gc.evaluate([total, partial], {"x": xv})
    np.testing.assert_allclose(got_total, xv.sum(0))
    np.testing.assert_allclose(got_partial, np.cumsum(xv, 0) - xv)


def test_body_returning_wrong_carry_shape_is_an_error() -> None:
    g = gc.Graph()
    x = g.input("x", (4, 3))
    with pytest.raises(gc.GraphError, match=r"carry 0 as \(1,\) float32.*\(3,\) float32") as e:
        gc.scan(lambda c, xt: (gc.sum(c + xt, keepdims=True), xt), g.const(np.zeros(3)), x)
    assert "test_scan.py" in str(e.value)


def test_body_returning_wrong_carry_dtype_is_an_error() -> None:
    g = gc.Graph()
    x = g.input("x", (4, 3))
    with pytest.raises(gc.GraphError, match=r"carry 0 as \(3,\) float64.*float32"):
        gc.scan(lambda c, xt: (gc.cast(c + xt, "float64"), None), g.const(np.zeros(3)), x)


def test_body_structure_errors() -> None:
    g = gc.Graph()
    x = g.input("x", (4, 3))
    h = g.const(np.zeros(3))
    with pytest.raises(gc.GraphError, match="must return a pair"):
        gc.scan(lambda c, xt: c + xt, h, x)
    with pytest.raises(gc.GraphError, match="returns 1 carries, init has 2"):
        gc.scan(lambda c, xt: (c[0], None), (h, h), x)
    with pytest.raises(gc.GraphError, match="different lengths"):
        gc.scan(lambda c, xt: (c, None), h, (x, g.input("z", (5, 3))))
    with pytest.raises(gc.GraphError, match="create parameters and state outside"):
        gc.scan(lambda c, xt: (c + xt.graph.param("p", np.ones(3)), None), h, x)


def test_different_bodies_give_different_checkpoint_fingerprints() -> None:
    from graphc.checkpoint import fingerprint

    def program(scale: float) -> gc.Graph:
        g = gc.Graph(dtype="float64")
        x = g.input("x", (4, 3))
        final, _ = gc.scan(lambda c, xt: (c * scale + xt, None), g.const(np.zeros(3)), x)
        g.outputs = [final.id]
        return g

    assert fingerprint(program(0.5)) == fingerprint(program(0.5))
    assert fingerprint(program(0.5)) != fingerprint(program(0.25))
