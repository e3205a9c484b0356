"""graphc's ops, losses and layers against PyTorch's autograd, in float64.

Every check builds a float64 graph on fixed random data (fixed seeds), feeds the same arrays
(and graphc's own parameter values, copied into torch in torch's layout) to a PyTorch
expression, and compares
* the forward values, and
* the gradients of L = sum_k sum(out_k * W_k) (W_k fixed random weights, so every output
  entry matters with its own weight) with respect to every floating-point input and every
  parameter of the graph, `gc.grad` against `torch.autograd`.
Checks run through the numpy interpreter (`gc.evaluate`), which compiles nothing; one check
per family (elementwise math, statistics and indexing, losses, convolution and pooling,
normalisation, attention, embeddings, recurrent layers and scan) runs the compiled CPU
program (`gc.compile`) instead, compared with PyTorch in the same way. Parameters that start
at constants (biases at 0, gains at 1) are set to random values first, so that they matter.

Tolerance: |got - want| <= 1e-12 * (|want| + max(1, max|want|)) per array (`RTOL` below).
Both sides compute the same float64 formulas; they differ only in summation order (numpy's
pairwise sums and tensordot vs PyTorch's kernels, BLAS blockings, fastmath reassociation in
compiled code) and in which algebraically equal form is evaluated (e.g. softplus as
max(x, 0) + log1p(exp(-|x|)), batch norm's fused backward formula vs graphc's derived one).
Each rounding differs by an ulp or so (1.1e-16), over sums of at most a few hundred terms.
Measured worst case over this module: 6.7e-16 of |want| + max(1, max|want|) (a std
gradient), 0.07% of the tolerance; a wrong rule, index, mask or layout is off by O(1).

Where graphc deliberately differs from PyTorch, the difference is asserted explicitly:
* softplus: graphc computes log(1 + exp(x)) at every x; torch's default threshold=20
  returns x itself above 20 (error exp(-x) < 2.1e-9) and its gradient 1 there.
* var/std default to numpy's ddof=0; torch's default is the unbiased correction=1 (both are
  compared with the same ddof/correction as well).
* avg_pool2d counts the padding zeros in the mean (torch's default count_include_pad=True);
  count_include_pad=False is not what graphc computes.
* multi_head_attention: a query allowed to attend to no key gets uniform weights (flax's
  choice); PyTorch's scaled_dot_product_attention gives that query a zero output.
* take_along_axis follows numpy: negative indices count from the end (torch.gather raises).
* pad's "symmetric" mode has no torch.nn.functional.pad counterpart and is not compared.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

import graphc as gc

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL = 1e-12
Tensors = dict[str, Any]


# -- the comparison -----------------------------------------------------------------------


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """`got` matches `want` within RTOL relative to each entry and to the array's scale."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, torch {want.shape}"
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale, err_msg=what)


def check(outputs: gc.Value | Sequence[gc.Value], feeds: dict[str, np.ndarray],
          reference: Callable[[Tensors], Any], *, training: bool = False,
          compiled: bool = False) -> Tensors:
    """Compare `outputs` (one Value or several) and the gradients of sum(out * W) w.r.t.
    every float feed and every parameter of their graph with `reference`, a function of
    torch tensors named like the graph's inputs, parameters and state (float leaves require
    grad) returning the matching tensor(s). Returns those tensors (state the reference
    updated in place, e.g. batch-norm running statistics, can then be compared)."""
    single = isinstance(outputs, gc.Value)
    outs = [outputs] if single else list(outputs)
    g = outs[0].graph
    wrt = [k for k, v in feeds.items() if np.asarray(v).dtype.kind == "f"]
    wrt += list(g.param_values)
    leaves = {**feeds, **g.param_values, **g.state_values}
    tensors = {k: torch.tensor(np.asarray(v), requires_grad=k in wrt) for k, v in leaves.items()}
    want = reference(tensors)
    want = [want] if single else list(want)
    rng = np.random.default_rng(1000)
    weights = [rng.normal(size=tuple(w.shape)) for w in want]
    loss = functools.reduce(operator.add,
                            [gc.sum(o * g.const(w)) for o, w in zip(outs, weights)])
    grads = gc.grad(loss, [g[k] for k in wrt])
    values = [*outs, *grads]
    if compiled:
        got = gc.compile(values, training=training)(**feeds)
    else:
        got = gc.evaluate(values, feeds, training=training)
    torch_loss = sum((w_t * torch.from_numpy(w)).sum() for w_t, w in zip(want, weights))
    torch_loss.backward()
    for k, (o, w_t) in enumerate(zip(got, want)):
        assert_close(o, w_t.detach().numpy(), f"output {k}")
    for name, grad in zip(wrt, got[len(outs):]):
        t_grad = tensors[name].grad
        assert_close(grad, np.zeros_like(grad) if t_grad is None else t_grad.numpy(),
                     f"gradient w.r.t. {name}")
    return tensors


def check_values(out: gc.Value, feeds: dict[str, np.ndarray], want: Any) -> None:
    """Non-float results (bool comparisons, int64 indices, constants): exactly equal."""
    got = gc.evaluate(out, feeds)
    want = want.numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    assert got.dtype == want.dtype, f"dtype {got.dtype}, torch {want.dtype}"
    np.testing.assert_array_equal(got, want)


def graph(seed: int = 0) -> gc.Graph:
    return gc.Graph(dtype="float64", seed=seed)


