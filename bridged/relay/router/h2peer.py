"""What both ends of the router's HTTP/2 share: an ``h2`` state machine and the transport it
writes to, one stream's exchange, and the pump that moves a stream's body from one end to the
other within HTTP/2's flow-control windows. Pure over the h2 objects: no reads, no tasks."""

from __future__ import annotations

import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.exceptions
import h2.settings
from h2.connection import ConnectionState

from ...routing.decide import Route
from ...routing.rules import RequestHead

if TYPE_CHECKING:
    from .h2upstream import H2Upstream

#: bytes a stream may send us before we pass them on: what one stream costs the relay at most
#: per direction. 256 KiB keeps a stream near link speed through the SSH session's window
#: (curl and Go use 1 MiB / 4 MiB per stream; nginx 64 KiB)
STREAM_WINDOW = 256 * 1024
#: bytes all streams of one connection together may send us before we pass them on: the
#: relay's memory per connection and direction (Go: 1 GiB; Envoy: 1 MiB)
CONNECTION_WINDOW = 1024 * 1024
#: streams a client may have open at once: nginx's http2_max_concurrent_streams is 128, Go's
#: 250; 100 is the lowest the RFC recommends and what most gRPC servers advertise
MAX_CONCURRENT_STREAMS = 100
#: the decoded size of one header list (a request's head, or its trailers): as HTTP/1.1
MAX_HEADER_LIST_BYTES = 64 * 1024
#: client resets of streams still being answered (CVE-2023-44487, "rapid reset"): past this
#: many, and when they are half or more of the connection's streams, the connection is ended
#: with ENHANCE_YOUR_CALM (Envoy's premature-reset rule has the same shape)
PREMATURE_RESETS = 100
#: bytes of body kept as one piece: tiny DATA frames (one byte each is allowed) are joined, so
#: what a window lets in costs the relay its bytes, not a Python object per frame
COALESCE_BYTES = 16 * 1024

_S = h2.settings.SettingCodes
#: what the router announces to a client, and to an upstream (which may not push: a pushed
#: stream would have nobody to go to)
SERVER_SETTINGS = {_S.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                   _S.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                   _S.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_BYTES}
CLIENT_SETTINGS = {_S.ENABLE_PUSH: 0, _S.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                   _S.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_BYTES}


class H2Peer:
    """One HTTP/2 connection the router speaks: ``client_side`` towards an upstream."""

    def __init__(self, client_side: bool) -> None:
        # What is sent was received, and checked, on the other side (inbound validation stays
        # on at both ends): checking it again on the way out cost a fifth of the relay's time
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=client_side, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        # Huffman-coding header values in pure Python costs more CPU than the bytes it saves
        # on a hop inside the cluster or through the SSH session (HPACK allows either)
        encode = self.conn.encoder.encode
        self.conn.encoder.encode = (  # type: ignore[method-assign]
            lambda headers, huffman=True: encode(headers, huffman=False))
        self.conn.local_settings = h2.settings.Settings(
            client=client_side,
            initial_values=CLIENT_SETTINGS if client_side else SERVER_SETTINGS)
        self.transport: Any = None
        self.write_paused = False  # its transport's buffer is full: no body goes to it

    def begin(self) -> None:
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)

    def take_data(self, event: Any, half: Half | None) -> bool:
        """A DATA frame read: its bytes into ``half`` (None: a stream no longer followed,
        whose window comes back at once), its end noted; True if there is something to move.
        Padding and empty frames take no room here: their window is given back at once (kept,
        a flood of empty frames, which take no window, would grow without bound)."""
        if half is None or not event.data:
            if event.flow_controlled_length:
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                        event.stream_id)
            if half is None:
                return False
        else:
            half.add(event.data, event.flow_controlled_length)
        half.ended = event.stream_ended is not None  # (so the end goes with the last bytes)
        return True

    def oversized(self) -> bool:
        """Whether the frame being received announces more than the peer may send: h2 checks
        a frame's length only once all of it came, so a header announcing 16 MiB would have
        the relay buffer 16 MiB per connection first (h2's buffer starts at a frame's start:
        the preface is taken off before)."""
        pending = getattr(self.conn.incoming_buffer, "_data", b"")  # (h2 4.x's buffer)
        return len(pending) >= 9 and \
            int.from_bytes(pending[:3], "big") > self.conn.max_inbound_frame_size

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def keep_sending(self) -> None:
        """The peer sent GOAWAY: it takes no new stream, but the streams it already took go on
        (RFC 9113 §6.8). h2 stops all sending once a GOAWAY arrived; this lets the streams
        that are open finish, with their bodies, trailers and window updates."""
        if self.conn.state_machine.state is ConnectionState.CLOSED:
            self.conn.state_machine.state = ConnectionState.CLIENT_OPEN \
                if self.conn.config.client_side else ConnectionState.SERVER_OPEN


