"""The properties every drawn example must have, as functions returning a list of
mismatches (empty: the example passed) so a campaign can report them all.

1. Compiled == interpreter: the compiled output, integer outputs (exactly) and every
   gradient against `gc.evaluate` of the same graph on the same feeds. Tolerance (float64),
   norm-wise like tests/helpers.assert_arrays_match: |got - want| <= COMPILED_RTOL *
   max(1, max|want|, max|inputs|). Both sides round every elementary op once (eps 1.1e-16);
   they differ by summation order (reductions, matmul, convolution GEMMs: <= ~100 terms
   here), libm vs numpy math (<= 1 ulp) and FMA contraction, compounded through chains of
   at most ~30 primitives (forward plus backward); the error is relative to the largest
   magnitudes involved, not to a possibly cancelled result. 100 terms * 30 levels * eps
   ~ 3e-13: COMPILED_RTOL = 1e-11 leaves 30x margin (tests/test_properties_compile.py uses
   the same bound; the campaign's measured worst case is in benchmarks/fuzz_campaign.py's
   report). A wrong kernel (index, broadcast, constant) is off by O(1).
   float32: 2e-5 of the same scale (tests/test_compile_ops.py's float32 bound: polynomial
   float32 exp/log/tanh kernels of <= 3 ulp, different summation order).
2. Interpreter gradients == finite differences (float64, along a random direction v):
   the central differences D(h) and D(2h) (h = 1e-6) combined by Richardson extrapolation,
   (4 D(h) - D(2h)) / 3, whose truncation error is O(h**4) instead of h**2 |f^(3)| / 6:
   chains reach near-degenerate points of smooth ops (a layer norm over two nearly equal
   values has |f^(3)| ~ 1e7, and a plain central difference missed by 5e-8 relative there).
   |<g, v> - FD| <= 5e-8 * sum|g_i v_i| + atol (tests/helpers.py's first-order bound,
   measured 5e-9 over the op table), with atol the FD quotient's rounding floor for this
   loss: 1e-9 + 16 eps * S / h, where S = sum|out_i w_i| bounds the rounding error of
   evaluating L = sum(out * w) (each term carries a few eps of its own size after <= 16
   rounded levels; the extrapolation weighs the four evaluations by 4/3 and 1/6, < 2x the
   noise of one central difference, covered by the same factor). The helpers' fixed 1e-9
   assumes |L| ~ 5; chained examples reach S ~ 1e3.
   Kinks: a central difference is only valid if no branch changes between x - hv and
   x + hv. Every kink's operands (relu/abs/sign/leaky_relu/elu input, both sides of
   maximum/minimum/comparisons, clip's operand against both bounds, the maximisers of
   max/min reductions (but not the softmax family's shift, a max read only through
   stop_gradient: the function does not depend on which entry is the largest) and of each
   max-pooling window, the signs of a scan's operands) are
   evaluated at x + t h v for t = -2, -1, 0, 1, 2; if any decision differs, the example's
   float leaves are moved to a new random point (x + 0.3 N(0, 1)) and direction, up to
   MAX_MOVES times. Exact ties that the perturbation keeps (max over duplicated values,
   maximum(a, a)) are consistent at all three points, so they are checked, not avoided.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

import graphc as gc
from tests.fuzzing.examples import Example, Probe
from tests.helpers import DEFAULT_H, DEFAULT_RTOL

COMPILED_RTOL = {"float64": 1e-11, "float32": 2e-5}
FD_LEVELS = 16
MAX_MOVES = 20


@dataclass
class Mismatch:
    """One failed property of one example."""

    example: Example
    what: str
    detail: str

    def report(self) -> str:
        return f"{self.what}: {self.detail}\n{self.example.describe()}"


@dataclass
class Stats:
    """Worst error / bound ratios seen (how close the checks came to failing)."""

    compiled_worst: float = 0.0
    fd_worst: float = 0.0
    moves: int = 0
    fd_checked: int = 0


def compare_compiled(example: Example, got: Sequence[np.ndarray], want: Sequence[np.ndarray],
                     dtype: str, stats: Stats, what: str = "compiled") -> list[Mismatch]:
    """Compiled (or simulated) results against the interpreter's for one example."""
    mismatches = []
    inputs = max((float(np.max(np.abs(leaf.data), initial=0.0)) for leaf in example.floats),
                 default=0.0)
    for name, a, e in zip(example.output_names(), got, want):
        a, e = np.asarray(a), np.asarray(e)
        if a.shape != e.shape or a.dtype != e.dtype:
            mismatches.append(Mismatch(example, f"{what} {name}",
                                       f"shape/dtype {a.shape} {a.dtype} vs {e.shape} {e.dtype}"))
            continue
        if e.dtype.kind != "f":
            if not np.array_equal(a, e):
                mismatches.append(Mismatch(example, f"{what} {name}", f"{a} vs {e}"))
            continue
        if not np.all(np.isfinite(e)):
            mismatches.append(Mismatch(example, f"interpreter {name}", f"not finite: {e}"))
            continue
        scale = max(1.0, float(np.max(np.abs(e), initial=0.0)), inputs)
        err = float(np.max(np.abs(a.astype(np.float64) - e), initial=0.0))
        ratio = err / (COMPILED_RTOL[dtype] * scale) if np.isfinite(err) else np.inf
        stats.compiled_worst = max(stats.compiled_worst, ratio)
        if not ratio <= 1.0:
            mismatches.append(Mismatch(example, f"{what} {name}",
                                       f"max error {err:.3e} > {COMPILED_RTOL[dtype]:.0e} * "
                                       f"{scale:.3e}\n{a}\nvs interpreter\n{e}"))
    return mismatches


