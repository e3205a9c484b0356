"""Compiled training steps: optimizers, learning rates, run-time batch sizes, shared
parameters, fetches, feed validation, non-finite losses, determinism and the disk cache.

Optimizer references are written here from PyTorch's documented update rules
(https://pytorch.org/docs/stable/generated/torch.optim.SGD.html, .Adam.html, .AdamW.html,
torch.nn.utils.clip_grad_norm_), in float64 numpy, with hand-derived gradients of a small
bilinear regression model: pred = sum((x @ w) * v, axis=1) + b (w: (3, 2), v: (2,), b: a
rank-0 parameter), loss = mean((pred - y) ** 2), a new minibatch every step.

Tolerances:
* float64 graphs: rtol 1e-11, atol 1e-13 on losses and parameters over all 50 steps. The
  compiled step and the reference round differently (fused multiply-adds, the reference's
  m_hat / (sqrt(v_hat) + eps) against the step's m / (sqrt(v) / sqrt(bc2) + eps) * bc1, the
  order of sums over the batch): ~1e-16 relative per operation, grown by the trajectory.
  Measured worst case over the configurations: 2.4e-14 relative, 5.6e-16 absolute.
* float32 graphs against the float64 reference: rtol 1e-4, atol 1e-5. A float32 step rounds
  every value to 24 bits (6e-8) and the trajectory amplifies that; measured worst case
  1.1e-6 absolute on O(1) parameters (1e-4 relative only for entries near 0, covered by
  atol). A wrong update rule (a missing bias correction, momentum applied one step late,
  decay coupled instead of decoupled, a clip coefficient off) is off by 1e-2 or more.

Several tests build a graph with the same structure as another one: its generated source
is identical, so `gc.compile` reuses the already compiled step (no Numba compile).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

import graphc as gc
from graphc.backends.cpu.compile_kernels import compile_count
from graphc.runtime import CompiledFunction

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 50
TOL = {"float64": {"rtol": 1e-11, "atol": 1e-13}, "float32": {"rtol": 1e-4, "atol": 1e-5}}


def compile_step(loss: gc.Value, optimizer: gc.optim.Optimizer, **kwargs) -> CompiledFunction:
    """gc.compile, always from this one line: the backward and update nodes are attributed
    to it, so graphs of the same structure generate the same source and reuse the step
    already compiled in this process."""
    return gc.compile(loss, optimizer=optimizer, **kwargs)


# -- the regression model and its hand-derived gradient -----------------------------------

def regression_data(steps: int = STEPS, batch: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1234)
    true_w = np.array([[1.0, -2.0], [0.5, 1.5], [-1.0, 0.25]])
    out = []
    for _ in range(steps):
        x = rng.standard_normal((batch, 3))
        y = np.sum(x @ true_w, axis=1) * 0.7 + 0.3 + 0.1 * rng.standard_normal(batch)
        out.append((x, y))
    return out


def initial_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {"w": rng.standard_normal((3, 2)) * 0.5, "v": rng.standard_normal(2),
            "b": np.array(0.1)}


def regression_graph(dtype: str) -> tuple[gc.Graph, gc.Value]:
    g = gc.Graph("regression", dtype=dtype)
    x = g.input("x", (None, 3))
    y = g.input("y", (None,))
    p = initial_params()
    w, v, b = g.param("w", p["w"]), g.param("v", p["v"]), g.param("b", p["b"])
    pred = gc.sum((x @ w) * v, axis=1) + b
    return g, gc.mean(gc.square(pred - y))


def regression_loss_and_grads(p: dict[str, np.ndarray], x: np.ndarray,
                              y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    h = x @ p["w"]
    r = np.sum(h * p["v"], axis=1) + p["b"] - y
    d = 2.0 * r / len(y)  # d loss / d pred
    return float(np.mean(r * r)), {"w": x.T @ (d[:, None] * p["v"][None, :]),
                                   "v": h.T @ d, "b": np.array(np.sum(d))}


# -- PyTorch's documented update rules, in numpy -------------------------------------------

@dataclass
class Config:
    kind: str  # "sgd", "adam", "adamw"
    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_norm: float | None = None

    def make(self, lr: float | Callable[[int], float] | None = None) -> gc.optim.Optimizer:
        lr = self.lr if lr is None else lr
        if self.kind == "sgd":
            return gc.optim.SGD(lr, momentum=self.momentum, dampening=self.dampening,
                                nesterov=self.nesterov, weight_decay=self.weight_decay,
                                clip_norm=self.clip_norm)
        cls = gc.optim.Adam if self.kind == "adam" else gc.optim.AdamW
        return cls(lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay,
                   clip_norm=self.clip_norm)


CONFIGS = {
    "sgd": Config("sgd", lr=0.05),
    "sgd_momentum": Config("sgd", lr=0.02, momentum=0.9),
    "sgd_momentum_dampening": Config("sgd", lr=0.02, momentum=0.8, dampening=0.3,
                                     weight_decay=0.05),
    "sgd_nesterov": Config("sgd", lr=0.02, momentum=0.9, nesterov=True, weight_decay=0.05),
    "sgd_momentum_clip": Config("sgd", lr=0.05, momentum=0.5, clip_norm=0.5),
    "adam": Config("adam", lr=0.05),
    "adam_weight_decay": Config("adam", lr=0.05, betas=(0.8, 0.95), eps=1e-6,
                                weight_decay=0.1),
    "adamw": Config("adamw", lr=0.05, weight_decay=0.2),
}


class ReferenceOptimizer:
    """The update rules as the PyTorch documentation writes them (float64)."""

    def __init__(self, cfg: Config, params: dict[str, np.ndarray]) -> None:
        self.cfg = cfg
        self.t = 0
        self.buf: dict[str, np.ndarray] = {}
        self.m = {k: np.zeros_like(p) for k, p in params.items()}
        self.v = {k: np.zeros_like(p) for k, p in params.items()}
        self.clipped = 0

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray],
             lr: float) -> dict[str, np.ndarray]:
        cfg = self.cfg
        self.t += 1
        t = self.t
        if cfg.clip_norm is not None:  # torch.nn.utils.clip_grad_norm_
            total = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
            coef = min(cfg.clip_norm / (total + 1e-6), 1.0)
            self.clipped += coef < 1.0
            grads = {k: g * coef for k, g in grads.items()}
        new = {}
        for k, p in params.items():
            g = grads[k]
            if cfg.kind == "sgd":
                if cfg.weight_decay:
                    g = g + cfg.weight_decay * p
                if cfg.momentum:
                    if t > 1:
                        self.buf[k] = cfg.momentum * self.buf[k] + (1 - cfg.dampening) * g
                    else:
                        self.buf[k] = g
                    g = g + cfg.momentum * self.buf[k] if cfg.nesterov else self.buf[k]
                new[k] = p - lr * g
                continue
            b1, b2 = cfg.betas
            if cfg.kind == "adamw":
                p = p - lr * cfg.weight_decay * p
            elif cfg.weight_decay:
                g = g + cfg.weight_decay * p
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            m_hat = self.m[k] / (1 - b1 ** t)
            v_hat = self.v[k] / (1 - b2 ** t)
            new[k] = p - lr * m_hat / (np.sqrt(v_hat) + cfg.eps)
        return new


def reference_trajectory(cfg: Config, start: dict[str, np.ndarray],
                         lrs: list[float]) -> tuple[list[float], list[dict[str, np.ndarray]],
                                                    ReferenceOptimizer]:
    params = {k: np.asarray(a, np.float64) for k, a in start.items()}
    opt = ReferenceOptimizer(cfg, params)
    losses, history = [], []
    for (x, y), lr in zip(regression_data(), lrs):
        loss, grads = regression_loss_and_grads(params, x, y)
        params = opt.step(params, grads, lr)
        losses.append(loss)
        history.append(params)
    return losses, history, opt


@dataclass
class Trajectory:
    start: dict[str, np.ndarray]
    losses: list[float]
    params: list[dict[str, np.ndarray]]


_TRAJECTORIES: dict[tuple[str, str], Trajectory] = {}


def compiled_trajectory(name: str, dtype: str) -> Trajectory:
    """50 compiled steps of config `name` (cached: the torch test reuses them)."""
    key = (name, dtype)
    if key not in _TRAJECTORIES:
        g, loss = regression_graph(dtype)
        start = {k: a.copy() for k, a in g.param_values.items()}
        step = compile_step(loss, CONFIGS[name].make())
        losses, params = [], []
        for x, y in regression_data():
            losses.append(step(x=x.astype(dtype), y=y.astype(dtype)))
            params.append({k: a.copy() for k, a in step.params.items()})
        assert step.state["step"] == STEPS
        _TRAJECTORIES[key] = Trajectory(start, losses, params)
    return _TRAJECTORIES[key]


def assert_trajectories_match(losses: list[float], params: list[dict[str, np.ndarray]],
                              ref_losses: list[float], ref_params: list[dict[str, np.ndarray]],
                              tol: dict[str, float], what: str) -> None:
    assert len(losses) == len(ref_losses) == len(params) == len(ref_params)
    np.testing.assert_allclose(losses, ref_losses, **tol, err_msg=f"{what}: losses")
    for t, (got, want) in enumerate(zip(params, ref_params), start=1):
        assert sorted(got) == sorted(want)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], **tol,
                                       err_msg=f"{what}: parameter {k} after step {t}")


# -- (a) optimizer trajectories -----------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_optimizer_trajectory_matches_documented_rule(name: str, dtype: str) -> None:
    cfg = CONFIGS[name]
    traj = compiled_trajectory(name, dtype)
    ref_losses, ref_params, opt = reference_trajectory(cfg, traj.start, [cfg.lr] * STEPS)
    assert_trajectories_match(traj.losses, traj.params, ref_losses, ref_params, TOL[dtype],
                              f"{name} {dtype}")
    if cfg.clip_norm is not None:
        assert opt.clipped >= 10, "clip_norm never limited the gradient: a vacuous test"
    # The run trains: the loss goes down (a trajectory stuck at the start would also match a
    # reference stuck at the start).
    assert np.mean(traj.losses[-5:]) < 0.5 * np.mean(traj.losses[:5])


def test_optimizer_state_names_and_values() -> None:
    """Adam's moments are exposed by name (live) and equal the reference's after 50 steps."""
    _, loss = regression_graph("float64")
    step = compile_step(loss, CONFIGS["adam"].make())
    for x, y in regression_data():
        step(x=x, y=y)
    state = step.optimizer_state()
    assert sorted(state) == sorted(f"{p}.{m}" for p in ("w", "v", "b")
                                   for m in ("exp_avg", "exp_avg_sq"))
    _, _, opt = reference_trajectory(CONFIGS["adam"], initial_params(), [0.05] * STEPS)
    for p in ("w", "v", "b"):
        np.testing.assert_allclose(state[f"{p}.exp_avg"], opt.m[p], **TOL["float64"])
        np.testing.assert_allclose(state[f"{p}.exp_avg_sq"], opt.v[p], **TOL["float64"])
    assert step.state == {"step": STEPS}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_optimizer_trajectory_matches_torch(name: str) -> None:
    torch = pytest.importorskip("torch")
    cfg = CONFIGS[name]
    traj = compiled_trajectory(name, "float64")
    tp = {k: torch.tensor(a, dtype=torch.float64, requires_grad=True)
          for k, a in traj.start.items()}
    params = [tp["w"], tp["v"], tp["b"]]
    if cfg.kind == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                              dampening=cfg.dampening, nesterov=cfg.nesterov,
                              weight_decay=cfg.weight_decay)
    else:
        cls = torch.optim.Adam if cfg.kind == "adam" else torch.optim.AdamW
        opt = cls(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                  weight_decay=cfg.weight_decay)
    losses, history = [], []
    for x, y in regression_data():
        opt.zero_grad()
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        pred = ((xt @ tp["w"]) * tp["v"]).sum(dim=1) + tp["b"]
        loss = ((pred - yt) ** 2).mean()
        loss.backward()
        if cfg.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        opt.step()
        losses.append(loss.item())
        history.append({k: t.detach().numpy().copy() for k, t in tp.items()})
    assert_trajectories_match(traj.losses, traj.params, losses, history, TOL["float64"],
                              f"{name} vs torch")


# -- (b) learning-rate changes, schedules and clipping without recompiling ------------------

def test_lr_change_and_schedule_without_recompiling() -> None:
    cfg = CONFIGS["adam"]
    g, loss = regression_graph("float64")
    start = {k: a.copy() for k, a in g.param_values.items()}
    step = compile_step(loss, cfg.make())
    kernels, report = step._functions, step.compile_report
    schedule = [0.05] * 10 + [0.01] * 10 + [0.1 / t for t in range(21, STEPS + 1)]
    losses, history = [], []
    for t, (x, y) in enumerate(regression_data(), start=1):
        if t == 11:
            step.lr = 0.01
            assert step.lr == 0.01
        if t == 21:
            step.lr = lambda n: 0.1 / n
        losses.append(step(x=x, y=y))
        history.append({k: a.copy() for k, a in step.params.items()})
    ref_losses, ref_params, _ = reference_trajectory(cfg, start, schedule)
    assert_trajectories_match(losses, history, ref_losses, ref_params, TOL["float64"],
                              "adam with lr changes")
    # The changes mattered (the constant-lr run went elsewhere) ...
    constant = compiled_trajectory("adam", "float64")
    assert not np.allclose(constant.params[-1]["w"], history[-1]["w"], rtol=1e-3)
    # ... and cost no compilation: the same kernels, one plan for the one feed shape.
    assert step._functions is kernels and step.compile_report is report
    assert len(step._plans) == 1


def test_sgd_lr_change_keeps_momentum_buffer() -> None:
    cfg = CONFIGS["sgd_momentum"]
    g, loss = regression_graph("float64")
    start = {k: a.copy() for k, a in g.param_values.items()}
    step = compile_step(loss, cfg.make(lr=lambda t: 0.03 if t <= 25 else 0.003))
    history = []
    for x, y in regression_data():
        step(x=x, y=y)
        history.append({k: a.copy() for k, a in step.params.items()})
    _, ref_params, opt = reference_trajectory(cfg, start, [0.03] * 25 + [0.003] * 25)
    for t in (1, 25, 26, STEPS):
        for k in start:
            np.testing.assert_allclose(history[t - 1][k], ref_params[t - 1][k],
                                       **TOL["float64"], err_msg=f"{k} after step {t}")
    for k in start:
        np.testing.assert_allclose(step.optimizer_state()[f"{k}.momentum_buffer"],
                                   opt.buf[k], **TOL["float64"])


# -- a small classifier shared by (c)-(g) ----------------------------------------------------

def classifier(dtype: str = "float32", seed: int = 0) -> tuple[gc.Graph, gc.Value, gc.Value,
                                                               gc.Value]:
    """(graph, logits, loss, accuracy) of a 4-8-3 tanh MLP."""
    g = gc.Graph("classifier", dtype=dtype, seed=seed)
    x = g.input("x", (None, 4))
    y = g.input("y", (None,), dtype="int64")
    logits = gc.nn.linear(gc.tanh(gc.nn.linear(x, 8, name="l1")), 3, name="l2")
    loss = gc.mean(gc.softmax_cross_entropy(logits, y))
    true_logit = gc.sum(logits * gc.one_hot(y, 3, dtype=dtype), axis=1)
    correct = gc.equal(gc.max(logits, axis=1), true_logit)
    accuracy = gc.mean(gc.cast(correct, dtype))
    return g, logits, loss, accuracy


def blobs(n: int, seed: int, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    centers = np.array([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])
    return (centers[y] + rng.standard_normal((n, 4))).astype(dtype), y


def snapshot(step: CompiledFunction) -> dict[str, np.ndarray]:
    out = {f"param {k}": a.copy() for k, a in step.params.items()}
    out.update({f"state {k}": a.copy() for k, a in step.optimizer_state().items()})
    return out


def assert_bitwise_unchanged(step: CompiledFunction, before: dict[str, np.ndarray],
                             step_number: int) -> None:
    now = snapshot(step)
    assert sorted(now) == sorted(before)
    for k, a in before.items():
        assert now[k].tobytes() == a.tobytes(), f"{k} changed"
    assert step.state["step"] == step_number


# -- (c) run-time batch size -----------------------------------------------------------------

def test_batch_size_changes_without_recompiling() -> None:
    g, _, loss, _ = classifier()
    params = g.params
    grads = gc.grad(loss, params)
    lr = 0.1
    step = compile_step(loss, gc.optim.SGD(lr))
    compiled_before = compile_count()
    x, y = blobs(19, seed=3)
    x.setflags(write=False)  # read-only feeds (np.load(mmap_mode="r"), broadcasts) too
    # 8, 8, then the last partial batch of 3, then a full batch again
    for lo, hi in [(0, 8), (8, 16), (16, 19), (0, 8)]:
        feeds = {"x": x[lo:hi], "y": y[lo:hi]}
        before = {p.name: step.params[p.name].copy() for p in params}
        want_loss, *want_grads = gc.evaluate([loss, *grads], feeds)
        got = step(**feeds)
        np.testing.assert_allclose(got, want_loss, rtol=1e-5, atol=1e-6,
                                   err_msg=f"loss on rows {lo}:{hi}")
        for p, gp in zip(params, want_grads):
            np.testing.assert_allclose(step.params[p.name], before[p.name] - lr * gp,
                                       rtol=1e-5, atol=1e-6,
                                       err_msg=f"{p.name} after rows {lo}:{hi}")
    # run-time sizes and read-only feeds need no recompilation: kernels are C functions of
    # one signature, and the executor has one specialisation
    assert compile_count() == compiled_before
    assert step.state["step"] == 4


def test_linear_layers_on_sequences_run_as_2d_products() -> None:
    """Linear layers on (batch, time, features) inputs compile to single 2-D matrix
    products over batch * time rows (graphc/passes/matmul.py), forward and backward, for
    any batch size; gradients match the interpreter's batched products in float64 (only
    the order of the sums differs: rtol 1e-11 as in the module docstring)."""
    g = gc.Graph("sequence", dtype="float64", seed=5)
    x = g.input("x", (None, 7, 6))
    y = g.input("y", (None, 7), dtype="int64")
    h = gc.tanh(gc.nn.linear(x, 12, name="l1"))
    logits = gc.nn.linear(gc.nn.layer_norm(h, name="ln"), 4, name="l2")
    loss = gc.mean(gc.softmax_cross_entropy(gc.reshape(logits, (-1, 4)),
                                            gc.reshape(y, (-1,))))
    grads = gc.grad(loss, g.params)
    fn = gc.compile([loss, *grads])
    products = [n for n in fn.program.nodes if n.op == "matmul"]
    assert products and all(len(fn.program.nodes[i].shape) == 2
                            for n in products for i in n.inputs)
    rng = np.random.default_rng(2)
    for batch in (5, 1, 3):
        feeds = {"x": rng.normal(size=(batch, 7, 6)), "y": rng.integers(0, 4, (batch, 7))}
        for got, want in zip(fn(**feeds), gc.evaluate([loss, *grads], feeds)):
            np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13)


# -- (d) predict shares the trained parameters; (e) fetch ------------------------------------

def test_predict_sees_trained_params_and_fetch_returns_accuracy() -> None:
    g, logits, loss, accuracy = classifier()
    predict = gc.compile([logits])
    step = compile_step(loss, gc.optim.Adam(lr=0.05), fetch=[accuracy])
    compiled_before = compile_count()
    for name, arr in step.params.items():
        assert predict.params[name] is arr, f"{name} is not shared"
        assert g.param_values[name] is arr
    x, y = blobs(64, seed=5)
    xt, _ = blobs(10, seed=6)
    outputs = []
    initial_loss = float(gc.evaluate(loss, {"x": x, "y": y}))
    for epoch in range(15):
        want_loss, want_acc = gc.evaluate([loss, accuracy], {"x": x, "y": y})
        result = step(x=x, y=y)
        assert isinstance(result, tuple) and len(result) == 2
        got_loss, got_acc = result
        np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5, atol=1e-6)
        assert got_acc == pytest.approx(float(want_acc), abs=1e-6)
        (out,) = predict(x=xt)
        np.testing.assert_allclose(out, gc.evaluate(logits, {"x": xt}), rtol=1e-5, atol=1e-5,
                                   err_msg=f"predict after epoch {epoch}")
        outputs.append(out)
    assert not np.allclose(outputs[0], outputs[-1]), "predictions never changed"
    assert got_acc >= 0.85 and got_loss < 0.5 * initial_loss
    assert compile_count() == compiled_before


def test_step_introspection(graphc_cache_dir: str) -> None:
    """The printable backward graph, the kernels and the compile report of a step."""
    _, _, loss, accuracy = classifier()
    step = compile_step(loss, gc.optim.Adam(lr=0.05), fetch=[accuracy])
    listing = step.backward.full()
    assert listing == gc.format_graph(step.backward)
    assert len(step.backward) > 10 and "backward:" in listing
    summary = str(step.backward).splitlines()
    assert summary[0].startswith("backward graph of") and f"{len(step.backward)} nodes" in \
        summary[0] and "softmax_cross_entropy rule" in summary[1]
    assert len(summary) - len(step.backward) in (3, 4) and max(map(len, summary)) <= 100
    kernels = repr(step.kernels).splitlines()
    assert len(kernels) == len(step.kernels) + 2 and max(map(len, kernels)) <= 100
    assert f"{len(step.kernels)} kernel calls" in kernels[0]
    assert repr(step.kernels[0]).count("\n") == 0 and "source" in repr(step.kernels[0])
    assert "softmax_cross_entropy rule" in listing and "matmul vjp" in listing
    assert os.path.basename(__file__) in listing  # user lines, not graphc internals
    assert step.kernels
    for kernel in step.kernels:
        assert kernel.nodes and all(0 <= n < len(step.program.nodes) for n in kernel.nodes)
        assert os.path.dirname(kernel.path) == graphc_cache_dir
        with open(kernel.path) as f:
            assert kernel.source in f.read()  # the file is the source plus a hash line
        assert "def kernel(" in kernel.source
        assert kernel.lines and all(":" in line for line in kernel.lines)
    report = step.compile_report
    text = str(report)
    assert "kernel files" in text and report.total > 0 and report.phases
    assert report.kernels == len(step.kernels) >= report.unique_kernels > 0


# -- (f) feed validation ---------------------------------------------------------------------

@pytest.mark.parametrize(("feeds", "name", "words"), [
    ({"x": "ok"}, "y", "missing"),
    ({"x": "ok", "y": "ok", "z": np.zeros(3)}, "z", "unknown"),
    ({"x": np.zeros((5, 5), np.float32), "y": "ok"}, "x", "shape"),
    ({"x": np.zeros(5, np.float32), "y": "ok"}, "x", "shape"),
    ({"x": "ok", "y": np.zeros(5, np.float64)}, "y", "dtype"),
    ({"x": "ok", "y": np.zeros(5, "datetime64[s]")}, "y", "dtype"),
])
def test_bad_feed_raises_and_leaves_params_untouched(feeds: dict, name: str,
                                                     words: str) -> None:
    _, _, loss, _ = classifier()
    step = compile_step(loss, gc.optim.Adam(lr=0.05))
    x, y = blobs(5, seed=1)
    step(x=x, y=y)
    before = snapshot(step)
    actual = {k: {"x": x, "y": y}[k] if isinstance(v, str) else v for k, v in feeds.items()}
    with pytest.raises(gc.FeedError) as info:
        step(**actual)
    message = str(info.value)
    assert repr(name) in message, message
    assert words in message, message
    assert_bitwise_unchanged(step, before, 1)
    step(x=x, y=y)  # still usable
    assert step.state["step"] == 2


# -- (g) non-finite losses ---------------------------------------------------------------------

def test_non_finite_loss_raises_names_node_and_leaves_state_unchanged() -> None:
    g = gc.Graph("nonfinite", dtype="float64")
    x = g.input("x", (None, 3))
    w = g.param("w", np.array([0.5, 1.0, 1.5]))
    logged = gc.log(gc.sum(x * w, axis=1))
    loss = gc.mean(gc.square(logged))
    step = gc.compile(loss, optimizer=gc.optim.Adam(lr=0.01))
    good = np.abs(np.random.default_rng(0).standard_normal((4, 3))) + 0.5
    for _ in range(3):
        step(x=good)
    before = snapshot(step)
    assert any(np.any(a != 0) for k, a in before.items() if k.startswith("state"))
    path, _, line = logged.node.where.rpartition(":")
    assert os.path.basename(path) == "test_compile_training.py"
    for bad, kind in [(-good, "NaN"), (np.zeros((4, 3)), "-inf")]:
        with pytest.raises(gc.NonFiniteError) as info:
            step(x=bad)
        message = str(info.value)
        assert "log" in message and f"test_compile_training.py:{line}" in message, \
            f"{kind}: {message}"
        assert "step 4" in message, f"{kind}: {message}"
        assert_bitwise_unchanged(step, before, 3)
    step.skip_nonfinite = True
    value = step(x=-good)
    assert math.isnan(value)
    assert_bitwise_unchanged(step, before, 3)
    finite = step(x=good)
    assert math.isfinite(finite)
    assert step.state["step"] == 4
    assert not np.array_equal(step.params["w"], before["param w"])


# -- (h) determinism and (i) the disk cache across processes ---------------------------------

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import graphc as gc

    g = gc.Graph("cached", dtype="float32", seed=11)
    x = g.input("x", (None, 4))
    y = g.input("y", (None,), dtype="int64")
    logits = gc.nn.linear(gc.tanh(gc.nn.linear(x, 16)), 3)
    loss = gc.mean(gc.softmax_cross_entropy(logits, y))
    step = gc.compile(loss, optimizer=gc.optim.AdamW(lr=0.01, weight_decay=0.05))
    rng = np.random.default_rng(99)
    X = rng.standard_normal((40, 4)).astype(np.float32)
    Y = rng.integers(0, 3, size=40)
    losses = [step(x=X[i:i + 10], y=Y[i:i + 10]) for i in range(0, 40, 10) for _ in range(5)]
    np.savez(sys.argv[1], **step.params)
    r = step.compile_report
    print(json.dumps({"written": r.cache_written, "reused": r.cache_reused,
                      "repaired": r.cache_repaired, "total": r.total, "losses": losses,
                      "files": sorted({k.path for k in step.kernels} | {step.path})}))
""")


