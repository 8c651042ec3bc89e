"""bridged as an installed tool: the systemd unit, the daemon's log, versions."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridged import __version__
from bridged.cli.service import unit_text
from bridged.localrun import RelayProcess

from ..helpers import Daemon


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridged", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_unit_runs_this_installation_as_a_notify_service() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(unit_text("/opt/venv/bin/python"))
    service = unit["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["ExecStart"] == "/opt/venv/bin/python -m bridged daemon"
    assert service["Restart"] == "on-failure" and service["ExecReload"].endswith("$MAINPID")
    assert int(service["WatchdogSec"]) > 0
    assert unit["Install"]["WantedBy"] == "default.target"


@pytest.mark.skipif(Path("/run/systemd/system").is_dir(), reason="systemd runs here")
def test_without_systemd_install_says_what_happens_instead(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    result = _cli(env, "service", "install")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "systemd is not running here" in result.stderr
    assert "starts its daemon in the background by itself" in result.stderr
    assert not (tmp_path / "config").exists()  # nothing half-installed
    status = json.loads(_cli(env, "service", "status", "--json").stdout)
    assert status == {"unit": str(tmp_path / "config/systemd/user/bridged.service"),
                      "installed": False, "systemd": False, "enabled": False, "active": False}


def test_logs_shows_the_last_lines_of_the_daemons_log(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    missing = _cli(env, "logs")
    assert missing.returncode == 1 and "no daemon log at" in missing.stderr
    log = tmp_path / "state" / "bridged" / "daemon.log"
    log.write_text("".join(f"line {n}\n" for n in range(100)))
    shown = _cli(env, "logs", "-n", "3")
    assert shown.returncode == 0 and shown.stdout == "line 97\nline 98\nline 99\n"
    assert _cli(env, "logs", "-n", "0").returncode == 2


async def test_version_names_the_daemon_and_the_relay(relay: RelayProcess, bridge: Daemon
                                                      ) -> None:
    result = await bridge.acli("version", "--json")
    assert json.loads(result.stdout) == {"cli": __version__, "daemon": __version__,
                                         "relays": {"default": __version__}}
    human = await bridge.acli("version")
    assert human.stdout.splitlines() == [__version__, f"daemon {__version__}",
                                         f"relay {__version__} (bridge default)"]


def test_the_shipped_unit_file_is_the_same_service() -> None:
    shipped = configparser.ConfigParser(strict=False, interpolation=None)
    shipped.optionxform = str  # type: ignore[assignment,method-assign]
    shipped.read(Path(__file__).resolve().parents[2] / "systemd" / "bridged.service")
    made = configparser.ConfigParser(strict=False, interpolation=None)
    made.optionxform = str  # type: ignore[assignment,method-assign]
    made.read_string(unit_text())
    for section in ("Unit", "Service", "Install"):
        a, b = dict(shipped[section]), dict(made[section])
        a.pop("ExecStart", None), b.pop("ExecStart", None)
        assert a == b, section
    assert shipped["Service"]["ExecStart"].endswith("bridged daemon")
