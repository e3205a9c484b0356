"""The op table: every op, checked three ways.

1. Forward: `gc.evaluate` against an independent numpy expression (written here, never the
   op's own `ref`), in float32 and float64. The oracle runs in float64 on the exact values
   fed (float32 -> float64 is exact), the result must keep the tested dtype.
2. First order: `gc.grad` of f = sum(op(x) * w) (w random) in float64, as the directional
   derivative <grad, v> against the central difference (f(x+hv) - f(x-hv)) / 2h.
3. Second order: the Hessian-vector product obtained by differentiating <grad, u> again,
   against the central difference of the gradient along u (`tests.helpers.check_hvp_fd`).

Input domains keep every op smooth where it is evaluated: log/sqrt/rsqrt/pow bases > 0,
relu/abs/leaky_relu/sign inputs at least 0.2 from 0, maximum/minimum/comparison operands at
least 0.05 apart, max/min reductions over distinct values (ties: test_extreme_tie_shares).

Tolerances (justified; measured worst cases over 10 data seeds in parentheses). Forward
errors are compared against scale = max(|expected|, |float inputs|): a reduction's rounding
error is relative to its terms, not to its (possibly cancelled) result.
* float64 forward: 2e-15 * scale (measured 2.3e-16). Oracle and graph both round each
  elementary op once (eps 1.1e-16); composites chain several roundings and the summation
  order may differ (reductions of <= 24 terms, matmul inner products).
* float32 forward: 1e-6 * scale (measured 2.2e-7, from 24-term float32 sums). The graph
  rounds each op to float32 (eps 6e-8) while the oracle is float64; a 24-term sum is
  bounded by ~23 eps relative to sum|x|.
* gradients: tests/helpers.py (first order 5e-8 of sum|g_i v_i|, measured 5e-9; second
  order 3e-8 of max|H u|, measured 2.8e-9; h = 1e-6).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.special

import graphc as gc
from tests.helpers import (
    DEFAULT_H,
    DEFAULT_RTOL,
    assert_arrays_match,
    check_grad_fd,
    check_hvp_fd,
)

# Forward tolerance, relative to max(|expected|, |float inputs|); see the module docstring.
FWD_TOL = {"float32": 1e-6, "float64": 2e-15}

Data = Callable[[np.random.Generator], list[np.ndarray]]


@dataclass(frozen=True)
class Case:
    """One row of the table.

    build: graph Values -> Value (the op under test, maybe with constant operands)
    expect: float64/int/bool numpy arrays -> numpy array (independent expectation)
    data: rng -> arrays; float ones are fed as the tested float dtype, int/bool as is
    grad: "fd" (check against finite differences), "zero" (gradient must be exactly 0:
          stop_gradient, equal) or "closed_form" (finite differences do not apply; a
          dedicated test below checks it); cases with no float input have no gradient check
    hvp: also check second order
    """

    id: str
    build: Callable[..., gc.Value]
    expect: Callable[..., np.ndarray]
    data: Data
    grad: str = "fd"
    hvp: bool = True
    h: float = DEFAULT_H
    grad_rtol: float = DEFAULT_RTOL


# -- input generators -------------------------------------------------------------------

def normal(*shape: int, scale: float = 1.0) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.standard_normal(shape) * scale


def positive(*shape: int, lo: float = 0.5, hi: float = 2.0):
    return lambda rng: rng.uniform(lo, hi, shape)


def away_from_zero(*shape: int, lo: float = 0.2, hi: float = 2.0):
    return lambda rng: rng.choice([-1.0, 1.0], shape) * rng.uniform(lo, hi, shape)


def distinct(*shape: int):
    """Values at least 0.2 apart (no ties), in random order."""
    def make(rng: np.random.Generator) -> np.ndarray:
        n = int(np.prod(shape))
        base = (rng.permutation(n) - n / 2) * 0.25 + rng.uniform(-0.02, 0.02, n)
        return base.reshape(shape)
    return make


def labels(*shape: int, classes: int, dtype: str = "int64"):
    return lambda rng: rng.integers(0, classes, shape).astype(dtype)


def booleans(*shape: int):
    return lambda rng: rng.random(shape) < 0.5


def const_int(array: list, dtype: str = "int64"):
    return lambda rng: np.array(array, dtype=dtype)


def avoiding(*shape: int, points: tuple = (0.0,), scale: float = 1.0, gap: float = 0.05):
    """Normal values at least `gap` from every one of `points` (kinks, clip bounds)."""
    def make(rng: np.random.Generator) -> np.ndarray:
        x = rng.standard_normal(shape) * scale
        while min(np.min(np.abs(x - p)) for p in points) <= gap:
            x = rng.standard_normal(shape) * scale
        return x
    return make


def clip_bounds(shape: tuple, inverted: bool = False) -> Data:
    """x, a_min, a_max with a_min < a_max (or a_min > a_max when `inverted`), x at least
    0.05 from both bounds."""
    def make(rng: np.random.Generator) -> list[np.ndarray]:
        while True:
            lo = rng.standard_normal(shape) - 0.5
            hi = lo + rng.uniform(0.5, 2.0, shape) * (-1.0 if inverted else 1.0)
            x = rng.standard_normal(shape) * 2.0
            if np.min(np.abs(x - lo)) > 0.05 and np.min(np.abs(x - hi)) > 0.05:
                return [x, lo, hi]
    return make


def labels_with_ignored(*shape: int, classes: int, ignored: int = -100):
    """Integer labels in [0, classes), about a third replaced by `ignored` (at least one)."""
    def make(rng: np.random.Generator) -> np.ndarray:
        y = rng.integers(0, classes, shape)
        drop = rng.random(shape) < 0.33
        drop.flat[0] = True
        return np.where(drop, ignored, y)
    return make


def unit(*shape: int):
    return lambda rng: rng.uniform(0.0, 1.0, shape)


def args(*makers: Callable[[np.random.Generator], np.ndarray]) -> Data:
    return lambda rng: [m(rng) for m in makers]


def apart(shape_a: tuple, shape_b: tuple, gap: float = 0.05) -> Data:
    """Two normal arrays whose broadcast pairs differ by at least `gap` (no ties/kinks)."""
    def make(rng: np.random.Generator) -> list[np.ndarray]:
        while True:
            a, b = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
            if np.min(np.abs(a - b)) > gap:
                return [a, b]
    return make


def with_ties(shape: tuple) -> Data:
    """Two arrays equal in about half of the entries (for `equal`)."""
    def make(rng: np.random.Generator) -> list[np.ndarray]:
        a = rng.standard_normal(shape)
        b = np.where(rng.random(shape) < 0.5, a, rng.standard_normal(shape))
        return [a, b]
    return make


# -- independent numpy expectations -----------------------------------------------------

def np_sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def np_gelu(x):
    return 0.5 * x * (1.0 + scipy.special.erf(x / np.sqrt(2.0)))


def np_gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def np_logsumexp(x, axis, keepdims=False):
    m = np.max(x, axis=axis, keepdims=True)
    out = m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


def np_softmax(x, axis):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def np_log_softmax(x, axis):
    z = x - np.max(x, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def np_cross_entropy(logits, y):
    logp = np_log_softmax(logits, -1)
    return -np.take_along_axis(logp, y[..., None].astype(np.int64), axis=-1)[..., 0]


def np_smoothed_cross_entropy(logits, y, smoothing, ignored=None):
    """PyTorch's cross_entropy(reduction='none') with label smoothing and ignore_index."""
    logp = np_log_softmax(logits, -1)
    keep = np.ones(y.shape, bool) if ignored is None else y != ignored
    picked = np.take_along_axis(logp, np.where(keep, y, 0)[..., None].astype(np.int64),
                                axis=-1)[..., 0]
    loss = -(1.0 - smoothing) * picked - smoothing * np.mean(logp, axis=-1)
    return np.where(keep, loss, 0.0)


def np_bce_with_logits(x, t):
    """-(t log p + (1 - t) log(1 - p)) for p = sigmoid(x), with -log p = log1p(exp(-x)) and
    -log(1 - p) = log1p(exp(x)) (no cancellation in 1 - p)."""
    return t * np.log1p(np.exp(-x)) + (1.0 - t) * np.log1p(np.exp(x))


def np_take_along(x, idx, axis):
    moved = np.moveaxis(x, axis, 0)
    out = np.stack([moved[i] for i in idx.reshape(-1)]).reshape(idx.shape + moved.shape[1:])
    return np.moveaxis(out, list(range(idx.ndim)), list(range(axis, axis + idx.ndim)))


def np_running_sum(a, axis):
    n = a.shape[axis]
    moved = np.moveaxis(a, axis, -1)
    return np.moveaxis(moved @ np.triu(np.ones((n, n))), -1, axis)


def np_pick_along(a, idx, axis):
    """a[..., idx[..., j, ...], ...] along `axis`, entry by entry."""
    out = np.empty(idx.shape)
    for pos in np.ndindex(idx.shape):
        src = list(pos)
        src[axis] = idx[pos] % a.shape[axis]
        out[pos] = a[tuple(src)]
    return out


def np_pad_constant(a, widths, value):
    out = np.full([d + b + e for d, (b, e) in zip(a.shape, widths)], value)
    out[tuple(slice(b, b + d) for d, (b, _) in zip(a.shape, widths))] = a
    return out


