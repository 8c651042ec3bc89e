"""The published CRD schemas in ``../shared/crds`` (read from there, never copied here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CRDS = Path(__file__).resolve().parents[1].parent / "shared" / "crds"
HTTPROUTE = "gateway-api-v1.6.1/gateway.networking.k8s.io_httproutes.yaml"
CILIUM = "cilium/ciliumenvoyconfigs.yaml"


def load_crd(relative: str) -> dict[str, Any]:
    """The CRD as published; skips the test where the folder is not there."""
    import yaml

    path = CRDS / relative
    if not path.exists():
        pytest.skip(f"the published CRD schemas are not here ({path} is absent)")
    return yaml.safe_load(path.read_text())


def schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    found = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    return found["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]
