"""Train a GRU (or LSTM) to echo its input with a delay: y_t = x_{t - delay}.

A synthetic sequence task that needs memory: at every step the network must output the
value it saw `delay` steps earlier (0 before that), so a feed-forward layer cannot do better
than predicting 0 (mean squared error = the input's variance, 1). `gc.nn.gru` runs as ONE
scan node: its body is compiled once, whatever the sequence length, and its gradient is a
reverse scan over the body's vjp. Ends with a line `test_mse=0.xxxx`.

    python examples/rnn_sequence.py [--cell gru|lstm] [--epochs 30] [--length 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import graphc as gc


def make_data(rng: np.random.Generator, count: int, length: int, delay: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (count, length, 1) and their delayed copies."""
    x = rng.normal(size=(count, length, 1)).astype(np.float32)
    y = np.zeros_like(x)
    y[:, delay:] = x[:, :-delay]
    return x, y


def build(cell: str, length: int, hidden: int, seed: int) -> tuple[gc.Value, gc.Value]:
    g = gc.Graph("echo", seed=seed)
    x = g.input("x", (None, length, 1))
    y = g.input("y", (None, length, 1))
    if cell == "gru":
        states, _ = gc.nn.gru(x, hidden, name="rnn", batch_first=True)
    else:
        states, _ = gc.nn.lstm(x, hidden, name="rnn", batch_first=True)
    prediction = gc.nn.linear(states, 1, name="readout")
    return prediction, gc.mse(prediction, y)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", choices=("gru", "lstm"), default="gru")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--length", type=int, default=20)
    parser.add_argument("--delay", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    x_train, y_train = make_data(rng, 1024, args.length, args.delay)
    x_test, y_test = make_data(rng, 256, args.length, args.delay)
    prediction, loss = build(args.cell, args.length, args.hidden, args.seed)
    start = time.perf_counter()
    step = gc.compile(loss, optimizer=gc.optim.Adam(args.lr))
    predict = gc.compile([prediction])
    print(f"{args.cell} echo task: {len(x_train)} sequences of {args.length} steps, delay "
          f"{args.delay}; compiled in {time.perf_counter() - start:.2f} s "
          f"({step.compile_report.kernels} kernel calls; the recurrence forward and its "
          "gradient are one each)")

    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(x_train))
        losses = []
        for lo in range(0, len(order), args.batch_size):
            batch = order[lo:lo + args.batch_size]
            losses.append(step(x=x_train[batch], y=y_train[batch]))
        print(f"epoch {epoch}/{args.epochs}: train loss {np.mean(losses):.4f}")

    (predicted,) = predict(x=x_test)
    mse = float(np.mean((predicted - y_test) ** 2))
    print(f"predicting 0 everywhere would give {float(np.mean(y_test ** 2)):.4f}")
    print(f"test_mse={mse:.4f}")
    return mse


if __name__ == "__main__":
    main()
