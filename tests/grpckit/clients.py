"""Client side of test.v1.Echo: channels that are each one TCP connection, and one helper per
method kind that returns what a test checks (who answered, hashes)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import grpc

from . import payload
from .servers import MAX_MESSAGE

CHANNEL_OPTIONS = (
    ("grpc.enable_http_proxy", 0),  # loopback only, whatever the environment's proxy says
    # grpc shares connections between channels of the same target process-wide: a channel of
    # its own is a client connection of its own, as separate client pods would have
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
)

#: a bound on every call: a broken router fails the test instead of hanging it (seconds)
TIMEOUT = 20.0

Metadata = tuple[tuple[str, str], ...]


def metadata(dev: str | None, **extra: str) -> Metadata:
    """``x-dev: dev`` (none when ``dev`` is None) and ``extra`` (underscores become dashes)."""
    pairs = [("x-dev", dev)] if dev is not None else []
    pairs += [(key.replace("_", "-"), value) for key, value in extra.items()]
    return tuple(pairs)


@contextlib.asynccontextmanager
async def channel(port: int) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as ch:
        yield ch


@dataclass(frozen=True)
class Downloaded:
    whos: frozenset[str]
    size: int
    sha256: str


class EchoClient:
    def __init__(self, ch: grpc.aio.Channel, stubs: SimpleNamespace) -> None:
        self.stub = stubs.pb2_grpc.EchoStub(ch)
        self.pb2 = stubs.pb2

    async def call(self, meta: Metadata, data: bytes = b"", deadline: float = TIMEOUT,
                   **fields: Any) -> Any:
        request = self.pb2.CallRequest(payload=data, **fields)
        return await self.stub.Call(request, metadata=meta, timeout=deadline)

    async def download(self, meta: Metadata, seed: str, size: int, chunk: int) -> Downloaded:
        request = self.pb2.DownloadRequest(seed=seed, size=size, chunk=chunk)
        whos: set[str] = set()
        got: list[bytes] = []
        async for piece in self.stub.Download(request, metadata=meta, timeout=TIMEOUT):
            whos.add(piece.who)
            got.append(piece.data)
        return Downloaded(frozenset(whos), sum(map(len, got)), payload.sha256(got))

    async def upload(self, meta: Metadata, pieces: Iterable[bytes]) -> Any:
        chunks = (self.pb2.UploadChunk(data=piece) for piece in pieces)
        return await self.stub.Upload(chunks, metadata=meta, timeout=TIMEOUT)

    async def chat(self, meta: Metadata, messages: list[bytes], lockstep: bool = True
                   ) -> list[Any]:
        """``lockstep``: each message sent once the previous one came back (a conversation:
        both directions open together); else all sent while the answers are read."""
        call = self.stub.Chat(metadata=meta, timeout=TIMEOUT)
        if lockstep:
            answers = []
            for seq, data in enumerate(messages):
                await call.write(self.pb2.ChatMessage(seq=seq, data=data))
                answers.append(await asyncio.wait_for(call.read(), TIMEOUT))
            await call.done_writing()
            assert await asyncio.wait_for(call.read(), TIMEOUT) == grpc.aio.EOF
            return answers

        async def send() -> None:
            for seq, data in enumerate(messages):
                await call.write(self.pb2.ChatMessage(seq=seq, data=data))
            await call.done_writing()

        sending = asyncio.ensure_future(send())
        try:
            answers = [answer async for answer in call]
        finally:
            sending.cancel()
        await sending
        return answers
