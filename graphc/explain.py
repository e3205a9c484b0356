"""`step.explain()`: what the compiler decided for a compiled step, as text and as a dict.

Four parts: the forward values the backward graph keeps (bytes each and the gradient nodes
that read them), the memory plan (pool bytes, buffers shared by values never live at once,
updates written in place), the fusion groups (and why a group's root was not fused into
its consumers, recorded by graphc/passes/fusion.py), and what changed in the compile key
when the same graph was compiled again or the step met new feed shapes.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphc.errors import short_location
from graphc.inspect import clip
from graphc.ir import Graph, format_shape
from graphc.passes.fusion import LEAVES, data_inputs
from graphc.passes.memory import storage_root

# The compile key of the last step compiled from each user graph (graphc.compile records it).
_last_key: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compile_key(values: list[Any], optimizer: Any, target: str, fetch: list[Any],
                training: bool | None) -> dict[str, Any]:
    """What a compile of `values` depends on, as plain data: outputs, fetches, optimizer
    and its settings, target, training, and the shape and dtype of every input and
    parameter of the graph."""
    graph = values[0].graph
    settings = {}
    if optimizer is not None:
        settings = {k: v for k, v in vars(optimizer).items()
                    if isinstance(v, (bool, int, float, str, type(None)))}
    return {
        "outputs": [v.node.label for v in values],
        "fetch": [v.node.label for v in fetch],
        "optimizer": None if optimizer is None else type(optimizer).__name__,
        "optimizer settings": settings,
        "target": target,
        "training": training,
        "inputs": {n.name: f"{format_shape(n.shape)} {n.dtype}" for n in graph.nodes
                   if n.op == "input"},
        "params": {n.name: f"{format_shape(n.shape)} {n.dtype}" for n in graph.nodes
                   if n.op == "param"},
    }


def key_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One line per entry of a compile key that differs between `old` and `new`."""
    changes = []
    for k in new:
        a, b = old.get(k), new[k]
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for name in sorted(set(a) | set(b)):
                if a.get(name) != b.get(name):
                    changes.append(f"{k} {name}: {a.get(name, 'absent')} -> "
                                   f"{b.get(name, 'absent')}")
        else:
            changes.append(f"{k}: {a} -> {b}")
    return changes


def record_compile(fn: Any, values: list[Any], optimizer: Any, target: str,
                   fetch: list[Any], training: bool | None) -> None:
    """Give `fn` its compile key and what changed since the last compile of its graph."""
    key = compile_key(values, optimizer, target, fetch, training)
    graph = values[0].graph
    previous = _last_key.get(graph)
    fn.compile_key = key
    fn.compiled_again = None if previous is None else key_changes(previous, key)
    _last_key[graph] = key


def _nbytes(shape: tuple, dtype: str) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize


@dataclass(repr=False)
class Explanation:
    """What the compiler decided for a step. `str()` is a report; `as_dict()` the data."""

    sizes: str
    kept: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    groups: list[dict[str, Any]] = field(default_factory=list)
    recompiles: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"sizes": self.sizes, "kept": self.kept, "memory": self.memory,
                "groups": self.groups, "recompiles": self.recompiles}

    def __str__(self) -> str:
        mem = self.memory
        total = sum(k["bytes"] for k in self.kept)
        lines = [f"sizes: {self.sizes}",
                 f"forward values kept for the backward graph: {len(self.kept)}, "
                 f"{_human(total)}"]
        for k in sorted(self.kept, key=lambda k: -k["bytes"]):
            readers = ", ".join(f"{r['node']} {r['rule'].split(' of ')[0]}"
                                for r in k["read_by"][:3])
            more = f" +{len(k['read_by']) - 3}" if len(k["read_by"]) > 3 else ""
            lines.append(clip(f"  {k['node']:<8} {k['op']:<12} {k['shape']:<14} "
                              f"{_human(k['bytes']):>9}  {k['where']:<18} read by "
                              f"{readers}{more}"))
        lines += [f"memory plan: {mem['pool_bytes_peak']:,} bytes of pool buffers "
                  f"({mem['slots']} buffers for {mem['values']} values; "
                  f"{mem['unshared_bytes']:,} bytes without sharing); "
                  f"{len(mem['views'])} views; parameters and state "
                  f"{mem['param_bytes']:,} bytes",
                  f"  updates written in place: {len(mem['in_place'])} of "
                  f"{len(mem['in_place']) + len(mem['copied_updates'])}"]
        for u in mem["in_place"]:
            lines.append(f"    {u['node']} -> {u['storage']}")
        for u in mem["copied_updates"]:
            lines.append(clip(f"    {u['node']} -> {u['storage']} copied after the step "
                              f"({u['why']})"))
        shared = [s for s in mem["shared"] if len(s["values"]) > 1]
        lines.append(f"  buffers shared by values never live at once: {len(shared)}")
        for s in shared:
            lines.append(clip(f"    buffer {s['slot']} ({_human(s['bytes'])}): "
                              + ", ".join(s["values"])))
        fused = sum(1 for g in self.groups if len(g["nodes"]) > 1)
        lines.append(f"fusion: {len(self.groups)} groups ({fused} fuse several nodes)")
        for k, g in enumerate(self.groups):
            ops = ",".join(g["ops"])
            lines.append(clip(f"  {k:4d} {g['kind']:<6} phase {g['phase']} "
                              f"{len(g['nodes']):3d} nodes  {g['where']:<20} {ops}"))
            for reason in g["not_fused"]:
                lines.append(clip(f"         not fused: {reason}"))
        rec = self.recompiles
        lines.append("compiled again: " + ("first compile of this graph in this process"
                                           if rec["compiled_again"] is None else
                                           "; ".join(rec["compiled_again"]) or
                                           "the same key (a cache hit or a new step)"))
        lines.append(f"feed shapes seen: {len(rec['specialisations'])}")
        for s in rec["specialisations"]:
            lines.append(clip(f"  {s['feeds']}" + (f"  (new: {'; '.join(s['changed'])})"
                                                   if s["changed"] else "")))
        return "\n".join(lines)

    __repr__ = __str__


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def feed_shape_keys(step: Any) -> list[tuple]:
    """The feed-shape combinations `step` has run with, oldest first."""
    return list(step._plans)


