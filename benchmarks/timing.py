"""Repeated timing of training steps and the machine's SGEMM peak."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from benchmarks.peers import Runner


@dataclass
class Timing:
    """Per-step times of a timed runner.

    Attributes:
        median_ms: median over rounds of the mean step time within a round.
        rounds_ms: the mean step time of each round.
        steps_per_round: steps in each round (chosen so that a round takes about
            ``round_time`` seconds).
        warmup_steps: untimed steps run before the rounds.
    """

    median_ms: float
    rounds_ms: list[float] = field(default_factory=list)
    steps_per_round: int = 0
    warmup_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def time_steps(
    runner: Runner,
    rounds: int = 7,
    round_time: float = 0.2,
    warmup_time: float = 0.2,
    start: int = 0,
) -> Timing:
    """Time ``runner.step`` with a warmup, then ``rounds`` rounds of N steps each.

    N is chosen from the warmup so that one round takes about ``round_time`` seconds. Each
    round ends with ``runner.sync`` so asynchronous frameworks are charged for all their
    work. Steps cycle over the runner's batches starting at batch ``start``.
    """
    i = start
    out = None
    t0 = time.perf_counter()
    warm = 0
    while warm < 3 or time.perf_counter() - t0 < warmup_time:
        out = runner.step(i)
        i += 1
        warm += 1
    runner.sync(out)
    per_step = (time.perf_counter() - t0) / warm
    n = max(1, min(1_000_000, round(round_time / per_step)))
    rounds_ms = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            out = runner.step(i)
            i += 1
        runner.sync(out)
        rounds_ms.append((time.perf_counter() - t0) / n * 1e3)
    return Timing(statistics.median(rounds_ms), rounds_ms, n, warm)


def _system_busy_s() -> float | None:
    """CPU-seconds all processes have spent busy since boot (Linux ``/proc/stat``)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...
    ticks = [int(v) for v in fields[1:8]]
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]
    return busy / os.sysconf("SC_CLK_TCK")


class BackgroundLoad:
    """CPU use while a block runs: by other processes (``cpus``) and by this one.

    Use as a context manager; ``cpus`` is ``None`` where ``/proc/stat`` is unavailable.
    With ``children=True``, the CPU time of child processes that ended and were waited for
    during the block (a worker subprocess and the processes it waited for) counts as this
    process's own.
    """

    cpus: float | None = None
    #: Average number of CPUs this process used over the block.
    own_cpus: float | None = None

    def __init__(self, children: bool = False) -> None:
        self.children = children

    def _own_s(self) -> float:
        if not self.children:
            return time.process_time()
        import resource  # Unix only, like /proc/stat

        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + usage.ru_utime + usage.ru_stime

    def __enter__(self) -> BackgroundLoad:
        self._busy0 = _system_busy_s()
        self._own0 = self._own_s()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        busy1 = _system_busy_s()
        wall = time.perf_counter() - self._t0
        if wall <= 0:
            return
        self.own_cpus = (self._own_s() - self._own0) / wall
        if busy1 is None or self._busy0 is None:
            return
        own = self.own_cpus * wall
        self.cpus = max(0.0, (busy1 - self._busy0 - own) / wall)


def sgemm_gflops(n: int, reps: int = 7) -> float:
    """Median GFLOP/s of ``np.dot`` on two random ``n x n`` float32 matrices."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    np.dot(a, b, out=c)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.dot(a, b, out=c)
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / statistics.median(times) / 1e9


def sgemm_peak(sizes: tuple[int, ...] = (1024, 2048), reps: int = 7) -> dict[str, float]:
    """SGEMM GFLOP/s at each size and their maximum, under the key ``"peak"``."""
    res = {str(n): sgemm_gflops(n, reps) for n in sizes}
    res["peak"] = max(res.values())
    return res


def graphc_sgemm_peak(sizes: tuple[int, ...] = (1024, 2048), reps: int = 7) -> dict[str, Any]:
    """The same products on the BLAS graphc's compiled steps call (Numba's ``np.dot`` on
    SciPy's OpenBLAS, with graphc's kernel choice and all its threads): GFLOP/s under the
    keys ``"graphc <n>"`` and ``"graphc peak"``, and the kernel set under
    ``"graphc kernels"``. Empty if graphc cannot be imported."""
    try:
        from graphc.kernels.cpu.threads import core_name, max_threads, set_blas_threads
        from numba import njit

        import graphc  # noqa: F401
    except ImportError:
        return {}

    @njit(nogil=True)
    def product(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
        np.dot(a, b, c)

    set_blas_threads(max_threads())
    res: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        c = np.empty((n, n), dtype=np.float32)
        product(a, b, c)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            product(a, b, c)
            times.append(time.perf_counter() - t0)
        res[f"graphc {n}"] = 2.0 * n**3 / statistics.median(times) / 1e9
    res["graphc peak"] = max(res.values())
    res["graphc kernels"] = core_name()
    return res


if __name__ == "__main__":
    import json
    import sys

    with BackgroundLoad() as _load:
        _res: dict[str, Any] = sgemm_peak()
        _res.update(graphc_sgemm_peak())
    _res["background_cpus"] = _load.cpus if _load.cpus is not None else float("nan")
    sys.stdout.write(json.dumps(_res) + "\n")
