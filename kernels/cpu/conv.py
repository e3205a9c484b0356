"""2-D convolution (NCHW, cross-correlation like PyTorch's conv2d) and its two gradients.

Called from compiled steps ("call" fusion groups) as `fn(*operands, out, *int attrs)`; every
function writes its whole result into `out` (C-contiguous) and allocates only its im2col
scratch. Each one works on chunks of samples: im2col turns a chunk into a (C*kh*kw, chunk*P)
matrix (P = output pixels per sample), one BLAS product (kernels/cpu/blas.py's
`matmul_into`) does the arithmetic, and a
copy loop moves the result to NCHW. A chunk is as many samples as keep the product within
OpenBLAS's small-matrix kernels (`_SMALL_PRODUCT`) and the scratch within `_CHUNK` columns,
at least one; a lone sample's product writes straight into the output.

    conv2d_forward(x, w, out, sh, sw, ph, pw)       out = conv2d(x, w)
    conv2d_grad_input(g, w, dx, sh, sw, ph, pw)     dx = d<g, conv2d(x, w)>/dx  (col2im)
    conv2d_grad_weight(x, g, dw, sh, sw, ph, pw)    dw = d<g, conv2d(x, w)>/dw

Copy loops index zero-based views (an offset index costs a loop its vectorisation), and at
stride 1 im2col and col2im move whole rows of the column matrix by one place instead of
one output row per tap. One BLAS thread, float32, 3x3 pad 1 unless stated, minimum of 30
calls, before these changes -> after, ms, on the shared 2-core AMD EPYC under load (both
measured in the same minute): 64x1x8x8 -> 16: forward 0.075 -> 0.035, grad input 0.085 ->
0.041, grad weight 0.079 -> 0.035; 64x16x8x8 -> 32: 1.13 -> 0.58, 1.16 -> 0.60, 1.38 ->
0.62; 64x1x28x28 -> 16: 0.77 -> 0.27, 0.80 -> 0.28, 0.79 -> 0.28; 64x16x14x14 -> 32: 3.46 ->
1.51, 3.72 -> 1.62, 4.01 -> 1.60; 32x3x32x32 -> 32, 5x5 stride 2 pad 2: 1.29 -> 0.80, 1.37
-> 0.95, 1.62 -> 0.88. `python benchmarks/conv_bench.py` compares the kernels with the
interpreter's numpy im2col + tensordot.
"""

from __future__ import annotations

import numpy as np
from graphc.kernels.cpu.blas import matmul_into
from numba import njit

# Columns per im2col chunk (chunk * Ho * Wo) at most: the scratch (C*kh*kw x _CHUNK floats)
# stays in cache-friendly sizes.
_CHUNK = 4096
# ... and at most this many multiply-adds (m*n*k) per product, when a sample fits: OpenBLAS
# runs products up to 100^3 on its small-matrix kernels, one thread, no packing, at 112
# GFLOP/s on one core for a 32x144 weight times 196 columns, against 73 for 3920 columns
# (SkylakeX kernels, AMD EPYC). A product per sample also writes straight into the output.
_SMALL_PRODUCT = 1_000_000


def largest_gemm_flops(n: int, weight: tuple, pixels: int) -> float:
    """FLOPs (2*m*k*n) of the largest matrix product the kernels below issue for a
    convolution of `n` samples with a weight of shape `weight` (Oc, C, kh, kw) and `pixels`
    output pixels per sample (the BLAS thread count follows it, kernels/cpu/threads.py)."""
    oc, c, kh, kw = weight
    rows = oc * c * kh * kw
    return 2.0 * rows * _chunk.py_func(n, rows, max(pixels, 1)) * pixels


