"""Writing files the way secrets need: atomically, and born with their final mode."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import ConfigError


def write_bytes(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically and durably (a temp file beside it, synced, then
    a rename: readers see the old file or the new, never half), created with ``mode``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_file(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to ``path`` atomically (a temp file beside it, then a rename), created
    with ``mode``: a file with secrets is never readable by others, not even for a moment."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
