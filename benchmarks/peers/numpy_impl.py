"""Hand-written numpy forward, backward and Adam for the benchmark workloads.

Buffers are allocated once; matmuls write into them with ``np.dot(..., out=...)`` and
elementwise work is done in place. Parameters and gradients each live in one flat float32
buffer (every tensor is a view into it), so Adam updates all of them with a handful of
vectorised calls instead of a Python loop over tensors.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from benchmarks.workloads import BETAS, EPS, LN_EPS, LR, Batch, Workload

F32 = np.float32
_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


class FlatAdam:
    """Adam with PyTorch's update rule over parameters stored in one flat buffer.

    Per step ``t``: ``m = b1*m + (1-b1)*g``, ``v = b2*v + (1-b2)*g*g``,
    ``p -= lr/(1-b1**t) * m / (sqrt(v)/sqrt(1-b2**t) + eps)``.
    """

    def __init__(
        self,
        params: np.ndarray,
        grads: np.ndarray,
        lr: float = LR,
        betas: tuple[float, float] = BETAS,
        eps: float = EPS,
    ) -> None:
        self.p, self.g = params, grads
        self.m = np.zeros_like(params)
        self.v = np.zeros_like(params)
        self.tmp = np.empty_like(params)
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.t = 0

    def update(self) -> None:
        """Apply one Adam step to the flat parameter buffer."""
        self.t += 1
        b1, b2, tmp = self.b1, self.b2, self.tmp
        step_size = self.lr / (1.0 - b1**self.t)
        bc2_sqrt = math.sqrt(1.0 - b2**self.t)
        self.m *= b1
        np.multiply(self.g, 1.0 - b1, out=tmp)
        self.m += tmp
        self.v *= b2
        np.multiply(self.g, self.g, out=tmp)
        tmp *= 1.0 - b2
        self.v += tmp
        np.sqrt(self.v, out=tmp)
        tmp /= bc2_sqrt
        tmp += self.eps
        np.divide(self.m, tmp, out=tmp)
        tmp *= step_size
        self.p -= tmp


def _flat_views(
    shapes: dict[str, tuple[int, ...]],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One zeroed float32 buffer and a C-contiguous view into it per named shape."""
    total = sum(math.prod(s) for s in shapes.values())
    flat = np.zeros(total, dtype=F32)
    views, off = {}, 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        views[name] = flat[off : off + n].reshape(shape)
        off += n
    return flat, views


class _Base:
    """Shared parameter/gradient storage and the Runner plumbing."""

    def __init__(self, wl: Workload, params: dict[str, np.ndarray], batches: list[Batch]) -> None:
        self.wl = wl
        self.batches = batches
        self.phases: dict[str, float] = {}
        shapes = {k: v.shape for k, v in params.items()}
        self.flat_p, self.p = _flat_views(shapes)
        self.flat_g, self.g = _flat_views(shapes)
        for k, v in params.items():
            self.p[k][...] = v
        self.adam = FlatAdam(self.flat_p, self.flat_g)

    def sync(self, out: Any) -> None:
        """Numpy is synchronous: nothing to wait for."""

    def to_float(self, out: Any) -> float:
        """Return the loss as a Python float."""
        return float(out)


