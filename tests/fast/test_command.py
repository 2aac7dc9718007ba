"""Tests of CommandRunner against real programs (sh, cat, sleep, printf)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pytest
from plumbum import local

from cspd.command import CommandResult, CommandRunner
from cspd.errors import CommandError


@pytest.fixture
def runner() -> CommandRunner:
    return CommandRunner()


async def test_run_collects_output(runner: CommandRunner) -> None:
    result = await runner.run(["sh", "-c", "printf out; printf err >&2"], timeout=5)

    assert result.returncode == 0
    assert result.stdout == "out"
    assert result.stderr == "err"
    assert result.duration > 0


async def test_run_pins_c_locale(runner: CommandRunner) -> None:
    with local.env(LC_ALL="de_DE.UTF-8", LANG="de_DE.UTF-8"):
        result = await runner.run(["sh", "-c", 'printf %s "$LC_ALL"'], timeout=5)

    assert result.stdout == "C"


async def test_run_passes_arguments_without_shell(runner: CommandRunner) -> None:
    result = await runner.run(["printf", "%s", "a;b $HOME `id` *"], timeout=5)

    assert result.stdout == "a;b $HOME `id` *"


async def test_run_rejects_shell_string(runner: CommandRunner) -> None:
    with pytest.raises(TypeError):
        await runner.run("ls -l", timeout=5)


async def test_run_rejects_empty_argv(runner: CommandRunner) -> None:
    with pytest.raises(TypeError):
        await runner.run([], timeout=5)


async def test_nonzero_exit_raises(runner: CommandRunner) -> None:
    with pytest.raises(CommandError) as info:
        await runner.run(["sh", "-c", "echo first >&2; echo 'disk on fire' >&2; exit 3"], timeout=5)

    assert info.value.returncode == 3
    assert info.value.timed_out is False
    assert info.value.message == "sh failed with exit code 3: disk on fire"
    assert info.value.argv == ["sh", "-c", "echo first >&2; echo 'disk on fire' >&2; exit 3"]


async def test_nonzero_exit_without_check(runner: CommandRunner) -> None:
    result = await runner.run(["sh", "-c", "exit 3"], timeout=5, check=False)

    assert result.returncode == 3


async def test_timeout_kills_command(runner: CommandRunner) -> None:
    started = time.monotonic()
    with pytest.raises(CommandError) as info:
        await runner.run(["sleep", "30"], timeout=0.2)
    elapsed = time.monotonic() - started

    assert info.value.timed_out is True
    assert info.value.returncode is None
    assert "timed out" in info.value.message
    assert elapsed < 5


def _process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


async def test_timeout_kills_process_group(runner: CommandRunner, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = f"sleep 30 & echo $! > {pid_file}; wait"

    started = time.monotonic()
    with pytest.raises(CommandError):
        await runner.run(["sh", "-c", script], timeout=0.5)
    # The orphaned sleep would hold the output pipe open until it ends.
    elapsed = time.monotonic() - started
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 3
    while not _process_gone(child) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)

    assert elapsed < 5
    assert _process_gone(child)


async def test_input_goes_to_stdin(runner: CommandRunner) -> None:
    result = await runner.run(["cat"], timeout=5, input="line one\nline two\n")

    assert result.stdout == "line one\nline two\n"


async def test_stdin_closed_without_input(runner: CommandRunner) -> None:
    # cat would wait for input until the timeout if standard input stayed open.
    result = await runner.run(["cat"], timeout=5)

    assert result.stdout == ""


async def test_missing_program_raises(runner: CommandRunner) -> None:
    with pytest.raises(CommandError) as info:
        await runner.run(["cspd-no-such-program"], timeout=5)

    assert info.value.returncode is None
    assert info.value.timed_out is False
    assert "could not be started" in info.value.message


async def test_run_logs_argv_exit_code_and_stderr(
    runner: CommandRunner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="cspd.command")

    await runner.run(["sh", "-c", "echo warn >&2; exit 4"], timeout=5, check=False)

    records = [r for r in caplog.records if r.name == "cspd.command"]
    assert len(records) == 1
    assert records[0].levelno == logging.DEBUG
    assert vars(records[0])["argv"] == ["sh", "-c", "echo warn >&2; exit 4"]
    assert vars(records[0])["returncode"] == 4
    assert vars(records[0])["stderr"] == "warn\n"
    assert vars(records[0])["duration"] > 0


async def test_run_logs_timeout(runner: CommandRunner, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cspd.command")

    with pytest.raises(CommandError):
        await runner.run(["sleep", "30"], timeout=0.1)

    records = [r for r in caplog.records if r.name == "cspd.command"]
    assert len(records) == 1
    assert vars(records[0])["timed_out"] is True


async def test_run_never_logs_input(
    runner: CommandRunner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="cspd.command")

    await runner.run(["sh", "-c", "cat >/dev/null"], timeout=5, input="s3cret-chap")

    for record in caplog.records:
        assert "s3cret-chap" not in record.getMessage()
        assert "s3cret-chap" not in repr(vars(record))


async def test_cancelled_run_waits_for_command() -> None:
    runner = CommandRunner()
    task = asyncio.create_task(runner.run(["sleep", "0.5"], timeout=5))
    await asyncio.sleep(0.1)

    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert time.monotonic() - cancelled_at >= 0.3


class RecordedRunner(CommandRunner):
    """Returns one recorded result for every command."""

    def __init__(self, result: CommandResult) -> None:
        self.result = result
        self.argvs: list[list[str]] = []

    async def execute(
        self, argv: list[str], *, timeout: float, input: bytes | None
    ) -> CommandResult:
        self.argvs.append(argv)
        return self.result


async def test_execute_override_returns_recorded_output() -> None:
    recorded = CommandResult(returncode=0, stdout='{"report": []}', stderr="", duration=0.01)
    runner = RecordedRunner(recorded)

    result = await runner.run(["lvs", "--reportformat", "json"], timeout=5)

    assert result == recorded
    assert runner.argvs == [["lvs", "--reportformat", "json"]]


async def test_execute_override_still_checks_exit_code() -> None:
    recorded = CommandResult(
        returncode=5, stdout="", stderr='  Volume group "x" not found\n', duration=0.01
    )
    runner = RecordedRunner(recorded)

    with pytest.raises(CommandError) as info:
        await runner.run(["vgs", "x"], timeout=5)

    assert info.value.message == 'vgs failed with exit code 5: Volume group "x" not found'


def test_process_gone_sees_live_process() -> None:
    # Guards the helper above: a running process must not count as gone.
    assert not _process_gone(os.getpid())