def randomize(g: gc.Graph, rng: np.random.Generator, *names: str,
              positive: bool = False) -> None:
    """Give the named parameters (or state) random values, so constant initial values
    (zero biases, unit gains) cannot hide a mistake."""
    for name in names:
        store = g.param_values if name in g.param_values else g.state_values
        value = rng.normal(size=store[name].shape)
        store[name][...] = np.abs(value) + 0.5 if positive else value


# -- elementwise math ---------------------------------------------------------------------


def _wide(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=(4, 5)) * 3.0


UNARY: dict[str, tuple[Callable, Callable, Callable]] = {
    # name: (graphc op, torch op, data)
    "sin": (gc.sin, torch.sin, _wide),
    "cos": (gc.cos, torch.cos, _wide),
    "log1p": (gc.log1p, torch.log1p, lambda rng: rng.uniform(-0.9, 4.0, size=(4, 5))),
    "expm1": (gc.expm1, torch.expm1, _wide),
    # |x| < 20: below torch's threshold (larger inputs: test_softplus_above_torch_threshold)
    "softplus": (gc.softplus, F.softplus, lambda rng: rng.uniform(-19.0, 19.0, size=(4, 5))),
    "silu": (gc.silu, F.silu, _wide),
    # exact zeros: the gradient there is alpha in both
    "elu": (lambda x: gc.elu(x, 0.7), lambda x: F.elu(x, alpha=0.7),
            lambda rng: np.where(rng.random((4, 5)) < 0.3, 0.0, rng.normal(size=(4, 5)))),
}


@pytest.mark.parametrize("name", UNARY)
def test_unary(name: str) -> None:
    op, torch_op, data = UNARY[name]
    g = graph()
    x = g.input("x", (4, 5))
    check(op(x), {"x": data(np.random.default_rng(1))}, lambda t: torch_op(t["x"]))


def test_softplus_above_torch_threshold() -> None:
    """graphc keeps the exact log(1 + exp(x)) above 20, where torch returns x (threshold=20)
    and gradient 1; both are within exp(-x) of each other."""
    g = graph()
    x = g.input("x", (4,))
    xv = np.array([20.5, 22.0, 25.0, 28.0])
    out, grad = gc.evaluate([gc.softplus(x), gc.grad(gc.sum(gc.softplus(x)), x)], {"x": xv})
    xt = torch.tensor(xv, requires_grad=True)
    torch_out = F.softplus(xt)
    torch_out.sum().backward()
    np.testing.assert_array_equal(torch_out.detach().numpy(), xv)
    np.testing.assert_array_equal(xt.grad.numpy(), np.ones(4))
    np.testing.assert_allclose(out, np.logaddexp(xv, 0.0), rtol=1e-15)
    np.testing.assert_allclose(grad, 1.0 / (1.0 + np.exp(-xv)), rtol=1e-15)
    # out - x = log1p(exp(-x)) ~ exp(-x), up to the rounding of out (ulp(28) / exp(-28) ~ 0.5%)
    np.testing.assert_allclose(out - xv, np.exp(-xv), rtol=1e-2)


@pytest.mark.parametrize("bounds", ["scalars", "values", "upper only"])
def test_clip_gradient_at_the_bounds(bounds: str) -> None:
    """torch.clamp's rule: x's gradient includes the bounds; with lo > hi (last column) the
    result is hi and the gradient goes to hi."""
    rng = np.random.default_rng(2)
    g = graph()
    x = g.input("x", (4, 5))
    xv = rng.normal(size=(4, 5))
    if bounds == "upper only":
        xv[0, :2] = 0.3
        check(gc.clip(x, None, 0.3), {"x": xv}, lambda t: torch.clamp(t["x"], max=0.3))
        return
    if bounds == "scalars":
        xv[0, :2], xv[1, :2] = -0.5, 0.5             # exactly at the bounds
        check(gc.clip(x, -0.5, 0.5), {"x": xv}, lambda t: torch.clamp(t["x"], -0.5, 0.5))
        return
    lo, hi = g.input("lo", (1, 5)), g.input("hi", (1, 5))
    lov, hiv = np.array([[-0.5, -1.0, 0.0, -2.0, 0.3]]), np.array([[0.5, 0.2, 1.0, 2.0, -0.3]])
    xv[0], xv[1] = lov[0], hiv[0]
    check(gc.clip(x, lo, hi), {"x": xv, "lo": lov, "hi": hiv},
          lambda t: torch.clamp(t["x"], t["lo"], t["hi"]))


@pytest.mark.parametrize("op", ["maximum", "minimum"])
def test_maximum_minimum_split_ties_evenly(op: str) -> None:
    rng = np.random.default_rng(3)
    g = graph()
    a, b = g.input("a", (4, 5)), g.input("b", (4, 5))
    av, bv = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    tie = rng.random((4, 5)) < 0.4
    bv[tie] = av[tie]
    assert tie.any()
    check(getattr(gc, op)(a, b), {"a": av, "b": bv},
          lambda t: getattr(torch, op)(t["a"], t["b"]))


@pytest.mark.parametrize("exponent", ["value", "constant 3", "constant 0"])
def test_pow_at_base_zero(exponent: str) -> None:
    """d(x**y)/dx = 0 at x = y = 0 and d(x**y)/dy = 0 at x = 0, y >= 0 (torch and JAX)."""
    rng = np.random.default_rng(4)
    g = graph()
    x = g.input("x", (2, 6))
    xv = np.array([[0.0] * 6, rng.uniform(0.5, 2.0, size=6)])
    if exponent == "value":
        y = g.input("y", (2, 6))
        yv = np.array([[0.0, 1.0, 2.0, 2.5, 3.0, 0.0], rng.normal(size=6)])
        check(x ** y, {"x": xv, "y": yv}, lambda t: torch.pow(t["x"], t["y"]))
        return
    power = 3.0 if exponent == "constant 3" else 0.0
    check(gc.pow(x, power), {"x": xv}, lambda t: torch.pow(t["x"], power))


