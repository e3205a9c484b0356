"""Layers: functions that create their parameters in the input's graph.

Layers that behave differently in training and inference (`dropout`, `batch_norm`) build
both versions and join them with `mode_select`: `gc.compile(..., training=...)` and
`gc.evaluate(..., training=...)` pick one (default: training with an optimizer, inference
without), so one declared model serves both. Their `training=` argument fixes the mode of a
single layer instead (e.g. dropout at inference). The state they keep (running statistics,
the dropout RNG step) lives in `graph.state` leaves that the compiled training step updates
in place; the interpreter reads them as they are.

Parameter reuse: a layer called with `share=True` and the `name` of an earlier call uses
that call's parameters (`name.w`, ...) instead of creating new ones, so one set of weights
can serve several places (an RNN cell at every step, a block repeated); their gradient is
the sum over every use. Without `share=True` a reused name is an error. The layers with
parameters only take `share` (not `batch_norm`: its running statistics follow one use).
`embedding_logits` ties an output projection to an embedding table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from graphc.errors import GraphError, user_location
from graphc.ir import RunningVariance, Value, canonical_dtype, format_shape, is_float
from graphc.ops import add, matmul
from graphc.recurrent import gru, lstm  # noqa: F401 - recurrent layers, gc.nn.gru / gc.nn.lstm


def linear(x: Value, units: int, name: str | None = None, bias: bool = True,
           init: str = "glorot", share: bool = False) -> Value:
    """`x @ w + b` with parameters `name.w` (in_features, units) and `name.b` (units,).

    `init` is "glorot" (uniform, for tanh/sigmoid/linear outputs) or "he" (normal, for ReLU),
    drawn from the graph's seeded generator; the bias starts at zero. `share=True` reuses
    the parameters of an earlier `linear` of the same `name` (see the module docstring).
    """
    fan_in = x.shape[-1]
    if fan_in is None:
        raise GraphError(f"linear: the last axis of {x.shape} must have a fixed size\n"
                         f"  at {user_location()}")
    if init not in ("glorot", "he"):
        raise GraphError(f"linear: init must be 'glorot' or 'he', got {init!r}\n"
                         f"  at {user_location()}")
    graph = x.graph
    prefix = _prefix(x, name, "linear", share)

    def initial() -> np.ndarray:
        if init == "glorot":
            limit = np.sqrt(6.0 / (fan_in + units))
            return graph.rng.uniform(-limit, limit, size=(fan_in, units))
        return graph.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, units))

    w = _parameter(x, f"{prefix}.w", (fan_in, units), graph.dtype, initial, share, "linear")
    out = matmul(x, w)
    if bias:
        b = _parameter(x, f"{prefix}.b", (units,), graph.dtype, lambda: np.zeros(units), share,
                       "linear")
        out = add(out, b)
    return out


def _prefix(x: Value, name: str | None, kind: str, share: bool = False) -> str:
    if name is not None:
        return name
    if share:
        raise GraphError(f"{kind}: share=True needs the name of the layer whose parameters "
                         f"to reuse\n  at {user_location()}")
    return x.graph.fresh_name(kind)


def _parameter(x: Value, name: str, shape: Sequence[int], dtype: str,
               initial: Callable[[], np.ndarray], share: bool, layer: str) -> Value:
    """The parameter `name` of `x`'s graph: a new one holding `initial()`, or, with `share`,
    the existing one (`initial` is then not called, so the generator does not advance)."""
    graph, shape, dtype = x.graph, tuple(shape), canonical_dtype(dtype)
    if name not in graph.param_values:
        return graph.param(name, initial(), dtype=dtype)
    existing = graph[name]
    if not share:
        raise GraphError(f"{layer}: parameter {name!r}: the name is already used by the "
                         f"param declared at {existing.node.where}; pass share=True to reuse "
                         f"it, or choose another name\n  at {user_location()}")
    if existing.shape != shape or existing.dtype != dtype:
        raise GraphError(f"{layer}: cannot share parameter {name!r}: it is "
                         f"{format_shape(existing.shape)} {existing.dtype}, this use needs "
                         f"{format_shape(shape)} {dtype}\n  at {user_location()}")
    return existing


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
           name: str | None = None, bias: bool = True, init: str = "he", dilation: Any = 1,
           groups: int = 1, share: bool = False) -> Value:
    """2-D convolution of `x` (N, C, H, W) with parameters `name.w` (out_channels,
    C // groups, kh, kw) and `name.b` (out_channels,); `stride`, `padding` and `dilation`
    are ints or (h, w) pairs; `groups` splits the channels (torch.nn.Conv2d's meaning).

    `init` "he" (normal, std sqrt(2 / fan_in), for ReLU) or "glorot" (uniform); the bias
    starts at zero. `share=True` reuses the parameters of an earlier call named `name`.
    """
    if x.ndim != 4:
        raise GraphError(f"conv2d: expected a 4-D (N, C, H, W) input, got {x.shape}\n"
                         f"  at {user_location()}")
    _fixed(x, (1, 2, 3), "conv2d")
    return _conv_layer(x, out_channels, kernel_size, stride, padding, dilation, groups, name,
                       bias, init, "conv2d", share)


def conv1d(x: Value, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
           name: str | None = None, bias: bool = True, init: str = "he", dilation: int = 1,
           groups: int = 1, share: bool = False) -> Value:
    """1-D convolution of `x` (N, C, L) with parameters `name.w` (out_channels, C // groups,
    k) and `name.b` (out_channels,), as torch.nn.Conv1d; `init` and `share` as for
    conv2d."""
    if x.ndim != 3:
        raise GraphError(f"conv1d: expected a 3-D (N, C, L) input, got {x.shape}\n"
                         f"  at {user_location()}")
    _fixed(x, (1, 2), "conv1d")
    return _conv_layer(x, out_channels, kernel_size, stride, padding, dilation, groups, name,
                       bias, init, "conv1d", share)


def _conv_layer(x: Value, out_channels: int, kernel_size: Any, stride: Any, padding: Any,
                dilation: Any, groups: int, name: str | None, bias: bool, init: str,
                op: str, share: bool) -> Value:
    from graphc.ops import conv, reshape

    if op == "conv1d":
        if not isinstance(kernel_size, (int, np.integer)) or kernel_size < 1:
            raise GraphError(f"conv1d: kernel_size must be an int >= 1, got {kernel_size!r}\n"
                             f"  at {user_location()}")
        taps: tuple[int, ...] = (int(kernel_size),)
    else:
        taps = conv._pair(kernel_size, "conv2d: kernel_size", 1)
    graph, channels = x.graph, x.shape[1]
    if not isinstance(groups, (int, np.integer)) or groups < 1 or channels % groups \
            or out_channels % groups:
        raise GraphError(f"{op}: groups={groups!r} must be an int >= 1 dividing the input's "
                         f"{channels} and the output's {out_channels} channels\n"
                         f"  at {user_location()}")
    prefix = _prefix(x, name, "conv", share)
    fan_in = channels // groups * math.prod(taps)
    fan_out = out_channels // groups * math.prod(taps)
    shape = (out_channels, channels // groups, *taps)
    if init not in ("he", "glorot"):
        raise GraphError(f"{op}: init must be 'he' or 'glorot', got {init!r}\n"
                         f"  at {user_location()}")

    def initial() -> np.ndarray:
        if init == "he":
            return graph.rng.normal(0.0, math.sqrt(2.0 / fan_in), size=shape)
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return graph.rng.uniform(-limit, limit, size=shape)

    run = conv.conv1d if op == "conv1d" else conv.conv2d
    w = _parameter(x, f"{prefix}.w", shape, graph.dtype, initial, share, op)
    out = run(x, w, stride, padding, dilation, groups)
    if bias:
        b = _parameter(x, f"{prefix}.b", (out_channels,), graph.dtype,
                       lambda: np.zeros(out_channels), share, op)
        out = add(out, reshape(b, (1, out_channels) + (1,) * len(taps)))
    return out


def max_pool2d(x: Value, kernel_size: Any, stride: Any = None, padding: Any = 0) -> Value:
    """Maximum over windows of `x` (N, C, H, W); `stride` defaults to `kernel_size`;
    `padding` (at most half the window) never wins the maximum."""
    from graphc.ops import conv

    return conv.max_pool2d(x, kernel_size, stride, padding)


def avg_pool2d(x: Value, kernel_size: Any, stride: Any = None, padding: Any = 0) -> Value:
    """Mean over windows of `x` (N, C, H, W); `stride` defaults to `kernel_size`; `padding`
    zeros count in the mean (PyTorch's count_include_pad=True)."""
    from graphc.ops import conv

    return conv.avg_pool2d(x, kernel_size, stride, padding)


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
    with the unbiased variance (n / (n - 1)) for running_var; one value per channel is
    refused in training, as in PyTorch. Inference: normalise with the running statistics.
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
        # one value per channel has no unbiased variance (n / (n - 1)): refused, as in
        # PyTorch, instead of a running variance of NaN
        n = count(x, axes, at_least=2,
                  what=f"batch_norm {prefix!r} in training: values per channel")
        batch_mean, batch_var = reshape(mu, (channels,)), reshape(var, (channels,))
        new_rm = rm * (1.0 - momentum) + batch_mean * momentum
        new_rv = rv * (1.0 - momentum) + batch_var * (n / (n - 1.0)) * momentum
        _declare_update(rm, new_rm, out, training is None)
        _declare_update(rv, new_rv, out, training is None)
        graph.running_variances[rv.name] = RunningVariance(batch_mean.id, batch_var.id, n.id,
                                                           rm.id, float(momentum))
    return out


def _normalized(x: Value, axes: tuple[int, ...], eps: float, center: bool = True) -> Value:
    """`x` divided by the root of its (biased) variance over `axes` plus `eps`, after
    subtracting the mean there (`center`); without `center`, by the root mean square."""
    from graphc.ops import mean, rsqrt, square

    xc = x - mean(x, axis=axes, keepdims=True) if center else x
    return xc * rsqrt(mean(square(xc), axis=axes, keepdims=True) + eps)


def _trailing_axes(x: Value, axes: Any, layer: str) -> tuple[int, ...]:
    """`axes` (an int or a tuple) as non-negative axes, which must be the last ones of `x`
    and of fixed size."""
    from graphc.ops.registry import normalize_axes

    found = normalize_axes(axes, x.ndim, layer, [x])
    if not found or found != tuple(range(x.ndim - len(found), x.ndim)):
        raise GraphError(f"{layer}: axes must be the last axes of {format_shape(x.shape)} "
                         f"(e.g. -1 or (-2, -1)), got {axes!r}\n  at {user_location()}")
    _fixed(x, found, layer)
    return found


def _float_input(x: Value, layer: str) -> None:
    if not is_float(x.dtype):
        raise GraphError(f"{layer}: expected a floating-point input, got {x.dtype}\n"
                         f"  at {user_location()}")


def layer_norm(x: Value, name: str | None = None, eps: float = 1e-5, axes: Any = -1,
               share: bool = False) -> Value:
    """Normalise `x` over `axes` (default the last one; several trailing axes like
    torch.nn.LayerNorm's `normalized_shape`, e.g. `axes=(-2, -1)`) to mean 0 and biased
    variance 1, then scale by `name.gain` (ones) and shift by `name.bias` (zeros), both
    shaped like those axes."""
    _float_input(x, "layer_norm")
    axes = _trailing_axes(x, axes, "layer_norm")
    shape = tuple(x.shape[a] for a in axes)
    prefix = _prefix(x, name, "layer_norm", share)
    gain = _parameter(x, f"{prefix}.gain", shape, x.dtype, lambda: np.ones(shape), share,
                      "layer_norm")
    bias = _parameter(x, f"{prefix}.bias", shape, x.dtype, lambda: np.zeros(shape), share,
                      "layer_norm")
    return _normalized(x, axes, eps) * gain + bias


def rms_norm(x: Value, name: str | None = None, eps: float = 1e-6, axes: Any = -1,
             share: bool = False) -> Value:
    """`x / sqrt(mean(x**2 over axes) + eps) * name.gain` (root-mean-square normalisation,
    as torch.nn.RMSNorm; no centring, no bias). `name.gain` starts at ones, shaped like
    `axes` (default the last axis). The default `eps` is 1e-6 (flax's; PyTorch's default is
    the dtype's machine epsilon)."""
    _float_input(x, "rms_norm")
    axes = _trailing_axes(x, axes, "rms_norm")
    shape = tuple(x.shape[a] for a in axes)
    prefix = _prefix(x, name, "rms_norm", share)
    gain = _parameter(x, f"{prefix}.gain", shape, x.dtype, lambda: np.ones(shape), share,
                      "rms_norm")
    return _normalized(x, axes, eps, center=False) * gain


def group_norm(x: Value, groups: int, name: str | None = None, eps: float = 1e-5,
               share: bool = False) -> Value:
    """Group normalisation of `x` (N, C, ...) as torch.nn.GroupNorm: the C channels split
    into `groups` consecutive groups, each normalised per example over its channels and all
    trailing axes (mean 0, biased variance 1), then a per-channel scale `name.gain` (ones)
    and shift `name.bias` (zeros), both (C,). The statistics do not involve the batch, so
    training and inference are the same."""
    from graphc.ops import reshape, reshape_like

    _float_input(x, "group_norm")
    if x.ndim < 2:
        raise GraphError(f"group_norm: expected an (N, C, ...) input, got "
                         f"{format_shape(x.shape)}\n  at {user_location()}")
    _fixed(x, range(1, x.ndim), "group_norm")
    channels = x.shape[1]
    if not isinstance(groups, (int, np.integer)) or groups < 1 or channels % groups:
        raise GraphError(f"group_norm: groups must be a positive divisor of the {channels} "
                         f"channels of {format_shape(x.shape)}, got {groups!r}\n"
                         f"  at {user_location()}")
    prefix = _prefix(x, name, "group_norm", share)
    per_group = channels // groups * math.prod(x.shape[2:])
    grouped = reshape(x, (-1, int(groups), per_group))
    y = reshape_like(_normalized(grouped, (2,), eps), x)
    bshape = (1, channels) + (1,) * (x.ndim - 2)
    gain = _parameter(x, f"{prefix}.gain", (channels,), x.dtype, lambda: np.ones(channels),
                      share, "group_norm")
    bias = _parameter(x, f"{prefix}.bias", (channels,), x.dtype, lambda: np.zeros(channels),
                      share, "group_norm")
    return y * reshape(gain, bshape) + reshape(bias, bshape)


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


def embedding(ids: Value, num: int, dim: int, name: str | None = None, std: float = 1.0,
              share: bool = False) -> Value:
    """Rows of the table `name.w` (num, dim), initialised N(0, std**2) (std 1 like
    torch.nn.Embedding), gathered at the integer `ids` (any shape): the result is
    ids.shape + (dim,). The gradient is a scatter-add, so repeated ids accumulate.
    `share=True` reuses an earlier table of the same `name` (e.g. one vocabulary for two
    inputs)."""
    from graphc.ops import take

    if is_float(ids.dtype) or ids.dtype == "bool":
        raise GraphError(f"embedding: ids must be integers, got {ids.dtype}\n"
                         f"  at {user_location()}")
    graph = ids.graph
    prefix = _prefix(ids, name, "embedding", share)
    table = _parameter(ids, f"{prefix}.w", (num, dim), graph.dtype,
                       lambda: graph.rng.normal(0.0, std, size=(num, dim)), share, "embedding")
    return take(table, ids, axis=0, wrap=False)  # a negative id raises, as in PyTorch


def embedding_logits(h: Value, name: str) -> Value:
    """`h @ name.w.T`: scores of `h` (..., dim) against every row of the embedding table
    `name.w` (num, dim) made by `embedding(..., name=name)`, i.e. an output projection tied
    to the input embedding (weight tying). The table's gradient sums both uses."""
    from graphc.ops import transpose

    key = f"{name}.w"
    if key not in h.graph.param_values:
        raise GraphError(f"embedding_logits: the graph has no embedding table {key!r}; "
                         f"create it first with gc.nn.embedding(ids, num, dim, "
                         f"name={name!r})\n  at {user_location()}")
    table = h.graph[key]
    if table.ndim != 2 or h.shape[-1] != table.shape[1]:
        raise GraphError(f"embedding_logits: the last axis of {format_shape(h.shape)} must "
                         f"match the width of {key!r} {format_shape(table.shape)}\n"
                         f"  at {user_location()}")
    return matmul(h, transpose(table))


def multi_head_attention(x: Value, heads: int, causal: bool = True, mask: Any = None,
                         name: str | None = None, bias: bool = True,
                         share: bool = False) -> Value:
    """Multi-head scaled dot-product self-attention over `x` (B, T, D).

    One fused projection `name.qkv` (D, 3D) (+ bias (3D,)) gives queries, keys and values
    (in that order along its columns), split into `heads` heads of D / heads features;
    per head softmax(q k^T / sqrt(D / heads)) v, the heads concatenated back to D features
    and projected by `name.out` (D, D) (+ bias). `causal` lets position t attend only to
    positions <= t. `mask` (a bool Value or array broadcastable to (B, heads, T, T), e.g.
    (B, 1, 1, T) for padding) is True where a query may attend to a key, as in
    torch.nn.functional.scaled_dot_product_attention and flax. Scores that are not allowed
    are replaced (not added to) by the dtype's most negative finite number before the
    softmax: their weights are exactly 0 and gradients stay finite; a query that may attend
    to nothing gets uniform weights (flax's behaviour; PyTorch's
    scaled_dot_product_attention gives it a zero output, NaN before torch 2.5).
    """
    from graphc.ops import getitem, reshape, softmax, transpose, where

    _float_input(x, "multi_head_attention")
    if x.ndim != 3:
        raise GraphError(f"multi_head_attention: expected a (B, T, D) input, got "
                         f"{format_shape(x.shape)}\n  at {user_location()}")
    _fixed(x, (1, 2), "multi_head_attention")
    _, t, d = x.shape
    if not isinstance(heads, (int, np.integer)) or heads < 1 or d % heads:
        raise GraphError(f"multi_head_attention: heads must be a positive divisor of the "
                         f"width {d}, got {heads!r}\n  at {user_location()}")
    heads = int(heads)
    width = d // heads
    prefix = _prefix(x, name, "attention", share)
    qkv = linear(x, 3 * d, name=f"{prefix}.qkv", bias=bias, share=share)

    def split(k: int) -> Value:   # (B, heads, T, width)
        part = getitem(qkv, (slice(None), slice(None), slice(k * d, (k + 1) * d)))
        return transpose(reshape(part, (-1, t, heads, width)), (0, 2, 1, 3))

    q, k, v = split(0), split(1), split(2)
    scores = matmul(q, transpose(k, (0, 1, 3, 2))) * (1.0 / math.sqrt(width))
    lowest = x.graph.const(np.finfo(x.dtype).min, dtype=x.dtype)
    if mask is not None:
        allowed = mask if isinstance(mask, Value) else x.graph.const(np.asarray(mask))
        if allowed.dtype != "bool":
            raise GraphError(f"multi_head_attention: mask must be bool (True = may attend), "
                             f"got {allowed.dtype}\n  at {user_location()}")
        scores = where(allowed, scores, lowest)
    if causal:
        scores = where(x.graph.const(np.tril(np.ones((t, t), dtype=bool))), scores, lowest)
    context = matmul(softmax(scores, axis=-1), v)                 # (B, heads, T, width)
    merged = reshape(transpose(context, (0, 2, 1, 3)), (-1, t, d))
    return linear(merged, d, name=f"{prefix}.out", bias=bias, share=share)
