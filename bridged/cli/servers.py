"""The commands that *are* processes: ``daemon``, ``relay`` and ``demo``.

``daemon`` and ``relay`` parse their options with argparse, from the tables below, not with
typer: typer validates each option through pydantic, and what a long-lived process imports stays
in its RSS for its whole life (issue 14: typer, click and pydantic are ~7 MiB). ``bridged daemon``
and ``bridged relay`` come here straight from :func:`bridged.cli.main`; the whole typer CLI only
lists them and hands their arguments over (:func:`register`).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ..capture.bodies import parse_path
from ..capture.model import CaptureSettings
from ..config import LeaseSettings, RouterSettings, TunnelSettings, parse_host_port
from ..errors import BridgedError, ConfigError, Conflict
from ..relay.probe import ProbeSettings

if TYPE_CHECKING:
    import typer


@dataclass(frozen=True)
class Opt:
    """One option: ``--name-with-dashes``, parsed as ``kind`` (``bool``: ``--x/--no-x``)."""

    name: str
    kind: type
    default: Any
    help: str
    many: bool = False  # repeatable: a list (None when never given)
    hidden: bool = False


_LOG = (
    Opt("log_level", str, "info", "debug, info, warning or error."),
    Opt("log_format", str, "text", "text or json."),
)

DAEMON_OPTIONS = (
    Opt("ready_fd", int, None, "", hidden=True),
    Opt("keepalive_seconds", float, TunnelSettings.keepalive_seconds,
        "SSH keepalive interval; 3 missed = relay dead."),
    Opt("redact_header", str, None, "Also redact this header in the traffic log and the capture "
        "(repeatable; credentials and cookies always are).", many=True),
    Opt("redact_json_path", str, None, "Redact this JSON path in captured bodies before they are "
        "stored (repeatable: $.password, $.user.token, $.items[*].card, $..secret; form bodies: "
        "the path's last name).", many=True),
    Opt("capture_body_kib", int, CaptureSettings.max_body_bytes // 1024,
        "KiB of each captured body kept (longer ones are cut and marked)."),
    Opt("capture_records", int, CaptureSettings.max_records,
        "Captured requests kept (the oldest go first)."),
    Opt("capture_mib", int, CaptureSettings.max_bytes // (1024 * 1024),
        "MiB the capture database may take (the oldest go first)."),
    *_LOG,
)

RELAY_OPTIONS = (
    Opt("ssh_listen", str, "127.0.0.1:2222", "SSH address HOST:PORT (port 0: any)."),
    Opt("http_listen", str, None, "Websocket/health address HOST:PORT (off if unset)."),
    Opt("token_file", Path, None, "Bearer token for the websocket carrier."),
    Opt("host_key", Path, Path("/var/run/bridged/ssh_host_ed25519_key"),
        "SSH host key (made if absent)."),
    Opt("authorized_keys", Path, Path("/etc/bridged/authorized_keys"),
        "File or folder of authorized public keys."),
    Opt("authorized_keys_secret", str, None, "In a cluster: follow this Secret's keys through "
        "the API (a new key works at once; the --authorized-keys volume serves while the API "
        "cannot be read)."),
    Opt("host_key_secret", str, None, "In a cluster: Secret that keeps the host key."),
    Opt("publish_configmap", str, None, "In a cluster: ConfigMap to publish the host key in."),
    Opt("intercept_host", str, "0.0.0.0", "Address intercepted ports listen on."),
    Opt("lease_seconds", float, LeaseSettings.ttl_seconds,
        "An intercept not renewed for this long stops routing."),
    Opt("keepalive_seconds", float, TunnelSettings.keepalive_seconds,
        "SSH keepalive interval; 3 missed = daemon gone."),
    Opt("resume_seconds", float, LeaseSettings.resume_seconds,
        "How long a gone daemon's intercept stays reserved."),
    Opt("redirect_services", bool, False,
        "In a cluster: redirect intercepted Services to this relay (takeover)."),
    Opt("mesh_accept_seconds", float, 10.0,
        "How long a mesh has to accept a new HTTPRoute (--via gateway)."),
    Opt("redirect_live_seconds", float, ProbeSettings.deadline_seconds,
        "How long an intercepted Service has to send its traffic to the relay."),
    Opt("response_timeout", float, None, "Seconds the router waits for a response's head before "
        "a 504 (default: no limit, so a request paused at a breakpoint still completes)."),
    Opt("header_timeout", float, RouterSettings.header_timeout_seconds,
        "Seconds a client has to send a request head (then 408)."),
    Opt("idle_timeout", float, RouterSettings.idle_timeout_seconds,
        "Seconds an idle keep-alive client connection is kept."),
    Opt("send_timeout", float, RouterSettings.send_timeout_seconds,
        "Seconds a client may leave an answer unread before it is dropped."),
    Opt("max_streams", int, TunnelSettings.max_streams,
        "Streams (SSH channels) the relay carries at once (then refused)."),
    Opt("max_connections", int, RouterSettings.max_connections,
        "Client connections the router holds at once (then 503)."),
    Opt("redact_header", str, None, "Also redact this header in traffic events (repeatable; "
        "credentials and cookies always are).", many=True),
    Opt("allow_loopback", bool, False,
        "Let daemons reach the relay's loopback (local runs; never in a pod)."),
    Opt("deny", str, None, "Extra CIDR/host pattern to deny.", many=True),
    Opt("allow", str, None, "Only these CIDRs/host patterns (deny wins).", many=True),
    *_LOG,
)


class _Parser(argparse.ArgumentParser):
    """A usage error is one line and exit code 2, as the typer commands' are."""

    def error(self, message: str) -> NoReturn:
        _exit(ConfigError(message, hint=f"see {self.prog} --help"))