@pytest.mark.parametrize("case", ["vector @ matrix", "matrix @ vector", "vector @ vector",
                                  "batch @ vector", "vector @ batch"])
def test_matmul_with_1d_operands(case: str) -> None:
    shapes = {"vector @ matrix": ((4,), (4, 3)), "matrix @ vector": ((3, 4), (4,)),
              "vector @ vector": ((4,), (4,)), "batch @ vector": ((2, 3, 4), (4,)),
              "vector @ batch": ((4,), (2, 4, 3))}[case]
    rng = np.random.default_rng(5)
    g = graph()
    a, b = g.input("a", shapes[0]), g.input("b", shapes[1])
    check(a @ b, {"a": rng.normal(size=shapes[0]), "b": rng.normal(size=shapes[1])},
          lambda t: torch.matmul(t["a"], t["b"]))


@pytest.mark.parametrize("op", ["greater_equal", "less_equal", "not_equal"])
def test_comparisons_with_ties(op: str) -> None:
    rng = np.random.default_rng(6)
    g = graph()
    a, b = g.input("a", (4, 5)), g.input("b", (4, 5))
    av = rng.integers(-2, 3, size=(4, 5)).astype(float)
    bv = rng.integers(-2, 3, size=(4, 5)).astype(float)
    compare = {"greater_equal": lambda p, q: p >= q, "less_equal": lambda p, q: p <= q,
               "not_equal": lambda p, q: p != q}[op]
    assert (av == bv).any()
    check_values(compare(a, b), {"a": av, "b": bv}, compare(torch.tensor(av), torch.tensor(bv)))


def test_compiled_elementwise() -> None:
    """The elementwise ops above, in one compiled program (fused kernels)."""
    rng = np.random.default_rng(7)
    g = graph()
    x, y = g.input("x", (None, 5)), g.input("y", (None, 5))
    xv = rng.normal(size=(4, 5))
    xv[0, 0] = 0.0
    yv = xv.copy()
    yv[1:] = rng.normal(size=(3, 5))
    outs = [gc.sin(x) * gc.cos(y), gc.log1p(gc.abs(x)) + gc.expm1(y), gc.softplus(x * 3.0),
            gc.silu(y), gc.elu(x, 0.7), gc.clip(x, -0.5, y), gc.maximum(x, y),
            gc.minimum(x, y), gc.abs(x) ** gc.abs(y)]
    check(outs, {"x": xv, "y": yv}, lambda t: (
        torch.sin(t["x"]) * torch.cos(t["y"]), torch.log1p(torch.abs(t["x"]))
        + torch.expm1(t["y"]), F.softplus(t["x"] * 3.0), F.silu(t["y"]),
        F.elu(t["x"], 0.7), torch.clamp(t["x"], torch.full_like(t["x"], -0.5), t["y"]),
        torch.maximum(t["x"], t["y"]), torch.minimum(t["x"], t["y"]),
        torch.abs(t["x"]) ** torch.abs(t["y"])), compiled=True)


# -- statistics, running sums, indexing, layout -------------------------------------------


@pytest.mark.parametrize("fn", ["var", "std"])
@pytest.mark.parametrize("axis", [None, 0, (0, 2), -1])
@pytest.mark.parametrize("ddof", [0, 1])
def test_var_std_with_ddof_as_torch_correction(fn: str, axis: Any, ddof: int) -> None:
    rng = np.random.default_rng(8)
    g = graph()
    x = g.input("x", (3, 4, 5))
    keepdims = axis == -1                                   # keepdims on one of the cases
    out = getattr(gc, fn)(x, axis=axis, keepdims=keepdims, ddof=ddof)
    check(out, {"x": rng.normal(size=(3, 4, 5)) + 2.0},
          lambda t: getattr(torch, fn)(t["x"], dim=axis, correction=ddof, keepdim=keepdims))


@pytest.mark.parametrize("fn", ["var", "std"])
def test_var_std_default_is_numpys_not_torchs(fn: str) -> None:
    """numpy's ddof=0 by default; torch's default is correction=1 (n / (n - 1) apart)."""
    xv = np.random.default_rng(9).normal(size=(6, 4))
    g = graph()
    got = gc.evaluate(getattr(gc, fn)(g.input("x", (6, 4)), axis=0), {"x": xv})
    xt = torch.tensor(xv)
    assert_close(got, getattr(torch, fn)(xt, dim=0, correction=0).numpy(), fn)
    assert_close(got, getattr(np, fn)(xv, axis=0), fn)
    torch_default = getattr(torch, fn)(xt, dim=0).numpy()
    ratio = 6 / 5 if fn == "var" else np.sqrt(6 / 5)
    assert_close(torch_default, got * ratio, f"torch.{fn}'s unbiased default")


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_cumsum(axis: Any) -> None:
    g = graph()
    x = g.input("x", (3, 4, 5))
    check(gc.cumsum(x, axis=axis), {"x": np.random.default_rng(10).normal(size=(3, 4, 5))},
          lambda t: torch.cumsum(t["x"].flatten() if axis is None else t["x"],
                                 dim=0 if axis is None else axis))


