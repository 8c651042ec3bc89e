"""A bridge: one relay, one SSH connection kept alive, and the forwards and intercepts through it.

The connection is owned by :meth:`Bridge.run`, a loop that connects, restores every intercept,
renews leases, and on any loss reconnects at once, then with capped exponential backoff and
jitter. A bridge that can see the relay's pods (``relay_pods``: a kube bridge) does not retry on
a timer while no relay pod is Ready: it waits for the pod's Ready event and connects then, so a
replaced relay is reached the moment it can answer. Forwards keep their local listeners through
reconnects: a connection accepted meanwhile waits for the relay (up to ``wait_relay_seconds``)
instead of failing at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncssh

from .. import protocol
from ..capture.model import Captured, CaptureSettings
from ..carriers import Carrier
from ..config import Backoff, ForwardSpec, InterceptSpec, TunnelSettings
from ..errors import (
    BridgedError,
    CarrierError,
    ConfigError,
    Conflict,
    HostKeyMismatch,
    RefusedError,
    SessionError,
)
from ..keys import PinnedHostKeys, fingerprint
from ..routing.redact import redact
from ..splice import Counters, Pipe, channel_then_socket, socket_then_channel
from ..tasks import TaskSet
from .control_channel import ControlChannel
from .hosts import HostsFile, names_of

if TYPE_CHECKING:
    from ..capture.mirror import MirrorPairs
    from ..capture.tap import ConnectionTap, OnCapture

log = logging.getLogger(__name__)


class KeyRefused(SessionError):
    """The relay does not (yet) accept this machine's key."""


class _PinningClient(asyncssh.SSHClient):
    """Checks the relay's host key: against the key the relay published in the cluster, read
    through the authenticated API (kube bridges), else against the pin made on first contact
    (a relay at a URL)."""

    def __init__(self, pins: PinnedHostKeys, relay: str, published: str | None) -> None:
        self.pins = pins
        self.relay = relay
        self.published = published
        self.mismatch: tuple[str, str] | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int,
                                 key: asyncssh.SSHKey) -> bool:
        if self.published is not None:
            expected = asyncssh.import_public_key(self.published)
            if expected.public_data != key.public_data:
                self.mismatch = (fingerprint(key), self.published)
                return False
            return True
        ok, pinned = self.pins.check(self.relay, key)
        if not ok:
            self.mismatch = (fingerprint(key), pinned or "")
        return ok


@dataclass
class Forward:
    spec: ForwardSpec
    bridge: str
    local_port: int
    counters: Counters = field(default_factory=Counters)
    server: asyncio.AbstractServer | None = None
    #: connections being spliced now: cut when the forward is removed
    live: set[Pipe] = field(default_factory=set)
    #: hosts mode: the names the hosts file gives its address (spec.local_host)
    host_names: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        s = self.spec
        env = {}
        if s.service:  # what the kubelet would have set, pointing at the local end
            prefix = s.service.upper().replace("-", "_")
            env = {f"{prefix}_SERVICE_HOST": s.local_host,
                   f"{prefix}_SERVICE_PORT": str(self.local_port)}
            if s.service_port_name:
                suffix = s.service_port_name.upper().replace("-", "_")
                env[f"{prefix}_SERVICE_PORT_{suffix}"] = str(self.local_port)
        return {"name": s.name, "bridge": self.bridge, "remote_host": s.remote_host,
                "remote_port": s.remote_port, "local_host": s.local_host,
                "local_port": self.local_port, "service": s.service, "env": env,
                "hosts": list(self.host_names), **self.counters.snapshot()}


