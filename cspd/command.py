"""The one place where cspd runs external programs.

Every command is started from an argument list, never through a shell. It
gets ``LC_ALL=C``, so its messages do not depend on the host's locale, a
timeout, and a closed standard input, so a program that prompts reads
end-of-file instead of waiting forever. The blocking part runs in a worker thread, off the
event loop. Each run is logged at debug level on the ``cspd.command`` logger
with its argv, exit code, duration and stderr. Standard input is never logged,
so a secret a program needs goes there and never into argv.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, cast

from plumbum import local
from plumbum.commands.processes import CommandNotFound

from cspd.errors import CommandError

logger = logging.getLogger("cspd.command")

# Added to plumbum's ``local.env``, which is a copy of the daemon's environment
# taken when plumbum is imported.
COMMAND_ENV = {"LC_ALL": "C"}


@dataclass(frozen=True)
class CommandResult:
    """Outcome of one finished command; duration is wall-clock seconds."""

    returncode: int
    stdout: str
    stderr: str
    duration: float


class CommandRunner:
    """Runs external commands; subclass and override ``execute`` to replay output.

    ``run`` validates the argument list, logs and applies ``check``. ``execute``
    only starts the program and collects its output, so a test double that
    returns recorded results still gets the logging and error handling of
    the real runner.
    """

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        check: bool = True,
        input: str | bytes | None = None,
    ) -> CommandResult:
        """Run ``argv`` and return its result.

        ``timeout`` is in seconds; a command still running then is killed with
        its whole process group. Raises CommandError when the program cannot
        be started, when it times out, and (with ``check``) when it exits
        non-zero.

        A cancelled caller waits for the command to end (at most ``timeout``)
        before the cancellation goes on, so that an asyncio lock held around
        the call still covers the program until it has finished.
        """
        args = [] if isinstance(argv, str | bytes) else list(argv)
        if not args or not all(isinstance(arg, str) for arg in args):
            raise TypeError(f"argv must be a non-empty list of strings, got {argv!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        data = input.encode() if isinstance(input, str) else input

        started = time.monotonic()
        try:
            result = await _finish_even_if_cancelled(
                self.execute(args, timeout=timeout, input=data)
            )
        except CommandError as err:
            logger.debug(
                "command %s did not complete after %.3f s: %s",
                args[0],
                time.monotonic() - started,
                err.message,
                extra={
                    "argv": args,
                    "returncode": err.returncode,
                    "timed_out": err.timed_out,
                    "stderr": err.stderr,
                },
            )
            raise

        logger.debug(
            "command %s exited with %d after %.3f s",
            args[0],
            result.returncode,
            result.duration,
            extra={
                "argv": args,
                "returncode": result.returncode,
                "duration": result.duration,
                "stderr": result.stderr,
            },
        )
        if check and result.returncode != 0:
            raise CommandError(args, result.returncode, result.stderr)
        return result

    async def execute(
        self, argv: list[str], *, timeout: float, input: bytes | None
    ) -> CommandResult:
        """Start ``argv`` and collect its output; the override point for tests.

        Returns the result whatever the exit code. Raises CommandError with
        ``returncode=None`` when the program cannot be started and with
        ``timed_out=True`` when it had to be killed.
        """
        return await asyncio.to_thread(_run_blocking, argv, timeout, input)


async def _finish_even_if_cancelled(coro: Coroutine[Any, Any, CommandResult]) -> CommandResult:
    """Await ``coro`` in a task that a cancellation of the caller does not stop."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                continue
        if not task.cancelled():
            # Retrieve the outcome so that asyncio does not report it as lost.
            task.exception()
        raise


def _run_blocking(argv: list[str], timeout: float, input: bytes | None) -> CommandResult:
    started = time.monotonic()
    try:
        command = local[argv[0]][argv[1:]].with_env(**COMMAND_ENV)
        # A new session makes the program the leader of its own process group,
        # so a timeout kills any helper it started as well, and a Ctrl-C sent
        # to the daemon's terminal does not interrupt an LVM change half-way.
        started_proc = command.popen(
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            new_session=True,
        )
    except CommandNotFound as err:
        raise CommandError(argv, None, "program not found in PATH") from err
    except OSError as err:
        raise CommandError(argv, None, f"{err.strerror or err}") from err
    # plumbum's local process object forwards every attribute to the
    # subprocess.Popen it wraps; its declared type lists fewer arguments.
    proc = cast("subprocess.Popen[bytes]", started_proc)

    try:
        stdout, stderr = proc.communicate(input=input or b"", timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        try:
            stdout, stderr = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            # A helper that left the process group keeps the pipes open, so
            # drop the rest of the output instead of waiting for it.
            proc.wait()
            stdout, stderr = b"", b""
        raise CommandError(
            argv, None, _decode(stderr) + f"\nkilled after {timeout:g} s", timed_out=True
        ) from None

    return CommandResult(
        returncode=proc.returncode,
        stdout=_decode(stdout),
        stderr=_decode(stderr),
        duration=time.monotonic() - started,
    )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", errors="replace")
