"""Checks a compiled step runs before it writes parameters."""

from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True)
def all_finite(a):  # type: ignore[no-untyped-def]
    """Whether every element of float array `a` is finite.

    `v - v` is 0 for every finite `v` and NaN for NaN and +-Inf (this kernel is compiled
    without fast-math flags, under which it would fold to 0). OR-ing the comparisons is an
    integer reduction, which vectorises as it is, and compiles far faster than a bit view.
    """
    flat = a.ravel()
    bad = 0
    for i in range(flat.size):
        v = flat[i]
        bad |= (v - v) != 0
    return bad == 0
