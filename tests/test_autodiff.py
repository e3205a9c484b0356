"""Reverse-mode autodiff (`gc.grad`): structure and semantics beyond single ops.

Gradient values are checked against central finite differences (tests/helpers.py: float64,
h = 1e-6, 5e-8 relative to sum|g_i v_i|) or, where they are simple, against closed forms
with float64-rounding tolerances.
"""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import pytest

import graphc as gc
from tests.helpers import check_grad_fd, check_hvp_fd, numeric_gradient

# closed-form comparisons: a handful of float64 roundings on O(1) values
CLOSED_FORM_RTOL = 1e-14


def graph64(name: str = "t") -> gc.Graph:
    return gc.Graph(name, dtype="float64")


# -- sharing and reuse ------------------------------------------------------------------

def test_value_used_many_times_x_cubed() -> None:
    g = graph64()
    x = g.input("x", (5,))
    y = gc.sum(x * x * x)
    data = np.linspace(-2.0, 2.0, 5)
    gx = gc.evaluate(gc.grad(y, x), {"x": data})
    np.testing.assert_allclose(gx, 3 * data ** 2, rtol=CLOSED_FORM_RTOL)
    check_grad_fd(y, [x], [data], np.random.default_rng(0), what="x*x*x")
    check_hvp_fd(y, [x], [data], np.random.default_rng(1), what="x*x*x")


