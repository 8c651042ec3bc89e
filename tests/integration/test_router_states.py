"""Every state of a client connection ends cleanly (an adversarial review's findings, each a
regression test): a refused pipelined request reaches no upstream, a whole answer survives
garbage behind it, a few bytes and the end are passed through, a spliced connection gives its
slot back once both halves ended, a cut upgrade body ends its connection, pipelining is
bounded, and a client that stops reading is dropped."""

from __future__ import annotations

import asyncio
import json
import tracemalloc

from bridged.config import RouterSettings
from bridged.relay.router import sniff
from bridged.relay.router.framing import MAX_PIPELINED

from ..helpers import eventually, read_response
from .routerkit import RecordingUpstream, client, read_until_closed, recording_upstreams, router_on

MiB = 1024 * 1024


async def _within(coro: object, seconds: float = 10.0) -> object:
    return await asyncio.wait_for(coro, seconds)  # type: ignore[arg-type]


async def _slots_free(relay: object) -> bool:
    return relay.router.budget.used == 0  # type: ignore[attr-defined]


async def test_a_refused_pipelined_request_never_reaches_an_upstream() -> None:
    origin = RecordingUpstream("origin")
    async with recording_upstreams(origin), router_on({"origin": origin.port}) as relay, \
            client(relay.port) as (reader, writer):
        writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\nzz\r\n")
        status, _, body = await _within(read_response(reader))
        assert (status, json.loads(body)["path"]) == (200, "/a")
        status, _, _ = await _within(read_response(reader))
        assert status == 400
        assert await _within(read_until_closed(reader)) == b""
    assert [s.path for s in origin.requests] == ["/a"]
    assert b"/b" not in b"".join(origin.raw)


async def test_a_whole_answer_then_garbage_in_one_read_reaches_the_client_intact() -> None:
    async def sloppy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhijunk\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(sloppy, "127.0.0.1", 0)
    try:
        async with router_on({"origin": server.sockets[0].getsockname()[1]}) as relay, \
                client(relay.port) as (reader, writer):
            for _ in range(2):  # the second on a fresh upstream connection: the first is spoilt
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                status, _, body = await _within(read_response(reader))
                assert (status, body) == (200, b"hi")
    finally:
        server.close()
        await server.wait_closed()


async def test_a_few_bytes_and_the_end_are_passed_through_with_the_end(
    echo_server: int,
) -> None:
    async with router_on({"origin": echo_server}) as relay, \
            client(relay.port) as (reader, writer):
        writer.write(b"ping")  # could still become "PING / HTTP/1.1": undecided...
        writer.write_eof()  # ...until the end says it is all
        assert await _within(read_until_closed(reader)) == b"ping"
    assert relay.passed == [sniff.OTHER]


async def test_a_spliced_connection_gives_its_slot_back_once_both_halves_ended() -> None:
    origin = RecordingUpstream("origin", upgrade="accept")
    async with recording_upstreams(origin), router_on({"origin": origin.port}) as relay:
        for _ in range(3):
            async with client(relay.port) as (reader, writer):
                writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                             b"Upgrade: websocket\r\n\r\nframe")
                status, _, _ = await _within(read_response(reader, head=True))
                assert status == 101
                assert await _within(reader.readexactly(5)) == b"frame"
                writer.write_eof()  # the echo server ends its half in turn
                assert await _within(read_until_closed(reader)) == b""
        await eventually(lambda: _slots_free(relay), within=5, what="every slot given back")
        await _within(asyncio.gather(*(e.wait() for e in origin.closed)))


async def test_a_spliced_connection_whose_upstream_ends_first_is_closed_too() -> None:
    ended = asyncio.Event()
    handlers: list[asyncio.Task[object]] = []

    async def says_bye(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\n\r\nbye")
        writer.write_eof()  # its half ends first; it keeps reading until the client's does
        await reader.read()
        ended.set()  # (the client's end reached it; it never closes its socket itself)
        await asyncio.Event().wait()

    server = await asyncio.start_server(says_bye, "127.0.0.1", 0)
    try:
        async with router_on({"origin": server.sockets[0].getsockname()[1]}) as relay, \
                client(relay.port) as (reader, writer):
            writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                         b"Upgrade: websocket\r\n\r\n")
            status, _, _ = await _within(read_response(reader, head=True))
            assert status == 101
            assert await _within(read_until_closed(reader)) == b"bye"
            writer.write_eof()
            await _within(ended.wait())
            await eventually(lambda: _slots_free(relay), within=5, what="the slot given back")
    finally:
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        server.close()
        await server.wait_closed()


async def test_an_upgrade_request_whose_body_is_cut_ends_its_connection() -> None:
    origin = RecordingUpstream("origin")
    async with recording_upstreams(origin), router_on({"origin": origin.port}) as relay, \
            client(relay.port) as (reader, writer):
        writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\nContent-Length: 10\r\n\r\nabc")
        writer.write_eof()
        assert await _within(read_until_closed(reader)) == b""
        await _within(asyncio.gather(*(e.wait() for e in origin.closed)))
        await eventually(lambda: _slots_free(relay), within=5, what="the slot given back")


async def test_pipelining_is_bounded_and_what_is_past_the_bound_gets_503() -> None:
    origin = RecordingUpstream("origin")
    flood = b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n" * 10_000
    async with recording_upstreams(origin), router_on({"origin": origin.port}) as relay, \
            client(relay.port) as (reader, writer):
        tracemalloc.start()
        try:
            writer.write(flood)
            statuses = []
            while True:
                status, _, _ = await _within(read_response(reader))
                statuses.append(status)
                if status != 200:
                    break
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # the first is answered at once; those parsed behind it are bounded
        assert statuses[-1] == 503 and 1 < len(statuses) - 1 <= MAX_PIPELINED + 1
        assert await _within(read_until_closed(reader)) == b""
        assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB"


async def test_a_client_that_stops_reading_is_dropped_and_its_slot_given_back() -> None:
    settings = RouterSettings(send_timeout_seconds=0.5)

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (64 * MiB))
        try:
            for _ in range(64):
                writer.write(b"b" * MiB)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    server = await asyncio.start_server(big, "127.0.0.1", 0)
    try:
        async with router_on({"origin": server.sockets[0].getsockname()[1]},
                             settings=settings) as relay:
            _, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.transport.pause_reading()  # reads nothing, ever
            writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            await eventually(lambda: _slots_free(relay), within=10,
                             what="the stalled client dropped")
            writer.close()
    finally:
        server.close()
        await server.wait_closed()
