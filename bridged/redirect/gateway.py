"""The ``gateway`` strategy: a Gateway API HTTPRoute attached to the Service (GAMMA).

One HTTPRoute per intercepted Service port, its ``parentRef`` the Service itself (``kind:
Service``, as GAMMA meshes — Istio, Linkerd, Cilium — expect): a rule per live intercept
sends the requests that match it to that intercept's *backend* Service, which selects the
relay pod; a last rule sends everything else back to the Service itself, i.e. its own pods
(without it, GAMMA answers requests no rule matches with 404). The Service is never changed
and the mesh keeps its mTLS to the original pods. The relay's router applies the same matchers
again (:mod:`bridged.routing.rules` follows HTTPRoute's semantics), so what reaches a
developer is decided in one place even where the mesh's regex dialect differs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..protocol import Matcher
from . import derived_name, owned_labels

GROUP, VERSION, PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"
INTERCEPT_LABEL = "bridged.dev/intercept"

#: (intercept id, its matchers), in the order the relay's router would try them
Intercepts = Sequence[tuple[str, Sequence[Matcher]]]


def route_name(service: str, port: int) -> str:
    return derived_name("bridged", service, str(port))


def backend_name(service: str, intercept_id: str) -> str:
    return derived_name("bridged", service, intercept_id[:12].lower())


def backend_service(namespace: str, service: str, intercept_id: str, port: int,
                    relay_port: int, relay_selector: Mapping[str, str]) -> dict[str, Any]:
    """The Service that one intercept's matching requests are sent to: the relay pod, on the
    relay port that serves the intercepted Service port."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": backend_name(service, intercept_id), "namespace": namespace,
                     "labels": {**owned_labels(service), INTERCEPT_LABEL: intercept_id}},
        "spec": {"type": "ClusterIP", "selector": dict(relay_selector),
                 "ports": [{"name": "http", "port": port, "targetPort": relay_port,
                            "protocol": "TCP"}]},
    }


def baggage_regex(key: str, value: str, op: str) -> str:
    """A regex on the whole ``baggage`` header that finds member ``key`` with this value
    (members are comma-separated, each may carry ``;properties``)."""
    value_re = re.escape(value) if op == "equals" else f"(?:{value})"
    return rf"(?:^|.*,)\s*{re.escape(key)}\s*=\s*{value_re}\s*(?:;[^,]*)?(?:,.*)?$"


def match(matchers: Sequence[Matcher]) -> dict[str, Any]:
    """One HTTPRouteMatch: all the matchers at once (AND)."""
    out: dict[str, Any] = {}
    headers = []
    for m in matchers:
        if m.kind == "header":
            headers.append({"type": "Exact" if m.op == "equals" else "RegularExpression",
                            "name": m.name, "value": m.value})
        elif m.kind == "baggage":
            headers.append({"type": "RegularExpression", "name": "baggage",
                            "value": baggage_regex(m.name, m.value, m.op)})
        elif m.kind == "path":
            out["path"] = {"type": {"equals": "Exact", "prefix": "PathPrefix"}.get(
                m.op, "RegularExpression"), "value": m.value}
        elif m.kind == "method":
            out["method"] = m.value
    if headers:
        out["headers"] = headers
    return out


def http_route(namespace: str, service: str, port: int,
               intercepts: Intercepts) -> dict[str, Any]:
    def to(name: str) -> list[dict[str, Any]]:
        return [{"group": "", "kind": "Service", "name": name, "port": port}]

    rules: list[dict[str, Any]] = []
    for intercept_id, matchers in intercepts:
        rule: dict[str, Any] = {"backendRefs": to(backend_name(service, intercept_id))}
        if matchers:
            rule["matches"] = [match(matchers)]
        rules.append(rule)
    if all(matchers for _, matchers in intercepts):
        rules.append({"backendRefs": to(service)})  # everything else: the Service's own pods
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "HTTPRoute",
        "metadata": {"name": route_name(service, port), "namespace": namespace,
                     "labels": owned_labels(service)},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": service,
                                 "port": port}],
                 "rules": rules},
    }
