"""Every error a user can hit while building or running a graph says what went wrong: the
op, the operands' shapes and dtypes, and the line of *this file* that built the node (or,
for feeds, the input's name, what it expects and where it was declared)."""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

import graphc as gc
from tests.helpers import here


def _fixture() -> types.SimpleNamespace:
    g = gc.Graph("errors")
    other = gc.Graph("other")
    ns = types.SimpleNamespace(g=g)
    ns.x, ns.x_at = g.input("x", (None, 64)), here()
    ns.w, ns.w_at = g.param("w", np.zeros((32, 10))), here()
    ns.a = g.input("a", (3, 4))
    ns.b = g.input("b", (5,))
    ns.f32 = g.input("f32", (3,))
    ns.f64 = g.input("f64", (3,), dtype="float64")
    ns.i32 = g.input("i32", (3,), dtype="int32")
    ns.labels = g.input("labels", (None,), dtype="int64")
    ns.flag = g.input("flag", (3,), dtype="bool")
    ns.foreign = other.input("z", (3,))
    return ns


@dataclass(frozen=True)
class ErrorCase:
    """`build(ns)` must raise `exc` whose message contains every string in `expect` and the
    `file:line` of the (single-line) lambda that built the failing node."""

    id: str
    build: Callable[[types.SimpleNamespace], object]
    expect: tuple[str, ...]
    exc: type[Exception] = gc.GraphError


def err(case_id: str, build: Callable, *expect: str) -> ErrorCase:
    return ErrorCase(case_id, build, expect)


