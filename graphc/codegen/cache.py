"""The on-disk kernel cache: generated source files, named by the hash of their contents,
loaded as real modules so Numba can cache their machine code next to them.

One entry of the cache is a source file `<dir>/<module>.py` (module: `<prefix>_<sha256[:20]>`,
first line `# graphc-source-sha256: ...`) and what is kept for it in `<dir>/__pycache__/` under
`<module>.*`: Numba's index (.nbi) and data (.nbc) files, the kernel's machine code (.obj) and
`<module>.used`, an empty file whose mtime is the entry's last use.

- An intact source file is never rewritten: Numba's index checks its mtime and size, so
  rewriting it (even with the same text) would throw the machine code away. A new file is
  written to a temporary file and hard-linked into place, which fails if another process
  got there first (no reader ever sees half a file, no finished file is replaced). A damaged
  file is repaired under the directory's lock, so two processes never repair it twice.
- Size: `GRAPHC_CACHE_MAX_MB` (default 2048; 0 or "none": no cap). `maybe_prune()`, called
  after each compile, removes the least recently used entries when the cache is over the cap;
  `prune()` does it on demand. Entries this process wrote or loaded, or that any process used
  in the last RECENT_USE_S seconds, are kept.
- A directory graphc cannot write to (read-only, not a directory, a full disk) is replaced,
  for the rest of the process, by a private temporary directory, with one CacheWarning.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import importlib.util
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from graphc.kernels.sealed import seal, unseal

from graphc._library import execute

_HEADER_TAG = "# graphc-source-sha256: "

DEFAULT_MAX_MB = 2048
# Entries used this recently are never pruned: another process may have written (or found)
# one and not loaded it yet. A cold compile of a large model takes well under a minute.
RECENT_USE_S = 300.0
# maybe_prune prunes to this fraction of the cap, so the next compiles do not prune again.
LOW_WATER = 0.9
# What an entry takes on disk per byte of its source file (Numba's index and data, the kept
# machine code): about 35 measured over a test session's 435 kernels; rounded up.
BYTES_PER_SOURCE_BYTE = 40
# A size recorded by the last scan is trusted this long (other processes add to it).
RESCAN_S = 24 * 3600.0
# A directory with less free space than this counts as full.
MIN_FREE_BYTES = 32 << 20
# Temporary files older than this are left over from a process that died while writing.
STALE_TEMP_S = 3600.0
# Temporary files younger than this may be another process's write in progress: kept.
YOUNG_TEMP_S = 60.0

_MODULE = re.compile(r"graphc\w*_[0-9a-f]{20}")   # the names graphc's entries have
_USED = ".used"
_USAGE_FILE = ".graphc-usage.json"
_LOCK_FILE = ".graphc-lock"
_TEMP_PREFIX = ".tmp-"
_NO_HARD_LINKS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOSYS,
                  getattr(errno, "ENOTSUP", errno.EOPNOTSUPP), errno.EOPNOTSUPP}
_NO_SPACE_OR_ACCESS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS,
                       errno.EACCES, errno.EPERM}


class CacheWarning(RuntimeWarning):
    """The kernel cache directory cannot be used; graphc compiles without keeping kernels."""


# -- what this process knows ------------------------------------------------------------------
_effective: dict[str, str] = {}   # configured directory -> directory written to
_private: str | None = None       # this process's temporary cache directory, if it needed one
_in_use: set[str] = set()         # source paths this process wrote or loaded: never pruned
_sources: dict[str, str] = {}     # source path -> its text, to restore a file that vanished
_pending: dict[str, list[tuple[float, int]]] = {}   # directory -> (time, source bytes) written
_checked: set[str] = set()        # directories maybe_prune has looked at in this process


def _reset_process_state() -> None:
    """Forget the per-process decisions (directory, pruning checks); for tests."""
    global _private
    _effective.clear()
    _pending.clear()
    _checked.clear()
    _private = None


# -- directories ------------------------------------------------------------------------------

def cache_dir() -> str:
    """`GRAPHC_CACHE_DIR`, else the user's cache directory (XDG_CACHE_HOME or ~/.cache)."""
    explicit = os.environ.get("GRAPHC_CACHE_DIR")
    if explicit:
        return os.path.abspath(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "graphc")


