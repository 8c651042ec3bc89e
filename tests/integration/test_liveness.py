"""Dead peers are noticed and the relay heals itself: keepalives, leases, key changes, tokens."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from bridged.control.client import ControlClient
from bridged.localrun import DaemonProcess, RelayProcess

from ..helpers import Daemon, eventually, free_port, port_closed


async def test_a_frozen_relay_is_noticed_by_keepalives(tmp_path: Path) -> None:
    async with RelayProcess(tmp_path / "relay") as relay, \
            DaemonProcess(tmp_path / "laptop", extra_args=("--keepalive-seconds", "0.5")) as dp:
        daemon = Daemon(dp, ControlClient(dp.socket))
        relay.authorize(await daemon.public_key())
        await daemon.call("POST", "bridges", {"url": relay.url})
        os.kill(relay.pid, signal.SIGSTOP)  # no RST, no FIN: only keepalives can tell
        try:
            async def noticed() -> bool:
                return (await daemon.status())["bridges"][0]["state"] == "reconnecting"

            await eventually(noticed, within=15, what="keepalives to declare the relay dead")
        finally:
            os.kill(relay.pid, signal.SIGCONT)
        await eventually(
            lambda: _state_is(daemon, "connected"), within=30, what="the reconnection")


async def _state_is(daemon: Daemon, state: str) -> bool:
    return (await daemon.status())["bridges"][0]["state"] == state


async def test_a_frozen_daemon_loses_its_intercept_when_the_lease_runs_out(
    tmp_path: Path, echo_server: int
) -> None:
    relay_args = ("--lease-seconds", "1.5", "--keepalive-seconds", "30")
    async with RelayProcess(tmp_path / "relay", extra_args=relay_args) as relay, \
            DaemonProcess(tmp_path / "laptop") as dp:
        daemon = Daemon(dp, ControlClient(dp.socket))
        relay.authorize(await daemon.public_key())
        await daemon.call("POST", "bridges", {"url": relay.url})
        port = free_port()
        await daemon.call("POST", "intercepts", {"remote_port": port, "local_port": echo_server})
        assert not await port_closed(port)
        os.kill(dp.pid, signal.SIGSTOP)  # a laptop gone to sleep: the SSH connection stays up
        try:
            async def not_routed() -> bool:  # the port stays reserved, but routes nothing
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                except ConnectionRefusedError:
                    return True
                writer.write(b"ping")
                try:  # closed at once by the relay, not left hanging on a frozen laptop
                    data = await asyncio.wait_for(reader.read(4), 2)
                except ConnectionResetError:
                    data = b""
                except TimeoutError:
                    data = b"(still routed to the frozen laptop)"
                finally:
                    writer.close()
                return data == b""

            await eventually(not_routed, within=10,
                             what="the relay to stop routing the unrenewed intercept")
        finally:
            os.kill(dp.pid, signal.SIGCONT)

        async def routed_again() -> bool:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:  # until the lease is renewed the relay closes the connection at once
                writer.write(b"back")
                writer.write_eof()
                return await asyncio.wait_for(reader.read(), 5) == b"back"
            except OSError:
                return False
            finally:
                writer.close()

        # the daemon wakes up and renews; its reserved intercept is routed again
        await eventually(routed_again, within=15, what="the intercept to be routed again")
        assert (await daemon.status())["intercepts"][0]["state"] == "active"


async def test_keys_added_while_the_relay_runs_are_accepted(
    relay: RelayProcess, daemon: Daemon
) -> None:
    refused = daemon.cli("connect", relay.url)
    assert refused.returncode == 1
    relay.authorize(await daemon.public_key())  # no relay restart
    accepted = daemon.cli("connect", relay.url)
    assert accepted.returncode == 0, accepted.stderr


async def test_websocket_with_a_wrong_token_is_refused(
    relay: RelayProcess, daemon: Daemon, tmp_path: Path
) -> None:
    relay.authorize(await daemon.public_key())
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token")
    result = daemon.cli("connect", relay.ws_url, "--token-file", str(wrong))
    assert result.returncode == 1
    assert result.stderr.startswith("bridged: ") and len(result.stderr.splitlines()) == 1
    assert "refused the websocket: HTTP 401" in result.stderr
    assert "check --token" in result.stderr
