"""The daemon process: holds the bridges, serves the control API, stops in stages."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import getpass
import logging
import os
import secrets
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .. import __version__, paths
from ..capture.model import Captured, CaptureSettings
from ..capture.store import CaptureStore, open_store
from ..carriers import carrier_for
from ..config import (
    CarrierSpec,
    ForwardSpec,
    InterceptSpec,
    TunnelSettings,
    default_name,
    parse_carrier,
    protocol_of_app_protocol,
)
from ..control.api import ControlServer
from ..control.models import ForwardRequest
from ..errors import ConfigError, Conflict, KubeError, NotFound, RefusedError
from ..keys import PinnedHostKeys, fingerprint, load_or_create_key, public_line
from ..tasks import TaskSet
from .bridge import Bridge, Forward, Intercept, KeyRefused, http_client_error
from .hosts import HostsFile, HostsSettings
from .notify import Notifier
from .state import StateFile

if TYPE_CHECKING:
    from ..inspector.server import Inspector
    from .proxy import Proxies

log = logging.getLogger(__name__)

_Method = TypeVar("_Method", bound=Callable[..., Awaitable[Any]])


def _reaching_the_api(method: _Method) -> _Method:
    """An API server that cannot be reached is an expected failure: one line for the CLI and
    the log, not an internal error with a traceback."""

    @functools.wraps(method)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except Exception as exc:
            if not isinstance(exc, OSError | TimeoutError) and not http_client_error(exc):
                raise
            reason = str(exc).strip() or type(exc).__name__
            raise KubeError(f"cannot reach the Kubernetes API server: {reason}",
                            hint="check that the cluster is up and the kubeconfig's server "
                            "address (bridged doctor)") from None

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class DaemonSettings:
    socket: Path = field(default_factory=paths.control_socket)
    state_dir: Path = field(default_factory=paths.state_dir)
    tunnel: TunnelSettings = field(default_factory=TunnelSettings)
    #: header names the traffic log redacts besides the defaults (the relay redacts too)
    redact_headers: tuple[str, ...] = ()
    #: what the inspector's capture keeps (its redact_headers add to the ones above)
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    #: hosts mode's file (/etc/hosts; BRIDGED_HOSTS_FILE gives tests one of their own) and
    #: the loopback addresses it gives Services
    hosts: HostsSettings = field(default_factory=HostsSettings)

    @property
    def client_key(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def pinned_keys(self) -> Path:
        return self.state_dir / "known_relays.json"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def capture_db(self) -> Path:
        return self.state_dir / "capture.sqlite"


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
        #: intercepts being made: name → (what the relay is doing, since when, time.time())
        self.intercepting: dict[str, tuple[str, float]] = {}
        self.started = time.time()
        self._stop = asyncio.Event()
        self._api = ControlServer(self, self.settings.socket)
        self._lock = asyncio.Lock()  # one change at a time: no races between API requests
        self.notify = Notifier()
        self.state = StateFile(self.settings.state_file)
        #: hosts mode's block, shared by the bridges (see bridged.daemon.hosts)
        self.hosts = HostsFile(self.settings.hosts)
        #: saved bridges that could not be restored yet (kept in the state, shown by status)
        self.unrestored: dict[str, dict[str, Any]] = {}
        #: what went wrong restoring the saved state, one line each
        self.restore_problems: list[str] = []
        self.restoring = False
        self._tasks = TaskSet("daemon")
        #: what ``bridged up`` applied, so that ``down`` undoes exactly that
        self.applied: dict[str, Any] | None = None
        capture = self.settings.capture
        #: what the capture keeps: the store's settings, known before it is opened
        self.capture_settings = dataclasses.replace(
            capture, redact_headers=(*capture.redact_headers, *self.settings.redact_headers))
        self._store: CaptureStore | None = None
        self._inspector: Inspector | None = None
        self._inspector_lock = asyncio.Lock()
        #: the SOCKS5 and HTTP proxies of each bridge that was asked for them (POST /v1/proxy)
        self.proxies: dict[str, Proxies] = {}
        self._proxy_lock = asyncio.Lock()

    # --- life cycle ---

    async def run(self, ready: Any = None) -> None:
        """Serve until SIGTERM/SIGINT or ``POST /v1/shutdown``; then stop in stages."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        saved = self.state.load()
        if self.state.problem:
            self.restore_problems.append(self.state.problem)
        self._sweep_hosts(saved.get("hosts_file"))
        await self._api.start()
        log.info("bridged daemon %s ready on %s (pid %d, key %s)", __version__,
                 self.settings.socket, os.getpid(), fingerprint(self.client_key))
        if ready is not None:
            ready()
        self.notify.ready(self.summary())
        if saved["bridges"]:
            self.restoring = True
            self._tasks.start(self.restore(saved), name="restore")
        self.applied = saved.get("up")
        if self.notify.watchdog_seconds:
            self._tasks.start(self._watchdog(self.notify.watchdog_seconds), name="watchdog")
        try:
            await self._stop.wait()
        finally:
            await self.stop()

    def _sweep_hosts(self, saved_path: str | None) -> None:
        """A daemon killed hard left its hosts block: removed before anything is restored
        (the restored forwards write theirs again); also from the file the state names, if
        the setting changed since."""
        files = [self.hosts]
        if saved_path and Path(saved_path) != self.hosts.path:
            files.append(HostsFile(dataclasses.replace(self.settings.hosts,
                                                       path=Path(saved_path))))
        for hosts in files:
            try:
                hosts.sweep()
            except (OSError, ConfigError, RefusedError) as exc:
                log.warning("hosts: cannot remove a stale bridged block from %s: %s",
                            hosts.path, exc)

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        """SIGHUP: re-apply the saved desired state (what a systemd ``reload`` means here):
        bridges, forwards and intercepts missing since are made again."""
        self.notify.send("RELOADING=1")
        self._tasks.start(self._reload(), name="reload")

    async def _reload(self) -> None:
        await self.restore(self.state.load())
        self.notify.ready(self.summary())

    async def _watchdog(self, every: float) -> None:
        while True:
            self.notify.watchdog()
            self.notify.status(self.summary())
            await asyncio.sleep(every)

    def summary(self) -> str:
        """One line for systemd's STATUS=: what the daemon holds."""
        intercepts = sum(len(b.intercepts) for b in self.bridges.values())
        forwards = sum(len(b.forwards) for b in self.bridges.values())
        up = sum(1 for b in self.bridges.values() if b.state == "connected")
        text = (f"{up}/{len(self.bridges)} bridges connected, {forwards} forwards, "
                f"{intercepts} intercepts")
        if self.restoring:
            text += ", restoring"
        if self.unrestored:
            text += f", {len(self.unrestored)} not restored"
        return text

    # --- persisted desired state ---

    def desired(self) -> dict[str, Any]:
        bridges = [b.recipe() for b in self.bridges.values()]
        bridges += [r for n, r in self.unrestored.items() if n not in self.bridges]
        return {"bridges": bridges, "up": self.applied,
                # where a block is, for the next start to remove after a kill -9
                "hosts_file": str(self.hosts.path) if self.hosts.entries else None}

    def save(self) -> None:
        if self.restoring:
            return  # the saved state stays as it is until the restore is done
        try:
            self.state.save(self.desired())
        except OSError as exc:
            log.error("could not save the daemon's state to %s: %s", self.state.path, exc)
        self.notify.status(self.summary())

    async def restore(self, saved: dict[str, Any]) -> None:
        """Bring back what was saved; what cannot be restored now is kept and reported."""
        self.restoring = True
        pending = list(saved.get("bridges") or [])
        try:
            while pending:
                recipe = pending[0]
                name = str(recipe.get("name") or "")
                if name in self.bridges:
                    bridge = self.bridges[name]
                else:
                    try:
                        bridge = await self._reconnect(recipe)
                    except Exception as exc:
                        self.unrestored[name] = recipe
                        self.restore_problems.append(f"bridge {name}: {exc}")
                        log.warning("bridge %s not restored: %s", name, exc)
                        pending.pop(0)
                        continue
                self.unrestored.pop(name, None)
                await self._restore_contents(bridge, recipe)
                pending.pop(0)
        except asyncio.CancelledError:
            for recipe in pending:  # kept: saved, shown, restored by SIGHUP or a restart
                self.unrestored[str(recipe.get("name") or "")] = recipe
            raise
        finally:
            self.restoring = False
            self.save()
            log.info("state restored: %s", self.summary())

    async def _reconnect(self, recipe: dict[str, Any]) -> Bridge:
        if recipe.get("url"):
            return await self.connect(parse_carrier(recipe["url"]), name=recipe["name"],
                                      token=recipe.get("token"))
        return await self.connect_kube(recipe.get("context"), recipe.get("namespace"),
                                       name=recipe["name"], image=recipe.get("image"),
                                       kubeconfig=recipe.get("kubeconfig"))

    async def _restore_contents(self, bridge: Bridge, recipe: dict[str, Any]) -> None:
        for saved in recipe.get("forwards") or []:
            try:
                forward = ForwardSpec(**saved)
                if forward.name not in bridge.forwards:
                    await bridge.add_forward(forward)
            except Exception as exc:
                self.restore_problems.append(f"forward {saved.get('name')}: {exc}")
        for saved in recipe.get("intercepts") or []:
            try:
                spec = InterceptSpec.from_dict(saved["spec"])
                if spec.name not in bridge.intercepts:
                    await bridge.add_intercept(spec, saved["id"],
                                               service_port=int(saved.get("service_port", 0)),
                                               via=str(saved.get("via", "")),
                                               proto=str(saved.get("protocol") or ""))
            except Exception as exc:
                self.restore_problems.append(f"intercept {saved.get('spec', {}).get('name')}: "
                                             f"{exc}")

    async def stop(self) -> None:
        self.notify.stopping()
        await self._tasks.cancel_all()
        log.info("daemon stopping: leaving intercepts, closing forwards and bridges")
        # stage 1: bridges leave their intercepts first, so the cluster heals at once
        for bridge in list(self.bridges.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bridge.close(), 10)
        self.bridges.clear()
        try:  # each forward took its line; a bridge that timed out closing did not
            self.hosts.clear()
        except (OSError, ConfigError, RefusedError) as exc:
            log.warning("hosts: the bridged block stays in %s: %s", self.hosts.path, exc)
        for proxies in list(self.proxies.values()):
            await proxies.close()
        self.proxies.clear()
        if self._inspector is not None:
            await self._inspector.close()
        if self._store is not None:
            self._store.close()
        # stage 2: the API goes last, so status answers until the end
        await self._api.close()
        self.notify.close()
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
                            tunnel=self.settings.tunnel, target=target,
                            redact_headers=self.settings.redact_headers,
                            on_capture=self.captured, capture_settings=self.capture_settings,
                            on_capture_update=self.capture_updated)
            bridge.hosts = self.hosts
            bridge.made_with = {"url": spec.url, "token": token}
            await bridge.start()
            self.bridges[name] = bridge
        self.save()
        return bridge

    @_reaching_the_api
    async def connect_kube(self, context: str | None, namespace: str | None, *,
                           name: str | None = None, image: str | None = None,
                           kubeconfig: str | None = None) -> Bridge:
        """A bridge to the relay of a kube context and namespace, deployed if needed, reached
        through the API server's port-forward."""
        from ..carriers.kube import KubeCarrier
        from ..kube import manifests
        from ..kube.client import Kube, KubeTarget
        from ..kube.portforward import wait_ready_pod
        from ..kube.relay import ensure_relay, published_host_key

        kube = await Kube.connect(KubeTarget(context, namespace, kubeconfig))
        relay = f"kube://{kube.context}/{kube.namespace}"
        target = {"relay": relay}
        name = name or default_name(f"{kube.context}-{kube.namespace}")
        # the lock guards the bookkeeping only: a rollout can take minutes, during which
        # other bridges must stay usable
        async with self._lock:
            existing = self._existing(name, target)
            busy = existing is None and name in self.connecting
            if existing is None and not busy:
                self.connecting[name] = "starting"
        if existing is not None or busy:
            await kube.close()
            if existing is None:
                raise Conflict(f"bridge {name!r} is being connected already",
                               hint="bridged status shows its progress")
            return existing
        bridge_name = name

        def progress(step: str) -> None:
            self.connecting[bridge_name] = step
            log.info("bridge %s: %s", bridge_name, step)

        try:
            info = await ensure_relay(
                kube, public_key_line=public_line(self.client_key),
                key_entry=self.key_entry, image=image, progress=progress,
            )
            progress("connecting through the API server's port-forward")
            bridge = Bridge(
                name, relay, KubeCarrier(kube, manifests.SELECTOR, manifests.SSH_PORT),
                client_key=self.client_key, pins=self.pins,
                published_host_key=info.host_key, tunnel=self.settings.tunnel,
                target=target, redact_headers=self.settings.redact_headers,
                on_capture=self.captured, capture_settings=self.capture_settings,
                on_capture_update=self.capture_updated,
            )
            bridge.kube = kube
            bridge.hosts = self.hosts
            bridge.made_with = {"context": kube.context, "namespace": kube.namespace,
                                "kubeconfig": kubeconfig, "image": image}
            bridge.published_key_source = lambda: published_host_key(kube)
            bridge.relay_pods = lambda exclude, within: wait_ready_pod(
                kube, manifests.SELECTOR, exclude=exclude, within=within)
            bridge.restore_service = lambda service: _restore_once(kube, service)
            bridge.on_close = kube.close
            await self._start_when_key_is_seen(bridge, progress)
        except BaseException:
            await kube.close()
            raise
        finally:
            self.connecting.pop(name, None)
        async with self._lock:
            self.bridges[name] = bridge
        self.save()
        return bridge

    #: seconds to wait for the relay to see a newly added key: a relay of this version sees it
    #: through its watch of the Secret within a second; an older one only once the kubelet
    #: refreshes the mounted volume (about once a minute: its sync period plus its cache TTL)
    key_propagation_seconds = 150.0
    #: seconds between tries meanwhile: short, since the watch makes the key valid at once
    key_retry_seconds = 0.2

    async def _start_when_key_is_seen(self, bridge: Bridge, progress: Any) -> None:
        deadline = asyncio.get_running_loop().time() + self.key_propagation_seconds
        while True:
            try:
                await bridge.start()
                return
            except KeyRefused:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                progress("waiting for the relay to see your key")
                await asyncio.sleep(self.key_retry_seconds)

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
        """Close a bridge; a kube bridge also takes this developer's key off the relay, and
        leaves the relay to the others."""
        async with self._lock:
            if name is not None and name in self.unrestored and name not in self.bridges:
                del self.unrestored[name]  # a saved bridge never restored: forget it
                self.save()
                return
            bridge = self.bridge(name)
            del self.bridges[bridge.name]
            self.save()
            if (proxies := self.proxies.pop(bridge.name, None)) is not None:
                await proxies.close()
            if bridge.kube is not None:
                from ..kube.relay import remove_key

                try:
                    await remove_key(bridge.kube, self.key_entry)
                finally:
                    await bridge.close()
            else:
                await bridge.close()

    @_reaching_the_api
    async def clean(self, context: str | None, namespace: str | None,
                    kubeconfig: str | None = None) -> dict[str, Any]:
        """Remove everything bridged made in a namespace, whether the relay works or not."""
        from ..kube.client import Kube, KubeTarget
        from ..kube.redirects import remove_routes, restore_stale
        from ..kube.relay import remove_relay

        restoring = self._tasks.named("restore")
        if restoring is not None:  # it would make again what clean removes
            restoring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await restoring
        async with self._lock:
            async with await Kube.connect(KubeTarget(context, namespace, kubeconfig)) as kube:
                relay = f"kube://{kube.context}/{kube.namespace}"
                for bridge in [b for b in self.bridges.values() if b.relay == relay]:
                    del self.bridges[bridge.name]
                    await bridge.close()
                deleted = await remove_relay(kube)
                # a live relay restores its Services as it stops; a dead one left them
                restored = [r.describe() for r in await restore_stale(kube)]
                deleted += await remove_routes(kube)
                self.pins.forget(relay)  # a new relay brings a new host key
                for name in [n for n, r in self.unrestored.items()
                             if (r.get("context"), r.get("namespace")) ==
                             (kube.context, kube.namespace)]:
                    del self.unrestored[name]
                self.save()
                return {"namespace": kube.namespace, "context": kube.context,
                        "deleted": deleted, "restored": restored}

    # --- forwards and intercepts ---

    def _find(self, name: str, kind: str) -> Bridge:
        for bridge in self.bridges.values():
            if name in (bridge.forwards if kind == "forward" else bridge.intercepts):
                return bridge
        raise NotFound(f"no {kind} named {name!r}", hint="bridged status lists them")

    @_reaching_the_api
    async def expose(self, req: ForwardRequest) -> list[Forward]:
        """Forwards for a HOST:PORT, or for the ports of a Service (kube bridges resolve
        ``NAME[.NAMESPACE][:PORT]`` through the API first, then fall back to the host)."""
        async with self._lock:
            bridge = self.bridge(req.bridge)
            specs = await self._service_specs(bridge, req) if req.service else None
            if specs is None:
                if req.spec is None:
                    name = req.service.name if req.service else ""
                    if bridge.kube is not None:
                        raise NotFound(f"no Service {name!r} in namespace "
                                       f"{bridge.kube.namespace}",
                                       hint="bridged services lists them")
                    raise ConfigError(f"bad address {name!r}: expected HOST:PORT (Service "
                                      "names need a bridge made by 'bridged connect' to a "
                                      "kube context)")
                specs = [req.spec]
            for spec in specs:
                if any(spec.name in b.forwards for b in self.bridges.values()):
                    raise Conflict(f"a forward named {spec.name!r} exists already",
                                   hint="give another --name, or unexpose it first")
            made: list[Forward] = []
            try:
                for spec in specs:
                    made.append(await bridge.add_forward(spec))
            except BaseException:
                for forward in made:  # all or nothing
                    await bridge.remove_forward(forward.spec.name)
                raise
        self.save()
        return made

    async def _service_specs(self, bridge: Bridge, req: ForwardRequest) -> list[ForwardSpec] | None:
        if bridge.kube is None or req.service is None:
            return None
        from ..kube.discovery import service_ports

        ports = await service_ports(bridge.kube, req.service.name)
        if ports is None:
            return None
        wanted = req.service.port
        chosen = [p for p in ports if p.protocol == "TCP" and (
            wanted is None or str(p.port) == wanted or p.name == wanted)]
        if not chosen:
            raise NotFound(f"Service {req.service.name!r} has no TCP port {wanted!r}",
                           hint=f"its ports: {', '.join(str(p.port) for p in ports)}")
        if len(chosen) > 1 and (req.name or req.local_port):
            raise ConfigError("--name and --local-port go with a single port: add :PORT")
        specs = []
        for p in chosen:
            # the ClusterIP does not depend on the relay's DNS; headless ones need it
            host = p.cluster_ip if p.cluster_ip not in ("None", "") else \
                f"{p.service}.{p.namespace}.svc"
            specs.append(ForwardSpec(
                name=req.name or default_name(f"{p.service}-{p.name or p.port}"),
                remote_host=host, remote_port=p.port, local_host=req.local_host,
                local_port=req.local_port, service=p.service, service_namespace=p.namespace,
                service_port_name=p.name, hosts=req.hosts))
        return specs

    async def proxy(self, bridge_name: str | None) -> dict[str, Any]:
        """The SOCKS5 and HTTP proxies of a bridge (by default the only one, else the kube
        one), started on the first call; later calls answer the same addresses."""
        bridge = self._proxy_bridge(bridge_name)
        async with self._proxy_lock:
            proxies = self.proxies.get(bridge.name)
            if proxies is not None and proxies.bridge is not bridge:  # reconnected anew
                await proxies.close()
                proxies = None
            if proxies is None:
                namespace = str(getattr(bridge.kube, "namespace", "") or "")
                from .proxy import Proxies  # (with its name rules: not kept by an idle daemon)

                proxies = Proxies(bridge, namespace)
                await proxies.start()
                self.proxies[bridge.name] = proxies
        return proxies.to_dict()

    def _proxy_bridge(self, bridge_name: str | None) -> Bridge:
        if bridge_name is not None or len(self.bridges) <= 1:
            return self.bridge(bridge_name)
        kube = [b for b in self.bridges.values() if b.kube is not None]
        if len(kube) == 1:
            return kube[0]
        raise ConfigError(f"several relays are connected ({', '.join(self.bridges)}) and "
                          f"{'several' if kube else 'none'} of them on Kubernetes: choose the "
                          "proxies' bridge with --bridge")

    def _kube_of(self, bridge_name: str | None) -> Bridge:
        bridge = self.bridge(bridge_name)
        if bridge.kube is None:
            raise ConfigError(f"bridge {bridge.name!r} is not a kube bridge",
                              hint="bridged connect without a URL makes one")
        return bridge

    @_reaching_the_api
    async def env(self, bridge_name: str | None, ref: str, container: str | None,
                  fmt: str) -> dict[str, Any]:
        """The container's environment as the kubelet builds it, with the addresses of
        exposed Services rewritten to their local forwards."""
        from ..kube.env import workload_env
        from ..workload.formats import format_env, format_warnings
        from ..workload.rewrites import service_rewrites

        if fmt not in ("dotenv", "json", "shell"):
            raise ConfigError(f"bad format {fmt!r}: expected dotenv, json or shell")
        bridge = self._kube_of(bridge_name)
        rewrites: dict[str, str] = {}
        for f in bridge.forwards.values():
            if f.spec.service:
                rewrites |= service_rewrites(
                    f.spec.service, f.spec.service_namespace or bridge.kube.namespace,
                    f.spec.remote_host, {f.spec.remote_port: f"{f.spec.local_host}:{f.local_port}"})
        result = await workload_env(bridge.kube, ref, container, rewrites=rewrites)
        notes = [*result.warnings, *format_warnings(result, fmt),
                 *(f"{name}: {why}" for name, why in result.unknown.items())]
        return {"container": result.container, "text": format_env(result, fmt),
                "secret": result.has_secrets, "secret_names": sorted(result.secret_names),
                "rewritten": sorted(result.rewritten), "notes": notes}

    @_reaching_the_api
    async def files(self, bridge_name: str | None, ref: str, container: str | None,
                    out_dir: str) -> dict[str, Any]:
        """The workload's ConfigMap, Secret and downward-API volumes, written under out_dir."""
        from pathlib import Path as _Path

        from ..kube.files import workload_files

        target = _Path(out_dir)
        if not target.is_absolute():
            raise ConfigError(f"bad folder {out_dir!r}: give an absolute path")
        written = await workload_files(self._kube_of(bridge_name).kube, ref, container, target)
        return {"files": [{"path": str(f.path), "container_path": f.container_path,
                           "secret": f.secret, "mode": oct(f.mode), "size": f.size}
                          for f in written],
                "skipped": list(written.skipped)}

    @_reaching_the_api
    async def services(self, bridge_name: str | None) -> list[dict[str, Any]]:
        bridge = self.bridge(bridge_name)
        if bridge.kube is None:
            raise ConfigError(f"bridge {bridge.name!r} is not a kube bridge: it has no Services")
        from ..kube.discovery import list_services

        exposed = {(f.spec.service, f.spec.remote_port): f for f in bridge.forwards.values()}
        result = []
        for p in await list_services(bridge.kube):
            forward = exposed.get((p.service, p.port))
            result.append({
                "service": p.service, "namespace": p.namespace, "port": p.port,
                "port_name": p.name, "protocol": p.protocol, "cluster_ip": p.cluster_ip,
                "exposed": forward is not None,
                "local_port": forward.local_port if forward else None,
                "forward": forward.spec.name if forward else None,
            })
        return result

    async def unexpose(self, name: str) -> None:
        async with self._lock:
            await self._find(name, "forward").remove_forward(name)
        self.save()

    @_reaching_the_api
    async def intercept(self, bridge_name: str | None, spec: InterceptSpec, *,
                        overwrite: bool = False) -> Intercept:
        async with self._lock:
            bridge = self.bridge(bridge_name)
            if any(spec.name in b.intercepts for b in self.bridges.values()):
                raise Conflict(f"an intercept named {spec.name!r} exists already",
                               hint="leave it first")
            service_port, via, proto = 0, "", spec.protocol
            if spec.service:
                if bridge.kube is None:
                    raise ConfigError(
                        f"bridge {bridge.name!r} has no cluster: it cannot intercept Service "
                        f"{spec.service}", hint="intercept a relay port with --relay-port")
                from ..kube.redirects import resolve_intercept

                service_port, via, app_protocol = await resolve_intercept(
                    bridge.kube, spec.service, spec.service_port, spec.via, spec.protocol)
                if not proto and spec.mode == "http":
                    proto = protocol_of_app_protocol(app_protocol)
            proto = proto or "http"
            if proto != "http":
                await self._check_h2c(spec, proto)
            intercept_id = secrets.token_hex(8)
            try:
                made = await self._add_intercept(bridge, spec, intercept_id, overwrite,
                                                 service_port, via, proto)
            except RefusedError as exc:
                from ..kube.redirects import NOT_ACCEPTED

                if not (spec.via == "auto" and via == "gateway" and NOT_ACCEPTED in str(exc)):
                    raise
                log.warning("intercept %s: %s; auto falls back to takeover", spec.name, exc)
                made = await self._add_intercept(bridge, spec, intercept_id, overwrite,
                                                 service_port, "takeover", proto)
        self.save()
        return made

    async def _check_h2c(self, spec: InterceptSpec, proto: str) -> None:
        """An HTTP/2 intercept's local server must speak h2c: an HTTP/1.1 one is an error
        now rather than a failed call each time (one not listening yet is not)."""
        from .h2check import speaks_h2c  # h2: only for an HTTP/2 intercept

        self.intercepting[spec.name] = (f"checking that {spec.local_host}:{spec.local_port} "
                                        "speaks HTTP/2", time.time())
        try:
            if not await speaks_h2c(spec.local_host, spec.local_port):
                log.info("intercept %s (%s): nothing listens on %s:%d yet", spec.name, proto,
                         spec.local_host, spec.local_port)
        finally:
            self.intercepting.pop(spec.name, None)

    async def _add_intercept(self, bridge: Bridge, spec: InterceptSpec, intercept_id: str,
                             overwrite: bool, service_port: int, via: str,
                             proto: str) -> Intercept:
        """Register it; meanwhile status shows what the relay waits for (the CLI's progress):
        the relay answers once the Service's traffic reaches it, which takes a second or two."""
        step = (f"waiting for Service {spec.service} to send its traffic to the relay"
                + (" (a mesh accepting the route)" if via == "gateway" else "")
                if spec.service else f"registering the intercept of relay port "
                f"{spec.remote_port}")
        self.intercepting[spec.name] = (step, time.time())
        try:
            return await bridge.add_intercept(spec, intercept_id, overwrite=overwrite,
                                              service_port=service_port, via=via, proto=proto)
        finally:
            self.intercepting.pop(spec.name, None)

    async def leave(self, name: str) -> list[str]:
        async with self._lock:
            notes = await self._find(name, "intercept").remove_intercept(name)
        self.save()
        return notes

    @_reaching_the_api
    async def cluster_services(self, context: str | None, namespace: str | None,
                               kubeconfig: str | None) -> dict[str, Any]:
        """A namespace's Services and their ports, without a relay (for ``bridged init``)."""
        from ..kube.client import Kube, KubeTarget
        from ..kube.discovery import list_services

        async with await Kube.connect(KubeTarget(context, namespace, kubeconfig)) as kube:
            ports = await list_services(kube)
            return {"context": kube.context, "namespace": kube.namespace,
                    "services": [{"service": p.service, "port": p.port, "port_name": p.name,
                                  "protocol": p.protocol} for p in ports]}

    # --- doctor ---

    async def doctor(self, context: str | None, namespace: str | None,
                     kubeconfig: str | None) -> list[dict[str, str]]:
        """What works and what does not, one verdict per check (see bridged.kube.doctor)."""
        from ..kube.client import KubeTarget
        from ..kube.doctor import checks

        found = [{"name": "daemon", "verdict": "ok",
                  "detail": f"{__version__}, pid {os.getpid()}, {self.summary()}"}]
        for problem in self.restore_problems:
            found.append({"name": "saved state", "verdict": "warn", "detail": problem})
        for bridge in self.bridges.values():
            verdict = "ok" if bridge.state == "connected" else "fail"
            found.append({"name": f"bridge {bridge.name}", "verdict": verdict,
                          "detail": f"{bridge.state} to {bridge.relay}"
                                    + (f": {bridge.last_error}" if bridge.last_error else "")})
        found += [c.to_dict() for c in await checks(KubeTarget(context, namespace, kubeconfig))]
        return found

    # --- capture and the inspector ---

    @property
    def store(self) -> CaptureStore:
        """What reached the developer through the intercepts (see bridged.capture), opened on
        first use (a capture, a read of the API or the inspector): an idle daemon holds
        neither sqlite3 nor the database's pages (issue 14)."""
        if self._store is None:
            self._store = open_store(self.settings.capture_db, self.capture_settings)
        return self._store

    def captured(self, record: Captured) -> Captured | None:
        """A bridge's tap saw an exchange (on the loop; one small insert): stored, with its
        id."""
        import sqlite3  # (loaded with the store)

        try:
            return self.store.add(record)
        except sqlite3.Error as exc:  # a full disk loses a record, never the traffic
            log.warning("capture: record of %s not stored: %s", record.intercept, exc)
            return None

    def capture_updated(self, record_id: int, fields: dict[str, Any]) -> None:
        """A stored record learnt more (a mirrored request's cluster answer)."""
        import sqlite3

        try:
            self.store.update(record_id, **fields)
        except sqlite3.Error as exc:
            log.warning("capture: record %d not updated: %s", record_id, exc)

    def mirror_dropped(self) -> dict[str, dict[str, int]]:
        """Each mirror intercept's copies the relay dropped, by reason (for the inspector)."""
        return {i.spec.name: dict(i.mirror_dropped) for b in self.bridges.values()
                for i in b.intercepts.values() if i.claim.mirror}

    def local_of(self, intercept: str) -> tuple[str, int] | None:
        """Where an intercept's local service listens (replay sends there)."""
        for bridge in self.bridges.values():
            found = bridge.intercepts.get(intercept)
            if found is not None:
                return found.spec.local_host, found.spec.local_port
        return None

    async def inspect(self) -> dict[str, Any]:
        """The inspector's URL; it is started on the first call, found again on the next."""
        from ..inspector.server import Inspector

        async with self._inspector_lock:
            if self._inspector is None:
                inspector = Inspector(self.store, self.local_of, self.mirror_dropped)
                await inspector.start()
                self._inspector = inspector
        return {"url": self._inspector.url, "port": self._inspector.port,
                **self.store.stats()}

    # --- status ---

    def traffic(self, since: float = 0.0) -> list[dict[str, Any]]:
        """Intercepted requests of every bridge after ``since`` (a time), oldest first."""
        entries = [e for b in self.bridges.values() for e in b.traffic_log if e["time"] > since]
        return sorted(entries, key=lambda e: e["time"])

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
            "restore": {"restoring": self.restoring, "problems": self.restore_problems,
                        "unrestored": sorted(self.unrestored),
                        "state_file": str(self.state.path)},
            "forwards": [f.to_dict() for b in self.bridges.values() for f in b.forwards.values()],
            "intercepts": [
                i.to_dict() for b in self.bridges.values() for i in b.intercepts.values()
            ],
            "intercepting": [
                {"name": name, "step": step, "seconds": round(time.time() - since, 1)}
                for name, (step, since) in self.intercepting.items()
            ],
        }


async def _restore_once(kube: Any, service: str) -> str:
    """Undo a takeover the relay can no longer undo, from the record on the Service (what
    ``bridged clean`` does); left alone if the Service changes meanwhile."""
    from ..kube.redirects import restore

    return (await restore(kube, service, attempts=1)).describe()
