"""A container's environment as a file: ``dotenv``, ``json`` or ``shell``.

``dotenv`` as python-dotenv and ``docker --env-file`` read it (a value neither can read back
exactly is reported, and noted in a comment), ``json`` (one object), ``shell``
(``export K='v'``). :attr:`~.result.EnvResult.secret_names` says which values hold Secret
data: the caller writes such a file private (:func:`bridged.kube.env.write_env_file`).
Pure: text in, text out.
"""

from __future__ import annotations

import json
import re

from ..errors import ConfigError
from .result import EnvResult

__all__ = ["FORMATS", "format_env", "format_warnings"]

FORMATS = ("dotenv", "json", "shell")
_SHELL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _dotenv_plain(value: str) -> bool:
    """A value both python-dotenv and ``docker --env-file`` read back unchanged unquoted."""
    if value == "":
        return True
    return (not any(ch in value for ch in "\r\n") and value == value.strip()
            and value[0] not in "'\"#" and re.search(r"\s#", value) is None)


def _dotenv_name_ok(name: str) -> bool:
    return (bool(name) and not any(ch in name for ch in "=#") and not name.startswith("'")
            and re.search(r"\s", name) is None)


def _dotenv_line(name: str, value: str) -> tuple[str, list[str]]:
    problems = []
    if "${" in value:
        problems.append("python-dotenv expands ${...} in it unless interpolate=False")
    if _dotenv_plain(value):
        return f"{name}={value}", problems
    if "\n" in value or "\r" in value:
        problems.append("docker --env-file cannot hold a multi-line value")
    else:
        problems.append("docker --env-file keeps the quotes (it reads values literally)")
    if value.endswith("\\"):
        problems.append("python-dotenv may misread a quoted value that ends with a backslash")
    quoted = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"{name}='{quoted}'", problems


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def format_warnings(result: EnvResult, fmt: str) -> list[str]:
    """What a reader of ``fmt`` output would not get exactly (also written as comments)."""
    return _format(result, fmt)[1]


def format_env(result: EnvResult, fmt: str) -> str:
    """``result`` as a file: ``dotenv`` (``NAME=value``; values that need it single-quoted
    the python-dotenv way, ``\\\\`` and ``\\'`` escaped), ``json`` (one object, name -> value)
    or ``shell`` (``export NAME='value'``, POSIX single quoting, ``'`` as ``'\\''``). Comments
    (dotenv, shell) say where the values came from, which hold Secret data, which are unknown,
    and what a reader would not get exactly."""
    return _format(result, fmt)[0]


def _format(result: EnvResult, fmt: str) -> tuple[str, list[str]]:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown env format {fmt!r} (one of: {', '.join(FORMATS)})")
    problems: list[str] = []
    if fmt == "json":
        return json.dumps(result.as_dict(), indent=2, ensure_ascii=False) + "\n", problems
    lines: list[str] = []
    body: list[str] = []
    for var in result.vars:
        if "\x00" in var.value:
            raise ConfigError(f"{var.name} holds a NUL byte: it cannot be written as {fmt}")
        if fmt == "shell":
            if not _SHELL_NAME.match(var.name):
                problems.append(f"{var.name}: not a shell variable name, left out")
                continue
            body.append(f"export {var.name}={_shell_quote(var.value)}")
            continue
        if not _dotenv_name_ok(var.name):
            problems.append(f"{var.name}: a name a dotenv file cannot hold, left out")
            continue
        line, issues = _dotenv_line(var.name, var.value)
        problems += [f"{var.name}: {issue}" for issue in issues]
        body.append(line)
    head = f"# environment of container {result.container}"
    lines.append(head + (f" ({_one_line(result.source)})" if result.source else ""))
    if result.secret_names:
        lines.append("# holds Secret data: " + ", ".join(result.secret_names))
    for name, why in result.unknown.items():
        lines.append(f"# unknown here, left empty: {name}: {_one_line(why)}")
    if result.rewritten:
        lines.append("# service addresses made local: " + ", ".join(result.rewritten))
    for problem in problems:
        lines.append(f"# note: {_one_line(problem)}")
    return "\n".join([*lines, *body]) + "\n", problems


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")

