"""HTTP/2 and gRPC intercepts from the laptop's side, with real processes and servers: the
CLI's --protocol / --grpc-method become the claim the daemon registers on a real relay, and an
intercept whose local server speaks HTTP/1.1 is refused at once (issue 11), while real h2c
servers (grpcio, h2) and a server not started yet are accepted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from aiohttp import web

from bridged.daemon.h2check import H2cCheckSettings, NotH2c, speaks_h2c
from bridged.localrun import RelayProcess

from ..helpers import Daemon, eventually, free_port, relay_stats

WITHIN = 10.0  # seconds any one step may take before the test fails rather than hangs


# --- local servers ------------------------------------------------------------------------------


@pytest.fixture
async def grpc_local() -> AsyncIterator[int]:
    """A real gRPC server (grpcio) for /shop.Cart/Add, as a developer runs on the laptop."""

    async def add(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"added:" + request

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "shop.Cart", {"Add": grpc.unary_unary_rpc_method_handler(add)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


class H2Local:
    """An h2c server made with h2 (prior knowledge): 200 to every stream; keeps the error
    code of each GOAWAY it receives."""

    def __init__(self) -> None:
        self.goaways: asyncio.Queue[int] = asyncio.Queue()
        self.streams = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> H2Local:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        self.streams += 1
                        conn.send_headers(event.stream_id, [(":status", "200")],
                                          end_stream=True)
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        self.goaways.put_nowait(event.error_code)
                writer.write(conn.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def http1_local() -> AsyncIterator[int]:
    """An HTTP/1.1 server (aiohttp): what a developer may run behind a gRPC intercept by
    mistake."""
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="http/1.1")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def tcp_local(answer: bytes | None) -> AsyncIterator[int]:
    """A server that sends ``answer`` once connected (None: says nothing) and keeps the
    connection open until the client leaves."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if answer is not None:
            writer.write(answer)
        with contextlib.suppress(OSError):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def _one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bridged: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --- the check on its own -----------------------------------------------------------------------


async def test_real_h2c_servers_pass_and_are_told_goodbye(grpc_local: int) -> None:
    assert await asyncio.wait_for(speaks_h2c("127.0.0.1", grpc_local), WITHIN)
    async with H2Local() as local:
        assert await asyncio.wait_for(speaks_h2c("127.0.0.1", local.port), WITHIN)
        # a GOAWAY without error ends the check's connection, and no stream was opened
        assert await asyncio.wait_for(local.goaways.get(), WITHIN) == 0
        assert local.streams == 0


async def test_an_http1_server_is_named_as_such() -> None:
    async with http1_local() as port:
        with pytest.raises(NotH2c) as info:
            await asyncio.wait_for(speaks_h2c("127.0.0.1", port), WITHIN)
    assert str(info.value) == (f"local server at 127.0.0.1:{port} speaks HTTP/1.1, not HTTP/2 "
                               "(h2c); intercept with --protocol http, or serve h2c")


async def test_nothing_listening_is_not_an_error() -> None:
    assert await asyncio.wait_for(speaks_h2c("127.0.0.1", free_port()), WITHIN) is False


@pytest.mark.parametrize(("answer", "needle"), [
    (None, "did not answer the HTTP/2 (h2c) preface within 0.5 s"),
    (b"\x15\x03\x01\x00\x02\x02\x46", "does not speak HTTP/2 (h2c): its first bytes"),
    (b"HTTP/1.0 400 Bad Request\r\n\r\n", "speaks HTTP/1.1, not HTTP/2"),
    # a HEADERS frame first: HTTP/2 servers begin with SETTINGS
    (b"\x00\x00\x00\x01\x05\x00\x00\x00\x01", "not a SETTINGS frame"),
    (b"\x00\x00\x05\x04\x00\x00\x00\x00\x00abcde", "broken SETTINGS frame"),
    (b"\x00\x00\x00\x04", "went silent after 4 bytes of the HTTP/2 (h2c) preface"),
])
async def test_other_answers_are_errors_in_time(answer: bytes | None, needle: str) -> None:
    async with tcp_local(answer) as port:
        with pytest.raises(NotH2c) as info:
            await asyncio.wait_for(speaks_h2c("127.0.0.1", port, H2cCheckSettings(0.5)),
                                   WITHIN)
    assert needle in str(info.value) and "\n" not in str(info.value)


# --- through the CLI, the daemon and a relay ----------------------------------------------------


async def _intercepts(relay: RelayProcess) -> int:
    async with relay_stats(relay) as stats:
        return int((await stats())["other_intercepts"])


async def test_grpc_method_makes_a_grpc_claim(
        bridge: Daemon, relay: RelayProcess, grpc_local: int) -> None:
    result = await bridge.acli(
        "intercept", "--relay-port", str(free_port()), "--port", str(grpc_local),
        "--grpc-method", "shop.Cart/Add", "--header", "x-dev=alice", "--name", "cart", "--json")
    assert result.returncode == 0, result.stderr
    made = json.loads(result.stdout)
    assert (made["protocol"], made["mode"]) == ("grpc", "http")
    [shown] = (await bridge.status())["intercepts"]
    assert shown["protocol"] == "grpc" and shown["state"] == "active"
    assert shown["matchers"] == ["header x-dev equals alice", "grpc-method shop.Cart/Add"]
    assert await _intercepts(relay) == 1
    # the table as a person reads it (wide enough not to be cut)
    status = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bridged", "status"], capture_output=True,
        text=True, timeout=60, env={**bridge.process.env, "COLUMNS": "300"})
    assert f"127.0.0.1:{grpc_local} (grpc)" in status.stdout, status.stdout
    assert "grpc-method shop.Cart/Add" in status.stdout


