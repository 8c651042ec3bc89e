"""Echo servers (grpc.aio, 127.0.0.1) that record every call they saw.

An :class:`EchoServer` stands for one replica of the Service or one developer's laptop: each
answer carries its ``name`` and each call leaves a :class:`Seen` in ``seen`` — method,
metadata, the deadline it arrived with, and whether it ended cancelled — so a test counts
where every call landed and what reached it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import grpc

from . import payload

#: 32 MiB messages and some room for their framing (gRPC's default limit is 4 MiB received)
MAX_MESSAGE = 64 * 1024 * 1024
SERVER_OPTIONS = (
    ("grpc.so_reuseport", 0),  # port 0 must never land on a port another test listens on
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
)


@dataclass
class Seen:
    method: str  # Call, Download, Upload or Chat
    metadata: dict[str, str | bytes]
    #: seconds left of the client's deadline when the call arrived (None: no deadline)
    time_remaining: float | None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    #: the call ended because the client cancelled it or its deadline passed
    cancelled: bool = False

    @property
    def dev(self) -> str | bytes | None:
        return self.metadata.get("x-dev")


class EchoServicer:
    """test.v1.Echo: every answer says who served it."""

    def __init__(self, server: EchoServer) -> None:
        self.server = server
        self.pb2 = server.stubs.pb2

    def _arrived(self, method: str, context: grpc.aio.ServicerContext) -> Seen:
        seen = Seen(method, dict(context.invocation_metadata() or ()), context.time_remaining())

        def done(ctx: grpc.aio.ServicerContext) -> None:
            seen.cancelled = seen.cancelled or ctx.cancelled()
            seen.ended.set()

        context.add_done_callback(done)
        self.server.seen.append(seen)
        return seen

    async def _hold(self, seen: Seen, seconds: float) -> None:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            seen.cancelled = True  # what grpc.aio does to a handler whose call is gone
            raise

    async def Call(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        seen = self._arrived("Call", context)
        if request.hold_seconds > 0:
            await self._hold(seen, request.hold_seconds)
        if request.fail_code:
            context.set_trailing_metadata(tuple(request.fail_trailers.items()))
            await context.abort(_status(request.fail_code), request.fail_details)
        return self.pb2.CallReply(who=self.server.name, size=len(request.payload),
                                  sha256=hashlib.sha256(request.payload).hexdigest())

    async def Download(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        seen = self._arrived("Download", context)
        for piece in payload.chunks(request.seed, request.size, request.chunk):
            yield self.pb2.DownloadChunk(who=self.server.name, data=piece)
        if request.hold_seconds > 0:
            await self._hold(seen, request.hold_seconds)

    async def Upload(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        self._arrived("Upload", context)
        digest, count, size = hashlib.sha256(), 0, 0
        async for chunk in requests:
            digest.update(chunk.data)
            count += 1
            size += len(chunk.data)
        return self.pb2.UploadReply(who=self.server.name, count=count, size=size,
                                    sha256=digest.hexdigest())

    async def Chat(self, requests: AsyncIterator[Any],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        seen = self._arrived("Chat", context)
        try:
            async for message in requests:
                yield self.pb2.ChatMessage(who=self.server.name, seq=message.seq,
                                           data=message.data)
        except asyncio.CancelledError:
            seen.cancelled = True
            raise


def _status(value: int) -> grpc.StatusCode:
    """The grpc.StatusCode of a numeric code (its members' values are (int, name) pairs)."""
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    raise ValueError(f"no gRPC status code {value}")


@dataclass
class EchoServer:
    name: str
    stubs: SimpleNamespace
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    _server: grpc.aio.Server | None = None

    async def start(self) -> EchoServer:
        self._server = grpc.aio.server(options=SERVER_OPTIONS)
        self.stubs.pb2_grpc.add_EchoServicer_to_server(EchoServicer(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def stop(self) -> None:
        """Gone at once, its calls and connections cut (a laptop killed mid-session)."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(None)

    def calls(self, method: str | None = None) -> list[Seen]:
        return [s for s in self.seen if method is None or s.method == method]


@contextlib.asynccontextmanager
async def echo_servers(stubs: SimpleNamespace, *names: str) -> AsyncIterator[list[EchoServer]]:
    servers: list[EchoServer] = []
    try:
        for name in names:
            servers.append(await EchoServer(name, stubs).start())
        yield servers
    finally:
        await asyncio.gather(*(s.stop() for s in servers))