def unwritable_reason(directory: str, create: bool = True) -> str | None:
    """Why graphc cannot keep kernels in `directory`, or None if it can. With `create`, makes
    the directory and its __pycache__ and writes a probe file in each; without, only looks."""
    if not create:
        path = directory
        while not os.path.exists(path) and os.path.dirname(path) != path:
            path = os.path.dirname(path)
        if not os.path.isdir(path):
            return f"{path} is not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"no write permission on {path}"
        return _low_space(path)
    try:
        for path in (directory, os.path.join(directory, "__pycache__")):
            os.makedirs(path, exist_ok=True)
            if not os.access(path, os.W_OK | os.X_OK):
                return f"no write permission on {path}"
            fd, probe = tempfile.mkstemp(dir=path, prefix=_TEMP_PREFIX + "probe-")
            try:
                os.write(fd, b"graphc\n")
            finally:
                os.close(fd)
                os.remove(probe)
    except OSError as err:
        return str(err)
    return _low_space(directory)


def _low_space(directory: str) -> str | None:
    try:
        st = os.statvfs(directory)
    except (AttributeError, OSError):   # no statvfs (Windows): the writes will tell
        return None
    free = st.f_bavail * st.f_frsize
    return f"only {free >> 20} MB free" if free < MIN_FREE_BYTES else None


def writable_cache_dir() -> str:
    """The directory write_module writes to: cache_dir(), or, if graphc cannot write there,
    a private temporary directory of this process (removed when it exits), with one
    CacheWarning. Decided once per process (per configured directory)."""
    configured = cache_dir()
    found = _effective.get(configured)
    if found is None:
        problem = unwritable_reason(configured)
        found = configured if problem is None else _fall_back(configured, problem)
        _effective[configured] = found
    return found


def _fall_back(configured: str, problem: str) -> str:
    """Write to this process's private directory from now on instead of `configured`."""
    global _private
    if _private is not None and _effective.get(configured) == _private:
        return _private   # said so already
    if _private is None:
        _private = tempfile.mkdtemp(prefix="graphc-cache-")
        atexit.register(_remove_private, _private, os.getpid())
    _effective[configured] = _private
    warnings.warn(f"graphc cannot write its kernel cache directory {configured} ({problem}): "
                  f"compiling into the temporary directory {_private} instead, which is "
                  "removed when this process exits, so the next run compiles again. Set "
                  "GRAPHC_CACHE_DIR to a writable directory to keep compiled kernels.",
                  CacheWarning, stacklevel=4)
    return _private


def _remove_private(path: str, owner: int) -> None:
    if os.getpid() == owner:   # not in a forked child
        shutil.rmtree(path, ignore_errors=True)


# -- writing and loading ----------------------------------------------------------------------

@dataclass
class CacheStats:
    """What one compile's kernel files were, each file counted once: `written` (created by
    this compile), `reused` (already in the cache, intact), `repaired` (there but damaged:
    rewritten, and Numba's cache of it dropped). `shared` counts the further requests for a
    file this compile already asked for (a kernel used twice): they are in none of the others.
    `files` lists each file once. Use one CacheStats per compile."""

    written: int = 0
    reused: int = 0
    repaired: int = 0
    shared: int = 0
    files: list[str] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set, repr=False, compare=False)

    def record(self, path: str, outcome: str) -> None:
        """Count `path` as `outcome` ('written', 'reused' or 'repaired'), or as shared if
        this compile has already counted it."""
        if path in self._seen:
            self.shared += 1
            return
        self._seen.add(path)
        self.files.append(path)
        setattr(self, outcome, getattr(self, outcome) + 1)


def source_digest(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def stamp(source: str) -> str:
    """`source` with a first line recording its hash, so a damaged file is recognised."""
    return f"{_HEADER_TAG}{source_digest(source)}\n{source}"


def _intact(path: str, expected: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read() == expected
    except (OSError, UnicodeDecodeError):
        return False


def _purge_numba_cache(directory: str, module: str) -> None:
    """Remove what is kept for `module` in __pycache__ (not its record of last use)."""
    pycache = os.path.join(directory, "__pycache__")
    try:
        names = os.listdir(pycache)
    except OSError:
        return
    for name in names:
        if name.startswith(module + ".") and name != module + _USED:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(pycache, name))


def _write_temp(directory: str, text: str) -> str:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=_TEMP_PREFIX, suffix=".py")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return tmp


