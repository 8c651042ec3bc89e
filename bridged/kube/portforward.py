"""Opening a pod port-forward through the API server: the ``kube`` carrier's byte stream.

Needs only the RBAC rights ``pods`` list and watch (watch: a reconnect waits for a relay pod
to become Ready instead of polling) and ``pods/portforward`` get (and create, checked for
websocket upgrades since Kubernetes 1.35) in the namespace: no
Service, no LoadBalancer, no open port. One port-forward carries the whole SSH connection, so
a new connection to a cluster service costs no API-server round trip.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection
from typing import Any

import aiohttp
from kubernetes_asyncio import client, watch
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


class NoReadyRelay(CarrierError):
    """No relay pod is Ready (one may be starting): worth waiting for, not retrying on a timer."""


async def ready_pod(kube: Kube, selector: str) -> str:
    """A Ready pod matching ``selector`` (random among several: replicas share the load and a
    reconnect after a rolling update lands on a live one)."""
    try:
        pods = await kube.core.list_namespaced_pod(kube.namespace, label_selector=selector)
    except ApiException as exc:
        raise translate(exc, f"cannot list the relay pods in {kube.namespace}") from exc
    ready = _ready(pods.items, ())
    if not ready:
        raise NoReadyRelay(f"no Ready relay pod ({selector}) in namespace {kube.namespace}",
                           hint="bridged connect deploys it; bridged status shows its state")
    return random.choice(ready)


def _ready(pods: Any, exclude: Collection[str]) -> list[str]:
    return [p.metadata.name for p in pods
            if p.metadata.name not in exclude and is_ready(p) and is_relay(p)]


async def wait_ready_pod(kube: Kube, selector: str, *, exclude: Collection[str] = (),
                         within: float) -> str | None:
    """A Ready relay pod not in ``exclude`` (the one a connection just failed on), the moment
    there is one; None once ``within`` seconds passed. Lists, then watches from the list's
    resourceVersion, so the Ready event between the two is not missed; the kubelet's status
    write wakes the daemon, no timer does. Raises :class:`~bridged.errors.BridgedError` when
    the pods cannot be listed or watched (the caller falls back to its backoff)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    what = f"the relay pods in {kube.namespace}"
    while (left := deadline - loop.time()) > 0:
        try:
            pods = await kube.core.list_namespaced_pod(kube.namespace, label_selector=selector)
        except ApiException as exc:
            raise translate(exc, f"cannot list {what}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise CarrierError(f"cannot list {what}: {exc}") from exc
        ready = _ready(pods.items, exclude)
        if ready:
            return random.choice(ready)
        try:
            async with asyncio.timeout(left), watch.Watch() as stream:
                async for event in stream.stream(
                        kube.core.list_namespaced_pod, kube.namespace, label_selector=selector,
                        resource_version=pods.metadata.resource_version,
                        # the server ends the watch a little after the caller gives up
                        timeout_seconds=int(left) + 1):
                    pod = event["object"]
                    if event["type"] in ("ADDED", "MODIFIED") and _ready([pod], exclude):
                        return str(pod.metadata.name)
        except TimeoutError:
            return None
        except ApiException as exc:
            if exc.status == 410:  # the list's version left the watch window: list again
                continue
            raise translate(exc, f"cannot watch {what}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise CarrierError(f"cannot watch {what}: {exc}") from exc
    return None


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
