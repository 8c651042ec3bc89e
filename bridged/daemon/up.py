"""``bridged up`` / ``down``: a bridged.yaml applied through the daemon, and exactly undone.

``up`` connects to the file's cluster, exposes its dependencies, intercepts its Service and
writes its env file and files; what it made (not what existed before) is recorded in the
daemon's saved state, so that ``down`` — even after a daemon restart — removes exactly that and
nothing the developer made by hand. Running ``up`` again is a no-op for what is there already.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import InterceptSpec
from ..control.models import ForwardRequest
from ..errors import ConfigError, Conflict
from ..fsutil import write_file

if TYPE_CHECKING:
    from .app import Daemon


async def up(daemon: Daemon, req: dict[str, Any], kubeconfig: str | None) -> dict[str, Any]:
    applied = daemon.applied
    if applied and applied.get("file") != req["file"]:
        raise Conflict(f"{applied['file']} is up already", hint="bridged down first")
    record: dict[str, Any] = applied or {"file": req["file"], "bridge": None,
                                         "created_bridge": False, "forwards": [],
                                         "intercepts": [], "written": []}
    before = set(daemon.bridges)
    bridge = await daemon.connect_kube(req.get("context"), req.get("namespace"),
                                       kubeconfig=kubeconfig)
    if record["bridge"] is None:
        record["bridge"] = bridge.name
        record["created_bridge"] = bridge.name not in before
    daemon.applied = record
    try:
        for target in req.get("expose") or []:
            request = ForwardRequest.parse({"target": target, "bridge": bridge.name})
            try:
                made = await daemon.expose(request)
            except Conflict:
                continue  # exposed already (an earlier up, or by hand): left as it is
            record["forwards"] += [f.spec.name for f in made]
        intercept = req.get("intercept")
        if intercept and intercept["service"] not in bridge.intercepts:
            port = str(intercept["port"])
            if intercept.get("servicePort") is not None:
                port += f":{intercept['servicePort']}"
            spec = InterceptSpec.parse(
                service=intercept["service"], local_port=port, via=intercept.get("via"),
                headers=tuple(f"{k}={v}" for k, v in (intercept.get("headers") or {}).items()),
                path=intercept.get("path"), fallback=intercept.get("fallback", "error"),
                tcp=bool(intercept.get("tcp")), protocol=intercept.get("protocol"),
                grpc_method=intercept.get("grpcMethod"))
            await daemon.intercept(bridge.name, spec)
            record["intercepts"].append(spec.name)
        if req.get("env"):
            env = req["env"]
            result = await daemon.env(bridge.name, env["workload"], env.get("container"),
                                      "dotenv")
            path = Path(env["file"])
            write_file(path, result["text"], 0o600 if result["secret"] else 0o644)
            _remember(record, str(path))
        if req.get("files"):
            files = req["files"]
            folder = Path(files["dir"])
            existed = _exists(folder)
            await daemon.files(bridge.name, files["workload"], files.get("container"),
                               str(folder))
            if not existed:
                _remember(record, str(folder))
    finally:
        daemon.save()
    return {**record, "status": daemon.status()}


def _remember(record: dict[str, Any], path: str) -> None:
    if path not in record["written"]:
        record["written"].append(path)


async def down(daemon: Daemon) -> dict[str, Any]:
    record = daemon.applied
    if not record:
        raise ConfigError("nothing is up", hint="bridged up applies a bridged.yaml")
    notes: list[str] = []
    for name in reversed(record["intercepts"]):
        if any(name in b.intercepts for b in daemon.bridges.values()):
            notes += await daemon.leave(name)
    for name in reversed(record["forwards"]):
        if any(name in b.forwards for b in daemon.bridges.values()):
            await daemon.unexpose(name)
    _remove([Path(p) for p in reversed(record["written"])])
    bridge = daemon.bridges.get(record["bridge"])
    if record["created_bridge"] and bridge is not None:
        if bridge.forwards or bridge.intercepts:  # made by hand meanwhile: not up's to undo
            notes.append(f"bridge {record['bridge']} kept: it carries forwards or intercepts "
                         "made by hand ('bridged disconnect' ends it)")
        else:
            await daemon.disconnect(record["bridge"])
    daemon.applied = None
    daemon.save()
    return {**record, "notes": notes}


def _exists(path: Path) -> bool:
    return path.exists()


def _remove(paths: list[Path]) -> None:
    for target in paths:
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
