"""Checks a compiled step runs before it writes parameters."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def all_finite(a):  # type: ignore[no-untyped-def]
    """Whether every element of float array `a` is finite.

    Tests the exponent bits of the integer view (all ones = Inf or NaN): exact, and an
    integer OR-reduction vectorises without fast-math flags (under which `x - x` or `x * 0`
    tricks are folded to 0 and miss every NaN).
    """
    flat = np.ascontiguousarray(a).ravel()
    if flat.itemsize == 4:
        bits32 = flat.view(np.uint32)
        bad32 = np.uint32(0)
        for x in bits32:
            bad32 |= np.uint32((x & np.uint32(0x7F800000)) == np.uint32(0x7F800000))
        return bad32 == 0
    bits64 = flat.view(np.uint64)
    bad64 = np.uint64(0)
    mask = np.uint64(0x7FF0000000000000)
    for x in bits64:
        bad64 |= np.uint64((x & mask) == mask)
    return bad64 == 0