@njit(cache=True, nogil=True)
def _chunk(n, rows, p):  # type: ignore[no-untyped-def]
    """Samples per im2col chunk for `n` samples of `p` output pixels and a weight of `rows`
    = Oc*C*kh*kw entries: at least 1, at most n."""
    c = min(_CHUNK // p, _SMALL_PRODUCT // (rows * p))
    return max(1, min(n, c))


@njit(cache=True, nogil=True)
def _padded_scratch(x, chunk, ph, pw):  # type: ignore[no-untyped-def]
    """Zeros of shape (chunk, C, H + 2*ph, W + 2*pw): `_pad`'s target for every chunk."""
    return np.zeros((chunk, x.shape[1], x.shape[2] + 2 * ph, x.shape[3] + 2 * pw),
                    dtype=x.dtype)


@njit(cache=True, nogil=True)
def _pad(x, n0, nb, ph, pw, xp):  # type: ignore[no-untyped-def]
    """xp[s, c] = x[n0 + s, c] inside a border of ph rows and pw columns, which the caller
    zeroed (`_padded_scratch`) and this never writes."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    for s in range(nb):
        for c in range(C):
            for y in range(H):
                src = x[n0 + s, c, y]
                dst = xp[s, c, y + ph, pw:pw + W]
                for j in range(W):
                    dst[j] = src[j]


@njit(cache=True, nogil=True)
def _im2col_shifted(xp, nb, col, kh, kw, ho, wo):  # type: ignore[no-untyped-def]
    """_im2col for stride 1, where a column row is its neighbour's moved by one place:
    row (a, b) is row (a, b - 1) moved left by one (each output row's last entry read from
    xp), row (a, 0) is row (a - 1, 0) moved up by one output row (the last one read from
    xp). Long contiguous copies instead of one short copy per output row and tap (64x16x14x14
    images, 3x3: 0.49 -> 0.20 ms)."""
    C = xp.shape[1]
    P = ho * wo
    for c in range(C):
        for s in range(nb):
            x2 = xp[s, c]
            for a in range(kh):
                for b in range(kw):
                    r = (c * kh + a) * kw + b
                    dst = col[r, s * P:(s + 1) * P]
                    if b > 0:
                        prev = col[r - 1, s * P + 1:(s + 1) * P]
                        head = dst[:P - 1]
                        for q in range(P - 1):
                            head[q] = prev[q]
                        for i in range(ho):
                            dst[i * wo + wo - 1] = x2[i + a, b + wo - 1]
                        continue
                    first = 0
                    if a > 0:
                        first = ho - 1
                        prev = col[r - kw, s * P + wo:(s + 1) * P]
                        head = dst[:P - wo]
                        for q in range(P - wo):
                            head[q] = prev[q]
                    for i in range(first, ho):
                        part = dst[i * wo:(i + 1) * wo]
                        src = x2[i + a, 0:wo]
                        for j in range(wo):
                            part[j] = src[j]


@njit(cache=True, nogil=True)
def _im2col(xp, nb, col, kh, kw, sh, sw, ho, wo):  # type: ignore[no-untyped-def]
    """col[(c, a, b), (s, i, j)] = xp[s, c, i*sh + a, j*sw + b] (xp: a padded chunk).

    Rows of xp are read through views: flat indices (s, c, y) -> one int would cost the
    loop its vectorisation (2x slower on 8x8 images)."""
    if sh == 1 and sw == 1:
        _im2col_shifted(xp, nb, col, kh, kw, ho, wo)
        return
    C = xp.shape[1]
    P = ho * wo
    for c in range(C):
        for a in range(kh):
            for b in range(kw):
                dst = col[(c * kh + a) * kw + b]
                for s in range(nb):
                    for i in range(ho):
                        at = s * P + i * wo
                        out = dst[at:at + wo]
                        if sw == 1:
                            src = xp[s, c, i * sh + a, b:b + wo]
                            for j in range(wo):
                                out[j] = src[j]
                        else:
                            src = xp[s, c, i * sh + a]
                            for j in range(wo):
                                out[j] = src[j * sw + b]


@njit(cache=True, nogil=True)
def _col2im_shifted(col, nb, dxp, kh, kw, ho, wo):  # type: ignore[no-untyped-def]
    """_col2im for stride 1, the adjoint of _im2col_shifted: from the last row back, each
    row's entries that _im2col_shifted read from xp go to dxp, the rest is added to the row
    it was copied from (long contiguous adds; 0.50 -> 0.33 ms for 64x16x14x14, 3x3).
    Overwrites `col`."""
    C = dxp.shape[1]
    P = ho * wo
    zero = col.dtype.type(0)
    for c in range(C):
        for s in range(nb):
            d2 = dxp[s, c]
            for a in range(kh - 1, -1, -1):
                for b in range(kw - 1, -1, -1):
                    r = (c * kh + a) * kw + b
                    g = col[r, s * P:(s + 1) * P]
                    if b > 0:
                        for i in range(ho):
                            q = i * wo + wo - 1
                            d2[i + a, b + wo - 1] += g[q]
                            g[q] = zero
                        src = g[:P - 1]
                        prev = col[r - 1, s * P + 1:(s + 1) * P]
                        for q in range(P - 1):
                            prev[q] += src[q]
                        continue
                    first = 0
                    if a > 0:
                        first = ho - 1
                        src = g[:P - wo]
                        prev = col[r - kw, s * P + wo:(s + 1) * P]
                        for q in range(P - wo):
                            prev[q] += src[q]
                    for i in range(first, ho):
                        part = g[i * wo:(i + 1) * wo]
                        dst = d2[i + a, 0:wo]
                        for j in range(wo):
                            dst[j] += part[j]


@njit(cache=True, nogil=True)
def _col2im(col, nb, dxp, kh, kw, sh, sw, ho, wo):  # type: ignore[no-untyped-def]
    """dxp[s, c, i*sh + a, j*sw + b] += col[(c, a, b), (s, i, j)]: the adjoint of _im2col
    (dxp zeroed by the caller; at stride 1, `col` is overwritten)."""
    if sh == 1 and sw == 1:
        _col2im_shifted(col, nb, dxp, kh, kw, ho, wo)
        return
    C = dxp.shape[1]
    P = ho * wo
    for c in range(C):
        for a in range(kh):
            for b in range(kw):
                src = col[(c * kh + a) * kw + b]
                for s in range(nb):
                    for i in range(ho):
                        at = s * P + i * wo
                        part = src[at:at + wo]
                        if sw == 1:
                            dst = dxp[s, c, i * sh + a, b:b + wo]
                            for j in range(wo):
                                dst[j] += part[j]
                        else:
                            dst = dxp[s, c, i * sh + a]
                            for j in range(wo):
                                dst[j * sw + b] += part[j]


@njit(cache=True, nogil=True)
def conv2d_forward(x, w, out, sh, sw, ph, pw):  # type: ignore[no-untyped-def]
    """out[n, o, i, j] = sum_{c,a,b} xpad[n, c, i*sh + a, j*sw + b] * w[o, c, a, b]."""
    N, C = x.shape[0], x.shape[1]
    Oc, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    ho, wo = out.shape[2], out.shape[3]
    P = ho * wo
    K = C * kh * kw
    if N == 0 or P == 0:
        return
    chunk = _chunk(N, Oc * K, P)
    wm = w.reshape((Oc, K))
    flat = out.reshape(N * Oc * P)
    colbuf = np.empty(K * chunk * P, dtype=x.dtype)
    resbuf = np.empty(Oc * chunk * P, dtype=x.dtype)
    xp = _padded_scratch(x, chunk, ph, pw)
    for n0 in range(0, N, chunk):
        nb = min(chunk, N - n0)
        m = nb * P
        col = colbuf[:K * m].reshape((K, m))
        _pad(x, n0, nb, ph, pw, xp)
        _im2col(xp, nb, col, kh, kw, sh, sw, ho, wo)
        if nb == 1:
            matmul_into(wm, col, out[n0].reshape((Oc, P)))
            continue
        res = resbuf[:Oc * m].reshape((Oc, m))
        matmul_into(wm, col, res)
        for s in range(nb):
            for o in range(Oc):
                at = ((n0 + s) * Oc + o) * P
                dst = flat[at:at + P]
                src = res[o, s * P:(s + 1) * P]
                for p in range(P):
                    dst[p] = src[p]


@njit(cache=True, nogil=True)
def _gather_g(g, n0, nb, gm):  # type: ignore[no-untyped-def]
    """gm[o, (s, p)] = g[n0 + s, o, p]."""
    Oc = g.shape[1]
    P = g.shape[2] * g.shape[3]
    flat = g.reshape(g.shape[0] * Oc * P)
    for o in range(Oc):
        for s in range(nb):
            at = ((n0 + s) * Oc + o) * P
            src = flat[at:at + P]
            dst = gm[o, s * P:(s + 1) * P]
            for p in range(P):
                dst[p] = src[p]


@njit(cache=True, nogil=True)
def _gather_g_transposed(g, n0, nb, gt):  # type: ignore[no-untyped-def]
    """gt[(s, p), o] = g[n0 + s, o, p]."""
    Oc, P = g.shape[1], g.shape[2] * g.shape[3]
    for s in range(nb):
        gs = g[n0 + s].reshape((Oc, P))
        rows = gt[s * P:(s + 1) * P]
        for p in range(P):
            row = rows[p]
            for o in range(Oc):
                row[o] = gs[o, p]


@njit(cache=True, nogil=True)
def _columns_of_g(g, n0, nb, gbuf):  # type: ignore[no-untyped-def]
    """g[n0:n0 + nb] as an (Oc, nb*P) matrix: the sample itself when nb is 1, else
    gathered into `gbuf`."""
    Oc, P = g.shape[1], g.shape[2] * g.shape[3]
    if nb == 1:
        return g[n0].reshape((Oc, P))
    gm = gbuf[:Oc * nb * P].reshape((Oc, nb * P))
    _gather_g(g, n0, nb, gm)
    return gm


@njit(cache=True, nogil=True)
def conv2d_grad_input(g, w, dx, sh, sw, ph, pw):  # type: ignore[no-untyped-def]
    """dx = the transposed convolution of g with w (col2im of w^T @ g)."""
    N, C, H, W = dx.shape[0], dx.shape[1], dx.shape[2], dx.shape[3]
    Oc, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    ho, wo = g.shape[2], g.shape[3]
    P = ho * wo
    K = C * kh * kw
    if N == 0 or P == 0:
        dx[...] = 0
        return
    chunk = _chunk(N, Oc * K, P)
    wt = w.reshape((Oc, K)).T
    gbuf = np.empty(Oc * chunk * P, dtype=g.dtype)
    colbuf = np.empty(K * chunk * P, dtype=g.dtype)
    Hp, Wp = H + 2 * ph, W + 2 * pw
    dxp = np.empty((chunk, C, Hp, Wp), dtype=g.dtype)
    flat = dxp.reshape(dxp.size)
    zero = g.dtype.type(0)
    for n0 in range(0, N, chunk):
        nb = min(chunk, N - n0)
        m = nb * P
        col = colbuf[:K * m].reshape((K, m))
        gm = _columns_of_g(g, n0, nb, gbuf)
        matmul_into(wt, gm, col)
        for k in range(nb * C * Hp * Wp):
            flat[k] = zero
        _col2im(col, nb, dxp, kh, kw, sh, sw, ho, wo)
        for s in range(nb):
            for c in range(C):
                for y in range(H):
                    src = dxp[s, c, y + ph, pw:pw + W]
                    dst = dx[n0 + s, c, y]
                    for j in range(W):
                        dst[j] = src[j]


@njit(cache=True, nogil=True)
def conv2d_grad_weight(x, g, dw, sh, sw, ph, pw):  # type: ignore[no-untyped-def]
    """dw[o, c, a, b] = sum_{n,i,j} g[n, o, i, j] * xpad[n, c, i*sh + a, j*sw + b]."""
    N, C = x.shape[0], x.shape[1]
    Oc, kh, kw = dw.shape[0], dw.shape[2], dw.shape[3]
    ho, wo = g.shape[2], g.shape[3]
    P = ho * wo
    K = C * kh * kw
    dwm = dw.reshape((Oc, K))
    if N == 0 or P == 0:
        dwm[...] = 0
        return
    chunk = _chunk(N, Oc * K, P)
    gbuf = np.empty(Oc * chunk * P, dtype=x.dtype)
    colbuf = np.empty(K * chunk * P, dtype=x.dtype)
    # dw^T = col @ g^T per chunk, g^T read as a transposed view (87 GFLOP/s on one core
    # against 70 for g @ col^T, 32x144 weight, 196 columns) or, for weights of more than
    # 1200 entries, copied to (m, Oc) first: OpenBLAS's small-matrix kernels then take the
    # product (114 GFLOP/s, and 2 us per sample for the copy); they skip transposed ones
    # that large, and for small weights (16x9) the view is the faster (88 against 68).
    copy_g = Oc * K > 1200
    total = np.empty((K, Oc), dtype=x.dtype)
    part = np.empty((K, Oc), dtype=x.dtype)
    gtbuf = np.empty(chunk * P * Oc if copy_g else 0, dtype=x.dtype)
    xp = _padded_scratch(x, chunk, ph, pw)
    for n0 in range(0, N, chunk):
        nb = min(chunk, N - n0)
        m = nb * P
        col = colbuf[:K * m].reshape((K, m))
        _pad(x, n0, nb, ph, pw, xp)
        _im2col(xp, nb, col, kh, kw, sh, sw, ho, wo)
        target = total if n0 == 0 else part
        if copy_g:
            gt = gtbuf[:m * Oc].reshape((m, Oc))
            _gather_g_transposed(g, n0, nb, gt)
            matmul_into(col, gt, target)
        else:
            matmul_into(col, _columns_of_g(g, n0, nb, gbuf).T, target)
        if n0 > 0:
            total += part
    for o in range(Oc):
        row = dwm[o]
        for k in range(K):
            row[k] = total[k, o]
