"""Hosts, publish and unpublish through the API, on the in-memory LIO stand-in."""

from __future__ import annotations

import asyncio

import pytest

from tests.api.conftest import HOST_IQN, Api

GIB = 1 << 30
PREFIX_IQN = "iqn.2026-12.io.example.cspd"


async def publish(api: Api, volume_id: str, host_uuid: str = "host-1", expect: int = 200) -> dict:
    _, info = await api.call(
        "PUT", f"/volumes/{volume_id}/actions/publish",
        {"host_uuid": host_uuid, "access_protocol": "iscsi"}, expect=expect,
    )
    return info


async def unpublish(api: Api, volume_id: str, host_uuid: str = "host-1") -> None:
    await api.call(
        "PUT", f"/volumes/{volume_id}/actions/unpublish", {"host_uuid": host_uuid}, expect=204
    )


# -- hosts -----------------------------------------------------------------------------


async def test_register_host(api: Api) -> None:
    host = await api.register_host("uuid-1", networks=["192.0.2.50/24"])
    assert host["uuid"] == "uuid-1"
    assert host["iqns"] == [HOST_IQN]
    assert "chap_password" not in host


async def test_register_host_is_upsert(api: Api) -> None:
    first = await api.register_host("uuid-1")
    second = await api.register_host(
        "uuid-1", iqns=["iqn.1994-05.com.redhat:other"], chap_user="u", chap_password="s" * 12
    )
    assert second["id"] == first["id"]
    assert second["iqns"] == ["iqn.1994-05.com.redhat:other"]
    assert len(await api.store.list_hosts()) == 1


async def test_concurrent_first_registrations_make_one_host(api: Api) -> None:
    await asyncio.gather(*(api.register_host("uuid-c") for _ in range(10)))
    assert len(await api.store.list_hosts()) == 1


async def test_host_without_initiators_is_400(api: Api) -> None:
    status, body = await api.call("POST", "/hosts", {"uuid": "u", "name": "n"})
    assert status == 400
    assert "iqns" in body["errors"][0]["message"]


async def test_host_with_invalid_iqn_is_400(api: Api) -> None:
    status, body = await api.call(
        "POST", "/hosts", {"uuid": "u", "name": "n", "iqns": ["not-an-iqn"]}
    )
    assert status == 400
    assert "not-an-iqn" in body["errors"][0]["message"]


async def test_host_with_short_chap_secret_is_400(api: Api) -> None:
    status, _ = await api.call(
        "POST", "/hosts",
        {"uuid": "u", "name": "n", "iqns": [HOST_IQN], "chap_user": "u", "chap_password": "x"},
    )
    assert status == 400


async def test_delete_host(api: Api) -> None:
    host = await api.register_host("uuid-d")
    await api.call("DELETE", f"/hosts/{host['id']}", expect=204)
    assert await api.store.list_hosts() == []


async def test_delete_unknown_host_is_404(api: Api) -> None:
    status, _ = await api.call("DELETE", "/hosts/nope")
    assert status == 404


async def test_delete_host_with_published_volume_is_409(api: Api) -> None:
    host = await api.register_host()
    volume = await api.create_volume()
    await publish(api, volume["id"])
    status, body = await api.call("DELETE", f"/hosts/{host['id']}")
    assert status == 409
    assert "pvc-1" in body["errors"][0]["message"]


# -- publish ---------------------------------------------------------------------------------


async def test_publish_volume_scope(api: Api) -> None:
    await api.register_host()
    volume = await api.create_volume()
    info = await publish(api, volume["id"])

    target = f"{PREFIX_IQN}:vol-{volume['id']}"
    assert info["access_protocol"] == "iscsi"
    assert info["target_names"] == [target]
    assert info["lun_id"] == 0
    assert info["discovery_ips"] == ["192.0.2.10", "192.0.2.11"]
    assert info["PeerArrayDetails"] == []
    assert "chap_user" not in info

    row = await api.store.get_volume(volume["id"])
    assert row is not None
    serial = row.unit_serial.replace("-", "")
    assert info["serial_number"] == "6001405" + serial[:25]

    state = await api.lio.read_state()
    lv_name = f"vol-{volume['id']}"
    assert state.backstores[lv_name].unit_serial == row.unit_serial
    assert state.backstores[lv_name].device == f"/dev/mapper/cspd-{lv_name}"
    assert state.targets[target].luns == {0: lv_name}
    assert state.targets[target].acls == {HOST_IQN: {0: 0}}

    _, got = await api.call("GET", f"/volumes/{volume['id']}", expect=200)
    assert got["published"] is True


async def test_publish_twice_same_answer(api: Api) -> None:
    await api.register_host()
    volume = await api.create_volume()
    first = await publish(api, volume["id"])
    state_before = await api.lio.read_state()
    second = await publish(api, volume["id"])
    assert second == first
    assert await api.lio.read_state() == state_before


async def test_publish_with_chap(api: Api) -> None:
    await api.register_host(chap_user="chapuser", chap_password="chap-secret-123")
    volume = await api.create_volume()
    info = await publish(api, volume["id"])
    assert info["chap_user"] == "chapuser"
    assert info["chap_password"] == "chap-secret-123"


async def test_publish_unknown_host_is_404(api: Api) -> None:
    volume = await api.create_volume()
    status, _ = await api.call(
        "PUT", f"/volumes/{volume['id']}/actions/publish",
        {"host_uuid": "ghost", "access_protocol": "iscsi"},
    )
    assert status == 404


async def test_publish_unknown_volume_is_404(api: Api) -> None:
    await api.register_host()
    status, _ = await api.call(
        "PUT", "/volumes/none/actions/publish", {"host_uuid": "host-1", "access_protocol": "iscsi"}
    )
    assert status == 404


