"""sd_notify: telling systemd (``Type=notify``) how the daemon is doing, without libsystemd.

The protocol is one datagram per message on the unix socket named by ``$NOTIFY_SOCKET`` (a
leading ``@`` names an abstract socket): ``READY=1`` once the control socket accepts,
``STATUS=…`` lines with what the daemon holds, ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` when
the unit sets ``WatchdogSec=``, ``STOPPING=1`` when it begins to shut down, ``RELOADING=1`` then
``READY=1`` around a reload. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        #: seconds between WATCHDOG=1 pings (half the unit's WatchdogSec), None without one
        self.watchdog_seconds = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and \
            (not pid or pid == str(os.getpid())) else None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:  # systemd gone or the socket wrong: never fatal
            log.debug("sd_notify %s failed: %s", fields, exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=leaving intercepts, closing forwards")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
