"""gc.fit: data sources, feeds, progress output, validation metrics, History, early
stopping, callbacks and non-finite losses; gc.metrics against scikit-learn."""

from __future__ import annotations

import io
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import graphc as gc

N_FEATURES, N_CLASSES = 4, 3


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated Gaussian blobs in 4-D: an easy classification problem."""
    rng = np.random.default_rng(seed)
    centers = np.array([[2, 0, 0, 1], [-2, 1, 0, -1], [0, -2, 2, 0]], dtype=np.float64)
    y = rng.integers(0, N_CLASSES, n)
    x = centers[y] + 0.7 * rng.standard_normal((n, N_FEATURES))
    return x.astype(np.float32), y.astype(np.int64)


X, Y = blobs(240, seed=0)
X_VAL, Y_VAL = blobs(90, seed=1)


def build(seed: int = 0) -> SimpleNamespace:
    g = gc.Graph("blobs", seed=seed)
    x = g.input("x", (None, N_FEATURES))
    y = g.input("y", (None,), dtype="int64")
    hidden, hidden_line = gc.tanh(gc.nn.linear(x, 8, name="fc1")), sys._getframe().f_lineno
    logits = gc.nn.linear(hidden, N_CLASSES, name="fc2")
    loss = gc.mean(gc.softmax_cross_entropy(logits, y))
    return SimpleNamespace(graph=g, logits=logits, loss=loss, hidden_line=hidden_line)


@pytest.fixture(scope="module")
def model() -> SimpleNamespace:
    m = build()
    m.step = gc.compile(m.loss, optimizer=gc.optim.Adam(lr=0.02))
    m.predict = gc.compile([m.logits])
    m.initial = {k: v.copy() for k, v in {**m.step.params, **m.step.optimizer_state()}.items()}
    return m


@pytest.fixture
def fresh(model: SimpleNamespace) -> SimpleNamespace:
    """The module's model with its initial parameters, zero optimizer state, step 0."""
    for name, value in model.initial.items():
        store = model.step.params if name in model.step.params else \
            model.step.optimizer_state()
        np.copyto(store[name], value)
    model.step.state["step"] = 0
    model.step.skip_nonfinite = False
    return model


def snapshot(step: gc.compiler.CompiledFunction) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in {**step.params, **step.optimizer_state()}.items()}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


# -- training ---------------------------------------------------------------------------

def test_fit_trains_and_records_history(fresh: SimpleNamespace) -> None:
    out = io.StringIO()
    history = gc.fit(fresh.step, (X, Y, 32), epochs=6, validation=(X_VAL, Y_VAL),
                     metrics={"accuracy": gc.metrics.accuracy}, predict=fresh.predict,
                     file=out)
    assert isinstance(history, gc.History)
    assert len(history) == 6 and history.epochs == list(range(6))
    assert history.keys() == ["loss", "val_loss", "val_accuracy", "samples_per_s", "time"]
    assert all(len(v) == 6 for v in history.history.values())
    assert history["loss"][-1] < history["loss"][0] / 2
    assert history["val_accuracy"][-1] >= 0.95
    assert all(t > 0 for t in history["time"])
    assert fresh.step.state["step"] == 6 * math.ceil(len(X) / 32)
    (scores,) = fresh.predict(x=X_VAL)
    assert history["val_accuracy"][-1] == gc.metrics.accuracy(Y_VAL, scores)
    reference = gc.evaluate(fresh.loss, {"x": X_VAL, "y": Y_VAL})
    assert history["val_loss"][-1] == pytest.approx(float(reference), rel=1e-5)
    assert "History(6 epochs" in repr(history)
    assert history.last()["val_accuracy"] == history["val_accuracy"][-1]


def test_fit_matches_a_hand_written_loop_bitwise(fresh: SimpleNamespace) -> None:
    def data(epoch: int):
        return gc.data.batches(X, Y, 48, seed=100 + epoch)

    history = gc.fit(fresh.step, data, epochs=3, verbose=0)
    by_fit = snapshot(fresh.step)
    for name, value in fresh.initial.items():
        store = fresh.step.params if name in fresh.step.params else \
            fresh.step.optimizer_state()
        np.copyto(store[name], value)
    fresh.step.state["step"] = 0
    losses = []
    for epoch in range(3):
        batch_losses = [(fresh.step(x=xb, y=yb), len(xb)) for xb, yb in data(epoch)]
        losses.append(sum(v * n for v, n in batch_losses) / len(X))
    assert_same(by_fit, snapshot(fresh.step))
    assert history["loss"] == pytest.approx(losses, rel=1e-12)


