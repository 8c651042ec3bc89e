"""The relay's Kubernetes client: JSON over aiohttp, and nothing else.

kubernetes-asyncio's package loads every API group and model it knows when any part of it is
imported (≈ 35-45 MiB of RSS, for the relay's whole life); the relay needs plain JSON calls
(:func:`.client.rest`) and one watch (:func:`.client.watch`). Those are all this client does,
with the API's own semantics: a non-2xx answer raises :class:`.client.KubeApiError`
with the HTTP status and the Status object the server sent; a watch yields the events as the
server writes them (one JSON object a line: ``ADDED``, ``MODIFIED``, ``DELETED``, ``BOOKMARK``
when asked for, ``ERROR`` with a Status, e.g. 410 Expired) until the server ends it.

Where it connects, as kubectl would: a kubeconfig (``$KUBECONFIG``, several files merged, first
wins; else ``~/.kube/config``) whose user is a token, a token file or a client certificate, and
whose cluster is a server URL with its CA (data or file) or the system's trust; else the pod's
service account (``KUBERNETES_SERVICE_HOST``/``_PORT``, its token, CA and namespace files).
Anything else a kubeconfig can say (exec plugins, auth providers, basic auth, impersonation,
proxies, skipping TLS verification) is refused with one line: the relay runs in a pod, and the
daemon's full client (:class:`.client.Kube`) serves the rest. TLS is always verified.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from .. import __version__
from ..errors import ConfigError
from .client import KubeApiError, kubeconfig_paths

#: where the kubelet mounts the pod's service account
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: seconds one request (not a watch) may take, connecting included
REQUEST_SECONDS = 60.0
#: the largest watch event accepted (the API's largest object is about 1.5 MiB)
MAX_EVENT_BYTES = 16 * 1024 * 1024

_CLUSTER_KEYS = {"server", "certificate-authority", "certificate-authority-data",
                 "extensions", "disable-compression"}
_USER_KEYS = {"token", "tokenFile", "client-certificate", "client-certificate-data",
              "client-key", "client-key-data", "extensions"}


class Token:
    """A bearer token, given or read from a file, and then read again whenever the file
    changes: bound service-account tokens expire (an hour by default) and the kubelet
    rotates the file before they do (a new file swapped in through a symlink)."""

    def __init__(self, value: str | None = None, path: Path | None = None) -> None:
        self._value, self._path = value, path
        self._seen: tuple[int, int, int, int] | None = None

    def header(self) -> str:
        if self._path is not None:
            try:
                st = os.stat(self._path)
                seen = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
                if seen != self._seen:
                    self._value = self._path.read_text().strip()
                    self._seen = seen
            except OSError as exc:
                if self._value is None:
                    raise ConfigError(f"cannot read the token file {self._path}: "
                                      f"{exc.strerror or exc}") from None
                # a rotation caught half-way: the token read last is still valid
        return f"Bearer {self._value}"

    def __repr__(self) -> str:  # never the token itself
        return f"Token(path={self._path})" if self._path else "Token(<given>)"


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom: what a kubeconfig context or the pod's service account says."""

    server: str
    context: str
    namespace: str
    ssl: ssl.SSLContext | None
    token: Token | None


