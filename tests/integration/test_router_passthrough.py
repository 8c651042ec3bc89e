"""Issue 9, point 5: what the router cannot route passes through, never broken.

While a developer intercepts a Service by header, its TLS and non-HTTP clients keep working:
their connections are spliced untouched to the original pods, and reported with the reason.
The HTTP/1.1 clients are still routed per request beside them, and (issue 11) HTTP/2 clients
per stream.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from bridged.relay.router import sniff

from ..helpers import read_response
from ..kube.pki import CertificateAuthority
from .routerkit import RecordingUpstream, client, read_until_closed, recording_upstreams, router_on


async def _within(coro: object, seconds: float = 15.0) -> object:
    return await asyncio.wait_for(coro, seconds)  # type: ignore[arg-type]


@pytest.fixture
async def grpc_origin() -> AsyncIterator[int]:
    """A real gRPC server (grpcio) standing for the Service's pods: /test.Echo/Call answers
    ``origin:`` and what it was sent, and the metadata x-dev it saw."""

    async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        dev = dict(context.invocation_metadata() or ()).get("x-dev", "")
        return b"origin:" + request + b":" + dev.encode()

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield port
    await server.stop(None)


async def test_grpc_calls_are_routed_per_call_and_an_http1_developer_gets_a_clear_error(
    grpc_origin: int,
) -> None:
    """HTTP/2 is no longer passed through: each call is decided. Alice's server speaks only
    HTTP/1.1 (her intercept says so), so her gRPC calls are answered 502 with the reason —
    never sent to her as HTTP/2 — while the other calls on the same channel reach the pods."""
    alice = RecordingUpstream("alice")
    async with recording_upstreams(alice), \
            router_on({"origin": grpc_origin, "alice": alice.port},
                      speaks_h2=lambda route: route.to_origin) as relay:
        options = [("grpc.enable_http_proxy", 0)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{relay.port}", options=options) as ch:
            call = ch.unary_unary("/test.Echo/Call")
            answers = await _within(asyncio.gather(*(
                call(b"req-%d" % i, metadata=(("x-dev", "alice"),) if i % 2 else (),
                     timeout=10) for i in range(20)), return_exceptions=True))
        for i, answer in enumerate(answers):
            if i % 2:
                assert isinstance(answer, grpc.aio.AioRpcError), answer
                assert answer.code() == grpc.StatusCode.UNAVAILABLE
                assert "502" in (answer.details() or "")
            else:
                assert answer == b"origin:req-%d:" % i
        # HTTP/1.1 beside it is still routed by header
        async with client(relay.port) as (reader, writer):
            writer.write(b"GET /h1 HTTP/1.1\r\nHost: svc\r\nx-dev: alice\r\n"
                         b"Connection: close\r\n\r\n")
            status, _, body = await _within(read_response(reader))
            assert (status, json.loads(body)["who"]) == (200, "alice")
    assert relay.passed == []  # nothing passed through: every call was decided
    assert [s.path for s in alice.requests] == ["/h1"]  # no HTTP/2 reached her HTTP/1.1 server


async def test_tls_connections_are_passed_through_end_to_end(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    payload = os.urandom(3 * 1024 * 1024)

    async def tls_digest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        digest, left = hashlib.sha256(), len(payload)
        while left:
            data = await reader.read(min(left, 65536))
            if not data:
                break
            digest.update(data)
            left -= len(data)
        writer.write(digest.hexdigest().encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(tls_digest, "127.0.0.1", 0, ssl=ca.server_context())
    try:
        async with router_on({"origin": server.sockets[0].getsockname()[1]}) as relay:
            context = ca.client_context()
            reader, writer = await _within(asyncio.open_connection(
                "127.0.0.1", relay.port, ssl=context, server_hostname="localhost"))
            writer.write(payload)
            await writer.drain()
            answer = await _within(reader.read(64))
            writer.close()
            assert answer == hashlib.sha256(payload).hexdigest().encode()
            assert relay.passed == [sniff.TLS]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("first", [
    pytest.param(b"*1\r\n$4\r\nPING\r\n", id="redis"),
    pytest.param(b"\x00\x00\x00\x08\x04\xd2\x16\x2f", id="postgres-ssl-request"),
    pytest.param(b"GET / HTTP/2.0\r\n\r\n", id="not-http-1"),
    pytest.param(b"\r\n\r\n\x7fELF", id="garbage-after-blank-lines"),
])
async def test_other_protocols_reach_the_origin_byte_for_byte(first: bytes,
                                                              echo_server: int) -> None:
    rest = os.urandom(200_000)
    async with router_on({"origin": echo_server}) as relay, \
            client(relay.port) as (reader, writer):
        writer.write(first + rest)  # then at once the end: it must not be lost either
        writer.write_eof()
        echoed = await _within(read_until_closed(reader))
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(first + rest).digest()
        assert relay.passed == [sniff.OTHER]


async def test_a_pass_through_with_no_origin_known_closes_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with router_on({}) as relay, client(relay.port) as (reader, writer):
        writer.write(b"\x00\x01\x02 not HTTP")
        assert await _within(read_until_closed(reader)) == b""
    assert relay.passed == [sniff.OTHER]
    assert "nowhere to pass it" in caplog.text


async def test_an_http_1_request_trickling_in_byte_by_byte_is_still_routed() -> None:
    alice = RecordingUpstream("alice")
    async with recording_upstreams(alice), router_on({"alice": alice.port}) as relay, \
            client(relay.port) as (reader, writer):
        for byte in b"PUT /slow HTTP/1.1\r\nHost: svc\r\nx-dev: alice\r\nContent-Length: 0\r\n\r\n":
            writer.write(bytes([byte]))
            await writer.drain()
        status, _, body = await _within(read_response(reader))
        assert (status, json.loads(body)["path"]) == (200, "/slow")
    assert relay.passed == []
