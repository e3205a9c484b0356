"""Every op of the library, compiled (Numba, CPU) against the numpy interpreter.

Ops are grouped; one inference program per (group, dtype) outputs every op's value and the
gradients of the group loss L = sum_k sum(op_k * w_k) (w_k a random constant per op) with
respect to every float input (`gc.compile([*values, *gc.grad(L, inputs)])`). Every op's
backward code contributes to those gradients with its own weights; when they mismatch, the
failing test compiles each op's own gradient to name the culprit. Both the compiled program
and `gc.evaluate` run the very same graph on the very same fed arrays, so any difference
comes from code generation, fusion, memory planning or the scalar kernels.

Grouping bounds Numba compile time (~0.15-0.3 s per generated kernel, whatever the program
it sits in). The value tests are still one per op, so a failure names the op. Most inputs
have a run-time batch axis (None) and every program is run at two batch sizes (no recompile
in between), exercising the run-time size slots. Input domains keep each op smooth where
evaluated (log/sqrt/pow bases >= 0.5, relu/abs/sign inputs >= 0.2 away from 0, no ties for
maximum/minimum/max/min), so tiny rounding differences cannot flip a branch.

Tolerances (np.testing.assert_allclose: |got - want| <= atol + rtol * |want|):
* float64: rtol = atol = 1e-12. The compiled float64 code calls libm (`math.exp`, ...)
  where numpy calls its own float64 loops (both <= 1 ulp, 1.1e-16), and fastmath
  'reassoc'/'contract' reorders sums and fuses multiply-adds; values here are O(1..50), so
  a few ulp of a few dozen roundings is ~1e-14 absolute. Measured worst case: 1.8e-15
  absolute, 0.2% of the tolerance.
* float32: rtol = 2e-5, atol = 1e-5. Compiled float32 exp/log/tanh/sigmoid are the
  polynomial kernels of kernels/cpu/fastmath.py (<= 3 ulp, 2e-7 relative) where numpy uses
  correctly rounded-ish libm; reductions are summed in a different order (sequential /
  vectorised with reassoc vs numpy's pairwise) and FMA contraction changes roundings. Errors
  compound through composites and their gradients (gelu, softmax, logsumexp, cross
  entropy: 5-10 float32 ops deep, with cancellation in x - max and p - onehot, hence the
  absolute floor). Measured worst case: 3.8e-6 absolute (a gradient summing ~35 op
  contributions), 4% of the tolerance; a wrong kernel (wrong index, broadcast or constant)
  is off by O(1).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

import graphc as gc
from graphc.backends.cpu.compile_kernels import compile_count
from graphc.ir import ancestors

TOL = {"float32": {"rtol": 2e-5, "atol": 1e-5}, "float64": {"rtol": 1e-12, "atol": 1e-12}}
DTYPES = ("float32", "float64")
Data = Callable[[np.random.Generator, int], dict[str, np.ndarray]]


def away_from_zero(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Values with 0.2 <= |v| <= 2 (no kinks of relu/abs/sign/leaky_relu nearby)."""
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.2, 2.0, size=shape)


