"""Accuracy and special-value tests for ``graphc.kernels.cpu.fastmath``.

References are numpy float64 results rounded to float32.  Errors are measured in ulps of
the float32 result (distance between the bit patterns) and as relative error, for normal
outputs; subnormal outputs are checked in absolute terms (ulps of the subnormal grid),
non-finite and zero outputs must match exactly, including the sign of zero.

Error bounds: an exhaustive run over all 2**32 float32 inputs measured at most 1 ulp
(rel. 1.19e-7) for exp, expm1, log, log1p and tanh, and 2 ulps (rel. 2.35e-7) for sigmoid,
with FMA contraction; compiled without FMA, the sweeps measured the same except expm1 at
2 ulps (rel. 1.31e-7).  The asserted bounds add one ulp of margin for other CPUs and LLVM
versions.
"""

from __future__ import annotations

import functools
import math
import platform
import warnings
from collections.abc import Callable

import numba
import numpy as np
import pytest
from graphc.kernels.cpu import fastmath as fm

F32 = np.float32
TINY = np.finfo(np.float32).tiny
MAX = np.finfo(np.float32).max
SUB_MIN = F32(1e-45)  # smallest subnormal


def _ref_sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


# name -> (function, float64 reference, max ulps, max relative error)
# The relative bounds are the ulp bounds times 2**-23 (one ulp relative to the smallest
# significand), i.e. 2 ulp -> 2.4e-7, 3 ulp -> 3.6e-7.
CASES: dict[str, tuple[Callable[[float], float], Callable[[np.ndarray], np.ndarray], int, float]]
CASES = {
    "exp": (fm.exp_f32, np.exp, 2, 2.4e-7),
    "expm1": (fm.expm1_f32, np.expm1, 2, 2.4e-7),
    "log": (fm.log_f32, np.log, 2, 2.4e-7),
    "log1p": (fm.log1p_f32, np.log1p, 2, 2.4e-7),
    "tanh": (fm.tanh_f32, np.tanh, 2, 2.4e-7),
    "sigmoid": (fm.sigmoid_f32, _ref_sigmoid, 3, 3.6e-7),
}


@functools.cache
def _loop(name: str) -> Callable[[np.ndarray, np.ndarray], None]:
    fn = CASES[name][0]

    @numba.njit
    def kernel(a: np.ndarray, out: np.ndarray) -> None:
        for i in range(a.size):
            out[i] = fn(a[i])

    return kernel


def apply(name: str, x: np.ndarray) -> np.ndarray:
    """``CASES[name]`` applied elementwise to float32 ``x`` inside an njit loop."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    _loop(name)(x, out)
    return out


def reference(name: str, x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CASES[name][1](x.astype(np.float64)).astype(np.float32)


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in ulps between float32 arrays of the same sign (bit pattern difference)."""
    return np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))


def check(name: str, x: np.ndarray) -> None:
    """Assert the bounds of ``CASES[name]`` for inputs ``x`` (njit loop path)."""
    x = np.asarray(x, dtype=np.float32)
    y = apply(name, x)
    r = reference(name, x)
    max_ulp, max_rel = CASES[name][2], CASES[name][3]

    finite = np.isfinite(r)
    normal = finite & (np.abs(r) >= TINY)
    yn, rn, xn = y[normal], r[normal], x[normal]
    assert np.all(np.sign(yn) == np.sign(rn)), xn[np.sign(yn) != np.sign(rn)][:5]
    ulp = _ulps(yn, rn)
    if ulp.size:
        worst = int(np.argmax(ulp))
        assert ulp[worst] <= max_ulp, (name, xn[worst], yn[worst], rn[worst], ulp[worst])
        rel = np.abs(yn.astype(np.float64) - rn) / np.abs(rn)
        assert rel.max() <= max_rel, (name, xn[np.argmax(rel)], rel.max())

    # Subnormal and zero outputs: within one step of the subnormal grid, sign kept.
    small = finite & ~normal
    ys, rs = y[small], r[small]
    assert np.all(np.abs(ys.astype(np.float64) - rs) <= SUB_MIN), x[small][
        np.abs(ys.astype(np.float64) - rs) > SUB_MIN
    ][:5]
    zero = small & (r == 0)
    assert np.array_equal(np.signbit(y[zero]), np.signbit(r[zero])), x[zero][:5]

    # inf and NaN outputs exactly.
    nonfinite = ~finite
    yf, rf = y[nonfinite], r[nonfinite]
    same = (yf == rf) | (np.isnan(yf) & np.isnan(rf))
    assert same.all(), (name, x[nonfinite][~same][:5], yf[~same][:5], rf[~same][:5])


