"""CustomResourceDefinitions: installing one makes the stand-in serve its kind.

As the apiextensions server does: the CRD's storage version is served at
``/apis/{group}/{version}/...`` (CRUD, list, watch, the ``status`` subresource when declared)
and appears in discovery; every create and update is validated against the version's
``openAPIV3Schema`` (structural schema: types, required fields, enums, patterns, bounds), a
violation being a 422 ``Invalid`` naming the field — so an object a real server with the same
CRD would refuse is refused here. CEL rules (``x-kubernetes-validations``) are not evaluated.
"""

from __future__ import annotations

from typing import Any

import jsonschema

from . import kinds, resources
from .errors import FieldError
from .kinds import Strategy
from .resources import ResourceType, Subresource


class SchemaStrategy(Strategy):
    def __init__(self, schema: dict[str, Any]) -> None:
        self.validator = jsonschema.Draft7Validator(schema)

    def validate(self, obj: dict[str, Any]) -> list[FieldError]:
        body = {k: v for k, v in obj.items() if k != "status"}
        errors = []
        for error in sorted(self.validator.iter_errors(body), key=lambda e: list(e.path)):
            path = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in error.path)
            errors.append(FieldError("FieldValueInvalid", path.replace(".[", "["),
                                     error.instance if not isinstance(error.instance, dict)
                                     else None, error.message))
        return errors


def install(api: Any, crd: dict[str, Any]) -> ResourceType:
    """Serve the CRD's storage version on ``api`` (a KubeApiServer) until :func:`uninstall`."""
    spec = crd["spec"]
    names = spec["names"]
    version = next(v for v in spec["versions"] if v.get("storage"))
    res = ResourceType(
        spec["group"], version["name"], names["plural"], names["kind"],
        spec["scope"] == "Namespaced", names.get("singular", names["kind"].lower()),
        short_names=tuple(names.get("shortNames") or ()),
        categories=tuple(names.get("categories") or ()),
        subresources=(Subresource("status", names["kind"], ("get", "patch", "update")),)
        if "status" in (version.get("subresources") or {}) else (),
        generation=True,
    )
    resources.RESOURCES.append(res)
    resources._BY_PATH[(res.group, res.version, res.plural)] = res
    resources._BY_KIND[(res.group, res.kind)] = res
    api.registry._by_plural[res.plural] = res
    kinds._STRATEGIES[res.plural] = SchemaStrategy(version["schema"]["openAPIV3Schema"])
    return res


def uninstall(api: Any, res: ResourceType) -> None:
    resources.RESOURCES.remove(res)
    resources._BY_PATH.pop((res.group, res.version, res.plural), None)
    resources._BY_KIND.pop((res.group, res.kind), None)
    api.registry._by_plural.pop(res.plural, None)
    kinds._STRATEGIES.pop(res.plural, None)