def shapes_for(step: Any, key: tuple | None) -> dict[int, tuple]:
    """Every node's shape for a feed-shape combination (None: None axes as 1)."""
    from graphc.runtime import concrete_shapes

    feeds = {}
    for k, node in enumerate(step._inputs):
        shape = key[k] if key is not None else tuple(1 if d is None else d for d in node.shape)
        feeds[node.name] = np.broadcast_to(np.zeros((), dtype=node.dtype), shape)
    feeds.update({k: v.reshape(()) for k, v in step._hyper.items()})
    return concrete_shapes(step.program, feeds)


def explain(step: Any, feeds: dict[str, Any] | None = None) -> Explanation:
    """What the compiler decided for `step` (a compiled function), with the sizes of
    `feeds`, else those of its last call, else None axes of size 1."""
    program: Graph = step.program
    keys = feed_shape_keys(step)
    if feeds is not None:
        key = tuple(np.shape(feeds[n.name]) for n in step._inputs)
    else:
        key = keys[-1] if keys else None
    shapes = shapes_for(step, key)
    sizes = ("batch axes of size 1 (no call yet: pass feeds for real sizes)" if key is None
             else ", ".join(f"{n.name} {format_shape(s)}" for n, s in zip(step._inputs, key)))
    nodes = program.nodes
    groups = program.groups or []
    group_of = {nid: k for k, g in enumerate(groups) for nid in g.nodes}
    memory = program.memory

    def nbytes(nid: int) -> int:
        return _nbytes(shapes[nid], nodes[nid].dtype)

    kept = []
    for n in nodes:
        if n.role != "forward" or n.op in LEAVES:
            continue
        readers = [u for u in nodes if u.role == "backward" and n.id in data_inputs(u)
                   and group_of.get(u.id) != group_of.get(n.id)]
        if not readers:
            continue
        root = storage_root(program, n.id, memory.alias) if memory else n.id
        kept.append({
            "node": n.label, "id": n.id, "op": n.op, "shape": format_shape(shapes[n.id]),
            "dtype": n.dtype, "where": short_location(n.where),
            "bytes": nbytes(n.id) if root == n.id else 0,
            "view_of": None if root == n.id else nodes[root].label,
            "read_by": [{"node": u.label, "id": u.id, "op": u.op,
                         "rule": f"{u.provenance.rule} of {nodes[u.provenance.forward].label}"
                         if u.provenance else u.op} for u in readers]})

    slots: dict[int, list[int]] = {}
    for nid, slot in (memory.slot if memory else {}).items():
        slots.setdefault(slot, []).append(nid)
    shared = [{"slot": slot, "bytes": max(nbytes(i) for i in members),
               "values": [nodes[i].label for i in sorted(members)]}
              for slot, members in sorted(slots.items())]
    inplace = memory.inplace if memory else {}
    params = [n for n in nodes if n.op in ("param", "state")]
    mem = {
        "pool_bytes_peak": sum(s["bytes"] for s in shared),
        "unshared_bytes": sum(nbytes(i) for members in slots.values() for i in members),
        "slots": len(slots), "values": sum(len(m) for m in slots.values()),
        "shared": shared,
        "views": [{"node": nodes[v].label, "of": nodes[src].label}
                  for v, src in (memory.alias if memory else {}).items()],
        "in_place": [{"node": nodes[nid].label, "storage": name}
                     for nid, name in inplace.items()],
        "copied_updates": [{"node": nodes[nid].label, "storage": name,
                            "why": "another reader of the old value runs later, or the "
                            "writer is not a loop"}
                           for name, nid in program.updates if nid not in inplace],
        "param_bytes": sum(nbytes(n.id) for n in params),
    }

    group_rows = []
    for g in groups:
        group_rows.append({
            "kind": g.kind, "phase": g.phase, "nodes": [nodes[i].label for i in g.nodes],
            "ops": list(dict.fromkeys(nodes[i].op for i in g.nodes)),
            "where": ", ".join(sorted({short_location(nodes[i].where) for i in g.nodes})[:2]),
            "not_fused": list(getattr(g, "not_fused", [])),
        })

    specs = []
    for k, shapes_key in enumerate(keys):
        feeds_text = ", ".join(f"{n.name} {format_shape(s)}"
                               for n, s in zip(step._inputs, shapes_key))
        changed = [] if k == 0 else [
            f"{n.name} {format_shape(a)} -> {format_shape(b)}"
            for n, a, b in zip(step._inputs, keys[k - 1], shapes_key) if a != b]
        specs.append({"feeds": feeds_text, "changed": changed})
    recompiles = {"compile_key": getattr(step, "compile_key", None),
                  "compiled_again": getattr(step, "compiled_again", None),
                  "specialisations": specs}
    return Explanation(sizes, kept, mem, group_rows, recompiles)