class Half:
    """One direction of one stream: the body read from one end, not yet written to the other."""

    __slots__ = ("chunks", "done", "ended", "trailers")

    def __init__(self) -> None:
        #: (bytes, how much of the sender's window they took, padding included)
        self.chunks: deque[tuple[bytes | bytearray, int]] = deque()
        self.ended = False  # the sender ended it
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.done = False  # its end was written on

    def add(self, data: bytes, taken: int) -> None:
        """Body bytes read (``taken``: the window they took, padding included)."""
        chunks = self.chunks
        if chunks and len(chunks[-1][0]) + len(data) <= COALESCE_BYTES:
            last, before = chunks[-1]
            if not isinstance(last, bytearray):  # joined in place from here on
                last = bytearray(last)
            last += data
            chunks[-1] = (last, before + taken)
        else:
            chunks.append((data, taken))


class Exchange:
    """One client stream and the upstream stream it was given to."""

    __slots__ = ("grpc_status", "head", "headers", "reported", "request", "response", "route",
                 "sid", "started", "status", "up", "up_sid")

    def __init__(self, sid: int, headers: list[tuple[bytes, bytes]], head: RequestHead,
                 route: Route, started: float) -> None:
        self.sid = sid
        self.headers = headers  # as the client sent them, for the upstream
        self.head = head
        self.route = route
        self.started = started
        self.up: H2Upstream | None = None
        self.up_sid = 0  # 0: not opened upstream yet
        self.request = Half()
        self.response = Half()
        self.status = 0  # :status of the final response, once it came
        self.grpc_status: int | None = None
        self.reported = False


def flow(half: Half, src: H2Peer, src_sid: int, dst: H2Peer, dst_sid: int) -> None:
    """Write what ``half`` holds to ``dst``'s stream as far as its windows allow, and give the
    sender its window back for what went on: so a stream never has more than its window in
    the relay, and a slow reader slows only its own stream."""
    chunks = half.chunks
    conn = dst.conn
    while chunks and not dst.write_paused:
        data, taken = chunks[0]
        room = min(conn.local_flow_control_window(dst_sid), conn.max_outbound_frame_size)
        if room <= 0 and data:  # (an empty frame, which may carry the end, takes no window)
            return
        if len(data) > room:
            conn.send_data(dst_sid, bytes(data[:room]))
            chunks[0] = (data[room:], taken)
            continue
        chunks.popleft()
        last = not chunks and half.ended and not half.trailers  # its end in the same frame
        conn.send_data(dst_sid, data if isinstance(data, bytes) else bytes(data),
                       end_stream=last)
        half.done = last
        if taken:
            with contextlib.suppress(h2.exceptions.ProtocolError):  # its stream was reset
                src.conn.acknowledge_received_data(taken, src_sid)
    if not chunks and half.ended and not half.done:
        half.done = True
        if half.trailers:
            conn.send_headers(dst_sid, half.trailers, end_stream=True)
        else:
            conn.end_stream(dst_sid)


def grpc_status(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"grpc-status":
            with contextlib.suppress(ValueError):
                return int(value)
    return None
