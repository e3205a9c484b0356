"""2-D max and average pooling over NCHW arrays (no padding), forward and backward.

Called from compiled steps ("call" fusion groups) as `fn(*operands, out, *int attrs)`:

    max_pool2d_forward(x, out, kh, kw, sh, sw)        window maxima (NaN propagates)
    max_pool2d_grad(g, x, dx, kh, kw, sh, sw)         g scattered (added) to each window's
                                                      argmax: the first maximum in row-major
                                                      order, as PyTorch and np.argmax pick
    max_pool2d_gather(h, x, out, kh, kw, sh, sw)      h read at each window's argmax of x
                                                      (the adjoint of max_pool2d_grad in g)
    avg_pool2d_forward(x, out, kh, kw, sh, sw)        window means
    avg_pool2d_grad(g, dx, kh, kw, sh, sw)            g / (kh*kw) added over each window

Direct loops: pooling is memory-bound and touches each input a few times, so there is
nothing for BLAS to do. `python benchmarks/conv_bench.py` (medians, machine under load):
2x2 pooling of 64x32x28x28 float32: max 1.7 ms (numpy's strided-window reference 48.7 ms),
its gradient 8.1 ms (32.0), average 1.3 ms (22.2), its gradient 1.3 ms (1.3). The argmax
is computed with branch-free selects: with branches, random data made the gradient 1.8x
slower (3.6 vs 1.9 ms for the argmax loop alone). 2x2 windows with stride 2, the common
case, have loops of their own without the window loop (CPU time of one thread, 64x16x28x28
float32 on a busy machine: max 1.16 -> 0.135 ms, its gradient 2.45 -> 1.27 ms).
"""

from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True, inline="always")
def _argmax(xc, y0, x0, kh, kw):  # type: ignore[no-untyped-def]
    """Flat index (row * W + col) in the 2-D map `xc` of the first maximum (or first NaN)
    of the window at (y0, x0). Branch-free selects: random data mispredicts branches."""
    W = xc.shape[1]
    best = xc[y0, x0]
    at = y0 * W + x0
    for a in range(kh):
        for b in range(kw):
            v = xc[y0 + a, x0 + b]
            take = _take(v, best)
            best = v if take else best
            at = (y0 + a) * W + x0 + b if take else at
    return at


@njit(cache=True, nogil=True, inline="always")
def _take(v, best):  # type: ignore[no-untyped-def]
    """Whether `v` replaces `best` as the first maximum (or first NaN) so far."""
    return (v > best) | ((v != v) & (best == best))


@njit(cache=True, nogil=True)
def _max_pool_2x2(x, out):  # type: ignore[no-untyped-def]
    """max_pool2d_forward for 2x2 windows, stride 2: rows read in pairs, no window loop
    (8x faster than the general loop on 64x16x28x28)."""
    N, C, ho, wo = out.shape[0], out.shape[1], out.shape[2], out.shape[3]
    for n in range(N):
        for c in range(C):
            xc = x[n, c]
            oc = out[n, c]
            for i in range(ho):
                r0 = xc[2 * i]
                r1 = xc[2 * i + 1]
                o = oc[i]
                for j in range(wo):
                    best = r0[2 * j]
                    v = r0[2 * j + 1]
                    best = v if (v > best or v != v) else best
                    v = r1[2 * j]
                    best = v if (v > best or v != v) else best
                    v = r1[2 * j + 1]
                    best = v if (v > best or v != v) else best
                    o[j] = best


