"""Matrix products whose batch axes broadcast against 1, with batch sizes known when the
graph is built or only when it runs (fed): compiled (serial and batch-sharded) against the
interpreter and np.matmul, forward and gradients. (The CUDA target:
tests/cuda_sim/test_sim_matmul_broadcast.py.)

An operand whose batch size is known only at run time and is fed as 1 broadcasts like
numpy's; its gradient is the product's summed over that axis only when the graph knows the
axis broadcasts (a static 1 or a static size against which it broadcasts): those gradients
are compared below with np.matmul's, summed by hand.

Tolerances: float64 1e-12 (BLAS and numpy sum 4-term inner products in other orders),
float32 2e-5 relative / 1e-5 absolute, as tests/test_compile_ops.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc

B, H, M, K, N = 3, 2, 2, 4, 5
TOL = {"float32": {"rtol": 2e-5, "atol": 1e-5}, "float64": {"rtol": 1e-12, "atol": 1e-12}}

# (a's shape, b's shape); B is the batch size a feed brings
CASES = {
    "B_by_1": ((B, M, K), (1, K, N)),
    "1_by_B": ((1, M, K), (B, K, N)),
    "B_by_matrix": ((B, M, K), (K, N)),
    "matrix_by_B": ((M, K), (B, K, N)),
    "heads_B_by_1": ((B, H, M, K), (1, H, K, N)),
    "heads_1_by_B": ((1, H, M, K), (B, H, K, N)),
    "cross_B1_by_1H": ((B, 1, M, K), (1, H, K, N)),
    "B1_by_BH": ((B, 1, M, K), (B, H, K, N)),
    "BH_by_11": ((B, H, M, K), (1, 1, K, N)),
    "BH_by_3d_1": ((B, H, M, K), (1, K, N)),
}


def _static(shape: tuple, known: bool) -> tuple:
    """The declared shape: B as a run-time size unless `known`."""
    return shape if known else tuple(None if d == B else d for d in shape)


def _expected_gradients(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> tuple:
    """d sum(w * (a @ b)) / da and / db, summed over the axes a and b were broadcast on."""
    da_full = w @ np.swapaxes(np.broadcast_to(b, w.shape[:-2] + b.shape[-2:]), -1, -2)
    db_full = np.swapaxes(np.broadcast_to(a, w.shape[:-2] + a.shape[-2:]), -1, -2) @ w
    return _sum_to(da_full, a.shape), _sum_to(db_full, b.shape)


def _sum_to(g: np.ndarray, shape: tuple) -> np.ndarray:
    g = g.sum(axis=tuple(range(g.ndim - len(shape))))
    stretched = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    return g.sum(axis=stretched, keepdims=True)


def run_case(case: str, dtype: str, known: bool, transposed: bool, target: str = "cpu"
             ) -> None:
    """Case `case` compiled for `target` and interpreted, against np.matmul."""
    sa, sb = CASES[case]
    rng = np.random.default_rng(7)
    a64, b64 = rng.standard_normal(sa), rng.standard_normal(sb)
    out_shape = np.broadcast_shapes(sa[:-2], sb[:-2]) + (M, N)
    w64 = rng.standard_normal(out_shape)
    g = gc.Graph(f"mm_{case}", dtype=dtype)
    # transposed: b is fed as (..., n, k) and swapped in the graph (a strided view)
    fed_b = np.ascontiguousarray(np.swapaxes(b64, -1, -2)) if transposed else b64
    a = g.input("a", _static(sa, known))
    b = g.input("b", _static(fed_b.shape, known))
    w = g.input("w", _static(out_shape, known))
    out = a @ (gc.swapaxes(b, -1, -2) if transposed else b)
    ga, gb = gc.grad(gc.sum(out * w), [a, b])
    feeds = {"a": a64.astype(dtype), "b": fed_b.astype(dtype), "w": w64.astype(dtype)}
    want = np.matmul(a64, b64)
    want_da, want_db = _expected_gradients(a64, b64, w64)
    if transposed:
        want_db = np.swapaxes(want_db, -1, -2)
    interpreted = gc.evaluate([out, ga, gb], feeds)
    compiled = gc.compile([out, ga, gb], target=target)(**feeds)
    for what, got_i, got_c, expected in zip(("a @ b", "d/da", "d/db"), interpreted, compiled,
                                            (want, want_da, want_db)):
        for how, got in (("interpreted", got_i), ("compiled", got_c)):
            assert got.shape == expected.shape, (what, how)
            np.testing.assert_allclose(got, expected, **TOL[dtype], err_msg=f"{what} {how}")


@pytest.mark.parametrize("known", [True, False], ids=["static_batch", "runtime_batch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(CASES))
def test_batch_broadcast_against_1_matches_numpy(case: str, dtype: str, known: bool,
                                                 monkeypatch) -> None:
    monkeypatch.setenv("GRAPHC_SHARDS", "1")
    run_case(case, dtype, known, False)


@pytest.mark.parametrize("shards", ["1", "2"])
@pytest.mark.parametrize("case", ["B_by_1", "1_by_B", "heads_1_by_B", "B1_by_BH"])
def test_batch_broadcast_of_a_transposed_view_matches_numpy(case: str, shards: str,
                                                            monkeypatch) -> None:
    monkeypatch.setenv("GRAPHC_SHARDS", shards)
    run_case(case, "float64", False, True)


@pytest.mark.parametrize("shards", ["1", "2"])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("rank", [3, 4])
def test_a_runtime_batch_fed_as_1_broadcasts_in_the_product(rank: int, transposed: bool,
                                                            shards: str, monkeypatch) -> None:
    """Both batch sizes known only at run time, one fed as 1: the product broadcasts it
    (it used to read past the end of the operand fed as 1), and a parameter after the
    product gets its gradient."""
    monkeypatch.setenv("GRAPHC_SHARDS", shards)
    run_runtime_batch_of_1(rank, transposed)


def run_runtime_batch_of_1(rank: int, transposed: bool, target: str = "cpu") -> None:
    """Two operands of run-time batch sizes, each fed as 1 in turn, compiled for
    `target` and interpreted, against numpy."""
    lead = (None,) * (rank - 2)
    g = gc.Graph("mm_runtime_1", dtype="float64")
    a = g.input("a", lead + (M, K))
    b = g.input("b", lead + ((N, K) if transposed else (K, N)))
    w = g.param("w", np.linspace(-1.0, 1.0, N * N).reshape(N, N))
    out = (a @ (gc.swapaxes(b, -1, -2) if transposed else b)) @ w
    (gw,) = gc.grad(gc.sum(out * out), [w])
    rng = np.random.default_rng(3)
    batch = (B, H)[: rank - 2]
    for fed_a, fed_b in ((batch, (1,) * (rank - 2)), ((1,) * (rank - 2), batch)):
        feeds = {"a": rng.standard_normal(fed_a + (M, K)),
                 "b": rng.standard_normal(fed_b + ((N, K) if transposed else (K, N)))}
        product = np.matmul(feeds["a"], np.swapaxes(feeds["b"], -1, -2) if transposed
                            else feeds["b"])
        want = product @ g.param_values["w"]
        # d sum(out^2) / dw = sum over the batch of product^T (2 out)
        want_gw = (np.swapaxes(product, -1, -2) @ (2.0 * want)).reshape(-1, N, N).sum(axis=0)
        compiled = gc.compile([out, gw], target=target)(**feeds)
        for got, got_gw in (gc.evaluate([out, gw], feeds), compiled):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(got_gw, want_gw, rtol=1e-12, atol=1e-12)
