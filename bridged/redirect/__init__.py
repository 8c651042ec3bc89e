"""How the cluster's traffic for a Service reaches the relay's router: the redirect strategies.

Pure: each module turns the objects it is given (plain dicts as the API serves them) into the
objects to write, and back; :mod:`bridged.kube.redirects` does the reading and writing, and the
relay (:mod:`bridged.relay.redirect`) decides when, from the leases of its intercepts.

- :mod:`.takeover` (any cluster): the Service's selector is pointed at the relay pod and each
  of its ports at a relay port; the original selector and ports are kept in an annotation and
  in a *shadow* Service (original selector, ClusterIP) through which the relay reaches the
  original pods. Undone exactly, unless someone else changed the Service meanwhile.
- :mod:`.gateway` (meshes implementing GAMMA): an HTTPRoute (a GRPCRoute for a gRPC port)
  whose parent is the Service sends only the matching requests to a per-intercept Service
  that selects the relay pod.
- :mod:`.cilium`: a CiliumEnvoyConfig doing the same with Cilium's Envoy.
"""

from __future__ import annotations

import hashlib

from ..kube.manifests import MANAGED_BY

#: label on everything a redirect creates, naming the intercepted Service
REDIRECT_OF = "bridged.dev/redirect-of"


class RouteRefused(Exception):
    """The intercept's matchers cannot be said in the route the strategy writes: the message
    says which and what to do (a broader route would send others' requests astray)."""


def derived_name(prefix: str, service: str, suffix: str = "") -> str:
    """A DNS-1035 name for an object bridged makes for ``service``: readable when it fits in
    63 characters, else cut and made unique with a hash of what was cut."""
    name = f"{prefix}-{service}{'-' + suffix if suffix else ''}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:54].rstrip('-')}-{digest}"


def owned_labels(service: str) -> dict[str, str]:
    return {MANAGED_BY: "bridged", REDIRECT_OF: service}
