"""Opening a pod port-forward through the API server: the ``kube`` carrier's byte stream.

Needs only the RBAC rights ``pods`` list and ``pods/portforward`` get (and create, checked for
websocket upgrades since Kubernetes 1.35) in the namespace: no
Service, no LoadBalancer, no open port. One port-forward carries the whole SSH connection, so
a new connection to a cluster service costs no API-server round trip.
"""

from __future__ import annotations

import random
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.stream import WsApiClient

from ..errors import CarrierError
from .client import Kube, translate
from .manifests import RELAY


def is_relay(pod: Any) -> bool:
    """Only a pod of the relay's own ReplicaSets, running as its service account, may be
    trusted with the tunnel: matching labels alone can be put on any pod."""
    owners = pod.metadata.owner_references or []
    owned = any(o.kind == "ReplicaSet" and o.controller and o.name.startswith(f"{RELAY}-")
                for o in owners)
    return owned and pod.spec is not None and pod.spec.service_account_name == RELAY


def is_ready(pod: Any) -> bool:
    if pod.metadata.deletion_timestamp is not None or pod.status is None:
        return False
    if pod.status.phase != "Running":
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or ())


async def ready_pod(kube: Kube, selector: str) -> str:
    """A Ready pod matching ``selector`` (random among several: replicas share the load and a
    reconnect after a rolling update lands on a live one)."""
    try:
        pods = await kube.core.list_namespaced_pod(kube.namespace, label_selector=selector)
    except ApiException as exc:
        raise translate(exc, f"cannot list the relay pods in {kube.namespace}") from exc
    ready = [p.metadata.name for p in pods.items if is_ready(p) and is_relay(p)]
    if not ready:
        raise CarrierError(f"no Ready relay pod ({selector}) in namespace {kube.namespace}",
                           hint="bridged connect deploys it; bridged status shows its state")
    return random.choice(ready)


async def open_websocket(kube: Kube, pod: str, port: int) -> aiohttp.ClientWebSocketResponse:
    ws_api = WsApiClient(configuration=kube.configuration)
    core = client.CoreV1Api(ws_api)
    try:
        pending = await core.connect_get_namespaced_pod_portforward(
            pod, kube.namespace, ports=port, _preload_content=False)
        ws = await pending  # type: ignore[misc]  # the websocket handshake itself
    except ApiException as exc:
        await ws_api.close()
        raise translate(exc, f"cannot port-forward to pod {pod}") from exc
    except aiohttp.WSServerHandshakeError as exc:
        await ws_api.close()
        raise CarrierError(f"the API server refused the port-forward to pod {pod}: HTTP "
                           f"{exc.status} {exc.message}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        await ws_api.close()
        raise CarrierError(f"cannot reach the API server for a port-forward: {exc}") from exc
    ws._bridged_api = ws_api  # type: ignore[attr-defined]  # closed with the websocket
    return ws  # type: ignore[return-value]


async def close_websocket(ws: aiohttp.ClientWebSocketResponse) -> None:
    try:
        await ws.close()
    finally:
        api = getattr(ws, "_bridged_api", None)
        if api is not None:
            await api.close()
