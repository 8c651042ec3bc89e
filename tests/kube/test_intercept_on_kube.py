"""Intercepting a Service end to end: the stand-in cluster runs three replicas of ``orders``
that say who they are, kube-proxy serves the Service's ClusterIP, and developers' daemons
intercept it through the relay (takeover). What a user checks: each request lands where it
should, and the Service comes back exactly as it was."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridged.control.client import ControlClient
from bridged.kube import manifests as m
from bridged.localrun import DaemonProcess
from bridged.redirect.takeover import ANNOTATION

from ..crds import CILIUM, HTTPROUTE, load_crd
from ..helpers import Daemon, assert_clean_log, eventually, free_port
from .apiserver import Context, KubeApiServer, PodHandle, PodSandbox
from .controllers import Controller
from .relay_kubelet import RelayKubelet
from .store import Change

NS = "team-a"


async def _identity_app(host: str, port: int, name: str) -> web.AppRunner:
    """An HTTP server that answers every request with who it is and what it received."""

    async def handle(request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"who": name, "path": request.path, "bytes": size,
                                  "sha256": digest.hexdigest()})

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.2)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


class Replicas:
    """The application's pods: each containerPort served on the pod's (loopback) IP."""

    def __init__(self, api: KubeApiServer) -> None:
        self.api = api

    async def __call__(self, sandbox: PodSandbox) -> PodHandle:
        pod = self.api.get("pods", sandbox.namespace, sandbox.name) or sandbox.pod
        ip = pod["status"]["podIP"]
        runners = [await _identity_app(ip, port, sandbox.name)
                   for port in sandbox.container_ports]

        async def stop() -> None:
            for runner in runners:
                await runner.cleanup()

        return PodHandle(stop=stop)


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubeApiServer]:
    kubelet = RelayKubelet(tmp_path / "node")
    async with KubeApiServer(kubelet=kubelet, namespaces=[NS], bookmark_interval=0.2,
                             kube_proxy=True) as api:
        kubelet.attach(api)
        kubelet.others = Replicas(api)
        api.kubelet_hook = kubelet  # type: ignore[attr-defined]
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", [
            Context("admin", api.admin, NS, auth="cert")])
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        yield api
    for log in (tmp_path / "node").glob("*/relay.log"):
        assert_clean_log(log)  # no traceback, no task died, in any relay that ran


@pytest.fixture
async def orders(cluster: KubeApiServer) -> dict[str, Any]:
    """Three replicas behind a Service whose targetPort is a name; the Service as created."""
    labels = {"app": "orders"}
    cluster.apply({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "orders", "namespace": NS},
        "spec": {"replicas": 3, "selector": {"matchLabels": labels},
                 # two containers: the app, and a sidecar with the admin port
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                     {"name": "app", "image": "orders:1",
                      "ports": [{"name": "web", "containerPort": 8080}]},
                     {"name": "admin", "image": "admin-sidecar:1",
                      "ports": [{"name": "admin", "containerPort": 9090}]}]}}}})
    service = cluster.apply({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "orders", "namespace": NS, "labels": labels},
        "spec": {"selector": labels, "ports": [
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "admin", "port": 9090, "targetPort": "admin"}]}})
    async def three_ready() -> bool:
        return len(_ready_pods(cluster, "orders")) == 3

    await eventually(three_ready, within=30, what="three ready replicas")
    return service


def _ready_pods(cluster: KubeApiServer, app: str) -> list[str]:
    return [p["metadata"]["name"] for p in cluster.list("pods", NS)
            if (p["metadata"].get("labels") or {}).get("app") == app
            and any(c["type"] == "Ready" and c["status"] == "True"
                    for c in p.get("status", {}).get("conditions") or [])]


def _developer(who: str) -> Any:
    """A fixture: ``who``'s laptop — a daemon, and a local copy of the service that answers
    with ``who``; yields (daemon, local port)."""

    @pytest.fixture
    async def laptop(tmp_path: Path, cluster: KubeApiServer
                     ) -> AsyncIterator[tuple[Daemon, int]]:
        process = await DaemonProcess(tmp_path / who).start()
        daemon = Daemon(process, ControlClient(process.socket))
        port = free_port()
        app = await _identity_app("127.0.0.1", port, who)
        yield daemon, port
        await app.cleanup()
        await process.stop()
        assert_clean_log(process.log_path)

    return laptop


alice = _developer("alice")
bob = _developer("bob")


class Mesh(Controller):
    """What a GAMMA mesh's controller does that bridged waits for: it accepts each HTTPRoute
    whose parent is a Service (status.parents[].conditions Accepted=True), as it changes."""

    name = "mesh"
    CONTROLLER = "mesh.example.com/gamma"

    def __init__(self, api: KubeApiServer) -> None:
        super().__init__(api.registry, api.recorder)
        self.start()

    def on_change(self, change: Change) -> None:
        if change.resource.plural == "httproutes" and change.type != "DELETED":
            self.enqueue((change.obj["metadata"]["namespace"], change.obj["metadata"]["name"]))

    async def reconcile(self, key: tuple[str, str]) -> None:
        res = self.res("httproutes")
        route = self.store.peek(res, *key)
        if route is None or route.get("status"):
            return
        parents = [{"parentRef": ref, "controllerName": self.CONTROLLER,
                    "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                    "message": "", "observedGeneration": 1,
                                    "lastTransitionTime": "2026-11-26T00:00:00Z"}]}
                   for ref in route["spec"]["parentRefs"]]
        self.write_status(res, route, {"parents": parents})


def _comparable(obj: dict[str, Any] | None) -> dict[str, Any]:
    """The whole object but what every write changes."""
    assert obj is not None
    meta = {k: v for k, v in obj["metadata"].items()
            if k not in ("resourceVersion", "managedFields")}
    return {**obj, "metadata": meta}


async def _requests(url: str, headers: list[dict[str, str]], *,
                    body: bytes | None = None) -> list[str]:
    """Send one request per header set, in order, on one keep-alive connection."""
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        seen = []
        for h in headers:
            async with session.post(url, headers=h, data=body) as response:
                assert response.status == 200, await response.text()
                seen.append((await response.json())["who"])
        return seen


ALICE = {"x-dev": "alice"}
BOB = {"x-dev": "bob"}
NOBODY: dict[str, str] = {}


async def test_two_developers_and_the_cluster_share_a_service_then_it_is_restored(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],
    bob: tuple[Daemon, int],
) -> None:
    url = f"http://{orders['spec']['clusterIP']}/orders"
    replicas = set(_ready_pods(cluster, "orders"))
    before = cluster.get("services", NS, "orders")
    assert set(await _requests(url, [NOBODY] * 3)) <= replicas  # kube-proxy works

    (a, a_port), (b, b_port) = alice, bob
    for daemon in (a, b):
        await daemon.call("POST", "bridges", {})
    made = await a.acli("intercept", "orders", "--port", f"{a_port}:http",
                        "--header", "x-dev=alice", "--via", "takeover", "--json")
    assert made.returncode == 0, made.stderr
    made = await b.acli("intercept", "orders", "--port", f"{b_port}:80",
                        "--header", "x-dev=bob", "--via", "takeover")
    assert made.returncode == 0, made.stderr
    assert "intercepting Service orders port 80 (via takeover)" in made.stdout

    taken = cluster.get("services", NS, "orders")
    assert taken is not None and taken["spec"]["selector"] == {
        m.NAME_LABEL: m.RELAY, m.MANAGED_BY: "bridged"}
    assert all(isinstance(p["targetPort"], int) for p in taken["spec"]["ports"])  # no names
    assert ANNOTATION in taken["metadata"]["annotations"]
    shadow = cluster.get("services", NS, "bridged-origin-orders")
    assert shadow is not None and shadow["spec"]["selector"] == {"app": "orders"}

    # three kinds of requests interleaved on each keep-alive connection, 12 connections
    pattern = [ALICE, NOBODY, BOB, NOBODY, ALICE, BOB, NOBODY]
    results = await asyncio.gather(*(_requests(url, pattern) for _ in range(12)))
    for seen in results:
        for h, who in zip(pattern, seen, strict=True):
            if h is ALICE:
                assert who == "alice"
            elif h is BOB:
                assert who == "bob"
            else:
                assert who in replicas
    unmatched = Counter(who for seen in results for who in seen if who in replicas)
    assert sum(unmatched.values()) == 12 * 3

    # the port nobody intercepts passes through the relay to the original pods, each
    # connection to any of them (the shadow Service balances per connection): 30
    # connections miss one of three replicas with a chance of 3 * (2/3)^30, about 1e-5
    admin = f"http://{orders['spec']['clusterIP']}:9090/admin"
    reached = await asyncio.gather(*(_requests(admin, [ALICE, NOBODY]) for _ in range(30)))
    assert {who for seen in reached for who in seen} == replicas

    # a body crosses intact both ways: to a developer and to the cluster
    payload = os.urandom(3 * 1024 * 1024)
    for h in (ALICE, NOBODY):
        async with aiohttp.ClientSession() as session, \
                session.post(url, headers=h, data=payload) as response:
            answer = await response.json()
        assert answer["sha256"] == hashlib.sha256(payload).hexdigest()

    # alice's laptop dies: her requests go to the cluster at once, bob keeps his
    os.kill(a.process.pid, signal.SIGKILL)
    await a.process.proc.wait()  # type: ignore[union-attr]

    async def alices_go_to_the_cluster() -> bool:
        try:
            return (await _requests(url, [ALICE]))[0] in replicas
        except (AssertionError, aiohttp.ClientError):
            return False  # in flight to her session when it ended: a 502 or a reset

    await eventually(alices_go_to_the_cluster, within=15)
    seen = await _requests(url, [BOB, ALICE, NOBODY])
    assert seen[0] == "bob" and seen[1] in replicas and seen[2] in replicas
    assert cluster.get("services", NS, "orders")["spec"]["selector"] != {"app": "orders"}

    # bob leaves: the last intercept is gone, the Service is back exactly, the shadow gone
    left = await b.acli("leave", "orders")
    assert left.returncode == 0, left.stderr
    async def shadow_gone() -> bool:
        return cluster.get("services", NS, "bridged-origin-orders") is None

    await eventually(shadow_gone, within=10, what="the shadow Service removed")
    assert _comparable(cluster.get("services", NS, "orders")) == _comparable(before)
    assert set(await _requests(url, [BOB, NOBODY])) <= replicas


async def _intercept(daemon: Daemon, port: int, *args: str) -> None:
    await daemon.call("POST", "bridges", {})
    made = await daemon.acli("intercept", "orders", "--port", f"{port}:http", "--via",
                             "takeover", *args)
    assert made.returncode == 0, made.stderr


def _taken_over(cluster: KubeApiServer) -> bool:
    svc = cluster.get("services", NS, "orders") or {}
    return ANNOTATION in (svc["metadata"].get("annotations") or {})


async def _restored(cluster: KubeApiServer, before: dict[str, Any]) -> bool:
    return cluster.get("services", NS, "bridged-origin-orders") is None and \
        _comparable(cluster.get("services", NS, "orders")) == _comparable(before)


async def test_a_dead_laptop_gives_the_service_back(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],
) -> None:
    (a, port), before = alice, cluster.get("services", NS, "orders")
    assert before is not None
    await _intercept(a, port)  # no matcher: every request
    url = f"http://{orders['spec']['clusterIP']}/"
    assert await _requests(url, [NOBODY, ALICE]) == ["alice", "alice"]
    os.kill(a.process.pid, signal.SIGKILL)
    await a.process.proc.wait()  # type: ignore[union-attr]
    await eventually(lambda: _restored(cluster, before), within=8,  # the lease: 8 s
                     what="the Service restored")
    assert set(await _requests(url, [NOBODY])) <= set(_ready_pods(cluster, "orders"))


def _relay_process(cluster: KubeApiServer) -> tuple[str, Any]:
    kubelet: RelayKubelet = cluster.kubelet_hook  # type: ignore[attr-defined]
    (pod, process), = kubelet.processes.items()
    return pod, process


async def _takeover_then_relay_crash(cluster: KubeApiServer, alice: tuple[Daemon, int]
                                     ) -> tuple[str, dict[str, Any]]:
    """alice intercepts, then the relay dies without a goodbye: the takeover stays behind.
    Returns the relay's pod and the Service as it was before."""
    (a, port), before = alice, cluster.get("services", NS, "orders")
    assert before is not None
    await _intercept(a, port, "--header", "x-dev=alice")
    pod, relay = _relay_process(cluster)
    relay.kill()
    await relay.wait()
    return pod, before


