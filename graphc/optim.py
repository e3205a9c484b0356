"""Optimizers, expressed as graph nodes so their updates fuse like everything else.

Each follows PyTorch's documented update rule (torch.optim.SGD / Adam / AdamW, non-amsgrad,
maximize=False). Scalars that change from step to step (the learning rate, Adam's bias
corrections) are run-time inputs of the program, so a new learning rate needs no recompile.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from graphc.errors import GraphError
from graphc.ir import Graph, Value
from graphc.ops import minimum, sqrt, square, sum

LearningRate = float | Callable[[int], float]


class Optimizer:
    """Base class: `build` appends the update nodes, `hypers` gives the per-step scalars."""

    hyper_names: tuple[str, ...] = ()

    def __init__(self, lr: LearningRate, clip_norm: float | None = None) -> None:
        if not callable(lr) and not lr >= 0:
            raise GraphError(f"learning rate must be >= 0, got {lr!r}")
        if clip_norm is not None and not clip_norm > 0:
            raise GraphError(f"clip_norm must be > 0, got {clip_norm!r}")
        self.lr = lr
        self.clip_norm = clip_norm

    def current_lr(self, step: int) -> float:
        """The learning rate for 1-based step number `step` (a schedule is called with it)."""
        return float(self.lr(step)) if callable(self.lr) else float(self.lr)

    def build(self, graph: Graph, params: list[Value], grads: list[Value]) -> list[tuple[str, int]]:
        """Append update nodes; returns (storage name, new-value node id) pairs."""
        hyper = {name: graph.input(f"@{name}", ()) for name in self.hyper_names}
        if self.clip_norm is not None:
            grads = clip_by_global_norm(grads, self.clip_norm)
        updates: list[tuple[str, int]] = []
        for p, g in zip(params, grads):
            updates.extend(self.update(graph, p, g, hyper))
        return updates

    def update(self, graph: Graph, p: Value, g: Value,
               hyper: dict[str, Value]) -> list[tuple[str, int]]:
        raise NotImplementedError

    def hypers(self, step: int) -> dict[str, float]:
        """Values of the run-time scalars for 1-based step number `step`."""
        raise NotImplementedError

    @staticmethod
    def moment(graph: Graph, p: Value, kind: str) -> Value:
        return graph.state(f"{p.name}.{kind}", np.zeros(p.shape, dtype=p.dtype))


def clip_by_global_norm(grads: list[Value], max_norm: float) -> list[Value]:
    """Scale all gradients by min(1, max_norm / (total_norm + 1e-6)), as
    torch.nn.utils.clip_grad_norm_ does."""
    total = None
    for g in grads:
        part = sum(square(g))
        total = part if total is None else total + part
    if total is None:
        return grads
    coef = minimum(max_norm / (sqrt(total) + 1e-6), 1.0)
    return [g * coef for g in grads]


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, dampening, Nesterov and L2."""

    hyper_names = ("lr", "momentum_now", "damp_now")

    def __init__(self, lr: LearningRate, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0,
                 clip_norm: float | None = None) -> None:
        super().__init__(lr, clip_norm)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise GraphError("Nesterov momentum requires a momentum and zero dampening")
        self.momentum, self.dampening = float(momentum), float(dampening)
        self.nesterov, self.weight_decay = nesterov, float(weight_decay)

    def update(self, graph: Graph, p: Value, g: Value,
               hyper: dict[str, Value]) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        if self.weight_decay:
            g = g + p * self.weight_decay
        if self.momentum:
            buf = self.moment(graph, p, "momentum_buffer")
            # First step: buf = g (momentum_now = 0, damp_now = 1); later:
            # buf = momentum * buf + (1 - dampening) * g.
            new_buf = buf * hyper["momentum_now"] + g * hyper["damp_now"]
            out.append((buf.name, new_buf.id))
            g = g + new_buf * self.momentum if self.nesterov else new_buf
        new_p = p - hyper["lr"] * g
        out.append((p.name, new_p.id))
        return out

    def hypers(self, step: int) -> dict[str, float]:
        first = step == 1
        return {"lr": self.current_lr(step),
                "momentum_now": 0.0 if first else self.momentum,
                "damp_now": 1.0 if first else 1.0 - self.dampening}


class Adam(Optimizer):
    """Adam (Kingma & Ba) with PyTorch's bias correction and L2 `weight_decay`."""

    hyper_names = ("step_size", "bc2_sqrt")
    decoupled = False

    def __init__(self, lr: LearningRate = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0,
                 clip_norm: float | None = None) -> None:
        super().__init__(lr, clip_norm)
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise GraphError(f"betas must be in [0, 1), got {betas!r}")
        self.betas, self.eps, self.weight_decay = (float(b1), float(b2)), float(eps), \
            float(weight_decay)
        if self.decoupled:
            self.hyper_names = ("step_size", "bc2_sqrt", "decay")

    def update(self, graph: Graph, p: Value, g: Value,
               hyper: dict[str, Value]) -> list[tuple[str, int]]:
        b1, b2 = self.betas
        m, v = self.moment(graph, p, "exp_avg"), self.moment(graph, p, "exp_avg_sq")
        if self.weight_decay and not self.decoupled:
            g = g + p * self.weight_decay
        base = p * hyper["decay"] if self.decoupled and self.weight_decay else p
        new_m = m * b1 + g * (1.0 - b1)
        new_v = v * b2 + g * g * (1.0 - b2)
        denom = sqrt(new_v) / hyper["bc2_sqrt"] + self.eps
        new_p = base - hyper["step_size"] * (new_m / denom)
        return [(m.name, new_m.id), (v.name, new_v.id), (p.name, new_p.id)]

    def hypers(self, step: int) -> dict[str, float]:
        b1, b2 = self.betas
        lr = self.current_lr(step)
        out = {"step_size": lr / (1.0 - b1 ** step),
               "bc2_sqrt": math.sqrt(1.0 - b2 ** step)}
        if self.decoupled:
            out["decay"] = 1.0 - lr * self.weight_decay
        return out


class AdamW(Adam):
    """Adam with decoupled weight decay: p *= 1 - lr * weight_decay before the Adam step."""

    decoupled = True

    def __init__(self, lr: LearningRate = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2,
                 clip_norm: float | None = None) -> None:
        super().__init__(lr, betas, eps, weight_decay, clip_norm)


__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "clip_by_global_norm"]
