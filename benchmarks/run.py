"""Compare graphc's compiled training step with numpy, PyTorch eager and JAX ``jit``.

Run from the repository root::

    python benchmarks/run.py                       # every workload, every installed peer
    python benchmarks/run.py --workloads digits,deep --rounds 5
    python benchmarks/run.py --no-graphc --json peers.json

Every (implementation, workload) pair runs in its own fresh process (``benchmarks._worker``)
so that thread pools, allocators and JIT caches of one framework cannot slow another.
graphc is first compiled in a process with empty cache directories (cold), then started
again on the populated cache (warm) and timed in that process. See benchmarks/README.md
for the meaning of each column.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from benchmarks.peers import IMPLS, KINDS  # noqa: E402
from benchmarks.workloads import WORKLOADS, Workload, get_workload  # noqa: E402

PEERS = ("numpy", "torch", "jax")
BUSY_CPUS = 0.25
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
NA = "n/a"


def availability(impl: str) -> str | None:
    """``None`` if ``impl``'s framework can be found here, else the reason it cannot."""
    try:
        if importlib.util.find_spec(impl) is not None:
            return None
    except (ImportError, ValueError) as exc:
        return f"{impl} cannot be located: {exc}"
    if impl == "graphc":
        return "import: graphc is not importable (no module named 'graphc')"
    return f'{impl} is not installed (pip install ".[bench]")'


def reference_impl(wl: Workload) -> str | None:
    """The implementation whose losses the others are checked against: numpy, or JAX
    (if installed) for workloads without a hand-written numpy step."""
    if wl.kind in KINDS["numpy"]:
        return "numpy"
    if wl.kind in KINDS["jax"] and availability("jax") is None:
        return "jax"
    return None


def reference_losses(wl: Workload, steps: int) -> list[float]:
    """Losses of the first ``steps`` steps of ``reference_impl(wl)``, computed here (none
    if it has no reference)."""
    impl = reference_impl(wl)
    if impl is None:
        return []
    module = importlib.import_module(f"benchmarks.peers.{impl}_impl")
    runner = module.build(wl, wl.make_params(), wl.make_batches())
    return [runner.to_float(runner.step(i)) for i in range(steps)]


def worker_env(args: argparse.Namespace) -> dict[str, str]:
    """Environment of a worker process: the repository on ``PYTHONPATH``, thread limits."""
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    if args.threads:
        n = str(args.threads)
        for var in THREAD_VARS:
            env[var] = n
    return env


def measure_sgemm(args: argparse.Namespace) -> dict[str, Any]:
    """SGEMM GFLOP/s of numpy and of graphc's BLAS, measured in a fresh process with the
    workers' environment (see ``benchmarks.timing``)."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.timing"],
        cwd=REPO_ROOT,
        env=worker_env(args),
        capture_output=True,
        text=True,
        check=True,
        timeout=args.timeout,
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def run_worker(
    impl: str,
    wl: str,
    mode: str,
    args: argparse.Namespace,
    workdir: Path,
    env_extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``benchmarks._worker`` in a fresh process; return its JSON result (see
    ``run_process``)."""
    out = workdir / f"{impl}-{wl}-{mode}.json"
    opts = {
        "--impl": impl,
        "--workload": wl,
        "--mode": mode,
        "--rounds": args.rounds,
        "--round-time": args.round_time,
        "--check-steps": args.check_steps,
        "--out": out,
    }
    cmd = [sys.executable, "-m", "benchmarks._worker"]
    for k, v in opts.items():
        cmd += [k, str(v)]
    return run_process(cmd, out, mode, args, env_extra)