def run_script(tmp_path, cache: str, tag: str) -> tuple[dict, dict[str, np.ndarray]]:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"{tag}.npz"
    env = dict(os.environ, GRAPHC_CACHE_DIR=cache)
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(script), str(out)], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(out) as data:
        params = {k: data[k] for k in data.files}
    return info, params


@pytest.fixture(scope="module")
def cache_runs(tmp_path_factory) -> dict:
    """Three processes on one fresh cache directory: cold, warm, then warm after damage to a
    generated source file and to every kept machine-code file."""
    tmp_path = tmp_path_factory.mktemp("process-cache")
    cache = str(tmp_path / "cache")
    cold, p_cold = run_script(tmp_path, cache, "cold")
    warm, p_warm = run_script(tmp_path, cache, "warm")
    kernel_files = sorted(f for f in cold["files"] if "graphc_kernel_" in f)
    damaged = kernel_files[0]
    with open(damaged, "w") as f:
        f.write("this is not python ((\n")
    pycache = os.path.join(cache, "__pycache__")
    object_files = [os.path.join(pycache, n) for n in os.listdir(pycache)
                    if n.endswith(".obj")]
    for path in object_files:
        with open(path, "wb") as f:
            f.write(b"\x80junk" * 7)
    repaired, p_repaired = run_script(tmp_path, cache, "repaired")
    return {"cold": (cold, p_cold), "warm": (warm, p_warm), "repaired": (repaired, p_repaired),
            "damaged": damaged, "object_files": object_files}