def np_triangle(a, k, lower):
    rows, cols = np.indices(a.shape[-2:])
    keep = cols - rows <= k if lower else cols - rows >= k
    return np.where(keep, a, 0.0)


def np_one_hot(y, depth):
    out = np.zeros(y.shape + (depth,))
    for pos in np.ndindex(y.shape):
        out[pos + (int(y[pos]),)] = 1.0
    return out


# -- the table --------------------------------------------------------------------------

CASES: list[Case] = []


def case(case_id: str, build, expect, data: Data, **kw) -> None:
    CASES.append(Case(case_id, build, expect, data, **kw))


# arithmetic, with broadcasting and Python scalars (lifted to the operand's dtype)
case("add", lambda a, b: a + b, np.add, args(normal(3, 4), normal(4)))
case("add_col_row", lambda a, b: gc.add(a, b), np.add, args(normal(3, 1), normal(1, 4)))
case("add_scalar", lambda a: 1.5 + a, lambda a: 1.5 + a, args(normal(3, 4)))
case("sub", lambda a, b: a - b, np.subtract, args(normal(3, 1), normal(1, 4)))
case("sub_rscalar", lambda a: 2.0 - a, lambda a: 2.0 - a, args(normal(3, 4)))
case("mul", lambda a, b: a * b, np.multiply, args(normal(2, 3, 4), normal(3, 1)))
case("mul_same_operand", lambda a: gc.mul(a, a), lambda a: a * a, args(normal(3, 4)))
case("div", lambda a, b: a / b, np.divide, args(normal(3, 4), positive(4)))
case("div_negative_denominator", lambda a, b: gc.div(a, b), np.divide,
     args(normal(3, 4), away_from_zero(3, 4)))
case("div_rscalar", lambda a: 1.0 / a, lambda a: 1.0 / a, args(positive(3, 4)))
case("neg", lambda a: -a, lambda a: 0.0 - a, args(normal(3, 4)))
case("pow", lambda a, b: a ** b, np.power, args(positive(3, 4), normal(3, 4)))
case("pow_broadcast", lambda a, b: gc.pow(a, b), np.power, args(positive(3, 4), normal(4)))
case("pow_const_exponent", lambda a: a ** 3.5, lambda a: a ** 3.5, args(positive(3, 4)))
case("pow_int_exponent", lambda a: a ** 3, lambda a: a * a * a, args(normal(3, 4)))
case("pow_const_base", lambda a: 2.0 ** a, lambda a: np.exp(a * np.log(2.0)),
     args(normal(3, 4)))
case("pow_square", lambda a: a ** 2, lambda a: a * a, args(normal(3, 4)))
case("pow_half", lambda a: a ** 0.5, np.sqrt, args(positive(3, 4)))
case("pow_minus_half", lambda a: a ** -0.5, lambda a: 1.0 / np.sqrt(a), args(positive(3, 4)))
# unary math
case("exp", gc.exp, np.exp, args(normal(3, 4)))
case("log", gc.log, np.log, args(positive(3, 4, lo=0.1, hi=5.0)))
case("sqrt", gc.sqrt, np.sqrt, args(positive(3, 4, lo=0.1, hi=5.0)))
case("rsqrt", gc.rsqrt, lambda a: 1.0 / np.sqrt(a), args(positive(3, 4, lo=0.1, hi=5.0)))
case("tanh", gc.tanh, lambda a: np.sinh(a) / np.cosh(a), args(normal(3, 4, scale=2.0)))
case("sigmoid", gc.sigmoid, np_sigmoid, args(normal(3, 4, scale=3.0)))
case("erf", gc.erf, scipy.special.erf, args(normal(3, 4)))
case("sin", gc.sin, lambda a: np.imag(np.exp(1j * a)), args(normal(3, 4, scale=2.0)))
case("cos", gc.cos, lambda a: np.real(np.exp(1j * a)), args(normal(3, 4, scale=2.0)))
case("log1p", gc.log1p, lambda a: np.log(1.0 + a), args(positive(3, 4, lo=-0.5, hi=3.0)))
case("expm1", gc.expm1, lambda a: np.exp(a) - 1.0, args(normal(3, 4)))
case("softplus", gc.softplus, lambda a: np.log(1.0 + np.exp(a)), args(normal(3, 4, scale=3.0)))
case("silu", gc.silu, lambda a: a / (1.0 + np.exp(-a)), args(normal(3, 4, scale=2.0)))
case("elu", gc.elu, lambda a: np.where(a > 0, a, np.exp(a) - 1.0), args(away_from_zero(3, 4)))
case("elu_alpha", lambda a: gc.elu(a, alpha=0.5),
     lambda a: np.where(a > 0, a, 0.5 * (np.exp(a) - 1.0)), args(away_from_zero(3, 4)))
case("square", gc.square, lambda a: a * a, args(normal(3, 4)))
case("abs", gc.abs, lambda a: np.where(a < 0, -a, a), args(away_from_zero(3, 4)))
case("abs_operator", lambda a: abs(a), np.fabs, args(away_from_zero(3, 4)))
case("sign", gc.sign, lambda a: (a > 0) * 1.0 - (a < 0) * 1.0, args(away_from_zero(3, 4)))
case("relu", gc.relu, lambda a: a * (a > 0), args(away_from_zero(3, 4)))
case("leaky_relu", gc.leaky_relu, lambda a: np.where(a > 0, a, 0.01 * a),
     args(away_from_zero(3, 4)))
case("leaky_relu_alpha", lambda a: gc.leaky_relu(a, alpha=0.2),
     lambda a: np.where(a > 0, a, 0.2 * a), args(away_from_zero(3, 4)))
case("gelu", gc.gelu, np_gelu, args(normal(3, 4, scale=2.0)))
case("gelu_tanh", lambda a: gc.gelu(a, approximate="tanh"), np_gelu_tanh,
     args(normal(3, 4, scale=2.0)))
case("maximum", gc.maximum, lambda a, b: np.where(a > b, a, b), apart((3, 4), (3, 4)))
case("maximum_broadcast", gc.maximum, lambda a, b: np.where(a > b, a, b), apart((3, 4), (4,)))
case("maximum_scalar", lambda a: gc.maximum(a, 0.0), lambda a: np.where(a > 0, a, 0.0),
     args(away_from_zero(3, 4)))
case("minimum", gc.minimum, lambda a, b: np.where(a < b, a, b), apart((3, 4), (3, 4)))
case("minimum_broadcast", gc.minimum, lambda a, b: np.where(a < b, a, b), apart((3, 1), (4,)))
case("where", lambda c, a, b: gc.where(c, a, b), lambda c, a, b: c * a + (1 - c) * b,
     args(booleans(3, 4), normal(3, 4), normal(4)))
case("where_scalar_branch", lambda c, a: gc.where(c, a, 0.0), lambda c, a: c * a,
     args(booleans(3, 4), normal(3, 4)))
case("where_from_compare", lambda a, b: gc.where(gc.greater(a, b), a * 2.0, b),
     lambda a, b: np.where(a > b, 2 * a, b), apart((3, 4), (3, 4)))
case("clip", lambda a: gc.clip(a, -0.5, 0.5), lambda a: np.minimum(np.maximum(a, -0.5), 0.5),
     args(avoiding(3, 4, points=(-0.5, 0.5))))
case("clip_value_bounds", gc.clip,
     lambda a, lo, hi: np.where(a < lo, lo, np.where(a > hi, hi, a)), clip_bounds((3, 4)))
case("clip_broadcast_bounds", gc.clip,
     lambda a, lo, hi: np.where(a < lo, lo, np.where(a > hi, hi, a)),
     lambda rng: [avoiding(3, 4, points=(-0.7, 0.4))(rng), np.full((3, 1), -0.7),
                  np.full((4,), 0.4)])
case("clip_inverted_bounds", gc.clip, lambda a, lo, hi: hi + 0.0 * a,
     clip_bounds((3, 4), inverted=True))
case("clip_no_lower_bound", lambda a: gc.clip(a, None, 0.5), lambda a: np.where(a > 0.5, 0.5, a),
     args(avoiding(3, 4, points=(0.5,))))
case("clip_no_upper_bound", lambda a: gc.clip(a, -0.5, None),
     lambda a: np.where(a < -0.5, -0.5, a), args(avoiding(3, 4, points=(-0.5,))))
case("clip_int", lambda y: gc.clip(y, 1, 3), lambda y: np.where(y < 1, 1, np.where(y > 3, 3, y)),
     args(labels(3, 4, classes=6)))
# casts: float <-> float keeps a gradient, float -> int truncates and has none
case("cast_roundtrip",
     lambda a: gc.cast(gc.cast(a, "float64" if a.dtype == "float32" else "float32"), a.dtype),
     lambda a: a.astype(np.float32).astype(np.float64), args(normal(3, 4)),
     # The function is the identity up to float32 rounding (relative 6e-8 of x): it is
     # linear, so a large h has no truncation error and divides that rounding noise down
     # to ~1e-7 of the derivative (measured 6.7e-8 over 10 seeds).
     h=0.25, grad_rtol=5e-7)
case("cast_to_int", lambda a: gc.cast(a, "int32"), lambda a: np.trunc(a).astype(np.int32),
     args(normal(3, 4, scale=4.0)))
