"""The long-lived processes import only what they use: what a module imports stays in the
process's RSS for its whole life (issue 14; bench/idle_rss.py measures it).

Each case runs in a fresh interpreter what ``bridged relay`` / ``bridged daemon`` import before
they serve (the CLI of the server commands, then the modules their command imports) and lists
what is loaded that their idle process does not use.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: what neither a relay without Kubernetes access nor a daemon without a kube bridge uses; nor
#: the HTTP/2 stack (h2, hpack, hyperframe: ≈ 1.1 MiB), loaded by the first HTTP/2 connection
#: a relay routes or the first HTTP/2 intercept a daemon checks; nor what asyncssh's X.509 and
#: UMAC support would bring (cryptography.x509, pyOpenSSL where installed, libnettle: ≈ 1.4 MiB),
#: which bridged keeps out (``bridged/__init__.py``)
NOT_IDLE = ("kubernetes_asyncio", "yaml", "jsonschema", "bridged.project", "bridged.cli.commands",
            "bridged.kube.client", "bridged.kube.redirects", "bridged.inspector.server",
            "h2", "hpack", "hyperframe", "OpenSSL", "cryptography.x509", "asyncssh.crypto.x509",
            "asyncssh.crypto.umac")

CASES = {
    "relay": ("bridged.relay.server", "bridged.relay.policy", "bridged.keys", "bridged.runtime"),
    "daemon": ("bridged.daemon.app", "bridged.runtime"),
}
#: what the one but not the other leaves out. The relay keeps no capture; the daemon taps
#: connections only once an intercept carries one.
#: The daemon's control API is served without aiohttp (≈ 12 MiB with yarl, multidict and the
#: rest): only a websocket or kube carrier, a Kubernetes client or the inspector load it.
NOT_IDLE_IN = {
    "relay": ("bridged.capture.store", "sqlite3", "bridged.daemon"),
    "daemon": ("bridged.capture.tap", "bridged.capture.mirror", "bridged.capture.har",
               "bridged.daemon.proxy", "bridged.daemon.h2check",
               "bridged.relay.server", "sqlite3",  # (the capture store opens on first use)
               "aiohttp", "yarl", "multidict", "frozenlist", "aiosignal",
               "bridged.carriers.websocket", "bridged.carriers.kube"),
}

_PROBE = """
import json, sys
command, body = sys.argv[1], sys.argv[2:]
sys.argv = ["bridged", command, "--help"]
import bridged.cli
try:
    bridged.cli.main()  # what the command line loads before the command runs
except SystemExit:
    pass
for name in body:
    __import__(name)  # what the command's body imports
print(json.dumps(sorted(n for n, m in sys.modules.items() if m is not None)))  # (None: kept out)
"""


def loaded(command: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE, command, *CASES[command]], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("command", sorted(CASES))
def test_server_processes_do_not_import_what_they_do_not_use(command: str) -> None:
    modules = loaded(command)
    assert CASES[command][0] in modules  # (the probe did load the process's code)
    unwanted = NOT_IDLE + NOT_IDLE_IN[command]
    found = sorted(u for u in unwanted
                   if u in modules or any(m.startswith(u + ".") for m in modules))
    assert not found, f"bridged {command} imports {found} at start: import them where used"


#: what the relay in its pod (the key watch, redirects, host key: the Kubernetes API) does not
#: load: the full client's package loads every API and model (≈ 40 MiB); the relay's own
#: small one (bridged.kube.lite) does what it needs
NOT_IN_POD = ("kubernetes_asyncio", "bridged.inspector.server", "bridged.capture.store",
              "bridged.daemon", "bridged.cli.commands", "bridged.project", "h2", "hpack",
              "OpenSSL", "cryptography.x509")


async def test_the_relay_as_its_pod_runs_it_does_not_import_the_full_kube_client(
        tmp_path: Path) -> None:
    """``bridged relay`` with the Deployment's own arguments (host key from a Secret, the keys'
    Secret watched, ``--redirect-services``), against the stand-in API server: every module
    it imported, from the interpreter's own account (``-X importtime``), once it has read
    the keys through the API and undone what a previous relay left (its start-up)."""
    from tests.helpers import eventually
    from tests.kube.apiserver import KubeApiServer
    from tests.pod_relay import NS, start_pod_relay, stop

    async with KubeApiServer(namespaces=[NS]) as api:
        proc, _ = await start_pod_relay(api, tmp_path, {"PYTHONPROFILEIMPORTTIME": "1"})
        try:
            async def watching() -> bool:  # the keys listed, then watched
                return any(m == "GET" and "watch=true" in p for m, p in api.requests)

            await eventually(watching, within=30, what="the relay's watch of the keys")
        finally:
            await stop(proc)
    text = (tmp_path / "relay.log").read_text(errors="replace")
    modules = {line.rsplit("|", 1)[1].strip() for line in text.splitlines()
               if line.startswith("import time:") and line.count("|") == 2}
    assert {"bridged.kube.lite", "bridged.kube.keywatch", "bridged.kube.hostkey",
            "bridged.kube.redirects"} <= modules  # (it did use the API)
    found = sorted(u for u in NOT_IN_POD
                   if u in modules or any(m.startswith(u + ".") for m in modules))
    assert not found, f"the relay in its pod imports {found}"
