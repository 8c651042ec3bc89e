"""``bridged run``'s bad input with a real daemon and relay (no cluster): one line, non-zero
exit, and no command started. What it runs with a workload: tests/kube/test_run_on_kube.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..helpers import Daemon


def _run(daemon: Daemon, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridged", "run", *args], cwd=cwd,
                          env=daemon.process.env, capture_output=True, text=True, timeout=120)


def _one_line(result: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("bridged: "), \
        result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr + result.stdout


def _marker_command(marker: Path) -> list[str]:
    return [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('ran')"]


async def test_no_command_is_a_usage_error(daemon: Daemon, tmp_path: Path) -> None:
    _one_line(_run(daemon, tmp_path, "--from", "deploy/web"), 2, "no command")
    _one_line(_run(daemon, tmp_path, "--from", "deploy/web", "--"), 2, "no command")


async def test_without_a_workload_nothing_runs(daemon: Daemon, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    _one_line(_run(daemon, tmp_path, "--", *_marker_command(marker)), 2, "no bridged.yaml")
    (tmp_path / "bridged.yaml").write_text("expose:\n  - redis\n")
    _one_line(_run(daemon, tmp_path, "--", *_marker_command(marker)), 2, "names no workload")
    assert not marker.exists()


async def test_a_bridge_without_a_cluster_has_no_workload(bridge: Daemon, tmp_path: Path
                                                          ) -> None:
    marker = tmp_path / "ran"
    result = _run(bridge, tmp_path, "--from", "deploy/web", "--", *_marker_command(marker))
    _one_line(result, 2, "is not a kube bridge")
    assert not marker.exists()
