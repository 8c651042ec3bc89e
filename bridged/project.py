"""bridged.yaml: what a repository's developers need from the cluster, checked in beside the code.

Found like ``.git``: in the current folder or the nearest parent. Validated against the JSON
Schema the package ships (``bridged schema`` prints it, for editors); an error names the file,
the line and the field, and says what is expected. Pure: reading and checking, no cluster, no
daemon — ``bridged up`` hands the result to the daemon.

The file may come with a clone and is read on every start of a VS Code debug session, so it is
read within :class:`Limits`, and YAML's features a config does not need (anchors and aliases,
merge keys, tags, several documents) are refused, as are duplicate keys and control characters:
each as one ``FILE:LINE: what`` line that quotes at most :data:`SHOWN_CHARS` of a value.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

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
    text = _read(path)
    node = _compose(text, path)
    data = _construct(node, path) if node is not None else None
    if data is None:
        data = {}
    validate(data, str(path), node)
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


def validate(data: Any, file: str, node: yaml.Node | None = None) -> None:
    """``data`` checked against the schema: the first mistake as one ``FILE:LINE: field: …``
    line (no line without the YAML ``node`` it came from), long values cut."""
    errors = sorted(jsonschema.Draft202012Validator(schema()).iter_errors(data),
                    key=lambda e: (_line(node, list(e.absolute_path)), list(e.absolute_path)))
    if errors:
        first = errors[0]
        fpath = list(first.absolute_path)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        where = f"{file}:{_line(node, fpath)}" if node is not None else file
        raise ConfigError(f"{where}: {_field(fpath)}: {_say(first)}{more}",
                          hint="bridged schema prints what the file may hold")


# --- reading a file nobody vouched for ---------------------------------------------------------
# A 310-byte file of nested aliases once made `bridged up` take 10 s and 1.1 GB. So the file is
# composed from parser events with each bound checked as its event arrives — before an alias
# could be expanded, a deep file recursed into or a huge number converted.


@dataclass(frozen=True)
class Limits:
    """Far above any real bridged.yaml (a few hundred bytes, 4 levels, a few dozen values), far
    below what could hurt the machine."""

    #: bytes, checked before the file is read whole (1 MiB: parsed in well under a second)
    file_bytes: int = 1024 * 1024
    #: nested lists and mappings (a real file has 3: intercept.headers.NAME)
    depth: int = 32
    #: keys, values, lists and mappings together, so that checking stays quick
    nodes: int = 10_000
    #: characters in one key or value (the longest real ones are paths and header values)
    value_chars: int = 64 * 1024
    #: characters in a number (a port has 5): Python will not even read an int of 4300 digits
    number_chars: int = 32


LIMITS = Limits()
#: characters of a value quoted in an error, so that the message stays one short line
SHOWN_CHARS = 60

#: what YAML itself accepts (its `c-printable`) but for the control characters other than tab,
#: line feed and carriage return (CRLF files are fine); NUL, DEL and C1 controls are refused
_UNPRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_STR, _INT, _FLOAT, _MERGE = (f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "merge"))
#: libyaml when PyYAML has it: a 1 MiB file is parsed in 10 ms instead of 1 s
_PARSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_KINDS = {f"tag:yaml.org,2002:{t}": kind for t, kind in (
    ("int", "a number"), ("float", "a number"), ("bool", "true or false"), ("null", "null"),
    ("timestamp", "a date"))}


def _read(path: Path) -> str:
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            raw = b"" if size > LIMITS.file_bytes else file.read(LIMITS.file_bytes + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    size = max(size, len(raw))
    if size > LIMITS.file_bytes:
        raise ConfigError(f"{path}:1: the file is {size / 1024 / 1024:.1f} MiB, more than a "
                          f"bridged.yaml may be ({LIMITS.file_bytes // 1024 // 1024} MiB; "
                          "a real one is a few hundred bytes)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x})") \
            from None
    bad = _UNPRINTABLE.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        what = "a NUL byte" if bad[0] == "\0" else "a control character"
        raise ConfigError(f"{path}:{line}: {what} (U+{ord(bad[0]):04X}, column {column}) is "
                          "not allowed in bridged.yaml")
    return text


def _compose(text: str, path: Path) -> yaml.Node | None:
    """The document's nodes, as PyYAML's composer would build them, but without recursion,
    and refusing anchors, aliases, tags, merge keys, keys that are not text, duplicate keys and
    whatever exceeds :data:`LIMITS` at the event that shows it."""

    def refuse(mark: Any, what: str) -> NoReturn:
        raise ConfigError(f"{path}:{mark.line + 1}: {what}")

    resolver = yaml.resolver.Resolver()
    root: yaml.Node | None = None
    stack: list[_Open] = []  # the lists and mappings not ended yet
    count = documents = 0
    try:
        for event in yaml.parse(text, Loader=_PARSER):
            mark = event.start_mark
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    refuse(mark, "a second document: bridged.yaml holds one (remove '---')")
                continue
            if isinstance(event, yaml.CollectionEndEvent):
                stack.pop().node.end_mark = event.end_mark
                continue
            if not isinstance(event, yaml.NodeEvent):
                continue
            if isinstance(event, yaml.AliasEvent) or event.anchor is not None:
                refuse(mark, "anchors and aliases (&name, *name) are not allowed in "
                             "bridged.yaml")
            if event.tag is not None:
                refuse(mark, f"tags ({_cut(event.tag)}) are not allowed in bridged.yaml")
            count += 1
            if count > LIMITS.nodes:
                refuse(mark, f"more than {LIMITS.nodes} values (a bridged.yaml has a few dozen)")
            node: yaml.Node
            if isinstance(event, yaml.ScalarEvent):
                node = _scalar(event, resolver, refuse)
            else:
                if len(stack) >= LIMITS.depth:
                    refuse(mark, f"nested more than {LIMITS.depth} levels deep (a bridged.yaml "
                                 "has 3)")
                kind = yaml.SequenceNode if isinstance(event, yaml.SequenceStartEvent) \
                    else yaml.MappingNode
                node = kind(resolver.resolve(kind, None, event.implicit), [], mark, None,
                            flow_style=event.flow_style)
            if not stack:
                root = node
            else:
                stack[-1].add(node, refuse)
            if isinstance(node, yaml.CollectionNode):
                stack.append(_Open(node))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or exc
        raise ConfigError(f"{path}:{mark.line + 1 if mark else 1}: not valid YAML "
                          f"({_cut(str(problem))})") from None
    return root


@dataclass
class _Open:
    """A list or mapping being composed; for a mapping, its key waiting for a value."""

    node: yaml.CollectionNode
    key: yaml.ScalarNode | None = None
    #: the mapping's keys and their lines
    seen: dict[str, int] = field(default_factory=dict)

    def add(self, node: yaml.Node, refuse: Callable[[Any, str], NoReturn]) -> None:
        if isinstance(self.node, yaml.SequenceNode):
            self.node.value.append(node)
        elif self.key is not None:
            self.node.value.append((self.key, node))
            self.key = None
        else:
            self.key = _key(node, self.seen, refuse)


def _scalar(event: yaml.ScalarEvent, resolver: yaml.resolver.Resolver,
            refuse: Callable[[Any, str], NoReturn]) -> yaml.ScalarNode:
    value = event.value
    if len(value) > LIMITS.value_chars:
        refuse(event.start_mark, f"a value of {len(value)} characters, more than "
                                 f"{LIMITS.value_chars}: {_show(value)}")
    tag = resolver.resolve(yaml.ScalarNode, value, event.implicit)
    if tag in (_INT, _FLOAT) and len(value) > LIMITS.number_chars:
        refuse(event.start_mark, f"a number of {len(value)} characters, more than "
                                 f"{LIMITS.number_chars}: {_show(value)}")
    return yaml.ScalarNode(tag, value, event.start_mark, event.end_mark, style=event.style)


def _key(node: yaml.Node, seen: dict[str, int], refuse: Callable[[Any, str], NoReturn]) \
        -> yaml.ScalarNode:
    """``node`` as a mapping's key: text, and not one the mapping has already."""
    if not isinstance(node, yaml.ScalarNode):
        refuse(node.start_mark, "a key must be text, not a list or a mapping")
    if node.tag == _MERGE:
        refuse(node.start_mark, "merge keys (<<) are not allowed in bridged.yaml")
    if node.tag != _STR:
        kind = _KINDS.get(node.tag, "not text")
        refuse(node.start_mark, f"key {_cut(node.value) or '(empty)'} is {kind}, not text: "
                                "quote it")
    if node.value in seen:
        refuse(node.start_mark, f"key {_show(node.value)} appears twice (first at line "
                                f"{seen[node.value]})")
    seen[node.value] = node.start_mark.line + 1
    return node


