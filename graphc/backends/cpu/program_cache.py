"""Compiled CPU programs kept on disk: compiling a graph that was compiled before, in any
process and from any script, skips autodiff, the graph passes and code generation.

An entry's key is what the program computes: every node of the user's graph (op, operands,
attributes with constants by value, shape, dtype, role, name), the outputs and fetches asked
for, the optimizer's class and settings, the training view, and the sources of graphc and the
versions of Numba, numpy and Python. Never where the graph was built: file names and lines
are provenance. The entry keeps the lines of the graph it was compiled from; loading maps
them, node by node, onto the lines of the graph being compiled (nodes in the same order
compute the same thing), so listings and errors name the user's current lines.

Not kept: graphs with custom ops or custom gradients (Python functions whose meaning a key
cannot hold), optimizers defined outside graphc, and batch-sharded steps.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import platform
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

import graphc
from graphc._library import library_folder
from graphc.backends.cpu.codegen import Program, executor_source, program_listing
from graphc.codegen.cache import CacheStats, drop_blob, read_blob, write_blob, write_module
from graphc.digest import NotDescribableError, describe_attr, describe_node
from graphc.errors import short_location
from graphc.ir import Graph, Value
from graphc.kernels.cpu.threads import shard_count
from graphc.ops.custom import _CUSTOM
from graphc.ops.registry import OPS
from graphc.optim import Optimizer

_PREFIX = "graphc_program"
_FORMAT = 1


@dataclass
class Entry:
    """What is kept: the scheduled program (without parameter storage) and its code."""

    format: int
    program: Graph
    code: Program
    user_where: list[str]          # the `where` of every node of the user's graph, in order
    compile_where: str             # where gc.compile was called (autodiff nodes carry it)
    optimizer_state: dict[str, tuple[tuple[int, ...], str]]   # name -> (shape, dtype), zeros
    nodes_before: int
    nodes_after: int


def _source_folders() -> list[str]:
    """graphc's folder, and its kernel library's when that is not inside it (a checkout)."""
    package = os.path.dirname(os.path.abspath(graphc.__file__))
    library = library_folder()
    return [package] + ([] if library.startswith(package + os.sep) else [library])


@functools.cache
def _graphc_sources_digest() -> str:
    """sha256 of every source file of graphc and its kernel library (read once a process)."""
    digest = hashlib.sha256()
    for folder in _source_folders():
        root = os.path.dirname(folder)
        for base, dirs, files in sorted(os.walk(folder)):
            dirs.sort()
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(base, name)
                    digest.update(os.path.relpath(path, root).encode())
                    with open(path, "rb") as f:
                        digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


_LEAVES = ("input", "param", "const", "state")


def _is_builtin(op: str) -> bool:
    if op in _LEAVES:
        return True
    definition = OPS.get(op)
    return (definition is not None and op not in _CUSTOM
            and definition.infer.__module__.startswith("graphc."))


def _builtin_rules(graph: Graph) -> list[Any] | None:
    """The custom gradients of `graph` as (node, name, inputs), or None if one of them is
    the user's (its rule a function outside graphc)."""
    rules = []
    for nid, rule in sorted(graph.custom_gradients.items()):
        if not getattr(rule.rule, "__module__", "").startswith("graphc."):
            return None
        rules.append([nid, rule.name, list(rule.inputs)])
    return rules


def program_key(outputs: list[Value], optimizer: Optimizer | None, fetch: list[Value],
                training: bool | None) -> str | None:
    """The key of the program `gc.compile` builds from these arguments, or None when it
    cannot be kept (see the module docstring)."""
    graph = outputs[0].graph
    rules = _builtin_rules(graph)
    if rules is None or (optimizer is not None
                         and type(optimizer).__module__ != "graphc.optim"):
        return None
    if not all(_is_builtin(node.op) for node in graph.nodes):
        return None
    try:
        settings = None if optimizer is None else describe_attr(
            {k: v for k, v in vars(optimizer).items() if k != "lr"}, full=True)
        described = {
            "graph": [graph.name, graph.dtype],
            "nodes": [describe_node(node, full=True) for node in graph.nodes],
            "state_updates": [list(u) for u in graph.state_updates],
            "custom_gradients": rules,
            "outputs": [v.id for v in outputs], "fetch": [v.id for v in fetch],
            "optimizer": None if optimizer is None else [type(optimizer).__qualname__,
                                                         settings],
            "training": training,
            "versions": [_FORMAT, _graphc_sources_digest(), numba.__version__,
                         np.__version__, platform.python_version()],
        }
    except NotDescribableError:
        return None
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def why_not_kept(outputs: list[Value]) -> str:
    """Why `program_key` gave None, in words."""
    if not enabled():
        return "GRAPHC_PROGRAM_CACHE is off"
    if shard_count() > 1:
        return "batch-sharded steps are compiled each time"
    return ("the graph has a custom op or gradient, or a setting the key cannot hold, or the "
            "optimizer is not one of graphc's")


