"""The control API server, run by the daemon on its unix socket."""

from __future__ import annotations

import functools
import logging
import os
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..capture.store import to_json
from ..errors import BridgedError, ConfigError, ControlError
from .httpserver import Answer, HttpServer, Request, Response, Routes, json_response
from .models import (
    API,
    ConnectRequest,
    ForwardRequest,
    InterceptRequest,
    UpRequest,
    error_body,
    field,
    status_for,
)

if TYPE_CHECKING:
    from ..daemon.app import Daemon

log = logging.getLogger(__name__)

#: the largest request body the API reads (a project's up request is the largest by far)
MAX_BODY = 1024 * 1024


async def _errors(routes: Routes, request: Request) -> Response:
    """Errors as JSON bodies the client turns back into the same class (models.error_body)."""
    try:
        return await routes.dispatch(request)
    except BridgedError as exc:
        return json_response(status_for(exc), error_body(exc))
    except Exception as exc:  # a bug: say so, keep serving
        log.exception("control API %s %s failed", request.method, request.path)
        error = ControlError(f"internal error in the daemon: {exc}",
                             hint="see the daemon log (bridged logs)")
        return json_response(500, error_body(error))


def _strings(body: dict[str, Any], *names: str) -> list[str | None]:
    """Optional string fields, checked the way every request body is (models.field)."""
    return [field(body, name, str) for name in names]


def _body(request: Request) -> dict[str, Any]:
    try:
        body = request.json()
    except (ValueError, UnicodeDecodeError):
        raise ConfigError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise ConfigError("the request body must be a JSON object")
    return body


def _capture_filters(request: Request) -> dict[str, Any]:
    """The store's list filters from a query (as the inspector's): all records by default."""
    q = request.query
    numbers = {}
    for name, default in (("status", None), ("limit", 100_000), ("before", 0)):
        text = q.get(name, "")
        if text and not text.isdigit():
            raise ConfigError(f"{name} must be a number")
        numbers[name] = int(text) if text else default
    return {"intercept": q.get("intercept", ""), "method": q.get("method", ""),
            "path": q.get("path", ""), "text": q.get("text", ""), **numbers}


