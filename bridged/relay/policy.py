"""Where the relay may connect on a daemon's behalf: allow/deny by CIDR and by host name pattern.

Denied by default: link-local addresses and cloud metadata endpoints (169.254.0.0/16 holds the
AWS/GCP/Azure metadata services, fd00:ec2::254 is AWS's IPv6 one, 168.63.129.16 Azure's wire
server, 100.100.100.200 Alibaba's): a developer's tunnel must not become a way to read the
node's cloud credentials. Loopback is denied too: in a pod it reaches the relay's own ports and
the admin ports of any mesh sidecar (Envoy's /quitquitquit); local runs allow it explicitly.
Names are resolved once and the check is made
on the addresses that will be connected to, so DNS cannot swap a denied address in afterwards.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from dataclasses import dataclass, field

from ..config import parse_host
from ..errors import ConfigError

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
