"""Fault injection (issue 10): a lost stream is an error, never an end of stream.

A fault proxy (:mod:`tests.faultproxy`) sits between a real daemon and a real relay and cuts,
stalls or half-opens the carrier while hundreds of hashed transfers run through ``expose``
forwards; processes are killed mid-transfer. For every transfer the client either gets all its
bytes (the right sha256) or an error (a reset) — never a short clean end of stream, which an
application cannot tell from a complete answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridged.localrun import RelayProcess
from bridged.sockets import reset

from ..faultproxy import FaultProxy
from ..helpers import Daemon, DaemonProcess, assert_clean_log, eventually, free_port

KiB, MiB = 1024, 1024 * 1024
#: keepalive of both ends here: a dead carrier is noticed within 3 of these (the default, 5 s,
#: would make the stall tests wait 15 s each)
KEEPALIVE = ("--keepalive-seconds", "1")
#: a transfer that neither completes nor fails in this long has hung: a failure of its own
TRANSFER_SECONDS = 25.0
#: what the source servers send: a fixed random block, repeated (cheap to make and to check)
BLOCK = os.urandom(256 * KiB)


def _stream(size: int) -> bytes:
    return (BLOCK * (size // len(BLOCK) + 1))[:size]


# --- the processes and servers -------------------------------------------------------------


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[RelayProcess]:
    async with RelayProcess(tmp_path / "relay", http_port=0, token="s3cret-token",
                            extra_args=KEEPALIVE) as r:
        yield r
    assert_clean_log(r.log_path)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    from bridged.control.client import ControlClient

    process = await DaemonProcess(tmp_path / "laptop", extra_args=KEEPALIVE).start()
    try:
        yield Daemon(process, ControlClient(process.socket))
    finally:
        await process.stop()
    assert_clean_log(process.log_path)


async def _serve_source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads a size line, sends that many bytes of :func:`_stream`, then closes: a download."""
    try:
        size = int(await reader.readline())
        sent = 0
        while sent < size:
            n = min(len(BLOCK), size - sent)
            writer.write(BLOCK[:n])
            await writer.drain()
            sent += n
        writer.write_eof()
    except (OSError, ValueError):  # the client or the tunnel gave up: nothing to send to
        pass
    finally:
        writer.close()


@pytest.fixture
async def source_server() -> AsyncIterator[int]:
    server = await asyncio.start_server(_serve_source, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def _connect(daemon: Daemon, relay: RelayProcess, proxy: FaultProxy, carrier: str) -> None:
    relay.authorize(await daemon.public_key())
    if carrier == "tcp":
        body = {"url": f"tcp://127.0.0.1:{proxy.port}"}
    else:
        body = {"url": f"ws://127.0.0.1:{proxy.port}/ssh", "token": relay.token}
    await daemon.call("POST", "bridges", body)


async def _expose(daemon: Daemon, port: int, name: str) -> int:
    created = await daemon.call("POST", "forwards", {"target": f"127.0.0.1:{port}", "name": name})
    return int(created["forwards"][0]["local_port"])


# --- transfers and their outcomes ----------------------------------------------------------


@dataclass
class Outcome:
    kind: str  # "upload", "echo" or "download"
    size: int
    #: "ok" (all bytes, right hash), "error" (the client saw an error), "SHORT" (a clean end
    #: of stream before all bytes: the failure this file exists for), "WRONG" (bytes changed)
    result: str
    received: int = 0  # bytes the client got before the end
    error: str = ""


async def _upload(port: int, size: int) -> Outcome:
    """To the digest server: send, half-close, read its ``sha256 count`` line."""
    payload = os.urandom(size)
    expected = f"{hashlib.sha256(payload).hexdigest()} {size}\n".encode()
    answer = b""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()
            answer = await reader.read()
        finally:
            writer.close()
    except OSError as exc:
        return Outcome("upload", size, "error", len(answer), type(exc).__name__)
    if answer == expected:
        return Outcome("upload", size, "ok", len(answer))
    # the digest of a cut upload, or no answer at all, ended by a clean close
    return Outcome("upload", size, "SHORT" if not answer else "WRONG", len(answer),
                   answer[:80].decode(errors="replace"))


async def _echo(port: int, size: int) -> Outcome:
    """To the echo server: send and read back at the same time, both directions at once."""
    payload = os.urandom(size)
    received = bytearray()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            async def send() -> None:
                for i in range(0, size, CHUNK_OUT):
                    writer.write(payload[i:i + CHUNK_OUT])
                    await writer.drain()
                writer.write_eof()

            sender = asyncio.create_task(send())
            try:
                while chunk := await reader.read(256 * KiB):
                    received += chunk
            finally:
                if not sender.done():
                    sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender  # its error (a reset while sending) is the client's too
        finally:
            writer.close()
    except OSError as exc:
        return Outcome("echo", size, "error", len(received), type(exc).__name__)
    return _judge("echo", size, bytes(received), payload)


CHUNK_OUT = 128 * KiB


async def _download(port: int, size: int) -> Outcome:
    """From the source server: ask for ``size`` bytes, read until the end."""
    received = bytearray()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"%d\n" % size)
            while chunk := await reader.read(256 * KiB):
                received += chunk
        finally:
            writer.close()
    except OSError as exc:
        return Outcome("download", size, "error", len(received), type(exc).__name__)
    return _judge("download", size, bytes(received), _stream(size))


