"""A hostile bridged.yaml (it comes with a clone; VS Code runs `bridged up` on it at every start)
is refused in one short `FILE:LINE: what` line, quickly and in little memory, and never as a
traceback."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from bridged import project
from bridged.cli import app
from bridged.errors import ConfigError
from bridged.project import LIMITS, load

#: the parsers bridged may run on: libyaml's when PyYAML has it, else PyYAML's own
PARSERS = [yaml.SafeLoader] + ([yaml.CSafeLoader] if yaml.__with_libyaml__ else [])

#: 9**9 = 387 million "lol"s once expanded, in 372 bytes; under `expose`, which the schema walks
#: item by item (this took 10 s and 1.1 GB before aliases were refused)
LAUGHS = "x0: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"x{n}: &{chr(97 + n)} [{', '.join([f'*{chr(96 + n)}'] * 9)}]\n" for n in range(1, 8)) \
    + "expose: *h\n"


@pytest.fixture(params=PARSERS, ids=lambda p: p.__name__)
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(project, "_PARSER", request.param)
    return request.param


@pytest.fixture
def refused(tmp_path: Path, parser: Any) -> Callable[[str | bytes], str]:
    """The error loading ``content`` as bridged.yaml, with the file's path written FILE."""

    def refused(content: str | bytes) -> str:
        path = tmp_path / "bridged.yaml"
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)
        with pytest.raises(ConfigError) as info:
            load(path)
        message = str(info.value)
        assert message.startswith(f"{path}:"), message
        return message.replace(str(path), "FILE", 1)

    return refused


