"""Attention and normalisation layers of `gc.nn` (multi_head_attention, rms_norm,
group_norm, layer_norm over several axes) and parameter reuse (`share=True`,
`embedding_logits`).

These layers are composites of primitives checked in tests/test_ops.py; here each is
checked as a whole, as the primitives are in tests/test_layers.py:
1. forward against an independent numpy implementation written here (per-head loops for
   attention), float64, and the float32 graph evaluated for its dtype;
2. `gc.grad` against central finite differences in float64 (first order along a random
   direction, second order as Hessian-vector products: tests/helpers.py defaults);
3. the compiled program against the interpreter, float32 and float64, at two batch sizes.

Tolerances. Forward: 1e-13 relative to max|expected| (float64; a few dozen roundings per
element through the projections, exp and the normalising sums: measured <= 3e-16).
Compiled vs interpreter: float64 1e-12 and float32 2e-5 relative to max|expected|, as in
tests/test_layers.py (BLAS and numpy sum in different orders; float32 eps 6e-8 times sums
of <= 50 terms: measured 1.1e-15 and 3.1e-6).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

import graphc as gc
from tests.helpers import assert_arrays_match, check_grad_fd, check_hvp_fd

# -- independent numpy implementations ------------------------------------------------------


def np_softmax_rows(s: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Softmax of each row over its allowed entries; a row allowing nothing is uniform."""
    out = np.zeros_like(s)
    for i in range(s.shape[0]):
        keep = allowed[i]
        if not keep.any():
            out[i] = 1.0 / s.shape[1]
            continue
        e = np.exp(s[i, keep] - s[i, keep].max())
        out[i, keep] = e / e.sum()
    return out


def np_attention(x, wqkv, bqkv, wo, bo, heads, causal, mask=None):
    b, t, d = x.shape
    width = d // heads
    qkv = x @ wqkv + bqkv
    context = np.zeros((b, t, d))
    allowed = np.ones((b, heads, t, t), bool)
    if causal:
        allowed &= np.tril(np.ones((t, t), bool))
    if mask is not None:
        allowed &= np.broadcast_to(mask, allowed.shape)
    for n in range(b):
        for h in range(heads):
            cols = slice(h * width, (h + 1) * width)
            q = qkv[n, :, cols]
            k = qkv[n, :, d:2 * d][:, cols]
            v = qkv[n, :, 2 * d:][:, cols]
            weights = np_softmax_rows(q @ k.T / np.sqrt(width), allowed[n, h])
            context[n, :, cols] = weights @ v
    return context @ wo + bo


def np_rms_norm(x, gain, axes, eps):
    return x / np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + eps) * gain


def np_layer_norm(x, gain, bias, axes, eps=1e-5):
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gain + bias


def np_group_norm(x, groups, gain, bias, eps=1e-5):
    n, c = x.shape[:2]
    out = np.zeros_like(x)
    size = c // groups
    for i in range(n):
        for k in range(groups):
            block = x[i, k * size:(k + 1) * size]
            out[i, k * size:(k + 1) * size] = (block - block.mean()) / np.sqrt(
                block.var() + eps)
    shape = (1, c) + (1,) * (x.ndim - 2)
    return out * gain.reshape(shape) + bias.reshape(shape)


# -- the layer table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """shape: the input's shape (batch axis first); build(x) the layer, named "L";
    expect(x, params) the numpy expectation from the layer's parameter arrays."""

    id: str
    shape: tuple
    build: Callable
    expect: Callable


def _attention_expect(heads, causal, mask=None):
    def expect(x, p):
        return np_attention(x, p["L.qkv.w"], p["L.qkv.b"], p["L.out.w"], p["L.out.b"], heads,
                            causal, mask)
    return expect


# keys 1 and 3 hidden from every query (a constant mask keeps the batch axis free)
KEYS = np.array([True, False, True, False, True])[None, None, None, :]


