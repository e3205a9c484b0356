"""The kernel cache: counting per compile, files never rewritten, least-recently-used pruning
under a cap, `graphc cache`, concurrent writers and compiles, unwritable directories."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
from graphc.kernels.sealed import unseal

from graphc import cli
from graphc.codegen import cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    """A fresh GRAPHC_CACHE_DIR, no cap set, and the per-process decisions forgotten."""
    root = tmp_path / "cache"
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(root))
    monkeypatch.delenv("GRAPHC_CACHE_MAX_MB", raising=False)
    cache._reset_process_state()
    yield str(root)
    cache._reset_process_state()


def make_entry(directory: str, n: int, size: int, used_ago: float) -> cache.CacheEntry:
    """An entry as another process leaves it: a source file, Numba files holding `size`
    bytes and its record of use `used_ago` seconds old (the files themselves are new)."""
    source = f"# entry {n}\nVALUE = {n}\n"
    module = f"graphc_kernel_{cache.source_digest(source)[:20]}"
    pycache = os.path.join(directory, "__pycache__")
    os.makedirs(pycache, exist_ok=True)
    with open(os.path.join(directory, module + ".py"), "w") as f:
        f.write(cache.stamp(source))
    with open(os.path.join(pycache, module + ".kernel-1.py311.nbi"), "wb") as f:
        f.write(b"i" * (size // 4))
    with open(os.path.join(pycache, module + ".kernel-1.py311.1.nbc"), "wb") as f:
        f.write(b"d" * (size - size // 4))
    used = os.path.join(pycache, module + ".used")
    open(used, "w").close()
    os.utime(used, (time.time() - used_ago,) * 2)
    return next(e for e in cache.list_entries(directory) if e.module == module)


def names(directory: str) -> set[str]:
    return {e.module for e in cache.list_entries(directory)}


# -- counting and writing ---------------------------------------------------------------------

def test_one_compile_counts_each_file_once(cache_root) -> None:
    first = cache.CacheStats()
    a = cache.write_module("graphc_kernel", "A = 1\n", first)
    b = cache.write_module("graphc_kernel", "B = 2\n", first)
    again = cache.write_module("graphc_kernel", "A = 1\n", first)   # the same kernel twice
    assert again == a
    assert (first.written, first.reused, first.repaired, first.shared) == (2, 0, 0, 1)
    assert first.files == [a[1], b[1]]
    second = cache.CacheStats()   # the next compile finds both
    for text in ("A = 1\n", "B = 2\n", "B = 2\n"):
        cache.write_module("graphc_kernel", text, second)
    assert (second.written, second.reused, second.repaired, second.shared) == (0, 2, 0, 1)


def test_intact_files_are_never_rewritten_and_damaged_ones_are_repaired(cache_root) -> None:
    module, path = cache.write_module("graphc_kernel", "A = 1\n")
    os.utime(path, (1_000_000_000, 1_000_000_000))   # as an old file: Numba checks this mtime
    cache.write_module("graphc_kernel", "A = 1\n")
    assert os.stat(path).st_mtime == 1_000_000_000
    pycache = os.path.join(cache_root, "__pycache__")
    numba_file = os.path.join(pycache, module + ".kernel-1.py311.nbi")
    open(numba_file, "w").close()
    with open(path, "w") as f:
        f.write("damaged ((\n")
    stats = cache.CacheStats()
    cache.write_module("graphc_kernel", "A = 1\n", stats)
    assert stats.repaired == 1
    with open(path) as f:
        assert f.read() == cache.stamp("A = 1\n")
    assert not os.path.exists(numba_file)                       # Numba's cache of it dropped
    assert os.path.exists(os.path.join(pycache, module + ".used"))   # its last use kept
    assert not [n for n in os.listdir(cache_root) if n.startswith(".tmp-")]


def test_a_file_that_vanished_before_loading_is_written_again(cache_root) -> None:
    module, path = cache.write_module("graphc_kernel", "VALUE = 41 + 1\n")
    os.remove(path)   # e.g. `graphc cache clear` in another terminal
    assert cache.load_module(module, path).VALUE == 42
    sys.modules.pop(module, None)


def _race(directory: str, sources: list[str], barrier, results) -> None:
    os.environ["GRAPHC_CACHE_DIR"] = directory
    cache._reset_process_state()
    barrier.wait()
    stats = cache.CacheStats()
    for source in sources:
        cache.write_module("graphc_kernel", source, stats)
    results.put((stats.written, stats.reused, stats.repaired))


def test_processes_writing_the_same_files_at_once(cache_root) -> None:
    """Each new file is created by exactly one process, each damaged one repaired by exactly
    one; none is replaced after that (its mtime is what Numba's index checks)."""
    new = [f"NEW = {k}\n" for k in range(150)]
    damaged = [f"OLD = {k}\n" for k in range(20)]
    os.makedirs(cache_root)
    for source in damaged:
        module = f"graphc_kernel_{cache.source_digest(source)[:20]}"
        with open(os.path.join(cache_root, module + ".py"), "w") as f:
            f.write("half a fi")
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(cache_root, new + damaged, barrier, results))
             for _ in range(4)]
    for proc in procs:
        proc.start()
    counts = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert sum(c[0] for c in counts) == len(new)
    assert sum(c[2] for c in counts) == len(damaged)
    assert sum(c[1] for c in counts) == 3 * (len(new) + len(damaged))
    for source in new + damaged:
        path = os.path.join(cache_root, f"graphc_kernel_{cache.source_digest(source)[:20]}.py")
        with open(path) as f:
            assert f.read() == cache.stamp(source)
    assert not [n for n in os.listdir(cache_root) if n.startswith(".tmp-")]


