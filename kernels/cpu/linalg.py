"""Batched matrix products of sharded steps: BLAS (kernels/cpu/blas.py), never generated loops."""

from __future__ import annotations

from graphc.kernels.cpu.blas import matmul_into
from numba import njit


@njit(cache=True, nogil=True)
def batched_matmul(a, b, out):  # type: ignore[no-untyped-def]
    """out[i] = a[i or 0] @ b[i or 0] for 3-D contiguous arrays; a batch of 1 broadcasts."""
    for i in range(out.shape[0]):
        matmul_into(a[i if a.shape[0] > 1 else 0], b[i if b.shape[0] > 1 else 0], out[i])