def _publish(path: str, text: str) -> bool:
    """Create `path` holding `text`, whole or not at all; False if a file is already there
    (never replaced: its mtime is what Numba's cache of it checks)."""
    tmp = _write_temp(os.path.dirname(path), text)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in _NO_HARD_LINKS:
                raise
            # a file system without hard links: rename, unless a file is there already
            if os.path.exists(path):
                return False
            os.replace(tmp, path)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def _repair(directory: str, module: str, path: str, text: str) -> str:
    """Rewrite a damaged source file and drop Numba's cache of it, under the directory's
    lock: a second process that found it damaged waits, then finds it repaired."""
    with _locked(directory):
        if _intact(path, text):
            return "reused"
        _purge_numba_cache(directory, module)
        tmp = _write_temp(directory, text)
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
    return "repaired"


def _touch_used(directory: str, module: str) -> None:
    """Record a use of the entry. Its own empty file, because the source file's mtime must not
    change (Numba checks it), Numba's files change only when Numba compiles (loading them
    leaves them alone, atime is not kept on most mounts, and kept machine code skips them),
    and one utime call costs next to nothing."""
    used = os.path.join(directory, "__pycache__", module + _USED)
    try:
        os.utime(used)
    except FileNotFoundError:
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(used), exist_ok=True)
            with open(used, "ab"):
                pass
    except OSError:
        pass


def _store(directory: str, module: str, text: str) -> tuple[str, str]:
    """Make sure `<directory>/<module>.py` holds `text`; returns (path, outcome)."""
    path = os.path.join(directory, module + ".py")
    if _intact(path, text):
        outcome = "reused"
    elif _publish(path, text):
        outcome = "written"
        _pending.setdefault(directory, []).append((time.time(), len(text)))
    elif _intact(path, text):
        outcome = "reused"     # another process wrote it a moment ago
    else:
        outcome = _repair(directory, module, path, text)
    _sources[path] = text
    _in_use.add(path)
    _touch_used(directory, module)
    return path, outcome


def write_module(prefix: str, source: str, stats: CacheStats | None = None) -> tuple[str, str]:
    """Write `source` (if not already there, intact) as `<prefix>_<hash>.py` in the cache
    directory (writable_cache_dir()); returns (module name, path). A file whose contents do not
    match its name is rewritten and Numba's cache for it dropped. The prefix should start with
    "graphc" (what prune and clear recognise as theirs)."""
    text = stamp(source)
    module = f"{prefix}_{source_digest(source)[:20]}"
    directory = writable_cache_dir()
    try:
        path, outcome = _store(directory, module, text)
    except OSError as err:
        if directory == _private:
            raise
        path, outcome = _store(_fall_back(cache_dir(), str(err)), module, text)
    if stats is not None:
        stats.record(path, outcome)
    return module, path


def load_module(module: str, path: str) -> types.ModuleType:
    """Import a generated module by path, registered in sys.modules first (Numba's cache
    locator needs a real, importable module). A file this process wrote that has vanished
    since (the cache cleared meanwhile) is written again; a directory that fills up while
    Numba saves its cache moves the module to this process's private directory."""
    if module in sys.modules:
        return sys.modules[module]
    if path not in _in_use:
        _in_use.add(path)
        _touch_used(os.path.dirname(path), module)
    if path in _sources and not os.path.exists(path):
        with contextlib.suppress(OSError):
            _publish(path, _sources[path])
    try:
        return _import(module, path)
    except OSError as err:
        directory = os.path.dirname(path)
        if err.errno not in _NO_SPACE_OR_ACCESS or directory == _private:
            raise
        text = _sources.get(path)
        if text is None:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        moved, _ = _store(_fall_back(directory, str(err)), module, text)
        return _import(module, moved)


