"""Crash-consistent snapshot groups on the real kernel stack in the lab guest.

Two volumes of one volume group are published to the guest's own initiator
and logged in over 127.0.0.1. A writer in the guest writes numbered 4 KiB
blocks alternately to both disks with O_DIRECT|O_SYNC, each write finishing
before the next starts, while a snapshot group is taken over HTTPS. The two
member snapshots are cloned and the clones read in the guest: the blocks of
the run found in them must be exactly blocks 0..n-1, none missing, or the cut
was not consistent. This repeats many times, printing how long I/O was held.

A second test kills the daemon (SIGKILL) while a snapshot group has I/O
suspended and checks that after the next start no cspd device is suspended, I/O flows
and the unfinished group left no snapshot behind.
"""

from __future__ import annotations

import http.client
import json
import re
import shlex
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

if not Path(__file__).with_name("conftest.py").exists():
    pytest.skip("the lab fixture is missing: tests/lab/conftest.py", allow_module_level=True)

from tests.lab.lab import Lab

pytestmark = pytest.mark.lab

ROUNDS = 20
VOLUME_SIZE = 256 << 20
HOST_UUID = "lab-snapshot-group-host"
GROUP_NAME = "lab-consistency"
PORTAL = "127.0.0.1:3260"
WORK_DIR = "/var/tmp/cspd-group-test"
WRITER = f"{WORK_DIR}/writer.py"
CHECKER = f"{WORK_DIR}/checker.py"
# Seconds the writer runs before the group is taken and after it returns.
WRITE_BEFORE = 1.0
WRITE_AFTER = 0.5
# Under TCG one snapshot group of two members took a few seconds.
API_TIMEOUT = 300.0

WRITER_SCRIPT = r'''
"""Write numbered 4 KiB blocks alternately to two disks until a stop file appears.

Block n goes to disk n % 2 at offset (n // 2) * 4096 and holds a magic word,
the run number and n. Each write is O_DIRECT|O_SYNC and ends before the next
one starts. The result (blocks written, slowest write, errors) goes to OUT.
"""
import json, mmap, os, struct, sys, time

first, second, run, stop, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
flags = os.O_WRONLY | os.O_DIRECT | os.O_SYNC
disks = [os.open(first, flags), os.open(second, flags)]
limit = min(os.lseek(d, 0, os.SEEK_END) for d in disks) // 4096 * 2
buffer = mmap.mmap(-1, 4096)
written, slowest, slowest_at, errors = 0, 0.0, -1, []
while written < limit and not os.path.exists(stop):
    buffer.seek(0)
    buffer.write(struct.pack("<8sQQ", b"CSPDSEQ1", run, written))
    started = time.monotonic()
    try:
        os.pwrite(disks[written % 2], buffer, (written // 2) * 4096)
    except OSError as err:
        errors.append(f"block {written}: {err}")
        break
    took = time.monotonic() - started
    if took > slowest:
        slowest, slowest_at = took, written
    written += 1
with open(out + ".tmp", "w") as handle:
    json.dump({"written": written, "slowest": slowest, "slowest_at": slowest_at,
               "errors": errors}, handle)
os.rename(out + ".tmp", out)
'''

CHECKER_SCRIPT = r'''
"""Read the first blocks of two disks and report which blocks of one run they hold."""
import json, mmap, os, struct, sys

first, second, run, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
found, misplaced = [], []
chunk = 256 * 4096
for side, path in enumerate((first, second)):
    disk = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buffer = mmap.mmap(-1, chunk)
    index = 0
    while index < count:
        size = min(chunk, (count - index) * 4096)
        got = os.preadv(disk, [memoryview(buffer)[:size]], index * 4096)
        for offset in range(0, got, 4096):
            magic, block_run, number = struct.unpack_from("<8sQQ", buffer, offset)
            if magic == b"CSPDSEQ1" and block_run == run:
                found.append(number)
                if number % 2 != side or number // 2 != index + offset // 4096:
                    misplaced.append(number)
        index += max(got // 4096, 1)
    os.close(disk)
found.sort()
missing = sorted(set(range(len(found))) - set(found))[:10] if found else []
print(json.dumps({"found": len(found), "highest": found[-1] if found else -1,
                  "missing": missing, "misplaced": misplaced[:10]}))
'''


