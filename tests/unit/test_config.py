"""bridged.config: what users type becomes specs, or a one-line ConfigError naming the expected."""

import pytest

from bridged.config import (
    Backoff,
    CarrierSpec,
    ForwardSpec,
    InterceptSpec,
    default_name,
    format_host_port,
    parse_carrier,
    parse_host,
    parse_host_port,
    parse_name,
    parse_port,
)
from bridged.errors import ConfigError
from bridged.routing.rules import Matcher


def config_error(call, *args, **kwargs) -> str:
    """Run ``call``, expect a ConfigError, return its one-line message."""
    with pytest.raises(ConfigError) as info:
        call(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text, f"message is not one line: {text!r}"
    assert info.value.exit_code == 2
    return text


# --- parse_port --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "allow_zero", "port"),
    [
        ("80", False, 80),
        (80, False, 80),
        ("1", False, 1),
        ("65535", False, 65535),
        (65535, False, 65535),
        ("0", True, 0),
        (0, True, 0),
        ("8080", True, 8080),
    ],
)
def test_parse_port_accepts(text, allow_zero, port):
    assert parse_port(text, allow_zero=allow_zero) == port


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("0", {}, "bad port '0': expected a number from 1 to 65535"),
        (0, {}, "bad port 0: expected a number from 1 to 65535"),
        ("65536", {}, "bad port '65536': expected a number from 1 to 65535"),
        ("-1", {}, "bad port '-1': expected a number from 1 to 65535"),
        ("-1", {"allow_zero": True}, "bad port '-1': expected a number from 0 to 65535"),
        ("65536", {"allow_zero": True}, "bad port '65536': expected a number from 0 to 65535"),
        ("", {}, "bad port '': expected a number from 1 to 65535"),
        ("http", {}, "bad port 'http': expected a number from 1 to 65535"),
        ("80.5", {}, "bad port '80.5': expected a number from 1 to 65535"),
        (None, {}, "bad port None: expected a number from 1 to 65535"),
        ("x", {"what": "local port"}, "bad local port 'x': expected a number from 1 to 65535"),
        ("0", {"what": "remote port"}, "bad remote port '0': expected a number from 1 to 65535"),
    ],
)
def test_parse_port_rejects_with_expected_range(text, kwargs, message):
    assert config_error(parse_port, text, **kwargs) == message


def test_parse_port_non_number_with_allow_zero_names_zero_as_lowest():
    assert "from 0 to 65535" in config_error(parse_port, "x", allow_zero=True)


@pytest.mark.parametrize("text", ["8_0", "+80", "\u0668\u0660"])
def test_parse_port_rejects_forms_int_happens_to_accept(text):
    config_error(parse_port, text)


# --- parse_host --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("10.0.0.5", "10.0.0.5"),
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("[2001:DB8::1]", "2001:db8::1"),
        ("2001:0db8:0000:0000::0001", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1%eth0"),
        ("db", "db"),
        ("localhost", "localhost"),
        ("Example.COM", "example.com"),
        ("my_svc.my-ns.svc.cluster.local", "my_svc.my-ns.svc.cluster.local"),
        ("a" * 253, "a" * 253),
        ("1host", "1host"),
    ],
)
def test_parse_host_accepts_names_and_addresses(text, host):
    assert parse_host(text) == host


@pytest.mark.parametrize(
    "text",
    ["", "-db", "db-", ".db", "ho st", "db:80", "[::1", "::1]", "[]", "exa$mple.com",
     "a" * 254, "[::g]", "db/x", "10.0.0.5:80"],
)
def test_parse_host_rejects_nonsense(text):
    assert config_error(parse_host, text) == (
        f"bad host {text!r}: expected a host name or an IP address"
    )


@pytest.mark.parametrize("text", ["example.com\n", "127.0.0.1\n"])
def test_parse_host_rejects_trailing_newline(text):
    config_error(parse_host, text)


