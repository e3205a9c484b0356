"""graphc training steps for the benchmark workloads, built with graphc's public API.

The graph is declared with the initial parameters of the workload and compiled with
``gc.compile(loss, optimizer=gc.optim.Adam(lr=...), target="cpu")``. ``build`` records the
seconds spent declaring the graph and compiling it in ``Runner.phases``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

import graphc as gc
from benchmarks.workloads import LN_EPS, LR, Batch, Workload

VERSION = str(getattr(gc, "__version__", "unknown"))


#: Names of the feeds ``x`` and ``y`` of a batch, per workload kind.
FEEDS = {"gpt": ("ids", "targets")}


def model_loss(wl: Workload, params: dict[str, np.ndarray]) -> Any:
    """The loss of a ``gpt``, ``cnn`` or ``rnn`` workload: the model of
    ``benchmarks/models.py``, its parameters set to ``params``."""
    from benchmarks import models

    if wl.kind == "gpt":
        blocks, vocab, context, width, heads = wl.sizes
        loss, _ = models.char_transformer(blocks, vocab, context, width, heads, wl.batch)
    elif wl.kind == "cnn":
        loss, _ = models.cnn(wl.sizes[0], wl.batch)
    else:
        steps, n_in, hidden, classes = wl.sizes
        loss, _ = models.rnn(steps, n_in, hidden, classes, wl.batch)
    values = loss.graph.param_values
    if {k: v.shape for k, v in values.items()} != {k: v.shape for k, v in params.items()}:
        raise ValueError(f"{wl.name}: the model's parameters "
                         f"{ {k: v.shape for k, v in values.items()} } are not the "
                         f"workload's { {k: v.shape for k, v in params.items()} }")
    for name, value in params.items():
        values[name][...] = value
    return loss


def build_loss(wl: Workload, params: dict[str, np.ndarray]) -> Any:
    """Declare the workload's graph in a fresh ``gc.Graph``; return the scalar loss Value."""
    if wl.kind in ("gpt", "cnn", "rnn"):
        return model_loss(wl, params)
    g = gc.Graph(wl.name, seed=0)
    if wl.kind == "mlp":
        x = g.input("x", (None, wl.sizes[0]))
        y = g.input("y", (None,), dtype="int64")
        h = x
        for i in range(wl.n_layers):
            w = g.param(f"fc{i}.w", params[f"fc{i}.w"])
            b = g.param(f"fc{i}.b", params[f"fc{i}.b"])
            h = h @ w + b
            if i < wl.n_layers - 1:
                h = gc.relu(h) if wl.activation == "relu" else gc.tanh(h)
        return gc.mean(gc.softmax_cross_entropy(h, y))
    d = wl.sizes[0]
    x = g.input("x", (None, d))
    y = g.input("y", (None, d))
    mu = gc.mean(x, axis=-1, keepdims=True)
    xc = x - mu
    var = gc.mean(xc * xc, axis=-1, keepdims=True)
    xn = xc * gc.rsqrt(var + LN_EPS)
    a = xn * g.param("ln.g", params["ln.g"]) + g.param("ln.b", params["ln.b"])
    h = a @ g.param("fc0.w", params["fc0.w"]) + g.param("fc0.b", params["fc0.b"])
    h = gc.gelu(h, approximate="tanh")
    out = h @ g.param("fc1.w", params["fc1.w"]) + g.param("fc1.b", params["fc1.b"]) + x
    return gc.mean(gc.square(out - y))


class GraphcRunner:
    """A compiled graphc training step and the batches it is fed."""

    def __init__(self, wl: Workload, params: dict[str, np.ndarray], batches: list[Batch]) -> None:
        t0 = time.perf_counter()
        try:
            loss = build_loss(wl, params)
        except Exception as exc:
            exc.bench_phase = "graph build"  # type: ignore[attr-defined]
            raise
        t1 = time.perf_counter()
        try:
            self.compiled = gc.compile(loss, optimizer=gc.optim.Adam(lr=LR), target="cpu")
        except Exception as exc:
            exc.bench_phase = "compile"  # type: ignore[attr-defined]
            raise
        t2 = time.perf_counter()
        self.phases: dict[str, float] = {"build_s": t1 - t0, "compile_s": t2 - t1}
        self.batches = batches
        self.feeds = FEEDS.get(wl.kind, ("x", "y"))

    def step(self, i: int) -> Any:
        """One compiled training step on batch ``i % n_batches``; returns the loss."""
        x, y = self.batches[i % len(self.batches)]
        return self.compiled(**dict(zip(self.feeds, (x, y))))

    def sync(self, out: Any) -> None:
        """The compiled step returns after the update: nothing to wait for."""

    def to_float(self, out: Any) -> float:
        """Return the loss as a Python float."""
        return float(out)

    def compile_report(self) -> Any:
        """The compiled step's ``compile_report`` (per-phase seconds), if it has one."""
        return getattr(self.compiled, "compile_report", None)


def build(wl: Workload, params: dict[str, np.ndarray], batches: list[Batch]) -> GraphcRunner:
    """Declare and compile the graphc training step for ``wl``."""
    return GraphcRunner(wl, params, batches)
