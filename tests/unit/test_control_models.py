"""bridged.control.models: request bodies become specs; errors cross the socket and come back."""

import pytest

from bridged.config import CarrierSpec, ForwardSpec, InterceptSpec
from bridged.control.models import (
    API,
    ConnectRequest,
    ForwardRequest,
    InterceptRequest,
    ServiceTarget,
    UpRequest,
    error_body,
    error_from_body,
    status_for,
)
from bridged.errors import (
    BridgedError,
    CarrierError,
    ConfigError,
    Conflict,
    ControlError,
    HostKeyMismatch,
    KubeError,
    NotFound,
    ProtocolError,
    RefusedError,
    SessionError,
)

ALL_ERRORS = [BridgedError, ConfigError, CarrierError, SessionError, HostKeyMismatch,
              RefusedError, NotFound, Conflict, KubeError, ControlError, ProtocolError]


def test_api_prefix():
    assert API == "/v1"


@pytest.mark.parametrize(
    ("cls", "status"),
    [
        (ConfigError, 400),
        (NotFound, 404),
        (Conflict, 409),
        (RefusedError, 409),
        (HostKeyMismatch, 502),
        (SessionError, 502),
        (CarrierError, 502),
        (KubeError, 500),
        (ControlError, 500),
        (ProtocolError, 500),
        (BridgedError, 500),
    ],
)
def test_status_for_each_error_class(cls, status):
    assert status_for(cls("m")) == status


def test_status_for_a_subclass_follows_its_parent():
    class Special(NotFound):
        code = "special"

    assert status_for(Special("m")) == 404


@pytest.mark.parametrize("hint", [None, "run bridged connect first"])
@pytest.mark.parametrize("cls", ALL_ERRORS)
def test_error_body_round_trip_restores_the_class(cls, hint):
    error = cls("bridge 'x' not found", hint=hint)
    body = error_body(error)
    assert body == {"error": {"code": cls.code, "message": "bridge 'x' not found", "hint": hint}}
    back = error_from_body(status_for(error), body)
    assert type(back) is cls
    assert (back.message, back.hint, str(back)) == (error.message, error.hint, str(error))
    assert back.exit_code == error.exit_code


@pytest.mark.parametrize(
    ("body", "cls", "message", "hint"),
    [
        ({"error": {"code": "not-found", "message": "m"}}, NotFound, "m", None),
        ({"error": {"code": "no-such-code", "message": "m"}}, BridgedError, "m", None),
        ({"error": {"message": "m"}}, BridgedError, "m", None),
        ({"error": {"code": "conflict"}}, Conflict, "", None),
        ({"error": {"code": "bad-input", "message": 5, "hint": "h"}}, ConfigError, "5", "h"),
        ({"error": {}, "extra": 1}, BridgedError, "", None),
    ],
)
def test_error_from_body_tolerates_partial_bodies(body, cls, message, hint):
    error = error_from_body(400, body)
    assert type(error) is cls
    assert (error.message, error.hint) == (message, hint)


@pytest.mark.parametrize(
    "body",
    [None, "oops", 5, [], ["error"], {}, {"status": "ok"}, {"error": "boom"},
     {"error": None}, {"error": ["code"]}],
)
@pytest.mark.parametrize("status", [200, 500])
def test_error_from_body_without_error_object_is_control_error(body, status):
    error = error_from_body(status, body)
    assert type(error) is ControlError
    assert str(error) == f"the daemon answered HTTP {status} without an error body"


# --- ConnectRequest ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"url": "tcp://relay:2222"},
         ConnectRequest(CarrierSpec("tcp", "relay", 2222, "/"), None, None)),
        ({"url": "wss://relay.example/b", "name": "prod", "token": "t0k"},
         ConnectRequest(CarrierSpec("wss", "relay.example", 443, "/b"), "prod", "t0k")),
        ({"url": "ws://relay", "name": None, "token": None},
         ConnectRequest(CarrierSpec("ws", "relay", 80, "/"), None, None)),
        ({"url": "tcp://relay:1", "name": "", "unknown": True},
         ConnectRequest(CarrierSpec("tcp", "relay", 1, "/"), None, None)),
    ],
)
def test_connect_request_parse(body, expected):
    assert ConnectRequest.parse(body) == expected


