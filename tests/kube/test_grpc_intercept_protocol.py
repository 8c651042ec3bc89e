"""An intercept told no --protocol takes it from the Service port's ``appProtocol`` (``grpc``,
``kubernetes.io/h2c``), on the stand-in cluster: so an HTTP/1.1 local server behind a gRPC
port is refused at intercept time with the Service left as it was, while --protocol http says
otherwise, and an h2c port's intercept is registered as h2c."""

from __future__ import annotations

from typing import Any

from ..helpers import Daemon, free_port
from .apiserver import KubeApiServer
from .test_intercept_on_kube import (  # noqa: F401 (fixtures)
    NS,
    _comparable,
    alice,
    cluster,
)


def _service(api: KubeApiServer, name: str, app_protocol: str) -> dict[str, Any]:
    return api.apply({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
        "spec": {"selector": {"app": name}, "ports": [
            {"name": "api", "port": 50051, "targetPort": 9000,
             "appProtocol": app_protocol}]}})


async def test_the_service_ports_app_protocol_is_the_default(
    cluster: KubeApiServer, alice: tuple[Daemon, int],  # noqa: F811
) -> None:
    a, http1_port = alice  # alice's local server speaks HTTP/1.1
    cart = _service(cluster, "cart", "grpc")
    search = _service(cluster, "search", "kubernetes.io/h2c")
    await a.call("POST", "bridges", {})

    refused = await a.acli("intercept", "cart", "--port", str(http1_port), "--via", "takeover")
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert refused.stderr.strip() == (
        f"bridged: local server at 127.0.0.1:{http1_port} speaks HTTP/1.1, not HTTP/2 (h2c); "
        "intercept with --protocol http, or serve h2c")
    assert _comparable(cluster.get("services", NS, "cart")) == _comparable(cart)
    assert (await a.status())["intercepts"] == []

    # the developer's word beats the Service's
    made = await a.acli("intercept", "cart", "--port", str(http1_port), "--via", "takeover",
                        "--protocol", "http", "--header", "x-dev=alice")
    assert made.returncode == 0, made.stderr
    # a local h2c server not started yet: registered, as h2c
    made = await a.acli("intercept", "search", "--port", str(free_port()), "--via", "takeover")
    assert made.returncode == 0, made.stderr
    assert "(h2c)" in made.stdout, made.stdout
    shown = {i["name"]: i["protocol"] for i in (await a.status())["intercepts"]}
    assert shown == {"cart": "http", "search": "h2c"}
    assert _comparable(cluster.get("services", NS, "search")) != _comparable(search)  # taken
