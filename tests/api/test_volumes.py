"""Volumes, clones and snapshots through the API, on the in-memory LVM stand-in."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api

GIB = 1 << 30
ODD_SIZE = GIB + 12345


async def lv_names(api: Api) -> set[str]:
    return {lv.name for lv in await api.lvm.list_thin_lvs()}


# -- create ----------------------------------------------------------------------


async def test_create_returns_requested_size(api: Api) -> None:
    volume = await api.create_volume("pvc-a", ODD_SIZE, description="first")
    assert volume["size"] == ODD_SIZE
    assert volume["name"] == "pvc-a"
    assert volume["description"] == "first"
    assert volume["published"] is False
    assert volume["config"]["target_scope"] == "volume"
    lv = await api.lvm.get_thin_lv(f"vol-{volume['id']}")
    assert lv is not None
    assert lv.size >= ODD_SIZE
    assert lv.size % (4 << 20) == 0


async def test_create_accepts_numeric_string_size(api: Api) -> None:
    volume = await api.create_volume("pvc-s", str(GIB))
    assert volume["size"] == GIB


@pytest.mark.parametrize("size", ["abc", -5, 0, "1.5"])
async def test_create_rejects_bad_size(api: Api, size: object) -> None:
    status, body = await api.call("POST", "/volumes", {"name": "bad", "size": size})
    assert status == 400
    assert "size" in body["errors"][0]["message"]


async def test_create_is_idempotent_by_name(api: Api) -> None:
    first = await api.create_volume("pvc-i", ODD_SIZE)
    second = await api.create_volume("pvc-i", ODD_SIZE)
    assert second["id"] == first["id"]
    assert second["size"] == ODD_SIZE
    assert len(await lv_names(api)) == 1


async def test_create_same_name_other_size_is_409(api: Api) -> None:
    await api.create_volume("pvc-c", GIB)
    status, body = await api.call("POST", "/volumes", {"name": "pvc-c", "size": 2 * GIB})
    assert status == 409
    assert body["errors"][0]["code"] == "Conflict"


async def test_create_with_csi_config_keys(api: Api) -> None:
    config = {"description": "from class", "targetScope": "group", "fsType": "xfs",
              "csi.storage.k8s.io/fstype": "xfs", "accessProtocol": "iscsi"}
    volume = await api.create_volume("pvc-cfg", GIB, config=config)
    assert volume["config"] == {"target_scope": "group"}
    assert volume["description"] == "from class"
    assert all(isinstance(v, str) for v in volume["config"].values())


async def test_create_bad_target_scope_is_400(api: Api) -> None:
    status, body = await api.call(
        "POST", "/volumes", {"name": "x", "size": GIB, "config": {"targetScope": "host"}}
    )
    assert status == 400
    assert "targetScope" in body["errors"][0]["message"]


async def test_create_lv_failure_leaves_nothing(api: Api) -> None:
    api.lvm.fail_next("create_thin")
    status, _ = await api.call("POST", "/volumes", {"name": "pvc-f", "size": GIB})
    assert status == 500
    assert await lv_names(api) == set()
    assert await api.store.list_volumes() == []
    retry = await api.create_volume("pvc-f", GIB)
    assert retry["name"] == "pvc-f"


async def test_create_past_pool_threshold_is_refused(api: Api) -> None:
    api.lvm.set_pool_usage(data_percent=91.0)
    status, body = await api.call("POST", "/volumes", {"name": "full", "size": GIB})
    assert status == 409
    assert "insufficient storage space" in body["errors"][0]["message"]
    assert await lv_names(api) == set()


async def test_create_past_metadata_threshold_is_refused(api: Api) -> None:
    api.lvm.set_pool_usage(metadata_percent=85.0)
    status, body = await api.call("POST", "/volumes", {"name": "full", "size": GIB})
    assert status == 409
    assert "insufficient storage space" in body["errors"][0]["message"]


async def test_create_in_unknown_group_is_404(api: Api) -> None:
    status, _ = await api.call(
        "POST", "/volumes", {"name": "g", "size": GIB, "volume_group_id": "nope"}
    )
    assert status == 404


# -- read ------------------------------------------------------------------------------


async def test_get_and_list(api: Api) -> None:
    a = await api.create_volume("pvc-1", GIB)
    b = await api.create_volume("pvc-2", 2 * GIB)
    _, got = await api.call("GET", f"/volumes/{a['id']}", expect=200)
    assert got["id"] == a["id"]
    _, listed = await api.call("GET", "/volumes", expect=200)
    assert {v["id"] for v in listed} == {a["id"], b["id"]}


async def test_list_uses_one_lvs_call(api: Api) -> None:
    for i in range(5):
        await api.create_volume(f"pvc-{i}", GIB)
    api.lvm.calls.clear()
    await api.call("GET", "/volumes", expect=200)
    assert api.lvm.calls.count("list_thin_lvs") == 1


async def test_find_by_name(api: Api) -> None:
    volume = await api.create_volume("pvc-find", GIB)
    _, found = await api.call("GET", "/volumes?name=pvc-find", expect=200)
    assert [v["id"] for v in found] == [volume["id"]]


async def test_find_by_unknown_name_is_404(api: Api) -> None:
    status, body = await api.call("GET", "/volumes?name=bob")
    assert status == 404
    assert body["errors"][0]["message"] == "Volume with name bob not found."


async def test_get_unknown_is_404(api: Api) -> None:
    status, body = await api.call("GET", "/volumes/0123")
    assert status == 404
    assert body["errors"][0]["code"] == "Not Found"


async def test_used_and_free_bytes_follow_lv(api: Api) -> None:
    volume = await api.create_volume("pvc-u", GIB)
    api.lvm.set_data_percent(f"vol-{volume['id']}", 25.0)
    _, got = await api.call("GET", f"/volumes/{volume['id']}", expect=200)
    assert got["used_bytes"] == GIB // 4
    assert got["free_bytes"] == GIB - GIB // 4


# -- edit and expand ---------------------------------------------------------------------


async def test_expand(api: Api) -> None:
    volume = await api.create_volume("pvc-e", GIB)
    _, got = await api.call(
        "PUT", f"/volumes/{volume['id']}",
        {"id": volume["id"], "size": 3 * GIB + 7, "volume_group_id": ""}, expect=200,
    )
    assert got["size"] == 3 * GIB + 7
    lv = await api.lvm.get_thin_lv(f"vol-{volume['id']}")
    assert lv is not None
    assert lv.size >= 3 * GIB + 7


async def test_shrink_is_400(api: Api) -> None:
    volume = await api.create_volume("pvc-sh", 2 * GIB)
    status, body = await api.call("PUT", f"/volumes/{volume['id']}", {"size": GIB})
    assert status == 400
    assert "shrink" in body["errors"][0]["message"]


async def test_expand_past_threshold_refused(api: Api) -> None:
    volume = await api.create_volume("pvc-x", GIB)
    api.lvm.set_pool_usage(data_percent=95.0)
    status, body = await api.call("PUT", f"/volumes/{volume['id']}", {"size": 2 * GIB})
    assert status == 409
    assert "insufficient storage space" in body["errors"][0]["message"]


async def test_edit_description_and_config(api: Api) -> None:
    volume = await api.create_volume("pvc-d", GIB)
    _, got = await api.call(
        "PUT", f"/volumes/{volume['id']}",
        {"id": volume["id"], "description": "new", "volume_group_id": "",
         "config": {"targetScope": "group"}},
        expect=200,
    )
    assert got["description"] == "new"
    assert got["config"]["target_scope"] == "group"


async def test_edit_unknown_config_key_is_400(api: Api) -> None:
    volume = await api.create_volume("pvc-k", GIB)
    status, body = await api.call(
        "PUT", f"/volumes/{volume['id']}", {"config": {"encrypted": True}}
    )
    assert status == 400
    assert body["errors"][0]["message"] == (
        "The request could not be understood by the server. Unexpected argument 'encrypted'."
    )


async def test_edit_unknown_volume_is_404(api: Api) -> None:
    status, _ = await api.call("PUT", "/volumes/none", {"description": "x"})
    assert status == 404


# -- delete ------------------------------------------------------------------------------


async def test_delete(api: Api) -> None:
    volume = await api.create_volume("pvc-del", GIB)
    await api.call("DELETE", f"/volumes/{volume['id']}?force=false", expect=204)
    assert await lv_names(api) == set()
    status, _ = await api.call("GET", f"/volumes/{volume['id']}")
    assert status == 404


async def test_delete_unknown_is_404(api: Api) -> None:
    status, _ = await api.call("DELETE", "/volumes/none")
    assert status == 404


async def test_delete_with_snapshot_is_409(api: Api) -> None:
    volume = await api.create_volume("pvc-ds", GIB)
    await api.call("POST", "/snapshots", {"name": "s1", "volume_id": volume["id"]}, expect=200)
    status, body = await api.call("DELETE", f"/volumes/{volume['id']}")
    assert status == 409
    assert "snapshot" in body["errors"][0]["message"]


# -- snapshots -----------------------------------------------------------------------------


async def test_snapshot_create_and_read(api: Api) -> None:
    volume = await api.create_volume("pvc-snap", ODD_SIZE)
    _, snap = await api.call(
        "POST", "/snapshots",
        {"name": "snapshot-1", "description": "d", "volume_id": volume["id"]}, expect=200,
    )
    assert snap["ready_to_use"] is True
    assert isinstance(snap["creation_time"], int)
    assert snap["size"] == ODD_SIZE
    assert snap["volume_id"] == volume["id"]
    assert snap["volume_name"] == "pvc-snap"
    _, got = await api.call("GET", f"/snapshots/{snap['id']}", expect=200)
    assert got["id"] == snap["id"]
    lv = await api.lvm.get_thin_lv(f"snap-{snap['id']}")
    assert lv is not None
    assert lv.origin == f"vol-{volume['id']}"


async def test_snapshot_idempotent(api: Api) -> None:
    volume = await api.create_volume("pvc-si", GIB)
    body = {"name": "snapshot-x", "volume_id": volume["id"]}
    _, first = await api.call("POST", "/snapshots", body, expect=200)
    _, second = await api.call("POST", "/snapshots", body, expect=200)
    assert first["id"] == second["id"]
    assert len(await lv_names(api)) == 2


async def test_snapshot_list_empty_is_200(api: Api) -> None:
    volume = await api.create_volume("pvc-ls", GIB)
    _, listed = await api.call("GET", f"/snapshots?volume_id={volume['id']}", expect=200)
    assert listed == []
    _, listed = await api.call(
        "GET", f"/snapshots?volume_id={volume['id']}&mode=exists", expect=200
    )
    assert listed == []


async def test_snapshot_list_all_and_by_volume(api: Api) -> None:
    a = await api.create_volume("pvc-la", GIB)
    b = await api.create_volume("pvc-lb", GIB)
    await api.call("POST", "/snapshots", {"name": "sa", "volume_id": a["id"]}, expect=200)
    await api.call("POST", "/snapshots", {"name": "sb", "volume_id": b["id"]}, expect=200)
    _, all_snaps = await api.call("GET", "/snapshots", expect=200)
    assert {s["name"] for s in all_snaps} == {"sa", "sb"}
    _, only_a = await api.call("GET", f"/snapshots/?volume_id={a['id']}", expect=200)
    assert [s["name"] for s in only_a] == ["sa"]


async def test_snapshot_find_by_name(api: Api) -> None:
    volume = await api.create_volume("pvc-fn", GIB)
    await api.call("POST", "/snapshots", {"name": "mine", "volume_id": volume["id"]}, expect=200)
    _, found = await api.call(
        "GET", f"/snapshots?name=mine&volume_id={volume['id']}", expect=200
    )
    assert [s["name"] for s in found] == ["mine"]
    status, _ = await api.call("GET", f"/snapshots?name=other&volume_id={volume['id']}")
    assert status == 404


async def test_snapshot_of_unknown_volume_is_404(api: Api) -> None:
    status, _ = await api.call("POST", "/snapshots", {"name": "s", "volume_id": "nope"})
    assert status == 404


async def test_snapshot_past_threshold_refused(api: Api) -> None:
    volume = await api.create_volume("pvc-st", GIB)
    api.lvm.set_pool_usage(data_percent=99.0)
    status, body = await api.call("POST", "/snapshots", {"name": "s", "volume_id": volume["id"]})
    assert status == 409
    assert "insufficient storage space" in body["errors"][0]["message"]


async def test_snapshot_failure_leaves_nothing(api: Api) -> None:
    volume = await api.create_volume("pvc-sf", GIB)
    api.lvm.fail_next("create_snapshot")
    status, _ = await api.call("POST", "/snapshots", {"name": "s", "volume_id": volume["id"]})
    assert status == 500
    assert await lv_names(api) == {f"vol-{volume['id']}"}
    assert await api.store.list_snapshots() == []


async def test_snapshot_delete(api: Api) -> None:
    volume = await api.create_volume("pvc-sd", GIB)
    _, snap = await api.call("POST", "/snapshots", {"name": "s", "volume_id": volume["id"]},
                             expect=200)
    await api.call("DELETE", f"/snapshots/{snap['id']}", expect=204)
    status, _ = await api.call("GET", f"/snapshots/{snap['id']}")
    assert status == 404
    assert await lv_names(api) == {f"vol-{volume['id']}"}


async def test_snapshot_delete_unknown_is_404(api: Api) -> None:
    status, _ = await api.call("DELETE", "/snapshots/nope")
    assert status == 404


# -- clones ---------------------------------------------------------------------------------


async def make_snapshot(api: Api, size: int = ODD_SIZE) -> tuple[dict, dict]:
    volume = await api.create_volume("pvc-origin", size)
    _, snap = await api.call(
        "POST", "/snapshots",
        {"name": "snap-for-clone-2026-12-04T19:30:00Z", "volume_id": volume["id"]}, expect=200,
    )
    return volume, snap


async def test_clone_from_snapshot(api: Api) -> None:
    _, snap = await make_snapshot(api)
    clone = await api.create_volume(
        "pvc-clone", ODD_SIZE, base_snapshot_id=snap["id"], clone=True
    )
    assert clone["base_snapshot_id"] == snap["id"]
    assert clone["clone"] is True
    assert clone["size"] == ODD_SIZE
    lv = await api.lvm.get_thin_lv(f"vol-{clone['id']}")
    assert lv is not None
    assert lv.origin == f"snap-{snap['id']}"
    assert lv.active is True
    assert lv.activation_skip is False


async def test_clone_larger_than_snapshot(api: Api) -> None:
    _, snap = await make_snapshot(api, GIB)
    clone = await api.create_volume("pvc-big", 2 * GIB, base_snapshot_id=snap["id"], clone=True)
    assert clone["size"] == 2 * GIB
    lv = await api.lvm.get_thin_lv(f"vol-{clone['id']}")
    assert lv is not None
    assert lv.size >= 2 * GIB


async def test_clone_smaller_than_snapshot_is_400(api: Api) -> None:
    _, snap = await make_snapshot(api, 2 * GIB)
    status, body = await api.call(
        "POST", "/volumes",
        {"name": "small", "size": GIB, "base_snapshot_id": snap["id"], "clone": True},
    )
    assert status == 400
    assert "at least" in body["errors"][0]["message"]


async def test_clone_idempotent(api: Api) -> None:
    _, snap = await make_snapshot(api)
    body = {"base_snapshot_id": snap["id"], "clone": True}
    first = await api.create_volume("pvc-ci", ODD_SIZE, **body)
    second = await api.create_volume("pvc-ci", ODD_SIZE, **body)
    assert first["id"] == second["id"]


async def test_clone_of_unknown_snapshot_is_404(api: Api) -> None:
    status, _ = await api.call(
        "POST", "/volumes", {"name": "c", "size": GIB, "base_snapshot_id": "x", "clone": True}
    )
    assert status == 404


async def test_clone_failure_leaves_nothing(api: Api) -> None:
    volume, snap = await make_snapshot(api)
    api.lvm.fail_next("create_snapshot")
    status, _ = await api.call(
        "POST", "/volumes",
        {"name": "c", "size": ODD_SIZE, "base_snapshot_id": snap["id"], "clone": True},
    )
    assert status == 500
    assert await lv_names(api) == {f"vol-{volume['id']}", f"snap-{snap['id']}"}
    assert [v.name for v in await api.store.list_volumes()] == ["pvc-origin"]


async def test_snapshot_with_clone_is_409(api: Api) -> None:
    _, snap = await make_snapshot(api)
    await api.create_volume("pvc-c2", ODD_SIZE, base_snapshot_id=snap["id"], clone=True)
    status, body = await api.call("DELETE", f"/snapshots/{snap['id']}")
    assert status == 409
    assert body["errors"][0]["message"] == (
        "The request could not be completed due to a conflict. Snapshot "
        "snap-for-clone-2026-12-04T19:30:00Z for volume pvc-origin has a clone."
    )


async def test_lv_names_are_generated(api: Api) -> None:
    volume = await api.create_volume("snapshot-looks:odd", GIB)
    assert await lv_names(api) == {f"vol-{volume['id']}"}

