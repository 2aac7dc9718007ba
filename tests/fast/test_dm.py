"""Tests of the device-mapper adapter on recorded dmsetup output, and of its stand-in.

The files in data/dm/ were recorded in the lab guest (Debian bookworm,
dmsetup 1.02.185, Linux 6.1) with ``LC_ALL=C``. They hold the table of a
linear device of cspd's over a thin LV, dmsetup's errors for a missing, a
busy and an existing device, and a ``dmsetup info -c`` listing of two cspd
devices, one suspended, beside LVM's own devices of volume group "cspd".
info_none.txt is the line dmsetup prints when no device exists at all.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cspd.command import CommandResult, CommandRunner
from cspd.dm import (
    DEVICE_PREFIX,
    UUID_PREFIX,
    DeviceMapper,
    DmError,
    LinearTable,
    parse_info,
    parse_table,
    validate_name,
)
from cspd.errors import CommandError
from tests.fakes.dm import FakeDeviceMapper

DATA = Path(__file__).parent / "data" / "dm"

NAME = "cspd-vol-0a1b2c"
LOWER = "/dev/cspd/vol-0a1b2c"


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def ok(stdout: str = "") -> CommandResult:
    return CommandResult(returncode=0, stdout=stdout, stderr="", duration=0.01)


def failed(stderr: str, returncode: int = 1) -> CommandResult:
    return CommandResult(returncode=returncode, stdout="", stderr=stderr, duration=0.01)


Step = tuple[tuple[str, ...], CommandResult | Exception]


class ScriptedRunner(CommandRunner):
    """Replays results in order; each step gives the start of the argv it expects."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps = list(steps)
        self.argvs: list[list[str]] = []
        self.timeouts: list[float] = []

    async def execute(
        self, argv: list[str], *, timeout: float, input: bytes | None
    ) -> CommandResult:
        self.argvs.append(argv)
        self.timeouts.append(timeout)
        if not self.steps:
            raise AssertionError(f"unexpected command {argv}")
        expected, outcome = self.steps.pop(0)
        assert tuple(argv[: len(expected)]) == expected, f"expected {expected}, got {argv}"
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def adapter(steps: list[Step]) -> tuple[DeviceMapper, ScriptedRunner]:
    runner = ScriptedRunner(steps)
    dm = DeviceMapper(runner, timeout=7.0)
    dm.busy_delay = 0.0
    return dm, runner


SIZE: Step = (("blockdev", "--getsz", LOWER), ok("131072\n"))
NUMBERS: Step = (("stat", "-L", "--format", "%t:%T", LOWER), ok("fd:4\n"))
EXPECTED_TABLE = "0 131072 linear 253:4 0"
MISSING = failed(recorded("table_missing.stderr"))


# -- parsing -------------------------------------------------------------------------


def test_parse_recorded_table() -> None:
    assert parse_table(recorded("table_linear.txt")) == LinearTable(131072, 253, 4)


@pytest.mark.parametrize(
    "text",
    ["", "0 2048 striped 2 128 8:0 0 8:16 0", "0 10 linear 8:0 0\n10 10 linear 8:16 0",
     "0 10 linear /dev/sda 0", "0 x linear 8:0 0", "0 10 thin 253:2 1"],
)
def test_other_tables_are_not_linear(text: str) -> None:
    assert parse_table(text) is None


def test_render_is_what_dmsetup_prints_back() -> None:
    table = LinearTable(131072, 253, 4)
    assert parse_table(table.render()) == table


def test_parse_recorded_info() -> None:
    devices = parse_info(recorded("info_mixed.txt"))
    names = {name: (uuid.split("-")[0], suspended) for name, uuid, suspended in devices}
    assert names["cspd-vol-0a1b2c"] == ("CSPD", True)
    assert names["cspd-vol-3d4e5f"] == ("CSPD", False)
    assert names["cspd-pool-tpool"] == ("LVM", False)
    assert names["cspd-vol--0a1b2c"] == ("LVM", False)
    assert all(len(device) == 3 for device in devices)


def test_parse_info_without_devices() -> None:
    assert parse_info(recorded("info_none.txt")) == []


def test_parse_info_rejects_unknown_lines() -> None:
    with pytest.raises(DmError, match="unexpected line"):
        parse_info("cspd-x|CSPD-cspd-x|Frozen\n")


