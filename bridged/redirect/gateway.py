"""The ``gateway`` strategy: a Gateway API HTTPRoute attached to the Service (GAMMA).

One HTTPRoute per intercepted Service port, its ``parentRef`` the Service itself (``kind:
Service``, as GAMMA meshes — Istio, Linkerd, Cilium — expect): a rule per live intercept
sends the requests that match it to that intercept's *backend* Service, which selects the
relay pod; a last rule sends everything else back to the Service itself, i.e. its own pods
(without it, GAMMA answers requests no rule matches with 404). The Service is never changed
and the mesh keeps its mTLS to the original pods. The relay's router applies the same matchers
again (:mod:`bridged.routing.rules` follows HTTPRoute's semantics), so what reaches a
developer is decided in one place even where the mesh's regex dialect differs.

A port that speaks gRPC (its ``appProtocol`` is ``grpc`` or ``kubernetes.io/h2c``, or an
intercept says ``grpc``) gets a GRPCRoute instead, of the same shape: headers and the gRPC
method are what it can match, so an intercept matching a path or an HTTP method is refused
rather than given a broader route. Backends of an HTTP/2 port carry an HTTP/2 ``appProtocol``
so that the mesh speaks HTTP/2 to the relay. On an HTTPRoute, a ``grpc-method`` matcher is the
path match Envoy makes of GRPCRoute's method match (:func:`grpc_method_path`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..protocol import Matcher
from . import RouteRefused, derived_name, owned_labels

GROUP, VERSION, PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"
GRPC_PLURAL = "grpcroutes"
INTERCEPT_LABEL = "bridged.dev/intercept"

#: a Service port's appProtocol saying its clients speak HTTP/2 cleartext: gRPC, or h2c
#: (Kubernetes' standard name, KEP-3726); such a port gets a GRPCRoute
H2_APP_PROTOCOLS = ("grpc", "kubernetes.io/h2c")
#: what each protocol's backend port is named (meshes that predate appProtocol read the name)
_PORT_NAMES = {"http": "http", "h2c": "http2", "grpc": "grpc"}
#: names GRPCRoute's Exact method match takes (its CEL rules): a plain name is also a path as
#: is, so an ``equals`` matcher of other names becomes an escaped regex instead
_SERVICE_NAME = re.compile(r"(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*")
_METHOD_NAME = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")

#: (intercept id, its matchers), in the order the relay's router would try them
Intercepts = Sequence[tuple[str, Sequence[Matcher]]]


def route_name(service: str, port: int) -> str:
    return derived_name("bridged", service, str(port))


def backend_name(service: str, intercept_id: str) -> str:
    return derived_name("bridged", service, intercept_id[:12].lower())


def port_protocol(app_protocol: str | None, claimed: Iterable[str]) -> str:
    """What a Service port speaks, for its routes: ``grpc`` (a GRPCRoute, HTTP/2 backends)
    when its appProtocol says HTTP/2 or an intercept of it says grpc; ``h2c`` (an HTTPRoute,
    HTTP/2 backends) when an intercept says h2c; else ``http``."""
    claims = set(claimed)
    if (app_protocol or "").lower() in H2_APP_PROTOCOLS or "grpc" in claims:
        return "grpc"
    return "h2c" if "h2c" in claims else "http"


def backend_service(namespace: str, service: str, intercept_id: str, port: int,
                    relay_port: int, relay_selector: Mapping[str, str], *,
                    protocol: str = "http", app_protocol: str = "") -> dict[str, Any]:
    """The Service that one intercept's matching requests are sent to: the relay pod, on the
    relay port that serves the intercepted Service port. ``protocol`` is the port's
    (:func:`port_protocol`), ``app_protocol`` the Service port's own: an HTTP/2 port's
    backend says HTTP/2 too (the Service's own value where it says so), else the mesh would
    speak HTTP/1.1 to the relay."""
    spec_port: dict[str, Any] = {"name": _PORT_NAMES.get(protocol, "http"), "port": port,
                                 "targetPort": relay_port, "protocol": "TCP"}
    if protocol != "http":
        spec_port["appProtocol"] = app_protocol if app_protocol.lower() in H2_APP_PROTOCOLS \
            else "kubernetes.io/h2c"
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": backend_name(service, intercept_id), "namespace": namespace,
                     "labels": {**owned_labels(service), INTERCEPT_LABEL: intercept_id}},
        "spec": {"type": "ClusterIP", "selector": dict(relay_selector),
                 "ports": [spec_port]},
    }


def baggage_regex(key: str, value: str, op: str) -> str:
    """A regex on the whole ``baggage`` header that finds member ``key`` with this value
    (members are comma-separated, each may carry ``;properties``)."""
    value_re = re.escape(value) if op == "equals" else f"(?:{value})"
    return rf"(?:^|.*,)\s*{re.escape(key)}\s*=\s*{value_re}\s*(?:;[^,]*)?(?:,.*)?$"


def _header_matches(matchers: Sequence[Matcher]) -> list[dict[str, Any]]:
    """The header and baggage matchers as the routes' header matches (HTTPRoute's and
    GRPCRoute's are alike). A route tests a header name once (a list keyed by name: the API
    server refuses a second entry), so two matchers of one header are refused."""
    headers: list[dict[str, Any]] = []
    for m in matchers:
        if m.kind == "header":
            headers.append({"type": "Exact" if m.op == "equals" else "RegularExpression",
                            "name": m.name, "value": m.value})
        elif m.kind == "baggage":
            headers.append({"type": "RegularExpression", "name": "baggage",
                            "value": baggage_regex(m.name, m.value, m.op)})
    names = [h["name"].lower() for h in headers]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RouteRefused(f"a route tests each header once: {', '.join(twice)} is matched "
                           "more than once (join the values in one regex)")
    return headers


def _plain_names(m: Matcher) -> bool:
    """Whether an ``equals`` grpc-method matcher names plain identifiers (taken as they are
    by GRPCRoute's Exact match and by a path's Exact match)."""
    return m.op == "equals" and (not m.name or bool(_SERVICE_NAME.fullmatch(m.name))) and \
        (not m.value or bool(_METHOD_NAME.fullmatch(m.value)))


def _grpc_method_parts(m: Matcher) -> tuple[str, str]:
    """(service, method) as regexes (``""`` for an empty part), the matcher checked as the
    relay's rule checks it."""
    if not m.name and not m.value:
        raise RouteRefused("a grpc-method matcher needs a service, a method or both")
    if m.op == "regex":
        return m.name, m.value
    if m.op != "equals":
        raise RouteRefused(f"grpc-method matchers take op equals or regex, not {m.op!r}")
    if "/" in m.name + m.value:
        raise RouteRefused(f"gRPC service or method {m.name!r}/{m.value!r} cannot contain '/'")
    return re.escape(m.name) if m.name else "", re.escape(m.value) if m.value else ""


