"""The daemon's SOCKS5 and HTTP proxies, end to end: a real relay and a real daemon.

The relay runs in a mount namespace with its own /etc/hosts (the technique of
test_relay_policy.py): ``orders.team-a`` and the short name ``payments`` resolve to 127.0.0.1
for the relay only, so a client that reaches them through the proxy went through the tunnel
(the laptop cannot resolve them). ``localhost`` goes direct. The daemon runs in a mount
namespace too, whose resolver reads files only and knows ``localhost`` alone: a name it tries
(one the relay did not place in the cluster) asks no DNS server. ``denied.team-a`` resolves, for
the relay, to 127.0.0.3, which the relay's policy denies: the refusal is asserted, and nothing
is sent there (the relay refuses before connecting). Outside Kubernetes the relay has no
namespace: it resolves a name as given (bridged.workload.names.search_names).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import shutil
import struct
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web

from bridged.control.client import ControlClient
from bridged.localrun import RelayProcess

from ..grpckit.clients import EchoClient
from ..grpckit.servers import echo_servers
from ..grpckit.stubs import compile_echo
from ..helpers import (
    Daemon,
    DaemonProcess,
    assert_clean_log,
    read_response,
    relay_stats,
    serve_http,
)
from ..resolver import Resolver, relay_resolving_with

HOSTS = """127.0.0.1 localhost
127.0.0.1 orders.team-a
127.0.0.1 payments
127.0.0.3 denied.team-a
"""
WAIT = 20.0  # seconds: a bound on every exchange, so a broken proxy fails instead of hanging


@pytest.fixture
def relay_hosts(tmp_path: Path) -> Resolver:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare(1) and mount(8) to give the relay its own /etc/hosts")
    r = Resolver(tmp_path / "resolver")
    r.hosts(HOSTS)
    try:
        seen = r.lookup("orders.team-a")
    except OSError as exc:
        pytest.skip(f"no mount namespace for the relay's resolver (needs root): {exc}")
    assert seen == ["127.0.0.1"], f"the test's resolver gives {seen}"
    return r


@pytest.fixture
async def daemon(tmp_path: Path, relay_hosts: Resolver,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Daemon]:
    """The daemon, resolving with files only (localhost): no DNS query leaves the machine."""
    laptop = Resolver(tmp_path / "laptop-ns" / "resolver")  # its own wrapper
    laptop.hosts("127.0.0.1 localhost\n")
    process = DaemonProcess(tmp_path / "laptop")
    with monkeypatch.context() as patch:  # DaemonProcess runs sys.executable: the wrapper
        patch.setattr(sys, "executable", str(laptop.wrapper))
        await process.start()
    try:
        yield Daemon(process, ControlClient(process.socket))
    finally:
        await process.stop()
    assert_clean_log(process.log_path)


@pytest.fixture
async def relay_ns(tmp_path: Path, relay_hosts: Resolver) -> AsyncIterator[RelayProcess]:
    async with relay_resolving_with(relay_hosts, tmp_path / "relay", "127.0.0.3/32") as relay:
        yield relay


@pytest.fixture
async def proxies(relay_ns: RelayProcess, daemon: Daemon) -> SimpleNamespace:
    relay_ns.authorize(await daemon.public_key())
    await daemon.call("POST", "bridges", {"url": relay_ns.url})
    answer = await daemon.call("POST", "proxy", {})
    socks_host, socks_port = answer["socks"].rsplit(":", 1)
    http_host, http_port = answer["http"].rsplit(":", 1)
    assert socks_host == http_host == "127.0.0.1"
    return SimpleNamespace(answer=answer, socks=int(socks_port), http=int(http_port),
                           daemon=daemon, relay=relay_ns)


@contextlib.asynccontextmanager
async def who(name: str) -> AsyncIterator[int]:
    """An HTTP server on loopback answering every request with ``name`` and the path."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=f"{name} {request.path_qs} host={request.host}")

    runner, port = await serve_http(handle)
    try:
        yield port
    finally:
        await runner.cleanup()


async def curl(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "15", "--noproxy", "", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()})
    out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    return proc.returncode or 0, out.decode(), err.decode()


