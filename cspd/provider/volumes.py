"""Volumes, clones and snapshots on the thin pool."""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from cspd import wire
from cspd.errors import BadRequest, Conflict, NotFound
from cspd.provider.base import (
    LV_TAG,
    Backend,
    new_id,
    reported_size,
    snapshot_lv_name,
    volume_lv_name,
)
from cspd.store import SnapshotRow, VolumeRow

if TYPE_CHECKING:
    from cspd.lvm import ThinLv

log = logging.getLogger("cspd.provider")

TARGET_SCOPES = ("volume", "group")

# Storage-class keys a volume edit may change; anything else in an edit's
# config is rejected, as the CSP specification shows.
EDITABLE_CONFIG_KEYS = frozenset({"description", "targetScope"})

MAX_NAME_LENGTH = 255


def _check_name(name: str, what: str) -> None:
    if not name.strip():
        raise BadRequest(f"Missing mandatory field 'name': a {what} needs a non-empty name.")
    if len(name) > MAX_NAME_LENGTH:
        raise BadRequest(
            f"Invalid value for field 'name': longer than {MAX_NAME_LENGTH} characters."
        )


def _target_scope(config: dict[str, Any], default: str = "volume") -> str:
    value = config.get("targetScope", default)
    scope = str(value).strip().lower()
    if scope not in TARGET_SCOPES:
        raise BadRequest(
            f"Invalid value for config 'targetScope': {value!r}; expected 'volume' or 'group'."
        )
    return scope


