"""Run one implementation of one workload in a fresh process and write a JSON result.

Used by ``benchmarks/run.py``; run from the repository root::

    python -m benchmarks._worker --impl torch --workload digits --out result.json

``--mode probe`` stops after the first step: with ``GRAPHC_CACHE_DIR`` and
``NUMBA_CACHE_DIR`` pointing at an empty directory it measures a cold compile, and with a
populated one a warm start. ``--mode bench`` also records the losses of the first
``--check-steps`` steps and times the step.

``startup.total_s`` runs from just before the implementation's module (and so its
framework) is imported to the end of the first training step: import + build (+ compile)
+ first step. Creating the workload's data is not included.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import importlib
import json
import os
import sys
import time
import traceback
from typing import Any

from benchmarks.timing import BackgroundLoad, time_steps
from benchmarks.workloads import get_workload


def jsonable(obj: Any, depth: int = 0) -> Any:
    """Best-effort conversion of ``obj`` (e.g. a compile report) to JSON-ready data."""
    if depth > 6:
        return repr(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, depth + 1) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", None) == 0:
        return jsonable(obj.item(), depth + 1)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj), depth + 1)
    for attr in ("to_dict", "as_dict"):
        fn = getattr(obj, attr, None)
        if callable(fn):
            try:
                return jsonable(fn(), depth + 1)
            except Exception:
                break
    if hasattr(obj, "__dict__"):
        return {k: jsonable(v, depth + 1) for k, v in vars(obj).items() if not k.startswith("_")}
    return repr(obj)


def _error(res: dict[str, Any], phase: str, exc: Exception) -> None:
    """Record a failure of ``phase`` in ``res`` (an exception may name a finer phase)."""
    phase = str(getattr(exc, "bench_phase", phase))
    msg = " ".join(str(exc).split())
    if len(msg) > 300:
        msg = msg[:297] + "..."
    res.update(
        ok=False,
        error_phase=phase,
        error=f"{phase}: {type(exc).__name__}: {msg}" if msg else f"{phase}: {type(exc).__name__}",
        traceback=traceback.format_exc(),
    )


class _Progress:
    """The result being built, saved to ``out`` whenever a phase starts.

    If the process dies (a segfault in generated code, a timeout), the file left behind
    names the phase it died in.
    """

    def __init__(self, res: dict[str, Any], out: str | None) -> None:
        self.res, self.out = res, out

    def enter(self, phase: str) -> str:
        """Mark ``phase`` as started; return it."""
        if self.out:
            partial = {**self.res, "ok": False, "incomplete": True, "error_phase": phase}
            partial["error"] = f"{phase}: did not finish"
            write_json(partial, self.out)
        return phase


def write_json(res: dict[str, Any], out: str | None) -> None:
    """Write ``res`` to the file ``out`` atomically, or to stdout when ``out`` is None."""
    text = json.dumps(res, indent=1)
    if not out:
        sys.stdout.write(text + "\n")
        return
    tmp = f"{out}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, out)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build, check and (in ``bench`` mode) time one implementation of one workload."""
    res: dict[str, Any] = {
        "impl": args.impl,
        "workload": args.workload,
        "mode": args.mode,
        "ok": True,
        "error": None,
        "env": {k: os.environ.get(k) for k in ("GRAPHC_CACHE_DIR", "NUMBA_CACHE_DIR")},
    }
    progress = _Progress(res, args.out)
    wl = get_workload(args.workload)
    params, batches = wl.make_params(), wl.make_batches()

    phase = progress.enter("import")
    try:
        t0 = time.perf_counter()
        mod = importlib.import_module(f"benchmarks.peers.{args.impl}_impl")
        t1 = time.perf_counter()
        res["version"] = getattr(mod, "VERSION", None)
        phase = progress.enter("build")
        runner = mod.build(wl, params, batches)
        t2 = time.perf_counter()
        phase = progress.enter("first step")
        loss0 = runner.to_float(runner.step(0))
        t3 = time.perf_counter()
    except Exception as exc:
        _error(res, phase, exc)
        return res
    startup = {"import_s": t1 - t0}
    startup.update(getattr(runner, "phases", {}) or {})
    startup.update(build_total_s=t2 - t1, first_step_s=t3 - t2, total_s=t3 - t0)
    res["startup"] = startup
    res["losses"] = [loss0]
    report = getattr(runner, "compile_report", None)
    if callable(report):
        try:
            res["compile_report"] = jsonable(report())
        except Exception as exc:
            res["compile_report"] = f"unavailable: {type(exc).__name__}: {exc}"
    if args.mode == "probe":
        return res

    try:
        phase = progress.enter("check steps")
        for i in range(1, args.check_steps):
            res["losses"].append(runner.to_float(runner.step(i)))
        phase = progress.enter("timing")
        with BackgroundLoad() as load:
            timing = time_steps(runner, args.rounds, args.round_time, start=args.check_steps)
    except Exception as exc:
        _error(res, phase, exc)
        return res
    res["timing"] = timing.to_dict()
    res["timing"]["background_cpus"] = load.cpus
    res["timing"]["own_cpus"] = load.own_cpus
    return res


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; the result goes to ``--out`` (or stdout)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", required=True, choices=["numpy", "torch", "jax", "graphc"])
    ap.add_argument("--workload", required=True)
    ap.add_argument("--mode", choices=["bench", "probe"], default="bench")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--round-time", type=float, default=0.2)
    ap.add_argument("--check-steps", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    faulthandler.enable()
    write_json(run(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