def run_process(
    cmd: list[str],
    out: Path,
    phase: str,
    args: argparse.Namespace,
    env_extra: dict[str, str] | None = None,
    cwd: Path = REPO_ROOT,
) -> dict[str, Any]:
    """Run the worker command ``cmd``, which writes its JSON result to ``out``; return it.

    The process runs in ``cwd`` with ``worker_env(args)`` plus ``env_extra``, limited to
    ``args.timeout`` seconds. A worker that crashes, times out or writes no result yields
    ``ok: False`` and an ``error`` naming the phase it was in (``phase`` when it wrote
    nothing); ``wall_s`` is the wall time of the subprocess.
    """
    env = worker_env(args)
    env.update(env_extra or {})
    t0 = time.perf_counter()
    # A session of its own, so that a timeout also ends any compile workers it started.
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=args.timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        timed_out = True
    wall = time.perf_counter() - t0
    tail = (stderr or "").strip().splitlines()[-15:]
    res = json.loads(out.read_text()) if out.exists() else {"ok": False, "error_phase": phase}
    phase = res.get("error_phase", phase)
    if timed_out:
        res.update(ok=False, error=f"{phase}: timed out after {args.timeout:g} s")
    elif proc.returncode != 0 or res.get("incomplete"):
        if proc.returncode < 0:
            how = f"killed by {signal.Signals(-proc.returncode).name}"
            last = next((ln.strip() for ln in tail if ln.startswith("Fatal Python error")), "")
        else:
            how = f"exited with status {proc.returncode}"
            last = next((ln.strip() for ln in reversed(tail) if ln.strip()), "")
        res.update(ok=False, error=f"{phase}: worker {how}" + (f": {last}" if last else ""))
    res["wall_s"] = wall
    if not res.get("ok"):
        res["stderr_tail"] = tail
    if args.verbose and stderr:
        sys.stderr.write(stderr)
    return res


