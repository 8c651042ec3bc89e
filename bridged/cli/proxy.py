"""``bridged proxy``: the daemon's SOCKS5 and HTTP proxies, and the variables that point at them.

``POST /v1/proxy`` starts them for a bridge once (see :mod:`bridged.daemon.proxy`); this prints
their addresses and the ``export`` lines a shell (or ``bridged run``, :func:`proxy_env`) sets.
"""

from __future__ import annotations

import shlex
from typing import Annotated, Any

import typer

from ..control.client import ControlClient, ensure_daemon
from .output import JsonOpt, emit, handles_errors

#: hosts no client should send to a proxy: the laptop itself (its own servers stay direct)
NO_PROXY = "localhost,127.0.0.1,::1"


def proxy_env(answer: dict[str, Any]) -> dict[str, str]:
    """The variables that make ordinary clients use the proxies ``POST /v1/proxy`` answered:
    ``ALL_PROXY`` is SOCKS with remote resolution (socks5h: names resolve at the proxy, so
    cluster names work); ``HTTP(S)_PROXY`` the HTTP proxy (HTTPS through CONNECT; gRPC reads
    them too). Lower-case twins, since curl and Python read only ``http_proxy`` in lower case."""
    socks, http = f"socks5h://{answer['socks']}", f"http://{answer['http']}"
    upper = {"ALL_PROXY": socks, "HTTP_PROXY": http, "HTTPS_PROXY": http, "NO_PROXY": NO_PROXY}
    return {**upper, **{name.lower(): value for name, value in upper.items()}}


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
