"""A mirror intercept under the gateway strategy, end to end on the stand-in cluster with the
published HTTPRoute CRD installed (every write validated against its schema): the route
carries ``RequestMirror`` to a mirror backend on the relay's mirror port; the relay answers
each copy there itself, never touching the original pods (the mesh sent them the request
already); the copies reach the laptop, marked; leaving restores everything."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridged.control.client import ControlClient
from bridged.localrun import DaemonProcess
from bridged.protocol import MIRROR_HEADER

from ..crds import HTTPROUTE, load_crd
from ..helpers import Daemon, assert_clean_log, eventually, free_port
from .apiserver import KubeApiServer
from .test_intercept_on_kube import NS, Mesh, _comparable, cluster, orders  # noqa: F401


class Laptop:
    """The developer's local service: records each request it gets (headers, body hash)."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], str]] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append(({k.lower(): v for k, v in request.headers.items()},
                         hashlib.sha256(body).hexdigest()))
        self.arrived.set()
        return web.json_response({"who": "laptop"})


@pytest.fixture
async def alice(tmp_path: Path, cluster: KubeApiServer  # noqa: F811
                ) -> AsyncIterator[tuple[Daemon, int, Laptop]]:
    process = await DaemonProcess(tmp_path / "alice").start()
    daemon = Daemon(process, ControlClient(process.socket))
    laptop = Laptop()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", laptop.handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.2)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield daemon, port, laptop
    await runner.cleanup()
    await process.stop()
    assert_clean_log(process.log_path)


@pytest.fixture
async def mesh(cluster: KubeApiServer) -> AsyncIterator[Mesh]:  # noqa: F811
    cluster.install_crd(load_crd(HTTPROUTE))
    found = Mesh(cluster)
    yield found
    await found.stop()


def _redirect_objects(cluster: KubeApiServer) -> list[str]:  # noqa: F811
    return [f"{o['kind']} {o['metadata']['name']}" for plural in ("httproutes", "services")
            for o in cluster.list(plural, NS)
            if "bridged.dev/redirect-of" in (o["metadata"].get("labels") or {})]


async def test_the_mesh_mirrors_to_the_relay_which_answers_copies_and_sends_them_to_the_laptop(
        cluster: KubeApiServer, orders: dict[str, Any],  # noqa: F811
        alice: tuple[Daemon, int, Laptop], mesh: Mesh) -> None:
    daemon, local, laptop = alice
    before = cluster.get("services", NS, "orders")
    await daemon.call("POST", "bridges", {})
    made = await daemon.acli("intercept", "orders", "--port", f"{local}:80", "--mirror",
                             "--header", "x-mirror=yes", "--via", "gateway")
    assert made.returncode == 0, made.stderr

    route = cluster.get("httproutes", NS, "bridged-orders-80")
    assert route is not None
    mirror_filter = {"type": "RequestMirror", "requestMirror": {"backendRef": {
        "group": "", "kind": "Service", "name": "bridged-orders-80-mirror", "port": 80}}}
    rules = route["spec"]["rules"]
    # the mirror's matches to the Service itself, copied; everything else to it, not copied
    assert [(r["backendRefs"][0]["name"], r.get("filters")) for r in rules] == [
        ("orders", [mirror_filter]), ("orders", None)]
    assert rules[0]["matches"] == [{"headers": [
        {"type": "Exact", "name": "x-mirror", "value": "yes"}]}]
    backend = cluster.get("services", NS, "bridged-orders-80-mirror")
    assert backend is not None
    assert _comparable(cluster.get("services", NS, "orders")) == _comparable(before)

    # the mesh: the request to the Service (its pods answer), its copy to the mirror backend
    service_ip = cluster.get("services", NS, "orders")["spec"]["clusterIP"]  # type: ignore[index]
    mirror_ip = backend["spec"]["clusterIP"]
    body = b"order " * 5000
    async with aiohttp.ClientSession() as session:
        for n in range(3):
            headers = {"x-mirror": "yes", "x-n": str(n)}
            async with session.post(f"http://{service_ip}/orders", headers=headers,
                                    data=body) as answer:
                assert answer.status == 200
                assert (await answer.json())["who"].startswith("orders-")
            copy_headers = {**headers, "host": "orders-shadow:80"}  # as Envoy marks it
            async with session.post(f"http://{mirror_ip}/orders", headers=copy_headers,
                                    data=body) as copied:
                # answered by the relay itself: never forwarded to the original pods, which
                # would have answered 200 with who they are (the request reached them once)
                assert copied.status == 204, await copied.text()
                assert await copied.read() == b""

    async def three_copies() -> bool:
        return len(laptop.got) == 3

    await eventually(three_copies, within=15, what="the three copies at the laptop")
    digest = hashlib.sha256(body).hexdigest()
    assert sorted(h["x-n"] for h, _ in laptop.got) == ["0", "1", "2"]
    for headers, got in laptop.got:
        assert got == digest
        assert headers.get(MIRROR_HEADER)
        assert headers["host"] == "orders:80"  # the client's Host, the mesh's mark taken off

    # alice leaves: the route, the mirror backend and the shadow go; the Service as it was
    assert (await daemon.acli("leave", "orders")).returncode == 0

    async def all_gone() -> bool:
        return not _redirect_objects(cluster)

    await eventually(all_gone, within=10, what="the route and backends removed")
    assert cluster.get("services", NS, "bridged-origin-orders") is None
    assert _comparable(cluster.get("services", NS, "orders")) == _comparable(before)


async def test_a_mirror_on_a_grpc_port_is_refused_with_nothing_written(
        cluster: KubeApiServer, orders: dict[str, Any],  # noqa: F811
        alice: tuple[Daemon, int, Laptop], mesh: Mesh) -> None:
    daemon, local, _ = alice
    cluster.apply({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "greeter", "namespace": NS},
        "spec": {"selector": {"app": "orders"}, "ports": [
            {"name": "grpc", "port": 50051, "targetPort": 8080, "appProtocol": "grpc"}]}})
    await daemon.call("POST", "bridges", {})
    # (without --protocol http the daemon finds the local server is not HTTP/2 first)
    made = await daemon.acli("intercept", "greeter", "--port", f"{local}:50051", "--mirror",
                             "--protocol", "http", "--via", "gateway")
    assert made.returncode != 0
    assert "a mirror copies HTTP/1.1 requests only" in made.stderr, made.stderr
    assert "Traceback" not in made.stderr
    assert not _redirect_objects(cluster)
