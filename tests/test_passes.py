"""The Graph -> Graph passes, fusion and the memory plan (interpreter only, no Numba).

1. Every pass (simplify, CSE, DCE and the whole `optimize` pipeline) keeps the value of
   every output and update bitwise identical under `gc.evaluate`'s interpreter, on several
   graphs including real training programs (`graphc.compiler.build_program`), leaves its
   input graph untouched and returns a graph that passes `verify`.
2. Each pass does what its docstring says (CSE merges duplicates but never leaves, DCE
   drops what nothing needs but keeps inputs, simplify folds constants and removes
   identities only when shape and dtype allow).
3. Fusion: groups partition the compute nodes, are convex, the graph of groups is acyclic
   and listed in dependency order, output-phase groups come first, loop groups are
   elementwise over one iteration shape (optionally ending in one reduction).
4. Memory plan: two values that are live at the same time never share a pool slot, and an
   update written in place never destroys a value a later kernel still reads.

Liveness and storage aliasing are recomputed here from the schedule, independently of
graphc/passes/memory.py.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import graphc as gc
from graphc.compiler import build_program
from graphc.interpret import run_nodes
from graphc.ir import Graph, ancestors
from graphc.ops import OPS
from graphc.optim import Optimizer
from graphc.passes import (
    LOWERING_CPU,
    PIPELINE,
    SCHEDULE,
    eliminate_common_subexpressions,
    eliminate_dead_code,
    flatten_matmuls,
    optimize,
    simplify,
    verify,
)
from graphc.passes.fusion import data_inputs, fuse, is_loop_op, values_read
from graphc.passes.memory import plan_memory

LEAVES = ("input", "param", "state", "const")


# -- graphs under test --------------------------------------------------------------------

def mlp(dtype: str = "float64") -> tuple[Graph, gc.Value, gc.Value]:
    g = gc.Graph("mlp", dtype=dtype, seed=4)
    x = g.input("x", (None, 4))
    y = g.input("y", (None,), dtype="int64")
    h = gc.tanh(gc.nn.linear(x, 6, name="l1"))
    logits = gc.nn.linear(gc.relu(gc.nn.linear(h, 5, name="l2")), 3, name="l3")
    loss = gc.mean(gc.softmax_cross_entropy(logits, y)) + 1e-3 * gc.sum(
        gc.square(g["l1.w"]))
    return g, logits, loss


def program_with_outputs(values: list[gc.Value]) -> Graph:
    return build_program(values, None, [], {})


class TransposedReadOptimizer(Optimizer):
    """p <- p - lr * (g + 0.1 * p.T) (square p): the update reads the old value transposed."""

    hyper_names = ("lr",)

    def update(self, graph: Graph, p: gc.Value, g: gc.Value,
               hyper: dict[str, gc.Value]) -> list[tuple[str, int]]:
        extra = p.T * 0.1 if p.ndim == 2 and p.shape[0] == p.shape[1] else p * 0.1
        return [(p.name, (p - hyper["lr"] * (g + extra)).id)]

    def hypers(self, step: int) -> dict[str, float]:
        return {"lr": self.current_lr(step)}


class MatmulUpdateOptimizer(Optimizer):
    """p <- (p - lr * g) @ R for 2-D p: updates whose last op is not a fusable loop, so they
    cannot be written in place and are copied into the parameters after the last kernel."""

    hyper_names = ("lr",)

    def update(self, graph: Graph, p: gc.Value, g: gc.Value,
               hyper: dict[str, gc.Value]) -> list[tuple[str, int]]:
        new = p - hyper["lr"] * g
        if p.ndim == 2:
            n = p.shape[1]
            new = new @ graph.const(np.eye(n)[::-1].copy())
        return [(p.name, new.id)]

    def hypers(self, step: int) -> dict[str, float]:
        return {"lr": self.current_lr(step)}


def training_program(optimizer: Optimizer) -> Graph:
    _, _, loss = mlp()
    return build_program([loss], optimizer, [], {})


def square_param_program(optimizer: Optimizer) -> Graph:
    g = gc.Graph("square", dtype="float64")
    x = g.input("x", (None, 3))
    a = g.param("a", np.arange(9.0).reshape(3, 3) / 10)
    b = g.param("b", np.ones((3, 3)) / 3)
    loss = gc.mean(gc.square(x @ a + x @ b))
    return build_program([loss], optimizer, [], {})


def algebra_program() -> Graph:
    """Duplicates, constant subexpressions and identities mixed with real work."""
    g = gc.Graph("algebra", dtype="float64")
    x = g.input("x", (None, 4))
    g.input("unused", (2,))
    two = g.const(2.0) * g.const(3.0) - gc.exp(g.const(0.5))
    a = gc.exp(x) * 1.0 + 0.0
    b = gc.exp(x) / 1.0 - 0.0
    c = gc.neg(gc.neg(gc.tanh(x) * two))
    d = gc.transpose(gc.transpose(c)) + gc.stop_gradient(a)
    e = gc.expand_dims(gc.squeeze(gc.sum(d, axis=1, keepdims=True), 1), 1)
    f = (1.0 * a) + (0.0 + b) + e * gc.sum(x * 1.0, axis=0)
    gc.sigmoid(f) * 3.0  # built but never used
    return program_with_outputs([f, gc.sum(f * f), gc.mean(d)])


def views_program() -> Graph:
    g = gc.Graph("views", dtype="float32")
    x = g.input("x", (None, 3, 4))
    w = g.param("w", np.linspace(-1, 1, 12).reshape(4, 3))
    y = gc.reshape(gc.transpose(x, (0, 2, 1)), (-1, 3))
    z = gc.concat([y, y[::-1] * 2.0], axis=1)
    t = gc.stack([z[:, :3], gc.expand_dims(z[:, 4], 1) * z[:, 3:]], axis=1)
    out = gc.sum(t @ gc.transpose(w[:, :3])[None], axis=(1, 2)) + gc.max(x[:, 1:, ::-1])
    loss = gc.mean(gc.square(out))
    return program_with_outputs([out, *gc.grad(loss, [x, w])])


def gradient_only_program() -> Graph:
    """Outputs are gradients only: DCE drops forward nodes that no gradient needs."""
    g = gc.Graph("gradonly", dtype="float64")
    x = g.input("x", (None, 4))
    p = g.input("p", (None, 4))
    loss = (gc.sum(gc.pow(p, x) * 0.5)
            + gc.sum(gc.cast(gc.cast(x, "float32") * 3.0, "float64") * p)
            + gc.sum(gc.logsumexp(x * p)))
    return program_with_outputs(gc.grad(loss, [x, p]))


PROGRAMS: dict[str, Callable[[], Graph]] = {
    "mlp_forward": lambda: program_with_outputs([mlp()[1]]),
    "mlp_sgd_momentum_clip": lambda: training_program(
        gc.optim.SGD(0.1, momentum=0.9, weight_decay=1e-3, clip_norm=1.0)),
    "mlp_adam": lambda: training_program(gc.optim.Adam(1e-2)),
    "mlp_adamw": lambda: training_program(gc.optim.AdamW(1e-2)),
    "algebra": algebra_program,
    "views": views_program,
    "gradient_only": gradient_only_program,
    "update_reads_transposed": lambda: square_param_program(TransposedReadOptimizer(0.1)),
    "update_ends_in_matmul": lambda: square_param_program(MatmulUpdateOptimizer(0.1)),
}


def program(name: str) -> Graph:
    return PROGRAMS[name]()


def make_feeds(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Data for every input (run-time sizes = 5) and the optimizer's step-1 scalars."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for n in graph.nodes:
        if n.op != "input":
            continue
        shape = tuple(5 if d is None else d for d in n.shape)
        if n.name.startswith("@"):
            feeds[n.name] = np.array(0.5 if n.name != "@bc2_sqrt" else 0.03, dtype=n.dtype)
        elif n.dtype.startswith("float"):
            feeds[n.name] = (np.abs(rng.standard_normal(shape)) + 0.5).astype(n.dtype) \
                if n.name == "p" else rng.standard_normal(shape).astype(n.dtype)
        else:
            feeds[n.name] = rng.integers(0, 3, size=shape).astype(n.dtype)
    return feeds


def results(graph: Graph, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Interpreted values of every output, then every update (in order)."""
    ids = list(graph.outputs) + [n for _, n in graph.updates]
    values = run_nodes(graph, ids, feeds)
    return [np.array(values[i], copy=True) for i in ids]


