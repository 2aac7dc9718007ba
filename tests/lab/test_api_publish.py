"""Publish and unpublish over HTTPS against cspd in the guest, proven by real initiators.

The guest's own open-iscsi and multipathd play the Kubernetes node; libiscsi
on the host plays a second, independent initiator through the forwarded
iSCSI port.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.lab.csp_client import CspClient
from tests.lab.lab import Lab

pytestmark = pytest.mark.lab

MIB = 1 << 20
SIZE = 64 * MIB
HOST_IQN = "iqn.2026-12.io.example.lab:host-initiator"
STRANGER_IQN = "iqn.2026-12.io.example.lab:stranger"
CHAP_USER = "labchapuser"
CHAP_SECRET = "lab-chap-secret-16"


# -- guest initiator ---------------------------------------------------------------------


def login(lab: Lab, info: dict, *, chap: tuple[str, str] | None = None) -> str:
    """Discover and log in to the published target like the node plugin; return the
    multipath device of the LUN."""
    portal = f"{info['discovery_ips'][0]}:3260"
    target = info["target_names"][0]
    lab.run(f"iscsiadm -m discovery -t st -p {portal}", timeout=60)
    if chap is not None:
        for name, value in (
            ("node.session.auth.authmethod", "CHAP"),
            ("node.session.auth.username", chap[0]),
            ("node.session.auth.password", chap[1]),
        ):
            lab.run(f"iscsiadm -m node -T {target} -o update -n {name} -v {value}")
    lab.run(f"iscsiadm -m node -T {target} --login", timeout=60)
    return wait_for_map(lab, info["serial_number"])


def wait_for_map(lab: Lab, serial: str, timeout: float = 60) -> str:
    """Wait until multipath has a map whose WWID is '3' + serial; return its path."""
    wwid = "3" + serial.lower()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lab.run("udevadm settle; multipath -v0 2>/dev/null || true", timeout=60)
        result = lab.run(f"test -b /dev/mapper/{wwid}", check=False)
        if result.returncode == 0:
            return f"/dev/mapper/{wwid}"
        time.sleep(1)
    maps = lab.run("multipath -ll; ls -l /dev/disk/by-id", check=False).stdout
    raise AssertionError(f"no multipath map {wwid} appeared:\n{maps}")


def logout_all(lab: Lab) -> None:
    lab.run(
        "multipath -F >/dev/null 2>&1; iscsiadm -m node --logoutall=all >/dev/null 2>&1; "
        "iscsiadm -m node -o delete >/dev/null 2>&1; udevadm settle; true",
        timeout=120,
    )


def write_pattern(lab: Lab, device: str, seed: str, mib: int = 4) -> str:
    lab.run(
        "python3 -c 'import random, sys; "
        f"sys.stdout.buffer.write(random.Random(\"{seed}\").randbytes({mib * MIB}))' "
        f"> /tmp/pattern-{seed}"
    )
    lab.run(f"dd if=/tmp/pattern-{seed} of={device} bs=1M oflag=direct status=none")
    return lab.run(f"sha256sum < /tmp/pattern-{seed}").stdout.split()[0]


def read_digest(lab: Lab, device: str, mib: int = 4) -> str:
    return lab.run(
        f"dd if={device} bs=1M count={mib} iflag=direct status=none | sha256sum"
    ).stdout.split()[0]


# -- host initiator (libiscsi) ----------------------------------------------------------


def libiscsi(
    tool: str, lab: Lab, initiator: str, info: dict, *, creds: str = "",
    extra: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is missing on the host; install libiscsi-bin", pytrace=False)
    auth = f"{creds}@" if creds else ""
    url = f"iscsi://{auth}127.0.0.1:{lab.iscsi_port}/{info['target_names'][0]}/{info['lun_id']}"
    return subprocess.run(
        [tool, "-i", initiator, *(extra or []), url],
        capture_output=True, text=True, timeout=60, check=False,
    )


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def csp(lab_cspd: Lab) -> Iterator[CspClient]:
    client = CspClient(lab_cspd.api_url, lab_cspd.username, lab_cspd.password)
    yield client
    logout_all(lab_cspd)
    # Unpublish everything from every host, then delete what the test made.
    _, volumes = client.call("GET", "/volumes", expect=200)
    for host in ("guest", "host-side", "chap-host", "burst"):
        for volume in volumes:
            client.call(
                "PUT", f"/volumes/{volume['id']}/actions/unpublish", {"host_uuid": host}
            )
    for volume in volumes:
        if volume.get("base_snapshot_id"):
            client.call("DELETE", f"/volumes/{volume['id']}")
    _, snapshots = client.call("GET", "/snapshots", expect=200)
    for snapshot in snapshots:
        client.call("DELETE", f"/snapshots/{snapshot['id']}")
    for volume in volumes:
        client.call("DELETE", f"/volumes/{volume['id']}")


def register_guest(lab: Lab, csp: CspClient) -> None:
    csp.register_host("guest", [lab.initiator_name])


# -- tests -------------------------------------------------------------------------------------


def test_publish_login_write_snapshot_clone_read(lab_cspd: Lab, csp: CspClient) -> None:
    register_guest(lab_cspd, csp)
    volume = csp.create_volume(f"pvc-{uuid.uuid4()}", SIZE)
    info = csp.publish(volume["id"], "guest")
    assert info["lun_id"] == 0
    assert info["access_protocol"] == "iscsi"
    assert csp.publish(volume["id"], "guest") == info

    device = login(lab_cspd, info)
    written = write_pattern(lab_cspd, device, "first")
    assert read_digest(lab_cspd, device) == written

    # The map's WWID without its first character is the serial the driver looks for.
    wwid = lab_cspd.run(f"multipath -ll -v1 {device}").stdout.strip()
    assert wwid[1:].lower() == info["serial_number"].lower()
    vpd80 = lab_cspd.run(f"sg_inq -p 0x80 {device}").stdout
    row = lab_cspd.run(
        "cat /sys/kernel/config/target/core/iblock_*/vol-"
        f"{volume['id']}/wwn/vpd_unit_serial"
    ).stdout
    serial = row.split(":", 1)[1].strip()
    assert serial in vpd80
    assert info["serial_number"] == "6001405" + serial.replace("-", "")[:25]

    logout_all(lab_cspd)
    _, got = csp.call("GET", f"/volumes/{volume['id']}", expect=200)
    assert got["published"] is True

    snapshot = csp.snapshot(volume["id"], f"snapshot-{uuid.uuid4()}")
    clone = csp.create_volume(
        f"pvc-{uuid.uuid4()}", SIZE, base_snapshot_id=snapshot["id"], clone=True
    )
    clone_info = csp.publish(clone["id"], "guest")
    assert clone_info["serial_number"] != info["serial_number"]
    clone_device = login(lab_cspd, clone_info)
    assert read_digest(lab_cspd, clone_device) == written

    logout_all(lab_cspd)
    csp.unpublish(clone["id"], "guest")
    csp.unpublish(volume["id"], "guest")
    _, got = csp.call("GET", f"/volumes/{volume['id']}", expect=200)
    assert got["published"] is False
    leftovers = lab_cspd.run(
        f"ls /sys/kernel/config/target/core/iblock_*/ | grep -c {volume['id']} || true"
    ).stdout.strip()
    assert leftovers == "0"


def test_host_initiator_acl_and_capacity(lab_cspd: Lab, csp: CspClient) -> None:
    csp.register_host("host-side", [HOST_IQN])
    volume = csp.create_volume(f"pvc-{uuid.uuid4()}", SIZE)
    info = csp.publish(volume["id"], "host-side")

    refused = libiscsi("iscsi-inq", lab_cspd, STRANGER_IQN, info)
    assert refused.returncode != 0
    assert "Authorization failure" in refused.stderr + refused.stdout

    capacity = libiscsi("iscsi-readcapacity16", lab_cspd, HOST_IQN, info, extra=["-s"])
    assert capacity.returncode == 0, capacity.stderr
    assert int(capacity.stdout.split()[-1]) == SIZE


def test_chap_login(lab_cspd: Lab, csp: CspClient) -> None:
    csp.register_host(
        "chap-host", [HOST_IQN], chap_user=CHAP_USER, chap_password=CHAP_SECRET
    )
    volume = csp.create_volume(f"pvc-{uuid.uuid4()}", SIZE)
    info = csp.publish(volume["id"], "chap-host")
    assert info["chap_user"] == CHAP_USER
    assert info["chap_password"] == CHAP_SECRET

    without = libiscsi("iscsi-inq", lab_cspd, HOST_IQN, info)
    assert without.returncode != 0
    wrong = libiscsi("iscsi-inq", lab_cspd, HOST_IQN, info, creds=f"{CHAP_USER}%wrong-secret-0000")
    assert wrong.returncode != 0
    right = libiscsi("iscsi-inq", lab_cspd, HOST_IQN, info, creds=f"{CHAP_USER}%{CHAP_SECRET}")
    assert right.returncode == 0, right.stderr
    assert "LIO-ORG" in right.stdout


def test_group_scope_two_luns(lab_cspd: Lab, csp: CspClient) -> None:
    register_guest(lab_cspd, csp)
    config = {"targetScope": "group"}
    first = csp.create_volume(f"pvc-{uuid.uuid4()}", SIZE, config=config)
    second = csp.create_volume(f"pvc-{uuid.uuid4()}", SIZE, config=config)
    assert first["config"]["target_scope"] == "group"
    info_first = csp.publish(first["id"], "guest")
    info_second = csp.publish(second["id"], "guest")
    assert info_first["target_names"] == info_second["target_names"]
    assert info_first["lun_id"] != info_second["lun_id"]

    device_first = login(lab_cspd, info_first)
    device_second = wait_for_map(lab_cspd, info_second["serial_number"])
    write_pattern(lab_cspd, device_first, "one")
    written = write_pattern(lab_cspd, device_second, "two")

    # The node removes the LUN's map before the array takes it away.
    lab_cspd.run(f"multipath -f {device_first}")
    csp.unpublish(first["id"], "guest")
    lab_cspd.run("iscsiadm -m session --rescan; udevadm settle", timeout=60)
    assert read_digest(lab_cspd, device_second) == written
    again = write_pattern(lab_cspd, device_second, "three")
    assert read_digest(lab_cspd, device_second) == again


def test_reboot_restores_exports(lab_cspd: Lab, csp: CspClient) -> None:
    register_guest(lab_cspd, csp)
    volume = csp.create_volume(f"pvc-{uuid.uuid4()}", SIZE)
    grouped = csp.create_volume(f"pvc-{uuid.uuid4()}", SIZE, config={"targetScope": "group"})
    info = csp.publish(volume["id"], "guest")
    group_info = csp.publish(grouped["id"], "guest")
    device = login(lab_cspd, info)
    written = write_pattern(lab_cspd, device, "reboot")
    logout_all(lab_cspd)

    listing = (
        "find /sys/kernel/config/target/iscsi -path '*tpgt_1*' "
        r"\( -name 'lun_*' -o -path '*/acls/*' -o -path '*/np/*' \) -maxdepth 6 | sort; "
        "cat /sys/kernel/config/target/core/iblock_*/*/wwn/vpd_unit_serial | sort"
    )
    before = lab_cspd.run(listing).stdout
    lab_cspd.reboot()
    after = lab_cspd.run(listing).stdout
    assert after == before

    status = lab_cspd.run("systemctl is-active cspd.service").stdout.strip()
    assert status == "active"
    # Ready (and so "Started" for a Type=notify unit) only after LIO came back.
    journal = lab_cspd.journal().splitlines()
    restored = next(i for i, line in enumerate(journal) if "restored " in line
                    and "storage objects" in line)
    ready = next(i for i, line in enumerate(journal) if "cspd is ready" in line)
    started = next(i for i, line in enumerate(journal) if "Started cspd" in line)
    assert restored < ready < started
    assert "storage objects and 0 targets" not in journal[restored]
    assert csp.publish(volume["id"], "guest") == info
    assert csp.publish(grouped["id"], "guest") == group_info
    device = login(lab_cspd, info)
    assert read_digest(lab_cspd, device) == written


def test_ten_concurrent_publishes(lab_cspd: Lab, csp: CspClient) -> None:
    volumes = [csp.create_volume(f"pvc-{uuid.uuid4()}", 16 * MIB) for _ in range(10)]
    iqn = "iqn.2026-12.io.example.lab:burst"

    def publish_one(volume_id: str) -> tuple[int, dict]:
        client = CspClient(lab_cspd.api_url, lab_cspd.username, lab_cspd.password)
        client.token = csp.token
        status, _ = client.call("POST", "/hosts", {"uuid": "burst", "name": "burst",
                                                    "iqns": [iqn]})
        assert status == 200
        return client.call(
            "PUT", f"/volumes/{volume_id}/actions/publish",
            {"host_uuid": "burst", "access_protocol": "iscsi"},
        )

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(publish_one, [v["id"] for v in volumes]))
    statuses = [status for status, _ in results]
    assert statuses == [200] * 10
    targets = {info["target_names"][0] for _, info in results}
    assert len(targets) == 10
    hosts = lab_cspd.run(
        "python3 -c \"import sqlite3; print(sqlite3.connect('/var/lib/cspd/cspd.db')"
        ".execute('select count(*) from hosts where uuid = ?', ('burst',)).fetchone()[0])\""
    ).stdout.strip()
    assert hosts == "1"
    for _, info in results:
        inq = libiscsi("iscsi-inq", lab_cspd, iqn, info)
        assert inq.returncode == 0, inq.stderr
