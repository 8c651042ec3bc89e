"""Living on a laptop: the systemd user unit (``bridged service``), ``bridged logs`` and
``bridged version``. None of these needs the daemon to be running."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import __version__, paths
from ..control.client import ControlClient
from ..errors import BridgedError, ConfigError
from .output import JsonOpt, emit, handles_errors

UNIT = "bridged.service"


def unit_text(python: str = sys.executable) -> str:
    """The user unit for this installation: its interpreter, ``Type=notify`` (the daemon
    says READY=1 once its control socket accepts), a watchdog, reload by SIGHUP."""
    return f"""# written by `bridged service install` ({__version__}); remove with
# `bridged service uninstall`
[Unit]
Description=bridged daemon: cluster services on local ports, cluster traffic to your laptop
Documentation=https://pypi.org/project/bridged/

[Service]
Type=notify
NotifyAccess=main
ExecStart={python} -m bridged daemon
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2
# the daemon pings every 15 s; a hung one is restarted
WatchdogSec=30
# on SIGTERM it leaves its intercepts (the relay restores Services before answering)
TimeoutStopSec=20
Environment=PYTHONUNBUFFERED=1

[Install]
WantedBy=default.target
"""


def unit_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user" / UNIT


def _systemd() -> str:
    """``systemctl``, if this machine runs systemd; else a clear error."""
    systemctl = shutil.which("systemctl")
    if systemctl is None or not Path("/run/systemd/system").is_dir():
        raise BridgedError(
            "systemd is not running here (macOS, a container, WSL without systemd)",
            hint="nothing to install: bridged starts its daemon in the background by itself "
                 "whenever a command needs it")
    return systemctl


def _systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([_systemd(), "--user", *args], capture_output=True, text=True,
                          timeout=60)
    if done.returncode not in (0, 3):  # 3: is-active's "inactive"
        raise BridgedError(f"systemctl --user {' '.join(args)}: "
                           f"{(done.stderr or done.stdout).strip() or done.returncode}")
    return done


def register(app: typer.Typer) -> None:
    service = typer.Typer(help="The daemon as a systemd user service.", no_args_is_help=True)
    app.add_typer(service, name="service")

    @service.command("install")
    @handles_errors
    def install(json_out: JsonOpt = False) -> None:
        """Write the user unit for this installation, enable it and start it."""
        _systemd()
        path = unit_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(unit_text())
        _systemctl("daemon-reload")
        _systemctl("enable", "--now", UNIT)
        emit({"unit": str(path), "enabled": True, "active": True}, json_out,
             lambda r: typer.echo(f"installed {r['unit']}; the daemon runs under systemd "
                                  "(bridged logs shows its log)"))

    @service.command("uninstall")
    @handles_errors
    def uninstall(json_out: JsonOpt = False) -> None:
        """Stop and disable the unit (the daemon leaves its intercepts) and remove it."""
        _systemd()
        path = unit_path()
        if path.exists():
            _systemctl("disable", "--now", UNIT)
            path.unlink()
            _systemctl("daemon-reload")
        emit({"unit": str(path), "removed": True}, json_out,
             lambda r: typer.echo(f"removed {r['unit']}"))

    @service.command("status")
    @handles_errors
    def status(json_out: JsonOpt = False) -> None:
        """Whether the unit is installed, enabled and running."""
        path = unit_path()
        result: dict[str, Any] = {"unit": str(path), "installed": path.exists(),
                                  "systemd": True, "enabled": False, "active": False}
        try:
            _systemd()
        except BridgedError:
            result["systemd"] = False
        if result["systemd"] and result["installed"]:
            result["enabled"] = _systemctl("is-enabled", UNIT).stdout.strip() == "enabled"
            result["active"] = _systemctl("is-active", UNIT).stdout.strip() == "active"
        emit(result, json_out, lambda r: typer.echo(
            "systemd is not running here: the daemon is started by the CLI when needed"
            if not r["systemd"] else
            f"{r['unit']}: " + ("not installed (bridged service install)" if not r["installed"]
                                else f"{'enabled' if r['enabled'] else 'disabled'}, "
                                     f"{'running' if r['active'] else 'stopped'}")))

    @app.command()
    @handles_errors
    def logs(
        lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines.")] = 50,
        follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep showing new ones.")]
            = False,
    ) -> None:
        """The daemon's recent log: from the journal when systemd runs it, else its file."""
        if lines < 1:
            raise ConfigError(f"bad --lines {lines}: expected a number above 0")
        if unit_path().exists() and shutil.which("journalctl"):
            cmd = ["journalctl", "--user", "-u", UNIT, "-n", str(lines), "--no-pager",
                   "-o", "cat"] + (["-f"] if follow else [])
            raise typer.Exit(subprocess.call(cmd))
        path = paths.daemon_log()
        if not path.exists():
            raise BridgedError(f"no daemon log at {path} yet",
                               hint="the daemon writes it once a command has started it")
        with path.open("rb") as f:
            tail = f.read().splitlines()[-lines:]
            for line in tail:
                typer.echo(line.decode(errors="replace"))
            while follow:
                chunk = f.readline()
                if chunk:
                    typer.echo(chunk.decode(errors="replace").rstrip("\n"))
                else:
                    import time

                    time.sleep(0.3)

    @app.command()
    @handles_errors
    def version(json_out: JsonOpt = False) -> None:
        """This bridged's version, the running daemon's and its relays'."""
        result: dict[str, Any] = {"cli": __version__, "daemon": None, "relays": {}}
        client = ControlClient(paths.control_socket())
        if client.is_running():
            status = client.get("status")
            result["daemon"] = status["daemon"]["version"]
            result["relays"] = {b["name"]: b.get("relay_version") for b in status["bridges"]}
        if json_out:
            typer.echo(json.dumps(result, sort_keys=True))
            return
        typer.echo(__version__)
        if result["daemon"]:
            typer.echo(f"daemon {result['daemon']}")
        for name, relay in result["relays"].items():
            typer.echo(f"relay {relay or 'not connected'} (bridge {name})")
