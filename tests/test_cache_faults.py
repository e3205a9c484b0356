"""Damaged cache files: kernel sources, kept machine code, program-cache entries and the
record of the cache's size, truncated or with a byte flipped, are rebuilt (with at most one
warning), never a crash or a wrong result. Each compile runs in a new process: a process
keeps what it has loaded, so only a new one reads the damaged files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from graphc.kernels.sealed import MAGIC, seal, unseal

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN = """
import hashlib, json, warnings
import numpy as np
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import graphc as gc
    g = gc.Graph("cache_faults", seed=0)
    x = g.input("x", (None, 6))
    y = g.input("y", (None,), dtype="int64")
    h = gc.relu(gc.nn.linear(x, 16, name="a"))
    loss = gc.mean(gc.softmax_cross_entropy(gc.nn.linear(h, 3, name="b"), y))
    step = gc.compile(loss, optimizer=gc.optim.Adam(1e-2))
    predict = gc.compile([h])
    rng = np.random.default_rng(0)
    losses = [step(x=rng.standard_normal((9, 6)).astype(np.float32),
                   y=rng.integers(0, 3, 9)) for _ in range(3)]
    out = predict(x=np.linspace(-1, 1, 12, dtype=np.float32).reshape(2, 6))[0]
digest = hashlib.sha256()
for name in sorted(step.params):
    digest.update(step.params[name].tobytes())
r = step.compile_report
print(json.dumps({"losses": [repr(v) for v in losses], "params": digest.hexdigest(),
                  "predict": out.tobytes().hex(), "program": r.program_cache,
                  "repaired": r.cache_repaired + predict.compile_report.cache_repaired,
                  "warnings": [str(w.message) for w in caught]}))
"""


def run_train(cache_root: str, shards: int = 1) -> dict:
    env = dict(os.environ, GRAPHC_CACHE_DIR=cache_root, GRAPHC_COMPILE_WORKERS="0",
               GRAPHC_SHARDS=str(shards))
    env.pop("NUMBA_CACHE_DIR", None)   # Numba's files of a sharded step beside its source
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", TRAIN], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> tuple[str, dict]:
    """A cache directory holding everything the model needs, and the model's results."""
    root = str(tmp_path_factory.mktemp("cache-faults") / "cache")
    first = run_train(root)
    again = run_train(root)
    assert first["program"].startswith("saved") and again["program"].startswith("loaded")
    assert first["losses"] == again["losses"] and again["repaired"] == 0
    return root, again


def files_of(root: str, kind: str) -> list[str]:
    pycache = os.path.join(root, "__pycache__")
    if kind == "source":
        return [os.path.join(root, n) for n in os.listdir(root)
                if n.startswith("graphc_kernel_") and n.endswith(".py")]
    if kind == "usage":
        return [os.path.join(root, ".graphc-usage.json")]
    suffix = {"machine code": ".obj", "program": ".pkl", "numba index": ".nbi",
              "numba data": ".nbc"}[kind]
    return [os.path.join(pycache, n) for n in os.listdir(pycache) if n.endswith(suffix)]


def damage(path: str, how: str) -> None:
    with open(path, "rb") as f:
        data = f.read()
    if how == "empty":
        data = b""
    elif how == "truncated":
        data = data[:len(data) // 2]
    elif how == "flipped":   # one byte in the middle: inside the pickle or machine code
        middle = len(data) // 2
        data = data[:middle] + bytes([data[middle] ^ 0x20]) + data[middle + 1:]
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("kind", ["source", "machine code", "program", "usage"])
@pytest.mark.parametrize("how", ["empty", "truncated", "flipped"])
def test_damaged_cache_files_are_rebuilt(warm, kind, how) -> None:
    root, reference = warm
    paths = files_of(root, kind)
    assert paths, kind
    for path in paths:
        damage(path, how)
    damaged = run_train(root)
    for key in ("losses", "params", "predict"):
        assert damaged[key] == reference[key], (kind, how, key)
    assert len(damaged["warnings"]) <= 1, damaged["warnings"]
    if kind in ("source", "machine code"):
        assert damaged["repaired"] > 0
    if kind == "program":
        assert damaged["program"].startswith("saved")   # compiled again, kept again
    after = run_train(root)   # everything whole again: nothing to repair
    assert after["repaired"] == 0 and after["program"].startswith("loaded")
    assert after["losses"] == reference["losses"]


@pytest.fixture(scope="module")
def warm_sharded(tmp_path_factory) -> tuple[str, dict]:
    """A cache directory holding a batch-sharded step, and its results."""
    root = str(tmp_path_factory.mktemp("cache-faults-sharded") / "cache")
    return root, run_train(root, shards=2)


@pytest.mark.parametrize("kind", ["numba index", "numba data"])
def test_damaged_numba_cache_files_of_a_sharded_step_are_rebuilt(warm_sharded, kind) -> None:
    """A batch-sharded step is one njit function kept by Numba's own cache (index and data
    files, unpickled by Numba): truncated ones are dropped and compiled again."""
    root, reference = warm_sharded
    paths = files_of(root, kind)
    assert paths, kind
    for path in paths:
        damage(path, "truncated")
    damaged = run_train(root, shards=2)
    for key in ("losses", "params", "predict"):
        assert damaged[key] == reference[key], (kind, key)
    assert damaged["repaired"] > 0 and len(damaged["warnings"]) <= 1, damaged


def test_sealed_bytes_detect_truncation_and_every_flipped_byte() -> None:
    data = bytes(range(256)) * 4
    sealed = seal(data)
    assert unseal(sealed) == data and unseal(seal(b"")) == b""
    for length in range(0, len(sealed), 37):
        assert unseal(sealed[:length]) is None, length
    for at in range(len(sealed)):
        flipped = bytearray(sealed)
        flipped[at] ^= 0x01
        assert unseal(bytes(flipped)) is None, at
    assert unseal(data) is None and unseal(MAGIC) is None   # unsealed, or only the tag
