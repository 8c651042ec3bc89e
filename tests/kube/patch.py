"""The three PATCH content types the API server takes.

- ``application/merge-patch+json``: RFC 7386 (``jsonpatch.MergePatch``): objects merge
  recursively, ``null`` deletes a key, any other value (lists included) replaces.
- ``application/json-patch+json``: RFC 6902 (``jsonpatch.DecodePatch(...).Apply``): ``add``,
  ``remove``, ``replace``, ``move``, ``copy``, ``test`` on RFC 6901 pointers (``~0``/``~1``
  escapes, ``-`` appends); the operations apply in order and all or nothing.
- ``application/strategic-merge-patch+json``
  (https://github.com/kubernetes/community/blob/master/contributors/devel/sig-api-machinery/strategic-merge-patch.md):
  like a merge patch, but lists whose Go field carries ``patchStrategy:"merge"`` merge item by
  item on their ``patchMergeKey`` (containers, env and volumes by ``name``, container ports by
  ``containerPort``, service ports by ``port``, ownerReferences by ``uid``, conditions by
  ``type``; ``finalizers`` is a merged list of strings); existing items keep their place and new
  ones are appended. Directives: ``$patch: replace|delete|merge`` in a map or a list item,
  ``$deleteFromPrimitiveList/<field>``, ``$setElementOrder/<field>``, ``$retainKeys``.
  The schema below covers the kinds this stand-in serves; other lists are replaced, as for
  fields without a strategy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PatchError", "json_patch", "merge_patch", "schema_for", "strategic_merge_patch"]


class PatchError(Exception):
    """The patch does not apply (``bad`` True: it is not even a valid patch document)."""

    def __init__(self, message: str, *, bad: bool = False) -> None:
        super().__init__(message)
        self.bad = bad


# --- RFC 7386 ----------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- RFC 6902 ----------------------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer: {path!r}", bad=True)
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list[Any], token: str, *, for_add: bool) -> int:
    if token == "-" and for_add:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise PatchError(f"invalid array index {token!r}")
    i = int(token)
    if i > len(container) or (i == len(container) and not for_add):
        raise PatchError(f"array index {i} out of bounds")
    return i


def _parent(doc: Any, tokens: list[str]) -> Any:
    cur = doc
    for tok in tokens[:-1]:
        if isinstance(cur, dict):
            if tok not in cur:
                raise PatchError(f"missing path component {tok!r}")
            cur = cur[tok]
        elif isinstance(cur, list):
            cur = cur[_index(cur, tok, for_add=False)]
        else:
            raise PatchError(f"cannot descend into a scalar at {tok!r}")
    return cur


def _get(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return doc
    parent, last = _parent(doc, tokens), tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"missing key {last!r}")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, for_add=False)]
    raise PatchError("cannot index a scalar")


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent, last = _parent(doc, tokens), tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, for_add=True), value)
    else:
        raise PatchError("cannot add to a scalar")
    return doc


def _remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent, last = _parent(doc, tokens), tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"unable to remove nonexistent key: {last}")
        del parent[last]
    elif isinstance(parent, list):
        del parent[_index(parent, last, for_add=False)]
    else:
        raise PatchError("cannot remove from a scalar")
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise PatchError("json: cannot unmarshal object into Go value of type jsonpatch.Patch",
                         bad=True)
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op:
            raise PatchError("invalid operation", bad=True)
        kind = op["op"]
        if kind not in ("add", "remove", "replace", "move", "copy", "test"):
            raise PatchError(f"Unexpected kind: {kind}", bad=True)
        if "path" not in op:
            raise PatchError(f"{kind} operation missing path", bad=True)
        path = _pointer(op["path"])
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"{kind} operation missing value", bad=True)
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)  # must exist
            doc = _add(_remove(doc, path), path, copy.deepcopy(op["value"])) if path \
                else copy.deepcopy(op["value"])
        elif kind in ("move", "copy"):
            if "from" not in op:
                raise PatchError(f"{kind} operation missing from", bad=True)
            source = _pointer(op["from"])
            value = copy.deepcopy(_get(doc, source))
            if kind == "move":
                if op["path"].startswith(op["from"] + "/"):
                    raise PatchError("cannot move a value into one of its children")
                doc = _remove(doc, source)
            doc = _add(doc, path, value)
        elif kind == "test":
            try:
                have = _get(doc, path)
            except PatchError:
                have = None
            if have != op["value"]:
                raise PatchError(f"testing value {op['path']} failed: test failed")
    return doc


# --- strategic merge patch ---------------------------------------------------------------------


@dataclass(frozen=True)
class Struct:
    """A Go struct: the fields whose patch strategy matters (others: plain merge/replace)."""

    fields: dict[str, Any] = field(default_factory=dict)
    retain_keys: bool = False


@dataclass(frozen=True)
class MergeList:
    """``patchStrategy:"merge"`` with ``patchMergeKey`` (``key`` None: a list of scalars)."""

    key: str | None
    item: Struct = Struct()
    retain_keys: bool = False


_CONTAINER = Struct({"ports": MergeList("containerPort"), "env": MergeList("name"),
                     "volumeMounts": MergeList("mountPath"),
                     "volumeDevices": MergeList("devicePath")})
_POD_SPEC = Struct({
    "containers": MergeList("name", _CONTAINER),
    "initContainers": MergeList("name", _CONTAINER),
    "ephemeralContainers": MergeList("name", _CONTAINER),
    "volumes": MergeList("name", Struct(retain_keys=True), retain_keys=True),
    "imagePullSecrets": MergeList("name"),
    "hostAliases": MergeList("ip"),
})
_META = Struct({"finalizers": MergeList(None), "ownerReferences": MergeList("uid")})
_CONDITIONS = MergeList("type")
_TEMPLATE = Struct({"metadata": _META, "spec": _POD_SPEC})
_WORKLOAD = Struct({
    "metadata": _META,
    "spec": Struct({"template": _TEMPLATE, "strategy": Struct(retain_keys=True),
                    "updateStrategy": Struct(retain_keys=True)}),
    "status": Struct({"conditions": _CONDITIONS}),
})
SCHEMAS: dict[str, Struct] = {
    "Pod": Struct({"metadata": _META, "spec": _POD_SPEC,
                   "status": Struct({"conditions": _CONDITIONS})}),
    "Service": Struct({"metadata": _META,
                       "spec": Struct({"ports": MergeList("port")}),
                       "status": Struct({"conditions": _CONDITIONS})}),
    "Deployment": _WORKLOAD,
    "ReplicaSet": _WORKLOAD,
    "StatefulSet": _WORKLOAD,
    "ServiceAccount": Struct({"metadata": _META, "secrets": MergeList("name"),
                              "imagePullSecrets": MergeList("name")}),
    "Namespace": Struct({"metadata": _META, "status": Struct({"conditions": _CONDITIONS})}),
}
_DEFAULT = Struct({"metadata": _META})


def schema_for(kind: str) -> Struct:
    return SCHEMAS.get(kind, _DEFAULT)


def strategic_merge_patch(target: dict[str, Any], patch: Any, schema: Struct) -> dict[str, Any]:
    if not isinstance(patch, dict):
        raise PatchError("strategic merge patch must be a JSON object", bad=True)
    return _smp_map(copy.deepcopy(target), patch, schema)


def _smp_map(original: dict[str, Any], patch: dict[str, Any], schema: Struct) -> dict[str, Any]:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return {}
    if directive not in (None, "merge"):
        raise PatchError(f"Unknown patch type: {directive} in map: {patch}", bad=True)
    retain = patch.get("$retainKeys")
    result = original
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            if isinstance(result.get(name), list):
                result[name] = [x for x in result[name] if x not in (value or [])]
            continue
        if value is None:
            result.pop(key, None)
            continue
        sub = schema.fields.get(key)
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _smp_map(result[key], value, sub if isinstance(sub, Struct) else Struct())
        elif isinstance(value, dict):
            result[key] = _smp_map({}, value, sub if isinstance(sub, Struct) else Struct())
        elif isinstance(value, list) and isinstance(sub, MergeList):
            result[key] = _smp_list(result.get(key) or [], value, sub)
        else:
            result[key] = copy.deepcopy(value)
    if retain is not None:
        keep = set(retain)
        result = {k: v for k, v in result.items() if k in keep}
    for key, order in patch.items():
        if key.startswith("$setElementOrder/"):
            name = key.split("/", 1)[1]
            sub = schema.fields.get(name)
            if isinstance(sub, MergeList) and isinstance(result.get(name), list):
                result[name] = _reorder(result[name], order, sub.key)
    return result


def _reorder(items: list[Any], order: list[Any], key: str | None) -> list[Any]:
    def ident(x: Any) -> Any:
        return x.get(key) if key and isinstance(x, dict) else x

    wanted = [ident(o) for o in order]
    ranked = [x for w in wanted for x in items if ident(x) == w]
    return ranked + [x for x in items if ident(x) not in wanted]


def _smp_list(original: list[Any], patch: list[Any], spec: MergeList) -> list[Any]:
    if spec.key is None:  # merged list of scalars: a set union, original order first
        if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
            return [x for x in patch if not isinstance(x, dict)]
        return list(original) + [x for x in patch if x not in original]
    for item in patch:
        if isinstance(item, dict) and item.get("$patch") == "replace":
            return [copy.deepcopy(x) for x in patch if x is not item]
    result = [copy.deepcopy(x) for x in original]
    for item in patch:
        if not isinstance(item, dict):
            raise PatchError(f"expected a map in the list merged on {spec.key!r}", bad=True)
        if spec.key not in item:
            raise PatchError(f"map: {item} does not contain declared merge key: {spec.key}",
                             bad=True)
        ident = item[spec.key]
        at = next((i for i, x in enumerate(result)
                   if isinstance(x, dict) and x.get(spec.key) == ident), None)
        if item.get("$patch") == "delete":
            if at is not None:
                del result[at]
            continue
        if at is None:
            result.append(_smp_map({}, item, spec.item))
        else:
            result[at] = _smp_map(result[at], item, spec.item)
    return result
