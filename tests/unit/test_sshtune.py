"""bridged.sshtune: the asyncssh speed-ups keep the wire format and apply where checked."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncssh
import pytest
from asyncssh.crypto.cipher import GCMCipher
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bridged import sshtune
from bridged.carriers import carrier_for
from bridged.config import parse_carrier
from bridged.relay.server import TcpAcceptor
from bridged.sshtune import BufferedReads
from tests import stock_ssh_peer
from tests.helpers import instances_made

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


# --- the fast data path against asyncssh as shipped, in a process of its own ---

PEER = Path(__file__).resolve().parent.parent / "stock_ssh_peer.py"
CIPHERS = ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"]
#: small enough that every run rekeys several times, mid-stream, in both directions
REKEY_BYTES = 4 * 1024 * 1024


async def _echo_through(conn: asyncssh.SSHClientConnection, seed: int) -> list[str]:
    """What the stock peer's echo-through does, from this (patched) process."""

    async def one(i: int, plan: list[int]) -> str:
        # bridged's channel settings: packets of up to 256 KiB, a 2 MiB window
        reader, writer = await conn.open_connection("x", 1, encoding=None,
                                                    window=2 * 1024 * 1024,
                                                    max_pktsize=256 * 1024)
        sent, got = hashlib.sha256(), hashlib.sha256()

        async def write() -> None:
            for n, size in enumerate(plan):
                data = stock_ssh_peer.payload(seed, i, n, size)
                sent.update(data)
                writer.write(data)
                await writer.drain()
            writer.write_eof()

        task = asyncio.ensure_future(write())
        while data := await reader.read(1 << 20):
            got.update(data)
        await task
        writer.close()
        assert got.hexdigest() == sent.hexdigest(), f"channel {i}: the echo differs"
        return got.hexdigest()

    return list(await asyncio.gather(*(one(i, p) for i, p in
                                       enumerate(stock_ssh_peer.sizes(seed)))))


def _expected(seed: int) -> list[str]:
    out = []
    for i, plan in enumerate(stock_ssh_peer.sizes(seed)):
        h = hashlib.sha256()
        for n, size in enumerate(plan):
            h.update(stock_ssh_peer.payload(seed, i, n, size))
        out.append(h.hexdigest())
    return out


#: how the patched side reads its socket: through sshtune.BufferedReads (as bridged's tcp
#: carrier and the relay's SSH port do), or as an asyncio.Protocol (the message carriers)
READS = ["buffered", "protocol"]


@pytest.mark.parametrize("reads", READS)
@pytest.mark.parametrize("cipher", CIPHERS)
async def test_patched_client_and_stock_server_move_every_byte_through_rekeys(
        cipher: str, reads: str) -> None:
    await _patched_client(cipher, reads)


async def _patched_client(cipher: str, reads: str) -> None:
    seed = 11
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(PEER), "serve", cipher, str(REKEY_BYTES),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        info = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        known = asyncssh.import_known_hosts(f"[127.0.0.1]:{info['port']} {info['host_key']}")
        carrier = carrier_for(parse_carrier(f"tcp://127.0.0.1:{info['port']}"))
        async with asyncssh.connect(
                "127.0.0.1", info["port"], username="t", known_hosts=known, agent_path=None,
                config=None, client_keys=[asyncssh.import_private_key(info["client_key"])],
                encryption_algs=[cipher], compression_algs=None, rekey_bytes=REKEY_BYTES,
                **({"tunnel": carrier} if reads == "buffered" else {})) as conn:
            assert isinstance(conn._transport.get_protocol(), BufferedReads) == \
                (reads == "buffered")
            hashes = await asyncio.wait_for(_echo_through(conn, seed), 120)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        await proc.wait()
    assert hashes == _expected(seed)


