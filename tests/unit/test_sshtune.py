"""bridged.sshtune: the asyncssh speed-ups keep the wire format and apply where checked."""

from __future__ import annotations

import asyncio
import os

import asyncssh
import pytest
from asyncssh.crypto.cipher import GCMCipher
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bridged import sshtune

VERSION = tuple(int(p) for p in asyncssh.__version__.split(".")[:2])


@pytest.fixture(scope="module", autouse=True)
def applied() -> None:
    if VERSION not in sshtune._CHECKED:
        pytest.skip(f"asyncssh {asyncssh.__version__} is not a version the patches were read "
                    "against: they stay off, asyncssh runs as shipped")
    assert sshtune.apply() is True


def _reference(key: bytes, iv: bytes, header: bytes, data: bytes) -> bytes:
    return AESGCM(key).encrypt(iv, data, header)


def test_gcm_packets_are_byte_identical_to_a_fresh_aesgcm_per_packet() -> None:
    key, iv = os.urandom(16), os.urandom(12)
    sender = GCMCipher("aes128-gcm", key, iv)
    receiver = GCMCipher("aes128-gcm", key, iv)
    counter = int.from_bytes(iv[4:], "big")
    for n in range(5):
        header, data = n.to_bytes(4, "big"), os.urandom(1000 + n)
        ciphertext, mac = sender.encrypt_and_sign(header, data)
        this_iv = iv[:4] + ((counter + n) & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
        assert ciphertext + mac == header + _reference(key, this_iv, header, data)
        assert receiver.verify_and_decrypt(header, ciphertext[4:], mac) == data


def test_a_tampered_packet_is_still_rejected() -> None:
    key, iv = os.urandom(16), os.urandom(12)
    ciphertext, mac = GCMCipher("aes128-gcm", key, iv).encrypt_and_sign(
        b"\0\0\0\1", b"payload")
    tampered = bytes([ciphertext[4] ^ 1]) + ciphertext[5:]
    receiver = GCMCipher("aes128-gcm", key, iv)
    assert receiver.verify_and_decrypt(b"\0\0\0\1", tampered, mac) is None


def test_a_rekeyed_cipher_uses_its_new_key() -> None:
    cipher = GCMCipher("aes128-gcm", os.urandom(16), os.urandom(12))
    cipher.encrypt_and_sign(b"\0\0\0\1", b"x")
    new_key = os.urandom(16)
    cipher._key = new_key  # what a cipher holding another key looks like
    iv = cipher._iv
    ciphertext, mac = cipher.encrypt_and_sign(b"\0\0\0\1", b"y")
    assert ciphertext[4:] + mac == _reference(new_key, iv, b"\0\0\0\1", b"y")


class _Recorder(asyncssh.SSHTCPSession):  # type: ignore[misc]
    """A session that reads nothing until told (back-pressure), recording what arrives."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.events: list[str] = []
        self.lost = asyncio.Event()
        self.chan: asyncssh.SSHTCPChannel | None = None

    def connection_made(self, chan: asyncssh.SSHTCPChannel) -> None:
        self.chan = chan
        chan.pause_reading()  # a slow local socket

    def data_received(self, data: bytes, datatype: object) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.events.append("eof")
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost.set()


async def test_an_eof_written_just_before_close_reaches_a_paused_reader_before_the_close(
) -> None:
    """Data, EOF, then close at once, to a reader paused by back-pressure: the reader gets all
    the data, then the EOF, then the close (asyncssh as shipped dropped the EOF on both sides,
    and bridged reads a close without EOF as a lost stream)."""
    payload = os.urandom(4 * 1024 * 1024)  # past the window: still buffered at close()
    server_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    authorized = asyncssh.import_authorized_keys(client_key.export_public_key().decode())

    class Server(asyncssh.SSHServer):  # type: ignore[misc]
        def connection_requested(self, *args: object) -> object:
            async def send_all(reader: asyncssh.SSHReader, writer: asyncssh.SSHWriter) -> None:
                writer.write(payload)
                writer.write_eof()
                writer.close()  # at once: data still buffered, EOF pending
            return send_all

    server = await asyncssh.listen(
        "127.0.0.1", 0, server_factory=Server, server_host_keys=[server_key],
        authorized_client_keys=authorized, encoding=None)
    try:
        async with asyncssh.connect(
                "127.0.0.1", server.get_port(), username="t", client_keys=[client_key],
                known_hosts=None, agent_path=None, config=None) as conn:
            recorder = _Recorder()
            await conn.create_connection(lambda: recorder, "x", 1)
            while len(recorder.data) < len(payload) and not recorder.lost.is_set():
                assert recorder.chan is not None
                recorder.chan.resume_reading()  # read a little, then pause again
                await asyncio.sleep(0)
                recorder.chan.pause_reading()
                await asyncio.sleep(0.001)
            recorder.chan.resume_reading()  # type: ignore[union-attr]
            await asyncio.wait_for(recorder.lost.wait(), 10)
    finally:
        server.close()
        await server.wait_closed()
    assert bytes(recorder.data) == payload
    assert recorder.events == ["eof", "lost"]