@pytest.mark.parametrize("fn", ["argmax", "argmin"])
@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("keepdims", [False, True])
def test_argmax_argmin_first_of_ties(fn: str, axis: Any, keepdims: bool) -> None:
    rng = np.random.default_rng(11)
    xv = rng.integers(0, 3, size=(5, 6)).astype(float)    # many ties
    g = graph()
    out = getattr(gc, fn)(g.input("x", (5, 6)), axis=axis, keepdims=keepdims)
    check_values(out, {"x": xv}, getattr(torch, fn)(torch.tensor(xv), dim=axis,
                                                     keepdim=keepdims))


@pytest.mark.parametrize("fn", ["argmax", "argmin"])
def test_argmax_argmin_nan_wins(fn: str) -> None:
    xv = np.array([[1.0, np.nan, 3.0, np.nan], [0.0, 2.0, -1.0, 2.0]])
    g = graph()
    check_values(getattr(gc, fn)(g.input("x", (2, 4)), axis=1), {"x": xv},
                 getattr(torch, fn)(torch.tensor(xv), dim=1))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_take_along_axis_as_torch_gather(axis: int) -> None:
    rng = np.random.default_rng(12)
    shape = (3, 4, 5)
    idx_shape = list(shape)
    idx_shape[axis] = 7                                     # repeats: scatter-add gradient
    idx = rng.integers(0, shape[axis], size=idx_shape)
    g = graph()
    out = gc.take_along_axis(g.input("x", shape), g.input("i", idx.shape, "int64"), axis)
    check(out, {"x": rng.normal(size=shape), "i": idx},
          lambda t: torch.gather(t["x"], axis, t["i"]))


def test_take_along_axis_broadcasts_as_torch_take_along_dim() -> None:
    rng = np.random.default_rng(13)
    idx = rng.integers(0, 4, size=(1, 6, 5))
    g = graph()
    out = gc.take_along_axis(g.input("x", (3, 4, 5)), g.input("i", idx.shape, "int64"), 1)
    check(out, {"x": rng.normal(size=(3, 4, 5)), "i": idx},
          lambda t: torch.take_along_dim(t["x"], t["i"], dim=1))


def test_take_along_axis_negative_indices_count_from_the_end() -> None:
    """numpy's rule; torch.gather rejects negative indices."""
    xv = np.random.default_rng(38).normal(size=(2, 3))
    idx = np.array([[-1, 0, -3], [2, -2, -2]])
    g = graph()
    out = gc.take_along_axis(g.input("x", (2, 3)), g.input("i", (2, 3), "int64"), 1)
    check(out, {"x": xv, "i": idx}, lambda t: torch.gather(t["x"], 1, t["i"] % 3))
    with pytest.raises(RuntimeError, match="out of bounds"):
        torch.gather(torch.tensor(xv), 1, torch.tensor(idx))


@pytest.mark.parametrize("mode,torch_mode", [("constant", "constant"), ("reflect", "reflect"),
                                             ("edge", "replicate"), ("wrap", "circular")])
def test_pad_modes_as_torch_pad(mode: str, torch_mode: str) -> None:
    """numpy's ((before, after) per axis) against F.pad's (last axis first) layout."""
    g = graph()
    x = g.input("x", (2, 3, 4, 5))
    extra = {"constant_values": 1.5} if mode == "constant" else {}
    out = gc.pad(x, ((0, 0), (0, 0), (1, 3), (2, 1)), mode=mode, **extra)
    value = {"value": 1.5} if mode == "constant" else {}
    check(out, {"x": np.random.default_rng(14).normal(size=(2, 3, 4, 5))},
          lambda t: F.pad(t["x"], (2, 1, 1, 3), mode=torch_mode, **value))


@pytest.mark.parametrize("fn", ["tril", "triu"])
@pytest.mark.parametrize("k", [-1, 0, 2])
def test_tril_triu(fn: str, k: int) -> None:
    g = graph()
    out = getattr(gc, fn)(g.input("x", (2, 4, 5)), k)
    check(out, {"x": np.random.default_rng(15).normal(size=(2, 4, 5))},
          lambda t: getattr(torch, fn)(t["x"], k))


@pytest.mark.parametrize("args", [(5,), (2, 8, 3), (-3, 4), (0.0, 1.0, 0.1), (1.5, -2.0, -0.5)])
def test_arange(args: tuple) -> None:
    g = graph()
    torch_dtype = torch.float64 if any(isinstance(a, float) for a in args) else torch.int64
    check_values(gc.arange(g, *args), {}, torch.arange(*args, dtype=torch_dtype))


def test_compiled_statistics_and_indexing() -> None:
    rng = np.random.default_rng(16)
    g = graph()
    x = g.input("x", (None, 4, 5))
    idx = rng.integers(0, 4, size=(3, 6, 5))
    i = g.input("i", (None, 6, 5), "int64")
    outs = [gc.var(x, axis=(0, 2), ddof=1), gc.std(x, axis=-1), gc.cumsum(x, axis=1),
            gc.take_along_axis(x, i, 1), gc.pad(x, ((0, 0), (1, 2), (2, 0)), mode="reflect"),
            gc.tril(x, 1), x[:, 0, :] @ x[0, 1, :]]
    check(outs, {"x": rng.normal(size=(3, 4, 5)), "i": idx}, lambda t: (
        torch.var(t["x"], dim=(0, 2)), torch.std(t["x"], dim=-1, correction=0),
        torch.cumsum(t["x"], 1), torch.gather(t["x"], 1, t["i"]),
        F.pad(t["x"], (2, 0, 1, 2), mode="reflect"), torch.tril(t["x"], 1),
        t["x"][:, 0, :] @ t["x"][0, 1, :]), compiled=True)


