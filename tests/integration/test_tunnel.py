"""The tunnel end to end: real relay and daemon processes, one SSH connection, real sockets."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal

import pytest

from bridged.localrun import RelayProcess

from ..helpers import Daemon, eventually, free_port, port_closed

MiB = 1024 * 1024


async def _roundtrip(port: int, payload: bytes) -> bytes:
    """Send ``payload`` while reading the echo back, concurrently (both directions at once)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        view = memoryview(payload)
        for i in range(0, len(payload), 1 * MiB):
            writer.write(view[i:i + MiB])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    received = bytearray()
    while chunk := await reader.read(1 * MiB):
        received += chunk
    await sender
    writer.close()
    return bytes(received)


async def _answer_before_close(port: int, payload: bytes) -> bytes:
    """Send ``payload`` and read until the other side closes (or resets) the connection."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionResetError:  # the reset beat the connect's completion (a loaded machine)
        return b""
    writer.write(payload)
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def _expose(daemon: Daemon, port: int, name: str = "svc") -> int:
    created = await daemon.call("POST", "forwards", {"target": f"127.0.0.1:{port}", "name": name})
    forward = created["forwards"][0]
    return int(forward["local_port"])


async def test_64mib_both_directions_through_a_forward(bridge: Daemon, echo_server: int) -> None:
    local = await _expose(bridge, echo_server)
    payload = os.urandom(64 * MiB)
    echoed = await _roundtrip(local, payload)
    assert hashlib.sha256(echoed).hexdigest() == hashlib.sha256(payload).hexdigest()
    forward = (await bridge.status())["forwards"][0]
    assert forward["bytes_sent"] == forward["bytes_received"] == 64 * MiB


async def test_64mib_both_directions_through_an_intercept(
    bridge: Daemon, echo_server: int
) -> None:
    cluster_port = free_port()
    await bridge.call("POST", "intercepts", {"remote_port": cluster_port,
                                             "local_port": echo_server, "name": "echo"})
    payload = os.urandom(64 * MiB)
    echoed = await _roundtrip(cluster_port, payload)
    assert hashlib.sha256(echoed).hexdigest() == hashlib.sha256(payload).hexdigest()


async def test_200_concurrent_connections_each_verified(
    bridge: Daemon, echo_server: int
) -> None:
    local = await _expose(bridge, echo_server)
    payloads = [os.urandom(64 * 1024) + i.to_bytes(4, "big") for i in range(200)]
    results = await asyncio.gather(*(_roundtrip(local, p) for p in payloads))
    assert [hashlib.sha256(r).digest() for r in results] == \
        [hashlib.sha256(p).digest() for p in payloads]
    forward = (await bridge.status())["forwards"][0]
    assert forward["connections"] == 200 and forward["failed"] == 0


async def _half_close(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    writer.write_eof()  # our write side is shut; the answer must still come back
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return answer


async def test_half_close_through_forward_and_intercept(
    bridge: Daemon, digest_server: int
) -> None:
    payload = os.urandom(3 * MiB + 17)
    expected = f"{hashlib.sha256(payload).hexdigest()} {len(payload)}\n".encode()
    local = await _expose(bridge, digest_server)
    assert await _half_close(local, payload) == expected
    cluster_port = free_port()
    await bridge.call("POST", "intercepts", {"remote_port": cluster_port,
                                             "local_port": digest_server})
    assert await _half_close(cluster_port, payload) == expected


@pytest.mark.parametrize("carrier", ["tcp", "ws"])
async def test_relay_restart_reconnects_forwards_and_intercepts(
    relay: RelayProcess, daemon: Daemon, echo_server: int, carrier: str
) -> None:
    relay.authorize(await daemon.public_key())
    body = {"url": relay.url} if carrier == "tcp" else {"url": relay.ws_url,
                                                         "token": relay.token}
    await daemon.call("POST", "bridges", body)
    local = await _expose(daemon, echo_server)
    ports = [free_port(), free_port()]
    for n, port in enumerate(ports):
        await daemon.call("POST", "intercepts", {"remote_port": port, "local_port": echo_server,
                                                 "name": f"echo{n}"})
    first_session = (await daemon.status())["bridges"][0]["session"]

    relay.kill()  # a crash: the carrier drops without goodbye
    await relay.proc.wait()  # type: ignore[union-attr]

    async def noticed() -> bool:
        return (await daemon.status())["bridges"][0]["state"] == "reconnecting"

    # the dropped carrier itself says so (well before keepalives, 15 s, would)
    await eventually(noticed, within=3, what="the daemon to notice the dead relay")
    restarted = await RelayProcess(relay.workdir, ssh_port=relay.ssh_port,
                                   http_port=relay.http_port, token=relay.token).start()
    try:
        async def back() -> bool:
            s = await daemon.status()
            return s["bridges"][0]["state"] == "connected" and \
                all(i["state"] == "active" for i in s["intercepts"])

        await eventually(back, what="reconnection and both intercepts re-registered")
        status = await daemon.status()
        assert status["bridges"][0]["connects"] == 2
        assert status["bridges"][0]["session"] != first_session
        payload = os.urandom(1 * MiB)
        assert await _roundtrip(local, payload) == payload
        for port in ports:
            assert await _roundtrip(port, payload) == payload
    finally:
        await restarted.stop()


async def test_connections_during_a_reconnect_wait_for_the_relay(
    relay: RelayProcess, bridge: Daemon, echo_server: int
) -> None:
    local = await _expose(bridge, echo_server)
    relay.kill()
    await relay.proc.wait()  # type: ignore[union-attr]

    async def noticed() -> bool:
        return (await bridge.status())["bridges"][0]["state"] == "reconnecting"

    await eventually(noticed, what="the daemon to notice the dead relay")
    pending = asyncio.create_task(_roundtrip(local, b"accepted while the relay was down"))
    restarted = await RelayProcess(relay.workdir, ssh_port=relay.ssh_port).start()
    try:
        assert await asyncio.wait_for(pending, 30) == b"accepted while the relay was down"
    finally:
        await restarted.stop()


@pytest.mark.parametrize("target", ["169.254.169.254:80", "[::ffff:169.254.169.254]:80"])
async def test_denied_destination_closes_the_connection_and_says_why(
    bridge: Daemon, target: str
) -> None:
    # the relay refuses before connecting: no packet is sent to this address
    forward = (await bridge.call("POST", "forwards",
                                 {"target": target, "name": "metadata"}))["forwards"][0]
    sent = b"GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n\r\n"
    assert await _answer_before_close(forward["local_port"], sent) == b""
    status = (await bridge.status())["forwards"][0]
    assert status["failed"] == 1
    assert "denied by the relay's policy" in status["last_error"]
    assert "169.254.0.0/16" in status["last_error"]


async def test_intercept_with_no_local_service_closes_promptly_and_counts(
    bridge: Daemon,
) -> None:
    cluster_port = free_port()
    nothing_here = free_port()
    await bridge.call("POST", "intercepts", {"remote_port": cluster_port,
                                             "local_port": nothing_here, "name": "down"})
    assert await _answer_before_close(cluster_port, b"hello") == b""
    intercept = (await bridge.status())["intercepts"][0]
    assert intercept["failed"] == 1
    assert f"127.0.0.1:{nothing_here}" in intercept["last_error"]


async def test_leave_closes_the_relay_port(bridge: Daemon, echo_server: int) -> None:
    cluster_port = free_port()
    await bridge.call("POST", "intercepts", {"remote_port": cluster_port,
                                             "local_port": echo_server, "name": "echo"})
    assert await _roundtrip(cluster_port, b"x") == b"x"
    await bridge.call("DELETE", "intercepts/echo")
    assert await port_closed(cluster_port), "the relay still listens on the port after leave"


async def test_daemon_sigterm_leaves_intercepts_at_once(
    relay: RelayProcess, bridge: Daemon, echo_server: int
) -> None:
    cluster_port = free_port()
    await bridge.call("POST", "intercepts", {"remote_port": cluster_port,
                                             "local_port": echo_server})
    assert await bridge.process.stop(signal.SIGTERM) == 0
    # released by the time the daemon has exited, not when a lease runs out later
    assert await port_closed(cluster_port), "the relay still routes the port"


async def test_websocket_carrier_moves_bytes_intact(
    relay: RelayProcess, daemon: Daemon, echo_server: int
) -> None:
    relay.authorize(await daemon.public_key())
    token_file = relay.workdir / "token"
    result = daemon.cli("connect", relay.ws_url, "--token-file", str(token_file), "--json")
    assert result.returncode == 0, result.stderr
    local = await _expose(daemon, echo_server)
    payload = os.urandom(16 * MiB)
    echoed = await _roundtrip(local, payload)
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


async def test_a_relay_with_a_websocket_session_stops_promptly(
    relay: RelayProcess, daemon: Daemon
) -> None:
    relay.authorize(await daemon.public_key())
    await daemon.call("POST", "bridges", {"url": relay.ws_url, "token": relay.token})
    started = asyncio.get_running_loop().time()
    assert await relay.stop(signal.SIGTERM) == 0
    # well inside Kubernetes' 30 s grace period
    assert asyncio.get_running_loop().time() - started < 10