CASES = [
    Case("attention_causal", (2, 5, 8),
         lambda x: gc.nn.multi_head_attention(x, 2, name="L"), _attention_expect(2, True)),
    Case("attention_full_one_head", (2, 4, 6),
         lambda x: gc.nn.multi_head_attention(x, 1, causal=False, name="L"),
         _attention_expect(1, False)),
    Case("attention_causal_key_mask", (2, 5, 6),
         lambda x: gc.nn.multi_head_attention(x, 3, mask=KEYS, name="L"),
         _attention_expect(3, True, KEYS)),
    Case("rms_norm", (3, 4, 6), lambda x: gc.nn.rms_norm(x, name="L"),
         lambda x, p: np_rms_norm(x, p["L.gain"], -1, 1e-6)),
    Case("rms_norm_two_axes", (3, 4, 6), lambda x: gc.nn.rms_norm(x, axes=(-2, -1), name="L"),
         lambda x, p: np_rms_norm(x, p["L.gain"], (-2, -1), 1e-6)),
    Case("layer_norm_two_axes", (3, 4, 5),
         lambda x: gc.nn.layer_norm(x, axes=(1, 2), name="L"),
         lambda x, p: np_layer_norm(x, p["L.gain"], p["L.bias"], (1, 2))),
    Case("group_norm", (2, 6, 3, 2), lambda x: gc.nn.group_norm(x, 3, name="L"),
         lambda x, p: np_group_norm(x, 3, p["L.gain"], p["L.bias"])),
    Case("group_norm_one_group_3d", (2, 4, 5), lambda x: gc.nn.group_norm(x, 1, name="L"),
         lambda x, p: np_group_norm(x, 1, p["L.gain"], p["L.bias"])),
]
CASE_IDS = [c.id for c in CASES]


def case_graph(c: Case, dtype: str) -> tuple[gc.Graph, gc.Value, gc.Value]:
    """The case in a fresh graph with a run-time batch axis, its parameters randomised
    (gains away from their initial ones, so a wrong gain rule shows)."""
    g = gc.Graph(c.id, dtype=dtype, seed=3)
    x = g.input("x", (None,) + c.shape[1:])
    out = c.build(x)
    rng = np.random.default_rng(4)
    for name, value in g.param_values.items():
        value[...] = (rng.uniform(0.5, 1.5, value.shape) if name.endswith("gain")
                      else rng.standard_normal(value.shape) * 0.5)
    return g, x, out


def case_data(c: Case, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n,) + c.shape[1:]) * 2 + 0.5


@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
def test_forward_matches_numpy(c: Case) -> None:
    g, _, out = case_graph(c, "float64")
    data = case_data(c, c.shape[0], 0)
    want = c.expect(data, g.param_values)
    assert out.shape == (None,) + want.shape[1:]
    got = gc.evaluate(out, {"x": data})
    assert got.dtype == np.float64
    assert_arrays_match(got, want, rtol=1e-13, atol=0.0, what=c.id)
    g32, _, out32 = case_graph(c, "float32")
    assert all(v.dtype == np.float32 for v in g32.param_values.values())
    assert gc.evaluate(out32, {"x": data.astype(np.float32)}).dtype == np.float32


@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
def test_gradients_match_finite_differences(c: Case) -> None:
    rng = np.random.default_rng(5)
    g, x, out = case_graph(c, "float64")
    data = case_data(c, c.shape[0], 1)
    f = gc.sum(out * g.const(rng.standard_normal(c.shape)))
    wrt = [x] + g.params
    at = [data] + [g.param_values[p.name].copy() for p in g.params]
    check_grad_fd(f, wrt, at, rng, what=c.id)
    check_hvp_fd(f, wrt, at, rng, what=c.id)


@functools.cache
def compiled_table(dtype: str) -> dict:
    """Every case's output and its gradients (input and parameters) in one program per
    case, compiled once per dtype and run at batch sizes 2 and 1."""
    results = {}
    for c in CASES:
        g, x, out = case_graph(c, dtype)
        weights = g.const(np.random.default_rng(6).standard_normal((1,) + c.shape[1:]))
        grads = gc.grad(gc.sum(out * weights), [x] + g.params)
        run = gc.compile([out] + grads)
        for n in (2, 1):
            feeds = {"x": case_data(c, n, 7 + n).astype(dtype)}
            results[c.id, n] = (run(**feeds), gc.evaluate([out] + grads, feeds))
    return results


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compiled_matches_interpreter(dtype: str) -> None:
    rtol = 2e-5 if dtype == "float32" else 1e-12
    for (case, n), (got, want) in compiled_table(dtype).items():
        for k, (a, b) in enumerate(zip(got, want)):
            assert a.dtype == b.dtype == np.dtype(dtype) and a.shape == b.shape
            assert_arrays_match(a, b, rtol=rtol, atol=0.0, what=f"{case} output {k} batch {n}")


