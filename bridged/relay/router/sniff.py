"""What a client connection speaks, from its first bytes: HTTP/1.x, HTTP/2, or something to pass
through.

The router routes HTTP/1.x requests one by one, and HTTP/2 (prior knowledge: gRPC, h2c) stream
by stream. Anything else reaching an intercepted port — TLS, or a protocol that is not HTTP at
all — is no request the router can decide, but it is somebody's traffic: it is spliced,
untouched, to the Service's original pods (:mod:`.downstream`). Answering it ``400`` would break
every such client of the Service for as long as anyone intercepts it.

Pure: :func:`classify` looks at a prefix and says what it is, or that it needs more bytes. It
decides on as few bytes as it can (a TLS record type, the first byte that no request line can
have), so a pass-through is not delayed waiting for a line end that will never come.
"""

from __future__ import annotations

HTTP1 = "http/1"
#: HTTP/2 with prior knowledge (gRPC, h2c): routed per stream (:mod:`.h2downstream`)
H2C = "h2c"
#: reasons for a pass-through, as the traffic log and ``bridged status`` show them
TLS = "TLS connection passed through"
OTHER = "non-HTTP/1.x connection passed through"

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_TLS_HANDSHAKE = 0x16  # the record type of a ClientHello
#: a method is an RFC 9110 token; none is longer than this in practice (llhttp knows ~45)
_MAX_METHOD = 32
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_VERSION = b"HTTP/1."


def classify(prefix: bytes | bytearray, limit: int) -> str | None:
    """:data:`HTTP1`, a pass-through reason, or None when ``prefix`` does not tell yet.

    ``limit``: past this many bytes without a verdict, the bytes are handed to the HTTP parser
    (a request line that long is refused there, with 431).
    """
    data = prefix.lstrip(b"\r\n")  # RFC 9112 §2.2: empty lines before a request are ignored
    if not data:
        return None if len(prefix) < limit else OTHER
    if data[0] == _TLS_HANDSHAKE:
        return TLS
    if H2_PREFACE.startswith(data[:len(H2_PREFACE)]):
        if len(data) >= len(H2_PREFACE):
            return H2C
        return None  # "PRI * HTTP/2.0" is also where an HTTP/1 method could start
    verdict = _request_line(data)
    if verdict is None and len(prefix) >= limit:
        return HTTP1
    return verdict


def _request_line(data: bytes | bytearray) -> str | None:
    """method SP request-target SP HTTP/1.x — checked as far as ``data`` goes."""
    space = data.find(b" ", 0, _MAX_METHOD + 1)
    method = data[:space] if space >= 0 else data[:_MAX_METHOD + 1]
    if space == 0 or len(method) > _MAX_METHOD or not _TCHAR.issuperset(method):
        return OTHER
    if space < 0:
        return None
    rest = data[space + 1:]
    end = rest.find(b" ")
    target = rest if end < 0 else rest[:end]
    if end == 0 or any(c < 0x20 or c == 0x7F for c in target[:256]):
        return OTHER
    if end < 0:
        return None
    version = rest[end + 1:end + 2 + len(_VERSION)]  # "HTTP/1." and one digit
    if not _VERSION.startswith(version[:len(_VERSION)]):
        return OTHER
    if len(version) <= len(_VERSION):
        return None
    return HTTP1 if version[-1:].isdigit() else OTHER
