"""The proxies' name rules: which destinations go through the tunnel, which go direct, and
which the relay is asked about; and the names a pod's resolver tries."""

from __future__ import annotations

import pytest

from bridged import protocol
from bridged.errors import ProtocolError
from bridged.workload.names import NameRules, route_of, search_names

CLUSTER = NameRules(cluster_cidrs=("10.96.0.0/12", "fd00:10::/64"))


@pytest.mark.parametrize(("host", "route"), [
    ("redis", "cluster"),  # a short Service name
    ("REDIS.", "cluster"),
    ("orders.team-a.svc", "cluster"),
    ("orders.team-a.svc.cluster.local", "cluster"),
    ("db-0.db.team-a.svc.cluster.local.", "cluster"),
    ("10-1-2-3.team-a.pod.cluster.local", "cluster"),
    ("10.96.0.10", "cluster"),  # inside a cluster range
    ("fd00:10::1", "cluster"),
    ("[fd00:10::1]", "cluster"),
    ("10.95.255.255", "direct"),  # just outside
    ("192.0.2.7", "direct"),
    ("2001:db8::1", "direct"),
    ("127.0.0.1", "direct"),
    ("::1", "direct"),
    ("localhost", "direct"),
    ("LocalHost.", "direct"),
    ("app.localhost", "direct"),
    ("orders.team-a", "ask"),
    ("db-0.db", "ask"),
    ("example.com", "ask"),
    ("cluster.local.example.com", "ask"),  # the domain as a label, not a suffix
])
def test_where_each_destination_goes(host: str, route: str) -> None:
    assert route_of(host, CLUSTER) == route


def test_no_cluster_ranges_by_default_sends_ips_direct() -> None:
    assert route_of("10.96.0.10") == "direct"


def test_the_cluster_domain_is_settable() -> None:
    rules = NameRules(cluster_domain="corp.internal")
    assert route_of("orders.team-a.svc.corp.internal", rules) == "cluster"
    assert route_of("orders.team-a.svc.cluster.local", rules) == "ask"  # not this cluster's
    assert route_of("x.cluster.local", rules) == "ask"


def test_overrides_come_first_direct_before_cluster() -> None:
    rules = NameRules(always_direct=("*.vpn.example", "redis"),
                      always_cluster=("*.example", "10.0.0.1"))
    assert route_of("redis", rules) == "direct"
    assert route_of("db.vpn.example", rules) == "direct"
    assert route_of("api.example", rules) == "cluster"
    assert route_of("10.0.0.1", rules) == "cluster"


def test_a_pods_search_order() -> None:
    assert search_names("orders", "team-a") == [
        "orders.team-a.svc.cluster.local", "orders.svc.cluster.local", "orders.cluster.local"]
    assert search_names("orders.team-b.", "team-a", "corp.internal")[0] == \
        "orders.team-b.team-a.svc.corp.internal"
    # outside Kubernetes the relay has no namespace: the name as given
    assert search_names("orders.team-a", "") == ["orders.team-a"]


def test_resolve_requests_carry_only_dns_names() -> None:
    msg = protocol.decode(protocol.encode(protocol.Resolve(id=3, name="db-0.db")))
    assert msg == protocol.Resolve(id=3, name="db-0.db", cluster_domain="cluster.local")
    for bad in ("", "a b", "x" * 64, "a..b", "é.com", "a.-b"):
        with pytest.raises(ProtocolError, match="not a DNS name"):
            protocol.decode(protocol.encode(protocol.Resolve(id=4, name=bad)))