@pytest.mark.parametrize("body", [{}, {"url": ""}, {"url": None}])
def test_connect_request_without_url_means_the_kube_context(body):
    assert ConnectRequest.parse(body) == ConnectRequest(None, None)


def test_connect_request_kube_fields():
    req = ConnectRequest.parse({"context": "dev", "namespace": "team-a", "relay_image": "r:1"})
    assert (req.spec, req.context, req.namespace, req.relay_image) == (None, "dev", "team-a", "r:1")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"namespace": "Not_A_Namespace"}, "bad namespace"),
        ({"url": 5}, "field 'url' must be a str"),
        ({"url": ["tcp://relay:1"]}, "field 'url' must be a str"),
        ({"url": "tcp://relay:1", "name": 5}, "field 'name' must be a str"),
        ({"url": "tcp://relay:1", "token": 5}, "field 'token' must be a str"),
        ({"url": "tcp://relay:1", "token": {"a": 1}}, "field 'token' must be a str"),
        ({"url": "http://relay"}, "bad relay address 'http://relay'"),
        ({"url": "tcp://relay"}, "tcp:// needs a port"),
        ({"url": "tcp://relay:1", "name": "Prod"}, "bad bridge name 'Prod'"),
    ],
)
def test_connect_request_rejects(body, expected):
    with pytest.raises(ConfigError) as info:
        ConnectRequest.parse(body)
    assert expected in str(info.value)


# --- ForwardRequest ----------------------------------------------------------------------------


DB = ServiceTarget("db", "5432")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"target": "db:5432"},
         ForwardRequest(None, ForwardSpec("db-5432", "db", 5432, "127.0.0.1", 0), DB)),
        ({"target": "db:5432", "bridge": "prod", "name": "pg", "local_port": 15432,
          "local_host": "::1"},
         ForwardRequest("prod", ForwardSpec("pg", "db", 5432, "::1", 15432), DB, 15432, "pg",
                        "::1")),
        ({"target": "[fd00::1]:80", "local_port": 0},
         ForwardRequest(None, ForwardSpec("fd00-1-80", "fd00::1", 80, "127.0.0.1", 0))),
        ({"target": "db:5432", "name": None, "bridge": None},
         ForwardRequest(None, ForwardSpec("db-5432", "db", 5432, "127.0.0.1", 0), DB)),
        # a Service, all its ports, or one by name: only a kube bridge can resolve them
        ({"target": "db"}, ForwardRequest(None, None, ServiceTarget("db"))),
        ({"target": "db.team-a:postgres"},
         ForwardRequest(None, None, ServiceTarget("db.team-a", "postgres"))),
    ],
)
def test_forward_request_parse(body, expected):
    assert ForwardRequest.parse(body) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, "missing target: give HOST:PORT or a Service name"),
        ({"target": ""}, "missing target"),
        ({"target": 5432}, "field 'target' must be a str"),
        ({"target": "db:5432", "local_port": "15432"}, "field 'local_port' must be a number"),
        ({"target": "db:5432", "local_port": 1.5}, "field 'local_port' must be a number"),
        ({"target": "db:5432", "name": 1}, "field 'name' must be a str"),
        ({"target": "db:5432", "bridge": 1}, "field 'bridge' must be a str"),
        ({"target": "db:5432", "local_host": 1}, "field 'local_host' must be a str"),
        ({"target": "Not A Service"}, "bad address 'Not A Service': expected HOST:PORT"),
        ({"target": "db:5432", "local_port": 70000}, "bad local port 70000"),
        ({"target": "db:5432", "name": "PG"}, "bad forward name 'PG'"),
        ({"target": "db:5432", "local_host": "not a host"}, "bad host 'not a host'"),
    ],
)
def test_forward_request_rejects(body, expected):
    with pytest.raises(ConfigError) as info:
        ForwardRequest.parse(body)
    assert expected in str(info.value)