def test_shared_subexpression_gradient_sums_contributions() -> None:
    """t = tanh(x @ w) is used four times (twice by t * t); its gradient is the sum of the
    four contributions (three add nodes), computed once and passed on once."""
    rng = np.random.default_rng(0)
    g = graph64()
    x = g.input("x", (4, 3))
    w = g.param("w", rng.standard_normal((3, 2)))
    t = gc.tanh(x @ w)
    y = gc.sum(t * t) + gc.mean(t) - gc.sum(gc.exp(t) * 0.5)
    xs = rng.standard_normal((4, 3))

    grads = gc.grad(y, [x, w])
    t_sums = [n for n in g.nodes if n.provenance is not None and n.provenance.forward == t.id
              and n.provenance.rule.startswith("sum of")]
    assert [n.op for n in t_sums] == ["add"] * 3
    assert {n.provenance.rule for n in t_sums} == {"sum of 4 gradient contributions"}
    # tanh's rule runs once, on the total
    tanh_rule = [n for n in g.nodes if n.provenance is not None
                 and n.provenance.forward == t.id and n.provenance.rule == "tanh vjp"]
    assert tanh_rule and all(n.id > t_sums[-1].id for n in tanh_rule)
    assert len({v.id for v in grads}) == 2

    def f(xv: np.ndarray, wv: np.ndarray) -> float:
        tv = np.tanh(xv @ wv)
        return float(np.sum(tv * tv) + np.mean(tv) - np.sum(np.exp(tv) * 0.5))

    gx, gw = gc.evaluate(grads, {"x": xs})
    np.testing.assert_allclose(gx, numeric_gradient(lambda a: f(a, g.param_values["w"]), xs),
                               rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(gw, numeric_gradient(lambda b: f(xs, b), g.param_values["w"]),
                               rtol=1e-7, atol=1e-9)


def test_diamond_graph() -> None:
    g = graph64()
    x = g.input("x", (3,))
    a = gc.exp(x)
    b, c = a * 2.0, gc.log(a + 1.0)
    y = gc.sum(b * c)
    data = np.array([0.1, -0.4, 1.2])
    check_grad_fd(y, [x], [data], np.random.default_rng(2), what="diamond")
    check_hvp_fd(y, [x], [data], np.random.default_rng(3), what="diamond")


def test_gradient_graph_is_shared_not_duplicated_per_target() -> None:
    """Asking for several targets at once sweeps the graph once (no per-target copies)."""
    g = graph64()
    a, b = g.input("a", (3,)), g.input("b", (3,))
    h = gc.tanh(a * b)
    y = gc.sum(h * h)
    before = len(g.nodes)
    gc.grad(y, [a, b])
    both = len(g.nodes) - before
    before = len(g.nodes)
    gc.grad(y, [a])
    one = len(g.nodes) - before
    assert both <= one + 3, (both, one)


# -- broadcasting: unbroadcast happens once, centrally ----------------------------------

def _unbroadcast_sums(g: gc.Graph, forward: gc.Value) -> list:
    return [n for n in g.nodes if n.role == "backward" and n.op == "sum"
            and n.provenance is not None and n.provenance.forward == forward.id]


def test_column_plus_row_broadcast() -> None:
    """(None, 1) + (1, 5): each operand's gradient is reduced back to its own shape, by a
    single sum node each, built for the add node."""
    rng = np.random.default_rng(0)
    g = graph64()
    col, row = g.input("col", (None, 1)), g.input("row", (1, 5))
    s = col + row
    assert s.shape == (None, 5)
    w = rng.standard_normal((3, 5))
    y = gc.sum(s * g.const(w))
    gcol, grow = gc.grad(y, [col, row])
    assert gcol.shape == (None, 1) and grow.shape == (1, 5)
    assert len(_unbroadcast_sums(g, s)) == 2
    c, r = rng.standard_normal((3, 1)), rng.standard_normal((1, 5))
    vc, vr = gc.evaluate([gcol, grow], {"col": c, "row": r})
    np.testing.assert_allclose(vc, w.sum(axis=1, keepdims=True), rtol=CLOSED_FORM_RTOL)
    np.testing.assert_allclose(vr, w.sum(axis=0, keepdims=True), rtol=CLOSED_FORM_RTOL)
    check_grad_fd(y, [col, row], [c, r], rng, what="col+row")


def test_bias_gradient_sums_over_batch() -> None:
    rng = np.random.default_rng(1)
    g = graph64()
    x = g.input("x", (None, 4))
    out = gc.nn.linear(x, 3, name="fc")
    w = rng.standard_normal((6, 3))
    y = gc.sum(out * g.const(w))
    gw, gb = gc.grad(y, [g["fc.w"], g["fc.b"]])
    assert gw.shape == (4, 3) and gb.shape == (3,)
    bias_add = out  # the add node of linear
    assert bias_add.op == "add" and len(_unbroadcast_sums(g, bias_add)) == 1
    xs = rng.standard_normal((6, 4))
    vw, vb = gc.evaluate([gw, gb], {"x": xs})
    np.testing.assert_allclose(vb, w.sum(axis=0), rtol=CLOSED_FORM_RTOL)
    np.testing.assert_allclose(vw, xs.T @ w, rtol=CLOSED_FORM_RTOL)


def test_broadcast_in_rule_output_and_scalar_operand() -> None:
    """A (3, 1) * () * (4,) product: three operands of different ranks, one unbroadcast
    each, all against finite differences (including second order)."""
    rng = np.random.default_rng(2)
    g = graph64()
    a, s, b = g.input("a", (3, 1)), g.input("s", ()), g.input("b", (4,))
    y = gc.sum(gc.tanh(a * s * b) * g.const(rng.standard_normal((3, 4))))
    at = [rng.standard_normal((3, 1)), np.asarray(0.7), rng.standard_normal(4)]
    grads = check_grad_fd(y, [a, s, b], at, rng, what="a*s*b")
    assert [x.shape for x in grads] == [(3, 1), (), (4,)]
    check_hvp_fd(y, [a, s, b], at, rng, what="a*s*b")


def test_unbroadcast_of_every_broadcasting_op() -> None:
    """add, sub, mul, div, pow, maximum, where, matmul batch axes all rely on the central
    unbroadcast: small operands keep their shapes."""
    rng = np.random.default_rng(3)
    g = graph64()
    big = g.input("big", (2, 3, 4))
    small = g.input("small", (3, 1))
    pos = g.input("pos", (4,))
    mat = g.input("mat", (1, 4, 2))
    cond = g.input("cond", (3, 4), dtype="bool")
    y = (gc.sum(big + small) + gc.sum(big - small) + gc.sum(big * small)
         + gc.sum(big / pos) + gc.sum(gc.pow(pos, small)) + gc.sum(gc.maximum(big, small))
         + gc.sum(gc.where(cond, small, pos)) + gc.sum(gc.tanh(big @ mat)))
    at = [rng.standard_normal((2, 3, 4)), rng.standard_normal((3, 1)),
          rng.uniform(0.5, 2.0, 4), rng.standard_normal((1, 4, 2))]
    # keep maximum away from ties
    at[0] = np.where(np.abs(at[0] - at[1]) < 0.05, at[0] + 0.2, at[0])
    fixed = {"cond": rng.random((3, 4)) < 0.5}
    grads = check_grad_fd(y, [big, small, pos, mat], at, rng, fixed=fixed, what="many")
    assert [x.shape for x in grads] == [(2, 3, 4), (3, 1), (4,), (1, 4, 2)]


# -- integer inputs ---------------------------------------------------------------------

def test_grad_wrt_int_input_raises() -> None:
    g = graph64()
    x = g.input("x", (3,))
    labels = g.input("labels", (3,), dtype="int64")
    y = gc.sum(x * gc.cast(labels, "float64"))
    with pytest.raises(gc.GraphError, match=r"labels.*int64.*only floating-point"):
        gc.grad(y, [x, labels])


def test_gradient_through_graph_with_int_labels() -> None:
    rng = np.random.default_rng(4)
    g = graph64()
    x = g.input("x", (None, 5))
    labels = g.input("labels", (None,), dtype="int32")
    logits = gc.nn.linear(gc.tanh(gc.nn.linear(x, 8, name="h")), 4, name="out")
    loss = gc.mean(gc.softmax_cross_entropy(logits, labels)) + gc.mean(
        gc.take(logits, labels, axis=1) * 0.1) + gc.sum(logits * gc.one_hot(labels, 4)) * 0.01
    params = g.params
    fixed = {"x": rng.standard_normal((6, 5)), "labels": rng.integers(0, 4, 6).astype("int32")}
    at = [g.param_values[p.name] for p in params]
    grads = check_grad_fd(loss, params, at, rng, fixed=fixed, what="int labels")
    assert all(np.any(gv) for gv in grads)
    check_hvp_fd(loss, params, at, rng, fixed=fixed, what="int labels")


# -- disconnected, self, values with no path --------------------------------------------

def test_disconnected_param_gets_zeros_of_its_shape() -> None:
    g = graph64()
    x = g.input("x", (None, 3))
    used = g.param("used", np.ones((3, 2)))
    unused = g.param("unused", np.ones((4, 5)))
    unused_input = g.input("other", (None, 7))
    y = gc.sum(x @ used)
    g_used, g_unused, g_other = gc.grad(y, [used, unused, unused_input])
    assert g_unused.shape == (4, 5) and g_other.shape == (None, 7)
    feeds = {"x": np.ones((2, 3)), "other": np.ones((6, 7))}
    v_used, v_unused, v_other = gc.evaluate([g_used, g_unused, g_other], feeds)
    np.testing.assert_array_equal(v_used, np.full((3, 2), 2.0))
    np.testing.assert_array_equal(v_unused, np.zeros((4, 5)))
    np.testing.assert_array_equal(v_other, np.zeros((6, 7)))
    assert v_unused.dtype == np.float64


def test_param_behind_stop_gradient_gets_zeros() -> None:
    g = graph64()
    p = g.param("p", np.arange(3.0))
    y = gc.sum(gc.stop_gradient(p * 2.0) * p.sum())
    gp = gc.evaluate(gc.grad(gc.sum(gc.stop_gradient(p) * 3.0), p))
    np.testing.assert_array_equal(gp, np.zeros(3))
    # only the un-stopped factor contributes: d/dp (c * sum p) = c = sum(2 p) = 6
    np.testing.assert_allclose(gc.evaluate(gc.grad(y, p)), np.full(3, 6.0))


def test_gradient_of_value_with_respect_to_itself() -> None:
    g = graph64()
    x = g.input("x", (3,))
    y = gc.sum(gc.exp(x))
    one = gc.grad(y, y)
    assert one.shape == () and one.dtype == "float64"
    assert gc.evaluate(one) == 1.0
    gy, gx = gc.grad(y, [y, x])
    data = np.array([0.0, 1.0, -1.0])
    vy, vx = gc.evaluate([gy, gx], {"x": data})
    assert vy == 1.0
    np.testing.assert_allclose(vx, np.exp(data), rtol=CLOSED_FORM_RTOL)


def test_gradient_wrt_intermediate_value() -> None:
    """Gradients with respect to an interior node (not a leaf) work like any other."""
    g = graph64()
    x = g.input("x", (3,))
    h = gc.tanh(x)
    y = gc.sum(h * h * 0.5)
    gh = gc.grad(y, h)
    data = np.array([0.3, -1.0, 2.0])
    np.testing.assert_allclose(gc.evaluate(gh, {"x": data}), np.tanh(data),
                               rtol=CLOSED_FORM_RTOL)


def test_single_value_vs_list_return() -> None:
    g = graph64()
    x = g.input("x", (2,))
    y = gc.sum(x)
    assert isinstance(gc.grad(y, x), gc.Value)
    out = gc.grad(y, [x])
    assert isinstance(out, list) and len(out) == 1


# -- run-time batch sizes ---------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 2, 7])
def test_runtime_batch_dims(batch: int) -> None:
    """One graph with a None batch dimension, differentiated once, evaluated at several
    batch sizes (mean over the batch divides by the run-time size)."""
    rng = np.random.default_rng(batch)
    g = graph64()
    x = g.input("x", (None, 4))
    y_in = g.input("y", (None,), dtype="int64")
    h = gc.nn.linear(x, 5, name="l1")
    h = gc.sigmoid(h) * gc.mean(h, axis=0, keepdims=True)
    logits = gc.nn.linear(h, 3, name="l2")
    loss = gc.mean(gc.softmax_cross_entropy(logits, y_in)) + gc.mean(gc.square(h))
    params = g.params
    fixed = {"y": rng.integers(0, 3, batch)}
    at = [rng.standard_normal((batch, 4))] + [g.param_values[p.name] for p in params]
    grads = check_grad_fd(loss, [x, *params], at, rng, fixed=fixed, what=f"batch {batch}")
    assert grads[0].shape == (batch, 4)


def test_runtime_batch_same_graph_different_sizes() -> None:
    g = graph64()
    x = g.input("x", (None, 3))
    y = gc.mean(gc.sum(x * x, axis=1))
    gx = gc.grad(y, x)
    for batch in (1, 4, 9):
        data = np.random.default_rng(batch).standard_normal((batch, 3))
        np.testing.assert_allclose(gc.evaluate(gx, {"x": data}), 2 * data / batch,
                                   rtol=CLOSED_FORM_RTOL)


def _two_batches() -> tuple[gc.Graph, gc.Value, gc.Value]:
    """loss = sum(h * z) + sum(h), h = x * s: x and z of run-time batch sizes that may
    differ, s a parameter. With x fed 1 row and z 5, h broadcasts over z's rows: d/ds is
    x * (sum of z's rows + 1), where summing the gradient of h only after the product with
    x (what a graph that leaves the batch size to run time can do) gives x * (sum + 5)."""
    g = graph64("two_batches")
    x = g.input("x", (None, 3))
    z = g.input("z", (None, 3))
    s = g.param("s", np.array([0.5, -1.0, 2.0]))
    h = x * s
    return g, gc.sum(h * z) + gc.sum(h), s


BROADCAST_MESSAGE = (r"mul %\d+ \(built at .*test_autodiff.py:\d+, shape \(None, 3\)\) is "
                     r"of size 1 on axis 0 at run time and broadcasts to 5 .*declare that "
                     r"axis as 1")


def test_a_run_time_broadcast_the_gradient_cannot_sum_is_an_error() -> None:
    """An operand fed size 1 on an axis the graph leaves to run time, broadcast there: its
    gradient would need a sum the graph does not have. The interpreter, a compiled gradient
    (whose forward product is gone: only the gradient's check can tell) and a training step
    refuse these feeds (before any kernel runs, parameters untouched) instead of returning
    x * (sum + 5) or writing 5 rows into a 1-row buffer."""
    _g, loss, s = _two_batches()
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((1, 3)), "z": rng.standard_normal((5, 3))}
    (gs,) = gc.grad(loss, [s])
    with pytest.raises(gc.GraphError, match=BROADCAST_MESSAGE):
        gc.evaluate(gs, feeds)
    with pytest.raises(gc.GraphError, match=BROADCAST_MESSAGE):
        gc.compile([gs])(**feeds)
    step = gc.compile(loss, optimizer=gc.optim.SGD(0.1))
    before = step.params["s"].copy()
    with pytest.raises(gc.GraphError, match=BROADCAST_MESSAGE):
        step(**feeds)
    np.testing.assert_array_equal(step.params["s"], before)
    # the forward alone is numpy's broadcast in the interpreter
    h = feeds["x"] * before
    np.testing.assert_allclose(gc.evaluate(loss, feeds), np.sum(h * feeds["z"]) + np.sum(h),
                               rtol=1e-14)


