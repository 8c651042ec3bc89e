"""The in-cluster side: ``bridged relay``.

- :mod:`.server`: the SSH server. Outbound ``direct-tcpip`` channels go to cluster destinations
  under :mod:`.policy`; inbound traffic of intercepted ports goes out as ``forwarded-tcpip``
  channels to the session holding the intercept; the ``bridged-control`` subsystem registers
  intercepts and renews their leases (:mod:`bridged.protocol`, :mod:`bridged.routing.table`).
- :mod:`.auth`: public-key authentication against a key file or folder that may change.
- :mod:`.websocket`: the ``ws`` carrier's server end (and health probes), splicing a websocket
  straight into the SSH server in-process.
"""