async def socks_connect(port: int, host: str, dest_port: int, *, atyp: int | None = None,
                        ) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter]:
    """A SOCKS5 CONNECT by hand: the reply code, and the streams (open when it is 0)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x05\x01\x00")
    assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"\x05\x00"
    try:
        ip = ipaddress.ip_address(host)
        address = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
    except ValueError:
        address = b"\x03" + bytes([len(host)]) + host.encode()
    writer.write(b"\x05\x01\x00" + address + struct.pack("!H", dest_port))
    reply = await asyncio.wait_for(reader.readexactly(10), WAIT)
    assert reply[:2] == bytes((5, reply[1])) and reply[2] == 0
    return reply[1], reader, writer


def daemon_log_lines(daemon: Daemon, text: str) -> list[str]:
    return [line for line in daemon.process.log_path.read_text().splitlines() if text in line]


# --- reaching names ---------------------------------------------------------------------------


async def test_clients_reach_a_cluster_name_through_the_relay_and_localhost_directly(
        proxies: SimpleNamespace) -> None:
    async with who("cluster") as cluster_port, who("laptop") as laptop_port, \
            relay_stats(proxies.relay) as stats:
        orders = f"orders.team-a:{cluster_port}"
        socks, http = f"127.0.0.1:{proxies.socks}", f"127.0.0.1:{proxies.http}"
        before = (await stats())["outbound"]["connections"]
        # curl: SOCKS5 with remote resolution, HTTP absolute-form, HTTP CONNECT (-p)
        for args in (("--socks5-hostname", socks), ("-x", f"http://{http}"),
                     ("-p", "-x", f"http://{http}")):
            code, out, err = await curl(*args, f"http://{orders}/a?b=1")
            assert (code, err) == (0, ""), args
            assert out == f"cluster /a?b=1 host={orders}", args
        # the short name of a Service, by SOCKS
        code, out, _ = await curl("--socks5-hostname", socks, f"http://payments:{cluster_port}/")
        assert out.startswith("cluster /"), out
        # Python's own clients: urllib (absolute-form) and aiohttp (absolute-form)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler(
            {"http": f"http://{http}"}))
        body = await asyncio.to_thread(
            lambda: opener.open(f"http://{orders}/urllib", timeout=WAIT).read().decode())
        assert body == f"cluster /urllib host={orders}"
        async with aiohttp.ClientSession() as session, session.get(
                f"http://{orders}/aiohttp", proxy=f"http://{http}",
                timeout=aiohttp.ClientTimeout(total=WAIT)) as resp:
            assert (resp.status, await resp.text()) == (200, f"cluster /aiohttp host={orders}")
        through_relay = (await stats())["outbound"]["connections"] - before
        assert through_relay == 6  # three curls, the short name, urllib, aiohttp
        # localhost is the laptop's: direct, whichever proxy; the relay sees none of it
        for args in (("--socks5-hostname", socks), ("-x", f"http://{http}"),
                     ("-p", "-x", f"http://{http}")):
            code, out, err = await curl(*args, f"http://localhost:{laptop_port}/x")
            assert out == f"laptop /x host=localhost:{laptop_port}", (args, err)
        assert (await stats())["outbound"]["connections"] - before == through_relay


async def test_grpc_reaches_a_cluster_name_through_the_http_proxy(
        proxies: SimpleNamespace, tmp_path: Path) -> None:
    import grpc

    stubs = compile_echo(tmp_path)
    async with echo_servers(stubs, "orders") as (server,):
        options = (("grpc.http_proxy", f"http://127.0.0.1:{proxies.http}"),
                   ("grpc.use_local_subchannel_pool", 1))
        async with grpc.aio.insecure_channel(f"orders.team-a:{server.port}",
                                             options=options) as ch:
            answer = await EchoClient(ch, stubs).call((), b"hello", deadline=WAIT)
        assert answer.who == "orders"
        assert [s.method for s in server.calls()] == ["Call"]


# --- refusals ---------------------------------------------------------------------------------


async def test_an_unknown_name_is_a_clear_error_and_one_log_line(
        proxies: SimpleNamespace) -> None:
    # with dots: the relay does not know it, so the laptop tries, and cannot either
    code, _, _ = await socks_connect(proxies.socks, "nosuch.team-a", 80)
    assert code == 4  # host unreachable
    assert len(daemon_log_lines(proxies.daemon, "nosuch.team-a")) == 1
    # a short name is the cluster's: the relay cannot resolve it
    _, out, _ = await curl("-x", f"http://127.0.0.1:{proxies.http}", "-i", "http://nosuch/")
    assert out.startswith("HTTP/1.1 502 ")
    assert out.rstrip("\n").splitlines()[-1].startswith("cannot resolve nosuch")
    assert len(daemon_log_lines(proxies.daemon, "cannot resolve nosuch:")) == 1


async def test_a_denied_destination_names_the_relays_policy(proxies: SimpleNamespace) -> None:
    code, _, _ = await socks_connect(proxies.socks, "denied.team-a", 80)
    assert code == 2  # not allowed by ruleset
    code, out, _ = await curl("-p", "-x", f"http://127.0.0.1:{proxies.http}", "-i",
                              "http://denied.team-a:80/")
    assert "403" in out.splitlines()[0]
    code, out, _ = await curl("-x", f"http://127.0.0.1:{proxies.http}", "-i",
                              "http://denied.team-a:80/")
    assert out.startswith("HTTP/1.1 403 ")
    assert "denied by the relay's policy" in out and "127.0.0.3" in out
    assert len(daemon_log_lines(proxies.daemon, "denied by the relay's policy")) == 3


async def _digest_of_8mib(port: int, via_socks: int) -> tuple[str, str]:
    data = os.urandom(8 * 1024 * 1024)
    code, reader, writer = await socks_connect(via_socks, "orders.team-a", port)
    assert code == 0
    try:
        for i in range(0, len(data), 256 * 1024):
            writer.write(data[i:i + 256 * 1024])
            await writer.drain()
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()
    return hashlib.sha256(data).hexdigest(), answer.decode().split()[0]


async def _refused(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()


async def test_malformed_requests_are_refused_while_a_transfer_completes_intact(
        proxies: SimpleNamespace, digest_server: int) -> None:
    transfer = asyncio.create_task(_digest_of_8mib(digest_server, proxies.socks))
    bad_socks = [
        (b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", b""),  # SOCKS4: closed, nothing said
        (b"\x05\x01\x02", b"\x05\xff"),  # only user/password offered: no method
        (b"\x05\x01\x00\x05\x01\x00\x09", b"\x05\x00" + bytes((5, 8, 0, 1)) + bytes(6)),
        (b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50",  # BIND
         b"\x05\x00" + bytes((5, 7, 0, 1)) + bytes(6)),
        (b"\x05\x01\x00\x05\x01\x00\x03\x04a b\x00\x00\x50", b"\x05\x00"),  # not a name
    ]
    for sent, expected in bad_socks:
        assert await _refused(proxies.socks, sent) == expected, sent
    for sent in (b"hello\r\n\r\n", b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"GET ftp://orders.team-a/ HTTP/1.1\r\n\r\n",
                 b"CONNECT orders.team-a HTTP/1.1\r\n\r\n",
                 b"GET http://orders.team-a:99999/ HTTP/1.1\r\n\r\n",
                 b"GET http://x/ HTTP/1.1\r\nno colon here\r\n\r\n"):
        answer = await _refused(proxies.http, sent)
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (sent, answer)
        assert answer.count(b"\n", answer.index(b"\r\n\r\n") + 4) == 1  # one line
    sent_hash, digest = await asyncio.wait_for(transfer, 60)
    assert digest == sent_hash


async def test_the_proxies_are_started_once_and_the_cli_prints_them(
        proxies: SimpleNamespace) -> None:
    again = await proxies.daemon.call("POST", "proxy", {"bridge": proxies.answer["bridge"]})
    assert again == proxies.answer
    assert proxies.answer["namespace"] == ""  # a relay outside Kubernetes
    done = await proxies.daemon.acli("proxy")
    assert done.returncode == 0, done.stderr
    assert f"export ALL_PROXY=socks5h://127.0.0.1:{proxies.socks}" in done.stdout
    assert f"export HTTP_PROXY=http://127.0.0.1:{proxies.http}" in done.stdout
    done = await proxies.daemon.acli("proxy", "--bridge", "nosuch", "--json")
    assert done.returncode != 0
    assert done.stderr.strip() == "bridged: no bridge named 'nosuch'"


async def test_proxy_without_a_bridge_is_one_clear_line(daemon: Daemon) -> None:
    done = await daemon.acli("proxy")
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and "not connected to any relay" in done.stderr


# --- a relay in a namespace: the pod's search order -------------------------------------------

#: the relay's names as a pod of namespace team-a sees them; ``orders`` alone stands for what
#: resolv.conf's search path gives a short name (a files-only resolver has no search path);
#: ``elsewhere.test`` resolves as given but is not the cluster's
POD_HOSTS = """127.0.0.1 localhost
127.0.0.1 orders
127.0.0.1 orders.team-a.svc.cluster.local
127.0.0.1 db-0.db.team-a.svc.cluster.local
127.0.0.1 elsewhere.test
"""


@pytest.fixture
async def pod_proxies(tmp_path: Path, relay_hosts: Resolver, daemon: Daemon
                      ) -> AsyncIterator[SimpleNamespace]:
    relay_hosts.hosts(POD_HOSTS)
    wrapper = tmp_path / "in-team-a"
    wrapper.write_text(f'#!/bin/sh\nPOD_NAMESPACE=team-a exec {relay_hosts.wrapper} "$@"\n')
    wrapper.chmod(0o755)
    relay = RelayProcess(tmp_path / "relay", python=str(wrapper))
    await relay.start()
    try:
        relay.authorize(await daemon.public_key())
        await daemon.call("POST", "bridges", {"url": relay.url})
        answer = await daemon.call("POST", "proxy", {})
        yield SimpleNamespace(socks=answer["socks"], http=answer["http"], daemon=daemon)
    finally:
        await relay.stop()
    assert_clean_log(relay.log_path)


async def test_names_resolve_as_in_a_pod_of_the_relays_namespace(
        pod_proxies: SimpleNamespace) -> None:
    async with who("orders") as port:
        for name in ("orders", "orders.team-a", "orders.team-a.svc.cluster.local", "db-0.db"):
            for proxy in (("--socks5-hostname", pod_proxies.socks),
                          ("-x", f"http://{pod_proxies.http}")):
                code, out, err = await curl(*proxy, f"http://{name}:{port}/")
                assert (code, out) == (0, f"orders / host={name}:{port}"), (name, proxy, err)
        # the relay resolves it as given, but a pod's search order does not: not the
        # cluster's, so it is tried from the laptop, which does not know it
        code, _, _ = await socks_connect(int(pod_proxies.socks.rsplit(":", 1)[1]),
                                         "elsewhere.test", port)
        assert code == 4
        assert "(from the laptop: not a cluster name)" in daemon_log_lines(
            pod_proxies.daemon, "elsewhere.test")[0]


# --- HTTP keep-alive ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def hashing(name: str) -> AsyncIterator[SimpleNamespace]:
    """An HTTP server answering ``NAME PATH SHA256 SIZE`` of each request's body, ``/chunked``
    with a chunked answer; ``peers`` the client port of each request (one per connection)."""
    seen = SimpleNamespace(port=0, peers=[])

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.peers.append(request.transport.get_extra_info("peername")[1])
        body = await request.read()
        if request.path == "/chunked":
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for piece in (b"a" * 100_000, b"b" * 7, b"c" * 300_000):
                await response.write(piece)
            await response.write_eof()
            return response
        return web.Response(
            text=f"{name} {request.path} {hashlib.sha256(body).hexdigest()} {len(body)}")

    runner, seen.port = await serve_http(handle)
    try:
        yield seen
    finally:
        await runner.cleanup()


async def test_absolute_form_requests_keep_the_connection_while_the_destination_stays(
        proxies: SimpleNamespace) -> None:
    async with hashing("cluster") as cluster, hashing("laptop") as laptop:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxies.http)
        orders = f"http://orders.team-a:{cluster.port}"
        body = os.urandom(1000 * 1000 + 3)  # under aiohttp's 1 MiB body limit
        chunked = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n"
                           for p in (body[:5000], body[5000:])) + b"0\r\nx-t: 1\r\n\r\n"

        async def exchange(request: bytes, head: bool = False) -> tuple[int, bytes]:
            writer.write(request)
            status, _, answer = await asyncio.wait_for(
                read_response(reader, head=head), WAIT)
            return status, answer

        try:
            assert await exchange(f"GET {orders}/one HTTP/1.1\r\nHost: o\r\n\r\n".encode()) \
                == (200, f"cluster /one {hashlib.sha256(b'').hexdigest()} 0".encode())
            assert await exchange(f"POST {orders}/two HTTP/1.1\r\nHost: o\r\n"
                                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body) \
                == (200, f"cluster /two {hashlib.sha256(body).hexdigest()} {len(body)}"
                    .encode())
            assert await exchange(f"POST {orders}/three HTTP/1.1\r\nHost: o\r\n"
                                  "Transfer-Encoding: chunked\r\n\r\n".encode() + chunked) \
                == (200, f"cluster /three {hashlib.sha256(body).hexdigest()} {len(body)}"
                    .encode())
            status, answer = await exchange(
                f"GET {orders}/chunked HTTP/1.1\r\nHost: o\r\n\r\n".encode())
            assert (status, answer) == (200, b"a" * 100_000 + b"b" * 7 + b"c" * 300_000)
            assert (await exchange(f"HEAD {orders}/head HTTP/1.1\r\nHost: o\r\n\r\n".encode(),
                                   head=True))[0] == 200
            # one connection to the cluster's server carried all five
            assert len(cluster.peers) == 5 and len(set(cluster.peers)) == 1
            # another destination on the same client connection: a connection of its own
            local = f"http://localhost:{laptop.port}"
            assert await exchange(f"GET {local}/four HTTP/1.1\r\nHost: l\r\n\r\n".encode()) \
                == (200, f"laptop /four {hashlib.sha256(b'').hexdigest()} 0".encode())
            # Connection: close is passed on, and the proxy closes after the answer
            writer.write(f"GET {local}/five HTTP/1.1\r\nHost: l\r\n"
                         "Connection: close\r\n\r\n".encode())
            status, _, _ = await asyncio.wait_for(read_response(reader), WAIT)
            assert status == 200
            assert await asyncio.wait_for(reader.read(), WAIT) == b""
            assert len(laptop.peers) == 2 and len(set(laptop.peers)) == 1
        finally:
            writer.close()
