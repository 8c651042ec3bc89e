"""Applying and undoing redirects in the cluster (what they are: :mod:`bridged.redirect`).

Everything is read and written as plain JSON (:func:`.client.rest`), so a restore writes back
every field the server has, known to this client or not. Each write carries the
resourceVersion it was computed from; a 409 re-reads and recomputes.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..config import format_host_port
from ..errors import KubeError, RefusedError
from ..redirect import REDIRECT_OF, cilium, gateway
from ..redirect import takeover as plan
from . import manifests as m
from .client import KubeAPI, KubeApiError, rest, translate

log = logging.getLogger(__name__)

ATTEMPTS = 10  # read-modify-write rounds before giving up on a Service others keep changing

#: which relay process made a takeover: while a replaced relay pod stops, its successor may
#: already have taken the Service over again (same record: the same original), and the old
#: one, undoing what it remembers, must not undo that (nor remove the shadow it uses)
OWNER_ANNOTATION = "bridged.dev/taken-over-by"
#: this process's mark (a pod's name is no proof: two processes can share a host name)
INSTANCE = secrets.token_hex(8)


def _path(kube: KubeAPI, group: str, version: str, plural: str, name: str = "") -> str:
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    return f"{base}/namespaces/{kube.namespace}/{plural}" + (f"/{name}" if name else "")


def _services(kube: KubeAPI, name: str = "") -> str:
    return _path(kube, "", "v1", "services", name)


#: what a route strategy makes, by kind: (group, version, plural, what to call it)
SERVICES = ("", "v1", "services", "Service")
HTTPROUTES = (gateway.GROUP, gateway.VERSION, gateway.PLURAL, "HTTPRoute")
GRPCROUTES = (gateway.GROUP, gateway.VERSION, gateway.GRPC_PLURAL, "GRPCRoute")
ENVOY_CONFIGS = (cilium.GROUP, cilium.VERSION, cilium.PLURAL, "CiliumEnvoyConfig")
#: the gateway strategy's route kinds, by the ``kind`` of the object
ROUTE_KINDS = {kind[3]: kind for kind in (HTTPROUTES, GRPCROUTES)}
MISSING_CRD = {
    "HTTPRoute": "the cluster does not serve HTTPRoutes (the Gateway API is not installed)",
    "GRPCRoute": "the cluster does not serve GRPCRoutes (the Gateway API is not installed, "
                 "or a version before 1.1)",
    "CiliumEnvoyConfig": "the cluster does not serve CiliumEnvoyConfigs (Cilium's Envoy "
                         "config CRD is not installed)",
}


async def apply_object(kube: KubeAPI, kind: tuple[str, str, str, str],
                       obj: dict[str, Any]) -> dict[str, Any]:
    """Create ``obj``, or replace the one of that name if it is bridged's."""
    group, version, plural, what = kind
    name = obj["metadata"]["name"]
    for _ in range(ATTEMPTS):
        try:
            return await rest(kube, "POST", _path(kube, group, version, plural), obj)
        except KubeApiError as exc:
            if exc.status == 404 and what in MISSING_CRD:
                raise RefusedError(f"{MISSING_CRD[what]}: use --via takeover") from None
            if exc.status != 409:
                raise translate(exc, f"cannot create {what} {name}") from exc
        try:
            current = await rest(kube, "GET", _path(kube, group, version, plural, name))
        except KubeApiError as exc:
            if exc.status == 404:
                continue  # deleted meanwhile: create it again
            raise translate(exc, f"cannot read {what} {name}") from exc
        if (current["metadata"].get("labels") or {}).get(m.MANAGED_BY) != "bridged":
            raise RefusedError(f"a {what} named {name} exists and is not bridged's")
        new = {**obj, "metadata": {**obj["metadata"],
                                   "resourceVersion": current["metadata"]["resourceVersion"]}}
        if what == "Service":  # a Service's ClusterIP cannot change: keep the allocated one
            new["spec"] = {**obj["spec"], "clusterIP": current["spec"].get("clusterIP"),
                           "clusterIPs": current["spec"].get("clusterIPs")}
        try:
            return await rest(kube, "PUT", _path(kube, group, version, plural, name), new)
        except KubeApiError as exc:
            if exc.status not in (404, 409):
                raise translate(exc, f"cannot update {what} {name}") from exc
    raise KubeError(f"{what} {name} kept changing under us; try again")


