"""Helpers for lab tests that drive the guest's storage stack directly, without cspd.

Names made here start with ``labtest`` and targets use TEST_IQN_PREFIX, which
differs from the daemon's prefix, so a running cspd does not treat them as
its own.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shlex
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import LabError
from .lab import Lab

VOLUME_GROUP = "cspd"
THIN_POOL = "pool"
TEST_IQN_PREFIX = "iqn.2003-01.org.linux-iscsi.labtest"
ISCSI_PORT = 3260
# LIO's NAA IEEE Registered Extended designator starts with the NAA type 6
# and the OUI 001405; the rest are the first 25 hex digits of the unit serial.
LIO_NAA_PREFIX = "6001405"
LVM_TIMEOUT = 120.0


def unique_name(stem: str = "labtest") -> str:
    """Return ``stem`` with a random suffix, for LVs, backstores and targets."""
    return f"{stem}-{secrets.token_hex(4)}"


def multipath_wwid(unit_serial: str) -> str:
    """Return the WWID multipath gives an LIO LUN: "3" + the NAA designator from its serial."""
    return "3" + LIO_NAA_PREFIX + unit_serial.replace("-", "")[:25]


def wait_until(lab: Lab, condition: str, timeout: float, message: str) -> None:
    """Poll the shell ``condition`` in the guest twice a second; raise LabError at ``timeout``."""
    loop = f"until {condition}; do sleep 0.5; done"
    script = f"timeout {timeout:.0f} sh -c {shlex.quote(loop)}"
    if lab.run(script, check=False, timeout=timeout + 30).returncode != 0:
        raise LabError(f"{message} (waited {timeout:.0f} s for: {condition})")


@contextlib.contextmanager
def thin_lv(lab: Lab, size: str = "64M", name: str | None = None) -> Iterator[str]:
    """Create a thin LV in the lab pool for the block; yield its device path, remove it after."""
    name = name or unique_name()
    lab.run(["lvcreate", "--yes", "--virtualsize", size, "--thin", f"{VOLUME_GROUP}/{THIN_POOL}",
             "--name", name], timeout=LVM_TIMEOUT)
    try:
        yield f"/dev/{VOLUME_GROUP}/{name}"
    finally:
        lab.run(["lvremove", "--yes", f"{VOLUME_GROUP}/{name}"], check=False, timeout=LVM_TIMEOUT)


@dataclass(frozen=True)
class Export:
    """A block device exported as LUN 0 of its own LIO iSCSI target."""

    name: str
    device: str
    target: str
    unit_serial: str

    @property
    def wwid(self) -> str:
        return multipath_wwid(self.unit_serial)


@contextlib.contextmanager
def lio_export(lab: Lab, device: str, portals: list[str], acls: list[str],
               name: str | None = None) -> Iterator[Export]:
    """Export ``device`` through LIO (live configuration only) and remove the export after."""
    name = name or unique_name()
    target = f"{TEST_IQN_PREFIX}:{name}"
    argv = [lab.python, lab.lio_tool, "export", "--name", name, "--device", device,
            "--target", target]
    for portal in portals:
        argv += ["--portal", portal]
    for acl in acls:
        argv += ["--acl", acl]
    result = lab.run(argv, timeout=120)
    created = json.loads(result.stdout.strip().splitlines()[-1])
    try:
        yield Export(name=name, device=device, target=target, unit_serial=created["serial"])
    finally:
        lab.run([lab.python, lab.lio_tool, "remove", "--name", name, "--target", target],
                check=False, timeout=120)


@contextlib.contextmanager
def iscsi_session(lab: Lab, target: str, portal: str = "127.0.0.1") -> Iterator[str]:
    """Log the guest's open-iscsi in to ``target``; yield the LUN 0 disk's by-path link.

    On exit, flushes the LUN's multipath map (its queue_if_no_path would hang
    I/O once the session is gone), logs out and deletes the node record.
    """
    address = f"{portal}:{ISCSI_PORT}"
    by_path = f"/dev/disk/by-path/ip-{address}-iscsi-{target}-lun-0"
    lab.run(["iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", address], timeout=60)
    lab.run(["iscsiadm", "-m", "node", "-T", target, "-p", address, "--login"], timeout=60)
    try:
        wait_until(lab, f"test -b {shlex.quote(by_path)}", 60,
                   f"the disk of {target} did not appear")
        yield by_path
    finally:
        disk = lab.run(["readlink", "-f", by_path], check=False).stdout.strip()
        if disk.startswith("/dev/sd"):
            holders = lab.run(f"ls /sys/block/{disk[5:]}/holders", check=False).stdout.split()
            for holder in holders:
                map_name = lab.run(["cat", f"/sys/block/{holder}/dm/name"],
                                   check=False).stdout.strip()
                if map_name:
                    # A map just created may still be open by udev's probes.
                    lab.run(f"for i in 1 2 3 4 5; do multipath -f {shlex.quote(map_name)} "
                            "&& break; sleep 1; done", check=False, timeout=60)
        lab.run(["iscsiadm", "-m", "node", "-T", target, "-p", address, "--logout"],
                check=False, timeout=60)
        lab.run(["iscsiadm", "-m", "node", "-o", "delete", "-T", target, "-p", address],
                check=False, timeout=60)
