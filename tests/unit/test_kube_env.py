"""The kubelet's environment and volume files, rebuilt without a cluster: table tests of
:func:`bridged.workload.kubelet.resolve_env`, the rewrites, the output formats and
:func:`bridged.kube.files.layout_files` (plus writing a layout into a temporary folder)."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from bridged.errors import ConfigError
from bridged.kube.env import parse_ref, write_env_file
from bridged.kube.files import FilesLayout, layout_files, volume_references, write_layout
from bridged.workload.downward import (
    format_map,
    go_quote,
    parse_quantity,
    pod_fields_of,
    template_fields,
)
from bridged.workload.formats import format_env, format_warnings
from bridged.workload.kubelet import (
    env_references,
    expand,
    pick_container,
    resolve_env,
    service_env,
)
from bridged.workload.result import EnvResult, EnvVar
from bridged.workload.rewrites import apply_rewrites, rewrite_value, service_rewrites

NS = "team-a"


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def pod(containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"containers": containers, **spec}


def running_pod_fields(**extra: Any) -> dict[str, Any]:
    fields = pod_fields_of({
        "metadata": {"name": "orders-7f9c-abcde", "namespace": NS, "uid": "u-1",
                     "labels": {"app": "orders", "tier": "back"},
                     "annotations": {"team": "a\tb", "note": 'say "hi"\n'}},
        "spec": {"nodeName": "node-1", "serviceAccountName": "orders"},
        "status": {"phase": "Running", "podIP": "10.244.1.7",
                   "podIPs": [{"ip": "10.244.1.7"}, {"ip": "fd00::7"}],
                   "hostIP": "192.168.0.10", "hostIPs": [{"ip": "192.168.0.10"}]}})
    fields.update(extra)
    return fields


def resolve(containers: list[dict[str, Any]], container: str | None = None, *,
            configmaps: dict[str, Any] | None = None, secrets: dict[str, Any] | None = None,
            fields: dict[str, Any] | None = None, **kwargs: Any) -> EnvResult:
    return resolve_env(pod(containers), container, configmaps=configmaps or {},
                       secrets=secrets or {},
                       pod_fields=running_pod_fields() if fields is None else fields, **kwargs)


def env_of(result: EnvResult) -> dict[str, str]:
    return result.as_dict()


# --- $(VAR) expansion: the cases of third_party/forked/golang/expansion/expand_test.go -------

EXPANSION_CONTEXT = {"VAR_A": "A", "VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)",
                     "VAR_EMPTY": ""}


@pytest.mark.parametrize(("given", "expected"), [
    ("$(VAR_A)", "A"),
    ("$(VAR_A)-$(VAR_A)", "A-A"),
    ("$(VAR_A)-1", "A-1"),
    ("___$(VAR_B)___", "___B___"),
    ("___$(VAR_C)", "___C"),
    ("$(VAR_A)_$(VAR_B)_$(VAR_C)", "A_B_C"),
    ("$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"),
    ("$$(VAR_A)_$$(VAR_B)", "$(VAR_A)_$(VAR_B)"),
    ("f000-$$VAR_A", "f000-$VAR_A"),
    ("foo\\$(VAR_C)bar", "foo\\Cbar"),
    ("foo\\\\$(VAR_C)bar", "foo\\\\Cbar"),
    ("foo\\\\\\\\$(VAR_A)bar", "foo\\\\\\\\Abar"),
    ("$(VAR_A$(VAR_B))", "$(VAR_A$(VAR_B))"),
    ("$(VAR_A$(VAR_B)", "$(VAR_A$(VAR_B)"),
    ("$(VAR_REF)", "$(VAR_A)"),
    ("%%$(VAR_REF)--$(VAR_REF)%%", "%%$(VAR_A)--$(VAR_A)%%"),
    ("foo$(VAR_EMPTY)bar", "foobar"),
    ("foo$(VAR_Awhoops!", "foo$(VAR_Awhoops!"),
    ("f00__(VAR_A)__", "f00__(VAR_A)__"),
    ("$?_boo_$!", "$?_boo_$!"),
    ("$VAR_A", "$VAR_A"),
    ("$(VAR_DNE)", "$(VAR_DNE)"),
    ("$$$$$$(BIG_MONEY)", "$$$(BIG_MONEY)"),
    ("$$$$$$(VAR_A)", "$$$(VAR_A)"),
    ("$$$$$$$(GOOD_ODDS)", "$$$$(GOOD_ODDS)"),
    ("$$$$$$$(VAR_A)", "$$$A"),
    ("$VAR_A)", "$VAR_A)"),
    ("${VAR_A}", "${VAR_A}"),
    ("$(VAR_B)_______$(A", "B_______$(A"),
    ("$(VAR_C)_______$(", "C_______$("),
    ("$(VAR_A)foobarzab$", "Afoobarzab$"),
    ("foo-\\$(VAR_A", "foo-\\$(VAR_A"),
    ("--$($($($($--", "--$($($($($--"),
    ("$($($($($--foo$(", "$($($($($--foo$("),
    ("foo0--$($($($(", "foo0--$($($($("),
    ("$(foo$$var)", "$(foo$$var)"),
    ("\n", "\n"),
    ("$()", "$()"),
    ("é$(VAR_A)ü", "éAü"),
])
def test_expansion_follows_the_kubelet(given: str, expected: str) -> None:
    assert expand(given, EXPANSION_CONTEXT.get)[0] == expected


def test_expansion_reports_the_names_it_substituted() -> None:
    assert expand("$(VAR_A)$$(VAR_B)$(NOPE)$(VAR_C)", EXPANSION_CONTEXT.get)[1] == [
        "VAR_A", "VAR_C"]


# --- envFrom and env ------------------------------------------------------------------------


def test_env_from_in_order_then_env_in_order_later_wins() -> None:
    result = resolve([{"name": "app", "envFrom": [
        {"configMapRef": {"name": "one"}},
        {"configMapRef": {"name": "two"}},
        {"secretRef": {"name": "creds"}, "prefix": "DB_"},
    ], "env": [
        {"name": "B", "value": "from env"},
        {"name": "C", "value": "first"},
        {"name": "C", "value": "second"},
    ]}], configmaps={
        "one": {"data": {"A": "1", "B": "1", "Z": "1"}, "binaryData": {"BIN": b64("x")}},
        "two": {"data": {"A": "2"}},
    }, secrets={"creds": {"data": {"USER": b64("app"), "PASSWORD": b64("s3cr3t")}}})
    assert env_of(result) == {"A": "2", "B": "from env", "Z": "1", "DB_PASSWORD": "s3cr3t",
                              "DB_USER": "app", "C": "second"}
    assert [v.name for v in result.vars] == ["A", "B", "Z", "DB_PASSWORD", "DB_USER", "C"]
    sources = {v.name: v.source for v in result.vars}
    assert sources == {"A": "configmap/two", "B": "env", "Z": "configmap/one",
                       "DB_PASSWORD": "secret/creds", "DB_USER": "secret/creds", "C": "env"}
    assert result.secret_names == ("DB_PASSWORD", "DB_USER")
    assert result.has_secrets
    assert result.container == "app"


@pytest.mark.parametrize("kind", ["configMapRef", "secretRef"])
def test_env_from_optional_missing_source_is_skipped(kind: str) -> None:
    result = resolve([{"name": "app", "envFrom": [{kind: {"name": "gone", "optional": True}}],
                       "env": [{"name": "X", "value": "1"}]}])
    assert env_of(result) == {"X": "1"}


@pytest.mark.parametrize(("kind", "label"), [("configMapRef", "ConfigMap"),
                                             ("secretRef", "Secret")])
def test_env_from_required_missing_source_is_an_error(kind: str, label: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve([{"name": "app", "envFrom": [{kind: {"name": "gone"}}]}])
    message = str(err.value)
    assert "'app'" in message and f"{label} {NS}/gone" in message
    assert "CreateContainerConfigError" in message


def test_env_from_names_strict_rule_skips_and_reports_like_the_kubelet_event() -> None:
    containers = [{"name": "app", "envFrom": [
        {"configMapRef": {"name": "cm"}},
        {"secretRef": {"name": "s"}, "prefix": "P."},
    ]}]
    configmaps = {"cm": {"data": {"1ABC": "a", "OK": "b", "..x": "c", "my.name-x": "d"}}}
    secrets = {"s": {"data": {"9": b64("z"), "K": b64("k")}}}
    strict = resolve(containers, configmaps=configmaps, secrets=secrets, strict_names=True)
    assert env_of(strict) == {"OK": "b", "my.name-x": "d", "P.9": "z", "P.K": "k"}
    assert [(s.kind, s.name, s.keys) for s in strict.skipped] == [
        ("configMap", "cm", ("..x", "1ABC"))]
    assert strict.skipped[0].message == (
        f"Keys [..x, 1ABC] from the EnvFrom configMap {NS}/cm were skipped since they are "
        "considered invalid environment variable names.")
    relaxed = resolve(containers, configmaps=configmaps, secrets=secrets)
    assert set(env_of(relaxed)) == {"1ABC", "OK", "..x", "my.name-x", "P.9", "P.K"}
    assert relaxed.skipped == ()


def test_relaxed_names_still_skip_what_no_environment_can_hold() -> None:
    result = resolve([{"name": "app", "envFrom": [{"configMapRef": {"name": "cm"},
                                                   "prefix": "A="}]}],
                     configmaps={"cm": {"data": {"X": "1"}}})
    assert env_of(result) == {}
    assert result.skipped[0].keys == ("A=X",)


def stores(store: str, objects: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(configmaps, secrets) with ``objects`` in ``store``."""
    return (objects, {}) if store == "configmaps" else ({}, objects)