# -- the cap and pruning ----------------------------------------------------------------------

def test_the_cap_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("GRAPHC_CACHE_MAX_MB", raising=False)
    assert cache.max_cache_bytes() == 2048 << 20
    for raw, want in [("100", 100 << 20), ("0.5", 1 << 19), ("0", None), ("none", None),
                      ("None", None)]:
        monkeypatch.setenv("GRAPHC_CACHE_MAX_MB", raw)
        assert cache.max_cache_bytes() == want, raw
    monkeypatch.setenv("GRAPHC_CACHE_MAX_MB", "lots")
    with pytest.warns(cache.CacheWarning, match="GRAPHC_CACHE_MAX_MB"):
        assert cache.max_cache_bytes() == 2048 << 20


def test_prune_removes_least_recently_used_entries_down_to_the_cap(cache_root) -> None:
    # last used 3000, 5000, 1000, 4000 and 2000 s ago: LRU order 1, 3, 0, 4, 2
    made = [make_entry(cache_root, n, 1000, ago)
            for n, ago in enumerate([3000, 5000, 1000, 4000, 2000])]
    assert [e.module for e in cache.list_entries(cache_root)] == \
        [made[k].module for k in (1, 3, 0, 4, 2)]
    total = sum(e.size for e in made)
    cap = total - made[1].size - made[3].size
    report = cache.prune(cap)
    assert (report.entries, report.removed, report.bytes) == (5, 2, total)
    assert report.remaining_bytes == cap
    assert names(cache_root) == {made[k].module for k in (0, 2, 4)}
    for gone in (made[1], made[3]):   # the whole entry: source, Numba's files, record of use
        assert not any(os.path.exists(p) for p in gone.files)
        assert not [n for n in os.listdir(os.path.join(cache_root, "__pycache__"))
                    if n.startswith(gone.module)]
    assert cache.prune(cap).removed == 0   # under the cap now
    # the default cap is GRAPHC_CACHE_MAX_MB's
    os.environ["GRAPHC_CACHE_MAX_MB"] = str((made[2].size + 1) / (1 << 20))
    try:
        assert cache.prune().removed == 2
    finally:
        del os.environ["GRAPHC_CACHE_MAX_MB"]
    assert names(cache_root) == {made[2].module}


def test_prune_keeps_entries_this_process_uses_and_recent_ones(cache_root) -> None:
    old = make_entry(cache_root, 1, 500, 9000)
    written, _ = cache.write_module("graphc_kernel", "WRITTEN = 1\n")   # this process's
    loaded = make_entry(cache_root, 2, 500, 8000)
    cache.load_module(loaded.module, loaded.path)
    recent = make_entry(cache_root, 3, 500, 10)   # another process's, just now
    pycache = os.path.join(cache_root, "__pycache__")
    os.utime(os.path.join(pycache, written + ".used"), (1, 1))   # as if long unused
    os.utime(os.path.join(pycache, loaded.module + ".used"), (1, 1))
    report = cache.prune(0)
    assert (report.removed, report.kept_in_use, report.kept_recent) == (1, 2, 1)
    assert names(cache_root) == {written, loaded.module, recent.module}
    assert old.module not in names(cache_root)
    assert "kept 2 in use by this process and 1 used in the last 5 minutes" in str(report)
    sys.modules.pop(loaded.module, None)


def test_prune_tolerates_files_removed_by_another_process(cache_root, monkeypatch) -> None:
    entries = [make_entry(cache_root, n, 800, 5000 - n) for n in range(4)]
    scanned = cache.list_entries(cache_root)
    for path in entries[0].files + entries[1].files[:2]:   # another prune got there first
        os.remove(path)
    monkeypatch.setattr(cache, "list_entries", lambda directory=None: scanned)
    report = cache.prune(0)
    assert report.removed == 4
    monkeypatch.undo()
    assert cache.list_entries(cache_root) == []


