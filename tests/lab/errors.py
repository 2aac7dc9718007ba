"""Errors raised by the lab tooling."""

from __future__ import annotations

import subprocess

# How much of a command's output an error message quotes.
OUTPUT_TAIL_CHARS = 4000


def tail(text: str | bytes | None, limit: int = OUTPUT_TAIL_CHARS) -> str:
    """Return the last ``limit`` characters of a command's output, decoded."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = text.strip()
    if len(text) > limit:
        return "..." + text[-limit:]
    return text


class LabError(Exception):
    """A lab operation failed: building the image, booting or driving the guest."""


class LabUnavailableError(LabError):
    """The guest cannot be built or booted on this host (missing tools, no root, a failed boot)."""


class GuestCommandError(LabError, subprocess.CalledProcessError):
    """A command run in the guest exited with a non-zero status.

    Carries ``cmd``, ``returncode``, ``stdout`` and ``stderr`` like
    subprocess.CalledProcessError, and quotes the output in its message.
    """

    def __str__(self) -> str:
        parts = [f"guest command {self.cmd!r} exited with status {self.returncode}"]
        if self.stdout:
            parts.append(f"stdout:\n{tail(self.stdout)}")
        if self.stderr:
            parts.append(f"stderr:\n{tail(self.stderr)}")
        return "\n".join(parts)


class GuestTimeoutError(LabError):
    """A command run in the guest did not finish in time."""