# -- losses -------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("ignore_index", [None, 2, -100])
def test_softmax_cross_entropy(reduction: str, label_smoothing: float,
                               ignore_index: int | None) -> None:
    rng = np.random.default_rng(17)
    labels = rng.integers(0, 5, size=8)
    if ignore_index == -100:
        labels[[1, 4]] = -100
    assert ignore_index is None or (labels == ignore_index).any()
    g = graph()
    logits = g.input("logits", (8, 5))
    out = gc.softmax_cross_entropy(logits, g.input("y", (8,), "int64"),
                                   label_smoothing=label_smoothing, ignore_index=ignore_index,
                                   reduction=reduction)
    extra = {} if ignore_index is None else {"ignore_index": ignore_index}
    check(out, {"logits": rng.normal(size=(8, 5)) * 2.0, "y": labels},
          lambda t: F.cross_entropy(t["logits"], t["y"], label_smoothing=label_smoothing,
                                    reduction=reduction, **extra))


def test_softmax_cross_entropy_over_a_sequence() -> None:
    """graphc's classes are the last axis, torch's axis 1."""
    rng = np.random.default_rng(18)
    g = graph()
    out = gc.softmax_cross_entropy(g.input("logits", (2, 3, 4)), g.input("y", (2, 3), "int64"),
                                   label_smoothing=0.1, ignore_index=0, reduction="mean")
    check(out, {"logits": rng.normal(size=(2, 3, 4)), "y": rng.integers(0, 4, size=(2, 3))},
          lambda t: F.cross_entropy(t["logits"].permute(0, 2, 1), t["y"], ignore_index=0,
                                    label_smoothing=0.1))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_binary_cross_entropy_with_logits(reduction: str) -> None:
    rng = np.random.default_rng(19)
    g = graph()
    out = gc.binary_cross_entropy_with_logits(g.input("x", (4, 5)), g.input("t", (4, 5)),
                                              reduction=reduction)
    check(out, {"x": rng.normal(size=(4, 5)) * 4.0, "t": rng.uniform(size=(4, 5))},
          lambda t: F.binary_cross_entropy_with_logits(t["x"], t["t"], reduction=reduction))


def test_binary_cross_entropy_with_logits_broadcast_targets() -> None:
    """graphc broadcasts the targets (numpy); torch needs them expanded to the logits'."""
    rng = np.random.default_rng(37)
    g = graph()
    out = gc.binary_cross_entropy_with_logits(g.input("x", (4, 5)), g.input("t", (5,)),
                                              reduction="mean")
    check(out, {"x": rng.normal(size=(4, 5)), "t": rng.uniform(size=5)},
          lambda t: F.binary_cross_entropy_with_logits(t["x"], t["t"].expand(4, 5)))


def test_compiled_losses() -> None:
    rng = np.random.default_rng(20)
    g = graph()
    logits, y = g.input("logits", (None, 5)), g.input("y", (None,), "int64")
    targets = g.input("t", (None, 5))
    labels = rng.integers(0, 5, size=6)
    labels[2] = 3
    outs = [gc.softmax_cross_entropy(logits, y, label_smoothing=0.1, ignore_index=3,
                                     reduction="mean"),
            gc.softmax_cross_entropy(logits, y, reduction="none"),
            gc.binary_cross_entropy_with_logits(logits, targets, reduction="sum")]
    check(outs, {"logits": rng.normal(size=(6, 5)), "y": labels,
                 "t": rng.uniform(size=(6, 5))}, lambda t: (
        F.cross_entropy(t["logits"], t["y"], label_smoothing=0.1, ignore_index=3),
        F.cross_entropy(t["logits"], t["y"], reduction="none"),
        F.binary_cross_entropy_with_logits(t["logits"], t["t"], reduction="sum")),
        compiled=True)


# -- convolution and pooling --------------------------------------------------------------


CONV2D = {
    "plain": {},
    "stride, padding": {"stride": (2, 1), "padding": (1, 2)},
    "dilation": {"dilation": (2, 1), "padding": 1},
    "groups": {"groups": 2, "stride": 2},
    "all": {"stride": (1, 2), "padding": (2, 1), "dilation": 2, "groups": 2},
}


@pytest.mark.parametrize("case", CONV2D)
def test_conv2d(case: str) -> None:
    options = CONV2D[case]
    rng = np.random.default_rng(21)
    g = graph(seed=1)
    out = gc.nn.conv2d(g.input("x", (2, 4, 7, 8)), 6, (3, 2), name="c", **options)
    randomize(g, rng, "c.b")
    check(out, {"x": rng.normal(size=(2, 4, 7, 8))},
          lambda t: F.conv2d(t["x"], t["c.w"], t["c.b"], **options))


@pytest.mark.parametrize("options", [{}, {"stride": 2, "padding": 2, "dilation": 2},
                                     {"groups": 3, "padding": 1}])
def test_conv1d(options: dict) -> None:
    rng = np.random.default_rng(22)
    g = graph(seed=2)
    out = gc.nn.conv1d(g.input("x", (2, 6, 11)), 9, 3, name="c", **options)
    randomize(g, rng, "c.b")
    check(out, {"x": rng.normal(size=(2, 6, 11))},
          lambda t: F.conv1d(t["x"], t["c.w"], t["c.b"], **options))


@pytest.mark.parametrize("kernel,stride,padding",
                         [(2, None, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 1))])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling(kind: str, kernel: Any, stride: Any, padding: Any) -> None:
    rng = np.random.default_rng(23)
    g = graph()
    pool = gc.nn.max_pool2d if kind == "max" else gc.nn.avg_pool2d
    torch_pool = F.max_pool2d if kind == "max" else F.avg_pool2d
    out = pool(g.input("x", (2, 3, 7, 6)), kernel, stride, padding)
    check(out, {"x": rng.normal(size=(2, 3, 7, 6))},
          lambda t: torch_pool(t["x"], kernel, stride, padding))


