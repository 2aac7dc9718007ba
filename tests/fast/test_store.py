"""The SQLite state store: schema, upserts, LUN allocation and conflicts."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cspd.errors import Conflict, StateError
from cspd.store import MIGRATIONS, HostRow, Store, VolumeRow


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(tmp_path / "state" / "cspd.db")
    await store.open()
    yield store
    await store.close()


def host(uuid: str, iqns: list[str] | None = None) -> HostRow:
    return HostRow(
        id=f"id-{uuid}-{len(iqns or [])}", uuid=uuid, name=uuid,
        iqns=iqns or ["iqn.1994-05.com.redhat:a"], networks=[], wwpns=[], nqns=[],
        chap_user="", chap_password="", access_protocol="iscsi", created=1, updated=1,
    )


def volume(volume_id: str, name: str, group: str = "") -> VolumeRow:
    return VolumeRow(
        id=volume_id, name=name, lv_name=f"vol-{volume_id}", requested_size=1,
        description="", config={"targetScope": "volume"}, base_snapshot_id="",
        volume_group_id=group, unit_serial=f"serial-{volume_id}", target_scope="volume",
        created=1,
    )


async def test_schema_version_and_wal(store: Store) -> None:
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_database_file_is_private(store: Store) -> None:
    mode = stat.S_IMODE(store.path.stat().st_mode)
    assert mode == 0o600


async def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "cspd.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    conn.close()
    store = Store(path)
    with pytest.raises(StateError) as caught:
        await store.open()
    assert "newer" in caught.value.message
    await store.close()


async def test_reopen_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "cspd.db"
    first = Store(path)
    await first.open()
    await first.add_volume(volume("a", "pvc-a"))
    await first.close()
    second = Store(path)
    await second.open()
    assert (await second.get_volume_by_name("pvc-a")) is not None
    await second.close()


async def test_host_upsert_updates(store: Store) -> None:
    first = await store.upsert_host(host("u1"))
    second = await store.upsert_host(host("u1", ["iqn.1994-05.com.redhat:b", "iqn.x:y"]))
    assert second.id == first.id
    assert second.iqns == ["iqn.1994-05.com.redhat:b", "iqn.x:y"]


async def test_concurrent_host_upserts_one_row(store: Store) -> None:
    await asyncio.gather(*(store.upsert_host(host("same", ["iqn.a:" + str(i)])) for i in range(20)))
    assert len(await store.list_hosts()) == 1


async def test_duplicate_volume_name_conflicts(store: Store) -> None:
    await store.add_volume(volume("a", "pvc"))
    with pytest.raises(Conflict):
        await store.add_volume(volume("b", "pvc"))


async def test_volume_lun_is_zero(store: Store) -> None:
    await store.add_volume(volume("a", "pvc-a"))
    export = await store.add_export("a", "iqn.t:vol-a", "volume")
    assert export.lun_id == 0


async def test_group_luns_grow_and_are_not_reused(store: Store) -> None:
    for name in "abc":
        await store.add_volume(volume(name, f"pvc-{name}"))
    first = await store.add_export("a", "iqn.t:group", "group")
    second = await store.add_export("b", "iqn.t:group", "group")
    await store.delete_export("a")
    third = await store.add_export("c", "iqn.t:group", "group")
    assert [first.lun_id, second.lun_id, third.lun_id] == [0, 1, 2]


async def test_delete_host_with_access_conflicts(store: Store) -> None:
    row = await store.upsert_host(host("u"))
    await store.add_volume(volume("a", "pvc-a"))
    await store.add_export("a", "iqn.t:vol-a", "volume")
    await store.set_access("a", row.id, row.iqns)
    with pytest.raises(Conflict) as caught:
        await store.delete_host(row.id)
    assert "pvc-a" in caught.value.message
    await store.delete_access("a", row.id)
    await store.delete_host(row.id)
    assert await store.list_hosts() == []


async def test_delete_group_with_members_conflicts(store: Store) -> None:
    from cspd.store import VolumeGroupRow

    await store.add_volume_group(VolumeGroupRow("g", "group", "", {}, 1))
    await store.add_volume(volume("a", "pvc-a", group="g"))
    with pytest.raises(Conflict) as caught:
        await store.delete_volume_group("g")
    assert "pvc-a" in caught.value.message


async def test_snapshot_filters(store: Store) -> None:
    from cspd.store import SnapshotRow

    for i, (vol, name) in enumerate([("a", "s1"), ("a", "s2"), ("b", "s1")]):
        await store.add_snapshot(SnapshotRow(f"id{i}", vol, name, f"snap-{i}", 1, "", {}, "", i))
    assert len(await store.list_snapshots()) == 3
    assert len(await store.list_snapshots(volume_id="a")) == 2
    assert len(await store.list_snapshots(name="s1")) == 2
    assert len(await store.list_snapshots(volume_id="b", name="s1")) == 1
    with pytest.raises(Conflict):
        await store.add_snapshot(SnapshotRow("id9", "a", "s1", "snap-9", 1, "", {}, "", 9))
