"""step.save / step.load: contents, in-place loading, bitwise resume (same process and a new
one), mismatch errors, fingerprints, and atomic writes that survive failures and kills."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

import graphc as gc
import graphc.checkpoint as ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(hidden: int = 8, depth: int = 1, dtype: str = "float32", betas=(0.9, 0.999),
          seed: int = 0, training: bool | None = True) -> SimpleNamespace:
    """A small classifier with an Adam step (`training`), its prediction function, or
    (`training=None`) nothing compiled; also a graph state entry the program does not use
    (saved and loaded all the same)."""
    g = gc.Graph("ckpt_model", seed=seed, dtype=dtype)
    x = g.input("x", (None, 5))
    y = g.input("y", (None,), dtype="int64")
    h = x
    for k in range(depth):
        h = gc.tanh(gc.nn.linear(h, hidden, name=f"fc{k + 1}"))
    logits = gc.nn.linear(h, 3, name="out")
    loss = gc.mean(gc.softmax_cross_entropy(logits, y))
    g.state("extra.counter", np.arange(3, dtype=np.float64))
    optimizer = gc.optim.Adam(0.01, betas=betas)
    if training is None:
        return SimpleNamespace(graph=g, logits=logits, loss=loss, optimizer=optimizer)
    fn = gc.compile(loss, optimizer=optimizer) if training else gc.compile([logits])
    return SimpleNamespace(graph=g, logits=logits, loss=loss, step=fn)


def batches(count: int, start: int = 0):
    """`count` deterministic batches, numbered from `start`."""
    for k in range(start, start + count):
        rng = np.random.default_rng(1000 + k)
        yield (rng.standard_normal((16, 5)).astype(np.float32),
               rng.integers(0, 3, 16).astype(np.int64))


def train(step, count: int, start: int = 0) -> None:
    for xb, yb in batches(count, start):
        step(x=xb, y=yb)


def values(step) -> dict[str, bytes]:
    return {k: v.tobytes() for k, v in {**step.params, **step.optimizer_state()}.items()}


@pytest.fixture(scope="module")
def trained() -> SimpleNamespace:
    m = build()
    train(m.step, 5)
    return m


def test_checkpoint_holds_params_state_step_and_fingerprint(trained, tmp_path) -> None:
    path = tmp_path / "model.npz"
    assert trained.step.save(path) == str(path)
    with np.load(path, allow_pickle=False) as f:
        names = set(f.files)
        meta = json.loads(f["__graphc__"].item())
        w = f["param/fc1.w"]
    assert names == {"__graphc__", *(f"param/{k}" for k in trained.step.params),
                     *(f"state/{k}" for k in trained.step.optimizer_state())}
    assert "state/fc1.w.exp_avg" in names and "state/extra.counter" in names
    assert np.array_equal(w, trained.step.params["fc1.w"])
    assert meta["format"] == "graphc-checkpoint" and meta["step_state"] == {"step": 5}
    assert meta["fingerprint"] == ckpt.fingerprint(trained.step.program)
    assert meta["optimizer"]["type"] == "Adam" and meta["training"] is True
    assert meta["params"]["fc1.w"] == [[5, 8], "float32"]
    assert meta["rng"]["bit_generator"] == "PCG64"


def test_load_copies_into_the_existing_arrays(trained, tmp_path) -> None:
    path = tmp_path / "model.npz"
    step = trained.step
    predict = gc.compile([trained.logits])
    xb = next(batches(1))[0]
    expected = predict(x=xb)[0]
    saved = values(step)
    step.save(path)
    arrays = {k: v for k, v in {**step.params, **step.optimizer_state()}.items()}
    for a in arrays.values():
        a[...] = 7
    step.state["step"] = 99
    step.load(path)
    assert values(step) == saved and step.state["step"] == 5
    for k, a in {**step.params, **step.optimizer_state()}.items():
        assert a is arrays[k]
    assert np.array_equal(predict(x=xb)[0], expected)


def test_resume_in_the_same_process_is_bitwise(tmp_path) -> None:
    path = tmp_path / "half.npz"
    first = build()
    train(first.step, 6)
    first.step.save(path)
    train(first.step, 6, start=6)
    second = build()
    assert values(second.step) != values(first.step)
    second.step.load(path)
    assert second.step.state["step"] == 6
    train(second.step, 6, start=6)
    assert values(second.step) == values(first.step)
    assert second.step.state["step"] == 12


RESUME_SCRIPT = """
import sys
import numpy as np
from tests.test_checkpoint import build, train
m = build()
m.step.load(sys.argv[1], strict=True)
train(m.step, 6, start=6)
np.savez(sys.argv[2], step=m.step.state["step"],
         **{k: v for k, v in {**m.step.params, **m.step.optimizer_state()}.items()})
