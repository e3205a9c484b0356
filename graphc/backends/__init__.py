"""The backend seam: `gc.compile` runs the same pipeline for every target (graph, autodiff,
passes, fusion groups, memory plan) and hands the scheduled program to the target's backend
here. Nothing above this package knows which target runs.

Every backend is a package with the same shape, and the same three entry points:

  graphc/backends/<target>/__init__.py   prepare(), lowering() -> graph passes,
                                         load_compiled(request, report, single)
                                         -> CompiledFunction | None, build(program, report,
                                         single, request) -> CompiledFunction
  graphc/backends/<target>/codegen.py    kernels and the plan that calls them
  graphc/backends/<target>/runtime.py    the compiled function: buffers, calls, results

  cpu   codegen.py writes a program of `numba.cfunc` kernels, compile_kernels.py compiles
        them (in worker processes too), runtime.py runs them through one executor;
        codegen_fused.py is the batch-sharded variant (one njit step)
  cuda  codegen.py writes `numba.cuda` kernels and a launch plan, runtime.py launches them

Both keep their kernel files through graphc/codegen/cache.py and share the scalar helpers of
graphc/codegen/common.py; neither imports the other.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from graphc.backends import cpu
from graphc.errors import GraphError

TARGETS = ("cpu", "cuda")


def _backend(target: str) -> Any:
    """The backend package of `target`: the CPU's is imported with graphc, CUDA's (which
    imports numba.cuda) when first used."""
    if target not in TARGETS:
        raise GraphError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    return cpu if target == "cpu" else importlib.import_module(f"graphc.backends.{target}")


@dataclass
class CompileRequest:
    """What `gc.compile` was asked for: a backend that keeps compiled programs keys them
    by it (`key` holds the key once computed)."""

    outputs: list[Any]
    optimizer: Any
    fetch: list[Any]
    training: bool | None
    key: dict[str, Any] = field(default_factory=dict)


def require(target: str) -> None:
    """Raise (a GraphError saying why and what to do) if `target` cannot run here."""
    _backend(target).require()


def prepare(target: str) -> None:
    """Let the backend start work that can overlap the graph passes (CPU: compile workers)."""
    _backend(target).prepare()


def lowering(target: str) -> list[Any]:
    """The target's own Graph -> Graph rewrites, run after the shared passes and before
    fusion (CPU: products over a flattened batch, graphc/passes/matmul.py)."""
    return list(_backend(target).lowering())


def load_compiled(target: str, request: CompileRequest, report: Any, single: bool) -> Any:
    """The compiled function of `request` from what the backend kept of an earlier compile
    of the same computation, or None (then the pipeline runs and `build` is called)."""
    return _backend(target).load_compiled(request, report, single)


def build(target: str, program: Any, report: Any, single: bool,
          request: CompileRequest) -> Any:
    """The compiled function of a scheduled `program` (groups and memory plan set) on
    `target`."""
    return _backend(target).build(program, report, single, request)
