"""The relay's HTTP router: decides per request (HTTP/1.1) or per stream (HTTP/2) where it goes,
and proxies it there.

It stands in front of *every* request of an intercepted Service — the whole team's traffic, not
only the developer's — so it is built to do no harm:

- **Decided, or untouched.** Each client connection's first bytes are classified
  (:mod:`.sniff`): HTTP/1.x requests are routed one by one; HTTP/2 with prior knowledge (gRPC,
  h2c) is terminated and routed stream by stream (:mod:`.h2downstream`), so one connection's
  calls may go to different places; TLS or any other protocol is spliced untouched to the
  original pods, and reported.
  Every request an upstream receives is one this router parsed and decided: bytes after an
  ``Upgrade`` request are held until the upstream answers (101: spliced; anything else: parsed
  as the next request, or the connection closes) — except ``Upgrade: h2c`` on a port declared
  HTTP/2, which the router accepts itself; ``CONNECT`` is refused (a reverse proxy does
  not tunnel); requests with both ``Content-Length`` and ``Transfer-Encoding``, two lengths, or
  a coding other than ``chunked`` are refused (RFC 9112 §6.3: how smuggling starts).
- **No connection shared between clients.** A client connection's requests use upstream
  connections of its own, one per destination, kept while it lives: nothing one client sends
  can reach another's connection, and the original pods are balanced per client connection,
  as kube-proxy balances them without bridged (a shared pool sent ~all requests to one pod).
- **Bounded per client.** A request head (and its trailers) may take :data:`MAX_HEAD_BYTES`,
  requests parsed ahead of their turn 64 (pipelining); a head must arrive within
  ``header_timeout_seconds``, an idle keep-alive connection is closed after
  ``idle_timeout_seconds``, a client that stops reading is dropped after
  ``send_timeout_seconds``; past ``max_connections`` client connections a new one gets 503.
  The wait for a *response* has no limit unless ``response_timeout_seconds`` is set (504),
  because a request held at a developer's breakpoint must complete.

How: asyncio protocols, httptools (llhttp) and h2. :mod:`.sniff` tells what a connection speaks;
:mod:`.downstream` is a client connection's state machine; :mod:`.upstream` one connection to a
destination; :mod:`.h2downstream`, :mod:`.h2upstream` and :mod:`.h2peer` the same for HTTP/2
(bodies moved within flow-control windows, both ways, per stream); :mod:`.framing` the limits
and the heads the router writes itself; :mod:`.router` the port's connections, their budget and
time-outs. A request's head is decided by :func:`bridged.routing.decide.decide` alone; requests
are re-framed from the parser's events (the head with its headers in order and case as sent, the
body as is, or re-chunked with its trailers); responses are forwarded *verbatim*, parsed only to
find where each ends, so a malformed or cut head is a clean 502 and a second response to one
request never reaches the client. Requests are answered in order (pipelining); back-pressure
works both ways. ``Expect: 100-continue`` works by itself; a HEAD's response ends with its head.
"""

from .framing import MAX_HEAD_BYTES, UpstreamUnavailable
from .router import ConnectionBudget, HttpRouter
from .upstream import tcp_upstream

__all__ = ["MAX_HEAD_BYTES", "ConnectionBudget", "HttpRouter", "UpstreamUnavailable",
           "tcp_upstream"]