@njit(cache=True, nogil=True)
def _max_pool_grad_2x2(g, x, dx):  # type: ignore[no-untyped-def]
    """max_pool2d_grad for 2x2 windows, stride 2: every window of dx is written whole
    (g at its argmax, zeros elsewhere) with selects, no scatter; rows and columns no window
    covers are zeroed (2x faster than the general loop on 64x16x28x28; finding the maximum
    with plain comparisons and NaNs with a separate test, 1.22 -> 0.72 ms more)."""
    N, C, ho, wo = g.shape[0], g.shape[1], g.shape[2], g.shape[3]
    H, W = x.shape[2], x.shape[3]
    zero = dx.dtype.type(0)
    for n in range(N):
        for c in range(C):
            xc = x[n, c]
            dc = dx[n, c]
            gc = g[n, c]
            for i in range(ho):
                r0 = xc[2 * i]
                r1 = xc[2 * i + 1]
                d0 = dc[2 * i]
                d1 = dc[2 * i + 1]
                gi = gc[i]
                for j in range(wo):
                    a, b = r0[2 * j], r0[2 * j + 1]
                    c2, d = r1[2 * j], r1[2 * j + 1]
                    # the first NaN if there is one, else the first element equal to the
                    # maximum of plain comparisons (which vectorise; a NaN-propagating
                    # running maximum does not)
                    na, nb, nc, nd = a != a, b != b, c2 != c2, d != d
                    best = max(max(a, b), max(c2, d))
                    clean = ~(na | nb | nc | nd)
                    at_a = ((a == best) & clean) | na
                    at_b = (((b == best) & clean) | nb) & ~at_a
                    at_c = (((c2 == best) & clean) | nc) & ~(at_a | at_b)
                    at_d = ~(at_a | at_b | at_c)
                    gv = gi[j]
                    d0[2 * j] = gv if at_a else zero
                    d0[2 * j + 1] = gv if at_b else zero
                    d1[2 * j] = gv if at_c else zero
                    d1[2 * j + 1] = gv if at_d else zero
                for j in range(2 * wo, W):
                    d0[j] = zero
                    d1[j] = zero
            for y in range(2 * ho, H):
                for j in range(W):
                    dc[y, j] = zero


@njit(cache=True, nogil=True)
def max_pool2d_forward(x, out, kh, kw, sh, sw):  # type: ignore[no-untyped-def]
    if kh == 2 and kw == 2 and sh == 2 and sw == 2:
        _max_pool_2x2(x, out)
        return
    N, C, ho, wo = out.shape[0], out.shape[1], out.shape[2], out.shape[3]
    for n in range(N):
        for c in range(C):
            for i in range(ho):
                for j in range(wo):
                    y0, x0 = i * sh, j * sw
                    best = x[n, c, y0, x0]
                    for a in range(kh):
                        for b in range(kw):
                            v = x[n, c, y0 + a, x0 + b]
                            if v > best or v != v:
                                best = v
                    out[n, c, i, j] = best


@njit(cache=True, nogil=True)
def max_pool2d_grad(g, x, dx, kh, kw, sh, sw):  # type: ignore[no-untyped-def]
    if kh == 2 and kw == 2 and sh == 2 and sw == 2:
        _max_pool_grad_2x2(g, x, dx)
        return
    N, C, ho, wo = g.shape[0], g.shape[1], g.shape[2], g.shape[3]
    dx[...] = 0
    HW = x.shape[2] * x.shape[3]
    for n in range(N):
        for c in range(C):
            xc = x[n, c]
            dflat = dx[n, c].reshape(HW)
            for i in range(ho):
                for j in range(wo):
                    dflat[_argmax(xc, i * sh, j * sw, kh, kw)] += g[n, c, i, j]


@njit(cache=True, nogil=True)
def max_pool2d_gather(h, x, out, kh, kw, sh, sw):  # type: ignore[no-untyped-def]
    N, C, ho, wo = out.shape[0], out.shape[1], out.shape[2], out.shape[3]
    HW = x.shape[2] * x.shape[3]
    for n in range(N):
        for c in range(C):
            xc = x[n, c]
            hflat = h[n, c].reshape(HW)
            for i in range(ho):
                for j in range(wo):
                    out[n, c, i, j] = hflat[_argmax(xc, i * sh, j * sw, kh, kw)]


@njit(cache=True, nogil=True)
def avg_pool2d_forward(x, out, kh, kw, sh, sw):  # type: ignore[no-untyped-def]
    N, C, ho, wo = out.shape[0], out.shape[1], out.shape[2], out.shape[3]
    scale = x.dtype.type(1.0 / (kh * kw))
    for n in range(N):
        for c in range(C):
            for i in range(ho):
                for j in range(wo):
                    y0, x0 = i * sh, j * sw
                    acc = x.dtype.type(0)
                    for a in range(kh):
                        for b in range(kw):
                            acc += x[n, c, y0 + a, x0 + b]
                    out[n, c, i, j] = acc * scale


@njit(cache=True, nogil=True)
def avg_pool2d_grad(g, dx, kh, kw, sh, sw):  # type: ignore[no-untyped-def]
    N, C, ho, wo = g.shape[0], g.shape[1], g.shape[2], g.shape[3]
    scale = g.dtype.type(1.0 / (kh * kw))
    dx[...] = 0
    for n in range(N):
        for c in range(C):
            for i in range(ho):
                for j in range(wo):
                    v = g[n, c, i, j] * scale
                    y0, x0 = i * sh, j * sw
                    for a in range(kh):
                        for b in range(kw):
                            dx[n, c, y0 + a, x0 + b] += v