def grpc_method_path(m: Matcher) -> tuple[str, str]:
    """The path match, (HTTPRoute type, value), that a grpc-method matcher stands for: a gRPC
    call's path is ``/package.Service/Method``, and this is the relay's rule
    (:func:`bridged.routing.rules._grpc_method_test`) said as a path match: service and method
    the exact path; the service alone ``/service/`` and one path element (not a PathPrefix,
    which would also take ``/service`` and deeper paths); the method alone any one service
    element before it; with ``regex`` each part a whole-part regex, ``[^/]+`` for an empty
    one. RegularExpression is an implementation-specific match; Envoy-based meshes have it."""
    if m.name and m.value and _plain_names(m):
        return "Exact", f"/{m.name}/{m.value}"
    service, method = _grpc_method_parts(m)
    if m.op == "equals" and not method:
        return "RegularExpression", f"/{service}/[^/]*"
    return "RegularExpression", f"/(?:{service or '[^/]+'})/(?:{method or '[^/]+'})"


def grpc_method_match(m: Matcher) -> dict[str, Any]:
    """GRPCRoute's method match for a grpc-method matcher, empty parts omitted (any)."""
    if _plain_names(m):
        out: dict[str, Any] = {"type": "Exact"}
        service, method = m.name, m.value
    else:
        out = {"type": "RegularExpression"}
        service, method = _grpc_method_parts(m)
    if service:
        out["service"] = service
    if method:
        out["method"] = method
    return out