BUILD_ERRORS = [
    # the spec's headline case: matmul shape mismatch with a run-time batch dimension
    err("matmul_shapes", lambda v: v.x @ v.w,
        "matmul", "(None, 64) float32", "(32, 10) float32", "inner dimensions 64 and 32"),
    err("matmul_vector", lambda v: gc.matmul(v.b, v.w), "matmul", "(5,) float32",
        "(32, 10) float32", "inner dimensions 5 and 32"),
    err("matmul_scalar", lambda v: gc.matmul(gc.sum(v.b), v.w), "matmul", "() float32",
        "at least 1 dimension"),
    err("matmul_dtypes", lambda v: gc.matmul(v.a, gc.cast(v.a, "float64")), "matmul",
        "(3, 4) float32", "(3, 4) float64", "dtypes differ"),
    err("broadcast_mismatch", lambda v: v.a + v.b, "add", "(3, 4) float32", "(5,) float32",
        "cannot be broadcast"),
    err("broadcast_mismatch_mul", lambda v: gc.mul(v.b, v.a), "mul", "(5,) float32",
        "(3, 4) float32"),
    err("dtype_mismatch", lambda v: v.f32 + v.f64, "add", "(3,) float32", "(3,) float64",
        "dtypes differ", "gc.cast"),
    err("dtype_mismatch_where", lambda v: gc.where(v.flag, v.f32, v.f64), "where",
        "float32", "float64"),
    err("where_condition_not_bool", lambda v: gc.where(v.f32, v.f32, v.f32), "where",
        "condition must be bool", "(3,) float32"),
    err("float_literal_on_int", lambda v: v.i32 * 0.5, "mul", "int32", "0.5", "gc.cast"),
    err("string_operand", lambda v: v.f32 + "one", "add", "str", "'one'"),
    err("log_of_int", lambda v: gc.log(v.i32), "log", "(3,) int32", "floating-point"),
    err("arithmetic_on_bool", lambda v: v.flag + v.flag, "add", "bool", "(3,) bool"),
    err("mean_of_int", lambda v: gc.mean(v.i32), "mean", "int32", "(3,) int32"),
    err("bad_axis_sum", lambda v: gc.sum(v.x, axis=2), "sum", "axis 2", "2 dimensions",
        "(None, 64) float32"),
    err("bad_axis_negative", lambda v: gc.max(v.a, axis=-3), "max", "axis -3", "(3, 4) float32"),
    err("repeated_axis", lambda v: gc.mean(v.a, axis=(1, -1)), "mean", "repeated axis",
        "(3, 4) float32"),
    err("bad_axis_softmax", lambda v: gc.softmax(v.x, axis=3), "softmax", "axis 3",
        "(None, 64) float32"),
    err("bad_axis_log_softmax", lambda v: gc.log_softmax(v.b, axis=1), "log_softmax", "axis 1",
        "(5,) float32"),
    err("bad_axis_logsumexp", lambda v: gc.logsumexp(v.a, axis=(0, 2)), "logsumexp", "axis 2",
        "(3, 4) float32"),
    err("bad_axis_concat", lambda v: gc.concat([v.a, v.a], axis=2), "concat", "axis 2",
        "(3, 4) float32, (3, 4) float32"),
    err("bad_axis_stack", lambda v: gc.stack([v.b, v.b], axis=-3), "stack", "axis -3",
        "(5,) float32"),
    err("bad_axis_expand_dims", lambda v: gc.expand_dims(v.a, 3), "expand_dims", "axis 3",
        "(3, 4) float32"),
    err("bad_axis_take", lambda v: gc.take(v.a, v.labels, axis=2), "take", "axis 2",
        "(3, 4) float32", "(None,) int64"),
    err("squeeze_non_unit", lambda v: gc.squeeze(v.w, 0), "squeeze", "axis 0", "size 32",
        "(32, 10) float32"),
    err("index_out_of_bounds", lambda v: v.w[40], "getitem", "index 40", "axis 0",
        "size 32", "(32, 10) float32"),
    err("index_out_of_bounds_negative", lambda v: v.w[:, -11], "getitem", "index -11",
        "axis 1", "size 10", "(32, 10) float32"),
    err("too_many_indices", lambda v: v.w[0, 0, 0], "getitem", "too many indices",
        "(32, 10) float32"),
    err("two_ellipses", lambda v: v.w[..., 0, ...], "getitem", "single Ellipsis"),
    err("float_slice_bound", lambda v: v.w[0.5:], "slice bounds must be ints", "0.5"),
    err("reshape_size", lambda v: gc.reshape(v.w, (7, -1)), "reshape", "(32, 10) float32",
        "(7, -1)"),
    err("reshape_runtime_needs_minus_one", lambda v: gc.reshape(v.x, (64, 2)), "reshape",
        "(None, 64) float32", "-1"),
    err("reshape_two_minus_ones", lambda v: v.w.reshape(-1, -1), "reshape", "at most one -1"),
    err("transpose_not_permutation", lambda v: gc.transpose(v.w, (0, 0)), "transpose",
        "(0, 0)", "(32, 10)"),
    err("broadcast_to_bad_shape", lambda v: gc.broadcast_to(v.w, (3, 10)), "broadcast_to",
        "(32, 10) float32", "(3, 10)"),
    err("concat_sizes", lambda v: gc.concat([v.a, v.w], axis=0), "concat", "axis 1",
        "(3, 4) float32, (32, 10) float32"),
    err("concat_dtypes", lambda v: gc.concat([v.f32, v.f64]), "concat", "float32", "float64"),
    err("take_float_indices", lambda v: gc.take(v.w, v.f64), "take", "indices must be integers",
        "(32, 10) float32, (3,) float64"),
    err("one_hot_float_labels", lambda v: gc.one_hot(v.f32, 3), "one_hot", "float32"),
    err("cross_entropy_float_labels", lambda v: gc.softmax_cross_entropy(v.a, v.f32),
        "softmax_cross_entropy", "(3, 4) float32", "(3,) float32", "integer labels"),
    err("cross_entropy_label_rank", lambda v: gc.softmax_cross_entropy(v.a, v.labels[None]),
        "softmax_cross_entropy", "(1, None) int64"),
    err("gelu_approximate", lambda v: gc.gelu(v.a, approximate="fast"), "gelu", "'fast'"),
    err("different_graphs", lambda v: v.f32 + v.foreign, "add", "different graphs"),
    err("grad_non_scalar", lambda v: gc.grad(v.x * 2.0, v.x), "grad", "scalar",
        "(None, 64)", "mul"),
    err("grad_int_target", lambda v: gc.grad(gc.sum(gc.cast(v.i32, "float32")), v.i32),
        "grad", "i32", "int32", "floating-point"),
    err("grad_int_output", lambda v: gc.grad(gc.sum(v.i32), v.f32), "grad", "floating point",
        "int64"),
    err("duplicate_param", lambda v: v.g.param("w", np.zeros(3)), "'w'", "already used",
        "param declared at"),
    err("duplicate_input_vs_param", lambda v: v.g.input("w", (3,)), "'w'", "already used"),
    err("int_param", lambda v: v.g.param("steps", np.arange(3)), "'steps'", "floating point",
        "int64"),
    err("bad_dtype", lambda v: v.g.input("c", (2,), dtype="complex64"), "complex64"),
    err("negative_shape", lambda v: v.g.input("n", (-1, 3)), "input 'n'", "(-1, 3)"),
]


