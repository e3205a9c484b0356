"""Every op of the library on the CUDA target (simulator) against the numpy interpreter.

The op table is tests/test_compile_ops.py's (the CPU target's): for each group, one program
outputs every op's value and the gradients of a weighted sum of them, compiled with
target="cuda" and run at two batch sizes (one plan each, no recompile). So every forward
and backward kernel kind runs: fused elementwise loops, both reduction kernels (tree and
thread-per-row, picked by row length), the tiled matmul with transposed, batched and
broadcast operands (including the copy of a batch broadcast that does not flatten), views,
take / take_grad, concat, slice_grad.

Tolerances are test_compile_ops.py's (float32 rtol 2e-5 / atol 1e-5, float64 1e-12): the
simulator evaluates the device math in Python (`math.exp` of the float32 value, rounded to
float32: <= 0.5 ulp) and sums in a different order than numpy (per-thread strides, then a
fixed tree), ~1e-7 relative in float32 and ~1e-16 in float64; on a GPU libdevice's float32
functions are <= 2 ulp, still far inside the bounds.
"""

from __future__ import annotations

import functools
import zlib
from types import SimpleNamespace

import numpy as np
import pytest

import graphc as gc
import graphc.backends.cuda.codegen as cudagen
from graphc.ir import ancestors
from graphc.ops import OPS
from tests.test_compile_ops import GROUPS, _feeds, _mismatch, _weight

DTYPES = ("float32", "float64")
CASES = [(group, op) for group, spec in GROUPS.items() for op in spec.ops]


@functools.cache
def run_group(group: str, dtype: str) -> SimpleNamespace:
    try:
        return _run_group(group, dtype)
    except Exception as err:  # reported by every test of the group
        return SimpleNamespace(error=err)


def _run_group(group: str, dtype: str) -> SimpleNamespace:
    spec = GROUPS[group]
    rng = np.random.default_rng(zlib.crc32(f"{group}/{dtype}".encode()))
    graph = gc.Graph(f"cuda_ops_{group}", dtype=dtype)
    values = {name: graph.input(name, shape, dtype=dt) for name, (shape, dt) in
              spec.inputs.items()}
    v = SimpleNamespace(**values)
    outputs, terms = [], []
    for build in spec.ops.values():
        out = build(v)
        outputs.append(out)
        if gc.ir.is_float(out.dtype):
            terms.append(gc.sum(out * _weight(graph, out, rng)))
    needed = ancestors(graph, [t.id for t in terms])
    wrt = [x for x in values.values() if gc.ir.is_float(x.dtype) and x.id in needed]
    grads = gc.grad(functools.reduce(gc.add, terms), wrt)
    compiled = gc.compile(outputs + grads, target="cuda")
    run = SimpleNamespace(error=None, values={}, grads={}, graph=graph,
                          compiled=compiled)
    for n in spec.batches:
        feeds = _feeds(spec, n, dtype)
        got = compiled(**feeds)
        want = gc.evaluate(outputs + grads, feeds)
        for k, name in enumerate(spec.ops):
            run.values.setdefault(name, []).append((f"batch {n}", got[k], want[k]))
        for k, x in enumerate(wrt):
            j = len(outputs) + k
            run.grads.setdefault(x.name, []).append((f"batch {n}", got[j], want[j]))
    return run


def _group_run(group: str, dtype: str) -> SimpleNamespace:
    run = run_group(group, dtype)
    if run.error is not None:
        raise run.error
    return run


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("group", "op"), CASES, ids=[f"{g}-{o}" for g, o in CASES])
def test_cuda_op_value_matches_interpreter(group: str, op: str, dtype: str) -> None:
    for what, got, want in _group_run(group, dtype).values[op]:
        problem = _mismatch(got, want, dtype, f"{op} ({what})")
        assert problem is None, problem


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", list(GROUPS))
def test_cuda_gradients_match_interpreter(group: str, dtype: str) -> None:
    run = _group_run(group, dtype)
    assert run.grads
    for x, entries in run.grads.items():
        for what, got, want in entries:
            problem = _mismatch(got, want, dtype, f"d loss / d {x} ({what})")
            assert problem is None, problem


def conv_program(dtype: str) -> tuple[gc.Value, list[gc.Value]]:
    """Convolution (stride, padding) and both poolings, with first and second order
    gradients: every conv / pooling kernel and gradient kernel."""
    g = gc.Graph(f"cuda_conv_{dtype}", seed=0, dtype=dtype)
    x = g.input("x", (None, 2, 7, 6))
    c1 = gc.nn.conv2d(x, 3, 3, stride=(2, 1), padding=(1, 2), name="c1")
    pooled = gc.nn.max_pool2d(gc.relu(c1), 2, stride=1)
    mean = gc.nn.avg_pool2d(c1, (2, 3), stride=(1, 2))
    loss = gc.sum(pooled * pooled) + gc.sum(mean) * 0.5
    grads = gc.grad(loss, [x, *g.params])
    second = gc.grad(gc.sum(grads[0] * grads[0]), g.params)  # grad-of-grad kernels
    return x, [c1, pooled, mean, *grads, *second]


