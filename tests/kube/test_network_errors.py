"""Expected network failures read well (issue 10, point 6): one line for the user, one line in
the daemon's log, never an internal error with a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridged.control.client import ControlClient
from bridged.localrun import DaemonProcess

from ..helpers import Daemon, assert_clean_log, free_port
from .kubeconfig import Context, Credentials, write_kubeconfig


async def test_an_api_server_that_cannot_be_reached_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nobody = free_port()  # on loopback, and nothing listens there
    user = Credentials(name="dev", token="t0ken")
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(
        tmp_path / "kubeconfig", f"https://127.0.0.1:{nobody}", None,
        [Context("gone", user, "team-a")])))
    process = await DaemonProcess(tmp_path / "laptop").start()
    daemon = Daemon(process, ControlClient(process.socket))
    try:
        result = await daemon.acli("connect")
        assert result.returncode == 1
        # (progress lines, "… step", come first when the attempt takes a while)
        lines = [line for line in result.stderr.strip().splitlines()
                 if not line.startswith("… ")]
        assert len(lines) == 1 and lines[0].startswith("bridged: cannot reach the Kubernetes "
                                                       "API server"), result.stderr
        assert "internal error" not in result.stderr
    finally:
        await process.stop()
    assert_clean_log(process.log_path)
    assert "Traceback" not in process.log_path.read_text()
