"""kube-proxy for the stand-in: Services reachable at their ClusterIP, on loopback.

ClusterIPs are allocated from 127.96.0.0/16 and pod IPs from 127.244.0.0/16, both loopback, so
this can do what kube-proxy does without touching the host's network: each port of a Service
with a selector listens on ``clusterIP:port``; each connection goes to a Ready pod the selector
picks (at random, as kube-proxy's iptables mode does), at the port's targetPort — a number, or
a name resolved in *that* pod's containers. The endpoints are read when a connection arrives,
so a changed selector (a takeover) counts for the next connection, not the open ones.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from .controllers import Controller
from .store import Change


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) \
        and not pod["metadata"].get("deletionTimestamp")


def _target(pod: dict[str, Any], target: Any) -> int | None:
    if isinstance(target, int):
        return target
    for container in pod["spec"].get("containers", []):
        for port in container.get("ports") or []:
            if port.get("name") == target:
                return int(port["containerPort"])
    return None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


class KubeProxy(Controller):
    name = "kube-proxy"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.listeners: dict[tuple[str, str], dict[tuple[str, int], asyncio.Server]] = {}
        #: open connections' writers (both sides): stop() closes them, their handlers end
        self.connections: set[asyncio.StreamWriter] = set()
        self.handlers: set[asyncio.Task[None]] = set()

    def on_change(self, change: Change) -> None:
        if change.resource.plural == "services":
            meta = change.obj["metadata"]
            self.enqueue((meta.get("namespace") or "", meta["name"]))

    async def reconcile(self, key: tuple[str, str]) -> None:
        service = self.store.peek(self.res("services"), *key)
        spec = (service or {}).get("spec") or {}
        ip = spec.get("clusterIP") or ""
        wanted = {(ip, int(p["port"])) for p in spec.get("ports") or []
                  if p.get("protocol", "TCP") == "TCP"} if ip.startswith("127.") else set()
        current = self.listeners.setdefault(key, {})
        for address in [a for a in current if a not in wanted]:
            current.pop(address).close()
        for address in wanted - set(current):
            current[address] = await asyncio.start_server(
                lambda r, w, k=key, a=address: self._serve(k, a[1], r, w), *address,
                reuse_address=True)
        if not current:
            del self.listeners[key]

    def endpoints(self, namespace: str, name: str, port: int) -> list[tuple[str, int]]:
        """Where a connection to the Service's ``port`` may go now: (pod IP, target port)."""
        service = self.store.peek(self.res("services"), namespace, name)
        if service is None:
            return []
        spec = service["spec"]
        selector = spec.get("selector") or {}
        entry = next((p for p in spec.get("ports") or [] if p["port"] == port), None)
        if not selector or entry is None:
            return []
        found = []
        for pod in self.store.items(self.res("pods"), namespace):
            labels = pod["metadata"].get("labels") or {}
            if all(labels.get(k) == v for k, v in selector.items()) and _ready(pod):
                target = _target(pod, entry.get("targetPort", port))
                ip = (pod.get("status") or {}).get("podIP")
                if target is not None and ip:
                    found.append((ip, target))
        return found

    async def _serve(self, key: tuple[str, str], port: int, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.connections.add(writer)
        try:
            endpoints = self.endpoints(*key, port)
            if not endpoints:
                return  # no endpoints: kube-proxy rejects the connection
            try:
                up_reader, up_writer = await asyncio.open_connection(*random.choice(endpoints))
            except OSError:
                return
            self.connections.add(up_writer)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
                self.connections.discard(up_writer)
        finally:
            writer.close()
            self.connections.discard(writer)
            self.handlers.discard(task)

    async def stop(self) -> None:
        await super().stop()
        for servers in self.listeners.values():
            for server in servers.values():
                server.close()
        self.listeners.clear()
        for writer in list(self.connections):
            writer.transport.abort()  # the handlers see the reset and end
        if self.handlers:
            await asyncio.wait(list(self.handlers), timeout=5)
