"""Checking what users feed into a graph: names, shapes and dtypes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from graphc.errors import FeedError
from graphc.ir import Node, format_shape


def check_feeds(needed: Iterable[Node], feeds: Mapping[str, Any], *,
                all_inputs: Iterable[Node]) -> dict[str, np.ndarray]:
    """Validated feed arrays by input name (safely cast to the declared dtype).

    Raises FeedError naming the input for an unknown name, a missing feed, a wrong number of
    dimensions, a wrong fixed size or a dtype that cannot be cast without loss.
    """
    declared = {n.name: n for n in all_inputs}
    unknown = sorted(set(feeds) - set(declared))
    if unknown:
        raise FeedError(f"unknown feed {unknown[0]!r}: the graph's inputs are "
                        f"{', '.join(sorted(declared)) or 'none'}")
    checked: dict[str, np.ndarray] = {}
    for node in needed:
        if node.name not in feeds:
            raise FeedError(f"missing feed for input {node.name!r} "
                            f"{format_shape(node.shape)} {node.dtype} (declared at {node.where})")
        checked[node.name] = check_feed(node, feeds[node.name])
    return checked


def check_feed(node: Node, value: Any) -> np.ndarray:
    """One feed as an array of the input's dtype, or FeedError saying what was expected."""
    if isinstance(value, np.ndarray) and value.dtype == node.dtype \
            and value.ndim == len(node.shape) \
            and all(d is None or d == s for d, s in zip(node.shape, value.shape)):
        return value   # the common case, checked without building any message
    expected = f"{format_shape(node.shape)} {node.dtype}"
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as err:
        raise FeedError(f"input {node.name!r} expects an array of shape {expected}; could not "
                        f"convert the {type(value).__name__} fed to it: {err} "
                        f"(declared at {node.where})") from None
    if array.ndim != len(node.shape) or any(
            d is not None and d != s for d, s in zip(node.shape, array.shape)):
        raise FeedError(f"input {node.name!r} expects shape {expected}, got shape "
                        f"{array.shape} {array.dtype} (declared at {node.where})")
    if array.dtype != node.dtype:
        if not np.can_cast(array.dtype, node.dtype, casting="same_kind"):
            raise FeedError(f"input {node.name!r} expects dtype {node.dtype}, got "
                            f"{array.dtype}; convert it with .astype({node.dtype!r}) "
                            f"(declared at {node.where})")
        if not np.can_cast(array.dtype, node.dtype, casting="safe") and not _fits(
                array, node.dtype):
            raise FeedError(f"input {node.name!r} expects dtype {node.dtype}, got "
                            f"{array.dtype} with values outside the range of {node.dtype} "
                            f"(declared at {node.where})")
        array = array.astype(node.dtype)
    return array


def _fits(array: np.ndarray, dtype: str) -> bool:
    """Whether a narrowing cast keeps every value in range (float64 data into float32 is
    fine; 1e300 or an int beyond int32 is not)."""
    if array.size == 0:
        return True
    info = np.finfo(dtype) if np.dtype(dtype).kind == "f" else np.iinfo(dtype)
    finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array
    if finite.size == 0:
        return True
    return float(info.min) <= float(finite.min()) and float(finite.max()) <= float(info.max)
