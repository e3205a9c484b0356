"""Data: mini-batches, bundled datasets (no download) and a reader for MNIST IDX files."""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

_DATASETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "datasets")


class Split(NamedTuple):
    """A dataset split into training and test parts."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def batches(x: np.ndarray, y: np.ndarray | None = None, batch_size: int = 64,
            shuffle: bool = True, seed: int = 0, drop_last: bool = False, *,
            rank: int = 0, world: int = 1) -> Iterator[tuple[np.ndarray, ...]]:
    """Mini-batches `(xb, yb)` (or `(xb,)` without `y`) covering the data once.

    Shuffling uses its own generator seeded with `seed`, so the order is reproducible; the
    last batch is smaller unless `drop_last`.

    With `world` > 1, rank `rank`'s shard of the epoch: every rank draws the same shuffle
    and takes every `world`-th row of it from row `rank` on, then batches its rows. All
    ranks get the same number of batches of the same sizes (a rank waiting for a batch that
    another lacks would hang): like PyTorch's DistributedSampler, the shuffled order is
    padded with its first rows to a multiple of `world`, or cut to one with `drop_last`.
    Batch t of the `world` ranks together holds the rows of batch t of one process with
    `batch_size * world` (padding aside).
    """
    n = len(x)
    if y is not None and len(y) != n:
        raise ValueError(f"x has {n} rows but y has {len(y)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world) with world >= 1; got rank={rank}, "
                         f"world={world}")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    if world > 1:
        if drop_last:
            order = order[:n - n % world]
        elif n % world:
            order = np.concatenate([order, np.resize(order, world - n % world)])
        order = order[rank::world]
        n = len(order)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield (x[idx],) if y is None else (x[idx], y[idx])


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> Split:
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = round(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return Split(x[train], y[train], x[test], y[test])


def _load(name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(os.path.join(_DATASETS, f"{name}.npz")) as f:
        return f["data"], f["target"]


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Split:
    """8x8 handwritten digits (1797): float32 pixels scaled to [0, 1] (64 features), int64
    labels 0-9."""
    x, y = _load("digits")
    return _split(x.astype(np.float32) / 16.0, y.astype(np.int64), test_fraction, seed)


def _standardised(name: str, test_fraction: float, seed: int, target: type) -> Split:
    x, y = _load(name)
    split = _split(x, y, test_fraction, seed)
    mean, std = split.x_train.mean(axis=0), split.x_train.std(axis=0) + 1e-8
    return Split(((split.x_train - mean) / std).astype(np.float32), split.y_train.astype(target),
                 ((split.x_test - mean) / std).astype(np.float32), split.y_test.astype(target))


def load_iris(test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Iris (150 x 4), features standardised with training statistics, labels 0-2."""
    return _standardised("iris", test_fraction, seed, np.int64)


def load_breast_cancer(test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Breast cancer Wisconsin (569 x 30), standardised features, labels 0/1."""
    return _standardised("breast_cancer", test_fraction, seed, np.int64)


def load_diabetes(test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Diabetes regression (442 x 10), standardised features, float32 targets."""
    return _standardised("diabetes", test_fraction, seed, np.float32)


def read_idx(path: str) -> np.ndarray:
    """An array from an IDX file (the MNIST format), optionally gzip-compressed."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        header = f.read(4)
        if len(header) != 4 or header[:2] != b"\x00\x00":
            raise ValueError(f"{path} is not an IDX file (bad magic number)")
        dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
        if header[2] not in dtypes:
            raise ValueError(f"{path}: unknown IDX element type 0x{header[2]:02x}")
        ndim = header[3]
        shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        dtype = np.dtype(dtypes[header[2]])
        data = f.read()
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: expected {expected} bytes of data for shape {shape}, "
                         f"found {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
