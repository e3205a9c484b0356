"""Memory planning: which values need buffers, and which buffers can share storage."""

from __future__ import annotations

from dataclasses import dataclass

from graphc.ir import Graph
from graphc.passes.fusion import Group, data_inputs

VIEW_OPS = ("reshape", "reshape_like", "expand_dims", "squeeze", "transpose", "slice")


@dataclass
class MemoryPlan:
    """`slot[node]`: the pool slot holding a computed value (nodes sharing a slot are never
    live at once); `alias[node]`: the node whose storage a view looks into; `inplace[node]`:
    the storage name an update writes straight into."""

    slot: dict[int, int]
    alias: dict[int, int]
    inplace: dict[int, str]
    slots: int


def storage_root(graph: Graph, nid: int, alias: dict[int, int]) -> int:
    while nid in alias:
        nid = alias[nid]
    return nid


def plan_memory(graph: Graph, groups: list[Group]) -> MemoryPlan:
    """Assign pool slots by liveness; updates write in place when every other reader of the
    old value runs before them. Invariant: no buffer is overwritten while a later group
    still reads the value it held."""
    position = {}
    for k, g in enumerate(groups):
        for n in g.nodes:
            position[n] = k
    alias = {}
    for g in groups:
        if g.kind == "view":
            node = graph.nodes[g.root]
            alias[g.root] = data_inputs(node)[0]
    last_use: dict[int, int] = {}
    readers: dict[int, list[int]] = {}   # storage root -> the groups that load it
    for k, g in enumerate(groups):
        for i in g.loads:
            root = storage_root(graph, i, alias)
            last_use[root] = max(last_use.get(root, -1), k)
            readers.setdefault(root, []).append(k)
    end = len(groups)
    # Outputs are returned, and updates not written in place are copied into their
    # parameter or state after the last group: both must survive to the end of the step.
    for nid in list(graph.outputs) + [n for _, n in graph.updates]:
        last_use[storage_root(graph, nid, alias)] = end

    inplace: dict[int, str] = {}
    by_name = {n.name: n.id for n in graph.nodes if n.op in ("param", "state")}
    for name, nid in graph.updates:
        leaf = by_name[name]
        k = position.get(nid)
        if k is None or graph.nodes[nid].shape != graph.nodes[leaf].shape:
            continue
        # The writing kernel itself may read the old value only element by element (the
        # leaf itself, loaded at the index it writes); through a view (a transpose, a
        # slice) it would read entries it has already overwritten.
        own_views = any(i != leaf and storage_root(graph, i, alias) == leaf
                        for i in groups[k].loads)
        if nid in inplace:
            continue   # one value updating two storages: written into the first, copied
        if all(j <= k for j in readers.get(leaf, ())) and groups[k].kind == "loop" \
                and not own_views:
            inplace[nid] = name
        elif leaf not in readers and groups[k].kind in ("matmul", "index", "call"):
            # storage the step only fills (nothing reads its old value): any kernel may
            # write its result straight into it
            inplace[nid] = name

    slot: dict[int, int] = {}
    free: dict[tuple, list[int]] = {}
    releases: dict[int, list[tuple[tuple, int]]] = {}
    count = 0
    for k, g in enumerate(groups):
        for tag_slot in releases.pop(k - 1, []):
            free.setdefault(tag_slot[0], []).append(tag_slot[1])
        if g.kind in ("view", "shape"):
            continue
        for nid in g.stores:
            if nid in inplace:
                continue
            node = graph.nodes[nid]
            tag = (node.shape, node.dtype)
            reusable = free.get(tag)
            if reusable:
                slot[nid] = reusable.pop()
            else:
                slot[nid] = count
                count += 1
            dies = last_use.get(nid, k)
            if dies < end:
                releases.setdefault(max(dies, k), []).append((tag, slot[nid]))
    return MemoryPlan(slot, alias, inplace, count)
