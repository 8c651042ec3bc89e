"""Shared fixtures: real relay and daemon processes on loopback, and small servers to reach.

Nothing here mocks a socket, SSH or HTTP: the relay and the daemon are the real ``bridged``
processes (see :mod:`bridged.localrun`), the "cluster" services are asyncio servers on
127.0.0.1 port 0, and every fixture stops what it started.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from bridged.control.client import ControlClient
from bridged.localrun import DaemonProcess, RelayProcess

from .grpckit.stubs import compile_echo
from .helpers import Daemon, NamedService, assert_clean_log


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test touches the real user's state, runtime folder or daemon."""
    for var, sub in (("XDG_STATE_HOME", "state"), ("XDG_RUNTIME_DIR", "run"),
                     ("XDG_CONFIG_HOME", "config")):
        monkeypatch.setenv(var, str(tmp_path / "user" / sub))
    monkeypatch.delenv("BRIDGED_SOCKET", raising=False)


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[RelayProcess]:
    async with RelayProcess(tmp_path / "relay", http_port=0, token="s3cret-token") as r:
        yield r
    assert_clean_log(r.log_path)


async def _start_daemon(home: Path) -> Daemon:
    process = await DaemonProcess(home).start()
    return Daemon(process, ControlClient(process.socket))


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = await _start_daemon(tmp_path / "laptop")
    try:
        yield d
    finally:
        await d.process.stop()
    assert_clean_log(d.process.log_path)


@pytest.fixture
async def make_daemon(tmp_path: Path) -> AsyncIterator[Callable[[str], Awaitable[Daemon]]]:
    """More daemons (other developers), each with its own home and key."""
    started: list[Daemon] = []

    async def make(name: str) -> Daemon:
        d = await _start_daemon(tmp_path / name)
        started.append(d)
        return d

    yield make
    for d in started:
        await d.process.stop()
    for d in started:
        assert_clean_log(d.process.log_path)


@pytest.fixture
async def bridge(relay: RelayProcess, daemon: Daemon) -> Daemon:
    """The daemon, authorized on the relay and connected to it over TCP."""
    relay.authorize(await daemon.public_key())
    await daemon.call("POST", "bridges", {"url": relay.url})
    return daemon


# --- servers standing for cluster services and local services ---------------------------------


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    except OSError:  # the other side is gone (reset, not connected): nothing to echo to
        pass
    finally:
        writer.close()


async def _digest_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads until the client half-closes, then answers with the sha256 and byte count."""
    h = hashlib.sha256()
    n = 0
    try:
        while data := await reader.read(256 * 1024):
            h.update(data)
            n += len(data)
        writer.write(f"{h.hexdigest()} {n}\n".encode())
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def echo_server() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
async def digest_server() -> AsyncIterator[int]:
    server = await asyncio.start_server(_digest_after_eof, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()




@pytest.fixture
async def named_service() -> AsyncIterator[Callable[[str], Awaitable[NamedService]]]:
    """Local services that say who they are (see :class:`~tests.helpers.NamedService`): one
    per developer, so a test can tell whose laptop got the traffic."""
    started: list[NamedService] = []

    async def make(name: str) -> NamedService:
        service = await NamedService(name).start()
        started.append(service)
        return service

    yield make
    for service in started:
        await service.stop()


@pytest.fixture(scope="session")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The gRPC tests' Echo service (tests/grpckit/echo.proto), compiled once per run."""
    return compile_echo(tmp_path_factory.mktemp("echo-proto"))