def test_feeds_name_the_inputs_of_each_batch_position(fresh: SimpleNamespace) -> None:
    swapped = [(Y[i:i + 60], X[i:i + 60]) for i in range(0, len(X), 60)]
    history = gc.fit(fresh.step, swapped, epochs=2, feeds=("y", "x"), verbose=0)
    assert len(history) == 2 and fresh.step.state["step"] == 8
    as_dicts = [{"x": X[:50], "y": Y[:50]}, {"y": Y[50:], "x": X[50:]}]
    gc.fit(fresh.step, as_dicts, epochs=1, verbose=0)
    assert fresh.step.state["step"] == 10
    with pytest.raises(gc.FeedError, match=r"'z'.*inputs are x, y"):
        gc.fit(fresh.step, swapped, epochs=1, feeds=("z", "x"))
    with pytest.raises(gc.FeedError, match="3 arrays"):
        gc.fit(fresh.step, [(X, Y, Y)], epochs=1, verbose=0)


def test_data_sources_are_checked(fresh: SimpleNamespace) -> None:
    one_shot = gc.data.batches(X, Y, 64)
    with pytest.raises(ValueError, match="one-shot iterator"):
        gc.fit(fresh.step, one_shot, epochs=2)
    assert len(gc.fit(fresh.step, gc.data.batches(X, Y, 64), epochs=1, verbose=0)) == 1
    with pytest.raises(ValueError, match=r"\(X, Y, batch_size\)"):
        gc.fit(fresh.step, (X, Y), epochs=1)
    with pytest.raises(ValueError, match="no batches"):
        gc.fit(fresh.step, lambda epoch: [], epochs=1, verbose=0)
    with pytest.raises(TypeError, match="data must be"):
        gc.fit(fresh.step, 42, epochs=1)
    with pytest.raises(gc.GraphError, match="training step"):
        gc.fit(fresh.predict, (X, Y, 32))
    with pytest.raises(ValueError, match="validation set"):
        gc.fit(fresh.step, (X, Y, 32), metrics={"accuracy": gc.metrics.accuracy})
    with pytest.raises(ValueError, match="predict="):
        gc.fit(fresh.step, (X, Y, 32), validation=(X_VAL, Y_VAL),
               metrics={"accuracy": gc.metrics.accuracy})
    with pytest.raises(ValueError, match="on_nonfinite"):
        gc.fit(fresh.step, (X, Y, 32), on_nonfinite="ignore")
    assert fresh.step.state["step"] == 4


def test_initial_epoch_continues_the_epoch_numbering(fresh: SimpleNamespace) -> None:
    seen = []
    history = gc.fit(fresh.step, lambda epoch: seen.append(epoch) or gc.data.batches(
        X, Y, 120, seed=epoch), epochs=5, initial_epoch=3, verbose=0)
    assert seen == [3, 4] and history.epochs == [3, 4]


def test_predict_may_be_a_value_or_a_function(fresh: SimpleNamespace) -> None:
    metrics = {"accuracy": gc.metrics.accuracy}
    a = gc.fit(fresh.step, (X, Y, 32), epochs=1, validation=(X_VAL, Y_VAL), metrics=metrics,
               predict=fresh.logits, verbose=0)
    seen = []

    def predict(x: np.ndarray) -> np.ndarray:
        seen.append(x.shape)
        return fresh.predict(x=x)[0]

    b = gc.fit(fresh.step, (X, Y, 32), epochs=1, validation=(X_VAL, Y_VAL), metrics=metrics,
               predict=predict, verbose=0)
    assert seen == [X_VAL.shape]
    assert 0 <= a["val_accuracy"][0] <= b["val_accuracy"][0] <= 1
    with pytest.raises(ValueError, match="training step"):
        gc.fit(fresh.step, (X, Y, 32), validation=(X_VAL, Y_VAL), metrics=metrics,
               predict=fresh.step)


# -- progress output ---------------------------------------------------------------------

