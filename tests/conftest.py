"""Test-session setup: every compiled kernel goes to one temporary cache directory.

`GRAPHC_CACHE_DIR` is set before any test runs (so nothing is written to the user's real
cache, and programs compiled by several tests share kernels within the session) and
restored afterwards. Subprocesses started by tests inherit it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def graphc_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's kernel cache directory (GRAPHC_CACHE_DIR)."""
    path = str(tmp_path_factory.mktemp("graphc-cache"))
    previous = os.environ.get("GRAPHC_CACHE_DIR")
    os.environ["GRAPHC_CACHE_DIR"] = path
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop("GRAPHC_CACHE_DIR", None)
        else:
            os.environ["GRAPHC_CACHE_DIR"] = previous
