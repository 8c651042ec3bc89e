"""The relay's mirror port, under the gateway strategy: the mesh's ``RequestMirror`` filter
sends it a *copy* of each request it mirrors (the request itself went on to its destination,
whose answer the mesh gave the client). So nothing here is forwarded anywhere but to the
laptops: each copy is answered at once, ``204``, once read whole (the mesh discards a
mirror's answer), and handed to :class:`.mirror.Mirrors`, which copies it to the developers
whose mirror matches it (bounded, dropped and counted past the bounds, never waited for),
reported with the ``note`` that the cluster's answer was not seen here.

Envoy marks a mirrored request's Host with ``-shadow`` (``orders-shadow:80``): it is taken off
again, so the copy and the matchers see the request as its client sent it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

import httptools

from ...routing.rules import RequestHead
from .framing import MAX_HEAD_BYTES, origin_form
from .mirror import Mirrors, Tee

log = logging.getLogger("bridged.relay.router")

#: what the mesh gets for each copy: nothing to read, the connection kept for the next
ANSWER = b"HTTP/1.1 204 No Content\r\n\r\n"
_SHADOW = re.compile(rb"-shadow(?=(:\d+)?$)")


class CopySink(asyncio.Protocol):
    """One connection of the mesh's copies: requests read one after the other (pipelining
    answered in order, as each is read whole), never held back by a slow laptop."""

    def __init__(self, mirrors: Mirrors, note: str, idle_seconds: float) -> None:
        self.mirrors = mirrors
        self.note = note
        self.idle_seconds = idle_seconds
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.peer: tuple[str, int] = ("", 0)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.tee: Tee | None = None
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        self._idle()

    def _idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(self.idle_seconds,
                                                          self.transport.close)

    def data_received(self, data: bytes) -> None:
        self._idle()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.transport.close()  # an upgrade's copy is not taken: nothing follows it
        except httptools.HttpParserError:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        if self.tee is not None:
            self.tee.client_gone()  # a copy cut mid-body is dropped, and counted
            self.tee = None

    # --- the parser's events ---

    def on_message_begin(self) -> None:
        self.url, self.headers, self.head_bytes = b"", [], 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        if name.lower() == b"host":
            value = _SHADOW.sub(b"", value)
        self.headers.append((name, value))

    def _count(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > MAX_HEAD_BYTES:
            raise httptools.HttpParserError("a copy's head past the limit")

    def on_headers_complete(self) -> None:
        method = self.parser.get_method()
        if method == b"CONNECT" or self.parser.should_upgrade():
            return  # a tunnel is not a request to copy
        head = RequestHead(method.decode("latin-1"), origin_form(self.url).decode("latin-1"),
                           [(n.decode("latin-1"), v.decode("latin-1"))
                            for n, v in self.headers])
        self.tee = self.mirrors.begin(head, method, self.url, self.parser.get_http_version(),
                                      self.headers, self.peer)

    def on_body(self, body: bytes) -> None:
        if self.tee is not None:
            self.tee.body(body)

    def on_message_complete(self) -> None:
        tee, self.tee = self.tee, None
        self.transport.write(ANSWER)
        if tee is not None:
            tee.request_done()
            tee.unseen(self.note)
        if not self.parser.should_keep_alive():
            with contextlib.suppress(Exception):
                self.transport.close()
