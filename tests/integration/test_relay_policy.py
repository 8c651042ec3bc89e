"""The relay's destination policy end to end, with a resolver the test controls.

A real relay and a real daemon; the relay runs in a mount namespace of its own whose
/etc/hosts (and nsswitch.conf: files only, so no DNS query ever leaves the machine) the test
writes. A name there can resolve to an allowed address *and* a denied one, which is what a
check of only the first address, or of the name only, lets through. Every refusal is asserted
as the user sees it (a forward's last error, the intercept command's error) and shown to happen
before any connection: the loopback server the allowed address leads to sees none. Nothing is
ever sent to a non-loopback address (169.254.169.254 is only written in the hosts file).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from bridged.localrun import RelayProcess

from ..helpers import Daemon, free_port, port_closed
from ..resolver import Resolver, relay_resolving_with

METADATA_IP = "169.254.169.254"

#: twofaced.test: an allowed address first, then the metadata service's;
#: metadata.google.internal points at loopback, so only a check of the name refuses it
HOSTS = f"""127.0.0.1 localhost
127.0.0.1 twofaced.test
{METADATA_IP} twofaced.test
127.0.0.1 metadata.google.internal
127.0.0.1 origin.test
"""

@pytest.fixture
def resolver(tmp_path: Path) -> Resolver:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare(1) and mount(8) to give the relay its own /etc/hosts")
    if not all(Path(f"/etc/{f}").exists() for f in ("hosts", "host.conf", "nsswitch.conf")):
        pytest.skip("needs /etc/hosts, /etc/host.conf and /etc/nsswitch.conf to mount over")
    r = Resolver(tmp_path / "resolver", HOSTS)
    try:
        seen = r.lookup("twofaced.test")
    except OSError as exc:
        pytest.skip(f"no mount namespace for the relay's resolver (needs root): {exc}")
    # the order matters: a relay that checks only the first address must be let through
    # to the loopback server, where the test sees it
    assert seen == ["127.0.0.1", METADATA_IP], f"the test's resolver gives {seen}"
    return r


@pytest.fixture
async def relay_ns(tmp_path: Path, resolver: Resolver) -> AsyncIterator[RelayProcess]:
    """A local relay (loopback allowed, 127.0.0.2 denied) resolving with ``resolver``."""
    async with relay_resolving_with(resolver, tmp_path / "relay", "127.0.0.2/32") as relay:
        yield relay


@pytest.fixture
async def bridge_ns(relay_ns: RelayProcess, daemon: Daemon) -> Daemon:
    relay_ns.authorize(await daemon.public_key())
    await daemon.call("POST", "bridges", {"url": relay_ns.url})
    return daemon


@contextlib.asynccontextmanager
async def echo_on(host: str, port: int = 0) -> AsyncIterator[SimpleNamespace]:
    """An echo server that counts its connections (``connections``)."""
    seen = SimpleNamespace(port=0, connections=0)
    writers: list[asyncio.StreamWriter] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.connections += 1
        writers.append(writer)
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, host, port)
    seen.port = server.sockets[0].getsockname()[1]
    try:
        yield seen
    finally:
        server.close()
        for w in writers:
            w.close()
        await server.wait_closed()


async def answer_to(port: int, payload: bytes) -> bytes:
    """Send ``payload``, half-close, read until the other side closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


# --- expose: outbound channels ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "reason"), [
    # one of its addresses is denied: the name is, whichever the relay would have tried
    ("twofaced.test", f"destination twofaced.test ({METADATA_IP}) is denied by the relay's "
                      "policy (169.254.0.0/16)"),
    # denied by name before it is resolved (here it resolves to an allowed address)
    ("metadata.google.internal", "destination metadata.google.internal is denied by the "
                                 "relay's policy (metadata.google.internal)"),
])
async def test_expose_refuses_a_denied_destination_before_connecting(
    bridge_ns: Daemon, name: str, reason: str
) -> None:
    async with echo_on("127.0.0.1") as server:
        forward = (await bridge_ns.call("POST", "forwards", {
            "target": f"{name}:{server.port}", "name": "denied"}))["forwards"][0]
        assert await answer_to(forward["local_port"], b"hello") == b""
        status = (await bridge_ns.status())["forwards"][0]
        assert (status["failed"], status["last_error"]) == (1, reason)
        assert server.connections == 0


