"""Dead peers are noticed and the relay heals itself: keepalives, leases, key changes, tokens.

A lapsed intercept is either *reserved* (a resume window: nobody else may take it without
--overwrite, its owner gets it back) or *released* (anyone may take it); the tests tell the two
apart by what differs: whether the relay still holds it (its ``stats``) and listens on its port,
and who may claim it. Each developer's local service says who it is, so a test sees whose
laptop got the traffic."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

from bridged.control.client import ControlClient
from bridged.localrun import DaemonProcess, RelayProcess

from ..helpers import Daemon, NamedService, ask, eventually, free_port, port_closed, relay_stats


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


async def _joined(make_daemon: Callable[[str], Awaitable[Daemon]], relay: RelayProcess,
                  name: str) -> Daemon:
    """Another developer's daemon, authorized on ``relay`` and connected to it."""
    daemon = await make_daemon(name)
    relay.authorize(await daemon.public_key())
    await daemon.call("POST", "bridges", {"url": relay.url})
    return daemon


async def _intercept(daemon: Daemon, port: int, local: NamedService, *extra: str
                     ) -> subprocess.CompletedProcess[str]:
    return await daemon.acli("intercept", "--relay-port", str(port), "--port", str(local.port),
                             *extra)


async def _intercept_state(daemon: Daemon) -> str:
    (intercept,) = (await daemon.status())["intercepts"]
    return str(intercept["state"])


async def _lost_it(daemon: Daemon) -> bool:
    return await _intercept_state(daemon) != "active"


