"""Batch sharding: run the per-example part of a step on several threads at once.

Most of a training step is independent per example: row r of every activation and of
every activation gradient depends only on row r of the inputs (and on the parameters).
Only the reductions over the batch (weight and bias gradients, the loss) mix rows. This
pass finds that structure so the code generator can run the row-wise groups of a step as
one parallel region per shard of rows (shard s computes rows [lo_s, hi_s) of every
activation, and its own partial sum of every batch reduction into a buffer of its own);
the partial sums are then added in shard order, and everything else (the optimizer
update, scalars) runs once, serially.

Each node gets a status:
  row      axis 0 is the batch (the leading `None` of an input) and row r depends only on
           rows r of its row operands: computed per shard on its rows
  rowT     a 2-D row value transposed (batch on axis 1): the left operand of a weight
           gradient `x.T @ g`
  partial  a sum (or max, min) over the batch of row values: each shard reduces its rows
           into its own buffer, combined after the region in shard order (deterministic:
           the order depends only on the shard count and the batch size)
  global   independent of the batch (parameters, constants, anything computed from them
           or from combined partials): computed once, outside parallel regions

Groups are then placed in slots: even slots run serially, odd slots are parallel regions
(groups of row/partial values). Each group goes to the earliest slot after the groups it
reads, keeping the fusion order inside a slot; the update phase comes after every other
group. The reordered list stays a topological order, so the memory plan (built after
this pass) stays valid; buffers are only shared between values of one shape, so two
shards never touch each other's rows through a shared buffer.

With one shard (GRAPHC_SHARDS unset or 1, the default: kernels/cpu/threads.py says why) the
graph is left unsharded: the parallel regions cost compile time (measured: a 64-128-128-10
MLP step compiled in 6.3 s with regions, 3.0 s without) and would run on one thread anyway.

A graph with anything this pass cannot split (a counter-based random op over rows, a
product that contracts two batch axes, an index or call op without a batch rule, ...)
is left unsharded, with the reason in `ShardPlan.reason`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from graphc.ir import Graph, Node
from graphc.kernels.cpu.threads import shard_count
from graphc.ops import OPS
from graphc.passes.fusion import BROADCASTS, Group, data_inputs

ROW, ROWT, PARTIAL, GLOBAL = "row", "rowT", "partial", "global"
VIEW_ONLY = ("reshape", "reshape_like", "squeeze", "expand_dims", "transpose", "slice")


class UnshardableError(Exception):
    """Why a node prevents sharding the batch."""


@dataclass
class ShardPlan:
    """How a step is split over the batch.

    `status[node]`: row, rowT, partial or global (see the module docstring);
    `combine[node]`: "sum", "max" or "min" for each partial node; `region[k]`: the
    parallel region of group k of the (reordered) group list, None for serial groups;
    `split[k]`: group k is an update loop whose rows (axis 0 of the parameter) the shards
    share out (see SPLIT_MIN_ELEMENTS); `reason`: why the graph is not sharded (then every
    group is serial)."""

    status: dict[int, str] = field(default_factory=dict)
    combine: dict[int, str] = field(default_factory=dict)
    region: list[int | None] = field(default_factory=list)
    reason: str = ""
    split: list[bool] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return not self.reason

    @property
    def regions(self) -> int:
        return len({r for r in self.region if r is not None})

    def is_row(self, nid: int) -> bool:
        return self.status.get(nid) in (ROW, ROWT)

    def batch_axis(self, nid: int) -> int | None:
        """The axis of `nid` that runs over the batch (None if it has none)."""
        return {ROW: 0, ROWT: 1}.get(self.status.get(nid, GLOBAL))


def _row_shaped(shape: tuple) -> bool:
    return len(shape) >= 1 and shape[0] is None and all(d is not None for d in shape[1:])


def _static(shape: tuple) -> bool:
    return all(d is not None for d in shape)


def _full_slice(entry: tuple) -> bool:
    start, stop, step = entry
    return start in (None, 0) and stop is None and step in (None, 1)


def node_status(graph: Graph, node: Node, status: dict[int, str]) -> tuple[str, str]:
    """(status, combine) of `node` given its operands' statuses; raises UnshardableError."""
    seen = [GLOBAL if status[i] == PARTIAL else status[i] for i in data_inputs(node)]
    where = f"{node.op} {node.label} at {node.where}"
    if node.op == "input":
        if _row_shaped(node.shape):
            return ROW, ""
        if _static(node.shape):
            return GLOBAL, ""
        raise UnshardableError(f"input {node.name!r} has a run-time size off axis 0")
    if node.op in ("param", "state", "const") or OPS[node.op].kind == "shape":
        return GLOBAL, ""
    if all(s == GLOBAL for s in seen) and _static(node.shape):
        return GLOBAL, ""
    op = OPS[node.op]
    kind = op.kind
    if node.op in BROADCASTS or kind == "elementwise":
        if "{_flat}" in (op.scalar or ""):
            raise UnshardableError(f"{where} numbers elements across the batch")
        if not _row_shaped(node.shape):
            raise UnshardableError(f"{where}: shape {node.shape} has no batch axis 0")
        for s, i in zip(seen, data_inputs(node)):
            shape = graph.nodes[i].shape
            if s == ROW and len(shape) != len(node.shape):
                raise UnshardableError(f"{where} broadcasts a batch axis")
            if s == GLOBAL and len(shape) == len(node.shape) and shape[0] != 1:
                raise UnshardableError(f"{where} mixes a batch with a fixed axis 0")
            if s == ROWT:
                raise UnshardableError(f"{where} reads a transposed batch")
        return ROW, ""
    if kind == "reduce":
        if seen[0] != ROW:
            raise UnshardableError(f"{where} reduces a transposed batch")
        if 0 in node.attrs["axes"]:
            return PARTIAL, node.op
        return ROW, ""
    if kind == "matmul":
        a, b = seen
        na, nb = (graph.nodes[i] for i in node.inputs)
        if (a, b) == (ROWT, ROW) and len(na.shape) == 2 and len(nb.shape) == 2:
            return PARTIAL, "sum"
        rank = len(node.shape)
        operands = ((a, na.shape), (b, nb.shape))
        if _row_shaped(node.shape) and rank == 2 and (a, b) == (ROW, GLOBAL):
            return ROW, ""
        if _row_shaped(node.shape) and rank > 2 and all(
                (s == ROW and len(shape) == rank)
                or (s == GLOBAL and (len(shape) < rank or shape[0] == 1))
                for s, shape in operands):
            return ROW, ""
        raise UnshardableError(f"{where} contracts or mixes batch axes")
    if kind == "view":
        src = graph.nodes[data_inputs(node)[0]]
        if node.op == "transpose":
            perm = tuple(node.attrs["perm"])
            if seen[0] == ROW and perm[0] == 0:
                return ROW, ""
            if seen[0] == ROW and perm == (1, 0):
                return ROWT, ""
            if seen[0] == ROWT and perm == (1, 0):
                return ROW, ""
        elif node.op == "slice":
            if seen[0] == ROW and _full_slice(node.attrs["index"][0]) \
                    and _row_shaped(node.shape):
                return ROW, ""
        elif node.op in VIEW_ONLY and seen[0] == ROW and _row_shaped(node.shape) \
                and _static(src.shape[1:]) \
                and math.prod(src.shape[1:]) == math.prod(node.shape[1:]):
            return ROW, ""
        raise UnshardableError(f"{where} moves the batch axis")
    if kind == "index":
        axis = node.attrs.get("axis", 0)
        if node.op == "take":
            table, idx = seen
            if table == GLOBAL and idx == ROW and axis == 0:
                return ROW, ""
            if table == ROW and idx == GLOBAL and axis >= 1:
                return ROW, ""
        elif node.op == "take_grad":
            g, idx = seen
            if g == ROW and idx == ROW and axis == 0:
                return PARTIAL, "sum"
            if g == ROW and idx == GLOBAL and axis >= 1:
                return ROW, ""
        elif node.op in ("concat", "cumsum", "take_along_axis", "take_along_axis_grad"):
            if all(s == ROW for s in seen) and axis >= 1:  # row by row off the batch axis
                return ROW, ""
        elif node.op == "slice_grad":
            if seen[0] == ROW and _full_slice(node.attrs["index"][0]):
                return ROW, ""
        raise UnshardableError(f"{where} gathers or scatters across the batch")
    if kind == "call" and op.batch is not None and seen[0] == ROW:
        ranks_ok = all(s == GLOBAL or (s == ROW and len(graph.nodes[i].shape) == len(
            graph.nodes[data_inputs(node)[0]].shape)) for s, i in zip(seen, data_inputs(node)))
        if ranks_ok and op.batch == "rows" and _row_shaped(node.shape):
            return ROW, ""
        if ranks_ok and op.batch == "sum" and all(s == ROW for s in seen):
            return PARTIAL, "sum"
    raise UnshardableError(f"{where} has no rule for splitting the batch")


