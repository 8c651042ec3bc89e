"""bridged.splice: a spliced socket moving bulk is read into buffers of the splice's own
(``BulkReads``), handed to the channel as views; small reads go back to the plain protocol.

A real SSH connection on 127.0.0.1 (asyncssh, patched as the daemon and relay run it) to an
echo server, a real listener spliced to it as a forward is, a real client socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

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


async def _bulk_then_small(monkeypatch: pytest.MonkeyPatch) -> None:
    switched = instances_made(monkeypatch, BulkReads)
    server, _, client_key = await stock_ssh_peer.echo_server(encryption_algs=GCM)
    counters, live = Counters(), set[Pipe]()
    async with asyncssh.connect(
            "127.0.0.1", server.get_port(), username="t", client_keys=[client_key],
            known_hosts=None, agent_path=None, config=None, encryption_algs=GCM) as conn:

        async def open_channel(factory: object, peer: tuple[str, int]) -> None:
            # a small window: the channel often keeps what was read (the buffer is not reused)
            await conn.create_connection(factory, "x", 1, window=256 * 1024,
                                         max_pktsize=64 * 1024)

        listener = await asyncio.get_running_loop().create_server(
            socket_then_channel(open_channel, counters, live), "127.0.0.1", 0)
        try:
            port = listener.sockets[0].getsockname()[1]
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
        finally:
            listener.close()
            await listener.wait_closed()
    server.close()
    await server.wait_closed()
    assert counters.bytes_sent == counters.bytes_received == len(payload) + sum(
        len(b"ping %d" % i) for i in range(20))