def _judge(kind: str, size: int, received: bytes, expected: bytes) -> Outcome:
    if received == expected:
        return Outcome(kind, size, "ok", len(received))
    if expected.startswith(received):
        return Outcome(kind, size, "SHORT", len(received))
    return Outcome(kind, size, "WRONG", len(received))


async def _bounded(transfer: Awaitable[Outcome], kind: str, size: int) -> Outcome:
    try:
        return await asyncio.wait_for(transfer, TRANSFER_SECONDS)
    except TimeoutError:
        return Outcome(kind, size, "HUNG")


def _assert_no_silent_loss(outcomes: list[Outcome]) -> Counter[str]:
    bad = [o for o in outcomes if o.result not in ("ok", "error")]
    tally = Counter(o.result for o in outcomes)
    assert not bad, f"{len(bad)} of {len(outcomes)} transfers lost bytes without an error " \
                    f"({dict(tally)}), e.g. {bad[:5]}"
    return tally


# --- the carrier cut at random points -----------------------------------------------------


async def _transfers_under_faults(
    daemon: Daemon, relay: RelayProcess, proxy: FaultProxy, carrier: str,
    servers: tuple[int, int, int], rng: random.Random, count: int,
    fault: Callable[[], Awaitable[None]],
) -> list[Outcome]:
    """``count`` random uploads, echoes and downloads (1 KiB to 1.4 MiB) on 8 connections at a
    time, through ``proxy``, while ``fault()`` runs again and again: their outcomes."""
    await _connect(daemon, relay, proxy, carrier)
    ports = {kind: await _expose(daemon, port, name) for kind, port, name in
             zip(("upload", "echo", "download"), servers, ("digest", "echo", "source"),
                 strict=True)}
    do = {"upload": _upload, "echo": _echo, "download": _download}
    queue = [(rng.choice(list(do)), int(2 ** rng.uniform(10, 20.5))) for _ in range(count)]
    outcomes: list[Outcome] = []

    async def worker() -> None:
        while queue:
            kind, size = queue.pop()
            outcomes.append(await _bounded(do[kind](ports[kind], size), kind, size))

    async def faults() -> None:
        while True:
            await fault()

    faulting = asyncio.create_task(faults())
    try:
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(8))), 80)
    finally:
        faulting.cancel()
    return outcomes


