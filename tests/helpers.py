"""Helpers for the tests: a handle on a daemon process, free ports, polling with a deadline."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridged.control.client import ControlClient
from bridged.localrun import DaemonProcess

__all__ = [
    "Daemon", "DaemonProcess", "assert_clean_log", "eventually", "free_port", "port_closed",
]


@dataclass
class Daemon:
    """A daemon process and the control client that reaches it."""

    process: DaemonProcess
    client: ControlClient

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return await asyncio.to_thread(self.client.request, method, path, body)

    async def status(self) -> dict[str, Any]:
        return await self.call("GET", "status")  # type: ignore[no-any-return]

    async def public_key(self) -> str:
        return str((await self.status())["daemon"]["client_key"])

    async def acli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The CLI, without blocking this event loop (it may serve the stand-in API server)."""
        return await asyncio.to_thread(self.cli, *args)

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run the real ``bridged`` CLI against this daemon."""
        return subprocess.run(
            [sys.executable, "-m", "bridged", *args], env=self.process.env,
            capture_output=True, text=True, timeout=120, check=check,
        )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(check: Callable[[], Awaitable[Any]], *, within: float = 30.0,
                     what: str = "condition") -> Any:
    """Poll ``check`` until it returns a truthy value (there is no event to await across
    processes); fails the test with ``what`` after ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {within}s waiting for {what} (last: {last!r})")



async def port_closed(port: int) -> bool:
    """True when nothing accepts connections on 127.0.0.1:``port`` any more."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


def assert_clean_log(path: Path) -> None:
    """A process that ran through a test logged no traceback and no task death: a task that
    died in silence, or a handler that blew up, fails the test that provoked it. (Refusals
    that users must see, like a changed host key, are logged as errors on purpose.)"""
    if not path.exists():
        return
    markers = ("Traceback", " CRITICAL ", " died", "unexpected error", "internal error")
    bad = [line for line in path.read_text(errors="replace").splitlines()
           if any(m in line for m in markers)]
    assert not bad, f"{path.name} has errors:\n" + "\n".join(bad[:20])