@pytest.mark.parametrize("text", ["10.0.0.300", "256.1.1.1"])
def test_parse_host_rejects_invalid_ipv4(text):
    config_error(parse_host, text)


@pytest.mark.parametrize("text", ["[example.com]", "[10.0.0.5]"])
def test_parse_host_brackets_only_around_ipv6(text):
    config_error(parse_host, text)


# --- parse_host_port ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("10.0.0.5:80", {}, ("10.0.0.5", 80)),
        ("db:5432", {}, ("db", 5432)),
        ("DB.ns.svc:5432", {}, ("db.ns.svc", 5432)),
        ("[::1]:8080", {}, ("::1", 8080)),
        ("[2001:DB8::1]:443", {}, ("2001:db8::1", 443)),
        ("  db:1  ", {}, ("db", 1)),
        ("8080", {"default_host": "127.0.0.1"}, ("127.0.0.1", 8080)),
        ("db:80", {"default_host": "127.0.0.1"}, ("db", 80)),
        ("[::1]:80", {"default_host": "127.0.0.1"}, ("::1", 80)),
        ("0", {"default_host": "127.0.0.1", "allow_zero": True}, ("127.0.0.1", 0)),
        ("db:0", {"allow_zero": True}, ("db", 0)),
        ("[::1]:0", {"allow_zero": True}, ("::1", 0)),
    ],
)
def test_parse_host_port_accepts(text, kwargs, expected):
    assert parse_host_port(text, **kwargs) == expected


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("db", {}, "expected HOST:PORT"),
        ("8080", {}, "expected HOST:PORT"),
        (":80", {}, "expected HOST:PORT"),
        ("", {}, "expected HOST:PORT"),
        ("db", {"default_host": "127.0.0.1"}, "expected HOST:PORT or PORT"),
        ("", {"default_host": "127.0.0.1"}, "expected HOST:PORT or PORT"),
        ("-1", {"default_host": "127.0.0.1"}, "expected HOST:PORT or PORT"),
        ("0", {"default_host": "127.0.0.1"}, "expected a number from 1 to 65535"),
        ("db:", {}, "bad port '': expected a number from 1 to 65535"),
        ("db:http", {}, "expected a number from 1 to 65535"),
        ("db:0", {}, "expected a number from 1 to 65535"),
        ("db:65536", {}, "expected a number from 1 to 65535"),
        ("db:-1", {"allow_zero": True}, "expected a number from 0 to 65535"),
        ("::1:80", {}, "write IPv6 addresses as [ADDR]:PORT"),
        ("fe80::1:80", {}, "write IPv6 addresses as [ADDR]:PORT"),
        ("[::1]", {}, "expected [IPv6]:PORT"),
        ("[::1]80", {}, "expected [IPv6]:PORT"),
        ("[::1", {}, "expected [IPv6]:PORT"),
        ("[::1]:", {}, "expected a number from 1 to 65535"),
        ("[::1]:80:90", {}, "expected a number from 1 to 65535"),
        ("[]:80", {}, "expected a host name or an IP address"),
        ("ho st:80", {}, "expected a host name or an IP address"),
        ("db$:80", {}, "expected a host name or an IP address"),
    ],
)
def test_parse_host_port_rejects_saying_what_was_expected(text, kwargs, expected):
    assert expected in config_error(parse_host_port, text, **kwargs)


def test_parse_host_port_message_quotes_the_input():
    assert config_error(parse_host_port, "db") == "bad address 'db': expected HOST:PORT"


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [("db", 80, "db:80"), ("10.0.0.5", 1, "10.0.0.5:1"), ("::1", 8080, "[::1]:8080")],
)
def test_format_host_port_round_trips_through_parse(host, port, text):
    assert format_host_port(host, port) == text
    assert parse_host_port(text) == (host, port)


