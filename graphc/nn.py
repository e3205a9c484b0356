"""Layers: functions that create their parameters in the input's graph.

Layers that behave differently in training and inference (`dropout`, `batch_norm`) build
both versions and join them with `mode_select`: `gc.compile(..., training=...)` and
`gc.evaluate(..., training=...)` pick one (default: training with an optimizer, inference
without), so one declared model serves both. Their `training=` argument fixes the mode of a
single layer instead (e.g. dropout at inference). The state they keep (running statistics,
the dropout RNG step) lives in `graph.state` leaves that the compiled training step updates
in place; the interpreter reads them as they are.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from graphc.errors import GraphError, user_location
from graphc.ir import Value, is_float
from graphc.ops import add, matmul
from graphc.recurrent import gru, lstm  # noqa: F401 - recurrent layers, gc.nn.gru / gc.nn.lstm


def linear(x: Value, units: int, name: str | None = None, bias: bool = True,
           init: str = "glorot") -> Value:
    """`x @ w + b` with parameters `name.w` (in_features, units) and `name.b` (units,).

    `init` is "glorot" (uniform, for tanh/sigmoid/linear outputs) or "he" (normal, for ReLU),
    drawn from the graph's seeded generator; the bias starts at zero.
    """
    fan_in = x.shape[-1]
    if fan_in is None:
        raise GraphError(f"linear: the last axis of {x.shape} must have a fixed size\n"
                         f"  at {user_location()}")
    graph = x.graph
    prefix = name if name is not None else graph.fresh_name("linear")
    if init == "glorot":
        limit = np.sqrt(6.0 / (fan_in + units))
        w0 = graph.rng.uniform(-limit, limit, size=(fan_in, units))
    elif init == "he":
        w0 = graph.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, units))
    else:
        raise GraphError(f"linear: init must be 'glorot' or 'he', got {init!r}\n"
                         f"  at {user_location()}")
    w = graph.param(f"{prefix}.w", w0)
    out = matmul(x, w)
    if bias:
        out = add(out, graph.param(f"{prefix}.b", np.zeros(units)))
    return out


def _prefix(x: Value, name: str | None, kind: str) -> str:
    return name if name is not None else x.graph.fresh_name(kind)


def _fixed(x: Value, axes: Any, layer: str) -> None:
    for a in axes:
        if x.shape[a] is None:
            raise GraphError(f"{layer}: axis {a} of {x.shape} must have a fixed size\n"
                             f"  at {user_location()}")


def _declare_update(state: Value, new: Value, anchor: Value, follows_view: bool) -> None:
    """After each training step that runs `anchor`, `state` becomes `new`."""
    state.graph.state_updates.append((state.name, new.id, anchor.id, follows_view))


def _views(train: Value, infer: Value | None, training: bool | None) -> Value:
    from graphc.ops import mode_select

    if training is True or infer is None:
        return train
    if training is False:
        return infer
    return mode_select(train, infer)


def conv2d(x: Value, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
           name: str | None = None, bias: bool = True, init: str = "he") -> Value:
    """2-D convolution of `x` (N, C, H, W) with parameters `name.w` (out_channels, C, kh, kw)
    and `name.b` (out_channels,); `stride` and `padding` are ints or (h, w) pairs.

    `init` "he" (normal, std sqrt(2 / fan_in), for ReLU) or "glorot" (uniform); the bias
    starts at zero.
    """
    from graphc.ops import conv, reshape

    if x.ndim != 4:
        raise GraphError(f"conv2d: expected a 4-D (N, C, H, W) input, got {x.shape}\n"
                         f"  at {user_location()}")
    _fixed(x, (1, 2, 3), "conv2d")
    kh, kw = conv._pair(kernel_size, "conv2d: kernel_size", 1)
    graph, channels = x.graph, x.shape[1]
    prefix = _prefix(x, name, "conv")
    fan_in, fan_out = channels * kh * kw, out_channels * kh * kw
    shape = (out_channels, channels, kh, kw)
    if init == "he":
        w0 = graph.rng.normal(0.0, math.sqrt(2.0 / fan_in), size=shape)
    elif init == "glorot":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        w0 = graph.rng.uniform(-limit, limit, size=shape)
    else:
        raise GraphError(f"conv2d: init must be 'he' or 'glorot', got {init!r}\n"
                         f"  at {user_location()}")
    out = conv.conv2d(x, graph.param(f"{prefix}.w", w0), stride, padding)
    if bias:
        b = graph.param(f"{prefix}.b", np.zeros(out_channels))
        out = add(out, reshape(b, (1, out_channels, 1, 1)))
    return out


def max_pool2d(x: Value, kernel_size: Any, stride: Any = None) -> Value:
    """Maximum over windows of `x` (N, C, H, W); `stride` defaults to `kernel_size`."""
    from graphc.ops import conv

    return conv.max_pool2d(x, kernel_size, stride)


def avg_pool2d(x: Value, kernel_size: Any, stride: Any = None) -> Value:
    """Mean over windows of `x` (N, C, H, W); `stride` defaults to `kernel_size`."""
    from graphc.ops import conv

    return conv.avg_pool2d(x, kernel_size, stride)


def flatten(x: Value) -> Value:
    """`x` (N, ...) as (N, prod(...)); the trailing sizes must be fixed."""
    from graphc.ops import reshape

    _fixed(x, range(1, x.ndim), "flatten")
    size = math.prod(x.shape[1:])
    return reshape(x, (x.shape[0] if x.shape[0] is not None else -1, size))


def batch_norm(x: Value, name: str | None = None, momentum: float = 0.1, eps: float = 1e-5,
               training: bool | None = None) -> Value:
    """Batch normalisation over every axis but the channels (axis 1) of `x` (N, C, ...),
    following torch.nn.BatchNorm1d/2d.

    Parameters `name.gain` (ones) and `name.bias` (zeros), state `name.running_mean`
    (zeros) and `name.running_var` (ones). Training: normalise with the batch mean and
    biased variance; after the step, running = (1 - momentum) * running + momentum * stat,
    with the unbiased variance (n / (n - 1)) for running_var. Inference: normalise with the
    running statistics.
    """
    from graphc.ops import count, mean, reshape, rsqrt, square

    if x.ndim < 2 or not is_float(x.dtype):
        raise GraphError(f"batch_norm: expected a floating-point (N, C, ...) input, got "
                         f"{x.shape} {x.dtype}\n  at {user_location()}")
    _fixed(x, (1,), "batch_norm")
    graph, channels = x.graph, x.shape[1]
    prefix = _prefix(x, name, "batch_norm")
    axes = (0,) + tuple(range(2, x.ndim))
    bshape = (1, channels) + (1,) * (x.ndim - 2)
    gain = reshape(graph.param(f"{prefix}.gain", np.ones(channels), dtype=x.dtype), bshape)
    bias = reshape(graph.param(f"{prefix}.bias", np.zeros(channels), dtype=x.dtype), bshape)
    out_train = out_infer = None
    if training is not False:
        mu = mean(x, axis=axes, keepdims=True)
        xc = x - mu
        var = mean(square(xc), axis=axes, keepdims=True)
        out_train = xc * rsqrt(var + eps) * gain + bias
    rm = graph.state(f"{prefix}.running_mean", np.zeros(channels, dtype=x.dtype))
    rv = graph.state(f"{prefix}.running_var", np.ones(channels, dtype=x.dtype))
    if training is not True:
        out_infer = (x - reshape(rm, bshape)) * rsqrt(reshape(rv, bshape) + eps) * gain + bias
    out = _views(out_train, out_infer, training) if out_train is not None else out_infer
    if out_train is not None:
        n = count(x, axes)
        new_rm = rm * (1.0 - momentum) + reshape(mu, (channels,)) * momentum
        new_rv = rv * (1.0 - momentum) + reshape(var, (channels,)) * (n / (n - 1.0)) * momentum
        _declare_update(rm, new_rm, out, training is None)
        _declare_update(rv, new_rv, out, training is None)
    return out


def layer_norm(x: Value, name: str | None = None, eps: float = 1e-5) -> Value:
    """Normalise `x` over its last axis (mean 0, biased variance 1), then scale by
    `name.gain` (ones) and shift by `name.bias` (zeros), both of the last axis' size."""
    from graphc.ops import mean, rsqrt, square

    _fixed(x, (x.ndim - 1,), "layer_norm")
    graph, size = x.graph, x.shape[-1]
    prefix = _prefix(x, name, "layer_norm")
    xc = x - mean(x, axis=-1, keepdims=True)
    var = mean(square(xc), axis=-1, keepdims=True)
    gain = graph.param(f"{prefix}.gain", np.ones(size), dtype=x.dtype)
    bias = graph.param(f"{prefix}.bias", np.zeros(size), dtype=x.dtype)
    return xc * rsqrt(var + eps) * gain + bias


