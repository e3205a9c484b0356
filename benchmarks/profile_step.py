"""Time every instruction of a compiled CPU training step, one kernel call at a time.

    python benchmarks/profile_step.py transformer2 [--steps 50] [--top 25]

The model is one of ``benchmarks.models.MODELS`` (or ``cnn16``/``cnn28``), compiled with Adam
for the CPU target. After a few warm-up steps, the program is run ``--steps`` more times by
calling each instruction's kernel through its address on the plan's argument block, in
program order (what the executor does), timing every call; the table lists the
instructions with the largest median times, their share of the summed medians and what
they compute (with the shapes of matrix products).
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
from graphc.kernels.cpu.threads import set_blas_threads  # noqa: E402

import graphc as gc  # noqa: E402
from benchmarks.models import MODELS, cnn  # noqa: E402

_KERNEL = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p)
BUILDERS = {**MODELS, "cnn16": lambda: cnn(16), "cnn28": lambda: cnn(28)}


def profile(name: str, steps: int, cpu: bool = False
            ) -> tuple[float, list[tuple[float, int, str]]]:
    """Median ms of a whole step and (median ms, index, description) per instruction;
    with `cpu`, instructions are timed by the CPU time of this thread (steadier on a busy
    machine, but blind to other BLAS threads)."""
    loss, feeds = BUILDERS[name]()
    step = gc.compile(loss, optimizer=gc.optim.Adam(lr=1e-3), target="cpu")
    for _ in range(5):
        step(**feeds)
    whole = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step(**feeds)
        whole.append(time.perf_counter() - t0)
    plan = next(iter(step._plans.values()))
    set_blas_threads(plan.blas_threads)
    calls = [(_KERNEL(int(f)), int(b)) for f, b in zip(step._functions, plan.blocks)]
    times = np.zeros((steps, len(calls)))
    clock = time.thread_time if cpu else time.perf_counter
    for s in range(steps):
        for i, (fn, block) in enumerate(calls):
            t0 = clock()
            fn(block)
            times[s, i] = clock() - t0
    medians = 1e3 * np.median(times, axis=0)
    rows = [(float(ms), i, _describe(step, instruction))
            for i, (ms, instruction) in enumerate(zip(medians, step.code.instructions))]
    return 1e3 * float(np.median(whole)), rows


def _describe(step: gc.runtime.CompiledFunction, instruction: object) -> str:
    """What an instruction computes; for a matrix product, its operands' shapes."""
    nodes = [step.program.nodes[n] for n in instruction.nodes]
    if len(nodes) == 1 and nodes[0].op == "matmul":
        a, b = (step.program.nodes[i] for i in nodes[0].inputs)
        return f"matmul {a.op}{a.shape} @ {b.op}{b.shape}"
    return instruction.what


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=sorted(BUILDERS))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--cpu", action="store_true",
                    help="time instructions by this thread's CPU time, not wall time")
    args = ap.parse_args(argv)
    whole, rows = profile(args.model, args.steps, args.cpu)
    total = sum(r[0] for r in rows)
    print(f"{args.model}: step {whole:.3f} ms (median of {args.steps}); {len(rows)} "
          f"instructions summing to {total:.3f} ms")
    kinds: dict[str, list[float]] = {}
    for ms, _, what in rows:
        kinds.setdefault(what.split(" ")[0], []).append(ms)
    print("  by kind: " + ", ".join(f"{k} {sum(v):.2f} ms ({len(v)})" for k, v in sorted(
        kinds.items(), key=lambda kv: -sum(kv[1]))))
    for ms, i, what in sorted(rows, reverse=True)[:args.top]:
        print(f"{ms:8.3f} ms {100 * ms / total:5.1f}%  #{i:<4d} {what[:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