def assert_bitwise_equal(got: list[np.ndarray], want: list[np.ndarray], what: str) -> None:
    assert len(got) == len(want), what
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and a.dtype == b.dtype, (what, k, a.shape, b.shape)
        assert a.tobytes() == b.tobytes(), f"{what}: result {k} differs\n{a}\nvs\n{b}"


def count(graph: Graph, op: str) -> int:
    return sum(1 for n in graph.nodes if n.op == op)


def count_live(graph: Graph, op: str) -> int:
    """Nodes of `op` that some output or update depends on (simplify leaves bypassed nodes
    in place for dead-code elimination to drop)."""
    live = ancestors(graph, list(graph.outputs) + [n for _, n in graph.updates])
    return sum(1 for n in graph.nodes if n.op == op and n.id in live)


PASSES: dict[str, Callable[[Graph], Graph]] = {
    "simplify": simplify,
    "cse": eliminate_common_subexpressions,
    "dce": eliminate_dead_code,
    "pipeline": optimize,
    # fusion and memory planning annotate the graph (groups, plan) and change no node
    "pipeline+schedule": lambda graph: optimize(optimize(graph), SCHEDULE),
}


# -- 1. passes preserve results --------------------------------------------------------------

@pytest.mark.parametrize("pass_name", list(PASSES))
@pytest.mark.parametrize("name", list(PROGRAMS))
def test_pass_preserves_interpreted_results(name: str, pass_name: str) -> None:
    graph = program(name)
    before_nodes = list(graph.nodes)
    feeds = make_feeds(graph)
    want = results(graph, feeds)
    out = PASSES[pass_name](graph)
    verify(out)
    assert graph.nodes == before_nodes, "the pass changed its input graph"
    assert out is not graph
    assert len(out.outputs) == len(graph.outputs)
    assert [n for n, _ in out.updates] == [n for n, _ in graph.updates]
    assert out.param_values is graph.param_values  # storage stays shared
    assert sorted(n.name for n in out.nodes if n.op == "input") == sorted(feeds)
    assert_bitwise_equal(results(out, feeds), want, f"{pass_name} on {name}")
    assert len(out.nodes) <= len(graph.nodes)


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_pipeline_is_idempotent_and_shrinks(name: str) -> None:
    graph = program(name)
    once = optimize(graph)
    twice = optimize(once)
    assert len(twice.nodes) == len(once.nodes)
    assert [n.op for n in twice.nodes] == [n.op for n in once.nodes]
    assert len(once.nodes) < len(graph.nodes), "the pipeline found nothing to remove"
    feeds = make_feeds(graph, seed=1)
    assert_bitwise_equal(results(twice, feeds), results(graph, feeds), name)