def run_graphc(wl: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Cold-compile graphc in an empty cache, then warm-start and time it on that cache."""
    cache = Path(tempfile.mkdtemp(prefix=f"graphc-cache-{wl}-"))
    env = {"GRAPHC_CACHE_DIR": str(cache / "graphc"), "NUMBA_CACHE_DIR": str(cache / "numba")}
    try:
        cold = None
        if not args.no_cold:
            cold = run_worker("graphc", wl, "probe", args, workdir, env)
            if not cold.get("ok"):
                return {**cold, "error": f"cold start: {cold.get('error')}", "cold": cold}
        res = run_worker("graphc", wl, "bench", args, workdir, env)
        res["warm_start"] = cold is not None
        if cold is not None:
            res["cold"] = cold
        return res
    finally:
        if args.keep_cache:
            print(f"  graphc cache for {wl} kept in {cache}", file=sys.stderr)
        else:
            shutil.rmtree(cache, ignore_errors=True)


def fmt(v: float | None, digits: int = 3) -> str:
    """``v`` rounded to ``digits`` significant digits (integers kept whole), or n/a."""
    if v is None or not np.isfinite(v):
        return NA
    if v == 0:
        return "0"
    mag = int(np.floor(np.log10(abs(v))))
    if mag < -4:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{max(0, digits - 1 - mag)}f}"


def table(header: list[str], rows: list[list[str]], left: tuple[int, ...] = (0,)) -> str:
    """Plain-text table; columns whose index is in ``left`` are left-aligned, others right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return "  ".join(cells).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def summarize(
    wl: Workload, res: dict[str, dict[str, Any]], ref: list[float], peak: float, tol: float
) -> dict[str, Any]:
    """Derived numbers of one workload: medians, ratios, startup times, GFLOP/s, check."""
    ms = {
        impl: (r["timing"]["median_ms"] if r.get("ok") and "timing" in r else None)
        for impl, r in res.items()
    }
    s: dict[str, Any] = {"median_ms": ms}
    g = ms.get("graphc")
    s["ratio"] = {p: (g / ms[p] if g is not None and ms.get(p) else None) for p in PEERS}
    flops = wl.flops_per_step()
    s["flops_per_step"] = flops
    s["gflops"] = {impl: (flops / (t * 1e-3) / 1e9 if t else None) for impl, t in ms.items()}
    s["pct_peak"] = {impl: (100.0 * v / peak if v else None) for impl, v in s["gflops"].items()}
    gr = res.get("graphc", {})
    cold = gr.get("cold") or ({} if gr.get("warm_start") else gr)
    s["graphc_cold_s"] = cold.get("startup", {}).get("total_s") if cold.get("ok") else None
    s["graphc_warm_s"] = (
        gr.get("startup", {}).get("total_s") if gr.get("ok") and gr.get("warm_start") else None
    )
    diffs: dict[str, float] = {}
    s["reference"] = reference_impl(wl)
    for impl, r in res.items():
        losses = r.get("losses") or []
        n = min(len(losses), len(ref))
        if n:
            rel = [abs(losses[k] - ref[k]) / max(abs(ref[k]), 1e-12) for k in range(n)]
            diffs[impl] = float(max(rel)) if all(np.isfinite(rel)) else float("inf")
    s["loss_rel_diff"] = diffs
    s["background_cpus"] = {
        impl: r["timing"].get("background_cpus")
        for impl, r in res.items()
        if r.get("ok") and "timing" in r
    }
    bad = {k: v for k, v in diffs.items() if not v <= tol}
    if not diffs:
        s["check"] = NA
    elif bad:
        s["check"] = "WARN " + ", ".join(f"{k} {v:.1e}" for k, v in bad.items())
    else:
        s["check"] = "ok"
    return s


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(
        description="Time graphc's compiled training step against numpy, PyTorch and JAX."
    )
    ap.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of {','.join(WORKLOADS)}",
    )
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds (median reported)")
    ap.add_argument(
        "--round-time",
        type=float,
        default=0.2,
        help="target seconds per round; sets the steps per round",
    )
    ap.add_argument("--no-peers", action="store_true", help="time graphc only")
    ap.add_argument("--no-graphc", action="store_true", help="time the peers only")
    ap.add_argument("--impls", help=f"comma-separated subset of {','.join(IMPLS)}")
    ap.add_argument(
        "--no-cold",
        action="store_true",
        help="skip graphc's cold-compile probe (its timing process then compiles)",
    )
    ap.add_argument(
        "--check-steps", type=int, default=3, help="steps whose losses are compared with numpy's"
    )
    ap.add_argument(
        "--tol",
        type=float,
        default=1e-4,
        help="relative loss difference above which the check column warns",
    )
    ap.add_argument(
        "--threads",
        type=int,
        help="set OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS in every worker (XLA ignores them)",
    )
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per subprocess")
    ap.add_argument("--keep-cache", action="store_true", help="keep graphc's cache dirs")
    ap.add_argument("--json", metavar="PATH", help="also write every number to PATH")
    ap.add_argument("-v", "--verbose", action="store_true", help="show worker stderr")
    args = ap.parse_args(argv)

    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    try:
        wls = [get_workload(n) for n in names]
    except KeyError as exc:
        ap.error(str(exc.args[0]))
    if args.impls:
        impls = [i.strip() for i in args.impls.split(",") if i.strip()]
        unknown = sorted(set(impls) - set(IMPLS))
        if unknown:
            ap.error(f"unknown implementation(s) {unknown}; known: {', '.join(IMPLS)}")
    else:
        impls = list(IMPLS)
    if args.no_peers:
        impls = [i for i in impls if i not in PEERS]
    if args.no_graphc:
        impls = [i for i in impls if i != "graphc"]
    if not impls:
        ap.error("nothing to run")

    skipped = {i: r for i in impls if (r := availability(i)) is not None}

    print("measuring SGEMM peak (np.dot float32, 1024 and 2048)...", file=sys.stderr)
    sgemm = measure_sgemm(args)
    # graphc's GFLOP/s against the BLAS it runs on; numpy's rate where graphc's is unknown
    peak = sgemm.get("graphc peak", sgemm["peak"])

    results: dict[str, dict[str, dict[str, Any]]] = {}
    summaries: dict[str, dict[str, Any]] = {}
    refs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="graphc-bench-") as tmp:
        workdir = Path(tmp)
        for wl in wls:
            refs[wl.name] = reference_losses(wl, args.check_steps)
            res: dict[str, dict[str, Any]] = {}
            for impl in impls:
                if impl in skipped:
                    res[impl] = {"ok": False, "error": skipped[impl], "skipped": True}
                    continue
                if wl.kind not in KINDS[impl]:
                    res[impl] = {"ok": False, "skipped": True,
                                 "error": f"{impl} has no step for {wl.kind} workloads"}
                    continue
                print(f"{wl.name}: {impl}...", end="", file=sys.stderr, flush=True)
                if impl == "graphc":
                    r = run_graphc(wl.name, args, workdir)
                    cold = r.get("cold") or {}
                    if cold.get("error_phase") == "import" or r.get("error_phase") == "import":
                        skipped["graphc"] = r["error"]
                else:
                    r = run_worker(impl, wl.name, "bench", args, workdir)
                res[impl] = r
                if r.get("ok"):
                    print(f" {r['timing']['median_ms']:.3f} ms", file=sys.stderr)
                else:
                    print(f" failed: {r.get('error')}", file=sys.stderr)
            results[wl.name] = res
            summaries[wl.name] = summarize(wl, res, refs[wl.name], peak, args.tol)

    print(report(wls, impls, results, summaries, sgemm, args))
    if args.json:
        versions = {
            impl: r.get("version")
            for res in results.values()
            for impl, r in res.items()
            if r.get("version")
        }
        doc = {
            "machine": machine_info(),
            "versions": versions,
            "sgemm_gflops": sgemm,
            "config": vars(args),
            "workloads": {
                wl.name: {
                    "description": wl.description,
                    "reference_losses": refs[wl.name],
                    "summary": summaries[wl.name],
                    "results": results[wl.name],
                }
                for wl in wls
            },
        }
        Path(args.json).write_text(json.dumps(doc, indent=1))
        print(f"\nwrote {args.json}")
    return 0


