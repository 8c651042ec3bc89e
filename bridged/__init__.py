"""bridged: run one service of a Kubernetes application on your laptop, as if it ran in the cluster.

::

    laptop                                          cluster (one namespace)
    bridged CLI ──unix socket──► bridged daemon      relay pod (bridged relay)
                                 ├ forwards  ──┐      SSH server ── direct-tcpip ──► services
                                 └ intercepts ◄┼─SSH─ whole-port / HTTP router ◄── cluster traffic
                                               └ over a carrier (kube port-forward, ws, tcp)

How the package is laid out, from the inside out:

- :mod:`bridged.routing` and :mod:`bridged.protocol`: pure logic (who holds an intercepted port,
  which intercept a request goes to; the control messages between daemon and relay), no I/O;
- :mod:`bridged.redirect`: pure too — the objects each redirect strategy writes (Service
  takeover and its exact undo, Gateway API HTTPRoute, CiliumEnvoyConfig);
- :mod:`bridged.workload`: pure too — a workload's environment as the kubelet builds it
  (env, envFrom, valueFrom, the downward API, ``$(VAR)``), its Service addresses rewritten to
  the laptop's forwards, and the output formats;
- :mod:`bridged.project`: bridged.yaml found, read and checked against its shipped schema;
- :mod:`bridged.config`, :mod:`bridged.errors`, :mod:`bridged.paths`, :mod:`bridged.keys`:
  specs parsed into frozen dataclasses, our one error hierarchy, where files live, SSH keys
  and host-key pins;
- :mod:`bridged.splice`: one TCP connection spliced to one SSH channel, with back-pressure;
- :mod:`bridged.carriers`: byte streams the SSH connection runs over (tcp, websocket, kube);
- :mod:`bridged.relay`: the SSH server in the cluster, its HTTP router
  (:mod:`bridged.relay.router`: routes HTTP/1.x per request and HTTP/2 — gRPC — per stream,
  passes anything else through untouched, bounds each client, copies to mirrors) and the
  redirector that keeps Services pointed at it while intercepts hold live leases, and
  answers only once they are live;
- :mod:`bridged.kube`: the only code talking to the Kubernetes API (relay deployment, port-
  forward, Services and their redirects, reading a workload for its env and files, doctor's
  checks);
- :mod:`bridged.daemon`: the laptop's long-running process (bridges, forwards, intercepts; the
  saved desired state; sd_notify; bridged.yaml's up and down; the SOCKS5/HTTP proxies to
  cluster names, whose pure name rules are :mod:`bridged.workload.names`; hosts mode);
- :mod:`bridged.capture`: what reached the developer, recorded on the laptop (passive taps on
  the intercepts' connections, redaction, a bounded SQLite store, HAR, mirror pairing);
  :mod:`bridged.inspector`: the web inspector the daemon serves on 127.0.0.1 (live list,
  detail, replay, HAR);
- :mod:`bridged.control`: the daemon's HTTP API on a unix socket, and its client;
- :mod:`bridged.cli`: typer commands, talking only to the control client;
- :mod:`bridged.runtime`, :mod:`bridged.sshtune`, :mod:`bridged.tasks`: process set-up
  (uvloop, malloc, logging), two measured asyncssh speed-ups, owned long-lived tasks;
  :mod:`bridged.fsutil`, :mod:`bridged.jsonc`: atomic private files, JSON with comments;
- :mod:`bridged.localrun`, :mod:`bridged.demo`: real relay and daemon processes on this
  machine, and the demo built on them.
"""

import sys as _sys

__version__ = "0.1.0"

# Two optional parts of asyncssh are kept out of every bridged process, before anything imports
# asyncssh: X.509 certificates (they bring pyOpenSSL and cryptography.x509 with them) and the
# UMAC MACs (libnettle, loaded through ctypes). bridged pins plain host keys and negotiates AEAD
# ciphers only, which carry no MAC, so neither is ever used; asyncssh reads a missing one as
# "not available". Idle daemon and relay: 1.4 MiB less each (issue 14).
for _optional in ("asyncssh.crypto.x509", "asyncssh.crypto.umac"):
    _sys.modules.setdefault(_optional, None)  # type: ignore[arg-type]
