"""Does the developer's local server speak HTTP/2 cleartext (h2c, with prior knowledge)?

An intercept whose protocol is ``h2c`` or ``grpc`` has the relay send each matched stream to the
local server as HTTP/2. An HTTP/1.1 server there would fail every one of them, each time with a
protocol error far from its cause; so the daemon asks once, before registering the intercept
(issue 11), and says what is wrong in one line.

The question is the client's connection preface (RFC 9113 §3.4: the ``PRI * HTTP/2.0`` magic and
a SETTINGS frame); an HTTP/2 server's answer starts with its own preface, a SETTINGS frame on
stream 0. Then a GOAWAY and the connection is closed: no stream is ever opened, so the server's
handlers never run. Nothing listening is not an error here: an intercept may be made before its
local server starts (each stream connects on its own, and says so if nothing answers).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from ..config import format_host_port
from ..errors import ConfigError

#: the frame header (RFC 9113 §4.1): length (3 bytes), type, flags, stream (4 bytes)
FRAME_HEADER_BYTES = 9
SETTINGS = 0x4
#: what an HTTP/1.x server's answer begins with (its status line)
HTTP1 = b"HTTP/1."
#: a SETTINGS frame holds 6 bytes per setting, and only a few settings exist: any larger is
#: not an HTTP/2 server's preface (16 KiB: the least maximum frame size, RFC 9113 §4.2)
MAX_SETTINGS_BYTES = 16 * 1024


@dataclass(frozen=True)
class H2cCheckSettings:
    #: seconds for the local server to accept the connection and answer the preface: a local
    #: server answers in milliseconds; 2 s allows a loaded laptop, and keeps ``intercept`` from
    #: waiting long on a server that will never answer
    answer_seconds: float = 2.0


class NotH2c(ConfigError):
    """The local server answers, but not as an HTTP/2 cleartext server."""


async def speaks_h2c(host: str, port: int,
                     settings: H2cCheckSettings | None = None) -> bool:
    """True when the server at ``host:port`` answers the HTTP/2 preface with SETTINGS; False
    when nothing can be reached there (refused, unreachable, no connection within the time).
    Raises :class:`NotH2c` when it answers otherwise (HTTP/1.x, other bytes, silence, EOF)."""
    settings = settings or H2cCheckSettings()
    where = format_host_port(host, port)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.answer_seconds
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                settings.answer_seconds)
    except (OSError, TimeoutError):
        return False
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    try:
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        try:
            answer = await _first_bytes(reader, FRAME_HEADER_BYTES, deadline - loop.time())
            _judge(answer, where)
            length = int.from_bytes(answer[:3], "big")
            if length > MAX_SETTINGS_BYTES:
                raise NotH2c(f"local server at {where} answered HTTP/2 with a SETTINGS frame "
                             f"of {length} bytes")
            rest = await _first_bytes(reader, length, deadline - loop.time())
        except TimeoutError:
            raise NotH2c(f"local server at {where} did not answer the HTTP/2 (h2c) preface "
                         f"within {settings.answer_seconds:g} s",
                         hint="is it an h2c server? else intercept with --protocol http") \
                from None
        try:  # the frame read by h2 as well: a malformed SETTINGS is no HTTP/2 either
            events = conn.receive_data(answer + rest)
        except h2.exceptions.ProtocolError as exc:
            raise NotH2c(f"local server at {where} answered HTTP/2 with a broken SETTINGS "
                         f"frame ({exc})") from None
        if not any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events):
            raise NotH2c(f"the local server at {where} did not send its HTTP/2 SETTINGS")
        conn.close_connection()
        writer.write(conn.data_to_send())
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.drain(), max(0.1, deadline - loop.time()))
        return True
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)


async def _first_bytes(reader: asyncio.StreamReader, count: int, seconds: float) -> bytes:
    """Up to ``count`` bytes: fewer only when the server closed (or reset) first; silence
    for ``seconds`` before any byte raises TimeoutError (told apart from a close)."""
    data = b""
    try:
        async with asyncio.timeout(max(0.0, seconds)):
            while len(data) < count:
                chunk = await reader.read(count - len(data))
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        if not data:
            raise
    except OSError:  # a reset: judged by what came before it
        pass
    return data


def _judge(answer: bytes, where: str) -> None:
    """An error unless ``answer`` begins with a SETTINGS frame header on stream 0."""
    if answer[:len(HTTP1)] == HTTP1[:len(answer)] and answer:
        raise NotH2c(f"local server at {where} speaks HTTP/1.1, not HTTP/2 (h2c); "
                     "intercept with --protocol http, or serve h2c")
    stream = int.from_bytes(answer[5:9], "big") & 0x7FFF_FFFF
    if (len(answer) > 3 and answer[3] != SETTINGS) or stream != 0:
        raise NotH2c(f"local server at {where} does not speak HTTP/2 (h2c): its first bytes "
                     f"are {answer!r}, not a SETTINGS frame",
                     hint="a TLS server needs h2 over TLS, which intercepts do not speak; "
                     "else intercept with --protocol http")
    if len(answer) < FRAME_HEADER_BYTES:
        said = f"after {len(answer)} bytes" if answer else "without answering"
        raise NotH2c(f"local server at {where} closed the connection or went silent {said} "
                     "of the HTTP/2 (h2c) preface",
                     hint="is it an h2c server? else intercept with --protocol http")
