"""Process set-up shared by the daemon and the relay: event loop, malloc, logging."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# glibc mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, found once (find_library runs ldconfig); None elsewhere."""
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def tune_malloc() -> None:
    """Keep 128 KiB SSH packets off mmap: glibc's default threshold makes every such buffer an
    mmap/munmap pair (and its dynamic threshold never settles under this load), which costs
    more than the encryption. No-op off glibc."""
    libc = _libc()
    try:
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, 4 * 1024 * 1024)
            libc.mallopt(_M_TRIM_THRESHOLD, 16 * 1024 * 1024)
    except AttributeError:
        pass


def settle() -> None:
    """Start-up is over: collect its garbage and give the heap's free pages back (malloc_trim;
    tune_malloc's high trim threshold keeps them otherwise), so that an idle process does not
    hold what starting took (daemon idle RSS 59.3 -> 58.4 MiB; the relay gains nothing: its
    SSH sessions come after). Not gc.freeze(): it frees nothing here (no fork shares the
    pages), and what it froze would never be collected once it died in a cycle."""
    import gc

    gc.collect()
    libc = _libc()
    try:
        if libc is not None:
            libc.malloc_trim(0)
    except AttributeError:
        pass


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop (a dependency; plain asyncio only where it cannot be installed)."""
    tune_malloc()
    from . import sshtune

    sshtune.apply()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    from .errors import ConfigError

    if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"bad log level {level!r}: expected debug, info, warning or error")
    if fmt not in ("text", "json"):
        raise ConfigError(f"bad log format {fmt!r}: expected text or json")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # asyncssh logs every channel at INFO: only its warnings are news to our users
    logging.getLogger("asyncssh").setLevel(max(logging.WARNING, root.level))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        import json

        data = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data)