case("cast_int_to_float", lambda a, y: a * gc.cast(y, a.dtype), lambda a, y: a * y,
     args(normal(3, 4), labels(3, 4, classes=5)))
case("astype", lambda a: a.astype("int64"), lambda a: np.trunc(a).astype(np.int64),
     args(normal(3, 4, scale=4.0)))
# comparisons: bool results, no gradient
case("greater", gc.greater, lambda a, b: a > b, apart((3, 4), (4,)))
case("greater_operator", lambda a, b: a > b, lambda a, b: b < a, apart((3, 4), (3, 4)))
case("less", gc.less, lambda a, b: a < b, apart((3, 1), (1, 4)))
case("less_operator_scalar", lambda a: a < 0.5, lambda a: a < 0.5,
     args(lambda rng: rng.choice([-1.0, 2.0], (3, 4))))
case("equal", gc.equal, lambda a, b: a == b, with_ties((3, 4)), grad="zero")
case("not_equal", gc.not_equal, lambda a, b: ~(a == b), with_ties((3, 4)), grad="zero")
case("not_equal_operator", lambda a, b: a != b, lambda a, b: (a < b) | (a > b),
     with_ties((3, 4)), grad="zero")
case("greater_equal", gc.greater_equal, lambda a, b: ~(a < b), with_ties((3, 4)), grad="zero")
case("greater_equal_operator", lambda a, b: a >= b, lambda a, b: (a > b) | (a == b),
     with_ties((3, 4)), grad="zero")
case("less_equal", gc.less_equal, lambda a, b: ~(a > b), with_ties((3, 4)), grad="zero")
case("less_equal_operator_rscalar", lambda a: 0.5 <= a, lambda a: ~(a < 0.5),
     args(lambda rng: rng.choice([-1.0, 0.5, 2.0], (3, 4))), grad="zero")
case("stop_gradient", gc.stop_gradient, lambda a: a.copy(), args(normal(3, 4)), grad="zero")
case("stop_gradient_in_expression", lambda a: a * gc.stop_gradient(a),
     lambda a: a * a, args(normal(3, 4)), grad="closed_form")

# reductions: every axis form, with and without keepdims
NP_REDUCE = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min}
for op_name in ("sum", "mean", "max", "min"):
    for axis in (None, 0, 1, -1, (0, 2), (-1, 0), (0, 1, 2)):
        for keepdims in (False, True):
            gc_fn = getattr(gc, op_name)
            np_fn = NP_REDUCE[op_name]
            data = args(distinct(2, 3, 4)) if op_name in ("max", "min") else args(normal(2, 3, 4))
            case(f"{op_name}-axis={axis}-keepdims={keepdims}",
                 lambda a, f=gc_fn, ax=axis, kd=keepdims: f(a, axis=ax, keepdims=kd),
                 lambda a, f=np_fn, ax=axis, kd=keepdims: np.asarray(f(a, axis=ax, keepdims=kd)),
                 data)
case("sum_method", lambda a: a.sum(axis=1), lambda a: a[:, 0] + a[:, 1] + a[:, 2],
     args(normal(4, 3)))
case("mean_method", lambda a: a.mean(), lambda a: np.asarray(np.sum(a) / a.size),
     args(normal(4, 3)))

# matrix products
case("matmul", lambda a, b: a @ b, lambda a, b: np.einsum("ik,kj->ij", a, b),
     args(normal(3, 4), normal(4, 5)))
case("matmul_batched", gc.matmul, lambda a, b: np.einsum("bik,bkj->bij", a, b),
     args(normal(2, 3, 4), normal(2, 4, 5)))
case("matmul_batch_broadcast", gc.matmul,
     lambda a, b: np.einsum("xik,ykj->xyij", a[:, 0], b),
     args(normal(2, 1, 3, 4), normal(5, 4, 2)))
case("matmul_matrix_times_batch", gc.matmul, lambda a, b: np.einsum("ik,bkj->bij", a, b),
     args(normal(3, 4), normal(2, 4, 5)))
case("matmul_batch_times_matrix", gc.matmul, lambda a, b: np.einsum("bik,kj->bij", a, b),
     args(normal(2, 3, 4), normal(4, 5)))

# data movement
case("reshape", lambda a: gc.reshape(a, (6, 4)), lambda a: a.reshape(6, 4),
     args(normal(2, 3, 4)))
case("reshape_infer", lambda a: a.reshape(4, -1, 2), lambda a: a.reshape(4, 3, 2),
     args(normal(2, 3, 4)))
case("reshape_flat", lambda a: a.reshape((-1,)), lambda a: a.ravel(), args(normal(2, 3, 4)))
case("transpose", gc.transpose, lambda a: np.einsum("ijk->kji", a), args(normal(2, 3, 4)))
case("transpose_perm", lambda a: gc.transpose(a, (1, 0, 2)),
     lambda a: np.einsum("ijk->jik", a), args(normal(2, 3, 4)))
case("transpose_negative_perm", lambda a: gc.transpose(a, (-1, 0, 1)),
     lambda a: np.einsum("ijk->kij", a), args(normal(2, 3, 4)))
case("T", lambda a: a.T, lambda a: np.einsum("ij->ji", a), args(normal(3, 4)))
case("swapaxes", lambda a: gc.swapaxes(a, 0, 2), lambda a: np.einsum("ijk->kji", a),
     args(normal(2, 3, 4)))
case("broadcast_to", lambda a: gc.broadcast_to(a, (2, 3, 4)),
     lambda a: a * np.ones((2, 3, 4)), args(normal(3, 1)))
case("broadcast_to_new_axes", lambda a: gc.broadcast_to(a, (3, 4)),
     lambda a: np.tile(a, (3, 1)), args(normal(4)))
case("broadcast_to_value", lambda a, b: gc.broadcast_to(a, b) * b,
     lambda a, b: a * b, args(normal(1, 4), normal(3, 4)))
case("concat", lambda a, b: gc.concat([a, b]), lambda a, b: np.vstack([a, b]),
     args(normal(2, 4), normal(3, 4)))
case("concat_last_axis", lambda a, b, c: gc.concat([a, b, c], axis=-1),
     lambda a, b, c: np.hstack([a, b, c]), args(normal(2, 3), normal(2, 1), normal(2, 2)))
case("concat_same_value", lambda a: gc.concat([a, a * 2.0], axis=1),
     lambda a: np.hstack([a, 2 * a]), args(normal(2, 3)))
case("stack", lambda a, b, c: gc.stack([a, b, c]), lambda a, b, c: np.array([a, b, c]),
     args(normal(2, 3), normal(2, 3), normal(2, 3)))
case("stack_last_axis", lambda a, b: gc.stack([a, b], axis=-1),
     lambda a, b: np.concatenate([a[..., None], b[..., None]], axis=-1),
     args(normal(2, 3), normal(2, 3)))
case("squeeze", lambda a: gc.squeeze(a, 1), lambda a: a[:, 0, :], args(normal(3, 1, 4)))
case("squeeze_all", gc.squeeze, lambda a: a.reshape(3), args(normal(1, 3, 1)))
case("expand_dims", lambda a: gc.expand_dims(a, 0), lambda a: a[None], args(normal(3, 4)))
case("expand_dims_last", lambda a: gc.expand_dims(a, -1), lambda a: a[..., None],
     args(normal(3, 4)))
case("expand_dims_tuple", lambda a: gc.expand_dims(a, (0, 2)), lambda a: a[None, :, None],
     args(normal(3, 4)))

# basic indexing: the expectation indexes the numpy array with the same key
INDEXES = {
    "rows": np.s_[1:3, :],
    "reverse": np.s_[::-1],
    "step_minus_two_int": np.s_[::-2, 1],
    "last": np.s_[-1],
    "int_int_int": np.s_[1, 2, 0],
    "newaxis_ellipsis": np.s_[None, 1:, ...],
    "ellipsis_int": np.s_[..., 2],
    "int_newaxis_step": np.s_[0, None, ::2],
    "negative_step_bounds": np.s_[3:0:-1],
    "negative_bounds": np.s_[-3:-1, ::-1, 0],
    "negative_step_negative_bounds": np.s_[:, -1:-6:-2],
    "ellipsis_slice_newaxis": np.s_[..., 1:2, None],
    "int_ellipsis_negative_int": np.s_[2, ..., -1],
    "out_of_range_slice_clamps": np.s_[2:10, -10:2],
}
for key_name, key in INDEXES.items():
    case(f"getitem-{key_name}", lambda a, k=key: a[k], lambda a, k=key: a[k],
         args(normal(4, 5, 3)))

# gathers: gradient is a scatter-add, repeated indices accumulate
case("take_repeated", lambda a, i: gc.take(a, i, axis=0), lambda a, i: np_take_along(a, i, 0),
     args(normal(5, 3), const_int([0, 2, 2, 4, 2])))
case("take_axis1_2d_indices", lambda a, i: gc.take(a, i, axis=1),
     lambda a, i: np_take_along(a, i, 1), args(normal(3, 5), const_int([[1, 1], [4, 0]])))
case("take_negative_axis_int32", lambda a, i: gc.take(a, i, axis=-1),
     lambda a, i: np_take_along(a, i, 2), args(normal(2, 3, 4), const_int([3, 3, 0], "int32")))
case("take_constant_indices", lambda a: gc.take(a, [1, 1, 0]),
     lambda a: np.stack([a[1], a[1], a[0]]), args(normal(3, 2)))
