"""Deterministic descriptions of a graph's structure, for hashing: what its nodes compute,
never where the user's code built them."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from graphc.ir import Node, format_shape

#: Arrays up to this many elements are described by value even when `full` is False.
SMALL_ARRAY = 16


class NotDescribableError(Exception):
    """An attribute (a Python function, an object) whose meaning a description cannot hold."""


def describe_attr(value: Any, full: bool = False) -> Any:
    """A JSON-able description of a node attribute. Arrays: by value (`full`, or when small),
    else by shape and dtype alone. With `full`, a callable or an unknown object raises
    NotDescribableError; without, it is described by its name."""
    if isinstance(value, np.ndarray):
        desc: dict[str, Any] = {"shape": list(value.shape), "dtype": str(value.dtype)}
        if full:
            desc["sha256"] = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
        elif value.size <= SMALL_ARRAY:
            desc["values"] = [repr(v) for v in value.ravel().tolist()]
        return desc
    if isinstance(value, np.generic):
        return [str(value.dtype), repr(value.item())] if full else repr(value.item())
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return [describe_attr(v, full) for v in value]
    if isinstance(value, dict):
        return {str(k): describe_attr(v, full)
                for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if full:
        raise NotDescribableError(f"attribute of type {type(value).__name__}")
    if callable(value):
        return getattr(value, "__qualname__", type(value).__name__)
    return type(value).__name__


def describe_node(node: Node, full: bool = False) -> list[Any]:
    """What `node` computes: op, operands, shape, dtype, name, role, attributes (and, with
    `full`, the rule and forward node of a gradient node). Not its source location."""
    item = [node.op, list(node.inputs), format_shape(node.shape), node.dtype, node.name,
            node.role, describe_attr(node.attrs, full)]
    if full and node.provenance is not None:
        item.append([node.provenance.forward, node.provenance.rule])
    return item
