"""Time graphc's compiles: cold, warm, after an edit, after a width change; and JAX's.

Run from the repository root::

    python benchmarks/compile_bench.py                       # every model
    python benchmarks/compile_bench.py --models digits,rnn16 --no-jax
    python benchmarks/compile_bench.py --json compile.json

Every measurement is a new process (``benchmarks/_compile_worker.py``); each model has a
temporary ``GRAPHC_CACHE_DIR`` of its own, empty for the cold compile and then shared by
the warm start, the edited copy and the width change. The models are
``benchmarks/models.py``'s, JAX's ``benchmarks/peers/jax_models.py``'s. See the "Compile
time" section of benchmarks/README.md for the meaning of each column.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.run import (  # noqa: E402
    BUSY_CPUS,
    NA,
    availability,
    fmt,
    machine_info,
    run_process,
    table,
)
from benchmarks.timing import BackgroundLoad  # noqa: E402

WORKER = REPO_ROOT / "benchmarks" / "_compile_worker.py"
MODELS_FILE = REPO_ROOT / "benchmarks" / "models.py"
#: The keys of ``benchmarks.models.MODELS`` (not imported here: it imports graphc).
MODEL_NAMES = ("digits", "resmlp8", "resmlp32", "rnn16", "rnn64",
               "transformer2", "transformer4", "transformer8")

#: Seconds of ``gc.compile`` + first step on an empty cache.
COLD_TARGETS = {"digits": 1.5, "transformer2": 4.0, "transformer8": 10.0, "rnn64": 8.0,
                "resmlp32": 4.0}
#: Seconds of ``gc.compile`` + first step on a populated cache (warm and edit).
WARM_TARGET = 0.3
#: Recompile after a width change, as a fraction of the cold compile.
WIDTH_TARGET = 0.25
#: Cold compile of the deep model over the shallow one.
DEPTH_TARGET = ("transformer8", "transformer2", 3.0)
TARGETS_LINE = (
    "targets: cold compile digits <= 1.5 s, transformer2 <= 4 s, transformer8 <= 10 s, "
    "rnn64 <= 8 s, resmlp32 <= 4 s; transformer8/transformer2 <= 3x; warm and edit <= 0.3 s; "
    "width <= 25% of cold"
)

#: Lines put at the top of the copies of the worker and of models.py that the edit run
#: starts from: the graph is the same, every file path and line number it records differs.
EDIT_PADDING = (
    "# A copy, under another name and in another directory, with these lines added at the\n"
    "# top: it builds the same graph, but every path and line number in it has moved.\n"
    "\n\n\n"
    "# (end of the added lines)\n"
    "\n"
)

#: The processes run for each model, in order: (label, worker options).
RUNS = {
    "cold": ["--mode", "probe"],
    "warm": ["--mode", "bench"],
    "edit": ["--mode", "probe"],
    "width": ["--mode", "probe", "--variant", "width"],
    "jax": ["--mode", "probe", "--impl", "jax"],
}


def edited_copy(workdir: Path, model: str) -> tuple[Path, Path]:
    """Copies of the worker and of models.py, renamed and padded, in a new directory."""
    where = Path(tempfile.mkdtemp(prefix=f"edited-{model}-", dir=workdir))
    script = where / "edited_step.py"
    models = where / "edited_models.py"
    script.write_text(EDIT_PADDING + WORKER.read_text())
    models.write_text(EDIT_PADDING + MODELS_FILE.read_text())
    return script, models


def launch(model: str, label: str, args: argparse.Namespace, workdir: Path,
           env: dict[str, str], script: Path = WORKER, extra: list[str] | None = None,
           cwd: Path = REPO_ROOT) -> dict[str, Any]:
    """Run one worker process for ``model``; its result, with the CPU load meanwhile."""
    out = workdir / f"{model}-{label}.json"
    cmd = [sys.executable, str(script), "--model", model, "--out", str(out),
           "--rounds", str(args.rounds), "--round-time", str(args.round_time),
           *RUNS[label], *(extra or [])]
    print(f"{model}: {label}...", end="", file=sys.stderr, flush=True)
    with BackgroundLoad(children=True) as load:
        res = run_process(cmd, out, "import", args, env, cwd=cwd)
    res["load"] = {"other_cpus": load.cpus, "own_cpus": load.own_cpus}
    if res.get("ok"):
        s = res.get("startup", {})
        extra_ms = f", step {res['timing']['median_ms']:.3f} ms" if "timing" in res else ""
        print(f" {s.get('cold_s', 0.0):.3f} s (import {s.get('import_s', 0.0):.3f} s{extra_ms})",
              file=sys.stderr)
    else:
        print(f" failed: {res.get('error')}", file=sys.stderr)
    return res


def bench_model(model: str, args: argparse.Namespace, workdir: Path,
                jax_skip: str | None) -> dict[str, dict[str, Any]]:
    """The cold, warm, edit and width processes on one fresh cache, then JAX's."""
    cache = Path(tempfile.mkdtemp(prefix=f"graphc-compile-{model}-"))
    env = {"GRAPHC_CACHE_DIR": str(cache / "graphc"), "NUMBA_CACHE_DIR": str(cache / "numba")}
    runs: dict[str, dict[str, Any]] = {}
    try:
        runs["cold"] = launch(model, "cold", args, workdir, env)
        if runs["cold"].get("ok"):
            runs["warm"] = launch(model, "warm", args, workdir, env)
            script, models = edited_copy(workdir, model)
            runs["edit"] = launch(model, "edit", args, workdir, env, script=script,
                                  extra=["--models-file", str(models)], cwd=script.parent)
            runs["width"] = launch(model, "width", args, workdir, env)
        else:
            skipped = {"ok": False, "skipped": True, "error": "not run: the cold compile failed"}
            runs.update(warm=dict(skipped), edit=dict(skipped), width=dict(skipped))
    finally:
        if args.keep_cache:
            print(f"  graphc cache for {model} kept in {cache}", file=sys.stderr)
        else:
            shutil.rmtree(cache, ignore_errors=True)
    if jax_skip is None:
        runs["jax"] = launch(model, "jax", args, workdir, {})
    else:
        runs["jax"] = {"ok": False, "skipped": True, "error": jax_skip}
    return runs


