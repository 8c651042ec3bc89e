"""kube-proxy for the stand-in: Services reachable at their ClusterIP, on loopback.

ClusterIPs are allocated from 127.96.0.0/16 and pod IPs from 127.244.0.0/16, both loopback, so
this can do what kube-proxy does without touching the host's network: each port of a Service
with a selector listens on ``clusterIP:port``; each connection goes to a Ready pod the selector
picks (at random, as kube-proxy's iptables mode does), at the port's targetPort — a number, or
a name resolved in *that* pod's containers.

Like the real one, it follows the Service's EndpointSlices (written by
:class:`.endpointslices.EndpointSliceController`, after its ``lag``), not the Service's
selector: a changed selector (a takeover) counts once the slices say so, and then for the next
connection, not the open ones; a port without ready endpoints refuses connections, as
kube-proxy's REJECT rule does. ``frozen``: programs nothing more (a kube-proxy that is
down); ``stale``: the Services it no longer updates.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from .controllers import Controller
from .endpointslices import SERVICE_NAME
from .store import Change


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
        #: (namespace, Service) → port name → ready (IP, port): the rules programmed
        self.programmed: dict[tuple[str, str], dict[str, list[tuple[str, int]]]] = {}
        self.frozen = False
        #: Services whose rules are no longer updated (a kube-proxy that missed their change)
        self.stale: set[tuple[str, str]] = set()

    def on_change(self, change: Change) -> None:
        meta = change.obj["metadata"]
        if change.resource.plural == "services":
            self.enqueue((meta.get("namespace") or "", meta["name"]))
        elif change.resource.plural == "endpointslices" and not self.frozen:
            service = (meta.get("labels") or {}).get(SERVICE_NAME)
            if service:
                self.enqueue((meta.get("namespace") or "", service))

    async def reconcile(self, key: tuple[str, str]) -> None:
        if not self.frozen and key not in self.stale:
            self._program(key)
        service = self.store.peek(self.res("services"), *key)
        if service is None:
            self.programmed.pop(key, None)
        spec = (service or {}).get("spec") or {}
        ip = spec.get("clusterIP") or ""
        # a port without ready endpoints refuses connections (kube-proxy's REJECT rule)
        rules = self.programmed.get(key, {})
        wanted = {(ip, int(p["port"])) for p in spec.get("ports") or []
                  if p.get("protocol", "TCP") == "TCP" and rules.get(p.get("name") or "")
                  } if ip.startswith("127.") else set()
        current = self.listeners.setdefault(key, {})
        for address in [a for a in current if a not in wanted]:
            current.pop(address).close()
        for address in wanted - set(current):
            current[address] = await asyncio.start_server(
                lambda r, w, k=key, a=address: self._serve(k, a[1], r, w), *address,
                reuse_address=True)
        if not current:
            del self.listeners[key]

    def _program(self, key: tuple[str, str]) -> None:
        rules: dict[str, list[tuple[str, int]]] = {}
        for piece in self.store.items(self.res("endpointslices"), key[0]):
            if (piece["metadata"].get("labels") or {}).get(SERVICE_NAME) != key[1]:
                continue
            for port in piece.get("ports") or []:
                rules.setdefault(port.get("name") or "", []).extend(
                    (address, int(port["port"]))
                    for endpoint in piece.get("endpoints") or []
                    if (endpoint.get("conditions") or {}).get("ready", True) is not False
                    for address in endpoint.get("addresses") or [])
        self.programmed[key] = rules

    def endpoints(self, namespace: str, name: str, port: int) -> list[tuple[str, int]]:
        """Where a connection to the Service's ``port`` may go now: (pod IP, target port)."""
        service = self.store.peek(self.res("services"), namespace, name)
        if service is None:
            return []
        entry = next((p for p in service["spec"].get("ports") or [] if p["port"] == port),
                     None)
        if entry is None:
            return []
        return list(self.programmed.get((namespace, name), {}).get(entry.get("name") or "", []))

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
