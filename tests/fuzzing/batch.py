"""Many examples in one graph, one compile: each example has its own inputs, loss and
gradients (examples.py), so the packed program computes every example's results at once
and each is compared on its own."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

import graphc as gc
from tests.fuzzing.checks import Mismatch, Stats, check_finite_differences, compare_compiled
from tests.fuzzing.choices import Chooser, NumpyChooser
from tests.fuzzing.examples import Example, build_example
from tests.fuzzing.families import FAMILIES


@dataclass
class Packed:
    graph: gc.Graph
    examples: list[Example]
    batch: int
    errors: list[str] = field(default_factory=list)

    def outputs(self) -> list[gc.Value]:
        return [v for ex in self.examples for v in ex.outputs()]

    def feeds(self) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        for ex in self.examples:
            feeds.update(ex.feeds())
        return feeds

    def split(self, results: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
        """Per example, its slice of the packed outputs."""
        out, k = [], 0
        for ex in self.examples:
            n = len(ex.outputs())
            out.append(list(results[k:k + n]))
            k += n
        return out


def pack(choosers: Sequence[Chooser], batch: int, dtype: str = "float64",
         name: str = "fuzz") -> Packed:
    """One graph holding an example per chooser. An example whose construction raises (a
    generator or graph-building bug) is recorded in `errors` and left out."""
    graph = gc.Graph(name, dtype=dtype)
    packed = Packed(graph, [], batch)
    for k, chooser in enumerate(choosers):
        try:
            packed.examples.append(build_example(graph, chooser, f"e{k}_", batch))
        except Exception as err:  # reported, with the example's index, by the caller
            packed.errors.append(f"e{k}: building raised {type(err).__name__}: {err}")
    return packed


def every_family(seed: int, batch: int = 2, name: str = "fuzz_families") -> Packed:
    """One example per family (a deterministic draw from `seed`), all in one graph."""
    graph = gc.Graph(name, dtype="float64")
    examples = [build_example(graph, NumpyChooser(np.random.default_rng([seed, k])),
                              f"e{k}_", batch, families=[family])
                for k, family in enumerate(sorted(FAMILIES))]
    return Packed(graph, examples, batch)


def assert_no_mismatch(found: Sequence[Mismatch], errors: Sequence[str]) -> None:
    """Fail with every building error and every mismatch's report."""
    assert not errors, "\n".join(errors)
    assert not found, "\n\n".join(m.report() for m in found)


def run_packed(packed: Packed, target: str, rng: np.random.Generator, stats: Stats,
               finite_differences: bool = True,
               also: Sequence[Packed] = ()) -> list[Mismatch]:
    """Compile the packed graph for `target`, compare every example with the interpreter,
    and (optionally) check each example's interpreter gradients by finite differences.

    `also`: the same examples drawn again at other batch sizes (same choices, so the same
    graph up to names and data): the one compiled program runs their feeds too (run-time
    sizes, no recompile), each compared with its own graph's interpreter."""
    compiled = gc.compile(packed.outputs(), target=target)
    what = "compiled" if target == "cpu" else f"{target} target"
    mismatches = []
    for run in (packed, *also):
        if [ex.describe() for ex in run.examples] != [ex.describe() for ex in packed.examples]:
            raise AssertionError(f"batch {run.batch} drew another graph than batch "
                                 f"{packed.batch}")
        for ex in run.examples:  # parameters hold this draw's values
            for leaf in ex.floats:
                if leaf.value.op == "param":
                    compiled.params[leaf.value.name][...] = leaf.data
        compiled.sync_to_device()
        feeds = run.feeds()
        got = run.split(compiled(**feeds))
        want = run.split(gc.evaluate(run.outputs(), feeds))
        for ex, g, w in zip(run.examples, got, want):
            mismatches += compare_compiled(ex, g, w, run.graph.dtype, stats,
                                           f"{what} (batch {run.batch})")
    if finite_differences and packed.graph.dtype == "float64":
        for ex in packed.examples:
            mismatches += check_finite_differences(ex, rng, stats)
    return mismatches
