"""The CUDA backend: a scheduled program becomes `numba.cuda` kernels and a launch plan
(codegen.py), run by a compiled function that keeps parameters on the device (runtime.py).
"""

from __future__ import annotations

from graphc.backends.cuda.codegen import require_cuda
from graphc.ir import Graph
from graphc.optim import Optimizer
from graphc.runtime import CompiledFunction, CompileReport


def require() -> None:
    """Raise a GraphError saying why (and what to do) if CUDA cannot run here."""
    require_cuda()


def prepare() -> None:
    """Nothing to start before the graph passes."""


def lowering() -> list:
    """No CUDA-specific graph rewrites."""
    return []


def build(program: Graph, report: CompileReport, optimizer: Optimizer | None, single: bool,
          user_graph: Graph) -> CompiledFunction:
    """The compiled function of a scheduled `program` (groups and memory plan set)."""
    from graphc.backends.cuda import runtime

    return runtime.build(program, program.groups, program.memory, report, optimizer, single,
                         user_graph)
