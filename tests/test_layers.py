"""Convolution, pooling and the layers of `gc.nn` (conv2d, pools, flatten, batch_norm,
layer_norm, dropout, embedding), training / inference views, and the custom-op API.

Every new primitive is checked three ways, as in tests/test_ops.py:
1. its numpy reference (what `gc.evaluate` runs) against an independent naive-loop
   implementation written here, in float64;
2. `gc.grad` against central finite differences in float64 (tests/helpers.py: first order
   along a random direction, and second order: Hessian-vector products);
3. the compiled program (Numba kernels of kernels/cpu/conv.py and pool.py) against the
   interpreter, float32 and float64, at two batch sizes (the batch axis is a run-time size).

Tolerances. Forward references: 1e-13 relative to max|expected| (float64; sums of <= 50
products, each rounding once: measured <= 3e-15). Gradients: tests/helpers.py defaults.
Compiled vs interpreter: float64 1e-12 relative to max|expected| (BLAS and numpy's
tensordot sum in different orders: measured ~1e-15); float32 2e-5 relative to max|expected|
(float32 sums of <= 50 terms, eps 6e-8: measured ~5e-7).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

import graphc as gc
from graphc.ops import conv as cv
from tests.helpers import assert_arrays_match, check_grad_fd, check_hvp_fd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# -- independent naive implementations ----------------------------------------------------


def pad(x: np.ndarray, p: tuple) -> np.ndarray:
    out = np.zeros(x.shape[:2] + (x.shape[2] + 2 * p[0], x.shape[3] + 2 * p[1]))
    out[:, :, p[0]:p[0] + x.shape[2], p[1]:p[1] + x.shape[3]] = x
    return out


def naive_conv(x, w, s=(1, 1), p=(0, 0)):
    n, _, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = pad(x, p)
    ho, wo = (h + 2 * p[0] - kh) // s[0] + 1, (wd + 2 * p[1] - kw) // s[1] + 1
    out = np.zeros((n, o, ho, wo))
    for b in range(n):
        for k in range(o):
            for i in range(ho):
                for j in range(wo):
                    patch = xp[b, :, i * s[0]:i * s[0] + kh, j * s[1]:j * s[1] + kw]
                    out[b, k, i, j] = np.sum(patch * w[k])
    return out


def naive_conv_general(x, w, s=(1, 1), p=(0, 0), d=(1, 1), groups=1):
    """torch.nn.functional.conv2d's definition, tap by tap (dilation, groups)."""
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = pad(x, p)
    ho = (h + 2 * p[0] - d[0] * (kh - 1) - 1) // s[0] + 1
    wo = (wd + 2 * p[1] - d[1] * (kw - 1) - 1) // s[1] + 1
    out = np.zeros((n, o, ho, wo))
    for b in range(n):
        for k in range(o):
            first = k // (o // groups) * cg
            for i in range(ho):
                for j in range(wo):
                    for ch in range(cg):
                        for a in range(kh):
                            for e in range(kw):
                                out[b, k, i, j] += w[k, ch, a, e] * xp[
                                    b, first + ch, i * s[0] + a * d[0], j * s[1] + e * d[1]]
    return out


def naive_conv1d(x, w, s=1, p=0, d=1, groups=1):
    return naive_conv_general(x[:, :, None, :], w[:, :, None, :], (1, s), (0, p), (1, d),
                              groups)[:, :, 0, :]


def pad_with(x, p, value):
    out = np.full(x.shape[:2] + (x.shape[2] + 2 * p[0], x.shape[3] + 2 * p[1]), value)
    out[:, :, p[0]:p[0] + x.shape[2], p[1]:p[1] + x.shape[3]] = x
    return out


def naive_conv_grad_input(g, w, s, p, hw):
    n, o, ho, wo = g.shape
    _, c, kh, kw = w.shape
    dxp = np.zeros((n, c, hw[0] + 2 * p[0], hw[1] + 2 * p[1]))
    for b in range(n):
        for k in range(o):
            for i in range(ho):
                for j in range(wo):
                    rows, cols = slice(i * s[0], i * s[0] + kh), slice(j * s[1], j * s[1] + kw)
                    dxp[b, :, rows, cols] += g[b, k, i, j] * w[k]
    return dxp[:, :, p[0]:p[0] + hw[0], p[1]:p[1] + hw[1]]


def naive_conv_grad_weight(x, g, s, p, khw):
    xp = pad(x, p)
    n, o, ho, wo = g.shape
    dw = np.zeros((o, x.shape[1]) + tuple(khw))
    for b in range(n):
        for k in range(o):
            for i in range(ho):
                for j in range(wo):
                    dw[k] += g[b, k, i, j] * xp[b, :, i * s[0]:i * s[0] + khw[0],
                                                j * s[1]:j * s[1] + khw[1]]
    return dw