@pytest.mark.parametrize(("ref_kind", "store"), [("configMapKeyRef", "configmaps"),
                                                 ("secretKeyRef", "secrets")])
def test_key_refs(ref_kind: str, store: str) -> None:
    encode = b64 if store == "secrets" else str
    objects = {"obj": {"data": {"k": encode("v")}}}
    env = [
        {"name": "FOUND", "valueFrom": {ref_kind: {"name": "obj", "key": "k"}}},
        {"name": "NO_KEY", "valueFrom": {ref_kind: {"name": "obj", "key": "x",
                                                    "optional": True}}},
        {"name": "NO_OBJ", "valueFrom": {ref_kind: {"name": "gone", "key": "k",
                                                    "optional": True}}},
    ]
    configmaps, secrets = stores(store, objects)
    result = resolve([{"name": "app", "env": env}], configmaps=configmaps, secrets=secrets)
    assert env_of(result) == {"FOUND": "v"}
    assert result.get("FOUND") == EnvVar("FOUND", "v", f"{store[:-1]}/obj:k",
                                         secret=store == "secrets")


@pytest.mark.parametrize(("ref_kind", "store", "label"), [
    ("configMapKeyRef", "configmaps", "ConfigMap"), ("secretKeyRef", "secrets", "Secret")])
@pytest.mark.parametrize("missing", ["object", "key"])
def test_missing_required_key_ref_names_container_var_object_and_key(
        ref_kind: str, store: str, label: str, missing: str) -> None:
    objects = {"obj": {"data": {"other": b64("v")}}} if missing == "key" else {}
    configmaps, secrets = stores(store, objects)
    with pytest.raises(ConfigError) as err:
        resolve([{"name": "web", "env": [
            {"name": "DB_URL", "valueFrom": {ref_kind: {"name": "obj", "key": "url"}}}]}],
            configmaps=configmaps, secrets=secrets)
    message = str(err.value)
    for part in ("'web'", "'DB_URL'", f"{label} {NS}/obj", "'url'"):
        assert part in message
    assert ("does not exist" in message) == (missing == "object")


def test_optional_key_ref_that_is_missing_leaves_the_env_from_value() -> None:
    result = resolve([{"name": "app", "envFrom": [{"configMapRef": {"name": "cm"}}], "env": [
        {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nope",
                                                        "optional": True}}}]}],
        configmaps={"cm": {"data": {"A": "from envFrom"}}})
    assert env_of(result) == {"A": "from envFrom"}


def test_value_expands_against_what_is_defined_so_far() -> None:
    result = resolve([{"name": "app", "envFrom": [{"configMapRef": {"name": "cm"}}], "env": [
        {"name": "EARLY", "value": "$(LATE)|$(FROM_CM)|$(LATER_CM_OVERRIDE)"},
        {"name": "LATE", "value": "late"},
        {"name": "LATER_CM_OVERRIDE", "value": "env"},
        {"name": "AFTER", "value": "$(LATE)|$(LATER_CM_OVERRIDE)|$$(LATE)|$(NOPE)"},
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
        {"name": "DSN", "value": "postgres://app:$(PASSWORD)@db:5432/app"},
        {"name": "EMPTY", "value": ""},
        {"name": "SVC", "value": "$(REDIS_SERVICE_HOST):$(REDIS_SERVICE_PORT)"},
    ]}], configmaps={"cm": {"data": {"FROM_CM": "cm", "LATER_CM_OVERRIDE": "cm"}}},
        secrets={"s": {"data": {"pw": b64("pw!")}}},
        services=[{"metadata": {"name": "redis", "namespace": NS},
                   "spec": {"clusterIP": "10.96.0.12", "ports": [{"port": 6379}]}}])
    env = env_of(result)
    assert env["EARLY"] == "$(LATE)|cm|cm"
    assert env["AFTER"] == "late|env|$(LATE)|$(NOPE)"
    assert env["DSN"] == "postgres://app:pw!@db:5432/app"
    assert env["EMPTY"] == ""
    assert env["SVC"] == "10.96.0.12:6379"
    assert result.get("DSN").secret  # type: ignore[union-attr]
    assert not result.get("AFTER").secret  # type: ignore[union-attr]
    assert set(result.secret_names) == {"PASSWORD", "DSN"}


