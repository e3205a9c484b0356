"""Batch sharding (graphc/passes/sharding.py and the parallel regions of the CPU step).

1. The plan: on a training step, activations and their gradients are row values, weight
   and bias gradients and the loss are partial sums, the updates global; the reordered
   groups are a topological order with every update last; graphs that cannot be split say
   why and still compile (serially).
2. Values: every op of tests/test_compile_ops.py's table in 2 shards; for shard counts 1,
   2, 3 and 5 (GRAPHC_SHARDS), with even and uneven splits,
   batches smaller than the shard count, two regions (batch statistics), convolutions and
   embeddings, compiled values and gradients equal the interpreter. Tolerance: float64,
   rtol 1e-12 / atol 1e-12: the shards only change the order in which partial sums over
   the batch are added (one rounding per addition, ~1e-16 relative per value).
3. Determinism: the same shard count gives bitwise-identical training runs.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import graphc as gc
from graphc.compiler import build_program
from graphc.ir import Graph
from graphc.passes import PIPELINE, SCHEDULE, optimize
from graphc.passes.fusion import data_inputs
from graphc.passes.sharding import GLOBAL, PARTIAL, ROW, ROWT
from tests import test_compile_ops as op_table

RTOL = ATOL = 1e-12
# the module (graphc.passes.sharding, the attribute, is the pass function)
sharding_pass = importlib.import_module("graphc.passes.sharding")


@pytest.fixture(autouse=True)
def two_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sharding is off by default (GRAPHC_SHARDS unset): these tests switch it on."""
    monkeypatch.setenv("GRAPHC_SHARDS", "2")


def test_one_shard_by_default_compiles_a_serial_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRAPHC_SHARDS")
    _, loss = mlp()
    step = gc.compile(loss, optimizer=gc.optim.SGD(0.1))
    assert not step.program.shards.enabled and "one shard" in step.program.shards.reason
    assert "prange" not in step.source and "parallel=True" not in step.source
    assert all("prange" not in k.source for k in step.kernels)
    assert "one thread" in str(step.compile_report)


def mlp(widths: tuple[int, ...] = (6, 8, 3)) -> tuple[Graph, gc.Value]:
    g = gc.Graph("shard_mlp", seed=0, dtype="float64")
    x = g.input("x", (None, widths[0]))
    y = g.input("y", (None,), dtype="int64")
    h = x
    for k, width in enumerate(widths[1:-1]):
        h = gc.tanh(gc.nn.linear(h, width, name=f"fc{k}"))
    logits = gc.nn.linear(h, widths[-1], name="out")
    return g, gc.mean(gc.softmax_cross_entropy(logits, y))


def batch(n: int, features: int = 6, classes: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, features)), "y": rng.integers(0, classes, n)}


def scheduled(loss: gc.Value, optimizer: gc.optim.Optimizer | None = None) -> Graph:
    program = build_program([loss], optimizer or gc.optim.SGD(0.1), [], {})
    return optimize(optimize(program, PIPELINE), SCHEDULE)


def loss_and_grads(loss: gc.Value) -> list[gc.Value]:
    params = loss.graph.params
    return [loss, *gc.grad(loss, params)]


def assert_matches_interpreter(outputs: list[gc.Value], feeds: dict[str, np.ndarray]) -> None:
    got = gc.compile(outputs)(**feeds)
    want = gc.evaluate(outputs, feeds)
    for k, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=f"output {k}")


# -- the plan ---------------------------------------------------------------------------

def test_plan_of_a_training_step() -> None:
    _, loss = mlp()
    program = scheduled(loss)
    plan = program.shards
    assert plan.enabled and plan.regions == 1, plan.reason
    nodes = program.nodes
    status = plan.status
    assert status[program._names["x"]] == ROW and status[program._names["fc0.w"]] == GLOBAL
    loss_id = program.outputs[0]   # a sum over the batch (partial) scaled by 1/n (global)
    assert status[loss_id] == GLOBAL
    assert any(status[i] == PARTIAL for i in data_inputs(nodes[loss_id]))
    matmuls = [n for n in nodes if n.op == "matmul"]
    assert {status[n.id] for n in matmuls} == {ROW, PARTIAL}
    for n in matmuls:
        a = status[n.inputs[0]]
        assert status[n.id] == (PARTIAL if a == ROWT else ROW)
    # weight gradients are partial sums over the batch; updates are global
    assert all(status[nid] == GLOBAL for _, nid in program.updates)


