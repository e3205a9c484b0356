"""A computed value used only for its shape is never run on the CUDA target either
(simulator): the programs of tests/test_shape_references.py against the interpreter."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from tests.test_shape_references import FEEDS, _graph


@pytest.mark.parametrize("use", ["zeros_like", "broadcast_to"])
@pytest.mark.parametrize("reference", ["matmul", "take", "concat", "cumsum"])
def test_a_computed_shape_reference_compiles_and_matches_the_interpreter(
        reference: str, use: str) -> None:
    _, out, _ = _graph(reference, use)
    want = gc.evaluate(out, FEEDS)
    (got,) = gc.compile([out], target="cuda")(**FEEDS)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_a_training_step_with_a_shape_reference_matches_the_interpreter() -> None:
    g, _, loss = _graph("take", "zeros_like")
    w = g.param_values["w"].copy()
    (dw,) = gc.evaluate(gc.grad(loss, [g["w"]]), FEEDS)
    step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.5), target="cuda")
    np.testing.assert_allclose(step(**FEEDS), gc.evaluate(loss, FEEDS), rtol=1e-12)
    step.sync_to_host()
    np.testing.assert_allclose(step.params["w"], w - 0.5 * dw, rtol=1e-12, atol=1e-15)
