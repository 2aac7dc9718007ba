"""Host-side plumbing: the cache folder, a lock, free ports and running host commands."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from .errors import LabError, LabUnavailableError, tail

log = logging.getLogger("tests.lab")

# The checkout this package lives in: tests/lab/host.py -> the repository root.
REPO_ROOT = Path(__file__).resolve().parents[2]

CACHE_ENV = "CSPD_LAB_CACHE"


def cache_root() -> Path:
    """Return the lab cache folder: $CSPD_LAB_CACHE, else ~/.cache/cspd-lab."""
    configured = os.environ.get(CACHE_ENV)
    root = Path(configured) if configured else Path.home() / ".cache" / "cspd-lab"
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def free_loopback_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports that were free on 127.0.0.1 a moment ago.

    The sockets are held open until all ports are picked, so the ports differ;
    another program may still take one before QEMU binds it.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for_tcp(port: int, timeout: float) -> bool:
    """Return True once 127.0.0.1:``port`` accepts a TCP connection, False at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


def require_tools(*names: str) -> None:
    """Raise LabUnavailableError naming the host programs that are not on PATH."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        raise LabUnavailableError(
            f"missing host programs: {', '.join(missing)}; install the Debian packages "
            "qemu-system-x86 qemu-utils debootstrap e2fsprogs openssh-client"
        )


def run_host(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a host command, raising LabError with its output on failure or time-out."""
    args = [os.fspath(arg) for arg in argv]
    started = time.monotonic()
    log.debug("running %s", shlex.join(args))
    try:
        result = subprocess.run(
            args,
            input=input,
            capture_output=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise LabError(
            f"{shlex.join(args)} timed out after {timeout:.0f} s\n{tail(err.stderr)}"
        ) from err
    except FileNotFoundError as err:
        raise LabUnavailableError(f"{args[0]} is not installed: {err}") from err
    log.debug(
        "%s exited with %d after %.1f s", args[0], result.returncode, time.monotonic() - started
    )
    if result.returncode != 0:
        raise LabError(
            f"{shlex.join(args)} exited with status {result.returncode}\n"
            f"{tail(result.stderr) or tail(result.stdout)}"
        )
    return result
