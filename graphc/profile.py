"""`step.profile(feeds)`: the time of every kernel call of a compiled CPU step.

A profiling run of the step's own program: the executor (kernels/cpu/program.py) runs one
instruction per call, timed from Python; the time of an empty executor call (measured here)
is subtracted. Each instruction's work is estimated from its nodes at the fed sizes
(2*m*n*k flops for a matrix product, one flop per element and elementwise or reduced op;
bytes read from outside the kernel plus bytes written) and set against this machine's
measured peaks: a large float32 BLAS matrix product for FLOP/s, a large copy for bytes/s.
Parameters, optimizer state and the step counter are restored afterwards.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphc.errors import GraphError, short_location
from graphc.inspect import clip
from graphc.kernels.cpu.threads import set_blas_threads
from graphc.ops import OPS
from graphc.passes.fusion import data_inputs


@functools.cache
def machine_peaks() -> dict[str, float]:
    """This machine's measured peaks, once per process: `flops` (a 2048^3 float32 matrix
    product through numpy's BLAS, best of 3) and `bytes` (read + write bytes per second of
    a 128 MiB float32 copy, best of 3)."""
    rng = np.random.default_rng(0)
    n = 2048
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty_like(a)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - start)
    flops = 2.0 * n ** 3 / best
    src = np.ones(32 << 20, dtype=np.float32)
    dst = np.empty_like(src)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return {"flops": flops, "bytes": 2.0 * src.nbytes / best}


def _work(step: Any, instruction: Any, shapes: dict[int, tuple]) -> tuple[float, float]:
    """(flops, bytes) of one instruction at these sizes (an estimate: see the module)."""
    nodes = step.program.nodes

    def nbytes(nid: int) -> int:
        return math.prod(shapes[nid]) * np.dtype(nodes[nid].dtype).itemsize

    members = set(instruction.nodes)
    if instruction.what.startswith("copy") or instruction.check:
        return 0.0, float(sum(2 * nbytes(n) if not instruction.check else nbytes(n)
                              for n in members))
    flops = 0.0
    for nid in instruction.nodes:
        node = nodes[nid]
        op = OPS.get(node.op)
        if node.op == "matmul":
            flops += 2.0 * math.prod(shapes[nid]) * shapes[node.inputs[0]][-1]
        elif op is not None and op.kind == "reduce":
            flops += math.prod(shapes[node.inputs[0]])
        elif op is not None and op.kind == "elementwise":
            flops += math.prod(shapes[nid])
    reads = {i for n in members for i in data_inputs(nodes[n]) if i not in members}
    stores = instruction.kernel.group.stores or instruction.nodes[-1:]
    return flops, float(sum(nbytes(i) for i in reads) + sum(nbytes(i) for i in stores))


@dataclass(repr=False)
class Profile:
    """Per-instruction times of a profiling run. `str()` is a table; `as_dict()` the data."""

    steps: int
    step_seconds: float           # one ordinary call of the step, best of the run
    overhead_seconds: float       # one empty executor call, subtracted from every timing
    peaks: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "step_seconds": self.step_seconds,
                "overhead_seconds": self.overhead_seconds, "peaks": self.peaks,
                "rows": self.rows}

    def __str__(self) -> str:
        total = sum(r["seconds"] for r in self.rows)
        lines = [f"profile of {self.steps} steps: kernels {total / self.steps * 1e3:.3f} ms "
                 f"a step (one ordinary call {self.step_seconds * 1e3:.3f} ms); peaks "
                 f"{self.peaks['flops'] / 1e9:.1f} GFLOP/s (sgemm), "
                 f"{self.peaks['bytes'] / 1e9:.1f} GB/s (copy)",
                 f"{'#':>4} {'kernel':<7} {'kind':<6} {'share':>6} {'us/call':>9} "
                 f"{'GFLOP/s':>8} {'%pk':>4} {'GB/s':>7} {'%pk':>4}  nodes / lines"]
        for r in sorted(self.rows, key=lambda r: -r["seconds"]):
            lines.append(clip(
                f"{r['index']:4d} {r['kernel']:<7} {r['kind']:<6} {r['share'] * 100:5.1f}% "
                f"{r['seconds'] / r['calls'] * 1e6:9.1f} {r['gflops']:8.2f} "
                f"{r['flops_peak'] * 100:3.0f}% {r['gbytes']:7.2f} {r['bytes_peak'] * 100:3.0f}%"
                f"  {r['what']}", 120))
        return "\n".join(lines)

    __repr__ = __str__


def profile(step: Any, feeds: dict[str, Any], steps: int = 50) -> Profile:
    """Time every kernel call of `step` (a CPU ProgramFunction) over `steps` runs on
    `feeds`; parameters, optimizer state and the step counter are left as they were."""
    from graphc.backends.cpu.runtime import ProgramFunction
    from graphc.runtime import _step_array

    if not isinstance(step, ProgramFunction):
        raise GraphError(f"profile times the CPU program of kernel calls; this step is a "
                         f"{type(step).__name__} (target {step.target!r}; with "
                         "GRAPHC_SHARDS > 1 the CPU step is one fused function)")
    if steps < 1:
        raise GraphError(f"profile needs steps >= 1, got {steps}")
    saved = {k: v.copy() for k, v in step.program.param_values.items()}
    saved_state = {k: v.copy() for k, v in step.program.state_values.items()}
    saved_counter = step.state["step"]
    try:
        return _run(step, feeds, steps, _step_array)
    finally:
        for store, copies in ((step.program.param_values, saved),
                              (step.program.state_values, saved_state)):
            for k, v in copies.items():
                store[k][...] = v
        step.state["step"] = saved_counter
        step.sync_to_device()


def _run(step: Any, feeds: dict[str, Any], steps: int, step_array: Any) -> Profile:
    step(**feeds)   # builds the plan for these shapes
    step_seconds = math.inf
    for _ in range(3):
        start = time.perf_counter()
        step(**feeds)
        step_seconds = min(step_seconds, time.perf_counter() - start)
    arrays, _, key = step._begin_call(feeds)
    plan = step._plans[key]
    held = {name: step_array(arrays[name]) for name in plan.patches}
    for name, (positions, offsets) in plan.patches.items():
        plan.table[positions] = held[name].ctypes.data + offsets
    set_blas_threads(plan.blas_threads)
    check = int(step.check_finite and step.optimizer is not None)
    functions, blocks = step._functions.ctypes.data, plan.blocks.ctypes.data
    is_check, status = step._is_check.ctypes.data, plan.status.ctypes.data
    execute, count = step._execute, len(step._functions)
    clock = time.perf_counter_ns
    empty = []
    for _ in range(200):
        start = clock()
        execute(functions, blocks, is_check, 0, check, status)
        empty.append(clock() - start)
    overhead = float(np.median(empty))
    spent = np.zeros(count)
    for _ in range(steps):
        step._begin_call(feeds)   # this step's hyperparameters (learning-rate schedules)
        for i in range(count):
            start = clock()
            stopped = execute(functions + 8 * i, blocks + 8 * i, is_check + i, 1, check,
                              status)
            spent[i] += max(clock() - start - overhead, 0.0)
            if stopped >= 0:
                plan.status[0] = 0
                raise GraphError(f"profile: instruction {i} "
                                 f"({step.code.instructions[i].what}) stopped the step "
                                 "(a non-finite value or an index out of range)")
    spent *= 1e-9
    shapes = step._shapes(arrays)
    peaks = machine_peaks()
    total = float(spent.sum()) or 1.0
    rows = []
    nodes = step.program.nodes
    for i, ins in enumerate(step.code.instructions):
        flops, nbytes = _work(step, ins, shapes)
        seconds = float(spent[i])
        rate = steps / seconds if seconds > 0 else 0.0
        where = sorted({short_location(nodes[n].where) for n in ins.nodes})
        rows.append({
            "index": i, "kernel": ins.kernel.name, "module": ins.kernel.module,
            "kind": "check" if ins.check else ins.kernel.group.kind, "what": ins.what,
            "nodes": [nodes[n].label for n in ins.nodes], "lines": where,
            "calls": steps, "seconds": seconds, "share": seconds / total,
            "flops": flops, "bytes": nbytes,
            "gflops": flops * rate / 1e9, "gbytes": nbytes * rate / 1e9,
            "flops_peak": flops * rate / peaks["flops"],
            "bytes_peak": nbytes * rate / peaks["bytes"]})
    return Profile(steps, step_seconds, overhead * 1e-9, dict(peaks), rows)