def _metavar(kind: type) -> str:
    return "<path>" if kind is Path else f"<{kind.__name__}>"


def parser(command: str) -> argparse.ArgumentParser:
    """``bridged daemon`` / ``bridged relay``'s command line, from its table."""
    func = COMMANDS[command]
    doc = inspect.cleandoc(func.__doc__ or "")
    p = _Parser(prog=f"bridged {command}", usage="%(prog)s [OPTIONS]", description=doc,
                add_help=False, allow_abbrev=False,
                formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(
                    prog, max_help_position=34, width=80))
    p._optionals.title = "Options"
    for opt in OPTIONS[command]:
        flag = "--" + opt.name.replace("_", "-")
        text = argparse.SUPPRESS if opt.hidden else opt.help
        if opt.kind is bool:
            shown = flag[2:] if opt.default else "no-" + flag[2:]
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=opt.default,
                           help=f"{text}  [default: {shown}]")
            continue
        if opt.default is not None and not opt.hidden:
            text += f"  [default: {opt.default}]"
        p.add_argument(flag, type=opt.kind, default=opt.default, help=text,
                       action="append" if opt.many else "store", metavar=_metavar(opt.kind))
    p.add_argument("--help", action="help", help="Show this message and exit.")
    return p


def serve(command: str, argv: Sequence[str]) -> NoReturn:
    """Parse ``argv`` for ``command`` and run it; errors are one line, as every command's are."""
    args = parser(command).parse_args(list(argv))
    try:
        COMMANDS[command](**vars(args))
    except BridgedError as exc:
        _exit(exc)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("BRIDGED_DEBUG"):
            raise
        _exit(BridgedError(f"internal error: {type(exc).__name__}: {exc}",
                           hint="set BRIDGED_DEBUG=1 for the traceback"))
    sys.exit(0)


def _exit(error: BridgedError) -> NoReturn:
    sys.stderr.write(f"bridged: {error}\n")
    sys.exit(error.exit_code)


def daemon(*, ready_fd: int | None, keepalive_seconds: float, redact_header: list[str] | None,
           redact_json_path: list[str] | None, capture_body_kib: int, capture_records: int,
           capture_mib: int, log_level: str, log_format: str) -> None:
    """Run the daemon in the foreground (other commands start it when needed)."""
    from ..daemon.app import Daemon, DaemonSettings
    from ..runtime import run, settle, setup_logging

    setup_logging(log_level, log_format)

    def ready() -> None:
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
        settle()  # (what starting took is not held while idle)

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


def relay(*, ssh_listen: str, http_listen: str | None, token_file: Path | None, host_key: Path,
          authorized_keys: Path, authorized_keys_secret: str | None, host_key_secret: str | None,
          publish_configmap: str | None, intercept_host: str, lease_seconds: float,
          keepalive_seconds: float, resume_seconds: float, redirect_services: bool,
          mesh_accept_seconds: float, redirect_live_seconds: float,
          response_timeout: float | None, header_timeout: float, idle_timeout: float,
          send_timeout: float, max_streams: int, max_connections: int,
          redact_header: list[str] | None, allow_loopback: bool, deny: list[str] | None,
          allow: list[str] | None, log_level: str, log_format: str) -> None:
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
            from ..kube.hostkey import load_or_publish
            from ..kube.lite import LiteKube  # not kubernetes-asyncio: ~40 MiB less RSS

            async with await LiteKube.connect() as api:
                await load_or_publish(api, host_key_secret,
                                      publish_configmap, host_key)
        async with contextlib.AsyncExitStack() as stack:
            kube: Any = None
            if redirect_services or authorized_keys_secret:
                from ..kube.lite import LiteKube

                kube = await stack.enter_async_context(await LiteKube.connect())
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


COMMANDS: dict[str, Callable[..., None]] = {"daemon": daemon, "relay": relay}
OPTIONS: dict[str, tuple[Opt, ...]] = {"daemon": DAEMON_OPTIONS, "relay": RELAY_OPTIONS}


def register(app: typer.Typer) -> None:
    import typer

    from .output import handles_errors

    # The whole CLI lists daemon and relay and hands their arguments to serve() (which also
    # answers their --help); `bridged daemon ...` itself never builds this CLI. typer is not
    # imported at this module's top, so the annotations it reads are given as objects.
    passed = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}
    for command, func in COMMANDS.items():
        app.command(command, help=inspect.cleandoc(func.__doc__ or ""), context_settings=passed,
                    add_help_option=False)(_forward(command, typer.Context))

    @app.command()
    @handles_errors
    def demo(json_out: bool = typer.Option(False, "--json")) -> None:
        """Run the whole path on this machine: relay, daemon, forwards, an intercept."""
        from ..demo import run_demo

        ok = run_demo(json_out=json_out)
        sys.stdout.flush()
        raise typer.Exit(0 if ok else 1)


def _forward(command: str, context: type) -> Callable[..., None]:
    def run_server(ctx: typer.Context) -> None:
        serve(command, ctx.args)

    run_server.__annotations__ = {"ctx": context, "return": None}
    return run_server


def _count(value: int, option: str) -> int:
    if value < 1:
        raise ConfigError(f"bad {option} {value}: expected a whole number above 0")
    return value


def _positive(seconds: float) -> float:
    if not seconds > 0:
        raise ConfigError(f"bad duration {seconds}: expected a number of seconds above 0")
    return seconds
