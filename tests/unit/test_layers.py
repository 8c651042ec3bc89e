"""The architecture's layers, as import-linter contracts (.importlinter), hold."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept() -> None:
    exe = str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        exe = shutil.which("lint-imports") or exe
    if not Path(exe).exists():
        pytest.fail("import-linter is not installed: it is part of the 'test' extra")
    result = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 kept, 0 broken" in result.stdout
