"""One HTTP/2 connection to where streams go (the original pods, or a developer's session),
owned by one client connection: it carries that client's streams for one destination, as many
at once as the destination allows, and hands each stream's answer back to the client side."""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import h2.errors
import h2.events
import h2.exceptions

from ...routing.decide import Route
from .h2peer import Exchange, H2Peer, flow, grpc_status

if TYPE_CHECKING:
    from .h2downstream import H2Downstream

log = logging.getLogger("bridged.relay.router")


class H2Upstream(H2Peer):
    """An asyncio protocol (give ``lambda: upstream`` as the connection's factory)."""

    def __init__(self, down: H2Downstream, route: Route) -> None:
        super().__init__(client_side=True)
        self.down = down
        self.route = route
        self.streams: dict[int, Exchange] = {}  # by upstream stream id
        self.waiting: deque[Exchange] = deque()  # not opened yet (connecting, or at its limit)
        self.closed = False
        self.draining = False  # it sent GOAWAY: no new stream goes to it
        #: its GOAWAY's error code: what the streams it leaves unfinished are reset with
        self.goaway_code = 0

    @property
    def usable(self) -> bool:
        return not (self.closed or self.draining)

    def start(self, ex: Exchange) -> None:
        ex.up = self
        self.waiting.append(ex)
        if self.transport is not None:
            self._open_waiting()

    def _open_waiting(self) -> None:
        conn = self.conn
        while self.waiting and not self.draining and \
                conn.open_outbound_streams < conn.remote_settings.max_concurrent_streams:
            ex = self.waiting.popleft()
            sid = conn.get_next_available_stream_id()
            ex.up_sid = sid
            self.streams[sid] = ex
            bodiless = ex.request.ended and not ex.request.chunks and not ex.request.trailers
            try:
                conn.send_headers(sid, ex.headers, end_stream=bodiless)
                ex.request.done = bodiless
                flow(ex.request, self.down, ex.sid, self, sid)
            except h2.exceptions.ProtocolError as exc:  # a head HTTP/2 lets no client send
                self.streams.pop(sid, None)
                self.down.upstream_lost(ex, f"could not be sent this request ({exc})")
                continue
            ex.headers = []  # sent: a long-lived stream keeps no copy of its head

    def forget(self, ex: Exchange) -> None:
        if ex.up_sid:
            self.streams.pop(ex.up_sid, None)
        else:
            with contextlib.suppress(ValueError):
                self.waiting.remove(ex)

    def reset(self, ex: Exchange, code: int) -> None:
        """The client gave up on ``ex``: so does its upstream stream."""
        self.forget(ex)
        if ex.up_sid and not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.reset_stream(ex.up_sid, code)

    # --- transport events ---

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.begin()
        self._open_waiting()
        self.flush()

    def data_received(self, data: bytes) -> None:
        down = self.down
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.warning("%s broke HTTP/2: %s", self.route.target, exc)
            self.flush()  # its GOAWAY
            self._lost("sent invalid HTTP/2")
            self.close()
            return
        for event in events:
            self._event(event)
        if self.oversized():
            self.conn.close_connection(h2.errors.ErrorCodes.FRAME_SIZE_ERROR)
            self.flush()
            self._lost("sent an HTTP/2 frame larger than its limit")
            self.close()
            return
        self.flush()
        down.flush()

    def _event(self, event: Any) -> None:
        down = self.down
        if isinstance(event, h2.events.DataReceived):
            ex = self.streams.get(event.stream_id)
            if self.take_data(event, ex.response if ex is not None else None):
                assert ex is not None
                down.pump_response(ex)
        elif isinstance(event, h2.events.ResponseReceived):
            ex = self.streams.get(event.stream_id)
            if ex is not None:
                down.respond(ex, event.headers, event.stream_ended is not None)
        elif isinstance(event, h2.events.TrailersReceived):
            ex = self.streams.get(event.stream_id)
            if ex is not None:
                ex.response.trailers = event.headers
                ex.grpc_status = grpc_status(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            ex = self.streams.get(event.stream_id)
            if ex is not None:
                ex.response.ended = True
                down.pump_response(ex)
        elif isinstance(event, h2.events.InformationalResponseReceived):
            ex = self.streams.get(event.stream_id)
            if ex is not None:
                down.informational(ex, event.headers)
        elif isinstance(event, h2.events.StreamReset):
            ex = self.streams.pop(event.stream_id, None)
            if ex is not None:
                down.upstream_reset(ex, event.error_code)
        elif isinstance(event, h2.events.WindowUpdated):
            self.pump_requests(event.stream_id)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._open_waiting()
            self.pump_requests(0)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway(int(event.error_code or 0), event.last_stream_id)

    def pump_requests(self, stream_id: int) -> None:
        """Windows opened (one stream's, or all): move the request bodies waiting for them."""
        down = self.down
        if stream_id:
            ex = self.streams.get(stream_id)
            if ex is not None:
                down.pump_request(ex)
            return
        for ex in list(self.streams.values()):
            down.pump_request(ex)

    def _goaway(self, code: int, last: int | None) -> None:
        """The upstream takes no new stream. Those it never saw (above ``last``) are refused
        to the client — REFUSED_STREAM tells it they were not processed, so it may retry;
        those waiting here are sent on a fresh connection; the others finish."""
        self.draining = True
        self.goaway_code = code
        self.down.replace(self)
        waiting, self.waiting = list(self.waiting), deque()
        if code == h2.errors.ErrorCodes.NO_ERROR:
            self.keep_sending()
        last = 2**31 - 1 if last is None else last
        for sid, ex in list(self.streams.items()):
            if sid > last:
                del self.streams[sid]
                self.down.upstream_reset(ex, h2.errors.ErrorCodes.REFUSED_STREAM)
        for ex in waiting:
            self.down.route_stream(ex, ex.route)
        if not self.streams:
            self.close()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.pump_requests(0)
        self.flush()
        self.down.flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._lost("closed the connection" if exc is None else f"was lost ({exc})")

    def _lost(self, why: str) -> None:
        """Every stream still open here is lost: an error for its client, never an end."""
        self.closed = True
        self.down.replace(self)
        exchanges = list(self.waiting) + list(self.streams.values())
        self.waiting.clear()
        self.streams.clear()
        for ex in exchanges:
            self.down.upstream_lost(ex, why, self.goaway_code)
        self.down.flush()

    def down_gone(self) -> None:
        """Its client connection ended: so do the streams it carried, and it."""
        self.streams.clear()
        self.waiting.clear()
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
