"""Two narrow speed-ups for asyncssh's packet layer and one fix of its channels, applied at
start-up by daemon and relay.

Measured with ``bench/tunnel.py`` (py-spy on both processes): the cost of SSH in Python is per
packet, and asyncssh spends it twice where it need not:

1. After key exchange it sends an empty ``SSH_MSG_IGNORE`` before *every* packet. That is the
   old countermeasure against chosen-plaintext attacks on CBC ciphers; with an AEAD cipher
   (AES-GCM, chacha20-poly1305: the only ones bridged offers) it protects nothing, and it
   doubles packets, encryptions and write syscalls. OpenSSH does not send them. We skip the
   empty ignore packet when the sending cipher is AEAD; CBC/CTR connections keep it.
2. ``GCMCipher`` builds a new ``AESGCM`` object (a key schedule) for every packet. We keep one
   per key. The bytes on the wire are identical.
3. (a fix) asyncssh drops a channel's EOF that meets a CLOSE, on both sides: ``close()`` right
   after ``write_eof()``, while data is still buffered for sending, replaces the pending EOF
   (the peer gets the data, then CLOSE without EOF); and an EOF received while reading is
   paused (back-pressure) is dropped when the CLOSE arrives before reading resumes. bridged
   reads a close without EOF as a lost stream (the far socket was reset), so a complete 64 MiB
   echo ended with a reset about 1 time in 10. We keep the EOF in both cases: sent before the
   CLOSE once the data is out; delivered after the buffered data.

Both are applied only to the asyncssh versions they were checked against (see ``_CHECKED``),
and only if the patched attributes look as expected; otherwise asyncssh runs as shipped and a
debug line says so. Nothing here touches key exchange, MACs, sequence numbers or rekeying.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

#: asyncssh (major, minor) versions whose send_packet and GCMCipher these patches were read
#: against; widen only after reading the new version's code
_CHECKED = {(2, 21), (2, 22), (2, 23), (2, 24)}

_applied = False


def apply() -> bool:
    """Install both patches once; returns whether they are active."""
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
    _keep_eof_before_close()
    _applied = True
    return True


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
