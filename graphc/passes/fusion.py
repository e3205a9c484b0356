"""Fusion: partition compute nodes into groups, each becoming one kernel or one call.

Group kinds:
  loop    elementwise nodes (and broadcasts) over one iteration shape, optionally ending in
          one reduction (the root): producers fuse into the reduction that consumes them
  matmul  one matrix product (a BLAS call)
  view    reshape / transpose / slice / expand_dims / squeeze: an array view, no kernel
  index   take, take_grad, slice_grad, concat, cumsum, take_along_axis(_grad): generated
          gather, scatter and running-sum kernels
  shape   dim_size: computed from run-time shapes before the step runs
  call    one op run by a hand-written library kernel (conv2d, pooling and their gradients:
          OpDef.kernel), called with its operands and output buffer
  scan    a scan node and its scan_out results: the body's own program run once per step

Invariants: every group is convex (no path leaves it and re-enters) and the graph of
groups is acyclic (no path leaves a group and re-enters it through other groups, each
run as a unit); groups are listed in
an order where each reads only leaves and groups before it. Phases: 1 computes the outputs,
2 what only updates need (the gradients), 3 the groups that write updates; no group feeds
one of an earlier phase, so the step computes the outputs and gradients, checks them, and
only then touches parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from graphc.ir import Graph, Node, ancestors
from graphc.ops import OPS

LEAVES = ("input", "param", "state", "const")
BROADCASTS = ("broadcast_to", "broadcast_like")


def data_inputs(node: Node) -> tuple[int, ...]:
    """Operands whose values a node reads (shape-only operands excluded)."""
    if node.op in BROADCASTS or node.op == "reshape_like":
        return node.inputs[:1]
    if node.op in ("take_grad", "take_along_axis_grad", "slice_grad"):
        return node.inputs[:-1]
    if node.op == "dim_size":
        return ()
    return node.inputs


def is_loop_op(node: Node) -> bool:
    return node.op in BROADCASTS or OPS[node.op].kind == "elementwise"


@dataclass
class Group:
    """A fusion group: `nodes` in topological order, `root` the last one."""

    kind: str
    nodes: list[int]
    phase: int
    stores: list[int] = field(default_factory=list)  # nodes whose values leave the group
    loads: list[int] = field(default_factory=list)   # nodes read from outside the group
    # why the root was not fused into the groups of its consumers, one line per consumer
    not_fused: list[str] = field(default_factory=list)

    @property
    def root(self) -> int:
        return self.nodes[-1]


def consumers_of(graph: Graph, among: set[int] | None = None) -> dict[int, list[int]]:
    """For every node, the nodes (of `among`, default all) that read its value."""
    users: dict[int, list[int]] = {n.id: [] for n in graph.nodes}
    for n in graph.nodes:
        if among is None or n.id in among:
            for i in set(data_inputs(n)):
                users[i].append(n.id)
    return users


def values_read(graph: Graph, roots: list[int] | None = None) -> set[int]:
    """`roots` (default: the outputs and the updates) and every node whose value they read,
    through data operands only: a node used only as a shape reference (`zeros_like(h)`,
    `broadcast_like(x, h)`) is left out, its run-time shape follows from its operands'
    without running it."""
    seen: set[int] = set()
    stack = list(graph.outputs) + [nid for _, nid in graph.updates] if roots is None \
        else list(roots)
    while stack:
        nid = stack.pop()
        if nid not in seen:
            seen.add(nid)
            stack.extend(data_inputs(graph.nodes[nid]))
    return seen


def iteration_shape(graph: Graph, node: Node) -> tuple:
    if OPS.get(node.op) is not None and OPS[node.op].kind == "reduce":
        return graph.nodes[node.inputs[0]].shape
    return node.shape


def fuse(graph: Graph) -> list[Group]:
    """Fusion groups of `graph` (outputs and updates set) in execution order. Nodes whose
    values nothing reads (shape references only) get no group: they never run."""
    read = values_read(graph)
    users = consumers_of(graph, read)
    out_needed = ancestors(graph, graph.outputs)
    phase = {n.id: 1 if n.id in out_needed else 2 for n in graph.nodes}
    group_of: dict[int, Group] = {}
    groups: list[Group] = []

    def reaches(start: Group, target: Group) -> bool:
        """Whether `target` depends on `start` in the graph of groups. A group runs as a
        unit, so anything reading one of its members waits for all of its inputs: a path
        can enter a group at one member and leave it from another (node-level paths alone
        miss cycles such as A -> B at one node pair and B -> A at another)."""
        limit = max(target.nodes)
        stack, seen = [start], set()
        while stack:
            grp = stack.pop()
            if grp is target:
                return True
            if id(grp) in seen or min(grp.nodes) > limit:  # ids grow along every edge
                continue
            seen.add(id(grp))
            for member in grp.nodes:
                for u in users[member]:
                    other = group_of.get(u)
                    if other is not None and other is not grp:
                        stack.append(other)
        return False

    for node in reversed(graph.nodes):
        if node.op in LEAVES or node.op == "scan_out" or node.id not in read:
            continue   # a scan_out joins its scan's group
        if node.op == "scan":
            group = Group("scan", [node.id] + users[node.id], phase[node.id])
            for member in group.nodes:
                group_of[member] = group
            groups.append(group)
            continue
        kind = "loop" if is_loop_op(node) else OPS[node.op].kind
        if kind == "reduce":
            kind = "loop"
        why: list[str] = []
        if kind == "loop" and is_loop_op(node):
            target = _host_group(graph, node, users, group_of, phase, reaches, why)
            if target is not None:
                target.nodes.append(node.id)
                group_of[node.id] = target
                continue
        elif kind == "loop":
            why.append(f"{node.op} is a reduction: it can only end a loop group, as its root")
        elif users[node.id]:
            why.append(f"{node.op} is a {kind} op: " + (
                "a view of its operand, no kernel" if kind == "view" else
                "a BLAS call" if kind == "matmul" else f"a {kind} group of its own"))
        kind = {"elementwise": "loop", "view": "view", "index": "index", "shape": "shape",
                "matmul": "matmul"}.get(kind, kind)
        group = Group(kind, [node.id], phase[node.id], not_fused=why)
        group_of[node.id] = group
        groups.append(group)

    updates = _update_ids(graph)
    for g in groups:
        g.nodes.sort()
        if g.phase == 2 and any(n in updates for n in g.nodes):
            g.phase = 3
    groups = _schedule(graph, groups, group_of)
    roots = set(graph.outputs) | {nid for _, nid in graph.updates}
    for g in groups:
        members = set(g.nodes)
        g.stores = [n for n in g.nodes if n in roots or any(u not in members
                                                           for u in users[n])]
        loads: list[int] = []
        for n in g.nodes:
            for i in data_inputs(graph.nodes[n]):
                if i not in members and i not in loads:
                    loads.append(i)
        g.loads = loads
    return groups


def _schedule(graph: Graph, groups: list[Group], group_of: dict[int, Group]) -> list[Group]:
    """Groups in dependency order (Kahn), output phase first, then by root id."""
    import heapq

    index = {id(g): k for k, g in enumerate(groups)}
    after: dict[int, set[int]] = {k: set() for k in range(len(groups))}
    waiting = [0] * len(groups)
    for k, g in enumerate(groups):
        deps = set()
        for n in g.nodes:
            for i in data_inputs(graph.nodes[n]):
                producer = group_of.get(i)
                if producer is not None and producer is not g:
                    deps.add(index[id(producer)])
        for d in deps:
            after[d].add(k)
        waiting[k] = len(deps)
    ready = [(g.phase, g.root, k) for k, g in enumerate(groups) if waiting[k] == 0]
    heapq.heapify(ready)
    order: list[Group] = []
    while ready:
        _, _, k = heapq.heappop(ready)
        order.append(groups[k])
        for j in after[k]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, (groups[j].phase, groups[j].root, j))
    if len(order) != len(groups):
        raise RuntimeError("internal: fusion groups form a cycle")
    return order


def _update_ids(graph: Graph) -> set[int]:
    return {nid for _, nid in graph.updates}


def _host_group(graph: Graph, node: Node, users: dict[int, list[int]],
                group_of: dict[int, Group], phase: dict[int, int], reaches,
                why: list[str] | None = None) -> Group | None:
    """The consumer group `node` can be fused into (computed there, stored if needed).
    When there is none, `why` receives a line per consumer saying why not."""
    why = [] if why is None else why
    phases = {1: "the outputs", 2: "the gradients", 3: "the updates"}
    if not users[node.id]:
        why.append("no consumer (an output or an update)")
    for user in users[node.id]:
        user_node = graph.nodes[user]
        name = f"{user_node.label} ({user_node.op})"
        group = group_of.get(user)
        if group is None:
            why.append(f"{name}: a leaf")
            continue
        if group.kind != "loop":
            why.append(f"{name}: runs as a {group.kind} group, not a generated loop")
            continue
        if group.phase != phase[node.id]:
            why.append(f"{name}: computes {phases[group.phase]}, this node "
                       f"{phases[phase[node.id]]}")
            continue
        root = graph.nodes[group.root]
        if iteration_shape(graph, root) != node.shape:
            why.append(f"{name}: its group loops over {iteration_shape(graph, root)}, this "
                       f"node over {node.shape}")
            continue
        if not is_loop_op(user_node) and user != group.root:
            why.append(f"{name}: a reduction inside its group")
            continue
        members = set(group.nodes)
        outside = [u for u in users[node.id] if u not in members]
        if outside and any(n in _update_ids(graph) for n in members):
            # an update group only stores updates, so every other group can run before
            # any parameter is written (and the step can check the gradients first)
            why.append(f"{name}: its group writes a parameter update and this value has "
                       "other readers")
            continue
        # Joining adds edges group -> (groups of the outside users); refuse if one of those
        # already leads back to the group (the group graph must stay acyclic).
        if any(reaches(group_of[u], group) for u in outside if u in group_of):
            why.append(f"{name}: fusing would make a cycle between groups (another reader "
                       "of this value depends on that group)")
            continue
        return group
    return None


def describe_group(graph: Graph, group: Group) -> str:
    """`kind [node:op, ...] from file:line, ...`: one line saying what a group computes."""
    from graphc.errors import short_location

    nodes = ", ".join(f"{graph.nodes[n].label}:{graph.nodes[n].op}" for n in group.nodes)
    where = sorted({short_location(graph.nodes[n].where) for n in group.nodes})
    return f"{group.kind} [{nodes}] from {', '.join(where)}"
