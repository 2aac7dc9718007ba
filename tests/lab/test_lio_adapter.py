"""LioAdapter on the guest's real LIO: export a thin LV, log in, check NAA and CHAP, save, restore.

The adapter runs inside the guest through a small script that uses the cspd
installed from the working tree. The guest's own open-iscsi initiator logs in
over 127.0.0.1, and libiscsi's iscsi-inq plays a second initiator with a
name of its own. Everything this test makes has names of its own (the LV
``liotest``, targets under ``iqn.2003-01.org.linux-iscsi.lio-test``), so a
cspd daemon running in the same guest keeps its exports.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from typing import Any

import pytest

from cspd.lio import naa_from_unit_serial
from tests.lab.lab import Lab

pytestmark = pytest.mark.lab

VG = "cspd"
POOL = "pool"
LV = "liotest"
DEVICE = f"/dev/{VG}/{LV}"
SERIAL = "5e3a9c1d-7b2f-4d8e-9a6c-0f1e2d3c4b5a"
TARGET = "iqn.2003-01.org.linux-iscsi.lio-test:vol-1"
PORTAL = "127.0.0.1"
PORT = 3260
# A second initiator, played by libiscsi, that logs in without CHAP.
PLAIN_INITIATOR = "iqn.2024-01.org.example.lab:plain"
STRANGER_INITIATOR = "iqn.2024-01.org.example.lab:stranger"
CHAP_USER = "labhost"
CHAP_SECRET = "lab-chap-s3cret"

WORK_DIR = "/var/tmp/cspd-lio-test"
SCRIPT = f"{WORK_DIR}/adapter.py"
SAVE_PATH = f"{WORK_DIR}/saved/lio.json"

# A wide margin: the whole test took 157 to 161 s under TCG on a two-core host
# that ran other guests at the same time.
SCRIPT_TIMEOUT = 300.0

GUEST_SCRIPT = '''
"""Drive cspd.lio.LioAdapter for the lab test; prints the LIO state as JSON."""

import asyncio
import dataclasses
import json
import sys
from pathlib import Path

from cspd.config import IscsiConfig
from cspd.lio import Chap, LioAdapter


async def main() -> None:
    command = sys.argv[1]
    request = json.loads(sys.argv[2])
    adapter = LioAdapter(IscsiConfig(), Path(request["save_path"]))
    target = request["target"]
    if command == "export":
        await adapter.check()
        await adapter.ensure_backstore(request["backstore"], request["device"], request["serial"])
        await adapter.ensure_target(target, request["portals"], request["port"])
        await adapter.ensure_lun(target, 0, request["backstore"])
        for acl in request["acls"]:
            chap = Chap(**acl["chap"]) if acl["chap"] else None
            await adapter.ensure_acl(target, acl["initiator"], 0, chap)
        await adapter.save()
    elif command == "restore":
        await adapter.restore()
    elif command == "cleanup":
        for acl in request["acls"]:
            await adapter.remove_acl_lun(target, acl["initiator"], 0)
        await adapter.remove_lun(target, 0)
        await adapter.remove_target(target)
        await adapter.remove_backstore(request["backstore"])
    elif command != "state":
        raise SystemExit(f"unknown command {command}")
    state = await adapter.read_state()
    print(json.dumps(dataclasses.asdict(state)))


asyncio.run(main())
'''

# Deletes the test's target and backstore with rtslib directly, as a reboot
# would, without touching other exports in the guest.
FORGET_SCRIPT = """
import sys
import rtslib_fb
root = rtslib_fb.RTSRoot()
for target in root.targets:
    if target.wwn == sys.argv[1]:
        target.delete()
for storage_object in root.storage_objects:
    if storage_object.plugin == "block" and storage_object.name == sys.argv[2]:
        storage_object.delete()
"""


def run_adapter(lab: Lab, command: str, acls: list[dict[str, Any]]) -> dict[str, Any]:
    request = {
        "save_path": SAVE_PATH,
        "backstore": LV,
        "device": DEVICE,
        "serial": SERIAL,
        "target": TARGET,
        "portals": [PORTAL],
        "port": PORT,
        "acls": acls,
    }
    result = lab.run([lab.python, SCRIPT, command, json.dumps(request)], timeout=SCRIPT_TIMEOUT)
    state: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return state


def node_command(*arguments: str) -> list[str]:
    return ["iscsiadm", "-m", "node", "-T", TARGET, "-p", f"{PORTAL}:{PORT}", *arguments]


def set_node_auth(lab: Lab, user: str | None, secret: str | None) -> None:
    """Store CHAP settings in the guest initiator's node record (None: no CHAP)."""
    settings = (
        [("node.session.auth.authmethod", "None")]
        if user is None
        else [
            ("node.session.auth.authmethod", "CHAP"),
            ("node.session.auth.username", user),
            ("node.session.auth.password", secret or ""),
        ]
    )
    for name, value in settings:
        lab.run(node_command("--op", "update", "-n", name, "-v", value))


def login(lab: Lab) -> subprocess.CompletedProcess[str]:
    return lab.run(node_command("--login"), check=False, timeout=120)


def logout(lab: Lab) -> None:
    # The guest's multipath configuration makes a map on every LIO LUN. The
    # map is flushed first, so the logout leaves no map without paths behind.
    lab.run(["multipath", "-f", "3" + naa_from_unit_serial(SERIAL)], check=False, timeout=60)
    lab.run(node_command("--logout"), check=False, timeout=120)


