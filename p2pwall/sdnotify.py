"""systemd's notification protocol, for ``Type=notify`` and the watchdog: one datagram to
``$NOTIFY_SOCKET`` per message (``READY=1`` once the rules are in, ``WATCHDOG=1`` from
the loop, ``STOPPING=1``).  Without ``$NOTIFY_SOCKET`` (not under systemd) nothing is sent.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ=os.environ):
        path = environ.get("NOTIFY_SOCKET", "")
        self.address = ("\0" + path[1:]) if path.startswith("@") else path
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        # ping at half the watchdog's period, as systemd asks
        self.watchdog = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self._sock = None

    def send(self, message: str) -> bool:
        if not self.address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self.address)
            return True
        except OSError:
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
