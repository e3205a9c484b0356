"""JAX versions of the compile-time benchmark's models (``benchmarks/models.py``).

Same shapes and layers as graphc's builders at their defaults: the character transformer
(token embedding + learned positions, pre-layer-norm causal attention with 2 heads, GELU
(tanh) MLP, final layer norm, linear head), the tanh RNN unrolled with a Python loop, the
residual MLP and the digits MLP; mean softmax cross-entropy. ``make_step(name)`` gives one
``jax.jit`` of ``value_and_grad`` + Adam (``jax_impl.adam``, PyTorch's rule) with its initial
state and one batch; its first call traces and compiles. Labels are int32 (JAX's default
without x64). Initial values differ from graphc's; only the shapes matter for compile time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.peers.jax_impl import adam
from benchmarks.workloads import LN_EPS

VERSION = jax.__version__

Params = dict[str, jax.Array]
Batch = dict[str, np.ndarray]
LossFn = Callable[[Params, Batch], jax.Array]


class _Init:
    """Parameters drawn like graphc's layers: Glorot-uniform weights, zero biases, unit
    layer-norm gains."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)
        self.params: dict[str, np.ndarray] = {}

    def add(self, name: str, value: np.ndarray) -> None:
        self.params[name] = np.asarray(value, dtype=np.float32)

    def linear(self, name: str, fan_in: int, units: int) -> None:
        limit = math.sqrt(6.0 / (fan_in + units))
        self.add(f"{name}.w", self.rng.uniform(-limit, limit, size=(fan_in, units)))
        self.add(f"{name}.b", np.zeros(units))

    def layer_norm(self, name: str, size: int) -> None:
        self.add(f"{name}.gain", np.ones(size))
        self.add(f"{name}.bias", np.zeros(size))


def linear(p: Params, name: str, x: jax.Array) -> jax.Array:
    return x @ p[f"{name}.w"] + p[f"{name}.b"]


def layer_norm(p: Params, name: str, x: jax.Array) -> jax.Array:
    mu = jnp.mean(x, axis=-1, keepdims=True)
    xc = x - mu
    var = jnp.mean(xc * xc, axis=-1, keepdims=True)
    return xc * jax.lax.rsqrt(var + LN_EPS) * p[f"{name}.gain"] + p[f"{name}.bias"]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of ``logits`` (n, classes) against int ``labels`` (n,)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def char_transformer(blocks: int, vocab: int = 65, context: int = 32, width: int = 64,
                     heads: int = 2, batch: int = 32) -> tuple[LossFn, Params, Batch]:
    """``models.char_transformer``: loss function, initial parameters, one batch."""
    head_dim = width // heads
    init = _Init()
    init.add("pos", init.rng.normal(0.0, 0.02, size=(context, width)))
    init.add("tok.w", init.rng.normal(0.0, 1.0, size=(vocab, width)))
    for b in range(blocks):
        init.layer_norm(f"b{b}.ln1", width)
        for n in ("q", "k", "v", "proj"):
            init.linear(f"b{b}.{n}", width, width)
        init.layer_norm(f"b{b}.ln2", width)
        init.linear(f"b{b}.fc1", width, 4 * width)
        init.linear(f"b{b}.fc2", 4 * width, width)
    init.layer_norm("ln_f", width)
    init.linear("head", width, vocab)
    causal = np.tril(np.ones((context, context), dtype=bool))

    def split(t: jax.Array) -> jax.Array:
        return jnp.transpose(jnp.reshape(t, (-1, context, heads, head_dim)), (0, 2, 1, 3))

    def loss(p: Params, feeds: Batch) -> jax.Array:
        h = jnp.take(p["tok.w"], feeds["ids"], axis=0) + p["pos"]
        for b in range(blocks):
            a = layer_norm(p, f"b{b}.ln1", h)
            q, k, v = (split(linear(p, f"b{b}.{n}", a)) for n in ("q", "k", "v"))
            scores = (q @ jnp.transpose(k, (0, 1, 3, 2))) * (1.0 / math.sqrt(head_dim))
            scores = jnp.where(causal, scores, -1e9)
            att = jax.nn.softmax(scores, axis=-1) @ v
            att = jnp.reshape(jnp.transpose(att, (0, 2, 1, 3)), (-1, context, width))
            h = h + linear(p, f"b{b}.proj", att)
            a = layer_norm(p, f"b{b}.ln2", h)
            a = jax.nn.gelu(linear(p, f"b{b}.fc1", a), approximate=True)
            h = h + linear(p, f"b{b}.fc2", a)
        logits = linear(p, "head", layer_norm(p, "ln_f", h))
        return cross_entropy(jnp.reshape(logits, (-1, vocab)),
                             jnp.reshape(feeds["targets"], (-1,)))

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, size=(batch, context + 1)).astype(np.int32)
    return loss, init.params, {"ids": tokens[:, :-1].copy(), "targets": tokens[:, 1:].copy()}


