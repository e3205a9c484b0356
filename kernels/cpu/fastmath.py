"""Vectorisable float32 transcendental functions for Numba fused loops.

Numba lowers ``math.exp``, ``math.tanh`` and ``math.log`` to scalar libm calls, which keep
LLVM from vectorising the loop that calls them.  The functions here are branch-free
float32 code (range reduction, polynomial, exponent bit manipulation, selects), so a
``for`` loop in an ``njit`` function that calls them compiles to SIMD code.

Usage from generated code::

    from graphc.kernels.cpu.fastmath import exp_f32, tanh_f32

    @numba.njit
    def kernel(a, out):
        for i in range(a.size):
            out[i] = tanh_f32(a[i] * np.float32(0.5))

Arguments are float32 scalars (emit constants as ``np.float32(c)``); another number type
is converted to float32 first, and the result is float32.
For float64 tensors the code generator uses ``math.exp`` / ``math.log`` /
``math.tanh`` / ``math.log1p`` / ``math.expm1`` instead: nothing here is float64.

The functions are Numba intrinsics: each call emits its instructions straight into the
calling function's LLVM IR, so a kernel that calls them compiles no other function (as
``njit`` helpers, ``exp_f32`` and its three helpers took 0.33 s and ``log_f32`` 0.24 s to
compile in every fresh process, a third of a small model's first compile).  The emitted
instructions carry only the ``contract`` fast-math flag (FMA fusion: faster, never less
accurate here, same special values), whatever the caller's flags, so NaN/inf handling
survives in a caller compiled with ``fastmath=True``; there is no division-by-zero check
to stop vectorisation.  Each line of the emitters below is the float32 operation it names,
in the order written, as the ``njit`` versions computed them.  Called from Python, they
raise (wrap them in an ``njit`` function).

Accuracy, measured over all 2**32 float32 inputs against numpy float64 results rounded
to float32 (``tests/test_fastmath.py`` checks dense sweeps, extremes and random bit
patterns).  ulp = distance to the rounded reference; rel = ``|y - ref| / |ref|``, for
normal outputs.  Subnormal outputs are within one step of the subnormal grid; inf, NaN
and signed-zero outputs match exactly.

=============  ========  =========  ==================================================
function       max ulp   max rel.   notes
=============  ========  =========  ==================================================
exp_f32        1         1.19e-7    inf above 88.7228, gradual underflow (monotone), 0
                                    below -103.973
expm1_f32      1         1.19e-7    relative accuracy near 0; -1 below -17.33
log_f32        1         1.19e-7    subnormal inputs included
log1p_f32      1         1.19e-7    relative accuracy near 0
tanh_f32       1         1.19e-7    relative accuracy near 0; +-1 above 9.011
sigmoid_f32    2         2.35e-7    relative accuracy down to subnormal outputs; no NaN
                                    for any non-NaN input
=============  ========  =========  ==================================================

Compiled without FMA contraction, sweeps measured the same maxima except expm1 (2 ulp).

Special values follow IEEE/numpy: NaN -> NaN; exp(+inf)=inf, exp(-inf)=0;
log(0)=-inf, log(x<0)=NaN, log(inf)=inf; tanh(+-inf)=+-1, sigmoid(+-inf)=1/0;
odd functions keep the sign of -0.0.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "SOURCE_DIGEST",
    "exp_f32",
    "expm1_f32",
    "log1p_f32",
    "log_f32",
    "sigmoid_f32",
    "tanh_f32",
]

#: sha256 of this file.  Numba's disk cache of a caller does not notice changes in the
#: functions it calls, so code generators put this digest into their cache keys.
SOURCE_DIGEST: str = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_FLAGS = ("contract",)


class _Emit:
    """float32 and int32 operations appended at a builder's position: the vocabulary of
    the functions below. Comparisons are ordered (false on NaN) except `ne`, as Python's
    operators on floats compile in Numba."""

    def __init__(self, builder: ir.IRBuilder) -> None:
        self.b = builder

    @staticmethod
    def f(value: float) -> ir.Constant:
        return ir.Constant(_F32, value)

    @staticmethod
    def i(value: int) -> ir.Constant:
        return ir.Constant(_I32, value)

    def add(self, x: Any, y: Any) -> Any:
        return self.b.fadd(x, y, flags=_FLAGS)

    def sub(self, x: Any, y: Any) -> Any:
        return self.b.fsub(x, y, flags=_FLAGS)

    def mul(self, x: Any, y: Any) -> Any:
        return self.b.fmul(x, y, flags=_FLAGS)

    def div(self, x: Any, y: Any) -> Any:
        return self.b.fdiv(x, y, flags=_FLAGS)

    def poly(self, x: Any, coefficients: tuple[float, ...]) -> Any:
        """Horner: ((c0 * x + c1) * x + c2) ..."""
        p = self.f(coefficients[0])
        for c in coefficients[1:]:
            p = self.add(self.mul(p, x), self.f(c))
        return p

    def cmp(self, op: str, x: Any, y: Any) -> Any:
        if op == "!=":
            return self.b.fcmp_unordered(op, x, y, flags=_FLAGS)
        return self.b.fcmp_ordered(op, x, y, flags=_FLAGS)

    def icmp(self, op: str, x: Any, y: Any) -> Any:
        return self.b.icmp_signed(op, x, y)

    def select(self, condition: Any, x: Any, y: Any) -> Any:
        return self.b.select(condition, x, y)

    def call(self, name: str, *args: Any) -> Any:
        """The LLVM float32 intrinsic `name` (floor, fabs, copysign)."""
        fnty = ir.FunctionType(_F32, [_F32] * len(args))
        fn = cgutils.get_or_insert_function(self.b.module, fnty, f"llvm.{name}.f32")
        return self.b.call(fn, args)

    def to_int(self, x: Any) -> Any:
        return self.b.fptosi(x, _I32)

    def to_float(self, n: Any) -> Any:
        return self.b.sitofp(n, _F32)

    def bits(self, x: Any) -> Any:
        return self.b.bitcast(x, _I32)

    def from_bits(self, n: Any) -> Any:
        return self.b.bitcast(n, _F32)


def _pow2(e: _Emit, n: Any) -> Any:
    """2**n as float32 for an int32 ``n`` in [-126, 127], built from the exponent bits."""
    return e.from_bits(e.b.shl(e.b.add(n, e.i(127)), e.i(23)))


def _expm1_poly(e: _Emit, r: Any) -> Any:
    """e**r - 1 for float32 ``r`` in [-ln2/2, ln2/2] (minimax polynomial, Cephes expf)."""
    p = e.poly(r, (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                   1.6666665459e-1, 5.0000001201e-1))
    return e.add(e.mul(p, e.mul(r, r)), r)


def _reduce(e: _Emit, x: Any, lo: float, hi: float) -> tuple[Any, Any]:
    """Split ``x`` clamped to [lo, hi] as ``n*ln2 + r``: returns (n as float, r).

    ``n`` is computed from a NaN-free clamp (so its integer conversion is defined);
    ``r`` from a NaN-preserving clamp, so NaN propagates into the result.
    """
    xc = e.select(e.cmp(">", x, e.f(hi)), e.f(hi), x)
    xc = e.select(e.cmp("<", xc, e.f(lo)), e.f(lo), xc)
    xn = e.select(e.cmp("==", xc, xc), xc, e.f(0.0))
    nf = e.call("floor", e.add(e.mul(xn, e.f(1.44269504088896341)), e.f(0.5)))
    # Cody-Waite: ln2 = 0.693359375 - 2.12194440e-4; nf * 0.693359375 is exact.
    r = e.sub(xc, e.mul(nf, e.f(0.693359375)))
    r = e.sub(r, e.mul(nf, e.f(-2.12194440e-4)))
    return nf, r


def _exp(e: _Emit, x: Any) -> Any:
    """e**x (1 ulp; inf above 88.7228, 0 below -103.973)."""
    nf, r = _reduce(e, x, -104.0, 89.0)
    p = e.add(_expm1_poly(e, r), e.f(1.0))
    n = e.to_int(nf)
    # Two scale factors: n in [-150, 128] does not fit one normal power of two, and the
    # second multiplication rounds once into the subnormal range or overflows to inf.
    n1 = e.b.ashr(n, e.i(1))
    return e.mul(e.mul(p, _pow2(e, n1)), _pow2(e, e.b.sub(n, n1)))


def _expm1(e: _Emit, x: Any) -> Any:
    """e**x - 1 (1 ulp, relative accuracy near 0)."""
    nf, r = _reduce(e, x, -30.0, 89.0)
    q = _expm1_poly(e, r)
    n = e.to_int(nf)
    # e**x - 1 = 2**n * q + (2**n - 1), where 2**n - 1 is exact for -24 <= n <= 24.  Below,
    # (2**n * q + 2**n) - 1 rounds once near -1.  n = 128 is done as
    # 2 * (2**127 * q + 2**127) so the result overflows to inf only when it should.
    big = e.icmp(">", n, e.i(127))
    s = _pow2(e, e.select(big, e.i(127), n))
    low = e.icmp("<", n, e.i(-24))
    y = e.add(e.add(e.mul(s, q), e.select(low, s, e.sub(s, e.f(1.0)))),
              e.select(low, e.f(-1.0), e.f(0.0)))
    y = e.select(big, e.mul(y, e.f(2.0)), y)
    return e.select(e.cmp("<", e.call("fabs", x), e.f(2.9802322e-08)), x, y)


def _log_pos(e: _Emit, x: Any) -> Any:
    """log(x) for float32 ``x`` > 0, finite (subnormals included)."""
    sub = e.cmp("<", x, e.f(1.17549435e-38))
    xs = e.select(sub, e.mul(x, e.f(8388608.0)), x)
    bits = e.bits(xs)
    # Significand m in [1, 2) and unbiased exponent e (as float32, exact).
    m = e.from_bits(e.b.or_(e.b.and_(bits, e.i(0x007FFFFF)), e.i(0x3F800000)))
    ef = e.sub(e.to_float(e.b.ashr(bits, e.i(23))),
               e.select(sub, e.f(150.0), e.f(127.0)))
    hi = e.cmp(">", m, e.f(1.41421356))
    m = e.select(hi, e.mul(m, e.f(0.5)), m)
    ef = e.select(hi, e.add(ef, e.f(1.0)), ef)
    f = e.sub(m, e.f(1.0))
    z = e.mul(f, f)
    p = e.poly(f, (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
                   1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
                   3.3333331174e-1))
    y = e.mul(e.mul(f, z), p)
    y = e.add(y, e.mul(ef, e.f(-2.12194440e-4)))
    y = e.sub(y, e.mul(e.f(0.5), z))
    return e.add(e.add(f, y), e.mul(ef, e.f(0.693359375)))


def _log_specials(e: _Emit, u: Any, y: Any) -> Any:
    """y, or log(u)'s special value: inf at inf, -inf at 0, NaN below 0."""
    y = e.select(e.cmp("==", u, e.f(float("inf"))), e.f(float("inf")), y)
    y = e.select(e.cmp("==", u, e.f(0.0)), e.f(float("-inf")), y)
    return e.select(e.cmp("<", u, e.f(0.0)), e.f(float("nan")), y)


