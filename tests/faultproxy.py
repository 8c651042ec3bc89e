"""A small TCP fault proxy for the tests: it sits on 127.0.0.1 between a daemon and its relay and
breaks the carrier on demand, the ways real networks and clusters do.

- :meth:`FaultProxy.cut_after`: once N more bytes have passed (both directions, all connections,
  so the cut falls mid-packet), every connection is ended at once, with a reset (an API server's
  port-forward or a load balancer dropping it) or a FIN (a clean close of a cut stream);
- :meth:`FaultProxy.stall`: the current connections stop passing bytes and stay open, a network
  gone dark (only keepalives can tell);
- :meth:`FaultProxy.half_open`: the relay's side is reset while the daemon's side stays open and
  its bytes vanish, a laptop whose network went away under it;
- :meth:`FaultProxy.flip_after`: once N more bytes have passed, one bit of the next byte is
  flipped and the bytes flow on: a carrier that corrupts data (only the SSH MAC can tell);
- ``delay_seconds``: each chunk waits that long before it is passed on.

New connections always pass (the daemon's reconnection goes through the proxy too).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from bridged.sockets import reset

CHUNK = 64 * 1024


def _reset(writer: asyncio.StreamWriter) -> None:
    reset(writer.transport)


@dataclass(eq=False)
class _Link:
    """One proxied connection: the daemon's socket and the relay's."""

    down: asyncio.StreamWriter  # to the daemon
    up: asyncio.StreamWriter  # to the relay
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    #: the relay's side is gone; what the daemon sends is swallowed
    swallowing: bool = False

    def end(self, how: str) -> None:
        for task in self.tasks:
            task.cancel()
        for writer in (self.down, self.up):
            if how == "reset":
                _reset(writer)
            else:
                writer.close()


class FaultProxy:
    """``async with FaultProxy(target_port) as proxy``: listens on 127.0.0.1:``proxy.port``."""

    def __init__(self, target_port: int, *, delay_seconds: float = 0.0) -> None:
        self.target_port = target_port
        self.delay_seconds = delay_seconds
        self.port = 0
        #: bytes passed on, both directions, since the start
        self.passed = 0
        #: cuts done (each ends every connection open at the time)
        self.cuts = 0
        #: connections accepted in all
        self.accepted = 0
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self._budget: int | None = None  # bytes left before an armed cut
        self._how = "reset"
        self._cut = asyncio.Event()
        #: bits flipped so far, and the bytes left before an armed flip
        self.flips = 0
        self._flip_at: int | None = None
        self._flipped = asyncio.Event()

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut_now("reset")
        await self._server.wait_closed()

    # --- faults ---

    def cut_after(self, nbytes: int, how: str = "reset") -> None:
        """End every connection once ``nbytes`` more bytes have passed (``how``: "reset" or
        "close"); :meth:`wait_cut` returns when it happened."""
        assert how in ("reset", "close")
        self._budget, self._how = nbytes, how
        self._cut.clear()

    async def wait_cut(self) -> None:
        await self._cut.wait()

    def cut_now(self, how: str = "reset") -> None:
        self._budget = None
        links, self._links = self._links, set()
        for link in links:
            link.end(how)
        self.cuts += 1
        self._cut.set()

    def flip_after(self, nbytes: int) -> None:
        """Flip one bit of the byte that comes once ``nbytes`` more bytes have passed (either
        direction); :meth:`wait_flipped` returns when it happened."""
        self._flip_at = nbytes
        self._flipped.clear()

    async def wait_flipped(self) -> None:
        await self._flipped.wait()

    def _maybe_flip(self, data: bytes) -> bytes:
        at = self._flip_at
        if at is None:
            return data
        if at >= len(data):
            self._flip_at = at - len(data)
            return data
        self._flip_at = None
        self.flips += 1
        self._flipped.set()
        return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:]

    def stall(self) -> int:
        """Stop the current connections dead (open, silent); returns how many."""
        for link in self._links:
            link.flowing.clear()
        return len(self._links)

    def half_open(self) -> int:
        """Reset the relay's side of the current connections, leave the daemon's side open and
        swallow what it sends; returns how many."""
        for link in self._links:
            link.swallowing = True
            _reset(link.up)
        return len(self._links)

    # --- passing bytes ---

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            _reset(writer)
            return
        link = _Link(writer, up_writer)
        link.flowing.set()
        self._links.add(link)
        link.tasks = [asyncio.create_task(self._pass(link, reader, up_writer, upward=True)),
                      asyncio.create_task(self._pass(link, up_reader, writer, upward=False))]
        await asyncio.gather(*link.tasks, return_exceptions=True)
        if link in self._links:
            self._links.discard(link)
            link.end("close")

    async def _pass(self, link: _Link, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    *, upward: bool) -> None:
        try:
            while data := await src.read(CHUNK):
                if upward and link.swallowing:
                    continue
                await link.flowing.wait()
                if self.delay_seconds:
                    await asyncio.sleep(self.delay_seconds)
                budget = self._budget
                if budget is not None and len(data) >= budget:
                    dst.write(data[:budget])
                    self.passed += budget
                    self.cut_now(self._how)
                    return
                if budget is not None:
                    self._budget = budget - len(data)
                self.passed += len(data)
                dst.write(self._maybe_flip(data))
                await dst.drain()
            if not link.swallowing:  # the daemon's side of a half-open link hears nothing
                dst.write_eof()
        except OSError:
            pass