# --- parse_carrier -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spec", "url"),
    [
        ("tcp://relay:2222", CarrierSpec("tcp", "relay", 2222, "/"), "tcp://relay:2222"),
        ("tcp://10.0.0.5:2222", CarrierSpec("tcp", "10.0.0.5", 2222, "/"), "tcp://10.0.0.5:2222"),
        ("tcp://[::1]:2222", CarrierSpec("tcp", "::1", 2222, "/"), "tcp://[::1]:2222"),
        ("TCP://Relay.Example:1", CarrierSpec("tcp", "relay.example", 1, "/"),
         "tcp://relay.example:1"),
        ("  tcp://relay:2222  ", CarrierSpec("tcp", "relay", 2222, "/"), "tcp://relay:2222"),
        ("ws://relay", CarrierSpec("ws", "relay", 80, "/"), "ws://relay:80/"),
        ("ws://relay:8080/x/y", CarrierSpec("ws", "relay", 8080, "/x/y"), "ws://relay:8080/x/y"),
        ("wss://relay.example.com/bridged",
         CarrierSpec("wss", "relay.example.com", 443, "/bridged"),
         "wss://relay.example.com:443/bridged"),
        ("wss://relay", CarrierSpec("wss", "relay", 443, "/"), "wss://relay:443/"),
        ("wss://[::1]:8443/t", CarrierSpec("wss", "::1", 8443, "/t"), "wss://[::1]:8443/t"),
    ],
)
def test_parse_carrier_accepts(text, spec, url):
    parsed = parse_carrier(text)
    assert parsed == spec
    assert parsed.url == url
    assert str(parsed) == url


def test_carrier_url_of_tcp_has_no_path():
    assert parse_carrier("tcp://relay:2222/ignored").url == "tcp://relay:2222"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://relay:80", "expected tcp://HOST:PORT, ws://HOST:PORT/PATH or wss://HOST:PORT/PATH"),
        ("https://relay/x", "expected tcp://HOST:PORT"),
        ("ssh://relay:22", "expected tcp://HOST:PORT"),
        ("relay:2222", "expected tcp://HOST:PORT"),
        ("relay", "expected tcp://HOST:PORT"),
        ("", "expected tcp://HOST:PORT"),
        ("tcp://user@relay:2222", "put no credentials in the URL (use --token)"),
        ("tcp://user:secret@relay:2222", "put no credentials in the URL (use --token)"),
        ("wss://:secret@relay/x", "put no credentials in the URL (use --token)"),
        ("wss://relay/x?token=abc", "put no credentials in the URL (use --token)"),
        ("ws://relay:80/?a=b", "put no credentials in the URL (use --token)"),
        ("tcp://relay", "tcp:// needs a port"),
        ("tcp://relay/", "tcp:// needs a port"),
        ("tcp://relay:http", "expected a port from 1 to 65535"),
        ("tcp://relay:-1", "expected a port from 1 to 65535"),
        ("tcp://:2222", "no host"),
        ("ws:///path", "no host"),
        ("tcp://relay:0", "expected a number from 1 to 65535"),
        ("tcp://rel$ay:1", "expected a host name or an IP address"),
    ],
)
def test_parse_carrier_rejects(text, expected):
    assert expected in config_error(parse_carrier, text)


def test_parse_carrier_message_quotes_the_url():
    assert config_error(parse_carrier, "tcp://relay") == (
        "bad relay address 'tcp://relay': tcp:// needs a port"
    )


@pytest.mark.parametrize("text", ["tcp://relay:70000", "wss://relay:65536/x"])
def test_parse_carrier_out_of_range_port_names_the_range(text):
    assert "65535" in config_error(parse_carrier, text)


@pytest.mark.parametrize("text", ["tcp://[::1:2222", "wss://[relay]:443/x"])
def test_parse_carrier_malformed_brackets_is_config_error(text):
    config_error(parse_carrier, text)


# --- parse_name --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["a", "0", "web", "db-5432", "my.svc_1", "0abc", "a" * 63])
def test_parse_name_accepts(text):
    assert parse_name(text) == text


