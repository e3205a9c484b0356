"""The MPI communicator of data-parallel training (mpi4py), and the checks made at launch.

`MPI(comm)` wraps an mpi4py communicator (COMM_WORLD by default). Creating one checks the
launch: the MPI library must see as many ranks as the launcher started (an `mpiexec` of one
MPI with an mpi4py built on another gives N processes that each think they are alone), ranks
sharing fewer cores than there are ranks on a machine get a warning, and graphc's Numba and
BLAS threads are limited to each rank's share of the cores.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from typing import Any

import numpy as np

# Environment variables launchers set to the number of processes they started.
LAUNCHER_SIZES = (
    ("OMPI_COMM_WORLD_SIZE", "Open MPI's mpirun"),
    ("PMI_SIZE", "an MPICH / Intel MPI (Hydra) mpiexec"),
    ("MV2_COMM_WORLD_SIZE", "MVAPICH's mpirun"),
)


class DistributedError(RuntimeError):
    """Ranks of a distributed step cannot go on together (another rank failed, the launch
    is inconsistent, or a peer did not answer in time)."""


def import_mpi() -> Any:
    """mpi4py's MPI module, or ImportError saying how to install it."""
    try:
        from mpi4py import MPI as _MPI
    except ImportError as err:
        raise ImportError('distributed training needs mpi4py: pip install "graphc[mpi]" '
                          f"(mpi4py and the mpich wheel) ({err})") from None
    return _MPI


def check_launch(world_size: int, library: str) -> None:
    """DistributedError if a launcher's environment says another number of ranks than the
    MPI library sees."""
    for var, launcher in LAUNCHER_SIZES:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) != world_size:
            raise DistributedError(
                f"{launcher} started {value} processes ({var}={value}) but the MPI library "
                f"mpi4py uses sees {world_size} rank(s): the launcher belongs to another MPI "
                f"than the library ({library.splitlines()[0].strip()}). Launch with that "
                f"library's mpiexec (for the mpich wheel: the mpiexec installed beside "
                f"python, {os.path.join(os.path.dirname(sys.executable), 'mpiexec')})")