def test_secret_values_that_are_not_text_are_kept_and_reported() -> None:
    result = resolve([{"name": "app", "env": [
        {"name": "BIN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}],
        secrets={"s": {"data": {"k": b64(b"\xff\x00a")}}})
    assert result.get("BIN").value.encode("utf-8", "surrogateescape") == b"\xff\x00a"  # type: ignore[union-attr]
    assert any("not UTF-8" in w for w in result.warnings)
    assert any("NUL" in w for w in result.warnings)


# --- the downward API -----------------------------------------------------------------------


@pytest.mark.parametrize(("path", "expected"), [
    ("metadata.name", "orders-7f9c-abcde"),
    ("metadata.namespace", NS),
    ("metadata.uid", "u-1"),
    ("metadata.labels['app']", "orders"),
    ("metadata.labels['absent']", ""),
    ("metadata.annotations['team']", "a\tb"),
    ("spec.nodeName", "node-1"),
    ("spec.serviceAccountName", "orders"),
    ("status.podIP", "10.244.1.7"),
    ("status.podIPs", "10.244.1.7,fd00::7"),
    ("status.hostIP", "192.168.0.10"),
    ("status.hostIPs", "192.168.0.10"),
    ("metadata.labels", 'app="orders"\ntier="back"'),
    ("metadata.annotations", 'note="say \\"hi\\"\\n"\nteam="a\\tb"'),
])
def test_field_refs_of_a_running_pod(path: str, expected: str) -> None:
    result = resolve([{"name": "app", "env": [
        {"name": "F", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}]}])
    assert result.get("F") == EnvVar("F", expected, f"fieldRef:{path}")


@pytest.mark.parametrize(("path", "known"), [
    ("metadata.name", None), ("metadata.uid", None), ("spec.nodeName", None),
    ("status.podIP", None), ("status.podIPs", None), ("status.hostIP", None),
    ("metadata.namespace", NS), ("spec.serviceAccountName", "default"),
    ("metadata.labels['app']", "orders"), ("metadata.labels['pod-template-hash']", None),
    ("metadata.annotations['a']", "b"),
])
def test_field_refs_of_a_template_mark_what_only_a_pod_has(path: str, known: str | None) -> None:
    fields = template_fields({"metadata": {"labels": {"app": "orders"},
                                           "annotations": {"a": "b"}}}, NS, "no pod runs")
    result = resolve([{"name": "app", "env": [
        {"name": "F", "valueFrom": {"fieldRef": {"fieldPath": path}}},
        {"name": "USES", "value": "ip=$(F)"}]}], fields=fields)
    var = result.get("F")
    assert var is not None
    if known is None:
        assert var.value == "" and var.unknown and "no pod runs" in var.unknown
        assert result.get("USES").value == "ip=$(F)"  # type: ignore[union-attr]
        assert "$(F)" in (result.get("USES").unknown or "")  # type: ignore[union-attr]
        assert set(result.unknown) == {"F", "USES"}
    else:
        assert (var.value, var.unknown) == (known, None)


def test_a_pending_pod_has_no_ip_yet() -> None:
    fields = pod_fields_of({"metadata": {"name": "p", "namespace": NS},
                            "spec": {}, "status": {"phase": "Pending"}})
    result = resolve([{"name": "app", "env": [
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]}],
        fields=fields)
    assert "phase Pending" in (result.get("IP").unknown or "")  # type: ignore[union-attr]


@pytest.mark.parametrize("field_ref", [
    {"fieldPath": "spec.restartPolicy"}, {"fieldPath": "metadata.generateName"},
    {"apiVersion": "v2", "fieldPath": "metadata.name"}])
def test_field_refs_the_api_rejects_are_errors(field_ref: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        resolve([{"name": "app", "env": [{"name": "F", "valueFrom": {"fieldRef": field_ref}}]}])


# --- resourceFieldRef -----------------------------------------------------------------------


@pytest.mark.parametrize(("resources", "resource", "divisor", "expected"), [
    ({"limits": {"cpu": "250m"}}, "limits.cpu", None, "1"),
    ({"limits": {"cpu": "250m"}}, "limits.cpu", "1m", "250"),
    ({"limits": {"cpu": "1.5"}}, "limits.cpu", "1", "2"),
    ({"limits": {"cpu": "2"}}, "limits.cpu", "0", "2"),
    # MilliValue() of 1n rounds up to 1, so the kubelet divides by one milli (the API only
    # accepts 1m and 1 for cpu; this shows we compute as the kubelet does)
    ({"limits": {"cpu": "100m"}}, "limits.cpu", "1n", "100"),
    ({"limits": {"cpu": "1"}, "requests": {"cpu": "10m"}}, "requests.cpu", "1m", "10"),
    ({"limits": {"cpu": "300m"}}, "requests.cpu", "1m", "300"),  # requests default to limits
    ({}, "requests.cpu", None, "0"),
    ({"limits": {"memory": "100M"}}, "limits.memory", "1Mi", "96"),
    ({"limits": {"memory": "1Gi"}}, "limits.memory", "1Mi", "1024"),
    ({"limits": {"memory": "1Gi"}}, "limits.memory", None, "1073741824"),
    ({"requests": {"memory": "64Mi"}, "limits": {"memory": "128Mi"}}, "requests.memory", "1Mi",
     "64"),
    ({"limits": {"memory": "1500k"}}, "limits.memory", "1M", "2"),
    ({"limits": {"ephemeral-storage": "2Gi"}}, "limits.ephemeral-storage", "1Gi", "2"),
    ({"limits": {"hugepages-2Mi": "4Mi"}}, "limits.hugepages-2Mi", "2Mi", "2"),
    ({}, "limits.hugepages-2Mi", None, "0"),
    ({}, "limits.memory", "1Mi", "8192"),  # no limit: the node's allocatable (8Gi)
    ({}, "limits.cpu", "1m", "3500"),
])
def test_resource_field_refs(resources: dict[str, Any], resource: str, divisor: str | None,
                             expected: str) -> None:
    ref: dict[str, Any] = {"resource": resource}
    if divisor is not None:
        ref["divisor"] = divisor
    result = resolve([{"name": "app", "resources": resources, "env": [
        {"name": "R", "valueFrom": {"resourceFieldRef": ref}}]}],
        resources={"node_allocatable": {"cpu": "3500m", "memory": "8Gi",
                                        "ephemeral-storage": "100Gi"}})
    assert result.get("R") == EnvVar("R", expected, f"resourceFieldRef:{resource}")


def test_a_limit_that_is_not_set_without_the_node_is_unknown() -> None:
    result = resolve([{"name": "app", "env": [
        {"name": "R", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}}]}],
        resources=None)
    var = result.get("R")
    assert var is not None and var.value == "" and "allocatable memory" in (var.unknown or "")


def test_resource_field_ref_of_another_container() -> None:
    result = resolve([
        {"name": "app", "env": [{"name": "R", "valueFrom": {"resourceFieldRef": {
            "containerName": "side", "resource": "limits.memory", "divisor": "1Mi"}}}]},
        {"name": "side", "resources": {"limits": {"memory": "32Mi"}}}])
    assert env_of(result)["R"] == "32"


@pytest.mark.parametrize("ref", [{"resource": "limits.gpu"}, {"resource": "cpu"},
                                 {"resource": "limits.cpu", "containerName": "ghost"},
                                 {"resource": "limits.cpu", "divisor": "lots"}])
def test_resource_field_refs_the_api_rejects_are_errors(ref: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        resolve([{"name": "app", "resources": {"limits": {"cpu": "1"}},
                  "env": [{"name": "R", "valueFrom": {"resourceFieldRef": ref}}]}])


def test_file_key_refs_are_unknown_here() -> None:
    result = resolve([{"name": "app", "env": [{"name": "F", "valueFrom": {"fileKeyRef": {
        "volumeName": "config", "path": "app.env", "key": "A"}}}]}])
    assert "'config'" in (result.get("F").unknown or "")  # type: ignore[union-attr]


@pytest.mark.parametrize(("text", "value"), [
    ("1", Fraction(1)), ("250m", Fraction(1, 4)), ("1.5", Fraction(3, 2)),
    ("1Ki", Fraction(1024)), ("1Mi", Fraction(2**20)), ("2Gi", Fraction(2 * 2**30)),
    ("1k", Fraction(1000)), ("1M", Fraction(10**6)), ("1e3", Fraction(1000)),
    ("1E", Fraction(10**18)), ("5n", Fraction(5, 10**9)), ("12u", Fraction(12, 10**6)),
    (".5", Fraction(1, 2)), ("+2", Fraction(2)), ("-1", Fraction(-1)), (3, Fraction(3)),
    ("1.5e-3", Fraction(3, 2000)),
])
def test_quantities(text: str | int, value: Fraction) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "1.2.3", "1Kb", "Mi", "1 Mi", "abc", True])
def test_bad_quantities(text: object) -> None:
    with pytest.raises(ConfigError):
        parse_quantity(text)


# --- which container ------------------------------------------------------------------------

SPEC = pod([{"name": "app"}, {"name": "sidecar"}], initContainers=[{"name": "init"}])


@pytest.mark.parametrize(("name", "annotations", "expected"), [
    (None, {}, "app"),
    (None, {"kubectl.kubernetes.io/default-container": "sidecar"}, "sidecar"),
    (None, {"kubectl.kubernetes.io/default-container": "ghost"}, "app"),
    ("sidecar", {"kubectl.kubernetes.io/default-container": "app"}, "sidecar"),
    ("init", {}, "init"),
])
def test_default_container(name: str | None, annotations: dict[str, str],
                           expected: str) -> None:
    assert pick_container(SPEC, name, annotations)["name"] == expected


def test_default_container_through_resolve_env() -> None:
    fields = running_pod_fields()
    fields["metadata.annotations"] = {"kubectl.kubernetes.io/default-container": "side"}
    result = resolve([{"name": "app", "env": [{"name": "A", "value": "a"}]},
                      {"name": "side", "env": [{"name": "B", "value": "b"}]}], fields=fields)
    assert (result.container, env_of(result)) == ("side", {"B": "b"})


def test_unknown_container_lists_the_names() -> None:
    with pytest.raises(ConfigError) as err:
        pick_container(SPEC, "ghost")
    assert "'ghost'" in str(err.value) and "app, sidecar (init: init)" in str(err.value)


def test_references_are_exactly_what_the_container_uses() -> None:
    spec = pod([{"name": "app", "envFrom": [{"configMapRef": {"name": "a"}},
                                            {"secretRef": {"name": "s1"}}],
                 "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "b",
                                                                         "key": "k"}}},
                         {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "s2",
                                                                      "key": "k"}}},
                         {"name": "Z", "value": "v"}]},
                {"name": "other", "envFrom": [{"secretRef": {"name": "not-mine"}}]}])
    assert env_references(spec, None) == (frozenset({"a", "b"}), frozenset({"s1", "s2"}))
    assert env_references(spec, "other") == (frozenset(), frozenset({"not-mine"}))


# --- Service variables ----------------------------------------------------------------------


