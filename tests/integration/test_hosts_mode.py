"""Hosts mode with a real daemon, relay and stand-in cluster: ``expose --hosts`` names each
Service on its own loopback address in a hosts file of the test's own (never the machine's),
and the block goes on unexpose, on SIGTERM, and at the next start after a kill -9."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridged.control.client import ControlClient
from bridged.daemon.hosts import HOSTS_FILE_ENV, UNPRIVILEGED_ENV, block_pids
from bridged.localrun import DaemonProcess

from ..helpers import Daemon, assert_clean_log, eventually
from ..kube.apiserver import Context, KubeApiServer
from ..kube.relay_kubelet import RelayKubelet

NS = "team-a"
ORIGINAL = b"127.0.0.1 localhost\r\n::1 localhost\r\n\r\n# the developer's own\r\n10.1.2.3 box"


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubeApiServer]:
    kubelet = RelayKubelet(tmp_path / "node")
    async with KubeApiServer(kubelet=kubelet, namespaces=[NS], bookmark_interval=0.2) as api:
        kubelet.attach(api)
        api.kubelet_hook = kubelet  # type: ignore[attr-defined]
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", [
            Context("admin", api.admin, NS, auth="cert")])
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        yield api


@pytest.fixture
def hosts_file(tmp_path: Path) -> Path:
    path = tmp_path / "hosts"  # CRLF and no final newline: both must survive
    path.write_bytes(ORIGINAL)
    return path


@pytest.fixture
async def services(cluster: KubeApiServer) -> AsyncIterator[dict[str, str]]:
    """orders (two ports) and redis, each echoing on its ClusterIP: the cluster's side."""
    ips, servers = {}, []
    for name, ports in (("orders", [8080, 9090]), ("redis", [6379])):
        svc = cluster.apply({"apiVersion": "v1", "kind": "Service",
                             "metadata": {"name": name, "namespace": NS},
                             "spec": {"ports": [{"name": f"p{p}", "port": p} for p in ports]}})
        ips[name] = svc["spec"]["clusterIP"]
        for port in ports:
            servers.append(await asyncio.start_server(_echo, ips[name], port))
    try:
        yield ips
    finally:
        for server in servers:
            server.close()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _daemon(home: Path, hosts: Path, **env: str) -> Daemon:
    process = await DaemonProcess(home, extra_env={HOSTS_FILE_ENV: str(hosts), **env}).start()
    return Daemon(process, ControlClient(process.socket))


async def _roundtrip(host: str, port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    writer.write(payload)
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


def _block(path: Path) -> dict[str, list[str]]:
    """The block's lines: address → names."""
    text = path.read_text()
    inside = text.split("# bridged: begin", 1)[1].split("# bridged: end", 1)[0]
    return {line.split()[0]: line.split()[1:] for line in inside.splitlines()[1:] if line}


def _bytes(path: Path) -> bytes:
    return path.read_bytes()


def _pids(path: Path) -> list[int | None]:
    return block_pids(path.read_text())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_each_service_gets_its_address_and_names_until_unexposed_and_stopped(
    tmp_path: Path, services: dict[str, str], hosts_file: Path
) -> None:
    laptop = await _daemon(tmp_path / "laptop", hosts_file)
    try:
        await laptop.call("POST", "bridges", {})
        made = await laptop.acli("expose", "orders", "redis", "--hosts", "--json")
        assert made.returncode == 0, made.stderr
        forwards = json.loads(made.stdout)
        block = _block(hosts_file)
        by_service = {names[0]: address for address, names in block.items()}
        assert block[by_service["orders"]] == [
            "orders", "orders.team-a", "orders.team-a.svc", "orders.team-a.svc.cluster.local"]
        assert block[by_service["redis"]][-1] == "redis.team-a.svc.cluster.local"
        assert len(set(by_service.values())) == 2  # one address per Service
        assert all(a.startswith("127.13.") for a in by_service.values())
        # each port of a Service on its address, at the port the cluster's clients dial
        assert sorted((f["local_host"], f["local_port"]) for f in forwards) == sorted(
            [(by_service["orders"], 8080), (by_service["orders"], 9090),
             (by_service["redis"], 6379)])
        pid = laptop.process.proc.pid  # type: ignore[union-attr]
        assert _bytes(hosts_file).startswith(
            ORIGINAL + f"\r\n# bridged: begin (daemon pid {pid};".encode())
        payload = os.urandom(256 * 1024)
        for service, port in (("orders", 9090), ("redis", 6379)):
            assert await _roundtrip(by_service[service], port, payload) == payload

        redis = next(f["name"] for f in forwards if f["service"] == "redis")
        gone = await laptop.acli("unexpose", redis)
        assert gone.returncode == 0, gone.stderr
        assert list(_block(hosts_file)) == [by_service["orders"]]
        with pytest.raises(OSError):  # its listener went with its line
            await _roundtrip(by_service["redis"], 6379, b"x")
    finally:
        assert await laptop.process.stop(signal.SIGTERM) == 0
    assert _sha(hosts_file) == hashlib.sha256(ORIGINAL).hexdigest()
    assert_clean_log(laptop.process.log_path)


async def test_a_daemon_killed_hard_leaves_a_block_the_next_start_removes(
    tmp_path: Path, services: dict[str, str], hosts_file: Path
) -> None:
    home = tmp_path / "laptop"
    first = await _daemon(home, hosts_file)
    second = None
    try:
        await first.call("POST", "bridges", {})
        made = await first.acli("expose", "redis", "--hosts", "--json")
        assert made.returncode == 0, made.stderr
        address = json.loads(made.stdout)[0]["local_host"]
        os.kill(first.process.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
        await first.process.proc.wait()  # type: ignore[union-attr]
        assert _pids(hosts_file) == [first.process.proc.pid]  # left behind

        second = await _daemon(home, hosts_file)

        async def restored() -> list[int | None] | None:
            pids = _pids(hosts_file)
            return pids if pids == [second.process.proc.pid] else None  # type: ignore

        await eventually(restored, within=20, what="the old block gone, the restored one")
        assert _block(hosts_file) == {address: ["redis", "redis.team-a", "redis.team-a.svc",
                                                "redis.team-a.svc.cluster.local"]}
        payload = os.urandom(64 * 1024)
        assert await _roundtrip(address, 6379, payload) == payload
    finally:
        if second is not None:
            await second.process.stop()
        await first.process.stop()
    assert _sha(hosts_file) == hashlib.sha256(ORIGINAL).hexdigest()


async def test_without_the_right_to_edit_the_file_nothing_changes(
    tmp_path: Path, services: dict[str, str], hosts_file: Path
) -> None:
    os.chmod(hosts_file, 0o444)
    # root may write anything: the daemon is told to judge by the permission bits alone
    laptop = await _daemon(tmp_path / "laptop", hosts_file, **{UNPRIVILEGED_ENV: "1"})
    try:
        await laptop.call("POST", "bridges", {})
        refused = await laptop.acli("expose", "redis", "--hosts")
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines() == [
            f"bridged: --hosts needs root to edit {hosts_file}: run the daemon as root or use "
            "the proxies (bridged run)"]
        assert _sha(hosts_file) == hashlib.sha256(ORIGINAL).hexdigest()
        assert (await laptop.status())["forwards"] == []
        with pytest.raises(OSError):  # no listener on a new address either
            await _roundtrip("127.13.0.1", 6379, b"x")
    finally:
        await laptop.process.stop()
    assert_clean_log(laptop.process.log_path)
