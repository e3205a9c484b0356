"""Training-step implementations of the benchmark workloads, one module per framework.

Each module ``<impl>_impl`` exposes ``build(workload, params, batches) -> Runner``. Modules
import their framework at module level, so importing one raises ``ImportError`` when the
framework is not installed.
"""

from __future__ import annotations

from typing import Any, Protocol

IMPLS = ("numpy", "torch", "jax", "graphc")

#: The workload kinds (``benchmarks.workloads.Workload.kind``) each implementation has a
#: training step for; the others are reported as not measured.
KINDS: dict[str, tuple[str, ...]] = {
    "numpy": ("mlp", "ffn", "rnn"),
    "torch": ("mlp", "ffn", "gpt", "cnn", "rnn"),
    "jax": ("mlp", "ffn", "gpt", "cnn", "rnn"),
    "graphc": ("mlp", "ffn", "gpt", "cnn", "rnn"),
}


class Runner(Protocol):
    """A built training step bound to its prepared batches."""

    #: Optional per-phase seconds measured while building (e.g. graph build, compile).
    phases: dict[str, float]

    def step(self, i: int) -> Any:
        """Run one forward + backward + Adam step on batch ``i % n_batches``.

        Returns the loss before the update in the framework's native form (it may still
        be in flight for asynchronous frameworks).
        """
        ...

    def sync(self, out: Any) -> None:
        """Block until the step that returned ``out`` and all earlier steps are done."""
        ...

    def to_float(self, out: Any) -> float:
        """Return ``out`` as a Python float (blocking if necessary)."""
        ...
