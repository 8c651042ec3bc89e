"""``bridged daemon`` and ``bridged relay`` parse their options without typer (argparse, from the
option tables in :mod:`bridged.cli.servers`): every option keeps its name, type and default, a
bad one is a one-line error with exit code 2, and the process never imports typer or pydantic."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bridged.cli import servers

ROOT = Path(__file__).resolve().parents[2]


def _bridged(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridged", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", sorted(servers.COMMANDS))
def test_every_option_is_a_parameter_of_its_command(command: str) -> None:
    params = inspect.signature(servers.COMMANDS[command]).parameters
    assert sorted(params) == sorted(o.name for o in servers.OPTIONS[command])


@pytest.mark.parametrize("command", sorted(servers.COMMANDS))
def test_defaults_and_help(command: str) -> None:
    args = vars(servers.parser(command).parse_args([]))
    assert args == {o.name: o.default for o in servers.OPTIONS[command]}
    shown = _bridged(command, "--help")
    assert shown.returncode == 0, shown.stderr
    for opt in servers.OPTIONS[command]:
        flag = "--" + opt.name.replace("_", "-")
        assert (flag in shown.stdout) != opt.hidden, flag


def test_relay_options_are_typed() -> None:
    args = servers.parser("relay").parse_args([
        "--host-key=/k", "--lease-seconds", "2.5", "--max-streams", "7", "--deny", "a",
        "--deny", "b", "--redirect-services", "--allow-loopback", "--no-allow-loopback"])
    assert args.host_key == Path("/k") and args.lease_seconds == 2.5 and args.max_streams == 7
    assert args.deny == ["a", "b"] and args.allow is None
    assert args.redirect_services is True and args.allow_loopback is False


@pytest.mark.parametrize(("argv", "needle"), [
    (("daemon", "--bogus"), "--bogus"),
    (("daemon", "--capture-records", "x"), "--capture-records"),
    (("daemon", "--capture-records"), "--capture-records"),
    (("relay", "extra"), "extra"),
    (("relay", "--redirect"), "--redirect"),  # no abbreviations, as click
    (("relay", "--lease-seconds", "soon"), "--lease-seconds"),
])
def test_usage_error_is_one_line_exit_2(argv: tuple[str, ...], needle: str) -> None:
    result = _bridged(*argv)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bridged: ") and needle in lines[0], lines
    assert f"see bridged {argv[0]} --help" in lines[0]


def test_bad_value_found_by_the_command_is_one_line_exit_2() -> None:
    result = _bridged("daemon", "--capture-records", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == ("bridged: bad --capture-records 0: expected a whole "
                                     "number above 0")


def test_whole_cli_lists_and_forwards_the_server_commands() -> None:
    listed = _bridged("--help").stdout
    assert "daemon " in listed and "relay " in listed and "demo " in listed
    from typer.testing import CliRunner

    from bridged.cli import app

    result = CliRunner().invoke(app, ["relay", "--bogus"])
    assert result.exit_code == 2


_PROBE = """
import json, sys
sys.argv = ["bridged", sys.argv[1], "--help"]
import bridged.cli
try:
    bridged.cli.main()
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in
                        ("typer", "click", "pydantic", "pydantic_core", "rich"))))
"""


@pytest.mark.parametrize("command", sorted(servers.COMMANDS))
def test_server_commands_do_not_import_typer(command: str) -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE, command], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_shipped_command_lines_parse() -> None:
    """The Deployment's args and the image's default CMD are relay command lines."""
    import re

    from bridged.kube import manifests

    (container,) = manifests.deployment("ns")["spec"]["template"]["spec"]["containers"]
    args = servers.parser("relay").parse_args(container["args"])
    assert args.redirect_services is True and args.host_key_secret
    cmd = re.search(r"CMD \[(.*?)\]", (ROOT / "Dockerfile").read_text(), re.S)
    assert cmd is not None
    default = json.loads("[" + cmd.group(1).replace("\\\n", "") + "]")
    assert servers.parser("relay").parse_args(default).http_listen == "0.0.0.0:8080"
