"""The hot path allocates nothing that outlives a call: many calls of a training step and of
a prediction function (an MLP and a CNN) leave the memory traced by tracemalloc (numpy
reports its allocations to it, and Numba's runtime allocates through it) where it was, and
each call's transient peak is the same every time. Measured in a new process, whose
history is the same at every run.

Thresholds:
- growth over STEPS calls after WARMUP calls, both traced, with the interpreter's free lists
  emptied before both readings (gc.collect): under GROWTH_LIMIT bytes in all, 8 bytes a
  call. One object kept per call (a float is 24 bytes, an array at least 112) would be
  96-450 KiB; what is measured (1-5 KiB) is CPython's and numpy's own reuse (objects of
  earlier calls kept in internal pools and replaced by later ones; it does not grow with
  the number of calls: benchmarks/soak.py's RSS is flat over 40,000 steps). Tracing starts
  before the warm-up, so that a pool turning over is not counted as growth.
- a call's peak above what was live before it: for the MLP under CALL_PEAK_LIMIT (the
  Python objects of one call: the keyword and feed dicts, the addresses written into the
  argument table, the loss float; 1.5-3 KiB measured), plus the returned array for a
  prediction (a copy the caller owns, by design); for the CNN, the convolution kernels'
  im2col scratch is allocated and freed inside each kernel call (bounded by
  kernels/cpu/conv.py's chunking), so its peak is that much higher (21 KiB here). Every
  call's peak is the same within PEAK_SPREAD_LIMIT (a dict resizing or a collection
  during one call moves it by about a KiB).
"""

from __future__ import annotations

import gc as pygc
import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest

import graphc as gc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARMUP = 1000
STEPS = 4000
GROWTH_LIMIT = 32 * 1024
CALL_PEAK_LIMIT = 8 * 1024
PEAK_SPREAD_LIMIT = 4 * 1024


def mlp() -> tuple[gc.Value, gc.Value, dict[str, np.ndarray]]:
    g = gc.Graph("steady_mlp", seed=0)
    x = g.input("x", (None, 64))
    y = g.input("y", (None,), dtype="int64")
    h = gc.relu(gc.nn.linear(x, 128, name="fc1"))
    logits = gc.nn.linear(gc.relu(gc.nn.linear(h, 128, name="fc2")), 10, name="fc3")
    loss = gc.mean(gc.softmax_cross_entropy(logits, y))
    rng = np.random.default_rng(0)
    return logits, loss, {"x": rng.standard_normal((64, 64)).astype(np.float32),
                          "y": rng.integers(0, 10, 64)}


def cnn() -> tuple[gc.Value, gc.Value, dict[str, np.ndarray]]:
    g = gc.Graph("steady_cnn", seed=0)
    x = g.input("x", (None, 1, 8, 8))
    y = g.input("y", (None,), dtype="int64")
    h = gc.nn.max_pool2d(gc.relu(gc.nn.conv2d(x, 8, 3, padding=1, name="conv1")), 2)
    h = gc.nn.batch_norm(h, name="bn1")
    logits = gc.nn.linear(gc.nn.flatten(h), 10, name="out")
    loss = gc.mean(gc.softmax_cross_entropy(logits, y))
    rng = np.random.default_rng(0)
    return logits, loss, {"x": rng.standard_normal((4, 1, 8, 8)).astype(np.float32),
                          "y": rng.integers(0, 10, 4)}


def traced(call: Callable[[], object]) -> tuple[int, list[int]]:
    """(bytes the traced memory grew over STEPS calls after WARMUP, each of 50 calls' peak
    above what was live before it)."""
    tracemalloc.start()
    try:
        for _ in range(WARMUP):   # traced too: objects kept from it and freed later count
            call()
        pygc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(STEPS):
            call()
        pygc.collect()
        growth = tracemalloc.get_traced_memory()[0] - before
        peaks = []
        for _ in range(50):
            tracemalloc.reset_peak()
            live = tracemalloc.get_traced_memory()[0]
            call()
            peaks.append(tracemalloc.get_traced_memory()[1] - live)
    finally:
        tracemalloc.stop()
    return growth, peaks


MODELS = {"mlp": mlp, "cnn": cnn}
CASES = [(model, kind) for model in MODELS for kind in ("step", "predict")]


def measure(model: str, kind: str) -> dict[str, object]:
    """traced() of the training step or the prediction function of `model`, and the bytes a
    call returns (a prediction's array)."""
    logits, loss, feeds = MODELS[model]()
    if kind == "step":
        fn = gc.compile(loss, optimizer=gc.optim.Adam(1e-3))

        def call() -> object:
            return fn(**feeds)
        returned = 0
    else:
        fn = gc.compile(logits)
        x = feeds["x"]

        def call() -> object:
            return fn(x=x)
        returned = call().nbytes
    growth, peaks = traced(call)
    return {"growth": growth, "peaks": peaks, "returned": returned}


MEASURE = """
import json
from tests.test_steady_memory import CASES, measure
print(json.dumps([measure(model, kind) for model, kind in CASES]))
"""


@pytest.fixture(scope="module")
def measured() -> dict[tuple[str, str], dict]:
    """Every case measured in a new process: the pools CPython and numpy keep (see the
    module docstring) depend on what a process did before, not on graphc."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", MEASURE], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(zip(CASES, json.loads(done.stdout.strip().splitlines()[-1])))


@pytest.mark.parametrize(("model", "kind"), CASES)
def test_calls_allocate_nothing_that_outlives_them(measured, model, kind) -> None:
    result = measured[model, kind]
    growth, peaks = result["growth"], result["peaks"]
    assert growth < GROWTH_LIMIT, (growth, GROWTH_LIMIT)
    assert max(peaks) - min(peaks) < PEAK_SPREAD_LIMIT, peaks
    if model == "mlp":
        assert max(peaks) < CALL_PEAK_LIMIT + result["returned"], peaks