async def delete_owned(kube: KubeAPI, kind: tuple[str, str, str, str], service: str | None,
                       keep: frozenset[str] = frozenset()) -> list[str]:
    """Delete what bridged made of ``kind`` for ``service`` (every Service if None), but the
    names in ``keep``. A kind the cluster does not serve has nothing to delete, nor one we
    may not list: a relay whose Role predates the kind (GRPCRoutes) made none."""
    group, version, plural, what = kind
    selector = f"{m.MANAGED_BY}=bridged," + (f"{REDIRECT_OF}={service}" if service
                                             else REDIRECT_OF)
    try:
        items = (await rest(kube, "GET", _path(kube, group, version, plural),
                            query={"labelSelector": selector}))["items"]
    except KubeApiError as exc:
        if exc.status == 403:
            log.warning("may not list %ss (HTTP 403): none removed", what)
        if exc.status in (403, 404):
            return []
        raise translate(exc, f"cannot list {what}s") from exc
    deleted = []
    for obj in items:
        name = obj["metadata"]["name"]
        if name not in keep and await _delete(kube, _path(kube, group, version, plural, name),
                                              f"{what} {name}"):
            deleted.append(f"{what} {name}")
    return deleted


async def read_service(kube: KubeAPI, name: str) -> dict[str, Any]:
    try:
        return await rest(kube, "GET", _services(kube, name))
    except KubeApiError as exc:
        if exc.status == 404:
            raise KubeError(f"Service {name} not found in namespace {kube.namespace}",
                            hint="bridged services lists them") from None
        raise translate(exc, f"cannot read Service {name}") from exc


async def _delete(kube: KubeAPI, path: str, what: str) -> bool:
    try:
        await rest(kube, "DELETE", path)
        return True
    except KubeApiError as exc:
        if exc.status == 404:
            return False
        raise translate(exc, f"cannot delete {what}") from exc


class InterceptTarget(NamedTuple):
    port: int  # the Service port, a number
    via: str  # the redirect strategy (what ``auto`` stands for, resolved)
    app_protocol: str  # the port's appProtocol ("" if none)


async def resolve_intercept(kube: KubeAPI, service: str, port: str, via: str,
                            protocol: str = "") -> InterceptTarget:
    """The Service port an intercept names by number, by name or, for a Service with one
    port, not at all; the strategy ``auto`` stands for (``protocol``: what the intercept says
    its server speaks, if it does); and what the port says it speaks. Errors list the
    choices."""
    found = await read_service(kube, service)
    ports = (found.get("spec") or {}).get("ports") or []
    listed = ", ".join(f"{p['port']}" + (f" ({p['name']})" if p.get("name") else "")
                       for p in ports) or "none"
    if port:
        chosen = [p for p in ports if str(p["port"]) == port or p.get("name") == port]
    else:
        chosen = ports if len(ports) == 1 else []
    if len(chosen) != 1:
        raise KubeError(
            f"Service {service} has no port {port!r}" if port else
            f"Service {service} has several ports: {listed}",
            hint=f"say which with --port LOCAL:PORT (its ports: {listed})")
    if chosen[0].get("protocol", "TCP") != "TCP":
        raise KubeError(f"port {chosen[0]['port']} of Service {service} is "
                        f"{chosen[0]['protocol']}: only TCP can be intercepted")
    if via == "auto":
        # the route the port needs: a gRPC port's GRPCRoute came with Gateway API 1.1
        grpc = gateway.port_protocol(chosen[0].get("appProtocol"), [protocol]) == "grpc"
        served = await gateway_api_present(kube, gateway.GRPC_PLURAL if grpc else
                                           gateway.PLURAL)
        via = "gateway" if served else "takeover"
    return InterceptTarget(int(chosen[0]["port"]), via, str(chosen[0].get("appProtocol") or ""))


async def gateway_api_present(kube: KubeAPI, plural: str = gateway.PLURAL) -> bool:
    """Whether the cluster serves that route kind (HTTPRoutes, GRPCRoutes: the Gateway API's
    CRDs are installed)."""
    try:
        found = await rest(kube, "GET", "/apis/gateway.networking.k8s.io/v1")
    except KubeApiError as exc:
        if exc.status in (404, 403):
            return False
        raise translate(exc, "cannot ask whether the Gateway API is installed") from exc
    return any(r.get("name") == plural for r in found.get("resources") or [])


@dataclass(frozen=True)
class TakenOver:
    record: plan.Record
    #: service port → "clusterIP:port" of the shadow Service: where the original pods answer
    origins: dict[int, str]


