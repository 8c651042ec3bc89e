"""Replacing the relay's pod on the stand-in cluster, and timing what a user sees: shared by
``test_failover.py`` and ``bench/failover.py``.

Times are ``time.time()`` on this machine: the daemon (another process) stamps its reconnects
with the same clock. The pods' Ready moments are taken from the stand-in's store as it commits
them (a listener, no polling), so "Ready" is the instant the API server would tell a watcher.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from typing import Any

from bridged.kube import manifests as m

from .apiserver import KubeApiServer
from .store import Change


def is_ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def is_relay(pod: dict[str, Any]) -> bool:
    return (pod["metadata"].get("labels") or {}).get(m.NAME_LABEL) == m.RELAY


class RelayPods:
    """When each relay pod became Ready (first time), as the store committed it."""

    def __init__(self, api: KubeApiServer, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.ready_at: dict[str, float] = {}
        self._changed = asyncio.Event()
        self._stop_listening: Callable[[], None] | None = None

    def __enter__(self) -> RelayPods:
        for pod in self.api.list("pods", self.namespace):
            if is_relay(pod) and is_ready(pod):
                self.ready_at.setdefault(pod["metadata"]["name"], 0.0)  # before we looked
        self._stop_listening = self.api.store.listen(self._on_change)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop_listening is not None:
            self._stop_listening()

    def _on_change(self, change: Change) -> None:
        pod = change.obj
        if change.resource.plural != "pods" or pod["metadata"].get("namespace") != \
                self.namespace or not is_relay(pod) or not is_ready(pod):
            return
        self.ready_at.setdefault(pod["metadata"]["name"], time.time())
        self._changed.set()

    def current(self) -> str:
        (name,) = [p["metadata"]["name"] for p in self.api.list("pods", self.namespace)
                   if is_relay(p) and is_ready(p)]
        return str(name)

    async def next_ready(self, exclude: set[str], within: float) -> tuple[str, float]:
        """The first relay pod not in ``exclude`` to become Ready, and when."""
        async with asyncio.timeout(within):
            while True:
                fresh = [(t, n) for n, t in self.ready_at.items() if n not in exclude]
                if fresh:
                    t, name = min(fresh)
                    return name, t
                self._changed.clear()
                await self._changed.wait()


def delete_pod(api: KubeApiServer, namespace: str, name: str) -> float:
    """``kubectl delete pod`` (graceful): the kubelet stops it, its ReplicaSet makes another.
    Returns when it was deleted."""
    at = time.time()
    status, _ = api.registry.delete(api.registry.resource("pods"), namespace, name)
    assert status in (200, 202), status
    return at


async def echo_roundtrip(port: int, size: int = 64 * 1024, within: float = 15.0
                         ) -> tuple[float, float]:
    """One connection through a forward: random bytes out, the same back (hashed). Returns
    when the connection was accepted and when the first echoed byte came."""
    payload = os.urandom(size)
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        connected = time.time()
        try:
            writer.write(payload)
            writer.write_eof()
            first = await reader.readexactly(1)
            first_byte = time.time()
            rest = await reader.read()
        finally:
            writer.close()
    got = first + rest
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest(), \
        f"{len(got)} of {size} bytes came back, or other bytes"
    return connected, first_byte


async def echo_on(host: str, port: int) -> asyncio.Server:
    """A "cluster service" on loopback that echoes until the client's end."""
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(echo, host, port)
