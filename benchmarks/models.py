"""Models of real depth for the compile-time benchmark, built with graphc's public API.

Each builder returns `(loss, feeds)`: the scalar training loss and a dict of feeds for one
batch (numpy arrays from `np.random.default_rng(0)`). `MODELS` maps the benchmark's model
names to builders; the same builders serve the compile-cache tests. `WIDTH_VARIANTS` maps
each name to the same model with one layer's width changed (`benchmarks/compile_bench.py`
times recompiling it on the cache the original filled).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

import graphc as gc


def char_transformer(blocks: int, vocab: int = 65, context: int = 32, width: int = 64,
                     heads: int = 2, batch: int = 32,
                     ffn_hidden: dict[int, int] | None = None
                     ) -> tuple[Any, dict[str, np.ndarray]]:
    """A decoder-only character transformer: token and position embeddings, `blocks` x
    (layer norm, causal multi-head attention, residual; layer norm, 4x MLP with GELU,
    residual), a final layer norm and a linear head; mean next-token cross-entropy.

    `ffn_hidden` maps a block index to the hidden width of its MLP instead of 4 * `width`.
    """
    g = gc.Graph(f"transformer{blocks}", seed=0)
    ids = g.input("ids", (None, context), dtype="int64")
    targets = g.input("targets", (None, context), dtype="int64")
    head_dim = width // heads
    positions = g.param("pos", g.rng.normal(0.0, 0.02, size=(context, width)))
    h = gc.nn.embedding(ids, vocab, width, name="tok") + positions
    causal = np.tril(np.ones((context, context), dtype=bool))
    mask = g.const(causal)
    for b in range(blocks):
        a = gc.nn.layer_norm(h, name=f"b{b}.ln1")
        q, k, v = (gc.transpose(gc.reshape(gc.nn.linear(a, width, name=f"b{b}.{n}"),
                                           (-1, context, heads, head_dim)), (0, 2, 1, 3))
                   for n in ("q", "k", "v"))
        scores = (q @ gc.transpose(k, (0, 1, 3, 2))) * (1.0 / math.sqrt(head_dim))
        scores = gc.where(mask, scores, -1e9)
        att = gc.softmax(scores, axis=-1) @ v
        att = gc.reshape(gc.transpose(att, (0, 2, 1, 3)), (-1, context, width))
        h = h + gc.nn.linear(att, width, name=f"b{b}.proj")
        a = gc.nn.layer_norm(h, name=f"b{b}.ln2")
        hidden = (ffn_hidden or {}).get(b, 4 * width)
        a = gc.gelu(gc.nn.linear(a, hidden, name=f"b{b}.fc1"), approximate="tanh")
        h = h + gc.nn.linear(a, width, name=f"b{b}.fc2")
    logits = gc.nn.linear(gc.nn.layer_norm(h, name="ln_f"), vocab, name="head")
    loss = gc.mean(gc.softmax_cross_entropy(gc.reshape(logits, (-1, vocab)),
                                            gc.reshape(targets, (-1,))))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, size=(batch, context + 1))
    return loss, {"ids": tokens[:, :-1].copy(), "targets": tokens[:, 1:].copy()}


def rnn(steps: int, inputs: int = 16, hidden: int = 64, classes: int = 10,
        batch: int = 32) -> tuple[Any, dict[str, np.ndarray]]:
    """A tanh RNN unrolled `steps` times over a (batch, steps, inputs) sequence, one shared
    cell (`cell.wx`, `cell.wh`, `cell.b`), classifying from the last hidden state."""
    g = gc.Graph(f"rnn{steps}", seed=0)
    x = g.input("x", (None, steps, inputs))
    y = g.input("y", (None,), dtype="int64")
    scale_x, scale_h = 1.0 / math.sqrt(inputs), 1.0 / math.sqrt(hidden)
    wx = g.param("cell.wx", g.rng.uniform(-scale_x, scale_x, size=(inputs, hidden)))
    wh = g.param("cell.wh", g.rng.uniform(-scale_h, scale_h, size=(hidden, hidden)))
    b = g.param("cell.b", np.zeros(hidden))
    h = None
    for t in range(steps):
        pre = x[:, t, :] @ wx + b
        h = gc.tanh(pre if h is None else pre + h @ wh)
    loss = gc.mean(gc.softmax_cross_entropy(gc.nn.linear(h, classes, name="out"), y))
    rng = np.random.default_rng(0)
    return loss, {"x": rng.normal(size=(batch, steps, inputs)).astype(np.float32),
                  "y": rng.integers(0, classes, size=batch)}


def cnn(image: int = 16, batch: int = 64, classes: int = 10
        ) -> tuple[Any, dict[str, np.ndarray]]:
    """conv 3x3 (16 channels) -> ReLU -> 2x2 max pool -> batch norm -> conv 3x3 (32) -> ReLU
    -> 2x2 max pool -> batch norm -> dense `classes` on (batch, 1, image, image) inputs
    (`image` divisible by 4), mean softmax cross-entropy."""
    g = gc.Graph(f"cnn{image}", seed=0)
    x = g.input("x", (None, 1, image, image))
    y = g.input("y", (None,), dtype="int64")
    h = gc.relu(gc.nn.conv2d(x, 16, 3, padding=1, name="conv1"))
    h = gc.nn.batch_norm(gc.nn.max_pool2d(h, 2), name="bn1")
    h = gc.relu(gc.nn.conv2d(h, 32, 3, padding=1, name="conv2"))
    h = gc.nn.batch_norm(gc.nn.max_pool2d(h, 2), name="bn2")
    loss = gc.mean(gc.softmax_cross_entropy(gc.nn.linear(gc.nn.flatten(h), classes,
                                                         name="out"), y))
    rng = np.random.default_rng(0)
    return loss, {"x": rng.normal(size=(batch, 1, image, image)).astype(np.float32),
                  "y": rng.integers(0, classes, size=batch)}


def residual_mlp(layers: int, width: int = 128, inputs: int = 64, classes: int = 10,
                 batch: int = 64) -> tuple[Any, dict[str, np.ndarray]]:
    """`layers` residual blocks h + relu(linear(h)) of `width` units between an input
    projection and a classifier."""
    g = gc.Graph(f"resmlp{layers}", seed=0)
    x = g.input("x", (None, inputs))
    y = g.input("y", (None,), dtype="int64")
    h = gc.nn.linear(x, width, name="inp")
    for i in range(layers):
        h = h + gc.relu(gc.nn.linear(h, width, name=f"l{i}"))
    loss = gc.mean(gc.softmax_cross_entropy(gc.nn.linear(h, classes, name="out"), y))
    rng = np.random.default_rng(0)
    return loss, {"x": rng.normal(size=(batch, inputs)).astype(np.float32),
                  "y": rng.integers(0, classes, size=batch)}


def digits_mlp(batch: int = 64, hidden: int = 128,
               hidden2: int | None = None) -> tuple[Any, dict[str, np.ndarray]]:
    """The 64-128-128-10 ReLU MLP of examples/mlp_digits.py on random 8x8 inputs; `hidden2`,
    the width of the second hidden layer, defaults to `hidden`."""
    g = gc.Graph("digits", seed=0)
    x = g.input("x", (None, 64))
    y = g.input("y", (None,), dtype="int64")
    h = gc.relu(gc.nn.linear(x, hidden, name="fc1", init="he"))
    h = gc.relu(gc.nn.linear(h, hidden if hidden2 is None else hidden2, name="fc2",
                             init="he"))
    loss = gc.mean(gc.softmax_cross_entropy(gc.nn.linear(h, 10, name="fc3"), y))
    rng = np.random.default_rng(0)
    return loss, {"x": rng.normal(size=(batch, 64)).astype(np.float32),
                  "y": rng.integers(0, 10, size=batch)}


MODELS: dict[str, Callable[[], tuple[Any, dict[str, np.ndarray]]]] = {
    "digits": digits_mlp,
    "resmlp8": lambda: residual_mlp(8),
    "resmlp32": lambda: residual_mlp(32),
    "rnn16": lambda: rnn(16),
    "rnn64": lambda: rnn(64),
    "transformer2": lambda: char_transformer(2),
    "transformer4": lambda: char_transformer(4),
    "transformer8": lambda: char_transformer(8),
}

#: Each model with one layer's width changed: (what changed, builder).
WIDTH_VARIANTS: dict[str, tuple[str, Callable[[], tuple[Any, dict[str, np.ndarray]]]]] = {
    "digits": ("second hidden layer 128 -> 96", lambda: digits_mlp(hidden2=96)),
    "resmlp8": ("classifier 10 -> 12 classes", lambda: residual_mlp(8, classes=12)),
    "resmlp32": ("classifier 10 -> 12 classes", lambda: residual_mlp(32, classes=12)),
    "rnn16": ("classifier 10 -> 12 classes", lambda: rnn(16, classes=12)),
    "rnn64": ("classifier 10 -> 12 classes", lambda: rnn(64, classes=12)),
    "transformer2": ("block 0 MLP hidden 256 -> 192",
                     lambda: char_transformer(2, ffn_hidden={0: 192})),
    "transformer4": ("block 0 MLP hidden 256 -> 192",
                     lambda: char_transformer(4, ffn_hidden={0: 192})),
    "transformer8": ("block 0 MLP hidden 256 -> 192",
                     lambda: char_transformer(8, ffn_hidden={0: 192})),
}
