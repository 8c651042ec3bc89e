"""HTTP/2 cleartext (prior knowledge) seen from the side: frames read with hyperframe, header
blocks decoded with one HPACK decoder per direction, fed every block in order (HEADERS,
CONTINUATION, PUSH_PROMISE) so its dynamic table stays the one the peer's encoder meant. Pure:
bytes in, one :class:`~.bodies.Exchange` per stream out.

Nothing is answered: a passive reader cannot refuse a frame, so what it does not follow (a
broken frame, a header block that does not decode) makes it stop observing the connection.
DATA payloads are streamed through, never held whole: at most ``limit`` bytes are kept.
"""

from __future__ import annotations

from collections.abc import Callable

import hpack
import hpack.exceptions
import hyperframe.exceptions
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
)

from .bodies import Exchange
from .tap import PREFACE

#: bytes of a frame other than DATA that is held to be parsed: past it, stop (16 KiB frames
#: are the default; peers may agree on up to 16 MiB)
MAX_FRAME_BYTES = 1024 * 1024
#: bytes of one header block (HEADERS and its CONTINUATIONs): past it, stop
MAX_BLOCK_BYTES = 1024 * 1024
#: streams followed at once: past it, stop (servers allow 100 to a few hundred)
MAX_STREAMS = 1000


class Stop(Exception):
    """The tap cannot follow this connection further: it stops, forwarding goes on."""


class _Stream:
    def __init__(self, stream_id: int, exchange: Exchange) -> None:
        self.id = stream_id
        self.exchange = exchange
        self.final = False  # the final answer's head came (1xx heads are skipped)


class _Frames:
    """One direction's frames; DATA payloads handed on in pieces as they come."""

    def __init__(self, on_frame: Callable[[Frame], None],
                 on_data: Callable[[int, bytes], None],
                 on_data_end: Callable[[DataFrame], None], *, preface: bool) -> None:
        self.on_frame = on_frame
        self.on_data = on_data
        self.on_data_end = on_data_end
        self.preface = preface  # the client's preface is still to come
        self.buf = bytearray()
        self.data: DataFrame | None = None  # the DATA frame whose payload is passing
        self.left = 0  # its payload bytes still to come (data and padding)
        self.pad = 0  # its padding (-1: not read yet)

    def feed(self, data: bytes) -> None:
        self.buf += data
        buf = self.buf
        while True:
            if self.preface:
                if len(buf) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buf)):
                        raise Stop
                    return
                if bytes(buf[:len(PREFACE)]) != PREFACE:
                    raise Stop
                del buf[:len(PREFACE)]
                self.preface = False
            if self.data is not None:
                if not self._data():
                    return
                continue
            if len(buf) < 9:
                return
            frame, length = Frame.parse_frame_header(memoryview(bytes(buf[:9])))
            if isinstance(frame, DataFrame):
                del buf[:9]
                self.data, self.left = frame, length
                self.pad = -1 if "PADDED" in frame.flags else 0
                continue
            if length > MAX_FRAME_BYTES:
                raise Stop
            if len(buf) < 9 + length:
                return
            frame.parse_body(memoryview(bytes(buf[9:9 + length])))
            del buf[:9 + length]
            self.on_frame(frame)

    def _data(self) -> bool:
        """Passes what came of the DATA payload; True once the frame is whole."""
        buf, frame = self.buf, self.data
        assert frame is not None
        if self.pad < 0:
            if not buf:
                return False
            self.pad = buf[0]
            del buf[:1]
            self.left -= 1
            if self.pad > self.left:
                raise Stop
        body = min(self.left - self.pad, len(buf))
        if body > 0:
            self.on_data(frame.stream_id, bytes(buf[:body]))
            del buf[:body]
            self.left -= body
        if self.left > self.pad:
            return False
        padding = min(self.left, len(buf))
        del buf[:padding]
        self.left -= padding
        if self.left:
            return False
        self.data = None
        self.on_data_end(frame)
        return True