def _sweep(lo: float, hi: float, n: int) -> np.ndarray:
    """Log-spaced float32 points: n in [-|lo|, -1e-45] if lo < 0 and n in [1e-45, hi]."""
    parts = [np.array([0.0, -0.0])]
    if hi > 0:
        parts.append(np.geomspace(1e-45, hi, n))
    if lo < 0:
        parts.append(-np.geomspace(1e-45, -lo, n))
    return np.concatenate(parts).astype(np.float32)


def _extremes() -> np.ndarray:
    vals = [
        0.0,
        -0.0,
        np.inf,
        -np.inf,
        np.nan,
        -np.nan,
        1e-45,
        -1e-45,
        TINY,
        -TINY,
        TINY * 0.5,
        -TINY * 0.5,
        MAX,
        -MAX,
        1.0,
        -1.0,
        2.0,
        0.5,
        -0.5,
        1e-8,
        -1e-8,
        88.72283,
        88.72284,
        88.7,
        89.0,
        100.0,
        -87.33655,
        -87.4,
        -100.0,
        -103.97,
        -103.98,
        -104.0,
        -110.0,
        9.0,
        -9.0,
        44.0,
        -44.0,
        -1.0 + 2**-24,
        -0.99999994,
        1e30,
        -1e30,
        3.0e38,
        -3.0e38,
    ]
    x = np.array(vals, dtype=np.float32)
    with np.errstate(over="ignore"):
        up, down = np.nextafter(x, F32(np.inf)), np.nextafter(x, F32(-np.inf))
    return np.concatenate([x, up, down])


def _random_bits(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)