def test_reordered_groups_are_topological_with_updates_last() -> None:
    _, loss = mlp((6, 8, 8, 3))
    program = scheduled(loss, gc.optim.Adam(1e-2))
    groups, plan = program.groups, program.shards
    produced: set[int] = set()
    leaves = {n.id for n in program.nodes if n.op in ("input", "param", "state", "const")}
    for group in groups:
        for nid in group.loads:
            assert nid in produced or nid in leaves, f"group reads %{nid} before it is computed"
        produced.update(group.nodes)
    phases = [g.phase for g in groups]
    first_update = phases.index(3)
    assert all(p == 3 for p in phases[first_update:])
    assert all(r is None for r in plan.region[first_update:])
    # a group reading a combined partial sum never runs in the region that produced it
    region_of = {n: r for g, r in zip(groups, plan.region) for n in g.nodes}
    for group, region in zip(groups, plan.region):
        for nid in group.loads:
            if plan.status.get(nid) == PARTIAL and region is not None:
                assert region_of[nid] != region


def test_graphs_that_cannot_be_split_say_why_and_still_compile() -> None:
    g = gc.Graph("gram", seed=0, dtype="float64")
    x = g.input("x", (None, 4))
    gram = gc.matmul(x, gc.transpose(x))   # mixes rows: (n, n)
    out = gc.sum(gram)
    program = optimize(optimize(build_program([out], None, [], {}), PIPELINE), SCHEDULE)
    assert not program.shards.enabled
    assert "matmul" in program.shards.reason
    assert_matches_interpreter([out], {"x": np.random.default_rng(1).standard_normal((5, 4))})


def test_dropout_is_not_split_because_its_mask_numbers_elements_across_the_batch() -> None:
    g = gc.Graph("drop", seed=0, dtype="float64")
    x = g.input("x", (None, 4))
    loss = gc.mean(gc.square(gc.nn.dropout(gc.nn.linear(x, 4, name="fc"), 0.5)))
    program = scheduled(loss)
    assert not program.shards.enabled and "dropout" in program.shards.reason


# -- values ------------------------------------------------------------------------------

@pytest.mark.parametrize("shards", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [1, 2, 7, 16])
def test_loss_and_gradients_match_the_interpreter(monkeypatch: pytest.MonkeyPatch,
                                                  shards: int, n: int) -> None:
    monkeypatch.setenv("GRAPHC_SHARDS", str(shards))
    _, loss = mlp((6, 8, 8, 3))
    assert_matches_interpreter(loss_and_grads(loss), batch(n))


def test_batch_statistics_split_into_two_regions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAPHC_SHARDS", "2")
    g = gc.Graph("bn", seed=0, dtype="float64")
    x = g.input("x", (None, 6))
    h = gc.nn.linear(x, 5, name="fc")
    mean = gc.mean(h, axis=0, keepdims=True)                # a partial sum over rows
    centred = h - mean                                      # rows reading the combined sum
    loss = gc.mean(gc.square(centred) * gc.tanh(h))
    program = scheduled(loss)
    assert program.shards.enabled and program.shards.regions >= 2
    assert_matches_interpreter(loss_and_grads(loss), {"x": batch(9)["x"]})


