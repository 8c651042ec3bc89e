"""bridged.yaml end to end: `bridged up --wait` brings everything up (the lines VS Code's
problem matcher waits for), `bridged down` leaves nothing behind."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from bridged.cli.project import tasks
from bridged.redirect.takeover import ANNOTATION

from ..helpers import Daemon
from .apiserver import KubeApiServer
from .test_intercept_on_kube import (  # noqa: F401  (fixtures)
    ALICE,
    NS,
    _comparable,
    _requests,
    alice,
    cluster,
    orders,
)

PROJECT = """\
intercept:
  service: orders
  port: {port}
  servicePort: http
  headers:
    x-dev: alice
  via: takeover
expose:
  - orders:9090
env:
  workload: deploy/orders
  file: .env.bridged
"""


async def _bridged(daemon: Daemon, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    import asyncio

    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bridged", *args], cwd=cwd,
        env=daemon.process.env, capture_output=True, text=True, timeout=120)


def _matcher() -> dict[str, Any]:
    up = tasks(["bridged"])[0]
    return up["problemMatcher"]  # type: ignore[no-any-return]


async def test_up_then_down_round_trip(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],  # noqa: F811
    tmp_path: Path,
) -> None:
    a, port = alice
    before = cluster.get("services", NS, "orders")
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "bridged.yaml").write_text(PROJECT.format(port=port))

    result = await _bridged(a, repo / "src", "up", "--wait")  # found in the parent
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    matcher = _matcher()["background"]
    assert re.search(matcher["beginsPattern"], lines[0])
    assert re.search(matcher["endsPattern"], lines[-1])
    assert lines[-1].startswith("bridged up: ready — orders:80 → 127.0.0.1:")
    status = await a.status()
    assert [i["state"] for i in status["intercepts"]] == ["active"]
    assert [(f["service"], f["remote_port"]) for f in status["forwards"]] == [("orders", 9090)]
    env = (repo / ".env.bridged").read_text()
    assert "ORDERS_SERVICE_PORT_ADMIN=" in env or "ORDERS_SERVICE_HOST=" in env
    url = f"http://{orders['spec']['clusterIP']}/"
    assert await _requests(url, [ALICE]) == ["alice"]

    again = await _bridged(a, repo, "up", "--json")  # idempotent
    assert again.returncode == 0, again.stderr
    assert len((await a.status())["intercepts"]) == 1

    down = await _bridged(a, repo, "down")
    assert down.returncode == 0, down.stderr
    assert "Service orders restored" in down.stdout
    assert _comparable(cluster.get("services", NS, "orders")) == _comparable(before)
    after = await a.status()
    assert after["bridges"] == [] and after["forwards"] == [] and after["intercepts"] == []
    assert not (repo / ".env.bridged").exists()
    assert sorted(p.name for p in repo.iterdir()) == ["bridged.yaml", "src"]
    saved = json.loads((a.process.home / "state" / "bridged" / "state.json").read_text())
    assert saved["bridges"] == [] and saved["up"] is None
    nothing = await _bridged(a, repo, "down")
    assert nothing.returncode == 2 and "nothing is up" in nothing.stderr


async def test_a_mistake_in_the_file_is_reported_where_vs_code_shows_it(
    cluster: KubeApiServer, alice: tuple[Daemon, int], tmp_path: Path,  # noqa: F811
) -> None:
    a, _ = alice
    (tmp_path / "bridged.yaml").write_text(PROJECT.format(port="eighty"))
    result = await _bridged(a, tmp_path, "up", "--wait")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    matcher = _matcher()
    assert re.search(matcher["background"]["endsPattern"], result.stdout.splitlines()[-1])
    problem = next(line for line in result.stderr.splitlines()
                   if re.search(matcher["pattern"]["regexp"], line))
    m = re.search(matcher["pattern"]["regexp"], problem)
    assert m is not None
    assert (m[1], m[2]) == (str(tmp_path / "bridged.yaml"), "3")
    assert "intercept.port: expected a whole number" in m[3]
    assert not cluster.get("services", NS, "orders") or ANNOTATION not in str(
        cluster.get("services", NS, "orders"))


async def test_init_from_the_cluster_then_up_and_down(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],  # noqa: F811
    tmp_path: Path,
) -> None:
    a, port = alice
    asked = await _bridged(a, tmp_path, "init", "--port", str(port))
    assert asked.returncode == 2, asked.stderr
    assert "which Service? give --service NAME (this namespace has: orders)" in asked.stderr
    made = await _bridged(a, tmp_path, "init", "--service", "orders", "--port", str(port))
    assert made.returncode == 0, made.stderr
    text = (tmp_path / "bridged.yaml").read_text()
    assert "context: admin" in text and f"namespace: {NS}" in text
    assert "servicePort: http" in text  # orders has two ports: the first is proposed
    up = await _bridged(a, tmp_path, "up", "--wait")
    assert up.returncode == 0, up.stdout + up.stderr
    assert up.stdout.splitlines()[-1].startswith("bridged up: ready — orders:80")
    down = await _bridged(a, tmp_path, "down")
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "bridged.yaml").read_text() == text  # the project file stays
    assert not (tmp_path / ".env.bridged").exists()
    assert (await a.status())["intercepts"] == []
