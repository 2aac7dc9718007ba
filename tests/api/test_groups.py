"""Volume groups, snapshot groups and replication partners through the API, on the fakes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cspd.api.keys import PROVIDER
from cspd.errors import LvmError
from cspd.lvm import ThinLv
from cspd.provider.groups import GroupService, partner_id
from tests.api.conftest import Api, AppFactory

GIB = 1 << 30


def groups_of(api: Api) -> GroupService:
    app = api.client.app
    assert app is not None
    groups: GroupService = app[PROVIDER].groups
    return groups


def device_of(volume: dict[str, Any]) -> str:
    return f"cspd-vol-{volume['id']}"


async def make_group(api: Api, name: str = "vg-1", **extra: Any) -> Any:
    _, group = await api.call("POST", "/volume_groups", {"name": name, **extra}, expect=200)
    return group


async def publish(api: Api, volume: dict[str, Any], host_uuid: str = "host-1") -> None:
    await api.call(
        "PUT", f"/volumes/{volume['id']}/actions/publish",
        {"host_uuid": host_uuid, "access_protocol": "iscsi"}, expect=200,
    )


async def grouped_volumes(api: Api, group: dict[str, Any], count: int) -> list[Any]:
    return [
        await api.create_volume(f"pvc-{index}", GIB, volume_group_id=group["id"])
        for index in range(count)
    ]


async def snapshot_lvs(api: Api) -> set[str]:
    return {lv.name for lv in await api.lvm.list_thin_lvs() if lv.name.startswith("snap-")}


def assert_error(body: Any, code: str, *words: str) -> None:
    assert set(body) == {"errors"}
    error = body["errors"][0]
    assert error["code"] == code
    for word in words:
        assert word in error["message"], error["message"]


PARTNERS_CONFIG = """
[[replication_partners]]
name = "group-a"
url = "{alive}"
direction = "downstream"
[[replication_partners]]
name = "group-b"
url = "{dead}"
direction = "upstream"
"""


SnapshotHook = Callable[[str, str], Awaitable[None]]


def hook_snapshots(api: Api, before: SnapshotHook) -> list[tuple[str, set[str]]]:
    """Run ``before(origin, name)`` ahead of each LVM snapshot; record what was suspended."""
    seen: list[tuple[str, set[str]]] = []
    original = api.lvm.create_snapshot

    async def create_snapshot(
        origin: str, name: str, tags: Sequence[str] = (), *, writable: bool
    ) -> ThinLv:
        seen.append((origin, set(api.dm.suspended)))
        await before(origin, name)
        return await original(origin, name, tags, writable=writable)

    api.lvm.create_snapshot = create_snapshot  # type: ignore[method-assign]
    return seen


async def nothing(origin: str, name: str) -> None:
    return None


# -- volume groups -------------------------------------------------------------------------


async def test_create_volume_group(api: Api) -> None:
    group = await make_group(api, "vg-a", description="apps", config={"k": "v", "n": 2})
    assert group["name"] == "vg-a"
    assert group["description"] == "apps"
    assert group["volumes"] == []
    assert group["config"] == {"k": "v", "n": 2}
    assert isinstance(group["creation_time"], int)
    _, fetched = await api.call("GET", f"/volume_groups/{group['id']}", expect=200)
    assert fetched == group


async def test_create_volume_group_description_from_config(api: Api) -> None:
    group = await make_group(api, "vg-d", config={"description": "from class"})
    assert group["description"] == "from class"


async def test_create_volume_group_is_idempotent_by_name(api: Api) -> None:
    first = await make_group(api, "vg-i")
    second = await make_group(api, "vg-i", description="other")
    assert second["id"] == first["id"]
    _, groups = await api.call("GET", "/volume_groups", expect=200)
    assert [g["id"] for g in groups] == [first["id"]]


async def test_concurrent_creates_of_one_name_make_one_group(api: Api) -> None:
    results = await asyncio.gather(*(make_group(api, "vg-c") for _ in range(5)))
    assert len({group["id"] for group in results}) == 1
    assert len(await api.store.list_volume_groups()) == 1


async def test_create_volume_group_without_name_is_400(api: Api) -> None:
    status, body = await api.call("POST", "/volume_groups", {"description": "x"})
    assert status == 400
    assert_error(body, "Bad Request", "name")
    status, body = await api.call("POST", "/volume_groups", {"name": " "})
    assert status == 400


async def test_list_and_find_volume_groups(api: Api) -> None:
    first = await make_group(api, "vg-1")
    second = await make_group(api, "vg-2")
    _, groups = await api.call("GET", "/volume_groups", expect=200)
    assert [g["id"] for g in groups] == [first["id"], second["id"]]
    _, found = await api.call("GET", "/volume_groups?name=vg-2", expect=200)
    assert found == [second]


async def test_find_unknown_volume_group_is_404(api: Api) -> None:
    status, body = await api.call("GET", "/volume_groups?name=bob")
    assert status == 404
    assert_error(body, "Not Found", "Volume group with name bob not found.")


async def test_get_unknown_volume_group_is_404(api: Api) -> None:
    status, body = await api.call("GET", "/volume_groups/nope")
    assert status == 404
    assert_error(body, "Not Found", "nope")


async def test_both_prefixes_serve_groups(api: Api) -> None:
    group = await make_group(api, "vg-p")
    for prefix in ("/containers/v1", "/csp/containers/v1"):
        response = await api.client.get(
            f"{prefix}/volume_groups/{group['id']}", headers=api.headers()
        )
        assert response.status == 200
        response = await api.client.get(f"{prefix}/volume_groups/", headers=api.headers())
        assert response.status == 200


async def test_groups_need_a_token(api: Api) -> None:
    status, _ = await api.call("GET", "/volume_groups", headers={})
    assert status == 401


async def test_membership_at_create_and_by_edit(api: Api) -> None:
    group = await make_group(api, "vg-m")
    first = await api.create_volume("pvc-a", GIB, volume_group_id=group["id"])
    second = await api.create_volume("pvc-b", GIB)
    assert first["volume_group_id"] == group["id"]
    assert second["volume_group_id"] == ""

    _, second = await api.call(
        "PUT", f"/volumes/{second['id']}", {"id": second["id"], "volume_group_id": group["id"]},
        expect=200,
    )
    assert second["volume_group_id"] == group["id"]
    _, fetched = await api.call("GET", f"/volume_groups/{group['id']}", expect=200)
    assert fetched["volumes"] == [
        {"id": first["id"], "name": "pvc-a"}, {"id": second["id"], "name": "pvc-b"}
    ]

    await api.call(
        "PUT", f"/volumes/{first['id']}", {"id": first["id"], "volume_group_id": ""}, expect=200
    )
    _, fetched = await api.call("GET", f"/volume_groups/{group['id']}", expect=200)
    assert fetched["volumes"] == [{"id": second["id"], "name": "pvc-b"}]
    _, listed = await api.call("GET", "/volume_groups", expect=200)
    assert listed[0]["volumes"] == fetched["volumes"]
    _, volume = await api.call("GET", f"/volumes/{first['id']}", expect=200)
    assert volume["volume_group_id"] == ""


async def test_volume_create_in_unknown_group_is_404(api: Api) -> None:
    status, _ = await api.call(
        "POST", "/volumes", {"name": "pvc-x", "size": GIB, "volume_group_id": "nope"}
    )
    assert status == 404


async def test_delete_volume_group(api: Api) -> None:
    group = await make_group(api, "vg-del")
    status, body = await api.call("DELETE", f"/volume_groups/{group['id']}")
    assert status == 204
    assert body is None
    status, _ = await api.call("GET", f"/volume_groups/{group['id']}")
    assert status == 404


async def test_delete_unknown_volume_group_is_404(api: Api) -> None:
    status, body = await api.call("DELETE", "/volume_groups/nope")
    assert status == 404
    assert_error(body, "Not Found")


async def test_delete_volume_group_with_volumes_is_409(api: Api) -> None:
    group = await make_group(api, "vg-full")
    await grouped_volumes(api, group, 2)
    status, body = await api.call("DELETE", f"/volume_groups/{group['id']}")
    assert status == 409
    assert_error(body, "Conflict", "pvc-0", "pvc-1")
    assert await api.store.get_volume_group(group["id"]) is not None


async def test_delete_volume_group_with_snapshot_groups_is_409(api: Api) -> None:
    group = await make_group(api, "vg-s")
    [volume] = await grouped_volumes(api, group, 1)
    await api.call(
        "POST", "/snapshot_groups", {"name": "sg-1", "volume_group_id": group["id"]}, expect=200
    )
    await api.call(
        "PUT", f"/volumes/{volume['id']}", {"id": volume["id"], "volume_group_id": ""},
        expect=200,
    )
    status, body = await api.call("DELETE", f"/volume_groups/{group['id']}")
    assert status == 409
    assert_error(body, "Conflict", "sg-1")


# -- snapshot groups: reading ------------------------------------------------------------


async def test_list_snapshot_groups_needs_volume_group_id(api: Api) -> None:
    status, body = await api.call("GET", "/snapshot_groups")
    assert status == 400
    assert_error(body, "Bad Request", "volume_group_id")


async def test_snapshot_groups_of_unknown_group_404(api: Api) -> None:
    status, body = await api.call("GET", "/snapshot_groups?volume_group_id=nope")
    assert status == 404
    assert_error(body, "Not Found", "nope")


async def test_list_and_find_snapshot_groups(api: Api) -> None:
    group = await make_group(api, "vg-l")
    other = await make_group(api, "vg-o")
    await grouped_volumes(api, group, 1)
    await api.create_volume("pvc-other", GIB, volume_group_id=other["id"])
    _, empty = await api.call("GET", f"/snapshot_groups?volume_group_id={group['id']}", expect=200)
    assert empty == []
    created = []
    for name in ("sg-1", "sg-2"):
        _, made = await api.call(
            "POST", "/snapshot_groups", {"name": name, "volume_group_id": group["id"]},
            expect=200,
        )
        created.append(made)
    await api.call(
        "POST", "/snapshot_groups", {"name": "sg-x", "volume_group_id": other["id"]}, expect=200
    )
    _, listed = await api.call(
        "GET", f"/snapshot_groups?volume_group_id={group['id']}", expect=200
    )
    assert listed == created
    _, found = await api.call(
        "GET", f"/snapshot_groups?volume_group_id={group['id']}&name=sg-2", expect=200
    )
    assert found == [created[1]]
    status, body = await api.call(
        "GET", f"/snapshot_groups?volume_group_id={group['id']}&name=sg-x"
    )
    assert status == 404
    assert_error(body, "Not Found", "sg-x")


async def test_get_unknown_snapshot_group_is_404(api: Api) -> None:
    status, body = await api.call("GET", "/snapshot_groups/nope")
    assert status == 404
    assert_error(body, "Not Found", "nope")


# -- snapshot groups: creating ---------------------------------------------------------------


async def test_create_snapshot_group(api: Api) -> None:
    group = await make_group(api, "vg-c")
    volumes = await grouped_volumes(api, group, 3)
    status, made = await api.call(
        "POST", "/snapshot_groups",
        {"name": "sg-1", "volume_group_id": group["id"], "config": {"a": "b"}},
    )
    assert status == 200
    assert made["name"] == "sg-1"
    assert made["volume_group_id"] == group["id"]
    assert made["volume_group_name"] == "vg-c"
    assert made["config"] == {"a": "b"}
    assert isinstance(made["creation_time"], int)
    assert [(s["volume_id"], s["volume_name"], s["name"]) for s in made["snapshots"]] == [
        (v["id"], v["name"], "sg-1") for v in volumes
    ]
    _, fetched = await api.call("GET", f"/snapshot_groups/{made['id']}", expect=200)
    assert fetched == made

    # Each member is an ordinary snapshot of its volume.
    for member, volume in zip(made["snapshots"], volumes, strict=True):
        _, listed = await api.call("GET", f"/snapshots?volume_id={volume['id']}", expect=200)
        assert [s["id"] for s in listed] == [member["id"]]
        assert listed[0]["size"] == GIB
        assert listed[0]["ready_to_use"] is True
        row = await api.store.get_snapshot(member["id"])
        assert row is not None and row.snapshot_group_id == made["id"]
    assert len(await snapshot_lvs(api)) == 3


async def test_member_snapshot_can_be_cloned(api: Api) -> None:
    group = await make_group(api, "vg-k")
    await grouped_volumes(api, group, 2)
    _, made = await api.call(
        "POST", "/snapshot_groups", {"name": "sg-k", "volume_group_id": group["id"]}, expect=200
    )
    member = made["snapshots"][1]
    _, clone = await api.call(
        "POST", "/volumes",
        {"name": "pvc-clone", "size": GIB, "base_snapshot_id": member["id"], "clone": True},
        expect=200,
    )
    assert clone["base_snapshot_id"] == member["id"]
    lv = await api.lvm.get_thin_lv(f"vol-{clone['id']}")
    assert lv is not None
    assert lv.origin == f"snap-{member['id']}"


async def test_create_snapshot_group_is_idempotent_by_name(api: Api) -> None:
    group = await make_group(api, "vg-r")
    await grouped_volumes(api, group, 2)
    body = {"name": "sg-r", "volume_group_id": group["id"]}
    _, first = await api.call("POST", "/snapshot_groups", body, expect=200)
    before = await snapshot_lvs(api)
    _, second = await api.call("POST", "/snapshot_groups", body, expect=200)
    assert second == first
    assert await snapshot_lvs(api) == before


async def test_create_snapshot_group_bad_requests(api: Api) -> None:
    group = await make_group(api, "vg-b")
    status, body = await api.call("POST", "/snapshot_groups", {"name": "sg"})
    assert status == 400
    assert_error(body, "Bad Request", "volume_group_id")
    status, body = await api.call(
        "POST", "/snapshot_groups", {"name": "", "volume_group_id": group["id"]}
    )
    assert status == 400
    status, body = await api.call(
        "POST", "/snapshot_groups", {"name": "sg", "volume_group_id": "nope"}
    )
    assert status == 404
    assert_error(body, "Not Found", "nope")
    status, body = await api.call(
        "POST", "/snapshot_groups", {"name": "sg", "volume_group_id": group["id"]}
    )
    assert status == 400
    assert_error(body, "Bad Request", "no volumes")


async def test_snapshot_group_name_taken_409(api: Api) -> None:
    group = await make_group(api, "vg-n")
    volumes = await grouped_volumes(api, group, 2)
    await api.call(
        "POST", "/snapshots", {"name": "daily", "volume_id": volumes[1]["id"]}, expect=200
    )
    status, body = await api.call(
        "POST", "/snapshot_groups", {"name": "daily", "volume_group_id": group["id"]}
    )
    assert status == 409
    assert_error(body, "Conflict", "pvc-1", "daily")
    assert api.dm.events_of("suspend") == []
    assert len(await snapshot_lvs(api)) == 1


async def test_full_pool_is_insufficient_space(api: Api) -> None:
    group = await make_group(api, "vg-f")
    await grouped_volumes(api, group, 1)
    api.lvm.metadata_percent = 85.0
    status, body = await api.call(
        "POST", "/snapshot_groups", {"name": "sg", "volume_group_id": group["id"]}
    )
    assert status == 409
    assert "insufficient storage space" in body["errors"][0]["message"]
    assert await snapshot_lvs(api) == set()


async def test_published_members_are_held_during_every_snapshot(api: Api) -> None:
    group = await make_group(api, "vg-h")
    volumes = await grouped_volumes(api, group, 3)
    await api.register_host()
    await publish(api, volumes[0])
    await publish(api, volumes[2])
    held = {device_of(volumes[0]), device_of(volumes[2])}
    seen = hook_snapshots(api, nothing)
    api.dm.events.clear()

    await api.call(
        "POST", "/snapshot_groups", {"name": "sg-h", "volume_group_id": group["id"]}, expect=200
    )

    # Every LVM snapshot ran while all published members were suspended, and
    # the unpublished member has no I/O device to suspend.
    assert [origin for origin, _ in seen] == [f"vol-{v['id']}" for v in volumes]
    assert all(suspended == held for _, suspended in seen)
    assert api.dm.events_of("suspend") == [device_of(volumes[0]), device_of(volumes[2])]
    assert set(api.dm.events_of("resume")) == held
    assert [action for action, _ in api.dm.events] == ["suspend", "suspend", "resume", "resume"]
    assert api.dm.suspended == set()
    hold = groups_of(api).last_hold
    assert hold is not None and 0 <= hold < 5


async def test_unpublished_group_suspends_nothing(api: Api) -> None:
    group = await make_group(api, "vg-u")
    await grouped_volumes(api, group, 2)
    await api.call(
        "POST", "/snapshot_groups", {"name": "sg-u", "volume_group_id": group["id"]}, expect=200
    )
    assert api.dm.events_of("suspend") == []
    assert len(await snapshot_lvs(api)) == 2


async def test_snapshot_failing_mid_group_resumes_and_rolls_back(api: Api) -> None:
    group = await make_group(api, "vg-x")
    volumes = await grouped_volumes(api, group, 3)
    await api.register_host()
    for volume in volumes:
        await publish(api, volume)
    calls = 0

    async def fail_second(origin: str, name: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise LvmError(f"creating thin snapshot of {origin} failed: injected")

    hook_snapshots(api, fail_second)
    status, body = await api.call(
        "POST", "/snapshot_groups", {"name": "sg-x", "volume_group_id": group["id"]}
    )
    assert status == 500
    assert_error(body, "Internal Server Error")
    assert api.dm.suspended == set()
    assert set(api.dm.events_of("resume")) == {device_of(v) for v in volumes}
    assert await snapshot_lvs(api) == set()
    assert await api.store.list_snapshots() == []
    _, listed = await api.call(
        "GET", f"/snapshot_groups?volume_group_id={group['id']}", expect=200
    )
    assert listed == []
    # The volumes are untouched and a retry succeeds.
    _, made = await api.call(
        "POST", "/snapshot_groups", {"name": "sg-x", "volume_group_id": group["id"]}, expect=200
    )
    assert len(made["snapshots"]) == 3


async def test_failed_suspend_holds_nothing_and_takes_nothing(api: Api) -> None:
    group = await make_group(api, "vg-s")
    volumes = await grouped_volumes(api, group, 2)
    await api.register_host()
    for volume in volumes:
        await publish(api, volume)
    api.dm.fail_next("suspend", device=device_of(volumes[1]))
    status, _ = await api.call(
        "POST", "/snapshot_groups", {"name": "sg-s", "volume_group_id": group["id"]}
    )
    assert status == 500
    assert api.dm.suspended == set()
    assert api.dm.events_of("resume") == [device_of(volumes[0])]
    assert await snapshot_lvs(api) == set()


async def test_failed_resume_is_reported_and_rolled_back(api: Api) -> None:
    group = await make_group(api, "vg-rf")
    volumes = await grouped_volumes(api, group, 2)
    await api.register_host()
    for volume in volumes:
        await publish(api, volume)
    api.dm.fail_next("resume", device=device_of(volumes[0]))
    status, _ = await api.call(
        "POST", "/snapshot_groups", {"name": "sg-rf", "volume_group_id": group["id"]}
    )
    assert status == 500
    # The other member was resumed although the first one failed.
    assert api.dm.suspended == {device_of(volumes[0])}
    assert await snapshot_lvs(api) == set()
    # Start-up recovery resumes what stayed suspended.
    await groups_of(api).recover()
    assert api.dm.suspended == set()


async def test_hold_is_bounded_by_the_timeout(api: Api) -> None:
    group = await make_group(api, "vg-t")
    volumes = await grouped_volumes(api, group, 2)
    await api.register_host()
    for volume in volumes:
        await publish(api, volume)
    groups_of(api).hold_timeout = 0.2
    release = asyncio.Event()
    suspended_when_released: list[set[str]] = []

    async def slow(origin: str, name: str) -> None:
        if origin != f"vol-{volumes[1]['id']}":
            return
        # A hung lvcreate: it ends only once I/O was resumed, and like every
        # command it runs to its end even when its caller is cancelled.
        command = asyncio.ensure_future(asyncio.wait_for(release.wait(), timeout=5))
        try:
            await asyncio.shield(command)
        except asyncio.CancelledError:
            await command
            suspended_when_released.append(set(api.dm.suspended))
            raise

    hook_snapshots(api, slow)
    original_resume = api.dm.resume

    async def resume(names: Sequence[str]) -> None:
        await original_resume(names)
        release.set()

    api.dm.resume = resume  # type: ignore[method-assign]
    status, _ = await api.call(
        "POST", "/snapshot_groups", {"name": "sg-t", "volume_group_id": group["id"]}
    )
    assert status == 500
    assert suspended_when_released == [set()]
    hold = groups_of(api).last_hold
    assert hold is not None and 0.2 <= hold < 1.0
    assert api.dm.suspended == set()
    assert await snapshot_lvs(api) == set()
    assert await api.store.list_snapshots() == []


async def test_retry_after_an_interrupted_create_discards_its_remains(api: Api) -> None:
    group = await make_group(api, "vg-i")
    await grouped_volumes(api, group, 2)
    _, made = await api.call(
        "POST", "/snapshot_groups", {"name": "sg-i", "volume_group_id": group["id"]}, expect=200
    )
    # What a daemon stopped before writing the group record leaves behind.
    await api.store.delete_snapshot_group(made["id"])
    _, again = await api.call(
        "POST", "/snapshot_groups", {"name": "sg-i", "volume_group_id": group["id"]}, expect=200
    )
    assert again["id"] != made["id"]
    assert len(again["snapshots"]) == 2
    assert len(await snapshot_lvs(api)) == 2


# -- snapshot groups: deleting ------------------------------------------------------------------


async def make_snapshot_group(api: Api, members: int = 2) -> tuple[Any, list[Any], Any]:
    group = await make_group(api, "vg-del")
    volumes = await grouped_volumes(api, group, members)
    _, made = await api.call(
        "POST", "/snapshot_groups", {"name": "sg-d", "volume_group_id": group["id"]}, expect=200
    )
    return group, volumes, made


async def test_delete_snapshot_group_removes_its_snapshots(api: Api) -> None:
    _, volumes, made = await make_snapshot_group(api)
    status, body = await api.call("DELETE", f"/snapshot_groups/{made['id']}")
    assert status == 204
    assert body is None
    assert await snapshot_lvs(api) == set()
    for volume in volumes:
        _, listed = await api.call("GET", f"/snapshots?volume_id={volume['id']}", expect=200)
        assert listed == []
    status, _ = await api.call("GET", f"/snapshot_groups/{made['id']}")
    assert status == 404


async def test_delete_unknown_snapshot_group_is_404(api: Api) -> None:
    status, body = await api.call("DELETE", "/snapshot_groups/nope")
    assert status == 404
    assert_error(body, "Not Found", "nope")


async def test_delete_cloned_snapshot_group_409(api: Api) -> None:
    _, volumes, made = await make_snapshot_group(api, 3)
    member = made["snapshots"][2]
    await api.call(
        "POST", "/volumes",
        {"name": "pvc-clone", "size": GIB, "base_snapshot_id": member["id"], "clone": True},
        expect=200,
    )
    status, body = await api.call("DELETE", f"/snapshot_groups/{made['id']}")
    assert status == 409
    assert_error(body, "Conflict", "has a clone", volumes[2]["name"])
    assert len(await snapshot_lvs(api)) == 3
    _, fetched = await api.call("GET", f"/snapshot_groups/{made['id']}", expect=200)
    assert fetched == made


async def test_delete_snapshot_group_on_unknown_partner_is_404(api: Api) -> None:
    _, _, made = await make_snapshot_group(api)
    status, body = await api.call(
        "DELETE", f"/snapshot_groups/{made['id']}?replication_partner=nowhere"
    )
    assert status == 404
    assert_error(body, "Not Found", "Replication partner with name nowhere not found.")
    assert len(await snapshot_lvs(api)) == 2


async def test_delete_snapshot_group_on_configured_partner_is_400(make_api: AppFactory) -> None:
    unused = f"http://127.0.0.1:{closed_port()}/"
    api = await make_api(PARTNERS_CONFIG.format(alive=unused, dead=unused))
    _, _, made = await make_snapshot_group(api)
    status, body = await api.call(
        "DELETE", f"/snapshot_groups/{made['id']}?replication_partner=group-a", ["x"]
    )
    assert status == 400
    assert_error(body, "Bad Request", "does not replicate", "group-a")
    _, fetched = await api.call("GET", f"/snapshot_groups/{made['id']}", expect=200)
    assert fetched == made
    # An empty partner name is no partner: the local group is deleted.
    await api.call("DELETE", f"/snapshot_groups/{made['id']}?replication_partner=", expect=204)


# -- start-up recovery -------------------------------------------------------------------------


async def test_recover_resumes_only_cspd_devices(api: Api) -> None:
    group = await make_group(api, "vg-rec")
    volumes = await grouped_volumes(api, group, 2)
    await api.register_host()
    for volume in volumes:
        await publish(api, volume)
    await api.dm.suspend([device_of(v) for v in volumes])
    # LVM's own devices of a volume group named "cspd" share the name prefix.
    api.dm.add_foreign("cspd-pool-tpool", suspended=True)
    await groups_of(api).recover()
    assert api.dm.suspended == {"cspd-pool-tpool"}
    assert groups_of(api).problems == []


async def test_recover_rolls_back_an_unfinished_group(api: Api) -> None:
    group = await make_group(api, "vg-rb")
    volumes = await grouped_volumes(api, group, 2)
    _, kept = await api.call(
        "POST", "/snapshot_groups", {"name": "sg-kept", "volume_group_id": group["id"]},
        expect=200,
    )
    _, made = await api.call(
        "POST", "/snapshot_groups", {"name": "sg-gone", "volume_group_id": group["id"]},
        expect=200,
    )
    await api.store.delete_snapshot_group(made["id"])
    await groups_of(api).recover()
    for volume in volumes:
        _, listed = await api.call("GET", f"/snapshots?volume_id={volume['id']}", expect=200)
        assert [s["name"] for s in listed] == ["sg-kept"]
    assert len(await snapshot_lvs(api)) == 2
    _, fetched = await api.call("GET", f"/snapshot_groups/{kept['id']}", expect=200)
    assert fetched == kept


async def test_recover_keeps_and_reports_a_cloned_remain(api: Api) -> None:
    group = await make_group(api, "vg-cl")
    await grouped_volumes(api, group, 2)
    _, made = await api.call(
        "POST", "/snapshot_groups", {"name": "sg-c", "volume_group_id": group["id"]}, expect=200
    )
    member = made["snapshots"][0]
    await api.call(
        "POST", "/volumes",
        {"name": "pvc-clone", "size": GIB, "base_snapshot_id": member["id"], "clone": True},
        expect=200,
    )
    await api.store.delete_snapshot_group(made["id"])
    await groups_of(api).recover()
    remaining = await api.store.list_snapshots()
    assert [s.id for s in remaining] == [member["id"]]
    problems = groups_of(api).problems
    assert len(problems) == 1
    assert member["id"] in problems[0]


# -- replication partners ---------------------------------------------------------------------

def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def partner_server(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> TestServer:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=401)

    app = web.Application()
    app.router.add_get("/csp", refuse)
    return await aiohttp_server(app)


async def test_no_replication_partners(api: Api) -> None:
    _, partners = await api.call("GET", "/replication_partners", expect=200)
    assert partners == []
    status, body = await api.call("GET", "/replication_partners?name=any")
    assert status == 404
    assert_error(body, "Not Found", "any")


async def test_replication_partners_are_probed(
    make_api: AppFactory, partner_server: TestServer
) -> None:
    alive = str(partner_server.make_url("/csp"))
    dead = f"http://127.0.0.1:{closed_port()}/csp"
    api = await make_api(PARTNERS_CONFIG.format(alive=alive, dead=dead))
    _, partners = await api.call("GET", "/replication_partners", expect=200)
    assert partners == [
        {"id": partner_id("group-a"), "name": "group-a", "partner_name": "group-a",
         "repl_direction": "downstream", "is_alive": True},
        {"id": partner_id("group-b"), "name": "group-b", "partner_name": "group-b",
         "repl_direction": "upstream", "is_alive": False},
    ]
    _, found = await api.call("GET", "/replication_partners?name=group-b", expect=200)
    assert found == [partners[1]]
    status, body = await api.call("GET", "/replication_partners?name=group-c")
    assert status == 404
    assert_error(body, "Not Found", "Replication partner with name group-c not found.")


async def test_slow_partner_is_not_alive(make_api: AppFactory) -> None:
    # A listener that never responds: the probe gives up after probe_timeout.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
        api = await make_api(PARTNERS_CONFIG.format(alive=url, dead=url))
        groups_of(api).probe_timeout = 0.3
        loop = asyncio.get_running_loop()
        started = loop.time()
        _, partners = await api.call("GET", "/replication_partners", expect=200)
        assert loop.time() - started < 2
    assert [p["is_alive"] for p in partners] == [False, False]