def make_routes(daemon: Daemon) -> Routes:
    routes = Routes()

    @routes.get(f"{API}/status")
    async def status(request: Request) -> Answer:
        return 200, daemon.status()

    @routes.get(f"{API}/bridges")
    async def bridges(request: Request) -> Answer:
        return 200, daemon.status()["bridges"]

    @routes.get(f"{API}/forwards")
    async def forwards(request: Request) -> Answer:
        return 200, daemon.status()["forwards"]

    @routes.get(f"{API}/traffic")
    async def traffic(request: Request) -> Answer:
        try:
            since = float(request.query.get("since", "0"))
        except ValueError:
            raise ConfigError("since must be a time in seconds") from None
        return 200, daemon.traffic(since)

    @routes.get(f"{API}/services")
    async def services(request: Request) -> Answer:
        return 200, await daemon.services(request.query.get("bridge"))

    @routes.get(f"{API}/intercepts")
    async def intercepts(request: Request) -> Answer:
        return 200, daemon.status()["intercepts"]

    @routes.post(f"{API}/bridges")
    async def connect(request: Request) -> Answer:
        req = ConnectRequest.parse(_body(request))
        if req.spec is not None:
            bridge = await daemon.connect(req.spec, name=req.name, token=req.token)
        else:
            bridge = await daemon.connect_kube(req.context, req.namespace, name=req.name,
                                               image=req.relay_image,
                                               kubeconfig=req.kubeconfig)
        return 201, bridge.to_dict()

    @routes.delete(f"{API}/bridges/{{name}}")
    async def disconnect(request: Request) -> Answer:
        await daemon.disconnect(request.params["name"])
        return 200, {"disconnected": request.params["name"]}

    @routes.post(f"{API}/forwards")
    async def expose(request: Request) -> Answer:
        req = ForwardRequest.parse(_body(request))
        forwards = await daemon.expose(req)
        return 201, {"forwards": [f.to_dict() for f in forwards]}

    @routes.delete(f"{API}/forwards/{{name}}")
    async def unexpose(request: Request) -> Answer:
        await daemon.unexpose(request.params["name"])
        return 200, {"removed": request.params["name"]}

    @routes.post(f"{API}/intercepts")
    async def intercept(request: Request) -> Answer:
        req = InterceptRequest.parse(_body(request))
        intercept = await daemon.intercept(req.bridge, req.spec, overwrite=req.overwrite)
        return 201, intercept.to_dict()

    @routes.delete(f"{API}/intercepts/{{name}}")
    async def leave(request: Request) -> Answer:
        notes = await daemon.leave(request.params["name"])
        return 200, {"left": request.params["name"], "notes": notes}

    @routes.post(f"{API}/env")
    async def env(request: Request) -> Answer:
        body = _body(request)
        ref, container, fmt = _strings(body, "ref", "container", "format")
        if not ref:
            raise ConfigError("missing workload: give deploy/NAME, statefulset/NAME or pod/NAME")
        return 200, await daemon.env(body.get("bridge"), ref, container, fmt or "dotenv")

    @routes.post(f"{API}/files")
    async def files(request: Request) -> Answer:
        body = _body(request)
        ref, container, out_dir = _strings(body, "ref", "container", "out_dir")
        if not ref or not out_dir:
            raise ConfigError("files needs a workload and an output folder")
        return 200, await daemon.files(body.get("bridge"), ref, container, out_dir)

    def on_kube_target(path: str, action: str) -> None:
        """A route whose body names a kube context, namespace and kubeconfig (the CLI's)."""

        async def handler(request: Request) -> Answer:
            body = _body(request)
            context, namespace, kubeconfig = _strings(body, "context", "namespace",
                                                      "kubeconfig")
            return 200, await getattr(daemon, action)(context, namespace, kubeconfig)

        routes.post(f"{API}/{path}")(handler)

    on_kube_target("clean", "clean")  # everything bridged made in the namespace
    on_kube_target("cluster/services", "cluster_services")  # for bridged init
    on_kube_target("doctor", "doctor")

    @routes.post(f"{API}/up")
    async def up(request: Request) -> Answer:
        from ..daemon.up import up as apply

        req, kubeconfig = UpRequest.parse(_body(request))
        return 200, await apply(daemon, req, kubeconfig)

    @routes.post(f"{API}/down")
    async def down(request: Request) -> Answer:
        from ..daemon.up import down as undo

        return 200, await undo(daemon)

    @routes.post(f"{API}/proxy")
    async def proxy(request: Request) -> Answer:
        body = _body(request) if request.body else {}
        (bridge,) = _strings(body, "bridge")
        return 200, await daemon.proxy(bridge or None)

    @routes.post(f"{API}/inspector")
    async def inspect(request: Request) -> Answer:
        return 200, await daemon.inspect()

    @routes.get(f"{API}/capture")
    async def capture(request: Request) -> Answer:
        found = daemon.store.list(**_capture_filters(request))
        return 200, {"records": [to_json(c) for c in found], "stats": daemon.store.stats()}

    @routes.get(f"{API}/capture/har")
    async def capture_har(request: Request) -> Answer:
        from ..capture.har import to_har  # (and datetime: not kept by an idle daemon)

        return 200, to_har(daemon.store.list(**_capture_filters(request)))

    @routes.delete(f"{API}/capture")
    async def capture_clear(request: Request) -> Answer:
        return 200, {"cleared": daemon.store.clear()}

    @routes.post(f"{API}/shutdown")
    async def shutdown(request: Request) -> Answer:
        daemon.request_stop()
        return 200, {"stopping": True}

    return routes


class ControlServer:
    """The API on a unix socket: 0600 in a 0700 folder; a stale socket is replaced, a live one
    (another daemon) is an error."""

    def __init__(self, daemon: Daemon, path: Path) -> None:
        self.daemon = daemon
        self.path = path
        routes = make_routes(daemon)
        self._server = HttpServer(functools.partial(_errors, routes), max_body=MAX_BODY)

    async def start(self) -> None:
        _prepare_socket_path(self.path)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window with wider rights
        try:
            await self._server.start_unix(str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        await self._server.close()
        self.path.unlink(missing_ok=True)


def _private_folder(folder: Path) -> None:
    """The socket's folder: made 0700, or, if it exists, ours and closed to others. Never
    change the rights of a folder we did not make (think BRIDGED_SOCKET=/tmp/x.sock)."""
    try:
        folder.mkdir(parents=True, mode=0o700)
        os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask
        return
    except FileExistsError:
        pass
    st = os.stat(folder)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ControlError(
            f"the folder of the control socket, {folder}, is not private to this user "
            f"(mode {stat.S_IMODE(st.st_mode):o})",
            hint="use a folder only you can open, e.g. under $XDG_RUNTIME_DIR",
        )


def _prepare_socket_path(path: Path) -> None:
    _private_folder(path.parent)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ControlError(f"{path} exists and is not a socket: not touching it")
        if _answers(path):
            raise ControlError(f"a bridged daemon is already running on {path}")
        path.unlink()  # a crashed daemon's socket


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True
