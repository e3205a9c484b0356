"""Training loops: `fit` runs a compiled training step over epochs of mini-batches, with a
progress bar, validation metrics, early stopping, callbacks and a `History` of every epoch.

    step = gc.compile(loss, optimizer=gc.optim.Adam(1e-3))
    predict = gc.compile([logits])
    history = gc.fit(step, (X, Y, 64), epochs=20, validation=(X_val, Y_val),
                     metrics={"accuracy": gc.metrics.accuracy}, predict=predict,
                     early_stopping=5)
    history.plot("loss.png")          # needs the `plot` extra (matplotlib)

Epochs are numbered from 0 in callbacks, in `History.epochs` and in what a data callable
receives; the progress bar counts from 1.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any, NamedTuple

import numpy as np

from graphc import data as _data
from graphc.errors import FeedError, GraphError, NonFiniteError
from graphc.interpret import run_nodes
from graphc.ir import Value, as_values

Logs = dict[str, float]
Metric = Callable[[np.ndarray, np.ndarray], float]


class History:
    """What `fit` recorded: one value per epoch for each key.

    `history["loss"]` (mean training loss), `history["val_loss"]` and `history["val_<metric>"]`
    (with `validation=`), `history["time"]` (seconds per epoch) and
    `history["samples_per_s"]`; `skipped` counts skipped non-finite batches with
    `on_nonfinite="skip"`. A key first seen in a later epoch is NaN before it.
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epochs: list[int] = []
        self.stopped_epoch: int | None = None
        self.best_epoch: int | None = None

    def record(self, epoch: int, logs: Mapping[str, Any]) -> None:
        """Append one epoch's logs (numbers only; other values are skipped)."""
        done = len(self.epochs)
        self.epochs.append(epoch)
        for key, value in logs.items():
            if not isinstance(value, (int, float, np.number)) or isinstance(value, bool):
                continue
            self.history.setdefault(key, [math.nan] * done).append(float(value))
        for values in self.history.values():
            if len(values) < done + 1:
                values.append(math.nan)

    def __getitem__(self, key: str) -> list[float]:
        if key not in self.history:
            known = ", ".join(self.history) or "none yet"
            raise KeyError(f"History has no {key!r}; recorded: {known}")
        return self.history[key]

    def __contains__(self, key: object) -> bool:
        return key in self.history

    def __len__(self) -> int:
        return len(self.epochs)

    def keys(self) -> list[str]:
        """The recorded keys, in the order they first appeared."""
        return list(self.history)

    def last(self) -> Logs:
        """The logs of the last recorded epoch."""
        return {k: v[-1] for k, v in self.history.items()} if self.epochs else {}

    def __repr__(self) -> str:
        if not self.epochs:
            return "History(no epochs)"
        last = ", ".join(f"{k}={v:.4g}" for k, v in self.last().items())
        return f"History({len(self.epochs)} epochs; last: {last})"

    def plot(self, path: str | None = None, keys: Sequence[str] | None = None) -> Any:
        """Loss curves (training and validation) and validation metrics against the epoch,
        written to `path` (any format matplotlib saves: .png, .svg, .pdf). Returns the
        matplotlib Figure. Needs matplotlib: `pip install "graphc[plot]"`."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError('History.plot needs matplotlib, which is not installed: '
                              'pip install "graphc[plot]" (or pip install matplotlib)') \
                from None
        if not self.epochs:
            raise ValueError("History.plot: nothing recorded yet (fit ran no epoch)")
        chosen = list(keys) if keys is not None else [
            k for k in self.history if k not in ("time", "samples_per_s", "skipped")]
        for k in chosen:
            self[k]
        losses = [k for k in chosen if k.endswith("loss")]
        others = [k for k in chosen if k not in losses]
        panels = [p for p in (losses, others) if p]
        fig = Figure(figsize=(6.0 * len(panels), 4.0))
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        x = [e + 1 for e in self.epochs]
        for ax, names in zip(axes, panels):
            for name in names:
                ax.plot(x, self.history[name], marker="o", markersize=3, label=name)
            ax.set_xlabel("epoch")
            ax.set_ylabel("loss" if names is losses else "metric")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path)
        return fig


class Callback:
    """Base class for `fit` callbacks; override the hooks you need.

    `fit` calls `set_context(step, history)` first, then `on_train_begin(logs)`,
    `on_epoch_begin(epoch, logs)`, `on_batch_end(batch, logs)` (logs: `loss`, `size`),
    `on_epoch_end(epoch, logs)` and `on_train_end(logs)`. Setting `self.stop_training =
    True` ends training after the current epoch. Any object with some of these methods works
    as a callback too.
    """

    stop_training: bool = False
    step: Any = None
    history: History | None = None

    def set_context(self, step: Any, history: History) -> None:
        """Remember the training step and the History being recorded."""
        self.step = step
        self.history = history

    def on_train_begin(self, logs: Logs) -> None:
        """Called once before the first epoch."""

    def on_epoch_begin(self, epoch: int, logs: Logs) -> None:
        """Called before each epoch (0-based `epoch`)."""

    def on_batch_end(self, batch: int, logs: Logs) -> None:
        """Called after each training step with its `loss` and batch `size`."""

    def on_epoch_end(self, epoch: int, logs: Logs) -> None:
        """Called after each epoch with its logs (`loss`, `val_*`, `time`, ...)."""

    def on_train_end(self, logs: Logs) -> None:
        """Called once after the last epoch (also after early stopping)."""


def _mode_for(monitor: str, mode: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    lowered = monitor.lower()
    return "min" if any(s in lowered for s in ("loss", "mse", "mae", "error")) else "max"


class _Monitor:
    """Tracks the best value of one logged quantity."""

    def __init__(self, monitor: str, mode: str, min_delta: float) -> None:
        self.monitor = monitor
        self.mode = _mode_for(monitor, mode)
        self.min_delta = abs(float(min_delta))
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch: int | None = None

    def value(self, logs: Mapping[str, Any]) -> float:
        if self.monitor not in logs:
            raise ValueError(f"cannot monitor {self.monitor!r}: it is not in the epoch logs "
                             f"({', '.join(logs)}); pass validation= for val_* keys")
        return float(logs[self.monitor])

    def improved(self, epoch: int, value: float) -> bool:
        if math.isnan(value):
            return False
        better = value < self.best - self.min_delta if self.mode == "min" else \
            value > self.best + self.min_delta
        if better:
            self.best, self.best_epoch = value, epoch
        return better


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved for `patience` epochs.

    `mode` is "min", "max" or "auto" (min for names containing loss/mse/mae/error, else
    max); an improvement must exceed `min_delta`. With `restore_best` the parameters of the
    best epoch are copied back into the step's arrays when training ends (optimizer state
    and step counter stay as they are).
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, mode: str = "auto",
                 min_delta: float = 0.0, restore_best: bool = True) -> None:
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        self.monitor = monitor
        self.patience = int(patience)
        self._mode, self.min_delta = mode, min_delta
        self.restore_best = restore_best
        self._tracker = _Monitor(monitor, mode, min_delta)
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.restored = False
        self._snapshot: dict[str, np.ndarray] | None = None
        self._last_epoch: int | None = None

    @property
    def best(self) -> float:
        """The best monitored value so far."""
        return self._tracker.best

    @property
    def best_epoch(self) -> int | None:
        """The (0-based) epoch of the best value."""
        return self._tracker.best_epoch

    def on_train_begin(self, logs: Logs) -> None:
        self._tracker = _Monitor(self.monitor, self._mode, self.min_delta)
        self.wait, self.stopped_epoch, self.restored = 0, None, False
        self._snapshot, self.stop_training = None, False

    def on_epoch_end(self, epoch: int, logs: Logs) -> None:
        self._last_epoch = epoch
        if self._tracker.improved(epoch, self._tracker.value(logs)):
            self.wait = 0
            if self.restore_best:
                self._snapshot = {k: v.copy() for k, v in self.step.params.items()}
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stop_training = True
            self.stopped_epoch = epoch

    def on_train_end(self, logs: Logs) -> None:
        if self.history is not None and self.best_epoch is not None:
            self.history.best_epoch = self.best_epoch
        if self.restore_best and self._snapshot is not None and \
                self.best_epoch != self._last_epoch:
            params = self.step.params
            for name, value in self._snapshot.items():
                np.copyto(params[name], value)
            sync = getattr(self.step, "sync_to_device", None)
            if sync is not None:
                sync()
            self.restored = True


class Checkpoint(Callback):
    """Save the step (`step.save`) at the end of epochs.

    `path` may contain `{epoch}` (1-based) to keep one file per epoch. Without `monitor`,
    saves every `every` epochs; with it, only when the monitored value improves (the best
    model so far).
    """

    def __init__(self, path: str, monitor: str | None = None, mode: str = "auto",
                 every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.path, self.every = path, every
        self.monitor, self._mode = monitor, mode
        self._tracker = _Monitor(monitor, mode, 0.0) if monitor is not None else None
        self.saved: list[str] = []

    def on_epoch_end(self, epoch: int, logs: Logs) -> None:
        if self._tracker is not None:
            if not self._tracker.improved(epoch, self._tracker.value(logs)):
                return
        elif (epoch + 1) % self.every:
            return
        self.saved.append(self.step.save(self.path.format(epoch=epoch + 1)))


def _seconds(t: float) -> str:
    return f"{t * 1000:.0f} ms" if t < 1 else f"{t:.2f} s"


class _Progress:
    """Per-epoch progress on a text stream: a `\\r`-updated bar on a terminal, one line per
    epoch otherwise."""

    def __init__(self, stream: IO[str], verbose: int, epochs: int) -> None:
        self.stream = stream
        isatty = getattr(stream, "isatty", None)
        tty = bool(isatty()) if callable(isatty) else False
        self.mode = "off" if verbose == 0 else ("bar" if verbose == 1 and tty else "line")
        self.width = len(str(epochs))
        self.epochs = epochs
        self.pending = False
        self.next_draw = 0.0

    def start(self, epoch: int, total: int | None) -> None:
        self.epoch, self.total = epoch, total
        self.next_draw = 0.0

    def _head(self) -> str:
        return f"epoch {self.epoch + 1:>{self.width}}/{self.epochs}"

    def _bar(self, done: int) -> str:
        if self.total:
            filled = min(20, done * 20 // self.total)
            arrow = ">" if filled < 20 else ""
            return (f"[{'=' * filled}{arrow}{'.' * (20 - filled - len(arrow))}] "
                    f"{done:>{len(str(self.total))}}/{self.total}")
        return f"{done} batches"

    def update(self, done: int, samples: int, loss: float, elapsed: float) -> None:
        if self.mode != "bar":
            return
        now = time.perf_counter()
        if now < self.next_draw:
            return
        self.next_draw = now + 0.1
        rate = samples / elapsed if elapsed > 0 else 0.0
        self._write(f"\r{self._head()} {self._bar(done)}  loss {loss:.4f}  "
                    f"{rate:,.0f} samples/s\x1b[K")
        self.pending = True

    def end(self, batches: int, logs: Mapping[str, Any]) -> None:
        if self.mode == "off":
            return
        parts = [f"{k} {v:.4f}" for k, v in logs.items()
                 if k not in ("time", "samples_per_s", "skipped")]
        if logs.get("skipped"):
            parts.append(f"skipped {int(logs['skipped'])}")
        parts.append(f"{logs.get('samples_per_s', 0.0):,.0f} samples/s")
        parts.append(_seconds(logs.get("time", 0.0)))
        self.total = batches if self.mode == "bar" else None
        start = "\r" if self.mode == "bar" else ""
        bar = self._bar(batches) if self.mode == "bar" else f"{batches} batches"
        tail = "\x1b[K" if self.mode == "bar" else ""
        self._write(f"{start}{self._head()} {bar}  {'  '.join(parts)}{tail}\n")
        self.pending = False

    def message(self, text: str) -> None:
        if self.mode != "off":
            self.close()
            self._write(text + "\n")

    def close(self) -> None:
        if self.pending:
            self._write("\n")
            self.pending = False

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


class _Data:
    """The batches of each epoch, from a callable, a re-iterable or (X, Y, batch_size)."""

    def __init__(self, data: Any, seed: int, epochs: int, rank: int = 0,
                 world: int = 1) -> None:
        self.data, self.seed = data, seed
        self.rank, self.world = rank, world
        self.arrays: tuple[np.ndarray, np.ndarray, int] | None = None
        if isinstance(data, tuple) and len(data) == 3 and isinstance(data[2], (int, np.integer)) \
                and not isinstance(data[2], bool):
            x, y, size = data
            if int(size) < 1:
                raise ValueError(f"fit: batch size must be >= 1, got {size}")
            self.arrays = (x, y, int(size))
        elif isinstance(data, tuple) and len(data) == 2 and all(
                isinstance(a, np.ndarray) for a in data):
            raise ValueError("fit: data=(X, Y) needs a batch size: pass (X, Y, batch_size), "
                             "or a function epoch -> batches")
        elif not callable(data):
            try:
                one_shot = iter(data) is data
            except TypeError:
                raise TypeError(f"fit: data must be a function epoch -> batches, an iterable "
                                f"of batches or (X, Y, batch_size); got "
                                f"{type(data).__name__}") from None
            if one_shot and epochs > 1:
                raise ValueError("fit: data is a one-shot iterator (a generator), which would "
                                 "be empty after the first epoch; pass a function "
                                 "`lambda epoch: gc.data.batches(X, Y, 64, seed=epoch)`")
        self.last_count: int | None = None

    def epoch(self, epoch: int) -> tuple[Iterable[Any], int | None]:
        if self.arrays is not None:
            x, y, size = self.arrays
            rows = -(-len(x) // self.world)
            return (_data.batches(x, y, size, shuffle=True, seed=self.seed + epoch,
                                  rank=self.rank, world=self.world), -(-rows // size))
        batches = self.data(epoch) if callable(self.data) else self.data
        total = len(batches) if hasattr(batches, "__len__") else self.last_count
        return batches, total


def _feed_names(step: Any, feeds: Sequence[str] | None) -> list[str]:
    declared = [n.name for n in step.graph.nodes if n.op == "input" and
                not n.name.startswith("@")]
    if feeds is None:
        return declared
    names = [feeds] if isinstance(feeds, str) else list(feeds)
    for name in names:
        if name not in declared:
            raise FeedError(f"fit: feeds names {name!r}, which is not an input of graph "
                            f"{step.graph.name!r}; its inputs are "
                            f"{', '.join(declared) or 'none'}")
    return names


def _as_feeds(batch: Any, names: list[str]) -> dict[str, Any]:
    if isinstance(batch, Mapping):
        return dict(batch)
    items = (batch,) if isinstance(batch, np.ndarray) else tuple(batch)
    if len(items) > len(names):
        raise FeedError(f"fit: a batch has {len(items)} arrays but the graph's inputs are "
                        f"{', '.join(names)}; pass feeds=(names...) to say which input each "
                        "array feeds")
    return dict(zip(names, items))


def _rows(feeds: Mapping[str, Any]) -> int:
    for value in feeds.values():
        shape = np.shape(value)
        return int(shape[0]) if shape else 1
    return 0


def _chunks(feeds: Mapping[str, np.ndarray], size: int | None) -> Iterable[dict[str, Any]]:
    n = _rows(feeds)
    if size is None or n <= size:
        yield dict(feeds)
        return
    for start in range(0, n, size):
        yield {k: np.asarray(v)[start:start + size] for k, v in feeds.items()}


class _Validator:
    """Validation loss (the step's loss in the inference view, without an update) and
    metrics of the user's predictions."""

    def __init__(self, step: Any, validation: Any, names: list[str],
                 metrics: Mapping[str, Metric] | None, predict: Any,
                 chunk: int | None) -> None:
        self.feeds = {k: np.asarray(v) for k, v in _as_feeds(validation, names).items()}
        self.step, self.chunk = step, chunk
        self.metrics = dict(metrics or {})
        self.names = names
        self._loss: Callable[[dict[str, np.ndarray]], float] | None = None
        self._loss_inputs: list[str] = []
        self.predict = _predictor(predict, self.feeds, names, chunk) \
            if predict is not None else None
        if self.metrics and self.predict is None:
            raise ValueError("fit: metrics need predict=: a compiled gc.compile([logits]), the "
                             "logits Value, or a function X -> predictions")
        if self.metrics and (len(names) < 2 or names[1] not in self.feeds):
            raise ValueError("fit: metrics compare predictions with the labels of the "
                             "validation set: pass validation=(X_val, Y_val)")

    def _loss_function(self) -> None:
        """Compile the user's loss without an optimizer (the inference view: dropout off,
        running statistics used); evaluate the step's own program where the loss Value is
        not known."""
        from graphc.compiler import compile as compile_fn

        args = getattr(self.step, "compile_args", None)
        values = as_values(args[0])[0] if args else []
        if len(values) == 1:
            fn = compile_fn(values[0], target=getattr(self.step, "target", "cpu"))
            self._loss_inputs = fn.input_names
            self._loss = lambda feeds: float(fn(**feeds))
            return
        program = self.step.program
        loss_id = program.outputs[0]
        self._loss_inputs = self.step.input_names
        self._loss = lambda feeds: float(run_nodes(program, [loss_id], feeds)[loss_id])

    def __call__(self) -> Logs:
        logs: Logs = {}
        sync = getattr(self.step, "sync_to_host", None)
        if sync is not None:  # a device step: refresh the host arrays CPU functions read
            sync()
        if self._loss is None:
            self._loss_function()
        assert self._loss is not None
        if all(k in self.feeds for k in self._loss_inputs):
            total, count = 0.0, 0
            for part in _chunks({k: self.feeds[k] for k in self._loss_inputs}, self.chunk):
                rows = _rows(part)
                total += self._loss(part) * rows
                count += rows
            logs["val_loss"] = total / max(count, 1)
        if self.metrics:
            assert self.predict is not None
            predictions = self.predict()
            labels = self.feeds[self.names[1]]
            for name, metric in self.metrics.items():
                logs[f"val_{name}"] = float(metric(labels, predictions))
        return logs


def _predictor(predict: Any, feeds: dict[str, np.ndarray], names: list[str],
               chunk: int | None) -> Callable[[], np.ndarray]:
    from graphc.compiler import compile as compile_fn
    from graphc.runtime import CompiledFunction

    if isinstance(predict, Value):
        predict = compile_fn([predict])
    if isinstance(predict, CompiledFunction):
        if predict.optimizer is not None:
            raise ValueError("fit: predict= is a training step; compile the predictions "
                             "without an optimizer: gc.compile([logits])")
        needed = predict.input_names
        absent = [n for n in needed if n not in feeds]
        if absent:
            raise FeedError(f"fit: predict needs input {absent[0]!r}, which validation= does "
                            f"not feed (it feeds {', '.join(feeds)})")

        def run() -> np.ndarray:
            parts = []
            for part in _chunks({n: feeds[n] for n in needed}, chunk):
                out = predict(**part)
                parts.append(np.asarray(out[0] if isinstance(out, tuple) else out))
            return parts[0] if len(parts) == 1 else np.concatenate(parts)

        return run
    if callable(predict):
        return lambda: np.asarray(predict(feeds[names[0]]))
    raise TypeError(f"fit: predict must be a compiled function, a Value or a callable, got "
                    f"{type(predict).__name__}")


def _early_stopping(spec: Any, has_validation: bool) -> EarlyStopping | None:
    if spec is None or spec is False:
        return None
    monitor = "val_loss" if has_validation else "loss"
    if isinstance(spec, EarlyStopping):
        return spec
    if isinstance(spec, bool):
        return EarlyStopping(monitor=monitor)
    if isinstance(spec, (int, np.integer)):
        return EarlyStopping(monitor=monitor, patience=int(spec))
    if isinstance(spec, Mapping):
        return EarlyStopping(**{"monitor": monitor, **spec})
    raise TypeError(f"fit: early_stopping must be a patience (int), a dict of EarlyStopping "
                    f"arguments or an EarlyStopping, got {type(spec).__name__}")


def _hook(callbacks: list[Any], name: str, *args: Any) -> None:
    for cb in callbacks:
        method = getattr(cb, name, None)
        if method is not None:
            method(*args)


def fit(step: Any, data: Any, epochs: int = 1, *, validation: Any = None,
        metrics: Mapping[str, Metric] | None = None, predict: Any = None,
        callbacks: Sequence[Any] = (), early_stopping: Any = None, verbose: int = 1,
        feeds: Sequence[str] | None = None, on_nonfinite: str = "raise",
        initial_epoch: int = 0, seed: int = 0, validation_batch_size: int | None = 4096,
        file: IO[str] | None = None) -> History:
    """Train `step` (a compiled training step) for epochs `initial_epoch .. epochs - 1`.

    `data` gives each epoch's batches: a function `epoch -> iterable of (xb, yb)` (e.g.
    `lambda epoch: gc.data.batches(X, Y, 64, seed=epoch)`), a re-iterable of batches, or
    `(X, Y, batch_size)` (shuffled with seed `seed + epoch`; with a distributed step, each
    rank its shard of every epoch, see `gc.data.batches`). A batch is a tuple of arrays
    fed to the graph's inputs in declaration order (or to the inputs named by `feeds`), or a
    dict of feeds by name.

    `validation=(X_val, Y_val)` adds `val_loss` (the step's loss without an update, in the
    inference view: dropout off, running statistics used) and, with
    `metrics={"accuracy": gc.metrics.accuracy}`, `val_<name>` = metric(Y_val, predictions),
    where predictions come from `predict`: a compiled `gc.compile([logits])`, the logits
    Value (compiled here) or a function `X -> predictions`.

    `early_stopping`: a patience (int), a dict of EarlyStopping arguments or an
    EarlyStopping; it monitors `val_loss` with validation, else `loss`. `callbacks`: objects
    with `on_epoch_end(epoch, logs)` and the other hooks of `Callback`.

    `verbose`: 0 silent, 1 a progress bar (updated in place on a terminal, one line per
    epoch otherwise), 2 one line per epoch; written to `file` (default stderr) with the loss
    and samples per second. A batch whose loss is NaN or Inf raises NonFiniteError naming
    the epoch, the batch and the first non-finite node (parameters and optimizer state are
    left as they were; the History so far is the exception's `history` attribute);
    a distributed step (`compile(..., distributed="mpi")`) prints on rank 0 only and its
    `save` (the Checkpoint callback's) writes on rank 0 only;
    `on_nonfinite="skip"` skips such batches and counts them in `skipped`. Returns the
    History.
    """
    if getattr(step, "optimizer", None) is None or not hasattr(step, "program"):
        raise GraphError("fit needs a training step: gc.compile(loss, optimizer=...)")
    if on_nonfinite not in ("raise", "skip"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    if initial_epoch < 0 or epochs < initial_epoch:
        raise ValueError(f"fit trains epochs initial_epoch .. epochs - 1; got "
                         f"initial_epoch={initial_epoch}, epochs={epochs}")
    if metrics and validation is None:
        raise ValueError("fit: metrics are computed on the validation set: pass "
                         "validation=(X_val, Y_val)")
    names = _feed_names(step, feeds)
    comm = getattr(step, "comm", None)   # a distributed step: rank 0 prints, all train
    rank, world = (comm.rank, comm.size) if comm is not None else (0, 1)
    verbose = verbose if rank == 0 else 0
    source = _Data(data, seed, epochs - initial_epoch, rank, world)
    validator = _Validator(step, validation, names, metrics, predict,
                           validation_batch_size) if validation is not None else None
    history = History()
    stopper = _early_stopping(early_stopping, validation is not None)
    cbs = [*callbacks, *([stopper] if stopper is not None else [])]
    progress = _Progress(file if file is not None else sys.stderr, verbose, epochs)
    previous_skip = step.skip_nonfinite
    step.skip_nonfinite = on_nonfinite == "skip"
    logs: Logs = {}
    try:
        for cb in cbs:
            if hasattr(cb, "set_context"):
                cb.set_context(step, history)
        _hook(cbs, "on_train_begin", {})
        for epoch in range(initial_epoch, epochs):
            _hook(cbs, "on_epoch_begin", epoch, {})
            start = time.perf_counter()
            stats = _train_epoch(step, source, epoch, names, progress, cbs)
            logs = {"loss": stats.loss}
            if validator is not None:
                logs.update(validator())
            if step.skip_nonfinite:
                logs["skipped"] = stats.skipped
            logs["samples_per_s"] = stats.samples_per_s
            logs["time"] = time.perf_counter() - start
            progress.end(stats.batches, logs)
            _hook(cbs, "on_epoch_end", epoch, logs)
            history.record(epoch, logs)
            if any(getattr(cb, "stop_training", False) for cb in cbs):
                history.stopped_epoch = epoch
                break
        _hook(cbs, "on_train_end", dict(logs))
    except BaseException as err:
        progress.close()
        if isinstance(err, NonFiniteError):
            err.history = history  # type: ignore[attr-defined]
        raise
    finally:
        step.skip_nonfinite = previous_skip
    if stopper is not None and stopper.stopped_epoch is not None:
        restored = f"; parameters of epoch {stopper.best_epoch + 1} restored" \
            if stopper.restored else ""
        progress.message(f"early stopping after epoch {stopper.stopped_epoch + 1}: best "
                         f"{stopper.monitor} {stopper.best:.4f} at epoch "
                         f"{(stopper.best_epoch or 0) + 1}{restored}")
    return history


class _EpochStats(NamedTuple):
    loss: float
    batches: int
    skipped: int
    samples_per_s: float


def _train_epoch(step: Any, source: _Data, epoch: int, names: list[str], progress: _Progress,
                 callbacks: list[Any]) -> _EpochStats:
    batches, total = source.epoch(epoch)
    progress.start(epoch, total)
    batch_hooks = [cb.on_batch_end for cb in callbacks if hasattr(cb, "on_batch_end")]
    start = time.perf_counter()
    loss_sum, samples, counted, done, skipped = 0.0, 0, 0, 0, 0
    for batch in batches:
        fed = _as_feeds(batch, names)
        rows = _rows(fed)
        try:
            out = step(**fed)
        except NonFiniteError as err:
            raise NonFiniteError(f"fit: epoch {epoch + 1}, batch {done + 1}: {err}") from err
        loss = float(out[0] if isinstance(out, tuple) else out)
        done += 1
        samples += rows
        if math.isfinite(loss):
            loss_sum += loss * rows
            counted += rows
        else:
            skipped += 1
        elapsed = time.perf_counter() - start
        progress.update(done, samples, loss_sum / counted if counted else math.nan, elapsed)
        for hook in batch_hooks:
            hook(done - 1, {"loss": loss, "size": rows})
    if done == 0:
        raise ValueError(f"fit: epoch {epoch + 1} has no batches (is data an exhausted "
                         "iterator? pass a function epoch -> batches)")
    source.last_count = done
    elapsed = time.perf_counter() - start
    return _EpochStats(loss=loss_sum / counted if counted else math.nan, batches=done,
                       skipped=skipped,
                       samples_per_s=samples / elapsed if elapsed > 0 else math.inf)


__all__ = ["Callback", "Checkpoint", "EarlyStopping", "History", "fit"]
