"""Where the generator's structural choices come from: a numpy generator (the campaign,
reproducible from a seed) or hypothesis (pytest, with shrinking)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

T = TypeVar("T")


class Chooser(Protocol):
    def integer(self, lo: int, hi: int) -> int:
        """An int in [lo, hi] (both included)."""


class NumpyChooser:
    """Choices drawn from a numpy Generator."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi + 1))


class HypothesisChooser:
    """Choices drawn from hypothesis' `data` strategy object (shrinks towards `lo`)."""

    def __init__(self, data: Any) -> None:
        from hypothesis import strategies as st

        self.data, self.st = data, st

    def integer(self, lo: int, hi: int) -> int:
        return int(self.data.draw(self.st.integers(lo, hi)))


def pick(chooser: Chooser, items: Sequence[T]) -> T:
    """One of `items` (the first when shrinking)."""
    return items[chooser.integer(0, len(items) - 1)]


def coin(chooser: Chooser) -> bool:
    return chooser.integer(0, 1) == 1
