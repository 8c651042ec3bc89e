"""``bridged demo``: the whole path on one machine, with the real relay, daemon and SSH.

Two small "cluster" services run behind the relay (an HTTP API and a TCP key-value store); the
daemon exposes them on local ports and the demo calls them there; a "local development" HTTP
service is started and a relay port is intercepted to it, and requests sent to the relay port
(as the cluster would send them) are shown arriving on the laptop — by header too, and per
stream of one HTTP/2 connection (as gRPC clients send their calls). Every process is stopped at
the end, and the exit code says whether every step passed.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .control.client import ControlClient
from .demo_h2 import h2c_get_all, h2c_service
from .errors import BridgedError
from .localrun import DaemonProcess, RelayProcess
from .runtime import run


class Demo:
    def __init__(self, json_out: bool) -> None:
        self.json_out = json_out
        self.steps: list[dict[str, Any]] = []
        self.ok = True

    def say(self, step: str, text: str, ok: bool = True, **data: Any) -> None:
        self.steps.append({"step": step, "ok": ok, "text": text, **data})
        self.ok = self.ok and ok
        if not self.json_out:
            mark = "" if ok else "  FAILED"
            print(f"  {step:<10} {text}{mark}", flush=True)

    async def check(self, step: str, action: Callable[[], Awaitable[str]]) -> None:
        try:
            self.say(step, await action())
        except (BridgedError, OSError, AssertionError, TimeoutError, ValueError) as exc:
            self.say(step, f"{type(exc).__name__}: {exc}", ok=False)


# --- the "cluster" services -----------------------------------------------------------------


async def http_service(name: str, body: Callable[[str], dict[str, Any]]) -> asyncio.Server:
    """A minimal HTTP/1.1 server (one request per connection is all the demo needs)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            payload = json.dumps({"served_by": name, **body(path)}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (len(payload), payload))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def kv_service() -> asyncio.Server:
    """A line protocol: ``SET key value`` → ``OK``; ``GET key`` → the value."""
    store: dict[str, str] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                parts = line.decode().split()
                if len(parts) == 3 and parts[0] == "SET":
                    store[parts[1]] = parts[2]
                    writer.write(b"OK\n")
                elif len(parts) == 2 and parts[0] == "GET":
                    writer.write(store.get(parts[1], "").encode() + b"\n")
                else:
                    writer.write(b"ERR\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: demo\r\n{extra}Connection: close\r\n\r\n"
                 .encode())
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise AssertionError(f"unexpected answer {head[:40]!r}")
    return json.loads(body)  # type: ignore[no-any-return]


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the demo ---------------------------------------------------------------------------------