# -- attention specifics --------------------------------------------------------------------


def test_causal_attention_ignores_the_future() -> None:
    """Changing the inputs at positions > t changes nothing at positions <= t, and the
    gradient of an output at t with respect to later inputs is exactly zero."""
    rng = np.random.default_rng(8)
    g = gc.Graph(dtype="float64", seed=0)
    x = g.input("x", (None, 6, 8))
    y = gc.nn.multi_head_attention(x, 4, name="a")
    a = rng.standard_normal((2, 6, 8))
    b = a.copy()
    b[:, 4:] = rng.standard_normal((2, 2, 8)) * 100
    ya, yb = gc.evaluate(y, {"x": a}), gc.evaluate(y, {"x": b})
    np.testing.assert_array_equal(ya[:, :4], yb[:, :4])
    assert not np.allclose(ya[:, 4:], yb[:, 4:])
    dx = gc.evaluate(gc.grad(gc.sum(y[:, 2]), x), {"x": a})
    assert np.all(np.isfinite(dx))
    np.testing.assert_array_equal(dx[:, 3:], 0.0)
    assert np.all(np.abs(dx[:, :3]).sum(axis=-1) > 0)


def test_fully_masked_query_gets_uniform_weights_and_finite_gradients() -> None:
    rng = np.random.default_rng(9)
    g = gc.Graph(dtype="float64", seed=0)
    x = g.input("x", (None, 3, 4))
    mask = g.input("mask", (None, 1, 3, 3), dtype="bool")
    y = gc.nn.multi_head_attention(x, 2, causal=False, mask=mask, name="a")
    m = np.ones((1, 1, 3, 3), bool)
    m[0, 0, 1] = False                                     # query 1 may attend to nothing
    data = rng.standard_normal((1, 3, 4))
    p = g.param_values
    want = np_attention(data, p["a.qkv.w"], p["a.qkv.b"], p["a.out.w"], p["a.out.b"], 2,
                        False, m)
    assert_arrays_match(gc.evaluate(y, {"x": data, "mask": m}), want, rtol=1e-13, atol=0.0,
                        what="masked")
    f = gc.sum(y * g.const(rng.standard_normal((1, 3, 4))))
    check_grad_fd(f, [x] + g.params, [data] + [p[v.name].copy() for v in g.params], rng,
                  fixed={"mask": m}, what="masked attention")
    run = gc.compile([y] + gc.grad(f, [x] + g.params))
    for got in run(x=data, mask=m):
        assert np.all(np.isfinite(got))


def test_attention_parameters_and_errors() -> None:
    g = gc.Graph(seed=0)
    x = g.input("x", (None, 7, 12))
    y = gc.nn.multi_head_attention(x, 3, name="att", bias=False)
    assert y.shape == (None, 7, 12)
    assert {k: v.shape for k, v in g.param_values.items()} == {"att.qkv.w": (12, 36),
                                                                "att.out.w": (12, 12)}
    with pytest.raises(gc.GraphError, match=r"(?s)heads must be a positive divisor of the width "
                                            r"12, got 5.*test_transformer_layers.py"):
        gc.nn.multi_head_attention(x, 5)
    with pytest.raises(gc.GraphError, match=r"expected a \(B, T, D\) input"):
        gc.nn.multi_head_attention(g.input("flat", (None, 12)), 2)
    with pytest.raises(gc.GraphError, match="must have a fixed size"):
        gc.nn.multi_head_attention(g.input("free", (None, None, 12)), 2)
    with pytest.raises(gc.GraphError, match="mask must be bool"):
        gc.nn.multi_head_attention(x, 2, mask=np.ones((7, 7)))
    with pytest.raises(gc.GraphError, match=r"where: .*cannot be broadcast"):
        gc.nn.multi_head_attention(x, 2, mask=np.ones((5, 5), bool))


# -- normalisation specifics ------------------------------------------------------------------


