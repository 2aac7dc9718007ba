"""Volumes, snapshots and clones over HTTPS against cspd in the guest, on the real thin pool."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.lab.csp_client import CspClient
from tests.lab.lab import Lab

pytestmark = pytest.mark.lab

MIB = 1 << 20
ODD_SIZE = 64 * MIB + 4097
DATA_MIB = 4


@pytest.fixture
def csp(lab_cspd: Lab) -> Iterator[CspClient]:
    client = CspClient(lab_cspd.api_url, lab_cspd.username, lab_cspd.password)
    created: list[tuple[str, str]] = []
    client.created = created  # type: ignore[attr-defined]
    yield client
    # Delete in reverse order of creation: clones, snapshots, volumes.
    for kind, object_id in reversed(created):
        client.call("DELETE", f"/{kind}/{object_id}")


def track(client: CspClient, kind: str, object_id: str) -> None:
    client.created.append((kind, object_id))  # type: ignore[attr-defined]


def lv_digest(lab: Lab, lv_name: str, mib: int = DATA_MIB) -> str:
    result = lab.run(
        f"dd if=/dev/cspd/{lv_name} bs=1M count={mib} iflag=direct status=none | sha256sum"
    )
    return result.stdout.split()[0]


def test_volume_lifecycle(lab_cspd: Lab, csp: CspClient) -> None:
    name = f"pvc-{uuid.uuid4()}"
    volume = csp.create_volume(name, ODD_SIZE, description="lab volume")
    track(csp, "volumes", volume["id"])
    assert volume["size"] == ODD_SIZE
    assert volume["config"]["target_scope"] == "volume"

    lvs = lab_cspd.run(
        "lvs --reportformat json --units b --nosuffix -o lv_name,lv_size,lv_tags cspd"
    ).stdout
    assert f"vol-{volume['id']}" in lvs

    # A retried create returns the same volume and makes no second LV.
    again = csp.create_volume(name, ODD_SIZE)
    assert again["id"] == volume["id"]
    assert again["size"] == ODD_SIZE
    status, _ = csp.call("POST", "/volumes", {"name": name, "size": 2 * ODD_SIZE})
    assert status == 409

    _, found = csp.call("GET", f"/volumes?name={name}", expect=200)
    assert [v["id"] for v in found] == [volume["id"]]
    status, _ = csp.call("GET", "/volumes?name=no-such-volume")
    assert status == 404

    _, grown = csp.call(
        "PUT", f"/volumes/{volume['id']}",
        {"id": volume["id"], "size": 128 * MIB, "volume_group_id": ""}, expect=200,
    )
    assert grown["size"] == 128 * MIB
    size = lab_cspd.run(f"blockdev --getsize64 /dev/cspd/vol-{volume['id']}").stdout.strip()
    assert int(size) == 128 * MIB

    _, edited = csp.call(
        "PUT", f"/volumes/{volume['id']}", {"description": "edited"}, expect=200
    )
    assert edited["description"] == "edited"
    status, _ = csp.call("PUT", f"/volumes/{volume['id']}", {"size": 64 * MIB})
    assert status == 400


def test_snapshot_and_clones_keep_data(lab_cspd: Lab, csp: CspClient) -> None:
    volume = csp.create_volume(f"pvc-{uuid.uuid4()}", 64 * MIB)
    track(csp, "volumes", volume["id"])
    lv = f"vol-{volume['id']}"
    lab_cspd.run(
        f"dd if=/dev/urandom of=/dev/cspd/{lv} bs=1M count={DATA_MIB} oflag=direct status=none"
    )
    written = lv_digest(lab_cspd, lv)

    snapshot = csp.snapshot(volume["id"], f"snapshot-{uuid.uuid4()}")
    track(csp, "snapshots", snapshot["id"])
    assert snapshot["ready_to_use"] is True
    assert snapshot["size"] == 64 * MIB
    _, listed = csp.call("GET", f"/snapshots?volume_id={volume['id']}", expect=200)
    assert [s["id"] for s in listed] == [snapshot["id"]]

    # Data written after the snapshot must not reach its clones.
    lab_cspd.run(f"dd if=/dev/zero of=/dev/cspd/{lv} bs=1M count=1 oflag=direct status=none")

    clone = csp.create_volume(
        f"pvc-{uuid.uuid4()}", 64 * MIB, base_snapshot_id=snapshot["id"], clone=True
    )
    track(csp, "volumes", clone["id"])
    assert lv_digest(lab_cspd, f"vol-{clone['id']}") == written

    # Clone of a volume, the way the driver does it: a snapshot, then a clone.
    for_clone = csp.snapshot(volume["id"], "snap-for-clone-2026-12-04T19:30:00Z")
    track(csp, "snapshots", for_clone["id"])
    volume_clone = csp.create_volume(
        f"pvc-{uuid.uuid4()}", 96 * MIB, base_snapshot_id=for_clone["id"], clone=True
    )
    track(csp, "volumes", volume_clone["id"])
    assert volume_clone["size"] == 96 * MIB
    assert lv_digest(lab_cspd, f"vol-{volume_clone['id']}") != written

    # Clones are active and activate again at boot; snapshots are skipped.
    flags = lab_cspd.run(
        f"lvs --noheadings -o lv_name,lv_attr,lv_skip_activation cspd/vol-{clone['id']} "
        f"cspd/snap-{snapshot['id']}"
    ).stdout
    rows = {line.split()[0]: line.split()[1:] for line in flags.strip().splitlines()}
    assert rows[f"vol-{clone['id']}"][0][4] == "a"
    assert rows[f"snap-{snapshot['id']}"][0][4] != "a"

    status, body = csp.call("DELETE", f"/snapshots/{snapshot['id']}")
    assert status == 409
    assert "has a clone" in body["errors"][0]["message"]


def test_restart_keeps_objects_and_token(lab_cspd: Lab, csp: CspClient) -> None:
    volume = csp.create_volume(f"pvc-{uuid.uuid4()}", ODD_SIZE)
    track(csp, "volumes", volume["id"])
    snapshot = csp.snapshot(volume["id"], f"snapshot-{uuid.uuid4()}")
    track(csp, "snapshots", snapshot["id"])
    token = csp.token

    lab_cspd.restart_cspd()

    # The same token works without a new login.
    _, got = csp.call("GET", f"/volumes/{volume['id']}", expect=200, relogin=False)
    assert csp.token == token
    assert got["size"] == ODD_SIZE
    _, snap = csp.call("GET", f"/snapshots/{snapshot['id']}", expect=200, relogin=False)
    assert snap["volume_id"] == volume["id"]


def test_missing_volume_group_stops_start(lab_cspd: Lab) -> None:
    lab_cspd.put_file(
        "/tmp/cspd-bad.toml",
        b'[api]\nport = 8999\nlisten = "127.0.0.1"\n[state]\ndir = "/tmp/cspd-bad-state"\n'
        b'[lvm]\nvolume_group = "nosuchvg"\n',
    )
    result = lab_cspd.run(
        "timeout 120 /opt/cspd/bin/cspd --config /tmp/cspd-bad.toml serve", check=False
    )
    assert result.returncode != 0
    assert "nosuchvg" in result.stderr