async def _demo(demo: Demo, workdir: Path) -> None:
    started = time.monotonic()
    if not demo.json_out:
        print("bridged demo: relay, daemon and services on this machine, one SSH connection")
    orders = await http_service("orders-api (cluster)", lambda p: {"path": p, "orders": [1, 2]})
    kv = await kv_service()
    laptop = await http_service("orders-api (your laptop)", lambda p: {"path": p})
    cluster_h2 = await h2c_service("the cluster (HTTP/2)")
    laptop_h2 = await h2c_service("your laptop (HTTP/2)")
    async with RelayProcess(workdir / "relay") as relay, \
            DaemonProcess(workdir / "daemon") as daemon:
        os.environ.update(daemon.env)  # the control client finds this daemon
        client = ControlClient(daemon.socket)

        async def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            return await asyncio.to_thread(client.request, method, path, body)

        status = await call("GET", "status")
        relay.authorize(status["daemon"]["client_key"])
        demo.say("relay", f"pid {relay.pid}, SSH on 127.0.0.1:{relay.ssh_port}, "
                          f"host key {relay.host_key_fingerprint}")
        demo.say("daemon", f"pid {daemon.pid}, control socket {daemon.socket}")

        async def connect() -> str:
            b = await call("POST", "bridges", {"url": relay.url})
            return f"{b['relay']}: {b['state']} (session {b['session']})"

        await demo.check("connect", connect)

        async def expose_http() -> str:
            f = (await call("POST", "forwards", {"target": f"127.0.0.1:{port_of(orders)}",
                                                 "name": "orders-api"}))["forwards"][0]
            answer = await http_get(f["local_port"], "/orders")
            assert answer["orders"] == [1, 2], answer
            return (f"orders-api → 127.0.0.1:{f['local_port']}: GET /orders answered by "
                    f"{answer['served_by']}")

        await demo.check("expose", expose_http)

        async def expose_kv() -> str:
            f = (await call("POST", "forwards", {"target": f"127.0.0.1:{port_of(kv)}",
                                                 "name": "kv"}))["forwards"][0]
            reader, writer = await asyncio.open_connection("127.0.0.1", f["local_port"])
            writer.write(b"SET color blue\nGET color\n")
            answers = [await reader.readline(), await reader.readline()]
            writer.close()
            assert answers == [b"OK\n", b"blue\n"], answers
            return f"kv → 127.0.0.1:{f['local_port']}: SET color blue, GET color → blue"

        await demo.check("expose", expose_kv)

        cluster_port = free_port()

        async def intercept() -> str:
            await call("POST", "intercepts", {"remote_port": cluster_port,
                                              "local_port": port_of(laptop), "name": "orders"})
            served = [(await http_get(cluster_port, f"/orders/{n}"))["served_by"]
                      for n in range(3)]
            assert set(served) == {"orders-api (your laptop)"}, served
            return (f"relay port {cluster_port} → 127.0.0.1:{port_of(laptop)}: 3 requests sent "
                    f"to the cluster side were answered by your laptop")

        await demo.check("intercept", intercept)

        async def leave() -> str:
            await call("DELETE", "intercepts/orders")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", cluster_port)
            except ConnectionRefusedError:
                return f"intercept ended; relay port {cluster_port} is closed again"
            writer.close()
            raise AssertionError(f"relay port {cluster_port} still accepts connections")

        await demo.check("leave", leave)

        async def route_by_header() -> str:
            port = free_port()
            await call("POST", "intercepts", {
                "remote_port": port, "local_port": port_of(laptop), "name": "orders-alice",
                "headers": ["x-bridged-route=alice"], "origin": f"127.0.0.1:{port_of(orders)}"})
            mine = (await http_get(port, "/orders", {"x-bridged-route": "alice"}))["served_by"]
            others = (await http_get(port, "/orders"))["served_by"]
            assert (mine, others) == ("orders-api (your laptop)", "orders-api (cluster)"), \
                (mine, others)
            await call("DELETE", "intercepts/orders-alice")
            return (f"relay port {port}: requests with x-bridged-route: alice → your laptop, "
                    "all others → the cluster")

        await demo.check("by header", route_by_header)

        async def route_streams() -> str:
            port = free_port()
            await call("POST", "intercepts", {
                "remote_port": port, "local_port": port_of(laptop_h2), "name": "grpc-alice",
                "headers": ["x-bridged-route=alice"], "protocol": "h2c",
                "origin": f"127.0.0.1:{port_of(cluster_h2)}"})
            answers = await h2c_get_all(port, [("/a", {"x-bridged-route": "alice"}),
                                               ("/b", {}), ("/c", {"x-bridged-route": "alice"})])
            served = [a["served_by"] for a in answers]
            assert served == ["your laptop (HTTP/2)", "the cluster (HTTP/2)",
                              "your laptop (HTTP/2)"], served
            await call("DELETE", "intercepts/grpc-alice")
            return (f"relay port {port}: one HTTP/2 connection, 3 streams: the 2 with "
                    "x-bridged-route: alice → your laptop, the other → the cluster")

        await demo.check("HTTP/2", route_streams)

        s = await call("GET", "status")
        moved = sum(f["bytes_sent"] + f["bytes_received"] for f in s["forwards"])
        demo.say("status", f"{len(s['forwards'])} forwards, {moved} bytes through the tunnel")
    for server in (orders, kv, laptop, cluster_h2, laptop_h2):
        server.close()
    demo.say("cleanup", "daemon and relay stopped")
    elapsed = time.monotonic() - started
    if demo.json_out:
        print(json.dumps({"ok": demo.ok, "seconds": round(elapsed, 2), "steps": demo.steps}))
    else:
        print(f"{'ok' if demo.ok else 'FAILED'}: demo finished in {elapsed:.1f}s")


def run_demo(json_out: bool = False) -> bool:
    demo = Demo(json_out)
    with tempfile.TemporaryDirectory(prefix="bridged-demo-") as tmp:
        try:
            run(_demo(demo, Path(tmp)))
        except BridgedError as exc:
            demo.say("demo", str(exc), ok=False)
            if json_out:
                print(json.dumps({"ok": False, "steps": demo.steps}))
    sys.stdout.flush()
    return demo.ok