case("getitem_value_index", lambda a, i: a[i], lambda a, i: np_take_along(a, i, 0),
     args(normal(4, 3), labels(6, classes=4)))
# negative indices count from the end, as in numpy (-1 is the last row)
case("take_negative_wraps", lambda a, i: gc.take(a, i, axis=0),
     lambda a, i: np_take_along(a, i, 0), args(normal(5, 3), const_int([-1, 0, -5, 4, -1])))
case("take_negative_axis1_2d_indices", lambda a, i: gc.take(a, i, axis=1),
     lambda a, i: np_take_along(a, i, 1), args(normal(3, 5), const_int([[-1, 4], [-5, 0]])))
case("getitem_negative_value_index", lambda a, i: a[i], lambda a, i: np_take_along(a, i, 0),
     args(normal(4, 3), const_int([-1, -4, 2, -1], "int32")))
case("one_hot", lambda y: gc.one_hot(y, 4), lambda y: np_one_hot(y, 4),
     args(labels(5, classes=4)))
case("one_hot_int32_2d", lambda y: gc.one_hot(y, 3), lambda y: np_one_hot(y, 3),
     args(labels(2, 3, classes=3, dtype="int32")))
case("one_hot_times_x", lambda a, y: a * gc.one_hot(y, 4), lambda a, y: a * np_one_hot(y, 4),
     args(normal(5, 4), labels(5, classes=4)))

# softmax family (any axis) and losses
for axis in (-1, 0, 1):
    case(f"softmax-axis={axis}", lambda a, ax=axis: gc.softmax(a, axis=ax),
         lambda a, ax=axis: np_softmax(a, ax), args(normal(2, 3, 4, scale=2.0)))
    case(f"log_softmax-axis={axis}", lambda a, ax=axis: gc.log_softmax(a, axis=ax),
         lambda a, ax=axis: np_log_softmax(a, ax), args(normal(2, 3, 4, scale=2.0)))
for axis, keepdims in ((-1, False), (0, False), ((0, 2), False), (None, False), (1, True),
                       ((0, 1), True)):
    case(f"logsumexp-axis={axis}-keepdims={keepdims}",
         lambda a, ax=axis, kd=keepdims: gc.logsumexp(a, axis=ax, keepdims=kd),
         lambda a, ax=axis, kd=keepdims: np_logsumexp(a, ax, kd),
         args(normal(2, 3, 4, scale=2.0)))
case("softmax_cross_entropy", gc.softmax_cross_entropy, np_cross_entropy,
     args(normal(5, 4, scale=2.0), labels(5, classes=4)))
case("softmax_cross_entropy_3d_int32", gc.softmax_cross_entropy, np_cross_entropy,
     args(normal(2, 3, 4, scale=2.0), labels(2, 3, classes=4, dtype="int32")))
case("softmax_cross_entropy_smoothing",
     lambda a, y: gc.softmax_cross_entropy(a, y, label_smoothing=0.1),
     lambda a, y: np_smoothed_cross_entropy(a, y, 0.1),
     args(normal(5, 4, scale=2.0), labels(5, classes=4)))
case("softmax_cross_entropy_ignore_index",
     lambda a, y: gc.softmax_cross_entropy(a, y, ignore_index=-100),
     lambda a, y: np_smoothed_cross_entropy(a, y, 0.0, -100),
     args(normal(6, 4, scale=2.0), labels_with_ignored(6, classes=4)))
case("softmax_cross_entropy_smoothing_ignore_3d",
     lambda a, y: gc.softmax_cross_entropy(a, y, label_smoothing=0.25, ignore_index=2),
     lambda a, y: np_smoothed_cross_entropy(a, y, 0.25, 2),
     args(normal(2, 3, 4, scale=2.0), labels(2, 3, classes=4, dtype="int32")))
case("softmax_cross_entropy_mean_ignore",
     lambda a, y: gc.softmax_cross_entropy(a, y, ignore_index=-100, reduction="mean"),
     lambda a, y: np.asarray(np.sum(np_smoothed_cross_entropy(a, y, 0.0, -100))
                             / np.count_nonzero(y != -100)),
     args(normal(6, 4, scale=2.0), labels_with_ignored(6, classes=4)))
case("softmax_cross_entropy_sum",
     lambda a, y: gc.softmax_cross_entropy(a, y, label_smoothing=0.1, reduction="sum"),
     lambda a, y: np.asarray(np.sum(np_smoothed_cross_entropy(a, y, 0.1))),
     args(normal(5, 4, scale=2.0), labels(5, classes=4)))
case("binary_cross_entropy_with_logits", gc.binary_cross_entropy_with_logits,
     np_bce_with_logits, args(normal(4, 3, scale=3.0), unit(4, 3)))
case("binary_cross_entropy_with_logits_mean",
     lambda a, t: gc.binary_cross_entropy_with_logits(a, t, reduction="mean"),
     lambda a, t: np.asarray(np.sum(np_bce_with_logits(a, t)) / a.size),
     args(normal(4, 3, scale=3.0), unit(3)))
case("binary_cross_entropy_with_logits_scalar_target",
     lambda a: gc.binary_cross_entropy_with_logits(a, 1.0, reduction="sum"),
     lambda a: np.asarray(np.sum(np_bce_with_logits(a, 1.0))), args(normal(4, 3, scale=3.0)))
case("mse", gc.mse, lambda p, t: np.asarray(np.sum((p - t) ** 2) / p.size),
     args(normal(4, 3), normal(4, 3)))
case("mse_broadcast_target", gc.mse, lambda p, t: np.asarray(np.sum((p - t) ** 2) / p.size),
     args(normal(4, 3), normal(3)))
case("mse_scalar_target", lambda p: gc.mse(p, 0.5),
     lambda p: np.asarray(np.sum((p - 0.5) ** 2) / p.size), args(normal(4, 3)))

# statistics: numpy's var/std (ddof 0 by default; PyTorch's default is ddof=1)
for axis, keepdims, ddof in ((None, False, 0), (1, False, 0), (-1, True, 1), ((0, 2), False, 1),
                             ((0, 1, 2), True, 0)):
    for op_name in ("var", "std"):
        gc_fn, np_fn = getattr(gc, op_name), getattr(np, op_name)
        case(f"{op_name}-axis={axis}-keepdims={keepdims}-ddof={ddof}",
             lambda a, f=gc_fn, ax=axis, kd=keepdims, dd=ddof:
                 f(a, axis=ax, keepdims=kd, ddof=dd),
             lambda a, f=np_fn, ax=axis, kd=keepdims, dd=ddof:
                 np.asarray(f(a, axis=ax, keepdims=kd, ddof=dd)),
             args(normal(2, 3, 4)))
case("var_method_chain", lambda a: gc.std(a * 2.0, axis=0) + gc.var(a, axis=0),
     lambda a: 2.0 * np.sqrt(np.mean((a - a.mean(0)) ** 2, axis=0)) + np.var(a, axis=0),
     args(normal(5, 3)))
# argmax / argmin: int64 indices, no gradient (ties: test_argmax_first_occurrence_and_nan)
for op_name in ("argmax", "argmin"):
    gc_fn, np_fn = getattr(gc, op_name), getattr(np, op_name)
    for axis, keepdims in ((None, False), (0, False), (1, True), (-1, False), (None, True)):
        case(f"{op_name}-axis={axis}-keepdims={keepdims}",
             lambda a, f=gc_fn, ax=axis, kd=keepdims: f(a, axis=ax, keepdims=kd),
             lambda a, f=np_fn, ax=axis, kd=keepdims:
                 np.asarray(f(a, axis=ax, keepdims=kd)),
             args(distinct(2, 3, 4)), grad="zero")
# running sums: the oracle multiplies by a triangle of ones (independent of cumsum)
case("cumsum-axis=1", lambda a: gc.cumsum(a, 1), lambda a: np_running_sum(a, 1),
     args(normal(2, 5, 3)))
case("cumsum-axis=0", lambda a: gc.cumsum(a, axis=0), lambda a: np_running_sum(a, 0),
     args(normal(4, 3)))
case("cumsum-axis=-1", lambda a: gc.cumsum(a, -1), lambda a: np_running_sum(a, 2),
     args(normal(2, 3, 6)))
case("cumsum-flat", gc.cumsum, lambda a: np_running_sum(a.reshape(-1), 0), args(normal(3, 4)))
case("cumsum_int32", lambda y: gc.cumsum(y, 1),
     lambda y: np_running_sum(y.astype(np.float64), 1).astype(np.int64),
     args(labels(3, 4, classes=7, dtype="int32")))
case("cumsum_squared", lambda a: gc.cumsum(a * a, 0) * a, lambda a: np_running_sum(a * a, 0) * a,
     args(normal(5, 2)))
# gathers along an axis (numpy's take_along_axis): negative, repeated, broadcast indices
case("take_along_axis", lambda a, i: gc.take_along_axis(a, i, 1),
     lambda a, i: np_pick_along(a, i, 1),
     args(normal(3, 5), const_int([[0, 4, 4], [-1, 2, 0], [3, 3, 3]])))
case("take_along_axis_axis0", lambda a, i: gc.take_along_axis(a, i, axis=0),
     lambda a, i: np_pick_along(a, i, 0),
     args(normal(4, 3), const_int([[1, 1, 0], [3, -4, 2]])))
