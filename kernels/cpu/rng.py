"""Counter-based random bits for fused loops (dropout masks).

Element `index` of the mask drawn at step `counter` by a layer with `seed` keeps its value
iff `bits(seed, counter, index) >> 40 >= threshold` (a 24-bit uniform integer against
`threshold = round(rate * 2**24)`), where bits is SplitMix64 (Steele, Lea & Flood 2014):

    key  = mix(mix(seed + G) + counter * G)          G = 0x9E3779B97F4A7C15
    bits = mix(key + (index + 1) * G)
    mix(z): z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9; z = (z ^ z >> 27) * 0x94D049BB133111EB;
            z ^ z >> 31                               (all arithmetic modulo 2**64)

No state but the counter: any element can be drawn on its own, so the scalar body below
fuses into any loop, and `graphc/ops/random.py` computes the same bits with numpy for the
interpreter (integer arithmetic only: the two agree bit for bit).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_G = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S40 = np.uint64(40)
_ONE = np.uint64(1)


@njit(inline="always", cache=False)
def _mix(z):  # type: ignore[no-untyped-def]
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(inline="always", cache=False)
def dropout_keep(seed, counter, index, threshold):  # type: ignore[no-untyped-def]
    """Whether element `index` survives dropout at step `counter` (see the module doc)."""
    key = _mix(_mix(np.uint64(seed) + _G) + np.uint64(counter) * _G)
    bits = _mix(key + (np.uint64(index) + _ONE) * _G)
    return (bits >> _S40) >= np.uint64(threshold)


__all__ = ["dropout_keep"]
