"""The tap on one intercepted connection: watches a copy of the bytes the daemon's splice
forwards (see :class:`bridged.splice.SpliceObserver`), tells HTTP/2 prior knowledge from
HTTP/1.x by the cluster's first bytes, and hands each exchange on as a redacted
:class:`~.model.Captured`. It never writes to either side: forwarding does not wait for it, and
whatever it cannot follow it stops watching."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .bodies import Exchange
from .model import Captured, CaptureSettings
from .tap_http1 import Http1Tap

if TYPE_CHECKING:
    from .tap_h2 import H2Tap

#: h2c's connection preface (RFC 9113 §3.4): a connection that starts with it is HTTP/2. Here,
#: not in :mod:`.tap_h2`, which is imported only for such a connection: it brings h2's hpack
#: and hyperframe, memory that a daemon whose intercepts speak HTTP/1 need not carry
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

log = logging.getLogger(__name__)

#: bytes from the local service held while the cluster's first bytes do not yet tell the
#: protocol (an h2c server speaks first): past it, stop
MAX_EARLY_BYTES = 64 * 1024

OnCapture = Callable[[Captured], object]


class ConnectionTap:
    """A splice observer: the channel is the cluster's side, the socket the local service's."""

    def __init__(self, intercept: str, settings: CaptureSettings, on_capture: OnCapture, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.intercept = intercept
        self.settings = settings
        self.on_capture = on_capture
        self.clock = clock
        self.parser: Http1Tap | H2Tap | None = None  # None: the protocol is not known yet
        self.stopped = False
        self._first = bytearray()  # the cluster's first bytes, until they tell
        self._early = bytearray()  # the local service's, meanwhile
        self._early_end: bool | None = None  # the local side ended meanwhile (lost?)

    # --- the splice's events ---

    def channel_data(self, data: bytes) -> None:
        if self.parser is not None:
            self.parser.from_client(data)
            return
        if self.stopped:
            return
        self._first += data
        first = bytes(self._first)
        if len(first) < len(PREFACE) and PREFACE.startswith(first):
            return  # may still be h2c's preface
        if first.startswith(PREFACE):
            from .tap_h2 import H2Tap

            self._choose(H2Tap)
        else:
            self._choose(Http1Tap)

    def socket_data(self, data: bytes) -> None:
        if self.parser is not None:
            self.parser.from_server(data)
        elif not self.stopped:
            self._early += data
            if len(self._early) > MAX_EARLY_BYTES:
                self.stop()

    def channel_ended(self, lost: bool) -> None:
        if self.parser is not None:
            self.parser.client_ended(lost)
        elif self._first and not self.stopped:  # a few bytes, then the end: which protocol?
            self._choose(Http1Tap)
            self.channel_ended(lost)
        else:
            self.stop()

    def socket_ended(self, lost: bool) -> None:
        if self.parser is not None:
            self.parser.server_ended(lost)
        else:
            self._early_end = lost

    def stop(self) -> None:
        self.stopped = True
        self._first.clear()
        self._early.clear()

    # --- helpers ---

    def _choose(self, kind: type[Http1Tap] | type[H2Tap]) -> None:
        parser = self.parser = kind(self._emit, limit=self.settings.max_body_bytes,
                                    clock=self.clock)
        first, early = bytes(self._first), bytes(self._early)
        self._first.clear()
        self._early.clear()
        parser.from_client(first)
        if early:
            parser.from_server(early)
        if self._early_end is not None:
            parser.server_ended(self._early_end)

    def _emit(self, exchange: Exchange) -> None:
        record = exchange.captured(self.intercept, self.settings, self.clock())
        try:
            self.on_capture(record)
        except Exception:  # the store's trouble must not stop the tap, nor the traffic
            log.exception("capture of intercept %s: the record was not kept", self.intercept)
