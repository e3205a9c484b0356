"""Errors raised by graphc, and where in the user's code they come from."""

from __future__ import annotations

import functools
import os
import sys

from graphc._library import library_folder

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_KERNELS_DIR = library_folder()


#: What to do about an operand of run-time size fed 1 that broadcasts (autodiff's and the
#: compiled targets' checks).
RUN_TIME_BROADCAST_ADVICE = ("declare that axis as 1 where the value comes from, or feed "
                             "the same size to the inputs that meet there")


class GraphError(ValueError):
    """A graph cannot be built or run as declared (shape, dtype, name or feed mismatch)."""


class FeedError(GraphError):
    """A feed given to `evaluate` or a compiled function is missing, unknown or malformed."""


class IndexRangeError(GraphError, IndexError):
    """An index outside its range at run time: [-size, size) for indexing by a Value (a
    negative index counts from the end, as in numpy), [0, size) for an embedding id or a
    class label (a negative one raises, as in PyTorch)."""


class NonFiniteError(FloatingPointError):
    """A training step produced NaN or Inf; parameters were left as they were."""


@functools.lru_cache(maxsize=1024)
def _is_internal(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_PACKAGE_DIR + os.sep) or path.startswith(_KERNELS_DIR + os.sep)


def user_location() -> str:
    """`file:line` of the innermost stack frame outside graphc itself ('<unknown>' if none)."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not _is_internal(filename) and not filename.startswith("<frozen"):
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


def short_location(where: str) -> str:
    """`where` with the directory stripped, for compact listings."""
    path, _, line = where.rpartition(":")
    return f"{os.path.basename(path)}:{line}" if path else where