@pytest.mark.parametrize(("carrier", "how"), [("tcp", "reset"), ("ws", "close")])
async def test_cut_carrier_never_ends_a_transfer_cleanly(
    relay: RelayProcess, daemon: Daemon, digest_server: int, echo_server: int,
    source_server: int, carrier: str, how: str,
) -> None:
    """The carrier is cut (reset, or closed cleanly mid-packet) at random byte offsets while
    transfers run in both directions: each ends whole or with an error."""
    rng = random.Random(f"{carrier}-{how}")
    target = relay.ssh_port if carrier == "tcp" else relay.http_port
    assert target
    async with FaultProxy(target) as proxy:
        async def cut() -> None:
            # past a reconnection's handshake (a few KiB), so the daemon does not back off
            proxy.cut_after(rng.randint(256 * KiB, 12 * MiB), how)
            await proxy.wait_cut()

        outcomes = await _transfers_under_faults(
            daemon, relay, proxy, carrier, (digest_server, echo_server, source_server), rng,
            400, cut)
        tally = _assert_no_silent_loss(outcomes)
        cut_mid_stream = [o for o in outcomes if o.result == "error" and o.received]
        # the faults did happen, and hit transfers in the middle, and the tunnel healed
        assert proxy.cuts >= 5, f"only {proxy.cuts} cuts: the test did not test much"
        assert cut_mid_stream, f"no transfer was cut after its first bytes ({dict(tally)})"
        assert tally["ok"] >= 400 // 2, f"too few transfers got through: {dict(tally)}"


@pytest.mark.parametrize("carrier", ["tcp", "ws"])
async def test_a_corrupted_carrier_is_an_error_never_changed_bytes(
    relay: RelayProcess, daemon: Daemon, digest_server: int, echo_server: int,
    source_server: int, carrier: str,
) -> None:
    """One bit of the carrier is flipped at random offsets while transfers run both ways (a
    carrier that corrupts, which TCP's checksum let through): the SSH MAC catches it, so each
    transfer ends whole or with an error, never with changed or missing bytes passed off as
    whole; the tunnel heals each time."""
    rng = random.Random(f"flip-{carrier}")
    target = relay.ssh_port if carrier == "tcp" else relay.http_port
    assert target
    async with FaultProxy(target) as proxy:
        async def flip() -> None:
            proxy.flip_after(rng.randint(256 * KiB, 12 * MiB))
            await proxy.wait_flipped()

        outcomes = await _transfers_under_faults(
            daemon, relay, proxy, carrier, (digest_server, echo_server, source_server), rng,
            240, flip)
        tally = _assert_no_silent_loss(outcomes)
        assert proxy.flips >= 3, f"only {proxy.flips} bits flipped: the test did not test much"
        assert tally["error"], f"no transfer saw a flipped bit ({dict(tally)})"
        assert proxy.accepted > 1, "the daemon never reconnected after a corrupted packet"
        assert tally["ok"] >= 240 // 2, f"too few transfers got through: {dict(tally)}"


# --- a carrier that goes dark, or half-open -----------------------------------------------


@pytest.mark.parametrize("fault", ["stall", "half_open"])
async def test_dark_carrier_resets_transfers_in_flight(
    relay: RelayProcess, daemon: Daemon, source_server: int, digest_server: int, fault: str,
) -> None:
    """No FIN and no reset reach the daemon: its keepalives notice, and the transfers in flight
    fail (no hang, no clean end); on the relay's side the server receiving an upload is reset
    too (an end of stream would read as a whole request). Then the tunnel works again, with a
    delay on every chunk."""
    sink = await Sink().start()
    try:
        await _dark_carrier(relay, daemon, source_server, digest_server, sink, fault)
    finally:
        await sink.stop()


class Sink:
    """A cluster service that reads what it is sent and records how each connection ended."""

    def __init__(self) -> None:
        self.ends: list[str] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Sink:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(256 * KiB):
                pass
            self.ends.append("eof")
        except OSError as exc:
            self.ends.append(type(exc).__name__)
        finally:
            writer.close()


