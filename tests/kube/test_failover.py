"""The relay's pod replaced or gone for good, on the stand-in cluster (issue 10, points 2 and 4):
forwards work again within seconds of the new pod becoming Ready, because the daemon watches
the relay's pods and connects on the Ready event (not on a backoff timer)."""

# ruff: noqa: F811  (``cluster``, the fixture imported below, is every test's parameter)
from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridged.control.client import ControlClient
from bridged.kube import manifests as m
from bridged.localrun import DaemonProcess
from bridged.redirect.takeover import record_of

from ..helpers import Daemon, assert_clean_log, eventually, free_port
from .apiserver import Context, KubeApiServer
from .failover import RelayPods, delete_pod, echo_on, echo_roundtrip
from .relay_kubelet import RelayKubelet
from .test_intercept_on_kube import (  # the same cluster: the relay, replicas, kube-proxy
    _comparable,
    _identity_app,
    _requests,
    cluster,  # noqa: F401  (a fixture)
)

NS = "team-a"
#: the promise (issue 10): working again within this many seconds of the new pod being Ready
FAILOVER_SECONDS = 5.0


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
    orders = await _orders(cluster)
    url = f"http://{orders['spec']['clusterIP']}/"
    alice_port = free_port()
    app = await _identity_app("127.0.0.1", alice_port, "alice")
    server, port = await _exposed_echo(cluster, laptop)
    try:
        made = await laptop.acli("intercept", "orders", "--port", f"{alice_port}:80",
                                 "--header", "x-dev=alice", "--via", "takeover")
        assert made.returncode == 0, made.stderr
        await echo_roundtrip(port)
        with RelayPods(cluster, NS) as pods:
            old = pods.current()
            deleted = delete_pod(cluster, NS, old)
            new, ready = await pods.next_ready({old}, within=60)
            # one connection, made once the new pod is Ready: it waits in the forward for the
            # bridge to come back, and its bytes must come back whole
            _, first_byte = await echo_roundtrip(port, within=30)

            async def alice_again() -> bool:  # each request a new connection, as a client's
                try:
                    return await _requests(url, [ALICE]) == ["alice"]
                except (AssertionError, aiohttp.ClientError):
                    return False  # sent while the relay was away: a 502 or a reset

            await eventually(alice_again, within=30, what="the intercept back")
            intercepted = time.time()
        bridge = (await laptop.status())["bridges"][0]
        reconnect = bridge["last_reconnect"]
        for what, took in (("forward", first_byte - ready), ("intercept", intercepted - ready)):
            assert took < FAILOVER_SECONDS, (
                f"the {what} worked again {took:.2f}s after pod {new} was Ready "
                f"(deleted→Ready {ready - deleted:.2f}s, reconnect {reconnect})")
        # the mechanism: the reconnect came from the pod's Ready event, to that pod, after it
        assert reconnect["trigger"] == "pod-ready" and reconnect["pod"] == new, reconnect
        assert reconnect["at"] >= ready - 0.05  # the daemon could not know before the store
        assert bridge["state"] == "connected" and bridge["connects"] == 2

        # the old relay, stopping meanwhile, undid its own takeover: not the new one's, nor
        # did it remove the shadow the new one uses (once its pod is gone, it changes nothing)
        async def old_pod_gone() -> bool:
            return cluster.get("pods", NS, old) is None

        await eventually(old_pod_gone, within=30, what=f"pod {old} gone")
        assert await _requests(url, [ALICE, {}, ALICE]) == ["alice", _replica(cluster), "alice"]
    finally:
        server.close()
        await server.wait_closed()
        await app.cleanup()


ALICE = {"x-dev": "alice"}


def _replica(cluster: KubeApiServer) -> str:
    (name,) = [p["metadata"]["name"] for p in cluster.list("pods", NS)
               if p["metadata"]["name"].startswith("orders-")]
    return str(name)


#: the relay's routing lease (LeaseSettings.ttl_seconds): how long a daemon waits, disconnected,
#: before it restores a Service no relay can restore any more
LEASE_SECONDS = 8.0


async def _orders(cluster: KubeApiServer) -> dict[str, Any]:
    """One replica of ``orders`` behind its Service; the Service as created."""
    labels = {"app": "orders"}
    cluster.apply({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "orders", "namespace": NS},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                     {"name": "app", "image": "orders:1",
                      "ports": [{"name": "web", "containerPort": 8080}]}]}}}})
    service = cluster.apply({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "orders", "namespace": NS, "labels": labels},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": 80,
                                                 "targetPort": "web"}]}})

    async def replica_ready() -> bool:
        return any(p["metadata"]["name"].startswith("orders-") and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (p.get("status") or {}).get("conditions") or [])
            for p in cluster.list("pods", NS))

    await eventually(replica_ready, within=30, what="the orders replica")
    return service


def _scale_relay(cluster: KubeApiServer, replicas: int) -> None:
    dep = cluster.get("deployments", NS, "bridged-relay")
    assert dep is not None
    dep["spec"]["replicas"] = replicas
    cluster.apply(dep)