def test_service_variables_as_the_kubelet_names_them() -> None:
    env = service_env([
        {"metadata": {"name": "redis-master"}, "spec": {"clusterIP": "10.0.0.11", "ports": [
            {"name": "redis", "port": 6379, "protocol": "TCP"},
            {"name": "metrics", "port": 9121}]}},
        {"metadata": {"name": "dns"}, "spec": {"clusterIP": "fd00::10", "ports": [
            {"port": 53, "protocol": "UDP"}]}},
        {"metadata": {"name": "headless"}, "spec": {"clusterIP": "None", "ports": [
            {"port": 80}]}},
        {"metadata": {"name": "external"}, "spec": {"type": "ExternalName",
                                                    "externalName": "example.com"}},
    ])
    assert {k: v for k, (v, _) in env.items()} == {
        "REDIS_MASTER_SERVICE_HOST": "10.0.0.11",
        "REDIS_MASTER_SERVICE_PORT": "6379",
        "REDIS_MASTER_SERVICE_PORT_REDIS": "6379",
        "REDIS_MASTER_SERVICE_PORT_METRICS": "9121",
        "REDIS_MASTER_PORT": "tcp://10.0.0.11:6379",
        "REDIS_MASTER_PORT_6379_TCP": "tcp://10.0.0.11:6379",
        "REDIS_MASTER_PORT_6379_TCP_PROTO": "tcp",
        "REDIS_MASTER_PORT_6379_TCP_PORT": "6379",
        "REDIS_MASTER_PORT_6379_TCP_ADDR": "10.0.0.11",
        "REDIS_MASTER_PORT_9121_TCP": "tcp://10.0.0.11:9121",
        "REDIS_MASTER_PORT_9121_TCP_PROTO": "tcp",
        "REDIS_MASTER_PORT_9121_TCP_PORT": "9121",
        "REDIS_MASTER_PORT_9121_TCP_ADDR": "10.0.0.11",
        "DNS_SERVICE_HOST": "fd00::10",
        "DNS_SERVICE_PORT": "53",
        "DNS_PORT": "udp://[fd00::10]:53",
        "DNS_PORT_53_UDP": "udp://[fd00::10]:53",
        "DNS_PORT_53_UDP_PROTO": "udp",
        "DNS_PORT_53_UDP_PORT": "53",
        "DNS_PORT_53_UDP_ADDR": "fd00::10",
    }