@pytest.mark.parametrize("dtype", DTYPES)
def test_convolution_and_pooling_match_the_interpreter(dtype: str) -> None:
    _, outputs = conv_program(dtype)
    f = gc.compile(outputs, target="cuda")
    rng = np.random.default_rng(5)
    for n in (2, 1):
        feeds = {"x": rng.standard_normal((n, 2, 7, 6)).astype(dtype)}
        for k, (got, want) in enumerate(zip(f(**feeds), gc.evaluate(outputs, feeds))):
            problem = _mismatch(got, want, dtype, f"output {k} (batch {n})")
            assert problem is None, problem
    launched = {line.split()[0] for plan in f._plans.values() for line in plan.launched}
    calls = {name for name, op in OPS.items() if op.kind == "call"}
    assert calls <= launched, sorted(calls - launched)


@pytest.mark.parametrize("dtype", DTYPES)
def test_grouped_dilated_conv_conv1d_and_padded_pools_match_the_interpreter(dtype: str) -> None:
    """The composites over the convolution and pooling kernels (a zero-spread weight,
    channel slices, padding) and their gradients."""
    g = gc.Graph(f"cuda_conv_composites_{dtype}", seed=0, dtype=dtype)
    x = g.input("x", (None, 4, 5, 4))
    s = g.input("s", (None, 2, 6))
    h = gc.nn.conv2d(x, 2, 2, padding=1, dilation=(2, 1), groups=2, name="c")
    t = gc.nn.conv1d(s, 2, 2, stride=2, dilation=2, name="d")
    pooled = gc.nn.max_pool2d(h, 2, stride=1, padding=1) + gc.nn.avg_pool2d(h, 2, 1, 1)
    loss = gc.sum(pooled * pooled) + gc.sum(t * t)
    outputs = [h, t, pooled, *gc.grad(loss, [x, s, *g.params])]
    f = gc.compile(outputs, target="cuda")
    rng = np.random.default_rng(6)
    for n in (2, 1):
        feeds = {"x": rng.standard_normal((n, 4, 5, 4)).astype(dtype),
                 "s": rng.standard_normal((n, 2, 6)).astype(dtype)}
        for k, (got, want) in enumerate(zip(f(**feeds), gc.evaluate(outputs, feeds))):
            problem = _mismatch(got, want, dtype, f"output {k} (batch {n})")
            assert problem is None, problem


def test_every_library_op_runs_on_cuda() -> None:
    """Every primitive but the compile-time mode switch runs in the table, the convolution
    program above, (dropout_keep) test_sim_training.py's layer test or (scan, scan_out)
    test_sim_scan.py."""
    used = {n.op for dtype in DTYPES for group in GROUPS
            for n in _group_run(group, dtype).graph.nodes}
    used |= {n.op for n in conv_program("float32")[0].graph.nodes}
    skipped = {name for name, op in OPS.items() if op.kind == "mode"}
    missing = sorted(set(OPS) - used - skipped - {"dropout_keep", "scan", "scan_out"})
    assert not missing, f"ops never run on the CUDA target: {missing}"


def test_both_reduction_kernels_and_the_batch_copy_ran() -> None:
    """The table's shapes reach the tree reduction, the row reduction and the copy of a
    matmul operand whose broadcast batch does not flatten (simulator configuration)."""
    launched = {line.split()[0] for dtype in DTYPES for group in GROUPS
                for plan in _group_run(group, dtype).compiled._plans.values()
                for line in plan.launched}
    for what in ("elementwise", "reduce-tree", "reduce-rows", "matmul", "matmul-batch-copy",
                 "take", "take_grad", "concat", "fill", "slice_grad", "reshape-copy"):
        assert what in launched, f"no {what} launch in the op table: {sorted(launched)}"


@pytest.mark.parametrize("small", [0, 10 ** 9], ids=["tree-only", "rows-only"])
def test_reductions_in_either_kernel(small: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each reduction of the table's reduce group through one kernel kind only (and other
    block sizes): both agree with the interpreter."""
    config = cudagen.LaunchConfig(threads=3, reduce_threads=2, tile=2, max_blocks=3,
                                  small_reduction=small)
    monkeypatch.setattr(cudagen, "default_config", lambda: config)
    spec = GROUPS["reduce"]
    graph = gc.Graph("cuda_reduce_variant", dtype="float32")
    values = {name: graph.input(name, shape, dtype=dt) for name, (shape, dt) in
              spec.inputs.items()}
    v = SimpleNamespace(**values)
    outputs = [build(v) for build in spec.ops.values()]
    loss = gc.sum(outputs[0]) + gc.sum(outputs[3] * outputs[3])
    outputs += gc.grad(loss, [values["x"], values["y"]])
    compiled = gc.compile(outputs, target="cuda")
    feeds = _feeds(spec, 3, "float32")
    for name, got, want in zip(list(spec.ops) + ["dx", "dy"], compiled(**feeds),
                               gc.evaluate(outputs, feeds)):
        problem = _mismatch(got, want, "float32", name)
        assert problem is None, problem
