"""The lab fixture itself: running commands, the pool, reboots."""

from __future__ import annotations

import json

import pytest

from .errors import GuestCommandError
from .lab import Lab
from .storage import THIN_POOL, VOLUME_GROUP, thin_lv

pytestmark = pytest.mark.lab

GIB = 1024**3


def test_run_returns_status_and_output(lab: Lab) -> None:
    result = lab.run("echo out; echo err >&2; exit 3", check=False)
    assert result.returncode == 3
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"


def test_run_raises_on_failure_when_checked(lab: Lab) -> None:
    with pytest.raises(GuestCommandError) as caught:
        lab.run("echo broken >&2; exit 7")
    assert caught.value.returncode == 7
    assert "broken" in str(caught.value)


def test_run_quotes_argument_lists(lab: Lab) -> None:
    assert lab.run(["printf", "%s|", "two words", "$HOME", "a;b"]).stdout == "two words|$HOME|a;b|"


def test_run_passes_input(lab: Lab) -> None:
    assert lab.run("tr a-z A-Z", input="secret\n").stdout == "SECRET\n"


def test_initiator_name_is_an_iqn(lab: Lab) -> None:
    assert lab.initiator_name.startswith("iqn.")


def test_thin_pool_on_second_disk(lab: Lab) -> None:
    report = json.loads(lab.run(
        ["lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
         "-o", "lv_name,lv_size,segtype,devices", f"{VOLUME_GROUP}/{THIN_POOL}"]
    ).stdout)
    pool = report["report"][0]["lv"][0]
    assert pool["segtype"] == "thin-pool"
    assert 2 * GIB < int(pool["lv_size"]) <= 4 * GIB
    physical = lab.run(["pvs", "--noheadings", "-o", "pv_name,vg_name"]).stdout.split()
    assert physical == ["/dev/vdb", VOLUME_GROUP]


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_reboot_keeps_pool_data(lab: Lab, hard: bool) -> None:
    initiator = lab.initiator_name
    with thin_lv(lab, "16M") as device:
        # Synchronous direct I/O: the data is on the pool disk before the reset.
        lab.run(f"printf 'kept across reboot' | dd of={device} oflag=direct,sync "
                "bs=512 conv=sync status=none")
        lab.reboot(hard=hard)
        lab.run(["lvchange", "--activate", "y", device.removeprefix("/dev/")])
        marker = lab.run(f"dd if={device} bs=512 count=1 iflag=direct status=none "
                         "| tr -d '\\0'").stdout
        assert marker == "kept across reboot"
    assert lab.run("cat /etc/iscsi/initiatorname.iscsi").stdout.strip().endswith(initiator)
    assert lab.run("systemctl is-active cspd-lab-pool.service").stdout.strip() == "active"