def startup_s(r: dict[str, Any], key: str = "cold_s") -> float | None:
    """A ``startup`` entry of a successful run, else None."""
    return r.get("startup", {}).get(key) if r.get("ok") else None


def summarize(model: str, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The row of one model: seconds, ratios, kernel counts, CPU load, targets."""
    # import graphc's seconds, even where the compile after it failed
    s: dict[str, Any] = {"import_s": runs["cold"].get("startup", {}).get("import_s")}
    for label in ("cold", "warm", "edit", "width", "jax"):
        s[f"{label}_s"] = startup_s(runs.get(label, {}))
    cold, width = s["cold_s"], s["width_s"]
    s["width_pct"] = 100.0 * width / cold if cold and width is not None else None
    warm = runs.get("warm", {})
    s["step_ms"] = warm["timing"]["median_ms"] if warm.get("ok") and "timing" in warm else None
    counts = (runs["cold"].get("kernels") or warm.get("kernels") or {})
    s["kernels"], s["unique_kernels"] = counts.get("kernels"), counts.get("unique_kernels")
    s["cache_written"] = {label: (runs.get(label, {}).get("kernels") or {}).get("cache_written")
                          for label in ("cold", "warm", "edit", "width")}
    s["change"] = runs.get("width", {}).get("change")
    # the edited copy and the warm start must build the very graph the cold one compiled
    loss0 = {label: runs[label].get("loss0") for label in ("cold", "warm", "edit")
             if runs.get(label, {}).get("ok")}
    ref = loss0.get("cold")
    s["same_graph"] = (all(abs(x - ref) <= 1e-6 * max(abs(ref), 1.0) for x in loss0.values())
                       if ref is not None and len(loss0) > 1 else None)
    busy = wall = 0.0
    for r in runs.values():
        other = (r.get("load") or {}).get("other_cpus")
        if other is not None and r.get("wall_s"):
            busy, wall = busy + other * r["wall_s"], wall + r["wall_s"]
    s["other_cpus"] = busy / wall if wall else None

    checks: dict[str, bool | None] = {}
    if model in COLD_TARGETS:
        checks["cold"] = None if cold is None else cold <= COLD_TARGETS[model]
    for label in ("warm", "edit"):
        v = s[f"{label}_s"]
        checks[label] = None if v is None else v <= WARM_TARGET
    checks["width"] = None if s["width_pct"] is None else s["width_pct"] <= 100 * WIDTH_TARGET
    s["targets"] = checks
    missed = [k for k, ok in checks.items() if ok is False]
    unknown = [k for k, ok in checks.items() if ok is None]
    verdict = [f"MISS {','.join(missed)}"] if missed else []
    verdict += [f"{NA} {','.join(unknown)}"] if unknown else []
    s["verdict"] = "; ".join(verdict) or "ok"
    return s


def versions(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, str]:
    """graphc's, Numba's and JAX's versions, from the workers or else the installed
    distributions."""
    found: dict[str, str] = {}
    for runs in results.values():
        for r in runs.values():
            for k, v in (r.get("versions") or {}).items():
                found.setdefault(k, v)
    for dist in ("graphc", "numba", "jax"):
        if dist not in found:
            try:
                found[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                found[dist] = "not installed"
    return found


def report(models: list[str], results: dict[str, dict[str, dict[str, Any]]],
           summaries: dict[str, dict[str, Any]], load: BackgroundLoad,
           args: argparse.Namespace) -> str:
    """The printed report: header, table, targets, width changes, CPU load and errors."""
    m = machine_info()
    v = versions(results)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else m["cpus"]
    lines = [
        f"graphc {v['graphc']}, numba {v['numba']}, jax {v['jax']}, python {m['python']}, "
        f"numpy {m['numpy']}; {m['cpus']} CPUs ({usable} usable)",
        f"GRAPHC_COMPILE_WORKERS {os.environ.get('GRAPHC_COMPILE_WORKERS', '(unset)')}; "
        "a new process for every number, a new GRAPHC_CACHE_DIR for every model",
        "import s: import graphc; cold/warm/edit/width s: gc.compile + first step (graph "
        "declaration not included); jax s: first call of jax.jit(value_and_grad + Adam)",
        f"step ms: median of {args.rounds} rounds x ~{args.round_time:g} s in the warm process",
        "",
    ]
    header = ["model", "import s", "cold s", "warm s", "edit s", "width s", "width/cold",
              "step ms", "kernels", "written c/w/e/x", "jax s", "other CPUs", "targets"]
    rows = []
    for model in models:
        s = summaries[model]
        counts = s["cache_written"].values()
        written = ("/".join("-" if n is None else str(n) for n in counts)
                   if any(n is not None for n in counts) else NA)
        rows.append([
            model,
            *(fmt(s[k]) for k in ("import_s", "cold_s", "warm_s", "edit_s", "width_s")),
            NA if s["width_pct"] is None else f"{s['width_pct']:.0f}%",
            fmt(s["step_ms"]),
            NA if s["kernels"] is None else f"{s['kernels']}/{s['unique_kernels']}",
            written,
            fmt(s["jax_s"]),
            NA if s["other_cpus"] is None else f"{s['other_cpus']:.2f}",
            s["verdict"],
        ])
    lines.append(table(header, rows, left=(0, len(header) - 1)))
    lines += ["", TARGETS_LINE]
    deep, shallow, limit = DEPTH_TARGET
    if deep in summaries and shallow in summaries:
        a, b = summaries[deep]["cold_s"], summaries[shallow]["cold_s"]
        ratio = a / b if a is not None and b else None
        verdict = NA if ratio is None else ("ok" if ratio <= limit else "MISS")
        lines.append(f"{deep}/{shallow} cold: {NA if ratio is None else f'{ratio:.2f}x'} "
                     f"(target <= {limit:g}x): {verdict}")

    changes = {s["change"]: [] for s in summaries.values() if s.get("change")}
    for model in models:
        if summaries[model].get("change"):
            changes[summaries[model]["change"]].append(model)
    if changes:
        lines.append("width: " + "; ".join(f"{', '.join(ms)}: {c}" for c, ms in changes.items()))
    lines.append("kernels: compiled kernels/unique ones (cold); written: kernel files written "
                 "to the cache by the cold, warm, edit and width processes")
    differ = [model for model in models if summaries[model]["same_graph"] is False]
    if differ:
        lines.append("WARNING: the warm or edited run's first loss differs from the cold one's "
                     f"(not the same graph?): {', '.join(differ)}")

    other = NA if load.cpus is None else f"{load.cpus:.2f}"
    lines += ["", f"CPU load: other processes kept {other} CPUs busy on average "
              "during the run (per model: the `other CPUs` column)"]
    busiest = max((s["other_cpus"] for s in summaries.values() if s["other_cpus"] is not None),
                  default=None)
    if (busiest or 0.0) > BUSY_CPUS or (load.cpus or 0.0) > BUSY_CPUS:
        lines.append(f"WARNING: other processes used more than {BUSY_CPUS:g} CPU: these times "
                     "are inflated; rerun on a quiet machine.")

    notes: dict[str, dict[str, list[str]]] = {}   # error -> run -> models
    tracebacks = []
    for model in models:
        for label, r in results[model].items():
            if not r.get("ok"):
                notes.setdefault(str(r.get("error")), {}).setdefault(label, []).append(model)
                if r.get("traceback"):
                    tracebacks.append((f"{model} {label}", r["traceback"]))
    if notes:
        lines += ["", "not measured:"]
        for msg, where in notes.items():
            scope = "; ".join(f"{label}: " + ("all models" if len(ms) == len(models) > 1
                                              else ", ".join(ms))
                              for label, ms in where.items())
            lines.append(f"  {msg}  [{scope}]")
    if args.verbose:
        for what, tb in tracebacks:
            lines += ["", f"{what}:", *(f"  {ln}" for ln in tb.rstrip().splitlines())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(
        description="Time graphc's cold, warm, edited and width-changed compiles, and JAX's."
    )
    ap.add_argument("--models", default=",".join(MODEL_NAMES),
                    help=f"comma-separated subset of {','.join(MODEL_NAMES)}")
    ap.add_argument("--no-jax", action="store_true", help="skip JAX's compile times")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds of the step (median)")
    ap.add_argument("--round-time", type=float, default=0.2,
                    help="target seconds per round; sets the steps per round")
    ap.add_argument("--threads", type=int,
                    help="set OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS in every worker")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per subprocess")
    ap.add_argument("--keep-cache", action="store_true", help="keep graphc's cache dirs")
    ap.add_argument("--json", metavar="PATH", help="also write every number to PATH")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="show the workers' stderr and the tracebacks of failures")
    args = ap.parse_args(argv)

    models = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in models if n not in MODEL_NAMES]
    if unknown or not models:
        ap.error(f"unknown model(s) {unknown}; known: {', '.join(MODEL_NAMES)}")
    jax_skip = "not run (--no-jax)" if args.no_jax else availability("jax")

    results: dict[str, dict[str, dict[str, Any]]] = {}
    summaries: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="graphc-compile-bench-") as tmp, \
            BackgroundLoad(children=True) as load:
        for model in models:
            results[model] = bench_model(model, args, Path(tmp), jax_skip)
            summaries[model] = summarize(model, results[model])

    print(report(models, results, summaries, load, args))
    if args.json:
        doc = {
            "machine": {**machine_info(),
                        "load_other_cpus": load.cpus, "load_own_cpus": load.own_cpus},
            "versions": versions(results),
            "config": vars(args),
            "targets": {"cold_s": COLD_TARGETS, "warm_s": WARM_TARGET, "edit_s": WARM_TARGET,
                        "width_fraction_of_cold": WIDTH_TARGET, "depth_ratio": DEPTH_TARGET},
            "models": {model: {"summary": summaries[model], "runs": results[model]}
                       for model in models},
        }
        Path(args.json).write_text(json.dumps(doc, indent=1))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