def test_pipeline_timings_are_recorded() -> None:
    timings: dict[str, float] = {}
    optimize(program("algebra"), timings=timings)
    assert set(timings) == {p.__name__ for p in PIPELINE}
    assert all(t >= 0 for t in timings.values())


def batched_linear_program(dtype: str = "float64") -> Graph:
    """Linear layers on 3-D and 4-D inputs (one with a transposed weight), a batched
    product of two 3-D values and their gradients, trained with Adam."""
    g = gc.Graph("batched_linear", dtype=dtype, seed=3)
    x = g.input("x", (None, 3, 4))
    h = gc.tanh(gc.nn.linear(x, 5, name="l1"))
    u = gc.reshape(gc.nn.linear(h, 4, name="l2"), (-1, 3, 2, 2))
    v = gc.nn.linear(u, 3, name="l3") @ gc.transpose(g.param("t", np.ones((6, 3)) / 5))
    att = gc.softmax(h @ gc.transpose(h, (0, 2, 1)), axis=-1) @ h
    loss = gc.mean(gc.square(v)) + gc.mean(att)
    return build_program([loss], gc.optim.Adam(1e-2), [], {})


def batched_products(graph: Graph) -> int:
    """Live matrix products with an operand of rank 3 or more and a 2-D one."""
    live = ancestors(graph, list(graph.outputs) + [n for _, n in graph.updates])
    return sum(1 for n in graph.nodes if n.op == "matmul" and n.id in live
               and sorted(len(graph.nodes[i].shape) >= 3 for i in n.inputs) == [False, True])


def summed_products(graph: Graph) -> int:
    """Live weight gradients of linear layers on batched input computed as a batched
    product summed over its batch axes."""
    live = ancestors(graph, list(graph.outputs) + [n for _, n in graph.updates])
    return sum(1 for n in graph.nodes if n.op == "sum" and n.id in live
               and graph.nodes[n.inputs[0]].op == "matmul" and len(n.shape) == 2
               and n.attrs["axes"] == tuple(range(len(graph.nodes[n.inputs[0]].shape) - 2)))


