"""Loop kernels over merged axes, and the one matrix-product kernel: which axes merge, and
compiled values against numpy for the broadcasting, reduction and layout cases that decide
it. float64 throughout; tolerances: 1e-12 relative (sums of at most a few hundred terms)."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.backends.cpu.codegen import merged_axes
from graphc.passes.fusion import Group

RTOL = 1e-12


def loop_group(step: gc.CompiledFunction, op: str) -> tuple[object, Group]:
    """The program graph and the loop group whose root is the first `op` node."""
    graph = step.program
    for group in graph.groups:
        if group.kind == "loop" and graph.nodes[group.root].op == op:
            return graph, group
    raise AssertionError(f"no loop group with root {op}")


def axes_of(out: gc.Value, op: str, feeds: dict) -> list[list[int]]:
    f = gc.compile([out])
    f(**feeds)
    graph, group = loop_group(f, op)
    strided = {n for n in group.loads if graph.nodes[n].op in ("transpose", "slice")}
    return merged_axes(graph, group, strided)


def test_same_shape_operands_run_as_one_flat_loop() -> None:
    g = gc.Graph("flat", dtype="float64")
    x = g.input("x", (None, 3, 4))
    y = g.input("y", (None, 3, 4))
    feeds = {"x": np.ones((2, 3, 4)), "y": np.ones((2, 3, 4))}
    assert axes_of(gc.tanh(x * y), "tanh", feeds) == [[0, 1, 2]]


def test_a_bias_merges_the_axes_it_is_broadcast_along() -> None:
    g = gc.Graph("bias", dtype="float64")
    x = g.input("x", (None, 5, 4))
    b = g.input("b", (4,))
    feeds = {"x": np.ones((2, 5, 4)), "b": np.ones(4)}
    assert axes_of(gc.relu(x + b), "relu", feeds) == [[0, 1], [2]]


def test_a_row_statistic_keeps_the_axis_it_varies_along_apart() -> None:
    g = gc.Graph("rows", dtype="float64")
    x = g.input("x", (None, 5, 4))
    s = g.input("s", (None, 5, 1))
    feeds = {"x": np.ones((2, 5, 4)), "s": np.ones((2, 5, 1))}
    assert axes_of(gc.exp(x - s), "exp", feeds) == [[0, 1], [2]]


def test_reductions_merge_reduced_axes_and_kept_axes_separately() -> None:
    g = gc.Graph("reduce", dtype="float64")
    x = g.input("x", (None, 5, 4))
    feeds = {"x": np.ones((2, 5, 4))}
    assert axes_of(gc.sum(x, axis=(0, 1)), "sum", feeds) == [[0, 1], [2]]
    assert axes_of(gc.sum(x, axis=2, keepdims=True), "sum", feeds) == [[0, 1], [2]]
    assert axes_of(gc.sum(x, axis=1), "sum", feeds) == [[0], [1], [2]]


def test_a_strided_operand_keeps_its_own_axes() -> None:
    g = gc.Graph("strided", dtype="float64")
    x = g.input("x", (None, 4, 4))
    feeds = {"x": np.ones((2, 4, 4))}
    assert axes_of(gc.tanh(gc.transpose(x, (0, 2, 1)) + 1.0), "tanh", feeds) == \
        [[0], [1], [2]]


CASES = {
    "bias over two batch axes": (
        lambda x, b: gc.relu(x + b), [(3, 5, 4), (4,)],
        lambda x, b: np.maximum(x + b, 0)),
    "row statistic": (
        lambda x, s: gc.exp(x - s), [(3, 5, 4), (3, 5, 1)], lambda x, s: np.exp(x - s)),
    "column statistic in the middle": (
        lambda x, s: x * s, [(3, 5, 4), (3, 1, 4)], lambda x, s: x * s),
    "size-1 axis between broadcast axes": (
        lambda x, s: x + s, [(3, 1, 4), (4,)], lambda x, s: x + s),
    "sum over leading axes": (
        lambda x: gc.sum(x * x, axis=(0, 1)), [(3, 5, 4)],
        lambda x: np.sum(x * x, axis=(0, 1))),
    "sum over the middle axis": (
        lambda x: gc.sum(gc.exp(x), axis=1), [(3, 5, 4)], lambda x: np.exp(x).sum(1)),
    "max over trailing axes": (
        lambda x: gc.max(x, axis=(1, 2), keepdims=True), [(3, 5, 4)],
        lambda x: x.max(axis=(1, 2), keepdims=True)),
    "sum over a size-1 axis": (
        lambda x: gc.sum(x, axis=1), [(3, 1, 4)], lambda x: x.sum(1)),
    "transposed operand with broadcast": (
        lambda x, b: gc.transpose(x, (0, 2, 1)) * b, [(3, 5, 4), (5,)],
        lambda x, b: np.transpose(x, (0, 2, 1)) * b),
    "batched matmul, both plain": (
        gc.matmul, [(3, 5, 4), (3, 4, 6)], np.matmul),
    "batched matmul, second transposed": (
        lambda a, b: gc.matmul(a, gc.transpose(b, (0, 2, 1))), [(3, 5, 4), (3, 6, 4)],
        lambda a, b: a @ np.transpose(b, (0, 2, 1))),
    "batched matmul, first transposed, second shared": (
        lambda a, b: gc.matmul(gc.transpose(a, (0, 2, 1)), b), [(3, 4, 5), (4, 6)],
        lambda a, b: np.transpose(a, (0, 2, 1)) @ b),
    "matmul of two transposed matrices": (
        lambda a, b: gc.matmul(gc.transpose(a), gc.transpose(b)), [(4, 5), (6, 4)],
        lambda a, b: a.T @ b.T),
    "matmul with a partly broadcast batch": (
        gc.matmul, [(2, 1, 5, 4), (2, 3, 4, 6)], np.matmul),
}


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_values_match_numpy(case: str) -> None:
    build, shapes, reference = CASES[case]
    g = gc.Graph("case", dtype="float64")
    rng = np.random.default_rng(len(case))
    inputs = [g.input(f"x{k}", shape) for k, shape in enumerate(shapes)]
    feeds = {f"x{k}": rng.standard_normal(shape) for k, shape in enumerate(shapes)}
    (out,) = gc.compile([build(*inputs)])(**feeds)
    np.testing.assert_allclose(out, reference(*feeds.values()), rtol=RTOL, atol=RTOL)


def test_matmul_with_an_empty_inner_axis_is_zero() -> None:
    g = gc.Graph("empty", dtype="float64")
    a = g.input("a", (3, None))
    b = g.input("b", (None, 2))
    (out,) = gc.compile([gc.matmul(a, b)])(a=np.ones((3, 0)), b=np.ones((0, 2)))
    np.testing.assert_array_equal(out, np.zeros((3, 2)))
