"""Service addresses in a container's environment, made the laptop's forwards.

Rewrites (:func:`apply_rewrites`): ``rewrites`` maps cluster addresses ``host:port`` (a Service
name in any of its DNS forms, a cluster IP, ``[v6]:port``) to the local forward ``host:port``.
Values are never edited by substring. A value changes only by these rules:

1. *address tokens*: ``host:port`` inside any value (URLs, comma lists, plain ``redis:6379``)
   where ``host`` is delimited (not preceded by a letter, digit, ``_``, ``.`` or ``-``) and the
   port is complete (not followed by a letter, digit, ``_``, ``-``, ``@`` or ``.x``): so
   ``myredis:6379``, ``a.redis:6379``, ``redis:63790`` and the userinfo in
   ``redis://user:6379@host`` are left alone. Host names match case-insensitively, with or
   without a final dot;
2. *URLs without a port*: ``scheme://[userinfo@]host[,host...]`` with a scheme whose default port
   is well known (http 80, https 443, redis 6379, postgres 5432, ...): ``host`` gets the
   forward's ``host:port`` when ``host:default-port`` is rewritten;
3. *host/port pairs*: a variable named ``STEM_HOST``/``_HOSTNAME``/``_ADDR``/``_ADDRESS`` whose
   whole value is a rewritten host, and ``STEM_PORT`` whose whole value is a port of it: both
   are replaced. The Service variables are such pairs (``X_SERVICE_HOST``/``X_SERVICE_PORT``,
   ``X_PORT_P_TCP_ADDR``/``X_PORT_P_TCP_PORT``); ``X_SERVICE_PORT_<NAME>`` follows
   ``X_SERVICE_HOST``; ``X_PORT`` and ``X_PORT_P_TCP`` are URLs (rule 1);
4. *host alone*: such a host variable whose ``STEM_PORT`` is absent or no port number (like the
   Docker-link ``REDIS_PORT=tcp://...`` of a Service ``redis``) gets the forward's host when all
   forwards of that host share one local host; a warning says so when a port differs.

A value that is a Service name but not in a host variable (``CACHE_BACKEND=redis``) is never
touched. A variable keeps its :attr:`EnvVar.secret` flag and gains
:attr:`EnvVar.rewritten_from`.

Which names a pod uses for a Service is :func:`service_names` (the cluster's DNS forms); the
proxy's rules for "which names does the cluster know" belong beside it, in this package.
Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import replace

from ..errors import ConfigError
from .result import EnvResult

__all__ = ["SCHEME_PORTS", "apply_rewrites", "join_host_port", "rewrite_value",
           "service_names", "service_rewrites"]


def join_host_port(host: str, port: int | str) -> str:
    """``host:port``, an IPv6 address in brackets (Go's ``net.JoinHostPort``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


#: default ports of URL schemes, for rule 2 (URLs that name no port)
SCHEME_PORTS = {
    "http": 80, "ws": 80, "https": 443, "wss": 443, "redis": 6379, "rediss": 6379,
    "postgres": 5432, "postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mongodb": 27017,
    "amqp": 5672, "amqps": 5671, "nats": 4222, "memcached": 11211, "ldap": 389, "ldaps": 636,
}
_HOST_SUFFIXES = ("_HOST", "_HOSTNAME", "_ADDR", "_ADDRESS")
_NAME_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.?"
_HOST = r"(?:\[[0-9A-Fa-f:.%]+\]|" + _NAME_HOST + r")"
_TOKEN = re.compile(r"(?<![A-Za-z0-9_.\-])(" + _HOST + r"):([0-9]{1,5})"
                    r"(?![0-9A-Za-z_@\-]|\.[A-Za-z0-9])")
_URL = re.compile(r"(?<![A-Za-z0-9+.\-])([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#\s\"'<>]*)")
_ENTRY = re.compile(r"^(" + _HOST + r")(?::([0-9]{1,5}))?$")

Address = tuple[str, int]


def _norm_host(host: str) -> str:
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host.split("%")[0]).compressed
    except ValueError:
        return host.lower().rstrip(".")


def _split_address(text: str) -> Address:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 \
            or (":" in host and not host.startswith("[")):
        raise ConfigError(f"rewrite {text!r}: expected HOST:PORT (IPv6 as [ADDR]:PORT)")
    return _norm_host(host), int(port)


def _parse_rewrites(rewrites: Mapping[str, str]) -> dict[Address, Address]:
    table: dict[Address, Address] = {}
    for cluster, local in rewrites.items():
        table[_split_address(cluster)] = _split_address(local)
    return table


def _render(address: Address) -> str:
    return join_host_port(*address)


