"""The capture's taps over byte sequences (no sockets): HTTP/1.1 read with httptools, HTTP/2
read with hyperframe and HPACK (the bytes made by the h2 library, a real encoder with its
dynamic table), and what a record may hold once redacted."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import h2.config
import h2.connection
import h2.events
import hpack
import pytest

from bridged.capture.bodies import parse_path, redact_body
from bridged.capture.model import Captured, CaptureSettings
from bridged.capture.tap import ConnectionTap

C, S = "client", "server"  # who sent the bytes: the cluster, or the local service


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


def tap_over(transcript: Iterable[tuple[str, bytes]], *, end: str = "clean",
             settings: CaptureSettings | None = None) -> list[Captured]:
    """What a tap records of a connection's bytes, fed in order; ``end``: "clean" (both sides
    sent EOF), "lost" (the local side vanished), "open" (nothing ended)."""
    records: list[Captured] = []
    tap = ConnectionTap("web", settings or CaptureSettings(), records.append, clock=Clock())
    for side, data in transcript:
        (tap.channel_data if side == C else tap.socket_data)(data)
    if end == "clean":
        tap.channel_ended(False)
        tap.socket_ended(False)
    elif end == "lost":
        tap.socket_ended(True)
    return records


def byte_by_byte(transcript: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return [(side, data[i:i + 1]) for side, data in transcript for i in range(len(data))]


# --- HTTP/1.1 -----------------------------------------------------------------------------------

GET = b"GET /items?id=7 HTTP/1.1\r\nHost: shop.local\r\nAccept: */*\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"


def test_an_exchange_split_at_every_byte_boundary_is_the_same_record() -> None:
    whole = tap_over([(C, GET), (S, OK)])
    assert len(whole) == 1
    r = whole[0]
    assert (r.intercept, r.method, r.target, r.authority, r.http_version, r.status) == \
        ("web", "GET", "/items?id=7", "shop.local", "1.1", 200)
    assert r.response.body == b"hello" and r.response.size == 5 and not r.response.truncated
    assert ("Accept", "*/*") in r.request.headers and r.client == ""
    assert r.duration_ms is not None and r.duration_ms > 0
    for i in range(1, len(GET)):
        assert _same(tap_over([(C, GET[:i]), (C, GET[i:]), (S, OK)]), whole), i
    for i in range(1, len(OK)):
        assert _same(tap_over([(C, GET), (S, OK[:i]), (S, OK[i:])]), whole), i
    assert _same(tap_over(byte_by_byte([(C, GET), (S, OK)])), whole)


def _same(a: list[Captured], b: list[Captured]) -> bool:
    """The same records, timing aside (the clock ticks per call)."""
    def key(r: Captured) -> tuple[object, ...]:
        return (r.method, r.target, r.authority, r.status, r.request, r.response)

    return [key(r) for r in a] == [key(r) for r in b]


def test_pipelined_requests_are_paired_with_their_answers_in_order() -> None:
    post = (b"POST /orders HTTP/1.1\r\nHost: shop.local\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 3\r\n\r\nabc")
    created = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nno"
    records = tap_over([(C, GET + post + GET), (S, OK + created), (S, OK)])
    assert [(r.method, r.target, r.status, r.request.body, r.response.body)
            for r in records] == [("GET", "/items?id=7", 200, b"", b"hello"),
                                  ("POST", "/orders", 201, b"abc", b"no"),
                                  ("GET", "/items?id=7", 200, b"", b"hello")]


def test_chunked_bodies_and_their_trailers() -> None:
    req = (b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Sum: 7\r\n\r\n")
    resp = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 42\r\n\r\n")
    for transcript in ([(C, req), (S, resp)], byte_by_byte([(C, req), (S, resp)])):
        [r] = tap_over(transcript)
        assert r.request.body == b"abcdefg" and r.request.size == 7
        assert r.request.trailers == (("X-Sum", "7"),)
        assert r.response.body == b"hello world"
        assert r.response.trailers == (("X-Checksum", "42"),)


def test_a_head_answer_has_no_body_whatever_its_length_says() -> None:
    head = b"HEAD /big HTTP/1.1\r\nHost: h\r\n\r\n"
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"
    records = tap_over([(C, head), (S, answer), (C, GET), (S, OK)])
    assert [(r.method, r.status, r.response.body, r.response.size) for r in records] == [
        ("HEAD", 200, b"", 0), ("GET", 200, b"hello", 5)]
    # the HEAD's answer and the next answer in one read, split anywhere
    both = answer + OK
    for i in range(1, len(both)):
        got = tap_over([(C, head + GET), (S, both[:i]), (S, both[i:])])
        assert [(r.method, r.status, r.response.body) for r in got] == [
            ("HEAD", 200, b""), ("GET", 200, b"hello")], i


def test_100_continue_is_skipped_for_the_final_answer() -> None:
    head = (b"PUT /doc HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n"
            b"\r\n")
    records = tap_over([(C, head), (S, b"HTTP/1.1 100 Continue\r\n\r\n"), (C, b"data"),
                        (S, b"HTTP/1.1 204 No Content\r\n\r\n")])
    assert [(r.method, r.status, r.request.body, r.response.headers) for r in records] == [
        ("PUT", 204, b"data", ())]


def test_an_upgrade_is_recorded_up_to_the_101_and_no_further() -> None:
    up = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    switched = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
    records = tap_over([(C, up + b"\x81\x85frame"), (S, switched + b"\x81\x02hi"),
                        (C, b"GET /not-http HTTP/1.1\r\n\r\n"),
                        (S, b"HTTP/1.1 200 OK\r\n\r\n")])
    assert [(r.method, r.target, r.status) for r in records] == [("GET", "/ws", 101)]


def test_a_lost_connection_records_what_was_asked_and_answered_so_far() -> None:
    [unanswered] = tap_over([(C, GET)], end="lost")
    assert (unanswered.method, unanswered.status, unanswered.response.body) == ("GET", 0, b"")
    [cut] = tap_over([(C, GET), (S, OK[:-2])], end="lost")
    assert (cut.status, cut.response.body) == (200, b"hel")
    assert tap_over([(C, GET[:10])], end="lost") == []  # not even a whole head


def test_an_answer_without_length_ends_with_the_connection() -> None:
    [r] = tap_over([(C, GET), (S, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall"),
                    (S, b" of it")])
    assert (r.status, r.response.body) == (200, b"all of it")


def test_large_bodies_are_cut_and_marked() -> None:
    body = bytes(range(256)) * 40  # 10240 bytes
    post = b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 10240\r\n\r\n" + body
    [r] = tap_over([(C, post), (S, OK)], settings=CaptureSettings(max_body_bytes=1000))
    assert r.request.body == body[:1000] and r.request.size == 10240 and r.request.truncated
    assert r.response.body == b"hello" and not r.response.truncated


@pytest.mark.parametrize("first", [b"\x16\x03\x01\x02\x00\x01", b"SSH-2.0-OpenSSH\r\n",
                                   b"GET / HTTP/1.1\r\nHost: h\r\n\x00\r\n\r\n"])
def test_what_is_not_http_is_left_alone(first: bytes) -> None:
    assert tap_over([(C, first), (S, b"whatever"), (C, GET), (S, OK)]) == []


# --- HTTP/2 -------------------------------------------------------------------------------------


class Wire:
    """An h2 client and server talking; the bytes each sent, in order."""

    def __init__(self) -> None:
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.transcript: list[tuple[str, bytes]] = []
        self.client.initiate_connection()
        self.server.initiate_connection()
        self.flush()

    def flush(self) -> None:
        while True:
            c, s = self.client.data_to_send(), self.server.data_to_send()
            if not c and not s:
                return
            if c:
                self.transcript.append((C, c))
                self.server.receive_data(c)
            if s:
                self.transcript.append((S, s))
                self.client.receive_data(s)

    def request(self, stream: int, path: str, *, body: bytes = b"",
                extra: list[tuple[str, str]] | None = None, method: str = "POST") -> None:
        headers = [(":method", method), (":scheme", "http"), (":authority", "cart.local"),
                   (":path", path), *(extra or [])]
        self.client.send_headers(stream, headers, end_stream=not body)
        self.data(self.client, stream, body, end=True)
        self.flush()

    @staticmethod
    def data(peer: h2.connection.H2Connection, stream: int, body: bytes, *, end: bool) -> None:
        """DATA frames of at most 16 KiB, padded (the padding is not the body)."""
        for at in range(0, len(body), 16_000):
            piece = body[at:at + 16_000]
            peer.send_data(stream, piece, end_stream=end and at + 16_000 >= len(body),
                           pad_length=7)

    def answer(self, stream: int, headers: list[tuple[str, str]], *, body: bytes = b"",
               trailers: list[tuple[str, str]] | None = None) -> None:
        self.server.send_headers(stream, [(":status", "200"), *headers],
                                 end_stream=not body and not trailers)
        self.data(self.server, stream, body, end=not trailers)
        if trailers:
            self.server.send_headers(stream, trailers, end_stream=True)
        self.flush()


GRPC = [("content-type", "application/grpc"), ("te", "trailers")]


def test_h2_grpc_calls_with_trailers_and_trailers_only() -> None:
    wire = Wire()
    wire.request(1, "/shop.Cart/Add", body=b"\x00\x00\x00\x00\x02hi", extra=GRPC)
    wire.answer(1, [("content-type", "application/grpc")], body=b"\x00\x00\x00\x00\x02ok",
                trailers=[("grpc-status", "0"), ("grpc-message", "")])
    wire.request(3, "/shop.Cart/Remove", body=b"\x00\x00\x00\x00\x00", extra=GRPC)
    wire.answer(3, [("content-type", "application/grpc"), ("grpc-status", "5"),
                    ("grpc-message", "no such item")])
    for transcript in (wire.transcript, byte_by_byte(wire.transcript)):
        ok, missing = tap_over(transcript)
        assert (ok.method, ok.target, ok.authority, ok.http_version, ok.status) == \
            ("POST", "/shop.Cart/Add", "cart.local", "2", 200)
        assert (ok.grpc_method, ok.grpc_status) == ("shop.Cart/Add", 0)
        assert ok.request.body == b"\x00\x00\x00\x00\x02hi"
        assert ok.response.body == b"\x00\x00\x00\x00\x02ok"
        assert ("grpc-status", "0") in ok.response.trailers
        assert ("te", "trailers") in ok.request.headers
        assert not any(n.startswith(":") for n, _ in ok.request.headers)
        assert (missing.grpc_method, missing.grpc_status, missing.status) == \
            ("shop.Cart/Remove", 5, 200)


def test_h2_headers_from_the_dynamic_table_across_streams_and_continuation() -> None:
    wire = Wire()
    team = [("x-team", "payments"), ("x-region", "eu-west-3")]
    wire.request(1, "/a", method="GET", extra=team)
    wire.answer(1, [("x-served-by", "laptop")], body=b"first")
    # the same headers again: the encoder sends indexes into its dynamic table
    wire.request(3, "/b", method="GET", extra=team)
    wire.answer(3, [("x-served-by", "laptop")], body=b"second")
    # past the 16 KiB frame: HEADERS and CONTINUATIONs (hex digits: Huffman cannot shrink it
    # below 16 KiB)
    long = hashlib.sha256(b"x").hexdigest() * 1000
    wire.request(5, "/c", method="GET", extra=[*team, ("x-long", long)])
    wire.answer(5, [("x-served-by", "laptop")], body=b"third")
    sent = [d for side, d in wire.transcript if side == C]
    fresh = hpack.Encoder().encode([(":method", "GET"), (":scheme", "http"),
                                    (":authority", "cart.local"), (":path", "/b"), *team])
    assert len(sent[-2]) - 9 < len(fresh) / 2  # what only the dynamic table can tell
    assert len(sent[-1]) > 16_384 + 9  # more than one frame
    a, b, c = tap_over(wire.transcript)
    assert dict(a.request.headers) == dict(b.request.headers) == dict(team)
    assert dict(c.request.headers) == {**dict(team), "x-long": long}
    for r, body in ((a, b"first"), (b, b"second"), (c, b"third")):
        assert dict(r.response.headers) == {"x-served-by": "laptop"}
        assert r.response.body == body and r.grpc_method == "" and r.grpc_status is None
    assert (a.target, b.target, c.target, b.authority) == ("/a", "/b", "/c", "cart.local")


def test_h2_a_reset_stream_is_recorded_as_cut() -> None:
    wire = Wire()
    wire.request(1, "/slow", method="GET")
    wire.server.send_headers(1, [(":status", "200")])
    wire.server.send_data(1, b"par")
    wire.flush()
    wire.client.reset_stream(1)
    wire.flush()
    wire.request(3, "/never", method="GET")
    wire.server.reset_stream(3)
    wire.flush()
    records = tap_over(wire.transcript, end="open")
    assert [(r.target, r.status, r.response.body) for r in records] == [
        ("/slow", 200, b"par"), ("/never", 0, b"")]


def test_h2_a_lost_connection_records_open_streams() -> None:
    wire = Wire()
    wire.request(1, "/pending", method="GET")
    [r] = tap_over(wire.transcript, end="lost")
    assert (r.target, r.status, r.http_version) == ("/pending", 0, "2")


def test_h2_bodies_are_cut_and_marked() -> None:
    wire = Wire()
    body = b"x" * 50_000
    wire.request(1, "/up", body=body[:30_000])  # within the initial window
    wire.answer(1, [], body=b"y" * 3000)
    [r] = tap_over(wire.transcript, settings=CaptureSettings(max_body_bytes=1024))
    assert (r.request.size, len(r.request.body), r.request.truncated) == (30_000, 1024, True)
    assert (r.response.size, len(r.response.body), r.response.truncated) == (3000, 1024, True)


def test_h2_broken_frames_stop_the_tap_quietly() -> None:
    wire = Wire()
    wire.request(1, "/a", method="GET")
    wire.answer(1, [], body=b"ok")
    broken = [(C, wire.transcript[0][1][:24] + b"\x00\x00\x04\x01\x04\x00\x00\x00\x01\xff\xff"
               b"\xff\xff")]
    assert tap_over(broken + wire.transcript[1:]) == []


# --- redaction ----------------------------------------------------------------------------------

SECRETS = ("hunter2", "tok-123", "4111111111111111", "deep-s3cr3t", "Bearer abc.def",
           "sess=42", "form-pw", "custom-key")
REDACTING = CaptureSettings(
    redact_headers=("x-custom-secret",),
    redact_json_paths=("$.password", "$.user.token", "$.items[*].card", "$..secret"))


def _assert_no_secret(record: Captured) -> None:
    shown = repr(record).encode() + record.request.body + record.response.body
    for secret in SECRETS:
        assert secret.encode() not in shown, secret


def test_secrets_in_headers_and_json_bodies_never_reach_the_record() -> None:
    doc = {"password": "hunter2", "user": {"name": "ann", "token": "tok-123"},
           "items": [{"card": "4111111111111111", "qty": 1}, {"card": "4111111111111111"}],
           "meta": {"nested": {"secret": "deep-s3cr3t"}}, "note": "kept"}
    body = json.dumps(doc).encode()
    req = (b"POST /login HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer abc.def\r\n"
           b"Cookie: sess=42\r\nX-Custom-Secret: custom-key\r\n"
           b"Content-Type: application/json; charset=utf-8\r\n"
           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    answer = json.dumps({"user": {"token": "tok-123"}, "ok": True}).encode()
    resp = (b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.api+json\r\n"
            b"Set-Cookie: sess=42\r\nContent-Length: " + str(len(answer)).encode() +
            b"\r\n\r\n" + answer)
    [r] = tap_over([(C, req), (S, resp)], settings=REDACTING)
    _assert_no_secret(r)
    assert json.loads(r.request.body) == {
        "password": "[redacted]", "user": {"name": "ann", "token": "[redacted]"},
        "items": [{"card": "[redacted]", "qty": 1}, {"card": "[redacted]"}],
        "meta": {"nested": {"secret": "[redacted]"}}, "note": "kept"}
    assert json.loads(r.response.body) == {"user": {"token": "[redacted]"}, "ok": True}
    assert dict(r.request.headers)["Authorization"] == "[redacted]"
    assert dict(r.request.headers)["X-Custom-Secret"] == "[redacted]"
    assert r.request.size == len(body)  # the size sent, not the size kept


def test_a_cut_json_body_is_redacted_by_its_keys() -> None:
    body = json.dumps({"items": [{"card": "4111111111111111"}] * 50,
                       "user": {"token": "tok-123"}, "password": "hunter2"}).encode()
    req = (b"POST /pay HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    for limit in (len(body) - 3, len(body) - 12, 600, 15):
        settings = CaptureSettings(max_body_bytes=limit,
                                   redact_json_paths=REDACTING.redact_json_paths)
        [r] = tap_over([(C, req), (S, OK)], settings=settings)
        assert r.request.truncated
        _assert_no_secret(r)
        # what is cut in the middle of a secret is not a secret's beginning either
        for secret in ("41111111", "hunte", "tok-1"):
            assert secret.encode() not in r.request.body, (limit, r.request.body[-40:])


def test_form_bodies_are_redacted_by_field() -> None:
    body = b"user=ann&password=form-pw&secret=deep-s3cr3t&note=kept"
    got = redact_body(body, (("Content-Type", "application/x-www-form-urlencoded"),),
                      ("$.password", "$..secret"), cut=False)
    assert got == b"user=ann&password=%5Bredacted%5D&secret=%5Bredacted%5D&note=kept"


def test_compressed_bodies_that_may_hold_secrets_are_not_kept() -> None:
    headers = (("Content-Type", "application/json"), ("Content-Encoding", "gzip"))
    assert redact_body(b"\x1f\x8b...", headers, ("$.password",), cut=False) == b""
    # nothing to redact: kept as sent
    assert redact_body(b"\x1f\x8b...", headers, (), cut=False) == b"\x1f\x8b..."


def test_json_paths() -> None:
    assert parse_path("$.items[*].card") == (("key", "items"), ("any", ""), ("key", "card"))
    assert parse_path("$..secret") == (("deep", "secret"),)
    assert parse_path("$['odd key'][0]") == (("key", "odd key"), ("index", "0"))
    assert parse_path("password") == () and parse_path("$.a[") == ()
