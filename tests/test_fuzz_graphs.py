"""Random graphs over every op family (tests/fuzzing): compiled for the CPU against the
interpreter, and the interpreter's gradients against finite differences.

The generator, the checks and their tolerances (with their justification) are in
tests/fuzzing/; the long campaign is benchmarks/fuzz_campaign.py. Here a short, fast run
for CI: hypothesis draws the structure (so a failure shrinks to a small graph), several
examples share one compile, and one compile covers every family once. The CUDA target is
fuzzed on the simulator in tests/cuda_sim/test_sim_fuzz.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphc as gc
from tests.fuzzing.batch import assert_no_mismatch, every_family, pack, run_packed
from tests.fuzzing.builder import Leaf
from tests.fuzzing.checks import Stats, check_finite_differences, compare_compiled
from tests.fuzzing.choices import HypothesisChooser, NumpyChooser
from tests.fuzzing.examples import Example, build_example, find_probes
from tests.fuzzing.families import FAMILIES

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])


@settings(FUZZ, max_examples=60)
@given(data=st.data(), batch=st.integers(1, 3))
def test_random_graph_gradients_match_finite_differences(data, batch: int) -> None:
    packed = pack([HypothesisChooser(data)], batch)
    found = []
    for ex in packed.examples:
        found += check_finite_differences(ex, np.random.default_rng(0), Stats())
    assert_no_mismatch(found, packed.errors)


@settings(FUZZ, max_examples=6)
@given(data=st.data(), batch=st.integers(1, 3))
def test_random_graphs_compiled_match_interpreter(data, batch: int) -> None:
    """Three examples per compile: every output and gradient equals the interpreter's."""
    packed = pack([HypothesisChooser(data) for _ in range(3)], batch)
    assert_no_mismatch(run_packed(packed, "cpu", np.random.default_rng(0), Stats()), packed.errors)


def test_every_family_compiled_once() -> None:
    """One example per family (a deterministic draw), all in one compile."""
    packed = every_family(5, name="fuzz_families")
    examples = packed.examples
    stats = Stats()
    assert_no_mismatch(run_packed(packed, "cpu", np.random.default_rng(0), stats), [])
    assert stats.fd_checked == len(FAMILIES)
    assert {f for ex in examples for f in ex.families} == set(FAMILIES)


def _relu_example(data: np.ndarray, probes: bool) -> Example:
    g = gc.Graph("kink", dtype="float64")
    x = g.input("x", data.shape)
    w = g.input("w", data.shape)
    out = gc.relu(x)
    loss = gc.sum(out * w)
    return Example("", ["unary"], ["relu(x)"], out, Leaf(w, np.ones(data.shape)), loss,
                   [Leaf(x, data)], [], [], [gc.grad(loss, x)],
                   find_probes(g, [loss.id]) if probes else [])


def test_finite_differences_move_off_a_kink() -> None:
    """At relu's kink (x = 0) the central difference (1/2) is not the gradient (0, as
    PyTorch): the check sees the branch change within the step and moves to another
    point; without the kink probe the same example fails."""
    data = np.array([0.0, 1.0, -2.0])
    stats = Stats()
    assert check_finite_differences(_relu_example(data, True), np.random.default_rng(0),
                                    stats) == []
    assert stats.moves >= 1 and stats.fd_checked == 1
    failed = check_finite_differences(_relu_example(data, False), np.random.default_rng(0),
                                      Stats())
    assert len(failed) == 1 and "central difference" in failed[0].detail


def test_a_softmax_over_near_ties_is_no_kink() -> None:
    """Logits equal up to rounding (1.5 - x + x): the softmax family's max shift changes
    its argmax under any perturbation, but the function does not depend on it, so the
    check must not look for a point without near ties (it once found none in 21 tries)."""
    g = gc.Graph("ties", dtype="float64")
    x, y, w = g.input("x", (4, 3)), g.input("y", (4,), dtype="int64"), g.input("w", ())
    out = gc.softmax_cross_entropy(1.5 - x + x, y, reduction="sum")
    loss = gc.sum(out * w)
    data = np.random.default_rng(2).standard_normal((4, 3))
    ex = Example("", ["softmax"], ["cross_entropy(1.5 - x + x)"], out, Leaf(w, np.ones(())),
                 loss, [Leaf(x, data)], [Leaf(y, np.array([0, 2, 1, 1]))], [],
                 [gc.grad(loss, x)], find_probes(g, [loss.id]))
    stats = Stats()
    assert check_finite_differences(ex, np.random.default_rng(0), stats) == []
    assert stats.moves == 0


def test_checks_catch_a_wrong_gradient_and_a_wrong_result() -> None:
    """The checks are not vacuous: a custom op whose gradient is off by 10% fails the
    finite-difference check, and a result off by 1e-9 fails the compiled comparison."""
    from graphc.ops import OPS
    from graphc.ops.custom import _CUSTOM

    cube = gc.custom_op("fuzz_bad_cube", ref=lambda a: a ** 3, scalar="({0} * {0} * {0})",
                        vjp=lambda g, out, a: g * gc.square(a) * 3.3)
    try:
        g = gc.Graph("bad", dtype="float64")
        x, w = g.input("x", (3,)), g.input("w", (3,))
        out = cube(x)
        loss = gc.sum(out * w)
        ex = Example("", ["custom"], ["fuzz_bad_cube(x)"], out, Leaf(w, np.ones(3)), loss,
                     [Leaf(x, np.array([0.5, -1.0, 2.0]))], [], [], [gc.grad(loss, x)], [])
        assert len(check_finite_differences(ex, np.random.default_rng(1), Stats())) == 1
        want = gc.evaluate(ex.outputs(), {"x": ex.floats[0].data, "w": ex.weight.data})
        got = [want[0] + 1e-9, want[1]]
        found = compare_compiled(ex, got, want, "float64", Stats())
        assert [m.what for m in found] == ["compiled out"]
    finally:
        OPS.pop("fuzz_bad_cube", None)
        _CUSTOM.discard("fuzz_bad_cube")


@pytest.mark.parametrize("seed", [0, 1])
def test_drawing_is_reproducible(seed: int) -> None:
    """The campaign's reproducers rely on a seed rebuilding the same example."""
    def draw() -> str:
        graph = gc.Graph("repro", dtype="float64")
        ex = build_example(graph, NumpyChooser(np.random.default_rng([seed, 0, 3])), "e3_", 2)
        return ex.describe() + repr([leaf.data.tolist() for leaf in ex.floats])

    assert draw() == draw()