class LiteKube:
    """A client bound to one API server and namespace (:class:`.client.KubeAPI`). Close it
    (``async with``)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.context = endpoint.context
        self.namespace = endpoint.namespace
        self._server = endpoint.server.rstrip("/")
        self._http: aiohttp.ClientSession | None = None

    @classmethod
    async def connect(cls, namespace: str | None = None, context: str | None = None) -> LiteKube:
        """From the kubeconfig kubectl would read, else the pod's service account."""
        paths, existing = kubeconfig_paths()
        if existing:
            return cls(from_kubeconfig(existing, context, namespace))
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            return cls(in_cluster(namespace))
        raise ConfigError(f"no kubeconfig at {paths}, and not in a pod",
                          hint="set KUBECONFIG, or run in the cluster")

    async def __aenter__(self) -> LiteKube:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.endpoint.ssl or True),
                headers={"User-Agent": f"bridged/{__version__}"})
        return self._http

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.endpoint.token is not None:
            headers["Authorization"] = self.endpoint.token.header()
        return headers

    async def request(self, method: str, path: str, body: Any,
                      query: dict[str, str]) -> dict[str, Any]:
        headers = self._headers()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            # the API takes a PATCH only with its patch type named; JSON merge patch is what
            # a plain JSON object means
            headers["Content-Type"] = ("application/merge-patch+json" if method == "PATCH"
                                       else "application/json")
        async with self._session().request(
                method, self._server + path, params=query, data=data, headers=headers,
                timeout=aiohttp.ClientTimeout(total=REQUEST_SECONDS)) as response:
            raw = await response.read()
            if not 200 <= response.status < 300:
                raise KubeApiError(response.status, response.reason or "",
                                   raw.decode(errors="replace"))
        found = json.loads(raw) if raw.strip() else {}
        if not isinstance(found, dict):
            raise ValueError(f"{method} {path}: the API server sent no JSON object")
        return found

    async def watch_events(self, path: str, query: dict[str, str],
                           seconds: float) -> AsyncGenerator[dict[str, Any], None]:
        async with self._session().get(
                self._server + path, params={**query, "watch": "true"}, headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=seconds)) as response:
            if response.status != 200:
                raw = await response.read()
                raise KubeApiError(response.status, response.reason or "",
                                   raw.decode(errors="replace"))
            pending = bytearray()
            async for chunk in response.content.iter_any():
                pending += chunk
                while (end := pending.find(b"\n")) >= 0:
                    line = bytes(pending[:end])
                    del pending[:end + 1]
                    if line.strip():
                        yield _event(line)
                if len(pending) > MAX_EVENT_BYTES:
                    raise ValueError(f"a watch event over {MAX_EVENT_BYTES} bytes")
            if pending.strip():
                yield _event(bytes(pending))


def _event(line: bytes) -> dict[str, Any]:
    event = json.loads(line)
    if not isinstance(event, dict):
        raise ValueError("the API server sent a watch event that is not a JSON object")
    return event


# --- where to connect ------------------------------------------------------------------------

