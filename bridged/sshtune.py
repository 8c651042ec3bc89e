"""Speed-ups for asyncssh's packet layer and one fix of its channels, applied at start-up by
daemon and relay.

Measured with ``bench/tunnel.py`` (py-spy on both processes): the cost of SSH in Python is per
packet, and asyncssh spends it twice where it need not:

1. After key exchange it sends an empty ``SSH_MSG_IGNORE`` before *every* packet. That is the
   old countermeasure against chosen-plaintext attacks on CBC ciphers; with an AEAD cipher
   (AES-GCM, chacha20-poly1305: the only ones bridged offers) it protects nothing, and it
   doubles packets, encryptions and write syscalls. OpenSSH does not send them. We skip the
   empty ignore packet when the sending cipher is AEAD; CBC/CTR connections keep it.
2. ``GCMCipher`` builds a new ``AESGCM`` object (a key schedule) for every packet. We keep one
   per key. The bytes on the wire are identical.
3. Channel data is copied about twelve times on its way out (a bytearray, String(), two joins
   in the channel and the connection, padding, the cipher's output sliced and joined twice, the
   MAC joined on) and about eight times on its way in (the input buffer sliced at each packet,
   header and body joined, the MAC joined, the payload sliced): ``perf`` showed memmove as the
   largest cost of both processes (~28 % of their CPU, 5x the AES-GCM itself). With AES-GCM
   (the cipher bridged prefers) every packet after key exchange is now built by one join,
   encrypted once and written as header + ciphertext; the input buffer is a memoryview, so
   packets are cut out of it without copying and decrypted in place, a packet that arrives in
   pieces is joined once, and a channel's data packet goes from its plaintext straight to the
   channel (asyncssh's packet reader, dispatch and per-packet log formatting cost ~14 us per
   packet). The same bytes go on the wire; key exchange, other ciphers and compression run as
   shipped. Read against asyncssh 2.24 only (``_FAST_CHECKED``), as is item 4.
4. Work done per packet whose result nobody reads: log lines and packet dumps formatted before
   the level is checked, and a new keepalive timer per read (now the read time is noted and a
   timer that fires early is set again for the rest).
5. (a fix) asyncssh drops a channel's EOF that meets a CLOSE, on both sides: ``close()`` right
   after ``write_eof()``, while data is still buffered for sending, replaces the pending EOF
   (the peer gets the data, then CLOSE without EOF); and an EOF received while reading is
   paused (back-pressure) is dropped when the CLOSE arrives before reading resumes. bridged
   reads a close without EOF as a lost stream (the far socket was reset), so a complete 64 MiB
   echo ended with a reset about 1 time in 10. We keep the EOF in both cases: sent before the
   CLOSE once the data is out; delivered after the buffered data.
6. A TCP socket's reads (:class:`BufferedReads`, asyncio's BufferedProtocol): uvloop copied
   every read into a new bytes object, and a packet cut by a read was joined with the next;
   now reads land in the connection's own buffer and stop at a packet's end once its length
   is known, and packets are decrypted where they lie. Same-run A/B: the receiving side's
   CPU per GB 0.54 -> 0.45-0.47 s, one stream 950-1060 -> 1040-1150 MB/s.
7. Packets sent together leave together: :func:`corked` holds what a block sends and writes
   it once at its end (the splice's EOF + CLOSE when both ways of a stream ended: the relay
   makes 4 writes per forwarded stream, not 5).
8. A channel sends a view of its caller's buffer (:func:`write_view`) as it sends bytes: the
   splice's bulk reads go from the socket to the packet with no copy of their own (the
   sending process 0.91-0.99 -> 0.86-0.89 s/GB, interleaved A/B).
9. A small message takes the short way through a channel: bytes written when nothing waits
   to be sent and the peer's window has room go straight into one packet (not through the
   send buffer and its flush loop), and channel data goes straight to a session that names a
   ``data_sink`` while it reads unpaused (asyncssh's _accept_data and _deliver_data, and the
   session's data_received, in one call; the window is kept as they keep it). Round trip of
   100 bytes 149-154 -> 140 us, user CPU per round trip 3-6 us less per side (interleaved A/B).

All are applied only to the asyncssh versions they were checked against (see ``_CHECKED``),
and only if the patched attributes look as expected; otherwise asyncssh runs as shipped and a
debug line says so. Nothing here touches key exchange, MACs, sequence numbers or rekeying.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

#: asyncssh (major, minor) versions whose send_packet and GCMCipher these patches were read
#: against; widen only after reading the new version's code
_CHECKED = {(2, 21), (2, 22), (2, 23), (2, 24)}
#: the versions item 3 was read against (it reaches into the packet reader and the channels)
_FAST_CHECKED = {(2, 24)}

_applied = False

#: bytes below which a copy costs less than keeping pieces apart (one write, not a writev;
#: a copied payload, not a view of the packet)
JOIN_BELOW = 16 * 1024


def apply() -> bool:
    """Install the patches once; returns whether they are active."""
    global _applied
    if _applied:
        return True
    import asyncssh
    from asyncssh import connection, encryption
    from asyncssh.constants import MSG_IGNORE
    from asyncssh.crypto import cipher
    from asyncssh.packet import String

    version = tuple(int(p) for p in asyncssh.__version__.split(".")[:2])
    if version not in _CHECKED or not all((
        hasattr(connection.SSHConnection, "send_packet"),
        hasattr(cipher, "GCMCipher") and hasattr(cipher, "AESGCM"),
        hasattr(encryption, "GCMEncryption") and hasattr(encryption, "ChachaEncryption"),
    )):
        log.debug("asyncssh %s not checked for bridged's patches: running it as shipped",
                  asyncssh.__version__)
        return False

    aead = (encryption.GCMEncryption, encryption.ChachaEncryption)
    empty = String(b"")
    send_packet = connection.SSHConnection.send_packet

    def send_packet_without_aead_padding(self: Any, pkttype: int, *args: bytes,
                                         handler: Any = None) -> None:
        if pkttype == MSG_IGNORE and args == (empty,) and \
                isinstance(self._send_encryption, aead):
            return
        send_packet(self, pkttype, *args, handler=handler)

    connection.SSHConnection.send_packet = send_packet_without_aead_padding  # type: ignore[method-assign]

    gcm = cipher.GCMCipher
    mac_size = 16
    AESGCM = cipher.AESGCM

    def _aead(self: Any) -> Any:
        state = self.__dict__.get("_bridged_aead")
        if state is None or state[0] is not self._key:
            state = self._bridged_aead = (self._key, AESGCM(self._key))
        return state[1]

    def encrypt_and_sign(self: Any, header: bytes, data: bytes) -> tuple[bytes, bytes]:
        data = _aead(self).encrypt(self._iv, data, header)
        self._update_iv()
        return header + data[:-mac_size], data[-mac_size:]

    def verify_and_decrypt(self: Any, header: bytes, data: bytes, mac: bytes) -> bytes | None:
        try:
            decrypted: bytes | None = _aead(self).decrypt(self._iv, data + mac, header)
        except cipher.InvalidTag:
            decrypted = None
        self._update_iv()
        return decrypted

    gcm.encrypt_and_sign = encrypt_and_sign  # type: ignore[method-assign]
    gcm.verify_and_decrypt = verify_and_decrypt  # type: ignore[method-assign]
    if version in _FAST_CHECKED:  # (items 3 and 4 reach into asyncssh's internals)
        _fast_channel_data(_aead)
        _less_per_packet()
    _keep_eof_before_close()
    _applied = True
    return True


def _fast_channel_data(aead_of: Any) -> None:
    """Item 3: packets out with one join and one encryption, packets in from a
    memoryview of what was read. ``aead_of(cipher)`` is the cipher's cached AESGCM."""
    import os

    from asyncssh import channel, connection, encryption
    from asyncssh.constants import MSG_CHANNEL_DATA, MSG_CHANNEL_WINDOW_ADJUST, MSG_KEX_LAST
    from asyncssh.crypto import cipher
    from asyncssh.logging import SSHLogger
    from asyncssh.packet import String, UInt32

    conn_cls, chan_cls = connection.SSHConnection, channel.SSHChannel
    gcm_encryption = encryption.GCMEncryption
    invalid_tag = cipher.InvalidTag
    GCM_TAG = 16  # bytes: the tag asyncssh's AES-GCM sends in place of a MAC

    # Padding is taken from a buffer of the kernel's random bytes, each byte used once (as
    # OpenSSH takes it from arc4random_buf), not from a getrandom() call per packet.
    random_bytes = bytearray()

    def padding(n: int) -> bytes:
        if len(random_bytes) < n:
            random_bytes[:] = os.urandom(4096)
        out = bytes(random_bytes[:n])
        del random_bytes[:n]
        return out

    def fast_send(conn: Any, pkttype: int, parts: tuple[Any, ...], handler: Any) -> bool:
        """Send one packet of ``pkttype`` whose payload is ``parts`` joined, the fast way;
        False when this connection's state needs asyncssh's own send_packet (before or
        during key exchange, a rekey due, compression, another cipher, a kex packet)."""
        enc = conn._send_encryption
        if type(enc) is not gcm_encryption or pkttype <= MSG_KEX_LAST \
                or conn._compressor is not None \
                or not (conn._auth_complete and conn._kex_complete) \
                or conn._rekey_bytes_sent >= conn._rekey_bytes \
                or (conn._rekey_seconds and time.monotonic() >= conn._rekey_time) \
                or conn._transport is None:
            return False
        payload_len = 1 + sum(map(len, parts))
        padlen = -(conn._send_enchdrlen + payload_len) % conn._send_blocksize
        if padlen < 4:
            padlen += conn._send_blocksize
        pktlen = 1 + payload_len + padlen
        header = pktlen.to_bytes(4, "big")
        plain = b"".join((bytes((padlen, pkttype)), *parts, padding(padlen)))
        gcm = enc._cipher
        sealed = aead_of(gcm).encrypt(gcm._iv, plain, header)
        gcm._update_iv()
        corked: list[bytes] | None = conn.__dict__.get("_bridged_corked")
        if corked is not None:  # sent with the others at the end of corked()
            corked += (header, sealed)
        elif pktlen < JOIN_BELOW:
            conn._transport.write(header + sealed)  # one small write, not a two-part writev
        else:
            conn._transport.writelines((header, sealed))
        seq = conn._send_seq
        conn._send_seq = (seq + 1) & 0xFFFFFFFF
        conn._rekey_bytes_sent += pktlen
        if SSHLogger._debug_level >= 3:  # packet logging, as asyncssh does it
            handler.log_sent_packet(pkttype, seq, plain[1:1 + payload_len])
        return True

    send_packet = conn_cls.send_packet

    def _send_packet(self: Any, pkttype: int, *args: bytes, handler: Any = None) -> None:
        if not fast_send(self, pkttype, args, handler or self):
            _uncork(self)  # (what was corked goes first: packets leave in order)
            send_packet(self, pkttype, *args, handler=handler)

    def send_data(conn: Any, chan: Any, data: bytes | bytearray | memoryview) -> bool:
        """One MSG_CHANNEL_DATA packet, its data joined in as it is (no String() copy)."""
        return chan._send_chan is not None and fast_send(
            conn, MSG_CHANNEL_DATA,
            (chan._send_chan.to_bytes(4, "big"), len(data).to_bytes(4, "big"), data), chan)

    def _flush_send_buf(self: Any) -> None:
        # asyncssh's loop, with the data packet sent by send_data when it can be
        while self._send_buf and self._send_window:
            pktsize = min(self._send_window, self._send_pktsize)
            buf, datatype = self._send_buf[0]
            if len(buf) > pktsize:
                data = buf[:pktsize]
                if type(buf) is memoryview:
                    self._send_buf[0] = (buf[pktsize:], datatype)
                else:
                    del buf[:pktsize]
            else:
                data = buf
                del self._send_buf[0]
            self._send_buf_len -= len(data)
            self._send_window -= len(data)
            if datatype is not None:
                self.send_packet(channel.MSG_CHANNEL_EXTENDED_DATA, UInt32(datatype),
                                 String(data))
            elif not send_data(self._conn, self, data):
                self.send_packet(MSG_CHANNEL_DATA, String(data))
        self._pause_resume_writing()
        if not self._send_buf:
            if self._send_state == "eof_pending":
                self.send_packet(channel.MSG_CHANNEL_EOF)
                self._send_state = "eof"
            elif self._send_state == "close_pending":
                self._close_send()

    write = chan_cls.write

    def _write(self: Any, data: Any, datatype: Any = None) -> None:
        if type(data) is not bytes or self._encoding or not data \
                or self._send_state != "open" or datatype is not None:
            write(self, data, datatype)
            return
        n = len(data)
        if not self._send_buf and n <= self._send_window and n <= self._send_pktsize \
                and send_data(self._conn, self, data):  # item 9: nothing waits, it fits
            self._send_window -= n
            return
        # bytes cannot change under us: a view of them is buffered, not a bytearray copy
        # (_flush_send_buf slices views; the fast packet path joins them as they are)
        _queue_view(self, memoryview(data))

    def _write_view(self: Any, view: memoryview) -> bool:
        # (see write_view)
        if self._encoding or self._send_state != "open" or not view:
            write(self, bytes(view))
            return True
        return _queue_view(self, view)

    def _queue_view(self: Any, view: memoryview) -> bool:
        """Buffer ``view`` and send what the window allows; whether none of it is kept."""
        self._send_buf.append((view, None))
        self._send_buf_len += len(view)
        self._flush_send_buf()
        return not self._send_buf

    chan_cls._flush_send_buf = _flush_send_buf  # type: ignore[method-assign]
    chan_cls.write = _write  # type: ignore[method-assign]
    chan_cls._bridged_write_view = _write_view  # type: ignore[attr-defined]

    # --- in: the input buffer is a memoryview while the receiving cipher is AES-GCM ---

    data_received, recv_pkthdr = conn_cls.data_received, conn_cls._recv_pkthdr

    def _data_received(self: Any, data: bytes, datatype: Any = None) -> None:
        held: list[Any] | None = self.__dict__.get("_bridged_held")
        if type(self._recv_encryption) is not gcm_encryption:
            if held:  # (the cipher cannot change inside a packet: not reached in practice)
                self._inpbuf, held[:] = b"".join(held), []
            if type(self._inpbuf) is memoryview:
                self._inpbuf = bytes(self._inpbuf)
            data_received(self, data, datatype)
            return
        if type(data) is not bytes and not (type(data) is memoryview
                                            and type(data.obj) is bytes):
            data = bytes(data)  # a view may outlive this call: only of bytes, which stay put
        if held:
            # the rest of a packet that came in pieces (a port-forward's 32 KiB frames): the
            # pieces are joined once, when the whole packet is here, not at every piece
            held.append(data)
            self._bridged_have += len(data)
            if self._bridged_have < self._bridged_need:
                if self._auth_complete:  # a slow link is alive: its pieces put keepalives off
                    self._bridged_read_at = self._loop.time()
                return
            self._inpbuf, held[:] = memoryview(b"".join(held)), []
        else:
            buf = self._inpbuf
            self._inpbuf = memoryview(b"".join((buf, data)) if buf else data)
        self._recv_data()
        buf = self._inpbuf
        if type(buf) is memoryview and len(buf) >= 4 \
                and getattr(self._recv_handler, "__func__", None) is _recv_pkthdr:
            need = 4 + int.from_bytes(buf[:4], "big") + GCM_TAG
            if len(buf) < need:  # hold the start of the packet until the rest is here
                if held is None:
                    held = self._bridged_held = []
                held.append(buf)
                self._bridged_have, self._bridged_need = len(buf), need
                self._inpbuf = memoryview(b"")

    def _recv_pkthdr(self: Any) -> bool:
        buf = self._inpbuf
        if type(buf) is not memoryview:
            return bool(recv_pkthdr(self))
        if type(self._recv_encryption) is not gcm_encryption:  # a rekey changed the cipher
            self._inpbuf = bytes(buf)
            return bool(recv_pkthdr(self))
        if len(buf) < 4:
            return False
        pktlen = int.from_bytes(buf[:4], "big")
        if pktlen > self._max_recv_pktlen:
            raise connection.ProtocolError("Max packet size exceeded")
        end = 4 + pktlen + GCM_TAG
        if len(buf) < end:
            return False  # wait for the whole packet, so it is decrypted from one buffer
        enc = self._recv_encryption
        gcm = enc._cipher
        try:
            plain = aead_of(gcm).decrypt(gcm._iv, buf[4:end], buf[:4])
        except invalid_tag:
            raise connection.MACError("MAC verification failed") from None
        gcm._update_iv()
        if plain[1] == MSG_CHANNEL_DATA and self._auth_complete \
                and self._decompressor is None \
                and SSHLogger._debug_level < 3:  # (packet logging wants asyncssh's path)
            self._inpbuf = buf[end:]
            _channel_data(self, plain)
            return True
        # any other packet goes through asyncssh's _recv_packet, which gets this plaintext
        # from decrypt_packet below; the "first block" it was cut from is the whole view
        enc._bridged_plain = plain  # type: ignore[attr-defined]
        self._packet = buf
        self._inpbuf = buf[self._recv_blocksize:]
        self._pktlen = pktlen
        self._recv_handler = self._recv_packet
        return True

    def _channel_data(self: Any, plain: bytes) -> None:
        """What asyncssh's _recv_packet, the channel's _process_data and _finish_recv_packet
        do with an SSH_MSG_CHANNEL_DATA packet, without building a packet reader for it."""
        seq = self._recv_seq
        end = len(plain) - plain[0]  # the padding's length comes first
        recv_chan = int.from_bytes(plain[2:6], "big")
        datalen = int.from_bytes(plain[6:10], "big")
        if end < 10 or 10 + datalen != end:
            raise connection.ProtocolError("Invalid channel data packet")
        chan = self._channels.get(recv_chan)
        if chan is None:
            raise connection.ProtocolError(f"Invalid channel number {recv_chan} received")
        if chan._recv_state != "open":
            raise connection.ProtocolError("Channel not open for sending")
        if datalen > chan._recv_window:
            raise connection.ProtocolError("Window exceeded")
        sink = getattr(chan._session, "data_sink", None)
        if sink is None:
            chan._accept_data(plain[10:end])
        else:  # (large data as a view of the packet: the sink only writes it on)
            data = memoryview(plain)[10:end] if datalen >= JOIN_BELOW else plain[10:end]
            if chan._recv_paused or chan._recv_buf or chan._send_state != "open" \
                    or chan._encoding or not datalen:
                chan._accept_data(data)  # (buffered while paused, dropped once closing)
            else:  # item 9: what _accept_data and _deliver_data do for it, in one call
                window = chan._recv_window = chan._recv_window - datalen
                if window < chan._init_recv_window / 2:  # (before the data, as they do it)
                    chan._recv_window = chan._init_recv_window
                    chan.send_packet(MSG_CHANNEL_WINDOW_ADJUST,
                                     (chan._init_recv_window - window).to_bytes(4, "big"))
                sink(data)
        self._auth_final = True
        if self._transport:
            self._recv_seq = (seq + 1) & 0xFFFFFFFF

    empty = memoryview(b"")

    def _bridged_received(self: Any, view: memoryview) -> tuple[memoryview, int]:
        """What a :class:`BufferedReads` read into its buffer (``view``, valid during this
        call only): every whole packet in it is handled; returns what is left (the start of
        the next packet, to be given again with more) and the size that packet will have
        (0: not known yet). ``_inpbuf`` is left empty: nothing keeps a view of the buffer."""
        if type(self._recv_encryption) is not gcm_encryption:
            _data_received(self, bytes(view))  # key exchange, another cipher: as shipped
            return empty, 0
        if self.__dict__.get("_bridged_held"):  # (only data_received holds packet pieces,
            _data_received(self, bytes(view))  # never on this path: kept right, not fast)
            return empty, 0
        inp = self._inpbuf
        self._inpbuf = memoryview(b"".join((inp, view))) if inp else view
        self._recv_data()
        rest = self._inpbuf
        if type(rest) is not memoryview:  # (asyncssh's own reader took over: a rekey)
            return empty, 0
        if getattr(self._recv_handler, "__func__", None) is not _recv_pkthdr:
            # a packet is handled by a task (authentication, key exchange): asyncssh reads what came
            # after it from _inpbuf once the task is done, so it keeps it there (a copy)
            self._inpbuf = memoryview(bytes(rest))
            return empty, 0
        self._inpbuf = empty
        if len(rest) >= 4 and type(self._recv_encryption) is gcm_encryption:
            pktlen = int.from_bytes(rest[:4], "big")
            if pktlen <= self._max_recv_pktlen:  # (a larger one closed the connection)
                return rest, 4 + pktlen + GCM_TAG
        return rest, 0

    conn_cls._bridged_received = _bridged_received  # type: ignore[attr-defined]

    decrypt_packet = gcm_encryption.decrypt_packet

    def _decrypt_packet(self: Any, seq: int, first: Any, rest: Any, header_len: int,
                        mac: Any) -> bytes | None:
        plain: bytes | None = self.__dict__.pop("_bridged_plain", None)
        if plain is None:
            return decrypt_packet(self, seq, first, rest, header_len, mac)
        return plain

    conn_cls.send_packet = _send_packet  # type: ignore[method-assign]
    conn_cls.data_received = _data_received  # type: ignore[method-assign]
    conn_cls._recv_pkthdr = _recv_pkthdr  # type: ignore[method-assign]
    gcm_encryption.decrypt_packet = _decrypt_packet  # type: ignore[method-assign]


