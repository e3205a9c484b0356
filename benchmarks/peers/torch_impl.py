"""PyTorch eager (CPU) training steps for the benchmark workloads.

Idiomatic PyTorch: ``nn.Module`` layers, ``torch.optim.Adam`` with its default
implementation choice, and the default number of intra-op threads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from benchmarks.workloads import BETAS, EPS, LN_EPS, LR, Batch, Workload

VERSION = torch.__version__


class FFN(nn.Module):
    """Layer norm -> linear -> GELU (tanh approximation) -> linear, plus the residual."""

    def __init__(self, d: int, f: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d, eps=LN_EPS)
        self.fc0 = nn.Linear(d, f)
        self.act = nn.GELU(approximate="tanh")
        self.fc1 = nn.Linear(f, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x + fc1(gelu(fc0(layer_norm(x))))``."""
        return x + self.fc1(self.act(self.fc0(self.ln(x))))


def _load_linear(layer: nn.Linear, w: np.ndarray, b: np.ndarray) -> None:
    """Copy an ``(in, out)`` weight and its bias into ``layer`` (which stores ``(out, in)``)."""
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
        layer.bias.copy_(torch.from_numpy(b))


class TorchRunner:
    """A model, its Adam optimizer and the batches as tensors."""

    def __init__(self, wl: Workload, params: dict[str, np.ndarray], batches: list[Batch]) -> None:
        self.phases: dict[str, float] = {}
        if wl.kind == "mlp":
            layers: list[nn.Module] = []
            for i, (k, n) in enumerate(zip(wl.sizes[:-1], wl.sizes[1:])):
                lin = nn.Linear(k, n)
                _load_linear(lin, params[f"fc{i}.w"], params[f"fc{i}.b"])
                layers.append(lin)
                if i < wl.n_layers - 1:
                    layers.append(nn.ReLU() if wl.activation == "relu" else nn.Tanh())
            self.model: nn.Module = nn.Sequential(*layers)
            self.loss_fn = functional.cross_entropy
        else:
            model = FFN(*wl.sizes)
            with torch.no_grad():
                model.ln.weight.copy_(torch.from_numpy(params["ln.g"]))
                model.ln.bias.copy_(torch.from_numpy(params["ln.b"]))
            _load_linear(model.fc0, params["fc0.w"], params["fc0.b"])
            _load_linear(model.fc1, params["fc1.w"], params["fc1.b"])
            self.model = model
            self.loss_fn = functional.mse_loss
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR, betas=BETAS, eps=EPS)
        self.batches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]

    def step(self, i: int) -> torch.Tensor:
        """One training step on batch ``i % n_batches``; returns the loss before the update."""
        x, y = self.batches[i % len(self.batches)]
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def sync(self, out: Any) -> None:
        """CPU eager execution is synchronous: nothing to wait for."""

    def to_float(self, out: Any) -> float:
        """Return the loss as a Python float."""
        return float(out.item())


def build(wl: Workload, params: dict[str, np.ndarray], batches: list[Batch]) -> TorchRunner:
    """Build the PyTorch training step for ``wl`` from initial ``params`` and ``batches``."""
    return TorchRunner(wl, params, batches)
