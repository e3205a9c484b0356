"""Tiled shared-memory matrix product for the CUDA target.

One kernel computes out[z] = a[z] @ b[z] for a batch of products. Operands are read
through (offset, batch stride, row stride, column stride), so transposed operands (the
backward's a.T @ g and g @ b.T), slices and broadcast batches (batch stride 0) need no
copy. Each block computes a TILE x TILE tile of the output: it stages TILE x TILE tiles of
a and b in shared memory and every thread sums its dot product over the tiles in order,
so results are reproducible run to run (no atomics, fixed order). Blocks loop over the
(batch, tile-row, tile-column) jobs, so any grid size is correct.
"""

from __future__ import annotations

from graphc.kernels.cuda.common import CTOR, DECORATOR, Param

MATMUL = '''
{decorator}
def kernel(m, n, k, nbatch, a, ao, asb, asr, asc, b, bo, bsb, bsr, bsc, out):
    """out[z, i, j] = sum_p a[z, i, p] * b[z, p, j]; out dense (nbatch, m, n)."""
    sa = cuda.shared.array(({T}, {T}), {DT})
    sb = cuda.shared.array(({T}, {T}), {DT})
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tiles_m = (m + {T} - 1) // {T}
    tiles_n = (n + {T} - 1) // {T}
    per_batch = tiles_m * tiles_n
    for job in range(cuda.blockIdx.x, nbatch * per_batch, cuda.gridDim.x):
        z = job // per_batch
        rest = job - z * per_batch
        row = (rest // tiles_n) * {T} + ty
        col = (rest % tiles_n) * {T} + tx
        abase = ao + z * asb + row * asr
        bbase = bo + z * bsb + col * bsc
        acc = {DT}(0)
        for k0 in range(0, k, {T}):
            if row < m and k0 + tx < k:
                sa[ty, tx] = a[abase + (k0 + tx) * asc]
            else:
                sa[ty, tx] = {DT}(0)
            if col < n and k0 + ty < k:
                sb[ty, tx] = b[bbase + (k0 + ty) * bsr]
            else:
                sb[ty, tx] = {DT}(0)
            cuda.syncthreads()
            for p in range({T}):
                acc += sa[ty, p] * sb[p, tx]
            cuda.syncthreads()
        if row < m and col < n:
            out[(z * m + row) * n + col] = acc
'''


def matmul_source(tile: int, dtype: str) -> tuple[str, list[Param]]:
    """Source of the tiled matmul for `dtype` with TILE = `tile` (block: tile x tile)."""
    params: list[Param] = [("int", "m"), ("int", "n"), ("int", "k"), ("int", "nbatch")]
    for name in ("a", "b"):
        params += [(dtype, name)] + [("int", f"{name}{s}") for s in ("o", "sb", "sr", "sc")]
    params.append((dtype, "out"))
    return MATMUL.format(decorator=DECORATOR, T=tile, DT=CTOR[dtype]), params