def rnn(steps: int, inputs: int = 16, hidden: int = 64, classes: int = 10,
        batch: int = 32) -> tuple[LossFn, Params, Batch]:
    """``models.rnn``: the tanh RNN unrolled ``steps`` times by a Python loop."""
    init = _Init()
    sx, sh = 1.0 / math.sqrt(inputs), 1.0 / math.sqrt(hidden)
    init.add("cell.wx", init.rng.uniform(-sx, sx, size=(inputs, hidden)))
    init.add("cell.wh", init.rng.uniform(-sh, sh, size=(hidden, hidden)))
    init.add("cell.b", np.zeros(hidden))
    init.linear("out", hidden, classes)

    def loss(p: Params, feeds: Batch) -> jax.Array:
        x = feeds["x"]
        h = None
        for t in range(steps):
            pre = x[:, t, :] @ p["cell.wx"] + p["cell.b"]
            h = jnp.tanh(pre if h is None else pre + h @ p["cell.wh"])
        return cross_entropy(linear(p, "out", h), feeds["y"])

    rng = np.random.default_rng(0)
    return loss, init.params, {
        "x": rng.normal(size=(batch, steps, inputs)).astype(np.float32),
        "y": rng.integers(0, classes, size=batch).astype(np.int32),
    }


def cnn(image: int = 16, batch: int = 64, classes: int = 10
        ) -> tuple[LossFn, Params, Batch]:
    """``models.cnn``: conv-ReLU-max pool-batch norm (batch statistics) twice, then a linear
    classifier; NCHW like graphc."""
    init = _Init()
    for i, (c_in, c_out) in enumerate(((1, 16), (16, 32)), start=1):
        init.add(f"conv{i}.w", init.rng.normal(0.0, math.sqrt(2.0 / (9 * c_in)),
                                                size=(c_out, c_in, 3, 3)))
        init.add(f"conv{i}.b", np.zeros(c_out))
        init.layer_norm(f"bn{i}", c_out)
    init.linear("out", 32 * (image // 4) ** 2, classes)

    def channels(v: jax.Array) -> jax.Array:
        return v[None, :, None, None]

    def block(p: Params, i: int, x: jax.Array) -> jax.Array:
        h = jax.lax.conv_general_dilated(x, p[f"conv{i}.w"], (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        h = jax.nn.relu(h + channels(p[f"conv{i}.b"]))
        h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2),
                                  "VALID")
        mu = jnp.mean(h, axis=(0, 2, 3), keepdims=True)
        hc = h - mu
        var = jnp.mean(hc * hc, axis=(0, 2, 3), keepdims=True)
        return (hc * jax.lax.rsqrt(var + LN_EPS) * channels(p[f"bn{i}.gain"])
                + channels(p[f"bn{i}.bias"]))

    def loss(p: Params, feeds: Batch) -> jax.Array:
        h = block(p, 2, block(p, 1, feeds["x"]))
        return cross_entropy(linear(p, "out", jnp.reshape(h, (h.shape[0], -1))), feeds["y"])

    rng = np.random.default_rng(0)
    return loss, init.params, {
        "x": rng.normal(size=(batch, 1, image, image)).astype(np.float32),
        "y": rng.integers(0, classes, size=batch).astype(np.int32),
    }


def residual_mlp(layers: int, width: int = 128, inputs: int = 64, classes: int = 10,
                 batch: int = 64) -> tuple[LossFn, Params, Batch]:
    """``models.residual_mlp``: ``layers`` blocks h + relu(linear(h))."""
    init = _Init()
    init.linear("inp", inputs, width)
    for i in range(layers):
        init.linear(f"l{i}", width, width)
    init.linear("out", width, classes)

    def loss(p: Params, feeds: Batch) -> jax.Array:
        h = linear(p, "inp", feeds["x"])
        for i in range(layers):
            h = h + jax.nn.relu(linear(p, f"l{i}", h))
        return cross_entropy(linear(p, "out", h), feeds["y"])

    rng = np.random.default_rng(0)
    return loss, init.params, {
        "x": rng.normal(size=(batch, inputs)).astype(np.float32),
        "y": rng.integers(0, classes, size=batch).astype(np.int32),
    }


def digits_mlp(batch: int = 64, hidden: int = 128) -> tuple[LossFn, Params, Batch]:
    """``models.digits_mlp``: the 64-128-128-10 ReLU MLP."""
    init = _Init()
    init.linear("fc1", 64, hidden)
    init.linear("fc2", hidden, hidden)
    init.linear("fc3", hidden, 10)

    def loss(p: Params, feeds: Batch) -> jax.Array:
        h = jax.nn.relu(linear(p, "fc1", feeds["x"]))
        h = jax.nn.relu(linear(p, "fc2", h))
        return cross_entropy(linear(p, "fc3", h), feeds["y"])

    rng = np.random.default_rng(0)
    return loss, init.params, {
        "x": rng.normal(size=(batch, 64)).astype(np.float32),
        "y": rng.integers(0, 10, size=batch).astype(np.int32),
    }


MODELS: dict[str, Callable[[], tuple[LossFn, Params, Batch]]] = {
    "digits": digits_mlp,
    "resmlp8": lambda: residual_mlp(8),
    "resmlp32": lambda: residual_mlp(32),
    "rnn16": lambda: rnn(16),
    "rnn64": lambda: rnn(64),
    "transformer2": lambda: char_transformer(2),
    "transformer4": lambda: char_transformer(4),
    "transformer8": lambda: char_transformer(8),
}


class JaxStep:
    """A model's jitted training step, its parameters and Adam state, and one batch."""

    def __init__(self, name: str) -> None:
        loss_fn, params, feeds = MODELS[name]()

        def train_step(p: Params, m: Params, v: Params, t: jax.Array,
                       feeds: Batch) -> tuple[Params, Params, Params, jax.Array, jax.Array]:
            loss, grads = jax.value_and_grad(loss_fn)(p, feeds)
            p, m, v, t = adam(p, grads, m, v, t)
            return p, m, v, t, loss

        self._step = jax.jit(train_step, donate_argnums=(0, 1, 2, 3))
        p = {k: jnp.array(a) for k, a in params.items()}
        m = {k: jnp.zeros_like(a) for k, a in p.items()}
        v = {k: jnp.zeros_like(a) for k, a in p.items()}
        self.state = (p, m, v, jnp.zeros((), jnp.int32))
        self.feeds = {k: jax.device_put(a) for k, a in feeds.items()}
        jax.block_until_ready((self.state, self.feeds))

    def step(self, i: int = 0) -> jax.Array:
        """One training step (the first traces and compiles); returns the loss (async)."""
        *state, loss = self._step(*self.state, self.feeds)
        self.state = tuple(state)
        return loss

    def sync(self, out: Any) -> None:
        jax.block_until_ready((out, self.state))

    def to_float(self, out: Any) -> float:
        return float(out)
