"""Scenarios of distributed training, run by tests/test_distributed.py under
`mpiexec -n N python tests/mpi_worker.py <scenario> <directory>`.

Each scenario asserts on every rank and prints `OK <scenario> rank <r>` at the end; any
failure exits non-zero (and aborts the other ranks).
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np

import graphc as gc
from graphc.distributed import DistributedError

with warnings.catch_warnings(record=True) as LAUNCH_WARNINGS:
    warnings.simplefilter("always")
    MPI = gc.distributed.MPI()
COMM = MPI.comm
RANK, WORLD = COMM.Get_rank(), COMM.Get_size()
BATCH = 16   # rows per rank and step


def model(batch_norm: bool = False) -> tuple[gc.Graph, gc.Value]:
    g = gc.Graph("mlp", seed=0)
    x = g.input("x", (None, 64))
    y = g.input("y", (None,), dtype="int64")
    h = gc.nn.linear(x, 32, name="fc1")
    if batch_norm:
        h = gc.nn.batch_norm(h, name="bn")
    logits = gc.nn.linear(gc.relu(h), 10, name="fc2")
    return g, gc.mean(gc.softmax_cross_entropy(logits, y))


def flat(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.zeros(0)] + [a.ravel().astype(np.float64)
                                            for _, a in sorted(arrays.items())])


def assert_identical_on_all_ranks(step: gc.distributed.DistributedStep, what: str) -> None:
    """Parameters and state bitwise equal on every rank."""
    mine = np.concatenate([flat(step.params), flat(step.optimizer_state())]).view(np.uint64)
    everyone = COMM.allgather(mine)
    for r, theirs in enumerate(everyone):
        assert np.array_equal(theirs, everyone[0]), f"{what}: rank {r} differs from rank 0"


def data() -> gc.data.Split:
    return gc.data.load_digits()


def sync() -> None:
    """Rank 0's initial values reach every rank; after every step all ranks agree bitwise
    (Adam, batch norm, a learning-rate schedule)."""
    g, loss = model(batch_norm=True)
    if RANK:
        for a in g.param_values.values():
            a += RANK   # different initial values elsewhere: the broadcast must fix them
    step = gc.compile(loss, optimizer=gc.optim.Adam(lambda t: 1e-2 / t), distributed=MPI)
    assert_identical_on_all_ranks(step, "after compile")
    d = data()
    count = 0
    for epoch in range(2):
        for xb, yb in gc.data.batches(d.x_train[:300], d.y_train[:300], BATCH, seed=epoch,
                                      rank=RANK, world=WORLD):
            step(x=xb, y=yb)
            count += 1
            assert_identical_on_all_ranks(step, f"after step {count}")
    assert step.state["step"] == count


def match() -> None:
    """N ranks with batch b each against one process with batch N*b (the same rows).

    Tolerance: float32 sums of the same products in another order (per-rank partial sums,
    then the allreduce, against one sum over N*b rows) differ by a few units in the last
    place of each gradient component (here |g| <= ~0.5, eps = 1.2e-7: ~3e-7 each); SGD
    moves parameters by lr * g per step, and momentum 0.9 carries each gradient into ~10
    updates, so after 20 steps with lr = 0.1 the differences stay below
    20 * 0.1 * 3e-7 * 10 ~ 1e-6 absolute (measured: ~1e-7). The loss, a mean of the same
    terms, agrees to the same relative bound.
    """
    _, loss = model()
    step = gc.compile(loss, optimizer=gc.optim.SGD(0.1, momentum=0.9), distributed=MPI)
    _, rloss = model()
    reference = gc.compile(rloss, optimizer=gc.optim.SGD(0.1, momentum=0.9))
    d = data()
    x, y = d.x_train[:WORLD * BATCH * 20], d.y_train[:WORLD * BATCH * 20]
    ours = gc.data.batches(x, y, BATCH, seed=3, rank=RANK, world=WORLD)
    theirs = gc.data.batches(x, y, BATCH * WORLD, seed=3)
    worst = 0.0
    for (xb, yb), (xa, ya) in zip(ours, theirs, strict=True):
        got = step(x=xb, y=yb)
        want = reference(x=xa, y=ya)
        assert abs(got - want) <= 1e-6 * max(1.0, abs(want)), (got, want)
    for name, value in reference.params.items():
        worst = max(worst, float(np.max(np.abs(step.params[name] - value))))
        np.testing.assert_allclose(step.params[name], value, rtol=0, atol=1e-6,
                                   err_msg=name)
    print(f"match: largest parameter difference after 20 steps {worst:.2e}", flush=True)


def running_statistics() -> None:
    """Batch-norm running statistics of N ranks with batch b each equal those of one process
    fed the N*b rows (torch.nn.SyncBatchNorm's): the running mean is the mean of per-rank
    means, the running variance the mean of per-rank variances plus the variance of the
    per-rank means, unbiased over N*b rows. The ranks shuffle the rows differently (shards
    of a sorted batch: rank means far apart), for 10 steps; parameters are frozen (lr 0) so
    that only the statistics are compared.

    Tolerance: float32 sums of the same squares in another order (per-rank sums, then the
    allreduce) differ by a few units in the last place (eps 1.2e-7); the spread of the rank
    means comes from a difference of two such means, E[(m - s)^2] - E[m - s]^2, which loses
    the digits of E[m - s]^2 (here at most ~10x the spread: ~1e-6 relative to the variance).
    Each step carries momentum 0.9 of the previous error: rtol 1e-5 (measured: 1.4e-7)."""
    _, loss = model(batch_norm=True)
    step = gc.compile(loss, optimizer=gc.optim.SGD(0.0), distributed=MPI)
    _, rloss = model(batch_norm=True)
    reference = gc.compile(rloss, optimizer=gc.optim.SGD(0.0))
    d = data()
    worst, spread = 0.0, 0.0
    for t in range(10):
        rows = slice(t * WORLD * BATCH, (t + 1) * WORLD * BATCH)
        xa, ya = d.x_train[rows], d.y_train[rows]
        order = np.argsort(xa[:, 20 + t], kind="stable")   # rank r gets the r-th block
        xa, ya = xa[order], ya[order]
        step(x=xa[RANK * BATCH:(RANK + 1) * BATCH], y=ya[RANK * BATCH:(RANK + 1) * BATCH])
        reference(x=xa, y=ya)
        for stat in ("running_mean", "running_var"):
            got = step.optimizer_state()[f"bn.{stat}"]
            want = reference.optimizer_state()[f"bn.{stat}"]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{stat} {t}")
        worst = max(worst, float(np.max(np.abs(got - want) / want)))   # the variance
        # how much of the batch variance is the spread between the rank means, which a mean
        # of per-rank variances would miss
        h = xa.astype(np.float64) @ step.params["fc1.w"] + step.params["fc1.b"]
        within = h.reshape(WORLD, BATCH, -1).var(axis=1).mean(axis=0)
        spread = max(spread, float(np.max(1.0 - within / h.var(axis=0))))
    assert spread > 100 * 1e-5, f"the rank means hardly differ ({spread:.1e}): no test"
    assert_identical_on_all_ranks(step, "running statistics")
    print(f"running_statistics: running_var within {worst:.2e} (relative) of one process; "
          f"the spread of rank means is up to {spread:.0%} of a batch variance", flush=True)


def dropout_model(seed: int = 5) -> tuple[gc.Graph, gc.Value, gc.Value]:
    g = gc.Graph("mlp", seed=0)
    x = g.input("x", (None, 64))
    y = g.input("y", (None,), dtype="int64")
    # dropout straight after the linear layer: a zero of `h` is a dropped unit
    h = gc.nn.dropout(gc.nn.linear(x, 32, name="fc1"), 0.5, seed=seed, name="drop")
    logits = gc.nn.linear(gc.relu(h), 10, name="fc2")
    return g, h, gc.mean(gc.softmax_cross_entropy(logits, y))


def dropout() -> None:
    """Every rank draws its own dropout masks (fed the same rows, the ranks keep different
    units), rank 0 the masks one process draws, new ones every step; parameters stay
    bitwise identical on every rank."""
    _, h, loss = dropout_model()
    step = gc.compile(loss, optimizer=gc.optim.Adam(1e-2), distributed=MPI, fetch=[h])
    _, rh, rloss = dropout_model()
    reference = gc.compile(rloss, optimizer=gc.optim.Adam(1e-2), fetch=[rh])
    d = data()
    xb, yb = d.x_train[:BATCH], d.y_train[:BATCH]   # the same rows on every rank
    masks = []
    for t in range(3):
        _, out = step(x=xb, y=yb)
        kept = np.asarray(out) != 0
        everyone = COMM.allgather(kept)
        for r in range(1, WORLD):
            assert not np.array_equal(everyone[r], everyone[0]), f"step {t}: rank {r} " \
                "kept the units rank 0 kept"
        if t == 0:
            _, want = reference(x=xb, y=yb)
            assert np.array_equal(kept, np.asarray(want) != 0) or RANK != 0, \
                "rank 0 draws other masks than one process"
        assert 0.3 < kept.mean() < 0.7, kept.mean()
        masks.append(kept)
        assert_identical_on_all_ranks(step, f"after step {t + 1}")
    assert not np.array_equal(masks[0], masks[1]), "the same masks in two steps"


def checkpoint(directory: str) -> None:
    """save writes one complete file, on rank 0 only; load works on every rank."""
    _, loss = model()
    step = gc.compile(loss, optimizer=gc.optim.Adam(1e-2), distributed=MPI)
    d = data()
    for xb, yb in gc.data.batches(d.x_train[:200], d.y_train[:200], BATCH, rank=RANK,
                                  world=WORLD):
        step(x=xb, y=yb)
    path = os.path.join(directory, "ckpt.npz")
    written = step.save(path)
    assert written == os.path.abspath(path)
    assert sorted(os.listdir(directory)) == ["ckpt.npz"], os.listdir(directory)
    saved = {k: v.copy() for k, v in step.params.items()}
    saved_moments = {k: v.copy() for k, v in step.optimizer_state().items()}
    steps = step.state["step"]
    for xb, yb in gc.data.batches(d.x_train[:64], d.y_train[:64], BATCH, rank=RANK,
                                  world=WORLD):
        step(x=xb, y=yb)
    step.load(path)
    for name, value in saved.items():
        assert np.array_equal(step.params[name], value), name
    for name, value in saved_moments.items():
        assert np.array_equal(step.optimizer_state()[name], value), name
    assert step.state["step"] == steps
    assert_identical_on_all_ranks(step, "after load")
    try:   # a file only some ranks can read: every rank raises
        step.load(path if RANK == 0 else os.path.join(directory, "missing.npz"))
    except gc.CheckpointError as err:
        assert "failed on" in str(err) and "rank 1" in str(err), err
    else:
        raise AssertionError("load of a missing file did not raise")


def bad_feed() -> None:
    """A rank fed a wrong shape raises FeedError; the others raise DistributedError naming
    it; nothing changed anywhere, and the next step works."""
    _, loss = model()
    step = gc.compile(loss, optimizer=gc.optim.SGD(0.1), distributed=MPI)
    d = data()
    xb, yb = d.x_train[RANK * BATCH:(RANK + 1) * BATCH], d.y_train[RANK * BATCH:(RANK + 1) *
                                                                   BATCH]
    step(x=xb, y=yb)
    before = {k: v.copy() for k, v in step.params.items()}
    bad = xb[:, :60] if RANK == 1 else xb
    try:
        step(x=bad, y=yb)
    except gc.FeedError as err:
        assert RANK == 1, err
        assert "input 'x' expects shape" in str(err), err
    except DistributedError as err:
        assert RANK != 1, err
        assert "rank 1: FeedError" in str(err) and "left unchanged" in str(err), err
    else:
        raise AssertionError("a bad feed on rank 1 did not raise")
    for name, value in before.items():
        assert np.array_equal(step.params[name], value), name
    assert step.state["step"] == 1
    step(x=xb, y=yb)
    assert step.state["step"] == 2
    assert_identical_on_all_ranks(step, "after the failed step")


def nonfinite() -> None:
    """A NaN on one rank: every rank raises NonFiniteError (naming the rank), or with
    skip_nonfinite every rank skips the update."""
    _, loss = model()
    step = gc.compile(loss, optimizer=gc.optim.SGD(0.1), distributed=MPI)
    d = data()
    xb, yb = d.x_train[:BATCH].copy(), d.y_train[:BATCH]
    if RANK == WORLD - 1:
        xb[3, 5] = np.nan
    before = {k: v.copy() for k, v in step.params.items()}
    try:
        step(x=xb, y=yb)
    except gc.NonFiniteError as err:
        assert f"rank {WORLD - 1}:" in str(err) and "every rank" in str(err), err
    else:
        raise AssertionError("no NonFiniteError")
    step.skip_nonfinite = True
    value = step(x=xb, y=yb)
    assert not np.isfinite(value)
    for name, v in before.items():
        assert np.array_equal(step.params[name], v), name
    assert step.state["step"] == 0


def fit(directory: str) -> None:
    """gc.fit: every rank trains its shard, rank 0 alone prints and checkpoints."""
    _, loss = model()
    step = gc.compile(loss, optimizer=gc.optim.Adam(1e-2), distributed=MPI)
    d = data()
    log = os.path.join(directory, f"log{RANK}.txt")
    with open(log, "w") as f:
        history = gc.fit(step, (d.x_train, d.y_train, 32), epochs=3, verbose=2, file=f,
                         callbacks=[gc.Checkpoint(os.path.join(directory, "e{epoch}.npz"))])
    text = open(log).read()
    assert (text.count("loss") >= 3) == (RANK == 0), text
    assert history["loss"][-1] < history["loss"][0]
    COMM.Barrier()
    files = sorted(f for f in os.listdir(directory) if f.endswith(".npz"))
    assert files == ["e1.npz", "e2.npz", "e3.npz"], files
    assert_identical_on_all_ranks(step, "after fit")


def uncaught() -> None:
    """An exception nothing catches on one rank aborts all of them (no hang)."""
    _, loss = model()
    step = gc.compile(loss, optimizer=gc.optim.SGD(0.1), distributed=MPI)
    d = data()
    xb, yb = d.x_train[:BATCH], d.y_train[:BATCH]
    if RANK == 1:
        raise RuntimeError("rank 1 gives up before its step")
    step(x=xb, y=yb)   # waits for rank 1, until the abort


def timeout() -> None:
    """A rank that never reaches its step: the others abort the job after the timeout."""
    _, loss = model()
    step = gc.compile(loss, optimizer=gc.optim.SGD(0.1),
                      distributed=gc.distributed.MPI(COMM, timeout=2.0))
    d = data()
    if RANK == 1:
        import time

        time.sleep(60)
    step(x=d.x_train[:BATCH], y=d.y_train[:BATCH])


def subcommunicator() -> None:
    """Ranks split in two groups train two independent copies (sub-communicators)."""
    group = COMM.Split(color=RANK % 2, key=RANK)
    _, loss = model()
    step = gc.compile(loss, optimizer=gc.optim.SGD(0.1),
                      distributed=gc.distributed.MPI(group))
    assert step.comm.size == group.Get_size() and gc.distributed.world_size() == \
        group.Get_size()
    d = data()
    rows = slice(RANK * BATCH, (RANK + 1) * BATCH)
    for _ in range(1 + RANK % 2):   # the groups take different numbers of steps
        step(x=d.x_train[rows], y=d.y_train[rows])
    mine = flat(step.params)
    everyone = COMM.allgather((RANK % 2, mine))
    for color, theirs in everyone:
        assert np.array_equal(theirs, mine) == (color == RANK % 2) or \
            group.Get_size() == 1


def pinned() -> None:
    """All ranks pinned to one core (taskset around mpiexec): a warning, and one Numba and
    one BLAS thread per rank."""
    import numba
    from graphc.kernels.cpu import threads

    assert len(os.sched_getaffinity(0)) == 1
    text = " ".join(str(w.message) for w in LAUNCH_WARNINGS)
    assert f"{WORLD} ranks on this machine share 1 core(s)" in text, text
    assert MPI.cores == 1 and numba.get_num_threads() == 1 and threads.MAX_THREADS == 1


if __name__ == "__main__":
    name = sys.argv[1]
    args = sys.argv[2:]
    globals()[name](*args)
    print(f"OK {name} rank {RANK}", flush=True)