def machine_info() -> dict[str, Any]:
    """Python, numpy and CPU facts for the report."""
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        # OpenBLAS kernels (graphc's and numpy's matrix products): the environment's choice,
        # and graphc's own (kernels/cpu/blas_arch.py)
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(detected)"),
        "GRAPHC_BLAS_CORETYPE": os.environ.get("GRAPHC_BLAS_CORETYPE", "(unset)"),
        "GRAPHC_SHARDS": os.environ.get("GRAPHC_SHARDS", "(unset: 1)"),
    }


def report(
    wls: list[Workload],
    impls: list[str],
    results: dict[str, dict[str, dict[str, Any]]],
    summaries: dict[str, dict[str, Any]],
    sgemm: dict[str, Any],
    args: argparse.Namespace,
) -> str:
    """The printed report: header, main table, startup table and notes."""
    m = machine_info()
    versions: dict[str, str] = {}
    for res in results.values():
        for impl, r in res.items():
            if r.get("version"):
                versions.setdefault(impl, str(r["version"]))
    lines = [
        f"python {m['python']}, numpy {m['numpy']}"
        + "".join(f", {k} {v}" for k, v in versions.items() if k != "numpy")
        + f"; {m['cpus']} CPUs",
        f"OPENBLAS_CORETYPE {m['OPENBLAS_CORETYPE']}, GRAPHC_BLAS_CORETYPE "
        f"{m['GRAPHC_BLAS_CORETYPE']}, GRAPHC_SHARDS {m['GRAPHC_SHARDS']}",
        "SGEMM (np.dot float32, median): numpy "
        + ", ".join(f"{k}x{k} {v:.1f}" for k, v in sgemm.items() if k.isdigit())
        + f" GFLOP/s (peak {sgemm['peak']:.1f})"
        + (
            f"; graphc's BLAS ({sgemm['graphc kernels']} kernels) "
            + ", ".join(f"{k[7:]}x{k[7:]} {v:.1f}" for k, v in sgemm.items()
                        if k.startswith("graphc ") and k[7:].isdigit())
            + f" GFLOP/s (peak {sgemm['graphc peak']:.1f})"
            if "graphc peak" in sgemm else ""
        ),
        f"median of {args.rounds} rounds x ~{args.round_time:g} s; times in ms per training "
        "step (forward + backward + Adam); ratio = graphc / peer (< 1: graphc faster)",
        "",
    ]
    header = [
        "workload",
        "graphc ms",
        "numpy ms",
        "torch ms",
        "jax ms",
        "g/numpy",
        "g/torch",
        "g/jax",
        "cold s",
        "warm s",
        "GFLOP/s",
        "% peak",
        "check",
    ]
    rows = []
    for wl in wls:
        s = summaries[wl.name]
        ms, ratio = s["median_ms"], s["ratio"]
        rows.append(
            [
                wl.name,
                *(fmt(ms.get(i)) for i in ("graphc", *PEERS)),
                *(fmt(ratio.get(p)) for p in PEERS),
                fmt(s["graphc_cold_s"]),
                fmt(s["graphc_warm_s"]),
                fmt(s["gflops"].get("graphc")),
                fmt(s["pct_peak"].get("graphc"), 2),
                s["check"],
            ]
        )
    lines.append(table(header, rows, left=(0, len(header) - 1)))

    lines += ["", "time to first step in a fresh process, s (import + build/compile + step 1):"]
    header2 = ["workload", *(i for i in impls if i != "graphc")]
    if "graphc" in impls:
        header2 += ["graphc cold", "graphc warm"]
    rows2 = []
    for wl in wls:
        res, s = results[wl.name], summaries[wl.name]
        row = [wl.name]
        for impl in impls:
            if impl != "graphc":
                r = res.get(impl, {})
                row.append(fmt(r.get("startup", {}).get("total_s")) if r.get("ok") else NA)
        if "graphc" in impls:
            row += [fmt(s["graphc_cold_s"]), fmt(s["graphc_warm_s"])]
        rows2.append(row)
    lines.append(table(header2, rows2))

    lines += ["", "CPUs in use while timing (this implementation / all other processes):"]
    header3 = ["workload", *impls]
    rows3 = []
    busy = sgemm.get("background_cpus", 0.0) > BUSY_CPUS
    for wl in wls:
        row = [wl.name]
        for impl in impls:
            t = results[wl.name].get(impl, {}).get("timing") or {}
            own, other = t.get("own_cpus"), t.get("background_cpus")
            busy = busy or (other is not None and other > BUSY_CPUS)
            row.append(
                NA if own is None else f"{own:.1f} / {NA if other is None else f'{other:.1f}'}"
            )
        rows3.append(row)
    lines.append(table(header3, rows3))
    if busy:
        lines.append(
            f"WARNING: other processes used more than {BUSY_CPUS:g} CPU while timing: those "
            "times (and ratios) are inflated; rerun on a quiet machine"
            + ("." if args.threads == 1 else " or with --threads 1 (fewer scheduling stalls).")
        )

    notes: dict[str, list[str]] = {}
    for wl in wls:
        for impl, r in results[wl.name].items():
            if not r.get("ok"):
                notes.setdefault(f"{impl}: {r.get('error')}", []).append(wl.name)
    if notes:
        lines += ["", "not measured:"]
        for msg, where in notes.items():
            scope = "all workloads" if len(where) == len(wls) else ", ".join(where)
            lines.append(f"  {msg}  [{scope}]")
    lines += [
        "",
        "GFLOP/s counts 6*m*k*n per linear layer (forward + 2 backward matmuls); % peak is "
        "against the SGEMM peak of graphc's BLAS above.",
        f"check: first {args.check_steps} losses of each implementation vs numpy's (JAX's "
        f"for gpt, cnn), relative tolerance {args.tol:g}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
