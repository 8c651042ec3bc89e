"""Helpers for the tests: a handle on a daemon process, free ports, polling with a deadline,
a raw HTTP/1.1 response reader, local services that say who they are, and a look at what a
relay holds (its ``stats``, over a real SSH session of its own)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
from aiohttp import web

from bridged import protocol
from bridged.control.client import ControlClient
from bridged.daemon.control_channel import ControlChannel
from bridged.localrun import DaemonProcess, RelayProcess

__all__ = [
    "Daemon", "DaemonProcess", "NamedService", "ask", "assert_clean_log", "eventually",
    "free_port", "port_closed", "read_head", "read_response", "relay_stats", "serve_http",
]


async def serve_http(handle: Callable[[web.Request], Awaitable[web.StreamResponse]],
                     ) -> tuple[web.AppRunner, int]:
    """An aiohttp server on 127.0.0.1 (a free port) answering every method and path with
    ``handle``: its runner (``cleanup()`` stops it) and its port."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


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


def instances_made(monkeypatch: Any, cls: type) -> list[Any]:
    """Every instance of ``cls`` made from now on, in order (its ``__init__`` wrapped for the
    test): to check that a code path did build what it was meant to."""
    made: list[Any] = []
    init = cls.__init__

    def counted(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(cls, "__init__", counted)
    return made


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
    except ConnectionResetError:  # something listens, and reset this one at once
        return False
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


# --- a raw HTTP/1.1 client's reading -------------------------------------------------------------


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = raw.split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def read_response(reader: asyncio.StreamReader, *, head: bool = False
                        ) -> tuple[int, dict[str, str], bytes]:
    """One final response (1xx skipped), framed as a client would."""
    while True:
        status, headers = await read_head(reader)
        if status >= 200 or status == 101:
            break
    if head or status in (204, 304):
        return status, headers, b""
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return status, headers, body
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    return status, headers, await reader.read()


# --- local services that say who they are ----------------------------------------------------


@dataclass
class NamedService:
    """A TCP service standing for one developer's local service: each connection gets back
    ``NAME:`` then what it sent, so a test can tell whose laptop the traffic reached."""

    name: str
    port: int = 0
    #: what each connection it accepted sent (a test sends distinct bytes to tell its
    #: connections from others, e.g. ones the relay queued for a laptop that was asleep)
    received: list[bytes] = field(default_factory=list)
    _server: asyncio.Server | None = field(default=None, repr=False)

    async def start(self) -> NamedService:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await reader.read()
            self.received.append(data)
            writer.write(self.name.encode() + b":" + data)
            await writer.drain()
            writer.write_eof()
        except OSError:  # the relay gave up on the connection: nothing to answer
            pass
        finally:
            writer.close()


async def ask(port: int, data: bytes = b"ping", within: float = 5.0) -> bytes:
    """Send ``data`` to 127.0.0.1:``port``, half-close, and return the whole answer; b"" when
    the connection is refused, reset, or closed without an answer."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except (ConnectionRefusedError, ConnectionResetError):
        return b""
    try:
        writer.write(data)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), within)
    except OSError:  # reset, or already closed by the other side (ENOTCONN on write_eof)
        return b""
    finally:
        writer.close()


# --- what a relay holds ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def relay_stats(relay: RelayProcess) -> AsyncIterator[Callable[[], Awaitable[Any]]]:
    """An observer's session on ``relay`` (a key of its own, authorized here); yields a call
    returning the relay's ``stats`` as this session sees them: its own intercepts (none) and
    ``other_intercepts``, every holding of the others, reserved ones included, released ones
    not; ``ports``, the ports the relay listens on."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment="observer@tests")
    relay.authorize(key.export_public_key().decode())
    conn = await asyncssh.connect(
        "127.0.0.1", relay.ssh_port, username="observer", client_keys=[key],
        known_hosts=None, agent_path=None, password_auth=False, kbdint_auth=False,
        config=None, connect_timeout=10)
    channel = await ControlChannel.open(conn)
    try:
        yield lambda: channel.call(protocol.GetStats, wait=10)
    finally:
        channel.close()
        conn.close()
        await conn.wait_closed()
