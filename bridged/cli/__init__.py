"""The ``bridged`` command (typer).

- :mod:`.commands`: everything that talks to the daemon through the control client;
- :mod:`.servers`: the commands that are processes themselves (daemon, relay, demo);
- :mod:`.output`: tables, ``--json`` and one-line errors.
"""

from __future__ import annotations

import typer

from .. import __version__
from . import commands, servers

app = typer.Typer(
    name="bridged",
    help="Run one service of a Kubernetes application on your laptop, as if in the cluster.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)
commands.register(app)
servers.register(app)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    app(prog_name="bridged")
