"""Two narrow speed-ups for asyncssh's packet layer, applied at start-up by daemon and relay.

Measured with ``bench/tunnel.py`` (py-spy on both processes): the cost of SSH in Python is per
packet, and asyncssh spends it twice where it need not:

1. After key exchange it sends an empty ``SSH_MSG_IGNORE`` before *every* packet. That is the
   old countermeasure against chosen-plaintext attacks on CBC ciphers; with an AEAD cipher
   (AES-GCM, chacha20-poly1305: the only ones bridged offers) it protects nothing, and it
   doubles packets, encryptions and write syscalls. OpenSSH does not send them. We skip the
   empty ignore packet when the sending cipher is AEAD; CBC/CTR connections keep it.
2. ``GCMCipher`` builds a new ``AESGCM`` object (a key schedule) for every packet. We keep one
   per key. The bytes on the wire are identical.

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
    _applied = True
    return True
