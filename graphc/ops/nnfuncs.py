"""Composite neural-network functions built from primitives.

Max-subtraction uses `stop_gradient`, so the composites are numerically stable and their
derived gradients are exact (softmax and friends do not depend on the shift).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc.errors import GraphError, user_location
from graphc.ir import CustomGradient, Value, is_float
from graphc.ops.elementwise import cast, equal, erf, exp, log, square, stop_gradient, tanh
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
    out = m + log(sum(exp(x - m), axis=axes, keepdims=True))
    if keepdims:
        return out
    from graphc.ops.views import squeeze

    return squeeze(out, axes)


def one_hot(labels: Value, depth: int, dtype: Any = None) -> Value:
    """`labels` (integers) as one-hot vectors of length `depth` along a new last axis."""
    if is_float(labels.dtype) or labels.dtype == "bool":
        raise GraphError(f"one_hot needs integer labels, got {labels.dtype}\n"
                         f"  at {user_location()}")
    classes = labels.graph.const(np.arange(depth, dtype=labels.dtype))
    return cast(equal(expand_dims(labels, -1), classes), dtype or labels.graph.dtype)


def softmax_cross_entropy(logits: Value, labels: Value) -> Value:
    """Per-example cross-entropy of `logits` (..., C) against integer `labels` (...).

    Its gradient is the fused rule `(softmax(logits) - one_hot(labels)) * g`. A label
    outside [0, C) raises IndexRangeError naming it (negative labels included).
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
    lse = logsumexp(logits, axis=-1)
    # the rows of an identity matrix: a label outside [0, classes) raises (as in PyTorch),
    # where comparing with arange(classes) would silently give a zero target
    eye = logits.graph.const(np.eye(classes, dtype=logits.dtype))
    target = take(eye, labels, axis=0, what="softmax_cross_entropy label")
    loss = lse - sum(logits * target, axis=-1)

    lse_id, target_id = lse.id, target.id

    def rule(g: Value, out: Value, inputs: list[Value], needs: tuple) -> tuple:
        # ids, not Values: the rule also runs in forks of this graph made by compile
        graph = g.graph
        probs = exp(inputs[0] - expand_dims(graph.value(lse_id), -1))
        return (expand_dims(g, -1) * (probs - graph.value(target_id)), None)

    logits.graph.custom_gradients[loss.id] = CustomGradient(
        "softmax_cross_entropy", (logits.id, labels.id), rule)
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


__all__ = ["gelu", "log_softmax", "logsumexp", "mean", "mse", "one_hot", "softmax",
           "softmax_cross_entropy"]
