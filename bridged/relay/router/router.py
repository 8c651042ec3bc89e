"""The router of one intercepted port: its client connections, their shared limits, and the
one timer that enforces their time-outs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ...config import RouterSettings
from ...routing.decide import Route
from ...routing.rules import RequestHead
from .downstream import Downstream
from .framing import Decide, OnPassThrough, OnRequest, OpenUpstream, Peer, Probe
from .mirror import Mirrors

log = logging.getLogger("bridged.relay.router")


class ConnectionBudget:
    """Client connections the relay's routers hold at once, all ports together: past the limit
    a new one is answered 503, instead of the relay running out of descriptors or memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class HttpRouter:
    """Serves one intercepted port's client connections (``protocol`` is the factory to give
    ``loop.create_server``)."""

    def __init__(self, decide: Decide, open_upstream: OpenUpstream,
                 on_request: OnRequest | None = None,
                 fallback: Callable[[Route], Route | None] | None = None,
                 settings: RouterSettings | None = None,
                 budget: ConnectionBudget | None = None,
                 on_pass_through: OnPassThrough | None = None,
                 probe: Probe | None = None,
                 speaks_h2: Callable[[Route], bool] | None = None,
                 h2c_upgrade: Callable[[], bool] | None = None,
                 mirror: Mirrors | None = None) -> None:
        self.decide = decide
        self.open_upstream = open_upstream
        self.on_request = on_request
        #: where a request goes when its destination cannot be reached (None: a 502)
        self.fallback = fallback
        self.settings = settings if settings is not None else RouterSettings()
        #: shared by the relay's routers (the limit is the relay's); one of its own otherwise
        self.budget = budget if budget is not None else \
            ConnectionBudget(self.settings.max_connections)
        self.on_pass_through = on_pass_through
        self.probe = probe
        #: whether a destination takes HTTP/2 streams (None: all do). The original pods do
        #: whenever a client speaks HTTP/2 to them; a developer's server, if it said so
        self.speaks_h2 = speaks_h2 if speaks_h2 is not None else (lambda route: True)
        #: whether ``Upgrade: h2c`` is accepted by the router itself (the port is declared
        #: HTTP/2); None or False: the upgrade goes to the request's destination, as any other
        self.h2c_upgrade = h2c_upgrade
        #: the port's mirror intercepts, which take copies of HTTP/1.1 requests (None: none)
        self.mirror = mirror
        self.downstreams: set[Downstream] = set()
        self._sweeping: asyncio.TimerHandle | None = None
        #: the loop serving the connections, kept: asyncio.get_running_loop() costs a getpid
        #: system call each time, and a request needs the time several times
        self.loop: asyncio.AbstractEventLoop | None = None

    def protocol(self) -> asyncio.Protocol:
        self.loop = asyncio.get_running_loop()  # (the factory runs in the loop)
        return Downstream(self)

    def admit(self, down: Downstream) -> bool:
        if self.budget.used >= self.budget.limit:
            log.warning("client %s refused: %d client connections open", down.peer[0],
                        self.budget.used)
            return False
        self.budget.used += 1
        down.admitted = True
        self.downstreams.add(down)
        if self._sweeping is None:
            self._sweep_later()
        return True

    def leave(self, down: Downstream) -> None:
        if down.admitted:
            down.admitted = False
            self.budget.used -= 1
            self.downstreams.discard(down)

    def report(self, head: RequestHead, route: Route, status: int, started: float, peer: Peer,
               **extra: Any) -> None:
        """One request (or HTTP/2 stream) ended: tell ``on_request``. ``extra``: what only
        some carry (``http_version``, ``grpc_status``)."""
        if self.on_request is None:
            return
        loop = self.loop or asyncio.get_running_loop()
        elapsed = loop.time() - started if started else 0.0
        try:
            self.on_request(head, route, status, elapsed, peer, **extra)
        except Exception:  # runs in transport callbacks: must never break the proxying
            log.exception("traffic report for %s failed", route.target)

    def passed_through(self, reason: str, peer: Peer) -> None:
        if self.on_pass_through is not None:
            try:
                self.on_pass_through(reason, peer)
            except Exception:  # runs in transport callbacks: must never break the proxying
                log.exception("pass-through report failed")

    def _sweep_later(self) -> None:
        s = self.settings
        shortest = min(s.header_timeout_seconds, s.idle_timeout_seconds,
                       s.send_timeout_seconds, 4.0)
        # a quarter of the shortest time-out: a connection lives at most 25 % past its own
        self._sweeping = asyncio.get_running_loop().call_later(shortest / 4, self._sweep)

    def _sweep(self) -> None:
        """Close the connections whose time ran out; one timer for all of them, so that no
        request pays for arming and cancelling one of its own."""
        self._sweeping = None
        now = asyncio.get_running_loop().time()
        for down in [d for d in self.downstreams if 0 < d.deadline <= now
                     or 0 < d.send_deadline <= now]:
            down.expired(now)
        if self.downstreams:
            self._sweep_later()

    def close(self) -> None:
        """Nothing to stop: client connections carry on (a port changing hands lets them
        finish), each closing its own upstream connections; the sweep ends with the last.
        Copies not sent yet are dropped."""
        if self.mirror is not None:
            self.mirror.close()
