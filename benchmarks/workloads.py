"""Benchmark workloads: shapes, deterministic data and initial parameters.

Every implementation (numpy, PyTorch, JAX, graphc) is built from the same
:class:`Workload`: the same initial parameters and the same batches, so the losses of the
first training steps can be compared across implementations.

Parameter conventions (shared by every implementation):

- a linear layer ``i`` has ``fc{i}.w`` of shape ``(in, out)`` (used as ``x @ w``) and
  ``fc{i}.b`` of shape ``(out,)``;
- the ``ffn`` workload also has ``ln.g`` and ``ln.b``, the layer-norm gain and bias;
- the ``gpt``, ``cnn`` and ``rnn`` kinds are the models of ``benchmarks/models.py``
  (``char_transformer``, ``cnn``, ``rnn``) and use their parameter names (``tok.w``,
  ``b0.q.w``, ``b0.ln1.gain``, ``conv1.w``, ``bn1.bias``, ``cell.wh``, ...).

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
            cross-entropy over int64 labels), ``"ffn"`` (layer norm, two linear
            layers with a GELU between them, a residual connection and a mean
            squared error loss against a float32 target), ``"gpt"`` (the character
            transformer of ``benchmarks/models.py``: next-token cross-entropy),
            ``"cnn"`` (conv-ReLU-pool-batch norm twice, then a linear classifier) or
            ``"rnn"`` (a tanh RNN unrolled over the sequence, classifying from the last
            hidden state).
        batch: rows per batch (tokens for ``ffn``, sequences for ``gpt`` and ``rnn``,
            images for ``cnn``).
        sizes: for ``mlp`` the layer widths from input to output; for ``ffn``
            ``(d_model, d_ff)``; for ``gpt`` ``(blocks, vocab, context, width, heads)``;
            for ``cnn`` ``(image,)`` (square, 1 channel; 16 and 32 channels, 10 classes);
            for ``rnn`` ``(steps, inputs, hidden, classes)``.
        activation: ``"relu"``, ``"tanh"`` or ``"gelu"`` (tanh approximation).
        description: one line for humans.
    """

    name: str
    kind: Literal["mlp", "ffn", "gpt", "cnn", "rnn"]
    batch: int
    sizes: tuple[int, ...]
    activation: Literal["relu", "tanh", "gelu"]
    description: str

    @property
    def n_layers(self) -> int:
        """Number of linear layers (of ``mlp`` and ``ffn`` workloads)."""
        return len(self.sizes) - 1 if self.kind == "mlp" else 2

    @property
    def linear_shapes(self) -> list[tuple[int, int, int]]:
        """``(m, k, n)`` of each forward matrix product, in order: linear layers; for
        ``gpt`` also the attention products (per sequence and head), for ``cnn`` the
        convolutions as im2col GEMMs (rows = output pixels, k = inputs per window)."""
        b = self.batch
        if self.kind == "mlp":
            return [(b, k, n) for k, n in zip(self.sizes[:-1], self.sizes[1:])]
        if self.kind == "gpt":
            blocks, vocab, t, d, heads = self.sizes
            hd = d // heads
            block = [(b * t, d, d)] * 4 + [(b * t, d, 4 * d), (b * t, 4 * d, d),
                                           (b * heads * t, hd, t), (b * heads * t, t, hd)]
            return block * blocks + [(b * t, d, vocab)]
        if self.kind == "cnn":
            (image,) = self.sizes
            return [(b * image * image, 9, 16), (b * (image // 2) ** 2, 16 * 9, 32),
                    (b, 32 * (image // 4) ** 2, 10)]
        if self.kind == "rnn":
            steps, n_in, hidden, classes = self.sizes
            return [(b, n_in, hidden), (b, hidden, hidden)] * steps + [(b, hidden, classes)]
        d, f = self.sizes
        return [(b, d, f), (b, f, d)]

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

        ``x`` is float32 ``(batch, features)`` (``mlp``, ``ffn``), ``(batch, 1, image,
        image)`` (``cnn``), ``(batch, steps, inputs)`` (``rnn``) or int64 token ids
        ``(batch, context)`` (``gpt``). ``y`` is int64 ``(batch,)`` class labels for
        ``mlp``, ``cnn`` and ``rnn``, the int64 next tokens ``(batch, context)`` for
        ``gpt`` and a float32 ``(batch, d_model)`` target for ``ffn``.
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
_ALL += [
    Workload(
        name="gpt",
        kind="gpt",
        batch=32,
        sizes=(2, 65, 32, 64, 2),
        activation="gelu",
        description="character transformer: 2 blocks, width 64, 2 heads, context 32, "
        "vocab 65, batch 32, next-token cross-entropy",
    ),
    Workload(
        name="gpt8",
        kind="gpt",
        batch=32,
        sizes=(8, 65, 32, 64, 2),
        activation="gelu",
        description="the gpt workload with 8 blocks",
    ),
    Workload(
        name="cnn",
        kind="cnn",
        batch=64,
        sizes=(16,),
        activation="relu",
        description="16x16x1 images, batch 64: conv3x3 16 -> relu -> maxpool2 -> batch norm "
        "-> conv3x3 32 -> relu -> maxpool2 -> batch norm -> Linear 512x10",
    ),
    Workload(
        name="cnn28",
        kind="cnn",
        batch=64,
        sizes=(28,),
        activation="relu",
        description="the cnn workload on 28x28x1 images (Linear 1568x10)",
    ),
    Workload(
        name="rnn",
        kind="rnn",
        batch=32,
        sizes=(16, 16, 64, 10),
        activation="tanh",
        description="tanh RNN 16 -> 64 unrolled over 16 steps, batch 32, Linear 64x10 on the "
        "last state, softmax cross-entropy",
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


def _normal(rng: np.random.Generator, scale: float, shape: tuple[int, ...]) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _layer_norm_init(rng: np.random.Generator, params: dict[str, np.ndarray], name: str,
                     size: int) -> None:
    """Gain and bias perturbed from 1 and 0, so that the loss depends on both."""
    params[f"{name}.gain"] = (1.0 + _normal(rng, 0.1, (size,))).astype(np.float32)
    params[f"{name}.bias"] = _normal(rng, 0.1, (size,))


def _model_params(wl: Workload, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Initial parameters of a ``gpt``, ``cnn`` or ``rnn`` workload, in the order
    ``benchmarks/models.py`` creates them."""
    params: dict[str, np.ndarray] = {}
    if wl.kind == "gpt":
        blocks, vocab, context, d, _ = wl.sizes
        params["pos"] = _normal(rng, 0.02, (context, d))
        params["tok.w"] = _normal(rng, 1.0, (vocab, d))
        for b in range(blocks):
            _layer_norm_init(rng, params, f"b{b}.ln1", d)
            for n in ("q", "k", "v", "proj"):
                params[f"b{b}.{n}.w"], params[f"b{b}.{n}.b"] = _linear_init(rng, d, d)
            _layer_norm_init(rng, params, f"b{b}.ln2", d)
            params[f"b{b}.fc1.w"], params[f"b{b}.fc1.b"] = _linear_init(rng, d, 4 * d)
            params[f"b{b}.fc2.w"], params[f"b{b}.fc2.b"] = _linear_init(rng, 4 * d, d)
        _layer_norm_init(rng, params, "ln_f", d)
        params["head.w"], params["head.b"] = _linear_init(rng, d, vocab)
    elif wl.kind == "cnn":
        (image,) = wl.sizes
        for i, (c_in, c_out) in enumerate(((1, 16), (16, 32)), start=1):
            params[f"conv{i}.w"] = _normal(rng, math.sqrt(2.0 / (9 * c_in)), (c_out, c_in, 3, 3))
            params[f"conv{i}.b"] = _normal(rng, 0.1, (c_out,))
            params[f"bn{i}.gain"] = (1.0 + _normal(rng, 0.1, (c_out,))).astype(np.float32)
            params[f"bn{i}.bias"] = _normal(rng, 0.1, (c_out,))
        params["out.w"], params["out.b"] = _linear_init(rng, 32 * (image // 4) ** 2, 10)
    else:
        _, n_in, hidden, classes = wl.sizes
        wx, b = _linear_init(rng, n_in, hidden)
        wh, _ = _linear_init(rng, hidden, hidden)
        params.update({"cell.wx": wx, "cell.wh": wh, "cell.b": b})
        params["out.w"], params["out.b"] = _linear_init(rng, hidden, classes)
    return params


def _model_batch(wl: Workload, rng: np.random.Generator) -> Batch:
    """One batch ``(x, y)`` of a ``gpt``, ``cnn`` or ``rnn`` workload."""
    if wl.kind == "gpt":
        vocab, context = wl.sizes[1], wl.sizes[2]
        tokens = rng.integers(0, vocab, size=(wl.batch, context + 1), dtype=np.int64)
        return tokens[:, :-1].copy(), tokens[:, 1:].copy()
    if wl.kind == "cnn":
        (image,) = wl.sizes
        x = rng.standard_normal((wl.batch, 1, image, image)).astype(np.float32)
        return x, rng.integers(0, 10, size=wl.batch, dtype=np.int64)
    steps, n_in, _, classes = wl.sizes
    x = rng.standard_normal((wl.batch, steps, n_in)).astype(np.float32)
    return x, rng.integers(0, classes, size=wl.batch, dtype=np.int64)


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
    elif wl.kind in ("gpt", "cnn", "rnn"):
        params = _model_params(wl, rng)
        batches = [_model_batch(wl, rng) for _ in range(N_BATCHES)]
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