def test_layer_norm_default_is_the_last_axis_and_axes_must_be_trailing() -> None:
    g = gc.Graph(seed=0)
    x = g.input("x", (None, 3, 4))
    gc.nn.layer_norm(x, name="last")
    gc.nn.layer_norm(x, axes=(-2, -1), name="both")
    assert g.param_values["last.gain"].shape == (4,)
    assert g.param_values["both.bias"].shape == (3, 4)
    with pytest.raises(gc.GraphError, match=r"layer_norm: axes must be the last axes"):
        gc.nn.layer_norm(x, axes=1)
    with pytest.raises(gc.GraphError, match=r"rms_norm: axis 0 .* must have a fixed size"):
        gc.nn.rms_norm(x, axes=(0, 1, 2))


def test_group_norm_errors() -> None:
    g = gc.Graph(seed=0)
    x = g.input("x", (None, 6, 4, 4))
    with pytest.raises(gc.GraphError, match=r"groups must be a positive divisor of the 6 "
                                            r"channels.*got 4"):
        gc.nn.group_norm(x, 4)
    with pytest.raises(gc.GraphError, match="floating-point"):
        gc.nn.group_norm(g.input("ids", (None, 6), dtype="int64"), 2)


# -- parameter reuse ---------------------------------------------------------------------------


def rnn(x: gc.Value, h: gc.Value, shared: bool) -> gc.Value:
    """h_{s+1} = tanh(cell([x_s, h_s])) over the steps s of x (N, steps, features) from
    h_0 = h (N, hidden): the same `cell` at every step when `shared`, a separate `cell{s}`
    per step otherwise; returns the last state."""
    for s in range(x.shape[1]):
        inp = gc.concat([x[:, s], h], axis=1)
        name = "cell" if shared else f"cell{s}"
        h = gc.tanh(gc.nn.linear(inp, h.shape[1], name=name, share=shared))
    return h


def test_shared_parameter_gradient_is_the_sum_over_its_uses() -> None:
    """An RNN cell applied at 3 steps: the gradient of its one `cell.w` equals the sum of
    the gradients of 3 unshared copies holding the same values, and matches finite
    differences (first and second order)."""
    rng = np.random.default_rng(10)
    data = {"x": rng.standard_normal((4, 3, 2)), "h0": rng.uniform(-0.5, 0.5, (4, 5))}
    weights = rng.standard_normal((1, 5))
    g = gc.Graph(dtype="float64", seed=0)
    x, h0 = g.input("x", (None, 3, 2)), g.input("h0", (None, 5))
    f = gc.sum(rnn(x, h0, shared=True) * g.const(weights))
    assert sorted(g.param_values) == ["cell.b", "cell.w"]
    g.param_values["cell.b"][...] = rng.standard_normal(5) * 0.3
    shared = gc.evaluate(gc.grad(f, g.params), data)

    u = gc.Graph(dtype="float64", seed=0)
    xu, hu = u.input("x", (None, 3, 2)), u.input("h0", (None, 5))
    fu = gc.sum(rnn(xu, hu, shared=False) * u.const(weights))
    for s in range(3):
        u.param_values[f"cell{s}.w"][...] = g.param_values["cell.w"]
        u.param_values[f"cell{s}.b"][...] = g.param_values["cell.b"]
    assert gc.evaluate(fu, data) == pytest.approx(gc.evaluate(f, data),
                                                         rel=1e-15)
    per_use = gc.evaluate(gc.grad(fu, u.params), data)
    assert_arrays_match(shared[0], per_use[0] + per_use[2] + per_use[4], rtol=1e-14,
                        atol=0.0, what="d cell.w")
    assert_arrays_match(shared[1], per_use[1] + per_use[3] + per_use[5], rtol=1e-14,
                        atol=0.0, what="d cell.b")
    at = [g.param_values[p.name].copy() for p in g.params]
    check_grad_fd(f, g.params, at, rng, fixed=data, what="shared cell")
    check_hvp_fd(f, g.params, at, rng, fixed=data, what="shared cell")