def test_maybe_prune_scans_only_when_the_cap_may_be_exceeded(cache_root, monkeypatch) -> None:
    for n in range(6):
        make_entry(cache_root, n, 1000, 5000 - n)
    total = sum(e.size for e in cache.list_entries(cache_root))
    monkeypatch.setenv("GRAPHC_CACHE_MAX_MB", repr(4000 / (1 << 20)))   # a 4000-byte cap
    first = cache.maybe_prune()          # no record of a scan: scans, prunes to 90% of the cap
    assert first is not None and first.bytes == total and first.removed == 3
    assert first.remaining_bytes <= 3600
    assert cache.maybe_prune() is None   # nothing written since: nothing to do
    cache._reset_process_state()
    assert cache.maybe_prune() is None   # a new process: the recorded scan says all is well
    cache.write_module("graphc_kernel", "NEW = " + "1" * 100 + "\n")   # + ~40x its size
    second = cache.maybe_prune()
    assert second is not None and second.removed == 0   # scanned: under the cap after all
    assert cache.maybe_prune() is None
    monkeypatch.setenv("GRAPHC_CACHE_MAX_MB", "0")
    cache.write_module("graphc_kernel", "MORE = 2\n")
    assert cache.maybe_prune() is None   # no cap


# -- graphc cache -----------------------------------------------------------------------------

def test_graphc_cache_info_prune_and_clear(cache_root, capsys) -> None:
    assert cli.main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert cache_root in out and "does not exist" in out and "cap 2048 MB" in out
    made = [make_entry(cache_root, n, 2000, 4000 - 1000 * n) for n in range(3)]
    foreign = [os.path.join(cache_root, "notes.txt"),
               os.path.join(cache_root, "__pycache__", "mine.cpython-311.pyc")]
    for path in foreign:
        open(path, "w").close()
    assert cli.main(["cache"]) == 0   # info by default
    out = capsys.readouterr().out
    total = sum(e.size for e in made)
    assert "entries:   3" in out and f"size:      {total / (1 << 20):.1f} MB" in out
    oldest = time.strftime("%Y-%m-%d %H:%M", time.localtime(made[0].last_use))
    assert f"oldest {oldest}" in out
    assert cli.main(["cache", "prune", "--max-mb", str(2 * made[2].size / (1 << 20))]) == 0
    out = capsys.readouterr().out
    assert "removed 1 of 3 entries" in out
    assert names(cache_root) == {made[1].module, made[2].module}
    assert cli.main(["cache", "clear"]) == 0
    assert "removed 2 entries" in capsys.readouterr().out
    assert cache.list_entries(cache_root) == []
    assert all(os.path.exists(p) for p in foreign)   # not graphc's: left alone
    assert cli.main(["cache", "prune", "--max-mb", "-1"]) == 1
    assert "--max-mb" in capsys.readouterr().err


def test_graphc_help_describes_the_cache_commands(capsys) -> None:
    text = cli.build_parser().format_help()
    assert "cache" in text and "GRAPHC_CACHE_MAX_MB" in text
    with pytest.raises(SystemExit) as exit_:
        cli.main(["cache", "prune", "--help"])
    assert exit_.value.code == 0
    assert "--max-mb" in capsys.readouterr().out


# -- processes compiling at once, unwritable directories --------------------------------------

MODEL = """
import graphc as gc
g = gc.Graph('m', seed=0)
x = g.input('x', (None, 4))
y = g.input('y', (None,), dtype='int64')
loss = gc.mean(gc.softmax_cross_entropy(
    gc.nn.linear(gc.relu(gc.nn.linear(x, 8, name='a')), 3, name='b'), y))
"""

RUN = "step = gc.compile(loss, optimizer=gc.optim.Adam(lr=1e-3))\n" \
      "value = step(x=np.ones((2, 4), np.float32), y=np.zeros(2, np.int64))\n"