def _peak_bytes(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        try:
            action()
        except ConfigError:
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_anchors_and_aliases_are_refused_before_anything_is_expanded(
        refused: Callable[[str], str], tmp_path: Path) -> None:
    assert len(LAUGHS) < 400
    assert refused(LAUGHS) == \
        "FILE:1: anchors and aliases (&name, *name) are not allowed in bridged.yaml"
    assert _peak_bytes(lambda: load(tmp_path / "bridged.yaml")) < 2 * 1024 * 1024
    # an alias alone (of an anchor that does not exist) and an anchor alone
    assert refused("context: dev\nnamespace: *ns\n") == \
        "FILE:2: anchors and aliases (&name, *name) are not allowed in bridged.yaml"
    assert refused("context: &c dev\n") == \
        "FILE:1: anchors and aliases (&name, *name) are not allowed in bridged.yaml"


def test_merge_keys_are_refused(refused: Callable[[str], str]) -> None:
    assert refused("intercept:\n  <<: {service: orders, port: 8080}\n") == \
        "FILE:2: merge keys (<<) are not allowed in bridged.yaml"


def test_tags_are_refused(refused: Callable[[str], str]) -> None:
    assert refused("context: !!python/object/apply:os.system [true]\n") == \
        "FILE:1: tags (tag:yaml.org,2002:python/object/apply:os.system) are not allowed in " \
        "bridged.yaml"


def test_a_duplicate_key_names_both_lines(refused: Callable[[str], str]) -> None:
    text = "context: dev\nintercept:\n  service: orders\n  port: 8080\n  'service': billing\n"
    assert refused(text) == "FILE:5: key 'service' appears twice (first at line 3)"
    assert refused("context: a\n\ncontext: b\n") == \
        "FILE:3: key 'context' appears twice (first at line 1)"


def test_keys_are_text(refused: Callable[[str], str]) -> None:
    assert refused("intercept:\n  headers:\n    on: alice\n") == \
        "FILE:3: key on is true or false, not text: quote it"
    assert refused("1: x\n") == "FILE:1: key 1 is a number, not text: quote it"
    assert refused("? [a, b]\n: x\n") == "FILE:1: a key must be text, not a list or a mapping"


def test_nesting_is_bounded(refused: Callable[[str], str]) -> None:
    deep = "".join(f"{'  ' * n}a:\n" for n in range(LIMITS.depth + 8))
    assert refused(deep) == \
        f"FILE:{LIMITS.depth + 1}: nested more than {LIMITS.depth} levels deep (a " \
        "bridged.yaml has 3)"
    assert refused("expose: " + "[" * 40 + "]" * 40) == \
        f"FILE:1: nested more than {LIMITS.depth} levels deep (a bridged.yaml has 3)"
    # far deeper than Python's recursion limit: still one line (libyaml has its own bound)
    assert refused("expose: " + "[" * 100_000)[:7] == "FILE:1:"


def test_the_number_of_values_is_bounded(refused: Callable[[str], str]) -> None:
    assert refused("expose: [" + "a, " * LIMITS.nodes + "a]\n") == \
        f"FILE:1: more than {LIMITS.nodes} values (a bridged.yaml has a few dozen)"


def test_a_nul_byte_or_a_control_character_is_refused_with_its_line(
        refused: Callable[[str], str]) -> None:
    assert refused("context: dev\nnamespace: te\0am\n") == \
        "FILE:2: a NUL byte (U+0000, column 14) is not allowed in bridged.yaml"
    assert refused("context: dev\r\n\r\nnamespace: \x1b[2Jteam\r\n") == \
        "FILE:3: a control character (U+001B, column 12) is not allowed in bridged.yaml"
    assert refused("context: \x7f\n") == \
        "FILE:1: a control character (U+007F, column 10) is not allowed in bridged.yaml"


def test_text_that_is_not_utf8_is_refused_with_its_line(refused: Callable[[bytes], str]) \
        -> None:
    assert refused(b"context: dev\nnamespace: caf\xe9\n") == \
        "FILE:2: not UTF-8 text (byte 0xe9)"


def test_a_large_file_is_refused_before_it_is_read(refused: Callable[[str], str],
                                                   tmp_path: Path) -> None:
    comments = ("# " + "x" * 77 + "\n") * (2 * 1024 * 1024 // 80 + 1)
    assert refused(comments) == "FILE:1: the file is 2.0 MiB, more than a bridged.yaml may be " \
                                "(1 MiB; a real one is a few hundred bytes)"
    # a 2 MB value makes a 2 MB file
    assert refused("context: " + "a" * 2_000_000 + "\n") == \
        "FILE:1: the file is 1.9 MiB, more than a bridged.yaml may be (1 MiB; a real one is a " \
        "few hundred bytes)"
    # its size is known before it is read: a 1 GiB file (sparse) costs nothing
    path = tmp_path / "bridged.yaml"
    with path.open("wb") as file:
        file.truncate(1024 ** 3)
    assert _peak_bytes(lambda: load(path)) < 256 * 1024


def test_a_long_value_is_refused_and_cut_in_the_message(refused: Callable[[str], str]) -> None:
    host = "a" * 100_000  # a 100 KB host name
    assert refused(f"expose:\n  - redis\n  - {host}:6379\n") == \
        f"FILE:3: a value of 100005 characters, more than {LIMITS.value_chars}: " \
        f"'{'a' * 59}…"
    assert refused("intercept:\n  service: orders\n  port: " + "9" * 5000 + "\n") == \
        f"FILE:3: a number of 5000 characters, more than {LIMITS.number_chars}: '{'9' * 59}…"


def test_a_long_value_in_a_schema_error_is_cut(refused: Callable[[str], str]) -> None:
    hint = " (bridged schema prints what the file may hold)"
    assert refused(f"expose:\n  - redis\n  - {'a' * 300}\n") == \
        f"FILE:3: expose[1]: '{'a' * 59}… is too long (300 characters, at most 259){hint}"
    assert refused(f"intercept:\n  service: orders\n  port: 1\n  via: {'x' * 5000}\n") == \
        f"FILE:4: intercept.via: '{'x' * 59}… is not one of auto, takeover, gateway, " \
        f"cilium{hint}"
    assert refused(f"{'k' * 1000}: 1\n") == \
        f"FILE:1: (top level): unknown field '{'k' * 59}… (expected one of: context, env, " \
        f"expose, files, intercept, namespace){hint}"
    header = "x" * 1000
    assert refused(f"intercept:\n  service: orders\n  port: 1\n  headers:\n    {header}: [a]\n")\
        == f"FILE:5: intercept.headers.'{'x' * 59}…: expected text, got ['a']{hint}"


def test_a_value_pyyaml_cannot_convert_is_an_error_with_its_line(
        refused: Callable[[str], str]) -> None:
    assert refused("context: dev\nnamespace: 2001-13-45\n") == \
        "FILE:2: '2001-13-45' is not a date (month must be in 1..12): quote it if it is text"


def test_one_document_only(refused: Callable[[str], str]) -> None:
    assert refused("context: a\n---\ncontext: b\n") == \
        "FILE:2: a second document: bridged.yaml holds one (remove '---')"


def test_bridged_up_prints_one_line_and_never_reaches_the_daemon(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_daemon(*_: object, **__: object) -> None:
        raise AssertionError("a refused bridged.yaml must not reach the daemon")

    monkeypatch.setattr("bridged.cli.project._client", no_daemon)
    path = tmp_path / "bridged.yaml"
    for content, error in [
        (LAUGHS, ":1: anchors and aliases"),
        ("context: dev\ncontext: prod\n", ":2: key 'context' appears twice (first at line 1)"),
        ("context: \0\n", ":1: a NUL byte"),
        ("expose: [" + "h" * 100_000 + "]\n", ":1: a value of 100000 characters"),
    ]:
        path.write_text(content)
        result = CliRunner().invoke(app, ["up", "-f", str(path)])
        assert result.exit_code == 2, result.output
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"bridged: {path}{error}"), lines
        assert len(lines[0]) < len(str(path)) + 200
        assert result.stdout.splitlines()[-1].startswith("bridged up: failed — ")


# --- anything at all --------------------------------------------------------------------------

#: pieces of YAML, hostile and not, that random files are made of
PIECES = ["\n", "  ", "- ", ": ", "context", "intercept", "service", "port", "expose", "headers",
          "&a ", "*a", "<<", "!!str ", "!x ", "[", "]", "{", "}", ",", "'", '"', "#", "---", "...",
          "? ", "|", ">", "~", "0x1F", "1e9", "2001-02-03", "2001-13-45", "1:2:3", "on", "null",
          "\t", "\0", "\x85", "\u2028", "\ufeff", "é", "9" * 40, "9" * 4400, "a" * 70,
          "%YAML 1.1\n", "%TAG ! x\n"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("arbitrary")


def _loads_or_says_one_line(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    try:
        load(path)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(f"{path}:"), message
        assert len(message.splitlines()) == 1, message
        assert len(message) - len(str(path)) <= 300, message


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40))
def test_arbitrary_yaml_loads_or_is_one_short_line(folder: Path, pieces: list[str]) -> None:
    _loads_or_says_one_line(folder / "bridged.yaml", "".join(pieces).encode())


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
                 st.binary(max_size=200)))
def test_arbitrary_bytes_load_or_are_one_short_line(folder: Path, content: bytes) -> None:
    _loads_or_says_one_line(folder / "bridged.yaml", content)