def test_compiled_step_trains_a_shared_parameter() -> None:
    """One SGD step moves `cell.w` by exactly -lr times the interpreter's summed gradient;
    more steps lower the loss."""
    rng = np.random.default_rng(11)
    g = gc.Graph(dtype="float64", seed=0)
    x, h0, t = g.input("x", (None, 4, 3)), g.input("h0", (None, 6)), g.input("t", (None, 6))
    loss = gc.mse(rnn(x, h0, shared=True), t)
    feeds = {"x": rng.standard_normal((8, 4, 3)), "h0": np.zeros((8, 6)),
             "t": rng.uniform(-0.5, 0.5, (8, 6))}
    want_loss = gc.evaluate(loss, feeds)
    grads = gc.evaluate(gc.grad(loss, g.params), feeds)
    before = {k: v.copy() for k, v in g.param_values.items()}
    step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.5))
    assert step(**feeds) == pytest.approx(want_loss, rel=1e-12)
    for p, d in zip(g.params, grads):
        assert_arrays_match(g.param_values[p.name], before[p.name] - 0.5 * d, rtol=1e-12,
                            atol=0.0, what=p.name)
    losses = [float(step(**feeds)) for _ in range(30)]
    assert losses[-1] < 0.5 * want_loss


def test_tied_embedding_gradient_sums_input_and_output_uses() -> None:
    rng = np.random.default_rng(12)
    g = gc.Graph(dtype="float64", seed=0)
    ids = g.input("ids", (None, 3), dtype="int64")
    labels = g.input("labels", (None, 3), dtype="int64")
    h = gc.tanh(gc.nn.embedding(ids, 6, 4, name="emb"))
    logits = gc.nn.embedding_logits(h, "emb")
    assert logits.shape == (None, 3, 6) and list(g.param_values) == ["emb.w"]
    loss = gc.mean(gc.softmax_cross_entropy(logits, labels))
    feeds = {"ids": rng.integers(0, 6, (2, 3)), "labels": rng.integers(0, 6, (2, 3))}
    table = g.param_values["emb.w"]
    # numpy: d loss / d table = (output use) dlogits^T h + (input use) scatter of dh
    e = np.tanh(table[feeds["ids"]])
    z = e @ table.T
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    dz = (p - np.eye(6)[feeds["labels"]]) / 6
    want = np.einsum("btv,btd->vd", dz, e)
    de = (dz @ table) * (1 - e * e)
    np.add.at(want, feeds["ids"], de)
    got = gc.evaluate(gc.grad(loss, g["emb.w"]), feeds)
    assert_arrays_match(got, want, rtol=1e-14, atol=0.0, what="tied table")
    check_grad_fd(loss, [g["emb.w"]], [table.copy()], rng, fixed=feeds, what="tied")
    step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))
    before = table.copy()
    step(**feeds)
    assert_arrays_match(g.param_values["emb.w"], before - 0.1 * want, rtol=1e-12, atol=0.0,
                        what="tied SGD step")


def test_parameter_reuse_errors_name_the_parameter_and_shapes() -> None:
    g = gc.Graph(seed=0)
    x = g.input("x", (None, 4))
    gc.nn.linear(x, 8, name="fc")
    with pytest.raises(gc.GraphError, match=r"linear: parameter 'fc.w': the name is already "
                                            r"used by the param declared at .*test_transf"
                                            r"ormer_layers.py:\d+; pass share=True"):
        gc.nn.linear(x, 8, name="fc")
    with pytest.raises(gc.GraphError, match=r"cannot share parameter 'fc.w': it is \(4, 8\) "
                                            r"float32, this use needs \(4, 3\) float32"):
        gc.nn.linear(x, 3, name="fc", share=True)
    gc.nn.layer_norm(x, name="ln")
    with pytest.raises(gc.GraphError, match=r"layer_norm: cannot share parameter 'ln.gain': "
                                            r"it is \(4,\) float32, this use needs \(4,\) "
                                            r"float64"):
        gc.nn.layer_norm(g.input("z", (None, 4), dtype="float64"), name="ln", share=True)
    with pytest.raises(gc.GraphError, match="share=True needs the name"):
        gc.nn.linear(x, 8, share=True)
    with pytest.raises(gc.GraphError, match=r"no embedding table 'tok.w'.*gc.nn.embedding"):
        gc.nn.embedding_logits(x, "tok")
    gc.nn.embedding(g.input("ids", (None,), dtype="int64"), 10, 5, name="tok")
    with pytest.raises(gc.GraphError, match=r"must match the width of 'tok.w' \(10, 5\)"):
        gc.nn.embedding_logits(x, "tok")
    n_params = len(g.param_values)
    state = g.rng.bit_generator.state
    assert gc.nn.linear(x, 8, name="fc", share=True).shape == (None, 8)
    assert len(g.param_values) == n_params and g.rng.bit_generator.state == state
