"""The commands that talk to the daemon. They import the control client and config only."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import parse_carrier
from ..control.client import ControlClient, ensure_daemon
from ..errors import ConfigError
from ..fsutil import write_file
from .output import (
    JsonOpt,
    emit,
    handles_errors,
    human_bytes,
    intercepting_step,
    table,
    with_progress,
)
from .traffic import traffic_line

BridgeOpt = Annotated[
    str | None, typer.Option("--bridge", help="Which relay connection (when several).")
]
ContextOpt = Annotated[str | None, typer.Option(help="Kube context (default: current).")]
NamespaceOpt = Annotated[
    str | None, typer.Option("--namespace", "-n", help="Namespace (default: the context's).")
]
NoStartOpt = Annotated[
    bool, typer.Option("--no-start", help="Fail instead of starting the daemon.")
]


def _intercepting(r: dict[str, Any]) -> None:
    what = (f"Service {r['service']} port {r['service_port']} (via {r['via']})"
            if r.get("service") else f"relay port {r['remote_port']}")
    match = " and ".join(r["matchers"]) or "every request" if r["mode"] == "http" \
        else "every connection"
    speaks = f" ({r['protocol']})" if r.get("protocol", "http") != "http" else ""
    typer.echo(f"intercepting {what} → {r['local_host']}:{r['local_port']}{speaks}: {match}  "
               f"({r['name']})")


def _client(no_start: bool = False) -> ControlClient:
    client = ControlClient()
    if not no_start:
        ensure_daemon(client)
    return client


def register(app: typer.Typer) -> None:
    @app.command()
    @handles_errors
    def connect(
        url: Annotated[str | None, typer.Argument(
            help="Relay address tcp://HOST:PORT or ws(s)://HOST/ssh; none: the kube context's"
        )] = None,
        context: ContextOpt = None,
        namespace: NamespaceOpt = None,
        relay_image: Annotated[str | None, typer.Option(help="Relay image to deploy.")] = None,
        name: Annotated[str | None, typer.Option(help="Name of this bridge.")] = None,
        token_file: Annotated[
            Path | None, typer.Option(help="File with the websocket carrier's bearer token.")
        ] = None,
        no_start: NoStartOpt = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Connect to a relay (the daemon keeps the connection up).

        Without URL: the relay of the kube context and namespace, deployed if it is not there,
        reached through the API server's port-forward.
        """
        if url is not None:
            parse_carrier(url)  # bad input fails here, before a daemon is started for it
            if context or namespace or relay_image:
                raise ConfigError("--context, --namespace and --relay-image go without a URL")
        token = None
        if token_file is not None:
            try:
                token = token_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read the token file {token_file}: {exc.strerror}") \
                    from None
        body: dict[str, Any] = {"url": url, "name": name, "token": token, "context": context,
                                "namespace": namespace, "relay_image": relay_image,
                                # this shell's kubeconfig, not the long-running daemon's
                                "kubeconfig": os.environ.get("KUBECONFIG") if url is None
                                else None}
        client = _client(no_start)
        bridge = with_progress(client, lambda: client.post("bridges", body), quiet=json_out)
        emit(bridge, json_out, lambda b: typer.echo(
            f"connected to {b['relay']} as bridge {b['name']!r} (session {b['session']})"))

    @app.command()
    @handles_errors
    def disconnect(
        name: Annotated[str | None, typer.Argument(help="Bridge to close.")] = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Leave intercepts, close forwards and the relay connection."""
        client = _client(no_start=True)
        bridge = name or _only_bridge(client)
        result = client.delete(f"bridges/{bridge}")
        emit(result, json_out, lambda r: typer.echo(f"disconnected {r['disconnected']}"))

    @app.command()
    @handles_errors
    def expose(
        targets: Annotated[list[str] | None, typer.Argument(
            help="HOST:PORT, or a Service NAME[.NAMESPACE][:PORT] on a kube bridge.")] = None,
        all_services: Annotated[bool, typer.Option(
            "--all", help="Every Service of the namespace (kube bridge).")] = False,
        local_port: Annotated[int, typer.Option(help="Local port (default: same, else free).")] = 0,
        name: Annotated[str | None, typer.Option(help="Name of the forward.")] = None,
        hosts: Annotated[bool, typer.Option(
            "--hosts", help="Give each Service its own loopback address (127.x.y.z) at its "
            "own port, and its cluster names in /etc/hosts, for clients that ignore proxies. "
            "Needs a daemon running as root; removed when it stops.")] = False,
        bridge: BridgeOpt = None,
        no_start: NoStartOpt = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Make in-cluster destinations reachable on local ports."""
        targets = list(targets or [])
        if all_services == bool(targets):
            raise ConfigError("give targets to expose, or --all (not both)")
        if (len(targets) > 1 or all_services) and (local_port or name):
            raise ConfigError("--local-port and --name go with a single target")
        client = _client(no_start)
        if all_services:
            query = f"services?bridge={bridge}" if bridge else "services"
            rows = client.get(query)
            targets = sorted({f"{r['service']}.{r['namespace']}" for r in rows
                              if not r["exposed"] and r["protocol"] == "TCP"})
        results = [
            forward
            for t in targets
            for forward in client.post("forwards", {"target": t, "local_port": local_port,
                                                    "name": name, "bridge": bridge,
                                                    "hosts": hosts})["forwards"]
        ]
        def human(rs: list[dict[str, Any]]) -> None:
            for r in rs:
                names = f", as {' '.join(r['hosts'])}" if r.get("hosts") else ""
                typer.echo(f"{r['remote_host']}:{r['remote_port']} → "
                           f"{r['local_host']}:{r['local_port']}  ({r['name']}{names})")

        emit(results, json_out, human)

    @app.command()
    @handles_errors
    def unexpose(
        name: Annotated[str, typer.Argument(help="Forward name (see bridged status).")],
        json_out: JsonOpt = False,
    ) -> None:
        """Close a forward."""
        result = _client(no_start=True).delete(f"forwards/{name}")
        emit(result, json_out, lambda r: typer.echo(f"removed forward {r['removed']}"))

    @app.command()
    @handles_errors
    def intercept(
        service: Annotated[str | None, typer.Argument(
            help="The Service whose traffic comes to you (its namespace: the bridge's).")]
            = None,
        port: Annotated[str, typer.Option(
            "--port", help="LOCAL[:SERVICE_PORT]: your local service's port, and which port "
            "of the Service (number or name; needed when it has several).")] = "",
        header: Annotated[list[str] | None, typer.Option(
            help="Only requests with this header: NAME=VALUE or NAME~REGEX (repeatable).")]
            = None,
        path: Annotated[str | None, typer.Option(help="Only requests under this path.")] = None,
        protocol: Annotated[str | None, typer.Option(
            "--protocol", help="What your local service speaks: http (HTTP/1.1), h2c "
            "(HTTP/2 cleartext) or grpc. Default: the Service port's appProtocol (grpc, "
            "kubernetes.io/h2c), else http.")] = None,
        grpc_method: Annotated[str | None, typer.Option(
            "--grpc-method", help="Only these gRPC calls: package.Service/Method, "
            "package.Service (all its methods) or */Method. Implies --protocol grpc.")]
            = None,
        via: Annotated[str, typer.Option(
            help="How the cluster's traffic reaches you: takeover (any cluster), gateway "
            "(Gateway API HTTPRoute), cilium (CiliumEnvoyConfig), auto.")] = "auto",
        fallback: Annotated[str, typer.Option(
            help="When your service is down: error (502) or origin (the original pods).")]
            = "error",
        tcp: Annotated[bool, typer.Option(
            help="Take the whole port as TCP (not HTTP): every connection comes to you.")]
            = False,
        overwrite: Annotated[bool, typer.Option(
            help="Take the port over from a developer who holds it (e.g. disconnected).")]
            = False,
        name: Annotated[str | None, typer.Option(
            help="Name of the intercept (default: the Service's).")] = None,
        local_host: Annotated[str, typer.Option(help="Host of your local service.")] = "127.0.0.1",
        relay_port: Annotated[int | None, typer.Option(
            help="Without a cluster: intercept this port of the relay itself.")] = None,
        origin: Annotated[str | None, typer.Option(
            help="With --relay-port: HOST:PORT where unmatched requests go.")] = None,
        mirror: Annotated[bool, typer.Option(
            "--mirror", help="Copy the matching requests to your local service while the "
            "cluster keeps answering the client; both answers are shown in bridged inspect.")]
            = False,
        bridge: BridgeOpt = None,
        no_start: NoStartOpt = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Send a Service's requests to your local service: all of them, or with --header /
        --path only those that match (the others keep reaching the cluster's pods)."""
        if not port:
            raise ConfigError("--port LOCAL[:SERVICE_PORT] is required: where your local "
                              "service listens")
        client = _client(no_start)
        # the daemon answers once the Service's traffic reaches the relay (a second or two
        # after the redirect is written): show what it waits for meanwhile
        result = with_progress(client, lambda: client.post("intercepts", {
            "service": service, "local_port": port, "remote_port": relay_port, "via":
            via if service else None, "name": name, "local_host": local_host,
            "bridge": bridge, "headers": header or [], "path": path, "origin": origin,
            "http": bool(origin), "tcp": tcp, "fallback": fallback, "overwrite": overwrite,
            "protocol": protocol, "grpc_method": grpc_method, "mirror": mirror,
        }), quiet=json_out, step=intercepting_step)
        emit(result, json_out, _intercepting)

    @app.command()
    @handles_errors
    def leave(
        name: Annotated[str, typer.Argument(help="Intercept name (see bridged status).")],
        json_out: JsonOpt = False,
    ) -> None:
        """End an intercept: the relay stops routing to you at once, and restores the Service
        when nobody else intercepts it."""
        result = _client(no_start=True).delete(f"intercepts/{name}")
        emit(result, json_out, lambda r: typer.echo("\n".join(
            [f"left intercept {r['left']}", *r.get("notes", [])])))

    @app.command()
    @handles_errors
    def services(bridge: BridgeOpt = None, json_out: JsonOpt = False) -> None:
        """The namespace's Services with their ports, and which are exposed where."""
        query = f"services?bridge={bridge}" if bridge else "services"
        emit(_client(no_start=True).get(query), json_out, lambda rows: table(
            "services", ["service", "port", "name", "cluster ip", "exposed on"], [
                [r["service"], f"{r['port']}/{r['protocol']}", r["port_name"], r["cluster_ip"],
                 f"127.0.0.1:{r['local_port']}" if r["exposed"] else ""]
                for r in rows
            ]))

    @app.command()
    @handles_errors
    def env(
        ref: Annotated[str, typer.Argument(help="deploy/NAME, statefulset/NAME or pod/NAME")],
        container: Annotated[str | None, typer.Option("--container", "-c")] = None,
        output: Annotated[Path | None, typer.Option("--output", "-o",
                                                    help="File to write (default: stdout).")]
            = None,
        fmt: Annotated[str, typer.Option("--format", help="dotenv, json or shell.")] = "dotenv",
        bridge: BridgeOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """The workload's environment as the kubelet builds it, Service addresses made local."""
        result = _client(no_start=True).post("env", {"ref": ref, "container": container,
                                                     "format": fmt, "bridge": bridge})
        for note in result["notes"]:
            typer.echo(f"note: {note}", err=True)
        if output is not None:
            # a file holding Secret values is readable by its owner only
            write_file(output, result["text"], 0o600 if result["secret"] else 0o644)
            if result["secret"]:
                typer.echo(f"note: {output} holds Secret values ({len(result['secret_names'])}"
                           " variables); it is readable by you only", err=True)
        if json_out:
            emit(result, True)
        elif output is None:
            typer.echo(result["text"], nl=False)
        else:
            typer.echo(f"wrote the environment of {ref} ({result['container']}) to {output}")

    @app.command()
    @handles_errors
    def files(
        ref: Annotated[str, typer.Argument(help="deploy/NAME, statefulset/NAME or pod/NAME")],
        output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write into.")],
        container: Annotated[str | None, typer.Option("--container", "-c")] = None,
        bridge: BridgeOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """The workload's ConfigMap, Secret and downward-API volumes, as local files."""
        result = _client(no_start=True).post("files", {
            "ref": ref, "container": container, "out_dir": str(output.resolve()),
            "bridge": bridge})
        for note in result["skipped"]:
            typer.echo(f"note: not written: {note}", err=True)
        emit(result, json_out, lambda r: typer.echo(
            f"wrote {len(r['files'])} files of {ref} under {output}"))

    @app.command()
    @handles_errors
    def clean(
        context: ContextOpt = None,
        namespace: NamespaceOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Remove everything bridged made in the namespace (works with a broken relay)."""
        result = _client().post("clean", {"context": context, "namespace": namespace,
                                          "kubeconfig": os.environ.get("KUBECONFIG")})
        emit(result, json_out, lambda r: typer.echo("\n".join([
            f"removed from {r['namespace']}: {', '.join(r['deleted']) or 'nothing to remove'}",
            *r.get("restored", [])])))

    @app.command()
    @handles_errors
    def traffic(
        follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep showing new ones.")]
            = False,
        headers: Annotated[bool, typer.Option(
            "--headers", help="Show each request's headers (secrets redacted).")] = False,
        har: Annotated[Path | None, typer.Option(
            "--har", help="Write the captured requests and answers to this file as HAR 1.2 "
            "(bodies included, secrets redacted).")] = None,
        clear: Annotated[bool, typer.Option(
            "--clear", help="Delete every captured request (what bridged inspect shows).")]
            = False,
        json_out: JsonOpt = False,
    ) -> None:
        """The requests the cluster sent to your intercepts (the last 1000 per bridge); gRPC
        calls as package.Service/Method with their grpc-status. With --har or --clear: the
        captured ones, with their bodies (see bridged inspect)."""
        import time as _time

        client = _client(no_start=True)
        if har is not None or clear:
            if follow or headers or (har is not None and clear):
                raise ConfigError("--har and --clear go alone")
            if har is not None:
                _write_har(client, har, json_out)
            else:
                _clear_capture(client, json_out)
            return
        since = 0.0
        while True:
            entries = client.get(f"traffic?since={since}")
            for e in entries:
                if json_out:  # one JSON object per line, as a stream for scripts
                    typer.echo(json.dumps(e, sort_keys=True))
                else:
                    typer.echo(traffic_line(e))
                    if headers and not e.get("note"):
                        for name, value in e.get("headers") or []:
                            typer.echo(f"    {name}: {value}")
                since = max(since, e["time"])
            if not follow:
                return
            _time.sleep(0.5)

    @app.command()
    @handles_errors
    def inspect(
        no_browser: Annotated[bool, typer.Option(
            "--no-browser", help="Print the URL only; do not open a browser.")] = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Open the web inspector: the captured requests live, their headers and bodies,
        replay to your local service, HAR export. It listens on 127.0.0.1 only, and its URL
        carries a secret token: do not share it."""
        result = _client().post("inspector")
        opened = False
        if not no_browser:
            import webbrowser

            try:
                opened = webbrowser.open(result["url"])
            except webbrowser.Error:
                opened = False
        emit({**result, "opened": opened}, json_out, lambda r: typer.echo(
            f"inspector: {r['url']}" + ("" if no_browser or opened else
                                        "  (no browser found: open it yourself)")))

    capture_app = typer.Typer(help="The captured requests (what bridged inspect shows).",
                              no_args_is_help=True)
    app.add_typer(capture_app, name="capture")

    @capture_app.command("clear")
    @handles_errors
    def capture_clear(json_out: JsonOpt = False) -> None:
        """Delete every captured request and answer."""
        _clear_capture(_client(no_start=True), json_out)

    @capture_app.command("har")
    @handles_errors
    def capture_har(
        output: Annotated[Path, typer.Argument(help="The HAR file to write.")],
        json_out: JsonOpt = False,
    ) -> None:
        """Write the captured requests and answers as HAR 1.2 (as traffic --har)."""
        _write_har(_client(no_start=True), output, json_out)

    @app.command()
    @handles_errors
    def doctor(context: ContextOpt = None, namespace: NamespaceOpt = None,
               json_out: JsonOpt = False) -> None:
        """Check the daemon, the bridges, kube access, RBAC rights, the relay and the clock.

        Without --context/--namespace: the connected kube bridge's (each, if several), else
        the kubeconfig's current ones."""
        client = _client()
        kubeconfig = os.environ.get("KUBECONFIG")
        targets: list[tuple[str | None, str | None]] = [(context, namespace)]
        if context is None and namespace is None:
            targets = _kube_bridge_targets(client) or targets
        found: list[dict[str, Any]] = []
        for ctx, ns in targets:
            answer = client.post("doctor", {"context": ctx, "namespace": ns,
                                            "kubeconfig": kubeconfig})
            if found:  # the daemon's own checks once; each further namespace's by name
                answer = [{**c, "name": f"{ctx}/{ns}: {c['name']}"} for c in answer
                          if c["name"] not in {f["name"] for f in found}]
            found += answer
        mark = {"ok": "✓", "warn": "!", "fail": "✗"}
        failed = [c for c in found if c["verdict"] == "fail"]

        def show(r: dict[str, Any]) -> None:
            table("doctor", ["", "check", "finding"],
                  [[mark[c["verdict"]], c["name"], c["detail"]] for c in r["checks"]])
            typer.echo(f"{len(failed)} problem(s): see ✗ above" if failed else "all good")

        emit({"checks": found, "ok": not failed}, json_out, show)
        if failed:
            raise typer.Exit(1)

    @app.command()
    @handles_errors
    def status(json_out: JsonOpt = False) -> None:
        """What is connected, exposed and intercepted, with counters."""
        emit(_client(no_start=True).get("status"), json_out, _print_status)


def _write_har(client: ControlClient, path: Path, json_out: bool) -> None:
    har = client.get("capture/har")
    # bodies may hold personal data: the file is its owner's only, as the database is
    write_file(path, json.dumps(har, indent=1) + "\n", 0o600)
    count = len(har["log"]["entries"])
    emit({"file": str(path), "entries": count}, json_out,
         lambda r: typer.echo(f"wrote {count} requests to {path} (HAR 1.2)"))


def _clear_capture(client: ControlClient, json_out: bool) -> None:
    result = client.delete("capture")
    emit(result, json_out, lambda r: typer.echo(f"cleared {r['cleared']} captured requests"))


def _kube_bridge_targets(client: ControlClient) -> list[tuple[str | None, str | None]]:
    """(context, namespace) of each kube bridge, from its relay ``kube://CONTEXT/NAMESPACE``:
    what doctor checks when not told, rather than the kubeconfig's current namespace."""
    targets: list[tuple[str | None, str | None]] = []
    for bridge in client.get("status")["bridges"]:
        relay = str(bridge.get("relay") or "")
        if relay.startswith("kube://") and "/" in relay[len("kube://"):]:
            ctx, ns = relay[len("kube://"):].rsplit("/", 1)
            if (ctx, ns) not in targets:
                targets.append((ctx, ns))
    return targets


def _only_bridge(client: ControlClient) -> str:
    bridges = client.get("status")["bridges"]
    if len(bridges) != 1:
        raise ConfigError(
            "not connected to any relay" if not bridges else
            f"several bridges are connected ({', '.join(b['name'] for b in bridges)}): name one"
        )
    return str(bridges[0]["name"])


def _print_status(s: dict[str, Any]) -> None:
    d = s["daemon"]
    typer.echo(f"daemon {d['version']} (pid {d['pid']}), key {d['client_key_fingerprint']}")
    restore = s.get("restore") or {}
    if restore.get("restoring"):
        typer.echo("restoring the saved bridges, forwards and intercepts…")
    for problem in restore.get("problems") or []:
        typer.echo(f"not restored: {problem}", err=True)
    if not s["bridges"]:
        typer.echo("not connected to any relay (bridged connect URL)")
        return
    table("bridges", ["name", "relay", "state", "connects", "session", "error"], [
        [b["name"], b["relay"], b["state"], b["connects"], b["session"], b["last_error"]]
        for b in s["bridges"]
    ])
    if s["forwards"]:
        table("forwards", ["name", "local", "remote", "active", "total", "failed", "sent",
                           "received", "last error"], [
            [f["name"], f"{f['local_host']}:{f['local_port']}",
             f"{f['remote_host']}:{f['remote_port']}", f["active"], f["connections"],
             f["failed"], human_bytes(f["bytes_sent"]), human_bytes(f["bytes_received"]),
             f["last_error"]]
            for f in s["forwards"]
        ])
    if s["intercepts"]:
        table("intercepts", ["name", "intercepts", "match", "via", "local", "state / lease",
                             "requests", "active", "total", "failed", "last error"], [
            [i["name"],
             f"{i['service']}:{i['service_port']}" if i.get("service")
             else f"relay port {i['remote_port']}",
             " and ".join(i["matchers"]) or ("every request" if i["mode"] == "http"
                                             else "every connection"),
             i.get("via") or "-", f"{i['local_host']}:{i['local_port']}" + (
                 f" ({i['protocol']})" if i.get("protocol", "http") != "http" else ""),
             f"{i['state']} ({i['lease_left_seconds']:.0f} s lease)"
             if i["state"] == "active" else i["state"],
             _requests(i), i["active"], i["connections"], i["failed"],
             i["error"] or i["last_error"]]
            for i in s["intercepts"]
        ])
        if any(i["state"] == "active" and i["mode"] == "http" and not i.get("requests")
               for i in s["intercepts"]):
            typer.echo("no request yet? Clients that connected before the intercept keep "
                       "their connections to the original pods until they reconnect")
        for i in s["intercepts"]:  # e.g. gRPC clients: their connections go to the pods
            for reason, n in (i.get("passed_through") or {}).items():
                typer.echo(f"{i['name']}: {reason} to the original pods: {n} (only "
                           "HTTP/1.x is routed per request)")


def _requests(i: dict[str, Any]) -> str:
    """How many requests reached this laptop, and how long ago the last did."""
    import time as _time

    if i.get("mode") != "http":
        return "-"  # a whole-port intercept counts connections (total)
    count, last = i.get("requests") or 0, i.get("last_request_at")
    shown = str(count)
    if last:
        ago = max(0.0, _time.time() - float(last))
        when = f"{ago:.0f} s" if ago < 120 else f"{ago / 60:.0f} min"
        shown = f"{count} (last {when} ago)"
    return shown
