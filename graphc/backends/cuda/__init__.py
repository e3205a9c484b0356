"""The CUDA backend: a scheduled program becomes `numba.cuda` kernels and a launch plan
(codegen.py), run by a compiled function that keeps parameters on the device (runtime.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphc.backends.cuda.codegen import require_cuda
from graphc.ir import Graph
from graphc.runtime import CompiledFunction, CompileReport

if TYPE_CHECKING:
    from graphc.backends import CompileRequest


def require() -> None:
    """Raise a GraphError saying why (and what to do) if CUDA cannot run here."""
    require_cuda()


def prepare() -> None:
    """Nothing to start before the graph passes."""


def lowering() -> list:
    """No CUDA-specific graph rewrites."""
    return []


def load_compiled(request: CompileRequest, report: CompileReport,
                  single: bool) -> CompiledFunction | None:
    """CUDA programs are built afresh each time (their kernels are cached on disk)."""
    return None


def build(program: Graph, report: CompileReport, single: bool,
          request: CompileRequest) -> CompiledFunction:
    """The compiled function of a scheduled `program` (groups and memory plan set)."""
    from graphc.backends.cuda import runtime

    return runtime.build(program, program.groups, program.memory, report, request.optimizer,
                         single, request.outputs[0].graph)
