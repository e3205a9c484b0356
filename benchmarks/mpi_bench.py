"""Data-parallel training over MPI: one rank against two on the mnist workload.

Starts `mpiexec -n 1` and `mpiexec -n 2` (the mpiexec beside python: the mpich wheel of the
mpi extra) on this script and prints, per rank count: milliseconds per step, samples per
second over all ranks, the time a step spends in its allreduce (waiting for the slower rank
included) and the allreduce alone (all ranks lined up by a barrier first), with the bytes
it reduces. Two scalings: `weak` (each rank its own batch of 128) and `strong` (one batch of
128 split over the ranks). Ends with a projection for N ranks on N free cores: a step costs
compute(batch) + allreduce(N), with the ring allreduce's 2 (N - 1) / N * bytes / bandwidth,
bandwidth taken from the 2-rank measurement.

    python benchmarks/mpi_bench.py [--steps 40] [--ranks 1,2] [--threads 1] [--json out.json]

On a machine with fewer free cores than ranks the ranks take turns and the step times say
nothing about scaling; the allreduce alone still measures the transport.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def worker(steps: int, scaling: str, threads: int | None) -> None:
    """One rank's part: train the mnist MLP `steps` steps and time it (rank 0 prints JSON)."""
    import graphc as gc
    from benchmarks.workloads import get_workload

    workload = get_workload("mnist")
    comm = gc.distributed.MPI(threads="auto" if threads is None else threads)
    ranks, rank = comm.size, comm.rank
    g = gc.Graph("mnist", seed=0)
    x = g.input("x", (None, workload.sizes[0]))
    y = g.input("y", (None,), dtype="int64")
    h = x
    for i, width in enumerate(workload.sizes[1:]):
        h = gc.nn.linear(h, width, name=f"fc{i}")
        h = gc.relu(h) if i < len(workload.sizes) - 2 else h
    loss = gc.mean(gc.softmax_cross_entropy(h, y))
    for name, value in workload.make_params().items():
        g.param_values[name][...] = value
    step = gc.compile(loss, optimizer=gc.optim.Adam(1e-3), distributed=comm)
    batches = workload.make_batches()
    rows = workload.batch if scaling == "weak" else workload.batch // ranks
    feeds = [(bx[rank * rows % len(bx):][:rows], by[rank * rows % len(by):][:rows])
             for bx, by in batches]
    for k in range(5):   # warm up: plans, caches, first allreduces
        step(x=feeds[k % len(feeds)][0], y=feeds[k % len(feeds)][1])
    comm.barrier()
    step.allreduce_seconds, step.allreduce_calls = 0.0, 0
    times = []
    for k in range(steps):
        start = time.perf_counter()
        step(x=feeds[k % len(feeds)][0], y=feeds[k % len(feeds)][1])
        times.append(time.perf_counter() - start)
    in_step = step.allreduce_seconds / step.allreduce_calls
    alone = []
    buffers = list(step.buffers.flat.values())
    for _ in range(steps):
        comm.barrier()
        start = time.perf_counter()
        comm.allreduce(buffers)
        alone.append(time.perf_counter() - start)
    slowest = comm.comm.allreduce(statistics.median(times), op=comm.mpi.MAX)
    if rank == 0:
        print(json.dumps({
            "ranks": ranks, "scaling": scaling, "rows_per_rank": rows,
            "step_ms": slowest * 1e3, "samples_per_s": rows * ranks / slowest,
            "allreduce_in_step_ms": in_step * 1e3,
            "allreduce_alone_ms": statistics.median(alone) * 1e3,
            "bytes": step.buffers.nbytes, "cores_per_rank": comm.cores,
            "compile_s": step.compile_report.total}), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--ranks", default="1,2", help="rank counts to run (default 1,2)")
    parser.add_argument("--json", metavar="PATH", help="write the measurements to PATH")
    parser.add_argument("--threads", type=int, help="Numba/BLAS threads per rank (default: "
                        "each rank's share of the cores); 1 compares ranks at equal threads")
    parser.add_argument("--worker", choices=["weak", "strong"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.steps, args.worker, args.threads)
        return
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or \
        shutil.which("mpiexec")
    if mpiexec is None:
        sys.exit('mpi_bench: no mpiexec; pip install ".[mpi]" installs one beside python')
    results = []
    print(f"mnist MLP 784-512-512-10, Adam; {os.cpu_count()} core(s) on this machine")
    print(f"{'scaling':<7} {'ranks':>5} {'rows/rank':>9} {'ms/step':>8} {'samples/s':>10} "
          f"{'allreduce in step ms':>21} {'allreduce alone ms':>19} {'bytes':>9}")
    for scaling in ("weak", "strong"):
        for n in [int(r) for r in args.ranks.split(",")]:
            done = subprocess.run([mpiexec, "-n", str(n), sys.executable, __file__,
                                   "--worker", scaling, "--steps", str(args.steps),
                                   *(["--threads", str(args.threads)] if args.threads else [])],
                                  capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                sys.exit(f"mpi_bench: {n} rank(s) failed:\n{done.stderr[-3000:]}")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(r)
            print(f"{scaling:<7} {n:>5} {r['rows_per_rank']:>9} {r['step_ms']:>8.2f} "
                  f"{r['samples_per_s']:>10.0f} {r['allreduce_in_step_ms']:>21.3f} "
                  f"{r['allreduce_alone_ms']:>19.3f} {r['bytes']:>9}")
    two = [r for r in results if r["ranks"] == 2 and r["scaling"] == "weak"]
    one = [r for r in results if r["ranks"] == 1 and r["scaling"] == "weak"]
    if two and one:
        nbytes, alone = two[0]["bytes"], two[0]["allreduce_alone_ms"] * 1e-3
        bandwidth = nbytes / alone   # 2 ranks: 2 (N - 1) / N = 1 buffer each way
        compute = one[0]["step_ms"] * 1e-3
        print(f"\nprojection, N ranks on N free cores (weak scaling, batch 128 per rank): "
              f"compute {compute * 1e3:.2f} ms per step, allreduce bandwidth "
              f"{bandwidth / 1e9:.2f} GB/s measured with 2 ranks")
        for n in (2, 4, 8, 16):
            reduce = 2 * (n - 1) / n * nbytes / bandwidth
            print(f"  {n:>2} ranks: allreduce ~{reduce * 1e3:.2f} ms, efficiency "
                  f"{compute / (compute + reduce):.0%}, ~{n * compute / (compute + reduce):.1f}x "
                  f"one rank's samples/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