@dataclass
class Intercept:
    spec: InterceptSpec
    bridge: str
    claim: protocol.InterceptClaim
    #: "pending" (not yet registered on this connection), "active", "refused"
    state: str = "pending"
    error: str = ""
    counters: Counters = field(default_factory=Counters)
    #: the remote-forward "listener" on the current connection (virtual on the relay)
    listener: asyncssh.SSHListener | None = None
    #: the relay port the cluster's traffic arrives on (the relay picks it for a Service)
    relay_port: int = 0
    #: when the relay last extended this intercept's routing lease (time.time()), and for how
    #: long it extends it (seconds)
    lease_renewed_at: float = 0.0
    lease_seconds: float = 0.0
    #: requests the relay routed to this intercept (its traffic events), and when the last
    #: came (time.time()): what tells a developer whether anything arrives at all
    requests: int = 0
    last_request_at: float | None = None
    #: connections to the intercepted port the router passed through to the original pods
    #: untouched (h2c, TLS, not HTTP/1.x), by reason: why such clients never reach the laptop
    passed_through: dict[str, int] = field(default_factory=dict)
    #: a mirror's copies the relay did not send to the laptop, by reason (its running totals)
    mirror_dropped: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        s = self.spec
        return {"name": s.name, "bridge": self.bridge, "id": self.claim.id, "mode": s.mode,
                "protocol": self.claim.protocol,
                "matchers": [_shown(m) for m in s.matchers], "origin": s.origin,
                "service": s.service, "service_port": self.claim.service_port or None,
                "via": self.claim.via or None, "fallback": s.fallback,
                "remote_port": self.relay_port or s.remote_port, "local_host": s.local_host,
                "lease_left_seconds": round(max(0.0, self.lease_renewed_at + self.lease_seconds
                                                - time.time()), 1)
                if self.state == "active" else 0.0,
                "local_port": s.local_port, "state": self.state, "error": self.error,
                "requests": self.requests, "last_request_at": self.last_request_at,
                "passed_through": dict(self.passed_through),
                "mirror": self.claim.mirror, "mirror_dropped": dict(self.mirror_dropped),
                **self.counters.snapshot()}


def _shown(m: protocol.Matcher) -> str:
    """A matcher as status shows it; a gRPC method as typed after --grpc-method."""
    if m.kind == "grpc-method":
        return f"grpc-method {m.name or '*'}/{m.value or '*'}" + \
            (" (regex)" if m.op == "regex" else "")
    return " ".join(p for p in (m.kind, m.name, m.op, m.value) if p)