@pytest.mark.parametrize("rows", [(1, 1), (5, 5), (4, 4)])
def test_run_time_sizes_that_agree_differentiate(rows: tuple) -> None:
    """The same graph fed sizes that agree (1 and 1 included): exact gradients."""
    _g, loss, s = _two_batches()
    rng = np.random.default_rng(1)
    x, z = rng.standard_normal((rows[0], 3)), rng.standard_normal((rows[1], 3))
    want = (x * (z + 1.0)).sum(axis=0)
    (gs,) = gc.grad(loss, [s])
    for got in (gc.evaluate(gs, {"x": x, "z": z}), gc.compile([gs])(x=x, z=z)[0]):
        np.testing.assert_allclose(got, want, rtol=CLOSED_FORM_RTOL)


def test_a_declared_1_sums_the_broadcast() -> None:
    """What the message advises: x declared with 1 row sums its gradient over z's rows."""
    g = graph64("declared_1")
    x = g.input("x", (1, 3))
    z = g.input("z", (None, 3))
    s = g.param("s", np.array([0.5, -1.0, 2.0]))
    h = x * s
    loss = gc.sum(h * z) + gc.sum(h)
    rng = np.random.default_rng(2)
    xv, zv = rng.standard_normal((1, 3)), rng.standard_normal((5, 3))
    (gs,) = gc.grad(loss, [s])
    want = (xv * (zv.sum(axis=0) + 1.0)).ravel()
    for got in (gc.evaluate(gs, {"x": xv, "z": zv}), gc.compile([gs])(x=xv, z=zv)[0]):
        np.testing.assert_allclose(got, want, rtol=CLOSED_FORM_RTOL)