def save(key: str, program: Graph, code: Program, user_graph: Graph, compile_where: str,
         nodes_before: int) -> bool:
    """Keep a compiled program under `key`; False if it cannot be kept (its optimizer state
    does not start at zero -- that state is made again at load -- or pickle refuses it)."""
    added = {name: a for name, a in program.state_values.items()
             if name not in user_graph.state_values}
    if any(np.any(a) for a in added.values()):
        return False
    stored = Graph.__new__(Graph)
    stored.__dict__.update(program.__dict__)
    stored.param_values, stored.state_values, stored.rng = {}, {}, None
    stored.custom_gradients, stored._auto_names = {}, {}
    sources: dict[str, str] = {}
    for kernel in code.kernels:   # one copy of each source in the entry
        kernel.source = sources.setdefault(kernel.source, kernel.source)
    entry = Entry(_FORMAT, stored, code, [n.where for n in user_graph.nodes], compile_where,
                  {name: (a.shape, a.dtype.name) for name, a in added.items()},
                  nodes_before, len(program.nodes))
    try:
        data = pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):   # an attribute pickle refuses
        return False
    return write_blob(_PREFIX, key, data)


def load(key: str, user_graph: Graph, compile_where: str,
         stats: CacheStats) -> Entry | None:
    """The entry kept under `key`, its provenance mapped onto `user_graph`'s lines and its
    kernel files in place, ready to run; None if there is none (or it is damaged, or its
    lines cannot be mapped)."""
    data = read_blob(_PREFIX, key)
    if data is None:
        return None
    try:
        entry = pickle.loads(data)
    except Exception:   # a damaged file: pickle raises whatever its bytes lead it to
        drop_blob(_PREFIX, key)
        return None
    if not isinstance(entry, Entry) or entry.format != _FORMAT \
            or len(entry.user_where) != len(user_graph.nodes):
        drop_blob(_PREFIX, key)
        return None
    moved = _location_map(entry, user_graph, compile_where)
    if moved is None:
        return None
    program, code = entry.program, entry.code
    program.nodes = [_relocated(node, moved) for node in program.nodes]
    short = {short_location(old): short_location(new) for old, new in moved.items()}
    for instruction in code.instructions:
        instruction.what = _relocated_text(instruction.what, short)
    for kernel in code.kernels:
        kernel.lines = sorted({program.nodes[n].where for n in kernel.nodes})
    written: dict[str, tuple[str, str]] = {}
    for kernel in code.kernels:
        if kernel.source not in written:
            written[kernel.source] = write_module("graphc_kernel", kernel.source, stats)
        kernel.module, kernel.path = written[kernel.source]
    code.modules = sorted(set(written.values()))
    code.executor = write_module("graphc_kernel", executor_source())
    code.listing = program_listing(program, code)
    program.param_values = user_graph.param_values
    program.state_values = dict(user_graph.state_values)
    for name, (shape, dtype) in entry.optimizer_state.items():
        program.state_values[name] = np.zeros(shape, dtype=dtype)
    program.rng, program._auto_names = user_graph.rng, user_graph._auto_names
    return entry


def _location_map(entry: Entry, user_graph: Graph, compile_where: str) -> dict[str, str] | None:
    """old location -> new one, from the nodes of both graphs in order; None if one old line
    would map to two new ones, or the program holds a line neither graph names."""
    moved: dict[str, str] = {}
    pairs = zip([*entry.user_where, entry.compile_where],
                [*(n.where for n in user_graph.nodes), compile_where])
    for old, new in pairs:
        if moved.setdefault(old, new) != new:
            return None
    if any(node.where not in moved for node in entry.program.nodes):
        return None
    return moved


def _relocated(node: Any, moved: dict[str, str]) -> Any:
    where = moved[node.where]
    if where == node.where:
        return node
    fields = dict(node.__dict__, where=where)
    return type(node)(**fields)


def _relocated_text(what: str, short: dict[str, str]) -> str:
    """A group description's trailing `from a:1, b:2` with each location mapped."""
    head, sep, tail = what.rpartition(" from ")
    if not sep:
        return what
    return head + sep + ", ".join(sorted(short.get(w, w) for w in tail.split(", ")))


def enabled() -> bool:
    """`GRAPHC_PROGRAM_CACHE=0` turns the program cache off (kernels are still cached)."""
    return os.environ.get("GRAPHC_PROGRAM_CACHE", "1").strip().lower() not in ("0", "no",
                                                                            "false", "off")


__all__ = ["Entry", "enabled", "load", "program_key", "save"]