def test_same_seed_and_data_give_bitwise_identical_params_across_processes(cache_runs) -> None:
    (cold, p_cold), (warm, p_warm) = cache_runs["cold"], cache_runs["warm"]
    assert sorted(p_cold) == sorted(p_warm) and p_cold
    for k in p_cold:
        assert p_cold[k].tobytes() == p_warm[k].tobytes(), k
    assert cold["losses"] == warm["losses"]
    assert cold["losses"][4] < cold["losses"][0]  # 5 steps on the first batch: it trains


def test_second_process_reuses_the_disk_cache(cache_runs) -> None:
    cold, _ = cache_runs["cold"]
    warm, _ = cache_runs["warm"]
    assert cold["written"] > 0
    assert warm["written"] == 0 and warm["repaired"] == 0
    assert warm["reused"] == cold["written"] + cold["reused"]
    assert warm["files"] == cold["files"]
    # loading machine code from Numba's cache instead of compiling: measured ~10x faster
    assert warm["total"] < 0.5 * cold["total"], (warm["total"], cold["total"])


def test_damaged_cache_files_are_detected_and_rebuilt(cache_runs) -> None:
    cold, p_cold = cache_runs["cold"]
    repaired, p_repaired = cache_runs["repaired"]
    objects = cache_runs["object_files"]
    assert len(objects) == len(cold["files"]), "every kernel's machine code is kept"
    # the junk source file and every junk machine-code file were noticed and rebuilt (the
    # damaged source's machine code is dropped with it, so it counts once)
    assert repaired["repaired"] == len(objects) and repaired["written"] == 0
    with open(cache_runs["damaged"]) as f:
        assert f.readline().startswith("# graphc-source-sha256: ")
    for k in p_cold:
        assert p_cold[k].tobytes() == p_repaired[k].tobytes(), k
    assert repaired["losses"] == cold["losses"]


