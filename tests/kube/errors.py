"""``Status`` errors shaped exactly like the API server's.

Follows ``k8s.io/apimachinery/pkg/api/errors`` (``NewNotFound``, ``NewAlreadyExists``,
``NewConflict``, ``NewForbidden``, ``NewInvalid``, ``NewBadRequest``, ``NewMethodNotSupported``,
``NewResourceExpired``, ``NewGenericServerResponse``) and ``field.Error`` for the causes of
``Invalid``. The JSON has the field order and the omit-empty rules of ``metav1.Status``:
``kind, apiVersion, metadata, status, message, reason, details, code``; ``details`` is present
when the Go code sets it (even empty, ``{}``) and its empty members are left out. The
``details.kind`` of resource errors is the *resource* (``pods``), as the Go code does ("Yes we
set Kind field to resource"); for ``Invalid`` it is the Kind (``Pod``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FieldError", "StatusError", "already_exists", "bad_request", "conflict", "expired",
    "forbidden", "internal", "invalid", "method_not_allowed", "method_not_supported",
    "not_acceptable", "not_found", "rejected_patch", "status_success", "timeout",
    "unauthorized", "unsupported_media_type",
]

OPTIMISTIC_LOCK = ("the object has been modified; please apply your changes to the latest "
                   "version and try again")


@dataclass
class FieldError:
    """One ``field.Error``: ``type`` is the cause type (``FieldValueInvalid``...)."""

    type: str
    field: str
    value: Any = None
    detail: str = ""

    _BODIES = {
        "FieldValueRequired": "Required value",
        "FieldValueInvalid": "Invalid value",
        "FieldValueNotSupported": "Unsupported value",
        "FieldValueForbidden": "Forbidden",
        "FieldValueDuplicate": "Duplicate value",
        "FieldValueTooLong": "Too long",
        "FieldValueNotFound": "Not found",
    }

    def body(self) -> str:
        """``field.Error.ErrorBody()``: the type's words, the value for value errors, detail."""
        text = self._BODIES.get(self.type, self.type)
        if self.type in ("FieldValueInvalid", "FieldValueNotSupported", "FieldValueDuplicate",
                         "FieldValueNotFound"):
            text += f": {_go_value(self.value)}"
        if self.detail:
            text += f": {self.detail}"
        return text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


def _go_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True)


@dataclass
class StatusError(Exception):
    """A failure ``Status``; :meth:`status` is the body, ``code`` the HTTP status."""

    code: int
    reason: str
    message: str
    details: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Failure"}
        if self.message:
            body["message"] = self.message
        if self.reason:
            body["reason"] = self.reason
        if self.details is not None:
            body["details"] = {k: v for k, v in self.details.items() if v not in ("", None, [], 0)}
        body["code"] = self.code
        return body


def _details(group: str, resource: str, name: str = "", **more: Any) -> dict[str, Any]:
    return {"name": name, "group": group, "kind": resource, **more}


def _qualified(group: str, resource: str) -> str:
    """``schema.GroupResource.String()``: ``pods`` or ``deployments.apps``."""
    return f"{resource}.{group}" if group else resource


def not_found(group: str, resource: str, name: str) -> StatusError:
    return StatusError(404, "NotFound", f'{_qualified(group, resource)} "{name}" not found',
                       _details(group, resource, name))


def already_exists(group: str, resource: str, name: str) -> StatusError:
    return StatusError(409, "AlreadyExists",
                       f'{_qualified(group, resource)} "{name}" already exists',
                       _details(group, resource, name))


def conflict(group: str, resource: str, name: str, why: str = OPTIMISTIC_LOCK) -> StatusError:
    return StatusError(409, "Conflict", f"Operation cannot be fulfilled on "
                       f'{_qualified(group, resource)} "{name}": {why}',
                       _details(group, resource, name))


def forbidden(group: str, resource: str, name: str, why: str) -> StatusError:
    if not resource:
        message = f"forbidden: {why}"
    elif not name:
        message = f"{_qualified(group, resource)} is forbidden: {why}"
    else:
        message = f'{_qualified(group, resource)} "{name}" is forbidden: {why}'
    return StatusError(403, "Forbidden", message, _details(group, resource, name))


def invalid(group: str, kind: str, name: str, errors: list[FieldError]) -> StatusError:
    """``NewInvalid``: message ``Kind.group "name" is invalid: <aggregate>``."""
    qualified = f"{kind}.{group}" if group else kind
    aggregate = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(map(str, errors)) + "]"
    causes = [{"reason": e.type, "message": e.body(), "field": e.field} for e in errors]
    return StatusError(422, "Invalid", f'{qualified} "{name}" is invalid: {aggregate}',
                       {"name": name, "group": group, "kind": kind, "causes": causes})


def rejected_patch() -> StatusError:
    """A JSON patch that does not apply (``NewGenericServerResponse(422, ...)``)."""
    return StatusError(422, "Invalid",
                       "the server rejected our request due to an error in our request", {})


def bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message)


def unauthorized() -> StatusError:
    return StatusError(401, "Unauthorized", "Unauthorized")


def method_not_supported(group: str, resource: str, action: str) -> StatusError:
    return StatusError(405, "MethodNotAllowed", f"{action} is not supported on resources of "
                       f'kind "{_qualified(group, resource)}"', _details(group, resource))


def method_not_allowed() -> StatusError:
    """What go-restful answers for a method no route of the path accepts."""
    return StatusError(405, "MethodNotAllowed",
                       "the server does not allow this method on the requested resource", {})


def unsupported_media_type(content_type: str, accepted: list[str]) -> StatusError:
    return StatusError(415, "UnsupportedMediaType",
                       f"the body of the request was in an unknown format - accepted media "
                       f"types include: {', '.join(accepted)}")


def not_acceptable(accepted: list[str]) -> StatusError:
    return StatusError(406, "NotAcceptable", "only the following media types are accepted: "
                       + ", ".join(accepted))


def expired(message: str) -> StatusError:
    """``NewResourceExpired``: 410 with reason ``Expired``."""
    return StatusError(410, "Expired", message)


def timeout(message: str, retry_after: int = 1) -> StatusError:
    return StatusError(504, "Timeout", f"Timeout: {message}",
                       {"retryAfterSeconds": retry_after})


def internal(message: str) -> StatusError:
    return StatusError(500, "InternalError", f"Internal error occurred: {message}",
                       {"causes": [{"message": message}]})


def status_success(group: str, resource: str, name: str, uid: str) -> dict[str, Any]:
    """What a DELETE answers for kinds that do not return the deleted object."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {k: v for k, v in _details(group, resource, name, uid=uid).items() if v}}