async def test_a_takeover_left_by_a_crashed_relay_is_restored_when_it_restarts(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],
) -> None:
    a = alice[0]
    pod, before = await _takeover_then_relay_crash(cluster, alice)
    await a.call("DELETE", "bridges/" + (await a.status())["bridges"][0]["name"])
    assert _taken_over(cluster)
    await cluster.restart_pod(NS, pod)
    await eventually(lambda: _restored(cluster, before), within=30,
                     what="the stale takeover restored")


async def test_clean_restores_a_takeover_when_the_relay_is_gone(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],
) -> None:
    a = alice[0]
    _, before = await _takeover_then_relay_crash(cluster, alice)
    cleaned = await a.acli("clean", "--json")
    assert cleaned.returncode == 0, cleaned.stderr
    assert "Service orders restored" in cleaned.stdout
    assert await _restored(cluster, before)


async def test_a_change_made_during_the_takeover_is_kept_and_reported(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],
) -> None:
    a, port = alice
    await _intercept(a, port, "--header", "x-dev=alice")
    # someone re-applies the Service from git meanwhile, with a new selector
    theirs = {"apiVersion": "v1", "kind": "Service",
              "metadata": {"name": "orders", "namespace": NS, "labels": {"app": "orders"}},
              "spec": {"selector": {"app": "orders", "track": "stable"}, "ports": [
                  {"name": "http", "port": 80, "targetPort": "web"}]}}
    cluster.apply(theirs)
    left = await a.acli("leave", "orders")
    assert left.returncode == 0, left.stderr
    assert "Service orders was changed by someone else during the takeover (selector, " \
           "ports): their change is kept" in left.stdout
    now = cluster.get("services", NS, "orders")
    assert now is not None
    assert now["spec"]["selector"] == theirs["spec"]["selector"]
    assert [p["targetPort"] for p in now["spec"]["ports"]] == ["web"]
    assert ANNOTATION not in (now["metadata"].get("annotations") or {})
    assert cluster.get("services", NS, "bridged-origin-orders") is None


