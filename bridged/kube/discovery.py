"""What the namespace offers: Services and their ports, resolved through the API.

Resolving a Service by the API (its ClusterIP and ports) makes exposing it independent of the
relay's DNS; other host names are left to the relay (cluster DNS).
"""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes_asyncio.client.exceptions import ApiException

from .client import Kube, translate


@dataclass(frozen=True)
class ServicePort:
    service: str
    namespace: str
    name: str  # the port's name ("" when it has none)
    port: int
    protocol: str
    cluster_ip: str  # "None" for headless Services


async def list_services(kube: Kube, namespace: str | None = None) -> list[ServicePort]:
    ns = namespace or kube.namespace
    try:
        services = await kube.core.list_namespaced_service(ns)
    except ApiException as exc:
        raise translate(exc, f"cannot list Services in {ns}") from exc
    return [p for s in services.items for p in _ports(s)]


async def service_ports(kube: Kube, name: str) -> list[ServicePort] | None:
    """The ports of Service ``name`` or ``name.namespace``; None if there is no such Service."""
    service, _, namespace = name.partition(".")
    namespace = namespace.removesuffix(".svc.cluster.local").removesuffix(".svc") or kube.namespace
    if "." in namespace:
        return None  # a host name, not NAME.NAMESPACE
    try:
        found = await kube.core.read_namespaced_service(service, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise translate(exc, f"cannot read Service {service} in {namespace}") from exc
    return _ports(found)


def _ports(service: object) -> list[ServicePort]:
    meta = service.metadata  # type: ignore[attr-defined]
    spec = service.spec  # type: ignore[attr-defined]
    return [
        ServicePort(meta.name, meta.namespace, p.name or "", int(p.port), p.protocol or "TCP",
                    spec.cluster_ip or "None")
        for p in spec.ports or ()
    ]
