"""Data-parallel training over MPI (graphc/distributed/).

The guarantees are checked with real ranks: tests/mpi_worker.py runs each scenario under
`mpiexec -n 2` and `-n 3` (the mpiexec of the `mpich` wheel the `mpi` extra installs; on a
machine with fewer cores the ranks take turns, which changes timing only). Sharding of the
data and a one-rank step are checked in this process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import graphc as gc

mpi4py = pytest.importorskip("mpi4py", reason='distributed training needs mpi4py: '
                             'pip install "graphc[mpi]"')
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or \
    shutil.which("mpiexec")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "mpi_worker.py")
needs_mpiexec = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH (the mpich "
                                   "wheel of the mpi extra installs one beside python)")


def run_ranks(n: int, scenario: str, *args: str, timeout: float = 300
              ) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, WORKER, scenario, *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def check_ok(result: subprocess.CompletedProcess, n: int, scenario: str) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    for r in range(n):
        assert f"OK {scenario} rank {r}" in result.stdout, out[-4000:]


@needs_mpiexec
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("scenario", ["sync", "match", "running_statistics", "dropout",
                                      "bad_feed", "nonfinite"])
def test_ranks(n: int, scenario: str) -> None:
    check_ok(run_ranks(n, scenario), n, scenario)


@needs_mpiexec
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("scenario", ["checkpoint", "fit"])
def test_ranks_with_files(n: int, scenario: str, tmp_path: os.PathLike) -> None:
    check_ok(run_ranks(n, scenario, str(tmp_path)), n, scenario)


@needs_mpiexec
def test_uncaught_exception_aborts_every_rank() -> None:
    start = time.monotonic()
    result = run_ranks(2, "uncaught", timeout=120)
    assert result.returncode != 0
    assert "aborting all 2 ranks" in result.stderr, result.stderr[-2000:]
    assert time.monotonic() - start < 100


@needs_mpiexec
def test_timeout_aborts_instead_of_waiting() -> None:
    start = time.monotonic()
    result = run_ranks(2, "timeout", timeout=120)
    assert result.returncode != 0
    assert "waited 2 s for the other ranks in the gradient allreduce" in result.stderr, \
        result.stderr[-2000:]
    assert time.monotonic() - start < 50


@needs_mpiexec
def test_sub_communicators() -> None:
    check_ok(run_ranks(3, "subcommunicator"), 3, "subcommunicator")


@needs_mpiexec
@pytest.mark.skipif(shutil.which("taskset") is None, reason="no taskset to pin the ranks")
def test_ranks_pinned_to_one_core_warn() -> None:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    core = str(min(os.sched_getaffinity(0)))
    done = subprocess.run(["taskset", "-c", core, MPIEXEC, "-n", "2", sys.executable, WORKER,
                           "pinned"], capture_output=True, text=True, timeout=120, env=env)
    check_ok(done, 2, "pinned")


@needs_mpiexec
def test_mpi_digits_example() -> None:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable,
                           os.path.join(ROOT, "examples", "mpi_digits.py"), "--epochs", "8",
                           "--quiet"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("2 rank(s)") and sum("test_accuracy" in x for x in lines) == 1
    assert float(lines[-1].split("=")[1]) >= 0.96, done.stdout


def test_launcher_and_library_disagree() -> None:
    """Open MPI's mpirun environment (4 ranks) around a library that sees one rank."""
    code = "import graphc as gc; gc.distributed.MPI()"
    env = dict(os.environ, OMPI_COMM_WORLD_SIZE="4",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PMI_SIZE", None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120, cwd=ROOT)
    assert result.returncode != 0
    assert "DistributedError: Open MPI's mpirun started 4 processes" in result.stderr
    assert "sees 1 rank(s)" in result.stderr


def test_batches_shard_each_epoch() -> None:
    x, y = np.arange(23).reshape(23, 1), np.arange(23)
    whole = [b[1] for b in gc.data.batches(x, y, 6, seed=1)]
    for drop_last in (False, True):
        shards = [list(gc.data.batches(x, y, 2, seed=1, drop_last=drop_last, rank=r,
                                       world=3)) for r in range(3)]
        assert len({len(s) for s in shards}) == 1     # the same number of batches
        for t in range(len(shards[0])):
            assert len({len(s[t][1]) for s in shards}) == 1   # of the same sizes
            rows = np.concatenate([s[t][1] for s in shards])
            if t < len(whole) - 1:   # batch t of the ranks = batch t of one process
                assert sorted(rows) == sorted(whole[t])
        seen = np.concatenate([b[1] for s in shards for b in s])
        if drop_last:
            assert len(set(seen)) == len(seen)
        else:
            assert set(seen) == set(range(23)) and len(seen) == 24   # one row padded
    with pytest.raises(ValueError, match="rank must be in"):
        next(gc.data.batches(x, y, 2, rank=3, world=3))


def one_rank_model() -> tuple[gc.Graph, gc.Value]:
    g = gc.Graph("mlp", seed=0)
    x = g.input("x", (None, 8))
    y = g.input("y", (None,), dtype="int64")
    # no bias before batch norm: its gradient would be rounding noise, which Adam turns
    # into full-size steps of either sign
    h = gc.nn.batch_norm(gc.nn.linear(x, 16, name="fc1", bias=False), name="bn")
    logits = gc.nn.linear(gc.relu(h), 3, name="fc2")
    return g, gc.mean(gc.softmax_cross_entropy(logits, y))


def test_one_rank_matches_the_ordinary_step() -> None:
    """World size 1: the two programs compute what the one-program step does, gradients
    written straight into the flat buffer (no copy instruction), and the fetches."""
    rng = np.random.default_rng(0)
    xb, yb = rng.normal(size=(32, 8)).astype(np.float32), rng.integers(0, 3, 32)
    _, loss = one_rank_model()
    step = gc.compile(loss, optimizer=gc.optim.Adam(1e-2), distributed="mpi", fetch=[loss])
    _, rloss = one_rank_model()
    reference = gc.compile(rloss, optimizer=gc.optim.Adam(1e-2))
    assert step.comm.size == 1
    for _ in range(5):
        got, fetched = step(x=xb, y=yb)
        want = reference(x=xb, y=yb)
        assert got == pytest.approx(want, rel=1e-6)
        assert float(fetched) == pytest.approx(want, rel=1e-6)
    for name, value in reference.params.items():
        np.testing.assert_allclose(step.params[name], value, rtol=0, atol=1e-6)
    np.testing.assert_allclose(step.optimizer_state()["bn.running_mean"],
                               reference.optimizer_state()["bn.running_mean"], atol=1e-6)
    assert set(step.buffers.flat) == {"float32"}   # one buffer for the one dtype
    assert not any(k.startswith(("grad:", "mean:")) for k in step.optimizer_state())


def test_one_rank_draws_the_dropout_masks_of_the_ordinary_step() -> None:
    """World size 1: dropout's seeds are kept, so the masks, losses and parameters are
    those of the one-program step."""
    def build() -> tuple[gc.Value, gc.Value]:
        g = gc.Graph("mlp", seed=0)
        x, y = g.input("x", (None, 8)), g.input("y", (None,), dtype="int64")
        h = gc.nn.dropout(gc.nn.linear(x, 16, name="fc1"), 0.5, name="drop")
        return h, gc.mean(gc.softmax_cross_entropy(gc.nn.linear(h, 3, name="fc2"), y))

    h, loss = build()
    step = gc.compile(loss, optimizer=gc.optim.SGD(0.1), distributed="mpi", fetch=[h])
    rh, rloss = build()
    reference = gc.compile(rloss, optimizer=gc.optim.SGD(0.1), fetch=[rh])
    rng = np.random.default_rng(3)
    xb, yb = rng.normal(size=(16, 8)).astype(np.float32), rng.integers(0, 3, 16)
    for _ in range(3):
        (got, out), (want, ref_out) = step(x=xb, y=yb), reference(x=xb, y=yb)
        assert got == pytest.approx(want, rel=1e-6)
        np.testing.assert_array_equal(np.asarray(out) != 0, np.asarray(ref_out) != 0)
    for name, value in reference.params.items():
        np.testing.assert_allclose(step.params[name], value, rtol=0, atol=1e-6)


def test_rank_seeds_differ_by_rank() -> None:
    from graphc.ops.random import rank_seed

    seeds = [rank_seed(12345, r) for r in range(64)]
    assert seeds[0] == 12345 and len(set(seeds)) == 64
    assert all(0 <= s < 2 ** 63 for s in seeds)
    assert rank_seed(2 ** 63 - 1, 1) != rank_seed(0, 1)


def test_gradients_are_written_into_the_buffer() -> None:
    """The kernels computing the gradients (matrix products, reductions) store them in the
    flat buffer: the gradient program has no copy instruction, and the buffer holds them."""
    g = gc.Graph("mlp", seed=0)
    x, y = g.input("x", (None, 8)), g.input("y", (None,), dtype="int64")
    logits = gc.nn.linear(gc.relu(gc.nn.linear(x, 16, name="fc1")), 3, name="fc2")
    loss = gc.mean(gc.softmax_cross_entropy(logits, y))
    step = gc.compile(loss, optimizer=gc.optim.SGD(0.0), distributed="mpi")
    gradients, _ = step.programs
    assert " copy " not in gradients.source, gradients.source
    rng = np.random.default_rng(1)
    xb, yb = rng.normal(size=(8, 8)).astype(np.float32), rng.integers(0, 3, 8)
    step(x=xb, y=yb)
    want = gc.evaluate(gc.grad(loss, g.params), {"x": xb, "y": yb})
    for p, w in zip(g.params, want):
        np.testing.assert_allclose(step.buffers.views["grad:" + p.name], w, rtol=1e-5,
                                   atol=1e-6)


def test_gathers_and_library_kernels_fill_the_buffer() -> None:
    """An embedding's gradient (a scatter kernel) and a convolution's (a library kernel)
    written into the buffer, a second step over the first step's values."""
    g = gc.Graph("conv", seed=0)
    ids = g.input("ids", (None, 4), dtype="int64")
    y = g.input("y", (None,), dtype="int64")
    e = gc.reshape(gc.nn.embedding(ids, 6, 4, name="emb"), (-1, 1, 4, 4))
    h = gc.nn.flatten(gc.relu(gc.nn.conv2d(e, 2, 3, padding=1, name="conv")))
    loss = gc.mean(gc.softmax_cross_entropy(gc.nn.linear(h, 3, name="out"), y))
    step = gc.compile(loss, optimizer=gc.optim.SGD(0.0), distributed="mpi")
    rng = np.random.default_rng(2)
    for _ in range(2):
        feeds = {"ids": rng.integers(0, 6, (5, 4)), "y": rng.integers(0, 3, 5)}
        step(**feeds)
        want = gc.evaluate(gc.grad(loss, g.params), feeds)
        for p, w in zip(g.params, want):
            np.testing.assert_allclose(step.buffers.views["grad:" + p.name], w, rtol=1e-4,
                                       atol=1e-6, err_msg=p.name)


def test_distributed_needs_an_optimizer_and_a_known_kind() -> None:
    _, loss = one_rank_model()
    with pytest.raises(gc.GraphError, match="needs an optimizer"):
        gc.compile(loss, distributed="mpi")
    with pytest.raises(ValueError, match="distributed must be 'mpi'"):
        gc.compile(loss, optimizer=gc.optim.SGD(0.1), distributed="nccl")