def match(matchers: Sequence[Matcher]) -> dict[str, Any]:
    """One HTTPRouteMatch: all the matchers at once (AND)."""
    out: dict[str, Any] = {}
    for m in matchers:
        path = None
        if m.kind == "path":
            path = {"type": {"equals": "Exact", "prefix": "PathPrefix"}.get(
                m.op, "RegularExpression"), "value": m.value}
        elif m.kind == "grpc-method":
            kind, value = grpc_method_path(m)
            path = {"type": kind, "value": value}
        elif m.kind == "method":
            out["method"] = m.value
        if path is not None:
            if "path" in out:
                raise RouteRefused("an HTTPRoute match tests one path: a path and a "
                                   "grpc-method matcher (or two of either) cannot both apply")
            out["path"] = path
    headers = _header_matches(matchers)
    if headers:
        out["headers"] = headers
    return out


def grpc_match(matchers: Sequence[Matcher]) -> dict[str, Any]:
    """One GRPCRouteMatch: all the matchers at once (AND). A GRPCRoute matches headers and
    the gRPC method only: other matchers are refused, never dropped (a broader route)."""
    out: dict[str, Any] = {}
    for m in matchers:
        if m.kind == "grpc-method":
            if "method" in out:
                raise RouteRefused("a GRPCRoute match tests one gRPC method: two grpc-method "
                                   "matchers cannot both apply")
            out["method"] = grpc_method_match(m)
        elif m.kind == "path":
            raise RouteRefused(f"a GRPCRoute matches gRPC methods and headers, not a path "
                               f"({m.op} {m.value!r}): match the gRPC method instead")
        elif m.kind == "method":
            raise RouteRefused(f"a GRPCRoute matches gRPC methods and headers, not the HTTP "
                               f"method ({m.value!r}): every gRPC call is a POST")
        elif m.kind not in ("header", "baggage"):
            raise RouteRefused(f"a GRPCRoute cannot match {m.kind!r}")
    headers = _header_matches(matchers)
    if headers:
        out["headers"] = headers
    return out


def http_route(namespace: str, service: str, port: int,
               intercepts: Intercepts) -> dict[str, Any]:
    return _route("HTTPRoute", match, namespace, service, port, intercepts)


def grpc_route(namespace: str, service: str, port: int,
               intercepts: Intercepts) -> dict[str, Any]:
    return _route("GRPCRoute", grpc_match, namespace, service, port, intercepts)


def route(protocol: str, namespace: str, service: str, port: int,
          intercepts: Intercepts) -> dict[str, Any]:
    """The route of a port that speaks ``protocol`` (:func:`port_protocol`)."""
    make = grpc_route if protocol == "grpc" else http_route
    return make(namespace, service, port, intercepts)


def _route(kind: str, to_match: Callable[[Sequence[Matcher]], dict[str, Any]], namespace: str,
           service: str, port: int, intercepts: Intercepts) -> dict[str, Any]:
    def to(name: str) -> list[dict[str, Any]]:
        return [{"group": "", "kind": "Service", "name": name, "port": port}]

    rules: list[dict[str, Any]] = []
    for intercept_id, matchers in intercepts:
        rule: dict[str, Any] = {"backendRefs": to(backend_name(service, intercept_id))}
        if matchers:
            rule["matches"] = [to_match(matchers)]
        rules.append(rule)
    if all(matchers for _, matchers in intercepts):
        rules.append({"backendRefs": to(service)})  # everything else: the Service's own pods
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
        "metadata": {"name": route_name(service, port), "namespace": namespace,
                     "labels": owned_labels(service)},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": service,
                                 "port": port}],
                 "rules": rules},
    }