def _log(e: _Emit, x: Any) -> Any:
    """Natural log (1 ulp; log(0)=-inf, log(x<0)=NaN)."""
    y = _log_specials(e, x, _log_pos(e, x))
    return e.select(e.cmp("!=", x, x), x, y)


def _log1p(e: _Emit, x: Any) -> Any:
    """log(1 + x) (1 ulp, relative accuracy near 0)."""
    u = e.add(x, e.f(1.0))
    # u = 1 + x is rounded; log(u + d) ~ log(u) + d/u with d = x - (u - 1) exact.
    c = e.div(e.sub(x, e.sub(u, e.f(1.0))), u)
    c = e.select(e.cmp("<", e.call("fabs", c), e.f(1.0)), c, e.f(0.0))
    y = _log_specials(e, u, e.add(_log_pos(e, u), c))
    y = e.select(e.cmp("!=", x, x), x, y)
    return e.select(e.cmp("<", e.call("fabs", x), e.f(2.9802322e-08)), x, y)


def _tanh(e: _Emit, x: Any) -> Any:
    """tanh (1 ulp, relative accuracy near 0; saturates to +-1)."""
    ax = e.call("fabs", x)
    # |x| < 0.625: odd minimax polynomial (Cephes tanhf).  Further out:
    # tanh|x| = 1 - 2u / (1 + u) with u = e**(-2|x|) = 2**n * (1 + q); it rounds to 1
    # above 9.011, and u stays normal up to the clamp at |x| = 10.
    z = e.mul(ax, ax)
    p = e.poly(z, (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2,
                   1.33314422036e-1, -3.33332819422e-1))
    y_small = e.add(ax, e.mul(e.mul(ax, z), p))
    nf, r = _reduce(e, e.mul(e.f(-2.0), ax), -20.0, 0.0)
    s = _pow2(e, e.to_int(nf))
    u = e.add(e.mul(s, _expm1_poly(e, r)), s)
    y_large = e.sub(e.f(1.0), e.div(e.add(u, u), e.add(u, e.f(1.0))))
    y = e.select(e.cmp("<", ax, e.f(0.625)), y_small, y_large)
    return e.call("copysign", y, x)


