"""Calls the gRPC tests make at every level (the router alone, the relay on the stand-in
cluster): each checks what came back, so a test only says where the calls must land."""

from __future__ import annotations

import asyncio
import os

import grpc

from . import payload
from .clients import EchoClient, metadata
from .servers import EchoServer

#: seconds one awaited step may take before the test fails (the machine is shared)
STEP = 20.0


async def one_of_each_kind(client: EchoClient, dev: str | None, tag: str) -> list[tuple[str, str]]:
    """A unary, a server-streaming, a client-streaming and a bidirectional call with ``dev``'s
    metadata, each checked for its bytes; (method, who answered) of each."""
    meta = metadata(dev, x_call=tag)
    data = os.urandom(64 * 1024)
    unary = await client.call(meta, data)
    assert (unary.size, unary.sha256) == (len(data), payload.sha256([data]))

    seed, size, chunk = f"download-{tag}", 256 * 1024, 16 * 1024
    down = await client.download(meta, seed, size, chunk)
    assert (down.size, down.sha256) == (size, payload.sha256(payload.chunks(seed, size, chunk)))
    assert len(down.whos) == 1

    pieces = list(payload.chunks(f"upload-{tag}", 256 * 1024, 32 * 1024))
    up = await client.upload(meta, pieces)
    assert (up.count, up.size, up.sha256) == (8, 256 * 1024, payload.sha256(pieces))

    said = [os.urandom(8 * 1024) for _ in range(4)]
    answers = await client.chat(meta, said)
    assert [(a.seq, a.data) for a in answers] == list(enumerate(said))
    assert len({a.who for a in answers}) == 1
    return [("Call", unary.who), ("Download", next(iter(down.whos))), ("Upload", up.who),
            ("Chat", answers[0].who)]


async def a_cancelled_stream_reaches(client: EchoClient, server: EchoServer,
                                     dev: str) -> None:
    """A Download ``server`` holds open is cancelled by the client: only the stream's reset
    can tell the server (its deadline is 20 s away), which must see the call end cancelled;
    a Chat on the same connection, open all along, carries on and ends OK."""
    chat = client.stub.Chat(metadata=metadata(dev), timeout=20)
    await chat.write(client.pb2.ChatMessage(seq=0, data=b"before"))
    assert (await asyncio.wait_for(chat.read(), STEP)).data == b"before"
    download = client.stub.Download(
        client.pb2.DownloadRequest(seed="s", size=64 * 1024, chunk=16 * 1024, hold_seconds=15),
        metadata=metadata(dev), timeout=20)
    for _ in range(4):  # all of it: the server now holds the stream open, waiting
        assert (await asyncio.wait_for(download.read(), STEP)).who == dev
    held = server.seen[-1]
    assert held.method == "Download" and not held.ended.is_set()
    download.cancel()
    await asyncio.wait_for(held.ended.wait(), 5)
    assert held.cancelled

    await chat.write(client.pb2.ChatMessage(seq=1, data=b"after"))
    answer = await asyncio.wait_for(chat.read(), STEP)
    assert (answer.who, answer.data) == (dev, b"after")
    await chat.done_writing()
    assert await asyncio.wait_for(chat.read(), STEP) == grpc.aio.EOF
    assert await asyncio.wait_for(chat.code(), STEP) == grpc.StatusCode.OK
