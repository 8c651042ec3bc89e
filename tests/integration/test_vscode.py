"""`bridged vscode init`: our tasks added, the developer's own entries kept, a launch
configuration wired; and JSON with comments read as VS Code writes it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bridged import jsonc
from bridged.project import load

TASKS = """{
    // my own tasks
    "version": "2.0.0",
    "tasks": [
        {"label": "build", "type": "shell", "command": "make", /* keep me */},
        {"label": "bridged: up", "type": "shell", "command": "old"},
    ],
}
"""
LAUNCH = """{
    "version": "0.2.0",
    "configurations": [
        {"name": "orders", "type": "debugpy", "request": "launch", "program": "app.py"},
        {"name": "tests", "type": "debugpy", "request": "launch", "module": "pytest"}
    ]
}
"""


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridged", *args], cwd=cwd,
                          env={**os.environ}, capture_output=True, text=True, timeout=60)


def test_init_merges_into_existing_files(tmp_path: Path) -> None:
    (tmp_path / "bridged.yaml").write_text(
        "intercept: {service: orders, port: 8080}\nenv: {workload: deploy/orders, "
        "file: .env.bridged}\n")
    vscode = tmp_path / ".vscode"
    vscode.mkdir()
    (vscode / "tasks.json").write_text(TASKS)
    (vscode / "launch.json").write_text(LAUNCH)
    for _ in range(2):  # twice: nothing doubles
        result = _cli(tmp_path, "vscode", "init", "--launch", "orders")
        assert result.returncode == 0, result.stderr
    tasks = jsonc.loads((vscode / "tasks.json").read_text())["tasks"]
    assert [t["label"] for t in tasks] == ["build", "bridged: up", "bridged: down"]
    assert tasks[0] == {"label": "build", "type": "shell", "command": "make"}
    up = tasks[1]
    assert up["isBackground"] is True and up["args"][-2:] == ["up", "--wait"]
    assert (vscode / "tasks.json.bak").read_text() == TASKS  # the commented original
    launch = json.loads((vscode / "launch.json").read_text())["configurations"]
    assert launch[0]["preLaunchTask"] == "bridged: up"
    assert launch[0]["postDebugTask"] == "bridged: down"
    assert launch[0]["envFile"] == "${workspaceFolder}/.env.bridged"
    assert "preLaunchTask" not in launch[1]  # the other configuration is left alone
    # the matcher's patterns are the lines bridged up prints
    matcher = up["problemMatcher"]
    assert re.search(matcher["background"]["beginsPattern"], "bridged up: applying /x")
    assert re.search(matcher["background"]["endsPattern"], "bridged up: ready — x")
    assert re.search(matcher["background"]["endsPattern"], "bridged up: failed — x")
    m = re.search(matcher["pattern"]["regexp"], "bridged: /repo/bridged.yaml:7: intercept.port: x")
    assert m is not None and m.groups() == ("/repo/bridged.yaml", "7", "intercept.port: x")


def test_init_without_launch_json_says_what_to_add(tmp_path: Path) -> None:
    (tmp_path / "bridged.yaml").write_text("expose: [redis]\n")
    result = _cli(tmp_path, "vscode", "init", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["launch"] is None and "preLaunchTask" in out["notes"][0]
    assert not (tmp_path / ".vscode" / "launch.json").exists()


def test_a_broken_tasks_file_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "bridged.yaml").write_text("expose: [redis]\n")
    (tmp_path / ".vscode").mkdir()
    (tmp_path / ".vscode" / "tasks.json").write_text('{"tasks": [')
    result = _cli(tmp_path, "vscode", "init")
    assert result.returncode == 2 and "is not valid JSON with comments" in result.stderr
    assert (tmp_path / ".vscode" / "tasks.json").read_text() == '{"tasks": ['


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1, // one\n "b": "//not a comment", /* x */ "c": [1, 2,],}',
         {"a": 1, "b": "//not a comment", "c": [1, 2]}),
        ('{"url": "http://x/*y*/"}', {"url": "http://x/*y*/"}),
        ('{"q": "say \\"hi\\" // there"}', {"q": 'say "hi" // there'}),
        ("[]", []),
    ],
)
def test_jsonc(text: str, expected: object) -> None:
    assert jsonc.loads(text) == expected


def test_init_writes_a_valid_starter(tmp_path: Path) -> None:
    # context and namespace given: nothing to ask a cluster (this test has none)
    result = _cli(tmp_path, "init", "--service", "orders", "--port", "8080", "--expose",
                  "redis", "--context", "dev", "--namespace", "team-a")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "bridged.yaml").read_text()
    assert "service: orders" in text and "- redis" in text
    assert {"context: dev", "namespace: team-a"} <= set(text.splitlines())
    assert (load(tmp_path / "bridged.yaml").context, load(tmp_path / "bridged.yaml").namespace
            ) == ("dev", "team-a")
    again = _cli(tmp_path, "init", "--service", "orders", "--port", "8080")
    assert again.returncode == 2 and "exists" in again.stderr
    schema = _cli(tmp_path, "schema")
    assert json.loads(schema.stdout)["title"] == "bridged.yaml"