def cores_per_rank(local: Any) -> int:
    """Cores each rank on this machine may use (collective over `local`, the ranks of the
    communicator sharing the machine): its own cores if ranks are bound to disjoint sets,
    else an equal share of the cores they can all run on. Warns when they share fewer cores
    than there are ranks."""
    mine = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        list(range(os.cpu_count() or 1))
    sets = local.allgather(mine)
    union = set().union(*map(set, sets))
    if len(union) < len(sets):
        warnings.warn(f"{len(sets)} ranks on this machine share {len(union)} core(s) "
                      f"{sorted(union)}: they take turns instead of running in parallel. "
                      f"Bind each rank to its own cores (mpiexec -bind-to core) or start at "
                      f"most {len(union)} rank(s) per machine", RuntimeWarning, stacklevel=3)
    if sum(len(s) for s in sets) == len(union):
        return len(mine)
    return max(1, len(union) // len(sets))


def limit_threads(n: int) -> None:
    """graphc's BLAS threads and Numba's threads (of this thread) to at most `n`."""
    import numba

    from graphc.kernels.cpu.threads import limit_threads as limit_blas

    limit_blas(n)
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


# MPICH's mpiexec passes a rank's output on through a proxy process, and an Abort that
# reaches the proxy before the output does kills the job with the output unread: without a
# pause the message below was lost in 19 of 60 aborted runs of tests/mpi_worker.py timeout.
ABORT_PAUSE_S = 0.5


def abort_job(world: Any, message: str) -> None:
    """Write `message` to stderr, give the launcher time to pass it on, abort every rank."""
    sys.stderr.write(message)
    sys.stderr.flush()
    time.sleep(ABORT_PAUSE_S)
    world.Abort(1)


_abort_hook_installed = False


def abort_on_uncaught_exception(world: Any) -> None:
    """After the traceback of an exception nothing caught, abort every rank of `world` (else
    the others would wait in their next collective for ever)."""
    global _abort_hook_installed
    if _abort_hook_installed:
        return
    previous = sys.excepthook

    def hook(kind: type, value: BaseException, tb: Any) -> None:
        previous(kind, value, tb)
        abort_job(world, f"graphc: rank {world.Get_rank()} stopped on an uncaught "
                         f"{kind.__name__}; aborting all {world.Get_size()} ranks\n")

    sys.excepthook = hook
    _abort_hook_installed = True


class MPI:
    """A communicator for `compile(..., distributed=MPI(comm))`.

    `comm`: an mpi4py communicator (default COMM_WORLD; a sub-communicator trains a group of
    ranks). `timeout`: seconds a step waits for the other ranks before aborting the job
    (default None: as long as it takes, like MPI itself). `threads`: Numba/BLAS threads per
    rank, "auto" (default: this rank's share of the machine's cores), a count, or None to
    leave them alone. `abort_on_error`: an exception nothing catches aborts every rank
    instead of leaving the others waiting (default True).
    """

    def __init__(self, comm: Any = None, *, timeout: float | None = None,
                 threads: int | str | None = "auto", abort_on_error: bool = True) -> None:
        mpi = import_mpi()
        self.mpi = mpi
        self.comm = mpi.COMM_WORLD if comm is None else comm
        world = mpi.COMM_WORLD
        check_launch(world.Get_size(), mpi.Get_library_version())
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {timeout!r}")
        self.timeout = timeout
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        local = self.comm.Split_type(mpi.COMM_TYPE_SHARED)   # collective on comm alone
        try:
            self.cores = cores_per_rank(local)
        finally:
            local.Free()
        if threads == "auto":
            limit_threads(self.cores)
        elif threads is not None:
            if not isinstance(threads, int) or threads < 1:
                raise ValueError(f"threads must be 'auto', a count >= 1 or None, got "
                                 f"{threads!r}")
            limit_threads(threads)
        if abort_on_error and world.Get_size() > 1:
            abort_on_uncaught_exception(world)
        global _current
        _current = self

    def __repr__(self) -> str:
        return f"MPI(rank {self.rank} of {self.size}, {self.cores} core(s) per rank)"

    # -- collectives ---------------------------------------------------------------------
    def allreduce(self, buffers: list[np.ndarray]) -> None:
        """Sum each buffer over the ranks, in place (one MPI allreduce per buffer)."""
        mpi = self.mpi
        if self.timeout is None:
            for b in buffers:
                self.comm.Allreduce(mpi.IN_PLACE, b, op=mpi.SUM)
            return
        requests = [self.comm.Iallreduce(mpi.IN_PLACE, b, op=mpi.SUM) for b in buffers]
        self.wait(requests, "the gradient allreduce")

    def wait(self, requests: list[Any], what: str) -> None:
        """Wait for `requests`; past the timeout, abort the job naming `what`."""
        deadline = time.monotonic() + self.timeout
        pause = 1e-5
        while not self.mpi.Request.Testall(requests):
            if time.monotonic() > deadline:
                abort_job(self.mpi.COMM_WORLD,
                          f"graphc: rank {self.rank} waited {self.timeout:g} s for the other "
                          f"ranks in {what}; one of them stopped or hangs. Aborting all "
                          f"ranks\n")
            time.sleep(pause)
            pause = min(pause * 2, 1e-3)

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.timeout is None:
            self.comm.Barrier()
        else:
            self.wait([self.comm.Ibarrier()], "a barrier")

    def broadcast(self, arrays: list[np.ndarray], root: int = 0) -> None:
        """Copy `root`'s arrays into every rank's, in place."""
        for a in arrays:
            self.comm.Bcast(a if a.ndim else a.reshape(1), root=root)

    def allgather(self, value: Any) -> list[Any]:
        """Every rank's `value` (a picklable object), by rank."""
        return self.comm.allgather(value)

    def bcast(self, value: Any, root: int = 0) -> Any:
        """`root`'s `value` (a picklable object) on every rank."""
        return self.comm.bcast(value, root=root)


_current: MPI | None = None


def resolve(spec: Any) -> MPI:
    """The MPI of `compile(..., distributed=spec)`: "mpi" or an MPI."""
    if isinstance(spec, MPI):
        return spec
    if spec == "mpi":
        return _current if _current is not None and \
            _current.comm == _current.mpi.COMM_WORLD else MPI()
    raise ValueError(f"distributed must be 'mpi' or graphc.distributed.MPI(comm), got {spec!r}")


def current() -> MPI | None:
    """The communicator of the last MPI created in this process, or None."""
    return _current


def world() -> tuple[int, int]:
    """(rank, size) of the communicator in use: the last MPI created, else COMM_WORLD if
    mpi4py is installed, else (0, 1)."""
    if _current is not None:
        return _current.rank, _current.size
    try:
        mpi = import_mpi()
    except ImportError:
        return 0, 1
    return mpi.COMM_WORLD.Get_rank(), mpi.COMM_WORLD.Get_size()
