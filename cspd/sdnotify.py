"""The systemd readiness protocol (sd_notify), without a library."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("cspd.systemd")


def notify(state: str) -> bool:
    """Send ``state`` (for example ``READY=1``) to systemd; False when not run by systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        # Abstract namespace socket.
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(state.encode())
    except OSError as err:
        log.warning("notifying systemd failed: %s", err)
        return False
    return True