def in_cluster(namespace: str | None = None, folder: Path = SERVICE_ACCOUNT,
               environ: Any = os.environ) -> Endpoint:
    """The pod's service account, as the kubelet gives it to every container."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise ConfigError("in a pod without KUBERNETES_SERVICE_HOST and _PORT")
    if ":" in host:
        host = f"[{host}]"  # IPv6
    for needed in ("token", "ca.crt"):
        if not (folder / needed).exists():
            raise ConfigError(f"no service-account {needed} in {folder}",
                              hint="automountServiceAccountToken must stay on for the relay")
    if namespace is None:
        try:
            namespace = (folder / "namespace").read_text().strip() or "default"
        except OSError:
            namespace = "default"
    context = ssl.create_default_context(cafile=str(folder / "ca.crt"))
    return Endpoint(f"https://{host}:{port}", "in-cluster", namespace, context,
                    Token(path=folder / "token"))


def from_kubeconfig(paths: list[str], context: str | None = None,
                    namespace: str | None = None) -> Endpoint:
    """A context of the kubeconfig files ``paths`` (merged as kubectl does: for each name,
    and for ``current-context``, the first file that has it wins)."""
    import yaml

    files: list[tuple[dict[str, Any], Path]] = []
    for path in paths:
        where = Path(os.path.expanduser(path))
        try:
            data = yaml.safe_load(where.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"kubeconfig {where}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"kubeconfig {where}: not a kubeconfig")
        files.append((data, where.parent))
    name = context or next((str(d["current-context"]) for d, _ in files
                            if d.get("current-context")), None)
    if not name:
        raise ConfigError(f"kubeconfig {os.pathsep.join(paths)}: no current-context",
                          hint="kubectl config use-context NAME")
    ctx, _ = _entry(files, "contexts", "context", name)
    cluster, cluster_dir = _entry(files, "clusters", "cluster", str(ctx.get("cluster") or ""))
    user, user_dir = _entry(files, "users", "user", str(ctx.get("user") or "")) \
        if ctx.get("user") else ({}, Path("."))
    return Endpoint(_server(cluster, name), name,
                    namespace or str(ctx.get("namespace") or "default"),
                    _tls(cluster, cluster_dir, user, user_dir, name), _token(user, user_dir))


def _entry(files: list[tuple[dict[str, Any], Path]], kind: str, field: str,
           name: str) -> tuple[dict[str, Any], Path]:
    for data, folder in files:
        for entry in data.get(kind) or []:
            if isinstance(entry, dict) and entry.get("name") == name:
                return dict(entry.get(field) or {}), folder
    raise ConfigError(f"kubeconfig: no {field} named {name!r}")


def _server(cluster: dict[str, Any], context: str) -> str:
    unsupported = sorted(k for k, v in cluster.items() if k not in _CLUSTER_KEYS and v)
    if unsupported:
        raise ConfigError(f"kubeconfig context {context}: the relay's client does not support "
                          f"{', '.join(unsupported)} in a cluster entry")
    server = str(cluster.get("server") or "")
    if not server.startswith(("https://", "http://")):
        raise ConfigError(f"kubeconfig context {context}: no https:// server URL")
    return server


def _tls(cluster: dict[str, Any], cluster_dir: Path, user: dict[str, Any], user_dir: Path,
         context: str) -> ssl.SSLContext | None:
    has_cert = any(user.get(k) for k in ("client-certificate", "client-certificate-data"))
    has_key = any(user.get(k) for k in ("client-key", "client-key-data"))
    if has_cert != has_key:
        raise ConfigError(f"kubeconfig context {context}: a client certificate needs its key "
                          "and a key its certificate")
    if str(cluster.get("server", "")).startswith("http://"):
        if has_cert:
            raise ConfigError(f"kubeconfig context {context}: a client certificate needs an "
                              "https:// server")
        return None
    if cluster.get("certificate-authority-data"):
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        tls = ssl.create_default_context(cadata=ca)
    elif cluster.get("certificate-authority"):
        tls = ssl.create_default_context(
            cafile=str(cluster_dir / os.path.expanduser(cluster["certificate-authority"])))
    else:
        tls = ssl.create_default_context()  # the system's trust, as kubectl
    if has_cert:
        _load_client_pair(tls, user, user_dir)
    return tls


def _load_client_pair(tls: ssl.SSLContext, user: dict[str, Any], user_dir: Path) -> None:
    """The user's certificate and key into ``tls``: from their files, or (Python's ssl loads
    files only) from their data through files only this process can read, removed at once."""
    if not user.get("client-certificate-data") and not user.get("client-key-data"):
        tls.load_cert_chain(str(user_dir / os.path.expanduser(user["client-certificate"])),
                            str(user_dir / os.path.expanduser(user["client-key"])))
        return
    with tempfile.TemporaryDirectory(prefix="bridged-kube-") as folder:  # mode 0700
        parts = []
        for field in ("client-certificate", "client-key"):
            target = Path(folder) / field
            if user.get(f"{field}-data"):
                data = base64.b64decode(user[f"{field}-data"])
            else:
                data = (user_dir / os.path.expanduser(user[field])).read_bytes()
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            parts.append(str(target))
        tls.load_cert_chain(parts[0], parts[1])


def _token(user: dict[str, Any], user_dir: Path) -> Token | None:
    unsupported = sorted(k for k, v in user.items() if k not in _USER_KEYS and v)
    if unsupported:
        raise ConfigError(f"kubeconfig: the relay's client does not support "
                          f"{', '.join(unsupported)} in a user entry (only a token, a token "
                          "file or a client certificate)")
    if user.get("token"):
        return Token(value=str(user["token"]))
    if user.get("tokenFile"):
        return Token(path=user_dir / os.path.expanduser(str(user["tokenFile"])))
    return None