# -- (j) a real data set ----------------------------------------------------------------------

def test_mlp_learns_sklearn_digits() -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:1400], order[1400:]
    g = gc.Graph("digits", dtype="float32", seed=0)
    xi = g.input("x", (None, 64))
    yi = g.input("y", (None,), dtype="int64")
    logits = gc.nn.linear(gc.relu(gc.nn.linear(xi, 32, init="he")), 10)
    loss = gc.mean(gc.softmax_cross_entropy(logits, yi))
    step = gc.compile(loss, optimizer=gc.optim.Adam(lr=0.01))
    predict = gc.compile([logits])
    batch = 100
    first = {"x": x[train[:batch]], "y": y[train[:batch]]}
    want = float(gc.evaluate(loss, first))
    got = step(**first)
    np.testing.assert_allclose(got, want, rtol=1e-5)  # float32, 64-term dot products
    rng = np.random.default_rng(1)
    for _ in range(8):
        perm = rng.permutation(train)
        for lo in range(0, len(perm), batch):  # 14 full batches per epoch
            idx = perm[lo:lo + batch]
            step(x=x[idx], y=y[idx])
    (out,) = predict(x=x[test])
    accuracy = float(np.mean(np.argmax(out, axis=1) == y[test]))
    # a 64-32-10 ReLU MLP reaches ~0.96-0.98 held-out accuracy here; 0.93 leaves margin
    # for seeds while an untrained or broken model is near 0.1
    assert accuracy >= 0.93, accuracy