@pytest.mark.parametrize("reads", READS)
@pytest.mark.parametrize("cipher", CIPHERS)
async def test_stock_client_and_patched_server_move_every_byte_through_rekeys(
        cipher: str, reads: str, monkeypatch: pytest.MonkeyPatch) -> None:
    await _patched_server(cipher, reads, monkeypatch)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_buffered_reads_on_uvloop_move_every_byte_through_rekeys(
        cipher: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both transfers again on uvloop, which the daemon and the relay run on: its
    BufferedProtocol reads are not asyncio's (the tests above run on asyncio's loop)."""
    import uvloop

    async def both() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        await _patched_client(cipher, "buffered")
        await _patched_server(cipher, "buffered", monkeypatch)

    uvloop.run(both())


async def _patched_server(cipher: str, reads: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seed = 12
    accepted = instances_made(monkeypatch, BufferedReads)
    server, host_key, client_key = await stock_ssh_peer.echo_server(
        encryption_algs=[cipher], rekey_bytes=REKEY_BYTES,
        **({"tunnel": TcpAcceptor()} if reads == "buffered" else {}))
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(PEER), "echo-through", str(server.get_port()),
            host_key.export_public_key().decode(), client_key.export_private_key().decode(),
            cipher, str(REKEY_BYTES), str(seed), stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        server.close()
        await server.wait_closed()
    assert proc.returncode == 0
    assert json.loads(out)["sha256"] == _expected(seed)
    assert len(accepted) == (1 if reads == "buffered" else 0)


async def test_a_compressed_connection_moves_every_byte() -> None:
    """A peer that asks for zlib gets it (the relay's server offers it): compressed packets
    are not mistaken for channel data by the fast path, whatever their first byte."""
    seed = 13
    zlib = ["zlib@openssh.com"]
    server, _, client_key = await stock_ssh_peer.echo_server(compression_algs=zlib)
    try:
        async with asyncssh.connect(
                "127.0.0.1", server.get_port(), username="t", client_keys=[client_key],
                known_hosts=None, agent_path=None, config=None,
                compression_algs=zlib) as conn:
            hashes = await asyncio.wait_for(_echo_through(conn, seed), 120)
    finally:
        server.close()
        await server.wait_closed()
    assert hashes == _expected(seed)


async def test_keepalives_wait_for_a_quiet_connection_and_then_come(
        caplog: pytest.LogCaptureFixture) -> None:
    """The keepalive timer is noted, not remade, per packet read: while packets arrive no
    keepalive is sent; once they stop, one goes out an interval after the last read."""
    interval = 0.25
    caplog.set_level(logging.DEBUG, logger="asyncssh")
    sent: list[float] = []
    loop = asyncio.get_running_loop()
    quiet_keepalive = asyncio.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "Sending keepalive request" in record.getMessage():
                sent.append(loop.time())
                quiet_keepalive.set()

    handler = Seen()
    logging.getLogger("asyncssh").addHandler(handler)
    server, _, client_key = await stock_ssh_peer.echo_server()
    try:
        async with asyncssh.connect(
                "127.0.0.1", server.get_port(), username="t", client_keys=[client_key],
                known_hosts=None, agent_path=None, config=None,
                keepalive_interval=interval, keepalive_count_max=3) as conn:
            reader, writer = await conn.open_connection("x", 1, encoding=None)
            busy_until = loop.time() + 6 * interval
            while True:  # a packet read every fifth of the interval
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
                last_read = loop.time()
                if last_read > busy_until:
                    break
                await asyncio.sleep(interval / 5)
            assert sent == [], "a keepalive went out while packets were arriving"
            await asyncio.wait_for(quiet_keepalive.wait(), 10 * interval)
            assert sent[0] >= last_read + interval * 0.9
            writer.close()
    finally:
        logging.getLogger("asyncssh").removeHandler(handler)
        server.close()
        await server.wait_closed()


def test_the_fast_packet_path_is_in_place_where_it_was_read() -> None:
    """On the asyncssh versions item 3 was read against, the patched packet path is the one
    that runs (the interop tests above then check its bytes); elsewhere asyncssh's own."""
    from asyncssh import channel, connection

    patched = channel.SSHChannel._flush_send_buf.__module__ == sshtune.__name__
    assert patched == (VERSION in sshtune._FAST_CHECKED)
    assert (connection.SSHConnection.data_received.__module__ == sshtune.__name__) == patched



class _CountingTransport:
    """Delegates to a transport, counting the writes made through it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.inner = transport
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.inner.write(data)

    def writelines(self, data: list[bytes]) -> None:
        self.writes += 1
        self.inner.writelines(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_a_corked_eof_and_close_leave_in_one_write_and_in_order() -> None:
    """What splice does when both ways of a stream ended: the far side gets the data, the EOF
    and then the CLOSE (an EOF lost would read as a cut stream), from one write."""
    gcm = ["aes128-gcm@openssh.com"]  # (what bridged negotiates; other ciphers do not cork)
    far = _Recorder()

    class Server(asyncssh.SSHServer):  # type: ignore[misc]
        def begin_auth(self, username: str) -> bool:
            return False

        def connection_requested(self, *args: object) -> object:
            return far

    server = await asyncssh.listen("127.0.0.1", 0, server_factory=Server, encryption_algs=gcm,
                                   server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")])
    try:
        async with asyncssh.connect("127.0.0.1", server.get_port(), username="t",
                                    known_hosts=None, agent_path=None, config=None,
                                    encryption_algs=gcm) as conn:
            chan, _ = await conn.create_connection(asyncssh.SSHTCPSession, "x", 1)
            assert far.chan is not None
            far.chan.resume_reading()  # (this one reads at once)
            chan.write(b"last words")
            counting = _CountingTransport(conn._transport)
            conn._transport = counting
            with sshtune.corked(chan):
                chan.write_eof()
                chan.close()
                assert counting.writes == 0  # (held until the block ends)
            assert counting.writes == 1
            conn._transport = counting.inner
            await asyncio.wait_for(far.lost.wait(), 10)
    finally:
        server.close()
        await server.wait_closed()
    assert bytes(far.data) == b"last words"
    assert far.events == ["eof", "lost"]



async def test_what_follows_a_packet_handled_in_a_task_is_read_when_the_task_is_done(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncssh hands some packets to a task (an authentication request, a KEXINIT) and reads
    what came after them from its own input buffer once the task is done. Two global requests
    leave the client in one write, so the server reads them at once; the first is held in a
    task here: the second must be answered after it (left in the reader's buffer instead, it
    never was, and the daemon's handshake stalled about one time in six)."""
    from asyncssh.connection import SSHConnection
    from asyncssh.constants import MSG_GLOBAL_REQUEST

    handle = SSHConnection._packet_handlers[MSG_GLOBAL_REQUEST]
    gate, held = asyncio.Event(), asyncio.Event()

    def first_in_a_task(conn: Any, pkttype: int, pktid: int, packet: Any) -> Any:
        if held.is_set() or not conn.is_server():
            return handle(conn, pkttype, pktid, packet)
        held.set()

        async def later() -> None:
            await gate.wait()
            handle(conn, pkttype, pktid, packet)

        return later()

    monkeypatch.setitem(SSHConnection._packet_handlers, MSG_GLOBAL_REQUEST, first_in_a_task)

    class Server(asyncssh.SSHServer):  # type: ignore[misc]
        def begin_auth(self, username: str) -> bool:
            return False

    gcm = ["aes128-gcm@openssh.com"]
    server = await asyncssh.listen("127.0.0.1", 0, tunnel=TcpAcceptor(), server_factory=Server,
                                   server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
                                   encryption_algs=gcm)
    try:
        async with asyncssh.connect("127.0.0.1", server.get_port(), username="t",
                                    known_hosts=None, agent_path=None, config=None,
                                    encryption_algs=gcm) as conn:
            with sshtune.corked(SimpleNamespace(_conn=conn)):  # both in one write
                answers = [asyncio.ensure_future(conn._make_global_request(b"x@bridged"))
                           for _ in range(2)]
                await asyncio.sleep(0)  # (the requests are sent when the tasks start)
            # (the second request came in the same read: by now it waits behind the first)
            await asyncio.wait_for(held.wait(), 10)
            gate.set()
            done = await asyncio.wait_for(asyncio.gather(*answers), 10)
    finally:
        server.close()
        await server.wait_closed()
    assert [pkttype for pkttype, _ in done] == [asyncssh.constants.MSG_REQUEST_FAILURE] * 2


async def _buffered_client(server: Any, client_key: Any) -> Any:
    carrier = carrier_for(parse_carrier(f"tcp://127.0.0.1:{server.get_port()}"))
    return await asyncssh.connect(
        "127.0.0.1", server.get_port(), tunnel=carrier, username="t", client_keys=[client_key],
        known_hosts=None, agent_path=None, config=None, encryption_algs=GCM)


GCM = ["aes128-gcm@openssh.com"]


async def test_the_read_buffer_grows_for_a_burst_and_shrinks_after_it() -> None:
    server, _, client_key = await stock_ssh_peer.echo_server(encryption_algs=GCM)
    try:
        async with await _buffered_client(server, client_key) as conn:
            reads = conn._transport.get_protocol()
            assert isinstance(reads, BufferedReads)
            size = len(reads._buf)
            assert size == reads.SMALL
            reader, writer = await conn.open_connection(
                "x", 1, encoding=None, window=2 * 1024 * 1024, max_pktsize=256 * 1024)
            payload = os.urandom(8 * 1024 * 1024)
            writer.write(payload)
            echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 30)
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
            size = len(reads._buf)
            assert size == reads.LARGE  # reads filled what they were given
            for i in range(reads.SMALL_READS + 8):  # then small round trips only
                writer.write(b"%d" % (i % 10))
                assert await asyncio.wait_for(reader.readexactly(1), 10) == b"%d" % (i % 10)
            size = len(reads._buf)
            assert size == reads.SMALL
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_packet_longer_than_allowed_closes_the_connection_and_sizes_nothing() -> None:
    """A length field past asyncssh's maximum (it travels in the clear with AES-GCM) ends the
    connection as asyncssh as shipped does; it never becomes the size of a buffer."""
    server, _, client_key = await stock_ssh_peer.echo_server(encryption_algs=GCM)
    try:
        conn = await _buffered_client(server, client_key)
        reads = conn._transport.get_protocol()
        buf = reads.get_buffer(-1)
        forged = (0xFFFFFFF0).to_bytes(4, "big") + b"\0" * 60
        buf[:len(forged)] = forged
        reads.buffer_updated(len(forged))
        await asyncio.wait_for(conn.wait_closed(), 10)
        need, size = reads._need, len(reads._buf)
        assert need == 0 and size == reads.SMALL
    finally:
        server.close()
        await server.wait_closed()