def test_flatten_matmuls_makes_2d_products_with_the_same_values() -> None:
    graph = optimize(batched_linear_program())
    lowered = optimize(graph, LOWERING_CPU)
    verify(lowered)
    assert batched_products(graph) > 0
    assert batched_products(lowered) == 0, "a product of a batch by a matrix is left"
    assert summed_products(graph) == 4 and summed_products(lowered) == 0
    assert count_live(lowered, "matmul") == count_live(graph, "matmul")
    feeds = make_feeds(graph)
    # only the order of the sums differs: float64 rounding, never more
    for got, want in zip(results(lowered, feeds), results(graph, feeds)):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_flatten_matmuls_leaves_batched_products_alone() -> None:
    g = gc.Graph("bmm", dtype="float64")
    a = g.input("a", (None, 3, 4))
    b = g.input("b", (None, 4, 2))
    out = program_with_outputs([a @ b, gc.sum(gc.transpose(a, (0, 2, 1)) @ a, axis=1)])
    lowered = flatten_matmuls(out)
    assert [n.op for n in lowered.nodes] == [n.op for n in out.nodes]


# -- 2. each pass does what its docstring says -------------------------------------------------

def test_cse_merges_duplicates_but_not_leaves() -> None:
    g = gc.Graph("cse", dtype="float64")
    x = g.input("x", (None, 3))
    x2 = g.input("x2", (None, 3))
    p1 = g.param("p1", np.ones(3))
    p2 = g.param("p2", np.ones(3))
    a = gc.exp(x) * g.const(2.0)
    b = gc.exp(x) * g.const(2.0)
    other_axis = gc.sum(x, axis=0) + gc.sum(x, axis=1, keepdims=True)
    out = program_with_outputs([a + b + p1 + p2 + x2, other_axis])
    merged = eliminate_common_subexpressions(out)
    assert count(out, "exp") == 2 and count(merged, "exp") == 1
    assert count(out, "mul") == 2 and count(merged, "mul") == 1
    consts = [n for n in merged.nodes if n.op == "const" and n.attrs["value"].item() == 2.0]
    assert len(consts) == 1
    assert count(merged, "sum") == 2, "sums over different axes are different"
    assert count(merged, "input") == 2 and count(merged, "param") == 2
    feeds = make_feeds(out)
    assert_bitwise_equal(results(merged, feeds), results(out, feeds), "cse")


def test_dce_drops_unused_nodes_and_keeps_inputs() -> None:
    g = gc.Graph("dce", dtype="float64")
    x = g.input("x", (None, 3))
    g.input("never_used", (4,))
    used = gc.tanh(x) * 2.0
    gc.exp(x) + gc.sigmoid(used)  # dead
    out = program_with_outputs([used])
    kept = eliminate_dead_code(out)
    assert count(out, "exp") == 1 and count(kept, "exp") == 0
    assert count(kept, "sigmoid") == 0 and count(kept, "tanh") == 1
    assert sorted(n.name for n in kept.nodes if n.op == "input") == ["never_used", "x"]
    live = ancestors(kept, kept.outputs)
    assert all(n.id in live or n.op == "input" for n in kept.nodes)


def test_dce_keeps_what_updates_need() -> None:
    graph = program("mlp_adam")
    kept = eliminate_dead_code(graph)
    roots = list(kept.outputs) + [n for _, n in kept.updates]
    needed = ancestors(kept, roots)
    assert {n.id for n in kept.nodes if n.op != "input"} <= needed
    assert {n for n, _ in kept.updates} == {n for n, _ in graph.updates}
    assert count(kept, "state") == count(graph, "state") == 2 * count(graph, "param")


def test_simplify_folds_constants() -> None:
    g = gc.Graph("fold", dtype="float64")
    x = g.input("x", (None, 2))
    c = gc.exp(g.const(np.array([0.0, 1.0]))) * g.const(2.0) + g.const(1.0)
    out = program_with_outputs([x * c])
    s = simplify(out)
    assert count(s, "exp") == 0 and count(s, "add") == 0
    assert [n.op for n in s.nodes if n.op not in LEAVES] == ["mul"]
    folded = [n for n in s.nodes if n.op == "const" and n.shape == (2,)]
    assert any(np.array_equal(n.attrs["value"], np.exp([0.0, 1.0]) * 2.0 + 1.0)
               for n in folded)
    assert all(not n.attrs["value"].flags.writeable for n in s.nodes if n.op == "const")