class Csp:
    """A small synchronous CSP client over HTTPS, one connection per request as the driver does."""

    def __init__(self, api_url: str, username: str, password: str) -> None:
        parts = urlsplit(api_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 443
        self.base = parts.path.rstrip("/") + "/containers/v1"
        self.context = ssl.create_default_context()
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE
        self.token = ""
        _, token = self.call(
            "POST", "/tokens", {"username": username, "password": password, "array_ip": ""},
            expect=200,
        )
        self.token = token["session_token"]

    def call(
        self, method: str, path: str, body: Any = None, *, expect: int | None = None,
        timeout: float = API_TIMEOUT,
    ) -> tuple[int, Any]:
        connection = http.client.HTTPSConnection(
            self.host, self.port, context=self.context, timeout=timeout
        )
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["x-auth-token"] = self.token
        try:
            payload = json.dumps(body) if body is not None else None
            connection.request(method, self.base + path, body=payload, headers=headers)
            response = connection.getresponse()
            text = response.read().decode()
        finally:
            connection.close()
        data = json.loads(text) if text else None
        if expect is not None:
            assert response.status == expect, f"{method} {path}: {response.status} {text}"
        return response.status, data


@dataclass
class Pair:
    csp: Csp
    group: dict[str, Any]
    volumes: list[dict[str, Any]]
    targets: list[str]
    disks: list[str]


def guest_disk(lab: Lab, serial: str) -> str:
    """Return the guest's device for a LUN: its multipath map, else its SCSI disk."""
    candidates = [f"/dev/mapper/3{serial}", f"/dev/disk/by-id/wwn-0x{serial}"]
    script = (
        "udevadm settle; for i in $(seq 120); do "
        + " ".join(f"[ -b {c} ] && echo {c} && exit 0;" for c in candidates)
        + " sleep 0.5; done; exit 1"
    )
    return lab.run(script, timeout=120).stdout.strip().splitlines()[-1]


def logout(lab: Lab, target: str, disk: str) -> None:
    if disk.startswith("/dev/mapper/"):
        lab.run(["multipath", "-f", disk.rsplit("/", 1)[1]], check=False, timeout=60)
    lab.run(["iscsiadm", "-m", "node", "-T", target, "-p", PORTAL, "--logout"],
            check=False, timeout=120)
    lab.run(["iscsiadm", "-m", "node", "-T", target, "-p", PORTAL, "-o", "delete"],
            check=False, timeout=60)


@pytest.fixture(scope="module")
def pair(lab_cspd: Lab) -> Iterator[Pair]:
    """Two published volumes of one volume group, logged in from the guest."""
    lab = lab_cspd
    lab.run(["mkdir", "-p", WORK_DIR])
    lab.put_file(WRITER, WRITER_SCRIPT, 0o755)
    lab.put_file(CHECKER, CHECKER_SCRIPT, 0o755)

    csp = Csp(lab.api_url, lab.username, lab.password)
    _, group = csp.call("POST", "/volume_groups", {"name": GROUP_NAME}, expect=200)
    csp.call("POST", "/hosts", {"uuid": HOST_UUID, "name": "lab-guest",
                                "iqns": [lab.initiator_name]}, expect=200)
    made = Pair(csp, group, volumes=[], targets=[], disks=[])
    try:
        for index in range(2):
            _, volume = csp.call("POST", "/volumes", {
                "name": f"{GROUP_NAME}-{index}", "size": VOLUME_SIZE,
                "volume_group_id": group["id"],
            }, expect=200)
            made.volumes.append(volume)
            _, info = csp.call("PUT", f"/volumes/{volume['id']}/actions/publish",
                               {"host_uuid": HOST_UUID, "access_protocol": "iscsi"}, expect=200)
            target = info["target_names"][0]
            lab.run(["iscsiadm", "-m", "discovery", "-t", "st", "-p", PORTAL], timeout=120)
            lab.run(["iscsiadm", "-m", "node", "-T", target, "-p", PORTAL, "--login"],
                    timeout=120)
            made.targets.append(target)
            made.disks.append(guest_disk(lab, info["serial_number"]))
        yield made
    finally:
        # A test may have restarted the daemon and logged in again.
        csp = made.csp
        for target, disk in zip(made.targets, made.disks, strict=False):
            logout(lab, target, disk)
        for volume in made.volumes:
            csp.call("PUT", f"/volumes/{volume['id']}/actions/unpublish",
                     {"host_uuid": HOST_UUID})
            for snapshot in csp.call("GET", f"/snapshots?volume_id={volume['id']}")[1] or []:
                csp.call("DELETE", f"/snapshots/{snapshot['id']}")
            csp.call("DELETE", f"/volumes/{volume['id']}?force=false")
        csp.call("DELETE", f"/volume_groups/{group['id']}")
        csp.call("DELETE", f"/hosts/{HOST_UUID}")


def hold_from_journal(lab: Lab, name: str) -> float | None:
    text = lab.run(
        f"journalctl -b --no-pager -o cat -u cspd.service | grep -F {shlex.quote(name)}",
        check=False,
    ).stdout
    matches = re.findall(rf"I/O of snapshot group {re.escape(name)} held for ([0-9.]+) s", text)
    return float(matches[-1]) if matches else None


def suspended_cspd_devices(lab: Lab) -> list[str]:
    output = lab.run(["dmsetup", "info", "-c", "--noheadings", "--separator", "|",
                      "-o", "name,uuid,suspended"]).stdout
    return [line.split("|")[0] for line in output.splitlines()
            if line.count("|") == 2 and line.split("|")[1].startswith("CSPD-")
            and line.endswith("|Suspended")]


def one_round(lab: Lab, pair: Pair, number: int, *, clone: bool) -> dict[str, Any]:
    """Take one snapshot group under writes and check the cut in its two snapshots.

    With ``clone``, the snapshots are cloned through the API and the clones
    read; without, the snapshot LVs are activated and read, which is quicker.
    """
    csp = pair.csp
    run = int(time.time()) * 100 + number
    stop, out = f"{WORK_DIR}/stop", f"{WORK_DIR}/writer-{number}.json"
    lab.run(f"rm -f {stop} {out}")
    lab.run(
        f"setsid python3 {WRITER} {pair.disks[0]} {pair.disks[1]} {run} {stop} {out} "
        f"> {WORK_DIR}/writer.log 2>&1 < /dev/null &"
    )
    time.sleep(WRITE_BEFORE)
    name = f"lab-sg-{number}"
    started = time.monotonic()
    status, made = csp.call("POST", "/snapshot_groups",
                            {"name": name, "volume_group_id": pair.group["id"]})
    api_seconds = time.monotonic() - started
    assert status == 200, made
    time.sleep(WRITE_AFTER)
    lab.run(f"touch {stop}; for i in $(seq 600); do [ -e {out} ] && break; sleep 0.1; done")
    writer = json.loads(lab.run(["cat", out]).stdout)
    assert writer["errors"] == [], writer

    by_volume = {s["volume_id"]: s for s in made["snapshots"]}
    count = writer["written"] // 2 + 1
    clones: list[dict[str, Any]] = []
    snapshot_lvs = [f"cspd/snap-{by_volume[v['id']]['id']}" for v in pair.volumes]
    try:
        if clone:
            # Clones through the API, as Kubernetes restores a snapshot.
            for volume in pair.volumes:
                _, made_clone = csp.call("POST", "/volumes", {
                    "name": f"{name}-clone-{volume['name']}", "size": VOLUME_SIZE,
                    "base_snapshot_id": by_volume[volume["id"]]["id"], "clone": True,
                }, expect=200)
                clones.append(made_clone)
            disks = [f"/dev/cspd/vol-{c['id']}" for c in clones]
        else:
            # The snapshot LVs themselves, activated read-only for the check.
            lab.run(["lvchange", "-ay", "-K", *snapshot_lvs], timeout=300)
            disks = [f"/dev/{lv}" for lv in snapshot_lvs]
        result = json.loads(lab.run(
            ["python3", CHECKER, *disks, str(run), str(count)], timeout=300
        ).stdout)
    finally:
        if not clone:
            lab.run(["lvchange", "-an", *snapshot_lvs], check=False, timeout=300)
        for made_clone in clones:
            csp.call("DELETE", f"/volumes/{made_clone['id']}?force=false", expect=204)
        csp.call("DELETE", f"/snapshot_groups/{made['id']}", expect=204)
    return {
        "name": name, "api_seconds": api_seconds, "held": hold_from_journal(lab, name),
        "writer": writer, "check": result,
    }


def test_snapshot_groups_are_consistent_cuts(lab_cspd: Lab, pair: Pair) -> None:
    lab = lab_cspd
    results = []
    for number in range(ROUNDS):
        result = one_round(lab, pair, number, clone=number in (0, ROUNDS - 1))
        results.append(result)
        check, writer = result["check"], result["writer"]
        print(
            f"round {number:2d}: I/O held {result['held']} s (daemon), slowest write "
            f"{writer['slowest']:.3f} s, group call {result['api_seconds']:.2f} s, "
            f"cut at block {check['found']} of {writer['written']} written"
        )
        assert check["misplaced"] == [], result
        assert check["missing"] == [], f"not a consistent cut: {result}"
        assert check["highest"] == check["found"] - 1, result
        # The cut fell while the writer ran: it wrote before and after it.
        assert 0 < check["found"] < writer["written"], result
    helds = [r["held"] for r in results if r["held"] is not None]
    assert len(helds) == ROUNDS
    print(f"I/O hold over {ROUNDS} rounds: min {min(helds):.3f} s, "
          f"max {max(helds):.3f} s, mean {sum(helds) / len(helds):.3f} s")
    assert max(helds) < 15


def test_killed_daemon_leaves_no_device_suspended(lab_cspd: Lab, pair: Pair) -> None:
    lab = lab_cspd
    csp = pair.csp
    killer_out = f"{WORK_DIR}/killer.out"
    lab.run(["rm", "-f", killer_out])
    # Kill cspd with SIGKILL as soon as one of its devices is suspended.
    lab.run(
        "setsid sh -c 'for i in $(seq 3000); do "
        "if dmsetup info -c --noheadings --separator \"|\" -o name,uuid,suspended "
        "| grep -q \"|CSPD-.*|Suspended$\"; then "
        f"systemctl kill -s SIGKILL cspd.service; echo killed > {killer_out}; exit 0; fi; "
        f"sleep 0.02; done; echo gave-up > {killer_out}' > /dev/null 2>&1 < /dev/null &"
    )
    outcome: list[Any] = []

    def create() -> None:
        try:
            outcome.append(csp.call(
                "POST", "/snapshot_groups",
                {"name": "lab-sg-killed", "volume_group_id": pair.group["id"]},
            ))
        except (OSError, http.client.HTTPException) as err:
            outcome.append(err)

    caller = threading.Thread(target=create)
    caller.start()
    caller.join(API_TIMEOUT)
    lab.run(f"for i in $(seq 600); do [ -e {killer_out} ] && break; sleep 0.1; done")
    assert lab.run(["cat", killer_out]).stdout.strip() == "killed", outcome
    left = suspended_cspd_devices(lab)
    print(f"after SIGKILL: suspended cspd devices {left}; the create answered {outcome}")

    lab.restart_cspd()
    assert suspended_cspd_devices(lab) == []
    info = lab.run(["dmsetup", "info"]).stdout
    blocks = [block for block in info.split("\n\n") if "CSPD-" in block]
    assert blocks and all(re.search(r"State:\s+ACTIVE", block) for block in blocks), info
    # I/O flows again on both disks.
    for disk in pair.disks:
        lab.run(["timeout", "60", "dd", f"if={disk}", "of=/dev/null", "bs=4096", "count=1",
                 "iflag=direct"], timeout=90)
    # The unfinished group left no snapshot and no group behind.
    csp = Csp(lab.api_url, lab.username, lab.password)
    pair.csp = csp
    _, groups = csp.call("GET", f"/snapshot_groups?volume_group_id={pair.group['id']}",
                         expect=200)
    assert [g["name"] for g in groups if g["name"] == "lab-sg-killed"] == []
    for volume in pair.volumes:
        _, snapshots = csp.call("GET", f"/snapshots?volume_id={volume['id']}", expect=200)
        assert [s["name"] for s in snapshots if s["name"] == "lab-sg-killed"] == []
    journal = lab.journal(lines=400)
    print("\n".join(line for line in journal.splitlines()
                    if "suspended" in line or "unfinished" in line or "rolled back" in line))
