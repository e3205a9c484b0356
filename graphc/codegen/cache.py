"""The on-disk kernel cache: generated source files, named by the hash of their contents,
loaded as real modules so Numba can cache their machine code next to them."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import types
from dataclasses import dataclass, field

_HEADER_TAG = "# graphc-source-sha256: "


def cache_dir() -> str:
    """`GRAPHC_CACHE_DIR`, else the user's cache directory (XDG_CACHE_HOME or ~/.cache)."""
    explicit = os.environ.get("GRAPHC_CACHE_DIR")
    if explicit:
        return os.path.abspath(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "graphc")


@dataclass
class CacheStats:
    """What loading modules found: files written fresh, reused, or repaired."""

    written: int = 0
    reused: int = 0
    repaired: int = 0
    files: list[str] = field(default_factory=list)


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
    pycache = os.path.join(directory, "__pycache__")
    if not os.path.isdir(pycache):
        return
    for name in os.listdir(pycache):
        if name.startswith(module + "."):
            try:
                os.remove(os.path.join(pycache, name))
            except OSError:
                pass


def write_module(prefix: str, source: str, stats: CacheStats | None = None) -> tuple[str, str]:
    """Write `source` (if not already there, intact) as `<prefix>_<hash>.py` in the cache
    directory; returns (module name, path). Writes are atomic (temp file + rename); a file
    whose contents do not match its name is rewritten and Numba's cache for it dropped."""
    directory = cache_dir()
    os.makedirs(directory, exist_ok=True)
    text = stamp(source)
    module = f"{prefix}_{source_digest(source)[:20]}"
    path = os.path.join(directory, module + ".py")
    if os.path.exists(path):
        if _intact(path, text):
            if stats is not None:
                stats.reused += 1
                stats.files.append(path)
            return module, path
        _purge_numba_cache(directory, module)
        if stats is not None:
            stats.repaired += 1
    elif stats is not None:
        stats.written += 1
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".py")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    if stats is not None:
        stats.files.append(path)
    return module, path


def load_module(module: str, path: str) -> types.ModuleType:
    """Import a generated module by path, registered in sys.modules first (Numba's cache
    locator needs a real, importable module)."""
    if module in sys.modules:
        return sys.modules[module]
    spec = importlib.util.spec_from_file_location(module, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load generated module {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[module]
        raise
    return mod


def purge(module: str, path: str) -> None:
    """Forget a module and its Numba cache files (used when a cache entry is unusable)."""
    sys.modules.pop(module, None)
    _purge_numba_cache(os.path.dirname(path), module)
