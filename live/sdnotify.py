"""systemd's notification protocol (``sd_notify``), without a library: a datagram to ``$NOTIFY_SOCKET``.

``pems live`` under ``deploy/pems.service`` (``Type=notify``, ``WatchdogSec=``) says ``READY=1`` once
the home is connected, ``WATCHDOG=1`` at every inner tick of the loop (once a minute by default) and
``STOPPING=1`` when it hands the home back. The pings come from the loop's own thread, between its
ticks: a loop hung in a solve or a socket stops pinging, and systemd kills and restarts it once
``WatchdogSec`` has passed (the loop's guard has already handed the home back at its deadline).
Without ``$NOTIFY_SOCKET`` (not under systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    """The service's channel to systemd (see the module notes)."""

    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        # an abstract socket is given with a leading '@' (a NUL byte on the wire)
        self.address = ("\0" + addr[1:]) if addr.startswith("@") else addr
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        ours = not pid or pid == str(os.getpid())
        #: systemd's watchdog interval [s], or None when it watches no one here
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and ours else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *fields: str) -> bool:
        """Send ``FIELD=value`` lines; True when they were sent (False: not under systemd, or refused)."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                # never blocks: a datagram socket whose reader is behind would hold the loop
                s.setblocking(False)
                s.connect(self.address)
                s.send("\n".join(fields).encode())
            return True
        except OSError:  # systemd gone, the socket refused or full: nothing the loop can or should do
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def alive(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")