@pytest.mark.parametrize(
    "text",
    ["", "A", "Web", "-web", "web-", ".web", "web.", "_web", "a" * 64, "we b", "w\u00e9b",
     "web/1", "web:1"],
)
def test_parse_name_rejects(text):
    assert config_error(parse_name, text) == (
        f"bad name {text!r}: use lower-case letters, digits, '.', '_' and '-' (at most 63)"
    )


def test_parse_name_message_names_what():
    assert config_error(parse_name, "X", "bridge name").startswith("bad bridge name 'X':")


def test_parse_name_rejects_trailing_newline():
    config_error(parse_name, "web\n")


# --- ForwardSpec.parse -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "kwargs", "expected"),
    [
        ("db.ns.svc:5432", {}, ForwardSpec("db.ns.svc-5432", "db.ns.svc", 5432, "127.0.0.1", 0)),
        ("DB:5432", {}, ForwardSpec("db-5432", "db", 5432, "127.0.0.1", 0)),
        ("10.0.0.5:80", {}, ForwardSpec("10.0.0.5-80", "10.0.0.5", 80, "127.0.0.1", 0)),
        ("[fd00::1]:80", {}, ForwardSpec("fd00-1-80", "fd00::1", 80, "127.0.0.1", 0)),
        ("db:5432", {"name": "pg"}, ForwardSpec("pg", "db", 5432, "127.0.0.1", 0)),
        ("db:5432", {"local_port": 15432}, ForwardSpec("db-5432", "db", 5432, "127.0.0.1", 15432)),
        ("db:5432", {"local_port": 0}, ForwardSpec("db-5432", "db", 5432, "127.0.0.1", 0)),
        ("db:5432", {"local_host": "[::1]"}, ForwardSpec("db-5432", "db", 5432, "::1", 0)),
        ("db:5432", {"local_host": "LocalHost"},
         ForwardSpec("db-5432", "db", 5432, "localhost", 0)),
    ],
)
def test_forward_spec_parse(target, kwargs, expected):
    assert ForwardSpec.parse(target, **kwargs) == expected


def test_forward_spec_local_port_zero_is_the_default():
    assert ForwardSpec.parse("db:5432").local_port == 0


@pytest.mark.parametrize(
    ("target", "kwargs", "expected"),
    [
        ("db", {}, "bad address 'db': expected HOST:PORT"),
        ("5432", {}, "expected HOST:PORT"),
        ("db:0", {}, "bad port '0'"),
        ("db:5432", {"name": "PG"}, "bad forward name 'PG'"),
        ("db:5432", {"local_port": 70000},
         "bad local port 70000: expected a number from 0 to 65535"),
        ("db:5432", {"local_port": -1}, "bad local port -1: expected a number from 0 to 65535"),
        ("db:5432", {"local_host": "no such host"}, "bad host 'no such host'"),
    ],
)
def test_forward_spec_parse_rejects(target, kwargs, expected):
    assert expected in config_error(ForwardSpec.parse, target, **kwargs)


@pytest.mark.parametrize(
    ("target", "name"),
    [
        ("[::1]:80", "1-80"),
        ("[2001:DB8::1]:443", "2001-db8-1-443"),
        ("[fe80::1%eth0]:80", "fe80-1-eth0-80"),
    ],
)
def test_forward_spec_default_name_of_ipv6_target_is_valid(target, name):
    assert ForwardSpec.parse(target).name == name


LONG_FQDN = "payments-api-gateway-internal.payments-production.svc.cluster.local"


def test_forward_spec_default_name_of_long_fqdn_keeps_the_service_and_fits():
    name = ForwardSpec.parse(f"{LONG_FQDN}:8080").name
    assert parse_name(name) == name
    assert len(name) <= 63
    assert name.startswith("payments-api-gateway-internal.")
    assert name != ForwardSpec.parse(f"{LONG_FQDN}:8081").name


