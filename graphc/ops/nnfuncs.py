"""Composite neural-network functions built from primitives.

Max-subtraction uses `stop_gradient`, so the composites are numerically stable and their
derived gradients are exact (softmax and friends do not depend on the shift).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc.errors import GraphError, user_location
from graphc.ir import CustomGradient, Value, is_float
from graphc.ops.elementwise import (
    cast,
    equal,
    erf,
    exp,
    log,
    not_equal,
    softplus,
    square,
    stop_gradient,
    tanh,
    where,
)
from graphc.ops.reduce import max, mean, sum
from graphc.ops.registry import normalize_axes
from graphc.ops.views import expand_dims, take


def _shift(x: Value, axis: Any) -> Value:
    return stop_gradient(max(x, axis=axis, keepdims=True))


def softmax(x: Value, axis: int = -1) -> Value:
    """exp(x) / sum(exp(x)) along `axis`, computed stably."""
    normalize_axes(axis, x.ndim, "softmax", [x])
    e = exp(x - _shift(x, axis))
    return e / sum(e, axis=axis, keepdims=True)


def log_softmax(x: Value, axis: int = -1) -> Value:
    """x - logsumexp(x) along `axis`, computed stably."""
    normalize_axes(axis, x.ndim, "log_softmax", [x])
    z = x - _shift(x, axis)
    return z - log(sum(exp(z), axis=axis, keepdims=True))


def logsumexp(x: Value, axis: Any = -1, keepdims: bool = False) -> Value:
    """log(sum(exp(x))) along `axis`, computed stably."""
    axes = normalize_axes(axis, x.ndim, "logsumexp", [x])
    m = _shift(x, axes)
    total = sum(exp(x - m), axis=axes, keepdims=keepdims)
    if keepdims:
        return m + log(total)
    from graphc.ops.views import squeeze

    # the log and the add over the reduced shape, where they fuse with the consumers
    return squeeze(m, axes) + log(total)


def one_hot(labels: Value, depth: int, dtype: Any = None) -> Value:
    """`labels` (integers) as one-hot vectors of length `depth` along a new last axis."""
    if is_float(labels.dtype) or labels.dtype == "bool":
        raise GraphError(f"one_hot needs integer labels, got {labels.dtype}\n"
                         f"  at {user_location()}")
    classes = labels.graph.const(np.arange(depth, dtype=labels.dtype))
    return cast(equal(expand_dims(labels, -1), classes), dtype or labels.graph.dtype)


def softmax_cross_entropy(logits: Value, labels: Value, label_smoothing: float = 0.0,
                          ignore_index: int | None = None, reduction: str = "none") -> Value:
    """Cross-entropy of `logits` (..., C) against integer `labels` (...), as PyTorch's
    `cross_entropy` computes it.

    label_smoothing: the target is (1 - label_smoothing) * one_hot + label_smoothing / C.
    ignore_index: rows whose label equals it give loss 0 and zero gradient.
    reduction: "none" (the per-example losses, shape logits.shape[:-1]), "sum", or "mean"
        (PyTorch's: the sum divided by the number of rows not ignored; NaN if all are).
        `gc.mean` of the per-example losses divides by all rows, ignored ones included.

    The gradient is the fused rule `(softmax(logits) - target) * g` (0 on ignored rows).
    A label outside [0, C) (other than `ignore_index`) raises IndexRangeError naming it
    (negative labels included).
    """
    if not is_float(logits.dtype):
        raise GraphError(f"softmax_cross_entropy: logits must be floating point, got "
                         f"{logits.dtype}\n  at {user_location()}")
    if labels.ndim != logits.ndim - 1 or is_float(labels.dtype):
        raise GraphError("softmax_cross_entropy: expected integer labels of shape logits.shape"
                         f"[:-1]; got logits {logits.shape} {logits.dtype} and labels "
                         f"{labels.shape} {labels.dtype}\n  at {user_location()}")
    classes = logits.shape[-1]
    if classes is None:
        raise GraphError("softmax_cross_entropy: the class axis must have a fixed size\n"
                         f"  at {user_location()}")
    smoothing = _check_smoothing(label_smoothing)
    _check_reduction("softmax_cross_entropy", reduction)
    keep = None
    if ignore_index is not None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise GraphError(f"softmax_cross_entropy: ignore_index must be an int or None, "
                             f"got {ignore_index!r}\n  at {user_location()}")
        keep = not_equal(labels, int(ignore_index))
        labels = where(keep, labels, 0)  # ignored rows pick class 0, then are masked
    lse = logsumexp(logits, axis=-1)
    # the rows of an identity matrix: a label outside [0, classes) raises (as in PyTorch),
    # where comparing with arange(classes) would silently give a zero target
    eye = logits.graph.const(np.eye(classes, dtype=logits.dtype))
    target = take(eye, labels, axis=0, what="softmax_cross_entropy label", wrap=False)
    if smoothing:
        target = target * (1.0 - smoothing) + smoothing / classes
    loss = lse - sum(logits * target, axis=-1)
    if keep is not None:
        loss = where(keep, loss, 0.0)

    lse_id, target_id = lse.id, target.id
    keep_id = keep.id if keep is not None else None

    def rule(g: Value, out: Value, inputs: list[Value], needs: tuple) -> tuple:
        # ids, not Values: the rule also runs in forks of this graph made by compile
        graph = g.graph
        if keep_id is not None:
            g = where(graph.value(keep_id), g, 0.0)
        probs = exp(inputs[0] - expand_dims(graph.value(lse_id), -1))
        return (expand_dims(g, -1) * (probs - graph.value(target_id)), None)

    logits.graph.custom_gradients[loss.id] = CustomGradient(
        "softmax_cross_entropy", (logits.id, labels.id), rule)
    return _reduce_loss(loss, reduction, keep)


def binary_cross_entropy_with_logits(logits: Value, targets: Any,
                                     reduction: str = "none") -> Value:
    """Elementwise binary cross-entropy of probabilities sigmoid(logits) against `targets`
    (in [0, 1], broadcast), computed stably as max(x, 0) - x * t + log1p(exp(-|x|)) (PyTorch's
    `binary_cross_entropy_with_logits`). The gradient is sigmoid(x) - t for the logits and
    -x for the targets. reduction: "none" (elementwise), "sum" or "mean" (over all elements).
    """
    if not isinstance(logits, Value) or not is_float(logits.dtype):
        what = logits.dtype if isinstance(logits, Value) else type(logits).__name__
        raise GraphError(f"binary_cross_entropy_with_logits: logits must be a floating-point "
                         f"Value, got {what}\n  at {user_location()}")
    _check_reduction("binary_cross_entropy_with_logits", reduction)
    return _reduce_loss(softplus(logits) - logits * targets, reduction, None)


_REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(op: str, reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise GraphError(f"{op}: reduction must be one of {', '.join(map(repr, _REDUCTIONS))}, "
                         f"got {reduction!r}\n  at {user_location()}")


def _check_smoothing(label_smoothing: float) -> float:
    smoothing = float(label_smoothing)
    if not 0.0 <= smoothing <= 1.0:
        raise GraphError(f"softmax_cross_entropy: label_smoothing must be in [0, 1], got "
                         f"{label_smoothing!r}\n  at {user_location()}")
    return smoothing


def _reduce_loss(loss: Value, reduction: str, keep: Value | None) -> Value:
    """Per-example `loss` reduced as asked; "mean" counts only the rows `keep` marks."""
    if reduction == "sum":
        return sum(loss)
    if reduction == "mean":
        if keep is None:
            return mean(loss)
        return sum(loss) / sum(cast(keep, loss.dtype))
    return loss


def mse(prediction: Value, target: Any) -> Value:
    """Mean of (prediction - target) ** 2 over all elements."""
    return mean(square(prediction - target))


def gelu(x: Value, approximate: str = "none") -> Value:
    """Gaussian error linear unit; `approximate="tanh"` for the tanh approximation."""
    if approximate == "tanh":
        inner = (x + x * x * x * 0.044715) * float(np.sqrt(2.0 / np.pi))
        return x * 0.5 * (tanh(inner) + 1)
    if approximate == "none":
        return x * 0.5 * (erf(x * float(1 / np.sqrt(2.0))) + 1)
    raise GraphError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}\n"
                     f"  at {user_location()}")


__all__ = ["binary_cross_entropy_with_logits", "gelu", "log_softmax", "logsumexp", "mean",
           "mse", "one_hot", "softmax", "softmax_cross_entropy"]
