"""bridged: run one service of a Kubernetes application on your laptop, as if it ran in the cluster.

::

    laptop                                          cluster (one namespace)
    bridged CLI ──unix socket──► bridged daemon      relay pod (bridged relay)
                                 ├ forwards  ──┐      SSH server ── direct-tcpip ──► services
                                 └ intercepts ◄┼─SSH─ whole-port / HTTP router ◄── cluster traffic
                                               └ over a carrier (kube port-forward, ws, tcp)

How the package is laid out, from the inside out:

- :mod:`bridged.routing` and :mod:`bridged.protocol`: pure logic (who gets an intercepted port;
  the control messages between daemon and relay), no I/O;
- :mod:`bridged.config`, :mod:`bridged.errors`, :mod:`bridged.paths`: specs parsed into frozen
  dataclasses, our one error hierarchy, where files live;
- :mod:`bridged.splice`: one TCP connection spliced to one SSH channel, with back-pressure;
- :mod:`bridged.carriers`: byte streams the SSH connection runs over (tcp, websocket, kube);
- :mod:`bridged.relay`: the SSH server in the cluster;
- :mod:`bridged.daemon`: the laptop's long-running process (bridges, forwards, intercepts);
- :mod:`bridged.control`: the daemon's HTTP API on a unix socket, and its client;
- :mod:`bridged.cli`: typer commands, talking only to the control client;
- :mod:`bridged.demo`: the whole path on one machine.
"""

__version__ = "0.1.0"
