"""The capture from a real relay to the records: a bridge (in this process, so that its records
land in a list) with an intercept on a real relay, a real client sending through the relay's
port, and a real local service answering; each exchange is recorded once, redacted."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncssh
import grpc
import pytest
from aiohttp import web

from bridged.capture.model import Captured, CaptureSettings
from bridged.carriers import carrier_for
from bridged.config import InterceptSpec, parse_carrier
from bridged.daemon.bridge import Bridge
from bridged.keys import PinnedHostKeys, public_line
from bridged.localrun import RelayProcess

from ..helpers import free_port
from .test_h2_intercept_cli import grpc_local  # noqa: F401  (a fixture: a real grpcio server)

WITHIN = 10.0  # seconds any one step may take before the test fails rather than hangs
PASSWORD, TOKEN, BEARER = "hunter2-pw", "tok-9f8e7d", "Bearer sk-live-42"


@pytest.fixture
async def capturing(relay: RelayProcess, tmp_path: Path
                    ) -> AsyncIterator[tuple[Bridge, asyncio.Queue[Captured]]]:
    """A bridge connected to the relay whose records arrive in a queue."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    relay.authorize(public_line(key))
    records: asyncio.Queue[Captured] = asyncio.Queue()
    spec = parse_carrier(relay.url)
    bridge = Bridge("t", relay.url, carrier_for(spec), client_key=key,
                    pins=PinnedHostKeys(tmp_path / "pins.json"))
    bridge.capture_settings = CaptureSettings(
        redact_headers=("x-session",), redact_json_paths=("$.password", "$.user.token"))
    bridge.on_capture = records.put_nowait  # set after construction, as the daemon may
    await asyncio.wait_for(bridge.start(), WITHIN)
    try:
        yield bridge, records
    finally:
        await asyncio.wait_for(bridge.close(), WITHIN)


async def _intercept(bridge: Bridge, local_port: int, **kw: str) -> int:
    port = free_port()
    spec = InterceptSpec.parse(local_port=local_port, remote_port=port, name="shop",
                               headers=("x-dev=me",), **kw)  # type: ignore[arg-type]
    await asyncio.wait_for(bridge.add_intercept(spec, secrets.token_hex(8),
                                                proto=kw.get("protocol", "")), WITHIN)
    return port


@pytest.fixture
async def json_local() -> AsyncIterator[int]:
    """The developer's service: answers a login with a token, and its request's digest."""
    async def login(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"user": {"token": TOKEN, "name": "ann"},
                                  "sha256": hashlib.sha256(body).hexdigest()}, status=201)

    app = web.Application()
    app.router.add_post("/login", login)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def _next(records: asyncio.Queue[Captured]) -> Captured:
    return await asyncio.wait_for(records.get(), WITHIN)


def _no_secret(record: Captured) -> None:
    shown = repr(record).encode() + record.request.body + record.response.body
    for secret in (PASSWORD, TOKEN, BEARER, "sess-77"):
        assert secret.encode() not in shown, secret


async def test_http1_exchanges_are_recorded_redacted(
        capturing: tuple[Bridge, asyncio.Queue[Captured]], json_local: int) -> None:
    bridge, records = capturing
    port = await _intercept(bridge, json_local)
    sent = json.dumps({"user": "ann", "password": PASSWORD, "remember": True}).encode()
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # one keep-alive connection to the laptop, two exchanges
            async with session.post(
                    f"http://127.0.0.1:{port}/login?next=home", data=sent,
                    headers={"x-dev": "me", "Authorization": BEARER, "X-Session": "sess-77",
                             "Content-Type": "application/json"}) as r:
                assert r.status == 201
                answer = await r.json()
                # the local service got the body untouched: the tap only watches
                assert answer["sha256"] == hashlib.sha256(sent).hexdigest()
                assert answer["user"]["token"] == TOKEN
    for _ in range(2):
        record = await _next(records)
        assert (record.intercept, record.method, record.target, record.status,
                record.http_version) == ("shop", "POST", "/login?next=home", 201, "1.1")
        assert record.authority == f"127.0.0.1:{port}"
        assert json.loads(record.request.body) == {"user": "ann", "password": "[redacted]",
                                                   "remember": True}
        assert record.request.size == len(sent) and not record.request.truncated
        got = json.loads(record.response.body)
        assert got["user"] == {"token": "[redacted]", "name": "ann"}
        headers = {n.lower(): v for n, v in record.request.headers}
        assert headers["authorization"] == headers["x-session"] == "[redacted]"
        assert headers["x-dev"] == "me"
        assert record.duration_ms is not None and record.duration_ms >= 0
        _no_secret(record)
    assert records.empty()


async def test_grpc_calls_are_recorded_with_method_and_status(
        capturing: tuple[Bridge, asyncio.Queue[Captured]],
        grpc_local: int) -> None:  # noqa: F811
    bridge, records = capturing
    port = await _intercept(bridge, grpc_local, protocol="grpc")
    metadata = (("x-dev", "me"), ("authorization", BEARER))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        add = channel.unary_unary("/shop.Cart/Add")
        assert await asyncio.wait_for(add(b"apple", metadata=metadata), WITHIN) == \
            b"added:apple"
        missing = channel.unary_unary("/shop.Cart/Remove")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(missing(b"pear", metadata=metadata), WITHIN)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    got = {r.grpc_method: r for r in [await _next(records), await _next(records)]}
    ok, unimplemented = got["shop.Cart/Add"], got["shop.Cart/Remove"]
    assert (ok.http_version, ok.method, ok.target, ok.status, ok.grpc_status) == \
        ("2", "POST", "/shop.Cart/Add", 200, 0)
    assert ok.request.body == b"\x00\x00\x00\x00\x05apple"  # one gRPC message, framed
    assert ok.response.body == b"\x00\x00\x00\x00\x0badded:apple"
    # grpcio answers an unknown method trailers-only
    assert (unimplemented.status, unimplemented.grpc_status) == \
        (200, grpc.StatusCode.UNIMPLEMENTED.value[0])
    for record in (ok, unimplemented):
        assert record.intercept == "shop"
        assert dict(record.request.headers)["authorization"] == "[redacted]"
        _no_secret(record)


def test_no_listener_no_tap(tmp_path: Path) -> None:
    """Without on_capture the splice gets no observer: nothing is parsed at all."""
    bridge = Bridge("t", "tcp://127.0.0.1:1", carrier_for(parse_carrier("tcp://127.0.0.1:1")),
                    client_key=asyncssh.generate_private_key("ssh-ed25519"),
                    pins=PinnedHostKeys(tmp_path / "pins.json"), redact_headers=("x-a",))
    assert bridge._tap("shop") is None
    assert bridge.capture_settings.redact_headers == ("x-a",)  # the daemon's list by default
    bridge.on_capture = print
    assert bridge._tap("shop") is not None
