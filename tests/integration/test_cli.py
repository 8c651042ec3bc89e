"""The CLI as a user meets it: real ``bridged`` processes, one-line errors, exit codes, --json."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from bridged.localrun import RelayProcess

from ..helpers import Daemon, free_port


def _one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bridged: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


def _bridged(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridged", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_status_without_a_daemon() -> None:
    _one_line_error(_bridged("status"), 1, "daemon is not running")


def test_status_without_a_daemon_json() -> None:
    result = _bridged("status", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"]["code"] == "daemon-not-running"


@pytest.mark.parametrize("url, needle", [
    ("foo://relay:22", "expected tcp://HOST:PORT"),
    ("tcp://relay", "tcp:// needs a port"),
    ("tcp://relay:99999", "bad relay address"),
    ("ws://user:pw@relay/ssh", "no credentials"),
])
def test_connect_bad_address(url: str, needle: str) -> None:
    _one_line_error(_bridged("connect", url, "--no-start"), 2, needle)


def test_expose_bad_address(daemon: Daemon) -> None:
    _one_line_error(daemon.cli("expose", "Bad Address!"), 2, "expected HOST:PORT")


async def test_expose_a_service_name_without_a_kube_bridge(bridge: Daemon) -> None:
    _one_line_error(bridge.cli("expose", "redis"), 2, "Service names need a bridge")


async def test_connect_unreachable_relay(daemon: Daemon) -> None:
    result = daemon.cli("connect", f"tcp://127.0.0.1:{free_port()}")
    _one_line_error(result, 1, "cannot reach the relay")


async def test_connect_with_an_unauthorized_key_is_refused(
    relay: RelayProcess, daemon: Daemon
) -> None:
    result = daemon.cli("connect", relay.url)  # the key was never authorized
    _one_line_error(result, 1, "refused this machine's key", "SHA256:")
    assert (await daemon.status())["bridges"] == []


async def test_changed_relay_host_key_is_refused(
    relay: RelayProcess, daemon: Daemon, tmp_path: Path
) -> None:
    relay.authorize(await daemon.public_key())
    assert daemon.cli("connect", relay.url).returncode == 0
    assert daemon.cli("disconnect").returncode == 0
    await relay.stop()
    # an impostor on the same address, with a key of its own
    impostor = RelayProcess(tmp_path / "impostor", ssh_port=relay.ssh_port)
    impostor.authorize(await daemon.public_key())
    async with impostor:
        result = daemon.cli("connect", relay.url)
        _one_line_error(result, 1, "not the key pinned on first contact", "known_relays.json")
        assert (await daemon.status())["bridges"] == []


async def test_expose_on_a_port_in_use(bridge: Daemon, echo_server: int) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = bridge.cli("expose", f"127.0.0.1:{echo_server}", "--local-port", str(port))
    _one_line_error(result, 1, f"127.0.0.1:{port} is already in use")


async def test_unknown_forward_and_intercept(bridge: Daemon) -> None:
    _one_line_error(bridge.cli("unexpose", "nope"), 1, "no forward named 'nope'")
    _one_line_error(bridge.cli("leave", "nope"), 1, "no intercept named 'nope'")


async def test_duplicate_exclusive_intercept_is_refused(
    relay: RelayProcess, bridge: Daemon, make_daemon: Callable[[str], Awaitable[Daemon]],
    echo_server: int,
) -> None:
    port = free_port()
    first = bridge.cli("intercept", "--relay-port", str(port), "--port",
                       str(echo_server), "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["state"] == "active"
    other = await make_daemon("alice")
    relay.authorize(await other.public_key())
    assert other.cli("connect", relay.url).returncode == 0
    result = other.cli("intercept", "--relay-port", str(port), "--port", str(echo_server))
    _one_line_error(result, 1, f"port {port} is already intercepted", "--overwrite")


async def test_commands_start_the_daemon_when_needed(
    relay: RelayProcess, tmp_path: Path, echo_server: int
) -> None:
    from ..helpers import DaemonProcess

    env = DaemonProcess(tmp_path / "auto").env  # its folders, but no daemon started yet
    result = _bridged("connect", relay.url, "--json", env=env)
    assert result.returncode == 1  # not authorized yet, but the daemon now runs
    status = json.loads(_bridged("status", "--json", env=env).stdout)
    pid = status["daemon"]["pid"]
    try:
        relay.authorize(status["daemon"]["client_key"])
        connected = _bridged("connect", relay.url, "--json", env=env)
        assert connected.returncode == 0, connected.stderr
        assert json.loads(connected.stdout)["state"] == "connected"
        exposed = _bridged("expose", f"127.0.0.1:{echo_server}", "--json", env=env)
        assert exposed.returncode == 0, exposed.stderr
        table = _bridged("status", env=env)
        assert "forwards" in table.stdout and "connected" in table.stdout
    finally:
        import os
        import signal

        os.kill(pid, signal.SIGTERM)
        # wait for it to be gone: a daemon must not outlive its test
        for _ in range(200):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"daemon {pid} did not exit after SIGTERM")


def test_demo_exits_zero() -> None:
    result = _bridged("demo", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ok"] is True
    assert {s["step"] for s in report["steps"]} >= {"connect", "expose", "intercept", "leave",
                                                    "by header", "HTTP/2"}


async def test_a_relay_whose_key_changes_while_connected_is_refused_on_reconnect(
    relay: RelayProcess, bridge: Daemon, tmp_path: Path
) -> None:
    await relay.stop()
    impostor = RelayProcess(tmp_path / "impostor", ssh_port=relay.ssh_port)
    impostor.authorize(await bridge.public_key())
    async with impostor:
        async def failed() -> dict[str, object] | None:
            b = (await bridge.status())["bridges"][0]
            return b if b["state"] == "failed" else None

        from ..helpers import eventually

        bridge_status = await eventually(failed, what="the bridge to refuse the new key")
        assert "not the key pinned on first contact" in str(bridge_status["last_error"])
        # a forward through a failed bridge fails at once, saying why
        result = bridge.cli("expose", "127.0.0.1:9", "--json")
        assert result.returncode == 0  # the forward exists; its connections fail