def _sigmoid(e: _Emit, x: Any) -> Any:
    """1 / (1 + e**-x) (2 ulp; NaN only for a NaN ``x``)."""
    ex = _exp(e, e.b.fneg(e.call("fabs", x), flags=_FLAGS))
    num = e.select(e.cmp(">=", x, e.f(0.0)), e.f(1.0), ex)
    return e.div(num, e.add(e.f(1.0), ex))


def _float32_function(emit: Callable[[_Emit, Any], Any]) -> Any:
    """An intrinsic float32 -> float32 whose body `emit` writes into the caller, documented
    by `emit`'s docstring."""
    def definition(typingctx: Any, x: Any) -> Any:
        if not isinstance(x, types.Number):
            return None

        def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
            value = context.cast(builder, args[0], signature.args[0], types.float32)
            return emit(_Emit(builder), value)

        return types.float32(x), codegen

    definition.__name__ = emit.__name__.lstrip("_") + "_f32"
    definition.__doc__ = f"{emit.__doc__} float32 in, float32 out."
    return intrinsic(definition)


exp_f32 = _float32_function(_exp)
expm1_f32 = _float32_function(_expm1)
log_f32 = _float32_function(_log)
log1p_f32 = _float32_function(_log1p)
tanh_f32 = _float32_function(_tanh)
sigmoid_f32 = _float32_function(_sigmoid)