async def test_intercepting_what_cannot_be_intercepted_says_why(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],
) -> None:
    a, port = alice
    await a.call("POST", "bridges", {})
    cluster.apply({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "external", "namespace": NS},
                   "spec": {"ports": [{"port": 80}]}})
    for args, message in (
        (("nope", "--port", str(port)), "Service nope not found in namespace team-a"),
        (("orders", "--port", str(port)), "Service orders has several ports: 80 (http), "
                                          "9090 (admin)"),
        (("orders", "--port", f"{port}:81"), "Service orders has no port '81'"),
        (("external", "--port", str(port), "--via", "takeover"),
         "Service external has no selector"),
    ):
        result = await a.acli("intercept", *args)
        assert result.returncode != 0, result.stdout
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert not _taken_over(cluster)
    assert cluster.get("services", NS, "external")["spec"].get("selector") is None  # type: ignore[index]


@pytest.mark.parametrize(("crd", "via", "plural", "name"), [
    (HTTPROUTE, "auto", "httproutes", "bridged-orders-80"),  # auto: HTTPRoutes are served
    (CILIUM, "cilium", "ciliumenvoyconfigs", "bridged-orders"),  # one per Service
])
async def test_route_strategies_send_only_matching_requests_and_never_touch_the_service(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],
    bob: tuple[Daemon, int], crd: str, via: str, plural: str, name: str,
) -> None:
    # the stand-in validates every object against the published CRD schema, as a real
    # API server with the CRD installed would
    cluster.install_crd(load_crd(crd))
    mesh = Mesh(cluster) if plural == "httproutes" else None
    try:
        await _route_strategy(cluster, orders, alice, bob, via, plural, name)
    finally:
        if mesh is not None:
            await mesh.stop()


