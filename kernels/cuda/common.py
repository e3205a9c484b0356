"""Pieces every CUDA kernel template shares: the module prelude, index arithmetic and
signatures. Plain Python (no numba.cuda import): used by the code generator."""

from __future__ import annotations

PRELUDE = """import math

import numpy as np
from numba import cuda

from graphc.kernels.cuda.scalar import (
    cos_f32, cos_f64, dropout_keep, erf_f32, erf_f64, exp_f32, exp_f64, expm1_f32, expm1_f64,
    log1p_f32, log1p_f64, log_f32, log_f64, pow_f32, pow_f64, sigmoid_f32, sigmoid_f64,
    sin_f32, sin_f64, sqrt_f32, sqrt_f64, tanh_f32, tanh_f64,
)
"""

# Kernel decorator of every generated and template kernel. Numba's disk cache (cache=True)
# keys on the file's contents, and the file names carry the hash of their source.
DECORATOR = "@cuda.jit(cache=True)"

CTOR = {"float32": "np.float32", "float64": "np.float64", "int8": "np.int8",
        "int16": "np.int16", "int32": "np.int32", "int64": "np.int64", "uint8": "np.uint8",
        "uint16": "np.uint16", "uint32": "np.uint32", "uint64": "np.uint64",
        "bool": "np.bool_"}

# A parameter of a kernel: ("int", name) is an int64 scalar, (dtype, name) a flat
# C-contiguous 1-D array of that dtype.
Param = tuple[str, str]


def unravel(index: str, names: list[str], sizes: list[str], indent: str) -> list[str]:
    """Lines setting `names` (C order, last fastest) from the linear `index` over `sizes`."""
    if not names:
        return []
    if len(names) == 1:
        return [f"{indent}{names[0]} = {index}"]
    lines = [f"{indent}r_ = {index}"]
    for k in range(len(names) - 1, 0, -1):
        lines.append(f"{indent}{names[k]} = r_ % {sizes[k]}")
        lines.append(f"{indent}r_ = r_ // {sizes[k]}")
    lines.append(f"{indent}{names[0]} = r_")
    return lines


def product(sizes: list[str]) -> str:
    """Source of the product of `sizes` ('1' for none)."""
    return " * ".join(sizes) if sizes else "1"


def horner(names: list[str], sizes: list[str]) -> str:
    """Source of the C-order linear index of `names` over `sizes`."""
    if not names:
        return "0"
    expr = names[0]
    for name, size in zip(names[1:], sizes[1:]):
        expr = f"({expr}) * {size} + {name}"
    return expr


def strided(base: str, names: list[str], strides: list[str]) -> str:
    """Source of `base + sum(name * stride)`."""
    terms = [base] + [f"{n} * {s}" for n, s in zip(names, strides)]
    return " + ".join(terms)


def signature(params: list[Param]) -> str:
    """Numba signature string of a kernel taking `params`."""
    kinds = []
    for kind, _ in params:
        if kind == "int":
            kinds.append("int64")
        else:
            kinds.append(("boolean" if kind == "bool" else kind) + "[::1]")
    return f"void({', '.join(kinds)})"


def header(title: str, library: str) -> str:
    return f"# graphc CUDA kernel: {title}\n# scalar library {library}\n"
