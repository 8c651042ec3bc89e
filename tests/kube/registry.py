"""The generic registry: the REST verbs over the :class:`~tests.kube.store.Store`.

Follows ``k8s.io/apiserver/pkg/registry/generic/registry`` and ``pkg/registry/rest``:

- create (``BeforeCreate``): ``generateName`` (+5 random characters), ``uid``,
  ``creationTimestamp``, ``generation: 1`` for kinds that track it, defaults, validation (422
  ``Invalid`` with field causes), the namespace must exist (404) and not be terminating (403),
  a ``resourceVersion`` in the body is a 400, an existing name a 409 ``AlreadyExists``;
- update (``BeforeUpdate``): the URL and body must agree on name and namespace (400), a body
  ``resourceVersion`` must be the current one (409 ``Conflict``), none means an unconditional
  update; system fields are kept, ``uid`` cannot change, status is kept on the main resource and
  only status changes through ``/status``; a missing object is a 404 (no create-on-update);
- patch: the patch applies to the current object, then the update rules apply; a
  ``resourceVersion`` in the patch is a precondition (409 when stale);
- delete: ``preconditions`` (uid, resourceVersion), graceful deletion for scheduled pods
  (``deletionTimestamp`` + ``deletionGracePeriodSeconds``; the kubelet removes them), objects
  with finalizers wait for them, namespaces go ``Terminating``; the answer is the object for the
  kinds whose registry sets ``ReturnDeletedObject`` (pods, services, namespaces) or while the
  deletion is pending, otherwise a ``Status`` with ``status: Success``; ``propagationPolicy``
  (Background by default, Orphan, Foreground) is carried out by the garbage collector;
- list: ``resourceVersion`` unset (most recent), ``0`` (any), ``N`` with
  ``resourceVersionMatch`` ``NotOlderThan`` (default) or ``Exact``, ``limit``/``continue``
  pages with ``remainingItemCount``, selectors; items carry no ``kind``/``apiVersion`` (as for
  built-in types on the wire).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import random
import secrets
import uuid
from typing import Any

from . import errors as E
from .kinds import strategy_for
from .patch import PatchError, json_patch, merge_patch, schema_for, strategic_merge_patch
from .resources import RESOURCES, ResourceType
from .selectors import FieldSelector, LabelSelector, field_set
from .store import Store
from .validation import validate_object_meta

__all__ = ["PATCH_TYPES", "Registry", "now"]

PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json",
               "application/strategic-merge-patch+json", "application/apply-patch+yaml")
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_EVERYTHING = LabelSelector()
_ALL_FIELDS = FieldSelector()


def now(offset: float = 0) -> str:
    """An RFC 3339 timestamp with second precision, as ``metav1.Time`` serializes."""
    t = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(n: int = 5) -> str:
    return "".join(secrets.choice(_NAME_ALPHABET) for _ in range(n))


class Registry:
    """REST semantics over the store; raises :class:`~tests.kube.errors.StatusError`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._by_plural = {r.plural: r for r in RESOURCES}
        # where this server's ClusterIPs start: a random /24 of the /16, so that two test runs
        # on one machine (each binding its Services' addresses) do not collide (EADDRINUSE)
        self._next_ip = 250 * random.SystemRandom().randrange(1, 200) + 10

    # --- helpers for strategies and controllers --------------------------------------------

    def resource(self, plural: str) -> ResourceType:
        return self._by_plural[plural]

    def get_object(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.store.peek(self._by_plural[plural], namespace, name)

    def allocate_cluster_ip(self) -> str:
        """From 127.96.0.0/16: loopback on purpose, so that no test can send a packet to a
        private or public network by following an address the stand-in made up."""
        self._next_ip += 1
        return f"127.96.{self._next_ip // 250}.{self._next_ip % 250}"

    @staticmethod
    def typed(res: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        """The object with ``apiVersion`` and ``kind`` first, as a GET returns it."""
        rest = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
        return {"apiVersion": res.api_version, "kind": res.kind, **rest}

    # --- create ----------------------------------------------------------------------------

    def _check_type(self, res: ResourceType, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise E.bad_request(f"the object provided is unrecognized (must be of type "
                                f"{res.kind})")
        kind, api_version = body.get("kind"), body.get("apiVersion")
        if kind and kind != res.kind:
            raise E.bad_request(f"the object provided is unrecognized (must be of type "
                                f"{res.kind}): {kind}")
        if api_version and api_version != res.api_version:
            raise E.bad_request(f"the API version in the data ({api_version}) does not match "
                                f"the expected API version ({res.api_version})")
        meta = body.get("metadata")
        if meta is None:
            body["metadata"] = {}
        elif not isinstance(meta, dict):
            raise E.bad_request("metadata must be an object")
        return body

    def _check_namespace(self, res: ResourceType, namespace: str | None,
                         body: dict[str, Any]) -> None:
        meta = body["metadata"]
        if not res.namespaced:
            if namespace:
                raise E.not_found(res.group, res.plural, meta.get("name", ""))
            meta.pop("namespace", None)
            return
        if meta.get("namespace") and meta["namespace"] != namespace:
            raise E.bad_request("the namespace of the provided object does not match the "
                                "namespace sent on the request")
        meta["namespace"] = namespace

    def _invalid(self, res: ResourceType, obj: dict[str, Any], errs: list[E.FieldError]) -> None:
        if errs:
            raise E.invalid(res.group, res.kind, obj["metadata"].get("name", ""), errs)

    def create(self, res: ResourceType, namespace: str | None, body: Any, *,
               dry_run: bool = False) -> dict[str, Any]:
        obj = self._check_type(res, copy.deepcopy(body))
        self._check_namespace(res, namespace, obj)
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise E.bad_request("resourceVersion can not be set for Create requests")
        if res.namespaced:
            ns = self.get_object("namespaces", None, namespace or "")
            if ns is None:
                raise E.not_found("", "namespaces", namespace or "")
            if ns["metadata"].get("deletionTimestamp"):
                raise E.forbidden(res.group, res.plural, meta.get("name", ""),
                                  f"unable to create new content in namespace {namespace} "
                                  "because it is being terminated")
        strategy = strategy_for(res.plural)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + random_suffix()
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        for key in ("uid", "creationTimestamp", "deletionTimestamp",
                    "deletionGracePeriodSeconds", "generation", "selfLink", "managedFields"):
            meta.pop(key, None)
        strategy.defaults(obj, self)
        strategy.prepare_create(obj)
        errs = validate_object_meta(meta, namespaced=res.namespaced,
                                    name_rule=strategy.name_rule, namespace=namespace)
        self._invalid(res, obj, errs + strategy.validate(obj))
        admit = getattr(strategy, "admit_create", None)
        if admit is not None:
            admit(obj, self)
        allocate = getattr(strategy, "allocate", None)
        if allocate is not None and not dry_run:
            allocate(obj, self)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        if res.generation:
            meta["generation"] = 1
        if dry_run:
            if self.store.peek(res, namespace, meta["name"]) is not None:
                raise E.already_exists(res.group, res.plural, meta["name"])
            return self.typed(res, obj)
        return self.typed(res, self.store.create(res, obj))

    # --- read ------------------------------------------------------------------------------

    def get(self, res: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.store.get(res, namespace, name)
        if obj is None:
            raise E.not_found(res.group, res.plural, name)
        return self.typed(res, obj)

    def list(self, res: ResourceType, namespace: str | None, *,
             labels: LabelSelector = _EVERYTHING, fields: FieldSelector = _ALL_FIELDS,
             resource_version: str | None = None, match: str | None = None,
             limit: int | None = None, continue_token: str | None = None) -> dict[str, Any]:
        at: int | None = None
        start = ""
        if continue_token:
            try:
                token = json.loads(base64.b64decode(continue_token))
                at, start = int(token["rv"]), str(token["start"])
            except (ValueError, KeyError, TypeError) as exc:
                raise E.bad_request(f"continue key is not valid: {exc}") from exc
            if at < self.store.oldest_rv:
                raise E.expired(
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter, or use "
                    "the continue token in this response to retrieve the remainder of the "
                    "results. Continuing with the provided token results in an inconsistent "
                    "list - objects that were created, modified, or deleted between the time "
                    "the first chunk was returned and now may show up in the list.")
        elif resource_version not in (None, "", "0"):
            try:
                wanted = int(resource_version or "")
            except ValueError as exc:
                raise E.bad_request(f'invalid resource version "{resource_version}"') from exc
            if wanted > self.store.rv:
                raise E.timeout(f"Too large resource version: {wanted}, current: "
                                f"{self.store.rv}")
            if match == "Exact":
                at = wanted
        elif match == "Exact":
            raise E.invalid("meta.k8s.io", "ListOptions", "", [E.FieldError(
                "FieldValueForbidden", "resourceVersionMatch", None,
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"")])
        items = self.store.list_at(res, namespace, at)
        rv = at if at is not None else self.store.rv
        matched = [o for o in items if labels.matches(o["metadata"].get("labels"))
                   and fields.matches(field_set(res.plural, o))]
        if start:
            matched = [o for o in matched if _sort_key(o) > start]
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if limit and len(matched) > limit:
            rest = len(matched) - limit
            matched = matched[:limit]
            meta["continue"] = base64.b64encode(json.dumps(
                {"v": "meta.k8s.io/v1", "rv": rv, "start": _sort_key(matched[-1])}).encode()
            ).decode()
            if labels.empty and not fields.terms:
                meta["remainingItemCount"] = rest
        for o in matched:
            o.pop("apiVersion", None)
            o.pop("kind", None)
        return {"kind": res.kind + "List", "apiVersion": res.api_version, "metadata": meta,
                "items": matched}

    # --- update and patch ------------------------------------------------------------------

    def update(self, res: ResourceType, namespace: str | None, name: str, body: Any, *,
               subresource: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        obj = self._check_type(res, copy.deepcopy(body))
        meta = obj["metadata"]
        if meta.get("name") != name:
            raise E.bad_request(f"the name of the object ({meta.get('name', '')}) does not "
                                f"match the name on the URL ({name})")
        self._check_namespace(res, namespace, obj)
        return self._write(res, namespace, name, obj, subresource=subresource, dry_run=dry_run)

    def _write(self, res: ResourceType, namespace: str | None, name: str, obj: dict[str, Any],
               *, subresource: str | None, dry_run: bool) -> dict[str, Any]:
        old = self.store.get(res, namespace, name)
        if old is None:
            raise E.not_found(res.group, res.plural, name)
        meta, old_meta = obj["metadata"], old["metadata"]
        expect = meta.get("resourceVersion") or None
        if expect and expect != old_meta["resourceVersion"]:
            raise E.conflict(res.group, res.plural, name)
        strategy = strategy_for(res.plural)
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        errs: list[E.FieldError] = []
        if meta.get("uid") and meta["uid"] != old_meta["uid"]:
            errs.append(E.FieldError("FieldValueInvalid", "metadata.uid", meta["uid"],
                                     "field is immutable"))
        meta["uid"] = old_meta["uid"]
        meta["creationTimestamp"] = old_meta["creationTimestamp"]
        for key in ("generation", "deletionTimestamp", "deletionGracePeriodSeconds"):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        meta.pop("managedFields", None)
        if subresource != "status":
            strategy.defaults(obj, self)
        strategy.prepare_update(obj, old, subresource == "status")
        errs += validate_object_meta(obj["metadata"], namespaced=res.namespaced,
                                     name_rule="path", namespace=namespace)
        self._invalid(res, obj, errs + strategy.validate_update(obj, old))
        if dry_run:
            return self.typed(res, obj)
        if obj["metadata"].get("deletionTimestamp") and not obj["metadata"].get("finalizers"):
            if res.plural not in ("pods", "namespaces"):
                return self.typed(res, self.store.delete(res, namespace, name))
        return self.typed(res, self.store.update(res, obj, expect))

    def patch(self, res: ResourceType, namespace: str | None, name: str, content_type: str,
              raw: bytes, *, subresource: str | None = None,
              dry_run: bool = False) -> dict[str, Any]:
        if content_type not in PATCH_TYPES:
            raise E.unsupported_media_type(content_type, list(PATCH_TYPES))
        if content_type == "application/apply-patch+yaml":
            raise E.unsupported_media_type(content_type, list(PATCH_TYPES[:3]))
        current = self.store.get(res, namespace, name)
        if current is None:
            raise E.not_found(res.group, res.plural, name)
        try:
            document = json.loads(raw or b"null")
        except ValueError as exc:
            raise E.bad_request(f"error decoding patch: {exc}") from exc
        current = self.typed(res, current)
        try:
            if content_type == "application/json-patch+json":
                patched = json_patch(current, document)
            elif content_type == "application/merge-patch+json":
                if not isinstance(document, dict):
                    raise E.bad_request("json: cannot unmarshal into Go value of type "
                                        "map[string]interface {}")
                patched = merge_patch(current, document)
            else:
                patched = strategic_merge_patch(current, document, schema_for(res.kind))
        except PatchError as exc:
            raise (E.bad_request(str(exc)) if exc.bad else E.rejected_patch()) from exc
        if not isinstance(patched, dict) or not isinstance(patched.get("metadata"), dict):
            raise E.rejected_patch()
        meta = patched["metadata"]
        if meta.get("name") != name or (res.namespaced and meta.get("namespace") != namespace):
            raise E.invalid(res.group, res.kind, name, [E.FieldError(
                "FieldValueInvalid", "metadata.name", meta.get("name"), "field is immutable")])
        if meta.get("resourceVersion") == current["metadata"]["resourceVersion"]:
            meta.pop("resourceVersion")  # not a precondition: the patch did not set it
        return self._write(res, namespace, name, self._check_type(res, patched),
                           subresource=subresource, dry_run=dry_run)

    # --- scale -----------------------------------------------------------------------------

    def scale(self, res: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        from .selectors import from_label_selector

        obj = self.get(res, namespace, name)
        meta = obj["metadata"]
        return {"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": {
            "name": name, "namespace": namespace, "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"]},
            "spec": {"replicas": obj["spec"].get("replicas", 0)},
            "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                       "selector": str(from_label_selector(obj["spec"].get("selector")))}}

    def update_scale(self, res: ResourceType, namespace: str | None, name: str,
                     scale: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise E.invalid("autoscaling", "Scale", name, [E.FieldError(
                "FieldValueInvalid", "spec.replicas", replicas,
                "must be greater than or equal to 0")])
        obj = self.get(res, namespace, name)
        rv = (scale.get("metadata") or {}).get("resourceVersion")
        obj["metadata"]["resourceVersion"] = rv or None
        obj["spec"]["replicas"] = replicas
        self._write(res, namespace, name, obj, subresource=None, dry_run=dry_run)
        return self.scale(res, namespace, name) if not dry_run else scale

    # --- delete ----------------------------------------------------------------------------

    def delete(self, res: ResourceType, namespace: str | None, name: str,
               options: dict[str, Any] | None = None, *,
               dry_run: bool = False) -> tuple[int, dict[str, Any]]:
        """Returns the HTTP status and body of a DELETE."""
        options = options or {}
        obj = self.store.get(res, namespace, name)
        if obj is None:
            raise E.not_found(res.group, res.plural, name)
        meta = obj["metadata"]
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != meta["uid"]:
            raise E.conflict(res.group, res.plural, name,
                             f"Precondition failed: UID in precondition: {pre['uid']}, "
                             f"UID in object meta: {meta['uid']}")
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
            raise E.conflict(res.group, res.plural, name,
                             "Precondition failed: ResourceVersion in precondition: "
                             f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                             f"{meta['resourceVersion']}")
        policy = options.get("propagationPolicy")
        if policy is None and options.get("orphanDependents") is not None:
            policy = "Orphan" if options["orphanDependents"] else "Background"
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise E.invalid("meta.k8s.io", "DeleteOptions", "", [E.FieldError(
                "FieldValueNotSupported", "propagationPolicy", policy,
                'supported values: "Foreground", "Background", "Orphan", "nil"')])
        if dry_run:
            return 200, self.typed(res, obj)
        finalizers = list(meta.get("finalizers") or [])
        if policy == "Orphan" and "orphan" not in finalizers:
            finalizers.append("orphan")
        if policy == "Foreground" and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        graceful = self._pod_grace(obj, options) if res.plural == "pods" else None
        if res.plural == "namespaces" or finalizers or graceful is not None:
            if meta.get("deletionTimestamp"):
                if graceful is not None and graceful < (meta.get("deletionGracePeriodSeconds")
                                                        or 0):
                    meta["deletionGracePeriodSeconds"] = graceful
                    meta["deletionTimestamp"] = now(graceful)
                    obj = self.store.update(res, obj)
                return 200, self.typed(res, obj)
            grace = graceful if graceful is not None else 0
            meta["deletionTimestamp"] = now(grace)
            meta["deletionGracePeriodSeconds"] = grace
            meta["finalizers"] = finalizers or meta.get("finalizers")
            if not meta["finalizers"]:
                meta.pop("finalizers")
            if res.plural == "namespaces":
                obj.setdefault("status", {})["phase"] = "Terminating"
            obj = self.store.update(res, obj)
            return (202 if options.get("orphanDependents") is False else 200), \
                self.typed(res, obj)
        last = self.store.delete(res, namespace, name)
        if res.returns_deleted:
            return 200, self.typed(res, last)
        return 200, E.status_success(res.group, res.plural, name, meta["uid"])

    @staticmethod
    def _pod_grace(pod: dict[str, Any], options: dict[str, Any]) -> int | None:
        """The grace period of a pod deletion, None when it is deleted at once."""
        grace = options.get("gracePeriodSeconds")
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        phase = (pod.get("status") or {}).get("phase")
        if not pod["spec"].get("nodeName") or phase in ("Succeeded", "Failed") or grace == 0:
            return None
        return max(int(grace), 1)

    def delete_collection(self, res: ResourceType, namespace: str | None,
                          labels: LabelSelector, fields: FieldSelector,
                          options: dict[str, Any] | None = None) -> dict[str, Any]:
        listed = self.list(res, namespace, labels=labels, fields=fields)
        for item in listed["items"]:
            try:
                self.delete(res, item["metadata"].get("namespace"), item["metadata"]["name"],
                            options)
            except E.StatusError as exc:
                if exc.code != 404:
                    raise
        listed["metadata"] = {"resourceVersion": str(self.store.rv)}
        return listed


def _sort_key(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace') or ''}/{meta['name']}"