@contextlib.contextmanager
def corked(chan: Any) -> Iterator[None]:
    """The packets ``chan``'s connection sends in this block leave in one write at its end
    (a channel's EOF and CLOSE: one system call, and one read for the peer, not two).
    Only the fast packet path corks; anything else is sent as it comes, after what was
    corked."""
    conn = getattr(chan, "_conn", None)
    if conn is None or "_bridged_corked" in conn.__dict__ \
            or not hasattr(type(conn), "_bridged_received"):  # (no fast packet path)
        yield
        return
    conn._bridged_corked = []
    try:
        yield
    finally:
        _uncork(conn)


def _uncork(conn: Any) -> None:
    corked: list[bytes] | None = conn.__dict__.pop("_bridged_corked", None)
    if corked and conn._transport is not None:
        if sum(map(len, corked)) < JOIN_BELOW:
            conn._transport.write(b"".join(corked))  # (one small write, not a writev)
        else:
            conn._transport.writelines(corked)


class BufferedReads(asyncio.BufferedProtocol):
    """An SSH connection's socket, read straight into a buffer of ours (item 6).

    As an ``asyncio.Protocol`` the connection is given a new bytes object per read (uvloop
    copies what it read into it), and a packet cut by a read was joined with the next read
    (a second copy): at 256 KiB packets, both copies of nearly every byte. Here uvloop reads
    into this buffer; whole packets are decrypted from it where they lie; once a packet's
    length is known it is read no further than its end, so reads stop at packet boundaries;
    what a read left of the next packet stays in place, and moves to the front only when the
    rest would not fit. The connection keeps no view of the buffer after each call
    (``_bridged_received``). The buffer starts at 64 KiB, grows to 1 MiB once an
    authenticated peer's reads fill it, and goes back after 64 small reads. Used for TCP
    sockets, with the fast packet path only (:func:`buffered`); message carriers
    (websocket, kube) call ``data_received`` as before.
    """

    #: bytes: the first buffer (what an idle connection's handshake needs), and the one a
    #: read that filled all the room it was given grows it to (over two 256 KiB packets)
    SMALL, LARGE = 64 * 1024, 1024 * 1024
    #: reads in a row smaller than SMALL, with nothing pending, after which a grown buffer
    #: goes back to SMALL (an idle connection does not keep 1 MiB for a burst long over)
    SMALL_READS = 64
    _grow = False  # the next room made is LARGE
    _small_reads = 0

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self._buf = bytearray(self.SMALL)
        self._view = memoryview(self._buf)
        self._start = self._end = 0  # the bytes read and not yet handled
        self._need = 0  # the size of the packet they begin, if known
        self._offered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.connection_made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        start, end, need = self._start, self._end, self._need
        size = len(self._buf)
        if self._grow or start + need > size or (not need and size - end < size // 4):
            self._make_room(need)
            start, end = self._start, self._end
        # a packet of known size: read up to its end, not into the next one
        view = self._view[end:start + need] if need else self._view[end:]
        self._offered = len(view)
        return view

    def buffer_updated(self, nbytes: int) -> None:
        conn = self.conn
        self._end += nbytes
        if self._need:
            if self._end - self._start < self._need:  # the packet is not whole yet
                if conn._auth_complete:  # (a slow link's pieces put keepalives off)
                    conn._bridged_read_at = conn._loop.time()
                return
        elif nbytes == self._offered and len(self._buf) < self.LARGE and conn._auth_complete:
            self._grow = True  # (not before: a peer not yet let in gets the small buffer)
        rest, need = conn._bridged_received(self._view[self._start:self._end])
        self._need = need if need > len(rest) else 0
        if not rest:
            self._start = self._end = 0
            if len(self._buf) > self.SMALL:  # after a burst: back to the small buffer once
                self._small_reads = self._small_reads + 1 if nbytes < self.SMALL else 0
                if self._small_reads >= self.SMALL_READS:  # reads have stayed small a while
                    self._buf = bytearray(self.SMALL)
                    self._view = memoryview(self._buf)
                    self._small_reads = 0
        elif rest.obj is self._buf:  # the start of the next packet, where it lies
            self._start = self._end - len(rest)
        else:
            self._start = self._end = 0
            if len(rest) > len(self._buf):
                self._make_room(len(rest))
            self._view[:len(rest)] = rest
            self._end = len(rest)

    def _make_room(self, need: int) -> None:
        """Move the pending bytes to the front, into a larger buffer if they (or the packet
        they begin) would not fit or the reads fill what they are given."""
        pending = self._view[self._start:self._end]
        size = len(self._buf)
        if need > size or self._grow:
            size = max(size, self.LARGE if self._grow else 0, need)
            self._grow = False
        if size != len(self._buf):
            self._buf = bytearray(size)
            self._view = memoryview(self._buf)
        self._view[:len(pending)] = pending  # (overlapping is fine for a memoryview)
        self._start, self._end = 0, len(pending)

    def eof_received(self) -> bool | None:
        return self.conn.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.connection_lost(exc)

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        self.conn.resume_writing()


def write_view(chan: Any, view: memoryview) -> bool:
    """Send ``view`` on ``chan`` without copying it first; True if it was all packetized at
    once (the caller may reuse its buffer), False if the channel keeps (part of) it until the
    peer's window opens (the caller must leave that buffer alone). Without the fast packet
    path the bytes are copied, as ``chan.write`` would."""
    fast = getattr(chan, "_bridged_write_view", None)
    if fast is None:
        chan.write(bytes(view))
        return True
    return bool(fast(view))


def buffered(conn: Any) -> Any:
    """The protocol to give a TCP socket for the asyncssh connection ``conn``: ``conn``
    itself, or read through :class:`BufferedReads` where the fast packet path is on."""
    if hasattr(type(conn), "_bridged_received"):
        return BufferedReads(conn)
    return conn


def _less_per_packet() -> None:
    """Item 4: work asyncssh does for every packet whose result nobody reads."""
    from asyncssh import connection, packet
    from asyncssh import logging as ssh_logging

    ssh_logger = ssh_logging.SSHLogger
    log_packet = packet.SSHPacketLogger._log_packet

    def _log_packet(self: Any, *args: Any) -> None:
        # it formats a packet's name and size, then hands them to logger.packet, which
        # drops them below debug level 3
        if ssh_logger._debug_level >= 3:
            log_packet(self, *args)

    ssh_log = ssh_logger.log

    def _log(self: Any, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        # it turns every argument into text before the logger is asked whether the level is
        # on (asyncssh's INFO lines per channel, which bridged's logging does not show)
        if self.isEnabledFor(level):
            ssh_log(self, level, msg, *args, **kwargs)

    # The keepalive timer is due ``keepalive_interval`` after the last packet received;
    # asyncssh cancels it and makes a new one for every read. Instead the read time is noted,
    # and a timer that fires early is set again for the rest.
    conn_cls = connection.SSHConnection
    keepalive_callback = conn_cls._keepalive_timer_callback

    def _reset_keepalive_timer(self: Any) -> None:
        if self._auth_complete:
            self._bridged_read_at = self._loop.time()
            if self._keepalive_timer is None:
                self._set_keepalive_timer()

    def _keepalive_timer_callback(self: Any) -> None:
        interval = self._keepalive_interval
        if interval:
            rest = self.__dict__.get("_bridged_read_at", 0.0) + interval - self._loop.time()
            if rest > 0:
                self._keepalive_timer = self._loop.call_later(
                    rest, self._keepalive_timer_callback)
                return
        keepalive_callback(self)

    packet.SSHPacketLogger._log_packet = _log_packet  # type: ignore[method-assign, assignment]
    ssh_logger.log = _log  # type: ignore[method-assign]
    conn_cls._reset_keepalive_timer = _reset_keepalive_timer  # type: ignore[method-assign]
    conn_cls._keepalive_timer_callback = _keepalive_timer_callback  # type: ignore[method-assign]


def _keep_eof_before_close() -> None:
    from asyncssh import channel
    from asyncssh.constants import MSG_CHANNEL_CLOSE, MSG_CHANNEL_EOF

    chan = channel.SSHChannel
    process_close, flush_recv_buf = chan._process_close, chan._flush_recv_buf
    close, close_send = chan.close, chan._close_send

    def _close(self: Any) -> None:
        if self._send_state == "eof_pending":  # the EOF asked for goes before the CLOSE
            self._bridged_eof_unsent = True
        close(self)

    def _close_send(self: Any) -> None:
        if self.__dict__.pop("_bridged_eof_unsent", False) and not self._send_buf \
                and self._send_state != "closed":
            self.send_packet(MSG_CHANNEL_EOF)  # (not when data is discarded: that is a loss)
        close_send(self)

    def _process_close(self: Any, pkttype: int, pktid: int, packet: Any) -> None:
        if self._recv_state == "eof_pending":  # an EOF still behind paused data
            self._bridged_eof_owed = True
        process_close(self, pkttype, pktid, packet)

    def _flush_recv_buf(self: Any, exc: Exception | None = None) -> None:
        if self.__dict__.get("_bridged_eof_owed"):
            while self._recv_buf and not self._recv_paused:
                self._deliver_data(*self._recv_buf.pop(0))
            if self._recv_buf:
                return  # still paused: the close waits, as it does as shipped
            self._bridged_eof_owed = False
            if self._session is not None:
                self._session.eof_received()
        flush_recv_buf(self, exc)

    chan._process_close = _process_close  # type: ignore[method-assign, assignment]
    # (packets are dispatched through a table of the functions as defined: it needs the new one)
    chan._packet_handlers = {**chan._packet_handlers,  # type: ignore[misc]
                             MSG_CHANNEL_CLOSE: _process_close}
    chan.close = _close  # type: ignore[method-assign]
    chan._close_send = _close_send  # type: ignore[method-assign]
    chan._flush_recv_buf = _flush_recv_buf  # type: ignore[method-assign]
