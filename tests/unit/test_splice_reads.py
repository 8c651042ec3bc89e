"""bridged.splice: a spliced socket moving bulk is read into buffers of the splice's own
(``BulkReads``), handed to the channel as views; small reads go back to the plain protocol.
Channel data goes straight to the splice's socket while it can write (sshtune item 9) and
waits in the channel while it cannot.

A real SSH connection on 127.0.0.1 (asyncssh, patched as the daemon and relay run it) to an
echo server, a real listener spliced to it as a forward is, a real client socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import asyncssh
import pytest

from bridged import sshtune
from bridged.splice import BulkReads, Counters, Pipe, socket_then_channel
from tests import stock_ssh_peer
from tests.helpers import instances_made

MiB = 1024 * 1024
GCM = ["aes128-gcm@openssh.com"]


@pytest.fixture(autouse=True)
def applied() -> None:
    if not sshtune.apply():
        pytest.skip("bridged's asyncssh patches are off for this asyncssh version")


async def test_bulk_is_read_into_our_buffers_then_small_reads_go_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    await _bulk_then_small(monkeypatch)


def test_the_same_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop (which the daemon and the relay run on) switches a transport between plain and
    buffered reads itself: the same transfer on it."""
    import uvloop

    async def on_uvloop() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        await _bulk_then_small(monkeypatch)

    uvloop.run(on_uvloop())


@contextlib.asynccontextmanager
async def forward_to_echo(counters: Counters, live: set[Pipe], handler: Any = None,
                          rcvbuf: int | None = None) -> AsyncIterator[int]:
    """A listener spliced, as a forward is, to channels (a 256 KiB window, 64 KiB packets) of
    a real SSH connection to an echo server (or one whose channels run ``handler``); yields
    its port. ``rcvbuf``: the accepted sockets' receive buffer (no autotuning)."""
    server, _, client_key = await stock_ssh_peer.echo_server(handler, encryption_algs=GCM)
    try:
        async with asyncssh.connect(
                "127.0.0.1", server.get_port(), username="t", client_keys=[client_key],
                known_hosts=None, agent_path=None, config=None, encryption_algs=GCM) as conn:

            async def open_channel(factory: object, peer: tuple[str, int]) -> None:
                # a small window: the channel often keeps what was read (the buffer is not
                # reused)
                await conn.create_connection(factory, "x", 1, window=256 * 1024,
                                             max_pktsize=64 * 1024)

            sock = socket.socket()
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind(("127.0.0.1", 0))
            listener = await asyncio.get_running_loop().create_server(
                socket_then_channel(open_channel, counters, live), sock=sock)
            try:
                yield listener.sockets[0].getsockname()[1]
            finally:
                listener.close()
                await listener.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


async def small_buffered_client(
        port: int, option: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client of ``port`` whose socket buffer ``option`` (SO_RCVBUF, SO_SNDBUF) is 64 KiB:
    not autotuned, it fills soon."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, option, 64 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def _bulk_then_small(monkeypatch: pytest.MonkeyPatch) -> None:
    switched = instances_made(monkeypatch, BulkReads)
    counters, live = Counters(), set[Pipe]()
    async with forward_to_echo(counters, live) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = os.urandom(16 * MiB)

        async def send() -> None:
            view = memoryview(payload)
            for i in range(0, len(payload), MiB):
                writer.write(view[i:i + MiB])
                await writer.drain()

        sender = asyncio.ensure_future(send())
        echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 60)
        await sender
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
        assert switched  # the bulk was read by BulkReads
        (pipe,) = live
        for i in range(20):  # then small messages: back to the plain protocol
            writer.write(b"ping %d" % i)
            assert await asyncio.wait_for(reader.readexactly(len(b"ping %d" % i)), 10) \
                == b"ping %d" % i
        assert pipe.transport is not None and pipe.transport.get_protocol() is pipe
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # the echo's EOF
        writer.close()
    assert counters.bytes_sent == counters.bytes_received == len(payload) + sum(
        len(b"ping %d" % i) for i in range(20))


async def test_a_client_that_stops_reading_stops_the_channel_and_loses_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The client reads nothing until the splice's socket is full: from the moment it is
    (pause_writing) until it drains (resume_writing) not one more byte is handed to the socket
    (the channel keeps it, within its window, and the peer waits); then all 16 MiB come back
    intact."""
    paused = asyncio.Event()
    state = {"paused": False, "pauses": 0, "resumes": 0, "written_while_paused": 0}
    pause_writing, resume_writing, channel_data = \
        Pipe.pause_writing, Pipe.resume_writing, Pipe.channel_data

    def on_pause(self: Pipe) -> None:
        state["paused"] = True
        state["pauses"] += 1
        paused.set()
        pause_writing(self)

    def on_resume(self: Pipe) -> None:
        state["paused"] = False
        state["resumes"] += 1
        resume_writing(self)

    def on_data(self: Pipe, data: bytes | memoryview) -> None:
        if state["paused"]:
            state["written_while_paused"] += len(data)
        channel_data(self, data)

    monkeypatch.setattr(Pipe, "pause_writing", on_pause)
    monkeypatch.setattr(Pipe, "resume_writing", on_resume)
    monkeypatch.setattr(Pipe, "channel_data", on_data)
    counters, live = Counters(), set[Pipe]()
    async with forward_to_echo(counters, live) as port:
        reader, writer = await small_buffered_client(port, socket.SO_RCVBUF)
        payload = os.urandom(16 * MiB)
        writer.write(payload)
        sender = asyncio.ensure_future(writer.drain())
        await asyncio.wait_for(paused.wait(), 60)  # (the client has read nothing yet)
        echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 60)
        await sender
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
    assert state["pauses"] >= 1 and state["resumes"] >= 1
    assert state["written_while_paused"] == 0
    assert counters.bytes_sent == counters.bytes_received == len(payload)


async def test_small_writes_to_a_peer_that_stopped_reading_stay_within_its_window() -> None:
    """One small message per loop turn (each goes out in a packet of its own as soon as it is
    read) to a peer that reads nothing yet: the peer's window closes, the splice stops
    reading the client, and the client's socket fills. Had a packet gone past the window, the
    peer would have closed the connection. Then the peer reads, and every byte arrives."""
    go = asyncio.Event()
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def reads_later(reader: asyncssh.SSHReader[bytes],
                          writer: asyncssh.SSHWriter[bytes]) -> None:
        await go.wait()
        received.set_result(await reader.read())
        writer.close()

    counters, live = Counters(), set[Pipe]()
    async with forward_to_echo(counters, live, reads_later, rcvbuf=64 * 1024) as port:
        _, writer = await small_buffered_client(port, socket.SO_SNDBUF)
        payload = os.urandom(8 * MiB)

        async def send() -> None:
            view = memoryview(payload)
            for i in range(0, len(payload), 1024):
                writer.write(view[i:i + 1024])
                if writer.transport.get_write_buffer_size():  # the kernel took no more
                    go.set()
                await writer.drain()
                await asyncio.sleep(0)  # (one message per read of the splice)
            writer.write_eof()

        sender = asyncio.ensure_future(send())
        held = asyncio.ensure_future(go.wait())
        await asyncio.wait((sender, held), timeout=120, return_when=asyncio.FIRST_COMPLETED)
        held.cancel()
        assert go.is_set(), "the peer read nothing: the client must have been held back"
        got = await asyncio.wait_for(received, 120)
        await sender
        writer.close()
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    assert counters.bytes_sent == len(payload)
