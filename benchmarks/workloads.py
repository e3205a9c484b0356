"""Benchmark workloads: shapes, deterministic data and initial parameters.

Every implementation (numpy, PyTorch, JAX, graphc) is built from the same
:class:`Workload`: the same initial parameters and the same batches, so the losses of the
first training steps can be compared across implementations.

Parameter conventions (shared by every implementation):

- a linear layer ``i`` has ``fc{i}.w`` of shape ``(in, out)`` (used as ``x @ w``) and
  ``fc{i}.b`` of shape ``(out,)``;
- the ``ffn`` workload also has ``ln.g`` and ``ln.b``, the layer-norm gain and bias.

Every workload trains with Adam (PyTorch's update rule) on float32 data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np

LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
LN_EPS = 1e-5
N_BATCHES = 4
SEED = 0

Batch = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Workload:
    """One benchmark workload.

    Attributes:
        name: short name used on the command line and in the table.
        kind: ``"mlp"`` (linear layers with an activation between them, softmax
            cross-entropy over int64 labels) or ``"ffn"`` (layer norm, two linear
            layers with a GELU between them, a residual connection and a mean
            squared error loss against a float32 target).
        batch: rows per batch (tokens for ``ffn``).
        sizes: for ``mlp`` the layer widths from input to output; for ``ffn``
            ``(d_model, d_ff)``.
        activation: ``"relu"``, ``"tanh"`` or ``"gelu"`` (tanh approximation).
        description: one line for humans.
    """

    name: str
    kind: Literal["mlp", "ffn"]
    batch: int
    sizes: tuple[int, ...]
    activation: Literal["relu", "tanh", "gelu"]
    description: str

    @property
    def n_layers(self) -> int:
        """Number of linear layers."""
        return len(self.sizes) - 1 if self.kind == "mlp" else 2

    @property
    def linear_shapes(self) -> list[tuple[int, int, int]]:
        """``(m, k, n)`` of the forward matmul of each linear layer, in order."""
        if self.kind == "mlp":
            return [(self.batch, k, n) for k, n in zip(self.sizes[:-1], self.sizes[1:])]
        d, f = self.sizes
        return [(self.batch, d, f), (self.batch, f, d)]

    def flops_per_step(self) -> float:
        """Nominal matmul FLOPs of one training step.

        Each linear layer counts three matmuls (forward, weight gradient, input
        gradient): ``6 * m * k * n``. The first layer's input gradient is not needed
        (the input is data), so this slightly overstates the work that is done.
        """
        return float(sum(6 * m * k * n for m, k, n in self.linear_shapes))

    def param_names(self) -> list[str]:
        """Parameter names in their canonical order."""
        return list(_materialize(self.name)[0])

    def make_params(self) -> dict[str, np.ndarray]:
        """Fresh float32 copies of the initial parameters, in canonical order."""
        return {k: v.copy() for k, v in _materialize(self.name)[0].items()}

    def make_batches(self) -> list[Batch]:
        """Fresh copies of the ``N_BATCHES`` training batches ``(x, y)``.

        ``x`` is float32 ``(batch, features)``. ``y`` is int64 ``(batch,)`` class labels
        for ``mlp`` workloads and a float32 ``(batch, d_model)`` target for ``ffn``.
        """
        return [(x.copy(), y.copy()) for x, y in _materialize(self.name)[1]]


_ALL = [
    Workload(
        name="digits",
        kind="mlp",
        batch=64,
        sizes=(64, 128, 128, 10),
        activation="relu",
        description="64-128-128-10 ReLU MLP, batch 64, softmax cross-entropy",
    ),
    Workload(
        name="mnist",
        kind="mlp",
        batch=128,
        sizes=(784, 512, 512, 10),
        activation="relu",
        description="784-512-512-10 ReLU MLP, batch 128, softmax cross-entropy",
    ),
    Workload(
        name="deep",
        kind="mlp",
        batch=32,
        sizes=(64,) + (64,) * 16 + (10,),
        activation="tanh",
        description="64 -> 16 x (Linear 64, tanh) -> Linear 10, batch 32, softmax cross-entropy",
    ),
    Workload(
        name="ffn",
        kind="ffn",
        batch=256,
        sizes=(256, 1024),
        activation="gelu",
        description="256 tokens x d 256: layer_norm -> Linear 256x1024 -> gelu (tanh) "
        "-> Linear 1024x256 -> + residual, MSE",
    ),
]
WORKLOADS: dict[str, Workload] = {w.name: w for w in _ALL}


def get_workload(name: str) -> Workload:
    """Return the workload called ``name`` (raises ``KeyError`` with the known names)."""
    try:
        return WORKLOADS[name]
    except KeyError:
        raise KeyError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}") from None


def _linear_init(rng: np.random.Generator, fan_in: int, fan_out: int) -> tuple[np.ndarray, ...]:
    """Glorot-uniform weight and a bias uniform in +-1/sqrt(fan_in), both float32."""
    a = math.sqrt(6.0 / (fan_in + fan_out))
    w = rng.uniform(-a, a, size=(fan_in, fan_out)).astype(np.float32)
    bound = 1.0 / math.sqrt(fan_in)
    b = rng.uniform(-bound, bound, size=(fan_out,)).astype(np.float32)
    return w, b


@cache
def _materialize(name: str) -> tuple[dict[str, np.ndarray], list[Batch]]:
    """Draw the parameters, then the batches, of one workload from ``default_rng(SEED)``."""
    wl = get_workload(name)
    rng = np.random.default_rng(SEED)
    params: dict[str, np.ndarray] = {}
    batches: list[Batch] = []
    if wl.kind == "mlp":
        for i, (k, n) in enumerate(zip(wl.sizes[:-1], wl.sizes[1:])):
            params[f"fc{i}.w"], params[f"fc{i}.b"] = _linear_init(rng, k, n)
        n_in, n_classes = wl.sizes[0], wl.sizes[-1]
        for _ in range(N_BATCHES):
            if name == "mnist":
                x = rng.uniform(0.0, 1.0, size=(wl.batch, n_in)).astype(np.float32)
            else:
                x = rng.standard_normal((wl.batch, n_in)).astype(np.float32)
            y = rng.integers(0, n_classes, size=wl.batch, dtype=np.int64)
            batches.append((x, y))
    else:
        d, f = wl.sizes
        # Gain and bias are perturbed from 1 and 0 so that the loss depends on both.
        params["ln.g"] = (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        params["ln.b"] = (0.1 * rng.standard_normal(d)).astype(np.float32)
        params["fc0.w"], params["fc0.b"] = _linear_init(rng, d, f)
        params["fc1.w"], params["fc1.b"] = _linear_init(rng, f, d)
        for _ in range(N_BATCHES):
            x = rng.standard_normal((wl.batch, d)).astype(np.float32)
            y = rng.standard_normal((wl.batch, d)).astype(np.float32)
            batches.append((x, y))
    for arr in params.values():
        arr.setflags(write=False)
    for x, y in batches:
        x.setflags(write=False)
        y.setflags(write=False)
    return params, batches
