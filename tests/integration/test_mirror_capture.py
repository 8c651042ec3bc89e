"""Issue 12, mirror mode end to end: a real relay and daemon. The cluster keeps answering the
client; the laptop gets a copy; the daemon stores one record with both answers, side by side,
redacted as every capture is."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridged.control.client import ControlClient
from bridged.localrun import DaemonProcess, RelayProcess

from ..helpers import Daemon, assert_clean_log, eventually, free_port, serve_http


async def _service(name: str, hits: list[dict[str, Any]],
                   delay: float = 0.0) -> tuple[web.AppRunner, int]:
    """Answers {"who": name, "echo": <the JSON sent>} and records every request it got."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        hits.append({"path": request.path, "body": body, "headers": dict(request.headers)})
        if delay:
            await asyncio.sleep(delay)  # a laptop slower than the cluster
        return web.json_response({"who": name, "echo": body, "token": "s3cr3t-answer"})

    return await serve_http(handle)


@pytest.fixture
async def bridge(relay: RelayProcess, tmp_path: Path) -> AsyncIterator[Daemon]:
    """A daemon that redacts two JSON paths in what it captures, connected to the relay."""
    process = await DaemonProcess(tmp_path / "laptop", extra_args=(
        "--redact-json-path", "$..password", "--redact-json-path", "$.token")).start()
    daemon = Daemon(process, ControlClient(process.socket))
    try:
        relay.authorize(await daemon.public_key())
        await daemon.call("POST", "bridges", {"url": relay.url})
        yield daemon
    finally:
        await process.stop()
    assert_clean_log(process.log_path)


async def test_a_mirror_copies_to_the_laptop_and_keeps_both_answers(
    relay: RelayProcess, bridge: Daemon, tmp_path: Path,
) -> None:
    origin_hits: list[dict[str, Any]] = []
    laptop_hits: list[dict[str, Any]] = []
    origin, origin_port = await _service("cluster", origin_hits)
    laptop, laptop_port = await _service("laptop", laptop_hits, delay=0.3)
    port = free_port()
    try:
        made = await bridge.acli(
            "intercept", "--relay-port", str(port), "--port", str(laptop_port), "--mirror",
            "--header", "x-dev=alice", "--origin", f"127.0.0.1:{origin_port}", "--json")
        assert made.returncode == 0, made.stderr
        async with aiohttp.ClientSession() as session:
            for n in range(3):
                async with session.post(
                        f"http://127.0.0.1:{port}/orders/{n}", headers={"x-dev": "alice"},
                        json={"n": n, "password": "hunter2"}) as r:
                    # the client only ever sees the cluster's answer, at the cluster's pace
                    assert (await r.json())["who"] == "cluster"
            async with session.post(f"http://127.0.0.1:{port}/other", json={"n": 9}) as r:
                assert (await r.json())["who"] == "cluster"  # not matched: not copied

        async def mirrored() -> list[dict[str, Any]] | None:
            records = (await bridge.call("GET", "capture"))["records"]
            done = [r for r in records if r["kind"] == "mirror" and r.get("cluster")]
            return done if len(done) == 3 else None

        records = await eventually(mirrored, within=15, what="3 mirrored records with both "
                                                             "answers")
        assert [h["path"] for h in origin_hits] == ["/orders/0", "/orders/1", "/orders/2",
                                                    "/other"]
        assert sorted(h["path"] for h in laptop_hits) == ["/orders/0", "/orders/1",
                                                          "/orders/2"]
        assert all(h["headers"].get("x-bridged-mirror") for h in laptop_hits)
        for record in records:
            assert record["status"] == 200 and record["cluster_status"] == 200
            laptop_said = json.loads(_body(record["response"]))
            cluster_said = json.loads(_body(record["cluster"]))
            assert (laptop_said["who"], cluster_said["who"]) == ("laptop", "cluster")
            assert laptop_said["echo"]["n"] == cluster_said["echo"]["n"]
            # both answers and the request redacted at the daemon's JSON paths
            assert cluster_said["token"] == laptop_said["token"] == "[redacted]"
            assert json.loads(record["request"]["body"])["password"] == "[redacted]"
            assert cluster_said["echo"]["password"] == "[redacted]"
        status = await bridge.call("GET", "status")
        [intercept] = status["intercepts"]
        assert intercept["mirror"] is True and intercept["mirror_dropped"] == {}
        stored = b"".join(p.read_bytes() for p in (tmp_path / "laptop").rglob("capture*"))
        assert b"hunter2" not in stored and b"s3cr3t-answer" not in stored
        assert b"/orders/1" in stored  # (the right files were read)
    finally:
        await origin.cleanup()
        await laptop.cleanup()


def _body(message: dict[str, Any]) -> str:
    return str(message["body"])  # (JSON: UTF-8, so the store gives it as text)