@dataclass(frozen=True)
class Restored:
    service: str
    #: fields someone else changed during the takeover, left as they made them
    changed_by_others: list[str] = field(default_factory=list)
    gone: bool = False  # the Service was deleted meanwhile
    #: another relay took the Service over again meanwhile: left to it
    taken_again: bool = False

    def describe(self) -> str:
        if self.taken_again:
            return f"Service {self.service} was taken over again by another relay: left to it"
        if self.gone:
            return f"Service {self.service} was deleted during the takeover; its shadow removed"
        if self.changed_by_others:
            return (f"Service {self.service} was changed by someone else during the takeover "
                    f"({', '.join(self.changed_by_others)}): their change is kept, only "
                    "bridged's annotation was removed")
        return f"Service {self.service} restored"


async def take_over(kube: KubeAPI, name: str, relay_selector: Mapping[str, str],
                    relay_ports: Any, shadow_ready: Any = None) -> TakenOver:
    """Point Service ``name`` at the relay. ``relay_ports(service)`` gives the relay port for
    every port of the Service as read (the relay starts its listeners there);
    ``shadow_ready(service, shadow)`` is awaited before the switch: a new shadow Service's
    endpoints take a moment to be programmed, and meanwhile the relay could not pass the
    requests nobody intercepts to the original pods."""
    for _ in range(ATTEMPTS):
        service = await read_service(kube, name)
        if plan.record_of(service) is not None:
            # left by a relay that died before restoring it: undo that first
            log.warning("Service %s carries a stale takeover: restoring it first", name)
            await restore(kube, name)
            continue
        try:
            new, shadow, record = plan.take_over(service, relay_selector, relay_ports(service))
        except plan.TakeoverRefused as exc:
            raise RefusedError(str(exc)) from None
        new["metadata"].setdefault("annotations", {})[OWNER_ANNOTATION] = INSTANCE
        shadow_now = await ensure_shadow(kube, shadow)
        try:
            if shadow_ready is not None:
                await shadow_ready(service, shadow_now)
        except BaseException:
            await _delete(kube, _services(kube, record.shadow), f"Service {record.shadow}")
            raise
        try:
            await rest(kube, "PUT", _services(kube, name), new)
        except KubeApiError as exc:
            if exc.status == 409:
                continue  # changed since we read it: plan again
            await _delete(kube, _services(kube, record.shadow), f"Service {record.shadow}")
            raise translate(exc, f"cannot take Service {name} over") from exc
        ip = shadow_now["spec"].get("clusterIP")
        origins = {p["port"]: format_host_port(ip, p["port"]) for p in shadow_now["spec"]["ports"]}
        log.info("Service %s taken over (original pods via %s)", name, record.shadow)
        return TakenOver(record, origins)
    raise KubeError(f"Service {name} kept changing under us; try again")


async def ensure_shadow(kube: KubeAPI, shadow: dict[str, Any]) -> dict[str, Any]:
    name = shadow["metadata"]["name"]
    try:
        return await rest(kube, "POST", _services(kube), shadow)
    except KubeApiError as exc:
        if exc.status != 409:
            raise translate(exc, f"cannot create the shadow Service {name}") from exc
    current = await rest(kube, "GET", _services(kube, name))
    if (current["metadata"].get("labels") or {}).get(m.MANAGED_BY) != "bridged":
        raise RefusedError(f"a Service named {name} exists and is not bridged's: "
                           "rename it or intercept with --via gateway")
    current["spec"]["selector"] = shadow["spec"]["selector"]
    current["spec"]["ports"] = shadow["spec"]["ports"]
    try:
        return await rest(kube, "PUT", _services(kube, name), current)
    except KubeApiError as exc:
        raise translate(exc, f"cannot update the shadow Service {name}") from exc