def _import(module: str, path: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(module, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load generated module {path}")
    return execute(module, spec)


def purge(module: str, path: str) -> None:
    """Forget a module and its Numba cache files (used when a cache entry is unusable)."""
    sys.modules.pop(module, None)
    _purge_numba_cache(os.path.dirname(path), module)


# -- size, pruning and clearing ---------------------------------------------------------------

def _blob_path(prefix: str, key: str) -> tuple[str, str, str]:
    directory = writable_cache_dir()
    module = f"{prefix}_{key[:20]}"
    return directory, module, os.path.join(directory, "__pycache__", module + ".pkl")


def write_blob(prefix: str, key: str, data: bytes) -> bool:
    """Keep `data` as the cache entry `<prefix>_<key[:20]>` (a file in __pycache__ with its
    record of use, pruned like the others), sealed with its sha256. Written whole or not at
    all; a directory that cannot take it is left alone (a blob is a shortcut, never
    needed): False."""
    directory, module, path = _blob_path(prefix, key)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=_TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(seal(data))
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                os.remove(tmp)
    except OSError:
        return False
    _pending.setdefault(directory, []).append((time.time(), len(data)))
    _in_use.add(os.path.join(directory, module + ".py"))
    _touch_used(directory, module)
    return True


def read_blob(prefix: str, key: str) -> bytes | None:
    """The data kept by `write_blob` under `key`, or None (a truncated or damaged file,
    whose sha256 does not match, is removed)."""
    directory, module, path = _blob_path(prefix, key)
    try:
        with open(path, "rb") as f:
            data = unseal(f.read())
    except OSError:
        return None
    if data is None:
        drop_blob(prefix, key)
        return None
    _in_use.add(os.path.join(directory, module + ".py"))
    _touch_used(directory, module)
    return data


def drop_blob(prefix: str, key: str) -> None:
    """Remove the data kept under `key` (found damaged)."""
    with contextlib.suppress(OSError):
        os.remove(_blob_path(prefix, key)[2])


def max_cache_bytes() -> int | None:
    """The cap from `GRAPHC_CACHE_MAX_MB` (megabytes, default DEFAULT_MAX_MB); None if 0,
    negative or "none" (no cap)."""
    raw = os.environ.get("GRAPHC_CACHE_MAX_MB", "").strip().lower()
    if not raw:
        return DEFAULT_MAX_MB << 20
    if raw in ("none", "off", "unlimited"):
        return None
    try:
        mb = float(raw)
    except ValueError:
        warnings.warn(f"GRAPHC_CACHE_MAX_MB={raw!r} is not a number of megabytes (or 'none'); "
                      f"using the default, {DEFAULT_MAX_MB}", CacheWarning, stacklevel=2)
        return DEFAULT_MAX_MB << 20
    return int(mb * (1 << 20)) if mb > 0 else None


@dataclass
class CacheEntry:
    """One generated module and what is kept for it; `last_use` is the mtime of its record
    of use (else of its newest file); `source` is False for an entry without a .py: a blob
    (write_blob) or files left without their source."""

    module: str
    directory: str
    files: list[str] = field(default_factory=list)
    size: int = 0
    last_use: float = 0.0
    source: bool = False

    @property
    def path(self) -> str:
        return os.path.join(self.directory, self.module + ".py")


def list_entries(directory: str | None = None) -> list[CacheEntry]:
    """The entries in `directory` (default cache_dir()), least recently used first. Only
    files named after graphc's modules count; files vanishing meanwhile are skipped."""
    directory = os.path.abspath(directory or cache_dir())
    pycache = os.path.join(directory, "__pycache__")
    found: dict[str, CacheEntry] = {}
    used: dict[str, float] = {}
    for folder in (directory, pycache):
        try:
            with os.scandir(folder) as listing:
                items = list(listing)
        except OSError:   # not there (yet), or unreadable
            continue
        for item in items:
            if folder == directory:
                if not item.name.endswith(".py"):
                    continue
                module = item.name[:-3]
            else:
                module = item.name.partition(".")[0]
            if not _MODULE.fullmatch(module):
                continue
            try:
                st = item.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            entry = found.get(module)
            if entry is None:
                entry = found[module] = CacheEntry(module, directory)
            entry.files.append(item.path)
            entry.size += st.st_size
            if item.name == module + _USED:
                used[module] = st.st_mtime
            else:
                entry.last_use = max(entry.last_use, st.st_mtime)
            entry.source = entry.source or folder == directory
    for module, when in used.items():
        found[module].last_use = when
    return sorted(found.values(), key=lambda e: e.last_use)


@dataclass
class PruneReport:
    """What prune (or clear) found and removed in `directory`."""

    directory: str
    limit: int | None = None       # the cap pruned to (None: no cap)
    entries: int = 0               # entries found
    bytes: int = 0                 # their size
    removed: int = 0               # entries removed
    freed: int = 0                 # bytes removed
    kept_in_use: int = 0           # over the cap, but this process uses them
    kept_recent: int = 0           # over the cap, but used in the last RECENT_USE_S seconds
    busy: bool = False             # another process was pruning: nothing done

    @property
    def remaining(self) -> int:
        return self.entries - self.removed

    @property
    def remaining_bytes(self) -> int:
        return self.bytes - self.freed

    def __str__(self) -> str:
        if self.busy:
            return f"{self.directory}: another process is pruning it; nothing done"
        cap = "no cap" if self.limit is None else f"cap {_mb(self.limit)}"
        text = (f"{self.directory}: removed {self.removed} of {self.entries} entries "
                f"({_mb(self.freed)}); {self.remaining} entries, {_mb(self.remaining_bytes)} "
                f"remain ({cap})")
        kept = []
        if self.kept_in_use:
            kept.append(f"{self.kept_in_use} in use by this process")
        if self.kept_recent:
            kept.append(f"{self.kept_recent} used in the last {RECENT_USE_S / 60:g} minutes")
        return text + (f"; kept {' and '.join(kept)}" if kept else "")


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MB"


@contextlib.contextmanager
def _locked(directory: str, blocking: bool = True) -> Iterator[bool]:
    """The directory's lock (flock on a lock file), held while pruning, clearing or repairing;
    yields False if `blocking` is off and another process holds it. Where there is no flock,
    or the lock file cannot be opened, nothing is locked (and True is yielded)."""
    try:
        import fcntl
    except ImportError:   # Windows
        yield True
        return
    try:
        fd = os.open(os.path.join(directory, _LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            held = True
        except BlockingIOError:
            held = False
        except OSError:   # no locks on this file system
            held = True
        yield held
    finally:
        os.close(fd)


def _is_temp(path: str) -> bool:
    name = os.path.basename(path)
    return name.startswith(_TEMP_PREFIX) or ".tmp." in name   # graphc's or Numba's


def _remove_files(paths: Iterable[str], now: float) -> None:
    """Remove `paths`, except temporary files young enough to be a write in progress."""
    for path in paths:
        try:
            if _is_temp(path) and now - os.stat(path).st_mtime < YOUNG_TEMP_S:
                continue
            os.remove(path)
        except OSError:   # gone already (another process pruning), or not ours to remove
            pass


def _remove_entry(entry: CacheEntry, now: float) -> None:
    """Numba's files first, then the source, then the record of use: an entry interrupted
    half way is a source without machine code (compiled again when used) or leftovers that
    the next prune removes."""
    first = [p for p in entry.files if p != entry.path and not p.endswith(_USED)]
    _remove_files([*first, entry.path, *(p for p in entry.files if p.endswith(_USED))], now)


def _temp_files(directory: str) -> list[str]:
    found = []
    for folder in (directory, os.path.join(directory, "__pycache__")):
        with contextlib.suppress(OSError):
            found += [os.path.join(folder, n) for n in os.listdir(folder)
                      if n.startswith(_TEMP_PREFIX)]
    return found


def _save_usage(directory: str, total: int, entries: int, now: float) -> None:
    """Record the size found by a scan, for maybe_prune's estimate (any process)."""
    with contextlib.suppress(OSError):
        tmp = _write_temp(directory, json.dumps({"bytes": total, "entries": entries,
                                                 "time": now}))
        os.replace(tmp, os.path.join(directory, _USAGE_FILE))


def _load_usage(directory: str) -> tuple[int, float] | None:
    try:
        with open(os.path.join(directory, _USAGE_FILE), encoding="utf-8") as f:
            data = json.load(f)
        return int(data["bytes"]), float(data["time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _prune(directory: str, limit: int | None, target: int, recent_s: float,
           blocking: bool = True) -> PruneReport:
    now = time.time()
    report = PruneReport(directory, limit)
    if not os.path.isdir(directory):
        return report
    with _locked(directory, blocking) as held:
        if not held:
            report.busy = True
            return report
        entries = list_entries(directory)
        report.entries, report.bytes = len(entries), sum(e.size for e in entries)
        total = report.bytes
        if limit is not None and total > limit:
            for entry in entries:   # least recently used first
                if total <= target:
                    break
                if entry.path in _in_use:
                    report.kept_in_use += 1
                    continue
                if now - _last_use(entry) < recent_s:
                    report.kept_recent += 1
                    continue
                _remove_entry(entry, now)
                total -= entry.size
                report.removed += 1
                report.freed += entry.size
        stale = [p for p in _temp_files(directory)
                 if now - _mtime(p, default=now) > STALE_TEMP_S]
        _remove_files(stale, now)
        _save_usage(directory, total, report.remaining, now)
    return report


def _mtime(path: str, default: float) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return default


def _last_use(entry: CacheEntry) -> float:
    """The entry's last use, looked at again just before removing it (another process may
    have used it since the scan)."""
    used = os.path.join(entry.directory, "__pycache__", entry.module + _USED)
    return max(entry.last_use, _mtime(used, default=entry.last_use))


def prune(max_bytes: int | None = None, directory: str | None = None, *,
          recent_s: float = RECENT_USE_S) -> PruneReport:
    """Remove the least recently used entries of `directory` (default cache_dir()) until it
    holds at most `max_bytes` (default max_cache_bytes(); without a cap nothing is removed).
    Entries this process wrote or loaded, and entries used in the last `recent_s` seconds (by
    any process), are kept, even if the total then stays over the cap. Whole entries go:
    source, Numba's files, kept machine code, record of use. Safe while other processes
    compile or prune: files that vanish meanwhile are skipped."""
    limit = max_cache_bytes() if max_bytes is None else max(0, int(max_bytes))
    target = limit if limit is not None else 0
    return _prune(os.path.abspath(directory or cache_dir()), limit, target, recent_s)


def maybe_prune() -> PruneReport | None:
    """Keep the cache directory under its cap; meant to run after every compile. Costs one
    small file read at most, and nothing once this process has looked and written nothing
    since. It scans (a listing and a stat per file) when the directory has no record of a
    scan, when the last one (by any process) is a day old, or when its total plus an estimate
    of what this process has written since is over the cap; it then prunes to LOW_WATER of
    the cap. Returns the PruneReport of a scan, else None."""
    limit = max_cache_bytes()
    if limit is None:
        return None
    directory = writable_cache_dir()
    if directory == _private:   # removed at exit anyway
        return None
    pending = _pending.get(directory, [])
    if directory in _checked and not pending:
        return None
    now = time.time()
    usage = _load_usage(directory)
    if usage is not None:
        recorded, scanned = usage
        # writes up to a minute before the scan may have had their Numba files saved after it
        pending[:] = [(t, n) for t, n in pending if t > scanned - 60.0]
        added = sum(n for _, n in pending) * BYTES_PER_SOURCE_BYTE
        if recorded + added <= limit and now - scanned < RESCAN_S:
            _checked.add(directory)
            return None
    report = _prune(directory, limit, int(limit * LOW_WATER), RECENT_USE_S, blocking=False)
    if not report.busy:
        _checked.add(directory)
        pending.clear()
    return report


def clear(directory: str | None = None) -> PruneReport:
    """Remove everything graphc keeps in `directory` (default cache_dir()): every entry,
    leftover temporary files, its records; other files stay. Processes running from the
    cache keep working (their kernels are in memory); ones compiling at the same moment
    write what they need again."""
    directory = os.path.abspath(directory or cache_dir())
    report = PruneReport(directory, 0)
    if not os.path.isdir(directory):
        return report
    now = time.time()
    with _locked(directory):
        entries = list_entries(directory)
        report.entries, report.bytes = len(entries), sum(e.size for e in entries)
        for entry in entries:
            _remove_entry(entry, now)
        report.removed, report.freed = report.entries, report.bytes
        _remove_files([*_temp_files(directory), os.path.join(directory, _USAGE_FILE)], now)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(directory, "__pycache__"))   # if empty
    with contextlib.suppress(OSError):
        os.remove(os.path.join(directory, _LOCK_FILE))
    return report


@dataclass
class CacheInfo:
    """What `graphc cache info` shows."""

    directory: str
    exists: bool
    problem: str | None            # why graphc cannot write there (None: it can)
    entries: int
    bytes: int
    limit: int | None
    oldest_use: float | None
    newest_use: float | None


def cache_info(directory: str | None = None) -> CacheInfo:
    """The entries, size and cap of `directory` (default cache_dir()); creates nothing."""
    directory = os.path.abspath(directory or cache_dir())
    entries = list_entries(directory)
    return CacheInfo(directory, os.path.isdir(directory),
                     unwritable_reason(directory, create=False), len(entries),
                     sum(e.size for e in entries), max_cache_bytes(),
                     entries[0].last_use if entries else None,
                     entries[-1].last_use if entries else None)
