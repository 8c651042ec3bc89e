"""The relay's side of the redirect strategies: which Services are redirected, and when.

The intercept table says which intercepts hold a live lease; a Service is redirected while at
least one of them names it, and restored as soon as none does (the session ended, the lease
lapsed, the intercept was left). :meth:`Redirector.sync` brings the cluster to that state; it
runs after every change of the table and on the lease timer, one run at a time, and a failed
run is tried again on the next tick. What the strategies write is in :mod:`bridged.redirect`;
how, in :mod:`bridged.kube.redirects`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import BridgedError, RefusedError
from ..kube import manifests as m
from ..kube import redirects as ops
from ..protocol import InterceptClaim
from ..redirect.takeover import Record

log = logging.getLogger(__name__)

#: the labels every relay pod carries: what a taken-over Service selects
RELAY_SELECTOR = {m.NAME_LABEL: m.RELAY, m.MANAGED_BY: "bridged"}


@dataclass
class Redirected:
    """One Service whose traffic currently reaches the relay."""

    via: str
    #: service port → "host:port" where the original pods answer
    origins: dict[int, str] = field(default_factory=dict)
    record: Record | None = None


class Redirector:
    """Owns the Services the relay redirects. ``listen(port, origin)`` makes sure the relay
    serves ``port`` (a pass-through to ``origin`` unless an intercept holds it);
    ``set_origin(port, origin)`` tells an existing listener where the original pods are."""

    def __init__(self, kube: Any, *, host: str, live: Callable[[], dict[str, list[InterceptClaim]]],
                 listen: Callable[[int, str], Any], set_origin: Callable[[int, str], None],
                 closed: Callable[[set[int]], None]) -> None:
        self.kube = kube
        self.host = host
        self._live = live
        self._listen = listen
        self._set_origin = set_origin
        self._closed = closed
        self.redirected: dict[str, Redirected] = {}
        #: (service, service port) → relay port; kept while anything uses it, so an intercept
        #: that re-attaches finds its port (and the Service its targetPort) unchanged
        self.ports: dict[tuple[str, int], int] = {}
        self._lock = asyncio.Lock()

    # --- ports ---

    def port_for(self, service: str, service_port: int) -> int:
        key = (service, service_port)
        if key not in self.ports:
            self.ports[key] = _free_port(self.host)
        return self.ports[key]

    def ports_in_use(self) -> set[int]:
        return {p for (svc, _), p in self.ports.items() if svc in self.redirected}

    # --- the state the cluster should be in ---

    def out_of_sync(self) -> bool:
        return bool(set(self.redirected) - set(self._live()))

    async def ensure(self, claim: InterceptClaim) -> None:
        """Redirect ``claim.service`` now (an intercept was just granted); raises
        :class:`RefusedError` with the reason if the cluster cannot be changed."""
        async with self._lock:
            current = self.redirected.get(claim.service)
            if current is not None and current.via != claim.via:
                raise RefusedError(f"Service {claim.service} is redirected via {current.via} "
                                   f"by another intercept; use --via {current.via}")
            if current is None:
                await self._apply(claim.service, claim.via)

    async def sync(self) -> list[str]:
        """Restore every Service that no live intercept names any more; what happened, one
        line per Service. (Redirecting is done by :meth:`ensure` when an intercept is granted:
        its error goes back to the daemon.)"""
        async with self._lock:
            live = self._live()
            return [await self._undo(service)
                    for service in [s for s in self.redirected if s not in live]]

    async def close(self) -> None:
        """Restore everything (the relay is stopping): the cluster is left as found."""
        async with self._lock:
            for service in list(self.redirected):
                try:
                    await self._undo(service)
                except BridgedError as exc:
                    log.error("could not restore Service %s: %s", service, exc)

    async def restore_stale(self) -> None:
        """At start-up no lease is live: every takeover found was left by a relay that died."""
        for restored in await ops.restore_stale(self.kube):
            log.warning("stale takeover: %s", restored.describe())

    # --- strategies ---

    async def _apply(self, service: str, via: str) -> None:
        if via != "takeover":
            raise RefusedError(f"--via {via} is not available on this relay yet")
        current = await ops.read_service(self.kube, service)
        for p in (current.get("spec") or {}).get("ports") or []:
            await self._listen(self.port_for(service, p["port"]), "")

        def relay_ports(svc: dict[str, Any]) -> dict[int, int]:
            return {p["port"]: self.port_for(service, p["port"])
                    for p in svc["spec"].get("ports") or []}

        taken = await ops.take_over(self.kube, service, RELAY_SELECTOR, relay_ports)
        self.redirected[service] = Redirected("takeover", taken.origins, taken.record)
        for service_port, origin in taken.origins.items():
            port = self.port_for(service, service_port)
            await self._listen(port, origin)
            self._set_origin(port, origin)

    async def _undo(self, service: str) -> str:
        state = self.redirected[service]
        restored = await ops.restore(self.kube, service, state.record)
        del self.redirected[service]
        ports = {p for (svc, _), p in self.ports.items() if svc == service}
        for port in ports:
            self._set_origin(port, "")
        self._closed(ports)
        return restored.describe()

    def forget_ports(self, ports: set[int]) -> None:
        """Those relay ports are closed: their numbers may be given out again."""
        for key in [k for k, p in self.ports.items() if p in ports and
                    k[0] not in self.redirected]:
            del self.ports[key]


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