@pytest.mark.parametrize(
    "text",
    ["::1-80", "fd00::1-80", "DB.ns-5432", "My_Host-80", "", "---", "...", "a b/c?d",
     "\u00e9t\u00e9-1", "a" * 63, "a" * 64, "a" * 200, f"{LONG_FQDN}-8080", "-x-", "_x_"],
)
def test_default_name_is_always_a_valid_name(text):
    name = default_name(text)
    assert parse_name(name) == name


@pytest.mark.parametrize(
    ("text", "name"),
    [("db-5432", "db-5432"), ("DB.ns-5432", "db.ns-5432"), ("fd00::1-80", "fd00-1-80"),
     ("a" * 63, "a" * 63)],
)
def test_default_name_keeps_valid_text_and_replaces_the_rest(text, name):
    assert default_name(text) == name


def test_default_name_cuts_long_text_uniquely():
    one, two = default_name("a" * 100), default_name("a" * 99 + "b")
    assert len(one) <= 63 and len(two) <= 63
    assert one != two


# --- InterceptSpec.parse -----------------------------------------------------------------------


def _spec(name, local, **kw):
    return InterceptSpec(name=name, local_port=local, **kw)


H = Matcher("header", "equals", "x-dev", "alice")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # a bare relay port (no cluster): whole-port TCP unless matchers or an origin
        ({"remote_port": 8080, "local_port": 3000}, _spec("port-8080", 3000, remote_port=8080)),
        ({"remote_port": 80, "local_port": "80", "name": "api"},
         _spec("api", 80, remote_port=80)),
        ({"remote_port": 80, "local_port": 8000, "local_host": "::1"},
         _spec("port-80", 8000, remote_port=80, local_host="::1")),
        ({"remote_port": 65535, "local_port": 1}, _spec("port-65535", 1, remote_port=65535)),
        ({"remote_port": 80, "local_port": 1, "headers": ("x-dev=alice",), "origin": "o:80"},
         _spec("port-80", 1, remote_port=80, mode="http", matchers=(H,), origin="o:80")),
        # a Service: HTTP by default, named after it, strategy auto unless given
        ({"service": "orders", "local_port": "8080"},
         _spec("orders", 8080, service="orders", via="auto", mode="http")),
        ({"service": "orders", "local_port": "8080:80", "via": "takeover"},
         _spec("orders", 8080, service="orders", service_port="80", via="takeover",
               mode="http")),
        ({"service": "orders", "local_port": "8080:http", "headers": ("x-dev=alice",),
          "fallback": "origin"},
         _spec("orders", 8080, service="orders", service_port="http", via="auto",
               mode="http", matchers=(H,), fallback="origin")),
        ({"service": "db", "local_port": "5432", "tcp": True, "name": "mydb"},
         _spec("mydb", 5432, service="db", via="auto", mode="tcp")),
    ],
)
def test_intercept_spec_parse(kwargs, expected):
    assert InterceptSpec.parse(**kwargs) == expected


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"remote_port": 0, "local_port": 80}, "bad relay port 0: expected a number from 1"),
        ({"remote_port": 65536, "local_port": 80}, "bad relay port 65536"),
        ({"remote_port": 80, "local_port": 0}, "bad local port '0': expected a number from 1"),
        ({"remote_port": 80, "local_port": "x"}, "bad local port 'x'"),
        ({"remote_port": 80, "local_port": 80, "name": "API"}, "bad intercept name 'API'"),
        ({"remote_port": 80, "local_port": 80, "local_host": "x y"}, "bad host 'x y'"),
        ({"local_port": 80}, "say what to intercept"),
        ({"service": "orders", "remote_port": 80, "local_port": 80}, "not both"),
        ({"service": "Orders", "local_port": 80}, "bad Service name 'Orders'"),
        ({"service": "orders", "local_port": "80:0"}, "bad service port '0'"),
        ({"service": "orders", "local_port": "80:Web"}, "bad service port name 'Web'"),
        ({"service": "orders", "local_port": "x:80"}, "bad local port 'x'"),
        ({"remote_port": 80, "local_port": "80:80"}, "LOCAL:SERVICE_PORT is for a Service"),
        ({"service": "orders", "local_port": 80, "via": "magic"}, "bad --via 'magic'"),
        ({"remote_port": 80, "local_port": 80, "via": "takeover"}, "--via redirects a Service"),
        ({"service": "orders", "local_port": 80, "origin": "h:1"}, "--origin is for a bare"),
        ({"remote_port": 80, "local_port": 80, "fallback": "origin"}, "--fallback origin needs"),
        ({"service": "orders", "local_port": 80, "fallback": "pods"}, "bad fallback 'pods'"),
        ({"service": "orders", "local_port": 80, "tcp": True, "path": "/a"}, "--tcp takes"),
        ({"service": "orders", "local_port": 80, "tcp": True, "via": "gateway"},
         "use --via takeover with --tcp"),
    ],
)
def test_intercept_spec_parse_rejects(kwargs, expected):
    assert expected in config_error(InterceptSpec.parse, **kwargs)


