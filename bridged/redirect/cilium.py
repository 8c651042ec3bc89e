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

An HTTP/2 port (gRPC, h2c: :func:`.gateway.port_protocol`) keeps HTTP/2 end to end: its
listener's codec takes h2c as well as HTTP/1.1 (``AUTO``), and its clusters — the relay's
backends and the Service's own pods — speak HTTP/2 upstream (Envoy would otherwise speak
HTTP/1.1 to them, which a gRPC server does not answer). A ``grpc-method`` matcher is the path
match of :func:`.gateway.grpc_method_path`, as the relay's rule tests it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ..protocol import Matcher
from . import RouteRefused, derived_name, owned_labels
from .gateway import Intercepts, backend_name, baggage_regex, grpc_method_path

GROUP, VERSION, PLURAL = "cilium.io", "v2", "ciliumenvoyconfigs"
_T = "type.googleapis.com/"
#: a cluster that speaks HTTP/2 to its endpoints (prior knowledge: h2c)
HTTP2_UPSTREAM = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}


def config_name(service: str) -> str:
    """One CiliumEnvoyConfig per Service: Cilium lets only one claim a Service's L7 redirect."""
    return derived_name("bridged", service)


def cluster(namespace: str, service: str, port: int) -> str:
    return f"{namespace}/{service}:{port}"


def route_match(matchers: Sequence[Matcher]) -> dict[str, Any]:
    """An Envoy RouteMatch for all the matchers at once."""
    out: dict[str, Any] = {"prefix": "/"}
    headers = []
    paths = [m for m in matchers if m.kind in ("path", "grpc-method")]
    if len(paths) > 1:
        raise RouteRefused("an Envoy route tests one path: a path and a grpc-method matcher "
                           "(or two of either) cannot both apply")
    for m in matchers:
        if m.kind == "path":
            # one path specifier: "/" as a prefix is every path, the default above
            if m.op == "prefix" and m.value.rstrip("/"):
                out = {"path_separated_prefix": m.value.rstrip("/")}  # by path elements
            elif m.op == "equals":
                out = {"path": m.value}
            elif m.op == "regex":
                out = {"safe_regex": {"regex": m.value}}
        elif m.kind == "grpc-method":
            kind, path = grpc_method_path(m)
            out = {"path": path} if kind == "Exact" else {"safe_regex": {"regex": path}}
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


def envoy_config(namespace: str, service: str, by_port: Mapping[int, Intercepts],
                 h2_ports: Collection[int] = ()) -> dict[str, Any]:
    """The config for every intercepted port of ``service``: per port, a listener that only
    that port is redirected to (``ports``), and its routes. ``h2_ports`` speak HTTP/2."""
    name = config_name(service)
    services: list[dict[str, Any]] = []
    backends: dict[str, list[str]] = {}
    resources: list[dict[str, Any]] = []
    clusters: dict[str, bool] = {}  # name → speaks HTTP/2, in order of first use

    def eds(name: str, h2: bool) -> dict[str, Any]:
        out = {"@type": _T + "envoy.config.cluster.v3.Cluster", "name": name,
               "type": "EDS", "eds_cluster_config": {"service_name": name},
               "connect_timeout": "5s", "lb_policy": "ROUND_ROBIN"}
        if h2:
            out["typed_extension_protocol_options"] = HTTP2_UPSTREAM
        return out

    for port, intercepts in sorted(by_port.items()):
        listener, routes = f"{name}-{port}-listener", f"{name}-{port}-routes"
        services.append({"name": service, "namespace": namespace, "listener": listener,
                         "ports": [port]})
        original = cluster(namespace, service, port)
        h2 = port in h2_ports
        route_list: list[dict[str, Any]] = []
        for intercept_id, matchers in intercepts:
            backend = backend_name(service, intercept_id)
            backends.setdefault(backend, []).append(str(port))
            target = cluster(namespace, backend, port)
            clusters[target] = h2
            route_list.append({"match": route_match(matchers),
                               "route": {"cluster": target, "timeout": "0s"}})
        route_list.append({"match": {"prefix": "/"},
                           "route": {"cluster": original, "timeout": "0s"}})
        clusters[original] = h2
        resources += [
            {"@type": _T + "envoy.config.listener.v3.Listener", "name": listener,
             "filter_chains": [{"filters": [{
                 "name": "envoy.filters.network.http_connection_manager",
                 "typed_config": {
                     "@type": _T + "envoy.extensions.filters.network."
                                   "http_connection_manager.v3.HttpConnectionManager",
                     "stat_prefix": listener,
                     **({"codec_type": "AUTO"} if h2 else {}),  # h2c or HTTP/1.1, by preface
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
    resources += [eds(c, h2) for c, h2 in clusters.items()]
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "CiliumEnvoyConfig",
        "metadata": {"name": name, "namespace": namespace, "labels": owned_labels(service)},
        "spec": {"services": services, "backendServices": backend_services,
                 "resources": resources},
    }