case("take_along_axis_broadcast", lambda a, i: gc.take_along_axis(a, i, -1),
     lambda a, i: np_pick_along(a, np.broadcast_to(i, (2, 3, 2)), 2),
     args(normal(2, 3, 4), const_int([[[1, 3]], [[0, 0]]])))
case("take_along_axis_flat", lambda a: gc.take_along_axis(a, [5, 0, 5, 11], None),
     lambda a: a.reshape(-1)[[5, 0, 5, 11]], args(normal(3, 4)))
case("take_along_axis_argmax", lambda a: gc.take_along_axis(
         a, gc.expand_dims(gc.argmax(a, 1), 1), 1),
     lambda a: np.max(a, axis=1, keepdims=True), args(distinct(3, 4)))
# pad: numpy's pad_width forms and modes
case("pad_constant", lambda a: gc.pad(a, ((1, 2), (0, 3)), constant_values=0.5),
     lambda a: np_pad_constant(a, ((1, 2), (0, 3)), 0.5), args(normal(3, 4)))
case("pad_int_width", lambda a: gc.pad(a, 1), lambda a: np_pad_constant(a, ((1, 1),) * 3, 0.0),
     args(normal(2, 3, 2)))
case("pad_pair_width", lambda a: gc.pad(a, (2, 1), constant_values=-1.0),
     lambda a: np_pad_constant(a, ((2, 1), (2, 1)), -1.0), args(normal(3, 2)))
case("pad_edge", lambda a: gc.pad(a, ((2, 1), (1, 2)), mode="edge"),
     lambda a: np.pad(a, ((2, 1), (1, 2)), mode="edge"), args(normal(3, 4)))
case("pad_reflect", lambda a: gc.pad(a, ((0, 0), (3, 2)), mode="reflect"),
     lambda a: np.concatenate([a[:, [3, 2, 1]], a, a[:, [2, 1]]], axis=1), args(normal(2, 4)))
case("pad_symmetric", lambda a: gc.pad(a, (2, 3), mode="symmetric"),
     lambda a: np.pad(a, (2, 3), mode="symmetric"), args(normal(4, 3)))
case("pad_wrap", lambda a: gc.pad(a, ((1, 5),), mode="wrap"),
     lambda a: np.concatenate([a[-1:], a, a, a[:1]]), args(normal(4)))
# arange (a constant), tril/triu on the last two axes
case("arange_float", lambda a: a * gc.arange(a, 0.5, 2.0, 0.5),
     lambda a: a * np.array([0.5, 1.0, 1.5]), args(normal(2, 3)))
case("arange_int", lambda y: y * gc.arange(y.graph, 4),
     lambda y: y * np.array([0, 1, 2, 3]), args(labels(3, 4, classes=5)))
for k in (0, 1, -2):
    case(f"tril-k={k}", lambda a, k=k: gc.tril(a, k), lambda a, k=k: np_triangle(a, k, True),
         args(normal(2, 3, 4)))
    case(f"triu-k={k}", lambda a, k=k: gc.triu(a, k=k), lambda a, k=k: np_triangle(a, k, False),
         args(normal(4, 3)))
case("tril_vector", gc.tril, lambda a: np_triangle(np.broadcast_to(a, (3, 3)), 0, True),
     args(normal(3)))
# matmul with 1-D operands (numpy: a vector is a row on the left, a column on the right)
case("matmul_vector_matrix", lambda a, b: a @ b, lambda a, b: np.einsum("k,kj->j", a, b),
     args(normal(4), normal(4, 3)))
case("matmul_matrix_vector", gc.matmul, lambda a, b: np.einsum("ik,k->i", a, b),
     args(normal(3, 4), normal(4)))
case("matmul_vector_vector", gc.matmul, lambda a, b: np.asarray(np.einsum("k,k->", a, b)),
     args(normal(4), normal(4)))
case("matmul_batch_vector", gc.matmul, lambda a, b: np.einsum("bik,k->bi", a, b),
     args(normal(2, 3, 4), normal(4)))
case("matmul_vector_batch", gc.matmul, lambda a, b: np.einsum("k,bkj->bj", a, b),
     args(normal(3), normal(2, 3, 5)))


def np_scan_rnn(a: np.ndarray, h: np.ndarray, reverse: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    """h_t = tanh(h_{t-1} / 2 + a_t), y_t = h_t * a_t over axis 0 of `a`."""
    ys = np.zeros_like(a)
    for t in (range(len(a) - 1, -1, -1) if reverse else range(len(a))):
        h = np.tanh(h * 0.5 + a[t])
        ys[t] = h * a[t]
    return ys, h


def scan_rnn(a: gc.Value, h: gc.Value, reverse: bool = False) -> tuple[gc.Value, gc.Value]:
    def cell(c: gc.Value, x: gc.Value) -> tuple[gc.Value, gc.Value]:
        new = gc.tanh(c * 0.5 + x)
        return new, new * x

    final, ys = gc.scan(cell, h, a, reverse=reverse)
    return ys, final


case("scan-ys", lambda a, h: scan_rnn(a, h)[0], lambda a, h: np_scan_rnn(a, h)[0],
     args(normal(4, 3), normal(3)))
case("scan-carry-reverse", lambda a, h: scan_rnn(a, h, True)[1],
     lambda a, h: np_scan_rnn(a, h, True)[1], args(normal(4, 2, 3), normal(2, 3)))

CASES_BY_ID = {c.id: c for c in CASES}
assert len(CASES_BY_ID) == len(CASES), "duplicate case ids"


def _case_arrays(c: Case, dtype: str, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, sum(map(ord, c.id))])
    return [a.astype(dtype) if a.dtype.kind == "f" else a for a in c.data(rng)]


def _build(c: Case, dtype: str, arrays: list[np.ndarray]) -> tuple[gc.Graph, list, gc.Value]:
    g = gc.Graph(c.id, dtype=dtype)
    inputs = [g.input(f"x{k}", a.shape, dtype=a.dtype) for k, a in enumerate(arrays)]
    return g, inputs, c.build(*inputs)


def _is_float(a: np.ndarray) -> bool:
    return a.dtype.kind == "f"


# -- 1. forward -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_forward_matches_numpy(c: Case, dtype: str) -> None:
    arrays = _case_arrays(c, dtype)
    _, inputs, out = _build(c, dtype, arrays)
    result = gc.evaluate(out, {v.name: a for v, a in zip(inputs, arrays)})
    oracle_in = [a.astype(np.float64) if _is_float(a) else a for a in arrays]
    expected = np.asarray(c.expect(*oracle_in))

    assert result.shape == expected.shape, (result.shape, expected.shape)
    assert out.shape == expected.shape, "declared shape differs from numpy's"
    if expected.dtype.kind == "f":
        # float results keep the tested precision (no silent promotion to float64)
        assert result.dtype == np.dtype(dtype)
        assert out.dtype == dtype
        scale = max([float(np.max(np.abs(expected), initial=0.0))]
                    + [float(np.max(np.abs(a))) for a in oracle_in if _is_float(a)])
        assert_arrays_match(result, expected, rtol=0.0, atol=FWD_TOL[dtype] * scale,
                            what=f"{c.id} {dtype}")
    else:
        assert result.dtype == expected.dtype, (result.dtype, expected.dtype)
        assert out.dtype == str(expected.dtype)
        np.testing.assert_array_equal(result, expected)


# -- 2. first order ---------------------------------------------------------------------

def _grad_setup(c: Case, seed: int = 0):
    arrays = _case_arrays(c, "float64", seed)
    g, inputs, out = _build(c, "float64", arrays)
    rng = np.random.default_rng([seed, 1, sum(map(ord, c.id))])
    if out.dtype != "float64":
        out = gc.cast(out, "float64")
    w = g.const(rng.standard_normal(out.shape))
    f = gc.sum(out * w)
    wrt = [v for v, a in zip(inputs, arrays) if _is_float(a)]
    at = [a for a in arrays if _is_float(a)]
    fixed = {v.name: a for v, a in zip(inputs, arrays) if not _is_float(a)}
    return f, wrt, at, fixed, rng


GRAD_CASES = [c for c in CASES if c.grad == "fd" and any(
    _is_float(a) for a in c.data(np.random.default_rng(0)))]
HVP_CASES = [c for c in GRAD_CASES if c.hvp]


@pytest.mark.parametrize("c", GRAD_CASES, ids=lambda c: c.id)
def test_gradient_matches_finite_differences(c: Case) -> None:
    f, wrt, at, fixed, rng = _grad_setup(c)
    check_grad_fd(f, wrt, at, rng, fixed=fixed, h=c.h, rtol=c.grad_rtol, what=c.id)


@pytest.mark.parametrize("c", HVP_CASES, ids=lambda c: c.id)
def test_second_order_matches_finite_differences(c: Case) -> None:
    f, wrt, at, fixed, rng = _grad_setup(c)
    check_hvp_fd(f, wrt, at, rng, fixed=fixed, h=c.h, what=c.id)


