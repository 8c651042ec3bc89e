"""bridged.yaml on the command line: ``up``, ``down``, ``init``, ``schema``, ``vscode init``."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import jsonc
from ..config import parse_port
from ..errors import BridgedError, ConfigError
from ..project import FILENAME, find, load, schema, starter
from .commands import _client
from .output import JsonOpt, emit, handles_errors, with_progress

FileOpt = Annotated[Path | None, typer.Option(
    "--file", "-f", help="The bridged.yaml (default: here or in a parent folder).")]

#: what `bridged up --wait` prints first and last: VS Code's background problem matcher
#: waits for these (see :func:`tasks`)
BEGINS = "bridged up: applying "
READY = "bridged up: ready"
FAILED = "bridged up: failed"


def _describe(result: dict[str, Any]) -> str:
    status = result["status"]
    parts = []
    for i in status["intercepts"]:
        match = " and ".join(i["matchers"]) or "every request"
        speaks = f"{i['protocol']}, " if i.get("protocol", "http") != "http" else ""
        parts.append(f"{i['service'] or 'relay port'}:{i['service_port'] or i['remote_port']}"
                     f" → {i['local_host']}:{i['local_port']} ({speaks}{match})")
    parts.append(f"{len(status['forwards'])} forwards")
    parts += [f"wrote {p}" for p in result["written"]]
    return ", ".join(parts)


def register(app: typer.Typer) -> None:
    @app.command()
    @handles_errors
    def up(
        file: FileOpt = None,
        wait: Annotated[bool, typer.Option(
            help="Wait until every bridge, forward and intercept is live, then print one "
                 "final line (what a VS Code task waits for).")] = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Apply bridged.yaml: connect, expose its dependencies, intercept its Service, write
        its env file and files."""
        if not json_out:
            typer.echo(BEGINS + str(file or Path.cwd()), err=False)
        try:
            project = load(find(Path.cwd(), file))
            client = _client()
            body = {**project.to_request(), "kubeconfig": os.environ.get("KUBECONFIG")}
            result = with_progress(client, lambda: client.post("up", body), quiet=json_out)
            if wait:
                _wait_live(client)
                result["status"] = client.get("status")
        except Exception as exc:  # one line on stderr (handles_errors), and this one
            if not json_out:        # for a task runner waiting for the end
                typer.echo(f"{FAILED} — {exc}")
            raise
        emit(result, json_out, lambda r: typer.echo(f"{READY} — {_describe(r)}"))

    @app.command()
    @handles_errors
    def down(json_out: JsonOpt = False) -> None:
        """Undo exactly what bridged up did (what you made by hand stays)."""
        result = _client(no_start=True).post("down", {})
        emit(result, json_out, lambda r: typer.echo("\n".join([
            f"down: left {len(r['intercepts'])} intercepts, closed {len(r['forwards'])} "
            f"forwards, removed {len(r['written'])} files"
            + (f", disconnected {r['bridge']}" if r["created_bridge"] else ""),
            *r.get("notes", [])])))

    @app.command("schema")
    def print_schema() -> None:
        """The JSON Schema of bridged.yaml (for editors)."""
        typer.echo(json.dumps(schema(), indent=2))

    @app.command()
    @handles_errors
    def init(
        service: Annotated[str | None, typer.Option(help="The Service to intercept.")] = None,
        port: Annotated[int | None, typer.Option(help="Your local service's port.")] = None,
        service_port: Annotated[str | None, typer.Option(
            help="The Service's port (number or name).")] = None,
        expose: Annotated[list[str] | None, typer.Option(help="A dependency (repeatable).")]
            = None,
        context: Annotated[str | None, typer.Option(help="Kube context to pin.")] = None,
        namespace: Annotated[str | None, typer.Option("--namespace", "-n")] = None,
        force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Write a commented starter bridged.yaml here (asks what it needs unless given)."""
        path = Path.cwd() / FILENAME
        if path.exists() and not force:
            raise ConfigError(f"{path} exists", hint="edit it, or --force to start over")
        interactive = sys.stdin.isatty()
        found: dict[str, Any] | None = None
        unpinned = ""
        # the cluster is asked for what to choose from, and for the context and namespace it
        # used, which the file pins: a teammate's current context may be another cluster
        if service is None or (service_port is None and not expose) or not (
                context and namespace):
            try:
                client = _client()
                found = client.post("cluster/services", {
                    "context": context, "namespace": namespace,
                    "kubeconfig": os.environ.get("KUBECONFIG")})
            except BridgedError as exc:
                if service is None:
                    raise ConfigError(f"cannot list the cluster's Services ({exc})",
                                      hint="give --service NAME --port N") from None
                unpinned = f"context and namespace not pinned: cannot reach the cluster ({exc})"
        by_service: dict[str, list[dict[str, Any]]] = {}
        for p in (found or {}).get("services", []):
            by_service.setdefault(p["service"], []).append(p)
        if service is None:
            if not by_service:
                raise ConfigError(f"no Services in namespace {(found or {}).get('namespace')}",
                                  hint="give --service NAME --port N")
            if not interactive:
                raise ConfigError("which Service? give --service NAME (this namespace has: "
                                  f"{', '.join(sorted(by_service))})")
            names = sorted(by_service)
            for n, name in enumerate(names, 1):
                ports = ", ".join(f"{p['port']}" + (f" ({p['port_name']})" if p["port_name"]
                                                    else "") for p in by_service[name])
                typer.echo(f"  {n}. {name}  {ports}", err=True)
            choice = typer.prompt("Service to intercept (number or name)")
            service = names[int(choice) - 1] if choice.isdigit() and \
                0 < int(choice) <= len(names) else choice
        ports_of = [p for p in by_service.get(service, []) if p["protocol"] == "TCP"]
        if service_port is None and len(ports_of) > 1:
            service_port = ports_of[0]["port_name"] or str(ports_of[0]["port"])
        if expose is None and by_service:
            expose = [name for name in sorted(by_service) if name != service][:5]
        if port is None:
            if not interactive:
                raise ConfigError("which local port? give --port N")
            port = parse_port(typer.prompt("Port your local copy listens on", default="8080"),
                              "local port")
        if found:
            context = context or found["context"]
            namespace = namespace or found["namespace"]
        text = starter(service, port, user=getpass.getuser(), service_port=service_port,
                       context=context, namespace=namespace, expose=tuple(expose or ()))
        path.write_text(text)
        load(path)  # what we wrote must be valid
        if unpinned:
            typer.echo(f"note: {unpinned}", err=True)
        emit({"file": str(path), "context": context, "namespace": namespace}, json_out,
             lambda r: typer.echo(f"wrote {r['file']}: review it, then bridged up"))

    vscode = typer.Typer(help="VS Code integration.", no_args_is_help=True)
    app.add_typer(vscode, name="vscode")

    @vscode.command("init")
    @handles_errors
    def vscode_init(
        launch: Annotated[str | None, typer.Option(
            help="The launch configuration to wire (default: the first).")] = None,
        file: FileOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Add the bridged: up / bridged: down tasks to .vscode/tasks.json and wire a launch
        configuration to them (existing entries are kept)."""
        project = load(find(Path.cwd(), file))
        folder = project.path.parent / ".vscode"
        folder.mkdir(exist_ok=True)
        notes = []
        tasks_path = folder / "tasks.json"
        tasks_doc, note = _read(tasks_path, {"version": "2.0.0", "tasks": []})
        notes += note
        mine = tasks(_command())
        labels = {t["label"] for t in mine}
        tasks_doc["tasks"] = [t for t in tasks_doc.get("tasks") or []
                              if t.get("label") not in labels] + mine
        tasks_path.write_text(json.dumps(tasks_doc, indent=4) + "\n")
        launch_path = folder / "launch.json"
        wired = None
        if launch_path.exists():
            launch_doc, note = _read(launch_path, {})
            notes += note
            configs = launch_doc.get("configurations") or []
            chosen = next((c for c in configs if launch is None or c.get("name") == launch),
                          None)
            if chosen is None:
                raise ConfigError(f"no launch configuration named {launch!r} in {launch_path}"
                                  if launch else f"no launch configuration in {launch_path}")
            chosen["preLaunchTask"] = "bridged: up"
            chosen["postDebugTask"] = "bridged: down"
            if project.env:
                rel = os.path.relpath(project.env["file"], project.path.parent)
                chosen["envFile"] = "${workspaceFolder}/" + rel
            wired = chosen.get("name")
            launch_path.write_text(json.dumps(launch_doc, indent=4) + "\n")
        else:
            notes.append(f"no {launch_path}: set preLaunchTask \"bridged: up\" and "
                         "postDebugTask \"bridged: down\" in your launch configuration")
        emit({"tasks": str(tasks_path), "launch": wired, "notes": notes}, json_out,
             lambda r: typer.echo("\n".join([
                 f"added the bridged: up / bridged: down tasks to {r['tasks']}",
                 *([f"launch configuration {r['launch']!r} runs them"] if r["launch"] else []),
                 *r["notes"]])))


def _wait_live(client: Any, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    while True:
        status = client.get("status")
        waiting = [f"bridge {b['name']}" for b in status["bridges"] if b["state"] != "connected"]
        waiting += [f"intercept {i['name']}" for i in status["intercepts"]
                    if i["state"] != "active"]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise BridgedError(f"not live after {within:.0f} s: {', '.join(waiting)}",
                               hint="bridged status says why")
        time.sleep(0.25)


def _command() -> list[str]:
    """How VS Code should run bridged: by name when this installation is on PATH."""
    on_path = shutil.which("bridged")
    here = Path(sys.executable).parent / "bridged"
    if on_path and Path(on_path).resolve() == here.resolve():
        return ["bridged"]
    return [str(here)] if here.exists() else [sys.executable, "-m", "bridged"]


def tasks(command: list[str]) -> list[dict[str, Any]]:
    """The two tasks. ``bridged: up`` is a background task whose problem matcher knows when
    ``bridged up --wait`` began and ended, and puts bridged.yaml's mistakes (``bridged:
    FILE:LINE: message``) in the Problems panel."""
    return [
        {
            "label": "bridged: up",
            "type": "process",
            "command": command[0],
            "args": [*command[1:], "up", "--wait"],
            "isBackground": True,
            "problemMatcher": {
                "owner": "bridged",
                "fileLocation": "absolute",
                "pattern": {"regexp": r"^bridged: (/.+?):(\d+): (.*)$",
                            "file": 1, "line": 2, "message": 3},
                "background": {"activeBegins": True,
                               "beginsPattern": "^" + BEGINS.rstrip(),
                               "endsPattern": f"^({READY}|{FAILED})"},
            },
        },
        {
            "label": "bridged: down",
            "type": "process",
            "command": command[0],
            "args": [*command[1:], "down"],
            "problemMatcher": [],
        },
    ]


def _read(path: Path, default: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    if not path.exists():
        return default, []
    text = path.read_text()
    try:
        doc = jsonc.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON with comments ({exc}): fix it first") \
            from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected an object")
    notes = []
    if jsonc.has_comments(text):
        backup = path.with_name(path.name + ".bak")
        backup.write_text(text)
        notes.append(f"{path} had comments, which JSON cannot keep: the original is {backup}")
    return doc, notes