async def restore(kube: KubeAPI, name: str, record: plan.Record | None = None,
                  drained: Callable[[], Awaitable[None]] | None = None, *,
                  attempts: int = ATTEMPTS) -> Restored:
    """Undo the takeover of Service ``name``: from the record in its annotation, or ``record``
    (what the relay remembers) when someone removed the annotation. ``drained`` is awaited
    between the restore and the shadow's removal: until the cluster stops sending the
    Service's new connections to the relay, which passes them on through the shadow.
    With ``record`` (the caller's own takeover), a Service another relay process took over
    since is left to it. ``attempts=1``: the Service as read, or nothing — a Service changed
    meanwhile (a relay back and taking it over again) is left alone (:class:`KubeError`)."""
    for _ in range(attempts):
        try:
            current = await rest(kube, "GET", _services(kube, name))
        except KubeApiError as exc:
            if exc.status != 404:
                raise translate(exc, f"cannot read Service {name}") from exc
            if record is not None:
                await _delete(kube, _services(kube, record.shadow), f"Service {record.shadow}")
            return Restored(name, gone=True)
        try:
            found = plan.record_of(current)
        except ValueError as exc:
            raise KubeError(f"Service {name}: {exc}; restore it by hand") from None
        rec = found or record
        if rec is None:
            return Restored(name)  # not taken over
        owner = (current["metadata"].get("annotations") or {}).get(OWNER_ANNOTATION)
        if record is not None and found is not None and owner not in (None, INSTANCE):
            return Restored(name, taken_again=True)
        new, changed = plan.restore(current, rec)
        annotations = new["metadata"].get("annotations")
        if annotations is not None and OWNER_ANNOTATION in annotations:
            annotations.pop(OWNER_ANNOTATION)
            if not annotations and rec.annotations_absent:
                del new["metadata"]["annotations"]
        if new != current:
            try:
                await rest(kube, "PUT", _services(kube, name), new)
            except KubeApiError as exc:
                if exc.status == 409:
                    continue
                raise translate(exc, f"cannot restore Service {name}") from exc
        if drained is not None:
            await drained()
        if drained is None or not await _taken_over_again(kube, name):
            await _delete(kube, _services(kube, rec.shadow), f"Service {rec.shadow}")
        result = Restored(name, changed)
        (log.warning if changed else log.info)("%s", result.describe())
        return result
    raise KubeError(f"Service {name} kept changing under us; try again")


async def _taken_over_again(kube: KubeAPI, name: str) -> bool:
    """Whether Service ``name`` carries a takeover again (a new relay's, made while this one
    waited for the restore to take effect): its shadow, same name, is in use again."""
    try:
        current = await rest(kube, "GET", _services(kube, name))
    except KubeApiError as exc:
        if exc.status == 404:
            return False
        raise translate(exc, f"cannot read Service {name}") from exc
    return plan.ANNOTATION in (current["metadata"].get("annotations") or {})


async def restore_stale(kube: KubeAPI) -> list[Restored]:
    """Undo every takeover in the namespace, and remove shadows whose takeover is gone: what a
    relay does when it starts (it holds no lease yet) and ``bridged clean`` does."""
    try:
        items = (await rest(kube, "GET", _services(kube)))["items"]
    except KubeApiError as exc:
        raise translate(exc, "cannot list Services") from exc
    done = []
    for service in items:
        annotations = service["metadata"].get("annotations") or {}
        if plan.ANNOTATION in annotations:
            done.append(await restore(kube, service["metadata"]["name"]))
    taken = {s["metadata"]["name"] for s in items
             if plan.ANNOTATION in (s["metadata"].get("annotations") or {})}
    for service in items:
        labels = service["metadata"].get("labels") or {}
        of = labels.get(REDIRECT_OF)
        if labels.get(m.MANAGED_BY) == "bridged" and of and of not in taken \
                and service["metadata"]["name"] == plan.shadow_name(of):
            if await _delete(kube, _services(kube, service["metadata"]["name"]),
                             f"Service {service['metadata']['name']}"):
                log.info("removed the orphaned shadow Service %s", service["metadata"]["name"])
    return done


#: what the relay says when no mesh took a route up (the daemon's ``auto`` then falls back
#: to takeover)
NOT_ACCEPTED = "no mesh accepted"


async def wait_accepted(kube: KubeAPI, route: dict[str, Any], within: float) -> None:
    """Wait until some controller (a GAMMA mesh) accepted ``route`` (an HTTPRoute or a
    GRPCRoute) for its parent Service; :class:`RefusedError` if none did within ``within``
    seconds — a cluster may serve routes for ingress only, and then nothing would ever send
    the traffic."""
    import asyncio

    name, what = route["metadata"]["name"], route["kind"]
    group, version, plural, _ = ROUTE_KINDS[what]
    path = _path(kube, group, version, plural, name)
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            current = await rest(kube, "GET", path)
        except KubeApiError as exc:
            raise translate(exc, f"cannot read {what} {name}") from exc
        for parent in (current.get("status") or {}).get("parents") or []:
            ref = parent.get("parentRef") or {}
            accepted = any(c.get("type") == "Accepted" and c.get("status") == "True"
                           for c in parent.get("conditions") or [])
            if ref.get("kind") == "Service" and accepted:
                return
        if asyncio.get_running_loop().time() > deadline:
            raise RefusedError(
                f"{NOT_ACCEPTED} {what} {name} within {within:.0f} s: the cluster serves "
                "the Gateway API but no mesh implementing it for Services (GAMMA) acts on it; "
                "use --via takeover")
        await asyncio.sleep(0.5)