@pytest.mark.parametrize("case", BUILD_ERRORS, ids=lambda c: c.id)
def test_build_error_message(case: ErrorCase) -> None:
    ns = _fixture()
    with pytest.raises(case.exc) as info:
        case.build(ns)
    message = str(info.value)
    for part in case.expect:
        assert part in message, f"{part!r} not in:\n{message}"
    line = f"{case.build.__code__.co_filename}:{case.build.__code__.co_firstlineno}"
    assert line in message, f"{line!r} not in:\n{message}"
    assert "Traceback" not in message
    assert "graphc/" not in message.replace("tests/", "")  # no internal file is blamed


def test_matmul_error_is_exactly_informative() -> None:
    g = gc.Graph("m")
    x = g.input("x", (None, 64))
    w = g.param("w", np.zeros((32, 10)))
    with pytest.raises(gc.GraphError) as info:
        at = here(); x @ w  # noqa: E702 - the error and the line it reports must match
    assert str(info.value) == (
        "matmul: cannot multiply (None, 64) by (32, 10): inner dimensions 64 and 32 differ\n"
        "  operands: (None, 64) float32, (32, 10) float32\n"
        f"  at {at}")


def test_duplicate_param_names_both_locations() -> None:
    ns = _fixture()
    with pytest.raises(gc.GraphError) as info:
        at = here(); ns.g.param("w", np.ones(2))  # noqa: E702
    message = str(info.value)
    assert f"declared at {ns.w_at}" in message and f"at {at}" in message
    # layers that would collide get a clear error too
    gc.nn.linear(ns.x, 4, name="fc")
    with pytest.raises(gc.GraphError, match=r"'fc\.w'.*already used"):
        gc.nn.linear(ns.x, 4, name="fc")


# -- feeds: gc.evaluate names the input and what it expects -------------------------------

def _feed_graph():
    g = gc.Graph("feeds")
    x, x_at = g.input("x", (None, 4)), here()
    labels, labels_at = g.input("labels", (None,), dtype="int32"), here()
    out = gc.sum(x * 0.5) + gc.sum(gc.cast(labels, "float32"))
    return g, x, labels, out, {"x": x_at, "labels": labels_at}


GOOD_X = np.ones((2, 4), dtype=np.float32)
GOOD_LABELS = np.array([1, 2], dtype=np.int32)

FEED_ERRORS = [
    ("unknown_name", {"x": GOOD_X, "labels": GOOD_LABELS, "z": 1.0},
     ("unknown feed 'z'", "labels, x"), None),
    ("missing", {"x": GOOD_X}, ("missing feed for input 'labels'", "(None,) int32"), "labels"),
    ("wrong_fixed_size", {"x": np.ones((2, 5)), "labels": GOOD_LABELS},
     ("input 'x'", "expects shape (None, 4) float32", "got shape (2, 5)"), "x"),
    ("wrong_rank", {"x": np.ones(4), "labels": GOOD_LABELS},
     ("input 'x'", "(None, 4) float32", "got shape (4,)"), "x"),
    ("strings_for_float", {"x": np.array([["a", "b", "c", "d"]]), "labels": GOOD_LABELS},
     ("input 'x'", "expects dtype float32", "<U1"), "x"),
    ("float_for_int", {"x": GOOD_X, "labels": np.array([1.0, 2.0])},
     ("input 'labels'", "expects dtype int32", "float64"), "labels"),
    ("int64_out_of_int32_range", {"x": GOOD_X, "labels": np.array([1, 2 ** 40])},
     ("input 'labels'", "int32", "int64", "outside the range"), "labels"),
    ("float64_out_of_float32_range", {"x": np.full((1, 4), 1e300), "labels": GOOD_LABELS},
     ("input 'x'", "float32", "outside the range"), "x"),
    ("ragged_list", {"x": [[1.0, 2.0], [3.0]], "labels": GOOD_LABELS},
     ("input 'x'", "(None, 4) float32", "list"), "x"),
    ("none", {"x": None, "labels": GOOD_LABELS}, ("input 'x'", "(None, 4) float32"), "x"),
]


