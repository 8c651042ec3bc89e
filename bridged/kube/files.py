"""A container's ConfigMap, Secret and downward-API volumes, written on the laptop as a snapshot.

Pure part: :func:`layout_files` decides, for each volume mount of the container, which files the
kubelet would put there and with what content. I/O part: :func:`write_layout` writes them under
``out_dir/<mountPath without its leading />``, :func:`workload_files` does everything for a
workload (reading only the ConfigMaps and Secrets the container's mounts refer to).

Kubernetes semantics followed (Kubernetes 1.35 source):

- ``pkg/volume/configmap`` and ``pkg/volume/secret`` ``MakePayload``: without ``items`` every key
  becomes a file (ConfigMaps: ``data`` and ``binaryData``; Secrets: ``data``, decoded); with
  ``items`` only those keys, at their ``path``, with their ``mode`` or ``defaultMode`` (default
  0644). A missing object or key is skipped when ``optional``, else the pod cannot start
  (``FailedMount``): :class:`~bridged.errors.ConfigError`.
- ``pkg/volume/downwardapi``: ``items`` of ``fieldRef`` (``metadata.name``, ``.namespace``,
  ``.uid``, ``.labels``, ``.annotations`` -- whole maps as sorted ``k="v"`` lines, Go quoting --
  and ``metadata.labels['k']``/``metadata.annotations['k']``) or ``resourceFieldRef``
  (``containerName`` required), the value without a final newline.
- ``pkg/volume/projected``: the union of its ``configMap``, ``secret`` and ``downwardAPI``
  sources with the projected ``defaultMode``; ``serviceAccountToken``, ``clusterTrustBundle``
  and ``podCertificate`` sources are not reproduced (bridged mints no tokens): reported.
- ``pkg/volume/util/atomic_writer.go``: the files live in a timestamped ``..<time>`` directory,
  ``..data`` links to it and each top-level name is a link ``name -> ..data/name``; a refresh
  writes a new directory and swaps ``..data``, as the kubelet's update does, so programs that
  watch ``..data`` see the change.
- ``subPath`` / ``subPathExpr`` (``makeMounts``): that one file or directory of the volume, as a
  plain copy at the mount path (a subPath that does not exist is an empty directory, as the
  kubelet creates it); ``subPathExpr`` is expanded with the container's env
  (``kubecontainer.ExpandContainerVolumeMounts``: a missing or empty variable is an error).

Other volume kinds (emptyDir, PVCs, hostPath, CSI, image...) hold data no API gives: reported in
:attr:`WrittenFiles.skipped`, nothing written.

Modes: this is a read-only snapshot. Files from ConfigMaps and the downward API are 0444;
files from Secrets 0400 (their owner may read them, nobody else; nobody may change them).
Directories are 0755, or 0700 when the volume holds Secret data, so nobody else can even list
it; directories stay writable by their owner so that the next run can refresh them. The mode
the pod sees (``defaultMode``/``items[].mode``) is kept in :attr:`WrittenFile.pod_mode`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import ConfigError
from ..workload.downward import Unknown, field_value, resource_value
from ..workload.kubelet import expand, pick_container
from .client import Kube
from .env import env_of, load_workload, read_objects

__all__ = ["FilesLayout", "MountPlan", "PlannedFile", "WrittenFile", "WrittenFiles",
           "layout_files", "volume_references", "workload_files", "write_layout"]

DEFAULT_MODE = 0o644  # the API's default for defaultMode
CONFIG_FILE_MODE = 0o444
SECRET_FILE_MODE = 0o400
DIR_MODE = 0o755
SECRET_DIR_MODE = 0o700


@dataclass(frozen=True)
class PlannedFile:
    """One file of a volume: ``path`` relative to the volume's root, ``pod_mode`` the mode the
    kubelet gives it, ``source`` e.g. ``configmap/NAME:KEY``, ``secret/NAME:KEY``,
    ``downwardAPI:metadata.labels``."""

    path: str
    data: bytes
    pod_mode: int
    secret: bool
    source: str


@dataclass(frozen=True)
class MountPlan:
    """What one volume mount of the container shows."""

    volume: str
    mount_path: str  # in the container, as written in the spec
    sub_path: str | None  # the subPath (subPathExpr expanded), None for the whole volume
    kind: str  # configMap | secret | downwardAPI | projected
    files: tuple[PlannedFile, ...]
    missing: tuple[str, ...] = ()  # what the pod has but is not reproduced here, and why

    @property
    def secret(self) -> bool:
        return any(f.secret for f in self.files)


@dataclass(frozen=True)
class FilesLayout:
    container: str
    mounts: tuple[MountPlan, ...]
    skipped: tuple[str, ...] = ()  # mounts not reproduced, with the reason


def volume_references(pod_spec: Mapping[str, Any], container: str | None,
                      annotations: Mapping[str, str] | None = None
                      ) -> tuple[frozenset[str], frozenset[str]]:
    """The ConfigMaps and Secrets the container's mounted volumes refer to (what must be
    readable)."""
    c = pick_container(pod_spec, container, annotations)
    volumes = {v.get("name"): v for v in pod_spec.get("volumes") or []}
    cms: set[str] = set()
    secrets: set[str] = set()
    for mount in c.get("volumeMounts") or []:
        volume = volumes.get(mount.get("name")) or {}
        if (cm := volume.get("configMap")) and cm.get("name"):
            cms.add(cm["name"])
        if (secret := volume.get("secret")) and secret.get("secretName"):
            secrets.add(secret["secretName"])
        for source in (volume.get("projected") or {}).get("sources") or []:
            if (cm := source.get("configMap")) and cm.get("name"):
                cms.add(cm["name"])
            if (secret := source.get("secret")) and secret.get("name"):
                secrets.add(secret["name"])
    return frozenset(cms), frozenset(secrets)


def _safe_relative(path: str, what: str) -> str:
    """A relative path without ``..`` (the API validates this; we write to the laptop)."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or any(p in ("", ".", "..") for p in path.split("/")) \
            or path.startswith(".."):
        raise ConfigError(f"{what}: {path!r} is not a safe relative path")
    return str(pure)


