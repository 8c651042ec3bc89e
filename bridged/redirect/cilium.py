"""The ``cilium`` strategy: a CiliumEnvoyConfig that gives the Service to Cilium's Envoy.

One config per Service (Cilium lets only one claim a Service's L7 redirect): ``spec.services``
sends each intercepted port — and only it, ``ports`` — to an Envoy listener of ours; its routes
send the requests that match a live intercept to that intercept's backend Service (the relay
pod, the same backend Services as :mod:`.gateway`), and everything else to the Service's own
pods, the EDS cluster ``namespace/name:port``. The Service and the backends are listed in
``spec.backendServices`` with their ports, so that Cilium publishes those clusters. Resources
follow Envoy's v3 API (Listener with an HttpConnectionManager, RouteConfiguration, EDS
Clusters); route timeouts are off so a request held at a breakpoint is not cut. The Service is
never changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..protocol import Matcher
from . import derived_name, owned_labels
from .gateway import Intercepts, backend_name, baggage_regex

GROUP, VERSION, PLURAL = "cilium.io", "v2", "ciliumenvoyconfigs"
_T = "type.googleapis.com/"


def config_name(service: str) -> str:
    """One CiliumEnvoyConfig per Service: Cilium lets only one claim a Service's L7 redirect."""
    return derived_name("bridged", service)


def cluster(namespace: str, service: str, port: int) -> str:
    return f"{namespace}/{service}:{port}"


def route_match(matchers: Sequence[Matcher]) -> dict[str, Any]:
    """An Envoy RouteMatch for all the matchers at once."""
    out: dict[str, Any] = {"prefix": "/"}
    headers = []
    for m in matchers:
        if m.kind == "path":
            # one path specifier: "/" as a prefix is every path, the default above
            if m.op == "prefix" and m.value.rstrip("/"):
                out = {"path_separated_prefix": m.value.rstrip("/")}  # by path elements
            elif m.op == "equals":
                out = {"path": m.value}
            elif m.op == "regex":
                out = {"safe_regex": {"regex": m.value}}
        elif m.kind == "header":
            key = "exact" if m.op == "equals" else "safe_regex"
            value: Any = m.value if m.op == "equals" else {"regex": m.value}
            headers.append({"name": m.name, "string_match": {key: value}})
        elif m.kind == "baggage":
            headers.append({"name": "baggage", "string_match": {
                "safe_regex": {"regex": baggage_regex(m.name, m.value, m.op)}}})
        elif m.kind == "method":
            headers.append({"name": ":method", "string_match": {"exact": m.value}})
    if headers:
        out["headers"] = headers
    return out


def envoy_config(namespace: str, service: str,
                 by_port: Mapping[int, Intercepts]) -> dict[str, Any]:
    """The config for every intercepted port of ``service``: per port, a listener that only
    that port is redirected to (``ports``), and its routes."""
    name = config_name(service)
    services: list[dict[str, Any]] = []
    backends: dict[str, list[str]] = {}
    resources: list[dict[str, Any]] = []
    clusters: list[str] = []

    def eds(name: str) -> dict[str, Any]:
        return {"@type": _T + "envoy.config.cluster.v3.Cluster", "name": name,
                "type": "EDS", "eds_cluster_config": {"service_name": name},
                "connect_timeout": "5s", "lb_policy": "ROUND_ROBIN"}

    for port, intercepts in sorted(by_port.items()):
        listener, routes = f"{name}-{port}-listener", f"{name}-{port}-routes"
        services.append({"name": service, "namespace": namespace, "listener": listener,
                         "ports": [port]})
        original = cluster(namespace, service, port)
        route_list: list[dict[str, Any]] = []
        for intercept_id, matchers in intercepts:
            backend = backend_name(service, intercept_id)
            backends.setdefault(backend, []).append(str(port))
            target = cluster(namespace, backend, port)
            clusters.append(target)
            route_list.append({"match": route_match(matchers),
                               "route": {"cluster": target, "timeout": "0s"}})
        route_list.append({"match": {"prefix": "/"},
                           "route": {"cluster": original, "timeout": "0s"}})
        clusters.append(original)
        resources += [
            {"@type": _T + "envoy.config.listener.v3.Listener", "name": listener,
             "filter_chains": [{"filters": [{
                 "name": "envoy.filters.network.http_connection_manager",
                 "typed_config": {
                     "@type": _T + "envoy.extensions.filters.network."
                                   "http_connection_manager.v3.HttpConnectionManager",
                     "stat_prefix": listener,
                     "rds": {"route_config_name": routes},
                     "stream_idle_timeout": "0s",
                     "http_filters": [{
                         "name": "envoy.filters.http.router",
                         "typed_config": {"@type": _T + "envoy.extensions.filters.http."
                                                        "router.v3.Router"}}],
                 }}]}]},
            {"@type": _T + "envoy.config.route.v3.RouteConfiguration", "name": routes,
             "virtual_hosts": [{"name": f"{name}-{port}", "domains": ["*"],
                                "routes": route_list}]},
        ]
    # the Service itself among the backends too: older Cilium publishes "ns/name:port" EDS
    # endpoints only for a service listed with a port filter
    backend_services = [{"name": service, "namespace": namespace,
                         "number": [str(p) for p in sorted(by_port)]}]
    backend_services += [{"name": b, "namespace": namespace, "number": numbers}
                         for b, numbers in backends.items()]
    resources += [eds(c) for c in dict.fromkeys(clusters)]
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "CiliumEnvoyConfig",
        "metadata": {"name": name, "namespace": namespace, "labels": owned_labels(service)},
        "spec": {"services": services, "backendServices": backend_services,
                 "resources": resources},
    }
