"""Which destinations of the daemon's proxies the cluster knows: the proxy's name rules.

A client of the SOCKS5 or HTTP proxy names a host; :func:`route_of` says where it goes:

- ``"cluster"``: through the tunnel, as a channel the relay opens (and resolves with the
  cluster's DNS): IP literals inside the cluster's ranges (``cluster_cidrs``), names under the
  cluster domain (``*.svc``, ``*.svc.cluster.local``, ``*.cluster.local``) and single labels
  (``redis``: a short Service name, as a pod's resolv.conf search path makes it);
- ``"direct"``: connected from the laptop: ``localhost`` and loopback, every other IP literal;
- ``"ask"``: names with dots the laptop cannot place (``orders.team-a``, ``db-0.db``,
  ``example.com``): the daemon asks the relay whether it resolves them in the workload's
  namespace (:func:`search_names`), and caches the answer.

``always_direct`` and ``always_cluster`` (shell-style patterns, ``*.corp.example``) are checked
first, direct before cluster. Pure: no I/O.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from dataclasses import dataclass
from typing import Literal

__all__ = ["NameRules", "Route", "route_of", "search_names"]

Route = Literal["cluster", "direct", "ask"]

#: names that are the laptop itself whatever the resolver says (RFC 6761 reserves .localhost)
_LOOPBACK_NAMES = ("localhost", "*.localhost", "localhost.localdomain", "ip6-localhost",
                   "ip6-loopback")


@dataclass(frozen=True)
class NameRules:
    """Settings of :func:`route_of`."""

    #: the cluster's DNS domain (kubelet ``--cluster-domain``): ``cluster.local`` unless the
    #: cluster was set up otherwise
    cluster_domain: str = "cluster.local"
    #: Service and pod ranges (CIDRs): IPs inside go through the tunnel. Empty by default:
    #: the ranges differ per cluster and a wrong guess would send laptop traffic to the relay
    cluster_cidrs: tuple[str, ...] = ()
    #: patterns of names always connected from the laptop (a VPN's names, say)
    always_direct: tuple[str, ...] = ()
    #: patterns of names always sent through the tunnel (external names only the cluster's
    #: DNS knows)
    always_cluster: tuple[str, ...] = ()


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p.lower().rstrip(".")) for p in patterns)


def route_of(host: str, rules: NameRules | None = None) -> Route:
    """Where the proxies send a connection to ``host`` (a name or an IP literal)."""
    rules = rules or NameRules()
    name = host.strip().lower().rstrip(".")
    if _matches(name, rules.always_direct):
        return "direct"
    if _matches(name, rules.always_cluster):
        return "cluster"
    ip = _ip(name)
    if ip is not None:
        if ip.is_loopback:
            return "direct"
        inside = any(ip in ipaddress.ip_network(c, strict=False) for c in rules.cluster_cidrs
                     if ipaddress.ip_network(c, strict=False).version == ip.version)
        return "cluster" if inside else "direct"
    if _matches(name, _LOOPBACK_NAMES):
        return "direct"
    domain = rules.cluster_domain.lower().strip(".")
    if name.endswith((".svc", f".svc.{domain}", f".{domain}")):
        return "cluster"
    if "." not in name:
        return "cluster"
    return "ask"


def search_names(name: str, namespace: str, cluster_domain: str = "cluster.local") -> list[str]:
    """The names a pod in ``namespace`` tries for ``name``, in its resolv.conf search order
    (``NS.svc.DOMAIN``, ``svc.DOMAIN``, ``DOMAIN``). Without a namespace (a relay outside
    Kubernetes) only ``name`` itself."""
    name = name.rstrip(".")
    domain = cluster_domain.strip(".")
    if not namespace:
        return [name]
    return [f"{name}.{namespace}.svc.{domain}", f"{name}.svc.{domain}", f"{name}.{domain}"]
