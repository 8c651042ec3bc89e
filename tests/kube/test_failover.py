"""The relay's pod replaced or gone for good, on the stand-in cluster (issue 10, points 2 and 4):
forwards work again within seconds of the new pod becoming Ready, because the daemon watches
the relay's pods and connects on the Ready event (not on a backoff timer)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridged.control.client import ControlClient
from bridged.localrun import DaemonProcess

from ..helpers import Daemon, assert_clean_log
from .apiserver import Context, KubeApiServer
from .failover import RelayPods, delete_pod, echo_on, echo_roundtrip
from .relay_kubelet import RelayKubelet

NS = "team-a"
#: the promise (issue 10): working again within this many seconds of the new pod being Ready
FAILOVER_SECONDS = 5.0


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubeApiServer]:
    kubelet = RelayKubelet(tmp_path / "node")
    async with KubeApiServer(kubelet=kubelet, namespaces=[NS], bookmark_interval=0.2) as api:
        kubelet.attach(api)
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", [
            Context("admin", api.admin, NS, auth="cert")])
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        yield api
    for log in (tmp_path / "node").glob("*/relay.log"):
        assert_clean_log(log)


@pytest.fixture
async def laptop(tmp_path: Path, cluster: KubeApiServer) -> AsyncIterator[Daemon]:
    process = await DaemonProcess(tmp_path / "laptop").start()
    yield Daemon(process, ControlClient(process.socket))
    await process.stop()
    assert_clean_log(process.log_path)


async def _exposed_echo(cluster: KubeApiServer, laptop: Daemon) -> tuple[Any, int]:
    """A Service whose ClusterIP echoes, exposed on the laptop: (the server, the local port)."""
    svc = cluster.apply({"apiVersion": "v1", "kind": "Service",
                         "metadata": {"name": "redis", "namespace": NS},
                         "spec": {"selector": {"app": "redis"}, "ports": [{"port": 6379}]}})
    server = await echo_on(svc["spec"]["clusterIP"], 6379)
    await laptop.call("POST", "bridges", {})
    forward = (await laptop.call("POST", "forwards", {"target": "redis"}))["forwards"][0]
    return server, int(forward["local_port"])


async def test_a_replaced_relay_pod_is_reached_on_its_ready_event(
    cluster: KubeApiServer, laptop: Daemon
) -> None:
    server, port = await _exposed_echo(cluster, laptop)
    try:
        await echo_roundtrip(port)
        with RelayPods(cluster, NS) as pods:
            old = pods.current()
            deleted = delete_pod(cluster, NS, old)
            new, ready = await pods.next_ready({old}, within=60)
            # one connection, made once the new pod is Ready: it waits in the forward for the
            # bridge to come back, and its bytes must come back whole
            _, first_byte = await echo_roundtrip(port, within=30)
        bridge = (await laptop.status())["bridges"][0]
        reconnect = bridge["last_reconnect"]
        took = first_byte - ready
        assert took < FAILOVER_SECONDS, (
            f"working again {took:.2f}s after pod {new} was Ready "
            f"(deleted→Ready {ready - deleted:.2f}s, reconnect {reconnect})")
        # the mechanism: the reconnect came from the pod's Ready event, to that pod, after it
        assert reconnect["trigger"] == "pod-ready" and reconnect["pod"] == new, reconnect
        assert reconnect["at"] >= ready - 0.05  # the daemon could not know before the store
        assert bridge["state"] == "connected" and bridge["connects"] == 2
    finally:
        server.close()
        await server.wait_closed()

