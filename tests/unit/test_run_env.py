"""``bridged run``'s pure parts: the child's environment (laptop, workload, proxies), NO_PROXY,
the exit code of a child a signal ended, and whether a bridged.yaml is up."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from bridged.cli.run import child_env, exit_code, merge_no_proxy, project_bridge, proxy_vars
from bridged.project import Project

ROOT = Path("/tmp/bridged-root-x")


def test_the_workload_wins_over_the_laptop_but_path_and_home_stay() -> None:
    laptop = {"PATH": "/usr/bin", "HOME": "/home/me", "LANG": "C.UTF-8", "LOG_LEVEL": "info"}
    workload = {"LOG_LEVEL": "debug", "PATH": "/app/bin", "HOME": "/nonexistent",
                "DB_URL": "postgres://db:5432"}
    env = child_env(laptop, workload, {}, ROOT)
    assert env == {"PATH": "/usr/bin", "HOME": "/home/me", "LANG": "C.UTF-8",
                   "LOG_LEVEL": "debug", "DB_URL": "postgres://db:5432",
                   "BRIDGED_ROOT": str(ROOT)}


def test_a_workload_path_is_dropped_when_the_laptop_has_none() -> None:
    assert "PATH" not in child_env({}, {"PATH": "/app/bin"}, {}, ROOT)


def test_the_proxies_win_over_the_workload_and_the_laptop() -> None:
    laptop = {"HTTP_PROXY": "http://corp:3128", "no_proxy": "corp.example"}
    workload = {"https_proxy": "http://egress:3128", "BRIDGED_ROOT": "/elsewhere"}
    proxies = proxy_vars("127.0.0.1:4001", "127.0.0.1:4000", laptop)
    env = child_env(laptop, workload, proxies, ROOT)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "grpc_proxy"):
        assert env[name] == "http://127.0.0.1:4001", name
    assert env["ALL_PROXY"] == env["all_proxy"] == "socks5h://127.0.0.1:4000"
    assert env["NO_PROXY"] == env["no_proxy"] == "localhost,127.0.0.1,::1,corp.example"
    assert env["BRIDGED_ROOT"] == str(ROOT)


@pytest.mark.parametrize("laptop, expected", [
    ({}, "localhost,127.0.0.1,::1"),
    ({"NO_PROXY": "a.example, b.example", "no_proxy": "b.example,c.example,"},
     "localhost,127.0.0.1,::1,a.example,b.example,c.example"),
    ({"no_proxy": "localhost,.internal"}, "localhost,127.0.0.1,::1,.internal"),
])
def test_no_proxy_keeps_loopback_and_what_the_user_had(laptop: dict[str, str],
                                                       expected: str) -> None:
    assert merge_no_proxy(laptop) == expected


def _status_of(code: int) -> int:
    """A real wait status: a child that exits with ``code`` (or dies of -code)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        if code < 0:
            os.kill(os.getpid(), -code)
        os._exit(code)
    return os.waitpid(pid, 0)[1]


@pytest.mark.parametrize("code, expected", [
    (0, 0), (7, 7), (255, 255),
    (-signal.SIGTERM, 128 + signal.SIGTERM), (-signal.SIGKILL, 137),
])
def test_exit_code_is_the_child_s_or_128_plus_the_signal(code: int, expected: int) -> None:
    assert exit_code(_status_of(code)) == expected


def _bridge(name: str, relay: str, state: str = "connected") -> dict[str, Any]:
    return {"name": name, "relay": relay, "carrier": relay.split("://")[0], "state": state}


INTERCEPT = {"service": "orders", "port": 8080}


@pytest.mark.parametrize("project, status, expected", [
    (Project(Path("/p"), env={"workload": "deploy/orders"}),
     {"bridges": [_bridge("b1", "kube://admin/team-a")], "intercepts": []}, "b1"),
    (Project(Path("/p"), env={"workload": "deploy/orders"}),
     {"bridges": [_bridge("t", "tcp://127.0.0.1:2222")], "intercepts": []}, None),
    (Project(Path("/p"), env={"workload": "deploy/orders"}),
     {"bridges": [_bridge("b1", "kube://admin/team-a", "connecting")], "intercepts": []},
     None),
    (Project(Path("/p"), namespace="team-b", env={"workload": "deploy/orders"}),
     {"bridges": [_bridge("a", "kube://admin/team-a"), _bridge("b", "kube://admin/team-b")],
      "intercepts": []}, "b"),
    (Project(Path("/p"), context="prod", env={"workload": "deploy/orders"}),
     {"bridges": [_bridge("a", "kube://admin/team-a")], "intercepts": []}, None),
    (Project(Path("/p"), intercept=INTERCEPT, env={"workload": "deploy/orders"}),
     {"bridges": [_bridge("a", "kube://admin/team-a")], "intercepts": []}, None),
    (Project(Path("/p"), intercept=INTERCEPT, env={"workload": "deploy/orders"}),
     {"bridges": [_bridge("a", "kube://admin/team-a"), _bridge("b", "kube://admin/team-a")],
      "intercepts": [{"bridge": "b", "service": "orders"}]}, "b"),
])
def test_a_project_is_up_when_its_bridge_and_intercept_are(
        project: Project, status: dict[str, Any], expected: str | None) -> None:
    assert project_bridge(project, status) == expected