def test_the_gradient_of_an_input_fed_1_that_broadcast_is_an_error() -> None:
    """gc.grad with respect to an input of run-time size fed 1 that broadcast: an error,
    not a gradient of the broadcast shape."""
    g = graph64("input_grad")
    x = g.input("x", (None, 3))
    z = g.input("z", (None, 3))
    (gx,) = gc.grad(gc.sum(gc.tanh(x) * z), [x])
    feeds = {"x": np.ones((1, 3)), "z": np.ones((4, 3))}
    for run in (lambda: gc.evaluate(gx, feeds), lambda: gc.compile([gx])(**feeds)):
        with pytest.raises(gc.GraphError, match=r"tanh %\d+ .* broadcasts to 4"):
            run()


# -- deep chains ------------------------------------------------------------------------

CHAIN_LENGTH = 2000
# Measured: 6003 backward nodes for 5202 forward nodes (1.15x; forward counts the chain's
# constants too) for the mixed chain below: each rule emits 1-3 nodes (tanh: 1 - out*out,
# two products; sigmoid likewise; add/sub pass the gradient through, plus the sum of the
# two contributions h receives at `h + f(h)`). 1.3 leaves a ~13% margin; a per-path
# (non-memoised) autodiff would be exponential here, a quadratic one > 1000x.
BACKWARD_PER_FORWARD = 1.3