class _Constructor(yaml.constructor.SafeConstructor):
    """PyYAML's, with the line of a value it cannot convert (``2001-13-45`` is a date)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ConfigError, yaml.YAMLError):
            raise
        except Exception as exc:  # PyYAML lets ValueError and others through
            kind = _KINDS.get(node.tag, "a " + node.tag.rsplit(":", 1)[-1])
            raise ConfigError(f"{self.path}:{node.start_mark.line + 1}: {_show(node.value)} is "
                              f"not {kind} ({_cut(str(exc))}): quote it if it is text") from None


def _construct(node: yaml.Node, path: Path) -> Any:
    try:
        return _Constructor(path).construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"{path}:{mark.line + 1 if mark else 1}: not valid YAML "
                          f"({_cut(str(getattr(exc, 'problem', None) or exc))})") from None


def _cut(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` on one line, at most ``limit`` characters and an ellipsis."""
    text = " ".join(text[:limit * 2].splitlines())
    return text if len(text) <= limit else text[:limit] + "…"


def _show(value: Any) -> str:
    """``value`` as Python would write it (quotes show where text begins and ends), cut."""
    return _cut(repr(value[:SHOWN_CHARS + 1] if isinstance(value, str) else value))


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
        if isinstance(key, int):
            text += f"[{key}]"
        else:
            name = key if _PLAIN_KEY.fullmatch(key) else _show(key)
            text += f".{name}" if text else name
    return _cut(text or "(top level)", 2 * SHOWN_CHARS)