# --- Backoff.delay -----------------------------------------------------------------------------

# default Backoff: first 0.2 s, factor 2, cap 30 s
CEILINGS = [(0, 0.2), (1, 0.4), (2, 0.8), (3, 1.6), (5, 6.4), (7, 25.6), (8, 30.0), (20, 30.0)]


@pytest.mark.parametrize(("attempt", "ceiling"), CEILINGS)
def test_backoff_with_rand_zero_is_half_the_ceiling(attempt, ceiling):
    assert Backoff().delay(attempt, 0.0) == pytest.approx(ceiling / 2)


@pytest.mark.parametrize(("attempt", "ceiling"), CEILINGS)
def test_backoff_rand_spreads_over_the_upper_half(attempt, ceiling):
    backoff = Backoff()
    assert backoff.delay(attempt, 0.5) == pytest.approx(ceiling * 0.75)
    almost_one = backoff.delay(attempt, 0.999999)
    assert ceiling / 2 < almost_one < ceiling


@pytest.mark.parametrize("rand", [0.0, 0.25, 0.5, 0.999999])
def test_backoff_never_above_max_and_never_below_half_the_ceiling(rand):
    backoff = Backoff()
    for attempt in range(60):
        ceiling = min(backoff.max_seconds, backoff.first_seconds * 2**attempt)
        delay = backoff.delay(attempt, rand)
        assert ceiling / 2 <= delay <= backoff.max_seconds


@pytest.mark.parametrize("rand", [0.0, 0.5, 0.999999])
def test_backoff_grows_with_attempt_until_the_cap(rand):
    backoff = Backoff()
    delays = [backoff.delay(attempt, rand) for attempt in range(12)]
    assert delays[:9] == sorted(delays[:9]) and len(set(delays[:9])) == 9
    assert delays[8:] == [delays[8]] * 4  # capped from attempt 8 on


def test_backoff_uses_rand_for_jitter():
    backoff = Backoff()
    assert backoff.delay(3, 0.0) != backoff.delay(3, 0.9)
    assert backoff.delay(3, 0.9) - backoff.delay(3, 0.0) == pytest.approx(0.8 * 0.9)


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(0, 1.0), (1, 3.0), (2, 9.0), (3, 10.0), (10, 10.0)]
)
def test_backoff_custom_settings(attempt, ceiling):
    backoff = Backoff(first_seconds=1.0, max_seconds=10.0, factor=3.0)
    assert backoff.delay(attempt, 0.0) == pytest.approx(ceiling / 2)
    assert backoff.delay(attempt, 0.999999) < ceiling


@pytest.mark.parametrize("attempt", [64, 1024, 5000, 10**6])
def test_backoff_stays_capped_for_very_many_attempts(attempt):
    # a relay away for days: factor**attempt must not overflow into an OverflowError
    assert Backoff().delay(attempt, 0.0) == pytest.approx(15.0)
    assert Backoff().delay(attempt, 0.999999) <= 30.0