SERVICES = [
    {"metadata": {"name": "redis", "namespace": NS},
     "spec": {"clusterIP": "10.96.0.12", "ports": [{"name": "tcp", "port": 6379}]}},
    {"metadata": {"name": "kubernetes", "namespace": "default"},
     "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443}]}},
]


def test_defined_variables_win_over_service_variables() -> None:
    result = resolve([{"name": "app", "env": [{"name": "REDIS_PORT", "value": "6379"}]}],
                     services=SERVICES)
    env = env_of(result)
    assert env["REDIS_PORT"] == "6379" and result.get("REDIS_PORT").source == "env"  # type: ignore[union-attr]
    assert env["REDIS_SERVICE_HOST"] == "10.96.0.12"
    assert result.get("REDIS_SERVICE_HOST").source == "service/redis"  # type: ignore[union-attr]
    assert next(iter(env)) == "REDIS_PORT"  # Service variables come last


def test_enable_service_links_false_keeps_only_the_master_service() -> None:
    result = resolve_env(pod([{"name": "app"}], enableServiceLinks=False), None,
                         configmaps={}, secrets={}, pod_fields=running_pod_fields(),
                         services=SERVICES)
    assert set(env_of(result)) == {k for k in service_env(SERVICES[1:])}


# --- rewrites -------------------------------------------------------------------------------

REWRITES = {
    **service_rewrites("redis", NS, "10.96.0.12", {6379: "127.0.0.1:16379"}),
    **service_rewrites("orders", NS, "10.96.0.20", {80: "127.0.0.2:18080",
                                                     443: "127.0.0.2:18443"}),
    **service_rewrites("postgres", NS, "None", {5432: "127.0.0.1:15432"}),
    "[fd00::12]:6379": "127.0.0.1:16379",
    "kafka-0.kafka:9092": "127.0.0.1:19092",
    "kafka-1.kafka:9092": "127.0.0.1:19093",
}


def test_service_rewrites_cover_every_name_of_the_service() -> None:
    assert service_rewrites("redis", NS, "10.96.0.12", {6379: "127.0.0.1:16379"}) == {
        "redis:6379": "127.0.0.1:16379",
        f"redis.{NS}:6379": "127.0.0.1:16379",
        f"redis.{NS}.svc:6379": "127.0.0.1:16379",
        f"redis.{NS}.svc.cluster.local:6379": "127.0.0.1:16379",
        "10.96.0.12:6379": "127.0.0.1:16379",
    }
    assert "[fd00::1]:53" in service_rewrites("dns", NS, "fd00::1", {53: "127.0.0.1:1053"})


@pytest.mark.parametrize(("value", "expected"), [
    # rule 1: host:port tokens
    ("redis:6379", "127.0.0.1:16379"),
    ("redis://redis:6379/0", "redis://127.0.0.1:16379/0"),
    ("redis://:pa:ss@redis:6379", "redis://:pa:ss@127.0.0.1:16379"),
    (f"REDIS.{NS}.SVC.cluster.local.:6379", "127.0.0.1:16379"),
    (f"redis.{NS}:6379", "127.0.0.1:16379"),
    ("10.96.0.12:6379", "127.0.0.1:16379"),
    ("[fd00::12]:6379", "127.0.0.1:16379"),
    ("http://[fd00::12]:6379/x", "http://127.0.0.1:16379/x"),
    ("kafka-0.kafka:9092,kafka-1.kafka:9092", "127.0.0.1:19092,127.0.0.1:19093"),
    ("--cache=redis:6379 --db=postgres:5432", "--cache=127.0.0.1:16379 --db=127.0.0.1:15432"),
    ("redis:6379:1", "127.0.0.1:16379:1"),
    ("use redis:6379.", "use 127.0.0.1:16379."),
    ('["redis:6379"]', '["127.0.0.1:16379"]'),
    ("tcp://10.96.0.12:6379", "tcp://127.0.0.1:16379"),
    # rule 2: URLs without a port
    ("redis://redis/0", "redis://127.0.0.1:16379/0"),
    ("http://orders", "http://127.0.0.2:18080"),
    ("http://orders/api?x=1#f", "http://127.0.0.2:18080/api?x=1#f"),
    (f"https://orders.{NS}.svc.cluster.local./", "https://127.0.0.2:18443/"),
    ("jdbc:postgresql://postgres/app", "jdbc:postgresql://127.0.0.1:15432/app"),
    ("http://user:orders@orders", "http://user:orders@127.0.0.2:18080"),
    ("see http://orders and redis:6379", "see http://127.0.0.2:18080 and 127.0.0.1:16379"),
    # left alone
    ("redis", "redis"),
    ("myredis:6379", "myredis:6379"),
    ("a.redis:6379", "a.redis:6379"),
    ("x_redis:6379", "x_redis:6379"),
    ("-redis:6379", "-redis:6379"),
    ("redis-cache:6379", "redis-cache:6379"),
    ("redis:63790", "redis:63790"),
    ("redis:6380", "redis:6380"),
    ("redis:6379-x", "redis:6379-x"),
    ("redis:6379.5", "redis:6379.5"),
    ("postgres://redis:6379@db:5432/x", "postgres://redis:6379@db:5432/x"),
    ("110.96.0.12:6379", "110.96.0.12:6379"),
    ("10.96.0.123:6379", "10.96.0.123:6379"),
    ("mongodb+srv://redis/x", "mongodb+srv://redis/x"),
    ("tcp://redis", "tcp://redis"),
    ("http://orders:8080", "http://orders:8080"),
    ("http://ordersx", "http://ordersx"),
    ("redis:6379redis", "redis:6379redis"),
])
def test_rewrite_value_rules(value: str, expected: str) -> None:
    from bridged.workload.rewrites import _parse_rewrites

    assert rewrite_value(value, _parse_rewrites(REWRITES)) == expected


def rewritten(variables: dict[str, str], rewrites: dict[str, str] | None = None) -> EnvResult:
    result = EnvResult("app", tuple(EnvVar(k, v, "env") for k, v in variables.items()))
    return apply_rewrites(result, REWRITES if rewrites is None else rewrites)


@pytest.mark.parametrize(("given", "expected"), [
    ({"REDIS_HOST": "redis", "REDIS_PORT": "6379"},
     {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": "16379"}),
    ({"cache_hostname": "redis", "cache_port": "6379"},
     {"cache_hostname": "127.0.0.1", "cache_port": "16379"}),
    ({"DB_ADDR": "10.96.0.12", "DB_PORT": "6379"}, {"DB_ADDR": "127.0.0.1", "DB_PORT": "16379"}),
    ({"DB_ADDRESS": "redis.", "DB_PORT": "6379"}, {"DB_ADDRESS": "127.0.0.1", "DB_PORT": "16379"}),
    # a port that is not forwarded: both left alone
    ({"REDIS_HOST": "redis", "REDIS_PORT": "6380"}, {"REDIS_HOST": "redis", "REDIS_PORT": "6380"}),
    # the host alone
    ({"ORDERS_HOST": "orders"}, {"ORDERS_HOST": "127.0.0.2"}),
    # the Docker-link REDIS_PORT=tcp://... of Service "redis" is no port: the host stands alone
    ({"REDIS_HOST": "redis", "REDIS_PORT": "tcp://10.96.0.12:6379"},
     {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": "tcp://127.0.0.1:16379"}),
    # a value that happens to be a service name but no host variable: left alone
    ({"CACHE_BACKEND": "redis", "REDIS": "redis", "PORT": "6379"},
     {"CACHE_BACKEND": "redis", "REDIS": "redis", "PORT": "6379"}),
    # the port variable alone is left alone
    ({"REDIS_PORT": "6379"}, {"REDIS_PORT": "6379"}),
    # a host with spaces around is not the host
    ({"REDIS_HOST": " redis", "REDIS_PORT": "6379"},
     {"REDIS_HOST": " redis", "REDIS_PORT": "6379"}),
])
def test_pair_rules(given: dict[str, str], expected: dict[str, str]) -> None:
    result = rewritten(given)
    assert result.as_dict() == expected
    assert set(result.rewritten) == {k for k in given if given[k] != expected[k]}
    for name, (before, after) in result.rewritten.items():
        assert (before, after) == (given[name], expected[name])


def test_service_variables_are_rewritten_to_the_forward() -> None:
    result = resolve([{"name": "app"}], services=SERVICES[:1], rewrites=REWRITES)
    assert env_of(result) == {
        "REDIS_SERVICE_HOST": "127.0.0.1",
        "REDIS_SERVICE_PORT": "16379",
        "REDIS_SERVICE_PORT_TCP": "16379",
        "REDIS_PORT": "tcp://127.0.0.1:16379",
        "REDIS_PORT_6379_TCP": "tcp://127.0.0.1:16379",
        "REDIS_PORT_6379_TCP_PROTO": "tcp",
        "REDIS_PORT_6379_TCP_PORT": "16379",
        "REDIS_PORT_6379_TCP_ADDR": "127.0.0.1",
    }


def test_named_service_ports_follow_their_own_forward() -> None:
    services = [{"metadata": {"name": "orders"}, "spec": {"clusterIP": "10.96.0.20", "ports": [
        {"name": "http", "port": 80}, {"name": "https", "port": 443},
        {"name": "grpc", "port": 9090}]}}]
    env = env_of(resolve([{"name": "app"}], services=services, rewrites=REWRITES))
    assert env["ORDERS_SERVICE_HOST"] == "127.0.0.2"
    assert env["ORDERS_SERVICE_PORT"] == env["ORDERS_SERVICE_PORT_HTTP"] == "18080"
    assert env["ORDERS_SERVICE_PORT_HTTPS"] == "18443"
    assert env["ORDERS_SERVICE_PORT_GRPC"] == "9090"  # not forwarded
    assert env["ORDERS_PORT_9090_TCP"] == "tcp://10.96.0.20:9090"


def test_host_alone_warns_when_the_port_moved_and_ambiguity_leaves_it() -> None:
    result = rewritten({"REDIS_HOST": "redis"})
    assert result.as_dict() == {"REDIS_HOST": "127.0.0.1"}
    assert any("6379 -> 16379" in w for w in result.warnings)
    split = rewritten({"X_HOST": "svc"}, {"svc:80": "127.0.0.1:1080",
                                          "svc:81": "127.0.0.3:1081"})
    assert split.as_dict() == {"X_HOST": "svc"}


def test_conflicting_claims_on_a_port_variable_leave_it_and_warn() -> None:
    result = rewritten({"A_HOST": "redis", "A_ADDR": "orders", "A_PORT": "6379"},
                       {"redis:6379": "127.0.0.1:16379", "orders:6379": "127.0.0.1:26379"})
    assert result.as_dict()["A_PORT"] == "6379"
    assert any("A_PORT" in w for w in result.warnings)


def test_rewrites_keep_secret_flags_and_bad_rewrites_are_errors() -> None:
    result = apply_rewrites(EnvResult("app", (EnvVar("URL", "redis://redis:6379", "secret/s:u",
                                                     secret=True),)), REWRITES)
    assert result.vars[0].secret and result.vars[0].rewritten_from == "redis://redis:6379"
    for bad in ({"redis": "127.0.0.1:1"}, {"redis:x": "127.0.0.1:1"},
                {"redis:6379": "127.0.0.1"}, {"fd00::1:80": "127.0.0.1:1"},
                {"redis:0": "127.0.0.1:1"}):
        with pytest.raises(ConfigError):
            apply_rewrites(result, bad)


# --- formats --------------------------------------------------------------------------------

TRICKY = {
    "PLAIN": "value",
    "EMPTY": "",
    "SPACES_IN": "a b  c",
    "LEADING": "  lead",
    "TRAILING": "trail ",
    "QUOTE1": "it's",
    "QUOTE2": 'say "hi"',
    "STARTS_QUOTE": "'quoted'",
    "STARTS_DQUOTE": '"x"',
    "HASH": "a#b",
    "HASH_SPACE": "a #b",
    "STARTS_HASH": "#x",
    "DOLLAR": "$HOME $(X) $$",
    "BACKSLASH": "C:\\dir\\file",
    "BACKSLASH_N": "a\\nb",
    "NEWLINE": "line1\nline2",
    "CR": "a\rb",
    "TAB": "a\tb",
    "UNICODE": "héllo wörld ✓",
    "EQUALS": "a=b=c",
    "JSON": '{"a": [1, 2], "b": "c d"}',
    "BRACES": "${NOT_EXPANDED}",
    "ENDS_BACKSLASH": "dir\\",
}


def tricky_result() -> EnvResult:
    return EnvResult("app", tuple(EnvVar(k, v, "env") for k, v in TRICKY.items()))


def read_python_dotenv(text: str) -> dict[str, str]:
    """python-dotenv's reader (src/dotenv/parser.py, interpolation off) for the lines
    format_env writes: comments, ``KEY=unquoted`` and ``KEY='single quoted'``."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        ws = re.compile(r"\s*").match(text, pos)
        assert ws is not None
        pos = ws.end()
        if pos >= len(text):
            break
        if text[pos] == "#":
            pos = text.find("\n", pos) + 1 or len(text)
            continue
        key = re.compile(r"([^=#\s]+)").match(text, pos)
        assert key is not None, text[pos:pos + 40]
        pos = key.end()
        eq = re.compile(r"=[^\S\r\n]*").match(text, pos)
        assert eq is not None
        pos = eq.end()
        if text.startswith("'", pos):
            m = re.compile(r"'((?:\\'|[^'])*)'").match(text, pos)
            assert m is not None
            value = re.sub(r"\\[\\']", lambda e: e.group(0)[1], m.group(1))
            pos = m.end()
        else:
            m = re.compile(r"([^\r\n]*)").match(text, pos)
            assert m is not None
            part = m.group(1)
            value = "" if len(eq.group(0)) > 1 and part.startswith("#") \
                else re.sub(r"\s+#.*", "", part).rstrip()
            pos = m.end()
        end = re.compile(r"[^\S\r\n]*(?:#[^\r\n]*)?(?:\r\n|\n|\r|$)").match(text, pos)
        assert end is not None, text[pos:pos + 40]
        pos = end.end()
        out[key.group(1)] = value
    return out


def read_docker_env_file(text: str) -> dict[str, str]:
    """docker's ``--env-file`` (cli/opts/file.go): lines, left-trimmed, ``#`` comments,
    ``KEY=VALUE`` with the value taken literally."""
    out = {}
    for raw in text.split("\n"):
        line = raw.removesuffix("\r").lstrip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        out[key] = value
    return out


def test_dotenv_round_trips_through_python_dotenv_and_docker() -> None:
    text = format_env(tricky_result(), "dotenv")
    problems = format_warnings(tricky_result(), "dotenv")
    by_python = read_python_dotenv(text)
    by_docker = read_docker_env_file(text)
    for name, value in TRICKY.items():
        assert by_python[name] == value, name
        if not any(p.startswith(f"{name}: docker") for p in problems):
            assert by_docker[name] == value, name
    noted = {p.split(":")[0] for p in problems}
    assert noted == {"LEADING", "TRAILING", "STARTS_QUOTE", "STARTS_DQUOTE", "HASH_SPACE",
                     "STARTS_HASH", "NEWLINE", "CR", "BRACES"}
    assert any(p == "BRACES: python-dotenv expands ${...} in it unless interpolate=False"
               for p in problems)
    assert "PLAIN=value\n" in text and "QUOTE1=it's\n" in text and "EMPTY=\n" in text
    assert "NEWLINE='line1\nline2'\n" in text


def test_dotenv_quoted_value_ending_with_a_backslash_is_noted() -> None:
    """python-dotenv's quoted-value regex reads ``\\'`` as an escaped quote when another
    quote follows later in the file: such values are noted (and read back when last)."""
    last = EnvResult("app", (EnvVar("A", " x\\", "env"),))
    assert read_python_dotenv(format_env(last, "dotenv")) == {"A": " x\\"}
    assert format_warnings(last, "dotenv") == [
        "A: docker --env-file keeps the quotes (it reads values literally)",
        "A: python-dotenv may misread a quoted value that ends with a backslash"]
    plain = EnvResult("app", (EnvVar("A", "C:\\dir\\", "env"), EnvVar("B", "'b'", "env")))
    assert read_python_dotenv(format_env(plain, "dotenv")) == {"A": "C:\\dir\\", "B": "'b'"}


def test_shell_round_trips_through_a_posix_shell(tmp_path: Path) -> None:
    result = EnvResult("app", (*tricky_result().vars, EnvVar("not.shell", "x", "env"),
                               EnvVar("1X", "y", "env")))
    path = tmp_path / "env.sh"
    path.write_text(format_env(result, "shell"))
    dump = "import json, os, sys; json.dump(dict(os.environ), sys.stdout)"
    out = subprocess.run(["/bin/sh", "-c", '. "$1" && exec "$2" -c "$3"', "sh", str(path),
                          sys.executable, dump], capture_output=True, text=True, check=True,
                         env={"PATH": os.environ.get("PATH", "")}, timeout=30)
    env = json.loads(out.stdout)
    for name, value in TRICKY.items():
        assert env[name] == value, name
    assert "not.shell" not in env and "1X" not in env
    assert set(format_warnings(result, "shell")) == {
        "not.shell: not a shell variable name, left out",
        "1X: not a shell variable name, left out"}
    assert "export QUOTE1='it'\\''s'" in path.read_text()


def test_json_round_trips() -> None:
    assert json.loads(format_env(tricky_result(), "json")) == TRICKY


def test_format_comments_say_secrets_unknowns_and_rewrites() -> None:
    result = EnvResult("app", (
        EnvVar("PW", "s", "secret/db:pw", secret=True),
        EnvVar("IP", "", "fieldRef:status.podIP", unknown="status.podIP: no pod runs"),
        EnvVar("URL", "127.0.0.1:1", "env", rewritten_from="redis:6379"),
    ), source="deployment/orders in team-a, pod template (no pod runs)")
    for fmt in ("dotenv", "shell"):
        text = format_env(result, fmt)
        assert text.startswith("# environment of container app (deployment/orders in team-a")
        assert "# holds Secret data: PW\n" in text
        assert "# unknown here, left empty: IP: status.podIP: no pod runs\n" in text
        assert "# service addresses made local: URL\n" in text
        assert "redis:6379" not in text  # old values stay out (they may be secret)


@pytest.mark.parametrize("fmt", ["dotenv", "shell"])
def test_values_no_environment_can_hold_are_refused(fmt: str) -> None:
    with pytest.raises(ConfigError):
        format_env(EnvResult("app", (EnvVar("A", "a\x00b", "env"),)), fmt)


def test_dotenv_leaves_out_names_it_cannot_hold() -> None:
    result = EnvResult("app", (EnvVar("a b", "1", "env"), EnvVar("a#b", "2", "env"),
                               EnvVar("ok.name-1", "3", "env")))
    assert read_python_dotenv(format_env(result, "dotenv")) == {"ok.name-1": "3"}
    assert len(format_warnings(result, "dotenv")) == 2


def test_unknown_format() -> None:
    with pytest.raises(ConfigError):
        format_env(tricky_result(), "yaml")


@pytest.mark.parametrize(("secret", "mode"), [(True, 0o600), (False, 0o644)])
def test_env_files_with_secrets_are_private(tmp_path: Path, secret: bool, mode: int) -> None:
    path = tmp_path / ".env"
    path.write_text("old")
    os.chmod(path, 0o666)
    result = EnvResult("app", (EnvVar("A", "é", "secret/x:a" if secret else "env",
                                      secret=secret),))
    assert write_env_file(result, path, "dotenv") == mode
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert path.read_text(encoding="utf-8").endswith("A=é\n")
    assert [p.name for p in tmp_path.iterdir()] == [".env"]


@pytest.mark.parametrize(("text", "quoted"), [
    ("plain", '"plain"'), ('a"b', '"a\\"b"'), ("a\\b", '"a\\\\b"'), ("\n\t\r", '"\\n\\t\\r"'),
    ("\x07\x08\x0b\x0c", '"\\a\\b\\v\\f"'), ("\x01\x7f", '"\\x01\\x7f"'), ("é✓", '"é✓"'),
    ("\u200b", '"\\u200b"'), ("\U000e0001", '"\\U000e0001"'), ("\u00a0", '"\\u00a0"'),
    ("\udcff", '"\\xff"'),
])
def test_go_quote(text: str, quoted: str) -> None:
    assert go_quote(text) == quoted


def test_format_map_is_sorted_without_final_newline() -> None:
    assert format_map({"b": "2", "a": 'x"y'}) == 'a="x\\"y"\nb="2"'


@pytest.mark.parametrize(("ref", "parsed"), [
    ("deploy/orders", ("Deployment", "orders")), ("deployment/orders", ("Deployment", "orders")),
    ("Deployment/orders", ("Deployment", "orders")), ("sts/db", ("StatefulSet", "db")),
    ("statefulset/db", ("StatefulSet", "db")), ("pod/orders-0", ("Pod", "orders-0")),
    ("po/x", ("Pod", "x")),
])
def test_refs(ref: str, parsed: tuple[str, str]) -> None:
    assert parse_ref(ref) == parsed


@pytest.mark.parametrize("ref", ["orders", "svc/orders", "deploy/", "deploy/a/b", ""])
def test_bad_refs(ref: str) -> None:
    with pytest.raises(ConfigError):
        parse_ref(ref)


# --- files ----------------------------------------------------------------------------------


def files_pod(volumes: list[dict[str, Any]], mounts: list[dict[str, Any]],
              **container: Any) -> dict[str, Any]:
    return pod([{"name": "app", "volumeMounts": mounts, **container},
                {"name": "side", "resources": {"limits": {"memory": "64Mi"}}}],
               volumes=volumes)


CMS = {"app-config": {"data": {"app.yaml": "a: 1\n", "log.level": "debug"},
                      "binaryData": {"logo.png": b64(b"\x89PNG")}}}
SECRETS = {"db": {"data": {"password": b64("s3cr3t"), "user": b64("app")}}}


def layout(volumes: list[dict[str, Any]], mounts: list[dict[str, Any]], *,
           fields: dict[str, Any] | None = None, env: dict[str, str] | None = None,
           **container: Any) -> FilesLayout:
    return layout_files(files_pod(volumes, mounts, **container), None, configmaps=CMS,
                        secrets=SECRETS, pod_fields=fields or running_pod_fields(), env=env)


def files_of(result: FilesLayout, index: int = 0) -> dict[str, tuple[bytes, int, bool, str]]:
    return {f.path: (f.data, f.pod_mode, f.secret, f.source)
            for f in result.mounts[index].files}


def test_config_map_volume_all_keys_with_binary_data() -> None:
    result = layout([{"name": "cfg", "configMap": {"name": "app-config"}}],
                    [{"name": "cfg", "mountPath": "/etc/app"}])
    assert files_of(result) == {
        "app.yaml": (b"a: 1\n", 0o644, False, "configmap/app-config:app.yaml"),
        "log.level": (b"debug", 0o644, False, "configmap/app-config:log.level"),
        "logo.png": (b"\x89PNG", 0o644, False, "configmap/app-config:logo.png"),
    }
    assert result.mounts[0].kind == "configMap" and result.mounts[0].sub_path is None


def test_items_choose_keys_paths_and_modes() -> None:
    result = layout([{"name": "cfg", "configMap": {"name": "app-config", "defaultMode": 0o640,
                                                   "items": [
        {"key": "app.yaml", "path": "conf/main.yaml"},
        {"key": "log.level", "path": "level", "mode": 0o600}]}}],
        [{"name": "cfg", "mountPath": "/etc/app"}])
    assert files_of(result) == {
        "conf/main.yaml": (b"a: 1\n", 0o640, False, "configmap/app-config:app.yaml"),
        "level": (b"debug", 0o600, False, "configmap/app-config:log.level")}


@pytest.mark.parametrize("kind", ["configMap", "secret"])
def test_optional_volumes(kind: str) -> None:
    name_key = "name" if kind == "configMap" else "secretName"
    missing = layout([{"name": "v", kind: {name_key: "gone", "optional": True}}],
                     [{"name": "v", "mountPath": "/v"}])
    assert files_of(missing) == {}
    with pytest.raises(ConfigError) as err:
        layout([{"name": "v", kind: {name_key: "gone"}}], [{"name": "v", "mountPath": "/v"}])
    assert "gone" in str(err.value) and "FailedMount" in str(err.value)
    existing = "app-config" if kind == "configMap" else "db"
    items = [{"key": "nope", "path": "x"}]
    optional_key = layout([{"name": "v", kind: {name_key: existing, "items": items,
                                                "optional": True}}],
                          [{"name": "v", "mountPath": "/v"}])
    assert files_of(optional_key) == {}
    with pytest.raises(ConfigError) as err:
        layout([{"name": "v", kind: {name_key: existing, "items": items}}],
               [{"name": "v", "mountPath": "/v"}])
    assert "'nope'" in str(err.value)


def test_secret_volume_is_decoded_and_marked_secret() -> None:
    result = layout([{"name": "db", "secret": {"secretName": "db", "defaultMode": 0o400}}],
                    [{"name": "db", "mountPath": "/run/secrets/db", "readOnly": True}])
    assert files_of(result) == {"password": (b"s3cr3t", 0o400, True, "secret/db:password"),
                                "user": (b"app", 0o400, True, "secret/db:user")}
    assert result.mounts[0].secret


def test_downward_api_volume() -> None:
    items = [
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
        {"path": "team", "fieldRef": {"fieldPath": "metadata.annotations['team']"}},
        {"path": "mem", "resourceFieldRef": {"containerName": "side",
                                             "resource": "limits.memory", "divisor": "1Mi"}},
        {"path": "sub/uid", "fieldRef": {"fieldPath": "metadata.uid"}, "mode": 0o600},
    ]
    result = layout([{"name": "info", "downwardAPI": {"items": items}}],
                    [{"name": "info", "mountPath": "/etc/podinfo"}])
    assert {k: v[:2] for k, v in files_of(result).items()} == {
        "labels": (b'app="orders"\ntier="back"', 0o644), "name": (b"orders-7f9c-abcde", 0o644),
        "team": (b"a\tb", 0o644), "mem": (b"64", 0o644), "sub/uid": (b"u-1", 0o600)}
    template = layout([{"name": "info", "downwardAPI": {"items": items}}],
                      [{"name": "info", "mountPath": "/etc/podinfo"}],
                      fields=template_fields({"metadata": {"labels": {"app": "orders"}}}, NS,
                                             "no pod runs"))
    assert set(files_of(template)) == {"mem"}
    assert len(template.mounts[0].missing) == 4
    with pytest.raises(ConfigError):  # only these fields exist for volumes
        layout([{"name": "i", "downwardAPI": {"items": [
            {"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}}]}}],
            [{"name": "i", "mountPath": "/i"}])


def test_projected_volume_joins_its_sources() -> None:
    result = layout([{"name": "all", "projected": {"defaultMode": 0o440, "sources": [
        {"configMap": {"name": "app-config", "items": [{"key": "app.yaml", "path": "app.yaml"}]}},
        {"secret": {"name": "db", "items": [{"key": "password", "path": "db/password",
                                             "mode": 0o400}]}},
        {"secret": {"name": "gone", "optional": True}},
        {"downwardAPI": {"items": [{"path": "namespace",
                                    "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
    ]}}], [{"name": "all", "mountPath": "/var/run/all"}])
    assert files_of(result) == {
        "app.yaml": (b"a: 1\n", 0o440, False, "configmap/app-config:app.yaml"),
        "db/password": (b"s3cr3t", 0o400, True, "secret/db:password"),
        "namespace": (NS.encode(), 0o440, False, "downwardAPI:metadata.namespace")}
    assert result.mounts[0].missing == ("token: a ServiceAccount token, which bridged does "
                                        "not mint",)


def test_other_volumes_are_reported_not_written() -> None:
    result = layout([{"name": "scratch", "emptyDir": {}},
                     {"name": "data", "persistentVolumeClaim": {"claimName": "d"}}],
                    [{"name": "scratch", "mountPath": "/tmp"},
                     {"name": "data", "mountPath": "/data"}])
    assert result.mounts == ()
    assert [s.split(" ")[0:3] for s in result.skipped] == [
        ["/tmp", "(volume", "scratch,"], ["/data", "(volume", "data,"]]


def test_sub_paths() -> None:
    volumes = [{"name": "cfg", "configMap": {"name": "app-config"}}]
    plain = layout(volumes, [{"name": "cfg", "mountPath": "/etc/app.yaml",
                              "subPath": "app.yaml"}])
    assert plain.mounts[0].sub_path == "app.yaml"
    mounts = [{"name": "cfg", "mountPath": "/etc/x", "subPathExpr": "$(WHICH).yaml"}]
    assert layout(volumes, mounts, env={"WHICH": "app"}).mounts[0].sub_path == "app.yaml"
    assert layout(volumes, mounts).mounts == ()  # no env: skipped, said so
    with pytest.raises(ConfigError):
        layout(volumes, mounts, env={"WHICH": ""})
    with pytest.raises(ConfigError):
        layout(volumes, [{"name": "cfg", "mountPath": "/x", "subPath": "../etc"}])


@pytest.mark.parametrize(("volumes", "mounts"), [
    ([{"name": "c", "configMap": {"name": "app-config", "items": [
        {"key": "app.yaml", "path": "../escape"}]}}], [{"name": "c", "mountPath": "/c"}]),
    ([{"name": "c", "configMap": {"name": "app-config", "items": [
        {"key": "app.yaml", "path": "/abs"}]}}], [{"name": "c", "mountPath": "/c"}]),
    ([{"name": "c", "configMap": {"name": "app-config"}}], [{"name": "c", "mountPath": "/"}]),
    ([{"name": "c", "configMap": {"name": "app-config"}}],
     [{"name": "c", "mountPath": "/a/../../b"}]),
    ([], [{"name": "ghost", "mountPath": "/g"}]),
])
def test_layouts_that_would_escape_or_are_invalid(volumes: list[dict[str, Any]],
                                                  mounts: list[dict[str, Any]]) -> None:
    with pytest.raises(ConfigError):
        layout(volumes, mounts)


def test_volume_references() -> None:
    spec = files_pod([{"name": "a", "configMap": {"name": "cm-a"}},
                      {"name": "b", "secret": {"secretName": "s-b"}},
                      {"name": "p", "projected": {"sources": [
                          {"configMap": {"name": "cm-p"}}, {"secret": {"name": "s-p"}}]}},
                      {"name": "unmounted", "secret": {"secretName": "not-mine"}}],
                     [{"name": "a", "mountPath": "/a"}, {"name": "b", "mountPath": "/b"},
                      {"name": "p", "mountPath": "/p"}])
    assert volume_references(spec, None) == (frozenset({"cm-a", "cm-p"}),
                                             frozenset({"s-b", "s-p"}))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_written_layout_is_the_kubelets_and_read_only(tmp_path: Path) -> None:
    volumes = [{"name": "cfg", "configMap": {"name": "app-config", "items": [
                   {"key": "app.yaml", "path": "conf/app.yaml"},
                   {"key": "log.level", "path": "level"}]}},
               {"name": "db", "secret": {"secretName": "db"}},
               {"name": "one", "configMap": {"name": "app-config"}}]
    mounts = [{"name": "cfg", "mountPath": "/etc/app"},
              {"name": "db", "mountPath": "/etc/app/db"},  # nested in /etc/app
              {"name": "one", "mountPath": "/srv/log.level", "subPath": "log.level"}]
    out = tmp_path / "snapshot"
    written = write_layout(layout(volumes, mounts), out)
    by_path = {str(w.path.relative_to(out)): w for w in written}
    assert set(by_path) == {"etc/app/conf/app.yaml", "etc/app/level", "etc/app/db/password",
                            "etc/app/db/user", "srv/log.level"}
    assert (out / "etc/app/conf/app.yaml").read_bytes() == b"a: 1\n"
    assert (out / "etc/app/db/password").read_bytes() == b"s3cr3t"
    assert (out / "srv/log.level").read_bytes() == b"debug"
    assert by_path["etc/app/db/password"].container_path == "/etc/app/db/password"
    assert (by_path["etc/app/db/password"].mode, by_path["etc/app/db/password"].pod_mode) == (
        0o400, 0o644)
    # the kubelet's atomic-writer layout: name -> ..data/name, ..data -> ..<timestamp>
    app = out / "etc/app"
    assert os.readlink(app / "level") == "..data/level"
    assert os.readlink(app / "conf") == "..data/conf"
    assert os.readlink(app / "..data").startswith("..20")
    assert (app / "db").is_dir() and not (app / "db").is_symlink()
    assert not (out / "srv/log.level").is_symlink()
    # modes: read-only files, secrets for their owner only, secret folders private
    real = (app / "..data").resolve()
    assert mode(real / "level") == mode(real / "conf/app.yaml") == 0o444
    secret_real = (app / "db/..data").resolve()
    assert mode(secret_real / "password") == 0o400
    assert mode(app / "db") == mode(secret_real) == 0o700
    assert mode(app) == 0o755
    assert mode(out / "srv/log.level") == 0o444
    assert written.skipped == []


def test_rewriting_a_layout_swaps_data_and_drops_stale_files(tmp_path: Path) -> None:
    volumes = [{"name": "cfg", "configMap": {"name": "app-config"}}]
    mounts = [{"name": "cfg", "mountPath": "/etc/app"}]
    write_layout(layout(volumes, mounts), tmp_path)
    app = tmp_path / "etc/app"
    first = os.readlink(app / "..data")
    CMS["smaller"] = {"data": {"app.yaml": "a: 2\n"}}
    try:
        second_layout = layout([{"name": "cfg", "configMap": {"name": "smaller"}}], mounts)
    finally:
        del CMS["smaller"]
    written = write_layout(second_layout, tmp_path)
    assert [w.path.name for w in written] == ["app.yaml"]
    assert (app / "app.yaml").read_text() == "a: 2\n"
    assert not (app / "log.level").exists() and not (app / "log.level").is_symlink()
    assert sorted(p.name for p in app.iterdir()) == sorted(
        ["..data", os.readlink(app / "..data"), "app.yaml"])
    assert os.readlink(app / "..data") != first


def test_writing_refuses_symlinks_that_leave_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "etc").symlink_to(elsewhere)
    with pytest.raises(ConfigError):
        write_layout(layout([{"name": "cfg", "configMap": {"name": "app-config"}}],
                            [{"name": "cfg", "mountPath": "/etc/app"}]), out)
    assert list(elsewhere.iterdir()) == []


def test_written_files_report_what_was_not_reproduced(tmp_path: Path) -> None:
    result = layout([{"name": "p", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token"}}]}}, {"name": "e", "emptyDir": {}}],
        [{"name": "p", "mountPath": "/var/run/secrets/x"}, {"name": "e", "mountPath": "/e"}])
    written = write_layout(result, tmp_path)
    assert list(written) == []
    assert any(s.startswith("/e (volume e") for s in written.skipped)
    assert "/var/run/secrets/x/token: a ServiceAccount token, which bridged does not mint" in \
        written.skipped


# --- choosing the pod of a workload (pure helpers of workload_env) --------------------------


def test_a_pod_runs_the_template_when_its_env_holds_the_templates_in_order() -> None:
    from bridged.kube.env import _same_env_spec

    template = pod([{"name": "app", "env": [{"name": "A", "value": "1"},
                                            {"name": "B", "value": "2"}],
                     "envFrom": [{"configMapRef": {"name": "cm"}}]}])
    injected = pod([{"name": "app", "env": [{"name": "A", "value": "1"},
                                            {"name": "DD_AGENT_HOST", "value": "x"},
                                            {"name": "B", "value": "2"}],
                     "envFrom": [{"configMapRef": {"name": "cm"}}]},
                    {"name": "istio-proxy"}])
    older = pod([{"name": "app", "env": [{"name": "A", "value": "0"},
                                         {"name": "B", "value": "2"}],
                  "envFrom": [{"configMapRef": {"name": "cm"}}]}])
    swapped = pod([{"name": "app", "env": [{"name": "B", "value": "2"},
                                           {"name": "A", "value": "1"}],
                    "envFrom": [{"configMapRef": {"name": "cm"}}]}])
    assert _same_env_spec(injected, template)
    assert not _same_env_spec(older, template)
    assert not _same_env_spec(swapped, template)
    assert not _same_env_spec(pod([{"name": "other"}]), template)


def test_pods_belong_to_their_controller() -> None:
    from bridged.kube.env import _owned, _selector

    deploy = {"metadata": {"name": "orders", "uid": "d-1"}}
    sts = {"metadata": {"name": "db", "uid": "s-1"}}

    def owned_by(kind: str, name: str, uid: str, pth: str = "abc") -> dict[str, Any]:
        return {"metadata": {"labels": {"pod-template-hash": pth}, "ownerReferences": [
            {"kind": kind, "name": name, "uid": uid, "controller": True}]}}

    assert _owned(owned_by("ReplicaSet", "orders-abc", "rs-1"), "Deployment", deploy)
    assert not _owned(owned_by("ReplicaSet", "orders-v2-abc", "rs-2"), "Deployment", deploy)
    assert not _owned(owned_by("ReplicaSet", "orders-abc", "rs-1", "xyz"), "Deployment", deploy)
    assert _owned(owned_by("StatefulSet", "db", "s-1"), "StatefulSet", sts)
    assert not _owned(owned_by("StatefulSet", "db", "s-old"), "StatefulSet", sts)
    assert not _owned({"metadata": {}}, "StatefulSet", sts)
    assert _selector({"matchLabels": {"b": "2", "a": "1"}, "matchExpressions": [
        {"key": "t", "operator": "In", "values": ["x", "y"]},
        {"key": "u", "operator": "NotIn", "values": ["z"]},
        {"key": "v", "operator": "Exists"}, {"key": "w", "operator": "DoesNotExist"}]}) == \
        "a=1,b=2,t in (x,y),u notin (z),v,!w"


def test_bridged_s_own_services_give_no_variables() -> None:
    """A takeover's shadow Service is bridged's (by label): the workload never had its
    variables. A Service of the team's named bridged-* is not."""
    from bridged.kube.env import workload_services

    def svc(name: str, ip: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": NS, "labels": labels},
                "spec": {"clusterIP": ip, "ports": [{"port": 80}]}}

    services = [svc("orders", "10.96.0.20", {"app": "orders"}),
                svc("bridged-origin-orders", "10.96.0.21",
                    {"app.kubernetes.io/managed-by": "bridged",
                     "bridged.dev/redirect-of": "orders"}),
                svc("bridged-docs", "10.96.0.22", {"app": "docs"})]
    names = set(service_env(workload_services(services)))
    assert {"ORDERS_SERVICE_HOST", "BRIDGED_DOCS_SERVICE_HOST"} <= names
    assert not any(n.startswith("BRIDGED_ORIGIN") for n in names)