def _mount_relative(mount_path: str) -> str:
    rel = str(PurePosixPath("/", mount_path)).lstrip("/")
    if not rel or any(p == ".." for p in PurePosixPath(mount_path).parts):
        raise ConfigError(f"mountPath {mount_path!r} cannot be reproduced under a directory")
    return rel


def _secret_bytes(value: object, what: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{what}: not base64 data as the API returns it") from exc


def _key_files(kind: str, name: str, obj: Mapping[str, Any] | None, items: list[Any] | None,
               default_mode: int, optional: bool, where: str) -> list[PlannedFile]:
    """``MakePayload`` of the configmap and secret volume plugins."""
    label = "ConfigMap" if kind == "configmap" else "Secret"
    if obj is None:
        if optional:
            return []
        raise ConfigError(f"{where}: {label} {name} does not exist and is not optional",
                          hint="the pod would not start (FailedMount)")
    secret = kind == "secret"
    data: dict[str, bytes] = {}
    for key, value in (obj.get("data") or {}).items():
        data[key] = _secret_bytes(value, f"{label} {name} key {key}") if secret \
            else str(value).encode()
    if not secret:
        for key, value in (obj.get("binaryData") or {}).items():
            data[key] = _secret_bytes(value, f"ConfigMap {name} binaryData key {key}")
    files: list[PlannedFile] = []
    if not items:
        for key in sorted(data):
            files.append(PlannedFile(_safe_relative(key, f"{label} {name} key"), data[key],
                                     default_mode, secret, f"{kind}/{name}:{key}"))
        return files
    for item in items:
        key = str(item.get("key") or "")
        if key not in data:
            if optional:
                continue
            raise ConfigError(f"{where}: {label} {name} has no key {key!r} and is not optional",
                              hint="the pod would not start (FailedMount)")
        mode = item.get("mode")
        files.append(PlannedFile(_safe_relative(str(item.get("path") or ""), f"{where} path"),
                                 data[key], default_mode if mode is None else int(mode),
                                 secret, f"{kind}/{name}:{key}"))
    return files


def _downward_files(items: list[Any], default_mode: int, pod_spec: Mapping[str, Any],
                    pod_fields: Mapping[str, Any], node_allocatable: Mapping[str, Any] | None,
                    where: str) -> tuple[list[PlannedFile], list[str]]:
    files: list[PlannedFile] = []
    missing: list[str] = []
    for item in items:
        path = _safe_relative(str(item.get("path") or ""), f"{where} path")
        mode = item.get("mode")
        pod_mode = default_mode if mode is None else int(mode)
        got: str | Unknown
        if (ref := item.get("fieldRef")) is not None:
            got, source = field_value(ref, pod_fields, volume=True), str(ref.get("fieldPath"))
        elif (ref := item.get("resourceFieldRef")) is not None:
            got = resource_value(ref, pod_spec, None, node_allocatable)
            source = f"{ref.get('containerName')}/{ref.get('resource')}"
        else:
            continue
        if isinstance(got, Unknown):
            missing.append(f"{path}: {got.reason}")
            continue
        files.append(PlannedFile(path, got.encode(), pod_mode, False, f"downwardAPI:{source}"))
    return files, missing


def _volume_files(volume: Mapping[str, Any], pod_spec: Mapping[str, Any], *,
                  configmaps: Mapping[str, Mapping[str, Any]],
                  secrets: Mapping[str, Mapping[str, Any]], pod_fields: Mapping[str, Any],
                  node_allocatable: Mapping[str, Any] | None, where: str
                  ) -> tuple[str, list[PlannedFile], list[str]] | None:
    if (cm := volume.get("configMap")) is not None:
        name = str(cm.get("name") or "")
        mode = cm.get("defaultMode")
        return "configMap", _key_files(
            "configmap", name, configmaps.get(name), cm.get("items"),
            DEFAULT_MODE if mode is None else int(mode), bool(cm.get("optional")), where), []
    if (secret := volume.get("secret")) is not None:
        name = str(secret.get("secretName") or "")
        mode = secret.get("defaultMode")
        return "secret", _key_files(
            "secret", name, secrets.get(name), secret.get("items"),
            DEFAULT_MODE if mode is None else int(mode), bool(secret.get("optional")),
            where), []
    if (downward := volume.get("downwardAPI")) is not None:
        mode = downward.get("defaultMode")
        files, missing = _downward_files(
            downward.get("items") or [], DEFAULT_MODE if mode is None else int(mode), pod_spec,
            pod_fields, node_allocatable, where)
        return "downwardAPI", files, missing
    if (projected := volume.get("projected")) is not None:
        mode = projected.get("defaultMode")
        default_mode = DEFAULT_MODE if mode is None else int(mode)
        files = []
        missing = []
        for source in projected.get("sources") or []:
            if (cm := source.get("configMap")) is not None:
                name = str(cm.get("name") or "")
                files += _key_files("configmap", name, configmaps.get(name), cm.get("items"),
                                    default_mode, bool(cm.get("optional")), where)
            elif (secret := source.get("secret")) is not None:
                name = str(secret.get("name") or "")
                files += _key_files("secret", name, secrets.get(name), secret.get("items"),
                                    default_mode, bool(secret.get("optional")), where)
            elif (downward := source.get("downwardAPI")) is not None:
                more, gone = _downward_files(downward.get("items") or [], default_mode,
                                             pod_spec, pod_fields, node_allocatable, where)
                files += more
                missing += gone
            elif (token := source.get("serviceAccountToken")) is not None:
                missing.append(f"{token.get('path')}: a ServiceAccount token, which bridged "
                               "does not mint")
            else:
                kinds = ", ".join(sorted(source)) or "an empty source"
                missing.append(f"{kinds}: not reproduced")
        return "projected", files, missing
    return None


def layout_files(pod_spec: Mapping[str, Any], container: str | None, *,
                 configmaps: Mapping[str, Mapping[str, Any]],
                 secrets: Mapping[str, Mapping[str, Any]],
                 pod_fields: Mapping[str, Any],
                 resources: Mapping[str, Any] | None = None,
                 env: Mapping[str, str] | None = None) -> FilesLayout:
    """The files the kubelet shows ``container`` through its ConfigMap, Secret, downward-API
    and projected volume mounts (module docstring for the semantics). Pure: no I/O.

    ``configmaps``/``secrets``: the objects by name as the API returns them (absent: does not
    exist); ``pod_fields``: as for :func:`bridged.workload.kubelet.resolve_env`; ``env``: the
    container's environment, needed only for ``subPathExpr`` (without it such mounts are skipped).
    """
    annotations = pod_fields.get("metadata.annotations") or {}
    c = pick_container(pod_spec, container, annotations)
    cname = str(c.get("name"))
    volumes = {v.get("name"): v for v in pod_spec.get("volumes") or []}
    node_allocatable = (resources or {}).get("node_allocatable")
    mounts: list[MountPlan] = []
    skipped: list[str] = []
    for mount in c.get("volumeMounts") or []:
        vname = str(mount.get("name") or "")
        mount_path = str(mount.get("mountPath") or "")
        where = f"container {cname!r} volume {vname!r} at {mount_path}"
        volume = volumes.get(vname)
        if volume is None:
            raise ConfigError(f"{where}: the pod has no volume {vname!r}")
        _mount_relative(mount_path)
        planned = _volume_files(volume, pod_spec, configmaps=configmaps, secrets=secrets,
                                pod_fields=pod_fields, node_allocatable=node_allocatable,
                                where=where)
        if planned is None:
            kind = next((k for k in volume if k != "name"), "unknown")
            skipped.append(f"{mount_path} (volume {vname}, {kind}): its data is not in the "
                           "API, nothing written")
            continue
        kind, files, missing = planned
        sub_path: str | None = mount.get("subPath") or None
        if mount.get("subPathExpr"):
            if env is None:
                skipped.append(f"{mount_path} (volume {vname}): subPathExpr needs the "
                               "container's environment")
                continue
            gaps: set[str] = set()

            def value_of(name: str, gaps: set[str] = gaps) -> str:
                value = env.get(name, "")
                if not value:
                    gaps.add(name)
                return value

            sub_path, _ = expand(str(mount["subPathExpr"]), value_of)
            if gaps:
                raise ConfigError(f"{where}: subPathExpr: missing value for "
                                  f"{', '.join(sorted(gaps))}")
        if sub_path is not None:
            sub_path = _safe_relative(sub_path, f"{where} subPath")
        mounts.append(MountPlan(vname, mount_path, sub_path, kind, tuple(files),
                                tuple(missing)))
    return FilesLayout(cname, tuple(mounts), tuple(skipped))


# --- writing (I/O) --------------------------------------------------------------------------


@dataclass(frozen=True)
class WrittenFile:
    """A file written on the laptop: ``path`` there, ``container_path`` in the container."""

    path: Path
    container_path: str
    volume: str
    source: str
    mode: int  # as written
    pod_mode: int  # as the kubelet writes it in the pod
    secret: bool
    size: int


class WrittenFiles(list[WrittenFile]):
    """The files written; ``skipped``: mounts and files not reproduced, with the reason."""

    def __init__(self, files: list[WrittenFile] | None = None,
                 skipped: list[str] | None = None) -> None:
        super().__init__(files or [])
        self.skipped: list[str] = list(skipped or [])


@dataclass
class _Ctx:
    root: Path
    written: list[WrittenFile] = field(default_factory=list)


def _inside(root: Path, path: Path) -> Path:
    """``path`` resolved, refusing anything that leaves ``root`` (through a symlink...)."""
    resolved = path.resolve()
    if resolved != root and not resolved.is_relative_to(root):
        raise ConfigError(f"{path} leads out of {root}: refusing to write there")
    return path


def _makedirs(root: Path, path: Path, mode: int) -> None:
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        if current.is_symlink():  # another volume's entry that this mount shadows
            current.unlink()
        if not current.exists():
            current.mkdir()
            os.chmod(current, mode)
        _inside(root, current)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """A new file (replacing what was there) with exactly ``mode``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _file_mode(f: PlannedFile) -> int:
    return SECRET_FILE_MODE if f.secret else CONFIG_FILE_MODE


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _write_volume(ctx: _Ctx, plan: MountPlan, target: Path) -> list[tuple[Path, PlannedFile]]:
    """The kubelet's atomic writer: files in ``..<time>``, ``..data`` -> it, ``name`` ->
    ``..data/name`` for each top-level name; the previous ``..<time>`` is removed."""
    dir_mode = SECRET_DIR_MODE if plan.secret else DIR_MODE
    if target.is_symlink() or target.is_file():
        target.unlink()
    _makedirs(ctx.root, target, DIR_MODE)
    os.chmod(target, dir_mode)
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
    fresh = Path(tempfile.mkdtemp(prefix=stamp, dir=target))
    os.chmod(fresh, dir_mode)
    out = []
    for f in plan.files:
        path = fresh / f.path
        _makedirs(fresh, path.parent, dir_mode)
        _write_file(path, f.data, _file_mode(f))
        out.append((target / f.path, f))
    data_link = target / "..data"
    previous = os.readlink(data_link) if data_link.is_symlink() else None
    swap = target / "..data_tmp"
    if swap.is_symlink() or swap.exists():
        _remove(swap)
    os.symlink(fresh.name, swap)
    os.replace(swap, data_link)
    top = {f.path.split("/")[0] for f in plan.files}
    for name in sorted(top):
        link = target / name
        if link.is_symlink():
            if os.readlink(link) == f"..data/{name}":
                continue
            link.unlink()
        elif link.exists():  # a nested mount's directory shadows this entry, as in the pod
            continue
        os.symlink(f"..data/{name}", link)
    for entry in target.iterdir():
        if entry.is_symlink() and entry.name not in top \
                and os.readlink(entry) == f"..data/{entry.name}":
            entry.unlink()
    if previous and previous != fresh.name and previous.startswith("..") \
            and "/" not in previous:
        shutil.rmtree(target / previous, ignore_errors=True)
    return out


def _write_sub_path(ctx: _Ctx, plan: MountPlan, target: Path) -> list[tuple[Path, PlannedFile]]:
    """A subPath mount: that one file or directory of the volume, copied."""
    assert plan.sub_path is not None
    sub = plan.sub_path
    exact = [f for f in plan.files if f.path == sub]
    inner = [f for f in plan.files if f.path.startswith(sub + "/")]
    _makedirs(ctx.root, target.parent, DIR_MODE)
    if target.is_symlink() or target.exists():  # the previous copy
        _remove(target)
    if exact:
        _write_file(target, exact[0].data, _file_mode(exact[0]))
        return [(target, exact[0])]
    dir_mode = SECRET_DIR_MODE if any(f.secret for f in inner) else DIR_MODE
    _makedirs(ctx.root, target, dir_mode)  # a subPath that does not exist: an empty directory
    out = []
    for f in inner:
        path = target / f.path[len(sub) + 1:]
        _makedirs(ctx.root, path.parent, dir_mode)
        _write_file(path, f.data, _file_mode(f))
        out.append((path, f))
    return out


def write_layout(layout: FilesLayout, out_dir: Path) -> WrittenFiles:
    """Write ``layout`` under ``out_dir`` (created if needed): each mount at
    ``out_dir/<mountPath without the leading />``, shallower mounts first so that a nested
    mount shadows its parent's entry as it does in the container."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = _Ctx(out_dir.resolve())
    skipped = list(layout.skipped)
    for plan in sorted(layout.mounts, key=lambda p: len(PurePosixPath(
            _mount_relative(p.mount_path)).parts)):
        target = _inside(ctx.root, ctx.root / _mount_relative(plan.mount_path))
        written = (_write_sub_path(ctx, plan, target) if plan.sub_path is not None
                   else _write_volume(ctx, plan, target))
        skipped += [f"{plan.mount_path}/{m}" for m in plan.missing]
        for path, f in written:
            rel = path.relative_to(target)
            container_path = str(PurePosixPath(plan.mount_path, *rel.parts))
            ctx.written.append(WrittenFile(path, container_path, plan.volume, f.source,
                                           _file_mode(f), f.pod_mode, f.secret, len(f.data)))
    return WrittenFiles(ctx.written, skipped)


async def workload_files(kube: Kube, ref: str, container: str | None,
                         out_dir: Path) -> WrittenFiles:
    """Write the ConfigMap, Secret, downward-API and projected volumes ``container`` (default:
    kubectl's) of ``ref`` (``deploy/NAME``, ``sts/NAME``, ``pod/NAME``...) mounts, under
    ``out_dir``. Uses a Running and Ready pod of the workload when there is one, else its
    template (then the downward-API files a pod alone has are skipped). Reads only the
    ConfigMaps and Secrets the mounts refer to (and, for ``subPathExpr``, what the env needs).
    """
    workload = await load_workload(kube, ref)
    annotations = workload.pod_fields.get("metadata.annotations") or {}
    c = pick_container(workload.pod_spec, container, annotations)
    cname = str(c.get("name"))
    cm_names, secret_names = volume_references(workload.pod_spec, cname, annotations)
    configmaps, secrets = await asyncio.gather(read_objects(kube, "ConfigMap", cm_names),
                                               read_objects(kube, "Secret", secret_names))
    env: dict[str, str] | None = None
    if any(m.get("subPathExpr") for m in c.get("volumeMounts") or []):
        env = (await env_of(kube, workload, cname)).as_dict()
    try:
        layout = layout_files(workload.pod_spec, cname, configmaps=configmaps, secrets=secrets,
                              pod_fields=workload.pod_fields, env=env)
    except ConfigError as exc:
        raise ConfigError(f"{workload.kind.lower()}/{workload.name}: {exc.message}",
                          hint=exc.hint) from exc
    written = await asyncio.to_thread(write_layout, layout, out_dir)
    written.skipped[:0] = list(workload.notes)
    return written