@pytest.mark.parametrize("name,feeds,expect,declared", FEED_ERRORS,
                         ids=[c[0] for c in FEED_ERRORS])
def test_feed_error_message(name: str, feeds: dict, expect: tuple, declared: str | None) -> None:
    _, _, _, out, where = _feed_graph()
    with pytest.raises(gc.FeedError) as info:
        gc.evaluate(out, feeds)
    message = str(info.value)
    assert isinstance(info.value, gc.GraphError)
    for part in expect:
        assert part in message, f"{part!r} not in:\n{message}"
    if declared is not None:
        assert f"declared at {where[declared]}" in message
    assert "Traceback" not in message


def test_float64_feed_to_float32_input_is_cast() -> None:
    _, x, _, out, _ = _feed_graph()
    data = np.random.default_rng(0).standard_normal((3, 4))  # float64
    total, xs = gc.evaluate([out, x], {"x": data, "labels": np.array([1, 2, 3])})
    assert xs.dtype == np.float32 and total.dtype == np.float32
    np.testing.assert_array_equal(xs, data.astype(np.float32))
    expected = np.sum(data.astype(np.float32) * np.float32(0.5), dtype=np.float64) + 6.0
    assert abs(float(total) - expected) <= 1e-6 * np.sum(np.abs(data))


def test_int64_labels_accepted_for_int32_input_when_they_fit() -> None:
    _, _, labels, out, _ = _feed_graph()
    feeds = {"x": GOOD_X, "labels": np.array([0, 5, 2 ** 31 - 1], dtype=np.int64)}
    got = gc.evaluate(labels, feeds)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, [0, 5, 2 ** 31 - 1])
    # Python lists of ints (int64 on most platforms) are fine too
    np.testing.assert_array_equal(gc.evaluate(labels, {"x": GOOD_X, "labels": [3, 1]}), [3, 1])
    with pytest.raises(gc.FeedError, match="outside the range of int32"):
        gc.evaluate(out, {"x": GOOD_X, "labels": np.array([2 ** 31], dtype=np.int64)})
    with pytest.raises(gc.FeedError, match="outside the range of int32"):
        gc.evaluate(out, {"x": GOOD_X, "labels": np.array([-(2 ** 31) - 1], dtype=np.int64)})


def test_python_float_literal_keeps_float32() -> None:
    g = gc.Graph("lit")
    x = g.input("x", (2,))
    outs = [x * 0.5, 0.5 * x, x / 3.0, 1.0 - x, x ** 3.0, x + 1, np.float64(0.5) * x,
            gc.maximum(x, 0.0), gc.where(x > 0.0, x, 0.25), x * np.array([1.0, 2.0])]
    for v in outs:
        assert v.dtype == "float32", v
    results = gc.evaluate(outs, {"x": np.array([1.0, -2.0])})
    for r in results:
        assert r.dtype == np.float32
    np.testing.assert_array_equal(results[0], np.array([0.5, -1.0], dtype=np.float32))


# -- run-time errors ----------------------------------------------------------------------

def test_take_index_out_of_range_at_run_time() -> None:
    g = gc.Graph("take")
    x = g.input("x", (3, 2))
    idx = g.input("idx", (None,), dtype="int64")
    out, at = gc.take(x, idx), here()
    with pytest.raises(gc.GraphError) as info:
        gc.evaluate(out, {"x": np.zeros((3, 2)), "idx": np.array([0, 7])})
    message = str(info.value)
    assert "take" in message and f"built at {at}" in message and "(3, 2) float32" in message
    assert "Traceback" not in message


def test_runtime_size_disagreement_names_the_node() -> None:
    g = gc.Graph("sizes")
    a = g.input("a", (None, 3))
    b = g.input("b", (None, 3))
    out, at = a + b, here()
    with pytest.raises(gc.GraphError) as info:
        gc.evaluate(out, {"a": np.zeros((2, 3)), "b": np.zeros((4, 3))})
    message = str(info.value)
    assert "add" in message and f"built at {at}" in message and "(2, 3)" in message
    assert "(4, 3)" in message and "Traceback" not in message


