"""One random example under construction: its leaves (inputs and parameters with the data
they hold), its structural choices and a readable trace of what was built.

Every example of a packed graph gets a name prefix (`e12_`), so many examples share one
graph without colliding; an axis declared None (a run-time size) holds `batch` rows: the
families never merge it with other axes (no reshape or flattening of it), so a fresh input
declared like any value has the value's run-time shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

import graphc as gc
from tests.fuzzing.choices import Chooser, coin, pick


@dataclass
class Leaf:
    """An input or parameter of an example and the array it holds."""

    value: gc.Value
    data: np.ndarray


@dataclass
class Builder:
    """Builds one example in `graph`: fresh leaves, structural choices, a trace."""

    graph: gc.Graph
    chooser: Chooser
    rng: np.random.Generator
    prefix: str
    batch: int
    floats: list[Leaf] = field(default_factory=list)
    fixed: list[Leaf] = field(default_factory=list)
    ints: list[gc.Value] = field(default_factory=list)
    families: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    _count: int = 0

    # -- choices --------------------------------------------------------------------------
    def integer(self, lo: int, hi: int) -> int:
        return self.chooser.integer(lo, hi)

    def pick(self, items: Any) -> Any:
        return pick(self.chooser, list(items))

    def coin(self) -> bool:
        return coin(self.chooser)

    # -- leaves ---------------------------------------------------------------------------
    def name(self, stem: str) -> str:
        self._count += 1
        return f"{self.prefix}{stem}{self._count}"

    def concrete(self, shape: tuple) -> tuple[int, ...]:
        """The run-time shape of a declared one (None -> `batch`)."""
        return tuple(self.batch if d is None else int(d) for d in shape)

    @staticmethod
    def least(shape: tuple) -> tuple[int, ...]:
        """The smallest run-time shape of a declared one (None -> 1): structural choices
        depend on it, never on `batch`, so one graph drawn at two batch sizes is the same
        graph (one compiled program runs both)."""
        return tuple(1 if d is None else int(d) for d in shape)

    def input(self, shape: tuple, scale: float = 1.0) -> gc.Value:
        """A float input of declared `shape` holding standard normal data * `scale`."""
        value = self.graph.input(self.name("x"), tuple(shape))
        data = self.rng.standard_normal(self.concrete(shape)) * scale
        self.floats.append(Leaf(value, data.astype(self.graph.dtype)))
        self.trace.append(f"{value.name}: input {tuple(shape)}")
        return value

    def uniform_input(self, shape: tuple, lo: float, hi: float) -> gc.Value:
        value = self.graph.input(self.name("u"), tuple(shape))
        data = self.rng.uniform(lo, hi, self.concrete(shape))
        self.floats.append(Leaf(value, data.astype(self.graph.dtype)))
        self.trace.append(f"{value.name}: input {tuple(shape)} uniform({lo}, {hi})")
        return value

    def int_input(self, shape: tuple, lo: int, hi: int, dtype: str = "int64") -> gc.Value:
        """An integer input with entries in [lo, hi) (fed, not differentiated)."""
        value = self.graph.input(self.name("i"), tuple(shape), dtype=dtype)
        data = self.rng.integers(lo, hi, self.concrete(shape)).astype(dtype)
        self.fixed.append(Leaf(value, data))
        self.trace.append(f"{value.name}: {dtype} input {tuple(shape)} in [{lo}, {hi})")
        return value

    def param_leaf(self, name: str, scale: float = 1.0, offset: float = 0.0) -> gc.Value:
        """A parameter made by a layer, given random values (so a gain is not all ones)."""
        value = self.graph[name]
        data = (offset + scale * self.rng.standard_normal(value.shape)).astype(self.graph.dtype)
        self.graph.param_values[name] = data
        self.floats.append(Leaf(value, data))
        self.trace.append(f"{name}: param {value.shape}")
        return value

    def coupled(self, shape: tuple, v: gc.Value | None, scale: float = 1.0) -> gc.Value:
        """A fresh input of `shape`, scaled by a bounded function of `v` (when given) so the
        chain stays connected where `v` cannot be used directly."""
        x = self.input(shape, scale)
        if v is None:
            return x
        self.trace.append("  coupled to the previous value by 1 + tanh(mean) / 2")
        return x * (gc.tanh(gc.mean(v)) * 0.5 + 1.0)

    def note(self, text: str) -> None:
        self.trace.append(text)

    # -- shape helpers ----------------------------------------------------------------------
    def shape(self, min_rank: int = 0, max_rank: int = 3, max_dim: int = 4,
              dynamic: bool = True) -> tuple:
        """A random declared shape; axis 0 may be run-time (None) when `dynamic`."""
        rank = self.integer(min_rank, max_rank)
        dims: list[int | None] = [self.integer(1, max_dim) for _ in range(rank)]
        if dynamic and rank and self.integer(0, 2) == 0:
            dims[0] = None
        return tuple(dims)

    def broadcast_partner(self, shape: tuple) -> tuple:
        """A shape that broadcasts against `shape` to `shape` (axes kept, set to 1, or
        leading axes dropped)."""
        drop = self.integer(0, len(shape))
        out = []
        for d in shape[drop:]:
            out.append(1 if self.integer(0, 3) == 0 else d)
        return tuple(out)


def fixed_axes(v: gc.Value) -> list[int]:
    return [a for a, d in enumerate(v.shape) if d is not None]


def all_fixed(v: gc.Value) -> bool:
    return None not in v.shape
