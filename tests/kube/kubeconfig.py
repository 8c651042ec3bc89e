"""Kubeconfig files pointing at a stand-in server, in the format kubectl and the client
libraries read (https://kubernetes.io/docs/concepts/configuration/organize-cluster-access-kubeconfig/):
one cluster (``certificate-authority-data`` in TLS mode), one user entry per context
(``token`` or ``client-certificate-data``/``client-key-data``), contexts with a namespace."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from .pki import KeyPair

__all__ = ["Context", "Credentials", "write_kubeconfig"]


@dataclass(frozen=True)
class Credentials:
    """A user the server knows: a bearer token and/or a client certificate."""

    name: str
    groups: tuple[str, ...] = ()
    token: str | None = None
    cert: KeyPair | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


@dataclass(frozen=True)
class Context:
    """One kubeconfig context: who (and how: ``token`` or ``cert``), in which namespace."""

    name: str
    user: Credentials
    namespace: str | None = None
    auth: Literal["token", "cert"] = "token"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_kubeconfig(path: Path, server: str, ca_file: Path | None, contexts: Iterable[Context],
                     current: str | None = None, cluster: str = "standin") -> Path:
    contexts = list(contexts)
    users: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    for ctx in contexts:
        user_name = f"{ctx.user.name}-{ctx.auth}"
        if ctx.auth == "cert":
            if ctx.user.cert is None:
                raise ValueError(f"{ctx.user.name} has no client certificate (TLS mode only)")
            user: dict[str, Any] = {"client-certificate-data": _b64(ctx.user.cert.cert_pem()),
                                    "client-key-data": _b64(ctx.user.cert.key_pem())}
        else:
            if not ctx.user.token:
                raise ValueError(f"{ctx.user.name} has no token")
            user = {"token": ctx.user.token}
        if all(u["name"] != user_name for u in users):
            users.append({"name": user_name, "user": user})
        context: dict[str, Any] = {"cluster": cluster, "user": user_name}
        if ctx.namespace:
            context["namespace"] = ctx.namespace
        entries.append({"name": ctx.name, "context": context})
    cluster_entry: dict[str, Any] = {"server": server}
    if ca_file is not None:
        cluster_entry["certificate-authority-data"] = _b64(ca_file.read_bytes())
    config: dict[str, Any] = {"apiVersion": "v1", "kind": "Config", "preferences": {},
              "clusters": [{"name": cluster, "cluster": cluster_entry}],
              "users": users, "contexts": entries,
              "current-context": current or (entries[0]["name"] if entries else "")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
