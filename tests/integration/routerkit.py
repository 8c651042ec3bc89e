"""Test kit for the router's trust tests: upstreams that record exactly what reached them.

A :class:`RecordingUpstream` is a raw TCP server on 127.0.0.1 that parses requests with a few
lines of its own (not the router's parser), records every connection's raw bytes and every
request it saw, and answers each request with a JSON body naming itself, the path, and which
of its connections carried it. ``upgrade`` decides what it says to an ``Upgrade`` request:
"refuse" (200, the connection goes on) or "accept" (101, then it echoes raw bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from bridged.config import RouterSettings
from bridged.relay.router import HttpRouter, tcp_upstream
from bridged.routing.decide import ORIGIN, Route
from bridged.routing.rules import RequestHead


@dataclass
class Seen:
    connection: int
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RecordingUpstream:
    name: str
    upgrade: str = "refuse"  # or "accept"
    port: int = 0
    #: raw bytes per connection, in arrival order (complete once the connection closed)
    raw: list[bytearray] = field(default_factory=list)
    requests: list[Seen] = field(default_factory=list)
    closed: list[asyncio.Event] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = len(self.raw)
        raw = bytearray()
        self.raw.append(raw)
        closed = asyncio.Event()
        self.closed.append(closed)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                raw += head
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        key, value = line.split(":", 1)
                        headers[key.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                raw += body
                self.requests.append(Seen(n, method, path, headers, body))
                if "upgrade" in headers and self.upgrade == "accept":
                    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                                 b"Upgrade: %b\r\n\r\n" % headers["upgrade"].encode())
                    while data := await reader.read(65536):
                        raw += data
                        writer.write(data)
                        await writer.drain()
                    return
                answer = json.dumps({"who": self.name, "path": path, "connection": n,
                                     "body": len(body)}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%b" % (len(answer), answer))
                await writer.drain()
        except asyncio.IncompleteReadError as exc:
            raw += exc.partial  # what came before the close, not a whole request
        except ConnectionError:
            pass
        finally:
            closed.set()
            writer.close()


@contextlib.asynccontextmanager
async def recording_upstreams(*upstreams: RecordingUpstream) -> AsyncIterator[None]:
    servers = []
    handlers: set[asyncio.Task[Any]] = set()

    def start(up: RecordingUpstream) -> Callable[..., Any]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                await up.serve(reader, writer)
            finally:
                handlers.discard(task)
        return handle

    for up in upstreams:
        server = await asyncio.start_server(start(up), "127.0.0.1", 0, limit=1024 * 1024)
        up.port = server.sockets[0].getsockname()[1]
        servers.append(server)
    try:
        yield
    finally:
        for server in servers:
            server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        for server in servers:
            await server.wait_closed()


def route_by_x_dev(head: RequestHead) -> Route:
    values = head.values("x-dev")
    return Route(values[0].strip() if values else ORIGIN)


@contextlib.asynccontextmanager
async def router_on(ports: dict[str, int], decide: Callable[[RequestHead], Route] = route_by_x_dev,
                    **kwargs: Any) -> AsyncIterator[SimpleNamespace]:
    """An HttpRouter on 127.0.0.1 routing to ``ports`` (target → port); ``passed`` lists the
    pass-through reports, ``downstreams`` the client connections' protocols."""
    passed: list[str] = []

    async def open_upstream(route: Route, peer: tuple[str, int], factory: Any) -> Any:
        if route.target not in ports:
            from bridged.relay.router import UpstreamUnavailable
            raise UpstreamUnavailable(f"{route.target}: unknown here")
        return await tcp_upstream("127.0.0.1", ports[route.target], factory, route.target)

    kwargs.setdefault("settings", RouterSettings())
    router = HttpRouter(decide, open_upstream,
                        on_pass_through=lambda reason, peer: passed.append(reason), **kwargs)
    downstreams: list[Any] = []

    def factory() -> Any:
        proto = router.protocol()
        downstreams.append(proto)
        return proto

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        yield SimpleNamespace(port=server.sockets[0].getsockname()[1], router=router,
                              passed=passed, downstreams=downstreams)
    finally:
        server.close()
        for proto in downstreams:
            if proto.transport is not None:
                proto.transport.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def client(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            data += chunk
    return data