def test_max_pool2d_ties_go_to_the_first_maximum() -> None:
    xv = np.random.default_rng(24).integers(0, 2, size=(2, 2, 6, 6)).astype(float)
    g = graph()
    check(gc.nn.max_pool2d(g.input("x", xv.shape), 3, 1, 1), {"x": xv},
          lambda t: F.max_pool2d(t["x"], 3, 1, 1))


def test_max_pool2d_padding_never_wins() -> None:
    xv = -1.0 - np.abs(np.random.default_rng(36).normal(size=(2, 2, 5, 4)))
    g = graph()
    check(gc.nn.max_pool2d(g.input("x", xv.shape), 3, 2, 1), {"x": xv},
          lambda t: F.max_pool2d(t["x"], 3, 2, 1))


def test_avg_pool2d_counts_padding_like_torchs_default() -> None:
    """count_include_pad=True (torch's default); count_include_pad=False differs."""
    xv = np.ones((1, 1, 4, 4))
    g = graph()
    got = gc.evaluate(gc.nn.avg_pool2d(g.input("x", (1, 1, 4, 4)), 3, 2, 1), {"x": xv})
    assert_close(got, F.avg_pool2d(torch.tensor(xv), 3, 2, 1).numpy(), "avg_pool2d")
    assert_close(got[0, 0], np.array([[4, 6], [6, 9]]) / 9, "avg_pool2d")
    excluded = F.avg_pool2d(torch.tensor(xv), 3, 2, 1, count_include_pad=False).numpy()
    assert not np.allclose(got, excluded)


def test_compiled_conv_and_pooling() -> None:
    rng = np.random.default_rng(25)
    g = graph(seed=3)
    x = g.input("x", (None, 4, 7, 8))
    h = gc.nn.conv2d(x, 6, 3, stride=(1, 2), padding=1, dilation=(2, 1), groups=2, name="c")
    randomize(g, rng, "c.b")
    outs = [gc.nn.max_pool2d(h, 2, 1, 1), gc.nn.avg_pool2d(h, 3, 2, 1)]

    def reference(t: Tensors) -> tuple:
        h = F.conv2d(t["x"], t["c.w"], t["c.b"], stride=(1, 2), padding=1, dilation=(2, 1),
                     groups=2)
        return F.max_pool2d(h, 2, 1, 1), F.avg_pool2d(h, 3, 2, 1)

    check(outs, {"x": rng.normal(size=(2, 4, 7, 8))}, reference, compiled=True)


# -- normalisation ------------------------------------------------------------------------


@pytest.mark.parametrize("axes", [-1, (-2, -1)])
def test_layer_norm(axes: Any) -> None:
    rng = np.random.default_rng(26)
    g = graph()
    out = gc.nn.layer_norm(g.input("x", (3, 4, 5)), name="ln", axes=axes)
    randomize(g, rng, "ln.gain", "ln.bias")
    shape = (5,) if axes == -1 else (4, 5)
    check(out, {"x": rng.normal(size=(3, 4, 5)) * 2.0 + 1.0},
          lambda t: F.layer_norm(t["x"], shape, t["ln.gain"], t["ln.bias"], eps=1e-5))


def _torch_rms_norm(x: Any, shape: tuple, gain: Any, eps: float = 1e-6) -> Any:
    """F.rms_norm (torch >= 2.4), else its formula."""
    if hasattr(F, "rms_norm"):
        return F.rms_norm(x, shape, gain, eps=eps)
    axes = tuple(range(-len(shape), 0))
    return x * torch.rsqrt(x.square().mean(dim=axes, keepdim=True) + eps) * gain


@pytest.mark.parametrize("axes", [-1, (-2, -1)])
def test_rms_norm(axes: Any) -> None:
    rng = np.random.default_rng(27)
    g = graph()
    out = gc.nn.rms_norm(g.input("x", (3, 4, 5)), name="rms", axes=axes)
    randomize(g, rng, "rms.gain")
    shape = (5,) if axes == -1 else (4, 5)
    check(out, {"x": rng.normal(size=(3, 4, 5)) * 2.0 + 1.0},
          lambda t: _torch_rms_norm(t["x"], shape, t["rms.gain"]))


@pytest.mark.parametrize("shape,groups", [((2, 6, 3, 4), 3), ((2, 6, 5), 2), ((3, 4, 5), 4),
                                          ((4, 6), 2)])
def test_group_norm(shape: tuple, groups: int) -> None:
    rng = np.random.default_rng(28)
    g = graph()
    out = gc.nn.group_norm(g.input("x", shape), groups, name="gn")
    randomize(g, rng, "gn.gain", "gn.bias")
    check(out, {"x": rng.normal(size=shape) * 2.0 + 1.0},
          lambda t: F.group_norm(t["x"], groups, t["gn.gain"], t["gn.bias"], eps=1e-5))


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 2, 5)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm(shape: tuple, training: bool) -> None:
    rng = np.random.default_rng(29)
    g = graph()
    out = gc.nn.batch_norm(g.input("x", shape), name="bn", momentum=0.2)
    randomize(g, rng, "bn.gain", "bn.bias", "bn.running_mean")
    randomize(g, rng, "bn.running_var", positive=True)
    check(out, {"x": rng.normal(size=shape) * 2.0 + 1.0},
          lambda t: F.batch_norm(t["x"], t["bn.running_mean"], t["bn.running_var"],
                                 t["bn.gain"], t["bn.bias"], training=training, momentum=0.2,
                                 eps=1e-5), training=training)


