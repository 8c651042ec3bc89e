"""A round-robin TCP front for the replicas: each *connection* goes to the next one, as
kube-proxy sends a Service's connections to its pods (the router sees one "origin" port)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RoundRobinFront:
    ports: list[int]
    port: int = 0
    #: per accepted connection, the index in ``ports`` it was sent to
    assigned: list[int] = field(default_factory=list)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except ConnectionError:
        writer.transport.abort()


@contextlib.asynccontextmanager
async def round_robin(ports: list[int]) -> AsyncIterator[RoundRobinFront]:
    front = RoundRobinFront(list(ports))
    handlers: set[asyncio.Task[Any]] = set()
    # ended by closing their sockets: a cancelled start_server handler logs an error
    transports: set[asyncio.WriteTransport] = set()

    async def splice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        transports.add(writer.transport)
        index = len(front.assigned) % len(front.ports)
        front.assigned.append(index)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", front.ports[index])
        except OSError:
            writer.transport.abort()
            handlers.discard(task)
            return
        transports.add(up_writer.transport)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(splice, "127.0.0.1", 0)
    front.port = server.sockets[0].getsockname()[1]
    try:
        yield front
    finally:
        server.close()
        for transport in transports:
            transport.abort()
        await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), 5)
        await server.wait_closed()
