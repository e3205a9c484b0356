"""Elementwise primitives: numpy broadcasting, one scalar template each (fusable)."""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc.errors import GraphError, user_location
from graphc.ir import Node, Value, canonical_dtype, is_float
from graphc.ops.registry import InferError, broadcast_shapes, defop, lift, lift_pair, make


def _same_dtype(nodes: list[Node]) -> str:
    dtypes = {n.dtype for n in nodes}
    if len(dtypes) != 1:
        raise InferError("operand dtypes differ (" + " vs ".join(n.dtype for n in nodes)
                         + "); convert one with gc.cast")
    return nodes[0].dtype


def _arith(nodes: list[Node]) -> tuple:
    dtype = _same_dtype(nodes)
    if dtype == "bool":
        raise InferError("arithmetic on bool values; cast them to a number type first")
    return broadcast_shapes(*(n.shape for n in nodes)), dtype


def _float_arith(nodes: list[Node]) -> tuple:
    shape, dtype = _arith(nodes)
    if not is_float(dtype):
        raise InferError(f"needs floating-point operands, got {dtype}; cast with gc.cast")
    return shape, dtype


def _compare(nodes: list[Node]) -> tuple:
    _same_dtype(nodes)
    return broadcast_shapes(*(n.shape for n in nodes)), "bool"


def _unary_numeric(nodes: list[Node], **_: Any) -> tuple:
    return _arith(nodes)


def _unary_float(nodes: list[Node], **_: Any) -> tuple:
    return _float_arith(nodes)


def _where_infer(nodes: list[Node]) -> tuple:
    cond, a, b = nodes
    if cond.dtype != "bool":
        raise InferError(f"condition must be bool, got {cond.dtype}")
    dtype = _same_dtype([a, b])
    return broadcast_shapes(cond.shape, a.shape, b.shape), dtype


def _cast_infer(nodes: list[Node], dtype: str) -> tuple:
    return nodes[0].shape, dtype


def _zero_like(v: Value) -> Value:
    return v.graph.const(0, dtype=v.dtype)


def _zeros_of(v: Value) -> Value:
    from graphc.ops.views import zeros_like

    return zeros_like(v)


# -- declarations ----------------------------------------------------------------------

_add = defop("add", "elementwise", _arith, np.add, arity=2, scalar="({0} + {1})",
             vjp=lambda g, out, x, needs: (g, g))
_sub = defop("sub", "elementwise", _arith, np.subtract, arity=2, scalar="({0} - {1})",
             vjp=lambda g, out, x, needs: (g, neg(g) if needs[1] else None))
_mul = defop("mul", "elementwise", _arith, np.multiply, arity=2, scalar="({0} * {1})",
             vjp=lambda g, out, x, needs: (g * x[1] if needs[0] else None,
                                           g * x[0] if needs[1] else None))
_div = defop("div", "elementwise", _float_arith, np.divide, arity=2, scalar="({0} / {1})",
             vjp=lambda g, out, x, needs: (g / x[1] if needs[0] else None,
                                           neg(g * out / x[1]) if needs[1] else None))


def _both(p: Value, q: Value) -> Value:
    """Elementwise `p and q` of two bool values."""
    return where(p, q, p)


def _nonzero_const(v: Value) -> bool:
    """Whether `v` is a constant without zeros (so no mask is needed for it)."""
    return v.op == "const" and bool(np.all(v.node.attrs["value"] != 0))


def _pow_vjp(g: Value, out: Value, x: list[Value], needs: tuple) -> tuple:
    """PyTorch's and JAX's rule where the textbook one gives NaN: d(x**y)/dx = 0 at
    x = y = 0 and d(x**y)/dy = 0 at x = 0, y >= 0. Masked entries compute their formula on
    harmless stand-ins (1), so no NaN reaches the next order either."""
    a, b = x
    ga = gb = None
    if needs[0]:
        if _nonzero_const(b):
            ga = g * b * pow(a, b - 1)
        else:
            zero_case = _both(equal(b, 0), equal(a, 0))
            b_safe = where(zero_case, 1, b)
            ga = where(zero_case, 0, g * b_safe * pow(a, b_safe - 1))
    if needs[1]:
        zero_base = _both(equal(a, 0), greater_equal(b, 0))
        gb = where(zero_base, 0, g * out * log(where(zero_base, 1, a)))
    return ga, gb


