"""``bridged run [--from deploy/NAME] [-c CONTAINER] -- CMD …``: the local service, started with
the workload's environment (as ``bridged env`` builds it), its files under ``$BRIDGED_ROOT`` (as
``bridged files`` writes them) and the daemon's proxies in ``HTTP_PROXY``/``ALL_PROXY``.

Signals: the child stays in ``run``'s process group (job control and the terminal work as for
any command). SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to ``run`` are forwarded to the child;
one the terminal sent to the whole foreground group (Ctrl-C, Ctrl-\\, a hang-up) reached the
child already and is not sent twice (a second SIGINT would interrupt a Python child's cleanup).
``run`` exits with the child's code, 128+N when signal N ended it (as shells report it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import BridgedError, ConfigError, ControlError
from ..project import Project, find, load
from .commands import BridgeOpt, _client
from .output import handles_errors, with_progress

#: what NO_PROXY always holds: the local service's own neighbours never go through the proxy
LOOPBACK = ("localhost", "127.0.0.1", "::1")
#: the laptop's, whatever the workload says: a container's PATH and HOME name the image's
#: folders, and the command would not even be found with them
KEPT_FROM_LAPTOP = ("PATH", "HOME")
#: what a terminal sends its whole foreground process group (the child gets it directly)
FROM_TERMINAL = frozenset({signal.SIGINT, signal.SIGQUIT, signal.SIGHUP})
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class CommandNotFound(BridgedError):
    exit_code = 127  # as a shell says it
    code = "command-not-found"


class CommandNotExecutable(BridgedError):
    exit_code = 126
    code = "command-not-executable"


def merge_no_proxy(user_env: Mapping[str, str]) -> str:
    """Loopback first, then what the user had in ``NO_PROXY`` or ``no_proxy`` (each once)."""
    seen: list[str] = list(LOOPBACK)
    for name in ("NO_PROXY", "no_proxy"):
        for entry in user_env.get(name, "").split(","):
            entry = entry.strip()
            if entry and entry not in seen:
                seen.append(entry)
    return ",".join(seen)


def proxy_vars(http: str, socks: str, user_env: Mapping[str, str]) -> dict[str, str]:
    """The variables HTTP, gRPC and database clients read. Lower and upper case both: curl
    reads only ``http_proxy`` lower-case, Go and Java mostly the upper. ``grpc_proxy`` is read
    by gRPC before ``https_proxy``: set too, so a stale one of the user's does not win."""
    http_url, socks_url = f"http://{http}", f"socks5h://{socks}"  # h: the proxy resolves
    no_proxy = merge_no_proxy(user_env)
    out = {}
    for name in ("HTTP_PROXY", "HTTPS_PROXY"):
        out[name] = out[name.lower()] = http_url
    out["grpc_proxy"] = http_url
    out["ALL_PROXY"] = out["all_proxy"] = socks_url
    out["NO_PROXY"] = out["no_proxy"] = no_proxy
    return out


def child_env(user_env: Mapping[str, str], workload: Mapping[str, str],
              proxies: Mapping[str, str], root: Path) -> dict[str, str]:
    """The laptop's environment, the workload's over it (but :data:`KEPT_FROM_LAPTOP`), the
    proxies over both, and ``BRIDGED_ROOT``."""
    env = {**user_env, **workload}
    for name in KEPT_FROM_LAPTOP:
        if name in user_env:
            env[name] = user_env[name]
        else:
            env.pop(name, None)
    return {**env, **proxies, "BRIDGED_ROOT": str(root)}


