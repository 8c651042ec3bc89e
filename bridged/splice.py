"""Splicing one TCP connection to one SSH channel: the data path of every forward and intercept.

Both directions stream with back-pressure and no buffering of our own:
- socket → channel: when the channel's send window fills, asyncssh calls ``pause_writing`` on the
  channel side and we stop reading the socket until ``resume_writing``;
- channel → socket: when the socket's write buffer passes its high-water mark asyncio calls
  ``pause_writing`` on the socket side and we stop reading the channel, which stops the window
  updates, which stops the peer.
A socket that moves bulk is read into buffers of the splice's own (:class:`BulkReads`) and
handed to the channel as views; small reads take asyncio's usual way.
Half-close is honoured both ways (EOF becomes ``write_eof`` on the other side); the pair is closed
once both directions have ended, or at once when either side is reset.

A lost stream is an error, never an end of stream: when the channel ends without the far side's
EOF (relay or daemon gone, carrier cut, SSH connection closed, shutdown), the socket is *reset*
(:func:`reset`), so the application sees ECONNRESET; a clean EOF only ever means the far end sent
one. A socket reset or closed without EOF likewise closes the channel without EOF, and the far
side resets its own socket in turn.

Two shapes cover all four cases of the tunnel:
- :func:`socket_then_channel` for listeners (daemon forwards, relay whole-port intercepts): a
  socket was accepted, a channel is then opened for it. The socket is *not read* until the
  channel is open: reading early would pile the whole stream up in memory.
- :func:`channel_then_socket` for channel requests (relay direct-tcpip, daemon intercepts): the
  TCP connection is made first, so that a refused or denied destination becomes a clean channel
  open failure with a reason, not an open-then-closed channel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import asyncssh

from .errors import BridgedError
from .sockets import reset
from .sshtune import corked, write_view

log = logging.getLogger(__name__)

#: opens a channel for a connection accepted from ``peer`` (host, port): given the session factory,
#: open it, or raise asyncssh.Error / OSError / BridgedError with the reason
OpenChannel = Callable[[Callable[[], asyncssh.SSHTCPSession], tuple[str, int]], Awaitable[Any]]


@dataclass
class Counters:
    """Per forward or intercept; read by ``bridged status``."""

    connections: int = 0  # accepted or requested in all
    active: int = 0
    failed: int = 0
    bytes_sent: int = 0  # socket → channel
    bytes_received: int = 0  # channel → socket
    last_error: str = ""

    def snapshot(self) -> dict[str, int | str]:
        return dict(self.__dict__)

    def fail(self, reason: str) -> None:
        self.failed += 1
        self.last_error = reason


class SpliceObserver(Protocol):
    """Sees a copy of what a splice forwards (the daemon's capture of intercepted traffic),
    after it was forwarded: it can neither delay nor change it. Each ``*_ended`` comes once,
    ``lost`` when that direction ended without EOF. An observer that raises is dropped."""

    def channel_data(self, data: bytes) -> None: ...  # channel → socket
    def socket_data(self, data: bytes) -> None: ...  # socket → channel
    def channel_ended(self, lost: bool) -> None: ...
    def socket_ended(self, lost: bool) -> None: ...


class Pipe(asyncio.Protocol):
    """The socket side of a splice; :class:`ChannelSide` forwards the channel's events here."""

    def __init__(self, counters: Counters, live: set[Pipe] | None = None,
                 on_made: Callable[[Pipe], None] | None = None,
                 observer: SpliceObserver | None = None) -> None:
        self.counters = counters
        self.observer = observer
        self._live = live
        self._on_made = on_made
        if live is not None:
            live.add(self)
        self.transport: asyncio.Transport | None = None
        self.chan: asyncssh.SSHTCPChannel | None = None
        self._early: list[bytes] = []  # read before the channel opened (uvloop reads eagerly)
        self._socket_eof = False
        self._chan_eof = False
        self._done = False
        counters.connections += 1
        counters.active += 1

    # --- socket events ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (no TCP_NODELAY here: asyncio and uvloop set it on every TCP transport, and asking
        # for the transport's socket object costs a socket() wrapper and two system calls)
        self.transport = transport  # type: ignore[assignment]
        if self.chan is None:
            self.transport.pause_reading()  # type: ignore[union-attr]
        if self._on_made is not None:
            # only now: uvloop calls connection_made a loop turn after the factory, and a
            # channel that fails before that would have no socket to close
            self._on_made(self)

    def data_received(self, data: bytes) -> None:
        chan = self.chan
        if chan is None:
            self._early.append(data)
            self.transport.pause_reading()  # type: ignore[union-attr]
        else:
            self.counters.bytes_sent += len(data)
            chan.write(data)
            if len(data) >= BulkReads.BULK and self.observer is None:
                # bulk: the next reads land in a buffer of ours, not in a new bytes object
                self.transport.set_protocol(BulkReads(self))  # type: ignore[union-attr]
        if self.observer is not None:
            self._observe(self.observer.socket_data, data)

    def eof_received(self) -> bool:
        self._socket_eof = True
        if self.observer is not None:
            self._observe(self.observer.socket_ended, False)
        if self.chan is not None:
            with corked(self.chan):  # the EOF, and the CLOSE if the other way ended: one write
                self.chan.write_eof()
                self._close_if_done()
        return True  # keep the socket open for the other direction

    def connection_lost(self, exc: Exception | None) -> None:
        if self.observer is not None and not self._socket_eof:
            self._observe(self.observer.socket_ended, True)
        self._finish()
        if self.chan is not None:
            # without our EOF sent, this close (no EOF first) tells the far side that the
            # stream was lost, and it resets its socket
            self.chan.close()

    def pause_writing(self) -> None:
        if self.chan is not None:
            self.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.chan is not None:
            self.chan.resume_reading()

    # --- channel events (via ChannelSide) ---

    def channel_open(self, chan: asyncssh.SSHTCPChannel) -> None:
        self.chan = chan
        if self.transport is None or self.transport.is_closing():
            chan.close()
            return
        for data in self._early:
            self.counters.bytes_sent += len(data)
            chan.write(data)
        self._early.clear()
        if self._socket_eof:
            chan.write_eof()
        else:
            self.transport.resume_reading()

    def channel_data(self, data: bytes | memoryview) -> None:
        self.counters.bytes_received += len(data)
        self.transport.write(data)  # type: ignore[union-attr]
        if self.observer is not None:
            self._observe(self.observer.channel_data, bytes(data))

    def channel_eof(self) -> bool:
        self._chan_eof = True
        if self.observer is not None:
            self._observe(self.observer.channel_ended, False)
        transport = self.transport
        if transport is not None and transport.can_write_eof():
            transport.write_eof()
        self._close_if_done()
        return True

    def channel_lost(self, exc: Exception | None) -> None:
        if self.observer is not None and not self._chan_eof:
            self._observe(self.observer.channel_ended, True)
        if self.transport is None:
            return
        if self._chan_eof:
            # the far end's stream was whole (even if the connection died since): what is
            # still buffered for the client goes out before the FIN
            self.transport.close()
        else:
            # ended without the far side's EOF, whether the SSH connection died (exc) or the
            # far side closed the channel (its socket was reset, its process is stopping):
            # a clean close here would pass a cut stream off as a complete one
            reset(self.transport)

    def fail(self, reason: str) -> None:
        """The channel could not be opened: reset the socket at once and count why (what the
        client may have sent is lost, so it must see an error, not an empty answer)."""
        self.counters.fail(reason)
        if self.transport is not None:
            reset(self.transport)
        self._finish()

    # --- helpers ---

    def _observe(self, event: Callable[[Any], None], arg: Any) -> None:
        try:
            event(arg)
        except Exception:  # a bug in the observer: it goes, the bytes keep flowing
            log.exception("splice observer failed: no longer observing this connection")
            self.observer = None

    def _close_if_done(self) -> None:
        if self._socket_eof and self._chan_eof:
            if self.transport is not None:
                self.transport.close()
            if self.chan is not None:
                self.chan.close()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self.counters.active -= 1
            if self._live is not None:
                self._live.discard(self)

    def abort(self) -> None:
        """Cut both sides now (the forward or intercept it belongs to was removed)."""
        if self.transport is not None:
            reset(self.transport)
        if self.chan is not None:
            self.chan.abort()
        self._finish()


class BulkReads(asyncio.BufferedProtocol):
    """A :class:`Pipe`'s socket while it moves bulk: read into a buffer of ours and handed to
    the channel as a view (as a Protocol, uvloop copies every read into a new bytes object:
    a copy of every byte the application sends). The buffer is read into again when the
    channel took all of it at once. A small read hands the socket back to the Pipe: one more
    call per read (get_buffer) would cost round trips of small messages more than the copy."""

    #: bytes: a read at least this large switches to, and a smaller one away from, bulk reads
    BULK = 64 * 1024
    #: bytes: the read buffer (uvloop's own reads are at most as large)
    SIZE = 256 * 1024

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self._buf: bytearray | None = None

    def get_buffer(self, sizehint: int) -> bytearray:
        if self._buf is None:
            self._buf = bytearray(self.SIZE)
        return self._buf

    def buffer_updated(self, nbytes: int) -> None:
        pipe, buf = self.pipe, self._buf
        assert buf is not None and pipe.chan is not None and pipe.transport is not None
        pipe.counters.bytes_sent += nbytes
        if not write_view(pipe.chan, memoryview(buf)[:nbytes]):
            self._buf = None  # the channel keeps it until the peer's window opens
        if nbytes < self.BULK:
            pipe.transport.set_protocol(pipe)

    def eof_received(self) -> bool:
        return self.pipe.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.connection_lost(exc)

    def pause_writing(self) -> None:
        self.pipe.pause_writing()

    def resume_writing(self) -> None:
        self.pipe.resume_writing()


class ChannelSide(asyncssh.SSHTCPSession):
    """The channel side of a splice: a thin forwarder into :class:`Pipe`."""

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        #: where bridged.sshtune hands the channel's data straight to while reading is not
        #: paused (not through asyncssh's delivery and data_received); large data comes as a
        #: memoryview of the decrypted packet, which the socket's transport takes as it is
        self.data_sink = pipe.channel_data

    def connection_made(self, chan: asyncssh.SSHTCPChannel) -> None:  # type: ignore[override]
        self.pipe.channel_open(chan)

    def data_received(self, data: bytes, datatype: Any) -> None:  # type: ignore[override]
        self.pipe.channel_data(data)

    def eof_received(self) -> bool:
        return self.pipe.channel_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.channel_lost(exc)

    def pause_writing(self) -> None:
        if self.pipe.transport is not None:
            self.pipe.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.pipe.transport is not None:
            self.pipe.transport.resume_reading()


def socket_then_channel(
    open_channel: OpenChannel, counters: Counters, live: set[Pipe] | None = None
) -> Callable[[], Pipe]:
    """A protocol factory for a listener whose every accepted connection gets a new channel.

    A failure to open the channel (relay unreachable, destination denied, no live intercept)
    closes the accepted socket at once and is counted with its reason. ``live`` collects the
    open pipes, so their owner can cut them when it goes away.
    """

    def start(pipe: Pipe) -> None:
        task = asyncio.ensure_future(_open(pipe))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    def factory() -> Pipe:
        return Pipe(counters, live, on_made=start)

    async def _open(pipe: Pipe) -> None:
        peer = ("", 0)
        if pipe.transport is not None:
            info = pipe.transport.get_extra_info("peername")
            if isinstance(info, tuple):
                peer = (str(info[0]), int(info[1]))
        try:
            await open_channel(lambda: ChannelSide(pipe), peer)
        except (asyncssh.Error, OSError, BridgedError) as exc:
            reason = describe(exc)
            log.info("channel open failed: %s", reason)
            pipe.fail(reason)

    return factory


def describe(exc: BaseException) -> str:
    """A one-line reason for a failed channel, as the other side or the OS gave it."""
    if isinstance(exc, asyncssh.ChannelOpenError):
        return exc.reason or "refused by the relay"
    if isinstance(exc, asyncssh.Error):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


# tasks that open channels: held here so they are not garbage-collected while running
_tasks: set[asyncio.Task[None]] = set()


async def channel_then_socket(
    host: str, port: int, counters: Counters, *, what: str,
    conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection, connect_seconds: float,
    observer: SpliceObserver | None = None,
) -> ChannelSide:
    """Connect to ``host:port`` for an incoming channel on ``conn``; a failure refuses it.
    ``observer`` sees a copy of the bytes both ways (the daemon's capture)."""
    loop = asyncio.get_running_loop()
    pipe = Pipe(counters, observer=observer)
    try:
        async with asyncio.timeout(connect_seconds):
            transport, _ = await loop.create_connection(lambda: pipe, host, port)
    except (OSError, TimeoutError) as exc:
        detail = f"no answer in {connect_seconds:.0f}s" if isinstance(exc, TimeoutError) else (
            exc.strerror or str(exc))
        reason = f"cannot connect to {what} {host}:{port}: {detail}"
        counters.fail(reason)
        pipe._finish()
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, reason) from None
    if conn.is_closed():
        # the SSH connection ended while we connected: asyncssh will drop the session
        # without a word, so the socket must not outlive this moment
        reset(transport)
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "SSH connection closed")
    return ChannelSide(pipe)


async def pass_streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       other_reader: asyncio.StreamReader, other_writer: asyncio.StreamWriter,
                       read_size: int = 256 * 1024) -> None:
    """Copy raw bytes both ways between two TCP streams until both directions ended, EOF
    passed on as EOF (half-close works); when either side fails (a reset, an error), both
    are reset at once, so neither peer takes a cut stream for a whole one. Closes both."""
    lost = False

    async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        nonlocal lost
        try:
            while data := await src.read(read_size):
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()
        except OSError:
            if not lost:
                lost = True
                reset(writer.transport)
                reset(other_writer.transport)

    try:
        await asyncio.gather(copy(reader, other_writer), copy(other_reader, writer))
    except asyncio.CancelledError:  # stopped midway (the relay is shutting down): cut, not done
        lost = True
        reset(writer.transport)
        reset(other_writer.transport)
        raise
    finally:
        if not lost:
            writer.close()
            other_writer.close()