def _mixed_chain(g: gc.Graph, x: gc.Value, length: int) -> gc.Value:
    h = x
    for i in range(length):
        k = i % 5
        if k == 0:
            h = gc.tanh(h)
        elif k == 1:
            h = h * 1.01
        elif k == 2:
            h = h + gc.sigmoid(h) * 0.1
        elif k == 3:
            h = gc.square(h) * 0.5 + h
        else:
            h = h - 0.01
    return h


def test_deep_chain_differentiates_without_recursion() -> None:
    g = graph64()
    x = g.input("x", (3,))
    limit = sys.getrecursionlimit()
    h = _mixed_chain(g, x, CHAIN_LENGTH)
    y = gc.sum(h)
    forward_nodes = len(g.nodes)
    assert forward_nodes > CHAIN_LENGTH
    gx = gc.grad(y, x)
    backward_nodes = len(g.nodes) - forward_nodes
    assert sys.getrecursionlimit() == limit
    assert backward_nodes <= BACKWARD_PER_FORWARD * forward_nodes, (backward_nodes,
                                                                     forward_nodes)
    data = np.array([0.2, -0.5, 0.9])
    value, grad_value = gc.evaluate([y, gx], {"x": data})
    assert np.isfinite(value) and np.all(np.isfinite(grad_value))

    def f(v: np.ndarray) -> float:
        z = v
        for i in range(CHAIN_LENGTH):
            k = i % 5
            if k == 0:
                z = np.tanh(z)
            elif k == 1:
                z = z * 1.01
            elif k == 2:
                z = z + 0.1 / (1 + np.exp(-z))
            elif k == 3:
                z = z * z * 0.5 + z
            else:
                z = z - 0.01
        return float(np.sum(z))

    assert abs(value - f(data)) <= 1e-12 * max(1.0, abs(f(data)))
    check_grad_fd(y, [x], [data], np.random.default_rng(0), what="deep chain")
    text = gc.format_graph(gx)
    assert text.count("\n") > CHAIN_LENGTH


