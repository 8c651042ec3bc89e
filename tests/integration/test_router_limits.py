"""Issue 9, point 3: bounded memory and time per client connection.

A request head and its trailers may take 64 KiB together (431 beyond, with the relay holding
no more than that); a head must arrive within the header time-out (408), an idle keep-alive
connection is closed after the idle time-out, and past ``max_connections`` client connections
a new one gets 503. A response may take as long as it takes.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc

from bridged.config import RouterSettings
from bridged.relay.router import MAX_HEAD_BYTES

from ..helpers import read_response
from .routerkit import RecordingUpstream, client, read_until_closed, recording_upstreams, router_on

MiB = 1024 * 1024


async def _within(coro: object, seconds: float = 10.0) -> object:
    return await asyncio.wait_for(coro, seconds)  # type: ignore[arg-type]


async def _stream_trailer(writer: asyncio.StreamWriter, reader: asyncio.StreamReader,
                          size: int) -> tuple[int, bytes]:
    """A chunked request whose trailer section grows to ``size`` bytes, sent in 64 KiB
    pieces while the relay may still read: the relay must answer before it has all."""
    writer.write(b"POST /up HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n0\r\nx-trailer: ")
    sent = 0
    piece = b"a" * (64 * 1024)
    try:
        while sent < size:
            writer.write(piece)
            sent += len(piece)
            await writer.drain()
    except ConnectionError:
        pass  # the relay stopped reading and closed: expected
    status, _, body = await _within(read_response(reader))
    return status, body


async def test_trailers_count_against_the_head_limit_and_memory_stays_bounded() -> None:
    origin = RecordingUpstream("origin")
    async with recording_upstreams(origin), router_on({"origin": origin.port}) as relay, \
            client(relay.port) as (reader, writer):
        tracemalloc.start()
        try:
            status, body = await _stream_trailer(writer, reader, 32 * MiB)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert status == 431 and b"trailers" in body
        # the relay (and this test's client) held a few reads' worth, not the 32 MiB
        assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB"
        assert await _within(read_until_closed(reader)) == b""


async def test_a_head_of_exactly_the_limit_passes_and_one_byte_more_is_431() -> None:
    origin = RecordingUpstream("origin")
    async with recording_upstreams(origin), router_on({"origin": origin.port}) as relay:
        for extra, expected in ((0, 200), (1, 431)):
            # target + name + value + 4 per header, as the router counts
            filler = MAX_HEAD_BYTES - len("/x") - (len("host") + len("svc") + 4) \
                - (len("x-fill") + 4) - (len("connection") + len("close") + 4) + extra
            async with client(relay.port) as (reader, writer):
                writer.write(b"GET /x HTTP/1.1\r\nhost: svc\r\nx-fill: %b\r\n"
                             b"connection: close\r\n\r\n" % (b"f" * filler))
                status, _, _ = await _within(read_response(reader))
                assert status == expected
    assert [s.path for s in origin.requests] == ["/x"]


async def test_a_head_that_does_not_arrive_in_time_gets_408() -> None:
    settings = RouterSettings(header_timeout_seconds=0.5)
    origin = RecordingUpstream("origin")
    async with recording_upstreams(origin), \
            router_on({"origin": origin.port}, settings=settings) as relay:
        async with client(relay.port) as (reader, writer):  # says nothing at all
            status, _, body = await _within(read_response(reader))
            assert status == 408 and b"0.5 s" in body
        async with client(relay.port) as (reader, writer):  # a slow loris
            writer.write(b"GET /slow HTTP/1.1\r\nHost: svc\r\n")
            status, _, _ = await _within(read_response(reader))
            assert status == 408
            assert await _within(read_until_closed(reader)) == b""
    assert origin.requests == []


async def test_an_idle_keep_alive_connection_is_closed_but_a_slow_answer_is_awaited() -> None:
    settings = RouterSettings(header_timeout_seconds=0.3, idle_timeout_seconds=0.3)
    answer = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            await answer.wait()  # a developer at a breakpoint
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    try:
        async with router_on({"origin": server.sockets[0].getsockname()[1]},
                             settings=settings) as relay, \
                client(relay.port) as (reader, writer):
            writer.write(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
            pending = asyncio.ensure_future(read_response(reader))
            # several time-outs' worth of waiting for the answer: the connection stays
            done, _ = await asyncio.wait([pending], timeout=1.0)
            assert not done
            answer.set()
            status, _, body = await _within(pending)
            assert (status, body) == (200, b"ok")
            # then idle: closed by the relay without a word
            assert await _within(read_until_closed(reader), 5) == b""
    finally:
        server.close()
        await server.wait_closed()


async def test_past_max_connections_a_new_client_gets_503_and_a_freed_slot_serves_again() -> None:
    settings = RouterSettings(max_connections=3)
    origin = RecordingUpstream("origin")
    async with recording_upstreams(origin), \
            router_on({"origin": origin.port}, settings=settings) as relay:
        held = [await asyncio.open_connection("127.0.0.1", relay.port) for _ in range(3)]
        for reader, writer in held:  # each one admitted and served
            writer.write(b"GET /held HTTP/1.1\r\nHost: svc\r\n\r\n")
            status, _, _ = await _within(read_response(reader))
            assert status == 200
        async with client(relay.port) as (reader, writer):
            writer.write(b"GET /over HTTP/1.1\r\nHost: svc\r\n\r\n")
            status, _, body = await _within(read_response(reader))
            assert status == 503 and b"3 client connections" in body
        reader, writer = held.pop()
        writer.close()
        await writer.wait_closed()
        # the slot is given back once the relay saw the close
        async def served() -> int:
            while True:
                async with client(relay.port) as (r, w):
                    w.write(b"GET /again HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
                    status, _, body = await read_response(r)
                    if status == 200:
                        return json.loads(body)["who"] == "origin"
        assert await _within(served())
        for _, writer in held:
            writer.close()
    assert "/over" not in [s.path for s in origin.requests]