TOGETHER = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np
    """) + MODEL + textwrap.dedent("""
    # both processes start compiling at the same moment
    barrier = sys.argv[1]
    open(os.path.join(barrier, sys.argv[2]), "w").close()
    deadline = time.time() + 120
    while len(os.listdir(barrier)) < 2:
        if time.time() > deadline:
            sys.exit("the other process did not start")
        time.sleep(0.002)
    """) + RUN + textwrap.dedent("""
    r = step.compile_report
    print(json.dumps({"loss": float(value), "written": r.cache_written,
                      "reused": r.cache_reused, "repaired": r.cache_repaired}))
    """)


def test_two_processes_compiling_one_model_into_a_fresh_cache(cache_root, tmp_path) -> None:
    script, barrier = tmp_path / "together.py", tmp_path / "barrier"
    script.write_text(TOGETHER)
    barrier.mkdir()
    env = dict(os.environ, GRAPHC_CACHE_DIR=cache_root)
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    procs = [subprocess.Popen([sys.executable, str(script), str(barrier), tag], env=env,
                              cwd=str(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    done = [proc.communicate(timeout=240) for proc in procs]
    for proc, (_, err) in zip(procs, done):
        assert proc.returncode == 0, err[-3000:]
    a, b = (json.loads(out.strip().splitlines()[-1]) for out, _ in done)
    assert a["loss"] == b["loss"] and np.isfinite(a["loss"])
    assert a["repaired"] == b["repaired"] == 0
    assert a["written"] + a["reused"] == b["written"] + b["reused"] > 0
    entries = cache.list_entries(cache_root)
    programs = [e for e in entries if e.module.startswith("graphc_program_")]
    assert len(programs) == 1 and not programs[0].source   # both wrote the same program
    for blob in programs[0].files:
        if blob.endswith(".pkl"):
            with open(blob, "rb") as f:
                assert pickle.loads(unseal(f.read())).code.instructions
    for entry in entries:   # every source whole, as its name says
        if not entry.source:
            continue
        with open(entry.path) as f:
            header, _, source = f.read().partition("\n")
        assert header == "# graphc-source-sha256: " + cache.source_digest(source)
        assert entry.module.endswith(cache.source_digest(source)[:20])
    assert not [n for n in os.listdir(cache_root) if n.startswith(".tmp-")]


def _under_a_file(root: str, monkeypatch) -> str:
    os.makedirs(os.path.dirname(root), exist_ok=True)
    with open(root + "-file", "w") as f:
        f.write("not a directory\n")
    configured = os.path.join(root + "-file", "cache")
    monkeypatch.setenv("GRAPHC_CACHE_DIR", configured)
    return configured


def _read_only(root: str, monkeypatch) -> str:
    # tests run as root, which writes anywhere: the permission check is what says no
    real_access = os.access
    monkeypatch.setattr(cache.os, "access", lambda path, mode, **kw: False
                        if str(path).startswith(root) else real_access(path, mode, **kw))
    return root


def _full(root: str, monkeypatch) -> str:
    real_statvfs = os.statvfs
    nearly_full = os.statvfs_result((4096, 4096, 10**6, 3, 3, 1000, 10, 10, 0, 255))
    monkeypatch.setattr(cache.os, "statvfs", lambda path: nearly_full
                        if str(path).startswith(root) else real_statvfs(path))
    return root


def _fills_while_writing(root: str, monkeypatch) -> str:
    real = cache._write_temp

    def write_temp(directory: str, text: str) -> str:
        if directory.startswith(root):
            raise OSError(errno.ENOSPC, "No space left on device", directory)
        return real(directory, text)

    monkeypatch.setattr(cache, "_write_temp", write_temp)
    return root


@pytest.mark.parametrize("unwritable", [_under_a_file, _read_only, _full, _fills_while_writing])
def test_an_unwritable_cache_directory_falls_back_with_one_warning(
        cache_root, monkeypatch, unwritable) -> None:
    configured = unwritable(cache_root, monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = [cache.write_module("graphc_kernel", f"VALUE = {k}\n")
                 for k in range(3)]
    messages = [str(w.message) for w in caught if issubclass(w.category, cache.CacheWarning)]
    assert len(messages) == 1, messages
    assert configured in messages[0] and "temporary directory" in messages[0]
    private = cache.writable_cache_dir()
    assert private != configured and os.path.isdir(private)
    assert all(os.path.dirname(path) == private for _, path in paths)
    module, path = paths[2]
    assert cache.load_module(module, path).VALUE == 2
    sys.modules.pop(module, None)
    assert cache.maybe_prune() is None


def test_a_read_only_cache_directory_still_compiles(cache_root, monkeypatch) -> None:
    import graphc as gc

    os.makedirs(cache_root)
    _read_only(cache_root, monkeypatch)
    namespace = {"gc": gc, "np": np}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(MODEL + RUN, namespace)
    messages = [str(w.message) for w in caught if issubclass(w.category, cache.CacheWarning)]
    assert len(messages) == 1, messages
    assert f"cannot write its kernel cache directory {cache_root}" in messages[0]
    assert np.isfinite(namespace["value"])
    assert os.listdir(cache_root) == []   # nothing written where it may not be
    private = cache.writable_cache_dir()
    assert cache.list_entries(private)
    # the program cache goes to the same private directory, and is used from there
    assert namespace["step"].compile_report.program_cache == "saved to the program cache"
    assert [e for e in cache.list_entries(private) if e.module.startswith("graphc_program_")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(MODEL + RUN, namespace)
    assert not [w for w in caught if issubclass(w.category, cache.CacheWarning)]
    assert namespace["step"].compile_report.program_cache.startswith("loaded")
    assert os.listdir(cache_root) == []