async def _dark_carrier(relay: RelayProcess, daemon: Daemon, source_server: int,
                        digest_server: int, sink: Sink, fault: str) -> None:
    async with FaultProxy(relay.ssh_port) as proxy:
        await _connect(daemon, relay, proxy, "tcp")
        download = await _expose(daemon, source_server, "source")
        upload = await _expose(daemon, sink.port, "sink")
        digest = await _expose(daemon, digest_server, "digest")
        before = proxy.passed
        running = [asyncio.create_task(_bounded(_download(download, 512 * MiB), "download", 0))
                   for _ in range(3)]
        sending = [asyncio.create_task(_bounded(_slow_upload(upload), "upload", 0))
                   for _ in range(3)]
        await eventually(_true_when(lambda: proxy.passed - before > 4 * MiB),
                         within=10, what="the transfers to be under way")
        assert getattr(proxy, fault)() == 1
        outcomes = await asyncio.gather(*running, *sending)
        _assert_no_silent_loss(outcomes)
        assert all(o.result == "error" and o.error == "ConnectionResetError"
                   for o in outcomes), outcomes
        await eventually(_true_when(lambda: len(sink.ends) == 3), within=10,
                         what="the relay to end the uploads' connections")
        assert sink.ends == ["ConnectionResetError"] * 3

        async def back() -> bool:
            return (await daemon.status())["bridges"][0]["state"] == "connected"

        await eventually(back, within=10, what="the daemon to reconnect")
        proxy.delay_seconds = 0.002
        results = await asyncio.gather(*(_bounded(_download(download, 3 * MiB + n), "d", 0)
                                         for n in range(4)),
                                       *(_bounded(_upload(digest, 2 * MiB + n), "u", 0)
                                         for n in range(4)))
        assert [o.result for o in results] == ["ok"] * 8, results


async def _slow_upload(port: int) -> Outcome:
    """An upload that never ends on its own (a client streaming to the cluster)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = b""
    try:
        while True:
            writer.write(os.urandom(256 * KiB))
            await writer.drain()
            if reader.at_eof():
                answer = await reader.read()
                break
            await asyncio.sleep(0.01)
    except OSError as exc:
        return Outcome("upload", 0, "error", 0, type(exc).__name__)
    finally:
        writer.close()
    return Outcome("upload", 0, "SHORT", len(answer), answer.decode(errors="replace"))


def _true_when(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()
    return check


# --- processes that die mid-transfer -------------------------------------------------------


async def _download_until(port: int, after: int, event: asyncio.Event) -> Outcome:
    """A long download that sets ``event`` once ``after`` bytes arrived, then reads on."""
    received = 0
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"%d\n" % (1024 * MiB))
            while chunk := await reader.read(256 * KiB):
                received += len(chunk)
                if received >= after:
                    event.set()
        finally:
            writer.close()
    except OSError as exc:
        return Outcome("download", 1024 * MiB, "error", received, type(exc).__name__)
    return Outcome("download", 1024 * MiB, "SHORT", received)


@pytest.mark.parametrize("how", ["kill", "sigterm"])
async def test_relay_dying_mid_download_resets_the_client(
    relay: RelayProcess, daemon: Daemon, source_server: int, how: str,
) -> None:
    """The issue's case: a 1 GiB download through ``expose`` while the relay is killed (or shuts
    down): the client sees a reset, not a clean end after a part."""
    relay.authorize(await daemon.public_key())
    await daemon.call("POST", "bridges", {"url": relay.url})
    local = await _expose(daemon, source_server, "source")
    started = asyncio.Event()
    transfer = asyncio.create_task(_bounded(_download_until(local, 8 * MiB, started), "d", 0))
    await asyncio.wait_for(started.wait(), 20)
    if how == "kill":
        relay.kill()
    else:
        await relay.stop(signal.SIGTERM)
    outcome = await transfer
    assert outcome.result == "error" and outcome.error == "ConnectionResetError", outcome


@pytest.mark.parametrize("how", ["kill", "sigterm"])
async def test_laptop_dying_mid_response_resets_the_cluster_client(
    relay: RelayProcess, daemon: Daemon, source_server: int, how: str,
) -> None:
    """A whole-port intercept: a cluster client downloads from the laptop's service, and the
    laptop's daemon dies (or stops): the relay resets the cluster client."""
    relay.authorize(await daemon.public_key())
    await daemon.call("POST", "bridges", {"url": relay.url})
    cluster_port = free_port()
    await daemon.call("POST", "intercepts", {"remote_port": cluster_port,
                                             "local_port": source_server, "name": "source"})
    started = asyncio.Event()
    transfer = asyncio.create_task(
        _bounded(_download_until(cluster_port, 8 * MiB, started), "d", 0))
    await asyncio.wait_for(started.wait(), 20)
    if how == "kill":
        daemon.process.kill()
    else:
        await daemon.process.stop(signal.SIGTERM)
    outcome = await transfer
    assert outcome.result == "error" and outcome.error == "ConnectionResetError", outcome


