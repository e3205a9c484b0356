"""Counter-based randomness: the dropout keep-mask as a fusable elementwise primitive.

`dropout_keep(x, counter, seed, threshold)` is True where element i of `x`'s shape survives:
a hash of (seed, counter, flat index i) — SplitMix64, see kernels/cpu/rng.py for the exact
definition — compared with `threshold` / 2**24. The same bits come from the numpy reference
below (the interpreter) and from the scalar body the code generator inlines into fused
loops, so the interpreter and compiled code draw identical masks. `counter` is an int64
scalar (a state leaf the training step advances); nothing else carries RNG state.
"""

from __future__ import annotations

import numpy as np

from graphc.ir import Node
from graphc.ops.registry import InferError, defop

_G = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def keep_mask(shape: tuple, seed: int, counter: int, threshold: int) -> np.ndarray:
    """The bool keep-mask of `shape` (numpy; bit-identical to
    graphc.kernels.cpu.rng.dropout_keep)."""
    with np.errstate(over="ignore"):
        s = np.array(seed, dtype=np.int64).astype(np.uint64).reshape(1)
        c = np.array(counter, dtype=np.int64).astype(np.uint64).reshape(1)
        key = _mix(_mix(s + _G) + c * _G)
        index = np.arange(int(np.prod(shape)), dtype=np.uint64)
        bits = _mix(key + (index + np.uint64(1)) * _G)
    return ((bits >> np.uint64(40)) >= np.uint64(threshold)).reshape(shape)


def rank_seed(seed: int, rank: int) -> int:
    """The seed rank `rank` of a data-parallel step draws its masks with: `seed` on rank 0
    (one rank draws what one process does), a hash of (seed, rank) on the others."""
    if rank == 0:
        return seed
    with np.errstate(over="ignore"):
        s = np.array(seed, dtype=np.int64).astype(np.uint64).reshape(1)
        r = np.array(rank, dtype=np.uint64).reshape(1)
        mixed = _mix(_mix(s + _G) ^ _mix(r * _G))
    return int(mixed[0] >> np.uint64(1))   # non-negative int64, as dropout's seeds are


def _keep_infer(nodes: list[Node], seed: int, threshold: int) -> tuple:
    x, counter = nodes
    if counter.shape != () or counter.dtype != "int64":
        raise InferError(f"the counter must be an int64 scalar, got {counter.shape} "
                         f"{counter.dtype}")
    return x.shape, "bool"


def _keep_ref(x: np.ndarray, counter: np.ndarray, seed: int, threshold: int) -> np.ndarray:
    return keep_mask(x.shape, seed, int(np.asarray(counter).reshape(())), threshold)


# `{0}` (x) only gives the shape: the body reads the element's flat index `{_flat}`.
defop("dropout_keep", "elementwise", _keep_infer, _keep_ref, arity=2,
      scalar="dropout_keep({seed}, {1}, {_flat}, {threshold})")

__all__ = ["keep_mask", "rank_seed"]