async def _route_strategy(cluster: KubeApiServer, orders: dict[str, Any],
                          alice: tuple[Daemon, int], bob: tuple[Daemon, int], via: str,
                          plural: str, name: str) -> None:
    before = cluster.get("services", NS, "orders")
    (a, a_port), (b, b_port) = alice, bob
    for daemon, port, who in ((a, a_port, "alice"), (b, b_port, "bob")):
        await daemon.call("POST", "bridges", {})
        made = await daemon.acli("intercept", "orders", "--port", f"{port}:80", "--header",
                                 f"x-dev={who}", "--via", via, "--json")
        assert made.returncode == 0, made.stderr
        assert f'"via": "{"gateway" if via == "auto" else via}"' in made.stdout

    route = cluster.get(plural, NS, name)
    assert route is not None
    backends = {s["metadata"]["labels"]["bridged.dev/intercept"]: s
                for s in cluster.list("services", NS)
                if "bridged.dev/intercept" in (s["metadata"].get("labels") or {})}
    assert len(backends) == 2
    assert _comparable(cluster.get("services", NS, "orders")) == _comparable(before)
    # the relay's own way to the original pods: a shadow Service, not the redirected one
    assert cluster.get("services", NS, "bridged-origin-orders")["spec"]["selector"] == \
        {"app": "orders"}  # type: ignore[index]

    # what the mesh does with a matching request: it sends it to that intercept's backend
    status = await a.status()
    alice_id = status["intercepts"][0]["id"]
    backend_ip = backends[alice_id]["spec"]["clusterIP"]
    assert await _requests(f"http://{backend_ip}/", [ALICE, ALICE]) == ["alice", "alice"]

    # alice leaves: her rule and backend go, bob's stay
    assert (await a.acli("leave", "orders")).returncode == 0
    route = cluster.get(plural, NS, name)
    assert route is not None and alice_id not in str(route["spec"])
    assert not any(alice_id in s["metadata"]["name"] or
                   (s["metadata"].get("labels") or {}).get("bridged.dev/intercept") == alice_id
                   for s in cluster.list("services", NS))

    # bob's laptop dies: every object of the redirect goes
    os.kill(b.process.pid, signal.SIGKILL)
    await b.process.proc.wait()  # type: ignore[union-attr]

    async def all_gone() -> bool:
        return not cluster.list(plural, NS) and not any(
            "bridged.dev/redirect-of" in (s["metadata"].get("labels") or {})
            for s in cluster.list("services", NS))

    await eventually(all_gone, within=10, what="the routes and backends removed")
    assert _comparable(cluster.get("services", NS, "orders")) == _comparable(before)


