"""The proxies of a kube bridge on the stand-in cluster: which bridge they serve, in which
namespace.

Reaching a Service by short name, ``NAME.NS``, full name and a headless pod by name, with a
relay pod whose resolver files stand for the cluster's DNS, is tests/kube/test_cluster_names.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridged.control.client import ControlClient
from bridged.localrun import DaemonProcess, RelayProcess

from ..helpers import Daemon, assert_clean_log, port_closed
from .apiserver import Context, KubeApiServer
from .relay_kubelet import RelayKubelet

NS = "team-a"
WAIT = 30.0  # seconds: a bound on each exchange


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubeApiServer]:
    kubelet = RelayKubelet(tmp_path / "node")
    async with KubeApiServer(kubelet=kubelet, namespaces=[NS], bookmark_interval=0.2) as api:
        kubelet.attach(api)
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", [
            Context("admin", api.admin, NS, auth="cert"),
        ])
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        yield api


@pytest.fixture
async def laptop(tmp_path: Path, cluster: KubeApiServer) -> AsyncIterator[Daemon]:
    process = await DaemonProcess(tmp_path / "laptop").start()
    yield Daemon(process, ControlClient(process.socket))
    await process.stop()
    assert_clean_log(process.log_path)


async def test_the_proxies_serve_the_kube_bridge_unless_told(
        cluster: KubeApiServer, laptop: Daemon, relay: RelayProcess) -> None:
    kube = await laptop.call("POST", "bridges", {})
    relay.authorize(await laptop.public_key())
    await laptop.call("POST", "bridges", {"url": relay.url, "name": "local"})
    # two bridges: the proxies serve the kube one unless told
    answer = await laptop.call("POST", "proxy", {})
    assert (answer["bridge"], answer["namespace"]) == (kube["name"], NS)
    assert await laptop.call("POST", "proxy", {"bridge": kube["name"]}) == answer
    local = await laptop.call("POST", "proxy", {"bridge": "local"})
    assert local["namespace"] == "" and local["socks"] != answer["socks"]
    # they serve: a loopback server named by address (an IP outside the cluster's ranges:
    # connected directly, no DNS asked)
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(*_split(answer["http"]))
        writer.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 200 ")
        writer.write(b"ping")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), WAIT) == b"ping"
        writer.close()
    finally:
        server.close()
    # the kube bridge leaves: its proxies close with it; asking again is one clear error
    await laptop.call("DELETE", f"bridges/{kube['name']}")
    for address in (answer["socks"], answer["http"]):
        assert await port_closed(_split(address)[1]), address
    done = await laptop.acli("proxy", "--bridge", kube["name"])
    assert done.returncode != 0 and done.stderr.strip() == \
        f"bridged: no bridge named {kube['name']!r}"


def _split(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
    writer.close()