class Bridge:
    #: seconds a connection accepted on a forward waits for a reconnecting relay
    wait_relay_seconds = 10.0
    #: seconds the relay may take to answer a register: it answers once the redirect is live
    #: (up to 30 s of probes, 10 s for a mesh to accept a route, a few API calls); below the
    #: CLI's 60 s, so a time-out is the relay's clear error rather than the CLI's
    register_seconds = 50.0

    def __init__(
        self, name: str, relay: str, carrier: Carrier, *, client_key: asyncssh.SSHKey,
        pins: PinnedHostKeys, published_host_key: str | None = None,
        tunnel: TunnelSettings | None = None, backoff: Backoff | None = None,
        target: dict[str, Any] | None = None, redact_headers: tuple[str, ...] = (),
        on_capture: OnCapture | None = None, capture_settings: CaptureSettings | None = None,
        on_capture_update: Callable[[int, dict[str, Any]], object] | None = None,
    ) -> None:
        self.name = name
        self.redact_headers = redact_headers
        #: given each exchange an intercept carried (redacted, bodies cut), on the event loop:
        #: it must not block. None: nothing is captured. May be set at any time: connections
        #: opened from then on are tapped
        self.on_capture = on_capture
        self.capture_settings = capture_settings or CaptureSettings(
            redact_headers=redact_headers)
        #: given (record id, new fields) when a stored record learns more: a mirrored
        #: request's cluster answer, which the relay sends after the laptop's was recorded
        self.on_capture_update = on_capture_update
        self._mirror_pairs: MirrorPairs | None = None
        #: how this bridge was asked for (url and token, or kube context...), to save it
        self.made_with: dict[str, Any] = {}
        #: who the relay is, for pins, status and messages: a URL, or kube://CONTEXT/NAMESPACE
        self.relay = relay
        self.carrier = carrier
        #: what the user asked for, to tell a repeated connect from a conflicting one
        self.target = target or {"relay": relay}
        self.published_host_key = published_host_key
        #: where a kube bridge reads the relay's published host key before each connection
        self.published_key_source: Any = None
        self.client_key = client_key
        self.pins = pins
        self.tunnel = tunnel or TunnelSettings()
        self.backoff = backoff or Backoff()
        self.forwards: dict[str, Forward] = {}
        self.intercepts: dict[str, Intercept] = {}
        self.conn: asyncssh.SSHClientConnection | None = None
        self.control: ControlChannel | None = None
        self.state = "connecting"
        self.last_error = ""
        self.connects = 0
        self.connected_since: float | None = None
        self.relay_info: dict[str, Any] = {}
        #: the last requests the relay routed to us (shared with the daemon's log)
        self.traffic_log: Any = collections.deque(maxlen=1000)
        self._connected = asyncio.Event()
        #: the kube API client of a kube bridge (Services, the relay's objects), else None
        self.kube: Any = None
        #: called once the bridge is closed (e.g. to close its API client)
        self.on_close: Any = None
        #: ``await relay_pods(exclude, within)``: the name of a Ready relay pod not in
        #: ``exclude`` as soon as there is one, None after ``within`` seconds (kube bridges);
        #: None: the relay cannot be watched, retries follow the backoff alone
        self.relay_pods: Any = None
        #: how the last connection after a loss came about: "at-once" (first retry),
        #: "pod-ready" (a relay pod's Ready event), "timer" (backoff); with the pod and when
        self.last_reconnect: dict[str, Any] | None = None
        self._retry: dict[str, Any] = {"trigger": "at-once", "pod": None}
        #: ``await restore_service(name)``: undo a takeover of Service ``name`` from the record
        #: on the Service, saying what was done (kube bridges); see :meth:`_give_services_back`
        self.restore_service: Any = None
        #: Services this daemon restored because no relay came back: name → (when, what)
        self.restored: dict[str, tuple[float, str]] = {}
        self._watch_failing = False
        #: the daemon's hosts file, shared by its bridges (hosts mode); None: no hosts mode
        self.hosts: HostsFile | None = None
        self._tasks = TaskSet(f"bridge:{name}")
        self._stopping = False

    # --- the connection ---

    async def _connect_once(self) -> asyncssh.SSHClientConnection:
        if self.published_key_source is not None:
            # re-read each time: a relay re-created by a teammate publishes a new key
            self.published_host_key = await self.published_key_source()
        client = _PinningClient(self.pins, self.relay, self.published_host_key)
        t = self.tunnel
        try:
            conn = await asyncssh.connect(
                "bridged-relay", 22, tunnel=self.carrier,  # the carrier knows where it goes
                client_factory=lambda: client, username="bridged",
                client_keys=[self.client_key], known_hosts=lambda h, a, p: ([], [], []),
                agent_path=None, agent_forwarding=False, password_auth=False,
                kbdint_auth=False, config=None,
                encryption_algs=list(t.encryption_algs),
                keepalive_interval=t.keepalive_seconds,
                keepalive_count_max=t.keepalive_count_max,
                connect_timeout=t.connect_timeout_seconds,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            if client.mismatch and client.mismatch[1] == self.published_host_key:
                raise HostKeyMismatch(
                    f"the relay at {self.relay} presented host key {client.mismatch[0]}, not "
                    f"the key the relay published in the cluster; refusing to connect",
                    hint="something else answers the relay's port: check the relay pods",
                ) from exc
            if client.mismatch:
                seen, _ = client.mismatch
                raise HostKeyMismatch(
                    f"the relay at {self.relay} presented host key {seen}, not the key "
                    f"pinned on first contact; refusing to connect",
                    hint=f"if the relay was re-created on purpose, remove its entry from "
                    f"{self.pins.path}",
                ) from exc
            raise SessionError(f"relay host key not accepted: {exc.reason}") from exc
        except asyncssh.PermissionDenied as exc:
            raise KeyRefused(
                f"the relay at {self.relay} refused this machine's key "
                f"{fingerprint(self.client_key)}",
                hint="add the public key that 'bridged status --json' shows to the relay's "
                "authorized keys",
            ) from exc
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            if isinstance(exc, BridgedError):
                raise
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            raise CarrierError(f"cannot connect to the relay at {self.relay}: {reason}") \
                from exc
        try:
            control = await ControlChannel.open(conn)
            control.on_closed = conn.abort  # no control, no leases: reconnect
            control.on_traffic = self._traffic
            control.on_mirror = self._mirror
            self.relay_info = await control.call(
                protocol.Hello, version=protocol.VERSION, agent=f"bridged-daemon/{_version()}"
            )
        except BaseException:
            conn.abort()
            raise
        self.control = control
        return conn

    async def start(self) -> None:
        """First connection, in the foreground: its failure is the caller's error."""
        self.conn = await self._connect_once()
        await self._on_connected()
        self._tasks.start(self._run(), name="connection")

    #: seconds a connection must last before the backoff starts again from its first step; a
    #: relay that accepts and drops at once is retried ever more slowly, not in a tight loop
    stable_seconds = 10.0

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            if self.conn is None:
                try:
                    self.conn = await self._connect_once()
                except HostKeyMismatch as exc:
                    self.state, self.last_error = "failed", str(exc)
                    log.error("bridge %s: %s", self.name, exc)
                    return  # never retry an impersonated relay
                except Exception as exc:  # anything else is transient too: never stop retrying
                    if not _expected(exc):  # a bug: its traceback helps
                        log.exception("bridge %s: unexpected error while connecting", self.name)
                    self.state, self.last_error = "reconnecting", str(exc)
                    if await self._wait_to_retry(exc, attempt) == "timer":
                        attempt += 1
                    continue
                self.last_reconnect = {**self._retry, "at": time.time()}
                self._retry = {"trigger": "at-once", "pod": None}
                # no restore may run while the intercepts register again: it would undo the
                # new takeover (a restore already sent is answered before the relay reads)
                giving_back = self._tasks.named("give-back")
                if giving_back is not None:
                    giving_back.cancel()
                    await asyncio.wait([giving_back])
                self.restored.clear()
                try:
                    await self._on_connected()
                except Exception as exc:  # whatever failed, the loop must live on and reconnect
                    if _expected(exc):  # e.g. the relay went away meanwhile
                        log.warning("bridge %s: setting up the connection failed: %s",
                                    self.name, _one_line(exc))
                    else:
                        log.exception("bridge %s: setting up the connection failed", self.name)
                    self.conn.abort()
            conn = self.conn
            up_since = asyncio.get_running_loop().time()
            renewer = self._tasks.start(self._renew_leases(), name="leases")
            try:
                await conn.wait_closed()
            finally:
                renewer.cancel()
            if asyncio.get_running_loop().time() - up_since >= self.stable_seconds:
                attempt = 0
            self._on_lost()

    async def _wait_to_retry(self, exc: Exception, attempt: int) -> str:
        """Wait before the next attempt; what ended the wait ("pod-ready" or "timer").

        With ``relay_pods``: no pod was Ready, so none is tried until one is (a relay being
        replaced is coming back; the timer is only a safety net at the backoff's cap); a pod
        that was Ready but failed is skipped, and a new one that becomes Ready ends the
        backoff at once. Without it, or when the pods cannot be watched: the backoff."""
        delay = self.backoff.delay(attempt, random.random())
        tried = getattr(self.carrier, "pod", None)
        if self.relay_pods is not None:
            # a pod was tried (it failed) or the watch fails: the timer; else the Ready event
            by_timer = bool(tried) or self._watch_failing
            within = delay if by_timer else self.backoff.max_seconds
            log.warning("bridge %s: %s; %s", self.name, exc,
                        f"retrying in {within:.1f}s" if self._watch_failing
                        else f"retrying in {within:.1f}s, or when another relay pod is Ready"
                        if tried else f"waiting for a Ready relay pod (or {within:.1f}s)")
            started = asyncio.get_running_loop().time()
            try:
                pod = await self.relay_pods(frozenset({tried} if tried else ()), within)
            except Exception as watch_error:  # the watch failed: the timer alone
                if not self._watch_failing:
                    log.warning("bridge %s: cannot watch the relay's pods (%s): retrying on "
                                "a timer", self.name, _one_line(watch_error))
                self._watch_failing = True
                left = within - (asyncio.get_running_loop().time() - started)
                await asyncio.sleep(min(delay, max(left, 0.0)))
            else:
                self._watch_failing = False
                if pod is not None:
                    log.info("bridge %s: relay pod %s is Ready: connecting", self.name, pod)
                    self._retry = {"trigger": "pod-ready", "pod": pod}
                    return "pod-ready"
        else:
            log.warning("bridge %s: %s; retrying in %.1fs", self.name, exc, delay)
            await asyncio.sleep(delay)
        self._retry = {"trigger": "timer", "pod": None}
        return "timer"

    async def _on_connected(self) -> None:
        self.connects += 1
        self.state, self.last_error = "connected", ""
        self.connected_since = time.time()
        self._connected.set()
        log.info("bridge %s: connected to %s (relay %s, session %s)", self.name,
                 self.relay, self.relay_info.get("relay"), self.relay_info.get("session"))
        for intercept in list(self.intercepts.values()):
            await self._register(intercept)

    def _on_lost(self) -> None:
        self._connected.clear()
        if self.control is not None:
            self.control.close()
        self.conn, self.control = None, None
        self.connected_since = None
        for intercept in self.intercepts.values():
            intercept.state, intercept.listener = "pending", None
        if not self._stopping:
            self.state = "reconnecting"
            log.warning("bridge %s: connection to %s lost; reconnecting", self.name,
                        self.relay)
            if self.restore_service is not None and self._takeovers():
                self._tasks.start(self._give_services_back(), name="give-back")

    def _takeovers(self) -> list[Intercept]:
        return [i for i in self.intercepts.values()
                if i.spec.service and i.claim.via == "takeover"]

    async def _give_services_back(self) -> None:
        """While disconnected: once a lease has passed and no relay pod is Ready, restore the
        Services this daemon's intercepts took over. A relay that died for good (OOM-killed,
        its Deployment deleted or scaled to zero) cannot end its takeovers; its next start
        would, but until then the Service would send its traffic to no endpoint. The lease is
        what the relay itself waits before it stops routing to a silent daemon; a relay that
        is Ready restores on its own (its leases) and is left to. One read-modify-write per
        Service: one changed meanwhile (a relay back, taking it over again) is left alone."""
        from ..config import LeaseSettings

        lease = float(self.relay_info.get("lease_seconds") or LeaseSettings().ttl_seconds)
        await asyncio.sleep(lease)
        said = False  # offline, this is tried every few seconds: say it once
        while self.conn is None:
            try:
                ready = await self.relay_pods(frozenset(), 0.0) \
                    if self.relay_pods is not None else None
            except Exception as exc:
                if not said:
                    log.warning("bridge %s: cannot tell whether a relay pod is Ready (%s): "
                                "Services left as they are for now", self.name,
                                _one_line(exc))
                said, ready = True, "unknown"
            if ready is None:
                for intercept in self._takeovers():
                    service = intercept.spec.service
                    if service in self.restored:
                        continue
                    try:
                        done = str(await self.restore_service(service))
                    except Exception as exc:
                        if not _expected(exc):
                            raise
                        log.warning("bridge %s: Service %s not restored yet: %s", self.name,
                                    service, _one_line(exc))
                        continue
                    self.restored[service] = (time.time(), done)
                    intercept.error = (f"no relay for {lease:.0f}s: {done} by this daemon; "
                                       "taken over again when a relay is back")
                    log.warning("bridge %s: no relay pod Ready %.0fs after the connection was "
                                "lost: %s", self.name, lease, done)
                if all(i.spec.service in self.restored for i in self._takeovers()):
                    return
            await asyncio.sleep(lease / 4)  # the pods' state has no event for "still gone"

    async def _renew_leases(self) -> None:
        interval = float(self.relay_info.get("renew_seconds", 2.0))
        while True:
            await asyncio.sleep(interval)
            active = [i for i in self.intercepts.values() if i.state == "active"]
            pending = [i for i in self.intercepts.values() if i.state != "active"]
            if active and self.control is not None:
                try:  # an answer later than the next renewal is as good as none
                    body = await self.control.call(
                        protocol.Renew, intercept_ids=tuple(i.claim.id for i in active),
                        wait=interval)
                except BridgedError as exc:
                    log.warning("bridge %s: lease renewal failed: %s", self.name, exc)
                    for i in active:
                        i.state, i.error = "pending", f"lease renewal failed: {exc}"
                    continue
                lost = set(body.get("lost", ()))
                renewed = time.time()
                for i in active:
                    if i.claim.id in lost:
                        i.state, i.error = "pending", "the relay no longer held the intercept"
                        pending.append(i)
                    else:
                        i.lease_renewed_at = renewed
            for i in pending:  # retry what was refused or lost
                await self._register(i)

    async def wait_connected(self) -> asyncssh.SSHClientConnection:
        if self.state == "failed":
            raise CarrierError(f"not connected to the relay: {self.last_error}")
        if self.conn is None:
            try:
                await asyncio.wait_for(self._connected.wait(), self.wait_relay_seconds)
            except TimeoutError:
                raise CarrierError(f"not connected to the relay ({self.last_error})") from None
        if self.conn is None:
            raise CarrierError("not connected to the relay")
        return self.conn

    async def close(self) -> None:
        """Leave every intercept (so the relay stops routing at once), then disconnect."""
        self._stopping = True
        self.state = "closed"
        for intercept in list(self.intercepts.values()):
            with contextlib.suppress(BridgedError):
                await self._release(intercept)
        for forward in list(self.forwards.values()):
            await self._close_forward(forward)
        await self._tasks.cancel_all()
        if self.conn is not None:
            self.conn.close()
            with contextlib.suppress(Exception):
                await self.conn.wait_closed()
        if self.control is not None:
            self.control.close()
        self.conn = None
        if self.on_close is not None:
            await self.on_close()

    # --- forwards ---

    async def add_forward(self, spec: ForwardSpec) -> Forward:
        names: tuple[str, ...] = ()
        if spec.hosts:  # refused before anything changes: no listener, no line
            names = names_of(spec.service, spec.service_namespace, spec.remote_host)
            self._hosts_file().check_writable()
        forward = Forward(spec, self.name, 0, host_names=names)
        t = self.tunnel

        async def open_channel(factory: Any, peer: tuple[str, int]) -> None:
            conn = await self.wait_connected()
            await conn.create_connection(
                factory, spec.remote_host, spec.remote_port, peer[0], peer[1],
                window=t.window_bytes, max_pktsize=t.packet_bytes,
            )

        protocol_factory = socket_then_channel(open_channel, forward.counters, forward.live)
        loop = asyncio.get_running_loop()
        if spec.hosts:
            return await self._add_hosts_forward(forward, protocol_factory)
        ports = [spec.local_port] if spec.local_port else [spec.remote_port, 0]
        for port in ports:
            try:
                forward.server = await loop.create_server(
                    protocol_factory, spec.local_host, port, reuse_address=True,
                    backlog=t.listen_backlog)
                break
            except OSError as exc:
                if spec.local_port:
                    raise Conflict(
                        f"local port {spec.local_host}:{port} is already in use "
                        f"({exc.strerror or exc})", hint="choose another with --local-port",
                    ) from None
        assert forward.server is not None
        forward.local_port = forward.server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.forwards[spec.name] = forward
        log.info("bridge %s: forward %s: %s:%d → %s:%d", self.name, spec.name, spec.local_host,
                 forward.local_port, spec.remote_host, spec.remote_port)
        return forward

    def _hosts_file(self) -> HostsFile:
        if self.hosts is None:
            raise ConfigError("this daemon has no hosts file to write names to")
        return self.hosts

    #: addresses tried for a new hosts-mode Service whose port is taken on the first ones
    hosts_tries = 64

    async def _add_hosts_forward(self, forward: Forward, protocol_factory: Any) -> Forward:
        """Listen on the Service's own loopback address at the port its clients dial (the
        cluster's), then name that address in the hosts file."""
        spec, hosts, loop = forward.spec, self._hosts_file(), asyncio.get_running_loop()
        port = spec.local_port or spec.remote_port
        known = hosts.address_of(forward.host_names)  # another port of the same Service
        addresses = [known] if known else hosts.candidates(preferred=spec.local_host)
        for tried, address in enumerate(addresses, 1):
            try:
                forward.server = await loop.create_server(
                    protocol_factory, address, port, reuse_address=True,
                    backlog=self.tunnel.listen_backlog)
                break
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:  # macOS: only 127.0.0.1 is up by default
                    raise ConfigError(
                        f"cannot listen on {address}: {exc.strerror or exc}",
                        hint=f"make it a loopback address first (macOS: sudo ifconfig lo0 "
                        f"alias {address} up), or use the proxies (bridged run)") from None
                if known or tried >= self.hosts_tries:
                    raise Conflict(f"port {port} is in use on {address} "
                                   f"({exc.strerror or exc})") from None
        if forward.server is None:
            raise Conflict(f"no free address left in {hosts.network} for {spec.name}")
        forward.spec = dataclasses.replace(spec, local_host=address, local_port=port)
        forward.local_port = port
        try:
            hosts.add(spec.name, address, forward.host_names)
        except BaseException:
            forward.server.close()
            await forward.server.wait_closed()
            raise
        self.forwards[spec.name] = forward
        log.info("bridge %s: forward %s: %s:%d (%s in %s) → %s:%d", self.name, spec.name,
                 address, port, forward.host_names[0], hosts.path, spec.remote_host,
                 spec.remote_port)
        return forward

    async def remove_forward(self, name: str) -> None:
        forward = self.forwards.pop(name)
        await self._close_forward(forward)

    async def _close_forward(self, forward: Forward) -> None:
        if forward.server is not None:
            forward.server.close()  # no new connections
            for pipe in list(forward.live):  # and none left carrying traffic unseen
                pipe.abort()
            await forward.server.wait_closed()
        if forward.spec.hosts and self.hosts is not None and forward.server is not None:
            try:
                self.hosts.remove(forward.spec.name)
            except (OSError, BridgedError) as exc:
                log.warning("bridge %s: forward %s: its names stay in %s: %s", self.name,
                            forward.spec.name, self.hosts.path, exc)

    # --- intercepts ---

    async def add_intercept(self, spec: InterceptSpec, intercept_id: str, *,
                            overwrite: bool = False, service_port: int = 0,
                            via: str = "", proto: str = "") -> Intercept:
        """``service_port``, ``via`` and ``proto``: the Service's port as a number, the
        strategy and what the local server speaks, resolved by the caller from the spec's
        name, auto and unsaid protocol (the Service port's appProtocol, else http)."""
        claim = protocol.InterceptClaim(id=intercept_id, port=spec.remote_port, mode=spec.mode,
                                        matchers=spec.matchers, origin=spec.origin,
                                        fallback=spec.fallback, service=spec.service,
                                        service_port=service_port, via=via,
                                        protocol=proto or spec.protocol or "http",
                                        mirror=spec.mirror)
        intercept = Intercept(spec, self.name, claim)
        await self.wait_connected()
        await self._register(intercept, strict=True, overwrite=overwrite)
        self.intercepts[spec.name] = intercept
        return intercept

    async def _register(self, intercept: Intercept, *, strict: bool = False,
                        overwrite: bool = False) -> None:
        conn, control = self.conn, self.control
        if conn is None or control is None or self._stopping:
            return  # stopping: what close() just released must not be taken again
        spec, claim = intercept.spec, intercept.claim
        t = self.tunnel
        try:
            if intercept.listener is not None:  # re-registering after a lost lease
                intercept.listener.close()
                intercept.listener = None
            if claim.mirror and tuple(self.relay_info.get("version") or (0, 0)) < (1, 4):
                # an older relay would ignore the flag and take the requests away instead
                raise RefusedError(f"the relay ({self.relay_info.get('relay') or '?'}) is too "
                                   "old to mirror: update it (bridged connect redeploys it)")
            # the relay answers once the Service's traffic arrives: its probes may take up to
            # 30 s (relay's ProbeSettings), a mesh 10 s to accept a route, plus API calls
            answer = await control.call(protocol.Register, claim=claim, overwrite=overwrite,
                                        wait=self.register_seconds)
            intercept.relay_port = int(answer.get("port") or claim.port)
            intercept.lease_seconds = float(answer.get("lease_seconds") or 0.0)
            intercept.lease_renewed_at = time.time()
            try:
                intercept.listener = await conn.create_server(
                    lambda orig_host, orig_port: channel_then_socket(
                        spec.local_host, spec.local_port, intercept.counters,
                        what="the local service at", conn=conn,
                        connect_seconds=t.connect_timeout_seconds,
                        observer=self._tap(spec.name)),
                    claim.listen_host, claim.port,
                    window=t.window_bytes, max_pktsize=t.packet_bytes,
                )
            except asyncssh.Error as exc:
                await control.call(protocol.Release, intercept_id=claim.id)
                raise SessionError(f"the relay refused the intercept's channel: {exc}") from exc
        except BridgedError as exc:
            intercept.state, intercept.error = "refused", str(exc)
            if strict:
                raise
            log.warning("bridge %s: intercept %s not restored: %s", self.name, spec.name, exc)
            return
        intercept.state, intercept.error = "active", ""
        log.info("bridge %s: intercept %s: %s → %s:%d", self.name, spec.name,
                 f"Service {spec.service} port {claim.service_port} via {claim.via}"
                 if spec.service else f"relay port {claim.port}", spec.local_host,
                 spec.local_port)

    async def remove_intercept(self, name: str) -> list[str]:
        """Leave it; what the relay reports about restoring the Service, if anything."""
        intercept = self.intercepts.pop(name)
        return await self._release(intercept)

    async def _release(self, intercept: Intercept) -> list[str]:
        conn, control = self.conn, self.control
        if conn is None or control is None or intercept.state != "active":
            return []
        if intercept.listener is not None:
            intercept.listener.close()
            intercept.listener = None
        try:
            # a Service is restored before the answer: allow for a few API calls
            answer = await control.call(protocol.Release, intercept_id=intercept.claim.id,
                                        wait=30)
        except RefusedError:
            return []
        notes = [str(n) for n in answer.get("notes") or []]
        for note in notes:
            log.info("bridge %s: %s", self.name, note)
        return notes

    def _tap(self, intercept: str) -> ConnectionTap | None:
        """What watches one connection of ``intercept`` for the capture, if anyone listens."""
        if self.on_capture is None:
            return None
        # imported with the first tapped connection: an idle daemon does not carry the HTTP
        # parsers' and the mirror pairing's memory (issue 14)
        from ..capture.tap import ConnectionTap
        return ConnectionTap(intercept, self.capture_settings, self._captured)

    @property
    def _mirrors(self) -> MirrorPairs:
        if self._mirror_pairs is None:
            from ..capture.mirror import MirrorPairs
            self._mirror_pairs = MirrorPairs(self.capture_settings)
        return self._mirror_pairs

    def _captured(self, record: Captured) -> None:
        """The tap's record: a mirrored copy is marked and paired with the cluster's answer."""
        if self.on_capture is None:
            return
        self._mirrors.settings = self.capture_settings
        stored = self.on_capture(self._mirrors.record(record))
        if isinstance(stored, Captured):
            self._mirrors.stored(stored)

    def _mirror(self, msg: protocol.MirrorAnswer | protocol.MirrorDrops) -> None:
        intercept = next((i for i in self.intercepts.values()
                          if i.claim.id == msg.intercept_id), None)
        if isinstance(msg, protocol.MirrorDrops):
            if intercept is not None:  # running totals: replaced, not added
                intercept.mirror_dropped = dict(msg.dropped)
            return
        found = self._mirrors.answer(msg)
        if found is not None and self.on_capture_update is not None:
            self.on_capture_update(*found)

    # --- traffic log ---

    def _traffic(self, msg: protocol.Traffic) -> None:
        intercept = next((i for i in self.intercepts.values()
                          if i.claim.id == msg.intercept_id), None)
        name = intercept.spec.name if intercept is not None else msg.intercept_id
        now = time.time()
        if intercept is not None and msg.note and not msg.method:  # (a request may carry
            counts = intercept.passed_through  # a note too: counted as a request)
            counts[msg.note] = counts.get(msg.note, 0) + 1
        elif intercept is not None:
            intercept.requests += 1
            intercept.last_request_at = now
        self.traffic_log.append({
            "time": now, "bridge": self.name, "intercept": name,
            "method": msg.method, "path": msg.path, "status": msg.status,
            "duration_ms": msg.duration_ms, "client": msg.client,
            # the relay redacted with its list; this daemon's list applies too
            "headers": redact(msg.headers, self.redact_headers),
            "note": msg.note,
            # "h2": an HTTP/2 stream; grpc_status: a gRPC call's, None if it had none
            "http_version": msg.http_version, "grpc_status": msg.grpc_status,
        })

    # --- status and state ---

    def recipe(self) -> dict[str, Any]:
        """What to save to make this bridge again, with its forwards and intercepts (the
        local port a forward got is kept, so that it comes back on the same one)."""
        return {
            "name": self.name, **self.made_with,
            "forwards": [{**dataclasses.asdict(f.spec), "local_port": f.local_port}
                         for f in self.forwards.values()],
            "intercepts": [{"spec": i.spec.to_dict(), "id": i.claim.id,
                            "service_port": i.claim.service_port, "via": i.claim.via,
                            "protocol": i.claim.protocol}
                           for i in self.intercepts.values()],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "relay": self.relay,
            "carrier": self.relay.split("://", 1)[0],
            "state": self.state, "step": None, "last_error": self.last_error,
            "connects": self.connects,
            "connected_since": self.connected_since,
            "relay_version": self.relay_info.get("relay"),
            "session": self.relay_info.get("session"),
            "last_reconnect": self.last_reconnect,
            "restored": [{"service": name, "at": at, "note": note}
                         for name, (at, note) in sorted(self.restored.items())],
        }


#: what a network, a relay or an API server may do to a connection: logged in one line (a
#: traceback per retry would bury the log), never a traceback
_EXPECTED_TYPES = (BridgedError, OSError, TimeoutError, asyncssh.Error)


def http_client_error(exc: BaseException) -> bool:
    """An aiohttp client error (a websocket carrier's, a Kubernetes client's). Looked up, not
    imported: importing aiohttp would cost every daemon ~12 MiB, and what raises its errors
    has imported it."""
    aiohttp = sys.modules.get("aiohttp")
    return aiohttp is not None and isinstance(exc, aiohttp.ClientError)


def _expected(exc: BaseException) -> bool:
    # the API client's errors by name: importing it here would cost every daemon its memory
    return (isinstance(exc, _EXPECTED_TYPES) or http_client_error(exc)
            or type(exc).__name__ == "ApiException")


def _one_line(exc: BaseException) -> str:
    """An expected failure in one log line: what it was and its first line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _version() -> str:
    from .. import __version__

    return __version__
