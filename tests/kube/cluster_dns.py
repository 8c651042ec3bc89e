"""The stand-in cluster's DNS, as the relay pod's resolver sees it: a hosts file.

A pod asks the cluster's DNS (CoreDNS) for ``NAME.NS.svc.cluster.local`` (a Service: its
clusterIP; a headless one: its pods' IPs) and ``HOST.SVC.NS.svc.cluster.local`` (a pod that
names the headless Service as its subdomain, as a StatefulSet's pods do); its resolv.conf's
search path (``NS.svc.cluster.local svc.cluster.local cluster.local``) completes shorter
names. The relay pod runs in a mount namespace whose /etc/hosts is :func:`hosts_for`'s text
and whose nsswitch.conf reads files only, so no DNS query leaves the machine. A files-only
resolver applies no search path, so the forms the search path would complete (``web``,
``web.team-a``, ``db-0.db``) are written out as well.
"""

from __future__ import annotations

from typing import Any

from .apiserver import KubeApiServer

DOMAIN = "cluster.local"


def _forms(relative: str, ns: str, pod_ns: str) -> list[str]:
    """``relative`` (``web``, ``db-0.db``) in ``ns``: the full name, then what the search
    path of a pod in ``pod_ns`` completes to it."""
    names = [f"{relative}.{ns}.svc.{DOMAIN}", f"{relative}.{ns}.svc", f"{relative}.{ns}"]
    return [*names, relative] if ns == pod_ns else names


def _selected(pod: dict[str, Any], selector: dict[str, str]) -> bool:
    labels = pod["metadata"].get("labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def hosts_for(api: KubeApiServer, pod_ns: str) -> str:
    """/etc/hosts for a pod of ``pod_ns``: every Service, and every pod of a headless one."""
    lines = ["127.0.0.1 localhost"]
    pods = [p for p in api.list("pods") if (p.get("status") or {}).get("podIP")]
    for service in api.list("services"):
        meta, spec = service["metadata"], service.get("spec") or {}
        name, ns, ip = meta["name"], meta["namespace"], spec.get("clusterIP") or ""
        if ip and ip != "None":
            lines.append(" ".join([ip, *_forms(name, ns, pod_ns)]))
            continue
        for pod in pods:
            if pod["metadata"]["namespace"] != ns or not _selected(pod, spec.get("selector")
                                                                    or {}):
                continue
            pod_ip = pod["status"]["podIP"]
            lines.append(" ".join([pod_ip, *_forms(name, ns, pod_ns)]))
            pod_spec = pod.get("spec") or {}
            if pod_spec.get("subdomain") == name:  # the pod's own record
                host = pod_spec.get("hostname") or pod["metadata"]["name"]
                lines.append(" ".join([pod_ip, *_forms(f"{host}.{name}", ns, pod_ns)]))
    return "\n".join(lines) + "\n"
