"""The ``bridged`` command (typer).

- :mod:`.commands`: everything that talks to the daemon through the control client;
- :mod:`.servers`: the commands that are processes themselves (daemon, relay, demo);
- :mod:`.service`: the systemd unit, the daemon's log, versions;
- :mod:`.project`: bridged.yaml (up, down, init, schema) and VS Code;
- :mod:`.image`: ``bridged relay-image build`` (docker, podman or buildah);
- :mod:`.proxy`: ``bridged proxy``, the daemon's SOCKS5 and HTTP proxies and their variables;
- :mod:`.run`: ``bridged run -- CMD`` (the workload's env, files and proxies, signals passed on);
- :mod:`.output`: tables, ``--json`` and one-line errors.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer

#: commands that are long-lived processes: run as the first argument, they are parsed by
#: :func:`.servers.serve` (argparse) and no typer CLI is built, so the daemon and the relay do
#: not carry typer, click, pydantic or every other command's imports (jsonschema, yaml, the
#: project and image code...) in their RSS for their whole life
SERVER_COMMANDS = frozenset({"daemon", "relay"})


def build_app() -> typer.Typer:
    import typer

    from . import commands, image, project, proxy, run, servers, service

    app = typer.Typer(
        name="bridged",
        help="Run one service of a Kubernetes application on your laptop, as if in the cluster.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )
    commands.register(app)
    servers.register(app)
    service.register(app)
    project.register(app)
    image.register(app)
    proxy.register(app)
    run.register(app)
    return app


_app: typer.Typer | None = None


def __getattr__(name: str) -> Any:
    """``app``, the whole CLI (tests run it), built on first use."""
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        _app = build_app()
    return _app


def main() -> None:
    """Run the CLI. Usage errors too are one line (and JSON with ``--json``), exit code 2.

    Typer's click (vendored or not) is met by duck typing: a usage error is an exception with
    ``format_message`` and an ``exit_code`` of 2.
    """
    if len(sys.argv) > 1 and sys.argv[1] in SERVER_COMMANDS:
        from .servers import serve

        serve(sys.argv[1], sys.argv[2:])
    import typer

    from ..errors import ConfigError
    from .output import fail

    app = build_app()
    try:
        code = app(prog_name="bridged", standalone_mode=False)
    except Exception as exc:
        kind = type(exc).__name__
        if kind == "NoArgsIsHelpError":  # plain `bridged`: the help is the answer
            sys.stdout.write(exc.format_message() + "\n")  # type: ignore[attr-defined]
            sys.exit(2)
        if kind == "Abort":
            sys.exit(130)
        if not (hasattr(exc, "format_message") and getattr(exc, "exit_code", None) == 2):
            raise
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "bridged"
        try:
            fail(ConfigError(exc.format_message(), hint=f"see {command} --help"),
                 "--json" in sys.argv)
        except typer.Exit as done:
            sys.exit(done.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