@pytest.mark.parametrize("c", [c for c in CASES if c.grad == "zero"], ids=lambda c: c.id)
def test_gradient_is_exactly_zero(c: Case) -> None:
    f, wrt, at, fixed, _ = _grad_setup(c)
    grads = gc.evaluate(gc.grad(f, wrt), {**fixed, **{v.name: a for v, a in zip(wrt, at)}})
    for gv, a in zip(grads, at):
        assert gv.shape == a.shape
        assert not np.any(gv), f"{c.id}: gradient should be zero, got {gv}"


def test_stop_gradient_in_expression_treats_the_stopped_factor_as_constant() -> None:
    """d/da sum(a * stop_gradient(a) * w) = a * w, not the 2 a w finite differences see."""
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    g = gc.Graph(dtype="float64")
    a = g.input("a", (3, 4))
    f = gc.sum(a * gc.stop_gradient(a) * g.const(w))
    grad_a = gc.evaluate(gc.grad(f, a), {"a": x})
    np.testing.assert_allclose(grad_a, x * w, rtol=1e-15, atol=0)
    assert not np.allclose(grad_a, 2 * x * w)


def test_every_op_is_in_the_table() -> None:
    """The public ops named in the spec all have rows (guards against silent omissions)."""
    ops = ("add sub mul div neg pow exp log sqrt rsqrt tanh sigmoid relu leaky_relu gelu "
           "gelu_tanh abs square maximum minimum where cast_roundtrip cast_to_int greater less "
           "equal sum mean max min matmul matmul_batch_broadcast reshape transpose broadcast_to "
           "concat stack squeeze expand_dims take_repeated one_hot softmax log_softmax "
           "logsumexp softmax_cross_entropy mse erf sign stop_gradient sin cos log1p expm1 "
           "softplus silu elu clip greater_equal less_equal not_equal "
           "binary_cross_entropy_with_logits var std argmax argmin "
           "cumsum take_along_axis pad_constant pad_reflect arange_float tril triu "
           "matmul_vector_vector matmul_batch_vector scan").split()
    prefixes = {c.id.split("-")[0] for c in CASES} | {c.id for c in CASES}
    missing = [op for op in ops if op not in prefixes]
    assert not missing, missing
    assert any(c.id.startswith("getitem-") for c in CASES)
    assert len(GRAD_CASES) > 100 and len(HVP_CASES) == len(GRAD_CASES)


# -- special behaviour not covered by the table -----------------------------------------

def test_extreme_tie_shares_gradient() -> None:
    """Tied maxima/minima share the gradient equally."""
    g = gc.Graph(dtype="float64")
    x = g.input("x", (2, 3))
    data = np.array([[1.0, 3.0, 3.0], [-2.0, -2.0, 0.5]])
    gmax, gmin = gc.evaluate([gc.grad(gc.max(x), x), gc.grad(gc.min(x, axis=1).sum(), x)],
                             {"x": data})
    np.testing.assert_array_equal(gmax, [[0, 0.5, 0.5], [0, 0, 0]])
    np.testing.assert_array_equal(gmin, [[1, 0, 0], [0.5, 0.5, 0]])


def test_maximum_minimum_ties_split_the_gradient() -> None:
    """On ties each operand of maximum/minimum gets half the gradient (PyTorch and JAX)."""
    g = gc.Graph(dtype="float64")
    a, b = g.input("a", (3,)), g.input("b", (3,))
    feeds = {"a": [1.0, 2.0, 3.0], "b": [1.0, 5.0, 0.0]}
    ga, gb = gc.evaluate(gc.grad(gc.sum(gc.maximum(a, b)), [a, b]), feeds)
    np.testing.assert_array_equal(ga, [0.5, 0.0, 1.0])
    np.testing.assert_array_equal(gb, [0.5, 1.0, 0.0])
    ga, gb = gc.evaluate(gc.grad(gc.sum(gc.minimum(a, b)), [a, b]), feeds)
    np.testing.assert_array_equal(ga, [0.5, 1.0, 0.0])
    np.testing.assert_array_equal(gb, [0.5, 0.0, 1.0])


def test_pow_gradient_at_zero_base_matches_pytorch() -> None:
    """d(x**y)/dx = 0 where y = 0 (0 ** 0 included); d(x**y)/dy = 0 at x = 0 for y >= 0.
    Expected values as torch.pow's backward gives them (written out by hand): elsewhere the
    textbook y x**(y-1) and x**y log x, infinite where the derivative is (y < 1 at 0)."""
    g = gc.Graph(dtype="float64")
    x, y = g.input("x", (7,)), g.input("y", (7,))
    gx, gy = gc.evaluate(gc.grad(gc.sum(x ** y), [x, y]),
                         {"x": [0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 3.0],
                          "y": [2.0, 0.0, 1.0, 0.5, 0.0, -1.0, 2.0]})
    np.testing.assert_array_equal(gx, [0.0, 0.0, 1.0, np.inf, 0.0, -np.inf, 6.0])
    np.testing.assert_array_equal(gy[:5], [0.0, 0.0, 0.0, 0.0, np.log(2.0)])
    assert gy[5] == -np.inf  # 0 ** -1 = inf times log 0 = -inf, as torch gives
    np.testing.assert_allclose(gy[6], 9.0 * np.log(3.0), rtol=1e-15)
    # second order at the masked points stays finite: d2(0 ** y)/dy2 = 0 for y > 0
    xs, ys = g.input("xs", (2,)), g.input("ys", (2,))
    first = gc.grad(gc.sum(xs ** ys), ys)
    second = gc.grad(gc.sum(first), ys)
    np.testing.assert_array_equal(gc.evaluate(second, {"xs": [0.0, 0.0], "ys": [2.0, 0.5]}),
                                  [0.0, 0.0])