def test_convolution_and_embedding_split_over_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAPHC_SHARDS", "3")
    g = gc.Graph("convemb", seed=0, dtype="float64")
    img = g.input("img", (None, 2, 6, 6))
    tok = g.input("tok", (None,), dtype="int64")
    h = gc.relu(gc.nn.conv2d(img, 3, 3, padding=1, name="conv"))
    h = gc.nn.max_pool2d(h, 2)
    h = gc.reshape(h, (-1, 3 * 3 * 3))
    e = gc.nn.embedding(tok, 10, 4, name="emb")
    both = gc.concat([h, e], axis=1)
    loss = gc.mean(gc.square(gc.nn.linear(both, 2, name="fc")))
    program = scheduled(loss)
    assert program.shards.enabled, program.shards.reason
    rng = np.random.default_rng(3)
    feeds = {"img": rng.standard_normal((7, 2, 6, 6)), "tok": rng.integers(0, 10, 7)}
    assert_matches_interpreter(loss_and_grads(loss), feeds)


def test_inputs_of_different_batch_sizes_run_as_one_shard() -> None:
    g = gc.Graph("two", seed=0, dtype="float64")
    a = g.input("a", (None, 3))
    b = g.input("b", (None, 2))
    loss = gc.mean(gc.nn.linear(a, 1, name="fa")) + gc.mean(gc.nn.linear(b, 1, name="fb"))
    rng = np.random.default_rng(4)
    assert_matches_interpreter(loss_and_grads(loss), {"a": rng.standard_normal((5, 3)),
                                                      "b": rng.standard_normal((8, 2))})


def train(shards: int, monkeypatch: pytest.MonkeyPatch, steps: int = 5
          ) -> tuple[list[float], dict[str, np.ndarray]]:
    monkeypatch.setenv("GRAPHC_SHARDS", str(shards))
    _, loss = mlp((6, 16, 16, 3))
    step = gc.compile(loss, optimizer=gc.optim.Adam(1e-2))
    losses = [step(**batch(13, seed=k)) for k in range(steps)]
    return losses, {k: v.copy() for k, v in step.params.items()}