async def test_a_whole_port_tcp_intercept_of_one_port_leaves_the_other_to_the_cluster(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],
) -> None:
    a, port = alice
    await a.call("POST", "bridges", {})
    made = await a.acli("intercept", "orders", "--port", f"{port}:admin", "--tcp")
    assert made.returncode == 0, made.stderr
    assert "every connection" in made.stdout
    ip = orders["spec"]["clusterIP"]
    assert await _requests(f"http://{ip}:9090/", [NOBODY, ALICE]) == ["alice", "alice"]
    assert set(await _requests(f"http://{ip}/", [NOBODY, ALICE])) <= \
        set(_ready_pods(cluster, "orders"))
    (intercept,) = (await a.status())["intercepts"]
    assert (intercept["service"], intercept["service_port"], intercept["via"],
            intercept["mode"], intercept["state"]) == ("orders", 9090, "takeover", "tcp",
                                                       "active")
    assert 0 < intercept["lease_left_seconds"] <= 8  # renewed by the daemon every 2 s


async def test_sigterm_gives_the_service_back_at_once_and_a_restart_takes_it_again(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],
) -> None:
    (a, port), before = alice, cluster.get("services", NS, "orders")
    await _intercept(a, port, "--header", "x-dev=alice")
    assert _taken_over(cluster)
    a.process.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    assert await asyncio.wait_for(a.process.proc.wait(), 15) == 0  # type: ignore[union-attr]
    # restored before the daemon exited: no lease had to run out
    assert await _restored(cluster, before)

    # systemd starts it again: the saved intercept comes back, with the same id
    await a.process.start()

    async def active_again() -> bool:
        status = await a.status()
        return bool(status["intercepts"]) and status["intercepts"][0]["state"] == "active"

    await eventually(active_again, within=30, what="the intercept restored")
    assert _taken_over(cluster)
    url = f"http://{orders['spec']['clusterIP']}/"
    assert await _requests(url, [ALICE]) == ["alice"]


