"""The finiteness check a compiled step runs on gradients before it updates parameters."""

from __future__ import annotations

import numpy as np
import pytest
from graphc.kernels.cpu.checks import all_finite


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(0,), (1,), (37,), (5, 7), (2, 3, 4)])
def test_finite_arrays_pass(dtype: type, shape: tuple[int, ...]) -> None:
    info = np.finfo(dtype)
    a = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    if a.size:
        flat = a.reshape(-1)
        flat[0] = info.max
        flat[-1] = -info.max
        flat[len(flat) // 2] = info.smallest_subnormal
    assert all_finite(a)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_any_nonfinite_element_fails(dtype: type, bad: float) -> None:
    a = np.ones((6, 9), dtype)
    for i in range(a.size):  # every position, including the vector loop's remainder
        b = a.copy()
        b.reshape(-1)[i] = bad
        assert not all_finite(b), (i, bad)


def test_non_contiguous_views() -> None:
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    assert all_finite(a.T)
    assert all_finite(a[:, ::2])
    a[3, 4] = np.nan
    assert not all_finite(a.T)
    assert not all_finite(a[:, ::2])
    assert all_finite(a[:, 1::2][:, :2])
