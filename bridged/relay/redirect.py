"""The relay's side of the redirect strategies: which Services are redirected, and when.

The intercept table says which intercepts hold a live lease; a Service is redirected while at
least one of them names it, and restored as soon as none does (the session ended, the lease
lapsed, the intercept was left). :meth:`Redirector.sync` brings the cluster to that state; it
runs after every change of the table and on the lease timer, one run at a time, and a failed
run is tried again on the next tick. What the strategies write is in :mod:`bridged.redirect`;
how, in :mod:`bridged.kube.redirects`.

An intercept is answered once its redirect is *live*, not merely written:

- takeover, HTTP: the relay's own probes through the Service's ClusterIP arrive at its router
  (:mod:`.probe`);
- takeover, whole-port TCP: the router reads no bytes, so the signal is what kube-proxy
  consumes: the Service's EndpointSlices list only the relay's port
  (:func:`bridged.kube.redirects.wait_endpoints`);
- gateway and cilium: the relay pod is outside the mesh, its own connections do not take the
  mesh's routes; the route's Accepted status (gateway) is the signal, a CiliumEnvoyConfig
  has none (Cilium's agents apply it within a second, unobservable from the API).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import format_host_port
from ..errors import RefusedError
from ..kube import manifests as m
from ..protocol import InterceptClaim
from ..redirect import RouteRefused, cilium, gateway
from ..redirect.takeover import Record, shadow_service
from .probe import NotLive, Probes, ProbeSettings, connects, connects_within, until_live

# The methods import ..kube.redirects (as ``ops``) themselves: a relay without Kubernetes access
# (local runs, the tests) needs none of it. A Redirector is made only with that access, and its
# client is the relay's small one (..kube.lite), not kubernetes-asyncio (≈ 40 MiB of RSS).

log = logging.getLogger(__name__)

#: HTTPRoute's and GRPCRoute's schemas allow 16 rules: the intercepts of a port, and the
#: catch-all
MAX_ROUTE_RULES = 15

#: the labels every relay pod carries: what a taken-over Service (or a backend) selects
RELAY_SELECTOR = {m.NAME_LABEL: m.RELAY, m.MANAGED_BY: "bridged"}

Live = dict[str, list[InterceptClaim]]  # Service → its live intercepts, in table order


@dataclass
class Redirected:
    """One Service whose traffic (or part of it) currently reaches the relay."""

    via: str
    #: the live intercepts the cluster's objects were written for
    ids: frozenset[str] = frozenset()
    record: Record | None = None  # takeover: what to restore
    origins: dict[int, str] = field(default_factory=dict)
    #: the Service's own ClusterIP ("" if none): where a client's traffic starts
    cluster_ip: str = ""
    #: gateway: service port → the relay's mirror port for it, where the mesh sends copies
    mirrors: dict[int, int] = field(default_factory=dict)


class Redirector:
    """Owns the Services the relay redirects. ``listen(port, origin)`` makes sure the relay
    serves ``port`` (a pass-through to ``origin`` unless an intercept holds it);
    ``set_origin(port, origin)`` tells an existing listener where the original pods are;
    ``closed(ports)`` hands back ports no redirect needs any more;
    ``listen_mirror(port, intercepted)`` makes sure the relay takes the mesh's copies of the
    requests of relay port ``intercepted`` on ``port`` (gateway mirrors)."""

    def __init__(self, kube: Any, *, host: str, live: Callable[[], Live],
                 listen: Callable[[int, str], Any], set_origin: Callable[[int, str], None],
                 closed: Callable[[set[int]], None], probes: Probes | None = None,
                 listen_mirror: Callable[[int, int], Any] | None = None) -> None:
        self.kube = kube
        self.host = host
        self._live = live
        self._listen = listen
        self._set_origin = set_origin
        self._closed = closed
        self._listen_mirror = listen_mirror
        self.redirected: dict[str, Redirected] = {}
        #: seconds a mesh has to accept a new HTTPRoute (meshes answer within a second or two)
        self.accept_seconds = 10.0
        #: why no mesh took up a route in this namespace, once one was not accepted in time: for
        #: the relay's lifetime, a gateway redirect is refused at once with it (the daemon's
        #: ``--via auto`` then takes over at once) rather than waiting ``accept_seconds`` again.
        #: A mesh installed since is tried after the relay restarts.
        self.no_mesh = ""
        #: (service, service port) → relay port; kept while anything uses it, so an intercept
        #: that re-attaches finds its port (and the Service its targetPort) unchanged
        self.ports: dict[tuple[str, int], int] = {}
        #: (service, service port) → the relay's mirror port for it, kept likewise
        self.mirror_ports: dict[tuple[str, int], int] = {}
        self._lock = asyncio.Lock()
        #: the nonces the router reports (None: a redirect is answered once written)
        self.probes = probes
        self.live = ProbeSettings()

    # --- ports ---

    def port_for(self, service: str, service_port: int) -> int:
        key = (service, service_port)
        if key not in self.ports:
            self.ports[key] = _free_port(self.host)
        return self.ports[key]

    def mirror_port_for(self, service: str, service_port: int) -> int:
        key = (service, service_port)
        if key not in self.mirror_ports:
            self.mirror_ports[key] = _free_port(self.host)
        return self.mirror_ports[key]

    def ports_in_use(self) -> set[int]:
        return {p for (svc, _), p in self.ports.items() if svc in self.redirected} | \
            {p for state in self.redirected.values() for p in state.mirrors.values()}

    def _ports_of(self, service: str) -> set[int]:
        return {p for (svc, _), p in (*self.ports.items(), *self.mirror_ports.items())
                if svc == service}

    def forget_ports(self, ports: set[int]) -> None:
        """Those relay ports are closed: their numbers may be given out again."""
        in_use = self.ports_in_use()
        for table in (self.ports, self.mirror_ports):
            for key in [k for k, p in table.items() if p in ports and p not in in_use and
                        (table is self.mirror_ports or k[0] not in self.redirected)]:
                del table[key]

    # --- the state the cluster should be in ---

    def out_of_sync(self) -> bool:
        live = self._live()
        return any(service not in live or
                   (state.via != "takeover" and state.ids != _ids(live[service]))
                   for service, state in self.redirected.items())

    async def ensure(self, claim: InterceptClaim) -> None:
        """Redirect ``claim.service`` now (an intercept was just granted), with every live
        intercept of it, and return once the cluster's traffic reaches the relay; raises
        :class:`RefusedError` with the reason if the cluster cannot be changed, or if the
        redirect did not become live in time (then a redirect made for this claim alone is
        undone)."""
        await self._write(claim)
        try:
            await self._until_live(claim)
        except NotLive:
            async with self._lock:
                others = _ids(self._live().get(claim.service) or []) - {claim.id}
                if claim.service in self.redirected and not others:
                    log.warning("%s", await self._undo(claim.service))
            raise

    async def _until_live(self, claim: InterceptClaim) -> None:
        from ..kube import redirects as ops
        state = self.redirected.get(claim.service)
        if state is None or state.via != "takeover" or not state.cluster_ip:
            return  # routes: their acceptance was awaited as they were written
        started = asyncio.get_running_loop().time()
        if claim.mode == "http":
            if self.probes is None:
                return
            sent = await until_live(
                self.probes, claim.service, state.cluster_ip, claim.service_port, self.live,
                host_header=f"{claim.service}.{self.kube.namespace}.svc")
            how = f"{sent} probes"
        else:
            seen = await ops.wait_endpoints(
                self.kube, claim.service, claim.service_port,
                self.port_for(claim.service, claim.service_port), self.live.deadline_seconds)
            if seen is None:
                return  # not observable here (logged): answered as written
            if seen:
                raise NotLive(f"Service {claim.service} did not send its traffic to the relay "
                              f"within {self.live.deadline_seconds:g} s: its EndpointSlices "
                              f"still list {seen} (is the EndpointSlice controller running?)")
            how = "its EndpointSlices"
        log.info("Service %s port %d sends its traffic to the relay (%s, %.2f s)",
                 claim.service, claim.service_port, how,
                 asyncio.get_running_loop().time() - started)

    async def _write(self, claim: InterceptClaim) -> None:
        async with self._lock:
            current = self.redirected.get(claim.service)
            if current is not None and current.via != claim.via:
                raise RefusedError(f"Service {claim.service} is redirected via {current.via} "
                                   f"by another intercept; use --via {current.via}")
            claims = self._live().get(claim.service) or [claim]
            if current is None or (current.via != "takeover" and current.ids != _ids(claims)):
                await self._apply(claim.service, claim.via, claims)
            else:  # a takeover serves every intercept of the Service as it is
                current.ids = _ids(claims)

    async def sync(self) -> list[str]:
        """Restore every Service no live intercept names any more, rewrite the routes of
        those whose intercepts changed; what happened, one line per Service restored.
        (A first redirect is :meth:`ensure`'s: its error goes back to the daemon.)"""
        async with self._lock:
            live = self._live()
            notes = []
            for service, state in list(self.redirected.items()):
                if service not in live:
                    notes.append(await self._undo(service))
                elif state.via != "takeover" and state.ids != _ids(live[service]):
                    await self._apply(service, state.via, live[service])
            return notes

    async def close(self) -> None:
        """Restore everything (the relay is stopping): the cluster is left as found."""
        async with self._lock:
            for service in list(self.redirected):
                try:
                    await self._undo(service)
                except Exception as exc:  # the next relay's start-up retries
                    log.error("could not restore Service %s: %s", service, exc)

    async def restore_stale(self) -> None:
        """At start-up no lease is live: every redirect found was left by a relay that died."""
        from ..kube import redirects as ops
        for restored in await ops.restore_stale(self.kube):
            log.warning("stale takeover: %s", restored.describe())
        for removed in await ops.remove_routes(self.kube):
            log.warning("stale redirect removed: %s", removed)

    # --- strategies ---

    async def _apply(self, service: str, via: str, claims: list[InterceptClaim]) -> None:
        try:
            if via == "takeover":
                state = await self._take_over(service)
            else:
                state = await self._route(service, via, claims)
        except BaseException:
            if service not in self.redirected:  # the pass-through ports opened for it go
                self._closed(self._ports_of(service))
            raise
        state.ids = _ids(claims)
        before = self.redirected.get(service)
        self.redirected[service] = state
        for service_port, origin in state.origins.items():
            port = self.port_for(service, service_port)
            await self._listen(port, origin)
            self._set_origin(port, origin)
        if before is not None:  # the mirror ports no route sends copies to any more
            stale = set(before.mirrors.values()) - set(state.mirrors.values())
            if stale:
                self._closed(stale)

    async def _take_over(self, service: str) -> Redirected:
        from ..kube import redirects as ops
        current = await ops.read_service(self.kube, service)
        for p in (current.get("spec") or {}).get("ports") or []:
            await self._listen(self.port_for(service, p["port"]), "")

        def relay_ports(svc: dict[str, Any]) -> dict[int, int]:
            return {p["port"]: self.port_for(service, p["port"])
                    for p in svc["spec"].get("ports") or []}

        taken = await ops.take_over(self.kube, service, RELAY_SELECTOR, relay_ports,
                                    shadow_ready=self._shadow_ready)
        ip = (current.get("spec") or {}).get("clusterIP") or ""
        return Redirected("takeover", record=taken.record, origins=taken.origins,
                          cluster_ip="" if ip == "None" else ip)

    async def _shadow_ready(self, service: dict[str, Any], shadow: dict[str, Any]) -> None:
        """Wait until the shadow Service reaches the original pods on every port where the
        Service itself does now (a new Service's endpoints are programmed a moment after it
        is made; the relay passes the requests nobody intercepts through it). A port that
        reaches nothing now (no ready pod: a Service scaled to zero) is not waited for."""
        ip, shadow_ip = service["spec"].get("clusterIP"), shadow["spec"].get("clusterIP")
        if not ip or ip == "None" or not shadow_ip:
            return
        for p in service["spec"].get("ports") or []:
            if p.get("protocol", "TCP") != "TCP" or await connects(ip, p["port"]):
                continue  # the Service reaches nothing there now: nothing to keep
            seen = await connects_within(shadow_ip, p["port"], self.live)
            if seen:
                raise NotLive(
                    f"Service {service['metadata']['name']}: its shadow Service "
                    f"{shadow['metadata']['name']} did not reach the original pods on port "
                    f"{p['port']} within {self.live.deadline_seconds:g} s ({seen}); the "
                    "Service was left as it was")

    async def _drained(self, service: str) -> None:
        """After a restore, until the cluster stops sending the Service's new connections to
        the relay (the EndpointSlices, then kube-proxy, take a moment, as at the takeover):
        meanwhile the relay's ports pass them on to the original pods through the shadow,
        so the team's requests in that moment are not refused. Bounded: a restore waits
        ``live.drain_seconds`` at most, then goes on."""
        from ..kube import redirects as ops
        settings = self.live
        for (svc, service_port), port in list(self.ports.items()):
            if svc != service:
                continue
            left = await ops.wait_endpoints(self.kube, service, service_port, port,
                                            settings.drain_seconds, gone=True)
            if left:
                log.warning("Service %s restored, but its EndpointSlices still list the relay "
                            "after %g s (%s); its shadow goes now", service,
                            settings.drain_seconds, left)
                return
        # kube-proxy programs a node a moment after the slices change
        await asyncio.sleep(settings.settle_seconds)

    async def _route(self, service: str, via: str, claims: list[InterceptClaim]) -> Redirected:
        """gateway / cilium: a backend Service per intercept, the route objects, and a shadow
        Service through which the relay itself reaches the original pods (the Service's own
        ClusterIP may be redirected for the relay too: Cilium's BPF, ambient meshes). Routes
        the matchers cannot be said in are refused before anything is written; a first
        redirect that fails midway is removed whole."""
        from ..kube import redirects as ops
        found = await ops.read_service(self.kube, service)
        ns, ip = self.kube.namespace, found["spec"].get("clusterIP")
        if not ip or ip == "None":
            raise RefusedError(f"Service {service} is headless: --via {via} routes through "
                               "its ClusterIP")
        by_port: dict[int, list[tuple[str, Any]]] = {}
        mirrors: dict[int, list[Any]] = {}  # gateway: the mesh copies, to a mirror port
        for c in claims:
            intercepts = by_port.setdefault(c.service_port, [])
            if c.mirror and via == "gateway":
                mirrors.setdefault(c.service_port, []).append(c.matchers)
            else:
                intercepts.append((c.id, c.matchers))
        if via == "gateway" and service not in self.redirected and self.no_mesh:
            log.info("Service %s: --via gateway refused at once, remembered: %s", service,
                     self.no_mesh)
            raise RefusedError(f"{ops.NOT_ACCEPTED} a route in namespace {ns} earlier in "
                               f"this relay's life ({self.no_mesh}); not waiting "
                               f"{self.accept_seconds:g} s again: use --via takeover")
        if via == "gateway" and any(len(i) > MAX_ROUTE_RULES for i in by_port.values()):
            raise RefusedError(f"Service {service}: a route holds {MAX_ROUTE_RULES} "
                               "intercepts per port at most")
        app_protocols = {p["port"]: p.get("appProtocol") or ""
                         for p in found["spec"].get("ports") or []}
        protocols = {port: gateway.port_protocol(app_protocols.get(port), (
            c.protocol for c in claims if c.service_port == port)) for port in by_port}
        objects = _route_objects(service, via, ns, by_port, protocols, app_protocols, mirrors)
        backends = [gateway.backend_service(
            ns, service, c.id, c.service_port, self.port_for(service, c.service_port),
            RELAY_SELECTOR, protocol=protocols[c.service_port],
            app_protocol=app_protocols.get(c.service_port, ""))
            for c in claims if not (c.mirror and via == "gateway")]
        mirror_ports = {port: self.mirror_port_for(service, port) for port in mirrors}
        backends += [gateway.mirror_backend_service(ns, service, port, relay_port,
                                                    RELAY_SELECTOR)
                     for port, relay_port in mirror_ports.items()]
        first = service not in self.redirected
        try:
            for port, relay_port in mirror_ports.items():  # before the mesh sends copies
                if self._listen_mirror is not None:
                    await self._listen_mirror(relay_port, self.port_for(service, port))
            shadow = await self._write_routes(service, via, found, backends, objects)
        except BaseException as exc:
            if isinstance(exc, RefusedError) and ops.NOT_ACCEPTED in str(exc):
                self.no_mesh = (f"the {objects[0]['kind']} of Service {service} not "
                                f"accepted within {self.accept_seconds:g} s at "
                                f"{time.strftime('%H:%M:%S')}")
            if first:
                await ops.remove_routes(self.kube, service)
            raise
        shadow_ip = shadow["spec"]["clusterIP"]
        return Redirected(via, origins={port: format_host_port(shadow_ip, port)
                                        for port in by_port}, mirrors=mirror_ports)

    async def _write_routes(self, service: str, via: str, found: dict[str, Any],
                            backends: list[dict[str, Any]],
                            objects: list[dict[str, Any]]) -> dict[str, Any]:
        """Write what :meth:`_route` made; the shadow Service as written."""
        from ..kube import redirects as ops
        shadow = await ops.ensure_shadow(self.kube, shadow_service(found))
        for backend in backends:  # first the backends, then what routes to them
            await ops.apply_object(self.kube, ops.SERVICES, backend)
        kinds = (ops.HTTPROUTES, ops.GRPCROUTES) if via == "gateway" else (ops.ENVOY_CONFIGS,)
        for kind in kinds:  # stale ones first: a port whose route changed kind (HTTP → gRPC)
            await ops.delete_owned(self.kube, kind, service, keep=frozenset(
                o["metadata"]["name"] for o in objects if o["kind"] == kind[3]))
        for obj in objects:
            kind = ops.ROUTE_KINDS.get(obj["kind"], ops.ENVOY_CONFIGS)
            await ops.apply_object(self.kube, kind, obj)
        if via == "gateway" and service not in self.redirected:
            # the first route of this Service: is there a mesh to act on it?
            for obj in objects:
                await ops.wait_accepted(self.kube, obj, self.accept_seconds)
        await ops.sync_backends(self.kube, service, backends)  # last: stale ones go
        return shadow

    async def _undo(self, service: str) -> str:
        from ..kube import redirects as ops
        state = self.redirected[service]
        if state.via == "takeover":
            note = (await ops.restore(self.kube, service, state.record,
                                      drained=lambda: self._drained(service))).describe()
        else:
            await ops.remove_routes(self.kube, service)
            note = f"Service {service}: its {state.via} routes removed"
        del self.redirected[service]
        for (svc, _), port in self.ports.items():
            if svc == service:
                self._set_origin(port, "")
        self._closed(self._ports_of(service))
        return note


def _route_objects(service: str, via: str, namespace: str,
                   by_port: dict[int, list[tuple[str, Any]]], protocols: dict[int, str],
                   app_protocols: dict[int, str],
                   mirrors: dict[int, list[Any]] | None = None) -> list[dict[str, Any]]:
    """The routes (gateway: one per port, a GRPCRoute where the port is gRPC, with the
    ``RequestMirror`` filter where ``mirrors`` has the port's mirrors' matchers) or the
    CiliumEnvoyConfig; :class:`RefusedError` naming the port if its intercepts' matchers
    cannot be said in them, or if a mirror is on an HTTP/2 port."""
    mirrors = mirrors or {}
    for port in mirrors:
        if protocols[port] != "http":
            why = f"its appProtocol is {app_protocols[port]}" if app_protocols.get(port) \
                else "an intercept of it says so"
            raise RefusedError(f"Service {service} port {port} speaks {protocols[port]} "
                               f"({why}): a mirror copies HTTP/1.1 requests only for now "
                               "(HTTP/2 streams are not mirrored yet)")
    if via != "gateway":
        h2 = {port for port, protocol in protocols.items() if protocol != "http"}
        try:
            return [cilium.envoy_config(namespace, service, by_port, h2)]
        except RouteRefused as exc:
            raise RefusedError(f"Service {service}: {exc}; or use --via takeover") from None
    objects = []
    for port, intercepts in by_port.items():
        try:
            objects.append(gateway.route(protocols[port], namespace, service, port,
                                         intercepts, mirrors.get(port, ())))
        except RouteRefused as exc:
            why = ""
            if protocols[port] == "grpc":
                why = (f" (its appProtocol is {app_protocols[port]})"
                       if app_protocols.get(port, "").lower() in gateway.H2_APP_PROTOCOLS
                       else " (an intercept of it says --protocol grpc)")
            raise RefusedError(f"Service {service} port {port}{why}: {exc}; or use --via "
                               "takeover, whose relay applies every matcher itself") from None
    return objects


def _ids(claims: list[InterceptClaim]) -> frozenset[str]:
    return frozenset(c.id for c in claims)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