BROADCASTS = {
    "mul": lambda x, z: x * z,
    "reversed": lambda x, z: z - x,
    "after_tanh": lambda x, z: gc.tanh(x) + z,
    "where": lambda x, z: gc.where(z > 0, x, z),
    "maximum": lambda x, z: gc.maximum(x, z),
    "broadcast_to": lambda x, z: gc.broadcast_to(x, (5, 3)) * 2.0,
}


@pytest.mark.parametrize("case", list(BROADCASTS))
def test_a_compiled_broadcast_of_a_run_time_size_is_refused(case: str) -> None:
    """An operand of run-time size fed 1 that broadcasts in an elementwise op: numpy's
    broadcast in gc.evaluate; a compiled function (whose kernels index that axis with the
    result's size) refuses these feeds, naming both nodes, instead of reading past the
    operand's end. Sizes that agree run."""
    g = gc.Graph("runtime_broadcast", dtype="float64")
    x = g.input("x", (None, 3))
    z = g.input("z", (None, 3))
    out = gc.sum(BROADCASTS[case](x, z))
    at = f"{__file__}:{BROADCASTS[case].__code__.co_firstlineno}"
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((1, 3)), "z": rng.standard_normal((5, 3))}
    fn = gc.compile([out])
    with pytest.raises(gc.GraphError) as info:
        fn(**feeds)
    message = str(info.value)
    operand = "tanh %" if case == "after_tanh" else "input x"
    assert f"built at {at}" in message and f"its operand {operand}" in message
    assert "is of size 1 on axis 0 at run time and would broadcast to 5" in message
    assert "declare that axis as 1" in message and "Traceback" not in message
    np.testing.assert_allclose(gc.evaluate(out, feeds), eval_numpy(case, **feeds),
                               rtol=1e-14)
    same = {"x": rng.standard_normal((5, 3)), "z": rng.standard_normal((5, 3))}
    np.testing.assert_allclose(fn(**same)[0], eval_numpy(case, **same), rtol=1e-14)


def eval_numpy(case: str, x: np.ndarray, z: np.ndarray) -> float:
    values = {"mul": lambda: x * z, "reversed": lambda: z - x,
              "after_tanh": lambda: np.tanh(x) + z, "where": lambda: np.where(z > 0, x, z),
              "maximum": lambda: np.maximum(x, z),
              "broadcast_to": lambda: np.broadcast_to(x, (5, 3)) * 2.0}
    return float(np.sum(values[case]()))


def test_a_static_1_broadcasts_in_compiled_functions() -> None:
    """What the message advises: an axis declared 1 broadcasts in compiled functions."""
    g = gc.Graph("static_broadcast", dtype="float64")
    x = g.input("x", (1, 3))
    z = g.input("z", (None, 3))
    out = gc.sum(gc.tanh(x) * z)
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((1, 3)), "z": rng.standard_normal((5, 3))}
    np.testing.assert_allclose(gc.compile([out])(**feeds)[0],
                               np.sum(np.tanh(feeds["x"]) * feeds["z"]), rtol=1e-14)


def test_check_finite_names_the_node_and_line() -> None:
    g = gc.Graph("nan")
    x = g.input("x", (2,))
    out, at = gc.log(x), here()
    with pytest.raises(gc.NonFiniteError) as info:
        gc.evaluate(gc.exp(out), {"x": np.array([1.0, -1.0])}, check_finite=True)
    message = str(info.value)
    assert "log" in message and f"built at {at}" in message and "Traceback" not in message
    # without check_finite the NaN is simply returned
    assert np.isnan(gc.evaluate(out, {"x": np.array([-1.0, 1.0])})[0])


def test_evaluate_rejects_non_values() -> None:
    with pytest.raises(gc.GraphError, match="expected Values"):
        gc.evaluate([np.zeros(2)])
    g = gc.Graph("lookup")
    g.input("known", (1,))
    with pytest.raises(gc.GraphError, match=r"no input or parameter 'unknown'.*known"):
        g["unknown"]
