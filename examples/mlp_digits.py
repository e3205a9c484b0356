"""Train an MLP on the bundled 8x8 digits with a compiled training step.

Declares the model as a static graph, summarises its symbolic backward graph (the full
listing with --show-backward), checks the gradients against finite differences, compiles
forward + backward + Adam into Numba kernels and trains with `gc.fit` (a progress bar on
stderr, validation accuracy per epoch). Ends with a line `test_accuracy=0.xxxx`.

    python examples/mlp_digits.py [--epochs 30] [--batch-size 64] [--hidden 128]
                                  [--show-backward] [--save model.npz]
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

import graphc as gc


def build(hidden: int, seed: int) -> tuple[gc.Graph, gc.Value, gc.Value]:
    g = gc.Graph("mlp_digits", seed=seed)
    x = g.input("x", (None, 64))
    y = g.input("y", (None,), dtype="int64")
    h = gc.relu(gc.nn.linear(x, hidden, name="fc1", init="he"))
    h = gc.relu(gc.nn.linear(h, hidden, name="fc2", init="he"))
    logits = gc.nn.linear(h, 10, name="out")
    loss = gc.mean(gc.softmax_cross_entropy(logits, y))
    return g, logits, loss


def backward_summary(grads: list[gc.Value]) -> str:
    """Node counts of the backward graph: by role, and the backward nodes by op."""
    dg = gc.to_networkx(grads)
    roles = Counter(attrs["role"] for _, attrs in dg.nodes(data=True))
    ops = Counter(attrs["op"] for _, attrs in dg.nodes(data=True) if attrs["role"] == "backward")
    by_role = ", ".join(f"{roles[r]} {r}" for r in ("input", "param", "const", "forward",
                                                    "backward") if roles[r])
    by_op = ", ".join(f"{op} {n}" for op, n in ops.most_common())
    return (f"{len(grads)} gradients, {dg.number_of_nodes()} nodes ({by_role})\n"
            f"  backward nodes by op: {by_op}")


def check_gradients(hidden: int, x: np.ndarray, y: np.ndarray) -> float:
    """Largest relative error of the symbolic gradient vs central differences (float64)."""
    g = gc.Graph("mlp_check", seed=1, dtype="float64")
    xi = g.input("x", (None, 64))
    yi = g.input("y", (None,), dtype="int64")
    logits = gc.nn.linear(gc.tanh(gc.nn.linear(xi, hidden, name="fc1")), 10, name="out")
    loss = gc.mean(gc.softmax_cross_entropy(logits, yi))
    grads = gc.grad(loss, g.params)
    feeds = {"x": x, "y": y}
    analytic = gc.evaluate(grads, feeds)
    rng = np.random.default_rng(0)
    worst = 0.0
    for param, grad in zip(g.params, analytic):
        value = g.param_values[param.name]
        direction = rng.standard_normal(value.shape)
        h = 1e-6
        original = value.copy()
        value[...] = original + h * direction
        up = gc.evaluate(loss, feeds)
        value[...] = original - h * direction
        down = gc.evaluate(loss, feeds)
        value[...] = original
        numeric = (up - down) / (2 * h)
        exact = float(np.sum(grad * direction))
        worst = max(worst, abs(numeric - exact) / max(abs(exact), 1e-12))
    return worst


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show-backward", action="store_true",
                        help="print every node of the backward graph with its provenance")
    parser.add_argument("--save", metavar="PATH", help="save the trained step to PATH (.npz)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    data = gc.data.load_digits(seed=args.seed)
    print(f"digits: {len(data.x_train)} train / {len(data.x_test)} test images, 64 features")

    g, logits, loss = build(args.hidden, args.seed)
    grads = gc.grad(loss, g.params)
    print("\nThe backward graph (every gradient graphc will compute):")
    if args.show_backward:
        print(gc.format_graph(grads))
    else:
        print(backward_summary(grads))
        print("  (--show-backward lists every node with the line of code it came from)")

    error = check_gradients(16, data.x_train[:16].astype(np.float64), data.y_train[:16])
    print(f"\ngradient check vs central finite differences (float64): max rel. error "
          f"{error:.2e} -> {'ok' if error < 1e-6 else 'MISMATCH'}")

    step = gc.compile(loss, optimizer=gc.optim.Adam(lr=args.lr))
    predict = gc.compile([logits])
    report = step.compile_report
    print(f"\ncompiled in {report.total:.2f} s: {report.nodes_after} nodes, "
          f"{report.kernels} fused kernels ({report.unique_kernels} unique), "
          f"{len(step.backward)} backward/update nodes; kernel files {report.cache_reused} "
          f"reused, {report.cache_written} written\n")

    history = gc.fit(
        step, lambda epoch: gc.data.batches(data.x_train, data.y_train, args.batch_size,
                                            seed=args.seed + epoch),
        epochs=args.epochs, validation=(data.x_test, data.y_test),
        metrics={"accuracy": gc.metrics.accuracy}, predict=predict,
        verbose=0 if args.quiet else 1)
    seconds = sum(history["time"])
    print(f"\ntrained {len(history)} epochs in {seconds:.2f} s "
          f"(final loss {history['loss'][-1]:.4f})")
    if args.save:
        print(f"saved the step to {step.save(args.save)}")

    (scores,) = predict(x=data.x_test)
    accuracy = gc.metrics.accuracy(data.y_test, scores)
    print(f"test_accuracy={accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main()
