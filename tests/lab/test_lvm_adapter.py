"""LvmAdapter on the guest's real thin pool: create, snapshot, clone, extend, remove.

The adapter runs inside the guest through a small script that uses the cspd
installed from the working tree, with the global filter limited to the pool
disk (/dev/vdb). Every LV it makes is named ``lvmtest-*``, so a cspd daemon
running in the same guest keeps its own volumes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

if not (Path(__file__).parent / "conftest.py").exists():
    pytest.skip(
        "the lab fixture is missing: tests/lab/conftest.py does not exist",
        allow_module_level=True,
    )

from tests.lab.lab import Lab

pytestmark = pytest.mark.lab

VG = "cspd"
MiB = 1024 * 1024
NAMES = ("lvmtest-clone", "lvmtest-snap", "lvmtest-vol")
WORK_DIR = "/var/tmp/cspd-lvm-test"
SCRIPT = f"{WORK_DIR}/adapter.py"
# Under TCG one lvcreate took up to 2 s; the script runs about ten changes.
SCRIPT_TIMEOUT = 300.0

GUEST_SCRIPT = '''
"""Drive cspd.lvm.LvmAdapter for the lab test; prints what it saw as JSON."""

import asyncio
import dataclasses
import json
import subprocess

from cspd.config import LvmConfig
from cspd.lvm import LvmAdapter

MiB = 1024 * 1024


def describe(lv):
    return None if lv is None else dataclasses.asdict(lv)


async def main():
    adapter = LvmAdapter(LvmConfig(volume_group="cspd", thin_pool="pool",
                                   pool_devices=["/dev/vdb"], command_timeout=120))
    report = {"usage": dataclasses.asdict(await adapter.check())}
    report["volume"] = describe(
        await adapter.create_thin("lvmtest-vol", 100 * MiB + 1, ["cspd-lab"]))
    subprocess.run(["dd", "if=/dev/urandom", "of=/dev/cspd/lvmtest-vol", "bs=1M",
                    "count=8", "oflag=direct", "status=none"], check=True)
    report["written"] = describe(await adapter.get_thin_lv("lvmtest-vol"))
    report["snapshot"] = describe(
        await adapter.create_snapshot("lvmtest-vol", "lvmtest-snap", ["cspd-lab"],
                                      writable=False))
    report["clone"] = describe(
        await adapter.create_snapshot("lvmtest-snap", "lvmtest-clone", ["cspd-lab"],
                                      writable=True))
    report["extended"] = describe(await adapter.extend("lvmtest-vol", 200 * MiB))
    await adapter.activate("lvmtest-snap")
    report["activated"] = describe(await adapter.get_thin_lv("lvmtest-snap"))
    report["listed"] = sorted(lv.name for lv in await adapter.list_thin_lvs()
                              if lv.name.startswith("lvmtest-"))
    for name in ("lvmtest-clone", "lvmtest-snap", "lvmtest-vol"):
        await adapter.remove(name)
    await adapter.remove("lvmtest-vol")
    report["after_remove"] = sorted(lv.name for lv in await adapter.list_thin_lvs()
                                    if lv.name.startswith("lvmtest-"))
    print(json.dumps(report))


asyncio.run(main())
'''


def cleanup(lab: Lab) -> None:
    for name in NAMES:
        lab.run(["lvremove", "-y", f"{VG}/{name}"], check=False, timeout=120)


def test_lvm_adapter_on_real_pool(lab: Lab) -> None:
    lab.install_cspd()
    lab.put_file(SCRIPT, GUEST_SCRIPT, 0o755)
    cleanup(lab)
    started = time.time()
    try:
        result = lab.run([lab.python, SCRIPT], timeout=SCRIPT_TIMEOUT)
    finally:
        cleanup(lab)
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["usage"]["extent_size"] == 4 * MiB
    assert report["usage"]["size"] > 0

    volume = report["volume"]
    assert volume["size"] == 104 * MiB
    assert volume["active"] is True
    assert volume["activation_skip"] is False
    assert volume["tags"] == ["cspd-lab"]
    assert volume["creation_time"] >= int(started) - 600

    assert report["written"]["data_percent"] > 0

    snapshot = report["snapshot"]
    assert snapshot["origin"] == "lvmtest-vol"
    assert snapshot["active"] is False
    assert snapshot["activation_skip"] is True

    clone = report["clone"]
    assert clone["origin"] == "lvmtest-snap"
    assert clone["active"] is True
    assert clone["activation_skip"] is False
    assert clone["data_percent"] > 0

    assert report["extended"]["size"] == 200 * MiB
    assert report["activated"]["active"] is True
    assert report["listed"] == ["lvmtest-clone", "lvmtest-snap", "lvmtest-vol"]
    assert report["after_remove"] == []