def naive_windows(x, k, s):
    """Yield (b, c, i, j, window) over pooling windows."""
    n, c, h, w = x.shape
    for b in range(n):
        for ch in range(c):
            for i in range((h - k[0]) // s[0] + 1):
                for j in range((w - k[1]) // s[1] + 1):
                    yield b, ch, i, j, x[b, ch, i * s[0]:i * s[0] + k[0], j * s[1]:j * s[1] + k[1]]


def pooled_shape(x, k, s):
    return x.shape[:2] + ((x.shape[2] - k[0]) // s[0] + 1, (x.shape[3] - k[1]) // s[1] + 1)


def naive_max_pool(x, k, s):
    out = np.zeros(pooled_shape(x, k, s))
    for b, c, i, j, win in naive_windows(x, k, s):
        out[b, c, i, j] = win.max()
    return out


def naive_argmax(win):
    flat = int(np.argmax(win))
    return flat // win.shape[1], flat % win.shape[1]


def naive_max_pool_grad(g, x, k, s):
    dx = np.zeros(x.shape)
    for b, c, i, j, win in naive_windows(x, k, s):
        a, e = naive_argmax(win)
        dx[b, c, i * s[0] + a, j * s[1] + e] += g[b, c, i, j]
    return dx


def naive_max_pool_gather(h, x, k, s):
    out = np.zeros(pooled_shape(x, k, s))
    for b, c, i, j, win in naive_windows(x, k, s):
        a, e = naive_argmax(win)
        out[b, c, i, j] = h[b, c, i * s[0] + a, j * s[1] + e]
    return out


def naive_avg_pool(x, k, s):
    out = np.zeros(pooled_shape(x, k, s))
    for b, c, i, j, win in naive_windows(x, k, s):
        out[b, c, i, j] = win.mean()
    return out


def naive_avg_pool_grad(g, k, s, hw):
    dx = np.zeros(g.shape[:2] + tuple(hw))
    for b in range(g.shape[0]):
        for c in range(g.shape[1]):
            for i in range(g.shape[2]):
                for j in range(g.shape[3]):
                    dx[b, c, i * s[0]:i * s[0] + k[0], j * s[1]:j * s[1] + k[1]] += \
                        g[b, c, i, j] / (k[0] * k[1])
    return dx


# -- the op table ---------------------------------------------------------------------------


def normal(*shape):
    return lambda rng, n: rng.standard_normal(_shape(shape, n))


def _shape(shape, n):
    return tuple(n if d is None else d for d in shape)


def distinct(*shape):
    """Values at least 0.2 apart in random order (no ties inside pooling windows)."""
    def make(rng, n):
        dims = _shape(shape, n)
        size = int(np.prod(dims))
        base = (rng.permutation(size) - size / 2) * 0.25 + rng.uniform(-0.02, 0.02, size)
        return base.reshape(dims) / (size / 8)
    return make


@dataclass(frozen=True)
class Case:
    """inputs: name -> (shape with None for the batch axis, data maker); build(v) the op;
    expect(**arrays) the naive float64 expectation."""

    id: str
    inputs: dict
    build: Callable
    expect: Callable
    hvp: bool = True


S2P1 = ((2, 2), (1, 1))
CASES = [
    Case("conv2d", {"x": ((None, 2, 6, 5), normal), "w": ((3, 2, 3, 3), normal)},
         lambda v: cv.conv2d(v.x, v.w), lambda x, w: naive_conv(x, w)),
    Case("conv2d_stride2_pad1", {"x": ((None, 2, 7, 6), normal), "w": ((4, 2, 3, 2), normal)},
         lambda v: cv.conv2d(v.x, v.w, stride=2, padding=1),
         lambda x, w: naive_conv(x, w, *S2P1)),
    Case("conv2d_rect_stride_pad", {"x": ((None, 3, 5, 6), normal), "w": ((2, 3, 2, 3), normal)},
         lambda v: cv.conv2d(v.x, v.w, stride=(2, 1), padding=(1, 2)),
         lambda x, w: naive_conv(x, w, (2, 1), (1, 2))),
    Case("conv2d_1x1", {"x": ((None, 3, 4, 4), normal), "w": ((2, 3, 1, 1), normal)},
         lambda v: cv.conv2d(v.x, v.w), lambda x, w: naive_conv(x, w)),
    Case("conv2d_grad_input", {"g": ((None, 3, 4, 3), normal), "w": ((3, 2, 3, 3), normal)},
         lambda v: cv.conv2d_grad_input(v.g, v.w, 1, 0, (6, 5)),
         lambda g, w: naive_conv_grad_input(g, w, (1, 1), (0, 0), (6, 5))),
    Case("conv2d_grad_input_stride2_pad1",
         {"g": ((None, 3, 4, 3), normal), "w": ((3, 2, 3, 3), normal)},
         lambda v: cv.conv2d_grad_input(v.g, v.w, 2, 1, (7, 6)),
         lambda g, w: naive_conv_grad_input(g, w, *S2P1, (7, 6))),
    Case("conv2d_grad_weight", {"x": ((None, 2, 6, 5), normal), "g": ((None, 3, 4, 3), normal)},
         lambda v: cv.conv2d_grad_weight(v.x, v.g, 1, 0, (3, 3)),
         lambda x, g: naive_conv_grad_weight(x, g, (1, 1), (0, 0), (3, 3))),
    Case("conv2d_grad_weight_stride2_pad1",
         {"x": ((None, 2, 7, 6), normal), "g": ((None, 3, 4, 3), normal)},
         lambda v: cv.conv2d_grad_weight(v.x, v.g, 2, 1, (3, 3)),
         lambda x, g: naive_conv_grad_weight(x, g, *S2P1, (3, 3))),
    Case("max_pool2d", {"x": ((None, 2, 6, 5), distinct)},
         lambda v: cv.max_pool2d(v.x, 2), lambda x: naive_max_pool(x, (2, 2), (2, 2))),
    Case("max_pool2d_overlapping", {"x": ((None, 2, 6, 5), distinct)},
         lambda v: cv.max_pool2d(v.x, 3, stride=(2, 1)),
         lambda x: naive_max_pool(x, (3, 3), (2, 1))),
    Case("max_pool2d_grad", {"g": ((None, 2, 2, 3), normal), "x": ((None, 2, 6, 5), distinct)},
         lambda v: gc.ops.make("max_pool2d_grad", [v.g, v.x], kernel=(3, 3), stride=(2, 1)),
         lambda g, x: naive_max_pool_grad(g, x, (3, 3), (2, 1))),
    Case("max_pool2d_gather",
         {"h": ((None, 2, 6, 5), normal), "x": ((None, 2, 6, 5), distinct)},
         lambda v: gc.ops.make("max_pool2d_gather", [v.h, v.x], kernel=(3, 3), stride=(2, 1)),
         lambda h, x: naive_max_pool_gather(h, x, (3, 3), (2, 1))),
    Case("avg_pool2d", {"x": ((None, 2, 6, 5), normal)},
         lambda v: cv.avg_pool2d(v.x, 2), lambda x: naive_avg_pool(x, (2, 2), (2, 2))),
    Case("avg_pool2d_overlapping", {"x": ((None, 2, 6, 5), normal)},
         lambda v: cv.avg_pool2d(v.x, (3, 2), stride=1),
         lambda x: naive_avg_pool(x, (3, 2), (1, 1))),
    Case("conv2d_dilated", {"x": ((None, 2, 7, 6), normal), "w": ((3, 2, 3, 2), normal)},
         lambda v: cv.conv2d(v.x, v.w, padding=1, dilation=(2, 1)),
         lambda x, w: naive_conv_general(x, w, (1, 1), (1, 1), (2, 1))),
    Case("conv2d_groups_stride2", {"x": ((None, 4, 5, 5), normal), "w": ((6, 2, 3, 3), normal)},
         lambda v: cv.conv2d(v.x, v.w, stride=2, groups=2),
         lambda x, w: naive_conv_general(x, w, (2, 2), (0, 0), (1, 1), 2)),
    Case("conv2d_depthwise_dilated",
         {"x": ((None, 3, 6, 6), normal), "w": ((3, 1, 2, 2), normal)},
         lambda v: cv.conv2d(v.x, v.w, padding=(0, 1), dilation=2, groups=3),
         lambda x, w: naive_conv_general(x, w, (1, 1), (0, 1), (2, 2), 3)),
    Case("conv1d", {"x": ((None, 2, 9), normal), "w": ((3, 2, 3), normal)},
         lambda v: cv.conv1d(v.x, v.w, stride=2, padding=1, dilation=2),
         lambda x, w: naive_conv1d(x, w, 2, 1, 2)),
    Case("conv1d_groups", {"x": ((None, 4, 7), normal), "w": ((2, 2, 2), normal)},
         lambda v: cv.conv1d(v.x, v.w, groups=2), lambda x, w: naive_conv1d(x, w, groups=2)),
    Case("max_pool2d_padded", {"x": ((None, 2, 6, 5), distinct)},
         lambda v: cv.max_pool2d(v.x, 3, stride=2, padding=1),
         lambda x: naive_max_pool(pad_with(x, (1, 1), -np.inf), (3, 3), (2, 2))),
    Case("avg_pool2d_padded", {"x": ((None, 2, 6, 5), normal)},
         lambda v: cv.avg_pool2d(v.x, (2, 3), stride=1, padding=(1, 1)),
         lambda x: naive_avg_pool(pad_with(x, (1, 1), 0.0), (2, 3), (1, 1))),
    Case("avg_pool2d_grad", {"g": ((None, 2, 4, 4), normal)},
         lambda v: gc.ops.make("avg_pool2d_grad", [v.g], kernel=(3, 2), stride=(1, 1),
                               input_hw=(6, 5)),
         lambda g: naive_avg_pool_grad(g, (3, 2), (1, 1), (6, 5))),
]
CASE_IDS = [c.id for c in CASES]


def case_data(c: Case, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {name: make(*shape)(rng, n) for name, (shape, make) in c.inputs.items()}


def case_graph(c: Case, dtype: str, graph: gc.Graph | None = None, prefix: str = ""
               ) -> tuple[gc.Graph, SimpleNamespace, gc.Value]:
    g = graph or gc.Graph(c.id, dtype=dtype)
    v = SimpleNamespace(**{name: g.input(prefix + name, shape)
                           for name, (shape, _) in c.inputs.items()})
    return g, v, c.build(v)


@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
def test_reference_matches_naive_numpy(c: Case) -> None:
    rng = np.random.default_rng(0)
    data = case_data(c, rng, 2)
    out = case_graph(c, "float64")[2]
    got = gc.evaluate(out, data)
    want = c.expect(**data)
    assert got.dtype == np.float64 and got.shape == want.shape
    assert_arrays_match(got, want, rtol=1e-13, atol=0.0, what=c.id)
    g32 = gc.evaluate(case_graph(c, "float32")[2],
                      {k: a.astype(np.float32) for k, a in data.items()})
    assert g32.dtype == np.float32


@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
def test_gradient_matches_finite_differences(c: Case) -> None:
    rng = np.random.default_rng(1)
    data = case_data(c, rng, 2)
    g, v, out = case_graph(c, "float64")
    f = gc.sum(out * g.const(rng.standard_normal(_shape(out.shape, 1))))
    wrt = [getattr(v, name) for name in c.inputs]
    check_grad_fd(f, wrt, [data[name] for name in c.inputs], rng, what=c.id)
    if c.hvp:
        check_hvp_fd(f, wrt, [data[name] for name in c.inputs], rng, what=c.id)


@functools.cache
def compiled_table(dtype: str) -> dict:
    """One program holding every case and the gradients of sum_k sum(op_k * w_k) with
    respect to every input, compiled once; run at batch sizes 3 and 2."""
    rng = np.random.default_rng(2)
    g = gc.Graph("layers_table", dtype=dtype)
    outs, terms, wrt = [], [], []
    for k, c in enumerate(CASES):
        _, v, out = case_graph(c, dtype, g, prefix=f"c{k}_")
        outs.append(out)
        terms.append(gc.sum(out * g.const(rng.standard_normal(_shape(out.shape, 1)))))
        wrt += [getattr(v, name) for name in c.inputs]
    loss = functools.reduce(gc.add, terms)
    grads = gc.grad(loss, wrt)
    run = gc.compile(outs + grads)
    results = {}
    for n in (3, 2):
        feeds = {}
        for k, c in enumerate(CASES):
            for name, a in case_data(c, np.random.default_rng(n * 100 + k), n).items():
                feeds[f"c{k}_{name}"] = a.astype(dtype)
        results[n] = (run(**feeds), gc.evaluate(outs + grads, feeds), [x.name for x in wrt])
    return results


def assert_close(got: np.ndarray, want: np.ndarray, dtype: str, what: str) -> None:
    rtol = 2e-5 if dtype == "float32" else 1e-12
    assert got.shape == want.shape and got.dtype == want.dtype, what
    assert_arrays_match(got, want, rtol=rtol, atol=0.0, what=what)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k", range(len(CASES)), ids=CASE_IDS)
def test_compiled_matches_interpreter(k: int, dtype: str) -> None:
    for n, (got, want, names) in compiled_table(dtype).items():
        assert_close(got[k], want[k], dtype, f"{CASES[k].id} batch {n}")
        for j, name in enumerate(names):
            if name.startswith(f"c{k}_"):
                i = len(CASES) + j
                assert_close(got[i], want[i], dtype, f"d/d{name} batch {n}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("x_shape, w_shape, stride", [
    ((5, 9, 18, 18), (16, 9, 3, 3), 1),    # 2 samples per chunk: chunks of 2, 2, 1
    ((3, 16, 16, 16), (32, 16, 3, 3), 1),  # one sample per chunk
    ((3, 1, 40, 40), (16, 1, 3, 3), 1),    # chunks of 2, 1; a small weight
    ((5, 8, 20, 20), (16, 8, 3, 3), 2),    # every sample in one chunk
], ids=["chunks_2_2_1", "per_sample", "small_weight", "one_chunk"])
def test_compiled_conv_in_chunks_of_samples(x_shape: tuple, w_shape: tuple, stride: int,
                                            dtype: str) -> None:
    """Batches the kernels split into chunks of samples (one product per chunk; a lone
    sample's product writes straight into the output and the weight gradient sums over
    chunks): forward and both gradients, compiled against the interpreter."""
    rng = np.random.default_rng(5)
    g = gc.Graph(dtype=dtype)
    x, w = g.input("x", (None,) + x_shape[1:]), g.input("w", w_shape)
    y = cv.conv2d(x, w, stride=stride, padding=1)
    weights = g.const(rng.standard_normal((x_shape[0],) + tuple(y.shape[1:])).astype(dtype))
    outs = [y, *gc.grad(gc.sum(y * weights), [x, w])]
    feeds = {"x": rng.standard_normal(x_shape).astype(dtype),
             "w": rng.standard_normal(w_shape).astype(dtype)}
    for got, want, what in zip(gc.compile(outs)(**feeds), gc.evaluate(outs, feeds),
                               ("conv2d", "d/dx", "d/dw")):
        assert_close(got, want, dtype, what)


def test_max_pool_ties_go_to_the_first_maximum_and_nan_propagates() -> None:
    g = gc.Graph(dtype="float32")
    x = g.input("x", (1, 1, 2, 4))
    data = np.array([[[[1.0, 3.0, 0.0, np.nan], [3.0, 2.0, 5.0, 5.0]]]], np.float32)
    out = gc.nn.max_pool2d(x, 2)
    dx = gc.grad(gc.sum(gc.where(gc.equal(out, out), out, 0.0) * 1.0), x)
    compiled = gc.compile([out, dx])(x=data)
    for got_out, got_dx in (compiled, gc.evaluate([out, dx], {"x": data})):
        np.testing.assert_array_equal(got_out, [[[[3.0, np.nan]]]])
        np.testing.assert_array_equal(got_dx, [[[[0, 1, 0, 0], [0, 0, 0, 0]]]])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernel, stride", [(2, 2), (3, 2)])
def test_max_pool_gradient_goes_to_the_first_nan_or_first_maximum(kernel: int, stride: int,
                                                                   dtype: str) -> None:
    """Windows with ties and with NaNs anywhere in them (not only first): the compiled
    gradient lands where np.argmax points (the first NaN, else the first maximum), in the
    2x2 kernel and the general one, and rows and columns no window covers get zeros."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 3, size=(2, 3, 7, 9)).astype(dtype)
    data[rng.random(data.shape) < 0.15] = np.nan
    weights = rng.standard_normal((2, 3, (7 - kernel) // stride + 1,
                                   (9 - kernel) // stride + 1)).astype(dtype)
    g = gc.Graph(dtype=dtype)
    x = g.input("x", data.shape)
    out = gc.nn.max_pool2d(x, kernel, stride)
    dx = gc.grad(gc.sum(out * weights), x)
    got_out, got_dx = gc.compile([out, dx])(x=data)
    want_out, want_dx = gc.evaluate([out, dx], {"x": data})
    assert np.isnan(want_out).any() and (want_dx == 0).any()
    np.testing.assert_array_equal(got_out, want_out)
    np.testing.assert_array_equal(got_dx, want_dx)


def test_conv_shape_errors_name_the_op_and_operands() -> None:
    g = gc.Graph()
    x = g.input("x", (None, 3, 8, 8))
    w = g.input("w", (4, 2, 3, 3))
    with pytest.raises(gc.GraphError, match=r"conv2d: input has 3 channels.*expects 2"):
        cv.conv2d(x, w)
    with pytest.raises(gc.GraphError, match=r"does not fit"):
        gc.nn.max_pool2d(x, 9)
    with pytest.raises(gc.GraphError, match="fixed sizes"):
        cv.conv2d(g.input("z", (None, 3, None, 8)), g.input("v", (4, 3, 3, 3)))


# -- torch cross-checks (optional) -------------------------------------------------------


def test_against_torch_conv_and_pool() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2, 7, 6))
    w = rng.standard_normal((4, 2, 3, 2))
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    ty = F.conv2d(tx, tw, stride=2, padding=(1, 2))
    gout = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(gout))
    g = gc.Graph(dtype="float64")
    xi, wi = g.input("x", (None, 2, 7, 6)), g.input("w", (4, 2, 3, 2))
    y = cv.conv2d(xi, wi, stride=2, padding=(1, 2))
    dx, dw = gc.grad(gc.sum(y * g.const(gout)), [xi, wi])
    got = gc.evaluate([y, dx, dw], {"x": x, "w": w})   # compiled == interpreter: above
    for a, b in zip(got, (ty, tx.grad, tw.grad)):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-12, atol=1e-12)
    # max pooling with overlapping windows, gradient routing included
    xp = distinct(3, 2, 7, 6)(rng, 3)
    txp = torch.tensor(xp, requires_grad=True)
    tp = F.max_pool2d(txp, 3, stride=2)
    gp = rng.standard_normal(tuple(tp.shape))
    tp.backward(torch.tensor(gp))
    xpi = g.input("xp", (None, 2, 7, 6))
    p = gc.nn.max_pool2d(xpi, 3, stride=2)
    got = gc.evaluate([p, gc.grad(gc.sum(p * g.const(gp)), xpi)], {"xp": xp})
    np.testing.assert_array_equal(got[0], tp.detach().numpy())
    np.testing.assert_array_equal(got[1], txp.grad.numpy())


# -- layers: references and gradients ------------------------------------------------------


def np_batch_norm(x, gain, bias, eps=1e-5):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gain.reshape(shape) + bias.reshape(shape)


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 3, 2)], ids=["2d", "4d"])
def test_batch_norm_training_forward_and_gradients(shape) -> None:
    rng = np.random.default_rng(4)
    g = gc.Graph(dtype="float64")
    x = g.input("x", (None,) + shape[1:])
    y = gc.nn.batch_norm(x, name="bn", training=True)
    data = rng.standard_normal(shape) * 2 + 1
    gain, bias = rng.uniform(0.5, 2, shape[1]), rng.standard_normal(shape[1])
    g.param_values["bn.gain"][...] = gain
    g.param_values["bn.bias"][...] = bias
    assert_arrays_match(gc.evaluate(y, {"x": data}), np_batch_norm(data, gain, bias),
                        rtol=1e-13, atol=0.0, what="batch_norm")
    f = gc.sum(y * g.const(rng.standard_normal((1,) + shape[1:])))
    wrt = [x, g["bn.gain"], g["bn.bias"]]
    at = [data, gain, bias]
    check_grad_fd(f, wrt, at, rng, what="batch_norm")
    # The finite difference of the gradient rounds at eps * |grad| / h ~ 2.2e-10 * |grad|
    # (|grad| up to ~5 here), while the gain's block of H u is small: 1e-9 absolute.
    check_hvp_fd(f, wrt, at, rng, atol=1e-9, what="batch_norm")


def test_layer_norm_forward_and_gradients() -> None:
    rng = np.random.default_rng(5)
    g = gc.Graph(dtype="float64")
    x = g.input("x", (None, 3, 6))
    y = gc.nn.layer_norm(x, name="ln")
    data = rng.standard_normal((2, 3, 6)) * 3
    gain, bias = rng.uniform(0.5, 2, 6), rng.standard_normal(6)
    g.param_values["ln.gain"][...] = gain
    g.param_values["ln.bias"][...] = bias
    mu = data.mean(-1, keepdims=True)
    want = (data - mu) / np.sqrt(((data - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * gain + bias
    assert_arrays_match(gc.evaluate(y, {"x": data}), want, rtol=1e-13, atol=0.0, what="ln")
    f = gc.sum(y * g.const(rng.standard_normal((3, 6))))
    wrt = [x, g["ln.gain"], g["ln.bias"]]
    check_grad_fd(f, wrt, [data, gain, bias], rng, what="layer_norm")
    check_hvp_fd(f, wrt, [data, gain, bias], rng, what="layer_norm")


def test_embedding_repeated_ids_forward_and_scatter_add_gradient() -> None:
    rng = np.random.default_rng(6)
    g = gc.Graph(dtype="float64", seed=1)
    ids = g.input("ids", (None, 3), dtype="int64")
    e = gc.nn.embedding(ids, 5, 4, name="emb")
    assert e.shape == (None, 3, 4)
    table = g.param_values["emb.w"]
    feed = np.array([[1, 1, 4], [0, 1, 4]])
    np.testing.assert_array_equal(gc.evaluate(e, {"ids": feed}), table[feed])
    weights = rng.standard_normal((2, 3, 4))
    dtable = gc.grad(gc.sum(e * g.const(weights)), g["emb.w"])
    want = np.zeros((5, 4))
    for pos in np.ndindex(feed.shape):
        want[feed[pos]] += weights[pos]
    np.testing.assert_allclose(gc.evaluate(dtable, {"ids": feed}), want, rtol=1e-14)
    compiled = gc.compile([e, dtable])(ids=feed)
    np.testing.assert_allclose(compiled[1], want, rtol=1e-14)
    check_grad_fd(gc.sum(e * g.const(weights)), [g["emb.w"]], [table.copy()], rng,
                  fixed={"ids": feed}, what="embedding")


def test_flatten_and_conv_layer_parameters() -> None:
    g = gc.Graph(seed=0)
    x = g.input("x", (None, 1, 8, 8))
    h = gc.nn.conv2d(x, 6, (3, 2), stride=(1, 2), padding=(1, 0), name="c")
    assert h.shape == (None, 6, 8, 4)
    assert g.param_values["c.w"].shape == (6, 1, 3, 2)
    assert g.param_values["c.b"].shape == (6,)
    assert gc.nn.flatten(h).shape == (None, 6 * 8 * 4)
    assert gc.nn.flatten(gc.nn.avg_pool2d(h, 2)).shape == (None, 6 * 4 * 2)



def test_grouped_dilated_and_1d_conv_layers() -> None:
    """Parameter shapes (O, C // groups, ...), output shapes, and the layer's value against
    the naive definition plus the bias."""
    g = gc.Graph(seed=0, dtype="float64")
    x = g.input("x", (None, 4, 7, 6))
    s = g.input("s", (None, 4, 9))
    h = gc.nn.conv2d(x, 6, 3, padding=2, name="c", dilation=2, groups=2)
    t = gc.nn.conv1d(s, 2, 3, stride=2, name="d", groups=4 // 2)
    assert h.shape == (None, 6, 7, 6) and g.param_values["c.w"].shape == (6, 2, 3, 3)
    assert t.shape == (None, 2, 4) and g.param_values["d.w"].shape == (2, 2, 3)
    pooled = gc.nn.max_pool2d(h, 3, stride=2, padding=1)
    averaged = gc.nn.avg_pool2d(h, 2, padding=1)
    assert pooled.shape == (None, 6, 4, 3) and averaged.shape == (None, 6, 4, 4)
    rng = np.random.default_rng(4)
    feeds = {"x": rng.standard_normal((2, 4, 7, 6)), "s": rng.standard_normal((2, 4, 9))}
    g.param_values["c.b"][:] = rng.standard_normal(6)
    got_h, got_t = gc.evaluate([h, t], feeds)
    want_h = naive_conv_general(feeds["x"], g.param_values["c.w"], (1, 1), (2, 2), (2, 2), 2)
    want_t = naive_conv1d(feeds["s"], g.param_values["d.w"], 2, groups=2)
    assert_arrays_match(got_h, want_h + g.param_values["c.b"][:, None, None], rtol=1e-13,
                        atol=0.0, what="grouped dilated layer")
    assert_arrays_match(got_t, want_t, rtol=1e-13, atol=0.0, what="conv1d layer")


def test_grouped_conv_and_padded_pool_errors() -> None:
    g = gc.Graph()
    x = g.input("x", (None, 4, 8, 8))
    with pytest.raises(gc.GraphError,
                       match=r"(?s)groups=3 the input needs 3 \* 2 = 6 channels.*test_layers.py"):
        cv.conv2d(x, g.input("w", (6, 2, 3, 3)), groups=3)
    with pytest.raises(gc.GraphError, match=r"groups=3 must be an int >= 1 dividing"):
        gc.nn.conv2d(x, 6, 3, groups=3)
    with pytest.raises(gc.GraphError, match=r"dilation must be an int >= 1"):
        cv.conv2d(x, g.input("v", (6, 4, 3, 3)), dilation=0)
    with pytest.raises(gc.GraphError, match=r"padding \(2, 2\) must be at most half"):
        gc.nn.max_pool2d(x, 3, padding=2)
    with pytest.raises(gc.GraphError, match=r"conv1d: needs x \(N, C, L\)"):
        cv.conv1d(x, g.input("u", (6, 4, 3)))


# -- state: batch-norm running statistics -------------------------------------------------


def test_batch_norm_running_stats_follow_pytorch_rule_inside_compiled_step() -> None:
    """After N compiled training steps (with a partial last batch), the running statistics
    equal the numpy re-implementation of torch.nn.BatchNorm2d's rule (unbiased variance),
    and the inference view normalises with them."""
    rng = np.random.default_rng(7)
    momentum = 0.3
    g = gc.Graph(seed=0)
    x = g.input("x", (None, 3, 4, 4))
    t = g.input("t", (None, 3, 4, 4))
    y = gc.nn.batch_norm(x, name="bn", momentum=momentum)
    loss = gc.mse(y, t)
    step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))
    predict = gc.compile([y])
    rm, rv = np.zeros(3), np.ones(3)
    for n in (8, 8, 8, 5):
        xb = (rng.standard_normal((n, 3, 4, 4)) * [[[[1.0]], [[2.0]], [[0.5]]]] + 3
              ).astype(np.float32)
        want = gc.evaluate(loss, {"x": xb, "t": xb * 0}, training=True)
        got = step(x=xb, t=xb * 0)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        x64 = xb.astype(np.float64)
        mean = x64.mean(axis=(0, 2, 3))
        var = x64.var(axis=(0, 2, 3), ddof=1)
        rm = (1 - momentum) * rm + momentum * mean
        rv = (1 - momentum) * rv + momentum * var
    np.testing.assert_allclose(g.state_values["bn.running_mean"], rm, rtol=2e-5)
    np.testing.assert_allclose(g.state_values["bn.running_var"], rv, rtol=2e-5)
    gain, bias = g.param_values["bn.gain"], g.param_values["bn.bias"]
    (out,) = predict(x=xb)
    want = ((xb - rm.reshape(1, 3, 1, 1)) / np.sqrt(rv.reshape(1, 3, 1, 1) + 1e-5)
            * gain.reshape(1, 3, 1, 1) + bias.reshape(1, 3, 1, 1))
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gc.evaluate(y, {"x": xb}), out, rtol=1e-5, atol=1e-5)

    torch = pytest.importorskip("torch")
    bn = torch.nn.BatchNorm2d(3, momentum=momentum).double()
    rng = np.random.default_rng(7)
    for n in (8, 8, 8, 5):
        xb = (rng.standard_normal((n, 3, 4, 4)) * [[[[1.0]], [[2.0]], [[0.5]]]] + 3
              ).astype(np.float32)
        bn(torch.tensor(xb, dtype=torch.float64))
    np.testing.assert_allclose(rm, bn.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(rv, bn.running_var.numpy(), rtol=1e-12)


def test_training_and_inference_views_of_one_graph() -> None:
    """One declared model: training=True/False switch dropout and batch norm without
    redeclaring it; defaults: training with an optimizer, inference without; state is
    updated only by training-view steps."""
    rng = np.random.default_rng(8)
    g = gc.Graph(seed=0)
    x = g.input("x", (None, 4))
    h = gc.nn.dropout(gc.nn.batch_norm(x, name="bn"), 0.5, seed=3, name="drop")
    loss = gc.mean(gc.square(gc.nn.linear(h, 1, name="fc")))
    data = rng.standard_normal((6, 4)).astype(np.float32) + 2
    infer = gc.compile([h])                          # default: inference view
    train_fwd = gc.compile([h], training=True)       # training view, no optimizer
    frozen = gc.compile(loss, optimizer=gc.optim.SGD(0.0), training=False)
    assert not infer.program.updates
    assert {n for n, _ in train_fwd.program.updates} == {
        "bn.running_mean", "bn.running_var", "drop.step"}
    before = {k: v.copy() for k, v in g.state_values.items()}
    # inference: running stats (0, 1) and no dropout = the input, up to eps
    np.testing.assert_allclose(infer(x=data)[0], data / np.sqrt(1 + 1e-5), rtol=1e-6)
    np.testing.assert_allclose(gc.evaluate(h, {"x": data}), data / np.sqrt(1 + 1e-5),
                               rtol=1e-6)
    frozen(x=data)
    for k, v in before.items():
        np.testing.assert_array_equal(g.state_values[k], v)
    # the training view: interpreter (at the current step) == compiled, then state moves
    want = gc.evaluate(h, {"x": data}, training=True)
    got = train_fwd(x=data)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.sum(got == 0) > 0 and int(g.state_values["drop.step"]) == 1
    assert not np.array_equal(g.state_values["bn.running_mean"], before["bn.running_mean"])
    # a training step with an optimizer advances it too
    step = gc.compile(loss, optimizer=gc.optim.SGD(0.01))
    step(x=data)
    assert int(g.state_values["drop.step"]) == 2
    with pytest.raises(gc.GraphError, match="unresolved"):
        from graphc.interpret import run_nodes
        run_nodes(g, [h.id], {"x": data})


def _bn_program(training: bool, fixed: bool):
    g = gc.Graph(seed=0)
    x = g.input("x", (None, 3, 4, 4))
    y = gc.nn.batch_norm(x, name="bn", training=training if fixed else None)
    loss = gc.mean(gc.square(gc.nn.dropout(y, 0.5, seed=1, training=training if fixed
                                           else None)))
    return gc.compile(loss, optimizer=gc.optim.SGD(0.1), training=training).program


@pytest.mark.parametrize("training", [True, False])
def test_dead_branch_is_folded_away(training: bool) -> None:
    """A model with both views compiles, in each view, to exactly the program of the same
    model declared in that mode only: the other branch's forward and the structural zeros
    its gradient received are gone. In training, the loss does not read the running
    statistics; in inference, nothing computes batch statistics or updates them."""
    from graphc.ir import ancestors

    both, fixed = _bn_program(training, False), _bn_program(training, True)
    leaves = ("input", "param", "state", "const")
    assert [n.op for n in both.nodes if n.op not in leaves] == \
        [n.op for n in fixed.nodes if n.op not in leaves]
    assert sorted(n.op for n in both.nodes) == sorted(n.op for n in fixed.nodes)
    stats = {n.id for n in both.nodes if n.op == "state" and n.name.startswith("bn.run")}
    forward = ancestors(both, both.outputs)
    batch_stats = [n for n in both.nodes if n.op == "sum" and n.role == "forward"
                   and n.attrs["axes"] == (0, 2, 3)]
    updated = {name for name, _ in both.updates}
    if training:
        assert not stats & forward and batch_stats
        assert {"bn.running_mean", "bn.running_var", "dropout0.step"} <= updated
    else:
        assert stats <= forward and not batch_stats
        assert not {"bn.running_mean", "bn.running_var", "dropout0.step"} & updated


# -- dropout ---------------------------------------------------------------------------------


def _mask_program(seed: int, rate: float, shape=(64, 33)):
    g = gc.Graph(seed=0)
    x = g.input("x", (None,) + shape[1:])
    y = gc.nn.dropout(x, rate, seed=seed, name="d")
    return g, x, y


def test_dropout_mask_is_deterministic_and_advances_per_step() -> None:
    g, _, y = _mask_program(seed=11, rate=0.3)
    ones = np.ones((64, 33), np.float32)
    run = gc.compile([y], training=True)
    masks = []
    for k in range(3):
        want = gc.evaluate(y, {"x": ones}, training=True)   # interpreter at this step
        (got,) = run(x=ones)                                  # compiled, then step += 1
        np.testing.assert_array_equal(got, want)
        assert int(g.state_values["d.step"]) == k + 1
        masks.append(got != 0)
        kept = got[got != 0]
        np.testing.assert_allclose(kept, 1 / 0.7, rtol=1e-6)
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])
    # same seed, new graph: the same masks at the same steps
    g2, _, y2 = _mask_program(seed=11, rate=0.3)
    np.testing.assert_array_equal(gc.evaluate(y2, {"x": ones}, training=True) != 0, masks[0])
    g2.state_values["d.step"][...] = 2
    np.testing.assert_array_equal(gc.evaluate(y2, {"x": ones}, training=True) != 0, masks[2])
    # another seed: another mask
    _, _, y3 = _mask_program(seed=12, rate=0.3)
    assert not np.array_equal(gc.evaluate(y3, {"x": ones}, training=True) != 0, masks[0])
    # inference: the identity
    np.testing.assert_array_equal(gc.evaluate(y, {"x": ones}), ones)
    np.testing.assert_array_equal(gc.compile([y])(x=ones)[0], ones)


def test_dropout_same_masks_in_another_process() -> None:
    code = ("import numpy as np, graphc as gc\n"
            "g = gc.Graph(seed=0)\n"
            "x = g.input('x', (None, 33))\n"
            "y = gc.nn.dropout(x, 0.3, seed=11, name='d')\n"
            "run = gc.compile([y], training=True)\n"
            "ones = np.ones((64, 33), np.float32)\n"
            "run(x=ones)\n"
            "print(''.join('1' if v else '0' for v in (run(x=ones)[0] != 0).ravel()))\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300, check=True).stdout.strip()
    g, _, y = _mask_program(seed=11, rate=0.3)
    g.state_values["d.step"][...] = 1
    mask = gc.evaluate(y, {"x": np.ones((64, 33), np.float32)}, training=True) != 0
    assert out == "".join("1" if v else "0" for v in mask.ravel())


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_dropout_keep_rate_is_statistically_right(rate: float) -> None:
    """Over 2**18 elements and 4 steps, the kept fraction is 1 - rate within 5 standard
    deviations (binomial: sqrt(p (1 - p) / n) ~ 5e-4), and the expectation is preserved."""
    n = 1 << 16
    fractions = []
    for step in range(4):
        mask = gc.ops.keep_mask((n,), 1234, step, round(rate * 2 ** 24))
        fractions.append(mask.mean())
    p = 1 - rate
    sd = np.sqrt(p * (1 - p) / (4 * n))
    assert abs(np.mean(fractions) - p) < 5 * sd
    # no visible correlation between neighbours or between consecutive steps
    m0 = gc.ops.keep_mask((n,), 1234, 0, round(rate * 2 ** 24)).astype(float)
    m1 = gc.ops.keep_mask((n,), 1234, 1, round(rate * 2 ** 24)).astype(float)
    assert abs(np.corrcoef(m0[:-1], m0[1:])[0, 1]) < 5 / np.sqrt(n)
    assert abs(np.corrcoef(m0, m1)[0, 1]) < 5 / np.sqrt(n)


def test_dropout_gradient_uses_the_same_mask() -> None:
    rng = np.random.default_rng(9)
    g = gc.Graph(dtype="float64")
    x = g.input("x", (None, 7))
    y = gc.nn.dropout(x, 0.4, seed=5, training=True)
    data = rng.standard_normal((5, 7))
    f = gc.sum(y * g.const(rng.standard_normal((1, 7))))
    check_grad_fd(f, [x], [data], rng, what="dropout")
    dx = gc.evaluate(gc.grad(gc.sum(y), x), {"x": data})
    mask = gc.evaluate(y, {"x": data}) != 0
    np.testing.assert_allclose(dx, mask / 0.6, rtol=1e-15)


# -- layers compiled vs interpreter -----------------------------------------------------------


def test_layers_compiled_match_interpreter_in_training_view(dtype: str = "float32") -> None:
    """Every layer in one float32 program (the primitives are compared in both dtypes by
    the op table above; compiling this program costs ~13 s per dtype)."""
    rng = np.random.default_rng(10)
    g = gc.Graph(seed=1, dtype=dtype)
    x = g.input("x", (None, 2, 6, 6))
    ids = g.input("ids", (None, 2), dtype="int64")
    h = gc.relu(gc.nn.conv2d(x, 4, 3, padding=1, name="c"))
    h = gc.nn.batch_norm(gc.nn.avg_pool2d(h, 2), name="bn")
    h = gc.nn.dropout(gc.nn.flatten(gc.nn.max_pool2d(h, 2, stride=1)), 0.3, name="d")
    h = gc.nn.layer_norm(h, name="ln") + gc.sum(gc.nn.embedding(ids, 4, 16, name="e"), axis=1)
    out = gc.nn.linear(h, 3, name="fc")
    loss = gc.sum(out * g.const(rng.standard_normal((1, 3))))
    grads = gc.grad(loss, [x] + g.params)
    run = gc.compile([out] + grads, training=True)
    for n in (5, 3):
        feeds = {"x": rng.standard_normal((n, 2, 6, 6)).astype(dtype),
                 "ids": rng.integers(0, 4, (n, 2))}
        want = gc.evaluate([out] + grads, feeds, training=True)
        got = run(**feeds)
        for k, (a, b) in enumerate(zip(got, want)):
            assert_close(a, b, dtype, f"output {k} batch {n}")


# -- examples --------------------------------------------------------------------------------


def test_custom_op_example() -> None:
    """examples/custom_op.py: a user op with its own scalar body and vjp, compiled and
    checked against finite differences (run in-process; its op is unregistered after)."""
    from graphc.ops import OPS
    from graphc.ops.custom import _CUSTOM

    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import custom_op as example

        assert example.finite_difference_error() < 1e-6
        assert example.compiled_error("float32") < 1e-5
        assert example.compiled_error("float64") < 1e-12
        with pytest.raises(gc.GraphError, match="built-in"):
            gc.custom_op("exp", ref=np.exp, scalar="_exp({0})")
    finally:
        sys.path.remove(os.path.join(ROOT, "examples"))
        sys.modules.pop("custom_op", None)
        OPS.pop("user_softplus", None)
        _CUSTOM.discard("user_softplus")


def test_cnn_digits_example_reaches_its_accuracy() -> None:
    """examples/cnn_digits.py trains to >= 0.97 test accuracy (the full run: its training
    takes about a second once compiled)."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import cnn_digits

        assert cnn_digits.main([]) >= 0.97
    finally:
        sys.path.remove(os.path.join(ROOT, "examples"))
        sys.modules.pop("cnn_digits", None)


def test_batch_norm_refuses_one_value_per_channel_in_training() -> None:
    """As PyTorch: the unbiased running variance of one value is undefined, so a training
    call fed one row is refused before it runs (nothing changes), and so is a graph whose
    fixed shape has one value per channel; inference on one row is fine."""
    g = gc.Graph("bn_one", seed=0)
    x = g.input("x", (None, 3))
    h = gc.nn.batch_norm(gc.nn.linear(x, 4, name="fc"), name="bn")
    step = gc.compile(gc.mean(h * h), optimizer=gc.optim.SGD(lr=0.1))
    step(x=np.ones((4, 3), np.float32))
    before = {k: v.copy() for k, v in {**step.params, **g.state_values}.items()}
    with pytest.raises(gc.GraphError, match=r"batch_norm 'bn' in training.*got 1"):
        step(x=np.ones((1, 3), np.float32))
    for name, value in {**step.params, **g.state_values}.items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    inference = gc.Graph("bn_eval").input("x", (None, 3))
    assert gc.compile(gc.nn.batch_norm(inference, name="bn", training=False)
                      )(x=np.ones((1, 3), np.float32)).shape == (1, 3)
    fixed = gc.Graph("bn_fixed").input("y", (1, 3))
    with pytest.raises(gc.GraphError, match="values per channel"):
        gc.nn.batch_norm(fixed, name="bn")