def positive(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.uniform(0.5, 2.5, size=shape)


@dataclass(frozen=True)
class OpGroup:
    """Inputs (name -> (shape, dtype or None for the graph's float dtype)), data for a given
    batch size, and the ops: name -> function of the input Values (a SimpleNamespace)."""

    inputs: dict[str, tuple[tuple, str | None]]
    data: Data
    ops: dict[str, Callable[[SimpleNamespace], gc.Value]]
    batches: tuple[int, ...] = (5, 2)


# -- the op table ------------------------------------------------------------------------

ROW = np.array([0.5, -1.5, 2.0, 0.25])

ELEMENTWISE = OpGroup(
    inputs={"x": ((None, 4), None), "p": ((None, 4), None)},
    data=lambda rng, n: {"x": away_from_zero(rng, n, 4), "p": positive(rng, n, 4)},
    ops={
        "add": lambda v: v.x + v.p,
        "add_broadcast_row": lambda v: v.x + v.x.graph.const(ROW),
        "add_broadcast_column": lambda v: v.x + v.p[:, 1:2],
        "sub": lambda v: v.x - v.p,
        "rsub_scalar": lambda v: 2.0 - v.x,
        "mul": lambda v: v.x * v.p,
        "div": lambda v: v.x / v.p,
        "rdiv_scalar": lambda v: 3.0 / v.p,
        "neg": lambda v: -v.x,
        "pow": lambda v: v.p ** v.x,
        "pow_const_exponent": lambda v: v.x ** 3,
        "pow_const_base": lambda v: gc.pow(v.x.graph.const(1.7), v.x),
        "exp": lambda v: gc.exp(v.x),
        "log": lambda v: gc.log(v.p),
        "sqrt": lambda v: gc.sqrt(v.p),
        "rsqrt": lambda v: gc.rsqrt(v.p),
        "tanh": lambda v: gc.tanh(v.x),
        "sigmoid": lambda v: gc.sigmoid(v.x * 4.0),
        "relu": lambda v: gc.relu(v.x),
        "leaky_relu": lambda v: gc.leaky_relu(v.x, 0.1),
        "abs": lambda v: gc.abs(v.x),
        "square": lambda v: gc.square(v.x),
        "maximum": lambda v: gc.maximum(v.x, v.p - 1.0),
        "minimum": lambda v: gc.minimum(v.x, v.p - 1.0),
        "where": lambda v: gc.where(v.x > 0, v.x, v.p),
        "erf": lambda v: gc.erf(v.x),
        "sign": lambda v: gc.sign(v.x) * v.p,
        "cast_to_int_and_back": lambda v: gc.cast(gc.cast(v.x * 3.0, "int32"), v.x.dtype),
        "cast_between_floats": lambda v: gc.cast(
            gc.cast(v.x, "float64" if v.x.dtype == "float32" else "float32") * 3.0,
            v.x.dtype) * v.p,
        "cast_bool": lambda v: gc.cast(v.x > 0, v.x.dtype) * v.p,
        "greater": lambda v: gc.greater(v.x, v.p - 1.0),
        "less": lambda v: v.x < 0.5,
        "equal": lambda v: gc.equal(v.x, gc.where(v.x > 0, v.x, v.p)),
        "equal_int": lambda v: gc.equal(gc.cast(v.p, "int32"), 1),
        "stop_gradient": lambda v: gc.stop_gradient(v.x) * v.x,
        "sin": lambda v: gc.sin(v.x * 2.0),
        "cos": lambda v: gc.cos(v.x * 2.0),
        "log1p": lambda v: gc.log1p(v.x * 0.4),
        "expm1": lambda v: gc.expm1(v.x),
        "softplus": lambda v: gc.softplus(v.x * 4.0),
        "silu": lambda v: gc.silu(v.x * 2.0),
        "elu": lambda v: gc.elu(v.x, 0.7),
        "clip": lambda v: gc.clip(v.x, -1.0, 1.0),
        "clip_value_bounds": lambda v: gc.clip(v.x, v.p - 2.0, v.p - 1.0),
        "clip_no_upper_bound": lambda v: gc.clip(v.x, 0.5, None),
        "greater_equal": lambda v: v.x >= v.p - 1.0,
        "less_equal": lambda v: gc.less_equal(v.x, 0.5),
        "not_equal": lambda v: v.x != gc.where(v.x > 0, v.x, v.p),
        "maximum_ties": lambda v: gc.maximum(v.x, gc.where(v.x > 0, v.x, v.p)),
        "minimum_ties": lambda v: gc.minimum(v.x, gc.where(v.x > 0, v.x, v.p)),
        "pow_zero_base": lambda v: gc.relu(v.x) ** (v.p + 0.5),
    },
)

REDUCE = OpGroup(
    inputs={"x": ((None, 4), None), "y": ((None, 3, 4), None)},
    data=lambda rng, n: {"x": rng.standard_normal((n, 4)), "y": rng.standard_normal((n, 3, 4))},
    ops={
        "sum_all": lambda v: gc.sum(v.x),
        "sum_axis0": lambda v: gc.sum(v.x, axis=0),
        "sum_axis1_keepdims": lambda v: gc.sum(v.x, axis=1, keepdims=True) * v.x,
        "sum_middle_axis": lambda v: gc.sum(v.y, axis=1),
        "sum_outer_axes_keepdims": lambda v: gc.sum(v.y, axis=(0, 2), keepdims=True),
        "sum_int": lambda v: gc.sum(gc.cast(v.y > 0, "int32"), axis=(1, 2)),
        "mean_all": lambda v: gc.mean(v.y),
        "mean_last_keepdims": lambda v: gc.mean(v.y, axis=-1, keepdims=True) - v.y,
        "max_all": lambda v: gc.max(v.x),
        "max_axis0": lambda v: gc.max(v.x, axis=0),
        "max_middle_keepdims": lambda v: gc.max(v.y, axis=1, keepdims=True),
        "min_axis1": lambda v: gc.min(v.x, axis=1),
        "min_axes12": lambda v: gc.min(v.y, axis=(1, 2)),
        "min_all_keepdims": lambda v: gc.min(v.y, keepdims=True),
    },
)

LINALG = OpGroup(
    inputs={"a": ((None, 4), None), "b": ((4, 3), None), "c": ((None, 2, 3), None),
            "d": ((None, 3, 2), None), "e": ((3, 5), None), "f": ((None, 1, 2, 3), None),
            "h": ((4, 3, 2), None), "q": ((None, 3, 2), None)},
    data=lambda rng, n: {"a": rng.standard_normal((n, 4)), "b": rng.standard_normal((4, 3)),
                         "c": rng.standard_normal((n, 2, 3)),
                         "d": rng.standard_normal((n, 3, 2)),
                         "e": rng.standard_normal((3, 5)),
                         "f": rng.standard_normal((n, 1, 2, 3)),
                         "h": rng.standard_normal((4, 3, 2)),
                         # a run-time batch fed as 1: broadcast against c's
                         "q": rng.standard_normal((1, 3, 2))},
    ops={
        "matmul_2d": lambda v: v.a @ v.b,
        "matmul_batched": lambda v: v.c @ v.d,
        "matmul_batched_by_2d": lambda v: v.c @ v.e,
        "matmul_batch_broadcast_4d": lambda v: v.f @ v.h,
        "matmul_runtime_batch_of_1": lambda v: v.c @ gc.stop_gradient(v.q),
    },
)

VIEWS = OpGroup(
    inputs={"x": ((None, 4), None), "y": ((None, 3, 4), None), "z": ((3, 4), None)},
    data=lambda rng, n: {"x": rng.standard_normal((n, 4)), "y": rng.standard_normal((n, 3, 4)),
                         "z": rng.standard_normal((3, 4))},
    ops={
        "reshape": lambda v: gc.reshape(v.x, (-1, 2)),
        "transpose_2d": lambda v: v.x.T,
        "transpose_3d": lambda v: gc.transpose(v.y, (2, 0, 1)),
        "broadcast_to": lambda v: gc.broadcast_to(v.z[:1], (5, 3, 4)),
        "broadcast_to_value": lambda v: gc.broadcast_to(v.x[:, :1], v.x) * v.x,
        "concat_axis1": lambda v: gc.concat([v.x, v.x * 2.0, gc.exp(v.x[:, :1])], axis=1),
        "concat_axis0": lambda v: gc.concat([v.z, v.z[1:] * 2.0], axis=0),
        "stack_axis1": lambda v: gc.stack([v.x, -v.x], axis=1),
        "squeeze": lambda v: gc.squeeze(v.y[:, 1:2, :], 1),
        "expand_dims": lambda v: gc.expand_dims(v.x, 1) * v.y,
        "slice_basic": lambda v: v.y[:, -2:, 1::2],
        "slice_negative_step": lambda v: v.x[::-1],
        "slice_negative_step_2": lambda v: v.z[::-2, 3:0:-2],
        "int_index_runtime_axis": lambda v: v.x[1] * v.x[0],
        "int_index_negative_runtime_axis": lambda v: v.y[-1, :, 2],
        "ellipsis_newaxis": lambda v: v.y[..., 1] + v.x[:, None, 1],
    },
)

INDEX = OpGroup(
    inputs={"x": ((None, 4), None), "emb": ((6, 3), None), "i": ((5,), "int64"),
            "j": ((6,), "int64"), "k": ((2, 3), "int64"), "labels": ((None,), "int64"),
            "m": ((4,), "int32")},
    data=lambda rng, n: {
        "x": rng.standard_normal((n, 4)), "emb": rng.standard_normal((6, 3)),
        "i": np.array([1, 0, 1, 1, 0]), "m": np.array([-1, 3, -4, -1], dtype=np.int32),
        "j": np.array([3, 0, 2, 2, 1, 3]), "k": np.array([[5, 0, 5], [2, 2, 1]]),
        "labels": rng.integers(0, 4, size=n)},
    ops={
        "take_axis0_repeated": lambda v: gc.take(v.x, v.i, axis=0),
        "take_axis1_repeated": lambda v: gc.take(v.x, v.j, axis=1),
        "take_2d_indices": lambda v: gc.take(v.emb, v.k, axis=0),
        "take_axis1_const_2d_indices": lambda v: gc.take(v.emb, [[2, 0], [1, 1]], axis=1),
        "getitem_value_index": lambda v: v.x[v.i] * 2.0,
        "take_const_indices": lambda v: gc.take(v.emb, [4, 4, 0], axis=0),
        "take_axis1_negative": lambda v: gc.take(v.x, v.m, axis=1),
        "take_negative_const_2d_indices": lambda v: gc.take(v.emb, [[-6, 5], [-1, -1]], axis=0),
        "getitem_negative_value_index": lambda v: v.emb[v.m] * 2.0,
        "one_hot": lambda v: gc.one_hot(v.labels, 4, dtype=v.x.dtype) * v.x,
        "one_hot_int": lambda v: gc.one_hot(v.labels, 5, dtype="int32"),
    },
)

NN = OpGroup(
    inputs={"x": ((None, 4), None), "p": ((None, 4), None), "labels": ((None,), "int64"),
            "y": ((None, 2, 3), None)},
    data=lambda rng, n: {"x": rng.standard_normal((n, 4)) * 2.0, "p": positive(rng, n, 4),
                         "labels": rng.integers(0, 4, size=n),
                         "y": rng.standard_normal((n, 2, 3))},
    ops={
        "softmax": lambda v: gc.softmax(v.x),
        "softmax_3d_middle": lambda v: gc.softmax(v.y, axis=1),
        "log_softmax": lambda v: gc.log_softmax(v.x),
        "log_softmax_axis0": lambda v: gc.log_softmax(v.y, axis=0),
        "logsumexp": lambda v: gc.logsumexp(v.x),
        "logsumexp_keepdims": lambda v: gc.logsumexp(v.y, axis=(1, 2), keepdims=True),
        "logsumexp_all": lambda v: gc.logsumexp(v.x, axis=None),
        "softmax_cross_entropy": lambda v: gc.softmax_cross_entropy(v.x, v.labels),
        "mse": lambda v: gc.mse(v.x, v.p),
        "gelu": lambda v: gc.gelu(v.x),
        "gelu_tanh": lambda v: gc.gelu(v.x, approximate="tanh"),
        "one_hot_cross_entropy": lambda v: -gc.sum(gc.one_hot(v.labels, 4, dtype=v.x.dtype)
                                                   * gc.log_softmax(v.x)),
        "softmax_cross_entropy_smoothing_ignore": lambda v: gc.softmax_cross_entropy(
            v.x, v.labels, label_smoothing=0.1, ignore_index=3),
        "softmax_cross_entropy_mean": lambda v: gc.softmax_cross_entropy(
            v.x, v.labels, ignore_index=2, reduction="mean"),
        "binary_cross_entropy_with_logits": lambda v: gc.binary_cross_entropy_with_logits(
            v.x, v.p / 2.5),
        "binary_cross_entropy_with_logits_mean": lambda v: gc.binary_cross_entropy_with_logits(
            v.y, 0.25, reduction="mean"),
    },
)

STRUCTURE = OpGroup(
    inputs={"x": ((None, 5), None), "y": ((None, 3, 4), None), "v": ((4,), None),
            "m": ((4, 3), None), "i": ((None, 3), "int64")},
    data=lambda rng, n: {"x": rng.standard_normal((n, 5)), "y": rng.standard_normal((n, 3, 4)),
                         "v": rng.standard_normal(4), "m": rng.standard_normal((4, 3)),
                         "i": rng.integers(-3, 3, size=(n, 3))},
    ops={
        "var_axis1": lambda v: gc.var(v.y, axis=1),
        "var_all_ddof1": lambda v: gc.var(v.x, ddof=1),
        "std_keepdims": lambda v: gc.std(v.y, axis=-1, keepdims=True),
        "cumsum_last_axis": lambda v: gc.cumsum(v.x, 1),
        "cumsum_batch_axis": lambda v: gc.cumsum(v.y, 0),
        "cumsum_middle_axis": lambda v: gc.cumsum(v.y * v.y, axis=1),
        "cumsum_int": lambda v: gc.cumsum(gc.cast(v.x > 0, "int32"), 1),
        "argmax_last_axis": lambda v: gc.argmax(v.x, 1),
        "argmin_all": lambda v: gc.argmin(v.y),
        "argmax_run_time_axis": lambda v: gc.argmax(v.y, 0),
        "argmin_keepdims": lambda v: gc.argmin(v.y, axis=2, keepdims=True),
        "take_along_axis": lambda v: gc.take_along_axis(v.x, v.i, 1),
        "take_along_axis_run_time_broadcast": lambda v: gc.take_along_axis(
            v.y, gc.expand_dims(v.i, 2), 1),
        "take_along_axis_static": lambda v: gc.take_along_axis(v.m, [[3, 0, 1], [1, 1, -1]], 0),
        "pad_constant_run_time_rows": lambda v: gc.pad(v.x, ((0, 0), (1, 2)),
                                                       constant_values=0.5),
        "pad_constant_static": lambda v: gc.pad(v.m, 1),
        "pad_reflect": lambda v: gc.pad(v.y, ((0, 0), (2, 1), (0, 3)), mode="reflect"),
        "pad_edge": lambda v: gc.pad(v.x, ((0, 0), (2, 2)), mode="edge"),
        "pad_wrap": lambda v: gc.pad(v.m, ((1, 4), (0, 0)), mode="wrap"),
        "arange": lambda v: v.x * gc.arange(v.x, 0.0, 1.0, 0.2),
        "tril": lambda v: gc.tril(v.y),
        "triu_k1": lambda v: gc.triu(v.y, 1),
        "tril_vector": lambda v: gc.tril(v.v, -1),
        "matmul_vector_matrix": lambda v: v.v @ v.m,
        "matmul_batch_vector": lambda v: v.y @ v.v,
        "matmul_vector_vector": lambda v: v.v @ v.v,
        "matmul_vector_batch": lambda v: gc.matmul(v.m[0], v.y),
    },
)

GROUPS = {"elementwise": ELEMENTWISE, "reduce": REDUCE, "linalg": LINALG, "views": VIEWS,
          "index": INDEX, "nn": NN, "structure": STRUCTURE}
CASES = [(group, op) for group, spec in GROUPS.items() for op in spec.ops]


# -- building, compiling and running one group ---------------------------------------------

Comparison = tuple[str, np.ndarray, np.ndarray]  # (what, compiled, interpreted)


@dataclass
class GroupRun:
    """One compiled program per (group, dtype) and what it computed at every batch size.

    `values[op]`: the op's value; `grads[input]`: the gradient of the group loss
    sum_k sum(op_k * w_k) with respect to that input (every op's backward code contributes,
    each with its own random weights w_k, so a wrong gradient of any op shows up)."""

    values: dict[str, list[Comparison]] = field(default_factory=dict)
    grads: dict[str, list[Comparison]] = field(default_factory=dict)
    terms: dict[str, gc.Value] = field(default_factory=dict)   # op -> its loss term
    wrt: dict[str, gc.Value] = field(default_factory=dict)
    feeds: list[dict[str, np.ndarray]] = field(default_factory=list)
    graph: gc.Graph | None = None
    specialisations: int = 0  # kernels compiled by the calls (after gc.compile)
    error: BaseException | None = None


def _weight(graph: gc.Graph, out: gc.Value, rng: np.random.Generator) -> gc.Value:
    shape = tuple(1 if d is None else d for d in out.shape)
    return graph.const(rng.standard_normal(shape))


def _feeds(spec: OpGroup, n: int, dtype: str) -> dict[str, np.ndarray]:
    data = spec.data(np.random.default_rng(n), n)
    return {k: a.astype(dtype) if a.dtype.kind == "f" else a for k, a in data.items()}


@functools.cache
def run_group(group: str, dtype: str) -> GroupRun:
    """Compile the group once and run it at every batch size (cached per session)."""
    try:
        return _run_group(group, dtype)
    except Exception as err:  # re-raised by every test of the group, compiled only once
        return GroupRun(error=err)


def _run_group(group: str, dtype: str) -> GroupRun:
    spec = GROUPS[group]
    rng = np.random.default_rng(zlib.crc32(f"{group}/{dtype}".encode()))
    graph = gc.Graph(f"ops_{group}", dtype=dtype)
    values = {name: graph.input(name, shape, dtype=dt) for name, (shape, dt) in
              spec.inputs.items()}
    v = SimpleNamespace(**values)
    run = GroupRun(graph=graph)
    outputs: list[gc.Value] = []
    for name, build in spec.ops.items():
        out = build(v)
        outputs.append(out)
        if gc.ir.is_float(out.dtype):
            run.terms[name] = gc.sum(out * _weight(graph, out, rng))
    needed = ancestors(graph, [t.id for t in run.terms.values()])
    run.wrt = {x.name: x for x in values.values() if gc.ir.is_float(x.dtype) and x.id in needed}
    loss = functools.reduce(gc.add, run.terms.values())
    grads = gc.grad(loss, list(run.wrt.values()))
    compiled = gc.compile(outputs + grads)
    compiled_before = compile_count()
    for n in spec.batches:
        feeds = _feeds(spec, n, dtype)
        run.feeds.append(feeds)
        got = compiled(**feeds)
        want = gc.evaluate(outputs + grads, feeds)
        for k, name in enumerate(spec.ops):
            run.values.setdefault(name, []).append((f"batch {n}", got[k], want[k]))
        for k, name in enumerate(run.wrt):
            j = len(outputs) + k
            run.grads.setdefault(name, []).append((f"batch {n}", got[j], want[j]))
    run.specialisations = compile_count() - compiled_before
    return run


def _mismatch(got: np.ndarray, want: np.ndarray, dtype: str, what: str) -> str | None:
    """None if `got` matches `want` (shape, dtype, values within TOL or exact), else why."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"{what}: got {got.shape} {got.dtype}, want {want.shape} {want.dtype}"
    if want.dtype.kind == "f" and not np.all(np.isfinite(want)):
        return f"{what}: the reference is not finite (bad test data)"
    try:
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, **TOL[dtype], err_msg=what)
        else:
            np.testing.assert_array_equal(got, want, err_msg=what)
    except AssertionError as err:
        return str(err)
    return None


def _blame(run: GroupRun, x: str, dtype: str) -> list[str]:
    """After a group gradient mismatch: compile each op's own gradient to name the culprits
    (only runs when the test is already failing)."""
    culprits = []
    for name, term in run.terms.items():
        if run.wrt[x].id not in ancestors(term.graph, [term.id]):
            continue
        g = gc.grad(term, run.wrt[x])
        compiled = gc.compile([g])
        for feeds in run.feeds:
            (got,) = compiled(**feeds)
            if _mismatch(got, gc.evaluate(g, feeds), dtype, name) is not None:
                culprits.append(name)
                break
    return culprits


def _group_run(group: str, dtype: str) -> GroupRun:
    run = run_group(group, dtype)
    if run.error is not None:
        raise run.error
    return run


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("group", "op"), CASES, ids=[f"{g}-{o}" for g, o in CASES])
def test_compiled_op_value_matches_interpreter(group: str, op: str, dtype: str) -> None:
    entries = _group_run(group, dtype).values[op]
    assert len(entries) == len(GROUPS[group].batches)
    for what, got, want in entries:
        problem = _mismatch(got, want, dtype, f"{op} ({what})")
        assert problem is None, problem


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", list(GROUPS))
def test_compiled_gradients_match_interpreter(group: str, dtype: str) -> None:
    run = _group_run(group, dtype)
    float_ops = [op for op, entries in run.values.items() if entries[0][2].dtype.kind == "f"]
    assert sorted(run.terms) == sorted(float_ops)
    assert run.grads, f"{group}: nothing to differentiate"
    # Calls compile nothing, whatever the feeds and constants (kernels are C functions of
    # one signature: a read-only constant cannot make a second specialisation).
    assert run.specialisations == 0
    for x, entries in run.grads.items():
        for what, got, want in entries:
            problem = _mismatch(got, want, dtype, f"d loss / d {x} ({what})")
            if problem is not None:
                pytest.fail(f"{problem}\nops whose compiled gradient w.r.t. {x} is wrong: "
                            f"{_blame(run, x, dtype)}")


# The primitives behind the op library this file covers (the API of graphc/__init__.py:
# elementwise, reductions, matmul, views, indexing and the nn composites built from them).
# Ops registered later (convolution, pooling, dropout masks, train/infer mode selection)
# belong to their own test files.
COVERED_PRIMITIVES = {
    "add", "sub", "mul", "div", "pow", "neg", "exp", "log", "sqrt", "rsqrt", "tanh",
    "sigmoid", "erf", "relu", "leaky_relu", "abs", "sign", "square", "maximum", "minimum",
    "where", "cast", "greater", "less", "equal", "stop_gradient", "matmul", "sum", "max",
    "min", "dim_size", "reshape", "reshape_like", "transpose", "broadcast_to",
    "broadcast_like", "concat", "squeeze", "expand_dims", "slice", "slice_grad", "take",
    "take_grad", "sin", "cos", "log1p", "expm1", "softplus", "elu", "clip", "greater_equal",
    "less_equal", "not_equal",
    "cumsum", "take_along_axis", "take_along_axis_grad",
}


def test_every_library_op_is_covered() -> None:
    """The table hands every primitive of the library (forward and backward) to the
    compiler."""
    from graphc.ops import OPS

    assert COVERED_PRIMITIVES <= set(OPS), sorted(COVERED_PRIMITIVES - set(OPS))
    used = {n.op for dtype in DTYPES for group in GROUPS
            for n in _group_run(group, dtype).graph.nodes}
    missing = sorted(COVERED_PRIMITIVES - used)
    assert not missing, f"ops never compiled by this table: {missing}"


def test_fused_kernel_with_more_operands_than_a_plain_call_takes() -> None:
    """One fused loop reading 40 inputs: CPython passes calls with more than 30 arguments
    as f(*args), which Numba cannot inline; the kernel takes them packed in tuples."""
    g = gc.Graph("wide", dtype="float64")
    xs = [g.input(f"x{k}", (None, 3)) for k in range(40)]
    total = functools.reduce(gc.add, [gc.tanh(x) * float(k + 1) for k, x in enumerate(xs)])
    compiled = gc.compile([total])
    widest = max(len(k.group.nodes) for k in compiled.kernels)
    assert widest >= 80, "the sum did not fuse into one kernel: the test checks nothing"
    rng = np.random.default_rng(0)
    feeds = {x.name: rng.standard_normal((2, 3)) for x in xs}
    (got,) = compiled(**feeds)
    np.testing.assert_allclose(got, gc.evaluate(total, feeds), **TOL["float64"])


def test_a_reduction_the_code_generators_do_not_know_is_refused() -> None:
    """A "reduce" op other than sum/max/min is an error at compile time (CPU) and in the
    CUDA code generator, never silently computed as some other reduction."""
    from graphc.backends.cuda import codegen as cuda_codegen
    from graphc.ops import OPS, defop, make
    from graphc.ops.reduce import _extreme_infer

    defop("prod_for_test", "reduce", _extreme_infer,
          lambda x, axes, keepdims: np.prod(x, axis=axes, keepdims=keepdims))
    try:
        g = gc.Graph("unknown_reduction", dtype="float64")
        x = g.input("x", (3, 4))
        out = make("prod_for_test", [x], axes=(1,), keepdims=False)
        np.testing.assert_allclose(gc.evaluate(out, {"x": np.full((3, 4), 2.0)}), [16.0] * 3)
        with pytest.raises(gc.GraphError, match="no CPU code for the reduction 'prod_for_test'"):
            gc.compile([out])
        with pytest.raises(gc.GraphError, match="no CUDA code for the reduction"):
            cuda_codegen._combine("prod_for_test")
        with pytest.raises(gc.GraphError, match="no CUDA code for the reduction"):
            cuda_codegen._identity("prod_for_test", "float64")
    finally:
        OPS.pop("prod_for_test", None)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_products_of_transposed_views_read_them_in_place(dtype: str) -> None:
    """Attention-style products of heads split off a (batch, time, features) value
    (reshape + transpose views, rank 4, and a rank-3 transpose) and their gradients: BLAS
    reads the strided views with their row stride and batch strides, without copies."""
    rng = np.random.default_rng(1)
    t, heads, d = 3, 2, 4
    g = gc.Graph("heads", dtype=dtype)
    x = g.input("x", (None, t, heads * d))
    y = g.input("y", (None, t, heads * d))

    def split(v: gc.Value) -> gc.Value:
        return gc.transpose(gc.reshape(gc.tanh(v), (-1, t, heads, d)), (0, 2, 1, 3))

    q, k = split(x), split(y)
    scores = q @ gc.transpose(k, (0, 1, 3, 2))
    mixed = gc.transpose(q, (0, 1, 3, 2)) @ k + g.const(rng.normal(size=(d, t))) @ q
    seq = gc.transpose(gc.tanh(x), (0, 2, 1)) @ gc.tanh(y)
    values = [scores, mixed, seq]
    loss = sum(gc.sum(v * g.const(rng.normal(size=v.shape[1:]))) for v in values)
    outputs = [*values, *gc.grad(loss, [x, y])]
    compiled = gc.compile(outputs)
    layouts = [i.kernel.source.splitlines()[0] for i in compiled.code.instructions
               if "matrix product" in i.kernel.source.splitlines()[0]]
    assert any("n4" in s for s in layouts) and any("t4" in s for s in layouts), layouts
    read_by_products = {i for n in compiled.program.nodes if n.op == "matmul" for i in n.inputs}
    assert not [i for i in compiled.code.instructions
                if i.what.startswith("copy") and i.nodes[0] in read_by_products]
    for batch in (2, 3):
        feeds = {"x": rng.normal(size=(batch, t, heads * d)).astype(dtype),
                 "y": rng.normal(size=(batch, t, heads * d)).astype(dtype)}
        for got, want in zip(compiled(**feeds), gc.evaluate(outputs, feeds)):
            np.testing.assert_allclose(got, want, **TOL[dtype])


@pytest.mark.parametrize("batch", [2, None])
def test_gradients_of_values_read_only_for_their_shapes(batch: int | None) -> None:
    """Fetching only the gradient of sum(f(x)) (f = a library call, a matmul, a gather, a
    running sum): f's value is read by nothing but its shape. Its kernel used to be
    scheduled with no storage planned ("node ... has no storage"); found by the random
    graph campaign (tests/fuzzing)."""
    rng = np.random.default_rng(3)
    g = gc.Graph("shape_only", dtype="float64")
    y = g.input("y", (batch, 2, 4, 4))
    w = g.input("w", (3, 2, 2, 2))
    m = g.input("m", (4, 3))
    parts = [gc.ops.conv2d(y, w, 1, 1), gc.nn.max_pool2d(y, 2), gc.nn.avg_pool2d(y, 3, 1, 1),
             y @ m, gc.take(y, [3, 0, 0], axis=2), gc.cumsum(y, 3)]
    grads = gc.grad(functools.reduce(gc.add, [gc.sum(p) for p in parts]), [y, w, m])
    compiled = gc.compile(grads)
    for n in (2, 3) if batch is None else (2,):
        feeds = {"y": rng.standard_normal((n, 2, 4, 4)), "w": rng.standard_normal((3, 2, 2, 2)),
                 "m": rng.standard_normal((4, 3))}
        for got, want in zip(compiled(**feeds), gc.evaluate(grads, feeds)):
            np.testing.assert_allclose(got, want, **TOL["float64"])
