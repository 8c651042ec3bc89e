"""Bytes both ends can regenerate from a seed, so a receiver checks a transfer by its hash."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator


def chunks(seed: str, size: int, chunk: int) -> Iterator[bytes]:
    """``size`` pseudo-random bytes in pieces of ``chunk`` (the last one shorter)."""
    rng = random.Random(seed)
    left = size
    while left > 0:
        piece = min(chunk, left)
        yield rng.randbytes(piece)
        left -= piece


def sha256(pieces: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
    return digest.hexdigest()
