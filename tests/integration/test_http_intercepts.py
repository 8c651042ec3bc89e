"""Per-request intercepts end to end: a real relay, two developers' daemons, one origin."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bridged.localrun import RelayProcess

from ..helpers import Daemon, eventually, free_port


async def _who(name: str) -> tuple[web.AppRunner, int]:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"who": name})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def test_two_developers_and_the_cluster_share_one_port(
    relay: RelayProcess, bridge: Daemon, make_daemon: Callable[[str], Awaitable[Daemon]],
) -> None:
    origin, origin_port = await _who("origin")
    alice_svc, alice_port = await _who("alice's laptop")
    bob_svc, bob_port = await _who("bob's laptop")
    bob = await make_daemon("bob")
    relay.authorize(await bob.public_key())
    await bob.call("POST", "bridges", {"url": relay.url})
    port = free_port()
    try:
        for daemon, dev, local in ((bridge, "alice", alice_port), (bob, "bob", bob_port)):
            result = await daemon.acli(
                "intercept", "--relay-port", str(port), "--port", str(local),
                "--header", f"x-dev={dev}", "--origin", f"127.0.0.1:{origin_port}", "--json")
            assert result.returncode == 0, result.stderr

        plan = ["alice", "", "bob", "alice", "carol", "", "bob"] * 5
        connector = aiohttp.TCPConnector(limit=1)  # all on one keep-alive connection
        async with aiohttp.ClientSession(connector=connector) as session:
            async def send(dev: str) -> str:
                headers = {"x-dev": dev} if dev else {}
                async with session.get(f"http://127.0.0.1:{port}/x", headers=headers) as r:
                    return str((await r.json())["who"])

            got = [await send(dev) for dev in plan]
        expected = {"alice": "alice's laptop", "bob": "bob's laptop"}
        assert got == [expected.get(dev, "origin") for dev in plan]
        assert got.count("origin") == 15 and got.count("bob's laptop") == 10
        # each developer's traffic log lists exactly their requests
        async def logged() -> list[dict[str, object]]:
            entries = await bridge.call("GET", "traffic")
            return entries if len(entries) == 10 else []

        entries = await eventually(logged, within=10, what="alice's 10 requests in her log")
        assert {(e["method"], e["path"], e["status"]) for e in entries} == {("GET", "/x", 200)}
        shown = await bridge.acli("traffic")
        assert shown.returncode == 0 and shown.stdout.count(" GET ") == 10

        # bob's laptop dies: his requests go back to the cluster, alice keeps hers
        bob.process.kill()

        async def bob_gone() -> bool:
            async with aiohttp.ClientSession() as s, s.get(
                    f"http://127.0.0.1:{port}/", headers={"x-dev": "bob"}) as r:
                # until the relay sees the connection drop, bob's route answers 502
                return r.status == 200 and (await r.json())["who"] == "origin"

        await eventually(bob_gone, within=15, what="bob's requests to return to the cluster")
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{port}/", headers={"x-dev": "alice"}) as r:
            assert (await r.json())["who"] == "alice's laptop"

        # alice stops her local service: a 502 that says so, not a hang
        await alice_svc.cleanup()
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{port}/", headers={"x-dev": "alice"}) as r:
            assert r.status == 502
            assert "cannot connect to the local service" in await r.text()
    finally:
        for runner in (origin, alice_svc, bob_svc):
            await runner.cleanup()


async def test_a_whole_port_and_a_per_request_intercept_do_not_mix(
    bridge: Daemon, echo_server: int
) -> None:
    port = free_port()
    tcp = await bridge.acli("intercept", "--relay-port", str(port), "--port",
                            str(echo_server), "--name", "whole")
    assert tcp.returncode == 0, tcp.stderr
    http = await bridge.acli("intercept", "--relay-port", str(port), "--port",
                             str(echo_server), "--header", "x-dev=me", "--name", "some")
    assert http.returncode == 1
    assert f"port {port} is intercepted in another mode (tcp)" in http.stderr, http.stderr


async def test_fallback_origin_sends_requests_to_the_cluster_while_you_are_down(
    bridge: Daemon,
) -> None:
    origin, origin_port = await _who("origin")
    port, nothing_here = free_port(), free_port()
    try:
        result = await bridge.acli(
            "intercept", "--relay-port", str(port), "--port", str(nothing_here),
            "--header", "x-dev=me", "--origin", f"127.0.0.1:{origin_port}",
            "--fallback", "origin")
        assert result.returncode == 0, result.stderr
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{port}/", headers={"x-dev": "me"}) as r:
            assert r.status == 200 and (await r.json())["who"] == "origin"
        bad = await bridge.acli("intercept", "--relay-port", str(free_port()), "--port",
                                "1", "--header", "x-dev=me", "--fallback", "origin")
        assert bad.returncode == 2 and "--fallback origin needs --origin" in bad.stderr
    finally:
        await origin.cleanup()


async def _intercept_on(relay_args: tuple[str, ...], daemon: Daemon, tmp_path: Path,
                        local: int, *extra: str) -> tuple[RelayProcess, int]:
    relay = await RelayProcess(tmp_path / "relay2", extra_args=relay_args).start()
    relay.authorize(await daemon.public_key())
    await daemon.call("POST", "bridges", {"url": relay.url, "name": "r2"})
    port = free_port()
    made = await daemon.acli("intercept", "--relay-port", str(port), "--port", str(local),
                             "--header", "x-dev=alice", "--bridge", "r2", *extra)
    assert made.returncode == 0, made.stderr
    return relay, port


async def test_secret_headers_never_reach_the_traffic_log(daemon: Daemon, tmp_path: Path) -> None:
    alice_svc, alice_port = await _who("alice's laptop")
    relay, port = await _intercept_on(("--redact-header", "x-team-secret"), daemon, tmp_path,
                                      alice_port)
    secrets = {"authorization": "Bearer tok-4f1c9", "cookie": "session=ck-77aa",
               "x-team-secret": "team-9d3e"}
    try:
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{port}/pay", headers={"x-dev": "alice", **secrets}) as r:
            assert (await r.json())["who"] == "alice's laptop"

        async def logged() -> list[dict[str, Any]]:
            return await daemon.call("GET", "traffic")  # type: ignore[no-any-return]

        (entry,) = await eventually(logged, within=10, what="the request in the log")
        shown = dict((n.lower(), v) for n, v in entry["headers"])
        assert shown["x-dev"] == "alice"
        assert {shown[n] for n in secrets} == {"[redacted]"}
        printed = await daemon.acli("traffic", "--headers")
        assert "x-dev: alice" in printed.stdout and "[redacted]" in printed.stdout
        as_json = await daemon.acli("traffic", "--json")
        for text in (printed.stdout, as_json.stdout, daemon.process.log_path.read_text(),
                     relay.log_path.read_text()):
            assert not any(v in text for v in secrets.values())
    finally:
        await relay.stop()
        await alice_svc.cleanup()


async def _slow(seconds: float) -> tuple[web.AppRunner, int]:
    """A local service 'paused at a breakpoint' for ``seconds`` before it answers."""
    async def paused(request: web.Request) -> web.Response:
        await asyncio.sleep(seconds)
        return web.json_response({"who": "alice, after the breakpoint"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", paused)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def test_a_request_held_at_a_breakpoint_outlives_many_leases(
    daemon: Daemon, tmp_path: Path
) -> None:
    # leases of 1 s; the request is held 4 s: the daemon renews, nothing times out
    svc, local = await _slow(4)
    relay, port = await _intercept_on(("--lease-seconds", "1"), daemon, tmp_path, local)
    try:
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{port}/", headers={"x-dev": "alice"}) as r:
            assert r.status == 200
            assert (await r.json())["who"] == "alice, after the breakpoint"
        (intercept,) = (await daemon.status())["intercepts"]
        assert intercept["state"] == "active"
    finally:
        await relay.stop()
        await svc.cleanup()


async def test_a_configured_response_timeout_answers_504(daemon: Daemon, tmp_path: Path) -> None:
    svc, local = await _slow(30)
    relay, port = await _intercept_on(("--response-timeout", "0.5"), daemon, tmp_path, local)
    try:
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{port}/", headers={"x-dev": "alice"}) as r:
            assert r.status == 504
            assert "no answer from" in await r.text() and "within 0.5 s" in await r.text()
    finally:
        await relay.stop()
        await svc.cleanup()
