"""Evaluation metrics on numpy arrays: `metric(y_true, y_pred) -> float`.

These are what `graphc.fit(..., metrics={...})` calls on the validation set with the
predictions of the user's predict function; they work on any arrays too.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if len(t) != len(p):
        raise ValueError(f"y_true has {len(t)} rows but y_pred has {len(p)}")
    if len(t) == 0:
        raise ValueError("metrics need at least one sample")
    return t, p


def _aligned(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """`p` with a trailing axis of size 1 dropped when `t` lacks it ((N, 1) vs (N,))."""
    if p.ndim == t.ndim + 1 and p.shape[-1] == 1:
        p = p[..., 0]
    if p.shape != t.shape:
        raise ValueError(f"y_pred has shape {p.shape} but y_true has shape {t.shape}")
    return p


def accuracy(y_true: Any, y_pred: Any, threshold: float = 0.0) -> float:
    """Fraction of correct predictions.

    `y_pred` may be class labels (same shape as `y_true`) or scores with one more axis:
    class scores (N, C) are reduced with argmax; a single score column (N, 1) is read as a
    binary logit, predicting class 1 where it exceeds `threshold` (use 0.5 for
    probabilities).
    """
    t, p = _pair(y_true, y_pred)
    if p.ndim == t.ndim + 1:
        p = (p[..., 0] > threshold).astype(np.int64) if p.shape[-1] == 1 else \
            np.argmax(p, axis=-1)
    if p.shape != t.shape:
        raise ValueError(f"y_pred has shape {p.shape} but y_true has shape {t.shape}")
    return float(np.mean(p == t))


def mse(y_true: Any, y_pred: Any) -> float:
    """Mean squared error, computed in float64 ((N, 1) predictions match (N,) targets)."""
    t, p = _pair(y_true, y_pred)
    p = _aligned(t, p)
    diff = p.astype(np.float64) - t.astype(np.float64)
    return float(np.mean(diff * diff))


def r2(y_true: Any, y_pred: Any) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot (averaged uniformly over output
    columns, as scikit-learn's `r2_score`); 1.0 is perfect, 0.0 is predicting the mean."""
    t, p = _pair(y_true, y_pred)
    p = _aligned(t, p)
    t64, p64 = t.astype(np.float64), p.astype(np.float64)
    ss_res = np.sum((t64 - p64) ** 2, axis=0)
    ss_tot = np.sum((t64 - t64.mean(axis=0)) ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0),
                          np.where(ss_res == 0, 1.0, 0.0))
    return float(np.mean(scores))


__all__ = ["accuracy", "mse", "r2"]
