"""Name, label and annotation validation, as ``k8s.io/apimachinery/pkg/util/validation`` does it.

The messages are the Go ones (``IsDNS1123Subdomain``, ``IsDNS1123Label``, ``IsDNS1035Label``,
``IsQualifiedName``, ``IsValidLabelValue``) because clients show them to people and tests
compare them. Kind-specific checks live in :mod:`tests.kube.kinds`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import FieldError

__all__ = ["dns1035_label", "dns1123_label", "dns1123_subdomain", "label_value",
           "qualified_name", "validate_object_meta"]

_DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = _DNS1123_LABEL + r"(\." + _DNS1123_LABEL + ")*"
_DNS1035_LABEL = "[a-z]([-a-z0-9]*[a-z0-9])?"
_QUALIFIED_NAME = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE = "(" + _QUALIFIED_NAME + ")?"


def _full(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern, value) is not None


def _max_len(n: int) -> str:
    return f"must be no more than {n} characters"


def dns1123_subdomain(value: str) -> list[str]:
    errs = []
    if len(value) > 253:
        errs.append(_max_len(253))
    if not _full(_DNS1123_SUBDOMAIN, value):
        errs.append("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                    "characters, '-' or '.', and must start and end with an alphanumeric "
                    "character (e.g. 'example.com', regex used for validation is "
                    f"'{_DNS1123_SUBDOMAIN}')")
    return errs


def dns1123_label(value: str) -> list[str]:
    errs = []
    if len(value) > 63:
        errs.append(_max_len(63))
    if not _full(_DNS1123_LABEL, value):
        errs.append("a lowercase RFC 1123 label must consist of lower case alphanumeric "
                    "characters or '-', and must start and end with an alphanumeric character "
                    f"(e.g. 'my-name',  or '123-abc', regex used for validation is "
                    f"'{_DNS1123_LABEL}')")
    return errs


def dns1035_label(value: str) -> list[str]:
    errs = []
    if len(value) > 63:
        errs.append(_max_len(63))
    if not _full(_DNS1035_LABEL, value):
        errs.append("a DNS-1035 label must consist of lower case alphanumeric characters or "
                    "'-', start with an alphabetic character, and end with an alphanumeric "
                    "character (e.g. 'my-name',  or 'abc-123', regex used for validation is "
                    f"'{_DNS1035_LABEL}')")
    return errs


def qualified_name(value: str) -> list[str]:
    """``IsQualifiedName``: an optional DNS-subdomain prefix and ``/``, then a name."""
    errs: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs.extend("prefix part " + e for e in dns1123_subdomain(prefix))
    else:
        return ["a qualified name must consist of alphanumeric characters, '-', '_' or '.', "
                "and must start and end with an alphanumeric character (e.g. 'MyName',  or "
                "'my.name',  or '123-abc', regex used for validation is "
                f"'{_QUALIFIED_NAME}') with an optional DNS subdomain prefix and '/' "
                "(e.g. 'example.com/MyName')"]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part " + _max_len(63))
    if name and not _full(_QUALIFIED_NAME, name):
        errs.append("name part must consist of alphanumeric characters, '-', '_' or '.', and "
                    "must start and end with an alphanumeric character (e.g. 'MyName',  or "
                    f"'my.name',  or '123-abc', regex used for validation is '{_QUALIFIED_NAME}')")
    return errs


def label_value(value: str) -> list[str]:
    errs = []
    if len(value) > 63:
        errs.append(_max_len(63))
    if not _full(_LABEL_VALUE, value):
        errs.append("a valid label must be an empty string or consist of alphanumeric "
                    "characters, '-', '_' or '.', and must start and end with an alphanumeric "
                    "character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for "
                    f"validation is '{_LABEL_VALUE}')")
    return errs


def path_segment(value: str) -> list[str]:
    """``path.IsValidPathSegmentName`` (RBAC objects): no ``/`` or ``%``, not ``.``/``..``."""
    if value in (".", ".."):
        return [f"may not be '{value}'"]
    return [f"may not contain '{c}'" for c in "/%" if c in value]


def validate_labels(labels: Any, path: str) -> list[FieldError]:
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [FieldError("FieldValueInvalid", path, labels, "must be a map of strings")]
    errs: list[FieldError] = []
    for key, value in labels.items():
        for msg in qualified_name(key):
            errs.append(FieldError("FieldValueInvalid", path, key, msg))
        if not isinstance(value, str):
            errs.append(FieldError("FieldValueInvalid", f"{path}.{key}", value,
                                   "must be a string"))
            continue
        for msg in label_value(value):
            errs.append(FieldError("FieldValueInvalid", path, value, msg))
    return errs


def validate_annotations(annotations: Any, path: str) -> list[FieldError]:
    if annotations is None:
        return []
    if not isinstance(annotations, dict):
        return [FieldError("FieldValueInvalid", path, annotations, "must be a map of strings")]
    errs: list[FieldError] = []
    for key, value in annotations.items():
        for msg in qualified_name(key.lower()):
            errs.append(FieldError("FieldValueInvalid", path, key, msg))
        if not isinstance(value, str):
            errs.append(FieldError("FieldValueInvalid", f"{path}.{key}", value,
                                   "must be a string"))
    if len(json.dumps(annotations)) > 256 * 1024:
        errs.append(FieldError("FieldValueTooLong", path, None,
                               "may not be more than 262144 bytes"))
    return errs


def validate_object_meta(meta: dict[str, Any], *, namespaced: bool, name_rule: str,
                         namespace: str | None) -> list[FieldError]:
    """``ValidateObjectMeta``: name (or generateName), namespace, labels, annotations.

    ``name_rule`` is ``subdomain``, ``label`` (DNS-1123) or ``dns1035``, per kind."""
    errs: list[FieldError] = []
    name = meta.get("name")
    if not name and not meta.get("generateName"):
        errs.append(FieldError("FieldValueRequired", "metadata.name", None,
                               "name or generateName is required"))
    elif name:
        check = {"subdomain": dns1123_subdomain, "label": dns1123_label,
                 "dns1035": dns1035_label, "path": path_segment}[name_rule]
        for msg in check(name):
            errs.append(FieldError("FieldValueInvalid", "metadata.name", name, msg))
    if namespaced and not namespace:
        errs.append(FieldError("FieldValueRequired", "metadata.namespace", None, ""))
    if not namespaced and meta.get("namespace"):
        errs.append(FieldError("FieldValueForbidden", "metadata.namespace", None,
                               "not allowed on this type"))
    errs += validate_labels(meta.get("labels"), "metadata.labels")
    errs += validate_annotations(meta.get("annotations"), "metadata.annotations")
    return errs
