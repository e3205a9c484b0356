"""Training steps on the CUDA target (simulator) against the CPU target.

The same graph is built twice (same seed: same initial parameters) and compiled for each
target; both get the same minibatches. Tolerances:

* float64: rtol 1e-12 on losses, atol 1e-12 on parameters after the run. Both targets
  round once per operation; they differ in summation order (CPU: sequential with
  reassociation / BLAS; CUDA: per-thread strides then a fixed tree, tiled dot products),
  ~1e-16 relative per value, grown a little by the trajectory (measured ~5e-16).
* float32: rtol 1e-5 on losses, atol 1e-5 on O(0.1..1) parameters after 6 Adam steps
  (measured 1e-7 on losses, ~1e-7 on parameters: float32 rounding in other orders). A wrong
  kernel (index, broadcast, stride, a missed update) is off by 1e-2 or more.

Reproducibility is bit for bit: nothing on the CUDA target uses atomics, so two runs of
the same step from the same state give identical results.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.backends.cuda.codegen import Assign
from graphc.backends.cuda.runtime import CudaCompiledFunction

TOL = {"float64": dict(rtol=1e-12, atol=1e-12), "float32": dict(rtol=1e-5, atol=1e-5)}


def data(n: int = 48, features: int = 12, classes: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features))
    teacher = rng.standard_normal((features, classes))
    y = np.argmax(x @ teacher + 0.3 * rng.standard_normal((n, classes)), axis=1)
    return x, y


def mlp(dtype: str = "float32", hidden: int = 16):
    g = gc.Graph("cuda_mlp", seed=0, dtype=dtype)
    x = g.input("x", (None, 12))
    y = g.input("y", (None,), dtype="int64")
    h = gc.relu(gc.nn.linear(x, hidden, name="fc1"))
    logits = gc.nn.linear(h, 4, name="fc2")
    loss = gc.mean(gc.softmax_cross_entropy(logits, y))
    return g, loss, logits


def batches(x: np.ndarray, y: np.ndarray, dtype: str, steps: int, size: int = 16):
    for k in range(steps):
        start = (k * size) % len(x)
        yield x[start:start + size].astype(dtype), y[start:start + size]


def assert_params_close(a: dict, b: dict, dtype: str) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=TOL[dtype]["atol"],
                                   err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mlp_training_matches_the_cpu_target(dtype: str) -> None:
    x, y = data()
    _, cpu_loss, _ = mlp(dtype)
    _, gpu_loss, _ = mlp(dtype)
    cpu = gc.compile(cpu_loss, optimizer=gc.optim.Adam(lr=1e-2))
    gpu = gc.compile(gpu_loss, optimizer=gc.optim.Adam(lr=1e-2), target="cuda")
    assert isinstance(gpu, CudaCompiledFunction) and gpu.target == "cuda"
    losses = []
    for xb, yb in batches(x, y, dtype, steps=6):
        a, b = cpu(x=xb, y=yb), gpu(x=xb, y=yb)
        assert isinstance(b, float)
        np.testing.assert_allclose(b, a, rtol=TOL[dtype]["rtol"])
        losses.append(b)
    assert losses[-1] < losses[0]
    assert gpu.state["step"] == 6
    assert_params_close(gpu.params, cpu.params, dtype)
    assert_params_close(gpu.optimizer_state(), cpu.optimizer_state(), dtype)


def test_training_is_reproducible_bit_for_bit() -> None:
    """Two identical runs give identical bits. On the simulator this also guards against the
    race in its `cuda.shared.array` (two threads getting different "shared" arrays, see
    graphc.backends.cuda.runtime.make_simulator_shared_arrays_thread_safe), which made about one
    suite run in six differ from step 2 on."""
    x, y = data()
    runs = []
    for _ in range(2):
        _, loss, _ = mlp()
        step = gc.compile(loss, optimizer=gc.optim.SGD(0.1, momentum=0.9), target="cuda")
        losses = [step(x=xb, y=yb) for xb, yb in batches(x, y, "float32", steps=4)]
        runs.append((losses, {k: v.copy() for k, v in step.params.items()}))
    assert runs[0][0] == runs[1][0]
    for name in runs[0][1]:
        assert np.array_equal(runs[0][1][name], runs[1][1][name]), name


def test_batch_size_changes_params_live_on_the_device_and_predict_shares_them() -> None:
    x, y = data()
    g, loss, logits = mlp()
    step = gc.compile(loss, optimizer=gc.optim.Adam(lr=1e-2), target="cuda")
    predict = gc.compile([logits], target="cuda")
    before = {k: v.copy() for k, v in step.params.items()}
    step(x=x[:16].astype("float32"), y=y[:16])
    step(x=x[:5].astype("float32"), y=y[:5])  # a partial last batch: a second plan
    assert len(step._plans) == 2
    # the host arrays were untouched until asked for: the device holds the values
    assert all(np.array_equal(g.param_values[k], before[k]) for k in before)
    (scores,) = predict(x=x[:7].astype("float32"))  # sees the trained device values
    trained = step.params  # syncs the graph's host arrays
    assert trained is g.param_values
    assert not np.array_equal(trained["fc1.w"], before["fc1.w"])
    (want,) = gc.evaluate([logits], {"x": x[:7].astype("float32")})
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-5)
    # host edits reach the device after sync_to_device
    step.params["fc2.b"][...] = 100.0
    (unsynced,) = predict(x=x[:2].astype("float32"))
    step.sync_to_device()
    (synced,) = predict(x=x[:2].astype("float32"))
    assert np.all(synced - unsynced > 50)


def test_to_cpu_continues_from_copies_and_shares_nothing() -> None:
    x, y = data()
    _, loss, _ = mlp()
    gpu = gc.compile(loss, optimizer=gc.optim.Adam(lr=1e-2), target="cuda")
    feed = list(batches(x, y, "float32", steps=6))
    for xb, yb in feed[:3]:
        gpu(x=xb, y=yb)
    cpu = gpu.to("cpu")
    assert cpu.target == "cpu" and cpu.state["step"] == 3
    assert_params_close(cpu.params, gpu.params, "float32")
    assert_params_close(cpu.optimizer_state(), gpu.optimizer_state(), "float32")
    for xb, yb in feed[3:]:
        np.testing.assert_allclose(cpu(x=xb, y=yb), gpu(x=xb, y=yb), rtol=1e-5)
    # the CUDA step kept its own device values; continuing on CPU did not touch them
    back = cpu.to("cuda")
    assert back.state["step"] == 6
    assert_params_close(back.params, cpu.params, "float32")


def test_checkpoints_move_between_targets(tmp_path) -> None:
    x, y = data()
    feed = list(batches(x, y, "float32", steps=4))
    _, loss, _ = mlp()
    gpu = gc.compile(loss, optimizer=gc.optim.Adam(lr=1e-2), target="cuda")
    for xb, yb in feed[:2]:
        gpu(x=xb, y=yb)
    path = gpu.save(tmp_path / "gpu.npz")  # syncs the device values first
    _, loss2, _ = mlp()
    cpu = gc.compile(loss2, optimizer=gc.optim.Adam(lr=1e-2))
    cpu.load(path)
    assert cpu.state["step"] == 2
    assert_params_close(cpu.params, gpu.params, "float32")
    # and back: a CPU checkpoint loaded into a CUDA step reaches the device
    cpu(x=feed[2][0], y=feed[2][1])
    cpu_path = cpu.save(tmp_path / "cpu.npz")
    _, loss3, _ = mlp()
    gpu2 = gc.compile(loss3, optimizer=gc.optim.Adam(lr=1e-2), target="cuda")
    gpu2.load(cpu_path)
    np.testing.assert_allclose(gpu2(x=feed[3][0], y=feed[3][1]),
                               cpu(x=feed[3][0], y=feed[3][1]), rtol=1e-5)


def test_non_finite_loss_stops_before_the_update() -> None:
    x, y = data()
    _, loss, _ = mlp()
    step = gc.compile(loss, optimizer=gc.optim.Adam(lr=1e-2), target="cuda")
    step(x=x[:8].astype("float32"), y=y[:8])
    before = {k: v.copy() for k, v in step.params.items()}
    state = {k: v.copy() for k, v in step.optimizer_state().items()}
    bad = x[:8].astype("float32")
    bad[0, 0] = np.inf
    with pytest.raises(gc.NonFiniteError, match="step 2"):
        step(x=bad, y=y[:8])
    assert step.state["step"] == 1
    for name, value in step.params.items():
        assert np.array_equal(value, before[name]), name
    for name, value in step.optimizer_state().items():
        assert np.array_equal(value, state[name]), name
    step.skip_nonfinite = True
    assert not np.isfinite(step(x=bad, y=y[:8]))
    assert all(np.array_equal(v, before[k]) for k, v in step.params.items())


def test_take_out_of_range_raises() -> None:
    g = gc.Graph("cuda_take", seed=0)
    ids = g.input("ids", (None,), dtype="int64")
    emb = gc.nn.embedding(ids, 5, 3, name="emb")
    f = gc.compile([emb], target="cuda")
    (out,) = f(ids=np.array([4, 1, 0]))
    np.testing.assert_array_equal(out, g.param_values["emb.w"][[4, 1, 0]])
    for bad in (5, -1):   # negative ids do not wrap
        with pytest.raises(gc.IndexRangeError, match=rf"index {bad} is out of range \[0, 5\)"):
            f(ids=np.array([1, bad]))


def layer_model(dtype: str):
    g = gc.Graph("cuda_layers", seed=0, dtype=dtype)
    x = g.input("x", (None, 6))
    ids = g.input("ids", (None, 2), dtype="int64")
    y = g.input("y", (None,), dtype="int64")
    e = gc.nn.flatten(gc.nn.embedding(ids, 5, 3, name="emb"))
    h = gc.nn.linear(gc.concat([x, e], axis=1), 8, name="fc1", bias=False)
    h = gc.tanh(gc.nn.dropout(gc.nn.batch_norm(h, name="bn"), 0.25, name="drop"))
    h = gc.nn.layer_norm(h, name="ln")
    logits = gc.nn.linear(gc.gelu(h), 3, name="fc2")
    loss = gc.mean(gc.softmax_cross_entropy(logits, y))
    return loss


def small_layer_model(dtype: str):
    g = gc.Graph("cuda_small_layers", seed=0, dtype=dtype)
    x = g.input("x", (None, 6))
    y = g.input("y", (None,), dtype="int64")
    h = gc.nn.batch_norm(gc.nn.linear(x, 8, name="fc1", bias=False), name="bn")
    logits = gc.nn.linear(gc.tanh(gc.nn.dropout(h, 0.25, name="drop")), 3, name="fc2")
    return gc.mean(gc.softmax_cross_entropy(logits, y))


def layer_feeds(dtype: str, n: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"x": rng.standard_normal((n, 6)).astype(dtype), "ids": rng.integers(0, 5, (n, 2)),
            "y": rng.integers(0, 3, n)}


def test_layer_gradients_match_the_interpreter() -> None:
    """Forward and backward of embedding (take / take_grad), concat, batch norm, dropout
    (counter-based masks: the interpreter draws the same bits), layer norm and GELU (erf),
    float64, in the training view, against gc.evaluate."""
    loss = layer_model("float64")
    params = loss.graph.params
    outputs = [loss, *gc.grad(loss, params)]
    f = gc.compile(outputs, target="cuda", training=True)
    for n in (12, 7):
        feeds = layer_feeds("float64", n)
        f.sync_to_host()  # the state the step reads (dropout's counter advances each call)
        want = gc.evaluate(outputs, feeds, training=True)
        got = f(**feeds)
        for value, name, a, b in zip(outputs, ["loss"] + [p.name for p in params], got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=name)
            assert value.shape == a.shape


def sgd() -> gc.optim.Optimizer:
    return gc.optim.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, clip_norm=0.5)


def test_layers_and_sgd_match_the_cpu_target() -> None:
    """Batch norm and dropout trained with SGD (Nesterov momentum, weight decay, clip_norm:
    a global reduction feeding every update): batch-norm running statistics and dropout's
    step counter are state updated inside the step, on both targets alike."""
    cpu = gc.compile(small_layer_model("float32"), optimizer=sgd())
    gpu = gc.compile(small_layer_model("float32"), optimizer=sgd(), target="cuda")
    for k in range(3):
        feeds = layer_feeds("float32", 12 if k % 2 == 0 else 7)
        del feeds["ids"]
        np.testing.assert_allclose(gpu(**feeds), cpu(**feeds), rtol=TOL["float32"]["rtol"])
    assert_params_close(gpu.params, cpu.params, "float32")
    assert_params_close(gpu.optimizer_state(), cpu.optimizer_state(), "float32")
    assert gpu.optimizer_state()["drop.step"] == 3


def test_updates_not_written_in_place_are_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    """An update the memory plan cannot write in place (a later group still reads the old
    value) gets a buffer of its own and a copy into the parameter at the end of the step.
    Forced here for every update by a memory plan without in-place writes."""
    import graphc.passes as passes

    x, y = data()
    _, cpu_loss, _ = mlp()
    cpu = gc.compile(cpu_loss, optimizer=gc.optim.SGD(0.1, momentum=0.9))
    plan_memory = passes.plan_memory

    def no_inplace(graph, groups):  # type: ignore[no-untyped-def]
        plan = plan_memory(graph, groups)
        for nid in plan.inplace:  # a fresh slot of its own instead
            plan.slot[nid] = plan.slots
            plan.slots += 1
        plan.inplace.clear()
        return plan

    monkeypatch.setattr(passes, "plan_memory", no_inplace)
    _, gpu_loss, _ = mlp()
    gpu = gc.compile(gpu_loss, optimizer=gc.optim.SGD(0.1, momentum=0.9), target="cuda")
    assigns = [i for i in gpu._instructions if isinstance(i, Assign)]
    assert len(assigns) == 8  # 4 parameters, 4 momentum buffers
    for xb, yb in batches(x, y, "float32", steps=3):
        np.testing.assert_allclose(gpu(x=xb, y=yb), cpu(x=xb, y=yb), rtol=1e-5)
    assert_params_close(gpu.params, cpu.params, "float32")
    assert_params_close(gpu.optimizer_state(), cpu.optimizer_state(), "float32")


def test_kernels_listing_and_report_are_inspectable() -> None:
    _, loss, _ = mlp()
    step = gc.compile(loss, optimizer=gc.optim.Adam(lr=1e-3), target="cuda")
    assert step.kernels and all("@cuda.jit" in k.source for k in step.kernels)
    assert all(k.functions for k in step.kernels)
    assert any("cuda.shared.array" in k.source for k in step.kernels)  # matmul, tree
    assert "outputs complete" in step.source and "(in place)" in step.source
    assert "cuda compile / cache load" in str(step.compile_report)
    assert len(step.backward) > 0


def test_the_gpu_launch_configuration_on_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    """One small training step with the block sizes a real GPU gets (256 threads, trees of
    128, 16x16 matmul tiles), not the simulator's tiny ones: grid-stride loops, tree
    reductions and tiles then run with most threads idle, as they do for small tensors on
    a GPU. Results must not depend on `threads`; the summation order of trees and tiles
    changes, within the float32 tolerance above."""
    from graphc.backends.cuda import codegen as cudagen

    gpu_config = cudagen.LaunchConfig()
    assert (gpu_config.threads, gpu_config.reduce_threads, gpu_config.tile) == (256, 128, 16)
    monkeypatch.setattr(cudagen, "default_config", lambda: gpu_config)
    x, y = data(n=24)
    _, cpu_loss, _ = mlp("float32", hidden=20)
    _, gpu_loss, _ = mlp("float32", hidden=20)
    cpu = gc.compile(cpu_loss, optimizer=gc.optim.Adam(lr=1e-2))
    gpu = gc.compile(gpu_loss, optimizer=gc.optim.Adam(lr=1e-2), target="cuda")
    for xb, yb in batches(x, y, "float32", steps=2, size=12):
        np.testing.assert_allclose(gpu(x=xb, y=yb), cpu(x=xb, y=yb),
                                   rtol=TOL["float32"]["rtol"])
    launched = [line for plan in gpu._plans.values() for line in plan.launched]
    assert launched and all("block=256" in line or "block=(16, 16)" in line
                            or "block=128" in line for line in launched), launched
    assert_params_close(gpu.params, cpu.params, "float32")
