"""A non-finite value is reported where it comes from: a feed by its name, a parameter by
its name, a gradient by the forward node (and user line) it is the gradient of -- from the
interpreter (check_finite=True) and from a compiled training step alike. A compile error
that is not a damaged cache is reported at once, without purging the cache."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import graphc as gc
import graphc.backends.cpu as cpu_backend
from tests.helpers import here


def _model():
    g = gc.Graph("nan", seed=0)
    x = g.input("x", (None, 3))
    y = g.input("y", (None,), dtype="int64")
    h = gc.nn.linear(x, 4, name="fc1")
    root, at = gc.sqrt(gc.square(h) + 1.0), here()
    loss = gc.mean(gc.softmax_cross_entropy(gc.nn.linear(root, 2, name="fc2"), y))
    return g, loss, at


FEEDS = {"x": np.ones((2, 3), dtype=np.float32), "y": np.array([0, 1])}


@pytest.mark.parametrize("compiled", [False, True])
def test_a_nan_feed_is_named(compiled: bool) -> None:
    _, loss, _ = _model()
    x = FEEDS["x"].copy()
    x[1, 2] = np.nan
    with pytest.raises(gc.NonFiniteError, match=r"feed 'x' holds a non-finite value"):
        if compiled:
            gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))(x=x, y=FEEDS["y"])
        else:
            gc.evaluate(loss, {"x": x, "y": FEEDS["y"]}, check_finite=True)


@pytest.mark.parametrize("compiled", [False, True])
def test_a_nan_parameter_is_named(compiled: bool) -> None:
    g, loss, _ = _model()
    g.param_values["fc2.w"][0, 1] = np.inf
    with pytest.raises(gc.NonFiniteError, match=r"parameter 'fc2.w' holds a non-finite value"):
        if compiled:
            gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))(**FEEDS)
        else:
            gc.evaluate(loss, FEEDS, check_finite=True)


def test_a_non_finite_gradient_names_its_forward_node_and_line() -> None:
    g = gc.Graph("grad_nan", seed=0)
    x = g.input("x", (None, 3))
    w = g.param("w", np.zeros(3))
    root, at = gc.sqrt(x * w), here()   # finite value, d sqrt(u)/du at u = 0 is Inf
    step = gc.compile(gc.sum(root), optimizer=gc.optim.SGD(lr=0.1))
    with pytest.raises(gc.NonFiniteError) as info:
        step(x=np.ones((2, 3), dtype=np.float32))
    message = str(info.value)
    assert "a gradient is not finite (the loss is)" in message
    assert "part of the gradient of sqrt" in message and f"built at {at}" in message


def test_a_typing_error_is_reported_once_and_keeps_the_cache(monkeypatch) -> None:
    monkeypatch.setenv("GRAPHC_SHARDS", "2")
    _, loss, _ = _model()
    purged: list[str] = []
    monkeypatch.setattr(cpu_backend, "purge", lambda module, path: purged.append(module))
    calls: list[str] = []

    def broken(module: str, path: str):
        calls.append(module)
        raise numba.core.errors.TypingError("no implementation for this")

    monkeypatch.setattr(cpu_backend, "load_module", broken)
    with pytest.raises(gc.GraphError, match="no implementation for this"):
        gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))
    assert purged == [] and len(calls) == 1


def test_a_damaged_cache_is_still_purged_and_rebuilt(monkeypatch) -> None:
    monkeypatch.setenv("GRAPHC_SHARDS", "2")
    _, loss, _ = _model()
    real = cpu_backend.load_module
    purged: list[str] = []
    monkeypatch.setattr(cpu_backend, "purge", lambda module, path: purged.append(module))
    failures = [EOFError("Ran out of input")]

    def flaky(module: str, path: str):
        if failures:
            raise failures.pop()
        return real(module, path)

    monkeypatch.setattr(cpu_backend, "load_module", flaky)
    step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))
    assert purged and step.compile_report.cache_repaired == 1
    assert np.isfinite(step(**FEEDS))