def test_simplify_does_not_fold_huge_constants() -> None:
    g = gc.Graph("huge", dtype="float32")
    x = g.input("x", (None, 1))
    big = gc.exp(g.const(np.zeros((300, 300))))  # 90000 elements > the folding limit
    out = program_with_outputs([x * gc.sum(big)])
    assert count(simplify(out), "exp") == 1


@pytest.mark.parametrize(("build", "removed"), [
    (lambda x: x * 1.0, "mul"),
    (lambda x: 1.0 * x, "mul"),
    (lambda x: x + 0.0, "add"),
    (lambda x: 0.0 + x, "add"),
    (lambda x: x - 0.0, "sub"),
    (lambda x: x / 1.0, "div"),
    (lambda x: gc.neg(gc.neg(x)), "neg"),
    (lambda x: gc.stop_gradient(x), "stop_gradient"),
    (lambda x: gc.transpose(gc.transpose(x)), "transpose"),
    (lambda x: gc.expand_dims(gc.squeeze(x[:, :1], 1), 1), "expand_dims"),
])
def test_simplify_removes_identities(build: Callable[[gc.Value], gc.Value],
                                     removed: str) -> None:
    g = gc.Graph("identity", dtype="float64")
    x = g.input("x", (3, 4))
    value = build(x)
    out = program_with_outputs([gc.tanh(value)])
    assert count_live(out, removed) >= 1
    s = simplify(out)
    assert count_live(s, removed) == 0, gc.format_graph(s)
    feeds = make_feeds(out)
    assert_bitwise_equal(results(s, feeds), results(out, feeds), removed)


def test_simplify_keeps_identities_that_change_shape_or_dtype() -> None:
    g = gc.Graph("keep", dtype="float64")
    x = g.input("x", (4,))
    widened = x * g.const(np.ones((1, 1)))  # (1, 4): not x's shape
    shifted = x + g.const(np.zeros((2, 1)))  # (2, 4)
    out = program_with_outputs([widened, shifted])
    s = simplify(out)
    assert count(s, "mul") == 1 and count(s, "add") == 1
    feeds = make_feeds(out)
    got = results(s, feeds)
    assert got[0].shape == (1, 4) and got[1].shape == (2, 4)


def test_simplify_reads_a_spread_one_element_value_at_its_source() -> None:
    g = gc.Graph("spread", dtype="float64")
    x = g.input("x", (None, 3))
    s = gc.sum(x) * 0.5                                          # one element, computed
    spread = gc.reshape(gc.broadcast_to(gc.reshape(s, (1,)), (4,)), (4, 1))
    widened = gc.broadcast_to(gc.reshape(s, (1, 1)), (3, 1))
    row = g.input("row", (1, 5))
    out = program_with_outputs([x * gc.broadcast_to(s, (3,)),   # read s: same shape
                                gc.exp(spread),                  # unary: the shape would change
                                widened * row])                  # widened gives the result its rows
    simplified = simplify(out)
    first = simplified.nodes[simplified.outputs[0]]
    assert first.op == "mul" and all(
        simplified.nodes[i].op != "broadcast_to" for i in first.inputs)
    assert simplified.nodes[simplified.outputs[1]].shape == (4, 1)
    third = simplified.nodes[simplified.outputs[2]]
    assert third.shape == (3, 5) and any(
        simplified.nodes[i].op == "broadcast_to" for i in third.inputs)
    feeds = make_feeds(out)
    assert_bitwise_equal(results(simplified, feeds), results(out, feeds), "spread")


# -- 3. fusion -------------------------------------------------------------------------------

def _fused(name: str) -> tuple[Graph, list]:
    graph = optimize(program(name))
    return graph, fuse(graph)


def _descendants(graph: Graph, users: dict[int, list[int]], start: set[int]) -> set[int]:
    seen: set[int] = set()
    stack = [u for s in start for u in users[s]]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(users[n])
    return seen