async def remove_routes(kube: KubeAPI, service: str | None = None) -> list[str]:
    """Undo the gateway and cilium strategies for ``service`` (every Service if None): their
    routes first (traffic goes back to the Service's pods), then the backend Services."""
    removed = []
    for kind in (HTTPROUTES, GRPCROUTES, ENVOY_CONFIGS):
        removed += await delete_owned(kube, kind, service)
    for svc in await _owned_backends(kube, service):
        if await _delete(kube, _services(kube, svc), f"Service {svc}"):
            removed.append(f"Service {svc}")
    if service is not None:  # its shadow, unless a takeover uses it
        try:
            current = await rest(kube, "GET", _services(kube, service))
        except KubeApiError:
            current = {"metadata": {}}
        if plan.ANNOTATION not in (current["metadata"].get("annotations") or {}):
            shadow = plan.shadow_name(service)
            if await _delete(kube, _services(kube, shadow), f"Service {shadow}"):
                removed.append(f"Service {shadow}")
    return removed


async def _owned_backends(kube: KubeAPI, service: str | None) -> list[str]:
    selector = f"{m.MANAGED_BY}=bridged,{gateway.INTERCEPT_LABEL}" + \
        (f",{REDIRECT_OF}={service}" if service else "")
    try:
        items = (await rest(kube, "GET", _services(kube),
                            query={"labelSelector": selector}))["items"]
    except KubeApiError as exc:
        raise translate(exc, "cannot list Services") from exc
    return [o["metadata"]["name"] for o in items]


async def sync_backends(kube: KubeAPI, service: str, wanted: list[dict[str, Any]]) -> None:
    """Make the backend Services of ``service`` exactly ``wanted``."""
    for backend in wanted:
        await apply_object(kube, SERVICES, backend)
    keep = {b["metadata"]["name"] for b in wanted}
    for name in await _owned_backends(kube, service):
        if name not in keep:
            await _delete(kube, _services(kube, name), f"Service {name}")


#: EndpointSlices of a Service carry this label (set by the EndpointSlice controller)
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


async def wait_endpoints(kube: KubeAPI, service: str, service_port: int, relay_port: int,
                         within: float, *, gone: bool = False) -> str | None:
    """Wait until the EndpointSlices of ``service`` send its port ``service_port`` to the
    relay's port only — what kube-proxy programs from (a whole-port TCP intercept's signal:
    the relay reads none of its bytes, so it cannot see a probe arrive) — or, with ``gone``,
    no longer to the relay at all (a restored Service's traffic has left it). ``""`` once
    they do; what they list instead when ``within`` seconds ran out; None if the relay may
    not read EndpointSlices (its Role predates this check) or the cluster serves none."""
    import asyncio

    found = await read_service(kube, service)
    name = next((p.get("name") or "" for p in (found.get("spec") or {}).get("ports") or []
                 if p.get("port") == service_port), "")
    path = _path(kube, "discovery.k8s.io", "v1", "endpointslices")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    delay = 0.05
    while True:
        try:
            slices = (await rest(kube, "GET", path, query={
                "labelSelector": f"{SERVICE_NAME_LABEL}={service}"}))["items"]
        except KubeApiError as exc:
            if exc.status in (403, 404):
                log.warning("cannot read the EndpointSlices of Service %s (HTTP %d): its "
                            "redirect is answered without waiting for kube-proxy",
                            service, exc.status)
                return None
            raise translate(exc, f"cannot read the EndpointSlices of Service {service}") \
                from exc
        ports = _ready_ports(slices, name)
        if (relay_port not in ports) if gone else (ports == {relay_port}):
            return ""
        if loop.time() + delay > deadline:
            return ", ".join(f"{n} ready endpoints on port {p}" for p, n in
                             sorted(_ready_count(slices, name).items())) or "no ready endpoint"
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


def _ready_count(slices: list[dict[str, Any]], port_name: str) -> dict[int, int]:
    """Ready endpoints by the port they serve ``port_name`` on (kube-proxy's view)."""
    counts: dict[int, int] = {}
    for s in slices:
        port = next((p.get("port") for p in s.get("ports") or []
                     if (p.get("name") or "") == port_name), None)
        if port is None:
            continue
        for endpoint in s.get("endpoints") or []:
            # ready unset means ready (the API's documented default)
            if (endpoint.get("conditions") or {}).get("ready", True) is not False:
                counts[int(port)] = counts.get(int(port), 0) + len(endpoint.get("addresses")
                                                                   or [])
    return counts


def _ready_ports(slices: list[dict[str, Any]], port_name: str) -> set[int]:
    return {p for p, n in _ready_count(slices, port_name).items() if n}
