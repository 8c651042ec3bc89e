"""Label and field selectors, as ``k8s.io/apimachinery/pkg/labels`` and ``.../fields`` parse them.

Label selector syntax (https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/):
``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k`` (exists), ``!k`` (does not
exist), and the integer ``k>n`` / ``k<n``; requirements are ANDed with ``,``. ``!=`` and
``notin`` also match objects that lack the label. Keys and values are validated as the parser
does (a bad one is a 400). Field selectors: ``f=v``, ``f==v``, ``f!=v`` ANDed with ``,`` over the
fields each kind supports (``metadata.name`` and ``metadata.namespace`` everywhere, plus the
kind's own, e.g. ``status.phase`` for pods); another field is a 400 ``field label not
supported``. :func:`from_label_selector` converts a ``metav1.LabelSelector`` (``matchLabels`` +
``matchExpressions``), as ``LabelSelectorAsSelector`` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import StatusError, bad_request
from .validation import label_value, qualified_name

__all__ = ["FieldSelector", "LabelSelector", "field_set", "from_label_selector",
           "parse_field_selector", "parse_label_selector"]

_SPECIAL = set("!=,()<> \t\n")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # =, !=, in, notin, exists, !, gt, lt
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if not present:
            return False
        try:
            have, want = int(value or ""), int(self.values[0])
        except ValueError:
            return False
        return have > want if self.op == "gt" else have < want

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!":
            return "!" + self.key
        if self.op in ("in", "notin"):
            return f"{self.key} {self.op} ({','.join(sorted(self.values))})"
        op = {"gt": ">", "lt": "<"}.get(self.op, self.op)
        return f"{self.key}{op}{self.values[0]}"


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements

    def __str__(self) -> str:
        return ",".join(str(r) for r in sorted(self.requirements, key=lambda r: r.key))


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c in " \t\n":
            i += 1
        elif text.startswith(("==", "!="), i):
            out.append(text[i:i + 2])
            i += 2
        elif c in "!=,()<>":
            out.append(c)
            i += 1
        else:
            j = i
            while j < len(text) and text[j] not in _SPECIAL:
                j += 1
            out.append(text[i:j])
            i = j
    return out


def _fail(why: str) -> StatusError:
    return bad_request(f"unable to parse requirement: {why}")


def _check_key(key: str) -> None:
    errs = qualified_name(key)
    if errs:
        raise _fail(f'key: Invalid value: "{key}": {"; ".join(errs)}')


def _check_value(value: str) -> None:
    errs = label_value(value)
    if errs:
        raise _fail(f'values[0]: Invalid value: "{value}": {"; ".join(errs)}')


def parse_label_selector(text: str | None) -> LabelSelector:
    """``labels.Parse``; raises a 400 ``StatusError`` on bad syntax or bad keys/values."""
    if not text or not text.strip():
        return LabelSelector()
    toks = _tokens(text)
    reqs: list[Requirement] = []
    i = 0

    def peek(k: int = 0) -> str | None:
        return toks[i + k] if i + k < len(toks) else None

    while i < len(toks):
        if toks[i] == "!":
            key = peek(1)
            if key is None or key in "!=,()<>":
                raise _fail(f"found '{key}', expected: identifier")
            _check_key(key)
            reqs.append(Requirement(key, "!"))
            i += 2
        else:
            key = toks[i]
            if key in ("=", "==", "!=", ",", "(", ")", "<", ">"):
                raise _fail(f"found '{key}', expected: !, identifier, or 'end of string'")
            _check_key(key)
            op = peek(1)
            if op is None or op == ",":
                reqs.append(Requirement(key, "exists"))
                i += 1
            elif op in ("=", "==", "!="):
                value = peek(2)
                if value is None or value == ",":
                    value, step = "", 2
                elif value in "!=()<>":
                    raise _fail(f"found '{value}', expected: identifier")
                else:
                    step = 3
                _check_value(value)
                reqs.append(Requirement(key, "!=" if op == "!=" else "=", (value,)))
                i += step
            elif op in ("in", "notin"):
                if peek(2) != "(":
                    raise _fail(f"found '{peek(2)}', expected: '('")
                i += 3
                values: list[str] = []
                while peek() not in (")", None):
                    tok = toks[i]
                    if tok == ",":
                        i += 1
                        continue
                    _check_value(tok)
                    values.append(tok)
                    i += 1
                if peek() != ")":
                    raise _fail("found 'end of string', expected: ')'")
                i += 1
                if not values:
                    raise _fail(f"values: Invalid value: []: for '{op}', 'notin' operators, "
                                "values set can't be empty")
                reqs.append(Requirement(key, op, tuple(values)))
            elif op in ("<", ">"):
                value = peek(2) or ""
                if not re.fullmatch(r"-?\d+", value):
                    raise _fail(f'values[0]: Invalid value: "{value}": for \'Gt\', \'Lt\' '
                                "operators, the value must be an integer")
                reqs.append(Requirement(key, "gt" if op == ">" else "lt", (value,)))
                i += 3
            else:
                raise _fail(f"found '{op}', expected: in, notin, =, ==, !=, gt, lt")
        if i < len(toks):
            if toks[i] != ",":
                raise _fail(f"found '{toks[i]}', expected: ',' or 'end of string'")
            i += 1
            if i == len(toks):
                raise _fail("found 'end of string', expected: identifier")
    return LabelSelector(tuple(reqs))


def from_label_selector(selector: dict[str, Any] | None) -> LabelSelector:
    """``metav1.LabelSelectorAsSelector``: an empty selector matches everything."""
    if not selector:
        return LabelSelector()
    reqs = [Requirement(k, "=", (v,)) for k, v in (selector.get("matchLabels") or {}).items()]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expr in selector.get("matchExpressions") or []:
        reqs.append(Requirement(expr["key"], ops[expr["operator"]],
                                tuple(expr.get("values") or ())))
    return LabelSelector(tuple(reqs))


# --- field selectors ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldSelector:
    terms: tuple[tuple[str, str, str], ...] = ()  # (field, op "=" or "!=", value)

    def matches(self, fields: dict[str, str]) -> bool:
        for name, op, value in self.terms:
            have = fields.get(name, "")
            if (have == value) != (op == "="):
                return False
        return True

    def value_of(self, name: str) -> str | None:
        """The value an ``=`` term requires (e.g. ``metadata.name`` for a single-object watch)."""
        return next((v for f, op, v in self.terms if f == name and op == "="), None)


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, cur, i = [], "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            cur += text[i:i + 2]
            i += 2
        elif text[i] == sep:
            parts.append(cur)
            cur = ""
            i += 1
        else:
            cur += text[i]
            i += 1
    parts.append(cur)
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_field_selector(text: str | None, supported: set[str]) -> FieldSelector:
    if not text:
        return FieldSelector()
    terms: list[tuple[str, str, str]] = []
    for part in _split_unescaped(text, ","):
        if not part:
            continue
        m = re.match(r"^((?:[^\\=!]|\\.)*?)(!=|==|=)(.*)$", part)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        name, op, value = m.group(1), m.group(2), _unescape(m.group(3))
        if name not in supported:
            raise bad_request(f"field label not supported: {name}")
        terms.append((name, "!=" if op == "!=" else "=", value))
    return FieldSelector(tuple(terms))


def field_set(plural: str, obj: dict[str, Any]) -> dict[str, str]:
    """The selectable fields of an object (each strategy's ``GetAttrs``)."""
    meta = obj.get("metadata", {})
    out = {"metadata.name": meta.get("name", ""), "metadata.namespace": meta.get("namespace", "")}
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if plural == "pods":
        out.update({
            "spec.nodeName": spec.get("nodeName", ""),
            "spec.restartPolicy": spec.get("restartPolicy", ""),
            "spec.schedulerName": spec.get("schedulerName", ""),
            "spec.serviceAccountName": spec.get("serviceAccountName", ""),
            "spec.hostNetwork": "true" if spec.get("hostNetwork") else "false",
            "status.phase": status.get("phase", ""),
            "status.podIP": status.get("podIP", ""),
            "status.nominatedNodeName": status.get("nominatedNodeName", ""),
        })
    elif plural == "events":
        inv, source = obj.get("involvedObject") or {}, obj.get("source") or {}
        for f in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion",
                  "fieldPath"):
            out[f"involvedObject.{f}"] = str(inv.get(f, ""))
        out.update({"reason": obj.get("reason", ""), "type": obj.get("type", ""),
                    "source": source.get("component", ""),
                    "reportingComponent": obj.get("reportingComponent", "")})
    elif plural == "secrets":
        out["type"] = obj.get("type", "")
    elif plural == "namespaces":
        out["status.phase"] = status.get("phase", "")
    elif plural == "replicasets":
        out["status.replicas"] = str(status.get("replicas", 0))
    return out


def supported_fields(plural: str) -> set[str]:
    return set(field_set(plural, {}))
