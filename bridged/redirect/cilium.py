"""The ``cilium`` strategy: a CiliumEnvoyConfig that gives the Service to Cilium's Envoy.

``spec.services`` sends the Service's traffic to an Envoy listener of ours (Cilium syncs the
Service's own pods to Envoy as the EDS cluster ``namespace/name:port``); its routes send the
requests that match a live intercept to that intercept's backend Service (the relay pod, the
same backend Services as :mod:`.gateway`, listed in ``spec.backendServices`` so Cilium syncs
them too), and everything else to the Service's own pods. Resources follow Envoy's v3 API
(Listener with an HttpConnectionManager, RouteConfiguration, EDS Clusters); route timeouts
are off so a request held at a breakpoint is not cut. The Service is never changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..protocol import Matcher
from . import derived_name, owned_labels
from .gateway import Intercepts, backend_name, baggage_regex

GROUP, VERSION, PLURAL = "cilium.io", "v2", "ciliumenvoyconfigs"
_T = "type.googleapis.com/"


def config_name(service: str, port: int) -> str:
    return derived_name("bridged", service, str(port))


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


def envoy_config(namespace: str, service: str, port: int,
                 intercepts: Intercepts) -> dict[str, Any]:
    name = config_name(service, port)
    listener, routes = f"{name}-listener", f"{name}-routes"
    original = cluster(namespace, service, port)
    backends = [backend_name(service, i) for i, _ in intercepts]
    route_list: list[dict[str, Any]] = [
        {"match": route_match(matchers),
         "route": {"cluster": cluster(namespace, backend, port), "timeout": "0s"}}
        for (_, matchers), backend in zip(intercepts, backends, strict=True)]
    route_list.append({"match": {"prefix": "/"},
                       "route": {"cluster": original, "timeout": "0s"}})

    def eds(name: str) -> dict[str, Any]:
        return {"@type": _T + "envoy.config.cluster.v3.Cluster", "name": name,
                "type": "EDS", "eds_cluster_config": {"service_name": name},
                "connect_timeout": "5s", "lb_policy": "ROUND_ROBIN"}

    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "CiliumEnvoyConfig",
        "metadata": {"name": name, "namespace": namespace, "labels": owned_labels(service)},
        "spec": {
            "services": [{"name": service, "namespace": namespace, "listener": listener}],
            "backendServices": [{"name": b, "namespace": namespace, "number": [str(port)]}
                                for b in backends],
            "resources": [
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
                 "virtual_hosts": [{"name": name, "domains": ["*"], "routes": route_list}]},
                eds(original),
                *(eds(cluster(namespace, b, port)) for b in backends),
            ],
        },
    }