async def _held_but_unrouted(port: int) -> bool:
    """The relay still listens on ``port`` (the intercept is held) but closes each connection
    at once, unanswered (it routes nothing). False while a connection is still routed (to a
    frozen laptop: no answer comes) or refused (nothing listens: the intercept is gone)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return False
    except ConnectionResetError:  # listened, then reset before the connect was seen through
        return True
    try:
        writer.write(b"ping")
        return await asyncio.wait_for(reader.read(), 2) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        writer.close()


#: leases short enough to lapse while a laptop sleeps in a test; keepalives long enough that
#: the frozen daemon's SSH connection stays up (the lease, not the connection, must lapse)
_SHORT_LEASE = ("--lease-seconds", "1.5", "--keepalive-seconds", "30")


async def test_a_frozen_daemons_intercept_stays_reserved_for_it_alone(
    tmp_path: Path, make_daemon: Callable[[str], Awaitable[Daemon]],
    named_service: Callable[[str], Awaitable[NamedService]],
) -> None:
    async with RelayProcess(tmp_path / "relay", extra_args=_SHORT_LEASE) as relay, \
            relay_stats(relay) as stats:
        alice = await _joined(make_daemon, relay, "alice")
        bob = await _joined(make_daemon, relay, "bob")
        alice_svc, bob_svc = await named_service("alice"), await named_service("bob")
        port = free_port()
        made = await _intercept(alice, port, alice_svc)
        assert made.returncode == 0, made.stderr
        assert await ask(port) == b"alice:ping"
        os.kill(alice.process.pid, signal.SIGSTOP)  # a laptop asleep: its SSH connection stays
        try:
            await eventually(lambda: _held_but_unrouted(port), within=10,
                             what="the relay to stop routing the unrenewed intercept")
            # reserved, not released: the relay still holds it and listens on its port...
            seen = await stats()
            assert seen["other_intercepts"] == 1 and str(port) in seen["ports"], seen
            # ...and another developer cannot just take it
            refused = await _intercept(bob, port, bob_svc)
            assert refused.returncode == 1
            assert "reserved for a developer who disconnected" in refused.stderr
            assert "--overwrite" in refused.stderr
        finally:
            os.kill(alice.process.pid, signal.SIGCONT)

        # its owner wakes up and renews: routed to her again, without asking anyone
        async def routed_to_alice() -> bool:
            try:
                return await ask(port) == b"alice:ping"
            except TimeoutError:
                return False

        await eventually(routed_to_alice, within=15, what="the intercept to be routed again")
        assert await _intercept_state(alice) == "active"
        assert bob_svc.received == []

        # with --overwrite another developer takes it over: the traffic is his, none is hers
        taken = await _intercept(bob, port, bob_svc, "--overwrite", "--json")
        assert taken.returncode == 0, taken.stderr
        assert json.loads(taken.stdout)["state"] == "active"
        for n in range(3):
            assert await ask(port, b"taken-%d" % n) == b"bob:taken-%d" % n
        await eventually(lambda: _lost_it(alice), within=10,
                         what="alice's daemon to learn it lost the intercept")
        # her daemon's retries do not take it back
        assert await ask(port, b"taken-3") == b"bob:taken-3"
        assert not [r for r in alice_svc.received if r.startswith(b"taken")]
        assert (await stats())["other_intercepts"] == 1  # bob's; alice's is gone


async def test_without_a_resume_window_a_lapsed_intercept_is_released_to_anyone(
    tmp_path: Path, make_daemon: Callable[[str], Awaitable[Daemon]],
    named_service: Callable[[str], Awaitable[NamedService]],
) -> None:
    relay_args = (*_SHORT_LEASE, "--resume-seconds", "0")
    async with RelayProcess(tmp_path / "relay", extra_args=relay_args) as relay, \
            relay_stats(relay) as stats:
        alice = await _joined(make_daemon, relay, "alice")
        bob = await _joined(make_daemon, relay, "bob")
        alice_svc, bob_svc = await named_service("alice"), await named_service("bob")
        port = free_port()
        made = await _intercept(alice, port, alice_svc)
        assert made.returncode == 0, made.stderr
        assert await ask(port) == b"alice:ping"
        os.kill(alice.process.pid, signal.SIGSTOP)
        try:
            # released, not reserved: the relay forgets it and stops listening on its port
            await eventually(lambda: port_closed(port), within=10,
                             what="the relay to release the unrenewed intercept")
            seen = await stats()
            assert seen["other_intercepts"] == 0 and str(port) not in seen["ports"], seen
            # anyone may take the port, no --overwrite needed
            taken = await _intercept(bob, port, bob_svc, "--json")
            assert taken.returncode == 0, taken.stderr
            assert json.loads(taken.stdout)["state"] == "active"
            assert await ask(port, b"taken-0") == b"bob:taken-0"
        finally:
            os.kill(alice.process.pid, signal.SIGCONT)
        await eventually(lambda: _lost_it(alice), within=10,
                         what="alice's daemon to learn it lost the intercept")
        # her daemon's retries do not take it back
        assert await ask(port, b"taken-1") == b"bob:taken-1"
        assert not [r for r in alice_svc.received if r.startswith(b"taken")]


async def test_a_gone_developers_port_is_reserved_until_overwrite(
    relay: RelayProcess, bridge: Daemon, make_daemon: Callable[[str], Awaitable[Daemon]],
    named_service: Callable[[str], Awaitable[NamedService]],
) -> None:
    gone_svc, bob_svc = await named_service("gone"), await named_service("bob")
    port = free_port()
    first = await _intercept(bridge, port, gone_svc)
    assert first.returncode == 0, first.stderr
    assert await ask(port) == b"gone:ping"
    bridge.process.kill()  # the laptop vanishes: its intercept stays reserved, unrouted
    bob = await _joined(make_daemon, relay, "bob")
    async with relay_stats(relay) as stats:
        async def reserved() -> bool:
            r = await _intercept(bob, port, bob_svc)
            return r.returncode == 1 and "reserved for a developer who disconnected" in r.stderr

        await eventually(reserved, within=15, what="the relay to notice the vanished laptop")
        assert (await stats())["other_intercepts"] == 1
        assert await _held_but_unrouted(port)
        taken = await _intercept(bob, port, bob_svc, "--overwrite", "--json")
        assert taken.returncode == 0, taken.stderr
        assert json.loads(taken.stdout)["state"] == "active"
        # the reservation was displaced, not kept beside bob's holding
        assert (await stats())["other_intercepts"] == 1
        for n in range(3):
            assert await ask(port, b"taken-%d" % n) == b"bob:taken-%d" % n
        assert gone_svc.received == [b"ping"]


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