class NumpyMLP(_Base):
    """Linear layers with ReLU or tanh between them and a softmax cross-entropy loss."""

    def __init__(self, wl: Workload, params: dict[str, np.ndarray], batches: list[Batch]) -> None:
        super().__init__(wl, params, batches)
        b, n = wl.batch, wl.n_layers
        self.w = [self.p[f"fc{i}.w"] for i in range(n)]
        self.b = [self.p[f"fc{i}.b"] for i in range(n)]
        self.gw = [self.g[f"fc{i}.w"] for i in range(n)]
        self.gb = [self.g[f"fc{i}.b"] for i in range(n)]
        # h[i]: output of layer i (after its activation); d[i]: gradient w.r.t. layer i's
        # pre-activation. The last layer's output buffer becomes the softmax in place.
        self.h = [np.empty((b, k), F32) for k in wl.sizes[1:]]
        self.d = [np.empty((b, k), F32) for k in wl.sizes[1:-1]]
        self.tmp = [np.empty((b, k), F32) for k in wl.sizes[1:-1]]
        self.probs = np.empty((b, wl.sizes[-1]), F32)
        self.rows = np.arange(b)
        self.tanh = wl.activation == "tanh"

    def step(self, i: int) -> np.float32:
        """One training step on batch ``i % n_batches``; returns the loss before the update."""
        x, y = self.batches[i % len(self.batches)]
        n = self.wl.n_layers
        a = x
        for i_l in range(n):
            h = self.h[i_l]
            np.dot(a, self.w[i_l], out=h)
            h += self.b[i_l]
            if i_l < n - 1:
                if self.tanh:
                    np.tanh(h, out=h)
                else:
                    np.maximum(h, 0.0, out=h)
            a = h
        logits, p, rows = a, self.probs, self.rows
        mx = logits.max(axis=1, keepdims=True)
        np.subtract(logits, mx, out=p)
        picked = p[rows, y]
        np.exp(p, out=p)
        s = p.sum(axis=1, keepdims=True)
        loss = np.mean(np.log(s[:, 0]) - picked)
        p /= s
        p[rows, y] -= 1.0
        p *= 1.0 / x.shape[0]
        delta = p
        for i_l in range(n - 1, -1, -1):
            a_prev = x if i_l == 0 else self.h[i_l - 1]
            np.dot(a_prev.T, delta, out=self.gw[i_l])
            np.sum(delta, axis=0, out=self.gb[i_l])
            if i_l == 0:
                break
            d = self.d[i_l - 1]
            np.dot(delta, self.w[i_l].T, out=d)
            if self.tanh:
                t = self.tmp[i_l - 1]
                np.multiply(a_prev, a_prev, out=t)
                np.subtract(1.0, t, out=t)
                d *= t
            else:
                d *= a_prev > 0
            delta = d
        self.adam.update()
        return loss


class NumpyFFN(_Base):
    """Layer norm -> linear -> GELU (tanh) -> linear -> residual, mean squared error."""

    def __init__(self, wl: Workload, params: dict[str, np.ndarray], batches: list[Batch]) -> None:
        super().__init__(wl, params, batches)
        t, (dm, df) = wl.batch, wl.sizes
        self.xn = np.empty((t, dm), F32)
        self.a = np.empty((t, dm), F32)
        self.out = np.empty((t, dm), F32)
        self.da = np.empty((t, dm), F32)
        self.h = np.empty((t, df), F32)
        self.th = np.empty((t, df), F32)
        self.o = np.empty((t, df), F32)
        self.do = np.empty((t, df), F32)

    def step(self, i: int) -> np.float32:
        """One training step on batch ``i % n_batches``; returns the loss before the update."""
        x, y = self.batches[i % len(self.batches)]
        p, g = self.p, self.g
        xn, a, out, da = self.xn, self.a, self.out, self.da
        h, th, o, do = self.h, self.th, self.o, self.do
        # layer norm over the last axis
        np.subtract(x, x.mean(axis=1, keepdims=True), out=xn)
        np.multiply(xn, xn, out=a)
        rstd = a.mean(axis=1, keepdims=True)
        rstd += LN_EPS
        np.sqrt(rstd, out=rstd)
        np.divide(1.0, rstd, out=rstd)
        xn *= rstd
        np.multiply(xn, p["ln.g"], out=a)
        a += p["ln.b"]
        # linear, gelu (tanh approximation)
        np.dot(a, p["fc0.w"], out=h)
        h += p["fc0.b"]
        np.multiply(h, h, out=th)
        th *= _GELU_C
        th += 1.0
        th *= h
        th *= _GELU_K
        np.tanh(th, out=th)
        np.add(th, 1.0, out=o)
        o *= h
        o *= 0.5
        # linear, residual, loss
        np.dot(o, p["fc1.w"], out=out)
        out += p["fc1.b"]
        out += x
        out -= y
        flat = out.reshape(-1)
        loss = np.dot(flat, flat) / flat.size
        out *= 2.0 / flat.size
        # backward
        np.dot(o.T, out, out=g["fc1.w"])
        np.sum(out, axis=0, out=g["fc1.b"])
        np.dot(out, p["fc1.w"].T, out=do)
        # d gelu/dh = 0.5*(1+t) + 0.5*k*h*(1+3c*h^2)*(1-t^2); o and h are free to reuse now
        np.multiply(h, h, out=o)
        o *= 3.0 * _GELU_C
        o += 1.0
        o *= 0.5 * _GELU_K
        o *= h
        np.multiply(th, th, out=h)
        np.subtract(1.0, h, out=h)
        o *= h
        th += 1.0
        th *= 0.5
        o += th
        do *= o
        np.dot(a.T, do, out=g["fc0.w"])
        np.sum(do, axis=0, out=g["fc0.b"])
        np.dot(do, p["fc0.w"].T, out=da)
        np.multiply(da, xn, out=out)
        np.sum(out, axis=0, out=g["ln.g"])
        np.sum(da, axis=0, out=g["ln.b"])
        self.adam.update()
        return loss