SWEEPS = {
    "exp": (-110.0, 110.0),
    "expm1": (-110.0, 110.0),
    "log": (0.0, float(MAX)),
    "log1p": (-1.0, float(MAX)),
    "tanh": (-20.0, 20.0),
    "sigmoid": (-110.0, 110.0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_dense_sweep(name: str) -> None:
    lo, hi = SWEEPS[name]
    check(name, _sweep(lo, hi, 1_000_000))


@pytest.mark.parametrize("name", list(CASES))
def test_random_bit_patterns(name: str) -> None:
    check(name, _random_bits(1_000_000))


@pytest.mark.parametrize("name", list(CASES))
def test_extremes(name: str) -> None:
    check(name, _extremes())


@pytest.mark.parametrize("name", list(CASES))
def test_subnormal_inputs(name: str) -> None:
    sub = np.arange(1, 1 << 23, 97, dtype=np.uint32).view(np.float32)
    check(name, np.concatenate([sub, -sub]))


@pytest.mark.parametrize("name", ["exp", "expm1", "tanh", "sigmoid", "log", "log1p"])
def test_near_zero_and_one(name: str) -> None:
    """Every float32 close to 0 and 1 in a few binades (relative accuracy near 0)."""
    k = np.arange(0, 1 << 23, 7, dtype=np.uint32)
    x = np.concatenate(
        [
            (np.uint32(0x3F000000) + k).view(np.float32),  # [0.5, 1)
            (np.uint32(0x3F800000) + k).view(np.float32),  # [1, 2)
            (np.uint32(0x33000000) + k).view(np.float32),  # [2**-25, 2**-24)
            (np.uint32(0x3D000000) + k).view(np.float32),  # [2**-5, 2**-4)
        ]
    )
    check(name, np.concatenate([x, -x]))


def test_exp_overflow_underflow_monotone() -> None:
    """All float32 in [-110, -80] and [88, 89]: monotone, inf and 0 at the right places."""
    lo = np.arange(
        np.float32(-80.0).view(np.int32), np.float32(-110.0).view(np.int32), dtype=np.int32
    ).view(np.float32)[::-1]  # increasing x
    y = apply("exp", lo)
    assert np.all(y[1:] >= y[:-1])
    assert np.all(y[lo < -103.98] == 0) and np.all(y[lo > -103.97] > 0)
    hi = np.arange(
        np.float32(88.0).view(np.int32), np.float32(89.0).view(np.int32), dtype=np.int32
    ).view(np.float32)
    y = apply("exp", hi)
    assert np.all(y[1:] >= y[:-1])
    assert np.all(np.isinf(y[hi > 88.7229])) and np.all(np.isfinite(y[hi < 88.7228]))
    check("exp", lo)
    check("exp", hi)


def test_sigmoid_extremes_no_nan() -> None:
    x = np.concatenate([_sweep(-MAX, MAX, 10_000), np.array([np.inf, -np.inf], F32)])
    y = apply("sigmoid", x)
    assert not np.isnan(y).any()
    assert np.all((y >= 0) & (y <= 1))
    ys = apply("sigmoid", np.sort(x))
    assert np.all(ys[1:] >= ys[:-1])


def test_tanh_saturates_and_is_odd() -> None:
    x = _sweep(-MAX, MAX, 10_000)
    y = apply("tanh", x)
    assert np.all(np.abs(y) <= 1)
    assert np.array_equal(apply("tanh", -x), -y)
    assert np.all(y[x > 9.02] == 1) and np.all(y[x < -9.02] == -1)
    yt = apply("tanh", np.sort(x))
    assert np.all(yt[1:] >= yt[:-1])


@functools.cache
def _scalar(name: str) -> Callable[[float], float]:
    """``CASES[name]`` alone in an ``njit`` function of one float32 (no loop to
    vectorise): the functions are intrinsics, usable only from compiled code."""
    fn = CASES[name][0]

    @numba.njit
    def scalar(x: float) -> float:
        return fn(x)

    return scalar


def _direct(name: str, v: float) -> np.float32:
    return F32(_scalar(name)(F32(v)))


def _same(a: float, b: float) -> bool:
    if math.isnan(b):
        return math.isnan(a)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


@pytest.mark.parametrize(
    ("name", "x", "expected"),
    [
        ("exp", np.nan, np.nan),
        ("exp", np.inf, np.inf),
        ("exp", -np.inf, 0.0),
        ("exp", 0.0, 1.0),
        ("exp", -0.0, 1.0),
        ("exp", 89.0, np.inf),
        ("exp", -104.0, 0.0),
        ("exp", float(MAX), np.inf),
        ("exp", float(-MAX), 0.0),
        ("exp", 1e-45, 1.0),
        ("expm1", np.nan, np.nan),
        ("expm1", np.inf, np.inf),
        ("expm1", -np.inf, -1.0),
        ("expm1", -0.0, -0.0),
        ("expm1", 1e-45, 1e-45),
        ("expm1", -100.0, -1.0),
        ("expm1", 89.0, np.inf),
        ("log", np.nan, np.nan),
        ("log", np.inf, np.inf),
        ("log", -np.inf, np.nan),
        ("log", 0.0, -np.inf),
        ("log", -0.0, -np.inf),
        ("log", -1.0, np.nan),
        ("log", -1e-45, np.nan),
        ("log", 1.0, 0.0),
        ("log1p", np.nan, np.nan),
        ("log1p", np.inf, np.inf),
        ("log1p", -1.0, -np.inf),
        ("log1p", -2.0, np.nan),
        ("log1p", -np.inf, np.nan),
        ("log1p", -0.0, -0.0),
        ("log1p", 1e-45, 1e-45),
        ("tanh", np.nan, np.nan),
        ("tanh", np.inf, 1.0),
        ("tanh", -np.inf, -1.0),
        ("tanh", -0.0, -0.0),
        ("tanh", 0.0, 0.0),
        ("tanh", -1e-45, -1e-45),
        ("tanh", 20.0, 1.0),
        ("tanh", -20.0, -1.0),
        ("sigmoid", np.nan, np.nan),
        ("sigmoid", np.inf, 1.0),
        ("sigmoid", -np.inf, 0.0),
        ("sigmoid", 0.0, 0.5),
        ("sigmoid", -0.0, 0.5),
        ("sigmoid", 200.0, 1.0),
        ("sigmoid", -200.0, 0.0),
        ("sigmoid", float(MAX), 1.0),
        ("sigmoid", float(-MAX), 0.0),
    ],
)
def test_special_values(name: str, x: float, expected: float) -> None:
    direct = _direct(name, x)
    assert isinstance(_scalar(name)(F32(x)), float)
    assert _same(float(direct), float(F32(expected))), (name, x, direct)
    looped = apply(name, np.array([x], F32))[0]
    assert _same(float(looped), float(F32(expected))), (name, x, looped)


@pytest.mark.parametrize("name", list(CASES))
def test_direct_call_matches_loop(name: str) -> None:
    x = np.concatenate([_extremes(), _random_bits(300, seed=1)])
    looped = apply(name, x)
    direct = np.array([_direct(name, v) for v in x], dtype=np.float32)
    nan = np.isnan(looped)
    assert np.array_equal(np.isnan(direct), nan)
    # Same bits (sign of zero included) wherever the result is not NaN.
    assert np.array_equal(direct[~nan].view(np.int32), looped[~nan].view(np.int32))


@pytest.mark.parametrize("name", list(CASES))
def test_float32_result_type(name: str) -> None:
    """float32 in, float32 out; a float64 argument is converted to float32 first (the
    result is the float32 function's, not a float64 one), and Python cannot call them."""
    scalar = _scalar(name)
    assert scalar(F32(0.5)) == scalar(0.5)
    for sig in ((numba.float32,), (numba.float64,)):
        assert scalar.overloads[sig].signature.return_type == numba.float32
    with pytest.raises(NotImplementedError, match="pure-python"):
        CASES[name][0](F32(0.5))


@pytest.mark.parametrize("name", ["exp", "log", "tanh", "sigmoid"])
def test_nan_kept_in_fastmath_caller(name: str) -> None:
    fn = CASES[name][0]

    @numba.njit(fastmath=True)
    def kernel(a: np.ndarray, out: np.ndarray) -> None:
        for i in range(a.size):
            out[i] = fn(a[i])

    x = np.full(64, np.nan, dtype=np.float32)
    x[::2] = 0.5
    out = np.empty_like(x)
    kernel(x, out)
    assert np.isnan(out[1::2]).all()
    np.testing.assert_array_equal(out[::2], apply(name, x[::2]))


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="checks x86 packed instructions"
)
@pytest.mark.parametrize("name", list(CASES))
def test_loop_is_vectorised(name: str) -> None:
    """The njit loop must use packed float32 instructions and call no libm function."""
    kernel = _loop(name)
    apply(name, np.ones(8, F32))
    asm = kernel.inspect_asm(kernel.signatures[0])
    assert "mulps" in asm  # mulps / vmulps: packed single-precision multiply
    for libm in ("expf", "logf", "tanhf", "exp@", "log@", "tanh@"):
        assert libm not in asm


def test_source_digest() -> None:
    assert len(fm.SOURCE_DIGEST) == 64