# -- optimizers defined outside graphc (regressions for the memory plan) ----------------------

@pytest.mark.parametrize("kind", ["update_ends_in_matmul", "update_reads_transposed"])
def test_custom_optimizer_updates_match_numpy(kind: str) -> None:
    """An update computed by a matrix product is copied into its parameter after the last
    kernel (its buffer used to be reused before that); an update that reads its parameter
    transposed must not be written in place (it read entries already overwritten)."""
    from tests.test_passes import MatmulUpdateOptimizer, TransposedReadOptimizer

    g = gc.Graph("custom", dtype="float64")
    x = g.input("x", (None, 3))
    a = g.param("a", np.arange(9.0).reshape(3, 3) / 10)
    b = g.param("b", np.ones((3, 3)) / 3)
    loss = gc.mean(gc.square(x @ a + x @ b))
    grads = gc.grad(loss, [a, b])
    lr = 0.1
    opt = MatmulUpdateOptimizer(lr) if kind == "update_ends_in_matmul" else \
        TransposedReadOptimizer(lr)
    step = compile_step(loss, opt)
    xs = np.random.default_rng(0).standard_normal((4, 3))
    for _ in range(3):
        old = {k: v.copy() for k, v in step.params.items()}
        ga, gb = (np.array(v) for v in gc.evaluate(grads, {"x": xs}))
        step(x=xs)
        for name, gp in (("a", ga), ("b", gb)):
            p = old[name]
            if kind == "update_ends_in_matmul":
                want = (p - lr * gp) @ np.eye(3)[::-1]
            else:
                want = p - lr * (gp + 0.1 * p.T)
            np.testing.assert_allclose(step.params[name], want, rtol=1e-13, atol=1e-14,
                                       err_msg=f"{kind}: {name}")
