"""Checkpoints of compiled functions: parameters, optimizer state and step counter in one
`.npz` file, written atomically, loaded in place.

A checkpoint holds every array of `program.param_values` (as `param/<name>`) and of
`program.state_values` (as `state/<name>`: optimizer moments and any other graph state),
plus a JSON entry `__graphc__` with the format version, the step counter (`step.state`), the
graph's random generator state, the optimizer's settings and a fingerprint of the program.
It is a plain numpy archive: `np.load(path)["param/fc1.w"]` reads one parameter.

Writing goes to a temporary file in the target's directory, which is flushed, fsynced and
then renamed over the target (`os.replace`), so an interrupted save leaves the previous
checkpoint intact. Loading checks every array against the function's graph before copying
anything, then copies the values into the existing arrays (`np.copyto`), so every compiled
function that shares the graph's storage sees them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from graphc.digest import describe_node
from graphc.errors import GraphError
from graphc.ir import Graph, format_shape

if TYPE_CHECKING:
    from graphc.runtime import CompiledFunction

FORMAT = "graphc-checkpoint"
VERSION = 1
META_KEY = "__graphc__"
PathLike = str | os.PathLike


class CheckpointError(GraphError):
    """A checkpoint cannot be read, or does not fit the graph it is loaded into."""


def fingerprint(program: Graph) -> str:
    """A hash of the program's structure: every node's op, operands, shape, dtype, name and
    attributes (arrays larger than 16 elements by shape and dtype only), the outputs and the
    in-place updates. Source locations are left out, so editing unrelated lines of the
    user's script keeps the fingerprint."""
    digest = hashlib.sha256()
    for node in program.nodes:
        digest.update(json.dumps(describe_node(node), sort_keys=True).encode())
        digest.update(b"\n")
    tail = {"outputs": list(program.outputs), "updates": [list(u) for u in program.updates]}
    digest.update(json.dumps(tail, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _optimizer_info(optimizer: Any) -> dict[str, Any] | None:
    if optimizer is None:
        return None
    settings = {k: (v if _jsonable(v) else repr(v)) for k, v in vars(optimizer).items()
                if not k.startswith("_")}
    return {"type": type(optimizer).__name__, "settings": settings}


def _rng_state(graph: Graph) -> dict[str, Any] | None:
    rng = getattr(graph, "rng", None)
    if rng is None:
        return None
    state = rng.bit_generator.state
    return state if _jsonable(state) else None


def _write_npz(f: IO[bytes], arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` as an uncompressed numpy archive to the open binary file `f`."""
    np.savez(f, **arrays)


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(f)` on a temporary file next to `path`, flush and fsync it, then rename
    it to `path`. On any error (or interruption) the temporary file is removed and `path`
    keeps its previous content."""
    target = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                mode = os.stat(target).st_mode & 0o777
            except FileNotFoundError:
                mode = 0o644
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):
        with contextlib.suppress(OSError):
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def save(fn: CompiledFunction, path: PathLike) -> str:
    """Write `fn`'s parameters, graph state, step counter, random generator state and
    program fingerprint to `path` (exactly that name; `.npz` is conventional). Atomic: an
    interrupted save never damages an existing checkpoint. Returns the absolute path."""
    program = fn.program
    arrays: dict[str, np.ndarray] = {}
    for name, value in program.param_values.items():
        arrays[f"param/{name}"] = np.asarray(value)
    for name, value in program.state_values.items():
        arrays[f"state/{name}"] = np.asarray(value)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "graphc": _graphc_version(),
        "graph": program.name,
        "fingerprint": fingerprint(program),
        "training": fn.optimizer is not None,
        "optimizer": _optimizer_info(fn.optimizer),
        "step_state": {k: v for k, v in fn.state.items() if _jsonable(v)},
        "rng": _rng_state(program),
        "params": {k: [list(v.shape), str(v.dtype)] for k, v in program.param_values.items()},
        "state": {k: [list(v.shape), str(v.dtype)] for k, v in program.state_values.items()},
    }
    arrays[META_KEY] = np.array(json.dumps(meta))
    atomic_write(path, lambda f: _write_npz(f, arrays))
    return os.path.abspath(os.fspath(path))


def _graphc_version() -> str:
    import graphc

    return getattr(graphc, "__version__", "unknown")


def read(path: PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(metadata, parameters by name, state by name) of a checkpoint file."""
    where = os.fspath(path)
    try:
        with np.load(where, allow_pickle=False) as archive:
            if not hasattr(archive, "files") or META_KEY not in archive.files:
                raise CheckpointError(f"{where} is not a graphc checkpoint (no {META_KEY} "
                                      "entry); write one with step.save(path)")
            meta = json.loads(archive[META_KEY].item())
            params = {k[len("param/"):]: archive[k] for k in archive.files
                      if k.startswith("param/")}
            state = {k[len("state/"):]: archive[k] for k in archive.files
                     if k.startswith("state/")}
    except FileNotFoundError:
        raise
    except CheckpointError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise CheckpointError(f"could not read checkpoint {where}: {err}") from err
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a graphc checkpoint (format "
                              f"{meta.get('format')!r})")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{where} was written by a newer graphc (checkpoint format "
                              f"{meta.get('version')}, this graphc reads up to {VERSION})")
    return meta, params, state


def _describe(a: Any) -> str:
    return f"{format_shape(tuple(a.shape))} {np.dtype(a.dtype).name}"


def _compare(kind: str, ours: dict[str, np.ndarray], saved: dict[str, np.ndarray],
             extra_is_error: bool) -> list[str]:
    problems = []
    for name, arr in ours.items():
        if name not in saved:
            problems.append(f"{kind} {name!r} {_describe(arr)} is missing from the checkpoint")
            continue
        other = saved[name]
        if tuple(other.shape) != tuple(arr.shape):
            problems.append(f"{kind} {name!r} has shape {format_shape(tuple(arr.shape))} in "
                            f"this graph but {format_shape(tuple(other.shape))} in the "
                            "checkpoint")
        elif np.dtype(other.dtype) != np.dtype(arr.dtype):
            problems.append(f"{kind} {name!r} has dtype {np.dtype(arr.dtype).name} in this "
                            f"graph but {np.dtype(other.dtype).name} in the checkpoint")
    if extra_is_error:
        for name in saved:
            if name not in ours:
                problems.append(f"{kind} {name!r} {_describe(saved[name])} is in the "
                                "checkpoint but not in this graph")
    return problems


def load(fn: CompiledFunction, path: PathLike, *, params_only: bool = False,
         strict: bool = False) -> dict[str, Any]:
    """Copy a checkpoint's values into `fn`'s parameter and state arrays (in place).

    Every parameter of the graph must be in the checkpoint with the same shape and dtype
    and the checkpoint must hold no other parameter; the same holds for graph state
    (optimizer moments), except that a function without an optimizer ignores state it
    does not have. Nothing is copied unless everything matches; a mismatch raises
    CheckpointError naming each parameter that is missing, extra, or of another shape or
    dtype. A training step also gets the step counter and the graph's random generator
    state back. `params_only=True` loads parameters alone (a warm start with fresh
    optimizer state). A checkpoint from a training step with another program fingerprint
    (e.g. other optimizer settings) loads with a warning, or raises with `strict=True`.
    Returns the checkpoint's metadata.
    """
    meta, saved_params, saved_state = read(path)
    program = fn.program
    where = os.fspath(path)
    problems = _compare("parameter", program.param_values, saved_params, extra_is_error=True)
    if not params_only:
        problems += _compare("state", program.state_values, saved_state,
                             extra_is_error=fn.optimizer is not None)
    if problems:
        listing = "\n  ".join(problems)
        raise CheckpointError(f"checkpoint {where} (graph {meta.get('graph')!r}) does not fit "
                              f"graph {program.name!r}; nothing was loaded:\n  {listing}")
    training = fn.optimizer is not None and not params_only
    if training and meta.get("training") and meta.get("fingerprint") != fingerprint(program):
        message = (f"checkpoint {where} was saved from a different program (fingerprint "
                   f"{meta.get('fingerprint')} vs {fingerprint(program)}: another graph "
                   "structure, optimizer or graphc version); its parameters and state match "
                   "by name, shape and dtype")
        if strict:
            raise CheckpointError(message + "; nothing was loaded (strict=True)")
        warnings.warn(message + " and were loaded", UserWarning, stacklevel=3)
    for name, arr in program.param_values.items():
        np.copyto(arr, saved_params[name], casting="no")
    if not params_only:
        for name, arr in program.state_values.items():
            if name in saved_state:
                np.copyto(arr, saved_state[name], casting="no")
    if training:
        fn.state.update(meta.get("step_state", {}))
        rng, saved_rng = getattr(program, "rng", None), meta.get("rng")
        if rng is not None and saved_rng is not None and \
                saved_rng.get("bit_generator") == type(rng.bit_generator).__name__:
            rng.bit_generator.state = saved_rng
    return meta


__all__ = ["CheckpointError", "atomic_write", "fingerprint", "load", "read", "save"]
