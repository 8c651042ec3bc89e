"""The inspector's HTTP API and its guards: a real aiohttp server on 127.0.0.1, a real local
service for replay, the daemon's CLI for ``bridged inspect`` and the HAR file."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridged.capture.model import Captured, Message
from bridged.capture.store import CaptureStore
from bridged.inspector.server import CSRF_HEADER, Inspector
from bridged.routing.redact import REDACTED

from ..harschema import validate_har
from ..helpers import Daemon, serve_http


class LocalService:
    """The developer's service: answers with the sha256 of what it got, and counts hits."""

    def __init__(self) -> None:
        self.hits: list[tuple[str, str, dict[str, str], bytes]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> LocalService:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            self.hits.append((request.method, request.path_qs, dict(request.headers), body))
            return web.json_response({"sha256": hashlib.sha256(body).hexdigest(),
                                      "hit": len(self.hits)}, status=201,
                                     headers={"x-served-by": "laptop"})

        self._runner, self.port = await serve_http(handle)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def local_service() -> AsyncIterator[LocalService]:
    service = await LocalService().start()
    yield service
    await service.stop()


@pytest.fixture
async def inspector(tmp_path: Path, local_service: LocalService) -> AsyncIterator[Inspector]:
    store = CaptureStore(tmp_path / "capture.sqlite")
    places = {"orders": ("127.0.0.1", local_service.port)}
    server = Inspector(store, places.get)
    await server.start()
    yield server
    await server.close()
    store.close()


def order(**kw: Any) -> Captured:
    values: dict[str, Any] = {
        "intercept": "orders", "started": 1_700_000_000.0, "method": "POST",
        "target": "/orders?dry=1", "authority": "orders:8080", "status": 200, "duration_ms": 3.0,
        "request": Message(headers=(("Host", "orders:8080"), ("Content-Type", "application/json"),
                                    ("Authorization", REDACTED), ("x-dev", "alice")),
                           body=b'{"item": 42}', size=12),
        "response": Message(headers=(("content-type", "application/json"),),
                            body=b'{"id": 1}', size=9)}
    values.update(kw)
    return Captured(**values)


def base(i: Inspector) -> str:
    return f"http://127.0.0.1:{i.port}"


async def session_for(i: Inspector) -> aiohttp.ClientSession:
    """A client holding the cookie the token URL gives (as the browser does)."""
    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                    timeout=aiohttp.ClientTimeout(total=10))
    async with session.get(i.url, allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/"
        cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    return session


async def test_every_path_needs_the_token_or_cookie(inspector: Inspector) -> None:
    inspector.store.add(order())
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as anon:
        for path in ("/", "/api/records", "/api/records/1", "/har", "/api/events",
                     "/static/app.js", "/?token=", f"/?token={inspector.token[:-1]}x"):
            async with anon.get(base(inspector) + path) as r:
                assert r.status == 403, path
                assert "orders" not in await r.text()
        async with anon.post(base(inspector) + "/api/clear",
                             headers={CSRF_HEADER: "1"}) as r:
            assert r.status == 403
    assert len(inspector.store.list()) == 1
    async with await session_for(inspector) as s:
        async with s.get(base(inspector) + "/") as r:
            assert r.status == 200 and "bridged" in await r.text()
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
            assert r.headers["X-Frame-Options"] == "DENY"
        async with s.get(base(inspector) + "/api/records") as r:
            assert [c["target"] for c in (await r.json())["records"]] == ["/orders?dry=1"]


async def test_a_rebound_host_name_is_refused(inspector: Inspector) -> None:
    # the request goes to 127.0.0.1; only its Host header names another site
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        async with s.get(inspector.url, headers={"Host": f"evil.example:{inspector.port}"},
                         allow_redirects=False) as r:
            assert r.status == 403 and "Host" in (await r.json())["error"]["message"]
        async with s.get(inspector.url.replace("127.0.0.1", "localhost"),
                         allow_redirects=False) as r:
            assert r.status == 303


async def test_cross_site_posts_are_refused(inspector: Inspector) -> None:
    inspector.store.add(order())
    origin = base(inspector)
    async with await session_for(inspector) as s:
        refused: list[dict[str, str]] = [
            {},  # no custom header: any page's form could send that
            {CSRF_HEADER: "1", "Origin": "http://evil.example"},
            {CSRF_HEADER: "1", "Origin": "null"},
            {CSRF_HEADER: "1", "Origin": f"http://127.0.0.1:{inspector.port + 1}"},
            {CSRF_HEADER: "1", "Sec-Fetch-Site": "cross-site"},
            {CSRF_HEADER: "0", "Origin": origin},
        ]
        for headers in refused:
            for path in ("/api/clear", "/api/records/1/replay"):
                async with s.post(origin + path, headers=headers) as r:
                    assert r.status == 403, (path, headers)
        async with s.get(origin + "/api/clear") as r:
            assert r.status == 405  # a GET changes nothing
        assert len(inspector.store.list()) == 1
        async with s.post(origin + "/api/clear", headers={CSRF_HEADER: "1", "Origin": origin,
                                                         "Sec-Fetch-Site": "same-origin"}) as r:
            assert r.status == 200 and (await r.json()) == {"cleared": 1}
    assert inspector.store.list() == []


async def test_live_records_arrive_as_server_sent_events(inspector: Inspector) -> None:
    async with await session_for(inspector) as s, s.get(base(inspector) + "/api/events") as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert await asyncio.wait_for(r.content.readline(), 5) == b": live\n"
        assert await asyncio.wait_for(r.content.readline(), 5) == b"\n"
        added = inspector.store.add(order(target="/live"))
        lines = []
        while not lines or lines[-1] != b"\n":
            lines.append(await asyncio.wait_for(r.content.readline(), 5))
        event = dict(line.decode().rstrip("\n").split(": ", 1) for line in lines if b": " in line)
        assert event["event"] == "record"
        record = json.loads(event["data"])
        assert (record["id"], record["target"]) == (added.id, "/live")


async def test_replay_reaches_the_local_service_and_is_stored(
        inspector: Inspector, local_service: LocalService) -> None:
    original = inspector.store.add(order())
    origin = base(inspector)
    post = {CSRF_HEADER: "1", "Origin": origin}
    async with await session_for(inspector) as s:
        async with s.post(f"{origin}/api/records/{original.id}/replay", headers=post) as r:
            assert r.status == 201, await r.text()
            answer = await r.json()
        assert len(local_service.hits) == 1
        method, path, headers, body = local_service.hits[0]
        assert (method, path, body) == ("POST", "/orders?dry=1", b'{"item": 42}')
        assert headers["x-dev"] == "alice" and headers["Host"] == "orders:8080"
        assert "Authorization" not in headers  # "[redacted]" is not a credential to send
        assert any("Authorization" in n for n in answer["notes"])
        record = answer["record"]
        assert (record["kind"], record["replay_of"], record["status"]) == (
            "replay", original.id, 201)
        assert json.loads(record["response"]["body"])["sha256"] == hashlib.sha256(
            b'{"item": 42}').hexdigest()
        # edited: another method, path, header and body
        edit = {"method": "put", "target": "/orders/7", "headers": [["x-dev", "bob"]],
                "body": "changed ✓"}
        async with s.post(f"{origin}/api/records/{original.id}/replay", headers=post,
                          json=edit) as r:
            assert r.status == 201
        method, path, headers, body = local_service.hits[1]
        assert (method, path, body, headers["x-dev"]) == (
            "PUT", "/orders/7", "changed ✓".encode(), "bob")
        async with s.get(f"{origin}/api/records/{original.id}") as r:
            detail = await r.json()
        assert [x["target"] for x in detail["replays"]] == ["/orders/7", "/orders?dry=1"]
        assert detail["local"] == f"127.0.0.1:{local_service.port}"


async def test_replay_says_clearly_what_it_cannot_do(
        inspector: Inspector, local_service: LocalService) -> None:
    h2 = inspector.store.add(order(http_version="2", grpc_method="pkg.Svc/Get"))
    gone = inspector.store.add(order(intercept="left-already"))
    cut = inspector.store.add(order(request=Message(body=b"x" * 10, size=100, truncated=True)))
    origin = base(inspector)
    post = {CSRF_HEADER: "1", "Origin": origin}
    async with await session_for(inspector) as s:
        for record, status, words in ((h2, 400, "HTTP/2"), (gone, 404, "gone"),
                                      (cut, 400, "cut")):
            async with s.post(f"{origin}/api/records/{record.id}/replay", headers=post) as r:
                assert r.status == status
                assert words in (await r.json())["error"]["message"]
        async with s.post(f"{origin}/api/records/{cut.id}/replay", headers=post,
                          json={"method": "GET /x"}) as r:
            assert r.status == 400
    assert local_service.hits == []
    await local_service.stop()  # nothing listens: one clear line, 502
    async with await session_for(inspector) as s:
        ok = inspector.store.add(order())
        async with s.post(f"{origin}/api/records/{ok.id}/replay", headers=post) as r:
            assert r.status == 502 and "did not answer" in (await r.json())["error"]["message"]


async def test_har_download_follows_the_filter(inspector: Inspector) -> None:
    inspector.store.add(order(target="/a", status=200))
    inspector.store.add(order(target="/b", status=500,
                              request=Message(body=bytes(range(256)), size=256)))
    async with await session_for(inspector) as s:
        async with s.get(base(inspector) + "/har?status=500") as r:
            assert "attachment" in r.headers["Content-Disposition"]
            har = json.loads(await r.read())
    validate_har(har)
    assert [e["request"]["url"] for e in har["log"]["entries"]] == ["http://orders:8080/b"]


async def test_bridged_inspect_finds_the_same_inspector_again(
        daemon: Daemon, tmp_path: Path) -> None:
    first = await daemon.acli("inspect", "--no-browser", "--json")
    assert first.returncode == 0, first.stderr
    url = json.loads(first.stdout)["url"]
    assert url.startswith("http://127.0.0.1:") and "token=" in url
    again = json.loads((await daemon.acli("inspect", "--no-browser", "--json")).stdout)
    assert again["url"] == url
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                     timeout=aiohttp.ClientTimeout(total=10)) as s:
        async with s.get(url) as r:  # the redirect to / keeps the cookie
            assert r.status == 200 and "bridged" in await r.text()
        async with s.get(url.split("?")[0] + "api/records") as r:
            assert r.status == 200
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as other:
        async with other.get(url.split("?")[0] + "api/records") as r:
            assert r.status == 403  # without the token nor its cookie

    # records the capture made (written to the daemon's database by a second connection)
    db = daemon.process.home / "state" / "bridged" / "capture.sqlite"
    store = CaptureStore(db)
    store.add(order(target="/one"))
    store.add(order(target="/two"))
    store.close()
    har_file = tmp_path / "out.har"
    written = await daemon.acli("traffic", "--har", str(har_file))
    assert written.returncode == 0, written.stderr
    assert "wrote 2 requests" in written.stdout
    har = json.loads(har_file.read_text())
    validate_har(har)
    assert [e["request"]["url"] for e in har["log"]["entries"]] == [
        "http://orders:8080/one", "http://orders:8080/two"]
    assert har_file.stat().st_mode & 0o077 == 0
    cleared = await daemon.acli("capture", "clear", "--json")
    assert json.loads(cleared.stdout) == {"cleared": 2}
    bad = await daemon.acli("traffic", "--har", str(har_file), "--clear")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


async def test_stats_carry_the_mirrors_drops(tmp_path: Path) -> None:
    """The page shows a mirror's dropped copies: /api/stats (and the list's stats) carry the
    totals the daemon's status has for each mirror intercept."""
    store = CaptureStore(tmp_path / "capture.sqlite")
    drops = {"orders": {"queue-full": 3, "laptop-down": 1}}
    server = Inspector(store, {}.get, lambda: drops)
    await server.start()
    try:
        store.add(order())
        async with await session_for(server) as s:
            async with s.get(base(server) + "/api/stats") as r:
                stats = await r.json()
            async with s.get(base(server) + "/api/records") as r:
                listed = (await r.json())["stats"]
        assert stats["records"] == 1 and stats["mirror_dropped"] == drops
        assert listed["mirror_dropped"] == drops
    finally:
        await server.close()
        store.close()