def test_training_is_bitwise_reproducible_for_a_shard_count_and_close_across_counts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    serial = train(1, monkeypatch)
    two = train(2, monkeypatch)
    again = train(2, monkeypatch)
    assert again[0] == two[0]
    for name in two[1]:
        assert np.array_equal(again[1][name], two[1][name]), name
        # Adam divides by sqrt(v): order-of-summation differences of ~1e-16 in the
        # gradients move parameters by ~1e-15 after a few steps
        np.testing.assert_allclose(two[1][name], serial[1][name], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(two[0], serial[0], rtol=RTOL)


def test_update_rows_shared_out_among_shards_change_no_bit(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """Above SPLIT_MIN_ELEMENTS parameters the updates run in a parallel region too, each
    shard on a share of every parameter's rows: elementwise, so bitwise the same."""
    whole = {shards: train(shards, monkeypatch) for shards in (2, 3)}
    monkeypatch.setattr(sharding_pass, "SPLIT_MIN_ELEMENTS", 0)
    _, loss = mlp((6, 16, 16, 3))
    program = scheduled(loss, gc.optim.Adam(1e-2))
    plan = program.shards
    updates = [k for k, g in enumerate(program.groups) if g.phase == 3]
    assert any(plan.split[k] for k in updates)
    assert all(plan.region[k] is not None for k in updates if plan.split[k])
    assert len({plan.region[k] for k in updates if plan.split[k]}) == 1
    for shards in (2, 3):
        shared = train(shards, monkeypatch)
        reference = whole[shards]
        assert shared[0] == reference[0]
        for name in shared[1]:
            assert np.array_equal(shared[1][name], reference[1][name]), name


def test_regions_with_too_many_arrays_run_serially(monkeypatch: pytest.MonkeyPatch) -> None:
    """Numba's compile time for a parallel region grows faster than linearly with the arrays
    it takes: past MAX_REGION_ARRAYS the graph runs serially, and says so."""
    _, loss = mlp((6, 8, 8, 3))
    program = scheduled(loss)
    widest = max(sharding_pass.region_arrays(program, program.groups, program.shards).values())
    monkeypatch.setattr(sharding_pass, "MAX_REGION_ARRAYS", widest - 1)
    program = scheduled(loss)
    assert not program.shards.enabled and f"{widest} arrays" in program.shards.reason
    assert_matches_interpreter(loss_and_grads(loss), batch(5))


@pytest.mark.parametrize("shards", ["2", "3"])
def test_batch_reductions_combine_in_shard_order(monkeypatch: pytest.MonkeyPatch,
                                                 shards: str) -> None:
    """sum, max and min over the batch (axis 0 and all axes) are partial results per shard,
    combined after the region; max and min propagate NaN as the kernels do."""
    monkeypatch.setenv("GRAPHC_SHARDS", shards)
    g = gc.Graph("reduce", seed=0, dtype="float64")
    x = g.input("x", (None, 4))
    outputs = [gc.sum(x, axis=0), gc.max(x, axis=0), gc.min(x, axis=0), gc.max(x),
               gc.min(gc.tanh(x)), gc.sum(gc.square(x))]
    program = optimize(optimize(build_program(outputs, None, [], {}), PIPELINE), SCHEDULE)
    assert {program.shards.combine[n] for n in program.outputs} == {"sum", "max", "min"}
    data = np.random.default_rng(5).standard_normal((7, 4))
    assert_matches_interpreter(outputs, {"x": data})
    data[5, 2] = np.nan   # in the last shard
    got = gc.compile(outputs)(x=data)
    want = gc.evaluate(outputs, {"x": data})
    for a, b in zip(got, want):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("group", list(op_table.GROUPS))
def test_op_table_in_shards_matches_the_interpreter(monkeypatch: pytest.MonkeyPatch,
                                                    group: str) -> None:
    """Every op of the compiled-op table (values and gradients, batches 5 and 2, float64)
    with 2 shards, however many arrays a region takes; the op table's own tolerances
    (float64: 1e-12). Groups with an op that cannot split (a reshape moving the batch, a
    gather across it) run serially, which the plan tests cover."""
    monkeypatch.setattr(sharding_pass, "MAX_REGION_ARRAYS", 1 << 20)
    run = op_table._run_group(group, "float64")
    problems = [problem for name, entries in [*run.values.items(), *run.grads.items()]
                for what, got, want in entries
                if (problem := op_table._mismatch(got, want, "float64", f"{name} {what}"))]
    assert not problems, "\n".join(problems)


def test_structural_ops_along_an_inner_axis_split_over_the_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """cumsum, take_along_axis (and its scatter-add gradient), argmax, pad, var along axis
    1 work row by row: the step shards (the parallel step's own kernels for them run) and
    matches the interpreter, with an uneven split."""
    monkeypatch.setattr(sharding_pass, "MAX_REGION_ARRAYS", 1 << 20)
    g = gc.Graph("structure_rows", dtype="float64")
    x = g.input("x", (None, 5))
    i = g.input("i", (None, 3), dtype="int64")
    picked = gc.take_along_axis(gc.cumsum(x * x, 1), i, 1)
    padded = gc.pad(x, ((0, 0), (2, 1)), mode="reflect") + gc.pad(x, ((0, 0), (1, 2)))
    loss = gc.sum(picked * picked) + gc.sum(gc.var(padded, axis=1)) + gc.sum(
        gc.cast(gc.argmax(x, 1), "float64"))
    outs = [loss, gc.argmax(x, 1), *gc.grad(loss, [x])]
    program = optimize(optimize(build_program(outs, None, [], {}), PIPELINE), SCHEDULE)
    assert program.shards.enabled, program.shards.reason
    rng = np.random.default_rng(3)
    assert_matches_interpreter(outs, {"x": rng.standard_normal((7, 5)),
                                      "i": rng.integers(-5, 5, (7, 3))})


def test_a_running_sum_over_the_batch_axis_runs_serially() -> None:
    g = gc.Graph("cumsum_batch", dtype="float64")
    x = g.input("x", (None, 3))
    out = gc.sum(gc.cumsum(x, 0) * x)
    program = optimize(optimize(build_program([out], None, [], {}), PIPELINE), SCHEDULE)
    assert not program.shards.enabled and "cumsum" in program.shards.reason
    assert_matches_interpreter([out], {"x": np.random.default_rng(2).standard_normal((5, 3))})
