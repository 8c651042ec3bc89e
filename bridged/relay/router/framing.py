"""HTTP/1.1 framing the router needs of its own: limits, one request as parsed, the heads it
writes, and the answers it gives itself. Pure: no I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ...routing.decide import Route
from ...routing.rules import RequestHead

if TYPE_CHECKING:
    from .mirror import Tee
    from .upstream import Upstream

Peer = tuple[str, int]
#: connects to a route's destination with the given protocol; returns its transport (an
#: asyncio transport, or anything with write/write_eof/close/pause_reading/resume_reading)
OpenUpstream = Callable[[Route, Peer, Callable[[], Any]], Awaitable[Any]]
Decide = Callable[[RequestHead], Route]
#: a request (or HTTP/2 stream) ended: (head, route, status, seconds, client); HTTP/2 streams
#: add the keywords ``http_version`` and ``grpc_status``
OnRequest = Callable[..., None]
#: a connection passed through untouched: (reason, client)
OnPassThrough = Callable[[str, Peer], None]
#: the relay's readiness probe: True when the nonce is one it sent (the router answers 204)
Probe = Callable[[str], bool]

#: the most a request's head — or its trailers, or whatever the parser must hold without
#: producing anything — may take: beyond, 431. nginx's large_client_header_buffers is 4 x 8 KiB
MAX_HEAD_BYTES = 64 * 1024
#: requests parsed ahead of the one being answered (pipelining), and the bytes of their heads:
#: beyond, the client is answered 503 after those before. One read of the socket can hold
#: thousands of tiny requests; each costs the relay a kilobyte or so until its turn
MAX_PIPELINED = 64
MAX_PIPELINED_HEAD_BYTES = 256 * 1024
#: bytes a connection's first bytes may take before they must say what it speaks; a request
#: line longer than this is handed to the HTTP parser as it is
MAX_SNIFF_BYTES = 8 * 1024
#: the most an upstream's response head may take before it is given up as broken
MAX_RESPONSE_HEAD_BYTES = 256 * 1024
#: the request header naming a readiness probe of the relay's own (see bridged.relay.probe)
PROBE_HEADER = b"x-bridged-probe"
#: seconds a refused connection stays half-closed, its bytes dropped, so that our answer is
#: read before the close (nginx lingers up to 30 s; a refusal is short)
REFUSAL_LINGER_SECONDS = 1.0


class UpstreamUnavailable(Exception):
    """The chosen destination cannot be reached; the message is the 502's body."""


class Request:
    """One request as parsed: its head, and the bytes for the upstream not sent yet."""

    __slots__ = ("url", "headers", "trailers", "head", "chunked", "complete", "out",  # noqa: RUF023
                 "upstream", "route", "status", "started", "keep_alive", "upgrade", "timer",
                 "head_bytes", "body_sent", "retried", "body_left", "probe", "size",
                 "reported", "mirror")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] | None = None  # set once the head ended
        self.head: RequestHead | None = None
        self.chunked = False
        self.complete = False
        self.out: list[bytes] = []
        self.upstream: Upstream | None = None
        self.route: Route | None = None
        self.status = 0  # of the final response, once its head was parsed
        self.started = 0.0
        self.keep_alive = True
        self.upgrade = False
        self.timer: asyncio.TimerHandle | None = None
        self.head_bytes = b""  # as sent upstream: for a retry on a fresh connection
        self.body_sent = False
        self.retried = False
        self.body_left = 0  # of an upgrade request's body: llhttp does not read it
        self.probe = ""  # the x-bridged-probe nonce, if any
        self.size = 0  # bytes of its target, headers and trailers: bounded
        self.reported = False
        self.mirror: Tee | None = None  # its copies for mirror intercepts, if any

    def send(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.transport.write(data)
        else:
            self.out.append(data)


def serialize_head(method: bytes, url: bytes, version: str,
                   headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [method, b" ", url, b" HTTP/", version.encode(), b"\r\n"]
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def origin_form(url: bytes) -> bytes:
    """``http://host/path?q`` → ``/path?q``: what routing looks at (the request line is sent
    upstream as it came)."""
    if url[:7].lower() == b"http://" or url[:8].lower() == b"https://":
        rest = url.split(b"://", 1)[1]
        cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=-1)
        return b"/" if cut < 0 else (rest[cut:] if rest[cut:cut + 1] == b"/"
                                      else b"/" + rest[cut:])
    return url


_REASONS = {400: "Bad Request", 405: "Method Not Allowed", 408: "Request Timeout",
            431: "Request Header Fields Too Large", 501: "Not Implemented",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


def error_response(status: int, why: str) -> bytes:
    body = f"{why}\n".encode()
    return (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\ncontent-type: text/plain\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


#: the router's answer to the relay's own readiness probe
PROBE_ANSWER = b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"