async def test_auto_falls_back_to_takeover_where_no_mesh_accepts_the_route(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],
) -> None:
    # the Gateway API installed for ingress only: HTTPRoutes are served, nobody acts on a
    # route whose parent is a Service
    cluster.install_crd(load_crd(HTTPROUTE))
    kubelet: RelayKubelet = cluster.kubelet_hook  # type: ignore[attr-defined]
    kubelet.extra_args = ["--mesh-accept-seconds", "1"]
    a, port = alice
    await a.call("POST", "bridges", {})
    explicit = await a.acli("intercept", "orders", "--port", f"{port}:http", "--header",
                            "x-dev=alice", "--via", "gateway")
    assert explicit.returncode == 1
    assert "no mesh accepted HTTPRoute" in explicit.stderr
    assert "--via takeover" in explicit.stderr
    assert not cluster.list("httproutes", NS)  # the route that nobody took is gone
    made = await a.acli("intercept", "orders", "--port", f"{port}:http", "--header",
                        "x-dev=alice", "--json")
    assert made.returncode == 0, made.stderr
    assert '"via": "takeover"' in made.stdout
    assert _taken_over(cluster) and not cluster.list("httproutes", NS)
    assert await _requests(f"http://{orders['spec']['clusterIP']}/", [ALICE]) == ["alice"]


# --- an intercept is live when the command returns ------------------------------------------

#: the EndpointSlice controller and kube-proxy of a real cluster: a takeover reaches new
#: connections a second or so after the Service is written
LAG_SECONDS = 1.0


async def _one_per_connection(url: str, headers: dict[str, str], n: int) -> list[str]:
    """``n`` requests, each on a new connection (kube-proxy balances per connection)."""
    return [(await _requests(url, [headers]))[0] for _ in range(n)]


async def test_an_intercept_is_live_when_the_command_returns(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],
) -> None:
    assert cluster.endpointslices is not None
    cluster.endpointslices.lag = LAG_SECONDS
    a, port = alice
    await a.call("POST", "bridges", {})
    asked_at = time.time()
    made = await a.acli("intercept", "orders", "--port", f"{port}:http", "--header",
                        "x-dev=alice", "--via", "takeover")
    assert made.returncode == 0, made.stderr
    # at once, each on a new connection: every matched request reaches the laptop
    url = f"http://{orders['spec']['clusterIP']}/orders"
    assert await _one_per_connection(url, ALICE, 20) == ["alice"] * 20
    assert set(await _one_per_connection(url, NOBODY, 5)) <= set(_ready_pods(cluster, "orders"))
    # the CLI said what it waited for (not a terminal: one line per step, on stderr)
    assert "… waiting for Service orders to send its traffic to the relay" in made.stderr

    # status counts what reached the laptop: the unmatched requests are not hers
    async def counted() -> Any:
        (intercept,) = (await a.status())["intercepts"]
        return intercept if intercept["requests"] == 20 else None

    intercept = await eventually(counted, within=10, what="20 requests counted")
    assert intercept["last_request_at"] > asked_at


async def test_the_team_s_requests_keep_working_while_a_restore_takes_effect(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],
) -> None:
    """The mirror of the takeover's lag: after a leave, kube-proxy still sends new
    connections to the relay for a moment; the relay passes them on to the original pods
    until the slices no longer list it, instead of refusing them."""
    assert cluster.endpointslices is not None
    cluster.endpointslices.lag = LAG_SECONDS
    a, port = alice
    await a.call("POST", "bridges", {})
    made = await a.acli("intercept", "orders", "--port", f"{port}:http", "--header",
                        "x-dev=alice", "--via", "takeover")
    assert made.returncode == 0, made.stderr
    left = await a.acli("leave", "orders")
    assert left.returncode == 0, left.stderr
    url = f"http://{orders['spec']['clusterIP']}/orders"
    pods = set(_ready_pods(cluster, "orders"))
    # at once, each on a new connection: every request answered, by the original pods
    answered = await _one_per_connection(url, NOBODY, 10) + \
        await _one_per_connection(url, ALICE, 10)
    assert set(answered) <= pods, answered
    assert not _taken_over(cluster)


async def test_a_whole_port_intercept_is_live_when_its_endpointslices_say_so(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],
) -> None:
    assert cluster.endpointslices is not None
    cluster.endpointslices.lag = LAG_SECONDS
    # what kube-proxy reads: the relay may read it too (its Role grants it, or this does)
    cluster.grant(f"system:serviceaccount:{NS}:{m.RELAY}", NS, [{
        "apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
        "verbs": ["get", "list"]}], kind="ServiceAccount")
    a, port = alice
    await a.call("POST", "bridges", {})
    made = await a.acli("intercept", "orders", "--port", f"{port}:admin", "--tcp", "--json")
    assert made.returncode == 0, made.stderr
    ip = orders["spec"]["clusterIP"]
    assert await _one_per_connection(f"http://{ip}:9090/", NOBODY, 10) == ["alice"] * 10