async def test_expose_of_a_name_that_does_not_resolve_says_so(bridge_ns: Daemon) -> None:
    forward = (await bridge_ns.call("POST", "forwards", {
        "target": "nowhere.test:80", "name": "nowhere"}))["forwards"][0]
    assert await answer_to(forward["local_port"], b"hello") == b""
    status = (await bridge_ns.status())["forwards"][0]
    assert status["last_error"].startswith("cannot resolve nowhere.test: ")


async def test_expose_of_an_allowed_name_works(bridge_ns: Daemon) -> None:
    async with echo_on("127.0.0.1") as server:
        forward = (await bridge_ns.call("POST", "forwards", {
            "target": f"origin.test:{server.port}", "name": "ok"}))["forwards"][0]
        assert await answer_to(forward["local_port"], b"hello") == b"hello"
        assert server.connections == 1


# --- intercept origins (and the fallback origin, the same address) -------------------------------


async def _intercept(daemon: Daemon, relay_port: int, local_port: int, origin: str,
                     *extra: str) -> subprocess.CompletedProcess[str]:
    return await daemon.acli("intercept", "--relay-port", str(relay_port), "--port",
                             str(local_port), "--header", "x-dev=me", "--origin", origin, *extra)


@pytest.mark.parametrize(("origin", "reason"), [
    ("twofaced.test", f"origin twofaced.test:{{port}}: destination twofaced.test ({METADATA_IP}) "
                      "is denied by the relay's policy (169.254.0.0/16)"),
    ("metadata.google.internal", "origin metadata.google.internal:{port}: destination "
     "metadata.google.internal is denied by the relay's policy (metadata.google.internal)"),
    (METADATA_IP, f"origin {METADATA_IP}:{{port}}: destination {METADATA_IP} ({METADATA_IP}) is "
                  "denied by the relay's policy (169.254.0.0/16)"),
    ("nowhere.test", "origin nowhere.test:{port}: cannot resolve nowhere.test: "),
])
@pytest.mark.parametrize("fallback", ["error", "origin"])
async def test_an_intercept_with_a_denied_origin_is_refused_when_registered(
    bridge_ns: Daemon, origin: str, reason: str, fallback: str
) -> None:
    relay_port = free_port()
    async with echo_on("127.0.0.1") as server:
        made = await _intercept(bridge_ns, relay_port, free_port(), f"{origin}:{server.port}",
                                "--fallback", fallback)
        assert made.returncode != 0, made.stdout
        (line,) = made.stderr.strip().splitlines()
        assert reason.format(port=server.port) in line
        assert (await bridge_ns.status())["intercepts"] == []
        assert await port_closed(relay_port), "the relay listens for a refused intercept"
        assert server.connections == 0


async def _get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n".encode())
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def who_on(host: str, port: int, who: bytes) -> AsyncIterator[SimpleNamespace]:
    """An HTTP server answering ``who`` and closing each connection (so the relay cannot reuse
    one: every request makes it connect again); counts its connections."""
    seen = SimpleNamespace(connections=0)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.connections += 1
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%b"
                         % (len(who), who))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, host, port)
    try:
        yield seen
    finally:
        server.close()
        await server.wait_closed()


async def test_an_origin_is_connected_at_the_address_checked_when_registered(
    bridge_ns: Daemon, resolver: Resolver
) -> None:
    # origin.test → 127.0.0.1 when registered; then DNS says 127.0.0.2, which this relay denies:
    # the relay keeps connecting to the address it checked
    port, relay_port = free_port(), free_port()
    async with who_on("127.0.0.1", port, b"checked") as checked, \
            who_on("127.0.0.2", port, b"swapped in") as swapped:
        made = await _intercept(bridge_ns, relay_port, free_port(), f"origin.test:{port}")
        assert made.returncode == 0, made.stderr
        assert (await _get(relay_port, "/before")).endswith(b"\r\n\r\nchecked")
        resolver.hosts(HOSTS.replace("127.0.0.1 origin.test", "127.0.0.2 origin.test"))
        assert resolver.lookup("origin.test") == ["127.0.0.2"]
        assert (await _get(relay_port, "/after")).endswith(b"\r\n\r\nchecked")
        assert (checked.connections, swapped.connections) == (2, 0)
