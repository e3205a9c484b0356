"""Matrix products whose batch axes broadcast against 1 on the CUDA target (simulator):
the cases of tests/test_matmul_broadcast.py, compiled with target="cuda"."""

from __future__ import annotations

import pytest

from tests.test_matmul_broadcast import run_case, run_runtime_batch_of_1


@pytest.mark.parametrize("known", [True, False], ids=["static_batch", "runtime_batch"])
@pytest.mark.parametrize("case", ["B_by_1", "1_by_B", "heads_1_by_B", "cross_B1_by_1H"])
def test_batch_broadcast_against_1_matches_numpy(case: str, known: bool) -> None:
    run_case(case, "float64", known, False, target="cuda")


@pytest.mark.parametrize("case", ["B_by_1", "B1_by_BH"])
def test_batch_broadcast_of_a_transposed_view_matches_numpy(case: str) -> None:
    run_case(case, "float32", False, True, target="cuda")


@pytest.mark.parametrize("rank", [3, 4])
def test_a_runtime_batch_fed_as_1_broadcasts_in_the_product(rank: int) -> None:
    run_runtime_batch_of_1(rank, True, target="cuda")
