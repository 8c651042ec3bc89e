"""bridged.relay.policy: where the relay may connect for a daemon (pure checks; nothing is sent)."""

import ipaddress

import pytest

from bridged.errors import ConfigError, RefusedError
from bridged.relay.policy import (
    DEFAULT_DENY_HOSTS,
    DEFAULT_DENY_NETS,
    LOOPBACK_NETS,
    DestinationDenied,
    DestinationPolicy,
    allowed_origin,
    resolve_allowed,
)


def net(text: str):
    return ipaddress.ip_network(text)


# --- defaults -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("169.254.169.254", "169.254.0.0/16"),  # AWS/GCP/Azure metadata
        ("169.254.170.2", "169.254.0.0/16"),  # ECS task metadata
        ("169.254.0.0", "169.254.0.0/16"),
        ("169.254.255.255", "169.254.0.0/16"),
        ("fd00:ec2::254", "fd00:ec2::254/128"),  # AWS IPv6 metadata
        ("fe80::1", "fe80::/10"),
        ("fe80::1%eth0", "fe80::/10"),
        ("FE80::ABCD", "fe80::/10"),
        ("febf:ffff::1", "fe80::/10"),
    ],
)
def test_default_policy_denies_link_local_and_metadata_addresses(address, network):
    reason = DestinationPolicy().check_address("meta", address)
    ip = ipaddress.ip_address(address.split("%")[0])
    assert reason == f"destination meta ({ip}) is denied by the relay's policy ({network})"


@pytest.mark.parametrize(
    "address",
    ["10.0.0.5", "192.168.1.10", "172.16.0.1", "169.253.255.255", "169.255.0.0",
     "fd00:ec2::253", "fd00:ec2::255", "fec0::1", "2001:db8::1"],
)
def test_default_policy_allows_ordinary_addresses(address):
    assert DestinationPolicy().check_address("db.ns.svc.cluster.local", address) is None


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("metadata.google.internal", "metadata.google.internal"),
        ("METADATA.Google.Internal", "metadata.google.internal"),
        ("metadata.google.internal.", "metadata.google.internal"),
        ("metadata", "metadata"),
        ("instance-data", "instance-data"),
        ("instance-data.ec2.internal", "instance-data.*"),
    ],
)
def test_default_policy_denies_metadata_names(name, pattern):
    assert DestinationPolicy().check_name(name) == (
        f"destination {name} is denied by the relay's policy ({pattern})"
    )


@pytest.mark.parametrize(
    "name",
    ["db", "db.ns.svc.cluster.local", "google.internal", "metadata.example.com", "my-metadata",
     "metadata-api", "instance-data-x", "10.0.0.5"],
)
def test_default_policy_allows_ordinary_names(name):
    assert DestinationPolicy().check_name(name) is None


def test_defaults_are_the_documented_ones():
    policy = DestinationPolicy()
    assert policy.deny_nets[:3] == (net("169.254.0.0/16"), net("fe80::/10"),
                                    net("fd00:ec2::254/128"))
    assert policy.deny_hosts == DEFAULT_DENY_HOSTS
    assert (policy.allow_nets, policy.allow_hosts) == ((), ())
    assert DestinationPolicy.parse() == policy
    assert tuple(str(n) for n in policy.deny_nets) == DEFAULT_DENY_NETS + LOOPBACK_NETS


@pytest.mark.parametrize("address", ["127.0.0.1", "127.1.2.3", "::1", "0.0.0.0",
                                     "168.63.129.16", "100.100.100.200"])
def test_loopback_and_other_clouds_metadata_are_denied_by_default(address):
    assert DestinationPolicy().check_address("x", address) is not None


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_local_runs_may_allow_loopback(address):
    policy = DestinationPolicy.parse(allow_loopback=True)
    assert policy.check_address("x", address) is None
    assert policy.check_address("x", "169.254.169.254") is not None


@pytest.mark.parametrize("address", ["::ffff:169.254.169.254", "::ffff:a9fe:a9fe"])
def test_default_policy_denies_ipv4_mapped_metadata_address(address):
    assert DestinationPolicy().check_address("meta", address) is not None


# --- parse: extra deny entries ------------------------------------------------------------------


def test_parse_adds_deny_cidrs_and_host_patterns_to_the_defaults():
    policy = DestinationPolicy.parse(
        deny=("10.0.0.0/8", "2001:db8::/32", "*.Evil.example", "bad.example", "192.168.1.7"))
    assert policy.deny_nets == (*DestinationPolicy().deny_nets, net("10.0.0.0/8"),
                                net("2001:db8::/32"), net("192.168.1.7/32"))
    assert policy.deny_hosts == (*DEFAULT_DENY_HOSTS, "*.evil.example", "bad.example")


