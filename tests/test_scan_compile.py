"""gc.scan compiled for the CPU against the interpreter: forward and gradients (reverse
scans, tuple and integer carries, nested scans, run-time lengths), a training step with
Adam, the fallback of the batch-sharded step, and a compile that does not grow with T.

Tolerances: float64 1e-12 absolute on O(1) values (the compiled kernels and numpy round the
same elementary ops, but the fused loops and BLAS may order sums differently); float32 2e-5
(T chained steps of float32 rounding, eps 6e-8, amplified by the recurrence)."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.backends.cpu.runtime import ProgramFunction

TOL = {"float64": 1e-12, "float32": 2e-5}


def _rnn(dtype: str, length: int | None = 6, reverse: bool = False):
    g = gc.Graph(dtype=dtype)
    x = g.input("x", (length, 3, 4))
    h0 = g.input("h0", (3, 5))
    rng = np.random.default_rng(0)
    wx = g.param("wx", rng.normal(size=(4, 5)) * 0.5)
    wh = g.param("wh", rng.normal(size=(5, 5)) * 0.5)
    b = g.param("b", rng.normal(size=(5,)) * 0.1)

    def cell(h, xt):
        new = gc.tanh(xt @ wx + h @ wh + b)
        return new, gc.sum(new * new, axis=1)

    h_final, ys = gc.scan(cell, h0, x, reverse=reverse)
    return g, h_final, ys


def _feeds(dtype: str, length: int = 6, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(length, 3, 4)).astype(dtype),
            "h0": rng.normal(size=(3, 5)).astype(dtype)}


def _compare(outputs: list[gc.Value], feeds: dict, dtype: str) -> None:
    step = gc.compile(outputs)
    assert isinstance(step, ProgramFunction)
    got = step(**feeds)
    want = gc.evaluate(outputs, feeds)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reverse", [False, True])
def test_compiled_scan_and_gradients_match_interpreter(dtype: str, reverse: bool) -> None:
    g, h_final, ys = _rnn(dtype, reverse=reverse)
    loss = gc.sum(h_final) + gc.sum(ys * ys)
    grads = gc.grad(loss, [g["x"], g["h0"]] + g.params)
    _compare([h_final, ys, loss] + grads, _feeds(dtype), dtype)


def test_run_time_length_and_two_lengths_in_one_function() -> None:
    g, h_final, ys = _rnn("float64", length=None)
    grads = gc.grad(gc.sum(ys), g.params)
    step = gc.compile([h_final, ys] + grads)
    for length in (4, 9, 0):
        feeds = _feeds("float64", length)
        for a, b in zip(step(**feeds), gc.evaluate([h_final, ys] + grads, feeds)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_tuple_and_integer_carries_nested_scan_and_strided_operands() -> None:
    g = gc.Graph(dtype="float64")
    x = g.input("x", (3, 4, 2))
    k = g.input("k", (4,), dtype="int64")
    w = g.param("w", np.array([0.7, -0.4]))

    def outer(carry, xs):
        acc, count = carry
        row, kt = xs

        def inner(c, v):
            return gc.tanh(c * w + v), c * 2.0

        last, doubled = gc.scan(inner, acc, row)
        return (last, count + kt), (gc.sum(last), doubled.T)

    (final, count), (sums, doubled) = gc.scan(
        outer, (g.const(np.zeros(2)), g.const(0, dtype="int64")),
        (gc.transpose(x, (1, 0, 2)), k))
    loss = gc.sum(sums) + gc.sum(final * final) + gc.sum(doubled)
    grads = gc.grad(loss, [x, w])
    rng = np.random.default_rng(2)
    feeds = {"x": rng.normal(size=(3, 4, 2)), "k": np.array([3, 1, 4, 1])}
    _compare([final, count, sums, doubled, loss] + grads, feeds, "float64")


def test_training_step_with_adam_matches_interpreter() -> None:
    """A few Adam steps of a scan RNN regression, compiled, against the same updates
    computed from interpreted gradients."""
    g, h_final, ys = _rnn("float64")
    target = g.input("target", (6, 3))
    loss = gc.mean(gc.square(ys - target)) + gc.mean(gc.square(h_final))
    feeds = dict(_feeds("float64"), target=np.random.default_rng(3).normal(size=(6, 3)))
    start = {k: v.copy() for k, v in g.param_values.items()}
    grads = gc.grad(loss, g.params)
    expected, m, v = dict(start), {}, {}
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    for t in range(1, 4):
        saved = dict(g.param_values)
        g.param_values.update(expected)
        values = gc.evaluate(grads, feeds)
        g.param_values.update(saved)
        for p, gv in zip(g.params, values):
            m[p.name] = b1 * m.get(p.name, 0) + (1 - b1) * gv
            v[p.name] = b2 * v.get(p.name, 0) + (1 - b2) * gv * gv
            mhat, vhat = m[p.name] / (1 - b1 ** t), v[p.name] / (1 - b2 ** t)
            expected[p.name] = expected[p.name] - lr * mhat / (np.sqrt(vhat) + eps)
    step = gc.compile(loss, optimizer=gc.optim.Adam(lr))
    losses = [step(**feeds) for _ in range(3)]
    assert losses[2] < losses[0]
    for name, want in expected.items():
        np.testing.assert_allclose(step.params[name], want, rtol=0, atol=1e-10)


def test_sharded_step_runs_a_scan_in_the_program_backend(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setenv("GRAPHC_SHARDS", "2")
    _g, h_final, ys = _rnn("float64")
    step = gc.compile([h_final, ys])
    assert isinstance(step, ProgramFunction)
    assert not step.program.shards.enabled
    assert "contains a scan" in step.program.shards.reason
    feeds = _feeds("float64")
    for a, b in zip(step(**feeds), gc.evaluate([h_final, ys], feeds)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_compile_time_does_not_grow_with_length() -> None:
    """The body is compiled once: T = 512 compiles the same kernels as T = 16 and the
    program has as many calls (benchmarks/compile_bench.py measures the time itself)."""
    calls, kernels = {}, {}
    for length in (16, 512):
        _g, h_final, ys = _rnn("float32", length=length)
        loss = gc.sum(h_final) + gc.sum(ys)
        step = gc.compile(loss, optimizer=gc.optim.Adam(1e-3))
        calls[length] = len(step.code.instructions)
        kernels[length] = sorted(k.module for k in step.kernels)
        step(**_feeds("float32", length))
    assert calls[16] == calls[512]
    assert kernels[16] == kernels[512]


def test_scan_is_its_own_fusion_group_and_its_results_get_buffers() -> None:
    """Fusion puts a scan and its scan_out results in one group of their own (elementwise
    producers and consumers stay outside); memory planning gives every stored result a
    buffer of its own while the group runs, none to the scan node itself."""
    _g, h_final, ys = _rnn("float64")
    loss = gc.sum(gc.exp(h_final)) + gc.sum(ys)
    step = gc.compile(loss, optimizer=gc.optim.Adam(1e-3))
    program = step.program
    scan_groups = [grp for grp in program.groups if grp.kind == "scan"]
    assert len(scan_groups) == 2   # the forward scan and its gradient's reverse scan
    for grp in scan_groups:
        ops = [program.nodes[n].op for n in grp.nodes]
        assert ops[0] == "scan" and set(ops[1:]) == {"scan_out"}
        assert all(program.nodes[n].inputs == (grp.nodes[0],) for n in grp.nodes[1:])
        assert grp.nodes[0] not in program.memory.slot
        slots = [program.memory.slot[n] for n in grp.stores]
        assert len(set(slots)) == len(slots)
        loads = {program.memory.slot.get(n) for n in grp.loads} - {None}
        assert not loads & set(slots)
    for grp in program.groups:
        if grp.kind != "scan":
            assert all(program.nodes[n].op not in ("scan", "scan_out") for n in grp.nodes)
