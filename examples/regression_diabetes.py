"""Regress disease progression on the bundled diabetes data (442 patients, 10 features).

A small MLP trained with mean squared error (`gc.mse`) on standardised targets, with
`gc.fit`: validation R^2 per epoch on a held-out part of the training set, early stopping
on the validation loss (restoring the best parameters) and a checkpoint of the best epoch.
Ends with a line `test_r2=0.xxxx` (the coefficient of determination on the test split).

    python examples/regression_diabetes.py [--epochs 200] [--hidden 8] [--plot loss.png]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

import graphc as gc


def build(hidden: int, seed: int) -> tuple[gc.Graph, gc.Value, gc.Value]:
    g = gc.Graph("diabetes", seed=seed)
    x = g.input("x", (None, 10))
    y = g.input("y", (None,))
    h = gc.tanh(gc.nn.linear(x, hidden, name="fc1"))
    prediction = gc.nn.linear(h, 1, name="out")[:, 0]
    loss = gc.mse(prediction, y)
    return g, prediction, loss


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--patience", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", metavar="PATH", help="save loss curves (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    data = gc.data.load_diabetes(seed=args.seed)
    # Hold out a fifth of the training set for validation (early stopping looks at it).
    order = np.random.default_rng(args.seed).permutation(len(data.x_train))
    n_val = len(order) // 5
    val, train = order[:n_val], order[n_val:]
    x_train, x_val = data.x_train[train], data.x_train[val]
    mean, std = float(data.y_train[train].mean()), float(data.y_train[train].std())

    def scale(y: np.ndarray) -> np.ndarray:
        return ((y - mean) / std).astype(np.float32)

    y_train, y_val = scale(data.y_train[train]), scale(data.y_train[val])
    print(f"diabetes: {len(x_train)} train / {len(x_val)} validation / {len(data.x_test)} "
          f"test patients, 10 standardised features; target mean {mean:.1f}, std {std:.1f}")

    _, prediction, loss = build(args.hidden, args.seed)
    step = gc.compile(loss, optimizer=gc.optim.AdamW(lr=args.lr,
                                                     weight_decay=args.weight_decay))
    predict = gc.compile([prediction])
    print(f"compiled in {step.compile_report.total:.2f} s "
          f"({step.compile_report.kernels} fused kernels)\n")

    with tempfile.TemporaryDirectory() as tmp:
        best = gc.Checkpoint(os.path.join(tmp, "best.npz"), monitor="val_loss")
        history = gc.fit(
            step, (x_train, y_train, args.batch_size), epochs=args.epochs,
            validation=(x_val, y_val), metrics={"r2": gc.metrics.r2}, predict=predict,
            early_stopping=gc.EarlyStopping("val_loss", patience=args.patience),
            callbacks=[best], seed=args.seed, verbose=0 if args.quiet else 1)
        print(f"\n{len(history)} epochs; best validation loss "
              f"{np.nanmin(history['val_loss']):.4f} at epoch "
              f"{int(np.nanargmin(history['val_loss'])) + 1}; {len(best.saved)} checkpoints")
        if best.saved:
            # Early stopping restored the best parameters already; the checkpoint holds the
            # same values, which is what a later process would load.
            predict.load(best.saved[-1], params_only=True)
    if args.plot:
        history.plot(args.plot)
        print(f"loss curves written to {args.plot}")

    (scaled,) = predict(x=data.x_test)
    test_pred = scaled * std + mean
    constant = gc.metrics.mse(data.y_test, np.full_like(test_pred, mean))
    print(f"test mse {gc.metrics.mse(data.y_test, test_pred):.1f} "
          f"(predicting the mean: {constant:.1f})")
    design = np.c_[x_train, np.ones(len(x_train))]
    coef, *_ = np.linalg.lstsq(design, data.y_train[train], rcond=None)
    baseline = gc.metrics.r2(data.y_test, np.c_[data.x_test, np.ones(len(data.x_test))] @ coef)
    print(f"for comparison, linear least squares on the same training rows: r2 {baseline:.4f}")
    r2 = gc.metrics.r2(data.y_test, test_pred)
    print(f"test_r2={r2:.4f}")
    return r2


if __name__ == "__main__":
    main()
