"""The daemon process: holds the bridges, serves the control API, stops in stages."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__, paths
from ..carriers import carrier_for
from ..config import CarrierSpec, ForwardSpec, InterceptSpec, TunnelSettings, default_name
from ..control.api import ControlServer
from ..errors import ConfigError, Conflict, NotFound
from ..keys import PinnedHostKeys, fingerprint, load_or_create_key, public_line
from .bridge import Bridge, Forward, Intercept

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DaemonSettings:
    socket: Path = field(default_factory=paths.control_socket)
    state_dir: Path = field(default_factory=paths.state_dir)
    tunnel: TunnelSettings = field(default_factory=TunnelSettings)

    @property
    def client_key(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def pinned_keys(self) -> Path:
        return self.state_dir / "known_relays.json"


class Daemon:
    def __init__(self, settings: DaemonSettings | None = None) -> None:
        self.settings = settings or DaemonSettings()
        self.client_key = load_or_create_key(self.settings.client_key)
        pub = self.settings.client_key.with_suffix(".pub")
        if not pub.exists():
            pub.write_text(public_line(self.client_key) + "\n")
        self.pins = PinnedHostKeys(self.settings.pinned_keys)
        self.bridges: dict[str, Bridge] = {}
        #: bridges being set up, with the step they are at (shown by status while they wait)
        self.connecting: dict[str, str] = {}
        self.started = time.time()
        self._stop = asyncio.Event()
        self._api = ControlServer(self, self.settings.socket)
        self._lock = asyncio.Lock()  # one change at a time: no races between API requests

    # --- life cycle ---

    async def run(self, ready: Any = None) -> None:
        """Serve until SIGTERM/SIGINT or ``POST /v1/shutdown``; then stop in stages."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self._api.start()
        log.info("bridged daemon %s ready on %s (pid %d, key %s)", __version__,
                 self.settings.socket, os.getpid(), fingerprint(self.client_key))
        if ready is not None:
            ready()
        try:
            await self._stop.wait()
        finally:
            await self.stop()

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        log.info("daemon stopping: leaving intercepts, closing forwards and bridges")
        # stage 1: bridges leave their intercepts first, so the cluster heals at once
        for bridge in list(self.bridges.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bridge.close(), 10)
        self.bridges.clear()
        # stage 2: the API goes last, so status answers until the end
        await self._api.close()
        log.info("daemon stopped")

    # --- bridges ---

    def bridge(self, name: str | None) -> Bridge:
        if name is None:
            if len(self.bridges) == 1:
                return next(iter(self.bridges.values()))
            if not self.bridges:
                raise NotFound("not connected to any relay", hint="run bridged connect first")
            raise ConfigError(
                f"several relays are connected ({', '.join(self.bridges)}): choose with --bridge"
            )
        try:
            return self.bridges[name]
        except KeyError:
            raise NotFound(f"no bridge named {name!r}") from None

    async def connect(self, spec: CarrierSpec, *, name: str | None = None,
                      token: str | None = None) -> Bridge:
        """A bridge to a relay at a URL (tcp://, ws://, wss://)."""
        target = {"relay": spec.url}
        async with self._lock:
            name = name or "default"
            existing = self._existing(name, target)
            if existing is not None:
                return existing
            bridge = Bridge(name, spec.url, carrier_for(spec, token=token),
                            client_key=self.client_key, pins=self.pins,
                            tunnel=self.settings.tunnel, target=target)
            await bridge.start()
            self.bridges[name] = bridge
            return bridge

    async def connect_kube(self, context: str | None, namespace: str | None, *,
                           name: str | None = None, image: str | None = None) -> Bridge:
        """A bridge to the relay of a kube context and namespace, deployed if needed, reached
        through the API server's port-forward."""
        from ..carriers.kube import KubeCarrier
        from ..kube import manifests
        from ..kube.client import Kube, KubeTarget
        from ..kube.relay import ensure_relay

        async with self._lock:
            kube = await Kube.connect(KubeTarget(context, namespace))
            try:
                relay = f"kube://{kube.context}/{kube.namespace}"
                target = {"relay": relay}
                name = name or default_name(f"{kube.context}-{kube.namespace}")
                existing = self._existing(name, target)
                if existing is not None:
                    await kube.close()
                    return existing
                self.connecting[name] = "starting"

                def progress(step: str) -> None:
                    self.connecting[name] = step
                    log.info("bridge %s: %s", name, step)

                info = await ensure_relay(
                    kube, public_key_line=public_line(self.client_key),
                    key_entry=self.key_entry, image=image or manifests.DEFAULT_IMAGE,
                    progress=progress,
                )
                progress("connecting through the API server's port-forward")
                bridge = Bridge(
                    name, relay, KubeCarrier(kube, manifests.SELECTOR, manifests.SSH_PORT),
                    client_key=self.client_key, pins=self.pins,
                    published_host_key=info.host_key, tunnel=self.settings.tunnel,
                    target=target,
                )
                bridge.on_close = kube.close
                await bridge.start()
            except BaseException:
                await kube.close()
                raise
            finally:
                self.connecting.pop(name or "", None)
            self.bridges[name] = bridge
            return bridge

    @property
    def key_entry(self) -> str:
        from ..kube.manifests import key_entry_name

        return key_entry_name(fingerprint(self.client_key), getpass.getuser())

    def _existing(self, name: str, target: dict[str, Any]) -> Bridge | None:
        existing = self.bridges.get(name)
        if existing is None:
            return None
        if existing.target == target:
            return existing  # idempotent
        raise Conflict(f"bridge {name!r} is already connected to {existing.relay}",
                       hint="disconnect it first, or give another --name")

    async def disconnect(self, name: str | None) -> None:
        async with self._lock:
            bridge = self.bridge(name)
            del self.bridges[bridge.name]
            await bridge.close()

    # --- forwards and intercepts ---

    def _find(self, name: str, kind: str) -> Bridge:
        for bridge in self.bridges.values():
            if name in (bridge.forwards if kind == "forward" else bridge.intercepts):
                return bridge
        raise NotFound(f"no {kind} named {name!r}", hint="bridged status lists them")

    async def expose(self, bridge_name: str | None, spec: ForwardSpec) -> Forward:
        async with self._lock:
            bridge = self.bridge(bridge_name)
            if any(spec.name in b.forwards for b in self.bridges.values()):
                raise Conflict(f"a forward named {spec.name!r} exists already",
                               hint="give another --name, or unexpose it first")
            return await bridge.add_forward(spec)

    async def unexpose(self, name: str) -> None:
        async with self._lock:
            await self._find(name, "forward").remove_forward(name)

    async def intercept(self, bridge_name: str | None, spec: InterceptSpec) -> Intercept:
        async with self._lock:
            bridge = self.bridge(bridge_name)
            if any(spec.name in b.intercepts for b in self.bridges.values()):
                raise Conflict(f"an intercept named {spec.name!r} exists already",
                               hint="leave it first")
            return await bridge.add_intercept(spec, secrets.token_hex(8))

    async def leave(self, name: str) -> None:
        async with self._lock:
            await self._find(name, "intercept").remove_intercept(name)

    # --- status ---

    def status(self) -> dict[str, Any]:
        return {
            "daemon": {
                "version": __version__, "pid": os.getpid(), "socket": str(self.settings.socket),
                "uptime_seconds": round(time.time() - self.started, 1),
                "client_key": public_line(self.client_key),
                "client_key_fingerprint": fingerprint(self.client_key),
            },
            "bridges": [b.to_dict() for b in self.bridges.values()] + [
                {"name": n, "relay": "", "carrier": "kube", "state": "connecting", "step": step,
                 "last_error": "", "connects": 0, "connected_since": None,
                 "relay_version": None, "session": None}
                for n, step in self.connecting.items()
            ],
            "forwards": [f.to_dict() for b in self.bridges.values() for f in b.forwards.values()],
            "intercepts": [
                i.to_dict() for b in self.bridges.values() for i in b.intercepts.values()
            ],
        }
