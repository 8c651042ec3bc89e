"""bridged.yaml: found like .git, validated with the file, line and field of each mistake."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from bridged.errors import ConfigError
from bridged.project import find, load, schema, starter

GOOD = """\
context: dev
namespace: team-a
intercept:
  service: orders
  port: 8080
  servicePort: http
  headers:
    x-bridged-route: alice
  via: takeover
expose:
  - redis
  - postgres:5432
env:
  workload: deploy/orders
  file: .env.bridged
files:
  workload: deploy/orders
  dir: .bridged/files
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridged.yaml"
    path.write_text(text)
    return path


def test_a_good_file_loads_with_paths_beside_it(tmp_path: Path) -> None:
    project = load(_write(tmp_path, GOOD))
    assert (project.context, project.namespace) == ("dev", "team-a")
    assert project.intercept == {"service": "orders", "port": 8080, "servicePort": "http",
                                 "headers": {"x-bridged-route": "alice"}, "via": "takeover"}
    assert project.expose == ("redis", "postgres:5432")
    assert project.env == {"workload": "deploy/orders", "file": str(tmp_path / ".env.bridged")}
    assert project.files == {"workload": "deploy/orders", "dir": str(tmp_path / ".bridged/files")}


def test_found_in_a_parent_like_git(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    deep = tmp_path / "src" / "orders"
    deep.mkdir(parents=True)
    assert find(deep) == path
    with pytest.raises(ConfigError, match=r"no bridged\.yaml in"):
        find(tmp_path.parent / "elsewhere-that-is-not-there")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("  port: 8080", "  port: eighty"), ":5: intercept.port: expected a whole number"),
        (("  port: 8080", "  port: 70000"), ":5: intercept.port: 70000 is out of range"),
        (("  via: takeover", "  via: magic"), ":9: intercept.via: 'magic' is not one of auto"),
        (("  service: orders", "  service: Orders"), ":4: intercept.service: 'Orders' is not "
                                                     "valid here (expected a DNS name"),
        (("  service: orders\n", ""), ":3: intercept: 'service' is required"),
        (("namespace: team-a", "namespace: Team_A"), ":2: namespace: 'Team_A' is not valid"),
        (("  - redis", "  - 5"), ":11: expose[0]: expected text, got 5"),
        (("  workload: deploy/orders\n  file", "  workload: orders\n  file"),
         ":14: env.workload: 'orders' is not valid here (expected deploy/NAME"),
        (("context: dev", "contxt: dev"), ":1: (top level): unknown field 'contxt' (expected "
                                          "one of: context, env, expose, files, intercept, "
                                          "namespace)"),
        (("    x-bridged-route: alice", "    x-bridged-route: 5"),
         ":8: intercept.headers.x-bridged-route: expected text, got 5"),
        (("expose:", "expose: {"), ": not valid YAML"),
    ],
)
def test_each_mistake_names_file_line_and_field(tmp_path: Path, change, expected) -> None:
    old, new = change
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert expected in message, message


def test_an_empty_file_is_an_empty_project(tmp_path: Path) -> None:
    project = load(_write(tmp_path, "# nothing yet\n"))
    assert project.intercept is None and project.expose == ()


def test_the_schema_is_a_valid_json_schema_and_the_starter_follows_it() -> None:
    jsonschema.Draft202012Validator.check_schema(schema())
    text = starter("orders", 8080, user="alice", service_port="http", expose=("redis",))
    jsonschema.validate(yaml.safe_load(text), schema())
    assert "x-bridged-route: alice" in text and "# files:" in text
