"""The control API's own HTTP/1.1 server (bridged.control.httpserver) at its edges, over a real
unix socket: what a wrong, huge, stalled or pipelining client gets, and that it holds nobody up."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridged.control.api import MAX_BODY
from bridged.control.client import ControlClient
from bridged.control.httpserver import JSON, HttpServer, Request, Routes
from bridged.errors import ControlError

#: seconds a request has from its first byte to its last, here (the daemon's is longer): the
#: stalled client's test waits for it once
REQUEST_TIMEOUT = 3.0


def _routes() -> Routes:
    routes = Routes()

    @routes.get("/v1/echo")
    async def echo_query(request: Request) -> tuple[int, Any]:
        return 200, {"query": request.query}

    @routes.post("/v1/echo")
    async def echo_body(request: Request) -> tuple[int, Any]:
        return 201, {"size": len(request.body), "json": request.json()}

    @routes.delete("/v1/things/{name}")
    async def remove(request: Request) -> tuple[int, Any]:
        return 200, {"removed": request.params["name"]}

    @routes.get("/v1/connection")
    async def connection(request: Request) -> tuple[int, Any]:
        return 200, {"task": id(asyncio.current_task())}  # one task per connection

    return routes


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Path]:
    path = tmp_path / "api.sock"
    http = HttpServer(_routes().dispatch, max_body=MAX_BODY, request_timeout=REQUEST_TIMEOUT)
    await http.start_unix(str(path))
    try:
        yield path
    finally:
        await http.close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


async def _exchange(path: Path, raw: bytes, *,
                    closed: bool) -> tuple[int, dict[str, str], bytes]:
    """One request as raw bytes on a new connection: the answer. ``closed``: the server then
    closes the connection; else it still answers on it."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(raw)
        answer = await _read_response(reader)
        if closed:
            with contextlib.suppress(ConnectionResetError):  # (it had bytes of ours unread)
                assert await reader.read() == b""
        else:
            writer.write(_get("/v1/echo"))
            assert (await _read_response(reader))[0] == 200
        return answer
    finally:
        writer.close()


def _get(target: str, extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: bridged\r\n{extra}\r\n".encode()


async def test_json_answers_with_their_status_and_content_type(server: Path) -> None:
    status, headers, body = await _exchange(server, _get("/v1/echo?a=1&b=x%20y&a=2"),
                                            closed=False)
    assert (status, headers["content-type"]) == (200, JSON)
    assert json.loads(body) == {"query": {"a": "1", "b": "x y"}}  # a repeated field: its first
    client = ControlClient(server)
    answer = await asyncio.to_thread(client.post, "echo", {"x": [1, 2]})
    assert answer == {"size": len(json.dumps({"x": [1, 2]})), "json": {"x": [1, 2]}}
    assert await asyncio.to_thread(client.delete, "things/a%20b") == {"removed": "a b"}


async def test_unknown_path_404_and_wrong_method_405_with_allow(server: Path) -> None:
    status, headers, body = await _exchange(server, _get("/v1/nothing"), closed=False)
    assert (status, body) == (404, b"404: Not Found")
    # what `bridged run` reads as a daemon older than a route (bridged.cli.run._proxies)
    with pytest.raises(ControlError, match="HTTP 404"):
        await asyncio.to_thread(ControlClient(server).post, "nothing", {})
    status, headers, body = await _exchange(
        server, b"PUT /v1/echo HTTP/1.1\r\nHost: bridged\r\nContent-Length: 0\r\n\r\n",
        closed=False)
    assert (status, headers["allow"]) == (405, "GET, POST")
    status, headers, _ = await _exchange(server, _get("/v1/things/a"), closed=False)
    assert (status, headers["allow"]) == (405, "DELETE")


async def test_a_body_over_the_limit_is_refused_with_413(server: Path) -> None:
    client = ControlClient(server)
    just = {"pad": "x" * (MAX_BODY - len('{"pad": ""}'))}  # exactly the limit: served
    assert (await asyncio.to_thread(client.post, "echo", just))["size"] == MAX_BODY
    too_big = {"pad": "x" * MAX_BODY}
    with pytest.raises(ControlError, match="HTTP 413"):  # (its body is text: not JSON)
        await asyncio.to_thread(client.post, "echo", too_big)
    status, _, body = await _exchange(  # said, not sent: answered at once
        server, b"POST /v1/echo HTTP/1.1\r\nHost: b\r\nContent-Length: 999999999\r\n\r\n",
        closed=True)
    assert status == 413
    assert b"1048576" in body
    # a client that waits for "100 Continue" before sending its too big body gets the 413
    # at once (not after the request time-out)
    status, _, _ = await _exchange(
        server, b"POST /v1/echo HTTP/1.1\r\nHost: b\r\nContent-Length: 2000000\r\n"
                b"Expect: 100-continue\r\n\r\n", closed=True)
    assert status == 413


@pytest.mark.parametrize("raw", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"GET /v1/echo HTTP/1.1\r\nHost b\r\n\r\n",  # a header without its colon
    b"POST /v1/echo HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    b"GET /v1/echo HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
])
async def test_a_malformed_request_gets_400_and_the_connection_closes(
        server: Path, raw: bytes) -> None:
    status, _, _ = await _exchange(server, raw, closed=True)
    assert status == 400


