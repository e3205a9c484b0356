"""Labels and ids out of range raise, naming the op, the value, the valid range and the
user's line, from the interpreter and from compiled code alike; a batch of 0 rows is
refused at the feed by a training step. (The CUDA target: tests/cuda_sim.)

graphc follows PyTorch here, not numpy: `take` (and `embedding`) refuse a negative index
where numpy would wrap, as torch.nn.functional.embedding and torch.index_select do."""

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