def check_fusion(graph: Graph, groups: list) -> None:
    # partition of the compute nodes whose values are read (a node used only for its
    # shape is not run)
    owner: dict[int, int] = {}
    for k, group in enumerate(groups):
        assert group.nodes == sorted(group.nodes)
        for n in group.nodes:
            assert n not in owner, f"node {n} in two groups"
            owner[n] = k
    read = values_read(graph)
    assert set(owner) == {n.id for n in graph.nodes if n.op not in LEAVES and n.id in read}
    users: dict[int, list[int]] = {n.id: [] for n in graph.nodes}
    for n in graph.nodes:
        for i in set(data_inputs(n)):
            users[i].append(n.id)
    for k, group in enumerate(groups):
        members = set(group.nodes)
        # convex: nothing outside is both downstream and upstream of the group (through
        # the values read: a shape reference orders nothing)
        down = _descendants(graph, users, members) - members
        up = values_read(graph, list(members)) - members
        assert not (down & up), f"group {k} ({group.kind}) is not convex: {sorted(down & up)}"
        # dependency order: every operand is a leaf, a member or made by an earlier group
        for n in group.nodes:
            for i in data_inputs(graph.nodes[n]):
                if graph.nodes[i].op in LEAVES or i in members:
                    continue
                assert owner[i] < k, f"group {k} reads node {i} of later group {owner[i]}"
    # output phase first; an update-phase group never feeds an output-phase group
    phases = [g.phase for g in groups]
    assert phases == sorted(phases)
    needed_for_outputs = ancestors(graph, graph.outputs)
    for group in groups:
        assert (group.phase == 1) == any(n in needed_for_outputs for n in group.nodes)


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_fusion_groups_partition_convex_and_in_dependency_order(name: str) -> None:
    check_fusion(*_fused(name))


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_loop_groups_share_one_iteration_shape(name: str) -> None:
    graph, groups = _fused(name)
    loops = [g for g in groups if g.kind == "loop"]
    assert loops
    for group in loops:
        root = graph.nodes[group.root]
        reduce_root = OPS[root.op].kind == "reduce"
        space = graph.nodes[root.inputs[0]].shape if reduce_root else root.shape
        for n in group.nodes[:-1] if reduce_root else group.nodes:
            node = graph.nodes[n]
            assert is_loop_op(node), f"{node.op} in a loop group"
            assert node.shape == space, (node.op, node.shape, space)
        members = set(group.nodes)
        roots = set(graph.outputs) | {n for _, n in graph.updates}
        for n in group.nodes:
            used_outside = any(u not in members for u in ancestors_users(graph, n))
            assert (n in group.stores) == (used_outside or n in roots)


def ancestors_users(graph: Graph, nid: int) -> list[int]:
    """The nodes that run and read `nid`'s value."""
    read = values_read(graph)
    return [n.id for n in graph.nodes if nid in data_inputs(n) and n.id in read]


@pytest.mark.parametrize("batch", [2, None])
def test_a_value_read_only_for_its_shape_gets_no_group(batch: int | None) -> None:
    """The gradient of sum(f(x)) reads f(x) only for its shape (broadcast_like's `ref`):
    f gets no kernel (a library call scheduled anyway wrote into storage never planned)."""
    g = Graph("shape_only", dtype="float64")
    y = g.input("y", (batch, 1, 4, 4))
    pooled = gc.nn.avg_pool2d(y, 2)
    graph = optimize(program_with_outputs(gc.grad(gc.sum(pooled), [y])))
    groups = fuse(graph)
    check_fusion(graph, groups)
    ops = {graph.nodes[n].op for group in groups for n in group.nodes}
    assert "avg_pool2d" not in ops and "avg_pool2d_grad" in ops


def test_fusion_of_a_graph_whose_greedy_groups_once_formed_a_cycle() -> None:
    """Regression: two groups A and B, each convex, with A -> B through one node pair and
    B -> A through another, made the scheduler fail ("fusion groups form a cycle")."""
    graph, groups = _fused("gradient_only")  # raised before the fix
    assert sum(g.kind == "loop" for g in groups) >= 2
    check_fusion(graph, groups)


# -- 4. memory plan ----------------------------------------------------------------------------

