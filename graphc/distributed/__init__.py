"""Data-parallel training over MPI ranks (mpi4py): `compile(loss, optimizer=...,
distributed="mpi")` averages the gradients over the ranks before each update.

    step = gc.compile(loss, optimizer=gc.optim.Adam(1e-3), distributed="mpi")
    for xb, yb in gc.data.batches(X, Y, 64, seed=epoch, rank=gc.distributed.rank(),
                                  world=gc.distributed.world_size()):
        loss_value = step(x=xb, y=yb)       # the loss averaged over the ranks

Run with `mpiexec -n 2 python train.py`. `MPI(comm)` trains over a sub-communicator and sets
a timeout, threads per rank and abort-on-error (see MPI).
"""

from __future__ import annotations

from graphc.distributed.comm import MPI, DistributedError, world
from graphc.distributed.step import DistributedStep


def rank() -> int:
    """This process's rank in the communicator in use (0 without MPI)."""
    return world()[0]


def world_size() -> int:
    """How many ranks train together (1 without MPI)."""
    return world()[1]


def is_main() -> bool:
    """Whether this is rank 0, the rank that prints and writes checkpoints."""
    return rank() == 0


__all__ = ["MPI", "DistributedError", "DistributedStep", "is_main", "rank", "world_size"]
