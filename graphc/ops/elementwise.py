"""Elementwise primitives: numpy broadcasting, one scalar template each (fusable)."""

from __future__ import annotations

from typing import Any

import numpy as np

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


def _pow_vjp(g: Value, out: Value, x: list[Value], needs: tuple) -> tuple:
    a, b = x
    ga = g * b * pow(a, b - 1) if needs[0] else None
    gb = g * out * log(a) if needs[1] else None
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
              scalar="({T}(1) if {0} > {T}(0) else ({T}(-1) if {0} < {T}(0) else {0}))")
_square = defop("square", "elementwise", _unary_numeric, np.square, arity=1,
                scalar="({0} * {0})",
                vjp=lambda g, out, x, needs: (g * (x[0] + x[0]),))


def _max_vjp(g: Value, out: Value, x: list[Value], needs: tuple) -> tuple:
    b_wins = less(x[0], x[1])  # ties send the gradient to the first operand
    zero = _zero_like(g)
    return (where(b_wins, zero, g) if needs[0] else None,
            where(b_wins, g, zero) if needs[1] else None)


def _min_vjp(g: Value, out: Value, x: list[Value], needs: tuple) -> tuple:
    b_wins = greater(x[0], x[1])
    zero = _zero_like(g)
    return (where(b_wins, zero, g) if needs[0] else None,
            where(b_wins, g, zero) if needs[1] else None)


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


def _cast_ref(x: np.ndarray, dtype: str) -> np.ndarray:
    return x.astype(dtype)


def _cast_vjp(g: Value, out: Value, x: list[Value], needs: tuple, dtype: str) -> tuple:
    return (cast(g, x[0].dtype) if is_float(x[0].dtype) and is_float(dtype) else None,)


_cast = defop("cast", "elementwise", _cast_infer, _cast_ref, arity=1, vjp=_cast_vjp,
              scalar="{T}({0})")
_greater = defop("greater", "elementwise", _compare, np.greater, arity=2, scalar="({0} > {1})")
_less = defop("less", "elementwise", _compare, np.less, arity=2, scalar="({0} < {1})")
_equal = defop("equal", "elementwise", _compare, np.equal, arity=2, scalar="({0} == {1})")
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
    """Elementwise maximum (NaN propagates); on ties the gradient goes to `a`."""
    return make("maximum", lift_pair(a, b, "maximum"))


def minimum(a: Any, b: Any) -> Value:
    """Elementwise minimum (NaN propagates); on ties the gradient goes to `a`."""
    return make("minimum", lift_pair(a, b, "minimum"))


def where(cond: Value, a: Any, b: Any) -> Value:
    """a where `cond` (bool) is true, else b."""
    if not isinstance(a, Value) and not isinstance(b, Value):
        a = lift(a, cond, "where") if not isinstance(cond, Value) else cond.graph.const(a)
        b = cond.graph.const(b, dtype=a.dtype)
    a, b = lift_pair(a, b, "where")
    return make("where", [cond, a, b])


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


def stop_gradient(x: Value) -> Value:
    """x, with no gradient flowing back through it."""
    return make("stop_gradient", [x])