class VolumeService:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.store = backend.store
        self.lvm = backend.lvm

    # -- reading ----------------------------------------------------------------

    async def _extent_size(self) -> int:
        return (await self.lvm.pool_usage()).extent_size

    def _volume(
        self, row: VolumeRow, lv: ThinLv, extent_size: int, published: bool
    ) -> wire.Volume:
        size = reported_size(row.requested_size, lv.size, extent_size)
        used = min(lv.used_bytes, size)
        return wire.Volume(
            id=row.id,
            name=row.name,
            size=size,
            description=row.description,
            published=published,
            base_snapshot_id=row.base_snapshot_id,
            volume_group_id=row.volume_group_id,
            clone=bool(row.base_snapshot_id),
            config={"target_scope": row.target_scope},
            used_bytes=used,
            free_bytes=size - used,
        )

    async def list_volumes(self, name: str | None = None) -> list[wire.Volume]:
        """List volumes; with ``name``, the one volume of that name or NotFound."""
        if name is not None:
            row = await self.store.get_volume_by_name(name)
            rows = [row] if row is not None else []
        else:
            rows = await self.store.list_volumes()
        lvs = {lv.name: lv for lv in await self.lvm.list_thin_lvs()}
        published = await self.store.published_volume_ids()
        extent_size = await self._extent_size()
        volumes = [
            self._volume(row, lvs[row.lv_name], extent_size, row.id in published)
            for row in rows
            if row.lv_name in lvs
        ]
        if name is not None and not volumes:
            raise NotFound(f"Volume with name {name} not found.")
        return volumes

    async def get_volume(self, volume_id: str) -> wire.Volume:
        row, lv = await self.backend.require_volume(volume_id)
        published = bool(await self.store.list_access(volume_id))
        return self._volume(row, lv, await self._extent_size(), published)

    # -- creating -----------------------------------------------------------------

    async def create_volume(self, request: wire.VolumeCreate) -> wire.Volume:
        """Create a volume or a clone; a retry with the same name and size returns it again."""
        _check_name(request.name, "volume")
        size = wire.parse_size(request.size)
        scope = _target_scope(request.config)
        description = request.description or str(request.config.get("description", ""))
        if request.base_snapshot_id and not request.clone:
            raise BadRequest(
                "Invalid request: 'base_snapshot_id' needs 'clone': true to create a clone."
            )
        if request.clone and not request.base_snapshot_id:
            raise BadRequest("Missing mandatory field 'base_snapshot_id' for a clone.")

        async with self.backend.pool_lock:
            existing = await self._existing_by_name(request.name)
            if existing is not None:
                return await self._idempotent_volume(existing, request, size)

            if request.volume_group_id:
                await self._require_group(request.volume_group_id)
            base: tuple[SnapshotRow, ThinLv] | None = None
            if request.clone:
                base = await self.backend.require_snapshot(request.base_snapshot_id)
                base_size = reported_size(base[0].size, base[1].size, await self._extent_size())
                if size < base_size:
                    raise BadRequest(
                        f"Invalid value for field 'size': a clone of snapshot "
                        f"{base[0].name} needs at least {base_size} bytes, got {size}."
                    )
            await self.backend.check_capacity("clone" if base else "volume create")

            volume_id = new_id()
            row = VolumeRow(
                id=volume_id,
                name=request.name,
                lv_name=volume_lv_name(volume_id),
                requested_size=size,
                description=description,
                config={"targetScope": scope},
                base_snapshot_id=request.base_snapshot_id if base else "",
                volume_group_id=request.volume_group_id,
                unit_serial=str(uuid.uuid4()),
                target_scope=scope,
                created=int(time.time()),
            )
            await self.store.add_volume(row)
            try:
                lv = await self._make_lv(row, base)
            except BaseException:
                await self._undo_create(row.lv_name, lambda: self.store.delete_volume(row.id))
                raise
            log.info(
                "volume created",
                extra={"volume_id": row.id, "volume_name": row.name, "lv": row.lv_name,
                       "size": size, "base_snapshot_id": row.base_snapshot_id},
            )
            return self._volume(row, lv, await self._extent_size(), published=False)

    async def _make_lv(self, row: VolumeRow, base: tuple[SnapshotRow, ThinLv] | None) -> ThinLv:
        if base is None:
            return await self.lvm.create_thin(row.lv_name, row.requested_size, (LV_TAG,))
        lv = await self.lvm.create_snapshot(base[1].name, row.lv_name, (LV_TAG,), writable=True)
        if lv.size < row.requested_size:
            lv = await self.lvm.extend(row.lv_name, row.requested_size)
        return lv

    async def _undo_create(self, lv_name: str, delete_row: Any) -> None:
        # Undo in the reverse order of creation; an undo step that fails is
        # logged, so that the original error still reaches the client.
        try:
            await self.lvm.remove(lv_name)
        except Exception:
            log.exception("undo: removing LV failed; it is left behind", extra={"lv": lv_name})
        try:
            await delete_row()
        except Exception:
            log.exception("undo: deleting the state record failed", extra={"lv": lv_name})

    async def _existing_by_name(self, name: str) -> VolumeRow | None:
        row = await self.store.get_volume_by_name(name)
        if row is None:
            return None
        if await self.lvm.get_thin_lv(row.lv_name) is None:
            # A create stopped between recording the volume and making its LV
            # (crash or failed undo): the record describes nothing, so replace it.
            log.warning(
                "replacing a volume record whose LV does not exist",
                extra={"volume_id": row.id, "volume_name": name, "lv": row.lv_name},
            )
            await self.store.delete_volume(row.id)
            return None
        return row

    async def _idempotent_volume(
        self, row: VolumeRow, request: wire.VolumeCreate, size: int
    ) -> wire.Volume:
        volume = await self.get_volume(row.id)
        if volume.size != size:
            raise Conflict(
                f"Volume with name {row.name} already exists with size {volume.size} bytes, "
                f"not {size}."
            )
        if request.clone and row.base_snapshot_id != request.base_snapshot_id:
            raise Conflict(
                f"Volume with name {row.name} already exists and is not a clone of snapshot "
                f"{request.base_snapshot_id}."
            )
        return volume

    async def _require_group(self, group_id: str) -> None:
        if await self.store.get_volume_group(group_id) is None:
            raise NotFound(f"Volume group with id {group_id} not found.")

    # -- changing -------------------------------------------------------------------

    async def edit_volume(self, volume_id: str, request: wire.VolumeEdit) -> wire.Volume:
        """Expand, describe, regroup or reconfigure a volume."""
        if request.id and request.id != volume_id:
            raise BadRequest(
                f"Invalid value for field 'id': {request.id} does not match the URL's {volume_id}."
            )
        async with self.backend.pool_lock:
            row, lv = await self.backend.require_volume(volume_id)
            changes: dict[str, Any] = {}

            if request.config:
                unexpected = sorted(set(request.config) - EDITABLE_CONFIG_KEYS)
                if unexpected:
                    raise BadRequest(
                        "The request could not be understood by the server. "
                        f"Unexpected argument '{unexpected[0]}'."
                    )
                if "targetScope" in request.config:
                    scope = _target_scope(request.config)
                    if scope != row.target_scope:
                        if await self.store.get_export(volume_id) is not None:
                            raise Conflict(
                                f"Volume {row.name} is published; unpublish it before "
                                "changing its target scope."
                            )
                        changes["target_scope"] = scope
                        changes["config"] = {**row.config, "targetScope": scope}
                if "description" in request.config and request.description is None:
                    changes["description"] = str(request.config["description"])

            if request.description is not None:
                changes["description"] = request.description
            if request.volume_group_id is not None and (
                request.volume_group_id != row.volume_group_id
            ):
                if request.volume_group_id:
                    await self._require_group(request.volume_group_id)
                changes["volume_group_id"] = request.volume_group_id

            if request.size is not None:
                await self._expand(row, lv, wire.parse_size(request.size), changes)

            if changes:
                await self.store.update_volume(volume_id, **changes)
                log.info(
                    "volume changed",
                    extra={"volume_id": volume_id, "fields": sorted(changes)},
                )
        return await self.get_volume(volume_id)

    async def _expand(
        self, row: VolumeRow, lv: ThinLv, size: int, changes: dict[str, Any]
    ) -> None:
        current = reported_size(row.requested_size, lv.size, await self._extent_size())
        if size < current:
            raise BadRequest(
                f"Invalid value for field 'size': volume {row.name} is {current} bytes and "
                f"cannot shrink to {size}."
            )
        if size == current:
            return
        await self.backend.check_capacity("volume expand")
        if size > lv.size:
            await self.lvm.extend(row.lv_name, size)
        changes["requested_size"] = size

    async def delete_volume(self, volume_id: str) -> None:
        """Delete an unpublished volume that has no snapshots."""
        async with self.backend.pool_lock, self.backend.volume_lock(volume_id):
            row, _ = await self.backend.require_volume(volume_id)
            if await self.store.list_access(volume_id):
                raise BadRequest("Cannot delete a published volume")
            snapshots = await self.store.list_snapshots(volume_id=volume_id)
            if snapshots:
                names = ", ".join(s.name for s in snapshots[:5])
                raise Conflict(
                    f"Volume {row.name} has {len(snapshots)} snapshots ({names}); "
                    "delete them first."
                )
            await self.lvm.remove(row.lv_name)
            await self.store.delete_volume(volume_id)
            log.info("volume deleted", extra={"volume_id": volume_id, "volume_name": row.name})

    # -- snapshots --------------------------------------------------------------------

    def _snapshot(
        self, row: SnapshotRow, lv: ThinLv, volume_name: str, extent_size: int
    ) -> wire.Snapshot:
        return wire.Snapshot(
            id=row.id,
            name=row.name,
            size=reported_size(row.size, lv.size, extent_size),
            description=row.description,
            volume_id=row.volume_id,
            volume_name=volume_name,
            creation_time=row.created,
            ready_to_use=True,
            config=row.config,
        )

    async def list_snapshots(
        self, volume_id: str | None = None, name: str | None = None
    ) -> list[wire.Snapshot]:
        """List snapshots; by name, the matching ones or NotFound, because the client
        reads an empty list there as an error."""
        rows = await self.store.list_snapshots(volume_id=volume_id, name=name)
        lvs = {lv.name: lv for lv in await self.lvm.list_thin_lvs()}
        names = {v.id: v.name for v in await self.store.list_volumes()}
        extent_size = await self._extent_size()
        snapshots = [
            self._snapshot(row, lvs[row.lv_name], names.get(row.volume_id, ""), extent_size)
            for row in rows
            if row.lv_name in lvs
        ]
        if name is not None and not snapshots:
            raise NotFound(f"Snapshot with name {name} not found.")
        return snapshots

    async def get_snapshot(self, snapshot_id: str) -> wire.Snapshot:
        row, lv = await self.backend.require_snapshot(snapshot_id)
        volume = await self.store.get_volume(row.volume_id)
        return self._snapshot(
            row, lv, volume.name if volume else "", await self._extent_size()
        )

    async def create_snapshot(
        self, request: wire.SnapshotCreate, *, snapshot_group_id: str = ""
    ) -> wire.Snapshot:
        """Take a thin snapshot; a retry with the same name and volume returns it again."""
        _check_name(request.name, "snapshot")
        if not request.volume_id:
            raise BadRequest("Missing mandatory field 'volume_id'.")
        async with self.backend.pool_lock:
            return await self.create_snapshot_locked(request, snapshot_group_id)

    async def create_snapshot_locked(
        self, request: wire.SnapshotCreate, snapshot_group_id: str
    ) -> wire.Snapshot:
        """Take a snapshot while the caller holds the pool lock."""
        volume, volume_lv = await self.backend.require_volume(request.volume_id)
        existing = await self.store.list_snapshots(volume_id=volume.id, name=request.name)
        if existing:
            row = existing[0]
            lv = await self.lvm.get_thin_lv(row.lv_name)
            if lv is not None:
                return self._snapshot(row, lv, volume.name, await self._extent_size())
            log.warning(
                "replacing a snapshot record whose LV does not exist",
                extra={"snapshot_id": row.id, "lv": row.lv_name},
            )
            await self.store.delete_snapshot(row.id)

        await self.backend.check_capacity("snapshot create")
        extent_size = await self._extent_size()
        snapshot_id = new_id()
        row = SnapshotRow(
            id=snapshot_id,
            volume_id=volume.id,
            name=request.name,
            lv_name=snapshot_lv_name(snapshot_id),
            size=reported_size(volume.requested_size, volume_lv.size, extent_size),
            description=request.description,
            config=request.config,
            snapshot_group_id=snapshot_group_id,
            created=int(time.time()),
        )
        await self.store.add_snapshot(row)
        try:
            lv = await self.lvm.create_snapshot(
                volume.lv_name, row.lv_name, (LV_TAG,), writable=False
            )
        except BaseException:
            await self._undo_create(row.lv_name, lambda: self.store.delete_snapshot(row.id))
            raise
        log.info(
            "snapshot created",
            extra={"snapshot_id": row.id, "snapshot_name": row.name, "volume_id": volume.id,
                   "lv": row.lv_name},
        )
        return self._snapshot(row, lv, volume.name, extent_size)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        """Delete a snapshot; raises Conflict while a clone made from it exists."""
        async with self.backend.pool_lock:
            await self.delete_snapshot_locked(snapshot_id)

    async def delete_snapshot_locked(self, snapshot_id: str) -> None:
        row, _lv = await self.backend.require_snapshot(snapshot_id)
        await self.check_snapshot_deletable(row)
        await self.lvm.remove(row.lv_name)
        await self.store.delete_snapshot(row.id)
        log.info("snapshot deleted", extra={"snapshot_id": row.id, "lv": row.lv_name})

    async def check_snapshot_deletable(self, row: SnapshotRow) -> None:
        """Raise Conflict while a clone of the snapshot exists.

        A clone is either a thin LV whose origin is the snapshot's LV or a
        volume record that names the snapshot as its base.
        """
        lvs = await self.lvm.list_thin_lvs()
        lv_names = {lv.name for lv in lvs}
        has_clone = any(lv.origin == row.lv_name for lv in lvs) or any(
            v.base_snapshot_id == row.id and v.lv_name in lv_names
            for v in await self.store.list_volumes()
        )
        if has_clone:
            volume = await self.store.get_volume(row.volume_id)
            volume_name = volume.name if volume else row.volume_id
            raise Conflict(
                "The request could not be completed due to a conflict. "
                f"Snapshot {row.name} for volume {volume_name} has a clone."
            )
