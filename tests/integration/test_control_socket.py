"""The control socket: private to its user, one daemon per socket, stale sockets replaced."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest

from bridged.localrun import DaemonProcess, ProcessFailed

from ..helpers import Daemon


def test_socket_is_0600_in_a_0700_folder(daemon: Daemon) -> None:
    path = daemon.process.socket
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


async def test_a_second_daemon_on_the_same_socket_refuses_to_start(daemon: Daemon) -> None:
    second = DaemonProcess(daemon.process.home, log_path=daemon.process.home / "second.log")
    with pytest.raises(ProcessFailed, match="already running"):
        await second.start()
    assert (await daemon.status())["daemon"]["pid"] == daemon.process.pid  # still serving


async def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    home = tmp_path / "laptop"
    stale = DaemonProcess(home).socket
    stale.parent.mkdir(parents=True, mode=0o700)
    with socket.socket(socket.AF_UNIX) as s:  # bound, never listening: a crashed daemon's
        s.bind(str(stale))
    async with DaemonProcess(home) as process:
        from bridged.control.client import ControlClient

        assert ControlClient(process.socket).get("status")["daemon"]["pid"] == process.pid
