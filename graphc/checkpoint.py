"""Checkpoints of compiled functions: parameters, optimizer state and step counter in one
`.npz` file, written atomically, loaded in place.

A checkpoint holds every array of `program.param_values` (as `param/<name>`) and of
`program.state_values` (as `state/<name>`: optimizer moments and any other graph state),
plus a JSON entry `__graphc__` with the format version, the step counter (`step.state`), the
graph's random generator state, the optimizer's settings and a fingerprint of the program.
It is a plain numpy archive: `np.load(path)["param/fc1.w"]` reads one parameter.

The metadata also holds a CRC-32 of every array's bytes, checked at load, so a damaged
file raises CheckpointError naming it and what is wrong instead of loading wrong values
(the zip format's own CRC of each member is checked too, where numpy reads a member whole).

Writing goes to a temporary file `.<name>.<host>.<pid>.<random>.tmp` in the target's
directory (one per writer, so processes saving to one path at once never share one), which
is flushed, fsynced and then renamed over the target (`os.replace`), so an interrupted save
leaves the previous checkpoint intact. A save removes the temporary files of its target left
by writers that died (on this host, their process gone; anywhere, older than a day). Loading
checks every array against the function's graph before copying anything, then copies the
values into the existing arrays (`np.copyto`), so every compiled function that shares the
graph's storage sees them.

For tests only: `GRAPHC_CHECKPOINT_KILL_AT=<stage>` makes a saving process SIGKILL itself at
that stage of the write (`after-temp-open`, `mid-array-write`, `before-fsync`,
`before-rename`, `after-rename`; see KILL_STAGES), so the effect of a crash at each point is
tested deterministically.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import socket
import tempfile
import time
import warnings
import zlib
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

KILL_AT_ENV = "GRAPHC_CHECKPOINT_KILL_AT"   # test hook: see the module docstring
KILL_STAGES = ("after-temp-open", "mid-array-write", "before-fsync", "before-rename",
               "after-rename")
# A temporary file of a writer that cannot be checked (another host's) is stale after this.
STALE_TEMP_S = 24 * 3600.0
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


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


def _stage(name: str) -> None:
    """The test hook: SIGKILL this process if KILL_AT_ENV names `name`."""
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


class _KillHalfway:
    """A file that runs the `mid-array-write` stage once half of `total` bytes are written
    (delegates everything else to the file it wraps)."""

    def __init__(self, f: IO[bytes], total: int) -> None:
        self._f, self._half, self._written = f, total // 2, 0

    def write(self, data: Any) -> int:
        count = self._f.write(data)
        self._written += count
        if self._written >= self._half:
            self._f.flush()
            _stage("mid-array-write")
        return count

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _write_npz(f: IO[bytes], arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` as an uncompressed numpy archive to the open binary file `f`."""
    if os.environ.get(KILL_AT_ENV) == "mid-array-write":
        f = _KillHalfway(f, sum(a.nbytes for a in arrays.values()))   # type: ignore[assignment]
    np.savez(f, **arrays)


def _checksum(a: np.ndarray) -> int:
    """CRC-32 of the array's bytes in C order."""
    return zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8))


_HOST = socket.gethostname().replace(os.sep, "_")


def _temp_prefix(target: str) -> str:
    return f".{os.path.basename(target)}."


def _writer_gone(host: str, pid: str) -> bool:
    """Whether the writer (`host`, `pid`) of a temporary file is known to be dead."""
    if host != _HOST or not pid.isdigit() or os.name == "nt":   # os.kill(pid, 0) kills there
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:   # alive, another user's
        return False
    return False


def remove_stale_temps(path: PathLike) -> list[str]:
    """Remove the temporary files of checkpoint `path` left by writers that died: on this
    host whose process is gone, anywhere older than STALE_TEMP_S. Returns their paths."""
    target = os.path.abspath(os.fspath(path))
    directory, prefix = os.path.dirname(target), _temp_prefix(target)
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        parts = name[len(prefix):-len(".tmp")].rsplit(".", 2)
        stale = len(parts) == 3 and _writer_gone(parts[0], parts[1])
        full = os.path.join(directory, name)
        try:
            if stale or now - os.stat(full).st_mtime > STALE_TEMP_S:
                os.unlink(full)
                removed.append(full)
        except OSError:   # gone already (its writer finished, or another save cleaned it)
            pass
    return removed


