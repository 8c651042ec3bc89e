"""The commands that *are* processes: ``daemon``, ``relay`` and ``demo``."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from ..capture.bodies import parse_path
from ..capture.model import CaptureSettings
from ..config import LeaseSettings, RouterSettings, TunnelSettings, parse_host_port
from ..errors import ConfigError, Conflict
from ..relay.probe import ProbeSettings
from .output import handles_errors

LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")]
LogFormat = Annotated[str, typer.Option("--log-format", help="text or json.")]


def register(app: typer.Typer) -> None:
    @app.command()
    @handles_errors
    def daemon(
        ready_fd: Annotated[int | None, typer.Option(hidden=True)] = None,
        keepalive_seconds: Annotated[
            float, typer.Option(help="SSH keepalive interval; 3 missed = relay dead.")
        ] = TunnelSettings.keepalive_seconds,
        redact_header: Annotated[list[str] | None, typer.Option(
            help="Also redact this header in the traffic log and the capture (repeatable; "
                 "credentials and cookies always are).")] = None,
        redact_json_path: Annotated[list[str] | None, typer.Option(
            help="Redact this JSON path in captured bodies before they are stored "
                 "(repeatable: $.password, $.user.token, $.items[*].card, $..secret; form "
                 "bodies: the path's last name).")] = None,
        capture_body_kib: Annotated[int, typer.Option(
            help="KiB of each captured body kept (longer ones are cut and marked).")] =
            CaptureSettings.max_body_bytes // 1024,
        capture_records: Annotated[int, typer.Option(
            help="Captured requests kept (the oldest go first).")] =
            CaptureSettings.max_records,
        capture_mib: Annotated[int, typer.Option(
            help="MiB the capture database may take (the oldest go first).")] =
            CaptureSettings.max_bytes // (1024 * 1024),
        log_level: LogLevel = "info",
        log_format: LogFormat = "text",
    ) -> None:
        """Run the daemon in the foreground (other commands start it when needed)."""
        from ..daemon.app import Daemon, DaemonSettings
        from ..runtime import run, setup_logging

        setup_logging(log_level, log_format)

        def ready() -> None:
            if ready_fd is not None:
                os.write(ready_fd, b"ready\n")
                os.close(ready_fd)

        tunnel = replace(TunnelSettings(), keepalive_seconds=_positive(keepalive_seconds))

        paths = tuple(redact_json_path or ())
        for path in paths:
            if not parse_path(path):
                raise ConfigError(f"bad --redact-json-path {path!r}: expected a JSON path such "
                                  "as $.password, $.user.token, $.items[*].card or $..secret")
        capture = CaptureSettings(
            max_body_bytes=_count(capture_body_kib, "--capture-body-kib") * 1024,
            max_records=_count(capture_records, "--capture-records"),
            max_bytes=_count(capture_mib, "--capture-mib") * 1024 * 1024,
            redact_json_paths=paths)

        async def main() -> None:
            await Daemon(DaemonSettings(tunnel=tunnel, redact_headers=tuple(
                redact_header or ()), capture=capture)).run(ready)

        run(main())

    @app.command()
    @handles_errors
    def relay(
        ssh_listen: Annotated[str, typer.Option(help="SSH address HOST:PORT (port 0: any).")] =
            "127.0.0.1:2222",
        http_listen: Annotated[
            str | None, typer.Option(help="Websocket/health address HOST:PORT (off if unset).")
        ] = None,
        token_file: Annotated[
            Path | None, typer.Option(help="Bearer token for the websocket carrier.")
        ] = None,
        host_key: Annotated[Path, typer.Option(help="SSH host key (made if absent).")] =
            Path("/var/run/bridged/ssh_host_ed25519_key"),
        authorized_keys: Annotated[
            Path, typer.Option(help="File or folder of authorized public keys.")
        ] = Path("/etc/bridged/authorized_keys"),
        authorized_keys_secret: Annotated[str | None, typer.Option(
            help="In a cluster: follow this Secret's keys through the API (a new key works at "
                 "once; the --authorized-keys volume serves while the API cannot be read).")]
            = None,
        host_key_secret: Annotated[
            str | None, typer.Option(help="In a cluster: Secret that keeps the host key.")
        ] = None,
        publish_configmap: Annotated[
            str | None, typer.Option(help="In a cluster: ConfigMap to publish the host key in.")
        ] = None,
        intercept_host: Annotated[
            str, typer.Option(help="Address intercepted ports listen on.")
        ] = "0.0.0.0",
        lease_seconds: Annotated[
            float, typer.Option(help="An intercept not renewed for this long stops routing.")
        ] = LeaseSettings.ttl_seconds,
        keepalive_seconds: Annotated[
            float, typer.Option(help="SSH keepalive interval; 3 missed = daemon gone.")
        ] = TunnelSettings.keepalive_seconds,
        resume_seconds: Annotated[
            float, typer.Option(help="How long a gone daemon's intercept stays reserved.")
        ] = LeaseSettings.resume_seconds,
        redirect_services: Annotated[bool, typer.Option(
            help="In a cluster: redirect intercepted Services to this relay (takeover).")]
            = False,
        mesh_accept_seconds: Annotated[float, typer.Option(
            help="How long a mesh has to accept a new HTTPRoute (--via gateway).")] = 10.0,
        redirect_live_seconds: Annotated[float, typer.Option(
            help="How long an intercepted Service has to send its traffic to the relay.")]
            = ProbeSettings.deadline_seconds,
        response_timeout: Annotated[float | None, typer.Option(
            help="Seconds the router waits for a response's head before a 504 (default: no "
                 "limit, so a request paused at a breakpoint still completes).")] = None,
        header_timeout: Annotated[float, typer.Option(
            help="Seconds a client has to send a request head (then 408).")]
            = RouterSettings.header_timeout_seconds,
        idle_timeout: Annotated[float, typer.Option(
            help="Seconds an idle keep-alive client connection is kept.")]
            = RouterSettings.idle_timeout_seconds,
        send_timeout: Annotated[float, typer.Option(
            help="Seconds a client may leave an answer unread before it is dropped.")]
            = RouterSettings.send_timeout_seconds,
        max_streams: Annotated[int, typer.Option(
            help="Streams (SSH channels) the relay carries at once (then refused).")]
            = TunnelSettings.max_streams,
        max_connections: Annotated[int, typer.Option(
            help="Client connections the router holds at once (then 503).")]
            = RouterSettings.max_connections,
        redact_header: Annotated[list[str] | None, typer.Option(
            help="Also redact this header in traffic events (repeatable; credentials and "
                 "cookies always are).")] = None,
        allow_loopback: Annotated[bool, typer.Option(
            help="Let daemons reach the relay's loopback (local runs; never in a pod).")] = False,
        deny: Annotated[list[str] | None, typer.Option(help="Extra CIDR/host pattern to deny.")]
            = None,
        allow: Annotated[
            list[str] | None, typer.Option(help="Only these CIDRs/host patterns (deny wins).")
        ] = None,
        log_level: LogLevel = "info",
        log_format: LogFormat = "text",
    ) -> None:
        """Run the relay (in the cluster, or locally for tests and the demo).

        Prints one JSON line on stdout once it accepts connections: the ports it bound.
        """
        from ..keys import fingerprint
        from ..relay.policy import DestinationPolicy
        from ..relay.server import Relay, RelaySettings
        from ..runtime import run, setup_logging

        setup_logging(log_level, log_format)
        ssh_host, ssh_port = parse_host_port(ssh_listen, allow_zero=True)
        http_host, http_port = (
            parse_host_port(http_listen, allow_zero=True) if http_listen else ("", None)
        )
        settings = RelaySettings(
            host_key=host_key, authorized_keys=authorized_keys, ssh_host=ssh_host,
            ssh_port=ssh_port, http_host=http_host or "127.0.0.1", http_port=http_port,
            token_file=token_file, intercept_host=intercept_host,
            policy=DestinationPolicy.parse(deny=tuple(deny or ()), allow=tuple(allow or ()),
                                           allow_loopback=allow_loopback),
            lease=LeaseSettings(ttl_seconds=_positive(lease_seconds),
                                renew_seconds=_positive(lease_seconds) / 4,
                                resume_seconds=max(0.0, resume_seconds)),
            tunnel=replace(TunnelSettings(), keepalive_seconds=_positive(keepalive_seconds),
                           max_streams=_count(max_streams, "--max-streams")),
            router=RouterSettings(
                response_timeout_seconds=_positive(response_timeout)
                if response_timeout is not None else None,
                redact_headers=tuple(redact_header or ()),
                header_timeout_seconds=_positive(header_timeout),
                idle_timeout_seconds=_positive(idle_timeout),
                send_timeout_seconds=_positive(send_timeout),
                max_connections=_count(max_connections, "--max-connections")),
        )

        async def main() -> None:
            import asyncio
            import signal

            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            if host_key_secret or publish_configmap:
                if not (host_key_secret and publish_configmap):
                    raise ConfigError("--host-key-secret and --publish-configmap go together")
                from ..kube.client import Kube
                from ..kube.hostkey import load_or_publish

                async with await Kube.connect() as api:
                    await load_or_publish(api, host_key_secret, publish_configmap, host_key)
            async with contextlib.AsyncExitStack() as stack:
                kube: Any = None
                if redirect_services or authorized_keys_secret:
                    from ..kube.client import Kube as KubeClient

                    kube = await stack.enter_async_context(await KubeClient.connect())
                relay = Relay(settings, kube if redirect_services else None)
                if authorized_keys_secret:
                    from functools import partial

                    from ..kube.keywatch import follow_secret

                    relay.keys.follow_secret(authorized_keys_secret, partial(
                        follow_secret, kube, authorized_keys_secret))
                if relay.redirector is not None:
                    relay.redirector.accept_seconds = _positive(mesh_accept_seconds)
                    relay.redirector.live = replace(
                        relay.redirector.live,
                        deadline_seconds=_positive(redirect_live_seconds))
                try:
                    await relay.start()
                except OSError as exc:
                    await relay.close()
                    raise Conflict(f"the relay cannot listen: {exc.strerror or exc}",
                                   hint="is another relay running on that port?") from None
                async with relay as r:
                    print(json.dumps({"event": "ready", "ssh_port": r.ssh_port,
                                      "http_port": r.http_port,
                                      "host_key": fingerprint(r.host_key)}), flush=True)
                    await stop.wait()

        run(main())

    @app.command()
    @handles_errors
    def demo(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
        """Run the whole path on this machine: relay, daemon, forwards, an intercept."""
        from ..demo import run_demo

        ok = run_demo(json_out=json_out)
        sys.stdout.flush()
        raise typer.Exit(0 if ok else 1)


def _count(value: int, option: str) -> int:
    if value < 1:
        raise ConfigError(f"bad {option} {value}: expected a whole number above 0")
    return value


def _positive(seconds: float) -> float:
    if not seconds > 0:
        raise ConfigError(f"bad duration {seconds}: expected a number of seconds above 0")
    return seconds
