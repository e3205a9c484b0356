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


def np_take_along(x, idx, axis):
    moved = np.moveaxis(x, axis, 0)
    out = np.stack([moved[i] for i in idx.reshape(-1)]).reshape(idx.shape + moved.shape[1:])
    return np.moveaxis(out, list(range(idx.ndim)), list(range(axis, axis + idx.ndim)))


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
case("mse", gc.mse, lambda p, t: np.asarray(np.sum((p - t) ** 2) / p.size),
     args(normal(4, 3), normal(4, 3)))
case("mse_broadcast_target", gc.mse, lambda p, t: np.asarray(np.sum((p - t) ** 2) / p.size),
     args(normal(4, 3), normal(3)))
case("mse_scalar_target", lambda p: gc.mse(p, 0.5),
     lambda p: np.asarray(np.sum((p - 0.5) ** 2) / p.size), args(normal(4, 3)))



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
           "logsumexp softmax_cross_entropy mse erf sign stop_gradient scan").split()
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


def test_maximum_tie_goes_to_first_operand() -> None:
    g = gc.Graph(dtype="float64")
    a, b = g.input("a", (3,)), g.input("b", (3,))
    ga, gb = gc.evaluate(gc.grad(gc.sum(gc.maximum(a, b) + gc.minimum(a, b)), [a, b]),
                         {"a": [1.0, 2.0, 3.0], "b": [1.0, 5.0, 0.0]})
    np.testing.assert_array_equal(ga, [2.0, 1.0, 1.0])
    np.testing.assert_array_equal(gb, [0.0, 1.0, 1.0])


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
