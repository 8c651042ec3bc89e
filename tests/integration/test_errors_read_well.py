"""Errors read well (issue 10, point 6): a command that reads or undoes state never starts a
daemon (a new one would answer with an empty state before restoring the saved one); it says in
one line how to bring the daemon back, and that the state comes back with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("args", [("status",), ("traffic",), ("services",),
                                  ("leave", "orders"), ("unexpose", "redis")])
def test_without_a_daemon_it_says_how_to_bring_it_back(args: tuple[str, ...],
                                                      tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path),
           "XDG_STATE_HOME": str(tmp_path / "state")}
    result = subprocess.run([sys.executable, "-m", "bridged", *args], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("bridged: the bridged daemon is not running")
    assert "'bridged daemon' or 'bridged service install' starts it" in lines[0]
    assert "restored when it does" in lines[0]
    assert not (tmp_path / "bridged" / "control.sock").exists()  # none was started