@pytest.mark.parametrize(
    ("host", "address", "denied_by"),
    [
        ("db", "10.0.0.5", "10.0.0.0/8"),
        ("db", "2001:db8::1", "2001:db8::/32"),
        ("db", "192.168.1.7", "192.168.1.7/32"),
        ("meta", "169.254.169.254", "169.254.0.0/16"),
        ("db", "192.168.1.8", None),
        ("db", "11.0.0.1", None),
    ],
)
def test_parse_deny_cidrs_refuse_addresses(host, address, denied_by):
    policy = DestinationPolicy.parse(deny=("10.0.0.0/8", "2001:db8::/32", "192.168.1.7"))
    reason = policy.check_address(host, address)
    if denied_by is None:
        assert reason is None
    else:
        assert reason == (
            f"destination {host} ({address}) is denied by the relay's policy ({denied_by})")


@pytest.mark.parametrize(
    ("name", "denied_by"),
    [
        ("a.evil.example", "*.evil.example"),
        ("A.B.EVIL.example.", "*.evil.example"),
        ("bad.example", "bad.example"),
        ("metadata", "metadata"),
        ("evil.example", None),
        ("notbad.example", None),
        ("good.example", None),
    ],
)
def test_parse_deny_host_patterns_refuse_names(name, denied_by):
    policy = DestinationPolicy.parse(deny=("*.evil.example", "Bad.Example"))
    reason = policy.check_name(name)
    if denied_by is None:
        assert reason is None
    else:
        assert reason == f"destination {name} is denied by the relay's policy ({denied_by})"


def test_parse_host_cidr_is_normalised_to_its_network():
    assert DestinationPolicy.parse(deny=("10.1.2.3/8",)).deny_nets[-1] == net("10.0.0.0/8")


def test_parse_without_defaults_denies_only_what_is_given():
    policy = DestinationPolicy.parse(deny=("10.0.0.0/8",), defaults=False)
    assert (policy.deny_nets, policy.deny_hosts) == ((net("10.0.0.0/8"),), ())
    assert policy.check_address("meta", "169.254.169.254") is None
    assert policy.check_name("metadata.google.internal") is None
    assert policy.check_address("db", "10.0.0.5") is not None


# --- parse: allow lists --------------------------------------------------------------------------

ALLOW = ("*.svc.cluster.local", "10.0.0.0/8", "api.example.com")


@pytest.mark.parametrize(
    ("host", "address", "allowed"),
    [
        ("db.ns.svc.cluster.local", "172.16.0.1", True),  # by name pattern
        ("DB.NS.svc.cluster.local.", "172.16.0.1", True),
        ("api.example.com", "203.0.113.9", True),  # by exact name
        ("anything", "10.0.0.5", True),  # by CIDR
        ("anything", "10.255.255.255", True),
        ("x.example.com", "172.16.0.1", False),
        ("svc.cluster.local", "172.16.0.1", False),
        ("anything", "11.0.0.1", False),
        ("anything", "2001:db8::1", False),
    ],
)
def test_allow_list_lets_only_allowed_destinations_pass(host, address, allowed):
    reason = DestinationPolicy.parse(allow=ALLOW).check_address(host, address)
    if allowed:
        assert reason is None
    else:
        assert reason == f"destination {host} ({address}) is not in the relay's allow list"


@pytest.mark.parametrize(
    ("allow", "deny", "host", "address", "denied_by"),
    [
        (("*.svc.cluster.local",), (), "meta.svc.cluster.local", "169.254.169.254",
         "169.254.0.0/16"),
        (("169.254.0.0/16",), (), "meta", "169.254.169.254", "169.254.0.0/16"),
        (("10.0.0.0/8",), ("10.0.0.0/24",), "db", "10.0.0.5", "10.0.0.0/24"),
        (("fe80::/10",), (), "ll", "fe80::1", "fe80::/10"),
    ],
)
def test_deny_wins_over_allow(allow, deny, host, address, denied_by):
    policy = DestinationPolicy.parse(allow=allow, deny=deny)
    assert policy.check_address(host, address) == (
        f"destination {host} ({address}) is denied by the relay's policy ({denied_by})"
    )


def test_allow_list_does_not_lift_name_denials():
    policy = DestinationPolicy.parse(allow=("metadata.google.internal", "169.254.0.0/16"))
    assert policy.check_name("metadata.google.internal") is not None


def test_allow_patterns_are_lower_cased():
    policy = DestinationPolicy.parse(allow=("*.SVC.Cluster.Local",))
    assert policy.allow_hosts == ("*.svc.cluster.local",)
    assert policy.check_address("db.svc.cluster.local", "172.16.0.1") is None