# --- InterceptRequest --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"remote_port": 8080, "local_port": 3000},
         InterceptRequest(None, InterceptSpec("port-8080", 3000, remote_port=8080))),
        ({"remote_port": 80, "local_port": 8000, "bridge": "prod", "name": "api",
          "local_host": "localhost"},
         InterceptRequest("prod", InterceptSpec("api", 8000, remote_port=80,
                                                local_host="localhost"))),
        ({"service": "orders", "local_port": "8000:http", "via": "takeover"},
         InterceptRequest(None, InterceptSpec("orders", 8000, service="orders",
                                              service_port="http", via="takeover",
                                              mode="http"))),
    ],
)
def test_intercept_request_parse(body, expected):
    assert InterceptRequest.parse(body) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, "an intercept needs local_port"),
        ({"remote_port": 80}, "an intercept needs local_port"),
        ({"local_port": 80}, "say what to intercept"),
        ({"remote_port": None, "local_port": 80}, "say what to intercept"),
        ({"service": 3, "local_port": 80}, "field 'service' must be a str"),
        ({"remote_port": "80", "local_port": 80}, "field 'remote_port' must be a number"),
        ({"remote_port": 80, "local_port": 8.0}, "field 'local_port' must be a number or str"),
        ({"remote_port": 80, "local_port": 80, "name": ["x"]}, "field 'name' must be a str"),
        ({"remote_port": 80, "local_port": 80, "bridge": 2}, "field 'bridge' must be a str"),
        ({"remote_port": 0, "local_port": 80}, "bad relay port 0"),
        ({"remote_port": 80, "local_port": 0}, "bad local port '0'"),
        ({"remote_port": 80, "local_port": 80, "name": "Api"}, "bad intercept name 'Api'"),
    ],
)
def test_intercept_request_rejects(body, expected):
    with pytest.raises(ConfigError) as info:
        InterceptRequest.parse(body)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("parse", "body"),
    [
        (ForwardRequest.parse, {"target": "db:5432", "local_port": True}),
        (InterceptRequest.parse, {"remote_port": True, "local_port": 80}),
        (InterceptRequest.parse, {"remote_port": 80, "local_port": True}),
    ],
)
def test_boolean_ports_are_config_errors(parse, body):
    with pytest.raises(ConfigError):
        parse(body)


@pytest.mark.parametrize(
    ("parse", "body"),
    [
        (ForwardRequest.parse, {"target": "db:5432", "local_host": None}),
        (InterceptRequest.parse, {"remote_port": 80, "local_port": 80, "local_host": None}),
    ],
)
def test_null_local_host_means_the_default(parse, body):
    assert parse(body).spec.local_host == "127.0.0.1"


def test_null_local_port_of_a_forward_means_the_default():
    assert ForwardRequest.parse({"target": "db:5432", "local_port": None}).spec.local_port == 0


@pytest.mark.parametrize(
    ("parse", "body"),
    [
        (InterceptRequest.parse, {"remote_port": 80, "local_port": 80, "name": "api\n"}),
        (ForwardRequest.parse, {"target": "db:5432", "name": "pg\n"}),
        (ConnectRequest.parse, {"url": "tcp://relay:1", "name": "prod\n"}),
    ],
)
def test_names_with_trailing_newline_are_config_errors(parse, body):
    with pytest.raises(ConfigError):
        parse(body)


def test_an_up_request_s_schema_error_is_one_short_line_whatever_the_value() -> None:
    """The control API checks a bridged.yaml again (it trusts no client): a 2 MB value comes
    back as the CLI's one line, cut, never the whole value."""
    huge = "x" * 2_000_000
    with pytest.raises(ConfigError) as caught:
        UpRequest.parse({"file": "/work/bridged.yaml", "expose": [huge]})
    message = str(caught.value)
    assert "\n" not in message and len(message) < 300
    assert message.startswith("/work/bridged.yaml: expose[0]: 'xxxx")
