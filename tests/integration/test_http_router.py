"""The relay's HTTP router on real sockets: per-request routing on keep-alive connections,
streaming, 100-continue, upgrades, smuggling defences, unreachable upstreams."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridged.protocol import Matcher
from bridged.relay.router import HttpRouter, tcp_upstream
from bridged.routing.decide import Route, decide
from bridged.routing.rules import Rule

from ..helpers import free_port, read_response


def _app(who: str) -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"who": who, "path": request.path})

    async def upload(request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_chunked(256 * 1024):
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"who": who, "sha256": digest.hexdigest(), "size": size})

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for n in range(5):
            await response.write(f"{who}-{n};".encode())
        await response.write_eof()
        return response

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            await sock.send_str(f"{who}:{msg.data}")
        return sock

    app = web.Application(client_max_size=0)
    app.router.add_get("/ws", ws)
    app.router.add_post("/upload", upload)
    app.router.add_get("/stream", stream)
    app.router.add_route("*", "/{tail:.*}", hello)
    return app


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def _record_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A raw upstream that decodes one chunked request by hand (not with the router's parser)
    and answers what reached it: the body's sha256 and size, and the trailer fields in order,
    names and values as they came."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        digest, size = hashlib.sha256(), 0
        while size_line := await reader.readuntil(b"\r\n"):
            n = int(size_line.split(b";")[0], 16)
            if n == 0:
                break
            digest.update(await reader.readexactly(n))
            size += n
            assert await reader.readexactly(2) == b"\r\n"
        trailers = []
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, value = line[:-2].decode("latin-1").split(":", 1)
            trailers.append([name, value.strip(" \t")])
        body = json.dumps({"who": "recorder", "chunked": b"chunked" in head.lower(),
                           "sha256": digest.hexdigest(), "size": size,
                           "trailers": trailers}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body))
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def router_port() -> AsyncIterator[int]:
    origin, origin_port = await _serve(_app("origin"))
    alice, alice_port = await _serve(_app("alice"))
    recorder = await asyncio.start_server(_record_chunked, "127.0.0.1", 0)
    ports = {"origin": origin_port, "alice": alice_port, "bob": free_port(),  # bob is down
             "recorder": recorder.sockets[0].getsockname()[1]}
    rules = [Rule.compile("alice", [Matcher("header", "equals", "x-dev", "alice")], 1),
             Rule.compile("bob", [Matcher("header", "equals", "x-dev", "bob")], 2),
             Rule.compile("recorder", [Matcher("header", "equals", "x-dev", "recorder")], 3)]

    async def open_upstream(route: Route, peer: tuple[str, int], factory: Any) -> Any:
        return await tcp_upstream("127.0.0.1", ports[route.target], factory,
                                  f"{route.target}'s local service")

    router = HttpRouter(lambda head: decide(head, rules), open_upstream)
    server = await asyncio.get_running_loop().create_server(router.protocol, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    router.close()
    await server.wait_closed()
    recorder.close()
    await recorder.wait_closed()
    await alice.cleanup()
    await origin.cleanup()


async def test_one_keep_alive_connection_routes_each_request(router_port: int) -> None:
    connector = aiohttp.TCPConnector(limit=1)  # every request on the same connection
    async with aiohttp.ClientSession(connector=connector) as session:
        seen = []
        for dev in ["", "alice", "", "alice", "carol", "alice"]:
            headers = {"x-dev": dev} if dev else {}
            async with session.get(f"http://127.0.0.1:{router_port}/orders",
                                   headers=headers) as response:
                seen.append((await response.json())["who"])
    assert seen == ["origin", "alice", "origin", "alice", "origin", "alice"]


async def test_pipelined_requests_are_answered_in_order(router_port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", router_port)
    writer.write(b"GET /1 HTTP/1.1\r\nHost: x\r\nx-dev: alice\r\n\r\n"
                 b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"GET /3 HTTP/1.1\r\nHost: x\r\nx-dev: alice\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    bodies = re.findall(rb'\{"who": [^}]*\}', raw)
    assert raw.count(b"HTTP/1.1 200 OK") == 3
    assert [b.decode() for b in bodies] == [
        '{"who": "alice", "path": "/1"}', '{"who": "origin", "path": "/2"}',
        '{"who": "alice", "path": "/3"}']


async def test_a_100_mib_upload_streams_through_intact(router_port: int) -> None:
    payload = os.urandom(100 * 1024 * 1024)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 1024 * 1024):
            yield payload[i:i + 1024 * 1024]

    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{router_port}/upload", data=chunks(),
            headers={"x-dev": "alice", "Expect": "100-continue"}) as response:
        answer = await response.json()
    assert answer == {"who": "alice", "size": len(payload),
                      "sha256": hashlib.sha256(payload).hexdigest()}


async def test_chunked_responses_pass_through(router_port: int) -> None:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{router_port}/stream", headers={"x-dev": "alice"}) as response:
        assert response.headers.get("Transfer-Encoding") == "chunked"
        assert await response.text() == "".join(f"alice-{n};" for n in range(5))


async def test_a_websocket_upgrade_is_routed_then_spliced(router_port: int) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(
            f"http://127.0.0.1:{router_port}/ws", headers={"x-dev": "alice"}) as ws:
        for n in range(3):
            await ws.send_str(f"ping{n}")
            assert (await ws.receive()).data == f"alice:ping{n}"


@pytest.mark.parametrize("request_bytes, status", [
    # CL.TE and TE.CL smuggling shapes: the length cannot be told, 400 (RFC 9112 §6.3)
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
     b"400"),
    # framed by its final chunked, but with a coding the router does not implement: 501
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
     b"501"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", b"400"),
    # (what is not HTTP/1.x at all is passed through to the original pods:
    # test_router_passthrough.py)
], ids=["cl-and-te", "two-lengths", "gzip-chunked", "bad-header"])
async def test_smuggling_and_malformed_requests_get_400_and_close(
    router_port: int, request_bytes: bytes, status: bytes,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", router_port)
    writer.write(request_bytes)
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 " + status + b" "), raw[:80]
    assert b"/admin" not in raw and raw.count(b"HTTP/1.1 ") == 1
    # and the router still serves others
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{router_port}/") as response:
        assert (await response.json())["who"] == "origin"


async def test_a_developer_whose_service_is_down_gets_a_502_that_says_so(
    router_port: int,
) -> None:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{router_port}/", headers={"x-dev": "bob"}) as response:
        assert response.status == 502
        assert "bob's local service" in await response.text()


async def test_after_a_head_the_next_request_is_answered_by_the_one_it_was_routed_to(
    router_port: int,
) -> None:
    # one keep-alive connection; each HEAD is followed by a request to the *other* upstream,
    # then one to the HEAD's own (its pooled connection must not wait for the HEAD's "body")
    plan = [("HEAD", "alice"), ("GET", "origin"), ("GET", "alice"),
            ("HEAD", "origin"), ("GET", "alice"), ("GET", "origin"),
            ("HEAD", "alice"), ("HEAD", "origin"), ("GET", "alice")]
    reader, writer = await asyncio.open_connection("127.0.0.1", router_port)
    try:
        for n, (method, target) in enumerate(plan):
            dev = b"x-dev: alice\r\n" if target == "alice" else b""
            writer.write(b"%b /r%d HTTP/1.1\r\nHost: x\r\n%b\r\n" % (method.encode(), n, dev))
            status, headers, body = await asyncio.wait_for(
                read_response(reader, head=method == "HEAD"), 10)
            assert status == 200, (n, method, target)
            if method == "HEAD":
                assert int(headers["content-length"]) > 0  # announced, and yet no body follows
            else:
                assert json.loads(body) == {"who": target, "path": f"/r{n}"}, (n, method)
        writer.write(b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, _, body = await asyncio.wait_for(read_response(reader), 10)
        assert json.loads(body) == {"who": "origin", "path": "/last"}
        assert await asyncio.wait_for(reader.read(), 10) == b""  # and nothing stray after
    finally:
        writer.close()


async def test_chunked_requests_with_trailers_are_reframed_intact(router_port: int) -> None:
    body = os.urandom(300_000)
    checksum = hashlib.sha256(body).hexdigest()
    chunks = b"".join(b"%x\r\n%b\r\n" % (len(body[i:i + 70_000]), body[i:i + 70_000])
                      for i in range(0, len(body), 70_000))
    reader, writer = await asyncio.open_connection("127.0.0.1", router_port)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nx-dev: recorder\r\n"
                 b"Transfer-Encoding: chunked\r\nTrailer: X-Checksum, x-signed-by\r\n"
                 b"Connection: close\r\n\r\n" + chunks +
                 b"0\r\nX-Checksum: %b\r\nx-signed-by: alice\r\n\r\n" % checksum.encode())
    status, _, answer = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert status == 200
    assert json.loads(answer) == {
        "who": "recorder", "chunked": True, "sha256": checksum, "size": len(body),
        "trailers": [["X-Checksum", checksum], ["x-signed-by", "alice"]]}