_pow = defop("pow", "elementwise", _float_arith, np.power, arity=2, scalar="({0} ** {1})",
             vjp=_pow_vjp)
_neg = defop("neg", "elementwise", _unary_numeric, np.negative, arity=1, scalar="(-{0})",
             vjp=lambda g, out, x, needs: (neg(g),))
_exp = defop("exp", "elementwise", _unary_float, np.exp, arity=1, scalar="_exp({0})",
             vjp=lambda g, out, x, needs: (g * out,))
_log = defop("log", "elementwise", _unary_float, np.log, arity=1, scalar="_log({0})",
             vjp=lambda g, out, x, needs: (g / x[0],))
_sqrt = defop("sqrt", "elementwise", _unary_float, np.sqrt, arity=1, scalar="_sqrt({0})",
              vjp=lambda g, out, x, needs: (g / (out + out),))


def _rsqrt_ref(x: np.ndarray) -> np.ndarray:
    return np.reciprocal(np.sqrt(x))


_rsqrt = defop("rsqrt", "elementwise", _unary_float, _rsqrt_ref, arity=1,
               scalar="({T}(1) / _sqrt({0}))",
               vjp=lambda g, out, x, needs: (g * (out * out * out) * -0.5,))
_tanh = defop("tanh", "elementwise", _unary_float, np.tanh, arity=1, scalar="_tanh({0})",
              vjp=lambda g, out, x, needs: (g * (1 - out * out),))


def _expit_ref(x: np.ndarray) -> np.ndarray:
    from scipy.special import expit  # imported on first use: 25 ms off `import graphc`

    return expit(x)