async def test_a_chunked_body_is_refused_with_411(server: Path) -> None:
    status, _, _ = await _exchange(
        server, b"POST /v1/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        closed=True)
    assert status == 411


async def test_a_huge_header_is_refused_with_431(server: Path) -> None:
    status, _, _ = await _exchange(server, _get("/v1/echo", f"X-Big: {'a' * 65536}\r\n"),
                                   closed=True)
    assert status == 431


async def test_keep_alive_two_requests_on_one_connection(server: Path) -> None:
    reader, writer = await asyncio.open_unix_connection(str(server))
    try:
        tasks = []
        for _ in range(2):
            writer.write(_get("/v1/connection"))
            status, headers, body = await _read_response(reader)
            assert status == 200 and "connection" not in headers
            tasks.append(json.loads(body)["task"])
        assert tasks[0] == tasks[1]
        writer.write(_get("/v1/echo", "Connection: close\r\n"))  # the client's last
        status, headers, _ = await _read_response(reader)
        assert (status, headers["connection"], await reader.read()) == (200, "close", b"")
    finally:
        writer.close()


async def test_pipelined_requests_are_answered_in_order(server: Path) -> None:
    reader, writer = await asyncio.open_unix_connection(str(server))
    try:
        body = b'{"n": 2}'
        writer.write(_get("/v1/echo?n=1")
                     + b"POST /v1/echo HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                     + _get("/v1/nothing") + _get("/v1/echo?n=4"))
        answers = [await _read_response(reader) for _ in range(4)]
        assert [status for status, _, _ in answers] == [200, 201, 404, 200]
        assert json.loads(answers[0][2])["query"] == {"n": "1"}
        assert json.loads(answers[1][2])["json"] == {"n": 2}
        assert json.loads(answers[3][2])["query"] == {"n": "4"}
    finally:
        writer.close()


async def test_a_stalled_client_is_dropped_and_holds_nobody_up(server: Path) -> None:
    stalled_reader, stalled = await asyncio.open_unix_connection(str(server))
    try:
        stalled.write(b"GET /v1/echo HTTP/1.1\r\nHost: bridged\r\n")  # ... and nothing more
        await stalled.drain()
        dropped = asyncio.ensure_future(stalled_reader.read())
        status, _, _ = await _exchange(server, _get("/v1/echo?other=1"), closed=False)
        assert status == 200
        assert not dropped.done()  # answered while the stalled one was still waited for
        assert await dropped == b""  # then dropped, unanswered
    finally:
        stalled.close()


async def test_close_drops_idle_connections_and_lets_a_request_finish(tmp_path: Path) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    routes = Routes()

    @routes.get("/slow")
    async def slow(request: Request) -> tuple[int, Any]:
        entered.set()
        await release.wait()
        return 200, {"done": True}

    path = tmp_path / "api.sock"
    http = HttpServer(routes.dispatch)
    await http.start_unix(str(path))
    idle_reader, idle = await asyncio.open_unix_connection(str(path))
    busy_reader, busy = await asyncio.open_unix_connection(str(path))
    try:
        busy.write(_get("/slow"))
        await busy.drain()
        await entered.wait()
        closing = asyncio.ensure_future(http.close(grace=30))
        assert await idle_reader.read() == b""  # idle: closed at once
        release.set()
        status, headers, body = await _read_response(busy_reader)
        assert (status, json.loads(body), headers["connection"]) == (200, {"done": True}, "close")
        assert await busy_reader.read() == b""
        await closing
    finally:
        idle.close()
        busy.close()
        with contextlib.suppress(Exception):
            await http.close()
