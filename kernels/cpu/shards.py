"""Combining the per-shard partial results of a batch-sharded step (graphc/passes/sharding.py).

`parts[s]` holds shard s's sum (or max, min) over its rows; the result folds the shards in
order 0, 1, ..., so it depends only on the shard count and the batch size, never on which
thread finished first.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, boundscheck=False)
def sum_partials(parts: np.ndarray, count: int, out: np.ndarray) -> None:
    """out = parts[0] + parts[1] + ... + parts[count - 1], left to right."""
    p = parts.reshape((parts.shape[0], -1))
    o = out.reshape(-1)
    for j in range(o.size):
        o[j] = p[0, j]
    for s in range(1, count):
        for j in range(o.size):
            o[j] += p[s, j]


@njit(cache=True, nogil=True, boundscheck=False)
def extreme_partials(parts: np.ndarray, count: int, out: np.ndarray, largest: bool) -> None:
    """Elementwise maximum (`largest`) or minimum over the first `count` shards; NaN wins,
    as in the reduction kernels."""
    p = parts.reshape((parts.shape[0], -1))
    o = out.reshape(-1)
    for j in range(o.size):
        acc = p[0, j]
        for s in range(1, count):
            v = p[s, j]
            if (v > acc if largest else v < acc) or v != v:
                acc = v
        o[j] = acc
