"""What the CUDA target checks before it touches the parameters (simulator): every
gradient is finite (one device-side flag, read once), labels and ids are in range, and the
buffers kept per feed shape are bounded. Errors are those of the CPU target, with the same
information."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from tests.helpers import here


def _mlp():
    g = gc.Graph("cuda_guard", seed=0)
    x = g.input("x", (None, 4))
    y = g.input("y", (None,), dtype="int64")
    h, at = gc.relu(gc.nn.linear(x, 3, name="fc1")), here()
    loss = gc.mean(gc.softmax_cross_entropy(gc.nn.linear(h, 2, name="fc2"), y))
    return g, loss, at


def _dead_row_feeds(step) -> dict[str, np.ndarray]:
    """Feeds whose Inf reaches no loss (a ReLU cuts it: finite loss) but whose gradient
    with respect to fc1.w is Inf * 0 = NaN."""
    w = step.params["fc1.w"]
    w[0] = -np.abs(w[0]) - 0.1
    step.params["fc1.b"][:] = 0
    step.sync_to_device()
    x = np.ones((2, 4), dtype=np.float32)
    x[0, 0] = np.inf
    return {"x": x, "y": np.array([0, 1])}


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_a_non_finite_gradient_with_a_finite_loss_stops_before_the_update(target) -> None:
    _, loss, _ = _mlp()
    step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1), target=target)
    feeds = _dead_row_feeds(step)
    before = {k: v.copy() for k, v in step.params.items()}
    with pytest.raises(gc.NonFiniteError) as info:
        step(**feeds)
    message = str(info.value)
    assert "a gradient is not finite (the loss is)" in message
    assert "left unchanged" in message and "the feed 'x' holds a non-finite value" in message
    assert step.state["step"] == 0
    for name, value in step.params.items():
        assert np.array_equal(value, before[name]), name


def _gradient_in_the_update_group() -> tuple[gc.Graph, gc.Value]:
    """A loss whose only gradient (2 w) is computed inside the group writing w's update:
    no gradient group runs between the outputs and the updates."""
    g = gc.Graph("cuda_update_only", dtype="float64", seed=0)
    x = g.input("x", (None, 4))
    w = g.param("w", np.linspace(-1.0, 1.0, 12).reshape(4, 3))
    return g, gc.sum(x * x) + gc.sum(w * w)


def test_updates_computing_their_own_gradient_run_after_the_outputs_and_reach_the_host(
        ) -> None:
    g, loss = _gradient_in_the_update_group()
    w = g.param_values["w"].copy()
    step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1), target="cuda")
    assert step(x=np.ones((2, 4))) == pytest.approx(8.0 + np.sum(w * w), rel=1e-12)
    np.testing.assert_allclose(step.params["w"], 0.8 * w, rtol=1e-12)
    x = np.ones((2, 4))
    x[0, 0] = np.inf
    with pytest.raises(gc.NonFiniteError):
        step(x=x)
    np.testing.assert_allclose(step.params["w"], 0.8 * w, rtol=1e-12)
    assert step.state["step"] == 1


def test_the_cuda_gradient_check_is_one_device_flag() -> None:
    _, loss, _ = _mlp()
    step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1), target="cuda")
    assert "finite check" in step.source
    step(x=np.ones((2, 4), dtype=np.float32), y=np.array([0, 1]))
    plan = next(iter(step._plans.values()))
    assert any(what.startswith("finite check") for what in plan.launched)


@pytest.mark.parametrize("bad", [4, -1])
def test_a_label_out_of_range_raises_before_the_update(bad: int) -> None:
    _, loss, _ = _mlp()
    step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1), target="cuda")
    before = {k: v.copy() for k, v in step.params.items()}
    with pytest.raises(gc.IndexRangeError) as info:
        step(x=np.ones((2, 4), dtype=np.float32), y=np.array([0, bad]))
    message = str(info.value)
    assert f"softmax_cross_entropy label {bad} is out of range [0, 2)" in message
    assert "test_sim_guarantees.py" in message and "left unchanged" in message
    for name, value in step.params.items():
        assert np.array_equal(value, before[name]), name


@pytest.mark.parametrize("bad", [-5, 4])
def test_a_value_index_outside_minus_n_to_n_raises_before_the_update(bad: int) -> None:
    g = gc.Graph("cuda_gather", dtype="float64", seed=0)
    i = g.input("i", (None,), dtype="int64")
    w = g.param("w", np.arange(12, dtype=np.float64).reshape(4, 3))
    loss, at = gc.sum(w[i] * w[i]), here()
    step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1), target="cuda")
    before = step.params["w"].copy()
    assert step(i=np.array([-1, 3, -4])) == pytest.approx(
        float(np.sum(before[[3, 3, 0]] ** 2)))   # -1 is the last row, -4 the first
    with pytest.raises(gc.IndexRangeError) as info:
        step(i=np.array([0, bad]))
    message = str(info.value)
    assert f"index {bad} is out of range [-4, 4)" in message and at in message
    expected = before.copy()
    expected[3] -= 0.1 * 4.0 * before[3]
    expected[0] -= 0.1 * 2.0 * before[0]
    np.testing.assert_allclose(step.params["w"], expected, rtol=1e-15)


def test_device_buffers_are_kept_for_a_bounded_number_of_feed_shapes(monkeypatch) -> None:
    monkeypatch.setenv("GRAPHC_MAX_SHAPES", "2")
    g = gc.Graph("cuda_shapes", seed=0)
    x = g.input("x", (None, 4))
    f = gc.compile([gc.nn.linear(x, 3, name="fc")], target="cuda")
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 4, 1, 5):
        xs = rng.standard_normal((n, 4)).astype(np.float32)
        (out,) = f(x=xs)
        np.testing.assert_allclose(out, xs @ g.param_values["fc.w"] + g.param_values["fc.b"],
                                   rtol=1e-5, atol=1e-6)
        assert len(f._plans) <= 2
    assert list(f._plans) == [((1, 4),), ((5, 4),)]


def test_a_nan_parameter_is_named_on_cuda() -> None:
    _, loss, _ = _mlp()
    step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1), target="cuda")
    step.params["fc2.w"][0, 0] = np.nan
    step.sync_to_device()
    with pytest.raises(gc.NonFiniteError, match=r"parameter .fc2\.w. holds a non-finite value"):
        step(x=np.ones((2, 4), dtype=np.float32), y=np.array([0, 1]))


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_a_run_time_size_fed_1_that_broadcasts_is_refused_before_the_update(target) -> None:
    """x of run-time batch size fed 1 row against y's 4: the kernels would index x with
    the result's rows. Both targets refuse the feeds, naming the product, and leave the
    parameters as they were; feeds whose sizes agree train."""
    g = gc.Graph("cuda_broadcast", seed=0)
    x = g.input("x", (None, 3))
    y = g.input("y", (None, 3))
    h = gc.tanh(gc.nn.linear(x, 3, name="fc"))
    product, at = h * y, here()
    step = gc.compile(gc.mean(product), optimizer=gc.optim.SGD(lr=0.1), target=target)
    before = {k: v.copy() for k, v in step.params.items()}
    feeds = {"x": np.ones((1, 3), dtype=np.float32), "y": np.ones((4, 3), dtype=np.float32)}
    with pytest.raises(gc.GraphError, match="is of size 1 on axis 0 at run time") as info:
        step(**feeds)
    assert f"built at {at}" in str(info.value)
    for name, value in step.params.items():
        np.testing.assert_array_equal(value, before[name])
    assert np.isfinite(step(x=np.ones((4, 3), dtype=np.float32), y=feeds["y"]))