def exit_code(wait_status: int) -> int:
    """The child's exit code as ``run``'s: its own, or 128+N if signal N ended it."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def project_bridge(project: Project, status: Mapping[str, Any]) -> str | None:
    """The bridge of a project that is up, from the daemon's status: a connected kube bridge
    of its context and namespace (when the file pins them) that holds its intercept (when it
    has one). None: not up."""
    held = {i["bridge"] for i in status.get("intercepts", [])
            if project.intercept and i.get("service") == project.intercept["service"]}
    for b in status.get("bridges", []):
        if b.get("carrier") != "kube" or b.get("state") != "connected":
            continue
        context, _, namespace = b["relay"].removeprefix("kube://").partition("/")
        if project.context and project.context != context:
            continue
        if project.namespace and project.namespace != namespace:
            continue
        if project.intercept and b["name"] not in held:
            continue
        return str(b["name"])
    return None


def _from_project(client: Any, container: str | None) -> tuple[str, str | None, str]:
    project = load(find(Path.cwd()))
    source = project.env or project.files
    if not source:
        raise ConfigError(f"{project.path} names no workload (env.workload or files.workload)",
                          hint="give --from deploy/NAME")
    bridge = project_bridge(project, client.get("status"))
    if bridge is None:
        typer.echo(f"bridged run: {project.path} is not up: applying it first (bridged up)",
                   err=True)
        body = {**project.to_request(), "kubeconfig": os.environ.get("KUBECONFIG")}
        bridge = with_progress(client, lambda: client.post("up", body))["bridge"]
    return source["workload"], container or source.get("container"), str(bridge)


def _proxies(client: Any, bridge: str | None) -> dict[str, str]:
    try:
        answer = client.post("proxy", {"bridge": bridge})
    except ControlError as exc:
        # a daemon older than the proxies has no such route: a plain 404
        if "HTTP 404" not in exc.message:
            raise
        typer.echo("bridged: warning: this daemon serves no proxy (POST /v1/proxy: 404): "
                   "running without HTTP_PROXY/ALL_PROXY (restart the daemon to update it)",
                   err=True)
        return {}
    return proxy_vars(answer["http"], answer["socks"], os.environ)


def _make_root(root: Path | None) -> tuple[Path, bool]:
    """The folder for the files, and whether ``run`` made it (then it is ``run``'s to remove)."""
    if root is None:
        return Path(tempfile.mkdtemp(prefix="bridged-root-")), True  # 0700
    root = root.expanduser().resolve()
    if root.exists():
        if not root.is_dir():
            raise ConfigError(f"--root {root} is not a folder")
        return root, False
    try:
        root.mkdir(parents=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"cannot make --root {root}: {exc.strerror}") from None
    return root, True


@contextlib.contextmanager
def _signals_held() -> Iterator[frozenset[int]]:
    """Block the forwarded signals and SIGCHLD: :func:`_wait_child` takes them one by one.
    Pending ones are taken before they are unblocked again (the child is gone by then)."""
    watched = frozenset({*FORWARDED, signal.SIGCHLD})
    before = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    try:
        yield watched
    finally:
        for signum in signal.sigpending() & watched:
            signal.sigwait({signum})
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _spawn(argv: list[str], env: dict[str, str]) -> int:
    try:
        # the child starts with the mask run had before and default handlers (not Python's
        # ignored SIGPIPE and SIGXFSZ, which subprocess resets the same way)
        return os.posix_spawnp(argv[0], argv, env, setsigmask=(), setsigdef=(
            *FORWARDED, signal.SIGPIPE, signal.SIGXFSZ))
    except FileNotFoundError:
        raise CommandNotFound(f"command not found: {argv[0]}") from None
    except PermissionError:
        raise CommandNotExecutable(f"cannot run {argv[0]}: permission denied") from None
    except OSError as exc:
        raise CommandNotExecutable(f"cannot run {argv[0]}: {exc.strerror}") from None


def _in_foreground() -> bool:
    """Whether this process group is its terminal's foreground one (so that the terminal's
    signals reach the child too); where the sender cannot be told (no sigwaitinfo)."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            return os.tcgetpgrp(fd) == os.getpgrp()
    return False


def _next_signal(watched: frozenset[int]) -> tuple[int, bool]:
    """The next signal, and whether the kernel (a terminal) sent it rather than a process."""
    if hasattr(signal, "sigwaitinfo"):
        info = signal.sigwaitinfo(watched)
        return info.si_signo, info.si_code > 0  # SI_USER (kill) is 0, SI_KERNEL positive
    signum = signal.sigwait(watched)  # macOS
    return signum, signum in FROM_TERMINAL and _in_foreground()


def _wait_child(pid: int, watched: frozenset[int]) -> int:
    while True:
        signum, by_terminal = _next_signal(watched)
        if signum == signal.SIGCHLD:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return exit_code(status)
            continue
        with contextlib.suppress(ProcessLookupError):
            if signum in FROM_TERMINAL and by_terminal and os.getpgid(pid) == os.getpgrp():
                continue  # the terminal sent it to the child as well
            os.kill(pid, signum)


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"allow_interspersed_args": False})
    @handles_errors
    def run(
        command: Annotated[list[str] | None, typer.Argument(
            help="The command and its arguments (after --).", show_default=False)] = None,
        ref: Annotated[str | None, typer.Option(
            "--from", help="deploy/NAME, statefulset/NAME or pod/NAME (default: bridged.yaml's "
                           "workload, up first if it is not up).")] = None,
        container: Annotated[str | None, typer.Option("--container", "-c")] = None,
        root: Annotated[Path | None, typer.Option(
            help="Folder for the workload's files (default: a private temporary one).")]
            = None,
        keep_root: Annotated[bool, typer.Option(
            "--keep-root", help="Keep the files' folder after the command ends.")] = False,
        no_proxy: Annotated[bool, typer.Option(
            "--no-proxy", help="Do not set HTTP_PROXY, ALL_PROXY and friends.")] = False,
        bridge: BridgeOpt = None,
    ) -> None:
        """Run CMD with the workload's environment, its files under $BRIDGED_ROOT and the
        daemon's proxies (cluster names resolve); its exit code is run's."""
        if not command:
            raise ConfigError("no command: bridged run [OPTIONS] -- CMD [ARGS…]")
        client = _client(no_start=ref is not None)
        if ref is None:
            ref, container, bridge = _from_project(client, container)
        result = client.post("env", {"ref": ref, "container": container, "format": "json",
                                     "bridge": bridge})
        for note in result["notes"]:
            typer.echo(f"note: {note}", err=True)
        workload = json.loads(result["text"])
        proxies = {} if no_proxy else _proxies(client, bridge)
        folder, made = _make_root(root)

        def remove() -> None:
            if made and not keep_root:
                shutil.rmtree(folder, ignore_errors=True)

        try:
            written = client.post("files", {"ref": ref, "container": container,
                                            "out_dir": str(folder), "bridge": bridge})
        except BaseException:
            remove()
            raise
        for note in written["skipped"]:
            typer.echo(f"note: not written: {note}", err=True)
        env = child_env(os.environ, workload, proxies, folder)
        sys.stdout.flush()
        with _signals_held() as watched:  # held until the folder is gone too
            try:
                code = _wait_child(_spawn(command, env), watched)
            finally:
                remove()
        if keep_root:
            typer.echo(f"bridged run: the files stay in {folder}", err=True)
        raise typer.Exit(code)