class NumpyRNN(_Base):
    """A tanh RNN unrolled over the sequence, softmax cross-entropy on the last state;
    backpropagation through time."""

    def __init__(self, wl: Workload, params: dict[str, np.ndarray], batches: list[Batch]) -> None:
        super().__init__(wl, params, batches)
        steps, _, hidden, classes = wl.sizes
        b = wl.batch
        self.h = np.empty((steps, b, hidden), F32)   # hidden state after each step
        self.dh = np.empty((b, hidden), F32)
        self.dpre = np.empty((b, hidden), F32)
        self.part_in = np.empty_like(self.g["cell.wx"])
        self.part_h = np.empty_like(self.g["cell.wh"])
        self.probs = np.empty((b, classes), F32)
        self.rows = np.arange(b)

    def step(self, i: int) -> np.float32:
        """One training step on batch ``i % n_batches``; returns the loss before the update."""
        x, y = self.batches[i % len(self.batches)]
        p, g, h = self.p, self.g, self.h
        steps = h.shape[0]
        for t in range(steps):
            np.dot(x[:, t, :], p["cell.wx"], out=h[t])
            h[t] += p["cell.b"]
            if t:
                np.dot(h[t - 1], p["cell.wh"], out=self.dh)
                h[t] += self.dh
            np.tanh(h[t], out=h[t])
        probs, rows = self.probs, self.rows
        np.dot(h[-1], p["out.w"], out=probs)
        probs += p["out.b"]
        probs -= probs.max(axis=1, keepdims=True)
        picked = probs[rows, y]
        np.exp(probs, out=probs)
        s = probs.sum(axis=1, keepdims=True)
        loss = np.mean(np.log(s[:, 0]) - picked)
        probs /= s
        probs[rows, y] -= 1.0
        probs *= 1.0 / x.shape[0]
        np.dot(h[-1].T, probs, out=g["out.w"])
        np.sum(probs, axis=0, out=g["out.b"])
        dh, dpre = self.dh, self.dpre
        np.dot(probs, p["out.w"].T, out=dh)
        g["cell.wx"][...] = 0.0
        g["cell.wh"][...] = 0.0
        g["cell.b"][...] = 0.0
        for t in range(steps - 1, -1, -1):
            np.multiply(h[t], h[t], out=dpre)
            np.subtract(1.0, dpre, out=dpre)
            dpre *= dh
            np.dot(x[:, t, :].T, dpre, out=self.part_in)
            g["cell.wx"] += self.part_in
            g["cell.b"] += dpre.sum(axis=0)
            if t:
                np.dot(h[t - 1].T, dpre, out=self.part_h)
                g["cell.wh"] += self.part_h
                np.dot(dpre, p["cell.wh"].T, out=dh)
        self.adam.update()
        return loss


def build(wl: Workload, params: dict[str, np.ndarray], batches: list[Batch]) -> _Base:
    """Build the numpy training step for ``wl`` from initial ``params`` and ``batches``."""
    if wl.kind == "mlp":
        return NumpyMLP(wl, params, batches)
    if wl.kind == "rnn":
        return NumpyRNN(wl, params, batches)
    if wl.kind == "ffn":
        return NumpyFFN(wl, params, batches)
    raise NotImplementedError(f"no hand-written numpy step for {wl.kind} workloads")