def test_clip_gradient_at_the_bounds_is_one() -> None:
    """torch.clamp's rule: the gradient passes where a_min <= x <= a_max, bounds included;
    a bound gets it where x is beyond it (a_max also where a_max < a_min)."""
    g = gc.Graph(dtype="float64")
    x, lo, hi = g.input("x", (5,)), g.input("lo", (5,)), g.input("hi", (5,))
    gx, glo, ghi = gc.evaluate(gc.grad(gc.sum(gc.clip(x, lo, hi)), [x, lo, hi]),
                               {"x": [-1.0, -0.5, 0.0, 0.5, 1.0],
                                "lo": [-0.5, -0.5, -0.5, -0.5, 2.0],
                                "hi": [0.5, 0.5, 0.5, 0.5, 1.5]})
    np.testing.assert_array_equal(gx, [0.0, 1.0, 1.0, 1.0, 0.0])
    np.testing.assert_array_equal(glo, [1.0, 0.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(ghi, [0.0, 0.0, 0.0, 0.0, 1.0])
    (gc_only,) = gc.evaluate(gc.grad(gc.sum(gc.clip(x, -0.5, 0.5)), [x]),
                             {"x": [-1.0, -0.5, 0.0, 0.5, 1.0]})
    np.testing.assert_array_equal(gc_only, [0.0, 1.0, 1.0, 1.0, 0.0])


def test_clip_follows_numpy_on_nan_and_missing_bounds() -> None:
    g = gc.Graph(dtype="float64")
    x = g.input("x", (4,))
    data = np.array([np.nan, -3.0, 0.2, 3.0])
    outs = gc.evaluate([gc.clip(x, -1.0, 1.0), gc.clip(x, None, 1.0), gc.clip(x, 2.0, 1.0)],
                       {"x": data})
    for got, want in zip(outs, [np.clip(data, -1.0, 1.0), np.clip(data, None, 1.0),
                                np.clip(data, 2.0, 1.0)]):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(gc.GraphError, match="clip: give a_min or a_max"):
        gc.clip(x, None, None)


def test_kinks_of_elu_softplus_and_silu() -> None:
    """At 0: elu's gradient is alpha (PyTorch and JAX), softplus's sigmoid(0) = 1/2,
    silu's 1/2; elu is continuous there."""
    g = gc.Graph(dtype="float64")
    x = g.input("x", (1,))
    feeds = {"x": [0.0]}
    d_elu, d_elu2, d_soft, d_silu = gc.evaluate(
        [gc.grad(gc.sum(gc.elu(x)), x), gc.grad(gc.sum(gc.elu(x, alpha=0.3)), x),
         gc.grad(gc.sum(gc.softplus(x)), x), gc.grad(gc.sum(gc.silu(x)), x)], feeds)
    np.testing.assert_array_equal(np.concatenate([d_elu, d_elu2, d_soft, d_silu]),
                                  [1.0, 0.3, 0.5, 0.5])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softplus_and_binary_cross_entropy_stable_for_huge_logits(dtype: str) -> None:
    """No overflow at |x| = 1e4: softplus(x) = x for large x and exp(x) (underflowing to 0)
    for very negative x; BCE's gradient sigmoid(x) - t stays exact."""
    g = gc.Graph(dtype=dtype)
    x, t = g.input("x", (4,)), g.input("t", (4,))
    data = np.array([-1e4, -50.0, 50.0, 1e4], dtype=dtype)
    targets = np.array([0.0, 1.0, 0.0, 1.0], dtype=dtype)
    soft, bce = gc.evaluate([gc.softplus(x), gc.binary_cross_entropy_with_logits(x, t)],
                            {"x": data, "t": targets}, check_finite=True)
    eps = float(np.finfo(dtype).eps)
    expected_soft = np.array([0.0, np.exp(-50.0), 50.0, 1e4])
    np.testing.assert_allclose(soft, expected_soft, rtol=4 * eps, atol=0)
    np.testing.assert_allclose(bce, [0.0, 50.0, 50.0, 0.0], rtol=4 * eps, atol=4 * eps)
    if dtype == "float64":
        grad = gc.grad(gc.sum(gc.binary_cross_entropy_with_logits(x, t)), x)
        got = gc.evaluate(grad, {"x": data, "t": targets})
        np.testing.assert_allclose(got, [0.0, -1.0, 1.0, 0.0], rtol=0, atol=2e-22)


def test_cross_entropy_ignored_rows_have_zero_gradient() -> None:
    """Ignored rows: loss 0 and no gradient; the others get softmax - smoothed target."""
    g = gc.Graph(dtype="float64")
    logits, y = g.input("logits", (3, 4)), g.input("y", (3,), dtype="int64")
    rng = np.random.default_rng(1)
    x, labels_in = rng.standard_normal((3, 4)), np.array([2, -100, 0])
    loss = gc.softmax_cross_entropy(logits, y, label_smoothing=0.2, ignore_index=-100)
    value, grad = gc.evaluate([loss, gc.grad(gc.sum(loss), logits)],
                              {"logits": x, "y": labels_in})
    assert value[1] == 0.0
    np.testing.assert_array_equal(grad[1], np.zeros(4))
    target = 0.8 * np_one_hot(np.array([2, 0]), 4) + 0.05
    np.testing.assert_allclose(grad[[0, 2]], np_softmax(x[[0, 2]], -1) - target,
                               rtol=1e-14, atol=1e-15)


def test_cross_entropy_mean_over_no_rows_is_nan_like_pytorch() -> None:
    g = gc.Graph(dtype="float64")
    logits, y = g.input("logits", (2, 3)), g.input("y", (2,), dtype="int64")
    mean_loss = gc.softmax_cross_entropy(logits, y, ignore_index=-1, reduction="mean")
    with np.errstate(invalid="ignore"):
        value = gc.evaluate(mean_loss, {"logits": np.zeros((2, 3)), "y": [-1, -1]})
    assert np.isnan(value)


def test_loss_arguments_are_checked() -> None:
    g = gc.Graph(dtype="float64")
    logits, y = g.input("logits", (2, 3)), g.input("y", (2,), dtype="int64")
    with pytest.raises(gc.GraphError, match="label_smoothing must be in"):
        gc.softmax_cross_entropy(logits, y, label_smoothing=1.5)
    with pytest.raises(gc.GraphError, match="reduction must be one of"):
        gc.softmax_cross_entropy(logits, y, reduction="avg")
    with pytest.raises(gc.GraphError, match="ignore_index must be an int"):
        gc.softmax_cross_entropy(logits, y, ignore_index=0.5)
    with pytest.raises(gc.GraphError, match="logits must be a floating-point"):
        gc.binary_cross_entropy_with_logits(y, 1)


def test_value_equality_is_identity_and_values_stay_hashable() -> None:
    """`==` between Values is Python identity (dict keys, `in`); gc.equal compares
    elementwise. `!=`, `>=`, `<=` build comparison nodes."""
    g = gc.Graph(dtype="float64")
    a, b = g.input("a", (2,)), g.input("b", (2,))
    assert (a == a) is True and (a == b) is False
    assert b in [a, b] and {a: 1, b: 2}[b] == 2 and len({a, b, a}) == 2
    for built, op in ((a != b, "not_equal"), (a >= b, "greater_equal"),
                      (a <= b, "less_equal"), (1.0 >= a, "less_equal")):
        assert isinstance(built, gc.Value) and built.op == op


def test_sign_has_a_zero_gradient() -> None:
    g = gc.Graph(dtype="float64")
    x = g.input("x", (3,))
    got = gc.evaluate(gc.grad(gc.sum(gc.sign(x) * x), x), {"x": [-2.0, 0.5, 3.0]})
    np.testing.assert_array_equal(got, [-1.0, 1.0, 1.0])


def test_op_without_gradient_rule_on_the_path_is_an_error() -> None:
    """A custom op declared without vjp, between the differentiated value and y, raises
    (naming the op and the line that built it) instead of giving a silent zero; used off
    the path (or behind stop_gradient, or only through a comparison) it is fine."""
    from graphc.ops import OPS
    from graphc.ops.custom import _CUSTOM

    square_no_grad = gc.custom_op("square_no_grad", ref=np.square, scalar="({0} * {0})")
    try:
        g = gc.Graph(dtype="float64")
        x, w = g.input("x", (3,)), g.input("w", (3,))
        y = gc.sum(square_no_grad(x) * w)
        with pytest.raises(gc.GraphError, match=r"square_no_grad .*built at .*test_ops\.py.*"
                                                r"no gradient rule"):
            gc.grad(y, x)
        np.testing.assert_array_equal(
            gc.evaluate(gc.grad(y, w), {"x": [1.0, 2.0, 3.0], "w": np.zeros(3)}), [1, 4, 9])
        stopped = gc.sum(gc.stop_gradient(square_no_grad(x)) * x)
        np.testing.assert_array_equal(gc.evaluate(gc.grad(stopped, x), {"x": [1.0, 2.0, 3.0]}),
                                      [1, 4, 9])
        compared = gc.sum(gc.where(square_no_grad(x) > 2.0, x, 0.0))
        np.testing.assert_array_equal(gc.evaluate(gc.grad(compared, x), {"x": [1.0, 2.0, 3.0]}),
                                      [0, 1, 1])
    finally:
        OPS.pop("square_no_grad", None)
        _CUSTOM.discard("square_no_grad")


def test_relu_and_abs_gradient_at_zero_is_zero() -> None:
    g = gc.Graph(dtype="float64")
    x = g.input("x", (3,))
    gr, ga = gc.evaluate([gc.grad(gc.sum(gc.relu(x)), x), gc.grad(gc.sum(gc.abs(x)), x)],
                         {"x": [-1.0, 0.0, 2.0]})
    np.testing.assert_array_equal(gr, [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(ga, [-1.0, 0.0, 1.0])


def test_scatter_add_gradient_counts_repeats() -> None:
    """take's gradient adds up repeated indices: d sum(take(x, idx)) / dx = counts."""
    g = gc.Graph(dtype="float64")
    x = g.input("x", (5, 2))
    idx = g.input("i", (6,), dtype="int64")
    gx = gc.evaluate(gc.grad(gc.sum(gc.take(x, idx)), x),
                     {"x": np.zeros((5, 2)), "i": [4, 0, 4, 4, 1, 0]})
    np.testing.assert_array_equal(gx[:, 0], [2, 1, 0, 0, 3])
    np.testing.assert_array_equal(gx[:, 1], [2, 1, 0, 0, 3])


def test_comparisons_give_no_gradient_even_when_used() -> None:
    """A comparison's boolean result carries no gradient; `where` routes it to branches."""
    g = gc.Graph(dtype="float64")
    a = g.input("a", (4,))
    f = gc.sum(gc.cast(gc.greater(a, 0.0), "float64") + gc.cast(gc.less(a, 1.0), "float64")
               + gc.cast(gc.equal(a, a), "float64"))
    (ga,) = gc.evaluate(gc.grad(f, [a]), {"a": [-1.0, 0.5, 2.0, 3.0]})
    np.testing.assert_array_equal(ga, np.zeros(4))
    with pytest.raises(gc.GraphError, match="floating point"):
        gc.grad(gc.sum(gc.greater(a, 0.0)), a)


# -- numerical stability: logits ~1e4 ---------------------------------------------------

LARGE = {
    "all_near_1e4": lambda rng: 1e4 + rng.standard_normal((4, 6)) * 3.0,
    "all_near_minus_1e4": lambda rng: -1e4 + rng.standard_normal((4, 6)) * 3.0,
    "spread_1e4": lambda rng: rng.uniform(-1e4, 1e4, (4, 6)),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", sorted(LARGE))
def test_softmax_family_stable_for_huge_logits(kind: str, dtype: str) -> None:
    """No overflow/NaN for logits ~1e4 (exp(1e4) overflows even float64). The oracle is
    the max-shifted numpy formula in float64. Tolerances: probabilities within 8 eps of the
    largest (x - max is exact for neighbouring logits, then exp/sum/div round a few
    times); log-space results (log_softmax, logsumexp, cross-entropy) may additionally
    round an intermediate of the logits' size, so they get 4 eps * max|logits| absolute
    (cross-entropy is computed as logsumexp - picked logit, two ~1e4 numbers)."""
    rng = np.random.default_rng(7)
    x64 = LARGE[kind](rng)
    x = x64.astype(dtype)
    xe = x.astype(np.float64)
    y = rng.integers(0, 6, 4)
    g = gc.Graph(dtype=dtype)
    logits, labels_in = g.input("logits", (None, 6)), g.input("y", (None,), dtype="int64")
    outs = [gc.softmax(logits), gc.softmax(logits, axis=0), gc.log_softmax(logits),
            gc.logsumexp(logits), gc.logsumexp(logits, axis=None),
            gc.softmax_cross_entropy(logits, labels_in)]
    expected = [np_softmax(xe, -1), np_softmax(xe, 0), np_log_softmax(xe, -1),
                np_logsumexp(xe, -1), np_logsumexp(xe, None), np_cross_entropy(xe, y)]
    results = gc.evaluate(outs, {"logits": x, "y": y}, check_finite=True)
    eps = float(np.finfo(dtype).eps)
    log_space_atol = 4 * eps * float(np.max(np.abs(xe)))
    atols = [0.0, 0.0, log_space_atol, log_space_atol, log_space_atol, log_space_atol]
    for k, (r, e, atol) in enumerate(zip(results, expected, atols)):
        assert r.dtype == np.dtype(dtype)
        assert np.all(np.isfinite(r)), f"output {k} not finite"
        assert_arrays_match(r, e, rtol=8 * eps, atol=atol, what=f"{kind} output {k}")
    # the softmax rows still sum to one
    np.testing.assert_allclose(results[0].sum(axis=-1), 1.0, rtol=8 * eps)


@pytest.mark.parametrize("kind", sorted(LARGE))
def test_softmax_family_gradients_stable_for_huge_logits(kind: str) -> None:
    """Gradients at logits ~1e4 are finite and equal the closed forms: d CE / d logits =
    softmax - one_hot, d sum(logsumexp) = softmax; d sum(log_softmax * w) =
    w - softmax * sum(w). (Finite differences cannot resolve h = 1e-6 steps on 1e4 values
    to 1e-7, so the check is against these exact formulas.) Tolerance: probabilities are
    exp(logits - logsumexp) with logsumexp rounded at the logits' size, i.e. relative error
    ~eps * max|logits| (2e-12 here); 8x that."""
    rng = np.random.default_rng(3)
    x = LARGE[kind](rng)
    y = rng.integers(0, 6, 4)
    w = rng.standard_normal((4, 6))
    g = gc.Graph(dtype="float64")
    logits, labels_in = g.input("logits", (None, 6)), g.input("y", (None,), dtype="int64")
    grads = [gc.grad(gc.sum(gc.softmax_cross_entropy(logits, labels_in)), logits),
             gc.grad(gc.sum(gc.logsumexp(logits)), logits),
             gc.grad(gc.sum(gc.log_softmax(logits) * g.const(w)), logits)]
    got = gc.evaluate(grads, {"logits": x, "y": y}, check_finite=True)
    p = np_softmax(x, -1)
    expected = [p - np_one_hot(y, 6), p, w - p * w.sum(axis=-1, keepdims=True)]
    for k, (r, e) in enumerate(zip(got, expected)):
        rtol = 8 * float(np.finfo(np.float64).eps) * float(np.max(np.abs(x)))
        assert_arrays_match(r, e, rtol=rtol, atol=0.0, what=f"{kind} gradient {k}")


def test_fd_helper_selftest() -> None:
    """The finite-difference helper itself: exact for a quadratic along any direction."""
    from tests.helpers import numeric_directional_derivative, numeric_gradient

    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 3))
    x, v = rng.standard_normal(3), rng.standard_normal(3)
    fd = numeric_directional_derivative(lambda z: z @ a @ z, x, v)
    assert abs(fd - (a + a.T) @ x @ v) < 1e-8
    np.testing.assert_allclose(numeric_gradient(lambda z: z @ a @ z, x), (a + a.T) @ x,
                               rtol=1e-8, atol=1e-9)
    two = numeric_directional_derivative(lambda p, q: np.sum(p * q), [x, x], [v, v])
    assert abs(two - 2 * x @ v) < 1e-8


# -- statistics, gathers and layout: behaviour the table does not reach ------------------

def test_argmax_first_occurrence_and_nan() -> None:
    """numpy's rules: ties go to the first occurrence; a NaN is the extreme (its first)."""
    g = gc.Graph(dtype="float64")
    x = g.input("x", (4, 4))
    data = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, np.nan, 5.0, np.nan],
                     [-1.0, -1.0, -1.0, -1.0], [0.0, -2.0, 4.0, -2.0]])
    outs = gc.evaluate([gc.argmax(x, 1), gc.argmin(x, 1), gc.argmax(x), gc.argmin(x, 0)],
                       {"x": data})
    with np.errstate(invalid="ignore"):
        expected = [np.argmax(data, 1), np.argmin(data, 1), np.argmax(data),
                    np.argmin(data, 0)]
    for got, want in zip(outs, expected):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(outs[0], [1, 1, 0, 2])
    np.testing.assert_array_equal(outs[1], [3, 1, 0, 1])


