"""The takeover plan: what is written to the Service and its shadow, and how it is undone."""

from __future__ import annotations

import copy

import pytest

from bridged.redirect import derived_name
from bridged.redirect.takeover import (
    ANNOTATION,
    Record,
    TakeoverRefused,
    record_of,
    restore,
    take_over,
)

RELAY = {"app.kubernetes.io/name": "bridged-relay", "app.kubernetes.io/managed-by": "bridged"}


def service(**spec_changes):
    svc = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "orders", "namespace": "team-a", "resourceVersion": "41",
                     "uid": "u-1", "labels": {"app": "orders"}},
        "spec": {"type": "ClusterIP", "clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"],
                 "selector": {"app": "orders"}, "sessionAffinity": "None",
                 "ports": [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"},
                           {"name": "grpc", "port": 9090, "targetPort": 9090,
                            "protocol": "TCP"}]},
    }
    svc["spec"].update(spec_changes)
    return svc


PORTS = {80: 41000, 9090: 41001}


def test_take_over_points_every_port_at_the_relay_and_keeps_the_original():
    original = service()
    new, shadow, record = take_over(original, RELAY, PORTS)
    assert new["spec"]["selector"] == RELAY
    assert [p["targetPort"] for p in new["spec"]["ports"]] == [41000, 41001]
    assert new["spec"]["clusterIP"] == "10.0.0.7"  # nothing else moves
    assert record_of(new) == record
    assert (record.selector, record.ports) == (original["spec"]["selector"],
                                               original["spec"]["ports"])
    assert original == service()  # the input is not changed
    assert shadow["metadata"]["name"] == "bridged-origin-orders"
    assert shadow["spec"] == {"type": "ClusterIP", "selector": {"app": "orders"},
                              "sessionAffinity": "None", "ports": original["spec"]["ports"]}
    assert shadow["metadata"]["labels"]["bridged.dev/redirect-of"] == "orders"


@pytest.mark.parametrize("annotations", [None, {}, {"team": "x"}])
def test_restore_gives_back_the_exact_original(annotations):
    original = service()
    if annotations is not None:
        original["metadata"]["annotations"] = annotations
    taken, _, record = take_over(original, RELAY, PORTS)
    restored, changed = restore(taken, record)
    assert changed == []
    assert restored == original


def test_node_ports_stay_out_of_the_shadow_and_come_back():
    original = service(type="NodePort")
    original["spec"]["ports"][0]["nodePort"] = 30080
    taken, shadow, record = take_over(original, RELAY, PORTS)
    assert taken["spec"]["ports"][0]["nodePort"] == 30080
    assert "nodePort" not in shadow["spec"]["ports"][0]
    assert restore(taken, record)[0] == original


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        (lambda s: s["spec"].update(selector={"app": "orders", "v": "2"}), ["selector"]),
        (lambda s: s["spec"]["ports"][0].update(targetPort=8080), ["ports"]),
        (lambda s: s["spec"]["ports"].pop(), ["ports"]),
        (lambda s: s["spec"].update(selector={"app": "orders"}, ports=service()["spec"]["ports"]),
         ["selector", "ports"]),
    ],
)
def test_a_change_by_someone_else_is_kept_and_reported(change, fields):
    taken, _, record = take_over(service(), RELAY, PORTS)
    theirs = copy.deepcopy(taken)
    change(theirs)
    restored, changed = restore(theirs, record)
    assert changed == fields
    assert restored["spec"] == theirs["spec"]
    assert ANNOTATION not in (restored["metadata"].get("annotations") or {})


def test_changes_to_other_fields_survive_a_restore():
    taken, _, record = take_over(service(), RELAY, PORTS)
    taken["metadata"]["labels"]["owner"] = "team-b"
    taken["metadata"]["annotations"]["note"] = "added during the takeover"
    restored, changed = restore(taken, record)
    assert changed == []
    assert restored["spec"] == service()["spec"]
    assert restored["metadata"]["labels"]["owner"] == "team-b"
    assert restored["metadata"]["annotations"] == {"note": "added during the takeover"}


def test_the_record_survives_the_annotation_round_trip():
    _, _, record = take_over(service(), RELAY, PORTS)
    assert Record.from_annotation(record.to_annotation()) == record


@pytest.mark.parametrize("text", ["{", "[]", '{"version": 99}', '{"version": 1}'])
def test_an_unreadable_record_is_an_error_not_a_guess(text):
    with pytest.raises(ValueError, match=r"unreadable bridged\.dev/takeover annotation"):
        Record.from_annotation(text)


@pytest.mark.parametrize(
    ("svc", "ports", "message"),
    [
        (service(selector=None), PORTS, "has no selector"),
        (service(selector={}), PORTS, "has no selector"),
        (service(type="ExternalName", selector=None), PORTS, "is an ExternalName"),
        (service(), {80: 41000}, r"no relay port for port\(s\) \[9090\]"),
        (service(clusterIP="None"), PORTS, "is headless"),
        (service(ports=[{"name": "dns", "port": 53, "protocol": "UDP"}]), {53: 41000},
         "has UDP ports: takeover moves every port"),
    ],
)
def test_services_that_cannot_be_taken_over(svc, ports, message):
    with pytest.raises(TakeoverRefused, match=message):
        take_over(svc, RELAY, ports)


@pytest.mark.parametrize(
    ("service_name", "expected"),
    [("orders", "bridged-origin-orders"),
     ("a" * 48, "bridged-origin-" + "a" * 48),
     ("a" * 60, None)],
)
def test_derived_names_are_valid_and_unique(service_name, expected):
    name = derived_name("bridged-origin", service_name)
    assert len(name) <= 63 and not name.endswith("-")
    if expected:
        assert name == expected
    else:
        assert name != derived_name("bridged-origin", "a" * 59)


def test_local_traffic_policies_become_cluster_and_come_back():
    original = service(internalTrafficPolicy="Local", externalTrafficPolicy="Local",
                       type="NodePort")
    taken, _, record = take_over(original, RELAY, PORTS)
    assert taken["spec"]["internalTrafficPolicy"] == "Cluster"
    assert taken["spec"]["externalTrafficPolicy"] == "Cluster"
    assert restore(taken, record)[0] == original


def test_a_restore_keeps_port_fields_others_changed_and_a_new_type():
    taken, _, record = take_over(service(type="NodePort"), RELAY, PORTS)
    theirs = copy.deepcopy(taken)
    theirs["spec"]["ports"][0]["appProtocol"] = "http"  # added by someone meanwhile
    theirs["spec"]["type"] = "ClusterIP"
    restored, changed = restore(theirs, record)
    assert changed == []
    assert restored["spec"]["ports"][0] == {"name": "http", "port": 80, "targetPort": "web",
                                            "protocol": "TCP", "appProtocol": "http"}
    assert restored["spec"]["type"] == "ClusterIP" and restored["spec"]["selector"] == \
        {"app": "orders"}
