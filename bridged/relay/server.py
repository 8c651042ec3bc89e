"""The relay's SSH server and everything hanging off one SSH connection."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncssh

from .. import __version__, protocol
from ..config import (
    LeaseSettings,
    RouterSettings,
    TunnelSettings,
    format_host_port,
    parse_host_port,
)
from ..errors import BridgedError, RefusedError
from ..keys import fingerprint, load_or_create_key
from ..routing.decide import ORIGIN, Route, decide
from ..routing.redact import redact
from ..routing.rules import RequestHead
from ..routing.table import Holding, InterceptTable, TableConflict
from ..splice import Counters, channel_then_socket, pass_streams, socket_then_channel
from ..sshtune import buffered
from ..tasks import TaskSet
from ..workload.names import search_names
from .auth import AuthorizedKeys
from .policy import DestinationDenied, DestinationPolicy, allowed_origin, resolve_allowed
from .probe import Probes
from .redirect import Redirector
from .router import (
    ConnectionBudget,
    HttpRouter,
    UpstreamUnavailable,
    tcp_upstream,
)
from .router.copies import CopySink
from .router.mirror import MirrorResult, Mirrors

log = logging.getLogger(__name__)

INTERCEPT_SUFFIX = ".intercept.bridged"
#: seconds between two reports of a mirror's dropped copies (totals: one per burst)
MIRROR_DROPS_EVERY_SECONDS = 0.5
#: seconds one name of a resolve request may take (a pod's resolver times out after 5 s
#: per server and try; more would hold the proxy's client for nothing)
RESOLVE_SECONDS = 5.0
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: what a copy the mesh mirrored is reported with: its cluster's answer went to the client only
MESH_MIRRORS = "the mesh mirrors: the cluster's answer is not seen by the relay"


@dataclass(frozen=True)
class RelaySettings:
    host_key: Path
    authorized_keys: Path
    #: where the SSH server listens (the ``tcp`` carrier; ``kube`` port-forwards to it). Port 0:
    #: any free port, reported when ready.
    ssh_host: str = "127.0.0.1"
    ssh_port: int = 2222
    #: the websocket endpoint for the ``ws`` carrier and health probes; None: not served
    http_host: str = "127.0.0.1"
    http_port: int | None = None
    #: file holding the bearer token the websocket endpoint requires (re-read per request)
    token_file: Path | None = None
    #: where whole-port intercepts listen: every interface in a pod, loopback for local runs
    intercept_host: str = "0.0.0.0"
    policy: DestinationPolicy = field(default_factory=DestinationPolicy)
    tunnel: TunnelSettings = field(default_factory=TunnelSettings)
    lease: LeaseSettings = field(default_factory=LeaseSettings)
    router: RouterSettings = field(default_factory=RouterSettings)


class StreamAcceptor:
    """asyncssh's tunnel-listener interface, so websockets can feed the SSH server in-process.

    ``asyncssh.listen(tunnel=acceptor)`` hands us its connection factory; :meth:`accept` then
    runs one SSH server connection over any :class:`~bridged.carriers.stream.MessageStream`.
    """

    def __init__(self) -> None:
        self._factory: Any = None
        self._closed = asyncio.Event()

    async def create_server(self, session_factory: Any, listen_host: str, listen_port: int) -> Any:
        self._factory = session_factory
        return self

    def accept(self, stream: Any) -> Any:
        from ..carriers.stream import StreamTransport

        return StreamTransport(stream, self._factory("", 0))

    # the "server" asyncssh's acceptor wraps
    def close(self) -> None:
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def get_addresses(self) -> list[Any]:
        return []

    def get_port(self) -> int:
        return 0


class TcpAcceptor:
    """asyncssh's tunnel-listener interface for the SSH port itself: asyncssh's own listener
    gives each socket the connection as its protocol; here it is read through
    :func:`bridged.sshtune.buffered` (into buffers of its own: one copy less per byte)."""

    async def create_server(self, session_factory: Any, listen_host: str,
                            listen_port: int) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        return await loop.create_server(lambda: buffered(session_factory("", 0)),
                                        listen_host, listen_port, reuse_address=True)


class VirtualListener(asyncssh.SSHListener):
    """A remote-forward 'listener' that binds nothing: it names an intercept of one session."""

    def __init__(self, session: RelaySession, host: str, port: int) -> None:
        self.session = session
        self.host = host
        self.port = port

    def get_addresses(self) -> list[tuple[str, int]]:
        return [(self.host, self.port)]

    def get_port(self) -> int:
        return self.port

    def close(self) -> None:
        self.session.virtual.pop(self.host, None)

    async def wait_closed(self) -> None:
        return None


class PortListener:
    """A real listening port of a whole-port intercept; each connection goes to its holder."""

    #: "tcp": whole-port intercepts; "http": per request; "origin": pass-through only
    mode = "tcp"

    def __init__(self, relay: Relay, port: int, origin: str = "") -> None:
        self.relay = relay
        self.port = port
        #: "host:port" of the original pods (a redirected Service's), "" if unknown
        self.origin = origin
        self.counters = Counters()
        self.server: asyncio.AbstractServer | None = None

    async def start(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            socket_then_channel(self._open, self.counters), host, self.port,
            reuse_address=True, backlog=self.relay.settings.tunnel.listen_backlog,
        )

    async def _open(self, factory: Any, peer: tuple[str, int]) -> None:
        holding = self.relay.table.route_port(self.port, asyncio.get_running_loop().time())
        if holding is None:
            raise RefusedError(f"no live intercept on port {self.port}")
        session = self.relay.sessions.get(holding.session)
        listen_host = holding.claim.listen_host
        if session is None or listen_host not in session.virtual:
            raise RefusedError(f"intercept {holding.claim.id!r} has no connected session")
        await self.relay.open_channel(session, factory, listen_host, holding.port, peer)

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    async def close(self) -> None:
        self.stop_accepting()
        if self.server is not None:
            await self.server.wait_closed()


class ChannelProtocol(asyncssh.SSHTCPSession[bytes]):
    """An asyncio protocol (the router's upstream side) on an SSH channel: asyncssh's
    session callbacks are the same events, ``data_received`` with a data type besides."""

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.eof = False

    def connection_made(self, chan: Any) -> None:
        self.protocol.connection_made(chan)

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.protocol.data_received(data)

    def eof_received(self) -> bool:
        self.eof = True
        return bool(self.protocol.eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None and not self.eof:
            # closed without the laptop's EOF (its socket was reset, its daemon stopped): for
            # the router that is a lost stream, as a TCP reset would be, not a clean close
            exc = ConnectionResetError("the laptop's channel closed without end of stream")
        self.protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.protocol.resume_writing()


class OriginListener(PortListener):
    """A port of a redirected Service that nobody intercepts: a pass-through to the original
    pods (a taken-over Service moves all its ports to the relay, not only the intercepted)."""

    mode = "origin"

    async def start(self, host: str) -> None:
        self.server = await asyncio.start_server(
            self._pass, host, self.port, reuse_address=True,
            backlog=self.relay.settings.tunnel.listen_backlog)

    async def _pass(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counters.connections += 1
        budget = self.relay.budget  # the routers' limit counts these connections too
        if budget.used >= budget.limit:
            self.counters.fail(f"refused: the relay holds {budget.limit} client connections")
            writer.close()
            return
        budget.used += 1
        self.counters.active += 1
        try:
            if not self.origin:
                raise OSError("the original pods are not known yet")
            host, port = parse_host_port(self.origin)
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except (OSError, BridgedError) as exc:
            why = getattr(exc, "strerror", None) or exc
            self.counters.fail(f"origin {self.origin or '-'}: {why}")
            self.counters.active -= 1
            budget.used -= 1
            writer.close()
            return
        try:  # a reset of either side resets the other: a cut answer must not end cleanly
            await pass_streams(reader, writer, up_reader, up_writer)
        finally:
            self.counters.active -= 1
            budget.used -= 1
            up_writer.close()
            writer.close()


@dataclass
class RouterCounters(Counters):
    #: connections passed through untouched (not HTTP/1.x), by reason
    passed_through: dict[str, int] = field(default_factory=dict)
    #: copies for mirror intercepts not sent to the laptop, by reason
    mirror_dropped: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "passed_through": dict(self.passed_through),
                "mirror_dropped": dict(self.mirror_dropped)}


class HttpPortListener(PortListener):
    """An intercepted port whose requests are routed one by one (:mod:`.router`)."""

    mode = "http"

    def __init__(self, relay: Relay, port: int, origin: str = "") -> None:
        super().__init__(relay, port, origin)
        #: the relay port whose intercepts this listener serves (a mirror port's differs)
        self.intercepted = port
        self.counters: RouterCounters = RouterCounters()
        #: copies dropped per mirror intercept, by reason (totals); those not yet told
        self.mirror_drops: dict[str, dict[str, int]] = {}
        self._drops_untold: set[str] = set()
        self._telling: asyncio.TimerHandle | None = None
        self.mirrors = Mirrors(self._mirror_targets, self._open_upstream, self._mirrored,
                               self._mirror_dropped, relay.settings.router.mirror)
        self.router = HttpRouter(
            self._decide, self._open_upstream, self._count, self._fallback,
            settings=relay.settings.router, budget=relay.budget,
            on_pass_through=self._passed_through, probe=relay.probes.arrived,
            speaks_h2=self._speaks_h2, h2c_upgrade=self._declared_h2, mirror=self.mirrors)

    async def start(self, host: str) -> None:
        self.server = await asyncio.get_running_loop().create_server(
            self.router.protocol, host, self.port, reuse_address=True,
            backlog=self.relay.settings.tunnel.listen_backlog)

    def _decide(self, head: RequestHead) -> Route:
        holdings = self.relay.table.at_port(self.port)
        if not holdings:
            return decide(head, ())
        now = (self.router.loop or asyncio.get_running_loop()).time()
        # a mirror routes nothing: it takes copies (_mirror_targets)
        return decide(head, [h.rule for h in holdings
                             if h.rule is not None and h.expires_at > now
                             and not h.claim.mirror])

    def _copies_here(self, claim: protocol.InterceptClaim) -> bool:
        """Whether this listener copies ``claim``'s requests: under the gateway strategy the
        mesh does, to the mirror port (:class:`MirrorPortListener`); else the router."""
        return claim.via != "gateway"

    def _mirror_targets(self, head: RequestHead) -> list[str]:
        """The live mirror intercepts of this port that want a copy of this request."""
        holdings = self.relay.table.mirrors_at(self.intercepted)
        if not holdings:
            return []
        now = (self.router.loop or asyncio.get_running_loop()).time()
        return [h.claim.id for h in holdings
                if self._copies_here(h.claim) and h.rule is not None
                and h.expires_at > now and h.rule.matches(head)]

    def _control_of(self, intercept_id: str) -> Any:
        """The control channel of the session holding ``intercept_id``, if it is open."""
        holding = self.relay.table.get(intercept_id)
        session = self.relay.sessions.get(holding.session) if holding is not None else None
        if session is None or session.control is None or session.control.is_closing():
            return None
        return session.control

    def _mirrored(self, result: MirrorResult) -> None:
        """A copy's exchanges ended: the cluster's answer (redacted, cut) to the developer,
        beside a traffic event for the copy (its laptop's status)."""
        control = self._control_of(result.intercept_id)
        if control is None:
            return
        settings = self.relay.settings.router
        client = format_host_port(*result.client) if result.client[0] else ""
        control.write(protocol.encode(protocol.Traffic(
            intercept_id=result.intercept_id, method=result.method, path=result.path[:2048],
            status=result.laptop_status, duration_ms=result.duration_ms, client=client,
            headers=tuple(redact(result.request_headers, settings.redact_headers)),
            note="mirror" + (f": {result.laptop_error}" if result.laptop_error else ""))))
        control.write(protocol.encode(protocol.MirrorAnswer(
            intercept_id=result.intercept_id, mirror_id=result.mirror_id,
            method=result.method, path=result.path[:2048], status=result.status,
            headers=tuple(redact(result.headers, settings.redact_headers)),
            body_b64=base64.b64encode(result.body).decode(), size=result.size,
            truncated=result.truncated, duration_ms=result.duration_ms,
            laptop_status=result.laptop_status, laptop_error=result.laptop_error[:512],
            note=result.note)))

    def _mirror_dropped(self, intercept_id: str, reason: str) -> None:
        counts = self.mirror_drops.setdefault(intercept_id, {})
        counts[reason] = counts.get(reason, 0) + 1
        self.counters.mirror_dropped[reason] = self.counters.mirror_dropped.get(reason, 0) + 1
        self._drops_untold.add(intercept_id)
        if self._telling is None:  # at most twice a second: a burst of drops is one message
            self._telling = asyncio.get_running_loop().call_later(
                MIRROR_DROPS_EVERY_SECONDS, self._tell_drops)

    def _tell_drops(self) -> None:
        self._telling = None
        untold, self._drops_untold = self._drops_untold, set()
        for intercept_id in untold:
            control = self._control_of(intercept_id)
            if control is not None:
                control.write(protocol.encode(protocol.MirrorDrops(
                    intercept_id=intercept_id,
                    dropped=dict(self.mirror_drops.get(intercept_id, {})))))

    def _holding(self, route: Route) -> tuple[Holding | None, RelaySession | None]:
        """The intercept a route names on this port, and its session if connected."""
        holding = self.relay.table.get(route.target)
        if holding is None or holding.port != self.intercepted:
            return None, None
        return holding, self.relay.sessions.get(holding.session)

    def _speaks_h2(self, route: Route) -> bool:
        """The original pods take HTTP/2 from a client that speaks it to them; a developer's
        server, when its intercept says so (checked when it was made)."""
        if route.to_origin:
            return True
        holding = self.relay.table.get(route.target)
        return holding is not None and holding.claim.protocol != "http"

    def _declared_h2(self) -> bool:
        """The port is HTTP/2 (an intercept on it says h2c or grpc): ``Upgrade: h2c`` is then
        taken by the router, so that each of the connection's streams is routed."""
        return any(h.claim.protocol != "http" for h in self.relay.table.on_port(self.port))

    def _fallback(self, route: Route) -> Route | None:
        holding, _ = self._holding(route)
        if holding is not None and holding.claim.fallback == "origin" and self.origin:
            return Route(ORIGIN)
        return None

    def _passed_through(self, reason: str, peer: tuple[str, int]) -> None:
        """Not HTTP/1.x: counted, and told to every developer intercepting this port (their
        h2c or TLS clients' calls never reach them; this says why)."""
        self.counters.connections += 1
        self.counters.passed_through[reason] = self.counters.passed_through.get(reason, 0) + 1
        for holding in self.relay.table.on_port(self.port):
            session = self.relay.sessions.get(holding.session)
            if session is not None and session.control is not None \
                    and not session.control.is_closing():
                session.control.write(protocol.encode(protocol.Traffic(
                    intercept_id=holding.claim.id, method="", path="", status=0,
                    duration_ms=0.0, client=format_host_port(*peer) if peer[0] else "",
                    note=reason)))

    def _count(self, head: RequestHead, route: Route, status: int, seconds: float,
               peer: tuple[str, int], http_version: str = "",
               grpc_status: int | None = None, note: str = "") -> None:
        self.counters.connections += 1
        if status in (0, 502):
            self.counters.fail(f"{head.method} {head.path} → {route.target}: failed")
        if route.to_origin:
            return
        _, session = self._holding(route)
        if session is not None and session.control is not None \
                and not session.control.is_closing():
            session.control.write(protocol.encode(protocol.Traffic(
                intercept_id=route.target, method=head.method, path=head.path[:2048],
                status=status, duration_ms=round(seconds * 1000, 2),
                client=format_host_port(*peer) if peer[0] else "",
                headers=tuple(redact(head.headers,
                                     self.relay.settings.router.redact_headers)),
                http_version=http_version, grpc_status=grpc_status, note=note)))

    async def _open_upstream(self, route: Route, peer: tuple[str, int],
                             factory: Callable[[], Any]) -> Any:
        if route.to_origin:
            if not self.origin:
                raise UpstreamUnavailable("the original pods: none known for this port")
            host, port = parse_host_port(self.origin)
            return await tcp_upstream(host, port, factory, f"the original pods at {self.origin}")
        holding, session = self._holding(route)
        if holding is None or session is None or \
                holding.claim.listen_host not in session.virtual:
            raise UpstreamUnavailable(f"intercept {route.target}: its session is gone")
        try:
            channel, _ = await self.relay.open_channel(
                session, lambda: ChannelProtocol(factory()), holding.claim.listen_host,
                self.intercepted, peer)
        except asyncssh.ChannelOpenError as exc:
            raise UpstreamUnavailable(f"{route.target}: {exc.reason}") from None
        except RefusedError as exc:  # the relay carries all the streams it may
            raise UpstreamUnavailable(f"{route.target}: {exc}") from None
        except (asyncssh.Error, OSError) as exc:
            raise UpstreamUnavailable(f"{route.target}: {exc}") from None
        return channel

    async def close(self) -> None:
        self.router.close()
        if self._telling is not None:
            self._telling.cancel()
        await super().close()


class MirrorPortListener(HttpPortListener):
    """The mirror port of an intercepted port under the gateway strategy: the mesh's copies
    arrive here (:mod:`.router.copies`), answered at once and never forwarded to the original
    pods (the mesh sent them the request itself); they go to the developers whose mirror of
    ``intercepted`` matches them."""

    mode = "mirror"

    def __init__(self, relay: Relay, port: int, intercepted: int) -> None:
        super().__init__(relay, port)
        self.intercepted = intercepted

    def _copies_here(self, claim: protocol.InterceptClaim) -> bool:
        return claim.via == "gateway"

    async def start(self, host: str) -> None:
        idle = self.relay.settings.router.idle_timeout_seconds
        self.server = await asyncio.get_running_loop().create_server(
            lambda: CopySink(self.mirrors, MESH_MIRRORS, idle), host, self.port,
            reuse_address=True, backlog=self.relay.settings.tunnel.listen_backlog)


class Relay:
    """The relay: owns the SSH servers, the intercept table, the port listeners and the leases."""

    def __init__(self, settings: RelaySettings, kube: Any = None) -> None:
        self.settings = settings
        self.table = InterceptTable()
        #: the relay's own requests through a redirected Service, awaited until they arrive
        self.probes = Probes()
        #: redirects Services to the relay; None without Kubernetes access (local runs)
        self.redirector = Redirector(
            kube, host=settings.intercept_host, live=self._live_services,
            listen=self._listen_origin, set_origin=self._set_origin,
            closed=self._close_idle_ports_by_number, probes=self.probes,
            listen_mirror=self._listen_mirror,
        ) if kube is not None else None
        self.sessions: dict[str, RelaySession] = {}
        self.ports: dict[int, PortListener] = {}
        self.outbound = Counters()
        #: client connections of every HTTP port's router, against one limit
        self.budget = ConnectionBudget(settings.router.max_connections)
        #: the channels open and the receive windows granted them (see stream_window)
        self.streams = 0
        self.windows_granted = 0
        self.keys = AuthorizedKeys(settings.authorized_keys)
        self.host_key = load_or_create_key(settings.host_key, comment="bridged-relay")
        self.acceptor = StreamAcceptor()
        self.tasks = TaskSet("relay")
        self._ids = itertools.count(1)
        self._syncing: asyncio.Task[Any] | None = None
        self._ssh: list[asyncssh.SSHAcceptor] = []
        self._http: Any = None
        self.ssh_port = 0
        self.http_port: int | None = None

    # --- life cycle ---

    async def __aenter__(self) -> Relay:
        if not self._ssh:  # not started yet
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _ssh_options(self) -> dict[str, Any]:
        t = self.settings.tunnel
        return dict(
            server_factory=lambda: RelaySession(self),
            server_host_keys=[self.host_key],
            process_factory=self._control,
            encoding=None,
            allow_pty=False, line_editor=False, agent_forwarding=False, x11_forwarding=False,
            allow_scp=False, sftp_factory=None,
            password_auth=False, kbdint_auth=False, public_key_auth=True,
            keepalive_interval=t.keepalive_seconds, keepalive_count_max=t.keepalive_count_max,
            encryption_algs=list(t.encryption_algs),
            login_timeout=t.connect_timeout_seconds,
        )

    async def start(self) -> None:
        s = self.settings
        await self.keys.start(self.tasks)  # in a cluster: the Secret read before Ready
        if self.redirector is not None:
            await self.redirector.restore_stale()
        server = await asyncssh.listen(s.ssh_host, s.ssh_port, tunnel=TcpAcceptor(),
                                       **self._ssh_options())
        self._ssh.append(server)
        self.ssh_port = server.get_port()
        self._ssh.append(await asyncssh.listen(tunnel=self.acceptor, **self._ssh_options()))
        if s.http_port is not None:
            from .websocket import start_http

            self._http, self.http_port = await start_http(self, s.http_host, s.http_port)
        self.tasks.start(self._expire_leases(), name="lease-expiry")
        log.info(
            "relay %s ready: ssh on %s, host key %s", __version__,
            format_host_port(s.ssh_host, self.ssh_port), fingerprint(self.host_key),
        )

    async def close(self) -> None:
        """Stop accepting, end every session, close every port: the cluster is left as found."""
        await self.tasks.cancel_all()
        for server in self._ssh:
            server.close()
        if self.redirector is not None:
            await self.redirector.close()  # the Services first: traffic goes back at once
        for session in list(self.sessions.values()):
            session.conn.close()
        if self._http is not None:
            await self._http.cleanup()
        for listener in list(self.ports.values()):
            await listener.close()
        self.ports.clear()
        for server in self._ssh:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    # --- sessions ---

    def new_session_id(self) -> str:
        # unique across relay restarts too, so logs and status never confuse two sessions
        return f"s{next(self._ids)}-{secrets.token_hex(3)}"

    def session_ended(self, session: RelaySession) -> None:
        self.sessions.pop(session.id, None)
        gone = self.table.drop_session(session.id, asyncio.get_running_loop().time())
        for h in gone:
            log.info("session %s ended: intercept %s on port %d no longer routed%s",
                     session.id, h.claim.id, h.port,
                     f" (reserved {h.resume_seconds:.0f}s for its owner)"
                     if h.resume_seconds else "")
        self._close_idle_ports(gone)
        self._sync_redirects()

    # --- intercepts ---

    async def register(self, session: RelaySession, claim: protocol.InterceptClaim,
                       overwrite: bool) -> dict[str, Any]:
        if claim.mirror and claim.protocol != "http":
            raise RefusedError(
                f"intercept {claim.id}: a mirror copies HTTP/1.1 requests only for now; this "
                f"port speaks {claim.protocol} (HTTP/2 streams are not mirrored yet)")
        if claim.origin:  # a developer's choice: checked as expose's destinations are
            claim = replace(claim, origin=await allowed_origin(self.settings.policy,
                                                               claim.origin))
        if claim.service:
            if self.redirector is None:
                raise RefusedError(
                    f"this relay has no Kubernetes access: it cannot redirect Service "
                    f"{claim.service} (intercept a relay port instead)")
            claim = replace(claim, port=self.redirector.port_for(claim.service,
                                                                 claim.service_port))
        existing = self.ports.get(claim.port)
        if existing is not None and existing.mode not in (claim.mode, "origin") \
                and self.table.on_port(claim.port):
            raise RefusedError(f"port {claim.port} is intercepted in another mode "
                               f"({existing.mode})")
        now = asyncio.get_running_loop().time()
        try:
            _, displaced = self.table.claim(
                session.id, claim, now=now, ttl=self.settings.lease.ttl_seconds,
                overwrite=overwrite, owner=session.key_fingerprint,
                resume=self.settings.lease.resume_seconds,
            )
        except TableConflict as exc:
            raise RefusedError(str(exc)) from None
        for h in displaced:
            log.info("intercept %s displaced by %s", h.claim.id, claim.id)
        self._close_idle_ports(displaced)
        listener = self.ports.get(claim.port)
        if listener is None or listener.mode != claim.mode:
            cls = HttpPortListener if claim.mode == "http" else PortListener
            try:
                await self._swap_listener(cls(self, claim.port, claim.origin or (
                    listener.origin if listener is not None else "")))
            except OSError as exc:
                self.table.release(session.id, claim.id)
                raise RefusedError(
                    f"the relay cannot listen on port {claim.port}: {exc.strerror or exc}"
                ) from None
            if not self.table.on_port(claim.port):
                # the session ended while we were binding
                self._close_idle_ports_by_number({claim.port})
        if claim.service and self.redirector is not None:
            try:
                await self.redirector.ensure(claim)
            except BridgedError as exc:
                self.table.release(session.id, claim.id)
                self._close_idle_ports_by_number({claim.port})
                raise RefusedError(str(exc)) from None
        log.info("session %s (%s) intercepts %s as %s", session.id, session.owner,
                 f"Service {claim.service} port {claim.service_port} (relay port "
                 f"{claim.port}, via {claim.via})" if claim.service else f"port {claim.port}",
                 claim.id)
        return {"intercept_id": claim.id, "port": claim.port,
                "lease_seconds": self.settings.lease.ttl_seconds, "via": claim.via}

    async def _swap_listener(self, new: PortListener) -> None:
        """Serve ``new.port`` with ``new``; the listener it replaces stops accepting first
        (its connections carry on)."""
        old = self.ports.pop(new.port, None)
        if old is not None:
            old.stop_accepting()
            self.tasks.start(old.close(), name=f"close-port-{new.port}")
        await new.start(self.settings.intercept_host)
        self.ports[new.port] = new

    async def _listen_origin(self, port: int, origin: str) -> None:
        if port not in self.ports:
            await self._swap_listener(OriginListener(self, port, origin))

    async def _listen_mirror(self, port: int, intercepted: int) -> None:
        listener = self.ports.get(port)
        if not isinstance(listener, MirrorPortListener) or listener.intercepted != intercepted:
            await self._swap_listener(MirrorPortListener(self, port, intercepted))

    def _set_origin(self, port: int, origin: str) -> None:
        if port in self.ports:
            self.ports[port].origin = origin

    def _live_services(self) -> dict[str, list[protocol.InterceptClaim]]:
        now = asyncio.get_running_loop().time()
        live: dict[str, list[protocol.InterceptClaim]] = {}
        for h in self.table.holdings():
            if h.claim.service and h.expires_at > now:
                live.setdefault(h.claim.service, []).append(h.claim)
        return live

    def _sync_redirects(self) -> asyncio.Task[Any] | None:
        if self.redirector is None or not self.redirector.out_of_sync():
            return self._syncing
        if self._syncing is None or self._syncing.done():  # one run at a time; it sees all
            self._syncing = self.tasks.start(self.redirector.sync(), name="redirect-sync")
        return self._syncing

    async def redirects_settled(self) -> list[str]:
        """Wait for the cluster to reflect the table (a leave restores its Service before it
        is answered); what changed, one line per Service."""
        task = self._sync_redirects()
        if task is None:
            return []
        try:
            return list(await asyncio.shield(task))
        except Exception as exc:  # logged by the task set; the daemon gets the reason
            return [f"the Service could not be restored yet: {exc}"]

    def release(self, session: RelaySession, intercept_id: str) -> bool:
        holding = self.table.release(session.id, intercept_id)
        if holding is None:
            return False
        session.virtual.pop(holding.claim.listen_host, None)
        self._close_idle_ports([holding])
        self._sync_redirects()
        log.info("intercept %s released", intercept_id)
        return True

    def _close_idle_ports(self, holdings: list[Holding]) -> None:
        """``holdings`` ended: a mirror's copies not sent yet go with it; then the ports
        nothing needs any more close."""
        for h in holdings:
            for listener in self._copying(h.port) if h.claim.mirror else ():
                listener.mirrors.forget(h.claim.id)
        self._close_idle_ports_by_number({h.port for h in holdings})

    def _copying(self, port: int) -> list[HttpPortListener]:
        """The listeners that copy requests for the mirrors of relay port ``port``: its own,
        and its mirror port's (gateway)."""
        return [listener for listener in self.ports.values()
                if isinstance(listener, HttpPortListener) and listener.intercepted == port]

    def _close_idle_ports_by_number(self, ports: set[int]) -> None:
        """Close the listeners nothing needs any more. A port of a redirected Service stays
        served: by a pass-through to the original pods once no intercept holds it."""
        in_use = self.redirector.ports_in_use() if self.redirector is not None else set()
        closed = set()
        for port in ports:
            if self.table.on_port(port) or port not in self.ports:
                continue
            listener = self.ports[port]
            if port in in_use:
                if listener.mode not in ("origin", "mirror"):
                    self.tasks.start(self._swap_listener(
                        OriginListener(self, port, listener.origin)), name=f"origin-{port}")
                continue
            del self.ports[port]
            listener.stop_accepting()  # at once: the port is free when we answer
            self.tasks.start(listener.close(), name=f"close-port-{port}")
            closed.add(port)
        if self.redirector is not None:
            self.redirector.forget_ports(closed)

    async def _expire_leases(self) -> None:
        loop = asyncio.get_running_loop()
        tick = self.settings.lease.ttl_seconds / 8
        while True:
            await asyncio.sleep(tick)
            gone = self.table.expire(loop.time())
            for h in gone:
                log.warning("intercept %s (session %s) released: its lease and reconnect "
                            "window ended", h.claim.id, h.session)
            self._close_idle_ports(gone)
            self._sync_redirects()

    # --- memory: what the channels may buffer ---
    # A channel's receive window is what its peer may send before its socket took any: with
    # 2 MiB each, 200 streams into slow destinations buffered 344 MiB (bench/relay_memory.py),
    # past the pod's limit. So windows are granted from one budget: a new channel gets a
    # quarter of what is free (at most the usual window, at least the smallest), and gives it
    # back when it closes.

    def stream_window(self) -> int:
        """The receive window of a new channel, taken from the budget (give it back with
        :meth:`track` or :meth:`give_back`); past ``max_streams``, :class:`RefusedError`."""
        t = self.settings.tunnel
        if self.streams >= t.max_streams:
            raise RefusedError(f"the relay carries {t.max_streams} streams at most; close some "
                               "or try again later")
        free = t.relay_window_budget_bytes - self.windows_granted
        window = max(t.smallest_window_bytes, min(t.window_bytes, free // 4))
        self.streams += 1
        self.windows_granted += window
        return window

    def give_back(self, window: int) -> None:
        self.streams -= 1
        self.windows_granted -= window

    async def open_channel(self, session: RelaySession, factory: Any, listen_host: str,
                           port: int, peer: tuple[str, int]) -> Any:
        """A ``forwarded-tcpip`` channel to ``session``'s intercept, its window taken from the
        budget: (channel, its session object), as asyncssh's create_connection."""
        window = self.stream_window()
        try:
            opened = await session.conn.create_connection(
                factory, listen_host, port, peer[0], peer[1], window=window,
                max_pktsize=self.settings.tunnel.packet_bytes)
        except BaseException:
            self.give_back(window)
            raise
        self.track(opened[0], window)
        return opened

    def track(self, chan: Any, window: int) -> None:
        """Give ``window`` back once ``chan`` has closed."""
        async def closed() -> None:
            try:
                await chan.wait_closed()
            finally:
                self.give_back(window)
        self.tasks.start(closed(), name="stream-window")

    # --- outbound ---

    async def connect_out(self, conn: asyncssh.SSHServerConnection, host: str,
                          port: int) -> asyncssh.SSHTCPSession:
        try:  # only the addresses checked here are connected to: DNS cannot swap one in
            addresses = await resolve_allowed(self.settings.policy, host, port)
        except RefusedError as exc:
            self.outbound.fail(str(exc))
            code = asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED \
                if isinstance(exc, DestinationDenied) else asyncssh.OPEN_CONNECT_FAILED
            raise asyncssh.ChannelOpenError(code, str(exc)) from None
        last: asyncssh.ChannelOpenError | None = None
        for address in addresses:
            try:
                return await channel_then_socket(
                    address, port, self.outbound, what=f"{host}:{port} at", conn=conn,
                    connect_seconds=self.settings.tunnel.connect_timeout_seconds)
            except asyncssh.ChannelOpenError as exc:
                last = exc
        assert last is not None
        raise last

    # --- names, for the daemon's proxies ---

    def namespace(self) -> str:
        """The namespace the relay runs in ("" outside Kubernetes): ``POD_NAMESPACE`` (the
        downward API's usual name; tests set it for a local relay), else the redirector's API
        client's, else the service account's file every pod has."""
        if os.environ.get("POD_NAMESPACE"):
            return os.environ["POD_NAMESPACE"]
        kube = self.redirector.kube if self.redirector is not None else None
        namespace = str(getattr(kube, "namespace", None) or "")
        if namespace:
            return namespace
        try:
            return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        except OSError:
            return ""

    async def resolve(self, name: str, cluster_domain: str) -> dict[str, Any]:
        """Whether a pod of this namespace resolves ``name``, trying its search order itself
        (so ``example.com`` is not taken for a cluster name because the pod reaches the
        internet); outside Kubernetes the name as given. Addresses are not answered: the
        channel to the name is resolved and checked against the policy when it is opened."""
        loop = asyncio.get_running_loop()
        for candidate in search_names(name, self.namespace(), cluster_domain):
            try:
                async with asyncio.timeout(RESOLVE_SECONDS):
                    await loop.getaddrinfo(candidate, None, type=socket.SOCK_STREAM)
            except (OSError, TimeoutError, UnicodeError):
                continue
            return {"cluster": True, "name": candidate}
        return {"cluster": False, "name": ""}

    # --- control subsystem ---

    async def _control(self, process: asyncssh.SSHServerProcess) -> None:
        if process.subsystem != protocol.SUBSYSTEM:
            process.stderr.write(b"this relay only serves the bridged-control subsystem\n")
            process.exit(1)
            return
        session = self.session_of(process.channel.get_connection())
        if session is None:
            process.exit(1)
            return
        session.control = process.stdout
        try:
            await ControlHandler(self, session).serve(process.stdin, process.stdout)
        finally:
            session.control = None
        process.exit(0)

    def session_of(self, conn: Any) -> RelaySession | None:
        for session in self.sessions.values():
            if session.conn is conn:
                return session
        return None

    def stats(self, session: RelaySession) -> dict[str, Any]:
        """What one session may know: its own intercepts in full, the others only counted
        (intercept ids are how a session re-attaches; they are not for others to see)."""
        now = asyncio.get_running_loop().time()
        holdings = self.table.holdings()
        return {
            "version": __version__,
            "sessions": len(self.sessions),
            "intercepts": [
                {"id": h.claim.id, "port": h.port, "session": h.session,
                 "lease_left_seconds": round(h.expires_at - now, 1),
                 **({"mirror_dropped": {reason: n for listener in self._copying(h.port)
                                        for reason, n in listener.mirror_drops.get(
                                            h.claim.id, {}).items()}}
                    if h.claim.mirror else {})}
                for h in holdings if h.session == session.id
            ],
            "other_intercepts": sum(1 for h in holdings if h.session != session.id),
            "ports": {str(p): listener.counters.snapshot() for p, listener in self.ports.items()},
            "outbound": self.outbound.snapshot(),
            "streams": self.streams,
            "windows_granted_bytes": self.windows_granted,
        }


class RelaySession(asyncssh.SSHServer):
    """One daemon's SSH connection to the relay."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.id = relay.new_session_id()
        self.owner = ""
        self.key_fingerprint = ""
        self.agent = ""
        self.conn: asyncssh.SSHServerConnection = None  # type: ignore[assignment]
        self.virtual: dict[str, VirtualListener] = {}
        #: the control channel's writer, for events the relay sends unasked (traffic)
        self.control: Any = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.relay.sessions[self.id] = self

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.session_ended(self)
        if exc is not None:
            log.info("session %s (%s) lost: %s", self.id, self.owner or "-", exc)

    # authentication: public keys only
    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        owner = self.relay.keys.allows(key)
        if owner is None:
            log.warning("refused key %s for %r: not authorized", fingerprint(key), username)
            return False
        self.owner = owner
        self.key_fingerprint = fingerprint(key)
        return True

    def auth_completed(self) -> None:
        log.info("session %s: %s authenticated", self.id, self.owner)

    # outbound: direct-tcpip
    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> Any:
        t = self.relay.settings.tunnel
        try:
            window = self.relay.stream_window()
        except RefusedError as exc:
            self.relay.outbound.fail(str(exc))
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_RESOURCE_SHORTAGE, str(exc)) from None
        chan = self.conn.create_tcp_channel(window=window, max_pktsize=t.packet_bytes)
        self.relay.track(chan, window)
        return chan, self.relay.connect_out(self.conn, dest_host, dest_port)

    # inbound: remote-forward requests for virtual listeners
    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        if not listen_host.endswith(INTERCEPT_SUFFIX):
            log.warning("session %s asked to bind %s: refused (only intercepts are served)",
                        self.id, format_host_port(listen_host, listen_port))
            return False
        intercept_id = listen_host[: -len(INTERCEPT_SUFFIX)]
        holding = self.relay.table.get(intercept_id)
        if holding is None or holding.session != self.id:
            return False
        listener = VirtualListener(self, listen_host, listen_port or holding.port)
        self.virtual[listen_host] = listener
        return listener


class ControlHandler:
    """Serves JSON-line requests of one session (see :mod:`bridged.protocol`)."""

    def __init__(self, relay: Relay, session: RelaySession) -> None:
        self.relay = relay
        self.session = session

    async def serve(self, reader: asyncssh.SSHReader, writer: asyncssh.SSHWriter) -> None:
        while True:
            try:
                line = await reader.readline()
            except (asyncssh.Error, asyncio.IncompleteReadError, ConnectionError):
                return
            if not line:
                return
            writer.write(protocol.encode(await self.answer(line)))

    async def answer(self, line: bytes) -> protocol.Message:
        try:
            msg = protocol.decode(line)
        except protocol.UnknownType as exc:
            return protocol.Error(re=exc.request_id, code="unsupported", message=str(exc))
        except protocol.BadMessage as exc:
            return protocol.Error(re=exc.request_id, code="protocol", message=str(exc))
        except Exception as exc:  # a broken line is answered, never fatal
            return protocol.Error(re=0, code="protocol", message=str(exc))
        if not isinstance(msg, protocol.Request):
            return protocol.Error(re=0, code="protocol", message=f"{msg.type} is not a request")
        try:
            return protocol.Ok(re=msg.id, body=await self._handle(msg))
        except RefusedError as exc:
            return protocol.Error(re=msg.id, code="refused", message=str(exc))

    async def _handle(self, msg: protocol.Request) -> dict[str, Any]:
        relay, session = self.relay, self.session
        if isinstance(msg, protocol.Hello):
            if not protocol.compatible(msg.version):
                raise RefusedError(
                    f"protocol version {msg.version[0]}.x is not supported by this relay "
                    f"(it speaks {protocol.VERSION[0]}.x): upgrade bridged or the relay"
                )
            session.agent = msg.agent
            lease = relay.settings.lease
            return {"version": list(protocol.VERSION), "relay": __version__,
                    "session": session.id, "lease_seconds": lease.ttl_seconds,
                    "renew_seconds": lease.renew_seconds}
        if isinstance(msg, protocol.Register):
            return await relay.register(session, msg.claim, msg.overwrite)
        if isinstance(msg, protocol.Release):
            released = relay.release(session, msg.intercept_id)
            return {"released": released, "notes": await relay.redirects_settled()}
        if isinstance(msg, protocol.Renew):
            now = asyncio.get_running_loop().time()
            lost = relay.table.renew(session.id, msg.intercept_ids, now=now,
                                     ttl=relay.settings.lease.ttl_seconds)
            return {"lost": lost}
        if isinstance(msg, protocol.GetStats):
            return relay.stats(session)
        if isinstance(msg, protocol.Resolve):
            return await relay.resolve(msg.name, msg.cluster_domain)
        raise RefusedError(f"{msg.type} is not handled")