class H2Tap:
    """Feed it the bytes of each direction; ``emit`` gets each stream's exchange once both
    sides ended it, or it was reset, or the connection ended first (status 0 or the partial
    answer)."""

    def __init__(self, emit: Callable[[Exchange], None], *, limit: int,
                 clock: Callable[[], float]) -> None:
        self.emit = emit
        self.limit = limit
        self.clock = clock
        self.stopped = False
        self.streams: dict[int, _Stream] = {}
        # one decoder per direction: each follows its own peer's encoder
        self.decoders = {True: hpack.Decoder(), False: hpack.Decoder()}
        #: a header block being assembled per direction: (frame, fragments)
        self.blocks: dict[bool, tuple[Frame, bytearray] | None] = {True: None, False: None}
        self.frames = {
            True: _Frames(lambda f: self._frame(f, True), self._request_data,
                          lambda f: self._data_end(f, True), preface=True),
            False: _Frames(lambda f: self._frame(f, False), self._response_data,
                           lambda f: self._data_end(f, False), preface=False),
        }

    # --- the two directions ---

    def from_client(self, data: bytes) -> None:
        self._feed(True, data)

    def from_server(self, data: bytes) -> None:
        self._feed(False, data)

    def _feed(self, client: bool, data: bytes) -> None:
        if self.stopped:
            return
        try:
            self.frames[client].feed(data)
        except (Stop, hyperframe.exceptions.HyperframeError, hpack.exceptions.HPACKError,
                ValueError, UnicodeDecodeError):
            self.stop()

    def client_ended(self, lost: bool) -> None:
        if lost:
            self.flush()

    def server_ended(self, lost: bool) -> None:
        self.flush()

    def stop(self) -> None:
        self.stopped = True
        self.streams.clear()

    def flush(self) -> None:
        """The connection ended: every stream not recorded yet is, as it stands."""
        if self.stopped:
            return
        self.stopped = True
        for stream in list(self.streams.values()):
            self._emit(stream)

    # --- frames ---

    def _frame(self, frame: Frame, client: bool) -> None:
        if isinstance(frame, HeadersFrame | PushPromiseFrame):
            if self.blocks[client] is not None:
                raise Stop  # a new block inside another: not HTTP/2
            self.blocks[client] = (frame, bytearray(frame.data))
            if "END_HEADERS" in frame.flags:
                self._block(client)
        elif isinstance(frame, ContinuationFrame):
            block = self.blocks[client]
            if block is None or block[0].stream_id != frame.stream_id:
                raise Stop
            block[1].extend(frame.data)
            if len(block[1]) > MAX_BLOCK_BYTES:
                raise Stop
            if "END_HEADERS" in frame.flags:
                self._block(client)
        elif self.blocks[client] is not None:
            raise Stop  # only CONTINUATION may follow an unfinished block
        elif isinstance(frame, RstStreamFrame):
            stream = self.streams.get(frame.stream_id)
            if stream is not None:
                self._emit(stream)  # cut: the answer as far as it came
        elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            size = frame.settings.get(SettingsFrame.HEADER_TABLE_SIZE)
            if size is not None:
                # this side's decoder's table: the other side's encoder may now use up to it
                other = self.decoders[not client]
                other.max_allowed_table_size = max(other.max_allowed_table_size, size)

    def _block(self, client: bool) -> None:
        block = self.blocks[client]
        assert block is not None
        frame, data = block
        self.blocks[client] = None
        headers = [(str(n), str(v)) for n, v in self.decoders[client].decode(bytes(data))]
        if isinstance(frame, PushPromiseFrame):
            return  # decoded to keep the table in step; pushes are not requests from the cluster
        end = "END_STREAM" in frame.flags
        if client:
            self._request_headers(frame.stream_id, headers, end)
        else:
            self._response_headers(frame.stream_id, headers, end)

    def _request_headers(self, stream_id: int, headers: list[tuple[str, str]],
                         end: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            if len(self.streams) >= MAX_STREAMS:
                raise Stop
            ex = Exchange(limit=self.limit, started=self.clock(), http_version="2")
            pseudo = {n: v for n, v in headers if n.startswith(":")}
            ex.method = pseudo.get(":method", "")
            ex.target = pseudo.get(":path", "")
            ex.request_headers = [(n, v) for n, v in headers if not n.startswith(":")]
            ex.authority = pseudo.get(":authority") or next(
                (v for n, v in ex.request_headers if n == "host"), "")
            stream = self.streams[stream_id] = _Stream(stream_id, ex)
        else:
            stream.exchange.request_trailers.extend(headers)
        if end:
            self._request_end(stream)

    def _response_headers(self, stream_id: int, headers: list[tuple[str, str]],
                          end: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # a pushed stream, or one we stopped following
        ex = stream.exchange
        if stream.final:
            ex.response_trailers.extend(headers)
        else:
            status = next((v for n, v in headers if n == ":status"), "")
            code = int(status) if status.isdigit() else 0
            if 100 <= code < 200:
                return  # informational: the final head follows
            stream.final = True
            ex.status = code
            ex.response_headers = [(n, v) for n, v in headers if not n.startswith(":")]
        if end:
            self._response_end(stream)

    def _request_data(self, stream_id: int, data: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.exchange.request_body.add(data)

    def _response_data(self, stream_id: int, data: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and stream.final:
            stream.exchange.response_body.add(data)

    def _data_end(self, frame: DataFrame, client: bool) -> None:
        stream = self.streams.get(frame.stream_id)
        if stream is None or "END_STREAM" not in frame.flags:
            return
        if client:
            self._request_end(stream)
        else:
            self._response_end(stream)

    def _request_end(self, stream: _Stream) -> None:
        stream.exchange.request_done = True
        if stream.exchange.response_done:
            self._emit(stream)

    def _response_end(self, stream: _Stream) -> None:
        ex = stream.exchange
        ex.response_done = True
        ex.ended_at = self.clock()
        if ex.request_done:
            self._emit(stream)

    def _emit(self, stream: _Stream) -> None:
        self.streams.pop(stream.id, None)
        ex = stream.exchange
        if not ex.emitted:
            ex.emitted = True
            self.emit(ex)