# The optimizer updates run in parallel too, each shard on a share of every parameter's rows,
# when the parameters hold at least this many elements in all: below it, one more fork and
# join of the threads costs more than the update it shares.
SPLIT_MIN_ELEMENTS = 1 << 17

# Numba passes every array a parallel region uses to it as an argument, and its compile time
# grows faster than linearly with their number: a 16-layer MLP's region took 56 s to compile
# (about 170 arrays), a 3-layer MLP's 3 s (38). Graphs whose regions would take more arrays
# run serially.
MAX_REGION_ARRAYS = 64


def splittable_update(graph: Graph, group: Group) -> bool:
    """Whether an update group is a loop over a fixed shape whose rows (axis 0) can be shared
    out: every value it stores has that shape, and every value it reads has it too (and is
    sliced alike) or is the same for every row."""
    root = graph.nodes[group.root]
    space = root.shape
    if group.kind != "loop" or group.phase != 3 or OPS[root.op].kind == "reduce" \
            or not space or not _static(space) or space[0] < 2:
        return False
    if any(graph.nodes[n].shape != space for n in group.stores):
        return False
    for nid in group.loads:
        shape = graph.nodes[nid].shape
        if shape != space and len(shape) == len(space) and shape[0] != 1:
            return False
    return True


def serial(groups: list[Group], reason: str) -> tuple[list[Group], ShardPlan]:
    """The groups as they are, every one serial, and why."""
    return groups, ShardPlan(region=[None] * len(groups), reason=reason)


