"""The guest's kernel storage stack end to end, without cspd.

A thin LV exported by LIO is reached by the guest's own open-iscsi and
multipath, and by libiscsi on the host through the forwarded iSCSI port.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from .lab import Lab
from .storage import (
    TEST_IQN_PREFIX,
    VOLUME_GROUP,
    iscsi_session,
    lio_export,
    thin_lv,
    unique_name,
    wait_until,
)

pytestmark = pytest.mark.lab

DATA_MIB = 8


def _guest_sha256(lab: Lab, path: str) -> str:
    return lab.run(["sha256sum", path]).stdout.split()[0]


def _lv_report(lab: Lab, device: str) -> dict[str, str]:
    output = lab.run(["lvs", "--reportformat", "json", "-o", "lv_name,data_percent,lv_attr",
                      device.removeprefix("/dev/")]).stdout
    report: dict[str, str] = json.loads(output)["report"][0]["lv"][0]
    return report


def test_thin_lv_over_iscsi_and_multipath(lab: Lab) -> None:
    name = unique_name()
    with (
        thin_lv(lab, "64M", name=name) as device,
        lio_export(lab, device, ["127.0.0.1"], [lab.initiator_name], name=name) as export,
    ):
        assert export.unit_serial, "LIO gave the backstore no unit serial"

        with iscsi_session(lab, export.target) as disk:
            # VPD page 0x80 carries the unit serial as LIO reports it.
            vpd80 = lab.run(["sg_inq", "--page=0x80", disk]).stdout
            assert export.unit_serial in vpd80

            mapper = f"/dev/mapper/{export.wwid}"
            # multipathd makes the map on the disk's uevent; "multipath" is the fallback.
            wait_until(lab, f"test -b {mapper} || {{ multipath -v0 >/dev/null 2>&1; false; }}",
                       60, f"no multipath map {export.wwid}")
            maps = lab.run("multipathd show maps raw format '%w'").stdout.split()
            assert export.wwid in maps
            dm_uuid = lab.run(["dmsetup", "info", "-c", "--noheadings", "-o", "uuid",
                               export.wwid]).stdout.strip()
            assert dm_uuid == f"mpath-{export.wwid}"

            # Write random data through the map with O_DIRECT, read it back the same way.
            lab.run(f"dd if=/dev/urandom of=/tmp/{name}.in bs=1M count={DATA_MIB} "
                    "status=none")
            lab.run(f"dd if=/tmp/{name}.in of={mapper} bs=1M oflag=direct status=none")
            lab.run(f"dd if={mapper} of=/tmp/{name}.out bs=1M count={DATA_MIB} "
                    "iflag=direct status=none")
            written = _guest_sha256(lab, f"/tmp/{name}.in")
            read_back = _guest_sha256(lab, f"/tmp/{name}.out")
            lab.run(f"rm -f /tmp/{name}.in /tmp/{name}.out")
            assert read_back == written

            # The data landed in the thin LV: 8 of 64 MiB allocated.
            assert float(_lv_report(lab, device)["data_percent"]) >= 12.5

        sessions = lab.run("iscsiadm -m session", check=False).stdout
        assert export.target not in sessions
        assert lab.run(["dmsetup", "info", export.wwid], check=False).returncode != 0

    # Everything the test made is gone.
    targets = lab.run("ls /sys/kernel/config/target/iscsi").stdout.split()
    assert export.target not in targets
    backstores = lab.run("ls /sys/kernel/config/target/core/*/ 2>/dev/null || true").stdout
    assert name not in backstores.split()
    assert lab.run(["lvs", f"{VOLUME_GROUP}/{name}"], check=False).returncode != 0


def _host_initiator(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_host_initiator_acl_over_forwarded_port(lab: Lab) -> None:
    if shutil.which("iscsi-inq") is None:
        reason = "iscsi-inq (Debian package libiscsi-bin) is not installed on the host"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)

    allowed = f"{TEST_IQN_PREFIX}:host-allowed-{unique_name('initiator')}"
    refused = f"{TEST_IQN_PREFIX}:host-refused-{unique_name('initiator')}"
    # Forwarded connections arrive at the guest's own address, not loopback.
    with (
        thin_lv(lab, "64M") as device,
        lio_export(lab, device, [lab.guest_address], [allowed]) as export,
    ):
        url = f"iscsi://{lab.host}:{lab.iscsi_port}/{export.target}/0"

        denied = _host_initiator("iscsi-inq", "-i", refused, url)
        assert denied.returncode != 0
        assert "Authorization failure" in denied.stdout + denied.stderr
        kernel_log = lab.run("journalctl -k -b --no-pager --lines=50").stdout
        assert f"{refused} is not authorized" in kernel_log

        inquiry = _host_initiator("iscsi-inq", "-i", allowed, url)
        assert inquiry.returncode == 0, inquiry.stderr
        assert "Vendor:LIO-ORG" in inquiry.stdout

        capacity = _host_initiator("iscsi-readcapacity16", "-i", allowed, url)
        assert capacity.returncode == 0, capacity.stderr
        assert f"Total size:{64 * 1024 * 1024}" in capacity.stdout

