"""sd_notify(3) without libsystemd: READY=1, STOPPING=1 and the watchdog, over $NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

from flowforged import logs

log = logs.get("flowforged.systemd")


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ):
        address = environ.get("NOTIFY_SOCKET")
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        self.address = address
        usec = environ.get("WATCHDOG_USEC")
        pid = environ.get("WATCHDOG_PID")
        self.watchdog_interval = (
            int(usec) / 1e6 / 2 if usec and usec.isdigit() and (not pid or pid == str(os.getpid())) else None
        )

    def notify(self, message: str) -> None:
        if not self.address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            # Never block the event loop: a receiver whose queue is full would otherwise stop the daemon.
            sock.setblocking(False)
            try:
                sock.sendto(message.encode(), self.address)
            except OSError as exc:
                log.warning("sd_notify failed", error=str(exc))

    async def watchdog(self) -> None:
        """Ping from the event loop itself: if the loop is stuck, systemd restarts the daemon."""
        if self.watchdog_interval is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)
