"""Cluster names through the daemon's proxies on the stand-in cluster, as a user types them.

The relay pod resolves like a pod of its namespace (RelayKubelet.cluster_dns: a hosts file of
the cluster's names in a mount namespace, files only). The daemon resolves with files only
too (``localhost``), so no DNS query leaves the machine whatever the proxies decide. curl
(SOCKS5 with remote names, HTTP absolute-form), requests, httpx and a gRPC client reach the
Service ``web`` by short name, ``web.team-a`` and its full name, and the headless Service
``db``'s pod by ``db-0.db``; each answer names the pod that served it. ``localhost`` stays
on the laptop.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import httpx
import pytest
import requests

from bridged.control.client import ControlClient
from bridged.localrun import DaemonProcess

from ..grpckit.clients import EchoClient
from ..helpers import Daemon, assert_clean_log, eventually, free_port
from ..resolver import Resolver
from .apiserver import KubeApiServer, PodHandle, PodSandbox
from .relay_kubelet import RelayKubelet, cluster_dns_unavailable
from .test_grpc_on_kube import EchoReplicas
from .test_intercept_on_kube import (  # noqa: F401  (fixtures)
    NS,
    Replicas,
    _identity_app,
    _ready_pods,
    cluster,
)

WAIT = 20.0  # seconds: a bound on every exchange
WEB_NAMES = ("web", f"web.{NS}", f"web.{NS}.svc.cluster.local")


@pytest.fixture
async def apps(cluster: KubeApiServer, stubs: SimpleNamespace) -> SimpleNamespace:  # noqa: F811
    """``web`` (a Deployment behind a Service), ``db`` (a StatefulSet behind a headless
    Service) and ``echo`` (gRPC), made before the relay starts; the relay pod resolves
    cluster names."""
    reason = cluster_dns_unavailable()
    if reason:
        pytest.skip(reason)
    kubelet: RelayKubelet = cluster.kubelet_hook  # type: ignore[attr-defined]
    kubelet.cluster_dns = True
    # the laptop's loopback server is on 127.0.0.1: the relay refusing it shows ``localhost``
    # went direct (the cluster's addresses are 127.96.x and 127.244.x)
    kubelet.extra_args = ["--deny", "127.0.0.1/32"]
    http, grpc_pods = Replicas(cluster), EchoReplicas(cluster, stubs)

    async def others(sandbox: PodSandbox) -> PodHandle:
        app = (sandbox.pod["metadata"].get("labels") or {}).get("app")
        return await (grpc_pods if app == "echo" else http)(sandbox)

    kubelet.others = others
    for name, port in (("web", 8080), ("echo", 9000)):
        labels = {"app": name}
        cluster.apply({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                         {"name": name, "image": f"{name}:1",
                          "ports": [{"name": "app", "containerPort": port}]}]}}}})
        cluster.apply({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"selector": labels, "ports": [{"name": "app", "port": 80,
                                                    "targetPort": "app"}]}})
    db = {"app": "db"}
    cluster.apply({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "db", "namespace": NS},
                   "spec": {"clusterIP": "None", "selector": db,
                            "ports": [{"name": "app", "port": 8080}]}})
    cluster.apply({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": NS},
        "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": db},
                 "template": {"metadata": {"labels": db}, "spec": {"containers": [
                     {"name": "db", "image": "db:1",
                      "ports": [{"name": "app", "containerPort": 8080}]}]}}}})

    async def ready() -> bool:
        return all(len(_ready_pods(cluster, app)) == 1 for app in ("web", "echo", "db"))

    await eventually(ready, within=30, what="web, echo and db ready")
    return SimpleNamespace(web=_ready_pods(cluster, "web")[0], db=_ready_pods(cluster, "db")[0],
                           echo=_ready_pods(cluster, "echo")[0], stubs=stubs)


@pytest.fixture
async def proxies(tmp_path: Path, apps: SimpleNamespace,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SimpleNamespace]:
    """A daemon resolving with files only, connected to the stand-in; its proxies."""
    laptop = Resolver(tmp_path / "laptop-ns" / "resolver")
    laptop.hosts("127.0.0.1 localhost\n")
    process = DaemonProcess(tmp_path / "laptop")
    with monkeypatch.context() as patch:  # DaemonProcess runs sys.executable: the wrapper
        patch.setattr(sys, "executable", str(laptop.wrapper))
        await process.start()
    try:
        daemon = Daemon(process, ControlClient(process.socket))
        connected = await daemon.acli("connect")
        assert connected.returncode == 0, connected.stderr
        answer = await daemon.call("POST", "proxy", {})
        assert answer["namespace"] == NS
        yield SimpleNamespace(socks=answer["socks"], http=answer["http"], daemon=daemon)
    finally:
        await process.stop()
    assert_clean_log(process.log_path)


async def curl(*args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", str(WAIT), *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
    out, err = await asyncio.wait_for(proc.communicate(), WAIT + 5)
    assert proc.returncode == 0, (args, err.decode())
    answer: dict[str, Any] = json.loads(out)
    return answer


def _requests_get(url: str, proxy: str) -> dict[str, Any]:
    session = requests.Session()
    session.trust_env = False  # the proxy given, not the environment's
    with session:
        answer = session.get(url, proxies={"http": proxy}, timeout=WAIT)
        answer.raise_for_status()
        seen: dict[str, Any] = answer.json()
        return seen


async def _httpx_get(url: str, proxy: str) -> dict[str, Any]:
    async with httpx.AsyncClient(proxy=proxy, trust_env=False, timeout=WAIT) as client:
        answer = await client.get(url)
        answer.raise_for_status()
        seen: dict[str, Any] = answer.json()
        return seen


async def test_http_clients_reach_a_service_and_a_headless_pod_by_name(
        apps: SimpleNamespace, proxies: SimpleNamespace) -> None:
    http = f"http://{proxies.http}"
    targets = [(f"http://{name}/{i}", apps.web) for i, name in enumerate(WEB_NAMES)]
    targets.append(("http://db-0.db:8080/pod", apps.db))
    for url, pod in targets:
        path = "/" + url.split("/", 3)[3]
        for args in (("--socks5-hostname", proxies.socks), ("-x", http)):
            answer = await curl(*args, url)
            assert (answer["who"], answer["path"]) == (pod, path), (url, args)
        answer = await asyncio.to_thread(_requests_get, url, http)
        assert (answer["who"], answer["path"]) == (pod, path), (url, "requests")
        answer = await _httpx_get(url, http)
        assert (answer["who"], answer["path"]) == (pod, path), (url, "httpx")


async def test_grpc_reaches_a_service_by_name_through_the_http_proxy(
        apps: SimpleNamespace, proxies: SimpleNamespace) -> None:
    options = (("grpc.http_proxy", f"http://{proxies.http}"),
               ("grpc.use_local_subchannel_pool", 1))
    for name in ("echo", f"echo.{NS}", f"echo.{NS}.svc.cluster.local"):
        async with grpc.aio.insecure_channel(f"{name}:80", options=options) as ch:
            answer = await EchoClient(ch, apps.stubs).call((), b"hello", deadline=WAIT)
        assert answer.who == apps.echo, name


async def test_localhost_stays_on_the_laptop(
        apps: SimpleNamespace, proxies: SimpleNamespace) -> None:
    port = free_port()
    app = await _identity_app("127.0.0.1", port, "laptop")
    try:
        for args in (("--socks5-hostname", proxies.socks), ("-x", f"http://{proxies.http}")):
            answer = await curl(*args, f"http://localhost:{port}/here")
            assert (answer["who"], answer["path"]) == ("laptop", "/here"), args
    finally:
        await app.cleanup()
