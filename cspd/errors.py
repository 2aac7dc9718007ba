"""Error types of cspd.

Adapters translate library and command failures into these types once, at
their boundary, and the API middleware maps each type to the CSP error body
and HTTP status. Handlers never build error JSON themselves.
"""

from __future__ import annotations


class CspError(Exception):
    """Base of every error that the API reports to a client."""

    status = 500
    code = "Internal Server Error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(CspError):
    status = 400
    code = "Bad Request"


class Unauthorized(CspError):
    """Missing, unknown or expired token, or a failed login (401, empty body)."""

    status = 401
    code = "Unauthorized"


class NotFound(CspError):
    status = 404
    code = "Not Found"


class Conflict(CspError):
    status = 409
    code = "Conflict"


class InsufficientSpace(Conflict):
    """The thin pool would pass its configured fill threshold.

    The message always contains ``insufficient storage space``, which the CSI
    driver turns into a "resource exhausted" status for Kubernetes.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(f"insufficient storage space: {detail}")


class BackendError(CspError):
    """A storage operation on the host failed (500 with a generic message)."""

    status = 500
    code = "Internal Server Error"


class CommandError(BackendError):
    """An external command failed, timed out or could not be started."""

    def __init__(
        self, argv: list[str], returncode: int | None, stderr: str, *, timed_out: bool = False
    ) -> None:
        if timed_out:
            what = "timed out"
        elif returncode is None:
            what = "could not be started"
        else:
            what = f"failed with exit code {returncode}"
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        super().__init__(f"{argv[0]} {what}" + (f": {detail}" if detail else ""))
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        self.timed_out = timed_out


class LvmError(BackendError):
    """An LVM operation failed or left the pool in an unexpected state."""


class LioError(BackendError):
    """A LIO (configfs) operation failed or left the target in an unexpected state."""


class StateError(BackendError):
    """The state store is unreadable, or disagrees with the storage it describes."""


class ConfigError(Exception):
    """The configuration file is invalid; the message names the key and the problem."""