def plan_shards(graph: Graph, groups: list[Group]) -> tuple[list[Group], ShardPlan]:
    """The groups reordered into serial slots and parallel regions, and the plan.

    Invariant: the result is a topological order of the same groups (each group reads
    only leaves and groups before it); phase-3 (update) groups come after all others."""
    status: dict[int, str] = {}
    combine: dict[int, str] = {}
    if shard_count() == 1:
        # nothing to run in parallel: the serial step compiles in about half the time
        return serial(groups, "one shard (GRAPHC_SHARDS unset or 1)")
    if any(g.kind == "scan" for g in groups):
        # the fused step has no loop construct: the program backend runs the scan's body
        return serial(groups, "the graph contains a scan, run by the program backend")
    try:
        for node in graph.nodes:
            status[node.id], op = node_status(graph, node, status)
            if op:
                combine[node.id] = op
    except UnshardableError as why:
        return serial(groups, str(why))
    if not any(s != GLOBAL for s in status.values()):
        return groups, ShardPlan(status, combine, [None] * len(groups),
                                 reason="no input has a batch axis")

    producer: dict[int, int] = {}
    for k, g in enumerate(groups):
        for n in g.nodes:
            producer[n] = k
    split = {k for k, g in enumerate(groups) if splittable_update(graph, g)}
    if sum(math.prod(graph.nodes[groups[k].root].shape) for k in split) < SPLIT_MIN_ELEMENTS:
        split = set()
    slot: dict[int, int] = {}
    floor: int | None = None   # the serial slot of the gradient check, before any update

    def ready_after(nid: int) -> int:
        """The slot from which `nid` can be read: a partial once its region has ended."""
        k = producer.get(nid)
        if k is None:
            return 0
        return slot[k] + 1 if status[nid] == PARTIAL else slot[k]

    for k, g in enumerate(groups):
        sharded = any(status[n] != GLOBAL for n in g.nodes)
        if sharded and g.phase == 3:
            return serial(groups, f"an update reads the batch ({g.kind} group)")
        if sharded and any(status[n] == GLOBAL for n in g.stores):
            return serial(groups, f"a {g.kind} group mixes batch and fixed values")
        deps = [ready_after(i) for i in g.loads]
        if g.kind == "view" and sharded:
            # a view of rows costs nothing: the code generator binds it where it is used
            slot[k] = max(deps, default=1)
            continue
        start = max(deps, default=0)
        if g.phase == 3:
            if floor is None:
                floor = max(slot.values(), default=0)
                floor += floor % 2
            start = max(start, floor)
        if sharded or k in split:
            slot[k] = start if start % 2 else start + 1
        else:
            slot[k] = start if start % 2 == 0 else start + 1
    order = sorted(range(len(groups)), key=lambda k: (slot[k], k))
    regions = {s: r for r, s in enumerate(sorted({slot[k] for k in order if slot[k] % 2}))}
    reordered = [replace(groups[k]) for k in order]
    region = [regions.get(slot[k]) if groups[k].kind != "view" else None for k in order]
    plan = ShardPlan(status, combine, region, split=[k in split for k in order])
    widest = max(region_arrays(graph, reordered, plan).values(), default=0)
    if widest > MAX_REGION_ARRAYS:
        return serial(groups, (
            f"a parallel region would use {widest} arrays (more than {MAX_REGION_ARRAYS}: "
            "too slow to compile)"))
    return reordered, plan


def region_arrays(graph: Graph, groups: list[Group], plan: ShardPlan) -> dict[int, int]:
    """How many arrays each parallel region reads or writes: what the code generator passes
    to it (a view of rows is taken inside, from the array it looks into)."""
    views = {g.root: data_inputs(graph.nodes[g.root])[0] for g in groups if g.kind == "view"}
    arrays: dict[int, set[int]] = {}
    for group, region in zip(groups, plan.region):
        if region is None:
            continue
        for nid in list(group.loads) + list(group.stores):
            while nid in views and plan.is_row(nid):
                nid = views[nid]
            arrays.setdefault(region, set()).add(nid)
    return {r: len(ids) for r, ids in arrays.items()}
