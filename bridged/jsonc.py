"""JSON with comments and trailing commas, as VS Code's settings, tasks and launch files are."""

from __future__ import annotations

import json
import re
from typing import Any

# strings first, so that "//" inside a string is not taken for a comment
_COMMENTS = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/', re.S)
_TRAILING = re.compile(r'"(?:\\.|[^"\\])*"|,(?=\s*[}\]])', re.S)


def loads(text: str) -> Any:
    """Parse JSONC; raises ValueError (json.JSONDecodeError) on anything else."""
    return json.loads(strip(text))


def strip(text: str) -> str:
    """Plain JSON: comments and trailing commas removed, strings untouched."""
    def keep(match: re.Match[str]) -> str:
        token = match.group(0)
        return token if token.startswith('"') else ""

    return _TRAILING.sub(keep, _COMMENTS.sub(keep, text))


def has_comments(text: str) -> bool:
    return any(not m.group(0).startswith('"') for m in _COMMENTS.finditer(text))