@pytest.mark.parametrize(("args", "protocol"), [
    (["--protocol", "h2c"], "h2c"),
    (["--grpc-method", "*/Add", "--protocol", "h2c"], "h2c"),
    (["--grpc-method", "shop.Cart"], "grpc"),
])
async def test_an_h2c_server_gets_the_protocol_asked_for(
        bridge: Daemon, args: list[str], protocol: str) -> None:
    async with H2Local() as local:
        result = await bridge.acli("intercept", "--relay-port", str(free_port()), "--port",
                                   str(local.port), *args)
        assert result.returncode == 0, result.stderr
        assert f"→ 127.0.0.1:{local.port} ({protocol}): " in result.stdout, result.stdout
        assert await asyncio.wait_for(local.goaways.get(), WITHIN) == 0  # it was checked
    [shown] = (await bridge.status())["intercepts"]
    assert shown["protocol"] == protocol


async def test_an_http1_local_server_is_refused_before_anything_is_registered(
        bridge: Daemon, relay: RelayProcess) -> None:
    async with http1_local() as port:
        for args in (["--protocol", "grpc"], ["--grpc-method", "shop.Cart/Add"],
                     ["--protocol", "h2c"]):
            result = await bridge.acli("intercept", "--relay-port", str(free_port()),
                                       "--port", str(port), *args)
            _one_line_error(result, f"local server at 127.0.0.1:{port} speaks HTTP/1.1, not "
                            "HTTP/2 (h2c); intercept with --protocol http, or serve h2c")
        assert (await bridge.status())["intercepts"] == []
        assert await _intercepts(relay) == 0
        # the same server is fine for an HTTP/1.1 intercept, which is the default
        result = await bridge.acli("intercept", "--relay-port", str(free_port()), "--port",
                                   str(port), "--header", "x-dev=me", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["protocol"] == "http"


async def test_a_local_server_not_started_yet_is_no_error(bridge: Daemon) -> None:
    """As for HTTP/1.1 intercepts: each stream connects on its own, and says so then."""
    result = await bridge.acli("intercept", "--relay-port", str(free_port()), "--port",
                               str(free_port()), "--protocol", "grpc", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["protocol"] == "grpc"


@pytest.mark.parametrize(("args", "needle"), [
    (["--grpc-method", "shop.Cart/Add/x"], "bad --grpc-method 'shop.Cart/Add/x': expected "
     "package.Service/Method, package.Service (all its methods) or */Method"),
    (["--grpc-method", ""], "bad --grpc-method ''"),
    (["--grpc-method", "*"], "bad --grpc-method '*'"),
    (["--grpc-method", "shop.Cart/"], "bad --grpc-method 'shop.Cart/'"),
    (["--grpc-method", "shop.Cart/Add", "--protocol", "http"],
     "--grpc-method matches gRPC calls: it goes without --protocol http"),
    (["--protocol", "h3"], "bad --protocol 'h3': expected http, h2c, grpc"),
    (["--protocol", "grpc", "--tcp"], "--tcp takes the whole port as bytes"),
])
async def test_bad_protocol_input_is_one_line(
        bridge: Daemon, args: list[str], needle: str) -> None:
    result = await bridge.acli("intercept", "--relay-port", str(free_port()), "--port", "1",
                               *args)
    _one_line_error(result, needle)
    assert (await bridge.status())["intercepts"] == []


# --- traffic: gRPC calls routed by a real relay, as `bridged traffic` shows them ---------------


@contextlib.asynccontextmanager
async def cart_server(who: bytes) -> AsyncIterator[int]:
    """shop.Cart on grpcio: Add answers ``who`` and the request; Find is NOT_FOUND."""

    async def add(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return who + b":" + request

    async def find(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such cart")
        return b""

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("shop.Cart", {
        "Add": grpc.unary_unary_rpc_method_handler(add),
        "Find": grpc.unary_unary_rpc_method_handler(find)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def test_traffic_shows_routed_grpc_calls_with_their_status(bridge: Daemon) -> None:
    port = free_port()
    async with cart_server(b"laptop") as laptop, cart_server(b"origin") as origin:
        made = await bridge.acli(
            "intercept", "--relay-port", str(port), "--port", str(laptop), "--grpc-method",
            "shop.Cart", "--header", "x-dev=alice", "--origin", f"127.0.0.1:{origin}")
        assert made.returncode == 0, made.stderr
        alice = (("x-dev", "alice"),)
        options = [("grpc.enable_http_proxy", 0)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as ch:
            add, find = ch.unary_unary("/shop.Cart/Add"), ch.unary_unary("/shop.Cart/Find")
            assert await asyncio.wait_for(add(b"1", metadata=alice), WITHIN) == b"laptop:1"
            assert await asyncio.wait_for(add(b"2"), WITHIN) == b"origin:2"  # not alice's
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(find(b"3", metadata=alice), WITHIN)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND

        async def logged() -> list[dict[str, object]]:
            entries = await bridge.call("GET", "traffic")
            return entries if len(entries) >= 2 else []

        await eventually(logged, within=WITHIN, what="alice's two calls in her traffic log")
    shown = await bridge.acli("traffic", "--json")
    assert shown.returncode == 0, shown.stderr
    entries = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [(e["path"], e["http_version"], e["grpc_status"]) for e in entries] == [
        ("/shop.Cart/Add", "h2", 0), ("/shop.Cart/Find", "h2", 5)]
    lines = (await bridge.acli("traffic")).stdout.splitlines()
    assert len(lines) == 2, lines
    assert " gRPC shop.Cart/Add  grpc-status 0 OK  " in lines[0], lines
    assert " gRPC shop.Cart/Find  grpc-status 5 NOT_FOUND  " in lines[1], lines
