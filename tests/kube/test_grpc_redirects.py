"""The gateway strategy on a gRPC port, end to end on the stand-in cluster with the published
GRPCRoute CRD installed (every write validated against its schema, as a real API server with
the CRD would): developers' intercepts become a GRPCRoute whose rules send their calls to
backends that tell the mesh to speak HTTP/2 to the relay; leaving and a dead laptop take it
all back; what a GRPCRoute cannot match is refused with nothing written."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from bridged.control.client import ControlClient
from bridged.localrun import DaemonProcess

from ..crds import CILIUM, HTTPROUTE, load_crd
from ..helpers import Daemon, assert_clean_log, eventually
from .apiserver import KubeApiServer
from .controllers import Controller
from .store import Change
from .test_intercept_on_kube import NS, _comparable, cluster  # noqa: F401 (a fixture)

GRPCROUTE = "gateway-api-v1.6.1/gateway.networking.k8s.io_grpcroutes.yaml"
PORT = 50051


class GammaMesh(Controller):
    """What a GAMMA mesh's controller does that bridged waits for: it accepts each HTTPRoute
    and GRPCRoute whose parent is a Service, as it changes."""

    name = "mesh"
    CONTROLLER = "mesh.example.com/gamma"
    ROUTES = ("httproutes", "grpcroutes")

    def __init__(self, api: KubeApiServer) -> None:
        super().__init__(api.registry, api.recorder)
        self.start()

    def on_change(self, change: Change) -> None:
        if change.resource.plural in self.ROUTES and change.type != "DELETED":
            self.enqueue((change.resource.plural, change.obj["metadata"]["namespace"],
                          change.obj["metadata"]["name"]))

    async def reconcile(self, key: tuple[str, str, str]) -> None:
        plural, namespace, name = key
        res = self.res(plural)
        route = self.store.peek(res, namespace, name)
        if route is None or route.get("status"):
            return
        parents = [{"parentRef": ref, "controllerName": self.CONTROLLER,
                    "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                    "message": "", "observedGeneration": 1,
                                    "lastTransitionTime": "2026-11-26T00:00:00Z"}]}
                   for ref in route["spec"]["parentRefs"]]
        self.write_status(res, route, {"parents": parents})


@pytest.fixture
async def mesh(cluster: KubeApiServer) -> AsyncIterator[GammaMesh]:  # noqa: F811
    cluster.install_crd(load_crd(HTTPROUTE))
    cluster.install_crd(load_crd(GRPCROUTE))
    found = GammaMesh(cluster)
    yield found
    await found.stop()


@pytest.fixture
def greeter(cluster: KubeApiServer) -> dict[str, Any]:  # noqa: F811
    """A gRPC Service: its port says so with ``appProtocol``; the Service as created."""
    return cluster.apply({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "greeter", "namespace": NS, "labels": {"app": "greeter"}},
        "spec": {"selector": {"app": "greeter"}, "ports": [
            {"name": "grpc", "port": PORT, "targetPort": 9000, "appProtocol": "grpc"}]}})


def _developer(who: str) -> Any:
    """A fixture: ``who``'s laptop — a daemon, and a local gRPC server (HTTP/2 cleartext,
    on loopback); yields (daemon, local port)."""

    @pytest.fixture
    async def laptop(tmp_path: Path, cluster: KubeApiServer  # noqa: F811
                     ) -> AsyncIterator[tuple[Daemon, int]]:
        process = await DaemonProcess(tmp_path / who).start()
        daemon = Daemon(process, ControlClient(process.socket))
        server = grpc.aio.server()
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        yield daemon, port
        await server.stop(0)
        await process.stop()
        assert_clean_log(process.log_path)

    return laptop


alice = _developer("alice")
bob = _developer("bob")


async def _intercept(daemon: Daemon, port: int, *args: str) -> Any:
    await daemon.call("POST", "bridges", {})
    return await daemon.acli("intercept", "greeter", "--port", f"{port}:{PORT}",
                             "--via", "gateway", *args)


def _backends(cluster: KubeApiServer) -> dict[str, dict[str, Any]]:  # noqa: F811
    return {s["metadata"]["labels"]["bridged.dev/intercept"]: s
            for s in cluster.list("services", NS)
            if "bridged.dev/intercept" in (s["metadata"].get("labels") or {})}


def _made_by_bridged(cluster: KubeApiServer) -> list[str]:  # noqa: F811
    """Every object a redirect made, of the kinds the cluster serves."""
    served = [p for p in ("grpcroutes", "httproutes", "ciliumenvoyconfigs", "services")
              if p in cluster.registry._by_plural]
    return [f"{plural}/{o['metadata']['name']}" for plural in served
            for o in cluster.list(plural, NS)
            if "bridged.dev/redirect-of" in (o["metadata"].get("labels") or {})]


async def test_a_grpc_port_gets_a_grpc_route_and_gets_it_all_back(
    cluster: KubeApiServer, mesh: GammaMesh, greeter: dict[str, Any],  # noqa: F811
    alice: tuple[Daemon, int], bob: tuple[Daemon, int],
) -> None:
    (a, a_port), (b, b_port) = alice, bob
    for daemon, port, who in ((a, a_port, "alice"), (b, b_port, "bob")):
        made = await _intercept(daemon, port, "--header", f"x-dev={who}", "--json")
        assert made.returncode == 0, made.stderr
        assert '"via": "gateway"' in made.stdout
    alice_id = (await a.status())["intercepts"][0]["id"]
    bob_id = (await b.status())["intercepts"][0]["id"]

    # a GRPCRoute (the stand-in validated it against the CRD's schema), no HTTPRoute
    assert not cluster.list("httproutes", NS)
    route = cluster.get("grpcroutes", NS, f"bridged-greeter-{PORT}")
    assert route is not None
    assert route["spec"]["parentRefs"] == [{"group": "", "kind": "Service", "name": "greeter",
                                            "port": PORT}]
    backends = _backends(cluster)
    assert set(backends) == {alice_id, bob_id}
    rules = route["spec"]["rules"]
    assert [(r.get("matches"), r["backendRefs"]) for r in rules] == [
        ([{"headers": [{"type": "Exact", "name": "x-dev", "value": who}]}],
         [{"group": "", "kind": "Service", "name": backends[i]["metadata"]["name"],
           "port": PORT}])
        for i, who in ((alice_id, "alice"), (bob_id, "bob"))
    ] + [(None, [{"group": "", "kind": "Service", "name": "greeter",
                  "port": PORT}])]  # the rest: the Service's own pods
    # each backend selects the relay on its port for the Service, and says gRPC: the mesh
    # speaks HTTP/2 to the relay
    for backend in backends.values():
        (port,) = backend["spec"]["ports"]
        assert (port["port"], port["appProtocol"], port["name"]) == (PORT, "grpc", "grpc")
        assert backend["spec"]["selector"]["app.kubernetes.io/name"] == "bridged-relay"
    assert _comparable(cluster.get("services", NS, "greeter")) == _comparable(greeter)

    # alice leaves: her rule and backend go, bob's stay
    assert (await a.acli("leave", "greeter")).returncode == 0
    route = cluster.get("grpcroutes", NS, f"bridged-greeter-{PORT}")
    assert route is not None and len(route["spec"]["rules"]) == 2
    assert alice_id not in str(route["spec"]) and set(_backends(cluster)) == {bob_id}

    # bob's laptop dies: the route, the backends and the shadow go
    os.kill(b.process.pid, signal.SIGKILL)
    await b.process.proc.wait()  # type: ignore[union-attr]

    async def all_gone() -> bool:
        return not _made_by_bridged(cluster)

    await eventually(all_gone, within=15, what="the GRPCRoute and its backends removed")
    assert _comparable(cluster.get("services", NS, "greeter")) == _comparable(greeter)


async def test_a_path_on_a_grpc_port_is_refused_and_nothing_is_written(
    cluster: KubeApiServer, mesh: GammaMesh, greeter: dict[str, Any],  # noqa: F811
    alice: tuple[Daemon, int],
) -> None:
    a, port = alice
    refused = await _intercept(a, port, "--header", "x-dev=alice", "--path", "/api")
    assert refused.returncode != 0, refused.stdout
    assert "Traceback" not in refused.stderr
    assert "Service greeter port 50051 (its appProtocol is grpc): a GRPCRoute matches gRPC " \
           "methods and headers, not a path" in refused.stderr, refused.stderr
    assert "--via takeover" in refused.stderr
    assert not _made_by_bridged(cluster), _made_by_bridged(cluster)
    assert _comparable(cluster.get("services", NS, "greeter")) == _comparable(greeter)
    # the same developer's next, expressible intercept is served
    made = await _intercept(a, port, "--header", "x-dev=alice")
    assert made.returncode == 0, made.stderr
    assert cluster.get("grpcroutes", NS, f"bridged-greeter-{PORT}") is not None


async def test_auto_takes_the_gateway_for_a_grpc_port_only_where_grpc_routes_are_served(
    cluster: KubeApiServer, greeter: dict[str, Any],  # noqa: F811
) -> None:
    from bridged.kube.client import Kube
    from bridged.kube.redirects import resolve_intercept

    cluster.apply({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "web", "namespace": NS},
                   "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})
    async with await Kube.connect() as kube:
        # the Gateway API before 1.1: HTTPRoutes, no GRPCRoutes
        cluster.install_crd(load_crd(HTTPROUTE))
        assert await resolve_intercept(kube, "web", "", "auto") == (80, "gateway", "")
        assert await resolve_intercept(kube, "greeter", "", "auto") == (PORT, "takeover", "grpc")
        assert await resolve_intercept(kube, "web", "", "auto", "grpc") == (80, "takeover", "")
        assert await resolve_intercept(kube, "web", "", "auto", "h2c") == (80, "gateway", "")
        cluster.install_crd(load_crd(GRPCROUTE))
        assert await resolve_intercept(kube, "greeter", "", "auto") == (PORT, "gateway", "grpc")


async def _intercept_then_relay_crash(cluster: KubeApiServer,  # noqa: F811
                                      alice: tuple[Daemon, int]) -> str:
    """alice intercepts, then the relay dies without a goodbye: the GRPCRoute, its backend
    and the shadow stay behind, the bridge is gone. Returns the relay's pod."""
    from .test_intercept_on_kube import _relay_process

    a, port = alice
    made = await _intercept(a, port, "--header", "x-dev=alice")
    assert made.returncode == 0, made.stderr
    pod, relay = _relay_process(cluster)
    relay.kill()
    await relay.wait()
    await a.call("DELETE", "bridges/" + (await a.status())["bridges"][0]["name"])
    left = _made_by_bridged(cluster)
    assert f"grpcroutes/bridged-greeter-{PORT}" in left and len(left) == 3, left
    return pod