async def test_daemon_stopping_resets_its_forwards_clients(
    relay: RelayProcess, daemon: Daemon, source_server: int,
) -> None:
    relay.authorize(await daemon.public_key())
    await daemon.call("POST", "bridges", {"url": relay.url})
    local = await _expose(daemon, source_server, "source")
    started = asyncio.Event()
    transfer = asyncio.create_task(_bounded(_download_until(local, 8 * MiB, started), "d", 0))
    await asyncio.wait_for(started.wait(), 20)
    await daemon.process.stop(signal.SIGTERM)
    outcome = await transfer
    assert outcome.result == "error" and outcome.error == "ConnectionResetError", outcome


# --- a far end that resets ----------------------------------------------------------------


async def _send_then_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A service that fails mid-answer: 3 MiB, then a reset (a crashed process, an abort)."""
    try:
        await reader.readline()
        writer.write(_stream(3 * MiB))
        await writer.drain()
    except OSError:
        pass
    finally:
        reset(writer.transport)


@pytest.mark.parametrize("path", ["forward", "intercept"])
async def test_a_reset_at_the_far_end_reaches_the_client_as_a_reset(
    relay: RelayProcess, daemon: Daemon, path: str,
) -> None:
    """The SSH connection lives on; only the far end's socket is reset: the channel closes
    without EOF, and the client's socket is reset in turn (a forward: the cluster service
    resets; an intercept: the laptop's service does)."""
    server = await asyncio.start_server(_send_then_reset, "127.0.0.1", 0)
    try:
        relay.authorize(await daemon.public_key())
        await daemon.call("POST", "bridges", {"url": relay.url})
        service = server.sockets[0].getsockname()[1]
        if path == "forward":
            port = await _expose(daemon, service, "resets")
        else:
            port = free_port()
            await daemon.call("POST", "intercepts", {"remote_port": port, "local_port": service,
                                                     "name": "resets"})
        outcomes = [await _bounded(_download(port, 8 * MiB), "download", 8 * MiB)
                    for _ in range(5)]
        assert all(o.result == "error" and o.error == "ConnectionResetError"
                   for o in outcomes), outcomes
    finally:
        server.close()
        await server.wait_closed()


# --- the relay's pass-through to the original pods ----------------------------------------


@pytest.fixture
async def origin_listener(tmp_path: Path) -> AsyncIterator[Callable[[int], Awaitable[int]]]:
    """The relay's pass-through of a taken-over Service's port nobody intercepts, in this
    process: ``await listen(origin_port)`` returns the port it listens on."""
    from bridged.relay.server import OriginListener, Relay, RelaySettings

    relay = Relay(RelaySettings(host_key=tmp_path / "host_key",
                                authorized_keys=tmp_path / "authorized_keys"))
    listeners: list[OriginListener] = []

    async def listen(origin_port: int) -> int:
        listener = OriginListener(relay, 0, f"127.0.0.1:{origin_port}")
        await listener.start("127.0.0.1")
        listeners.append(listener)
        assert listener.server is not None
        return int(listener.server.sockets[0].getsockname()[1])

    yield listen
    for listener in listeners:
        await listener.close()