async def test_a_redirect_that_never_becomes_live_is_undone_with_a_clear_error(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],
) -> None:
    assert cluster.kube_proxy is not None
    kubelet: RelayKubelet = cluster.kubelet_hook  # type: ignore[attr-defined]
    kubelet.extra_args = ["--redirect-live-seconds", "2"]
    (a, port), before = alice, cluster.get("services", NS, "orders")
    assert before is not None
    await a.call("POST", "bridges", {})
    cluster.kube_proxy.stale.add((NS, "orders"))  # the takeover never takes effect
    made = await a.acli("intercept", "orders", "--port", f"{port}:http", "--header",
                        "x-dev=alice", "--via", "takeover", "--json")
    assert made.returncode == 1
    line, = made.stderr.splitlines()  # one line, no progress (--json), no traceback
    assert line.startswith("bridged: Service orders did not send its traffic to the relay "
                           "within 2 s: "), line
    assert f"probes to its ClusterIP {orders['spec']['clusterIP']}:80 met an answer " \
           "'HTTP/1.1 200 OK' (" in line  # the replicas' answer to the probe
    assert json.loads(made.stdout)["error"]["code"] == "refused"  # one JSON document
    assert await _restored(cluster, before)  # before the answer, not after a lease
    assert (await a.status())["intercepts"] == []


async def test_a_shadow_service_that_reaches_nothing_leaves_the_service_alone(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],
) -> None:
    # the relay passes unmatched requests to the original pods through a new shadow Service:
    # until that one works, taking the Service over would break everyone else's requests
    assert cluster.kube_proxy is not None
    kubelet: RelayKubelet = cluster.kubelet_hook  # type: ignore[attr-defined]
    kubelet.extra_args = ["--redirect-live-seconds", "2"]
    (a, port), before = alice, cluster.get("services", NS, "orders")
    await a.call("POST", "bridges", {})
    cluster.kube_proxy.frozen = True
    made = await a.acli("intercept", "orders", "--port", f"{port}:http", "--header",
                        "x-dev=alice", "--via", "takeover", "--json")
    assert made.returncode == 1
    assert made.stderr == "bridged: Service orders: its shadow Service bridged-origin-orders " \
        "did not reach the original pods on port 80 within 2 s (connection refused); the " \
        "Service was left as it was\n"
    assert await _restored(cluster, before)  # type: ignore[arg-type]


async def test_the_pass_through_ports_count_against_the_relay_s_connection_limit(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],
) -> None:
    """A takeover moves every port to the relay; the ports nobody intercepts are spliced to
    the pods, and their connections count against ``--max-connections`` like the router's."""
    kubelet: RelayKubelet = cluster.kubelet_hook  # type: ignore[attr-defined]
    kubelet.extra_args = ["--max-connections", "2"]
    a, port = alice
    await a.call("POST", "bridges", {})
    made = await a.acli("intercept", "orders", "--port", f"{port}:http", "--header",
                        "x-dev=alice", "--via", "takeover")
    assert made.returncode == 0, made.stderr
    ip = orders["spec"]["clusterIP"]
    held = [await asyncio.open_connection(ip, 9090) for _ in range(2)]
    for reader, writer in held:  # each one admitted: an answer from a pod's admin port
        writer.write(b"GET /admin HTTP/1.1\r\nHost: orders\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).startswith(b"HTTP/1.1 200")
    reader, writer = await asyncio.open_connection(ip, 9090)
    writer.write(b"GET /admin HTTP/1.1\r\nHost: orders\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 10) == b""  # refused: closed unanswered
    writer.close()
    for _, w in held:
        w.close()

    async def admitted() -> bool:  # the slots come back once the relay saw the closes
        try:
            found = await _requests(f"http://{ip}:9090/admin", [NOBODY])
        except aiohttp.ServerDisconnectedError:
            return False  # still refused
        return set(found) <= set(_ready_pods(cluster, "orders"))

    assert await eventually(admitted, within=10, what="a connection admitted again")
