"""Device scalar math that generated CUDA kernels call: the CUDA twins of
kernels/cpu/scalar.py, with the same names (`exp_f32`, `log_f64`, ...) and semantics.

On the GPU `math.exp` / `math.log` / ... of a float32 lower to libdevice's float32
functions (`__nv_expf`, ..., <= 2 ulp); float64 to the float64 ones. Every function
returns its argument's dtype (wrapped in `np.float32` / `np.float64`: free on the device,
and on the CUDA simulator it keeps Python's float64 math from leaking into float32 code).

Special values follow IEEE / numpy, never Python's exceptions: the simulator runs these
bodies as Python, where `math.log(0)` or `math.exp(1000)` would raise, so the domain edges
are spelled out (log(0) = -inf, log(x < 0) = nan, sqrt(x < 0) = nan, exp overflow = inf).

`inline="always"`: the bodies are inlined into each kernel at Numba IR level, so a kernel
compiles to PTX in one piece (`cuda.compile_ptx` works without a GPU; a separately
compiled device function would ask the driver for the device's compute capability).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

_device = cuda.jit(device=True, inline="always")

_EXP_MAX_F32 = 88.72283905206835   # log(float32 max)
_EXP_MAX_F64 = 709.782712893384    # log(float64 max)


@_device
def exp_f32(x):  # type: ignore[no-untyped-def]
    if x > np.float32(_EXP_MAX_F32):
        return np.float32(math.inf)
    return np.float32(math.exp(x))


@_device
def exp_f64(x):  # type: ignore[no-untyped-def]
    if x > np.float64(_EXP_MAX_F64):
        return np.float64(math.inf)
    return np.float64(math.exp(x))


@_device
def log_f32(x):  # type: ignore[no-untyped-def]
    if x > np.float32(0):
        return np.float32(math.log(x))
    if x == np.float32(0):
        return np.float32(-math.inf)
    return np.float32(math.nan)


@_device
def log_f64(x):  # type: ignore[no-untyped-def]
    if x > np.float64(0):
        return np.float64(math.log(x))
    if x == np.float64(0):
        return np.float64(-math.inf)
    return np.float64(math.nan)


@_device
def sqrt_f32(x):  # type: ignore[no-untyped-def]
    if x >= np.float32(0):
        return np.float32(math.sqrt(x))
    return np.float32(math.nan)


@_device
def sqrt_f64(x):  # type: ignore[no-untyped-def]
    if x >= np.float64(0):
        return np.float64(math.sqrt(x))
    return np.float64(math.nan)


@_device
def tanh_f32(x):  # type: ignore[no-untyped-def]
    return np.float32(math.tanh(x))


@_device
def tanh_f64(x):  # type: ignore[no-untyped-def]
    return np.float64(math.tanh(x))


@_device
def sigmoid_f32(x):  # type: ignore[no-untyped-def]
    if x >= np.float32(0):
        return np.float32(1) / (np.float32(1) + np.float32(math.exp(-x)))
    e = np.float32(math.exp(x))
    return e / (np.float32(1) + e)


@_device
def sigmoid_f64(x):  # type: ignore[no-untyped-def]
    if x >= np.float64(0):
        return np.float64(1) / (np.float64(1) + np.float64(math.exp(-x)))
    e = np.float64(math.exp(x))
    return e / (np.float64(1) + e)


@_device
def erf_f32(x):  # type: ignore[no-untyped-def]
    return np.float32(math.erf(x))


@_device
def erf_f64(x):  # type: ignore[no-untyped-def]
    return np.float64(math.erf(x))


@_device
def sin_f32(x):  # type: ignore[no-untyped-def]
    if math.isinf(x):
        return np.float32(math.nan)
    return np.float32(math.sin(x))


@_device
def sin_f64(x):  # type: ignore[no-untyped-def]
    if math.isinf(x):
        return np.float64(math.nan)
    return np.float64(math.sin(x))


@_device
def cos_f32(x):  # type: ignore[no-untyped-def]
    if math.isinf(x):
        return np.float32(math.nan)
    return np.float32(math.cos(x))


@_device
def cos_f64(x):  # type: ignore[no-untyped-def]
    if math.isinf(x):
        return np.float64(math.nan)
    return np.float64(math.cos(x))


@_device
def log1p_f32(x):  # type: ignore[no-untyped-def]
    if x > np.float32(-1):
        return np.float32(math.log1p(x))
    if x == np.float32(-1):
        return np.float32(-math.inf)
    return np.float32(math.nan)


@_device
def log1p_f64(x):  # type: ignore[no-untyped-def]
    if x > np.float64(-1):
        return np.float64(math.log1p(x))
    if x == np.float64(-1):
        return np.float64(-math.inf)
    return np.float64(math.nan)


@_device
def expm1_f32(x):  # type: ignore[no-untyped-def]
    if x > np.float32(_EXP_MAX_F32):
        return np.float32(math.inf)
    return np.float32(math.expm1(x))


@_device
def expm1_f64(x):  # type: ignore[no-untyped-def]
    if x > np.float64(_EXP_MAX_F64):
        return np.float64(math.inf)
    return np.float64(math.expm1(x))


@_device
def pow_f32(x, y):  # type: ignore[no-untyped-def]
    return np.float32(np.float64(x) ** np.float64(y))


@_device
def pow_f64(x, y):  # type: ignore[no-untyped-def]
    return np.float64(x) ** np.float64(y)


# dropout's counter-based random bits: SplitMix64, bit for bit kernels/cpu/rng.py (see there)
_G = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S40 = np.uint64(40)
_ONE = np.uint64(1)


@_device
def _mix(z):  # type: ignore[no-untyped-def]
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@_device
def dropout_keep(seed, counter, index, threshold):  # type: ignore[no-untyped-def]
    """Whether element `index` survives dropout at step `counter` (kernels/cpu/rng.py)."""
    key = _mix(_mix(np.uint64(seed) + _G) + np.uint64(counter) * _G)
    bits = _mix(key + (np.uint64(index) + _ONE) * _G)
    return (bits >> _S40) >= np.uint64(threshold)


__all__ = [
    "cos_f32", "cos_f64", "dropout_keep", "erf_f32", "erf_f64", "exp_f32", "exp_f64",
    "expm1_f32", "expm1_f64", "log1p_f32", "log1p_f64", "log_f32", "log_f64", "pow_f32",
    "pow_f64", "sigmoid_f32", "sigmoid_f64", "sin_f32", "sin_f64", "sqrt_f32", "sqrt_f64",
    "tanh_f32", "tanh_f64",
]