async def test_the_pass_through_to_the_original_pods_passes_a_reset_on(
    origin_listener: Callable[[int], Awaitable[int]], digest_server: int,
) -> None:
    """An original pod that resets mid-answer: the cluster client is reset too (not a clean
    end after 3 MiB); a whole exchange with a half-close still goes through intact."""
    server = await asyncio.start_server(_send_then_reset, "127.0.0.1", 0)
    try:
        port = await origin_listener(server.sockets[0].getsockname()[1])
        outcome = await _bounded(_download(port, 8 * MiB), "download", 8 * MiB)
        assert outcome.result == "error" and outcome.error == "ConnectionResetError", outcome
        digest = await origin_listener(digest_server)
        assert (await _bounded(_upload(digest, 5 * MiB + 3), "upload", 0)).result == "ok"
    finally:
        server.close()
        await server.wait_closed()


# --- an HTTP intercept: the router between the cluster client and the laptop --------------


async def _answer_then_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The laptop's HTTP service: an answer framed by the end of the connection (no length),
    cut by a reset after 2 MiB: only the reset tells the client its body is not whole."""
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + _stream(2 * MiB))
        await writer.drain()
    except OSError:
        pass
    finally:
        reset(writer.transport)


async def test_a_laptop_service_reset_mid_body_resets_the_http_client(
    relay: RelayProcess, daemon: Daemon, tmp_path: Path,
) -> None:
    server = await asyncio.start_server(_answer_then_reset, "127.0.0.1", 0)
    origin = await asyncio.start_server(_answer_then_reset, "127.0.0.1", 0)
    try:
        relay.authorize(await daemon.public_key())
        await daemon.call("POST", "bridges", {"url": relay.url})
        port = free_port()
        made = await daemon.acli(
            "intercept", "--relay-port", str(port),
            "--port", str(server.sockets[0].getsockname()[1]), "--header", "x-dev=alice",
            "--origin", f"127.0.0.1:{origin.sockets[0].getsockname()[1]}", "--json")
        assert made.returncode == 0, made.stderr
        received = b""
        error = ""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"GET / HTTP/1.1\r\nHost: svc\r\nx-dev: alice\r\n\r\n")
                received = await asyncio.wait_for(reader.read(), TRANSFER_SECONDS)
            finally:
                writer.close()
        except OSError as exc:
            error = type(exc).__name__
        assert error == "ConnectionResetError", f"a clean end after {len(received)} bytes"
    finally:
        for s in (server, origin):
            s.close()
            await s.wait_closed()


# --- the kube carrier: the API server's port-forward dropped mid-transfer -------------------


@pytest.fixture
async def kube_laptop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                      ) -> AsyncIterator[tuple[Any, Daemon]]:
    """The stand-in API server running the real relay as its pod, and a daemon whose
    kubeconfig points at it."""
    from bridged.control.client import ControlClient

    from ..kube.apiserver import Context, KubeApiServer
    from ..kube.relay_kubelet import RelayKubelet

    kubelet = RelayKubelet(tmp_path / "node")
    async with KubeApiServer(kubelet=kubelet, namespaces=["team-a"]) as api:
        kubelet.attach(api)
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", [
            Context("admin", api.admin, "team-a", auth="cert")])
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        process = await DaemonProcess(tmp_path / "laptop", extra_args=KEEPALIVE).start()
        try:
            yield api, Daemon(process, ControlClient(process.socket))
        finally:
            await process.stop()
        assert_clean_log(process.log_path)


@pytest.mark.parametrize("abrupt", [False, True], ids=["close-frame", "cut"])
async def test_a_dropped_port_forward_resets_a_download(
    kube_laptop: tuple[Any, Daemon], source_server: int, abrupt: bool,
) -> None:
    api, laptop = kube_laptop
    await laptop.call("POST", "bridges", {})
    local = await _expose(laptop, source_server, "source")
    started = asyncio.Event()
    transfer = asyncio.create_task(_bounded(_download_until(local, 8 * MiB, started), "d", 0))
    await asyncio.wait_for(started.wait(), 20)
    pod = api.list("pods", "team-a")[0]["metadata"]["name"]
    assert await api.drop_portforwards("team-a", pod, abrupt=abrupt) >= 1
    outcome = await transfer
    assert outcome.result == "error" and outcome.error == "ConnectionResetError", outcome
    # and the tunnel heals: a whole download through the same forward
    assert (await _bounded(_download(local, 3 * MiB), "download", 0)).result == "ok"