async def test_a_takeover_whose_relay_died_for_good_is_restored_by_the_daemon(
    cluster: KubeApiServer, laptop: Daemon
) -> None:
    before = await _orders(cluster)
    url = f"http://{before['spec']['clusterIP']}/"
    port = free_port()
    app = await _identity_app("127.0.0.1", port, "alice")
    try:
        await laptop.call("POST", "bridges", {})
        made = await laptop.acli("intercept", "orders", "--port", f"{port}:80",
                                 "--via", "takeover")
        assert made.returncode == 0, made.stderr
        assert await _requests(url, [{}]) == ["alice"]

        # the relay is OOM-killed (no goodbye: it cannot restore) and its Deployment scaled
        # to zero: nothing would ever give the Service back
        kubelet: RelayKubelet = cluster.kubelet_hook  # type: ignore[attr-defined]
        ((_, relay),) = kubelet.processes.items()
        relay.kill()
        await relay.wait()
        killed = time.time()
        _scale_relay(cluster, 0)

        async def restored() -> bool:
            return cluster.get("services", NS, "bridged-origin-orders") is None and \
                _comparable(cluster.get("services", NS, "orders")) == _comparable(before)

        await eventually(restored, within=LEASE_SECONDS + 6, what="the Service restored")
        took = time.time() - killed
        assert took >= LEASE_SECONDS - 0.5  # not before a relay could have come back
        assert (await _requests(url, [{}]))[0].startswith("orders-")  # the Service works
        status = await laptop.status()
        assert [r["service"] for r in status["bridges"][0]["restored"]] == ["orders"]
        (intercept,) = status["intercepts"]
        assert intercept["state"] != "active" and "restored" in intercept["error"]

        # a relay comes back later: the intercept takes the Service over again, from the
        # original (the record is the Service as created), and leaving gives it back whole
        _scale_relay(cluster, 1)

        async def alice_again() -> bool:
            try:
                return await _requests(url, [{}]) == ["alice"]
            except AssertionError:
                return False

        await eventually(alice_again, within=30, what="the intercept taken over again")
        record = record_of(cluster.get("services", NS, "orders") or {})
        assert record is not None and record.selector == before["spec"]["selector"]
        assert (await laptop.status())["bridges"][0]["restored"] == []
        left = await laptop.acli("leave", "orders")
        assert left.returncode == 0, left.stderr
        await eventually(restored, within=10, what="the Service restored on leave")
    finally:
        await app.cleanup()


async def test_a_stopping_relay_leaves_the_takeover_its_successor_made(
    cluster: KubeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replaced relay pod stops while its successor already took the Service over again
    (the same record: the same original). Undoing what it remembers must leave the new
    takeover and its shadow alone; a restore without a record (a daemon whose relay is gone,
    ``bridged clean``) still gives the Service back whole."""
    from bridged.kube import redirects
    from bridged.kube.client import Kube

    before = await _orders(cluster)
    relay = {m.NAME_LABEL: m.RELAY, m.MANAGED_BY: "bridged"}
    async with await Kube.connect() as kube:
        monkeypatch.setattr(redirects, "INSTANCE", "old-relay")
        old = await redirects.take_over(kube, "orders", relay, lambda service: {80: 41000})
        monkeypatch.setattr(redirects, "INSTANCE", "new-relay")  # finds it stale, redoes it
        await redirects.take_over(kube, "orders", relay, lambda service: {80: 42000})
        taken = cluster.get("services", NS, "orders")
        shadow = cluster.get("services", NS, old.record.shadow)
        assert shadow is not None

        monkeypatch.setattr(redirects, "INSTANCE", "old-relay")
        result = await redirects.restore(kube, "orders", old.record)
        assert result.taken_again, result
        assert _comparable(cluster.get("services", NS, "orders")) == _comparable(taken)
        assert _comparable(cluster.get("services", NS, old.record.shadow)) == \
            _comparable(shadow)

        result = await redirects.restore(kube, "orders", attempts=1)  # the daemon's
        assert not result.taken_again and not result.changed_by_others, result
    assert _comparable(cluster.get("services", NS, "orders")) == _comparable(before)
    assert cluster.get("services", NS, old.record.shadow) is None


async def test_without_the_right_to_watch_pods_the_backoff_reconnects(
    cluster: KubeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kube user who may list the pods but not watch them (a Role made for an older
    bridged): reconnects come from the backoff's timer, and the log says why in one line."""
    dev = cluster.add_user("dev")
    cluster.grant(dev, NS, [
        {"apiGroups": ["*"], "verbs": ["*"], "resources": [
            "services", "secrets", "configmaps", "serviceaccounts", "deployments", "roles",
            "rolebindings", "endpointslices"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["get", "create"]}])
    monkeypatch.setenv("KUBECONFIG", str(cluster.write_kubeconfig(
        tmp_path / "dev-kubeconfig", [Context("dev", dev, NS)])))
    process = await DaemonProcess(tmp_path / "dev").start()
    daemon = Daemon(process, ControlClient(process.socket))
    try:
        server, port = await _exposed_echo(cluster, daemon)
        try:
            with RelayPods(cluster, NS) as pods:
                old = pods.current()
                delete_pod(cluster, NS, old)
                await pods.next_ready({old}, within=60)
                await echo_roundtrip(port, within=30)
        finally:
            server.close()
            await server.wait_closed()
        reconnect = (await daemon.status())["bridges"][0]["last_reconnect"]
        assert reconnect["trigger"] == "timer", reconnect
        said = [line for line in process.log_path.read_text().splitlines()
                if "cannot watch the relay's pods" in line]
        assert len(said) == 1 and "forbidden" in said[0].lower(), said
    finally:
        await process.stop()
        assert_clean_log(process.log_path)
