"""Compile and run one model of the compile-time benchmark in a fresh process.

Used by ``benchmarks/compile_bench.py``, which runs it as a script with ``GRAPHC_CACHE_DIR``
set (the repository on ``PYTHONPATH``)::

    python benchmarks/_compile_worker.py --model digits --out result.json

Runs as a script, not a module, so that a copy of it elsewhere, under another name, runs
the same way; ``--models-file`` then names a copy of ``benchmarks/models.py`` to build the
graph from. ``--variant width`` builds ``models.WIDTH_VARIANTS[model]`` instead of
``models.MODELS[model]``; ``--mode bench`` also times the step after the first one;
``--impl jax`` jits ``benchmarks.peers.jax_models`` instead.

Seconds in ``startup``: ``import_s`` (``import graphc``, or ``jax`` with the JAX models;
only the standard library is loaded before it), ``build_s`` (declaring the graph),
``compile_s`` (``gc.compile``), ``first_step_s`` (the first step, to its loss as a float)
and ``cold_s = compile_s + first_step_s``. For JAX, ``first_step_s`` is the first call of
the jitted step: tracing, XLA compilation and the step.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib.util
import os
import sys
import time
from types import ModuleType
from typing import Any

#: Fields of ``step.compile_report`` copied to the result (``None`` where it has none).
REPORT_FIELDS = ("kernels", "unique_kernels", "cache_written", "cache_reused",
                 "cache_repaired", "compile_workers", "nodes_before", "nodes_after", "total")


def load_models(path: str | None) -> ModuleType:
    """``benchmarks.models``, or the copy of it at ``path`` (loaded under its file name)."""
    if not path:
        import benchmarks.models

        return benchmarks.models
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class StepRunner:
    """A compiled step and its feeds, as ``benchmarks.timing.time_steps`` expects."""

    phases: dict[str, float]

    def __init__(self, step: Any, feeds: dict[str, Any]) -> None:
        self.phases = {}
        self._step, self._feeds = step, feeds

    def step(self, i: int) -> Any:
        return self._step(**self._feeds)

    def sync(self, out: Any) -> None:
        """The compiled step returns after the update: nothing to wait for."""

    def to_float(self, out: Any) -> float:
        return float(out)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Import, build, compile and run one step; time further steps in ``bench`` mode."""
    res: dict[str, Any] = {"impl": args.impl, "model": args.model, "variant": args.variant,
                           "mode": args.mode, "ok": True, "error": None,
                           "script": os.path.abspath(__file__)}
    t0 = time.perf_counter()
    try:
        if args.impl == "graphc":
            import graphc as framework
        else:
            from benchmarks.peers import jax_models as framework
    except Exception as exc:
        from benchmarks._worker import _error

        _error(res, "import", exc)
        return res
    t1 = time.perf_counter()

    from benchmarks._worker import _error, _Progress, jsonable
    from benchmarks.timing import BackgroundLoad, time_steps

    progress = _Progress(res, args.out)
    res["versions"] = {"graphc" if args.impl == "graphc" else "jax":
                       str(getattr(framework, "__version__", getattr(framework, "VERSION", "")))}
    if args.impl == "graphc":
        import numba

        res["versions"]["numba"] = numba.__version__
    startup = {"import_s": t1 - t0}
    res["startup"] = startup
    try:
        phase = progress.enter("build")
        t2 = time.perf_counter()
        if args.impl == "jax":
            runner = framework.JaxStep(args.model)
            t3 = time.perf_counter()
            phase = progress.enter("first step (tracing + XLA compile)")
            loss0 = runner.to_float(runner.step(0))
            t4 = time.perf_counter()
            startup.update(build_s=t3 - t2, first_step_s=t4 - t3, cold_s=t4 - t3,
                           total_s=t4 - t0)
        else:
            models = load_models(args.models_file)
            if args.variant == "width":
                res["change"], builder = models.WIDTH_VARIANTS[args.model]
            else:
                builder = models.MODELS[args.model]
            loss, feeds = builder()
            t3 = time.perf_counter()
            phase = progress.enter("compile")
            step = framework.compile(loss, optimizer=framework.optim.Adam(lr=1e-3))
            t4 = time.perf_counter()
            phase = progress.enter("first step")
            runner = StepRunner(step, feeds)
            loss0 = runner.to_float(runner.step(0))
            t5 = time.perf_counter()
            startup.update(build_s=t3 - t2, compile_s=t4 - t3, first_step_s=t5 - t4,
                           cold_s=t5 - t3, total_s=t5 - t0)
    except Exception as exc:
        _error(res, phase, exc)
        return res
    res["loss0"] = loss0
    if args.impl == "graphc":
        report = getattr(step, "compile_report", None)
        res["kernels"] = {k: jsonable(getattr(report, k, None)) for k in REPORT_FIELDS}
        res["compile_report"] = jsonable(report)
    if args.mode == "probe":
        return res

    try:
        phase = progress.enter("timing")
        with BackgroundLoad() as load:
            timing = time_steps(runner, args.rounds, args.round_time, start=1)
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
    ap.add_argument("--model", required=True)
    ap.add_argument("--impl", choices=["graphc", "jax"], default="graphc")
    ap.add_argument("--variant", choices=["base", "width"], default="base")
    ap.add_argument("--mode", choices=["probe", "bench"], default="probe")
    ap.add_argument("--models-file", help="a copy of benchmarks/models.py to build from")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--round-time", type=float, default=0.2)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    faulthandler.enable()
    res = run(args)
    from benchmarks._worker import write_json

    write_json(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
