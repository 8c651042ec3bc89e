"""Where the relay may connect on a daemon's behalf: allow/deny by CIDR and by host name pattern.

Denied by default: link-local addresses and cloud metadata endpoints (169.254.0.0/16 holds the
AWS/GCP/Azure metadata services, fd00:ec2::254 is AWS's IPv6 one, 168.63.129.16 Azure's wire
server, 100.100.100.200 Alibaba's): a developer's tunnel must not become a way to read the
node's cloud credentials. Loopback is denied too: in a pod it reaches the relay's own ports and
the admin ports of any mesh sidecar (Envoy's /quitquitquit); local runs allow it explicitly.

Every address the relay connects to for a developer goes through :func:`resolve_allowed`: the
outbound channels of ``expose`` and the ``origin`` an intercept names (where its unmatched
requests, and its fallback, go). A name is checked before it is resolved (a denied name is never
looked up), then *every* address it resolves to: one denied address refuses the name, since
which one gets connected to is not ours to choose. Names are resolved once and the check is
made on the addresses that will be connected to, so DNS cannot swap a denied address in
afterwards. The origins the relay derives itself (a redirected Service's shadow ClusterIP) are
its own choice, not a developer's, and are not checked.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
from dataclasses import dataclass, field

from ..config import format_host_port, parse_host, parse_host_port
from ..errors import ConfigError, RefusedError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_DENY_NETS = ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "168.63.129.16/32",
                     "100.100.100.200/32")
LOOPBACK_NETS = ("127.0.0.0/8", "::1/128", "0.0.0.0/8", "::/128")
DEFAULT_DENY_HOSTS = ("metadata.google.internal", "metadata", "instance-data", "instance-data.*")


@dataclass(frozen=True)
class DestinationPolicy:
    deny_nets: tuple[Network, ...] = field(
        default_factory=lambda: tuple(
            ipaddress.ip_network(n) for n in DEFAULT_DENY_NETS + LOOPBACK_NETS)
    )
    deny_hosts: tuple[str, ...] = DEFAULT_DENY_HOSTS
    #: when not empty, only these may be reached (deny still wins)
    allow_nets: tuple[Network, ...] = ()
    allow_hosts: tuple[str, ...] = ()

    @classmethod
    def parse(
        cls, *, deny: tuple[str, ...] = (), allow: tuple[str, ...] = (), defaults: bool = True,
        allow_loopback: bool = False,
    ) -> DestinationPolicy:
        """Entries are CIDRs or host patterns (``*.svc.cluster.local``)."""
        base = cls() if defaults else cls(deny_nets=(), deny_hosts=())
        if allow_loopback:
            loopback = {ipaddress.ip_network(n) for n in LOOPBACK_NETS}
            base = cls(deny_nets=tuple(n for n in base.deny_nets if n not in loopback),
                       deny_hosts=base.deny_hosts)
        dn, dh = _split(deny)
        an, ah = _split(allow)
        return cls(
            deny_nets=base.deny_nets + dn, deny_hosts=base.deny_hosts + dh,
            allow_nets=an, allow_hosts=ah,
        )

    def check_name(self, host: str) -> str | None:
        """A reason to refuse ``host`` before resolving it, or None."""
        name = host.lower().rstrip(".")
        for pattern in self.deny_hosts:
            if fnmatch.fnmatchcase(name, pattern.rstrip(".")):
                return f"destination {host} is denied by the relay's policy ({pattern})"
        return None

    def check_address(self, host: str, address: str) -> str | None:
        """A reason to refuse connecting to ``address`` (resolved from ``host``), or None."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 reaches 169.254.169.254 on dual stack
        for net in self.deny_nets:
            if ip in net:
                return f"destination {host} ({ip}) is denied by the relay's policy ({net})"
        if self.allow_nets or self.allow_hosts:
            name = host.lower().rstrip(".")
            if not any(ip in n for n in self.allow_nets) and not any(
                fnmatch.fnmatchcase(name, p) for p in self.allow_hosts
            ):
                return f"destination {host} ({ip}) is not in the relay's allow list"
        return None


class DestinationDenied(RefusedError):
    """The relay's policy forbids a destination: the message says which rule."""


class DestinationUnresolved(RefusedError):
    """A destination's name does not resolve."""


async def resolve_allowed(policy: DestinationPolicy, host: str, port: int) -> list[str]:
    """The addresses of ``host`` to connect to, in the resolver's order, all of them allowed;
    :class:`DestinationDenied` (or :class:`DestinationUnresolved`) with the reason otherwise."""
    reason = policy.check_name(host)
    if reason:
        raise DestinationDenied(reason)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:  # socket.gaierror included
        raise DestinationUnresolved(f"cannot resolve {host}: {exc.strerror or exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise DestinationUnresolved(f"cannot resolve {host}: no address")
    for address in addresses:
        reason = policy.check_address(host, address)
        if reason:
            raise DestinationDenied(reason)
    return addresses


async def allowed_origin(policy: DestinationPolicy, origin: str) -> str:
    """A developer's ``HOST:PORT`` origin, checked like ``expose``'s destinations, as the
    ``ADDRESS:PORT`` the relay will connect to.

    The origin is connected to at request time, maybe hours after it was registered: it is
    pinned to the first address checked now (the one a connect would try first), so that a DNS
    change in between cannot make the relay reach a denied address. The price: no failover to
    the name's other addresses, and a new address is only picked up by registering again.
    """
    try:
        host, port = parse_host_port(origin)
    except ConfigError as exc:
        raise RefusedError(f"origin {origin!r}: {exc}") from None
    try:
        addresses = await resolve_allowed(policy, host, port)
    except RefusedError as exc:
        raise type(exc)(f"origin {format_host_port(host, port)}: {exc}") from None
    return format_host_port(addresses[0], port)


def _split(entries: tuple[str, ...]) -> tuple[tuple[Network, ...], tuple[str, ...]]:
    nets: list[Network] = []
    hosts: list[str] = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            if "*" not in entry:
                parse_host(entry)  # raises ConfigError on nonsense
            elif not entry.replace("*", "a").replace(".", "").replace("-", "").isalnum():
                raise ConfigError(f"bad host pattern {entry!r}") from None
            hosts.append(entry.lower())
    return tuple(nets), tuple(hosts)
