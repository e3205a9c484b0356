"""Train an MLP on the bundled 8x8 digits over MPI ranks (data parallel).

Every rank builds the same graph and compiles a step with `distributed="mpi"`: rank 0's
initial parameters reach every rank, each rank computes gradients on its shard of each
batch, one allreduce averages them, and every rank applies the same update. `gc.fit` gives
each rank its shard of every epoch and prints on rank 0 only. Ends (on rank 0) with a line
`test_accuracy=0.xxxx`. Runs as one process too (one rank).

    mpiexec -n 2 python examples/mpi_digits.py [--epochs 30] [--batch-size 32]
                                               [--save model.npz]
"""

from __future__ import annotations

import argparse

import graphc as gc


def build(hidden: int, seed: int) -> tuple[gc.Value, gc.Value]:
    g = gc.Graph("mpi_digits", seed=seed)
    x = g.input("x", (None, 64))
    y = g.input("y", (None,), dtype="int64")
    h = gc.relu(gc.nn.linear(x, hidden, name="fc1", init="he"))
    h = gc.relu(gc.nn.linear(h, hidden, name="fc2", init="he"))
    logits = gc.nn.linear(h, 10, name="out")
    return logits, gc.mean(gc.softmax_cross_entropy(logits, y))


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32, help="rows per rank and step")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", metavar="PATH", help="save the trained step (rank 0 writes)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    data = gc.data.load_digits(seed=args.seed)
    logits, loss = build(args.hidden, args.seed)
    step = gc.compile(loss, optimizer=gc.optim.Adam(lr=args.lr), distributed="mpi")
    predict = gc.compile([logits])
    main_rank = gc.distributed.is_main()
    ranks = gc.distributed.world_size()
    if main_rank:
        print(f"{ranks} rank(s), batch {args.batch_size} per rank ({args.batch_size * ranks} "
              f"per step), {step.comm.cores} core(s) per rank; compiled in "
              f"{step.compile_report.total:.2f} s")

    history = gc.fit(step, (data.x_train, data.y_train, args.batch_size), epochs=args.epochs,
                     seed=args.seed, validation=(data.x_test, data.y_test),
                     metrics={"accuracy": gc.metrics.accuracy}, predict=predict,
                     verbose=0 if args.quiet else 1)
    if args.save:
        path = step.save(args.save)
        if main_rank:
            print(f"saved the step to {path}")
    (scores,) = predict(x=data.x_test)
    accuracy = gc.metrics.accuracy(data.y_test, scores)
    if main_rank:
        per_step = step.allreduce_seconds / max(step.allreduce_calls, 1)
        print(f"trained {len(history)} epochs in {sum(history['time']):.2f} s; allreduce "
              f"{per_step * 1e3:.3f} ms per step ({step.buffers.nbytes} bytes)")
        print(f"test_accuracy={accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main()