#: a key shown as it is in a field's path; any other is quoted (and cut)
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,60}")


def _say(error: jsonschema.ValidationError) -> str:
    """What is expected, in words, quoting at most :data:`SHOWN_CHARS` of the value."""
    v, value = error.validator, error.instance
    if v == "additionalProperties":
        allowed = error.schema.get("properties", {})
        unknown = sorted(k for k in value if k not in allowed)
        return f"unknown field {_show(unknown[0])} (expected one of: {', '.join(sorted(allowed))})"
    if v == "required":
        return error.message.replace("is a required property", "is required")
    if v == "enum":
        return f"{_show(value)} is not one of {', '.join(map(str, error.validator_value))}"
    if v == "type":
        return f"expected {' or '.join(_as_list(error.validator_value))}, got {_show(value)}"
    if v == "pattern":
        expected = _pattern_words(error.validator_value)
        return f"{_show(value)} is not valid here (expected {expected})"
    if v in ("minimum", "maximum"):
        return f"{_show(value)} is out of range (1 to 65535)"
    if v == "maxLength":
        return (f"{_show(value)} is too long ({len(value)} characters, at most "
                f"{error.validator_value})")
    if v == "minLength":
        return "must not be empty"
    return _cut(error.message, 2 * SHOWN_CHARS)


def _as_list(value: Any) -> list[str]:
    names = {"integer": "a whole number", "string": "text", "object": "a mapping",
             "array": "a list", "boolean": "true or false"}
    return [names.get(str(v), str(v)) for v in (value if isinstance(value, list) else [value])]


def _pattern_words(pattern: str) -> str:
    if pattern.startswith("^(deploy"):
        return "deploy/NAME, statefulset/NAME or pod/NAME"
    if pattern == "^/":
        return "a path starting with /"
    if "(/(" in pattern:  # intercept.grpcMethod
        from .config import GRPC_METHOD_FORMS

        return GRPC_METHOD_FORMS
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
