"""Labels and ids out of range raise, naming the op, the value, the valid range and the
user's line, from the interpreter and from compiled code alike; a batch of 0 rows is
refused at the feed by a training step. (The CUDA target: tests/cuda_sim.)

Indexing by a Value (`x[i]`, `gc.take`) follows numpy, PyTorch and JAX: a negative index
counts from the end, so indices lie in [-n, n); outside that they raise. Embedding ids and
class labels stay in [0, n), as torch.nn.functional.embedding and cross_entropy require: a
negative one raises."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from tests.helpers import here


def _classifier():
    g = gc.Graph("labels", seed=0)
    x = g.input("x", (None, 4))
    y = g.input("y", (None,), dtype="int64")
    loss, at = gc.mean(gc.softmax_cross_entropy(gc.nn.linear(x, 10, name="fc"), y)), here()
    return g, loss, at


X = np.ones((3, 4), dtype=np.float32)


@pytest.mark.parametrize("bad", [12, 10, -1])
@pytest.mark.parametrize("how", ["interpreted", "compiled", "training"])
def test_a_label_out_of_range_names_the_op_value_range_and_line(bad: int, how: str) -> None:
    _, loss, at = _classifier()
    y = np.array([0, bad, 3])
    with pytest.raises(gc.IndexRangeError) as info:
        if how == "interpreted":
            gc.evaluate(loss, {"x": X, "y": y})
        elif how == "compiled":
            gc.compile(loss)(x=X, y=y)
        else:
            step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))
            before = {k: v.copy() for k, v in step.params.items()}
            try:
                step(x=X, y=y)
            finally:
                assert all(np.array_equal(v, before[k]) for k, v in step.params.items())
                assert step.state["step"] == 0
    message = str(info.value)
    assert "softmax_cross_entropy" in message and f"label {bad}" in message
    assert "[0, 10)" in message and at in message
    assert isinstance(info.value, IndexError)   # as PyTorch raises


def _embedding():
    g = gc.Graph("ids", seed=0)
    ids = g.input("ids", (None,), dtype="int64")
    out, at = gc.nn.embedding(ids, 5, 3, name="emb"), here()
    return g, out, at


@pytest.mark.parametrize("bad", [-1, 5, 70])
@pytest.mark.parametrize("compiled", [False, True])
def test_an_embedding_id_out_of_range_names_the_node_and_line(bad: int, compiled: bool) -> None:
    _, out, at = _embedding()
    ids = np.array([0, bad, 4])
    with pytest.raises(gc.IndexRangeError) as info:
        if compiled:
            gc.compile([out])(ids=ids)
        else:
            gc.evaluate(out, {"ids": ids})
    message = str(info.value)
    assert "take" in message and f"index {bad}" in message and "[0, 5)" in message
    assert at in message


def test_an_embedding_id_out_of_range_in_a_training_step_leaves_the_table() -> None:
    g, out, _ = _embedding()
    step = gc.compile(gc.sum(out * out), optimizer=gc.optim.SGD(lr=0.1))
    table = g.param_values["emb.w"].copy()
    with pytest.raises(gc.IndexRangeError, match=r"index -1 .*\[0, 5\)"):
        step(ids=np.array([1, -1]))
    assert np.array_equal(g.param_values["emb.w"], table)
    step(ids=np.array([1, 4]))   # in range: fine afterwards
    assert not np.array_equal(g.param_values["emb.w"], table)


def test_a_training_step_refuses_a_batch_of_0_rows_at_the_feed() -> None:
    _, loss, _ = _classifier()
    step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))
    with pytest.raises(gc.FeedError, match=r"'x'.*batch of 0 rows"):
        step(x=np.zeros((0, 4), dtype=np.float32), y=np.zeros(0, dtype=np.int64))
    assert step.state["step"] == 0


def test_predicting_on_0_rows_gives_0_rows() -> None:
    g, _, _ = _classifier()
    logits = gc.nn.linear(g["x"], 2, name="head")
    (out,) = gc.compile([logits])(x=np.zeros((0, 4), dtype=np.float32))
    assert out.shape == (0, 2)


def test_the_batch_sharded_step_reports_a_label_out_of_range_too(monkeypatch) -> None:
    monkeypatch.setenv("GRAPHC_SHARDS", "2")
    _, loss, at = _classifier()
    step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))
    assert step.program.shards is not None and step.program.shards.enabled
    with pytest.raises(gc.IndexRangeError, match=r"softmax_cross_entropy label 12 .*\[0, 10\)"
                       ) as info:
        step(x=X, y=np.array([0, 12, 1]))
    assert at in str(info.value) and step.state["step"] == 0


def _gather(how: str):
    g = gc.Graph("gather", dtype="float64", seed=0)
    x = g.input("x", (None, 3))
    i = g.input("i", (None,), dtype="int64")
    w = g.param("w", np.arange(12, dtype=np.float64).reshape(4, 3) / 10.0)
    if how == "getitem":
        out, at = x[i] * w[i], here()
    else:
        out, at = gc.take(x, i, axis=0) * gc.take(w, i, axis=0), here()
    return g, out, at


ROWS = np.arange(12, dtype=np.float64).reshape(4, 3)


@pytest.mark.parametrize("how", ["getitem", "take"])
@pytest.mark.parametrize("shards", ["1", "2"])
def test_negative_indices_count_from_the_end_as_in_numpy(how: str, shards: str,
                                                         monkeypatch) -> None:
    monkeypatch.setenv("GRAPHC_SHARDS", shards)
    g, out, _ = _gather(how)
    i = np.array([-1, 0, -4, 3, -2, 2, 1])
    w = g.param_values["w"].copy()
    want = ROWS[i] * w[i]
    np.testing.assert_array_equal(gc.evaluate(out, {"x": ROWS, "i": i}), want)
    (got,) = gc.compile([out])(x=ROWS, i=i)
    np.testing.assert_array_equal(got, want)
    # the gradient scatter-adds into the wrapped rows: -1 and 3 both reach row 3
    dw = np.zeros_like(w)
    np.add.at(dw, i, ROWS[i])
    step = gc.compile(gc.sum(out), optimizer=gc.optim.SGD(lr=1.0))
    step(x=ROWS, i=i)
    np.testing.assert_allclose(g.param_values["w"], w - dw, rtol=1e-15)


@pytest.mark.parametrize("bad", [-5, 4, 9])
@pytest.mark.parametrize("how", ["interpreted", "compiled", "training"])
def test_an_index_outside_minus_n_to_n_names_the_node_range_and_line(bad: int,
                                                                      how: str) -> None:
    g, out, at = _gather("getitem")
    i = np.array([0, -1, bad])
    with pytest.raises(gc.IndexRangeError) as info:
        if how == "interpreted":
            gc.evaluate(out, {"x": ROWS, "i": i})
        elif how == "compiled":
            gc.compile([out])(x=ROWS, i=i)
        else:
            w = g.param_values["w"].copy()
            step = gc.compile(gc.sum(out), optimizer=gc.optim.SGD(lr=1.0))
            try:
                step(x=ROWS, i=i)
            finally:
                assert np.array_equal(g.param_values["w"], w)
    message = str(info.value)
    assert "take" in message and f"index {bad}" in message and "[-4, 4)" in message
    assert at in message


@pytest.mark.parametrize("compiled", [False, True])
def test_an_ignored_negative_label_is_still_ignored(compiled: bool) -> None:
    g = gc.Graph("ignored", dtype="float64", seed=0)
    x = g.input("x", (None, 4))
    y = g.input("y", (None,), dtype="int64")
    loss = gc.softmax_cross_entropy(x, y, ignore_index=-1)
    feeds = {"x": np.eye(3, 4), "y": np.array([1, -1, 3])}
    got = gc.compile([loss])(**feeds)[0] if compiled else gc.evaluate(loss, feeds)
    assert got[1] == 0.0 and got[0] > 0.0 and got[2] > 0.0
