"""``bridged proxy``: the daemon's SOCKS5 and HTTP proxies, and the variables that point at them.

``POST /v1/proxy`` starts them for a bridge once (see :mod:`bridged.daemon.proxy`); this prints
their addresses and the ``export`` lines a shell sets (``bridged run`` sets the same).
"""

from __future__ import annotations

import os
import shlex
from typing import Annotated, Any

import typer

from ..control.client import ControlClient, ensure_daemon
from .output import JsonOpt, emit, handles_errors
from .run import proxy_vars


def proxy_env(answer: dict[str, Any]) -> dict[str, str]:
    """The variables that make ordinary clients use the proxies ``POST /v1/proxy`` answered
    (the same ``bridged run`` sets: :func:`.run.proxy_vars`), your ``NO_PROXY`` kept."""
    return proxy_vars(answer["http"], answer["socks"], os.environ)


def register(app: typer.Typer) -> None:
    @app.command()
    @handles_errors
    def proxy(
        bridge: Annotated[str | None, typer.Option(
            "--bridge", help="Which relay connection (default: the only one, else the "
                             "Kubernetes one).")] = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Start the SOCKS5 and HTTP proxies that reach cluster names (once), and print them
        with the lines to export."""
        client = ControlClient()
        ensure_daemon(client)
        answer = client.post("proxy", {"bridge": bridge} if bridge else {})
        emit({**answer, "env": proxy_env(answer)}, json_out, _show)


def _show(answer: dict[str, Any]) -> None:
    where = f" (namespace {answer['namespace']})" if answer.get("namespace") else ""
    typer.echo(f"# bridge {answer['bridge']}{where}: SOCKS5 {answer['socks']}, "
               f"HTTP {answer['http']}")
    for name, value in answer["env"].items():
        typer.echo(f"export {name}={shlex.quote(value)}")