def test_deep_chain_of_views_and_reductions() -> None:
    """2000 reshape/transpose/broadcast/sum steps: autodiff and evaluation stay iterative."""
    g = graph64()
    x = g.input("x", (2, 3))
    h = x
    for i in range(CHAIN_LENGTH // 4):
        h = gc.transpose(h)
        h = gc.reshape(h, (h.shape[1], h.shape[0]))
        h = gc.broadcast_to(h, (2,) + h.shape)
        h = gc.sum(h, axis=0) * 0.5
        del i
    y = gc.sum(h * h)
    gx = gc.grad(y, x)
    assert len(g.nodes) > 3 * CHAIN_LENGTH
    data = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(gc.evaluate(gx, {"x": data}), 2 * data, rtol=CLOSED_FORM_RTOL)


def test_backward_node_count_for_typical_model_is_linear() -> None:
    """Every extra layer adds the same number of backward nodes (linear, not quadratic)."""
    def count(depth: int) -> tuple[int, int]:
        g = graph64()
        h = g.input("x", (None, 8))
        for k in range(depth):
            h = gc.tanh(gc.nn.linear(h, 8, name=f"l{k}"))
        y = gc.mean(gc.square(h))
        n = len(g.nodes)
        gc.grad(y, g.params)
        return n, len(g.nodes) - n

    (f10, b10), (f20, b20), (f30, b30) = count(10), count(20), count(30)
    assert f30 - f20 == f20 - f10
    assert b30 - b20 == b20 - b10 <= 2 * (f20 - f10)


# -- second order through everything ----------------------------------------------------

def test_grad_of_grad_is_differentiable_again() -> None:
    """Third derivative of sum(x**4) along one direction: 24 x v**3... checked exactly."""
    g = graph64()
    x = g.input("x", (3,))
    v = np.array([0.5, -1.0, 2.0])
    y = gc.sum(x * x * x * x)
    g1 = gc.grad(y, x)
    g2 = gc.grad(gc.sum(g1 * g.const(v)), x)
    g3 = gc.grad(gc.sum(g2 * g.const(v)), x)
    data = np.array([1.0, 2.0, -0.5])
    v1, v2, v3 = gc.evaluate([g1, g2, g3], {"x": data})
    np.testing.assert_allclose(v1, 4 * data ** 3, rtol=CLOSED_FORM_RTOL)
    np.testing.assert_allclose(v2, 12 * data ** 2 * v, rtol=CLOSED_FORM_RTOL)
    np.testing.assert_allclose(v3, 24 * data * v * v, rtol=CLOSED_FORM_RTOL)
    roles = Counter(n.role for n in g.nodes)
    assert roles["backward"] > roles["forward"]