"""


def test_resume_in_a_new_process_is_bitwise(tmp_path) -> None:
    uninterrupted = build()
    train(uninterrupted.step, 6)
    uninterrupted.step.save(tmp_path / "half.npz")
    train(uninterrupted.step, 6, start=6)
    done = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(tmp_path / "half.npz"),
                           str(tmp_path / "resumed.npz")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "resumed.npz") as f:
        assert int(f["step"]) == 12
        resumed = {k: f[k].tobytes() for k in f.files if k != "step"}
    assert resumed == values(uninterrupted.step)


def test_loading_into_another_graph_names_the_mismatch(trained, tmp_path) -> None:
    path = tmp_path / "model.npz"
    trained.step.save(path)
    cases = [
        (build(hidden=6, training=False), [
            r"parameter 'fc1.w' has shape \(5, 6\) in this graph but \(5, 8\) in the "
            "checkpoint", "parameter 'fc1.b' has shape"]),
        (build(depth=2, training=False), [
            r"parameter 'fc2.w' \(8, 8\) float32 is missing from the checkpoint"]),
        (build(dtype="float64", training=False), [
            "parameter 'fc1.w' has dtype float64 in this graph but float32 in the checkpoint"]),
    ]
    for other, patterns in cases:
        before = values(other.step)
        with pytest.raises(ckpt.CheckpointError, match="nothing was loaded") as info:
            other.step.load(path)
        for pattern in patterns:
            assert re.search(pattern, str(info.value)), (pattern, str(info.value))
        assert values(other.step) == before
    deeper = build(depth=2, training=False)
    deeper.step.save(tmp_path / "deeper.npz")
    before = values(trained.step)
    with pytest.raises(gc.GraphError) as info:
        trained.step.load(tmp_path / "deeper.npz")
    message = str(info.value)
    assert "parameter 'fc2.w' (8, 8) float32 is in the checkpoint but not in this graph" \
        in message
    assert "state 'fc1.w.exp_avg' (5, 8) float32 is missing from the checkpoint" in message
    assert values(trained.step) == before and trained.step.state["step"] == 5


def test_fingerprint_mismatch_warns_or_raises_when_strict(trained, tmp_path) -> None:
    path = tmp_path / "model.npz"
    trained.step.save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(arrays["__graphc__"].item())
    meta["fingerprint"] = "0" * 32
    arrays["__graphc__"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "other.npz", **arrays)
    saved = values(trained.step)
    train(trained.step, 1, start=40)
    before = values(trained.step)
    with pytest.raises(ckpt.CheckpointError, match=r"different program.*strict"):
        trained.step.load(tmp_path / "other.npz", strict=True)
    assert values(trained.step) == before
    with pytest.warns(UserWarning, match="different program"):
        trained.step.load(tmp_path / "other.npz")
    assert values(trained.step) == saved


def program_fingerprint(m: SimpleNamespace) -> str:
    program = gc.compiler.build_program([m.loss], m.optimizer, [], {})
    return ckpt.fingerprint(program)


def test_fingerprint_follows_structure_not_source_lines(trained) -> None:
    a = build(training=None)
    assert program_fingerprint(a) == program_fingerprint(build(training=None))
    program = gc.compiler.build_program([a.loss], a.optimizer, [], {})
    moved = program.fork()
    moved.nodes = [dataclasses.replace(n, where="elsewhere.py:1") for n in program.nodes]
    assert ckpt.fingerprint(moved) == ckpt.fingerprint(program)
    assert ckpt.fingerprint(build().step.program) == ckpt.fingerprint(trained.step.program)
    for other in (build(hidden=6, training=None), build(betas=(0.8, 0.99), training=None),
                  build(dtype="float64", training=None), build(depth=2, training=None)):
        assert program_fingerprint(other) != program_fingerprint(a)


def test_params_only_and_inference_functions(trained, tmp_path) -> None:
    path = tmp_path / "model.npz"
    trained.step.save(path)
    fresh = build()
    predict = gc.compile([fresh.logits])
    predict.load(path)
    assert all(np.array_equal(fresh.step.params[k], v) for k, v in trained.step.params.items())
    warm = build()
    warm.step.load(path, params_only=True)
    assert warm.step.state["step"] == 0
    assert not np.any(warm.step.optimizer_state()["fc1.w.exp_avg"])
    assert np.array_equal(warm.step.params["out.w"], trained.step.params["out.w"])


def test_rng_state_and_extra_graph_state_are_restored(trained, tmp_path) -> None:
    path = tmp_path / "model.npz"
    state = trained.step.optimizer_state()
    state["extra.counter"][:] = [4.0, 5.0, 6.0]
    trained.step.save(path)
    draws = trained.graph.rng.random(3)
    state["extra.counter"][:] = 0
    trained.step.load(path)
    assert np.array_equal(trained.graph.rng.random(3), draws)
    assert state["extra.counter"].tolist() == [4.0, 5.0, 6.0]


def test_an_interrupted_save_keeps_the_previous_checkpoint(trained, tmp_path,
                                                           monkeypatch) -> None:
    path = tmp_path / "model.npz"
    trained.step.save(path)
    original = path.read_bytes()

    def half_written(f, arrays):
        f.write(original[:len(original) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt, "_write_npz", half_written)
    train(trained.step, 1, start=50)
    with pytest.raises(OSError, match="No space left"):
        trained.step.save(path)
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["model.npz"]

    def interrupted(f, arrays):
        f.write(b"PK\x03\x04")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "_write_npz", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trained.step.save(tmp_path / "new.npz")
    assert os.listdir(tmp_path) == ["model.npz"]
    monkeypatch.undo()
    trained.step.load(path)


KILL_SCRIPT = """
import sys
import graphc as gc
g = gc.Graph("big", seed=0)
x = g.input("x", (None, 256))
fn = gc.compile([gc.nn.linear(x, 8192, name="big")])
k = 0
while True:
    k += 1
    for a in fn.params.values():
        a.fill(k)
    fn.save(sys.argv[1])
    print(k, flush=True)
"""


def test_a_save_killed_midway_leaves_a_complete_checkpoint(tmp_path) -> None:
    path = tmp_path / "big.npz"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        stamps = []
        for line in proc.stdout:
            stamps.append((int(line), time.perf_counter()))
            if len(stamps) == 4:
                break
        per_save = (stamps[-1][1] - stamps[1][1]) / 2
        time.sleep(per_save / 2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    meta, params, _ = ckpt.read(path)
    k = int(params["big.b"][0])
    assert k >= stamps[-1][0]
    assert all(np.all(a == k) for a in params.values())
    assert meta["graph"] == "big"


def test_unreadable_files_are_reported(trained, tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        trained.step.load(tmp_path / "absent.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="could not read checkpoint"):
        trained.step.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "plain.npz", a=np.zeros(2))
    with pytest.raises(ckpt.CheckpointError, match="not a graphc checkpoint"):
        trained.step.load(tmp_path / "plain.npz")