def test_parse_splits_allow_entries_into_nets_and_hosts():
    policy = DestinationPolicy.parse(allow=ALLOW)
    assert policy.allow_nets == (net("10.0.0.0/8"),)
    assert policy.allow_hosts == ("*.svc.cluster.local", "api.example.com")


# --- parse: bad entries ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("bad host!", "bad host 'bad host!'"),
        ("", "bad host ''"),
        ("10.0.0.0/33", "bad host '10.0.0.0/33'"),
        ("-db", "bad host '-db'"),
        ("db?", "bad host 'db?'"),
        ("*.ba d", "bad host pattern '*.ba d'"),
        ("*/8", "bad host pattern '*/8'"),
    ],
)
@pytest.mark.parametrize("which", ["deny", "allow"])
def test_parse_rejects_bad_entries(which, entry, expected):
    with pytest.raises(ConfigError) as info:
        DestinationPolicy.parse(**{which: (entry,)})
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("entry", ["*", "*.svc.cluster.local", "db-*.ns", "10.0.0.0/8", "::/0",
                                   "db", "10.0.0.5"])
def test_parse_accepts_good_entries(entry):
    policy = DestinationPolicy.parse(deny=(entry,), defaults=False)
    assert len(policy.deny_nets) + len(policy.deny_hosts) == 1


# --- resolve_allowed / allowed_origin: the one path for every destination ----------------------
# The real resolver on literals and "localhost" (/etc/hosts): nothing is sent anywhere, not even
# a DNS query. Names with a denied address among allowed ones, and names that do not resolve,
# are tested end to end with a resolver the test controls: tests/integration/test_relay_policy.py.

LOCAL = DestinationPolicy.parse(allow_loopback=True)


async def test_an_allowed_literal_resolves_to_itself():
    assert await resolve_allowed(DestinationPolicy(), "10.0.0.5", 80) == ["10.0.0.5"]
    assert await resolve_allowed(DestinationPolicy(), "2001:db8::1", 80) == ["2001:db8::1"]


@pytest.mark.parametrize(("host", "denied_by"), [
    ("169.254.169.254", "169.254.0.0/16"),
    ("::ffff:169.254.169.254", "169.254.0.0/16"),
    ("fd00:ec2::254", "fd00:ec2::254/128"),
    ("127.0.0.1", "127.0.0.0/8"),  # loopback: a pod's own ports, a sidecar's admin port
    ("localhost", "/"),  # whichever of 127.0.0.1 and ::1 the resolver gives first
])
async def test_denied_addresses_are_refused_with_the_reason(host, denied_by):
    with pytest.raises(DestinationDenied) as info:
        await resolve_allowed(DestinationPolicy(), host, 80)
    assert "is denied by the relay's policy" in str(info.value)
    assert denied_by in str(info.value)


async def test_a_denied_name_is_refused_before_it_is_resolved():
    # "metadata" resolves nowhere here: a lookup would answer "cannot resolve"
    with pytest.raises(DestinationDenied, match=r"destination metadata is denied .*\(metadata\)"):
        await resolve_allowed(DestinationPolicy(), "metadata", 80)


async def test_local_runs_resolve_localhost():
    assert "127.0.0.1" in await resolve_allowed(LOCAL, "localhost", 80)


async def test_an_origin_is_pinned_to_a_checked_address():
    assert await allowed_origin(LOCAL, "localhost:8080") in ("127.0.0.1:8080", "[::1]:8080")
    assert await allowed_origin(LOCAL, "127.0.0.1:8080") == "127.0.0.1:8080"
    assert await allowed_origin(DestinationPolicy(), "[2001:db8::1]:443") == "[2001:db8::1]:443"


@pytest.mark.parametrize(("origin", "why"), [
    ("169.254.169.254:80", "origin 169.254.169.254:80: destination 169.254.169.254 "
                           "(169.254.169.254) is denied by the relay's policy (169.254.0.0/16)"),
    ("metadata.google.internal:80", "origin metadata.google.internal:80: destination "
     "metadata.google.internal is denied by the relay's policy (metadata.google.internal)"),
    ("[fe80::1]:80", "origin [fe80::1]:80: destination fe80::1 (fe80::1) is denied by the "
                     "relay's policy (fe80::/10)"),
    ("no-port", "origin 'no-port': bad address 'no-port': expected HOST:PORT"),
])
async def test_a_bad_origin_is_refused_in_one_line(origin, why):
    with pytest.raises(RefusedError) as info:
        await allowed_origin(LOCAL, origin)
    assert str(info.value) == why