def _write_error(err: OSError, target: str) -> OSError:
    """`err` (raised writing `target`) with the checkpoint's path and what it means."""
    if err.errno in _DISK_FULL:
        what = (f"disk full: no space left on the device of {os.path.dirname(target)} while "
                f"writing checkpoint {target}")
    else:
        what = f"could not write checkpoint {target}: {err.strerror or err}"
    return OSError(err.errno, what + "; the previous checkpoint (if any) is unchanged",
                   target)


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(f)` on a temporary file next to `path` (a name of its own for this
    writer), flush and fsync it, then rename it to `path`. On any error (or interruption)
    the temporary file is removed and `path` keeps its previous content; an OSError is
    raised again naming `path` (and saying so when the disk is full)."""
    target = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(target)
    remove_stale_temps(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(target)}{_HOST}.{os.getpid()}.",
                                   suffix=".tmp", dir=directory)
    except OSError as err:
        raise _write_error(err, target) from err
    try:
        _stage("after-temp-open")
        with os.fdopen(fd, "wb") as f:
            try:
                mode = os.stat(target).st_mode & 0o777
            except FileNotFoundError:
                mode = 0o644
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            write(f)
            f.flush()
            _stage("before-fsync")
            os.fsync(f.fileno())
        _stage("before-rename")
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno is not None:
            raise _write_error(err, target) from err
        raise
    _stage("after-rename")
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
    meta["crc32"] = {key: _checksum(a) for key, a in arrays.items()}
    arrays[META_KEY] = np.array(json.dumps(meta))
    atomic_write(path, lambda f: _write_npz(f, arrays))
    return os.path.abspath(os.fspath(path))


def _graphc_version() -> str:
    import graphc

    return getattr(graphc, "__version__", "unknown")


def read(path: PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(metadata, parameters by name, state by name) of a checkpoint file. CheckpointError,
    naming the file and what is wrong, if it is not a graphc checkpoint, is truncated or
    damaged (an array's bytes not matching their checksum), or is of a newer format."""
    where = os.fspath(path)
    try:
        with np.load(where, allow_pickle=False) as archive:
            if not hasattr(archive, "files") or META_KEY not in archive.files:
                raise CheckpointError(f"{where} is not a graphc checkpoint (no {META_KEY} "
                                      "entry); write one with step.save(path)")
            meta = json.loads(archive[META_KEY].item())
            if not isinstance(meta, dict):
                raise CheckpointError(f"{where} is not a graphc checkpoint ({META_KEY} is "
                                      "not a JSON object)")
            arrays = {k: archive[k] for k in archive.files if k != META_KEY}
    except FileNotFoundError:
        raise
    except CheckpointError:
        raise
    except Exception as err:   # a damaged archive: zipfile and numpy raise what its bytes lead to
        raise CheckpointError(f"could not read checkpoint {where}: it is truncated or "
                              f"damaged ({type(err).__name__}: {err})") from err
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a graphc checkpoint (format "
                              f"{meta.get('format')!r})")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{where} was written by a newer graphc (checkpoint format "
                              f"{meta.get('version')}, this graphc reads up to {VERSION})")
    _verify(where, meta, arrays)
    params = {k[len("param/"):]: a for k, a in arrays.items() if k.startswith("param/")}
    state = {k[len("state/"):]: a for k, a in arrays.items() if k.startswith("state/")}
    return meta, params, state


def _verify(where: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """CheckpointError if an array is missing, extra, or its bytes do not match the CRC-32
    `save` recorded (checkpoints written before checksums were kept are not checked)."""
    sums = meta.get("crc32")
    if sums is None:
        return
    if not isinstance(sums, dict):
        raise CheckpointError(f"checkpoint {where} is damaged: its checksums are unreadable")
    problems = [f"{key} is missing" for key in sums if key != META_KEY and key not in arrays]
    problems += [f"{key} has no checksum" for key in arrays if key not in sums]
    problems += [f"the bytes of {key} do not match their checksum" for key, a in
                 arrays.items() if key in sums and _checksum(a) != sums[key]]
    if problems:
        raise CheckpointError(f"checkpoint {where} is damaged: {'; '.join(problems)}; "
                              "nothing was loaded")


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


__all__ = ["CheckpointError", "atomic_write", "fingerprint", "load", "read",
           "remove_stale_temps", "save"]