def _storage(graph: Graph, groups: list) -> dict[int, int]:
    """Node -> the node whose buffer holds its data (views share their source's buffer)."""
    root: dict[int, int] = {}
    for group in groups:
        if group.kind == "view":
            src = data_inputs(graph.nodes[group.root])[0]
            root[group.root] = root.get(src, src)
    return root


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_memory_plan_never_shares_a_slot_between_live_values(name: str) -> None:
    graph, groups = _fused(name)
    plan = plan_memory(graph, groups)
    storage = _storage(graph, groups)
    position = {n: k for k, g in enumerate(groups) for n in g.nodes}
    end = len(groups)
    # live interval of each buffer: from the group that writes it to the last group that
    # reads it (through any view), or the end of the step for outputs and updates
    last = {}
    for k, group in enumerate(groups):
        for i in group.loads:
            r = storage.get(i, i)
            last[r] = max(last.get(r, -1), k)
    for nid in list(graph.outputs) + [n for _, n in graph.updates]:
        last[storage.get(nid, nid)] = end
    intervals = {nid: (position[nid], max(last.get(nid, position[nid]), position[nid]))
                 for nid in plan.slot}
    stored = {n for g in groups if g.kind not in ("view", "shape") for n in g.stores}
    assert stored == set(plan.slot) | set(plan.inplace)
    by_slot: dict[int, list[int]] = {}
    for nid, s in plan.slot.items():
        assert 0 <= s < plan.slots
        by_slot.setdefault(s, []).append(nid)
    for s, nids in by_slot.items():
        for i, a in enumerate(nids):
            for b in nids[i + 1:]:
                (a0, a1), (b0, b1) = intervals[a], intervals[b]
                assert a1 < b0 or b1 < a0, (
                    f"slot {s}: %{a} live {intervals[a]} and %{b} live {intervals[b]}")
                na, nb = graph.nodes[a], graph.nodes[b]
                assert (na.shape, na.dtype) == (nb.shape, nb.dtype)


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_in_place_updates_never_destroy_a_value_still_read(name: str) -> None:
    graph, groups = _fused(name)
    plan = plan_memory(graph, groups)
    storage = _storage(graph, groups)
    position = {n: k for k, g in enumerate(groups) for n in g.nodes}
    leaf = {n.name: n.id for n in graph.nodes if n.op in ("param", "state")}
    updates = dict((nid, name) for name, nid in graph.updates)
    for nid, target in plan.inplace.items():
        assert updates[nid] == target
        k = position[nid]
        assert groups[k].kind == "loop"
        for j, group in enumerate(groups):
            reads = [i for i in group.loads if storage.get(i, i) == leaf[target]]
            if j > k:
                assert not reads, f"{target} is overwritten by group {k}, read by group {j}"
            if j == k:
                assert reads in ([], [leaf[target]]), f"{target} read through a view while written"
    if name.startswith("mlp_") and graph.updates:
        # ordinary optimizers update every parameter and moment in place
        assert len(plan.inplace) == len(graph.updates)


def test_updates_not_written_in_place_survive_to_the_end() -> None:
    """Regression: an update computed by a matrix product is copied into its parameter
    after the last kernel; its buffer used to be handed to a later value first."""
    graph, groups = _fused("update_ends_in_matmul")
    plan = plan_memory(graph, groups)
    copied = [nid for _, nid in graph.updates if nid not in plan.inplace]
    assert len(copied) == 2
    position = {n: k for k, g in enumerate(groups) for n in g.nodes}
    for nid in copied:
        later = [n for n, s in plan.slot.items() if s == plan.slot[nid] and n != nid
                 and position[n] > position[nid]]
        assert not later, f"update %{nid} shares its slot with later values {later}"


def test_update_reading_its_parameter_transposed_is_not_in_place() -> None:
    graph, groups = _fused("update_reads_transposed")
    plan = plan_memory(graph, groups)
    names = {name for name in plan.inplace.values()}
    assert "a" not in names and "b" not in names


@pytest.mark.parametrize("name", ["mlp_adam", "views", "gradient_only"])
def test_passes_renumber_gradient_provenance(name: str) -> None:
    """A backward node names the forward node whose rule built it by id; after a pass
    renumbers the nodes it must still name that node (an `exp vjp` node points at an
    exp), or nothing if the forward node was dropped."""
    graph = program(name)
    out = optimize(graph)
    checked = 0
    for node in out.nodes:
        if node.provenance is None:
            continue
        forward = out.nodes[node.provenance.forward]
        assert forward.id <= node.id
        rule = node.provenance.rule
        if rule.endswith(" vjp"):
            assert forward.op == rule.split()[0], (node, forward, rule)
            checked += 1
    assert checked >= 10
    assert "backward:" in gc.format_graph(out)