@pytest.mark.parametrize("protocol", ["fc", "nvmetcp"])
async def test_publish_other_protocols_is_400(api: Api, protocol: str) -> None:
    await api.register_host()
    volume = await api.create_volume()
    status, body = await api.call(
        "PUT", f"/volumes/{volume['id']}/actions/publish",
        {"host_uuid": "host-1", "access_protocol": protocol},
    )
    assert status == 400
    assert "iscsi" in body["errors"][0]["message"]


async def test_publish_failure_leaves_nothing(api: Api) -> None:
    await api.register_host()
    volume = await api.create_volume()
    api.lio.fail_next("ensure_acl")
    status, _ = await api.call(
        "PUT", f"/volumes/{volume['id']}/actions/publish",
        {"host_uuid": "host-1", "access_protocol": "iscsi"},
    )
    assert status == 500
    state = await api.lio.read_state()
    assert state.backstores == {}
    assert state.targets == {}
    assert await api.store.list_exports() == []
    assert await api.store.list_access() == []
    assert api.dm.devices == {}
    _, got = await api.call("GET", f"/volumes/{volume['id']}", expect=200)
    assert got["published"] is False


async def test_group_scope_distinct_luns(api: Api) -> None:
    await api.register_host()
    a = await api.create_volume("pvc-a", config={"targetScope": "group"})
    b = await api.create_volume("pvc-b", config={"targetScope": "group"})
    info_a = await publish(api, a["id"])
    info_b = await publish(api, b["id"])
    assert info_a["target_names"] == info_b["target_names"] == [f"{PREFIX_IQN}:group"]
    assert info_a["lun_id"] != info_b["lun_id"]
    assert info_a["serial_number"] != info_b["serial_number"]


async def test_group_scope_lun_ids_not_reused(api: Api) -> None:
    await api.register_host()
    a = await api.create_volume("pvc-a", config={"targetScope": "group"})
    b = await api.create_volume("pvc-b", config={"targetScope": "group"})
    c = await api.create_volume("pvc-c", config={"targetScope": "group"})
    first = await publish(api, a["id"])
    await publish(api, b["id"])
    await unpublish(api, a["id"])
    third = await publish(api, c["id"])
    assert third["lun_id"] != first["lun_id"]
    state = await api.lio.read_state()
    target = state.targets[f"{PREFIX_IQN}:group"]
    assert len(target.luns) == 2


async def test_unpublish_removes_everything(api: Api) -> None:
    await api.register_host()
    volume = await api.create_volume()
    await publish(api, volume["id"])
    await unpublish(api, volume["id"])
    state = await api.lio.read_state()
    assert state.backstores == {}
    assert state.targets == {}
    assert api.dm.devices == {}
    _, got = await api.call("GET", f"/volumes/{volume['id']}", expect=200)
    assert got["published"] is False


async def test_unpublish_without_access_is_success(api: Api) -> None:
    await api.register_host()
    volume = await api.create_volume()
    await unpublish(api, volume["id"])
    state = await api.lio.read_state()
    assert state.targets == {}


async def test_unpublish_one_of_two_hosts(api: Api) -> None:
    await api.register_host("host-1")
    await api.register_host("host-2", iqns=["iqn.1994-05.com.redhat:node2"])
    volume = await api.create_volume()
    await publish(api, volume["id"], "host-1")
    await publish(api, volume["id"], "host-2")
    await unpublish(api, volume["id"], "host-1")
    state = await api.lio.read_state()
    target = state.targets[f"{PREFIX_IQN}:vol-{volume['id']}"]
    assert set(target.acls) == {"iqn.1994-05.com.redhat:node2"}
    _, got = await api.call("GET", f"/volumes/{volume['id']}", expect=200)
    assert got["published"] is True


async def test_delete_published_volume_is_400(api: Api) -> None:
    await api.register_host()
    volume = await api.create_volume()
    await publish(api, volume["id"])
    status, body = await api.call("DELETE", f"/volumes/{volume['id']}")
    assert status == 400
    assert body["errors"][0]["message"] == "Cannot delete a published volume"


async def test_delete_after_unpublish_leaves_no_backstore(api: Api) -> None:
    await api.register_host()
    volume = await api.create_volume()
    await publish(api, volume["id"])
    await unpublish(api, volume["id"])
    await api.call("DELETE", f"/volumes/{volume['id']}", expect=204)
    state = await api.lio.read_state()
    assert state.backstores == {}


async def test_republish_after_iqn_change_drops_old_acl(api: Api) -> None:
    await api.register_host()
    volume = await api.create_volume()
    await publish(api, volume["id"])
    await api.register_host(iqns=["iqn.1994-05.com.redhat:renamed"])
    await publish(api, volume["id"])
    state = await api.lio.read_state()
    target = state.targets[f"{PREFIX_IQN}:vol-{volume['id']}"]
    assert set(target.acls) == {"iqn.1994-05.com.redhat:renamed"}


async def test_ten_concurrent_publishes(api: Api) -> None:
    volumes = [await api.create_volume(f"pvc-{i}") for i in range(10)]

    async def one(volume_id: str) -> dict:
        await api.register_host("node-x")
        return await publish(api, volume_id, "node-x")

    infos = await asyncio.gather(*(one(v["id"]) for v in volumes))
    assert len(await api.store.list_hosts()) == 1
    assert len({info["target_names"][0] for info in infos}) == 10
    state = await api.lio.read_state()
    assert len(state.targets) == 10


async def test_lio_saved_after_publish(api: Api) -> None:
    await api.register_host()
    volume = await api.create_volume()
    saves = api.lio.saves
    await publish(api, volume["id"])
    assert api.lio.saves > saves