def rewrite_value(value: str, table: Mapping[Address, Address]) -> str:
    """Rules 1 and 2 of the module docstring on one value; everything else is kept."""
    def tokens(text: str) -> str:
        def sub(m: re.Match[str]) -> str:
            target = table.get((_norm_host(m.group(1)), int(m.group(2))))
            return _render(target) if target else m.group(0)
        return _TOKEN.sub(sub, text)

    out: list[str] = []
    pos = 0
    for m in _URL.finditer(value):
        out.append(tokens(value[pos:m.start()]))
        scheme, authority = m.group(1), m.group(2)
        userinfo, at, hosts = authority.rpartition("@")
        entries = []
        for entry in hosts.split(","):
            em = _ENTRY.match(entry)
            port = int(em.group(2)) if em and em.group(2) else SCHEME_PORTS.get(scheme.lower())
            target = table.get((_norm_host(em.group(1)), port)) if em and port else None
            entries.append(_render(target) if target else entry)
        out.append(f"{scheme}://{userinfo}{at}{','.join(entries)}")
        pos = m.end()
    out.append(tokens(value[pos:]))
    return "".join(out)


def apply_rewrites(result: EnvResult, rewrites: Mapping[str, str]) -> EnvResult:
    """Make the cluster addresses in ``result`` local: the four rules of the module docstring.
    Every value is judged on its value before any rewrite."""
    table = _parse_rewrites(rewrites)
    if not table:
        return result
    by_host: dict[str, list[tuple[int, Address]]] = {}
    for (cluster_host, cluster_port), forward in table.items():
        by_host.setdefault(cluster_host, []).append((cluster_port, forward))
    values = result.as_dict()
    upper = {name.upper(): name for name in values}
    new: dict[str, str] = {}
    port_claims: dict[str, set[str]] = {}
    warnings = list(result.warnings)

    def claim_port(name: str, port: str) -> None:
        port_claims.setdefault(name, set()).add(port)

    for name, value in values.items():
        key = name.upper()
        suffix = next((s for s in _HOST_SUFFIXES if key.endswith(s)), None)
        host = _norm_host(value) if value and value.strip() == value else ""
        if suffix and host in by_host:
            stem = key[:-len(suffix)]
            port_name = upper.get(stem + "_PORT")
            port_value = values[port_name] if port_name else ""
            if port_name and port_value.isdigit():  # rule 3: a host/port pair
                local = table.get((host, int(port_value)))
                if local is not None:
                    new[name] = local[0]
                    claim_port(port_name, str(local[1]))
                continue
            # rule 4: the host alone (a STEM_PORT that is no port, like the Docker-link
            # REDIS_PORT=tcp://..., does not pair)
            locals_ = {local[0] for _, local in by_host[host]}
            if len(locals_) == 1:
                new[name] = next(iter(locals_))
                moved = [f"{p} -> {local[1]}" for p, local in sorted(by_host[host])
                         if p != local[1]]
                if moved:
                    warnings.append(f"{name}: the host is now {new[name]}, but no {stem}_PORT "
                                    f"variable gives the port: forwarded {', '.join(moved)}")
            continue
        if "_SERVICE_PORT_" in key and value.isdigit():
            # rule 3, named Service ports: X_SERVICE_PORT_<NAME> follows X_SERVICE_HOST
            host_name = upper.get(key.split("_SERVICE_PORT_", 1)[0] + "_SERVICE_HOST")
            if host_name:
                local = table.get((_norm_host(values[host_name]), int(value)))
                if local is not None:
                    claim_port(name, str(local[1]))
            continue
        rewritten = rewrite_value(value, table)  # rules 1 and 2
        if rewritten != value:
            new[name] = rewritten

    for name, ports in port_claims.items():
        if len(ports) == 1:
            new[name] = next(iter(ports))
        else:
            warnings.append(f"{name}: left as it is, its host variables are forwarded to "
                            f"different ports ({', '.join(sorted(ports))})")
    if not new:
        return replace(result, warnings=tuple(warnings))
    vars_ = tuple(
        replace(v, value=new[v.name], rewritten_from=v.rewritten_from or v.value)
        if v.name in new and new[v.name] != v.value else v
        for v in result.vars)
    return replace(result, vars=vars_, warnings=tuple(warnings))


def service_names(name: str, namespace: str, *,
                  cluster_domain: str = "cluster.local") -> tuple[str, ...]:
    """Every name a pod of ``namespace`` may use for Service ``name``: ``NAME``, ``NAME.NS``,
    ``NAME.NS.svc``, ``NAME.NS.svc.<domain>`` (the search path of the pod's resolv.conf)."""
    return (name, f"{name}.{namespace}", f"{name}.{namespace}.svc",
            f"{name}.{namespace}.svc.{cluster_domain}")


def service_rewrites(name: str, namespace: str, cluster_ip: str | None,
                     forwards: Mapping[int, str], *,
                     cluster_domain: str = "cluster.local") -> dict[str, str]:
    """The rewrites for one exposed Service: every name a pod of ``namespace`` may use for it
    (:func:`service_names`) and its cluster IP, per port. ``forwards``: Service port -> the
    local ``host:port`` serving it."""
    hosts = list(service_names(name, namespace, cluster_domain=cluster_domain))
    if cluster_ip and cluster_ip != "None":
        hosts.append(cluster_ip)
    return {join_host_port(h, port): local for port, local in forwards.items() for h in hosts}