async def test_a_grpc_route_left_by_a_crashed_relay_goes_when_it_restarts(
    cluster: KubeApiServer, mesh: GammaMesh, greeter: dict[str, Any],  # noqa: F811
    alice: tuple[Daemon, int],
) -> None:
    pod = await _intercept_then_relay_crash(cluster, alice)
    await cluster.restart_pod(NS, pod)

    async def all_gone() -> bool:
        return not _made_by_bridged(cluster)

    await eventually(all_gone, within=30, what="the stale GRPCRoute removed")
    assert _comparable(cluster.get("services", NS, "greeter")) == _comparable(greeter)


async def test_clean_removes_a_grpc_route_when_the_relay_is_gone(
    cluster: KubeApiServer, mesh: GammaMesh, greeter: dict[str, Any],  # noqa: F811
    alice: tuple[Daemon, int],
) -> None:
    await _intercept_then_relay_crash(cluster, alice)
    cleaned = await alice[0].acli("clean", "--json")
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"GRPCRoute bridged-greeter-{PORT}" in cleaned.stdout, cleaned.stdout
    assert not _made_by_bridged(cluster), _made_by_bridged(cluster)
    assert _comparable(cluster.get("services", NS, "greeter")) == _comparable(greeter)


async def test_the_cilium_strategy_on_a_grpc_port_speaks_http2_to_the_relay_and_the_pods(
    cluster: KubeApiServer, greeter: dict[str, Any], alice: tuple[Daemon, int],  # noqa: F811
) -> None:
    cluster.install_crd(load_crd(CILIUM))  # every write validated against its schema
    a, port = alice
    await a.call("POST", "bridges", {})
    made = await a.acli("intercept", "greeter", "--port", f"{port}:{PORT}", "--via", "cilium",
                        "--header", "x-dev=alice")
    assert made.returncode == 0, made.stderr
    config = cluster.get("ciliumenvoyconfigs", NS, "bridged-greeter")
    assert config is not None
    (backend,) = _backends(cluster).values()
    assert backend["spec"]["ports"][0]["appProtocol"] == "grpc"
    clusters = {r["name"]: r for r in config["spec"]["resources"]
                if r["@type"].endswith("cluster.v3.Cluster")}
    assert set(clusters) == {f"{NS}/greeter:{PORT}",
                             f"{NS}/{backend['metadata']['name']}:{PORT}"}
    for found in clusters.values():  # the relay's backend and the Service's own pods
        options = found["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        assert options["explicit_http_config"] == {"http2_protocol_options": {}}
    assert (await a.acli("leave", "greeter")).returncode == 0

    async def all_gone() -> bool:
        return not _made_by_bridged(cluster)

    await eventually(all_gone, within=10, what="the config and its backend removed")
    assert _comparable(cluster.get("services", NS, "greeter")) == _comparable(greeter)


async def test_a_cluster_without_grpc_routes_refuses_the_gateway_and_keeps_nothing(
    cluster: KubeApiServer, greeter: dict[str, Any], alice: tuple[Daemon, int],  # noqa: F811
) -> None:
    cluster.install_crd(load_crd(HTTPROUTE))  # the Gateway API before 1.1
    a, port = alice
    refused = await _intercept(a, port, "--header", "x-dev=alice")
    assert refused.returncode != 0, refused.stdout
    assert "the cluster does not serve GRPCRoutes" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    # the backend and the shadow written before the route was refused are gone again
    assert not _made_by_bridged(cluster), _made_by_bridged(cluster)
    assert _comparable(cluster.get("services", NS, "greeter")) == _comparable(greeter)


async def test_the_relay_picks_the_route_by_the_claim_where_the_port_does_not_say(
    cluster: KubeApiServer, mesh: GammaMesh,  # noqa: F811
) -> None:
    """A port without appProtocol: an intercept claiming grpc gets a GRPCRoute, one claiming
    h2c an HTTPRoute (its grpc-method matcher a path match); both with HTTP/2 backends."""
    from bridged.kube.client import Kube
    from bridged.protocol import InterceptClaim, Matcher
    from bridged.relay.redirect import Redirector

    before = {name: cluster.apply({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}}) for name in ("a", "b")}
    method = Matcher("grpc-method", "equals", "shop.v1.Orders", "Get")
    claims = [InterceptClaim("a1a1a1a1a1a1a1a1", 0, "http", (method,), service="a",
                             service_port=80, via="gateway", protocol="grpc"),
              InterceptClaim("b2b2b2b2b2b2b2b2", 0, "http", (method,), service="b",
                             service_port=80, via="gateway", protocol="h2c")]

    async def nothing(*_: Any) -> None:
        return None

    async with await Kube.connect() as kube:
        redirector = Redirector(
            kube, host="127.0.0.1", listen=nothing, set_origin=lambda *_: None,
            closed=lambda _: None,
            live=lambda: {c.service: [c] for c in claims})
        for claim in claims:
            await redirector.ensure(claim)
        grpc_route = cluster.get("grpcroutes", NS, "bridged-a-80")
        assert grpc_route is not None and not cluster.get("httproutes", NS, "bridged-a-80")
        assert grpc_route["spec"]["rules"][0]["matches"] == [
            {"method": {"type": "Exact", "service": "shop.v1.Orders", "method": "Get"}}]
        http_route = cluster.get("httproutes", NS, "bridged-b-80")
        assert http_route is not None and not cluster.get("grpcroutes", NS, "bridged-b-80")
        assert http_route["spec"]["rules"][0]["matches"] == [
            {"path": {"type": "Exact", "value": "/shop.v1.Orders/Get"}}]
        ports = {s["metadata"]["name"]: s["spec"]["ports"][0] for s in
                 cluster.list("services", NS) if "bridged.dev/intercept" in
                 (s["metadata"].get("labels") or {})}
        assert {p["name"]: p["appProtocol"] for p in ports.values()} == {
            "grpc": "kubernetes.io/h2c", "http2": "kubernetes.io/h2c"}
        claims.clear()  # the leases end
        await redirector.sync()
        assert not _made_by_bridged(cluster), _made_by_bridged(cluster)
        for name, service in before.items():
            assert _comparable(cluster.get("services", NS, name)) == _comparable(service)
