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

Mirror intercepts (``--mirror``) take nothing: the Service keeps answering, the mesh sends a
*copy* with Gateway API's ``RequestMirror`` filter to the port's *mirror backend*, a Service
that selects the relay on a port of its own (the relay answers each copy at once and passes
it to the developers whose mirror matches it: :mod:`bridged.relay.router.copies`). A mesh
applies one rule per request, the most specific one (Gateway API's precedence: an Exact path,
then the longest PathPrefix, then a method match, then the most headers; ties go to the first
rule in the list), so the filter has to sit on every rule a mirrored request can land on, and
a mirror must never change where a request goes. Two plans, :func:`_route` picks:

- *exact* (one mirror with matchers, whose matches can be said together with each
  intercept's): before the intercepts' own rules, for each intercept a rule of its matches AND
  the mirror's, to its backend, with the filter; after them, the mirror's matches to the
  Service itself, with the filter; then the catch-all. A request both an intercept and the
  mirror match is matched by that intercept's combined rule, which is at least as specific
  as the intercept's own and as the mirror's on every criterion (the same path or a longer
  one than the default ``/``, a superset of the method and headers) and comes first: it wins,
  so the request reaches the relay, copied. Neither the mirror's rule (to the Service) nor an
  intercept's own (no filter) can then win for it. Intercepts whose matches cannot hold with
  the mirror's (an Exact header or path or the method, of different values) need no combined
  rule. Not exact where the precedence is not the API's: a RegularExpression path (its rank
  is implementation-specific: Istio puts it below PathPrefix) in the mirror or in an
  intercept it overlaps; nor where an intercept's and the mirror's matches cannot be said in
  one (two paths, two tests of one header), or past the 16 rules a route holds.
- *everything* (otherwise, and for a mirror without matchers, or two mirrors on a port): the
  filter on every rule, the rules unchanged. Every request of the port is copied to the
  relay, which applies each mirror's matchers itself and drops the rest at once: exact
  whatever the mesh's precedence or regex dialect, at the price of the whole port's traffic
  copied to the relay while the mirror lives (what the relay carries in a takeover anyway).

The relay copies HTTP/1.1 requests only: a mirror on a port whose route is a GRPCRoute, or
whose backends speak HTTP/2, is refused (:class:`RouteRefused`), never given a route.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..protocol import Matcher
from ..routing.rules import RequestHead, compile_matcher
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


def mirror_backend_name(service: str, port: int) -> str:
    return derived_name("bridged", service, f"{port}-mirror")


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


def mirror_backend_service(namespace: str, service: str, port: int, relay_port: int,
                           relay_selector: Mapping[str, str]) -> dict[str, Any]:
    """The Service the mesh sends the copies of Service port ``port`` to: the relay's mirror
    port for it (one for all the port's mirrors: the relay tells them apart by their
    matchers). Labelled as a backend (its ``intercept`` label ``mirror-PORT``), so that what
    removes the backends removes it too."""
    svc = backend_service(namespace, service, f"mirror-{port}", port, relay_port,
                          relay_selector)
    svc["metadata"]["name"] = mirror_backend_name(service, port)
    return svc


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


def http_route(namespace: str, service: str, port: int, intercepts: Intercepts,
               mirrors: Sequence[Sequence[Matcher]] = ()) -> dict[str, Any]:
    """The HTTPRoute of a port; ``mirrors``: the matchers of each mirror intercept of it."""
    return _route("HTTPRoute", match, namespace, service, port, intercepts, mirrors)


def grpc_route(namespace: str, service: str, port: int, intercepts: Intercepts,
               mirrors: Sequence[Sequence[Matcher]] = ()) -> dict[str, Any]:
    if mirrors:
        raise RouteRefused("a mirror copies HTTP/1.1 requests only for now, and this port "
                           "speaks gRPC (HTTP/2 streams are not mirrored yet)")
    return _route("GRPCRoute", grpc_match, namespace, service, port, intercepts, ())


def route(protocol: str, namespace: str, service: str, port: int, intercepts: Intercepts,
          mirrors: Sequence[Sequence[Matcher]] = ()) -> dict[str, Any]:
    """The route of a port that speaks ``protocol`` (:func:`port_protocol`)."""
    if protocol == "grpc":
        return grpc_route(namespace, service, port, intercepts, mirrors)
    if mirrors and protocol != "http":
        raise RouteRefused(f"a mirror copies HTTP/1.1 requests only for now, and this port "
                           f"speaks {protocol} (HTTP/2 streams are not mirrored yet)")
    return http_route(namespace, service, port, intercepts, mirrors)


#: rules an HTTPRoute or a GRPCRoute holds (their schemas' maxItems)
MAX_RULES = 16


def mirror_filter(service: str, port: int) -> dict[str, Any]:
    return {"type": "RequestMirror", "requestMirror": {"backendRef": {
        "group": "", "kind": "Service", "name": mirror_backend_name(service, port),
        "port": port}}}