def test_compiled_normalisation_and_batch_norm_running_statistics() -> None:
    """One compiled training-view program: layer, RMS, group and batch norm values and
    gradients, and the running statistics it updates against torch's."""
    rng = np.random.default_rng(30)
    g = graph()
    x = g.input("x", (None, 4, 3, 5))
    outs = [gc.nn.layer_norm(x, name="ln", axes=(-2, -1)), gc.nn.rms_norm(x, name="rms"),
            gc.nn.group_norm(x, 2, name="gn"), gc.nn.batch_norm(x, name="bn", momentum=0.3)]
    randomize(g, rng, *g.param_values, "bn.running_mean")
    randomize(g, rng, "bn.running_var", positive=True)

    def reference(t: Tensors) -> tuple:
        return (F.layer_norm(t["x"], (3, 5), t["ln.gain"], t["ln.bias"]),
                _torch_rms_norm(t["x"], (5,), t["rms.gain"]),
                F.group_norm(t["x"], 2, t["gn.gain"], t["gn.bias"]),
                F.batch_norm(t["x"], t["bn.running_mean"], t["bn.running_var"], t["bn.gain"],
                             t["bn.bias"], training=True, momentum=0.3))

    tensors = check(outs, {"x": rng.normal(size=(6, 4, 3, 5)) * 2.0 + 1.0}, reference,
                    training=True, compiled=True)
    for name in ("bn.running_mean", "bn.running_var"):
        assert_close(g.state_values[name], tensors[name].detach().numpy(), name)


# -- attention ----------------------------------------------------------------------------

B, T, D, HEADS = 2, 5, 8, 2


