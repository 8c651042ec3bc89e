"""bridged.yaml: what a repository's developers need from the cluster, checked in beside the code.

Found like ``.git``: in the current folder or the nearest parent. Validated against the JSON
Schema the package ships (``bridged schema`` prints it, for editors); an error names the file,
the line and the field, and says what is expected. Pure: reading and checking, no cluster, no
daemon — ``bridged up`` hands the result to the daemon.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import ConfigError

FILENAME = "bridged.yaml"


def schema() -> dict[str, Any]:
    text = resources.files("bridged").joinpath("project.schema.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Project:
    """A validated bridged.yaml; paths made absolute against its folder."""

    path: Path
    context: str | None = None
    namespace: str | None = None
    intercept: dict[str, Any] | None = None
    expose: tuple[str, ...] = ()
    env: dict[str, Any] | None = None
    files: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_request(self) -> dict[str, Any]:
        """The body of the daemon's ``POST /v1/up``."""
        return {"file": str(self.path), "context": self.context, "namespace": self.namespace,
                "intercept": self.intercept, "expose": list(self.expose), "env": self.env,
                "files": self.files}


def find(start: Path, explicit: Path | None = None) -> Path:
    """``explicit``, or bridged.yaml in ``start`` or its nearest parent that has one."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"no file {explicit}")
        return explicit.resolve()
    for folder in (start.resolve(), *start.resolve().parents):
        candidate = folder / FILENAME
        if candidate.is_file():
            return candidate
    raise ConfigError(f"no {FILENAME} in {start.resolve()} or its parents",
                      hint="bridged init writes one")


def load(path: Path) -> Project:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") \
            from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        data = {}
    errors = sorted(jsonschema.Draft202012Validator(schema()).iter_errors(data),
                    key=lambda e: (_line(node, list(e.absolute_path)), list(e.absolute_path)))
    if errors:
        first = errors[0]
        fpath = list(first.absolute_path)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{path}:{_line(node, fpath)}: {_field(fpath)}: {_say(first)}{more}",
                          hint="bridged schema prints what the file may hold")
    base = path.parent
    env = dict(data["env"]) if data.get("env") else None
    if env is not None:
        env["file"] = str((base / env["file"]).resolve())
    files = dict(data["files"]) if data.get("files") else None
    if files is not None:
        files["dir"] = str((base / files["dir"]).resolve())
    return Project(path=path, context=data.get("context"), namespace=data.get("namespace"),
                   intercept=data.get("intercept"), expose=tuple(data.get("expose") or ()),
                   env=env, files=files, raw=data)


def _line(node: Any, fpath: list[Any]) -> int:
    """The 1-based line of the value at ``fpath`` (or of the nearest parent that exists)."""
    line = node.start_mark.line + 1 if node is not None else 1
    for key in fpath:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == key), None)
            if pair is None:
                break
            node = pair[1]
            line = pair[0].start_mark.line + 1  # the key's line: `intercept:`, not below it
            continue
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) \
                and key < len(node.value):
            node = node.value[key]
        else:
            break
        line = node.start_mark.line + 1
    return line


def _field(fpath: list[Any]) -> str:
    text = ""
    for key in fpath:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text or "(top level)"


def _say(error: jsonschema.ValidationError) -> str:
    """What is expected, in words."""
    v, value = error.validator, error.instance
    if v == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"unknown field {error.message.split(chr(39))[1]!r} (expected one of: {allowed})"
    if v == "required":
        return error.message.replace("is a required property", "is required")
    if v == "enum":
        return f"{value!r} is not one of {', '.join(map(str, error.validator_value))}"
    if v == "type":
        return f"expected {' or '.join(_as_list(error.validator_value))}, got {value!r}"
    if v == "pattern":
        return f"{value!r} is not valid here (expected {_pattern_words(error.validator_value)})"
    if v in ("minimum", "maximum"):
        return f"{value!r} is out of range (1 to 65535)"
    return error.message


def _as_list(value: Any) -> list[str]:
    names = {"integer": "a whole number", "string": "text", "object": "a mapping",
             "array": "a list", "boolean": "true or false"}
    return [names.get(str(v), str(v)) for v in (value if isinstance(value, list) else [value])]


def _pattern_words(pattern: str) -> str:
    if pattern.startswith("^(deploy"):
        return "deploy/NAME, statefulset/NAME or pod/NAME"
    if pattern == "^/":
        return "a path starting with /"
    return "a DNS name: lower-case letters, digits and '-'"


STARTER = """\
# bridged.yaml — what this repository's developers need from the cluster.
# `bridged up` applies it (VS Code: the "bridged: up" task), `bridged down` undoes it.
# Schema: `bridged schema` (point your editor's YAML extension at it).
{context}{namespace}
# The Service whose requests come to your laptop.
intercept:
  service: {service}
  port: {port}                # where your local copy listens
{service_port}  # only requests with these headers come to you; the others stay in the cluster
  headers:
    x-bridged-route: {user}
  via: auto                 # takeover (any cluster), gateway (Gateway API mesh), cilium
  fallback: error           # or origin: your requests go to the cluster while you are down

# In-cluster dependencies on local ports (NAME, NAME.NAMESPACE, NAME:PORT).
expose:{expose}

# The workload's environment, with Service addresses made local.
env:
  workload: deploy/{service}
  file: .env.bridged

# Its ConfigMap and Secret volumes, under their mount paths.
# files:
#   workload: deploy/{service}
#   dir: .bridged/files
"""


def starter(service: str, port: int, *, user: str, service_port: str | None = None,
            context: str | None = None, namespace: str | None = None,
            expose: tuple[str, ...] = ()) -> str:
    return STARTER.format(
        service=service, port=port, user=user,
        context=f"context: {context}\n" if context else "# context: my-cluster\n",
        namespace=f"namespace: {namespace}\n" if namespace else "# namespace: my-team\n",
        service_port=f"  servicePort: {service_port}\n" if service_port else "",
        expose="".join(f"\n  - {e}" for e in expose) if expose else " []")