def _route(kind: str, to_match: Callable[[Sequence[Matcher]], dict[str, Any]], namespace: str,
           service: str, port: int, intercepts: Intercepts,
           mirrors: Sequence[Sequence[Matcher]]) -> dict[str, Any]:
    def to(name: str) -> list[dict[str, Any]]:
        return [{"group": "", "kind": "Service", "name": name, "port": port}]

    def rule(name: str, matchers: Sequence[Matcher] | None,
             copied: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"backendRefs": to(name)}
        if matchers:
            out["matches"] = [to_match(matchers)]
        if copied:
            out["filters"] = [mirror_filter(service, port)]
        return out

    rules = [rule(backend_name(service, i), matchers) for i, matchers in intercepts]
    if all(matchers for _, matchers in intercepts):
        rules.append(rule(service, None))  # everything else: the Service's own pods
    if mirrors:
        exact = _exact_mirror_rules(service, intercepts, mirrors, rule)
        rules = exact if exact is not None and len(exact) <= MAX_RULES else \
            [{**r, "filters": [mirror_filter(service, port)]} for r in rules]
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
        "metadata": {"name": route_name(service, port), "namespace": namespace,
                     "labels": owned_labels(service)},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": service,
                                 "port": port}],
                 "rules": rules},
    }


def _exact_mirror_rules(service: str, intercepts: Intercepts,
                        mirrors: Sequence[Sequence[Matcher]],
                        rule: Callable[..., dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The *exact* plan's rules (see the module's docstring), or None where it cannot be
    said exactly."""
    if len(mirrors) != 1 or not mirrors[0]:
        return None
    mirror = tuple(mirrors[0])
    try:
        if _regex_path(mirror):
            return None
        combined = []
        for intercept_id, matchers in intercepts:
            both = matchers_and(matchers, mirror)
            if both is None:
                continue  # no request matches both: its own rule is right as it is
            if _regex_path(matchers):
                return None
            combined.append(rule(backend_name(service, intercept_id), both, copied=True))
    except RouteRefused:
        return None
    own = [rule(backend_name(service, i), matchers) for i, matchers in intercepts]
    tail = []
    if all(matchers for _, matchers in intercepts):  # else every request goes to one
        tail = [rule(service, mirror, copied=True), rule(service, None)]
    return [*combined, *own, *tail]


def _regex_path(matchers: Sequence[Matcher]) -> bool:
    """Whether the matchers' HTTPRoute match tests the path with a RegularExpression, whose
    precedence among rules each implementation decides (RouteRefused if they cannot be said:
    the caller gives up the exact plan)."""
    return (match(matchers).get("path") or {}).get("type") == "RegularExpression"


def _slot(m: Matcher) -> tuple[str, str]:
    """What a matcher tests: two of one slot are merged into one test, or cannot be."""
    if m.kind in ("path", "grpc-method"):
        return "path", ""
    return m.kind, m.name.lower() if m.kind == "header" else m.name


def _example(m: Matcher) -> RequestHead:
    """A request that an ``equals`` matcher's slot holds its value in, and nothing else."""
    if m.kind == "path":
        return RequestHead("GET", m.value, [])
    if m.kind == "method":
        return RequestHead(m.value, "/", [])
    if m.kind == "baggage":
        return RequestHead("GET", "/", [("baggage", f"{m.name}={m.value}")])
    return RequestHead("GET", "/", [(m.name, m.value)])


def _both(a: Matcher, b: Matcher) -> Matcher | None:
    """The one matcher that matches what both ``a`` and ``b`` match (same slot); None if
    nothing can; RouteRefused if no one matcher says it."""
    if a == b:
        return a
    if a.kind == b.kind != "grpc-method":
        for exact, other in ((a, b), (b, a)):
            if exact.op == "equals":  # the relay's own test says whether the value is in
                return exact if compile_matcher(other)(_example(exact)) else None
        if a.op == b.op == "prefix":  # by path elements: the deeper one, if nested
            deep, shallow = (a, b) if len(a.value.rstrip("/")) >= len(b.value.rstrip("/")) \
                else (b, a)
            return deep if compile_matcher(shallow)(_example(deep)) else None
    raise RouteRefused(f"{a.kind} {a.op} {a.value!r} and {b.kind} {b.op} {b.value!r} "
                       "cannot be said in one match")


def matchers_and(a: Sequence[Matcher], b: Sequence[Matcher]) -> tuple[Matcher, ...] | None:
    """Matchers that match exactly the requests both ``a`` and ``b`` match: None when no
    request can (each tests one header, the path or the method against values no request has
    at once); RouteRefused when they cannot be said so (two regexes of one header)."""
    out = {_slot(m): m for m in a}
    for m in b:
        slot = _slot(m)
        merged = _both(out[slot], m) if slot in out else m
        if merged is None:
            return None
        out[slot] = merged
    return tuple(out.values())
