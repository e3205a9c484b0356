"""Checkpoints under faults: a writer killed at every stage of a save, truncated and damaged
files, a full disk, two processes saving to one path at once, stale temporary files."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import graphc.checkpoint as ckpt
from tests.test_checkpoint import ROOT, build, train, values


def saved_values(path) -> dict[str, bytes]:
    """The arrays of a checkpoint file as `values` gives them for a step."""
    _, params, state = ckpt.read(path)
    return {k: v.tobytes() for k, v in {**params, **state}.items()}


def temp_files(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


KILLED_SAVE = """
import sys
from tests.test_checkpoint import build, train
m = build()
m.step.load(sys.argv[1], strict=True)
train(m.step, 1, start=100)
m.step.save(sys.argv[1])
print("not killed", flush=True)
"""


@pytest.mark.parametrize("stage", ckpt.KILL_STAGES)
def test_a_save_killed_at_each_stage_leaves_one_complete_checkpoint(tmp_path, stage) -> None:
    """The writer SIGKILLs itself at `stage`: before the rename the previous checkpoint is
    there bitwise, after it the new one; a killed writer's temporary file is never named
    like a checkpoint, and the next save removes it."""
    path = tmp_path / "model.npz"
    m = build()
    train(m.step, 3)
    m.step.save(path)
    before = path.read_bytes()
    expected_new = build()
    expected_new.step.load(path)
    train(expected_new.step, 1, start=100)
    env = dict(os.environ, **{ckpt.KILL_AT_ENV: stage})
    done = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stdout, done.stderr)
    assert "not killed" not in done.stdout
    if stage == "after-rename":
        assert saved_values(path) == values(expected_new.step)
        assert ckpt.read(path)[0]["step_state"] == {"step": 4}
        assert temp_files(tmp_path) == []
    else:
        assert path.read_bytes() == before
        assert saved_values(path) == values(m.step)
        left = temp_files(tmp_path)
        assert len(left) == 1 and left[0].startswith(".model.npz.")
    assert [n for n in os.listdir(tmp_path) if n.endswith(".npz")] == ["model.npz"]
    m.step.save(path)   # another writer: removes the dead one's temporary file
    assert os.listdir(tmp_path) == ["model.npz"]
    assert saved_values(path) == values(m.step)


def test_stale_temporary_files_are_removed_and_live_ones_kept(trained_path) -> None:
    directory = os.path.dirname(trained_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    host = ckpt._HOST
    names = {
        "dead": f".model.npz.{host}.{int(dead.stdout)}.abcd1234.tmp",
        "live": f".model.npz.{host}.{os.getpid()}.efgh5678.tmp",
        "remote": ".model.npz.other-host.123.ijkl9012.tmp",
        "remote_old": ".model.npz.other-host.456.mnop3456.tmp",
        "other_target": f".other.npz.{host}.{int(dead.stdout)}.qrst7890.tmp",
    }
    for name in names.values():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(b"PK\x03\x04 half a checkpoint")
    old = time.time() - ckpt.STALE_TEMP_S - 60
    os.utime(os.path.join(directory, names["remote_old"]), (old, old))
    removed = ckpt.remove_stale_temps(trained_path)
    assert sorted(os.path.basename(p) for p in removed) == \
        sorted([names["dead"], names["remote_old"]])
    assert temp_files(directory) == sorted([names["live"], names["remote"],
                                            names["other_target"]])


@pytest.fixture
def trained_path(tmp_path) -> str:
    m = build()
    train(m.step, 2)
    path = tmp_path / "model.npz"
    m.step.save(path)
    return str(path)


def test_truncated_checkpoints_raise_naming_the_file(trained_path, tmp_path) -> None:
    data = open(trained_path, "rb").read()
    m = build()
    before = values(m.step)
    cut = tmp_path / "cut.npz"
    for length in (0, 1, 4, 30, 100, len(data) // 3, len(data) // 2, len(data) - 200,
                   len(data) - 22, len(data) - 1):
        cut.write_bytes(data[:length])
        with pytest.raises(ckpt.CheckpointError, match="truncated or damaged") as info:
            m.step.load(cut)
        assert str(cut) in str(info.value), length
        assert values(m.step) == before and m.step.state["step"] == 0


def test_flipped_bytes_raise_or_load_the_same_values(trained_path, tmp_path) -> None:
    """Every 3rd byte of the file flipped in turn (headers, the metadata, array data): the
    load raises CheckpointError naming the file, or (a byte no reader looks at: a time
    stamp, an unused header field) gives exactly the checkpoint's values and metadata."""
    data = open(trained_path, "rb").read()
    reference = ckpt.read(trained_path)
    flipped = tmp_path / "flipped.npz"
    raised = 0
    for at in range(0, len(data), 3):
        damaged = bytearray(data)
        damaged[at] ^= 0xA5
        flipped.write_bytes(bytes(damaged))
        try:
            meta, params, state = ckpt.read(flipped)
        except ckpt.CheckpointError as err:
            assert str(flipped) in str(err), at
            raised += 1
            continue
        assert meta == reference[0], at
        for got, want in ((params, reference[1]), (state, reference[2])):
            assert got.keys() == want.keys(), at
            for name in want:
                assert got[name].dtype == want[name].dtype, (at, name)
                assert got[name].tobytes() == want[name].tobytes(), (at, name)
    assert raised > 0.8 * len(range(0, len(data), 3))