def test_progress_is_one_line_per_epoch_when_not_a_terminal(fresh: SimpleNamespace) -> None:
    out = io.StringIO()
    gc.fit(fresh.step, (X, Y, 32), epochs=3, validation=(X_VAL, Y_VAL), file=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in out.getvalue()
    for k, line in enumerate(lines, 1):
        assert line.startswith(f"epoch {k}/3 8 batches  loss ")
        assert "val_loss" in line and "samples/s" in line


def test_progress_bar_is_redrawn_in_place_on_a_terminal(fresh: SimpleNamespace) -> None:
    out = TTY()
    gc.fit(fresh.step, (X, Y, 32), epochs=2, file=out)
    text = out.getvalue()
    assert text.count("\n") == 2 and "\r" in text
    final = text.split("\n")[0].split("\r")[-1]
    assert final.startswith("epoch 1/2 [====================] 8/8  loss ")
    assert "samples/s" in final
    quiet, per_line = TTY(), TTY()
    gc.fit(fresh.step, (X, Y, 32), epochs=1, file=quiet, verbose=0)
    gc.fit(fresh.step, (X, Y, 32), epochs=1, file=per_line, verbose=2)
    assert quiet.getvalue() == ""
    assert "\r" not in per_line.getvalue() and per_line.getvalue().count("\n") == 1


def test_progress_goes_to_stderr_by_default(fresh: SimpleNamespace,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    gc.fit(fresh.step, (X, Y, 32), epochs=1)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("epoch 1/1")


# -- early stopping and callbacks ----------------------------------------------------------

def scripted(values: list[float]):
    """A metric returning `values` one epoch after the other."""
    it = iter(values)
    return lambda y_true, y_pred: next(it)


class ParamRecorder(gc.Callback):
    def __init__(self) -> None:
        self.params: list[dict[str, np.ndarray]] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.params.append({k: v.copy() for k, v in self.step.params.items()})


@pytest.mark.parametrize("restore", [True, False])
def test_early_stopping_restores_the_best_parameters(fresh: SimpleNamespace,
                                                     restore: bool) -> None:
    recorder = ParamRecorder()
    out = io.StringIO()
    stopper = gc.EarlyStopping("val_score", patience=2, restore_best=restore)
    history = gc.fit(fresh.step, (X, Y, 60), epochs=20, validation=(X_VAL, Y_VAL),
                     metrics={"score": scripted([0.5, 0.7, 0.9, 0.8, 0.9, 0.95])},
                     predict=fresh.predict, early_stopping=stopper, callbacks=[recorder],
                     file=out)
    assert history.epochs == [0, 1, 2, 3, 4] and history.stopped_epoch == 4
    assert history.best_epoch == 2 and stopper.best == 0.9
    expected = recorder.params[2] if restore else recorder.params[4]
    assert_same(expected, {k: v.copy() for k, v in fresh.step.params.items()})
    assert "early stopping after epoch 5: best val_score 0.9000 at epoch 3" in out.getvalue()
    assert ("parameters of epoch 3 restored" in out.getvalue()) == restore


def test_early_stopping_shorthands(fresh: SimpleNamespace) -> None:
    history = gc.fit(fresh.step, (X, Y, 60), epochs=3, early_stopping=0, verbose=0)
    assert len(history) == 3
    out = io.StringIO()
    with pytest.raises(ValueError, match="cannot monitor 'val_loss'"):
        gc.fit(fresh.step, (X, Y, 60), epochs=1, early_stopping={"monitor": "val_loss"},
               file=out)
    assert gc.EarlyStopping("val_accuracy")._tracker.mode == "max"
    assert gc.EarlyStopping("val_mse")._tracker.mode == "min"
    with pytest.raises(TypeError, match="early_stopping"):
        gc.fit(fresh.step, (X, Y, 60), early_stopping="yes")


def test_callbacks_see_every_hook(fresh: SimpleNamespace) -> None:
    calls: list[tuple] = []

    class Plain:
        """Duck-typed: no base class, only some hooks."""

        def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
            calls.append(("epoch_end", epoch, sorted(logs)))
            logs["extra"] = 10.0 * epoch

        def on_batch_end(self, batch: int, logs: dict[str, float]) -> None:
            calls.append(("batch", batch, logs["size"]))

    class Stopper(gc.Callback):
        def on_train_begin(self, logs: dict[str, float]) -> None:
            calls.append(("begin", self.step is fresh.step))

        def on_epoch_begin(self, epoch: int, logs: dict[str, float]) -> None:
            calls.append(("epoch_begin", epoch))

        def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
            self.stop_training = epoch == 1

        def on_train_end(self, logs: dict[str, float]) -> None:
            calls.append(("end", len(self.history)))

    history = gc.fit(fresh.step, (X, Y, 100), epochs=5, callbacks=[Plain(), Stopper()],
                     verbose=0)
    assert calls == [
        ("begin", True), ("epoch_begin", 0), ("batch", 0, 100), ("batch", 1, 100),
        ("batch", 2, 40), ("epoch_end", 0, ["loss", "samples_per_s", "time"]),
        ("epoch_begin", 1), ("batch", 0, 100), ("batch", 1, 100), ("batch", 2, 40),
        ("epoch_end", 1, ["loss", "samples_per_s", "time"]), ("end", 2)]
    assert history["extra"] == [0.0, 10.0] and history.stopped_epoch == 1


def test_checkpoint_callback(fresh: SimpleNamespace, tmp_path) -> None:
    every = gc.Checkpoint(str(tmp_path / "e{epoch}.npz"), every=2)
    best = gc.Checkpoint(str(tmp_path / "best.npz"), monitor="val_score")
    gc.fit(fresh.step, (X, Y, 60), epochs=4, validation=(X_VAL, Y_VAL),
           metrics={"score": scripted([1.0, 3.0, 2.0, 2.5])}, predict=fresh.predict,
           callbacks=[every, best], verbose=0)
    assert [p.rsplit("/", 1)[-1] for p in every.saved] == ["e2.npz", "e4.npz"]
    assert len(best.saved) == 2
    meta, _, _ = gc.checkpoint.read(best.saved[-1])
    assert meta["step_state"]["step"] == 8


# -- non-finite losses ---------------------------------------------------------------------

def test_nonfinite_step_leaves_params_and_optimizer_state_bitwise_unchanged(
        fresh: SimpleNamespace) -> None:
    step = fresh.step
    for xb, yb in gc.data.batches(X, Y, 40, seed=3):
        step(x=xb, y=yb)
    before, counter = snapshot(step), step.state["step"]
    assert any(np.any(v != 0) for k, v in before.items() if k.endswith("exp_avg"))
    bad = X[:40].copy()
    bad[5, 2] = np.nan
    with pytest.raises(gc.NonFiniteError) as info:
        step(x=bad, y=Y[:40])
    assert_same(before, snapshot(step))
    assert step.state["step"] == counter
    message = str(info.value)
    assert "the feed 'x' holds a non-finite value (nan at index (5, 2)" in message
    assert "which reaches matmul" in message
    assert f"test_train.py:{fresh.hidden_line}" in message
    assert f"step {counter + 1}" in message and "left unchanged" in message


def test_fit_surfaces_nonfinite_losses(fresh: SimpleNamespace) -> None:
    bad = X[:60].copy()
    bad[0, 0] = np.nan
    batches = [(X[:60], Y[:60]), (bad, Y[:60]), (X[60:120], Y[60:120])]
    states = []
    recorder = SimpleNamespace(on_batch_end=lambda batch, logs: states.append(
        snapshot(fresh.step)))
    out = TTY()
    with pytest.raises(gc.NonFiniteError) as info:
        gc.fit(fresh.step, batches, epochs=2, callbacks=[recorder], file=out)
    message = str(info.value)
    assert message.startswith("fit: epoch 1, batch 2: step 2: the loss is not finite")
    assert "matmul" in message and f"test_train.py:{fresh.hidden_line}" in message
    assert_same(states[0], snapshot(fresh.step))
    assert out.getvalue().endswith("\n") and fresh.step.state["step"] == 1
    assert len(info.value.history) == 0
    assert fresh.step.skip_nonfinite is False


def test_a_finite_loss_with_nonfinite_gradients_does_not_update(
        fresh: SimpleNamespace) -> None:
    bad = X[:60].copy()
    bad[0, 0] = np.inf  # tanh saturates it: the loss stays finite, a gradient does not
    before = snapshot(fresh.step)
    with pytest.raises(gc.NonFiniteError, match="a gradient is not finite") as info:
        fresh.step(x=bad, y=Y[:60])
    assert "left unchanged" in str(info.value)
    assert_same(before, snapshot(fresh.step))
    assert fresh.step.state["step"] == 0


def test_fit_can_skip_nonfinite_batches(fresh: SimpleNamespace) -> None:
    bad = X[:60].copy()
    bad[0, 0] = np.nan
    batches = [(X[:60], Y[:60]), (bad, Y[:60]), (X[60:120], Y[60:120])]
    out = io.StringIO()
    history = gc.fit(fresh.step, batches, epochs=2, on_nonfinite="skip", file=out)
    assert history["skipped"] == [1.0, 1.0]
    assert all(math.isfinite(v) for v in history["loss"])
    assert fresh.step.state["step"] == 4 and fresh.step.skip_nonfinite is False
    assert "skipped 1" in out.getvalue()


# -- History -------------------------------------------------------------------------------

def test_history_aligns_keys_and_names_unknown_ones() -> None:
    h = gc.History()
    h.record(0, {"loss": 1.0, "note": "text"})
    h.record(1, {"loss": 0.5, "val_loss": 0.7})
    h.record(2, {"val_loss": 0.6})
    assert h["loss"][:2] == [1.0, 0.5] and math.isnan(h["loss"][2])
    assert math.isnan(h["val_loss"][0]) and h["val_loss"][1:] == [0.7, 0.6]
    assert "note" not in h and "loss" in h
    with pytest.raises(KeyError, match="recorded: loss, val_loss"):
        h["accuracy"]


def test_history_plot_explains_the_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    h = gc.History()
    h.record(0, {"loss": 1.0})
    with pytest.raises(ImportError, match=r'pip install "graphc\[plot\]"'):
        h.plot("loss.png")


def test_history_plot_writes_a_figure(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    h = gc.History()
    for epoch, (loss, acc) in enumerate([(1.0, 0.5), (0.6, 0.8), (0.4, 0.9)]):
        h.record(epoch, {"loss": loss, "val_loss": loss + 0.1, "val_accuracy": acc,
                         "time": 0.1})
    path = tmp_path / "curves.png"
    fig = h.plot(str(path))
    assert path.stat().st_size > 1000
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["loss", "val_loss"]


# -- metrics -------------------------------------------------------------------------------

def test_metrics_agree_with_scikit_learn() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 50)
    scores = rng.standard_normal((50, 4)).astype(np.float32)
    assert gc.metrics.accuracy(labels, scores) == sk.accuracy_score(labels, scores.argmax(1))
    assert gc.metrics.accuracy(labels, labels) == 1.0
    binary = rng.integers(0, 2, 50)
    logit = rng.standard_normal((50, 1))
    assert gc.metrics.accuracy(binary, logit) == sk.accuracy_score(binary, logit[:, 0] > 0)
    target = rng.standard_normal(50)
    pred = (target + 0.3 * rng.standard_normal(50)).astype(np.float32)
    assert gc.metrics.mse(target, pred) == pytest.approx(sk.mean_squared_error(target, pred))
    assert gc.metrics.r2(target, pred) == pytest.approx(sk.r2_score(target, pred))
    assert gc.metrics.r2(target, pred[:, None]) == pytest.approx(sk.r2_score(target, pred))
    multi_t, multi_p = rng.standard_normal((30, 2)), rng.standard_normal((30, 2))
    assert gc.metrics.r2(multi_t, multi_p) == pytest.approx(sk.r2_score(multi_t, multi_p))
    assert gc.metrics.r2(np.ones(5), np.ones(5)) == 1.0
    with pytest.raises(ValueError, match="rows"):
        gc.metrics.mse(target, pred[:10])
    with pytest.raises(ValueError, match="shape"):
        gc.metrics.r2(target, np.zeros((50, 3)))


# -- layers with a training and an inference view ------------------------------------------

def test_dropout_model_validates_in_inference_view_and_resumes_bitwise(tmp_path) -> None:
    if not hasattr(gc.nn, "dropout"):
        pytest.skip("this graphc has no dropout layer")
    g = gc.Graph("dropout_blobs", seed=0)
    x = g.input("x", (None, N_FEATURES))
    y = g.input("y", (None,), dtype="int64")
    hidden = gc.nn.dropout(gc.tanh(gc.nn.linear(x, 16, name="fc1")), 0.5, name="drop")
    loss = gc.mean(gc.softmax_cross_entropy(gc.nn.linear(hidden, N_CLASSES, name="fc2"), y))
    step = gc.compile(loss, optimizer=gc.optim.Adam(lr=0.02))
    history = gc.fit(step, (X, Y, 60), epochs=2, validation=(X_VAL, Y_VAL), verbose=0)
    feeds = {"x": X_VAL, "y": Y_VAL}
    inference = float(gc.evaluate(loss, feeds, training=False))
    training = float(gc.evaluate(loss, feeds, training=True))
    assert history["val_loss"][-1] == pytest.approx(inference, rel=1e-5)
    assert abs(training - inference) > 1e-3
    assert any(name.startswith("drop") for name in step.optimizer_state())

    path = tmp_path / "dropout.npz"
    step.save(path)
    gc.fit(step, (X, Y, 60), epochs=4, initial_epoch=2, verbose=0)
    uninterrupted = snapshot(step)
    step.load(path)
    gc.fit(step, (X, Y, 60), epochs=4, initial_epoch=2, verbose=0)
    assert_same(uninterrupted, snapshot(step))