def _erf_ref(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return erf(x)


_sigmoid = defop("sigmoid", "elementwise", _unary_float, _expit_ref, arity=1,
                 scalar="_sigmoid({0})",
                 vjp=lambda g, out, x, needs: (g * (out * (1 - out)),))
_ERF_SLOPE = 2.0 / np.sqrt(np.pi)
_erf = defop("erf", "elementwise", _unary_float, _erf_ref, arity=1, scalar="_erf({0})",
             vjp=lambda g, out, x, needs: (g * (exp(neg(x[0] * x[0])) * _ERF_SLOPE),))


_sin = defop("sin", "elementwise", _unary_float, np.sin, arity=1, scalar="_sin({0})",
             vjp=lambda g, out, x, needs: (g * cos(x[0]),))
_cos = defop("cos", "elementwise", _unary_float, np.cos, arity=1, scalar="_cos({0})",
             vjp=lambda g, out, x, needs: (neg(g * sin(x[0])),))
_log1p = defop("log1p", "elementwise", _unary_float, np.log1p, arity=1, scalar="_log1p({0})",
               vjp=lambda g, out, x, needs: (g / (x[0] + 1),))
_expm1 = defop("expm1", "elementwise", _unary_float, np.expm1, arity=1, scalar="_expm1({0})",
               vjp=lambda g, out, x, needs: (g * (out + 1),))


def _softplus_ref(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(x, x.dtype.type(0))


_softplus = defop("softplus", "elementwise", _unary_float, _softplus_ref, arity=1,
                  scalar="(({0} if {0} > {T}(0) else {T}(0)) + _log1p(_exp(-abs({0}))))",
                  vjp=lambda g, out, x, needs: (g * sigmoid(x[0]),))


def _elu_ref(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0, x, x.dtype.type(alpha) * np.expm1(np.minimum(x, 0)))


def _elu_vjp(g: Value, out: Value, x: list[Value], needs: tuple, alpha: float) -> tuple:
    # for x <= 0, d elu / dx = alpha * exp(x) = out + alpha (alpha at 0, as PyTorch and JAX)
    return (where(greater(x[0], 0), g, g * (out + alpha)),)


_elu = defop("elu", "elementwise", _unary_float, _elu_ref, arity=1, vjp=_elu_vjp,
             scalar="({0} if {0} > {T}(0) else {T}({alpha!r}) * _expm1({0}))")


def _relu_ref(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, x.dtype.type(0))


_relu = defop("relu", "elementwise", _unary_numeric, _relu_ref, arity=1,
              scalar="({T}(0) if {0} <= {T}(0) else {0})",
              vjp=lambda g, out, x, needs: (where(greater(x[0], 0), g, _zero_like(g)),))


def _leaky_ref(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0, x, x * x.dtype.type(alpha))


_leaky = defop("leaky_relu", "elementwise", _unary_float, _leaky_ref, arity=1,
               scalar="({0} if {0} > {T}(0) else {T}({alpha!r}) * {0})",
               vjp=lambda g, out, x, needs, alpha: (where(greater(x[0], 0), g, g * alpha),))
_abs = defop("abs", "elementwise", _unary_numeric, np.abs, arity=1, scalar="abs({0})",
             vjp=lambda g, out, x, needs: (g * sign(x[0]),))
_sign = defop("sign", "elementwise", _unary_numeric, np.sign, arity=1,
              scalar="({T}(1) if {0} > {T}(0) else ({T}(-1) if {0} < {T}(0) else {0}))",
              vjp=lambda g, out, x, needs: (_zeros_of(x[0]),))
_square = defop("square", "elementwise", _unary_numeric, np.square, arity=1,
                scalar="({0} * {0})",
                vjp=lambda g, out, x, needs: (g * (x[0] + x[0]),))


def _extreme_pair_vjp(g: Value, x: list[Value], needs: tuple, a_loses: Value,
                      b_loses: Value) -> tuple:
    """Gradients of maximum/minimum: all to the winner, half each on ties (PyTorch, JAX)."""
    tie = equal(x[0], x[1])
    half, zero = g * 0.5, _zero_like(g)
    return (where(a_loses, zero, where(tie, half, g)) if needs[0] else None,
            where(b_loses, zero, where(tie, half, g)) if needs[1] else None)


def _max_vjp(g: Value, out: Value, x: list[Value], needs: tuple) -> tuple:
    return _extreme_pair_vjp(g, x, needs, less(x[0], x[1]), greater(x[0], x[1]))


def _min_vjp(g: Value, out: Value, x: list[Value], needs: tuple) -> tuple:
    return _extreme_pair_vjp(g, x, needs, greater(x[0], x[1]), less(x[0], x[1]))


_maximum = defop("maximum", "elementwise", _arith, np.maximum, arity=2, vjp=_max_vjp,
                 scalar="({0} if ({0} >= {1} or {0} != {0}) else {1})")
_minimum = defop("minimum", "elementwise", _arith, np.minimum, arity=2, vjp=_min_vjp,
                 scalar="({0} if ({0} <= {1} or {0} != {0}) else {1})")


def _where_vjp(g: Value, out: Value, x: list[Value], needs: tuple) -> tuple:
    zero = _zero_like(g)
    return (None,
            where(x[0], g, zero) if needs[1] else None,
            where(x[0], zero, g) if needs[2] else None)


_where = defop("where", "elementwise", _where_infer, np.where, arity=3, vjp=_where_vjp,
               scalar="({1} if {0} else {2})")


def _clip_vjp(g: Value, out: Value, x: list[Value], needs: tuple) -> tuple:
    """PyTorch's clamp rule: x gets g where lo <= x <= hi (bounds included); lo where
    x < lo < hi; hi where x > hi or hi < lo (then the output is hi everywhere)."""
    v, lo, hi = x
    zero = _zero_like(g)
    return (where(_both(greater_equal(v, lo), less_equal(v, hi)), g, zero) if needs[0] else None,
            where(_both(less(v, lo), less(lo, hi)), g, zero) if needs[1] else None,
            where(greater(v, hi), g, where(less(hi, lo), g, zero)) if needs[2] else None)


_MAX_LO = "({0} if ({0} >= {1} or {0} != {0}) else {1})"  # maximum(x, lo), NaN propagating
_clip = defop("clip", "elementwise", _arith, np.clip, arity=3, vjp=_clip_vjp,
              scalar=f"({_MAX_LO} if ({_MAX_LO} <= {{2}} or {_MAX_LO} != {_MAX_LO}) "
                     "else {2})")


def _cast_ref(x: np.ndarray, dtype: str) -> np.ndarray:
    return x.astype(dtype)


def _cast_vjp(g: Value, out: Value, x: list[Value], needs: tuple, dtype: str) -> tuple:
    return (cast(g, x[0].dtype) if is_float(x[0].dtype) and is_float(dtype) else None,)


_cast = defop("cast", "elementwise", _cast_infer, _cast_ref, arity=1, vjp=_cast_vjp,
              scalar="{T}({0})")
_greater = defop("greater", "elementwise", _compare, np.greater, arity=2, scalar="({0} > {1})")
_less = defop("less", "elementwise", _compare, np.less, arity=2, scalar="({0} < {1})")
_equal = defop("equal", "elementwise", _compare, np.equal, arity=2, scalar="({0} == {1})")
_not_equal = defop("not_equal", "elementwise", _compare, np.not_equal, arity=2,
                   scalar="({0} != {1})")
_greater_equal = defop("greater_equal", "elementwise", _compare, np.greater_equal, arity=2,
                       scalar="({0} >= {1})")
_less_equal = defop("less_equal", "elementwise", _compare, np.less_equal, arity=2,
                    scalar="({0} <= {1})")
_stop = defop("stop_gradient", "elementwise", lambda nodes: (nodes[0].shape, nodes[0].dtype),
              lambda x: x.copy(), arity=1, scalar="{0}")


# -- public functions -----------------------------------------------------------------

def add(a: Any, b: Any) -> Value:
    """a + b, with numpy broadcasting."""
    return make("add", lift_pair(a, b, "add"))


def sub(a: Any, b: Any) -> Value:
    """a - b."""
    return make("sub", lift_pair(a, b, "sub"))


def mul(a: Any, b: Any) -> Value:
    """a * b."""
    return make("mul", lift_pair(a, b, "mul"))


def div(a: Any, b: Any) -> Value:
    """a / b (floating point)."""
    return make("div", lift_pair(a, b, "div"))


def pow(a: Any, b: Any) -> Value:
    """a ** b. Constant exponents 2, 0.5 and -0.5 become square, sqrt and rsqrt."""
    if isinstance(a, Value) and not isinstance(b, Value) and np.ndim(b) == 0:
        if b == 2:
            return square(a)
        if b == 1:
            return a
        if b == 0.5 and is_float(a.dtype):
            return sqrt(a)
        if b == -0.5 and is_float(a.dtype):
            return rsqrt(a)
    return make("pow", lift_pair(a, b, "pow"))


def neg(x: Value) -> Value:
    """-x."""
    return make("neg", [x])


def exp(x: Value) -> Value:
    """e ** x."""
    return make("exp", [x])


def log(x: Value) -> Value:
    """Natural logarithm."""
    return make("log", [x])


def sqrt(x: Value) -> Value:
    """Square root."""
    return make("sqrt", [x])


def rsqrt(x: Value) -> Value:
    """1 / sqrt(x)."""
    return make("rsqrt", [x])


def tanh(x: Value) -> Value:
    """Hyperbolic tangent."""
    return make("tanh", [x])


def sigmoid(x: Value) -> Value:
    """1 / (1 + exp(-x)), stable for large |x|."""
    return make("sigmoid", [x])


def erf(x: Value) -> Value:
    """The error function."""
    return make("erf", [x])


def sin(x: Value) -> Value:
    """Sine (radians)."""
    return make("sin", [x])


def cos(x: Value) -> Value:
    """Cosine (radians)."""
    return make("cos", [x])


def log1p(x: Value) -> Value:
    """log(1 + x), accurate for small |x|."""
    return make("log1p", [x])


def expm1(x: Value) -> Value:
    """exp(x) - 1, accurate for small |x|."""
    return make("expm1", [x])


def softplus(x: Value) -> Value:
    """log(1 + exp(x)), computed stably as max(x, 0) + log1p(exp(-|x|)) at every x (PyTorch's
    default threshold=20 returns x itself above 20); the gradient is sigmoid(x)."""
    return make("softplus", [x])


def silu(x: Value) -> Value:
    """x * sigmoid(x) (also called swish)."""
    return x * sigmoid(x)


def elu(x: Value, alpha: float = 1.0) -> Value:
    """x if x > 0 else alpha * (exp(x) - 1); the gradient at 0 is alpha (PyTorch, JAX)."""
    return make("elu", [x], alpha=float(alpha))


def relu(x: Value) -> Value:
    """max(x, 0); the gradient at 0 is 0."""
    return make("relu", [x])


def leaky_relu(x: Value, alpha: float = 0.01) -> Value:
    """x if x > 0 else alpha * x."""
    return make("leaky_relu", [x], alpha=float(alpha))


def abs(x: Value) -> Value:
    """|x|; the gradient at 0 is 0."""
    return make("abs", [x])


def sign(x: Value) -> Value:
    """-1, 0 or 1 (no gradient)."""
    return make("sign", [x])


def square(x: Value) -> Value:
    """x * x."""
    return make("square", [x])


def maximum(a: Any, b: Any) -> Value:
    """Elementwise maximum (NaN propagates); on ties each operand gets half the gradient."""
    return make("maximum", lift_pair(a, b, "maximum"))


def minimum(a: Any, b: Any) -> Value:
    """Elementwise minimum (NaN propagates); on ties each operand gets half the gradient."""
    return make("minimum", lift_pair(a, b, "minimum"))


def where(cond: Value, a: Any, b: Any) -> Value:
    """a where `cond` (bool) is true, else b."""
    if not isinstance(a, Value) and not isinstance(b, Value):
        a = lift(a, cond, "where") if not isinstance(cond, Value) else cond.graph.const(a)
        b = cond.graph.const(b, dtype=a.dtype)
    a, b = lift_pair(a, b, "where")
    return make("where", [cond, a, b])


def clip(x: Value, a_min: Any, a_max: Any) -> Value:
    """`x` limited to [a_min, a_max] like np.clip (bounds broadcast; None for no bound; if
    a_min > a_max the result is a_max). The gradient is 1 where a_min <= x <= a_max, the
    bounds included (PyTorch's clamp), and 0 outside."""
    if a_min is None and a_max is None:
        raise GraphError(f"clip: give a_min or a_max (or both); both are None\n"
                         f"  at {user_location()}")
    like = next((v for v in (x, a_min, a_max) if isinstance(v, Value)), None)
    if like is None:
        raise GraphError(f"clip: needs at least one graphc Value operand\n"
                         f"  at {user_location()}")
    x = lift(x, like, "clip")
    lo = lift(_unbounded(x, -1) if a_min is None else a_min, x, "clip")
    hi = lift(_unbounded(x, 1) if a_max is None else a_max, x, "clip")
    return make("clip", [x, lo, hi])


def _unbounded(x: Value, side: int) -> Any:
    """The dtype's -inf (side -1) or +inf (side 1); the extreme integer for integer dtypes."""
    if is_float(x.dtype):
        return side * np.inf
    info = np.iinfo(x.dtype)
    return info.min if side < 0 else info.max


def cast(x: Value, dtype: Any) -> Value:
    """x converted to `dtype` (float to int truncates toward zero)."""
    dt = canonical_dtype(dtype)
    if dt == x.dtype:
        return x
    return make("cast", [x], dtype=dt)


def greater(a: Any, b: Any) -> Value:
    """a > b, as bool (no gradient)."""
    return make("greater", lift_pair(a, b, "greater"))


def less(a: Any, b: Any) -> Value:
    """a < b, as bool (no gradient)."""
    return make("less", lift_pair(a, b, "less"))


def equal(a: Any, b: Any) -> Value:
    """a == b, as bool (no gradient)."""
    return make("equal", lift_pair(a, b, "equal"))


def not_equal(a: Any, b: Any) -> Value:
    """a != b, as bool (no gradient)."""
    return make("not_equal", lift_pair(a, b, "not_equal"))


def greater_equal(a: Any, b: Any) -> Value:
    """a >= b, as bool (no gradient)."""
    return make("greater_equal", lift_pair(a, b, "greater_equal"))


def less_equal(a: Any, b: Any) -> Value:
    """a <= b, as bool (no gradient)."""
    return make("less_equal", lift_pair(a, b, "less_equal"))


def stop_gradient(x: Value) -> Value:
    """x, with no gradient flowing back through it."""
    return make("stop_gradient", [x])
