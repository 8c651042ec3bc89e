"""Issue 11, end to end: a gRPC call carrying the header of a developer whose intercept takes
HTTP/1.1 gets a clear error (never HTTP/2 sent to an HTTP/1.1 server), the developer sees the
call and why in their traffic, and everybody else's calls on the same channel reach the pods."""

from __future__ import annotations

import json

import grpc

from bridged.localrun import RelayProcess

from ..helpers import Daemon, eventually, free_port
from .test_router_passthrough import grpc_origin  # noqa: F401  (a fixture)


async def test_an_http2_call_for_an_http1_intercept_is_refused_and_the_developer_is_told(
    relay: RelayProcess, bridge: Daemon, grpc_origin: int,  # noqa: F811
) -> None:
    port = free_port()
    local = free_port()  # the developer's service: HTTP/1.1 by its intercept's word
    result = await bridge.acli(
        "intercept", "--relay-port", str(port), "--port", str(local),
        "--header", "x-dev=alice", "--origin", f"127.0.0.1:{grpc_origin}", "--json")
    assert result.returncode == 0, result.stderr

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                         options=[("grpc.enable_http_proxy", 0)]) as channel:
        call = channel.unary_unary("/test.Echo/Call")
        # (wait_for_ready: a gRPC client retries a connection that failed, as real ones do)
        assert await call(b"hi", timeout=10, wait_for_ready=True) == b"origin:hi:"
        try:
            await call(b"mine", metadata=(("x-dev", "alice"),), timeout=10)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        else:
            raise AssertionError("alice's HTTP/2 call reached her HTTP/1.1 intercept")

    async def alices() -> list[dict[str, object]]:
        traffic = await bridge.acli("traffic", "--json")
        entries = [json.loads(line) for line in traffic.stdout.splitlines()]
        return [e for e in entries if e.get("path") == "/test.Echo/Call"]

    [entry] = await eventually(alices, within=10, what="alice's call in her traffic")
    assert (entry["method"], entry["status"], entry["http_version"]) == ("POST", 502, "h2")
    assert "--protocol h2c" in str(entry["note"])
    assert (await bridge.call("GET", "status"))["intercepts"][0]["passed_through"] == {}