def _attention_graph(mask: Any = None, causal: bool = True, seed: int = 31
                     ) -> tuple[gc.Value, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    g = graph(seed=4)
    extra = {}
    mask_value = None
    if mask is not None:
        mask_value = g.input("mask", mask.shape, "bool")
        extra["mask"] = mask
    out = gc.nn.multi_head_attention(g.input("x", (B, T, D)), HEADS, causal=causal,
                                     mask=mask_value, name="att")
    randomize(g, rng, "att.qkv.b", "att.out.b")
    return out, {"x": rng.normal(size=(B, T, D)), **extra}


def _torch_mha(t: Tensors, attn_mask: Any = None, key_padding_mask: Any = None) -> Any:
    """torch.nn.MultiheadAttention with graphc's weights ((in, out) -> torch's (out, in)).
    Its bool masks are True where attending is NOT allowed."""
    module = torch.nn.MultiheadAttention(D, HEADS, batch_first=True, dtype=torch.float64)
    weights = {"in_proj_weight": t["att.qkv.w"].T, "in_proj_bias": t["att.qkv.b"],
               "out_proj.weight": t["att.out.w"].T, "out_proj.bias": t["att.out.b"]}
    x = t["x"]
    out, _ = torch.func.functional_call(module, weights, (x, x, x), {
        "attn_mask": attn_mask, "key_padding_mask": key_padding_mask, "need_weights": False})
    return out


def _torch_sdpa(t: Tensors, mask: Any) -> Any:
    """The projections by hand around F.scaled_dot_product_attention (bool mask True where
    attending is allowed, as graphc's)."""
    qkv = t["x"] @ t["att.qkv.w"] + t["att.qkv.b"]
    q, k, v = (part.reshape(B, T, HEADS, D // HEADS).transpose(1, 2)
               for part in qkv.split(D, dim=-1))
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return context.transpose(1, 2).reshape(B, T, D) @ t["att.out.w"] + t["att.out.b"]


def test_attention_causal() -> None:
    out, feeds = _attention_graph()
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    check(out, feeds, lambda t: _torch_mha(t, attn_mask=future))


def test_attention_causal_with_key_padding_mask() -> None:
    keep = np.ones((B, T), dtype=bool)
    keep[0, 3:], keep[1, 1] = False, False
    out, feeds = _attention_graph(keep[:, None, None, :])
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    check(out, feeds, lambda t: _torch_mha(t, attn_mask=future,
                                           key_padding_mask=torch.tensor(~keep)))


def test_attention_with_a_full_mask_not_causal() -> None:
    rng = np.random.default_rng(32)
    mask = rng.random((B, HEADS, T, T)) < 0.6
    mask[..., np.arange(T), np.arange(T)] = True           # every query may attend somewhere
    out, feeds = _attention_graph(mask, causal=False)
    check(out, feeds, lambda t: _torch_sdpa(t, t["mask"]))


def test_attention_query_with_no_allowed_key_gets_uniform_weights() -> None:
    """graphc (like flax) averages the values; torch's scaled_dot_product_attention gives
    that query a zero context (older versions NaN)."""
    mask = np.ones((B, 1, T, T), dtype=bool)
    mask[0, 0, 2] = False                                  # query 2 of example 0: no keys
    out, feeds = _attention_graph(mask, causal=False)
    g = out.graph
    got = gc.evaluate(out, feeds)
    t = {k: torch.tensor(v) for k, v in {**feeds, **g.param_values}.items()}
    torch_out = _torch_sdpa(t, t["mask"]).numpy()
    assert_close(np.delete(got[0], 2, axis=0), np.delete(torch_out[0], 2, axis=0), "rows")
    assert_close(got[1], torch_out[1], "example 1")
    v = (t["x"] @ t["att.qkv.w"] + t["att.qkv.b"])[0, :, 2 * D:]
    uniform = v.mean(dim=0) @ t["att.out.w"] + t["att.out.b"]
    assert_close(got[0, 2], uniform.numpy(), "uniform weights")
    torch_zero_context = t["att.out.b"].numpy()
    assert not np.allclose(got[0, 2], torch_zero_context)
    assert np.allclose(torch_out[0, 2], torch_zero_context) or np.isnan(torch_out[0, 2]).all()


def test_compiled_attention() -> None:
    out, feeds = _attention_graph()
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    check(out, feeds, lambda t: _torch_mha(t, attn_mask=future), compiled=True)


# -- embeddings ---------------------------------------------------------------------------


def _tied_embedding(compiled: bool) -> None:
    rng = np.random.default_rng(33)
    g = graph(seed=5)
    ids = rng.integers(0, 7, size=(3, 4))
    ids[0, :2] = 5                                         # repeated ids accumulate
    h = gc.nn.embedding(g.input("ids", (None, 4), "int64"), 7, 6, name="tok")
    logits = gc.nn.embedding_logits(gc.tanh(h), "tok")
    check([h, logits], {"ids": ids}, lambda t: (
        F.embedding(t["ids"], t["tok.w"]),
        torch.tanh(F.embedding(t["ids"], t["tok.w"])) @ t["tok.w"].T), compiled=compiled)


def test_embedding_and_tied_logits() -> None:
    _tied_embedding(compiled=False)


def test_compiled_embedding_and_tied_logits() -> None:
    _tied_embedding(compiled=True)


# -- recurrent layers and scan ------------------------------------------------------------

SEQ, BATCH, FEATURES, HIDDEN = 4, 3, 5, 6


def _torch_recurrent(kind: str, t: Tensors, batch_first: bool, state: tuple) -> Any:
    """torch.nn.GRU / LSTM with graphc's parameters (transposed: graphc multiplies x @ w);
    both order the gates r|z|n (GRU) and i|f|g|o (LSTM) and keep two biases."""
    module = (torch.nn.GRU if kind == "gru" else torch.nn.LSTM)(
        FEATURES, HIDDEN, batch_first=batch_first, dtype=torch.float64)
    weights = {"weight_ih_l0": t["rnn.w_ih"].T, "weight_hh_l0": t["rnn.w_hh"].T,
               "bias_ih_l0": t["rnn.b_ih"], "bias_hh_l0": t["rnn.b_hh"]}
    hx = tuple(s.unsqueeze(0) for s in state)
    ys, last = torch.func.functional_call(module, weights, (t["x"], hx[0] if kind == "gru"
                                                            else hx))
    return (ys, last[0]) if kind == "gru" else (ys, last[0][0], last[1][0])


def _recurrent(kind: str, batch_first: bool, compiled: bool) -> None:
    rng = np.random.default_rng(34)
    g = graph(seed=6)
    xs_shape = (BATCH, SEQ, FEATURES) if batch_first else (SEQ, BATCH, FEATURES)
    x = g.input("x", xs_shape)
    state = ("h0",) if kind == "gru" else ("h0", "c0")
    initial = [g.input(name, (BATCH, HIDDEN)) for name in state]
    feeds = {"x": rng.normal(size=xs_shape),
             **{name: rng.normal(size=(BATCH, HIDDEN)) * 0.5 for name in state}}
    if kind == "gru":
        ys, last = gc.nn.gru(x, HIDDEN, name="rnn", h0=initial[0], batch_first=batch_first)
        outs = [ys, last]
    else:
        ys, (last, cell) = gc.nn.lstm(x, HIDDEN, name="rnn", state=tuple(initial),
                                      batch_first=batch_first)
        outs = [ys, last, cell]
    check(outs, feeds, lambda t: _torch_recurrent(kind, t, batch_first,
                                                  tuple(t[s] for s in state)),
          compiled=compiled)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_recurrent_layers_as_torch_modules(kind: str, batch_first: bool) -> None:
    _recurrent(kind, batch_first, compiled=False)


def _scan_rnn(compiled: bool) -> None:
    """gc.scan of a tanh RNN cell against the same loop in torch."""
    rng = np.random.default_rng(35)
    g = graph()
    xs = g.input("xs", (SEQ, None, FEATURES))
    h0 = g.input("h0", (None, HIDDEN))
    wx = g.param("wx", rng.normal(size=(FEATURES, HIDDEN)) * 0.5)
    wh = g.param("wh", rng.normal(size=(HIDDEN, HIDDEN)) * 0.5)
    b = g.param("b", rng.normal(size=HIDDEN))

    def cell(h: gc.Value, x: gc.Value) -> tuple[gc.Value, gc.Value]:
        new = gc.tanh(x @ wx + h @ wh + b)
        return new, new

    last, ys = gc.scan(cell, h0, xs)

    def reference(t: Tensors) -> tuple:
        h, steps = t["h0"], []
        for x in t["xs"]:
            h = torch.tanh(x @ t["wx"] + h @ t["wh"] + t["b"])
            steps.append(h)
        return h, torch.stack(steps)

    check([last, ys], {"xs": rng.normal(size=(SEQ, BATCH, FEATURES)),
                       "h0": rng.normal(size=(BATCH, HIDDEN))}, reference, compiled=compiled)


def test_scan_tanh_rnn_as_a_torch_loop() -> None:
    _scan_rnn(compiled=False)


def test_compiled_recurrent_layers_and_scan() -> None:
    _recurrent("lstm", batch_first=True, compiled=True)
    _recurrent("gru", batch_first=False, compiled=True)
    _scan_rnn(compiled=True)
