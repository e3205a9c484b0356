"""PyTorch eager (CPU) training steps for the benchmark workloads.

Idiomatic PyTorch: ``nn.Module`` layers, ``torch.optim.Adam`` with its default
implementation choice, and the default number of intra-op threads. The ``gpt``, ``cnn``
and ``rnn`` models keep the workload's parameters as they are (graphc's names, ``(in,
out)`` linear weights) and use ``torch.nn.functional`` ops on them.
"""

from __future__ import annotations

import math
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


class Transformer(nn.Module):
    """``models.char_transformer``: embeddings, pre-layer-norm blocks of causal attention
    and a 4x GELU (tanh) MLP, final layer norm, linear head; weights loaded from ``params``
    (graphc's names, ``(in, out)`` linear weights)."""

    def __init__(self, sizes: tuple[int, ...], params: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.blocks, _, self.context, self.width, self.heads = sizes
        self.p = nn.ParameterDict({k.replace(".", "_"): nn.Parameter(torch.from_numpy(v.copy()))
                                   for k, v in params.items()})
        causal = torch.tril(torch.ones(self.context, self.context, dtype=torch.bool))
        self.register_buffer("causal", causal)

    def _lin(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x @ self.p[f"{name}_w"] + self.p[f"{name}_b"]

    def _ln(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return functional.layer_norm(x, (self.width,), self.p[f"{name}_gain"],
                                     self.p[f"{name}_bias"], LN_EPS)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy."""
        t, d, heads = self.context, self.width, self.heads
        h = self.p["tok_w"][ids] + self.p["pos"]
        for b in range(self.blocks):
            a = self._ln(f"b{b}_ln1", h)
            q, k, v = (self._lin(f"b{b}_{n}", a).reshape(-1, t, heads, d // heads)
                       .transpose(1, 2) for n in ("q", "k", "v"))
            scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d // heads))
            scores = torch.where(self.causal, scores, torch.tensor(-1e9))
            att = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(-1, t, d)
            h = h + self._lin(f"b{b}_proj", att)
            a = functional.gelu(self._lin(f"b{b}_fc1", self._ln(f"b{b}_ln2", h)),
                                approximate="tanh")
            h = h + self._lin(f"b{b}_fc2", a)
        logits = self._lin("head", self._ln("ln_f", h))
        return functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                        targets.reshape(-1))


class CNN(nn.Module):
    """``models.cnn``: conv-ReLU-max pool-batch norm twice, then a linear classifier."""

    def __init__(self, params: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.p = nn.ParameterDict({k.replace(".", "_"): nn.Parameter(torch.from_numpy(v.copy()))
                                   for k, v in params.items()})

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean softmax cross-entropy."""
        h = x
        for i in (1, 2):
            h = functional.relu(functional.conv2d(h, self.p[f"conv{i}_w"],
                                                  self.p[f"conv{i}_b"], padding=1))
            h = functional.batch_norm(functional.max_pool2d(h, 2), None, None,
                                      self.p[f"bn{i}_gain"], self.p[f"bn{i}_bias"],
                                      training=True, eps=LN_EPS)
        logits = h.flatten(1) @ self.p["out_w"] + self.p["out_b"]
        return functional.cross_entropy(logits, y)


class RNN(nn.Module):
    """``models.rnn``: a tanh RNN unrolled over the sequence, classifying its last state."""

    def __init__(self, params: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.p = nn.ParameterDict({k.replace(".", "_"): nn.Parameter(torch.from_numpy(v.copy()))
                                   for k, v in params.items()})

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean softmax cross-entropy."""
        h = None
        for t in range(x.shape[1]):
            pre = x[:, t, :] @ self.p["cell_wx"] + self.p["cell_b"]
            h = torch.tanh(pre if h is None else pre + h @ self.p["cell_wh"])
        return functional.cross_entropy(h @ self.p["out_w"] + self.p["out_b"], y)


class TorchRunner:
    """A model, its Adam optimizer and the batches as tensors."""

    def __init__(self, wl: Workload, params: dict[str, np.ndarray], batches: list[Batch]) -> None:
        self.phases: dict[str, float] = {}
        self.whole = wl.kind in ("gpt", "cnn", "rnn")
        if wl.kind == "gpt":
            self.model: nn.Module = Transformer(wl.sizes, params)
        elif wl.kind == "cnn":
            self.model = CNN(params)
        elif wl.kind == "rnn":
            self.model = RNN(params)
        elif wl.kind == "mlp":
            layers: list[nn.Module] = []
            for i, (k, n) in enumerate(zip(wl.sizes[:-1], wl.sizes[1:])):
                lin = nn.Linear(k, n)
                _load_linear(lin, params[f"fc{i}.w"], params[f"fc{i}.b"])
                layers.append(lin)
                if i < wl.n_layers - 1:
                    layers.append(nn.ReLU() if wl.activation == "relu" else nn.Tanh())
            self.model = nn.Sequential(*layers)
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
        loss = self.model(x, y) if self.whole else self.loss_fn(self.model(x), y)
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
