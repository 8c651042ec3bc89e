"""Pure pieces of the control API: what a request body means, how an error crosses the socket."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..config import (
    CarrierSpec,
    ForwardSpec,
    InterceptSpec,
    parse_carrier,
    parse_host,
    parse_name,
    parse_port,
)
from ..errors import (
    BridgedError,
    CarrierError,
    ConfigError,
    Conflict,
    ControlError,
    HostKeyMismatch,
    NotFound,
    RefusedError,
    SessionError,
    from_code,
)

API = "/v1"

#: HTTP status per error class (most specific first)
_STATUS: tuple[tuple[type[BridgedError], int], ...] = (
    (ConfigError, 400),
    (NotFound, 404),
    (Conflict, 409),
    (RefusedError, 409),
    (HostKeyMismatch, 502),
    (SessionError, 502),
    (CarrierError, 502),
)


def status_for(error: BridgedError) -> int:
    for cls, status in _STATUS:
        if isinstance(error, cls):
            return status
    return 500


def error_body(error: BridgedError) -> dict[str, Any]:
    return {"error": {"code": error.code, "message": error.message, "hint": error.hint}}


def error_from_body(status: int, body: Any) -> BridgedError:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        e = body["error"]
        return from_code(str(e.get("code", "error")), str(e.get("message", "")), e.get("hint"))
    return ControlError(f"the daemon answered HTTP {status} without an error body")


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...],
          default: Any = None) -> Any:
    """A typed field of a request body; absent or null gives ``default``."""
    value = body.get(name)
    if value is None:  # absent and JSON null both mean: the default
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join("number" if k is int else k.__name__ for k in kinds)
        raise ConfigError(f"field {name!r} must be a {names}")
    return value


@dataclass(frozen=True)
class ConnectRequest:
    """A relay at a URL (``spec``), or else the relay of a kube context and namespace."""

    spec: CarrierSpec | None
    name: str | None
    token: str | None = None
    context: str | None = None
    namespace: str | None = None
    relay_image: str | None = None
    kubeconfig: str | None = None

    @classmethod
    def parse(cls, body: dict[str, Any]) -> ConnectRequest:
        url = field(body, "url", str)
        name = field(body, "name", str)
        namespace = field(body, "namespace", str)
        if namespace is not None:
            parse_name(namespace, "namespace")
        return cls(
            parse_carrier(url) if url else None,
            parse_name(name, "bridge name") if name else None,
            token=field(body, "token", str),
            context=field(body, "context", str),
            namespace=namespace,
            relay_image=field(body, "relay_image", str),
            kubeconfig=field(body, "kubeconfig", str),
        )


@dataclass(frozen=True)
class ServiceTarget:
    """``NAME``, ``NAME.NAMESPACE``, with ``:PORT`` (number or port name) or all ports."""

    name: str
    port: str | None = None

    @classmethod
    def parse(cls, text: str) -> ServiceTarget | None:
        m = _SERVICE.fullmatch(text)
        return cls(m["name"], m["port"]) if m else None


_SERVICE = re.compile(r"(?P<name>[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9-]{1,63})?)"
                      r"(:(?P<port>[a-z0-9-]{1,15}))?")


@dataclass(frozen=True)
class ForwardRequest:
    """A forward to HOST:PORT (``spec``), or to a Service's ports (``service``), or either: a
    kube bridge looks ``redis:6379`` up as a Service first, then as a host."""

    bridge: str | None
    spec: ForwardSpec | None
    service: ServiceTarget | None = None
    local_port: int = 0
    name: str | None = None
    local_host: str = "127.0.0.1"
    #: hosts mode (expose --hosts): see bridged.daemon.hosts
    hosts: bool = False

    @classmethod
    def parse(cls, body: dict[str, Any]) -> ForwardRequest:
        target = field(body, "target", str)
        if not target:
            raise ConfigError("missing target: give HOST:PORT or a Service name")
        local_port = parse_port(field(body, "local_port", int, 0), "local port", allow_zero=True)
        name = field(body, "name", str)
        local_host = parse_host(field(body, "local_host", str, "127.0.0.1"))
        hosts = field(body, "hosts", bool, False)
        service = ServiceTarget.parse(target)
        try:
            spec: ForwardSpec | None = ForwardSpec.parse(
                target, local_port=local_port, name=name, local_host=local_host, hosts=hosts)
        except ConfigError:
            if service is None:
                raise
            spec = None
        if name is not None:
            parse_name(name, "forward name")
        return cls(field(body, "bridge", str), spec, service, local_port, name, local_host,
                   hosts)


@dataclass(frozen=True)
class InterceptRequest:
    bridge: str | None
    spec: InterceptSpec
    #: take the port over from a holder that is disconnected (or, with care, connected)
    overwrite: bool = False

    @classmethod
    def parse(cls, body: dict[str, Any]) -> InterceptRequest:
        local = field(body, "local_port", (int, str))
        if local is None:
            raise ConfigError("an intercept needs local_port (LOCAL or LOCAL:SERVICE_PORT)")
        headers = field(body, "headers", list, [])
        if not all(isinstance(h, str) for h in headers):
            raise ConfigError("field 'headers' must be a list of NAME=VALUE strings")
        return cls(
            field(body, "bridge", str),
            InterceptSpec.parse(
                local_port=local, service=field(body, "service", str),
                remote_port=field(body, "remote_port", int), via=field(body, "via", str),
                name=field(body, "name", str),
                local_host=field(body, "local_host", str, "127.0.0.1"),
                headers=tuple(headers), path=field(body, "path", str),
                origin=field(body, "origin", str), http=field(body, "http", bool, False),
                tcp=field(body, "tcp", bool, False),
                fallback=field(body, "fallback", str, "error"),
                protocol=field(body, "protocol", str),
                grpc_method=field(body, "grpc_method", str),
                mirror=field(body, "mirror", bool, False),
            ),
            overwrite=field(body, "overwrite", bool, False),
        )


class UpRequest:
    """``POST /v1/up``: a bridged.yaml as the CLI read it (paths absolute), checked again
    against the package's schema: the control API trusts no client."""

    @staticmethod
    def parse(body: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        from ..project import validate

        file = field(body, "file", str)
        if not file or not file.startswith("/"):
            raise ConfigError("field 'file' must be the absolute path of the bridged.yaml")
        kubeconfig = field(body, "kubeconfig", str)
        project = {k: body[k] for k in ("context", "namespace", "intercept", "expose", "env",
                                        "files") if body.get(k) is not None}
        validate(project, file)  # the same one line as the CLI's, long values cut
        return {**project, "file": file}, kubeconfig
