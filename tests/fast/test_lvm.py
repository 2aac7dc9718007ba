"""Tests of the LVM adapter on recorded lvm2 output, and of its in-memory stand-in.

The recorded reports in data/lvm/ have the layout lvm2 2.03 prints with
``--reportformat json --units b --nosuffix --binary``. They describe volume
group "cspd" with 4 MiB extents, thin pool "pool" (10 GiB), a second pool
"pool2" and a linear LV. Pool "pool" has thin volumes, an active and an
inactive snapshot of pvc-a, a clone (pvc-b) of the inactive one, and a
snapshot whose origin was removed. lvs_vg_captured.json and lvs_empty.json
are output of lvm2 2.03.16 (Debian bookworm) in the lab guest, with a 3 GiB
pool, a volume, an inactive and an active snapshot, a clone and a linear LV.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import json
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from plumbum import local

from cspd.command import CommandResult, CommandRunner
from cspd.config import LvmConfig
from cspd.errors import CommandError, ConfigError, LvmError
from cspd.lvm import LV_FIELDS, LvmAdapter, PoolUsage, ThinLv, build_lvm_config
from tests.fakes.lvm import FakeLvm, GiB, MiB

DATA = Path(__file__).parent / "data" / "lvm"
EXTENT = 4 * MiB


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def recorded_rows() -> list[dict[str, str]]:
    rows: list[dict[str, str]] = json.loads(recorded("lvs_vg.json"))["report"][0]["lv"]
    return rows


def lvs_output(rows: list[dict[str, str]]) -> str:
    return json.dumps({"report": [{"lv": rows}]})


def thin_row(name: str, size: int, **fields: str) -> dict[str, str]:
    """Return a row shaped like the recorded pvc-c row, with changed fields."""
    template = next(row for row in recorded_rows() if row["lv_name"] == "pvc-c")
    row = dict(template, lv_name=name, lv_size=str(size))
    row.update(fields)
    return row


def rows_with(*extra: dict[str, str], without: tuple[str, ...] = ()) -> str:
    rows = [row for row in recorded_rows() if row["lv_name"] not in without]
    return lvs_output(sorted([*rows, *extra], key=lambda row: row["lv_name"]))


def ok(stdout: str = "", stderr: str = "") -> CommandResult:
    return CommandResult(returncode=0, stdout=stdout, stderr=stderr, duration=0.01)


def failed(stderr: str, returncode: int = 5) -> CommandResult:
    return CommandResult(returncode=returncode, stdout="", stderr=stderr, duration=0.01)


class ScriptedRunner(CommandRunner):
    """Replays results in order; each step names the program it expects."""

    def __init__(self, steps: list[tuple[str, CommandResult | Exception]]) -> None:
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
        program, outcome = self.steps.pop(0)
        if argv[0] != program:
            raise AssertionError(f"expected {program}, got {argv}")
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def programs(self) -> list[str]:
        return [argv[0] for argv in self.argvs]


def adapter_with(
    steps: list[tuple[str, CommandResult | Exception]], **config: Any
) -> tuple[LvmAdapter, ScriptedRunner]:
    runner = ScriptedRunner(steps)
    return LvmAdapter(LvmConfig(**config), runner), runner


def option_value(argv: list[str], option: str) -> str:
    return argv[argv.index(option) + 1]


# Building commands


def test_config_string_without_devices() -> None:
    assert build_lvm_config([], epoch_time=False) == ""


def test_config_string_epoch_time() -> None:
    assert build_lvm_config([], epoch_time=True) == 'report { time_format = "%s" }'


def test_config_string_global_filter() -> None:
    config = build_lvm_config(["/dev/vdb"], epoch_time=False)

    assert config == 'devices { global_filter = [ "a|^/dev/vdb$|", "r|.*|" ] }'


def test_config_string_escapes_regex_characters() -> None:
    config = build_lvm_config(["/dev/disk/by-id/nvme-X.1+2", "/dev/vdc"], epoch_time=True)

    assert config == (
        'devices { global_filter = [ "a|^/dev/disk/by-id/nvme-X[.]1[+]2$|", '
        '"a|^/dev/vdc$|", "r|.*|" ] } report { time_format = "%s" }'
    )


@pytest.mark.parametrize("device", ['/dev/a"b', "/dev/a|b", "/dev/a b", "/dev/a\\b", "/dev/a$"])
def test_config_string_rejects_unsafe_device(device: str) -> None:
    with pytest.raises(ConfigError):
        build_lvm_config([device], epoch_time=False)


async def test_lvs_argv_asks_for_json_in_bytes() -> None:
    adapter, runner = adapter_with([("lvs", ok(recorded("lvs_vg.json")))])

    await adapter.list_thin_lvs()

    argv = runner.argvs[0]
    assert option_value(argv, "--reportformat") == "json"
    assert option_value(argv, "--units") == "b"
    assert "--nosuffix" in argv
    assert "--binary" in argv
    assert option_value(argv, "-o") == ",".join(LV_FIELDS)
    assert option_value(argv, "--config") == 'report { time_format = "%s" }'
    assert argv[-1] == "cspd"


async def test_every_command_carries_global_filter() -> None:
    created = thin_row("pvc-new", 100 * MiB)
    adapter, runner = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvcreate", ok()),
            ("lvs", ok(rows_with(created))),
        ],
        pool_devices=["/dev/vdb"],
    )

    await adapter.create_thin("pvc-new", 100 * MiB)

    assert len(runner.argvs) == 3
    for argv in runner.argvs:
        assert 'global_filter = [ "a|^/dev/vdb$|", "r|.*|" ]' in option_value(argv, "--config")


async def test_change_commands_have_no_config_without_devices() -> None:
    created = thin_row("pvc-new", 100 * MiB)
    adapter, runner = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvcreate", ok()),
            ("lvs", ok(rows_with(created))),
        ]
    )

    await adapter.create_thin("pvc-new", 100 * MiB)

    assert "--config" not in runner.argvs[1]


async def test_every_command_gets_configured_timeout() -> None:
    adapter, runner = adapter_with(
        [("vgs", ok(recorded("vgs.json"))), ("lvs", ok(recorded("lvs_vg.json")))],
        command_timeout=42.5,
        pool_devices=["/dev/vdb"],
    )

    await adapter.check()

    assert runner.timeouts == [42.5, 42.5]


def write_program(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


async def test_real_runner_sets_c_locale_for_lvs(tmp_path: Path) -> None:
    # A stand-in lvs on PATH checks the locale, records its arguments and
    # prints the recorded report, so the real CommandRunner runs end to end.
    args_file = tmp_path / "args"
    write_program(
        tmp_path,
        "lvs",
        f'[ "$LC_ALL" = C ] || {{ echo "LC_ALL is $LC_ALL" >&2; exit 9; }}\n'
        f'printf "%s\\n" "$@" > {args_file}\n'
        f"cat {DATA / 'lvs_vg.json'}\n",
    )
    adapter = LvmAdapter(LvmConfig(pool_devices=["/dev/vdb"]))

    with local.env(PATH=f"{tmp_path}:{local.env['PATH']}", LC_ALL="de_DE.UTF-8"):
        lvs = await adapter.list_thin_lvs()

    assert len(lvs) == 6
    assert args_file.read_text().splitlines()[:2] == [
        "--config",
        'devices { global_filter = [ "a|^/dev/vdb$|", "r|.*|" ] } report { time_format = "%s" }',
    ]


# Reading and parsing


async def test_list_keeps_only_thin_lvs_of_pool() -> None:
    adapter, _ = adapter_with([("lvs", ok(recorded("lvs_vg.json")))])

    lvs = await adapter.list_thin_lvs()

    assert [lv.name for lv in lvs] == ["pvc-a", "pvc-b", "pvc-c", "snap-a1", "snap-a2", "snap-gone"]


async def test_list_makes_one_lvs_call() -> None:
    adapter, runner = adapter_with([("lvs", ok(recorded("lvs_vg.json")))])

    await adapter.list_thin_lvs()

    assert runner.programs() == ["lvs"]


async def test_list_of_empty_volume_group() -> None:
    adapter, _ = adapter_with([("lvs", ok(recorded("lvs_empty.json")))])

    assert await adapter.list_thin_lvs() == []


async def test_list_of_captured_report() -> None:
    adapter, _ = adapter_with([("lvs", ok(recorded("lvs_vg_captured.json")))])

    lvs = {lv.name: lv for lv in await adapter.list_thin_lvs()}

    assert sorted(lvs) == ["cap-a", "cap-c", "cap-s1", "cap-s2"]
    assert lvs["cap-a"].used_bytes == 8 * MiB
    assert lvs["cap-c"].origin == "cap-s1"
    assert lvs["cap-c"].tags == ("cspd.clone", "cspd.volume")
    assert lvs["cap-s1"].active is False
    assert lvs["cap-s1"].data_percent == 0.0
    assert lvs["cap-s2"].activation_skip is True
    assert lvs["cap-s2"].active is True
    assert lvs["cap-a"].creation_time == 1796416765


async def test_check_of_captured_report() -> None:
    vgs = recorded("vgs.json")
    adapter, _ = adapter_with(
        [("vgs", ok(vgs)), ("lvs", ok(recorded("lvs_vg_captured.json"))),
         ("pvs", ok(recorded("pvs.json")))]
    )

    usage = await adapter.check()

    assert usage == PoolUsage(
        size=3 * GiB,
        data_percent=0.26,
        metadata_size=4 * MiB,
        metadata_percent=11.23,
        extent_size=EXTENT,
    )


async def test_parse_active_volume() -> None:
    adapter, _ = adapter_with([("lvs", ok(recorded("lvs_vg.json")))])

    lv = await adapter.get_thin_lv("pvc-a")

    assert lv == ThinLv(
        name="pvc-a",
        uuid="TeKdNn-FRIB-XuDL-7Dxt-pYlS-XpfK-tHF4vU",
        size=1 * GiB,
        data_percent=12.5,
        origin="",
        active=True,
        activation_skip=False,
        tags=("cspd.volume",),
        creation_time=1714032000,
    )


async def test_parse_inactive_snapshot() -> None:
    adapter, _ = adapter_with([("lvs", ok(recorded("lvs_vg.json")))])

    lv = await adapter.get_thin_lv("snap-a1")

    assert lv is not None
    assert lv.origin == "pvc-a"
    assert lv.active is False
    assert lv.activation_skip is True
    assert lv.data_percent == 0.0


async def test_parse_active_snapshot() -> None:
    adapter, _ = adapter_with([("lvs", ok(recorded("lvs_vg.json")))])

    lv = await adapter.get_thin_lv("snap-a2")

    assert lv is not None
    assert lv.active is True
    assert lv.activation_skip is True
    assert lv.data_percent == 12.5


async def test_parse_clone_with_two_tags() -> None:
    adapter, _ = adapter_with([("lvs", ok(recorded("lvs_vg.json")))])

    lv = await adapter.get_thin_lv("pvc-b")

    assert lv is not None
    assert lv.origin == "snap-a1"
    assert lv.tags == ("cspd.clone", "cspd.volume")
    assert lv.used_bytes == 128 * MiB


async def test_parse_snapshot_of_removed_origin() -> None:
    adapter, _ = adapter_with([("lvs", ok(recorded("lvs_vg.json")))])

    lv = await adapter.get_thin_lv("snap-gone")

    assert lv is not None
    assert lv.origin == ""


@pytest.mark.parametrize("name", ["scratch", "other", "pool", "missing"])
async def test_get_returns_none_for_non_pool_lv(name: str) -> None:
    adapter, _ = adapter_with([("lvs", ok(recorded("lvs_vg.json")))])

    assert await adapter.get_thin_lv(name) is None


def test_used_bytes_rounds() -> None:
    lv = ThinLv("v", "u", 100 * MiB, 33.33, "", True, False, (), 0)

    assert lv.used_bytes == round(100 * MiB * 0.3333)


async def test_invalid_json_raises() -> None:
    adapter, _ = adapter_with([("lvs", ok("  WARNING: not json\n"))])

    with pytest.raises(LvmError) as info:
        await adapter.list_thin_lvs()

    assert "not valid JSON" in info.value.message


async def test_non_numeric_time_raises() -> None:
    row = thin_row("pvc-d", 100 * MiB, lv_time="2024-04-25 10:00:00 +0000")
    adapter, _ = adapter_with([("lvs", ok(rows_with(row)))])

    with pytest.raises(LvmError) as info:
        await adapter.list_thin_lvs()

    assert "lv_time" in info.value.message


async def test_pool_usage_parses_pool() -> None:
    adapter, runner = adapter_with([("lvs", ok(recorded("lvs_pool.json")))])

    usage = await adapter.pool_usage()

    assert usage == PoolUsage(
        size=10 * GiB,
        data_percent=1.25,
        metadata_size=12 * MiB,
        metadata_percent=10.94,
        extent_size=EXTENT,
    )
    assert runner.argvs[0][-1] == "cspd/pool"


async def test_pool_usage_of_inactive_pool_raises() -> None:
    adapter, _ = adapter_with([("lvs", ok(recorded("lvs_pool_inactive.json")))])

    with pytest.raises(LvmError) as info:
        await adapter.pool_usage()

    assert "inactive" in info.value.message


def test_data_percent_after_adds_extra() -> None:
    usage = PoolUsage(
        size=10 * GiB, data_percent=1.25, metadata_size=0, metadata_percent=0.0, extent_size=EXTENT
    )

    assert usage.data_percent_after(1 * GiB) == pytest.approx(11.25)


def test_data_percent_after_can_pass_100() -> None:
    usage = PoolUsage(
        size=1 * GiB, data_percent=90.0, metadata_size=0, metadata_percent=0.0, extent_size=EXTENT
    )

    assert usage.data_percent_after(1 * GiB) == pytest.approx(190.0)


async def test_check_returns_pool_usage() -> None:
    adapter, _ = adapter_with(
        [("vgs", ok(recorded("vgs.json"))), ("lvs", ok(recorded("lvs_vg.json")))],
        pool_devices=["/dev/vdb"],
    )

    usage = await adapter.check()

    assert usage.size == 10 * GiB


async def test_check_limits_scan_to_volume_group_pvs() -> None:
    adapter, runner = adapter_with(
        [("vgs", ok(recorded("vgs.json"))), ("lvs", ok(recorded("lvs_vg.json"))),
         ("pvs", ok(recorded("pvs.json"))), ("lvs", ok(recorded("lvs_vg.json")))]
    )

    await adapter.check()
    await adapter.list_thin_lvs()

    assert adapter.pool_devices == ["/dev/vdb"]
    last = " ".join(runner.argvs[-1])
    assert "a|^/dev/vdb$|" in last
    assert "vdc" not in last


async def test_check_names_missing_volume_group() -> None:
    adapter, _ = adapter_with([("vgs", ok(recorded("vgs.json")))], volume_group="data")

    with pytest.raises(LvmError) as info:
        await adapter.check()

    assert info.value.message == "volume group 'data' not found"


async def test_check_names_missing_pool() -> None:
    adapter, _ = adapter_with(
        [("vgs", ok(recorded("vgs.json"))), ("lvs", ok(recorded("lvs_vg.json")))],
        thin_pool="tp",
    )

    with pytest.raises(LvmError) as info:
        await adapter.check()

    assert info.value.message == "thin pool 'tp' not found in volume group 'cspd'"


async def test_check_rejects_lv_that_is_not_pool() -> None:
    adapter, _ = adapter_with(
        [("vgs", ok(recorded("vgs.json"))), ("lvs", ok(recorded("lvs_vg.json")))],
        thin_pool="scratch",
    )

    with pytest.raises(LvmError) as info:
        await adapter.check()

    assert "not a thin pool" in info.value.message


# Creating thin LVs


async def test_create_thin_argv() -> None:
    created = thin_row("pvc-new", 100 * MiB, lv_tags="cspd.volume")
    adapter, runner = adapter_with(
        [("lvs", ok(recorded("lvs_vg.json"))), ("lvcreate", ok()), ("lvs", ok(rows_with(created)))]
    )

    await adapter.create_thin("pvc-new", 100 * MiB, ["cspd.volume"])

    assert runner.argvs[1] == [
        "lvcreate", "-V", "104857600b", "-T", "cspd/pool", "-n", "pvc-new",
        "--addtag", "cspd.volume",
    ]  # fmt: skip


async def test_create_thin_rounds_size_to_sectors() -> None:
    created = thin_row("pvc-new", 104 * MiB)
    adapter, runner = adapter_with(
        [("lvs", ok(recorded("lvs_vg.json"))), ("lvcreate", ok()), ("lvs", ok(rows_with(created)))]
    )

    await adapter.create_thin("pvc-new", 100 * MiB + 1)

    assert option_value(runner.argvs[1], "-V") == f"{100 * MiB + 512}b"


async def test_create_thin_returns_rounded_size() -> None:
    created = thin_row("pvc-new", 104 * MiB)
    adapter, _ = adapter_with(
        [("lvs", ok(recorded("lvs_vg.json"))), ("lvcreate", ok()), ("lvs", ok(rows_with(created)))]
    )

    lv = await adapter.create_thin("pvc-new", 100 * MiB + 1)

    assert lv.size == 104 * MiB


async def test_create_thin_rejects_taken_name() -> None:
    adapter, runner = adapter_with([("lvs", ok(recorded("lvs_vg.json")))])

    with pytest.raises(LvmError) as info:
        await adapter.create_thin("pvc-a", 100 * MiB)

    assert (
        info.value.message
        == "creating thin LV cspd/pvc-a failed: an LV named cspd/pvc-a already exists"
    )
    assert "lvcreate" not in runner.programs()


async def test_create_thin_translates_command_error() -> None:
    stderr = (
        "  WARNING: Sum of all thin volume sizes exceeds the size of thin pool.\n"
        "  Cannot create new thin volume, free space in thin pool cspd/pool reached threshold.\n"
    )
    adapter, runner = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvcreate", failed(stderr)),
            ("lvs", ok(recorded("lvs_vg.json"))),
        ]
    )

    with pytest.raises(LvmError) as info:
        await adapter.create_thin("pvc-new", 100 * MiB)

    assert info.value.message == (
        "creating thin LV cspd/pvc-new failed: Cannot create new thin volume, "
        "free space in thin pool cspd/pool reached threshold."
    )
    assert isinstance(info.value.__cause__, CommandError)
    assert "lvremove" not in runner.programs()


async def test_create_thin_removes_lv_left_by_failed_lvcreate() -> None:
    created = thin_row("pvc-new", 100 * MiB, lv_active_locally="0")
    adapter, runner = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvcreate", failed("  Failed to activate new LV cspd/pvc-new.\n")),
            ("lvs", ok(rows_with(created))),
            ("lvremove", ok()),
        ]
    )

    with pytest.raises(LvmError):
        await adapter.create_thin("pvc-new", 100 * MiB)

    assert runner.argvs[-1] == ["lvremove", "-y", "cspd/pvc-new"]


async def test_create_thin_timeout_message() -> None:
    adapter, _ = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvcreate", CommandError(["lvcreate"], None, "", timed_out=True)),
            ("lvs", ok(recorded("lvs_vg.json"))),
        ],
        command_timeout=30,
    )

    with pytest.raises(LvmError) as info:
        await adapter.create_thin("pvc-new", 100 * MiB)

    assert (
        info.value.message == "creating thin LV cspd/pvc-new failed: lvcreate timed out after 30 s"
    )


async def test_create_thin_too_small_is_removed() -> None:
    created = thin_row("pvc-new", 96 * MiB)
    adapter, runner = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvcreate", ok()),
            ("lvs", ok(rows_with(created))),
            ("lvremove", ok()),
        ]
    )

    with pytest.raises(LvmError) as info:
        await adapter.create_thin("pvc-new", 100 * MiB)

    assert "100663296 bytes" in info.value.message
    assert runner.argvs[-1] == ["lvremove", "-y", "cspd/pvc-new"]


async def test_create_thin_missing_after_create_raises() -> None:
    adapter, _ = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvcreate", ok()),
            ("lvs", ok(recorded("lvs_vg.json"))),
        ]
    )

    with pytest.raises(LvmError) as info:
        await adapter.create_thin("pvc-new", 100 * MiB)

    assert "not found afterwards" in info.value.message


@pytest.mark.parametrize("name", ["", "-rf", "a b", "a/b", "x" * 128])
async def test_create_thin_rejects_invalid_name(name: str) -> None:
    adapter, runner = adapter_with([])

    with pytest.raises(LvmError):
        await adapter.create_thin(name, 100 * MiB)

    assert runner.argvs == []


@pytest.mark.parametrize("size", [0, -1])
async def test_create_thin_rejects_invalid_size(size: int) -> None:
    adapter, runner = adapter_with([])

    with pytest.raises(LvmError):
        await adapter.create_thin("pvc-new", size)

    assert runner.argvs == []


@pytest.mark.parametrize("tags", [["a b"], ["-x"], ["a,b"], "cspd.volume"])
async def test_create_thin_rejects_invalid_tags(tags: list[str]) -> None:
    adapter, runner = adapter_with([])

    with pytest.raises(LvmError):
        await adapter.create_thin("pvc-new", 100 * MiB, tags)

    assert runner.argvs == []


# Snapshots and clones


async def test_snapshot_argv_and_no_activation() -> None:
    snap = thin_row(
        "snap-new",
        1 * GiB,
        origin="pvc-a",
        lv_active_locally="0",
        lv_skip_activation="1",
        data_percent="",
    )
    adapter, runner = adapter_with(
        [("lvs", ok(recorded("lvs_vg.json"))), ("lvcreate", ok()), ("lvs", ok(rows_with(snap)))]
    )

    lv = await adapter.create_snapshot("pvc-a", "snap-new", ["cspd.snapshot"], writable=False)

    assert runner.argvs[1] == [
        "lvcreate", "-s", "cspd/pvc-a", "-n", "snap-new",
        "--setactivationskip", "y", "--permission", "r", "--addtag", "cspd.snapshot",
    ]  # fmt: skip
    assert "lvchange" not in runner.programs()
    assert lv.active is False


async def test_snapshots_batch_checks_once() -> None:
    snaps = [
        thin_row(f"snap-{origin}", 1 * GiB, origin=origin, lv_active_locally="0",
                 lv_skip_activation="1", data_percent="")
        for origin in ("pvc-a", "pvc-c")
    ]
    adapter, runner = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvcreate", ok()),
            ("lvcreate", ok()),
            ("lvs", ok(rows_with(*snaps))),
        ]
    )

    lvs = await adapter.create_snapshots([("pvc-a", "snap-pvc-a"), ("pvc-c", "snap-pvc-c")])

    assert runner.programs() == ["lvs", "lvcreate", "lvcreate", "lvs"]
    assert [lv.origin for lv in lvs] == ["pvc-a", "pvc-c"]
    assert "--permission" in runner.argvs[2]


async def test_snapshots_batch_failure_removes_made() -> None:
    adapter, runner = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvcreate", ok()),
            ("lvcreate", failed("device busy")),
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvremove", ok()),
        ]
    )

    with pytest.raises(LvmError):
        await adapter.create_snapshots([("pvc-a", "snap-x"), ("pvc-c", "snap-y")])

    assert runner.argvs[-1] == ["lvremove", "-y", "cspd/snap-x"]


async def test_snapshots_batch_missing_origin_makes_nothing() -> None:
    adapter, runner = adapter_with([("lvs", ok(recorded("lvs_vg.json")))])

    with pytest.raises(LvmError):
        await adapter.create_snapshots([("pvc-a", "snap-x"), ("pvc-zz", "snap-y")])

    assert "lvcreate" not in runner.programs()


async def test_snapshot_missing_origin_raises() -> None:
    adapter, runner = adapter_with([("lvs", ok(recorded("lvs_vg.json")))])

    with pytest.raises(LvmError) as info:
        await adapter.create_snapshot("pvc-x", "snap-new", writable=False)

    assert "origin thin LV cspd/pvc-x not found" in info.value.message
    assert "lvcreate" not in runner.programs()


async def test_snapshot_without_skip_flag_is_removed() -> None:
    snap = thin_row("snap-new", 1 * GiB, origin="pvc-a", lv_skip_activation="0")
    adapter, runner = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvcreate", ok()),
            ("lvs", ok(rows_with(snap))),
            ("lvremove", ok()),
        ]
    )

    with pytest.raises(LvmError):
        await adapter.create_snapshot("pvc-a", "snap-new", writable=False)

    assert runner.argvs[-1] == ["lvremove", "-y", "cspd/snap-new"]


async def test_clone_clears_skip_flag_then_activates() -> None:
    clone = thin_row("pvc-new", 1 * GiB, origin="snap-a1", data_percent="12.50")
    adapter, runner = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvcreate", ok()),
            ("lvchange", ok()),
            ("lvchange", ok()),
            ("lvs", ok(rows_with(clone))),
        ]
    )

    lv = await adapter.create_snapshot("snap-a1", "pvc-new", ["cspd.volume"], writable=True)

    assert runner.argvs[1] == [
        "lvcreate",
        "-s",
        "cspd/snap-a1",
        "-n",
        "pvc-new",
        "--addtag",
        "cspd.volume",
    ]
    assert runner.argvs[2] == ["lvchange", "--setactivationskip", "n", "cspd/pvc-new"]
    assert runner.argvs[3] == ["lvchange", "-ay", "-K", "cspd/pvc-new"]
    assert lv.active is True
    assert lv.activation_skip is False


async def test_clone_failed_activation_removes_clone() -> None:
    adapter, runner = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvcreate", ok()),
            ("lvchange", ok()),
            (
                "lvchange",
                failed("  device-mapper: reload ioctl on (253:9) failed: No data available\n"),
            ),
            ("lvremove", ok()),
        ]
    )

    with pytest.raises(LvmError) as info:
        await adapter.create_snapshot("snap-a1", "pvc-new", writable=True)

    assert info.value.message == (
        "activating clone cspd/pvc-new failed: "
        "device-mapper: reload ioctl on (253:9) failed: No data available"
    )
    assert runner.programs() == ["lvs", "lvcreate", "lvchange", "lvchange", "lvremove"]
    assert runner.argvs[-1] == ["lvremove", "-y", "cspd/pvc-new"]


async def test_clone_rollback_failure_keeps_first_error() -> None:
    adapter, _ = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvcreate", ok()),
            ("lvchange", failed("  Failed to update metadata\n")),
            ("lvremove", failed("  Logical volume cspd/pvc-new in use.\n")),
        ]
    )

    with pytest.raises(LvmError) as info:
        await adapter.create_snapshot("snap-a1", "pvc-new", writable=True)

    assert info.value.message.startswith(
        "clearing the activation skip flag of clone cspd/pvc-new failed"
    )


async def test_clone_still_inactive_is_removed() -> None:
    clone = thin_row("pvc-new", 1 * GiB, origin="snap-a1", lv_active_locally="0", data_percent="")
    adapter, runner = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvcreate", ok()),
            ("lvchange", ok()),
            ("lvchange", ok()),
            ("lvs", ok(rows_with(clone))),
            ("lvremove", ok()),
        ]
    )

    with pytest.raises(LvmError) as info:
        await adapter.create_snapshot("snap-a1", "pvc-new", writable=True)

    assert "inactive" in info.value.message
    assert runner.programs()[-1] == "lvremove"


async def test_snapshot_with_wrong_origin_is_removed() -> None:
    snap = thin_row("snap-new", 1 * GiB, origin="pvc-c", lv_skip_activation="1")
    adapter, runner = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvcreate", ok()),
            ("lvs", ok(rows_with(snap))),
            ("lvremove", ok()),
        ]
    )

    with pytest.raises(LvmError) as info:
        await adapter.create_snapshot("pvc-a", "snap-new", writable=False)

    assert "origin 'pvc-c'" in info.value.message
    assert runner.programs()[-1] == "lvremove"


# Extending, activating, removing


async def test_extend_argv() -> None:
    grown = thin_row("pvc-a", 2 * GiB, data_percent="6.25")
    adapter, runner = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvextend", ok()),
            ("lvs", ok(rows_with(grown, without=("pvc-a",)))),
        ]
    )

    lv = await adapter.extend("pvc-a", 2 * GiB)

    assert runner.argvs[1] == ["lvextend", "-L", "2147483648b", "cspd/pvc-a"]
    assert lv.size == 2 * GiB


async def test_extend_rounds_size_to_sectors() -> None:
    grown = thin_row("pvc-a", 2 * GiB + EXTENT, data_percent="6.25")
    adapter, runner = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvextend", ok()),
            ("lvs", ok(rows_with(grown, without=("pvc-a",)))),
        ]
    )

    await adapter.extend("pvc-a", 2 * GiB + 7)

    assert option_value(runner.argvs[1], "-L") == f"{2 * GiB + 512}b"


async def test_extend_below_current_size_raises() -> None:
    adapter, runner = adapter_with([("lvs", ok(recorded("lvs_vg.json")))])

    with pytest.raises(LvmError) as info:
        await adapter.extend("pvc-a", 512 * MiB)

    assert "cannot shrink" in info.value.message
    assert "lvextend" not in runner.programs()


async def test_extend_to_current_size_changes_nothing() -> None:
    adapter, runner = adapter_with([("lvs", ok(recorded("lvs_vg.json")))])

    lv = await adapter.extend("pvc-c", 100 * MiB)

    assert lv.size == 100 * MiB
    assert runner.programs() == ["lvs"]


async def test_extend_missing_lv_raises() -> None:
    adapter, _ = adapter_with([("lvs", ok(recorded("lvs_vg.json")))])

    with pytest.raises(LvmError) as info:
        await adapter.extend("pvc-x", 2 * GiB)

    assert "thin LV cspd/pvc-x not found" in info.value.message


async def test_extend_still_small_raises() -> None:
    adapter, _ = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvextend", ok()),
            ("lvs", ok(recorded("lvs_vg.json"))),
        ]
    )

    with pytest.raises(LvmError) as info:
        await adapter.extend("pvc-a", 2 * GiB)

    assert "after lvextend" in info.value.message


async def test_activate_argv() -> None:
    active = thin_row("snap-a1", 1 * GiB, origin="pvc-a", lv_skip_activation="1")
    adapter, runner = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvchange", ok()),
            ("lvs", ok(rows_with(active, without=("snap-a1",)))),
        ]
    )

    await adapter.activate("snap-a1")

    assert runner.argvs[1] == ["lvchange", "-ay", "-K", "cspd/snap-a1"]


async def test_activate_still_inactive_raises() -> None:
    adapter, _ = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvchange", ok()),
            ("lvs", ok(recorded("lvs_vg.json"))),
        ]
    )

    with pytest.raises(LvmError) as info:
        await adapter.activate("snap-a1")

    assert "still inactive" in info.value.message


async def test_remove_argv() -> None:
    adapter, runner = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvremove", ok()),
            ("lvs", ok(rows_with(without=("pvc-c",)))),
        ]
    )

    await adapter.remove("pvc-c")

    assert runner.argvs[1] == ["lvremove", "-y", "cspd/pvc-c"]


async def test_remove_missing_lv_is_no_error() -> None:
    adapter, runner = adapter_with([("lvs", ok(recorded("lvs_vg.json")))])

    await adapter.remove("pvc-x")

    assert runner.programs() == ["lvs"]


async def test_remove_refuses_other_lv_kinds() -> None:
    adapter, runner = adapter_with([("lvs", ok(recorded("lvs_vg.json")))])

    with pytest.raises(LvmError) as info:
        await adapter.remove("scratch")

    assert "not a thin LV of pool 'pool'" in info.value.message
    assert "lvremove" not in runner.programs()


async def test_remove_lost_race_is_no_error() -> None:
    adapter, _ = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvremove", failed('  Failed to find logical volume "cspd/pvc-c"\n')),
            ("lvs", ok(rows_with(without=("pvc-c",)))),
        ]
    )

    await adapter.remove("pvc-c")


async def test_remove_failure_raises() -> None:
    adapter, _ = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvremove", failed("  Logical volume cspd/pvc-c in use.\n")),
            ("lvs", ok(recorded("lvs_vg.json"))),
        ]
    )

    with pytest.raises(LvmError) as info:
        await adapter.remove("pvc-c")

    assert (
        info.value.message
        == "removing thin LV cspd/pvc-c failed: Logical volume cspd/pvc-c in use."
    )


async def test_remove_still_present_raises() -> None:
    adapter, _ = adapter_with(
        [
            ("lvs", ok(recorded("lvs_vg.json"))),
            ("lvremove", ok()),
            ("lvs", ok(recorded("lvs_vg.json"))),
        ]
    )

    with pytest.raises(LvmError) as info:
        await adapter.remove("pvc-c")

    assert "still exists" in info.value.message


def test_device_path() -> None:
    adapter = LvmAdapter(LvmConfig(volume_group="data"), ScriptedRunner([]))

    assert adapter.device_path("pvc-a") == "/dev/data/pvc-a"


# Serialization


class SimulatedRunner(CommandRunner):
    """Serves lvs from a row list that lvcreate -V extends; tracks overlapping changes."""

    def __init__(self, hold: Callable[[], Awaitable[object]]) -> None:
        self.rows = recorded_rows()
        self.hold = hold
        self.changes_running = 0
        self.max_changes_running = 0
        self.lvcreate_started = asyncio.Event()

    async def execute(
        self, argv: list[str], *, timeout: float, input: bytes | None
    ) -> CommandResult:
        if argv[0] == "lvs":
            return ok(lvs_output(self.rows))
        if argv[0] != "lvcreate":
            raise AssertionError(f"unexpected command {argv}")
        self.changes_running += 1
        self.max_changes_running = max(self.max_changes_running, self.changes_running)
        self.lvcreate_started.set()
        try:
            await self.hold()
        finally:
            self.changes_running -= 1
        name = option_value(argv, "-n")
        size = int(option_value(argv, "-V").removesuffix("b"))
        self.rows.append(thin_row(name, size))
        return ok()


async def test_lock_serializes_changes() -> None:
    runner = SimulatedRunner(lambda: asyncio.sleep(0.05))
    adapter = LvmAdapter(LvmConfig(), runner)

    await asyncio.gather(*(adapter.create_thin(f"pvc-{i}", 100 * MiB) for i in range(3)))

    assert runner.max_changes_running == 1
    assert {"pvc-0", "pvc-1", "pvc-2"} <= {row["lv_name"] for row in runner.rows}


async def test_reads_run_during_change() -> None:
    release = asyncio.Event()
    runner = SimulatedRunner(release.wait)
    adapter = LvmAdapter(LvmConfig(), runner)
    create = asyncio.create_task(adapter.create_thin("pvc-new", 100 * MiB))
    await asyncio.wait_for(runner.lvcreate_started.wait(), 5)

    lvs = await asyncio.wait_for(adapter.list_thin_lvs(), 1)
    release.set()
    await create

    assert "pvc-new" not in [lv.name for lv in lvs]


# In-memory stand-in


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def test_fake_has_adapter_interface() -> None:
    adapter_methods = public_methods(LvmAdapter)
    fake_methods = public_methods(FakeLvm)

    for name, signature in adapter_methods.items():
        assert name in fake_methods
        assert str(fake_methods[name]) == str(signature), name


async def test_fake_rounds_to_extents() -> None:
    fake = FakeLvm()

    lv = await fake.create_thin("pvc-a", 100 * MiB + 1)

    assert lv.size == 104 * MiB


async def test_fake_rejects_duplicate() -> None:
    fake = FakeLvm()
    await fake.create_thin("pvc-a", 100 * MiB)

    with pytest.raises(LvmError):
        await fake.create_thin("pvc-a", 100 * MiB)


async def test_fake_snapshot_shares_chunks() -> None:
    fake = FakeLvm(pool_size=100 * MiB)
    await fake.create_thin("pvc-a", 100 * MiB)
    fake.write("pvc-a", 0, 10 * MiB)
    before = (await fake.pool_usage()).data_percent

    snapshot = await fake.create_snapshot("pvc-a", "snap-a", writable=False)
    after_snapshot = (await fake.pool_usage()).data_percent
    fake.write("pvc-a", 0, 10 * MiB)
    after_overwrite = (await fake.pool_usage()).data_percent

    assert snapshot.origin == "pvc-a"
    assert after_snapshot == before
    assert before == 10.0
    assert after_overwrite == 20.0


async def test_fake_reports_data_percent_of_active_lv() -> None:
    fake = FakeLvm()
    await fake.create_thin("pvc-a", 100 * MiB)
    fake.write("pvc-a", 0, 25 * MiB)

    lv = await fake.get_thin_lv("pvc-a")

    assert lv is not None
    assert lv.data_percent == 25.0


async def test_fake_snapshot_and_clone_activation() -> None:
    fake = FakeLvm()
    await fake.create_thin("pvc-a", 100 * MiB)

    snapshot = await fake.create_snapshot("pvc-a", "snap-a", writable=False)
    clone = await fake.create_snapshot("snap-a", "pvc-b", writable=True)
    fake.reboot()
    after_reboot = await fake.get_thin_lv("pvc-b")

    assert snapshot.active is False
    assert snapshot.activation_skip is True
    assert clone.active is True
    assert clone.activation_skip is False
    assert after_reboot is not None
    assert after_reboot.active is True


async def test_fake_snapshot_is_read_only() -> None:
    fake = FakeLvm()
    await fake.create_thin("pvc-a", 100 * MiB)
    await fake.create_snapshot("pvc-a", "snap-a", writable=False)
    await fake.activate("snap-a")

    with pytest.raises(OSError) as info:
        fake.write("snap-a", 0, 1)

    assert info.value.errno == errno.EROFS


async def test_fake_fail_next_changes_nothing() -> None:
    fake = FakeLvm()
    await fake.create_thin("pvc-a", 100 * MiB)
    fake.fail_next("create_snapshot")

    with pytest.raises(LvmError):
        await fake.create_snapshot("pvc-a", "snap-a", writable=False)
    names_after_failure = fake.names()
    await fake.create_snapshot("pvc-a", "snap-a", writable=False)

    assert names_after_failure == ["pvc-a"]
    assert fake.names() == ["pvc-a", "snap-a"]


async def test_fake_fail_next_custom_error() -> None:
    fake = FakeLvm()
    fake.fail_next("remove", LvmError("removing thin LV cspd/x failed: busy"))

    with pytest.raises(LvmError) as info:
        await fake.remove("x")

    assert info.value.message == "removing thin LV cspd/x failed: busy"


def test_fake_fail_next_unknown_method() -> None:
    with pytest.raises(ValueError):
        FakeLvm().fail_next("create_volume")


async def test_fake_remove_clears_origin() -> None:
    fake = FakeLvm()
    await fake.create_thin("pvc-a", 100 * MiB)
    await fake.create_snapshot("pvc-a", "snap-a", writable=False)

    await fake.remove("pvc-a")
    await fake.remove("pvc-a")
    snapshot = await fake.get_thin_lv("snap-a")

    assert snapshot is not None
    assert snapshot.origin == ""


async def test_fake_remove_frees_unshared_chunks() -> None:
    fake = FakeLvm(pool_size=1 * GiB)
    await fake.create_thin("pvc-a", 100 * MiB)
    fake.write("pvc-a", 0, 10 * MiB)

    await fake.remove("pvc-a")

    assert (await fake.pool_usage()).data_percent == 0.0


async def test_fake_pool_full() -> None:
    fake = FakeLvm(pool_size=8 * MiB)
    await fake.create_thin("pvc-a", 100 * MiB)

    with pytest.raises(OSError) as info:
        fake.write("pvc-a", 0, 9 * MiB)

    assert info.value.errno == errno.ENOSPC


async def test_fake_extend_rules() -> None:
    fake = FakeLvm()
    await fake.create_thin("pvc-a", 100 * MiB)

    grown = await fake.extend("pvc-a", 200 * MiB + 1)
    with pytest.raises(LvmError):
        await fake.extend("pvc-a", 100 * MiB)

    assert grown.size == 204 * MiB


async def test_fake_check_names_missing_pool() -> None:
    fake = FakeLvm()
    fake.pool_present = False

    with pytest.raises(LvmError) as info:
        await fake.check()

    assert info.value.message == "thin pool 'pool' not found in volume group 'cspd'"


async def test_fake_records_calls() -> None:
    fake = FakeLvm()

    await fake.create_thin("pvc-a", 100 * MiB, ["cspd.volume"])

    assert fake.calls == ["create_thin"]
    assert fake.call_args == [("create_thin", ("pvc-a", 100 * MiB, ("cspd.volume",)))]


async def test_fake_set_data_percent() -> None:
    fake = FakeLvm()
    await fake.create_thin("pvc-a", 1 * GiB)

    fake.set_data_percent("pvc-a", 25.0)
    raised = await fake.get_thin_lv("pvc-a")
    fake.set_data_percent("pvc-a", 10.0)
    lowered = await fake.get_thin_lv("pvc-a")

    assert raised is not None
    assert raised.used_bytes == GiB // 4
    assert lowered is not None
    assert lowered.data_percent == 10.0


async def test_fake_set_pool_usage() -> None:
    fake = FakeLvm(pool_size=100 * MiB)
    await fake.create_thin("pvc-a", 100 * MiB)

    fake.set_pool_usage(data_percent=91.0, metadata_percent=85.0)
    fake.write("pvc-a", 0, 1 * MiB)
    usage = await fake.pool_usage()

    assert usage.data_percent == 92.0
    assert usage.metadata_percent == 85.0