@pytest.mark.parametrize("name", ["", "-x", "a/b", "a b", "x" * 128, "a|b"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(DmError, match="invalid device-mapper name"):
        validate_name(name)


# -- ensure_linear ---------------------------------------------------------------------


async def test_ensure_linear_creates_a_missing_device() -> None:
    dm, runner = adapter([
        SIZE, NUMBERS,
        (("dmsetup", "table", NAME), MISSING),
        (("dmsetup", "create", NAME), ok()),
        (("dmsetup", "table", NAME), ok(recorded("table_linear.txt"))),
    ])
    assert await dm.ensure_linear(NAME, LOWER) == f"/dev/mapper/{NAME}"
    create = runner.argvs[3]
    assert create == [
        "dmsetup", "create", NAME, "--uuid", UUID_PREFIX + NAME, "--table", EXPECTED_TABLE
    ]
    assert runner.timeouts == [7.0] * 5
    assert not runner.steps


async def test_ensure_linear_leaves_a_matching_device_alone() -> None:
    dm, runner = adapter([SIZE, NUMBERS, (("dmsetup", "table", NAME), ok(EXPECTED_TABLE + "\n"))])
    assert await dm.ensure_linear(NAME, LOWER) == f"/dev/mapper/{NAME}"
    assert [argv[1] for argv in runner.argvs] == ["--getsz", "-L", "table"]


async def test_ensure_linear_reloads_after_the_lower_device_grew() -> None:
    grown = "0 262144 linear 253:4 0"
    dm, runner = adapter([
        (("blockdev",), ok("262144\n")), NUMBERS,
        (("dmsetup", "table", NAME), ok(EXPECTED_TABLE)),
        (("dmsetup", "reload", NAME, "--table", grown), ok()),
        (("dmsetup", "resume", NAME), ok()),
        (("dmsetup", "table", NAME), ok(grown)),
    ])
    await dm.ensure_linear(NAME, LOWER)
    assert not runner.steps


async def test_ensure_linear_table_mismatch() -> None:
    dm, _ = adapter([
        SIZE, NUMBERS,
        (("dmsetup", "table", NAME), MISSING),
        (("dmsetup", "create", NAME), ok()),
        (("dmsetup", "table", NAME), ok("0 131072 linear 253:5 0")),
    ])
    with pytest.raises(DmError, match="253:5 0, not 0 131072 linear 253:4 0"):
        await dm.ensure_linear(NAME, LOWER)


async def test_ensure_linear_refuses_a_foreign_table() -> None:
    dm, _ = adapter([
        SIZE, NUMBERS, (("dmsetup", "table", NAME), ok("0 2048 striped 2 128 8:0 0 8:16 0")),
    ])
    with pytest.raises(DmError, match="table cspd did not make"):
        await dm.ensure_linear(NAME, LOWER)


async def test_ensure_linear_on_a_missing_lower_device() -> None:
    dm, _ = adapter([
        (("blockdev",), failed(recorded("blockdev_missing.stderr"))),
    ])
    with pytest.raises(DmError, match=f"mapping /dev/mapper/{NAME} onto {LOWER} failed: "
                       "blockdev: cannot open"):
        await dm.ensure_linear(NAME, LOWER)


async def test_ensure_linear_create_failure_names_the_reason() -> None:
    dm, _ = adapter([
        SIZE, NUMBERS, (("dmsetup", "table", NAME), MISSING),
        (("dmsetup", "create", NAME), failed(recorded("create_exists.stderr"))),
    ])
    with pytest.raises(DmError, match="Device or resource busy"):
        await dm.ensure_linear(NAME, LOWER)


@pytest.mark.parametrize("lower", ["", "sda", "/dev/a b", "/dev/x|y", "/tmp/x"])
async def test_ensure_linear_rejects_odd_lower_devices(lower: str) -> None:
    dm, runner = adapter([])
    with pytest.raises(DmError, match="invalid lower device"):
        await dm.ensure_linear(NAME, lower)
    assert runner.argvs == []


# -- remove ------------------------------------------------------------------------------


async def test_remove() -> None:
    dm, runner = adapter([(("dmsetup", "remove", NAME), ok())])
    await dm.remove(NAME)
    assert runner.argvs == [["dmsetup", "remove", NAME]]


async def test_remove_of_a_missing_device_is_fine() -> None:
    dm, _ = adapter([(("dmsetup", "remove", NAME), failed(recorded("remove_missing.stderr")))])
    await dm.remove(NAME)


async def test_remove_retries_while_busy() -> None:
    busy = failed(recorded("remove_busy.stderr"))
    dm, runner = adapter([
        (("dmsetup", "remove", NAME), busy),
        (("dmsetup", "remove", NAME), busy),
        (("dmsetup", "remove", NAME), ok()),
    ])
    await dm.remove(NAME)
    assert len(runner.argvs) == 3


async def test_remove_gives_up_when_it_stays_busy() -> None:
    busy = failed(recorded("remove_busy.stderr"))
    dm, runner = adapter([(("dmsetup", "remove", NAME), busy)] * 6)
    with pytest.raises(DmError, match="Device or resource busy"):
        await dm.remove(NAME)
    assert len(runner.argvs) == 6


async def test_remove_other_failure() -> None:
    dm, runner = adapter([(("dmsetup", "remove", NAME), failed("Permission denied\n"))])
    with pytest.raises(DmError, match=f"removing I/O device {NAME} failed: Permission denied"):
        await dm.remove(NAME)
    assert len(runner.argvs) == 1


# -- suspend and resume ----------------------------------------------------------------------


async def test_suspend_in_order() -> None:
    dm, runner = adapter([
        (("dmsetup", "suspend", "cspd-a"), ok()), (("dmsetup", "suspend", "cspd-b"), ok())
    ])
    await dm.suspend(["cspd-a", "cspd-b"])
    assert runner.argvs == [["dmsetup", "suspend", "cspd-a"], ["dmsetup", "suspend", "cspd-b"]]


async def test_suspend_of_nothing_runs_nothing() -> None:
    dm, runner = adapter([])
    await dm.suspend([])
    await dm.resume([])
    assert runner.argvs == []


async def test_failed_suspend_resumes_what_it_suspended() -> None:
    dm, runner = adapter([
        (("dmsetup", "suspend", "cspd-a"), ok()),
        (("dmsetup", "suspend", "cspd-b"), failed(recorded("suspend_missing.stderr"))),
        (("dmsetup", "resume", "cspd-a"), ok()),
    ])
    with pytest.raises(DmError, match=r"suspending I/O device cspd-b failed: .*No such device"):
        await dm.suspend(["cspd-a", "cspd-b", "cspd-c"])
    assert not runner.steps


async def test_timed_out_suspend_resumes_that_device_too() -> None:
    timed_out = CommandError(["dmsetup", "suspend", "cspd-b"], None, "", timed_out=True)
    dm, runner = adapter([
        (("dmsetup", "suspend", "cspd-a"), ok()),
        (("dmsetup", "suspend", "cspd-b"), timed_out),
        (("dmsetup", "resume", "cspd-a"), ok()),
        (("dmsetup", "resume", "cspd-b"), ok()),
    ])
    with pytest.raises(DmError, match="dmsetup suspend timed out after 7 s"):
        await dm.suspend(["cspd-a", "cspd-b"])
    assert not runner.steps


async def test_resume_tries_every_device_and_names_the_failures() -> None:
    refused = failed("device-mapper: resume ioctl on cspd-a  failed: Invalid argument\n"
                     "Command failed.\n")
    dm, runner = adapter([
        (("dmsetup", "resume", "cspd-a"), refused),
        (("dmsetup", "resume", "cspd-a"), refused),
        (("dmsetup", "resume", "cspd-a"), refused),
        (("dmsetup", "resume", "cspd-b"), ok()),
        (("dmsetup", "resume", "cspd-c"), failed(recorded("resume_missing.stderr"))),
    ])
    with pytest.raises(DmError, match="still suspended: cspd-a;"):
        await dm.resume(["cspd-a", "cspd-b", "cspd-c"])
    assert not runner.steps


async def test_resume_retry_succeeds() -> None:
    dm, _ = adapter([
        (("dmsetup", "resume", "cspd-a"), failed("Invalid argument\n")),
        (("dmsetup", "resume", "cspd-a"), ok()),
    ])
    await dm.resume(["cspd-a"])


async def test_suspend_rejects_a_string() -> None:
    dm, _ = adapter([])
    with pytest.raises(DmError, match="sequence of names"):
        await dm.suspend("cspd-a")


# -- start-up ------------------------------------------------------------------------


INFO_ARGV = ("dmsetup", "info", "-c", "--noheadings", "--separator", "|", "-o",
             "name,uuid,suspended")


async def test_list_suspended_takes_only_cspd_devices() -> None:
    dm, _ = adapter([(INFO_ARGV, ok(recorded("info_mixed.txt")))])
    assert await dm.list_suspended(DEVICE_PREFIX) == ["cspd-vol-0a1b2c"]


async def test_resume_all_suspended() -> None:
    dm, runner = adapter([
        (INFO_ARGV, ok(recorded("info_mixed.txt"))),
        (("dmsetup", "resume", "cspd-vol-0a1b2c"), ok()),
    ])
    assert await dm.resume_all_suspended() == ["cspd-vol-0a1b2c"]
    assert not runner.steps


async def test_resume_all_suspended_with_no_devices() -> None:
    dm, runner = adapter([(INFO_ARGV, ok(recorded("info_none.txt")))])
    assert await dm.resume_all_suspended() == []
    assert len(runner.argvs) == 1


async def test_dmsetup_missing() -> None:
    not_found = CommandError(["dmsetup"], None, "program not found in PATH")
    dm, _ = adapter([(("dmsetup",), not_found)])
    with pytest.raises(DmError, match="dmsetup could not be started"):
        await dm.list_suspended()


# -- the stand-in -----------------------------------------------------------------------


async def test_fake_follows_the_adapter() -> None:
    fake = FakeDeviceMapper(size_of=lambda lower: 100)
    path = await fake.ensure_linear("cspd-a", "/dev/cspd/a")
    assert path == "/dev/mapper/cspd-a"
    await fake.ensure_linear("cspd-b", "/dev/cspd/b")
    await fake.suspend(["cspd-a", "cspd-b"])
    assert fake.suspended == {"cspd-a", "cspd-b"}
    fake.add_foreign("cspd-pool-tpool", suspended=True)
    assert await fake.list_suspended() == ["cspd-a", "cspd-b"]
    assert await fake.resume_all_suspended() == ["cspd-a", "cspd-b"]
    assert fake.suspended == {"cspd-pool-tpool"}
    await fake.remove("cspd-a")
    await fake.remove("cspd-a")
    assert set(fake.devices) == {"cspd-b", "cspd-pool-tpool"}


async def test_fake_failures() -> None:
    fake = FakeDeviceMapper()
    for name in ("cspd-a", "cspd-b", "cspd-c"):
        await fake.ensure_linear(name, f"/dev/cspd/{name}")
    fake.fail_next("suspend", device="cspd-c")
    with pytest.raises(DmError):
        await fake.suspend(["cspd-a", "cspd-b", "cspd-c"])
    assert fake.suspended == set()
    await fake.suspend(["cspd-a", "cspd-b"])
    fake.fail_next("resume", device="cspd-a")
    with pytest.raises(DmError, match="still suspended: cspd-a"):
        await fake.resume(["cspd-a", "cspd-b"])
    assert fake.suspended == {"cspd-a"}
    fake.fail_next("ensure_linear")
    with pytest.raises(DmError):
        await fake.ensure_linear("cspd-d", "/dev/cspd/d")
    assert "cspd-d" not in fake.devices
    with pytest.raises(ValueError):
        fake.fail_next("dance")


async def test_fake_reload_ends_a_suspension() -> None:
    sizes = {"/dev/cspd/a": 100}
    fake = FakeDeviceMapper(size_of=lambda lower: sizes[lower])
    await fake.ensure_linear("cspd-a", "/dev/cspd/a")
    await fake.suspend(["cspd-a"])
    sizes["/dev/cspd/a"] = 200
    await asyncio.gather(fake.ensure_linear("cspd-a", "/dev/cspd/a"))
    assert fake.devices["cspd-a"].sectors == 200
    assert fake.suspended == set()
    assert fake.events_of("reload") == ["cspd-a"]
