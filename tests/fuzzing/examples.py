"""A drawn example: a chain of 1-3 family steps on fresh inputs, its weighted loss, its
gradients and the kinks finite differences must not cross.

The loss of an example is L = sum(out * w) with `w` a fed input shaped like `out` (fed, not
a constant, so the generated code does not depend on its values). The gradients are those
of L with respect to every float input and parameter of the example only, so many examples
can share one graph (one compile) and each is still checked on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

import graphc as gc
from graphc.ir import ancestors
from tests.fuzzing.builder import Builder, Leaf
from tests.fuzzing.choices import Chooser
from tests.fuzzing.families import FAMILIES

# Ops whose derivative jumps somewhere; their operands decide the branch (checks.py).
SIGN_KINKS = ("relu", "abs", "sign", "leaky_relu", "elu")
ORDER_KINKS = ("maximum", "minimum", "greater", "less", "greater_equal", "less_equal",
               "equal", "not_equal")
EXTREME_KINKS = ("max", "min")


@dataclass(frozen=True)
class Probe:
    """A kink: `kind` (sign, order, clip, extreme, pool), its operand Values and attrs."""

    kind: str
    operands: tuple[gc.Value, ...]
    attrs: dict


@dataclass
class Example:
    prefix: str
    families: list[str]
    trace: list[str]
    out: gc.Value
    weight: Leaf
    loss: gc.Value
    floats: list[Leaf]
    fixed: list[Leaf]
    ints: list[gc.Value]
    grads: list[gc.Value]
    probes: list[Probe]

    fetch_out: bool = True

    def outputs(self) -> list[gc.Value]:
        """What is compiled and compared: the output (unless only gradients are fetched, as
        in training, where no output but the loss needs the forward values), integer
        outputs, every gradient."""
        return [self.out] * self.fetch_out + [*self.ints, *self.grads]

    def output_names(self) -> list[str]:
        return (["out"] * self.fetch_out + [f"int{k}" for k in range(len(self.ints))]
                + [f"d/d{leaf.value.name}" for leaf in self.floats])

    def feeds(self, floats: Sequence[np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Inputs to feed (float leaves from `floats` when given); parameters excluded."""
        arrays = [leaf.data for leaf in self.floats] if floats is None else floats
        feeds = {leaf.value.name: leaf.data for leaf in self.fixed}
        feeds[self.weight.value.name] = self.weight.data
        for leaf, data in zip(self.floats, arrays):
            if leaf.value.op == "input":
                feeds[leaf.value.name] = data
        return feeds

    def describe(self) -> str:
        return "\n".join([f"example {self.prefix} families {self.families}:",
                          *("  " + line for line in self.trace)])


def build_example(graph: gc.Graph, chooser: Chooser, prefix: str, batch: int,
                  families: Sequence[str] | None = None) -> Example:
    """Draw one example into `graph` (names prefixed by `prefix`; run-time axes hold
    `batch` rows). `families` forces the steps' families (else 1-3 drawn)."""
    seed = chooser.integer(0, 2 ** 32 - 1)
    b = Builder(graph, chooser, np.random.default_rng(seed), prefix, batch)
    if families is None:
        names = sorted(FAMILIES)
        families = [b.pick(names) for _ in range(b.integer(1, 3))]
    v = None
    for family in families:
        b.families.append(family)
        b.note(f"[{family}]")
        v = FAMILIES[family](b, v)
    if not gc.ir.is_float(v.dtype):
        v = gc.cast(v, graph.dtype)
    b.note(f"out: {v.shape}")
    # one weight along run-time axes (broadcast), so the graph is the same at every batch
    weight = b.input(tuple(1 if d is None else d for d in v.shape))
    weight_leaf = b.floats.pop()
    loss = gc.sum(v * weight)
    probes = find_probes(graph, [loss.id])
    grads = gc.grad(loss, [leaf.value for leaf in b.floats])
    fetch_out = b.integer(0, 2) > 0
    if not fetch_out:
        b.note("(gradients fetched, not the output)")
    return Example(prefix, list(b.families), b.trace, v, weight_leaf, loss, b.floats, b.fixed,
                   b.ints, list(grads), probes, fetch_out)


def find_probes(graph: gc.Graph, roots: list[int]) -> list[Probe]:
    """Every kink among the nodes `roots` depend on (scan bodies included through their
    operands: a body's kinks are found by probing the body's graph separately)."""
    probes = []
    live = ancestors(graph, roots)
    users: dict[int, list[str]] = {}
    for nid in live:
        for i in graph.nodes[nid].inputs:
            users.setdefault(i, []).append(graph.nodes[nid].op)
    for nid in sorted(live):
        node = graph.nodes[nid]
        if users.get(nid) and set(users[nid]) == {"stop_gradient"}:
            # the softmax family's max shift: the function is the same whichever entry is
            # the maximum (exact ties of 1.5 - v + v differ only by rounding there)
            continue
        operands = tuple(gc.Value(graph, i) for i in node.inputs)
        if not operands or not all(gc.ir.is_float(o.dtype) for o in operands[:2]):
            continue
        if node.op in SIGN_KINKS:
            probes.append(Probe("sign", operands[:1], {}))
        elif node.op in ORDER_KINKS:
            probes.append(Probe("order", operands[:2], {}))
        elif node.op == "clip":
            probes.append(Probe("clip", operands, {}))
        elif node.op in EXTREME_KINKS:
            probes.append(Probe("extreme", operands[:1], {"axes": node.attrs["axes"],
                                                          "op": node.op}))
        elif node.op == "max_pool2d":
            probes.append(Probe("pool", operands[:1], dict(node.attrs)))
        elif node.op == "scan":
            probes.append(Probe("scan", operands, {"node": nid}))
    return probes
