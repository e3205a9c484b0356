"""JAX training steps for the benchmark workloads: one ``jax.jit`` of a whole step.

The step is ``value_and_grad`` of the loss followed by a hand-written Adam with PyTorch's
update rule, jitted together with the parameters and optimizer state donated. JAX runs
without 64-bit types by default, so labels are passed as int32.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.workloads import BETAS, EPS, LN_EPS, LR, Batch, Workload

VERSION = jax.__version__

Params = dict[str, jax.Array]


def mlp_loss(params: Params, x: jax.Array, y: jax.Array, n_layers: int, act: str) -> jax.Array:
    """Mean softmax cross-entropy of an MLP with ``n_layers`` linear layers."""
    h = x
    for i in range(n_layers):
        h = h @ params[f"fc{i}.w"] + params[f"fc{i}.b"]
        if i < n_layers - 1:
            h = jax.nn.relu(h) if act == "relu" else jnp.tanh(h)
    logp = jax.nn.log_softmax(h, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def ffn_loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error of ``x + fc1(gelu(fc0(layer_norm(x))))`` against ``y``."""
    mu = jnp.mean(x, axis=-1, keepdims=True)
    xc = x - mu
    var = jnp.mean(xc * xc, axis=-1, keepdims=True)
    a = xc * jax.lax.rsqrt(var + LN_EPS) * params["ln.g"] + params["ln.b"]
    h = jax.nn.gelu(a @ params["fc0.w"] + params["fc0.b"], approximate=True)
    out = h @ params["fc1.w"] + params["fc1.b"] + x
    return jnp.mean(jnp.square(out - y))


def model_loss(wl: Workload) -> Any:
    """``loss(params, x, y)`` of a ``gpt``, ``cnn`` or ``rnn`` workload, from
    ``benchmarks/peers/jax_models.py`` (whose own initial values are not used)."""
    from benchmarks.peers import jax_models

    if wl.kind == "gpt":
        blocks, vocab, context, width, heads = wl.sizes
        fn, _, _ = jax_models.char_transformer(blocks, vocab, context, width, heads, wl.batch)
        return lambda p, x, y: fn(p, {"ids": x, "targets": y})
    if wl.kind == "cnn":
        fn, _, _ = jax_models.cnn(wl.sizes[0], wl.batch)
    else:
        fn, _, _ = jax_models.rnn(*wl.sizes, batch=wl.batch)
    return lambda p, x, y: fn(p, {"x": x, "y": y})


def adam(
    params: Params, grads: Params, m: Params, v: Params, t: jax.Array
) -> tuple[Params, Params, Params, jax.Array]:
    """One Adam step with PyTorch's update rule; ``t`` counts steps already taken."""
    b1, b2 = BETAS
    t = t + 1
    tf = t.astype(jnp.float32)
    # 1 - b**t computed as -expm1(t*log(b)): accurate in float32 for small t.
    bc1 = -jnp.expm1(tf * math.log(b1))
    bc2 = -jnp.expm1(tf * math.log(b2))
    step_size = LR / bc1
    bc2_sqrt = jnp.sqrt(bc2)
    m = jax.tree.map(lambda m_, g: b1 * m_ + (1.0 - b1) * g, m, grads)
    v = jax.tree.map(lambda v_, g: b2 * v_ + (1.0 - b2) * g * g, v, grads)
    params = jax.tree.map(
        lambda p, m_, v_: p - step_size * m_ / (jnp.sqrt(v_) / bc2_sqrt + EPS), params, m, v
    )
    return params, m, v, t


class JaxRunner:
    """Parameters, Adam state and batches on the default (CPU) device, and the jitted step."""

    def __init__(self, wl: Workload, params: dict[str, np.ndarray], batches: list[Batch]) -> None:
        self.phases: dict[str, float] = {}
        if wl.kind == "mlp":
            loss_fn = partial(mlp_loss, n_layers=wl.n_layers, act=wl.activation)
            batches = [(x, y.astype(np.int32)) for x, y in batches]
        elif wl.kind in ("gpt", "cnn", "rnn"):
            loss_fn = model_loss(wl)
            batches = [(x.astype(np.int32) if wl.kind == "gpt" else x, y.astype(np.int32))
                       for x, y in batches]
        else:
            loss_fn = ffn_loss

        def train_step(
            p: Params, m: Params, v: Params, t: jax.Array, x: jax.Array, y: jax.Array
        ) -> tuple[Params, Params, Params, jax.Array, jax.Array]:
            loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
            p, m, v, t = adam(p, grads, m, v, t)
            return p, m, v, t, loss

        self._step = jax.jit(train_step, donate_argnums=(0, 1, 2, 3))
        p = {k: jnp.array(a, copy=True) for k, a in params.items()}
        m = {k: jnp.zeros_like(a) for k, a in p.items()}
        v = {k: jnp.zeros_like(a) for k, a in p.items()}
        self.state = (p, m, v, jnp.zeros((), jnp.int32))
        self.batches = [(jax.device_put(x), jax.device_put(y)) for x, y in batches]

    def step(self, i: int) -> jax.Array:
        """Dispatch one training step on batch ``i % n_batches``; returns the loss (async)."""
        x, y = self.batches[i % len(self.batches)]
        *state, loss = self._step(*self.state, x, y)
        self.state = tuple(state)
        return loss

    def sync(self, out: Any) -> None:
        """Wait for ``out`` and the updated parameters."""
        jax.block_until_ready((out, self.state))

    def to_float(self, out: Any) -> float:
        """Return the loss as a Python float."""
        return float(out)


def build(wl: Workload, params: dict[str, np.ndarray], batches: list[Batch]) -> JaxRunner:
    """Build the jitted JAX training step for ``wl`` from initial ``params`` and ``batches``."""
    return JaxRunner(wl, params, batches)