def dropout(x: Value, rate: float, seed: int | None = None, training: bool | None = None,
            name: str | None = None) -> Value:
    """Zero each element with probability `rate` and scale the rest by 1 / (1 - rate)
    (training); the identity at inference.

    The mask is a counter-based hash of (`seed`, the layer's step counter `name.step`, the
    element's flat index) — graphc/ops/random.py — so it is reproducible across processes,
    the same in the interpreter and in compiled code, and new at every training step: the
    compiled step advances `name.step` by one. `seed` defaults to a draw from the graph's
    seeded generator.
    """
    from graphc.ops import make, where

    if not 0.0 <= rate < 1.0:
        raise GraphError(f"dropout: rate must be in [0, 1), got {rate!r}\n"
                         f"  at {user_location()}")
    if rate == 0.0 or training is False:
        return x
    graph = x.graph
    prefix = _prefix(x, name, "dropout")
    seed = int(graph.rng.integers(0, 2 ** 62)) if seed is None else int(seed) % 2 ** 63
    step = graph.state(f"{prefix}.step", np.zeros((), dtype=np.int64))
    keep = make("dropout_keep", [x, step], seed=seed, threshold=round(rate * 2 ** 24))
    out = _views(where(keep, x * (1.0 / (1.0 - rate)), 0.0), x, training)
    _declare_update(step, add(step, 1), out, training is None)
    return out


def embedding(ids: Value, num: int, dim: int, name: str | None = None) -> Value:
    """Rows of the table `name.w` (num, dim), initialised N(0, 1) like torch.nn.Embedding,
    gathered at the integer `ids` (any shape): the result is ids.shape + (dim,). The gradient
    is a scatter-add, so repeated ids accumulate."""
    from graphc.ops import take

    if is_float(ids.dtype) or ids.dtype == "bool":
        raise GraphError(f"embedding: ids must be integers, got {ids.dtype}\n"
                         f"  at {user_location()}")
    graph = ids.graph
    prefix = _prefix(ids, name, "embedding")
    table = graph.param(f"{prefix}.w", graph.rng.normal(0.0, 1.0, size=(num, dim)))
    return take(table, ids, axis=0)
