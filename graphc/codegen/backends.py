"""The backend seam: `gc.compile` runs the same pipeline for every target (graph, passes,
fusion groups, memory plan) and hands the scheduled program to the target's backend here.
Nothing above this module knows which target runs.

  cpu   graphc/codegen/cpu.py (StepWriter: one njit step) + graphc/runtime.py; built in
        graphc/compiler.py
  cuda  graphc/codegen/cuda.py (CudaStepWriter: numba.cuda kernels + launch plan) +
        graphc/runtime_cuda.py (CudaCompiledFunction)

Both write their kernel files through graphc/codegen/cache.py.
"""

from __future__ import annotations

from typing import Any

from graphc.errors import GraphError


def require(target: str) -> None:
    """Raise (a GraphError saying why and what to do) if `target` cannot run here."""
    if target == "cuda":
        from graphc.codegen.cuda import require_cuda

        require_cuda()


def build(target: str, program: Any, groups: list, memory: Any, report: Any, optimizer: Any,
          single: bool, user_graph: Any) -> Any:
    """The compiled function of a scheduled `program` on a non-CPU `target`."""
    if target == "cuda":
        from graphc.runtime_cuda import build as build_cuda

        return build_cuda(program, groups, memory, report, optimizer, single, user_graph)
    raise GraphError(f"internal: no backend for target {target!r}")