def lun_naa(lab: Lab) -> str:
    """Return the NAA designator of LUN 0 as the guest's initiator reads it (VPD page 0x83)."""
    device = f"/dev/disk/by-path/ip-{PORTAL}:{PORT}-iscsi-{TARGET}-lun-0"
    lab.run(
        f"udevadm settle; for i in $(seq 60); do [ -e {shlex.quote(device)} ] && break; "
        "sleep 0.5; done",
        timeout=60,
    )
    output = lab.run(["sg_inq", "-p", "0x83", device]).stdout
    match = re.search(r"\[0x(6[0-9a-f]{31})\]", output)
    assert match, f"no NAA 6 designator in sg_inq output:\n{output}"
    return match.group(1)


def libiscsi_inquiry(lab: Lab, initiator: str, credentials: str = "") -> int:
    url = f"iscsi://{credentials}{PORTAL}:{PORT}/{TARGET}/0"
    result = lab.run(["iscsi-inq", "-i", initiator, url], check=False, timeout=60)
    return result.returncode


def cleanup(lab: Lab, acls: list[dict[str, Any]]) -> None:
    logout(lab)
    lab.run(node_command("-o", "delete"), check=False)
    lab.run(
        [
            lab.python,
            SCRIPT,
            "cleanup",
            json.dumps(
                {
                    "save_path": SAVE_PATH,
                    "backstore": LV,
                    "target": TARGET,
                    "acls": acls,
                }
            ),
        ],
        check=False,
        timeout=SCRIPT_TIMEOUT,
    )
    lab.run(["lvremove", "-y", f"{VG}/{LV}"], check=False, timeout=120)
    lab.run(["rm", "-rf", f"{WORK_DIR}/saved"], check=False)


def test_lio_adapter_on_real_lio(lab: Lab) -> None:
    lab.install_cspd()
    lab.put_file(SCRIPT, GUEST_SCRIPT, 0o755)
    lab.put_file(f"{WORK_DIR}/forget.py", FORGET_SCRIPT, 0o755)
    initiator = lab.initiator_name
    plain_acls: list[dict[str, Any]] = [
        {"initiator": initiator, "chap": None},
        {"initiator": PLAIN_INITIATOR, "chap": None},
    ]
    chap_acls: list[dict[str, Any]] = [
        {"initiator": initiator, "chap": {"user": CHAP_USER, "password": CHAP_SECRET}},
        {"initiator": PLAIN_INITIATOR, "chap": None},
    ]
    cleanup(lab, plain_acls)
    # rtslib-fb keeps LIO's database folder there; cspd.service creates it too.
    lab.run(["mkdir", "-p", "-m", "0700", "/etc/target"])
    lab.run(["lvcreate", "-V", "64M", "-T", f"{VG}/{POOL}", "-n", LV, "-y"], timeout=120)
    try:
        # Export without CHAP; the guest's initiator logs in and reads the NAA.
        state = run_adapter(lab, "export", plain_acls)
        assert state["backstores"][LV] == {"device": DEVICE, "unit_serial": SERIAL}
        assert state["targets"][TARGET]["luns"] == {"0": LV}
        assert state["targets"][TARGET]["portals"] == [[PORTAL, PORT]]
        lab.run(["iscsiadm", "-m", "discovery", "-t", "st", "-p", f"{PORTAL}:{PORT}"])
        set_node_auth(lab, None, None)
        first_login = login(lab)
        assert first_login.returncode == 0, first_login.stderr
        assert lun_naa(lab) == naa_from_unit_serial(SERIAL)
        logout(lab)

        # CHAP for the guest's initiator only; the plain initiator keeps logging in without.
        state = run_adapter(lab, "export", chap_acls)
        assert state["targets"][TARGET]["chap_users"] == {initiator: CHAP_USER}
        refused = login(lab)
        assert refused.returncode != 0, "login without the CHAP secret was accepted"
        set_node_auth(lab, CHAP_USER, "wrong-secret-123")
        wrong = login(lab)
        assert wrong.returncode != 0, "login with a wrong CHAP secret was accepted"
        set_node_auth(lab, CHAP_USER, CHAP_SECRET)
        accepted = login(lab)
        assert accepted.returncode == 0, accepted.stderr
        assert lun_naa(lab) == naa_from_unit_serial(SERIAL)
        logout(lab)
        assert libiscsi_inquiry(lab, PLAIN_INITIATOR) == 0
        assert libiscsi_inquiry(lab, initiator) != 0
        assert libiscsi_inquiry(lab, initiator, f"{CHAP_USER}%{CHAP_SECRET}@") == 0
        assert libiscsi_inquiry(lab, STRANGER_INITIATOR) != 0

        # The saved file is private, and a restore brings back what was lost.
        mode = lab.run(["stat", "-c", "%a", SAVE_PATH]).stdout.strip()
        assert mode == "600"
        before = run_adapter(lab, "state", chap_acls)
        lab.run([lab.python, f"{WORK_DIR}/forget.py", TARGET, LV], timeout=SCRIPT_TIMEOUT)
        forgotten = run_adapter(lab, "state", chap_acls)
        assert TARGET not in forgotten["targets"]
        assert LV not in forgotten["backstores"]
        restored = run_adapter(lab, "restore", chap_acls)
        assert restored["backstores"][LV] == before["backstores"][LV]
        assert restored["targets"][TARGET] == before["targets"][TARGET]
        again = login(lab)
        assert again.returncode == 0, again.stderr
        assert lun_naa(lab) == naa_from_unit_serial(SERIAL)
        logout(lab)
        # A second restore finds everything present and changes nothing.
        second = run_adapter(lab, "restore", chap_acls)
        assert second["targets"][TARGET] == restored["targets"][TARGET]
        assert second["backstores"][LV] == restored["backstores"][LV]
    finally:
        cleanup(lab, chap_acls)
