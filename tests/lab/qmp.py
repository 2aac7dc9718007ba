"""A minimal client for the QEMU Machine Protocol (QMP) over a unix socket."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from .errors import LabError


class QmpError(LabError):
    """QEMU rejected a QMP command, or its socket could not be reached."""


def qmp_command(socket_path: Path, command: str, timeout: float = 10.0,
                **arguments: Any) -> Any:
    """Connect to QEMU's QMP socket, run ``command`` and return its ``return`` value.

    Raises QmpError when the socket cannot be reached or QEMU returns an error.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            stream = sock.makefile("rwb")
            _read_reply(stream)  # the greeting
            _send(stream, "qmp_capabilities", {})
            _read_reply(stream)
            _send(stream, command, arguments)
            return _read_reply(stream).get("return")
    except OSError as err:
        raise QmpError(f"QMP command {command} on {socket_path} failed: {err}") from err


def _send(stream: Any, command: str, arguments: dict[str, Any]) -> None:
    message: dict[str, Any] = {"execute": command}
    if arguments:
        message["arguments"] = arguments
    stream.write(json.dumps(message).encode() + b"\n")
    stream.flush()


def _read_reply(stream: Any) -> dict[str, Any]:
    """Read lines until a greeting, a return or an error; asynchronous events are skipped."""
    while True:
        line = stream.readline()
        if not line:
            raise QmpError("QEMU closed the QMP connection")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise QmpError(f"QEMU returned an error: {reply['error']}")
        if "QMP" in reply or "return" in reply:
            return reply