def test_changed_array_bytes_in_a_valid_archive_fail_their_checksum(trained_path,
                                                                    tmp_path) -> None:
    """An archive whose zip CRCs are right but whose array bytes are not the ones saved
    (rewritten by another tool, or damaged before they were zipped) is refused."""
    with np.load(trained_path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["param/fc1.w"] = arrays["param/fc1.w"].copy()
    arrays["param/fc1.w"].view(np.uint32)[3] ^= 1   # one bit of one weight
    np.savez(tmp_path / "changed.npz", **arrays)
    with pytest.raises(ckpt.CheckpointError,
                       match=r"changed\.npz is damaged: the bytes of param/fc1\.w do not "
                             "match their checksum; nothing was loaded"):
        build().step.load(tmp_path / "changed.npz")
    del arrays["state/fc1.w.exp_avg"]
    np.savez(tmp_path / "missing.npz", **arrays)
    with pytest.raises(ckpt.CheckpointError, match=r"state/fc1\.w\.exp_avg is missing"):
        ckpt.read(tmp_path / "missing.npz")


def test_checkpoints_without_checksums_still_load(trained_path, tmp_path) -> None:
    with np.load(trained_path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(arrays["__graphc__"].item())
    del meta["crc32"]
    arrays["__graphc__"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "older.npz", **arrays)
    assert saved_values(tmp_path / "older.npz") == saved_values(trained_path)


def _fills_up_after(written_bytes: int):
    """A `_write_npz` that writes `written_bytes` of the archive, then finds the disk full."""
    def write(f, arrays) -> None:
        f.write(b"\0" * written_bytes)
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


@pytest.mark.parametrize("where", ["data", "fsync", "temp"])
def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(trained_path, monkeypatch,
                                                               where) -> None:
    directory = os.path.dirname(trained_path)
    before = open(trained_path, "rb").read()
    m = build()
    train(m.step, 1, start=70)
    full = OSError(errno.ENOSPC, "No space left on device")
    if where == "data":
        monkeypatch.setattr(ckpt, "_write_npz", _fills_up_after(1000))
    elif where == "fsync":
        def fsync(fd):
            raise full
        monkeypatch.setattr(ckpt.os, "fsync", fsync)
    else:
        def mkstemp(*args, **kwargs):
            raise full
        monkeypatch.setattr(ckpt.tempfile, "mkstemp", mkstemp)
    with pytest.raises(OSError) as info:
        m.step.save(trained_path)
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC and info.value.filename == trained_path
    message = str(info.value)
    assert "disk full" in message and f"writing checkpoint {trained_path}" in message
    assert "previous checkpoint" in message and "unchanged" in message
    assert open(trained_path, "rb").read() == before
    assert os.listdir(directory) == ["model.npz"]


TWO_WRITERS = """
import os, sys, time
import numpy as np
from tests.test_checkpoint import build, batches
path, barrier, tag, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
m = build(hidden=64, seed=seed)
open(os.path.join(barrier, tag), "w").close()
deadline = time.time() + 120
while len(os.listdir(barrier)) < 2:
    if time.time() > deadline:
        sys.exit("the other writer did not start")
    time.sleep(0.001)
for k, (xb, yb) in enumerate(batches(120)):
    m.step(x=xb, y=yb)
    if k % 2 == 1:
        m.step.save(path)
np.savez(sys.argv[5], **{k: v for k, v in {**m.step.params,
                                           **m.step.optimizer_state()}.items()})
"""


def test_two_processes_saving_to_one_path(tmp_path) -> None:
    """Two training processes save every other step to the same file: both finish, every
    read in between gives a complete checkpoint, and the file left is the last save of one
    of them (each one's final values)."""
    path, barrier = tmp_path / "shared.npz", tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", TWO_WRITERS, str(path), str(barrier),
                               tag, str(seed), str(tmp_path / f"final-{tag}.npz")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for tag, seed in (("a", 1), ("b", 2))]
    reads = 0
    try:
        while any(p.poll() is None for p in procs):
            if path.exists():
                meta, params, _ = ckpt.read(path)   # never half a file
                assert meta["graph"] == "ckpt_model" and params["fc1.w"].shape == (5, 64)
                reads += 1
            time.sleep(0.005)
        outcomes = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for proc, (_, err) in zip(procs, outcomes):
        assert proc.returncode == 0, err[-3000:]
    assert reads > 0
    finals = []
    for tag in ("a", "b"):
        with np.load(tmp_path / f"final-{tag}.npz") as f:
            finals.append({k: f[k].tobytes() for k in f.files})
    assert finals[0] != finals[1]
    assert saved_values(path) in finals
    assert ckpt.read(path)[0]["step_state"] == {"step": 120}
    assert sorted(os.listdir(tmp_path)) == ["barrier", "final-a.npz", "final-b.npz",
                                            "shared.npz"]
