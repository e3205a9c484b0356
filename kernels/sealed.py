"""Bytes kept on disk with their own hash, so that a truncated or damaged cache file is
recognised before anything is read from it (unpickling junk can give a wrong but valid
object, and loading damaged machine code can compute wrong results or crash)."""

from __future__ import annotations

import hashlib

MAGIC = b"graphc-sealed-1\n"
_DIGEST_BYTES = 32


def seal(data: bytes) -> bytes:
    """`data` preceded by a tag and its sha256."""
    return MAGIC + hashlib.sha256(data).digest() + data


def unseal(sealed: bytes) -> bytes | None:
    """The data `seal` wrapped, or None if `sealed` is not whole (truncated, damaged, or
    not written by `seal`)."""
    head = len(MAGIC) + _DIGEST_BYTES
    if len(sealed) < head or not sealed.startswith(MAGIC):
        return None
    data = sealed[head:]
    if hashlib.sha256(data).digest() != sealed[len(MAGIC):head]:
        return None
    return data
