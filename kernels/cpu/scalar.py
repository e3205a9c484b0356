"""Scalar math functions that generated loops call, one per (function, dtype).

float32 uses the vectorisable implementations of `graphc.kernels.cpu.fastmath`; float64 uses
libm through `math` (float64 graphs are for accuracy, not speed). Every function returns
its argument's dtype, so nothing is silently promoted to float64.
"""

from __future__ import annotations

import math

import numpy as np
from graphc.kernels.cpu.fastmath import (
    exp_f32,
    expm1_f32,
    log1p_f32,
    log_f32,
    sigmoid_f32,
    tanh_f32,
)
from numba import njit

_inline = njit(inline="always", cache=False)


@_inline
def sqrt_f32(x):  # type: ignore[no-untyped-def]
    return np.sqrt(x)


@_inline
def sqrt_f64(x):  # type: ignore[no-untyped-def]
    return np.sqrt(x)


@_inline
def exp_f64(x):  # type: ignore[no-untyped-def]
    return math.exp(x)


@_inline
def log_f64(x):  # type: ignore[no-untyped-def]
    return math.log(x) if x > 0.0 else (-np.inf if x == 0.0 else np.nan)


@_inline
def tanh_f64(x):  # type: ignore[no-untyped-def]
    return math.tanh(x)


@_inline
def sigmoid_f64(x):  # type: ignore[no-untyped-def]
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@_inline
def erf_f32(x):  # type: ignore[no-untyped-def]
    return np.float32(math.erf(x))


@_inline
def erf_f64(x):  # type: ignore[no-untyped-def]
    return math.erf(x)


@_inline
def sin_f32(x):  # type: ignore[no-untyped-def]
    return np.float32(math.sin(x))


@_inline
def sin_f64(x):  # type: ignore[no-untyped-def]
    return math.sin(x)


@_inline
def cos_f32(x):  # type: ignore[no-untyped-def]
    return np.float32(math.cos(x))


@_inline
def cos_f64(x):  # type: ignore[no-untyped-def]
    return math.cos(x)


@_inline
def log1p_f64(x):  # type: ignore[no-untyped-def]
    return math.log1p(x) if x > -1.0 else (-np.inf if x == -1.0 else np.nan)


@_inline
def expm1_f64(x):  # type: ignore[no-untyped-def]
    return math.expm1(x)


@_inline
def pow_f32(x, y):  # type: ignore[no-untyped-def]
    return np.float32(np.float64(x) ** np.float64(y))


@_inline
def pow_f64(x, y):  # type: ignore[no-untyped-def]
    return x ** y


__all__ = [
    "cos_f32", "cos_f64", "erf_f32", "erf_f64", "exp_f32", "exp_f64", "expm1_f32", "expm1_f64",
    "log1p_f32", "log1p_f64", "log_f32", "log_f64", "pow_f32", "pow_f64", "sigmoid_f32",
    "sigmoid_f64", "sin_f32", "sin_f64", "sqrt_f32", "sqrt_f64", "tanh_f32", "tanh_f64",
]