def _decisions(probe: Probe, values: Sequence[np.ndarray]) -> list[np.ndarray]:
    if probe.kind == "sign":
        return [np.sign(values[0])]
    if probe.kind == "order":
        return [np.sign(values[0] - values[1])]
    if probe.kind == "clip":
        x, lo, hi = values
        return [np.sign(x - lo), np.sign(x - hi), np.sign(hi - lo)]
    if probe.kind == "extreme":
        a, axes = values[0], probe.attrs["axes"]
        best = (np.max if probe.attrs["op"] == "max" else np.min)(a, axis=axes, keepdims=True)
        return [a == best]
    if probe.kind == "pool":
        (kh, kw), (sh, sw) = probe.attrs["kernel"], probe.attrs["stride"]
        windows = sliding_window_view(values[0], (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
        return [windows == np.max(windows, axis=(-2, -1), keepdims=True)]
    if probe.kind == "scan":
        return [np.sign(v) for v in values if v.dtype.kind == "f"]
    raise AssertionError(probe.kind)


class Evaluator:
    """The example's loss and kink operands at any values of its float leaves (parameters
    are swapped into the graph's storage for the call)."""

    def __init__(self, example: Example) -> None:
        self.example = example
        self.probe_values = [v for p in example.probes for v in p.operands]

    def __call__(self, arrays: Sequence[np.ndarray], extra: Sequence[gc.Value] = ()
                 ) -> tuple[float, list[list[np.ndarray]], list[np.ndarray]]:
        ex = self.example
        storage = ex.loss.graph.param_values
        saved = {}
        try:
            for leaf, data in zip(ex.floats, arrays):
                if leaf.value.op == "param":
                    saved[leaf.value.name] = storage[leaf.value.name]
                    storage[leaf.value.name] = data
            results = gc.evaluate([ex.loss, *self.probe_values, *extra], ex.feeds(arrays))
        finally:
            storage.update(saved)
        loss, rest = float(results[0]), results[1:]
        decisions, k = [], 0
        for probe in ex.probes:
            n = len(probe.operands)
            decisions.append(_decisions(probe, rest[k:k + n]))
            k += n
        return loss, decisions, rest[k:]


def _same(a: list[list[np.ndarray]], b: list[list[np.ndarray]]) -> bool:
    return all(np.array_equal(x, y) for da, db in zip(a, b) for x, y in zip(da, db))


def check_finite_differences(example: Example, rng: np.random.Generator,
                             stats: Stats) -> list[Mismatch]:
    """Interpreter gradients against a central difference along a random direction, at a
    point where no kink lies between x - hv and x + hv."""
    if not example.floats:
        return []
    evaluate = Evaluator(example)
    h = DEFAULT_H
    point = [leaf.data.astype(np.float64) for leaf in example.floats]
    moves = 0
    while moves <= MAX_MOVES:
        direction = [rng.standard_normal(p.shape) for p in point]
        _, at_x, extra = evaluate(point, [*example.grads, example.out])
        losses, consistent = {}, True
        for t in (-2, -1, 1, 2):
            losses[t], at_t, _ = evaluate([p + t * h * d for p, d in zip(point, direction)])
            consistent = consistent and _same(at_x, at_t)
        if consistent:
            break
        stats.moves += 1
        moves += 1
        point = [p + 0.3 * rng.standard_normal(p.shape) for p in point]
    if moves > MAX_MOVES:
        return [Mismatch(example, "finite differences",
                         f"every one of {MAX_MOVES + 1} points had a kink within 2h")]
    grads, out = extra[:-1], np.asarray(extra[-1], np.float64)
    terms = float(np.sum(np.abs(out * example.weight.data)))
    central = (losses[1] - losses[-1]) / (2 * h)
    wide = (losses[2] - losses[-2]) / (4 * h)
    numeric = (4 * central - wide) / 3  # Richardson: truncation O(h**4), not O(h**2)
    analytic = float(sum(np.sum(g * d) for g, d in zip(grads, direction)))
    scale = float(sum(np.sum(np.abs(g * d)) for g, d in zip(grads, direction)))
    eps = float(np.finfo(np.float64).eps)
    bound = DEFAULT_RTOL * scale + 1e-9 + FD_LEVELS * eps * terms / h
    err = abs(analytic - numeric)
    stats.fd_worst = max(stats.fd_worst, err / bound)
    stats.fd_checked += 1
    if not err <= bound:
        return [Mismatch(example, "finite differences",
                         f"<grad, v> = {analytic!r} vs central difference {numeric!r}: error "
                         f"{err:.3e} > {bound:.3e} (scale {scale:.3e}, sum|out w| "
                         f"{terms:.3e}, {moves} moves)")]
    return []