def test_cumsum_gradient_is_the_reverse_running_sum() -> None:
    g = gc.Graph(dtype="float64")
    x = g.input("x", (2, 4))
    w = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, 0.0, -1.0, 2.0]])
    (gx,) = gc.evaluate(gc.grad(gc.sum(gc.cumsum(x, 1) * g.const(w)), [x]),
                        {"x": np.zeros((2, 4))})
    np.testing.assert_array_equal(gx, [[10.0, 9.0, 7.0, 4.0], [1.5, 1.0, 1.0, 2.0]])


def test_take_along_axis_gradient_accumulates_repeats() -> None:
    g = gc.Graph(dtype="float64")
    x = g.input("x", (2, 3))
    i = g.input("i", (2, 4), dtype="int64")
    (gx,) = gc.evaluate(gc.grad(gc.sum(gc.take_along_axis(x, i, 1)), [x]),
                        {"x": np.zeros((2, 3)), "i": [[2, 2, -1, 0], [1, 1, 1, 1]]})
    np.testing.assert_array_equal(gx, [[1.0, 0.0, 3.0], [0.0, 4.0, 0.0]])


def test_take_along_axis_index_out_of_range() -> None:
    g = gc.Graph(dtype="float64")
    x, i = g.input("x", (2, 3)), g.input("i", (2, 1), dtype="int64")
    out = gc.take_along_axis(x, i, 1)
    feeds = {"x": np.zeros((2, 3)), "i": np.array([[0], [3]])}
    with pytest.raises(gc.GraphError, match=r"take_along_axis.*index out of range"):
        gc.evaluate(out, feeds)
    with pytest.raises(IndexError, match=r"take_along_axis .* out of range"):
        gc.compile([out])(**feeds)


def test_var_of_a_constant_row_and_ddof() -> None:
    """ddof=1 divides by n - 1 (PyTorch's default); a constant row has variance 0."""
    g = gc.Graph(dtype="float64")
    x = g.input("x", (2, 3))
    data = np.array([[2.0, 2.0, 2.0], [1.0, 2.0, 6.0]])
    v0, v1 = gc.evaluate([gc.var(x, axis=1), gc.var(x, axis=1, ddof=1)], {"x": data})
    np.testing.assert_allclose(v0, [0.0, 14.0 / 3.0], rtol=1e-15)
    np.testing.assert_allclose(v1, [0.0, 7.0], rtol=1e-15)


@pytest.mark.parametrize(("build", "message"), [
    (lambda x, i: gc.take_along_axis(x, i[0], 1), "same number|as many dimensions"),
    (lambda x, i: gc.take_along_axis(x, x, 1), "integers"),
    (lambda x, i: gc.pad(x, ((1, 1),) * 3), "pad_width"),
    (lambda x, i: gc.pad(x, -1), "non-negative"),
    (lambda x, i: gc.pad(x, 1, mode="median"), "mode 'median'"),
    (lambda x, i: gc.pad(x, ((1, 0), (0, 0))), "run-time size"),
    (lambda x, i: gc.tril(gc.sum(x)), "at least 1 dimension"),
    (lambda x, i: gc.triu(x.T), "known when the graph is built"),
    (lambda x, i: gc.argmax(x, axis=(0, 1)), "axis must be an int"),
    (lambda x, i: gc.argmin(x, axis=2), "out of range"),
    (lambda x, i: gc.cumsum(x, 5), "out of range"),
    (lambda x, i: gc.var(i), "floating-point"),
    (lambda x, i: gc.arange("graph", 3), "needs a Graph or a Value"),
    (lambda x, i: gc.arange(x, 0, 3, 0), "arange"),
])
def test_structural_ops_report_bad_arguments(build, message: str) -> None:
    """Each names the op, what is wrong, and the user's line."""
    g = gc.Graph(dtype="float64")
    x, i = g.input("x", (None, 4)), g.input("i", (None, 2), dtype="int64")
    with pytest.raises(gc.GraphError, match=message) as info:
        build(x, i)
    assert "test_ops.py" in str(info.value)


def test_run_time_batch_paths_equal_the_static_ones() -> None:
    """take_along_axis broadcasting over a run-time axis and constant padding next to one
    take other routes (a `where` broadcast, a gathered fill row) than with fixed sizes:
    values and gradients must be the same."""
    rng = np.random.default_rng(9)
    data = {"x": rng.standard_normal((3, 4, 5)), "i": rng.integers(-5, 5, (3, 1, 2))}
    weights = rng.standard_normal((1, 4, 2))
    results = []
    for batch in (3, None):
        g = gc.Graph(dtype="float64")
        x = g.input("x", (batch, 4, 5))
        i = g.input("i", (batch, 1, 2), dtype="int64")
        picked = gc.take_along_axis(x, i, 2)
        padded = gc.pad(x, ((0, 0), (2, 1), (0, 1)), constant_values=1.5)
        f = gc.sum(picked * g.const(weights)) + gc.sum(padded * padded)
        results.append(gc.evaluate([picked, padded, *gc.grad(f, [x])], data))
    for static, dynamic in zip(*results):
        np.testing.assert_array_equal(static, dynamic)
