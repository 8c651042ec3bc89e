"""Issue 9, point 1: no request smuggling through Upgrade or CONNECT.

The invariant: every request an upstream receives is one the router parsed and decided, and
every response goes back to the connection whose request it answers. Bytes after an upgrade
request are held until the upstream answers: 101 splices them, anything else has them parsed as
the client's next request (decided on their own), and the upstream connection that saw the
attempt is never used again. CONNECT is refused. Upstreams record exactly what reached them.
"""

from __future__ import annotations

import asyncio
import json

from ..helpers import read_response
from .routerkit import (
    RecordingUpstream,
    client,
    read_until_closed,
    recording_upstreams,
    router_on,
)

UPGRADE_A = (b"GET /a HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\n"
             b"Upgrade: websocket\r\n\r\n")
CAPTURE = b"POST /capture HTTP/1.1\r\nHost: svc\r\nContent-Length: 90\r\n\r\n"
VICTIM = (b"GET /mine HTTP/1.1\r\nHost: svc\r\nAuthorization: Bearer victim-secret\r\n"
          b"Connection: close\r\n\r\n")


async def _within(coro: object, seconds: float = 10.0) -> object:
    return await asyncio.wait_for(coro, seconds)  # type: ignore[arg-type]


async def test_the_issue_s_smuggling_example_reaches_no_other_client() -> None:
    origin = RecordingUpstream("origin")
    async with recording_upstreams(origin), router_on({"origin": origin.port}) as relay:
        async with client(relay.port) as (reader, writer):
            writer.write(UPGRADE_A + CAPTURE)  # one write: the smuggling attempt
            status, _, body = await _within(read_response(reader))
            assert (status, json.loads(body)["path"]) == (200, "/a")
            # the attacker's "smuggled" request is its own next request, decided on its own;
            # its body must come from the attacker's connection, not from anyone else's
            async with client(relay.port) as (victim_reader, victim_writer):
                victim_writer.write(VICTIM)
                status, _, body = await _within(read_response(victim_reader))
                victim_answer = json.loads(body)
                assert (status, victim_answer["path"]) == (200, "/mine")
            writer.write(b"x" * 90)
            status, _, body = await _within(read_response(reader))
            assert (status, json.loads(body)["path"], json.loads(body)["body"]) == \
                (200, "/capture", 90)
        await _within(asyncio.gather(*(e.wait() for e in origin.closed)))
    # the connection that saw the upgrade attempt carried that request and nothing else
    by_path = {seen.path: seen for seen in origin.requests}
    attempt = by_path["/a"].connection
    assert bytes(origin.raw[attempt]) == UPGRADE_A
    assert [s.path for s in origin.requests if s.connection == attempt] == ["/a"]
    # the victim's request arrived whole, as a request, on a connection of its own
    assert by_path["/mine"].headers["authorization"] == "Bearer victim-secret"
    assert by_path["/mine"].connection not in (attempt, by_path["/capture"].connection)
    assert by_path["/capture"].body == b"x" * 90
    assert all(b"victim-secret" not in bytes(origin.raw[s.connection])
               for s in origin.requests if s.path != "/mine")


async def test_bytes_after_an_upgrade_request_reach_the_upstream_only_after_its_101() -> None:
    origin = RecordingUpstream("origin", upgrade="accept")
    async with recording_upstreams(origin), router_on({"origin": origin.port}) as relay, \
            client(relay.port) as (reader, writer):
        frames = b"\x81\x05hello" + CAPTURE  # the new protocol's bytes, whatever they look like
        writer.write(UPGRADE_A + frames)
        status, headers, _ = await _within(read_response(reader, head=True))
        assert (status, headers["upgrade"]) == (101, "websocket")
        echoed = await _within(reader.readexactly(len(frames)))
        assert echoed == frames  # spliced: held, then sent once the upstream agreed
        writer.write_eof()
        assert await _within(read_until_closed(reader)) == b""
    assert [s.path for s in origin.requests] == ["/a"]  # the POST inside was never a request


async def test_a_pipelined_upgrade_holds_its_tail_and_each_request_is_decided_on_its_own() -> None:
    alice, bob, origin = (RecordingUpstream(n) for n in ("alice", "bob", "origin"))
    async with recording_upstreams(alice, bob, origin), \
            router_on({"alice": alice.port, "bob": bob.port, "origin": origin.port}) as relay, \
            client(relay.port) as (reader, writer):
        writer.write(b"GET /first HTTP/1.1\r\nHost: svc\r\nx-dev: alice\r\n\r\n"
                     + UPGRADE_A  # to the origin, which refuses
                     + b"GET /after HTTP/1.1\r\nHost: svc\r\nx-dev: bob\r\n"
                       b"Connection: close\r\n\r\n")
        answers = []
        for _ in range(3):
            status, _, body = await _within(read_response(reader))
            answers.append((status, json.loads(body)["who"], json.loads(body)["path"]))
        assert answers == [(200, "alice", "/first"), (200, "origin", "/a"),
                           (200, "bob", "/after")]
        assert await _within(read_until_closed(reader)) == b""
    assert [s.path for s in alice.requests] == ["/first"]
    assert [s.path for s in origin.requests] == ["/a"]
    assert [s.path for s in bob.requests] == ["/after"]


async def test_an_upgrade_request_s_body_goes_by_its_length_and_is_never_parsed() -> None:
    """llhttp does not read an upgrade request's body: the router sends it on by its
    Content-Length, so a request inside it is body, and what follows is the next request."""
    origin = RecordingUpstream("origin")
    async with recording_upstreams(origin), router_on({"origin": origin.port}) as relay, \
            client(relay.port) as (reader, writer):
        body = b"GET /smuggled HTTP/1.1\r\nHost: svc\r\n\r\n"
        writer.write(b"POST /a HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\nContent-Length: %d\r\n\r\n" % len(body) + body
                     + b"GET /next HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        answers = []
        for _ in range(2):
            status, _, answer = await _within(read_response(reader))
            answers.append((status, json.loads(answer)["path"], json.loads(answer)["body"]))
        assert answers == [(200, "/a", len(body)), (200, "/next", 0)]
        assert await _within(read_until_closed(reader)) == b""
    assert [(s.path, s.body) for s in origin.requests] == [("/a", body), ("/next", b"")]


async def test_connect_is_refused_and_reaches_nobody() -> None:
    origin = RecordingUpstream("origin")
    async with recording_upstreams(origin), router_on({"origin": origin.port}) as relay, \
            client(relay.port) as (reader, writer):
        writer.write(b"CONNECT metadata.internal:80 HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /tunnelled HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await _within(read_response(reader))
        assert status == 405 and b"CONNECT" in body
        assert await _within(read_until_closed(reader)) == b""
    assert origin.raw == []  # not even a connection


async def test_a_101_to_a_request_that_asked_no_upgrade_is_a_502() -> None:
    async def switcher(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                     b"Upgrade: evil\r\n\r\nraw bytes")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(switcher, "127.0.0.1", 0)
    try:
        async with router_on({"origin": server.sockets[0].getsockname()[1]}) as relay, \
                client(relay.port) as (reader, writer):
            writer.write(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
            status, _, body = await _within(read_response(reader))
            assert status == 502 and b"switched protocols" in body
            assert b"raw bytes" not in await _within(read_until_closed(reader))
    finally:
        server.close()
        await server.wait_closed()
