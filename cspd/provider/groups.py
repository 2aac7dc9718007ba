"""Volume groups, crash-consistent snapshot groups and replication partners.

A volume group is a record; a volume's membership lives only in its own
``volume_group_id``, so a group's volume list and its volumes always agree.

A snapshot group takes one thin snapshot of every member of a volume group at
one point in time. LVM cannot snapshot several LVs at once, so the point in
time is made by holding I/O: every published member is exported through a
dm-linear device of cspd's own (see cspd.dm). Those devices are suspended,
which finishes the writes in flight and queues new ones, while LVM snapshots
each LV beneath, and then they are all resumed. A write queued on one member
cannot have completed, so no write issued after it on another member can be
in that member's snapshot either: the snapshots form a consistent cut.
Unpublished members take no I/O and need no suspend.

Initiators give up on I/O held for long (over a minute was seen to fail), so
the hold is bounded by ``hold_timeout``: past it, I/O is resumed at once and
the group is rolled back. I/O is resumed on every path out, also on errors
and cancellation.

A snapshot group's record is written only after all its member snapshots
exist, so member snapshots whose group has no record are the remains of an
interrupted create. ``recover`` removes them at start-up, after it has
resumed any device a stopped daemon left suspended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

import aiohttp

from cspd import wire
from cspd.config import ReplicationPartnerConfig
from cspd.dm import DEVICE_PREFIX, DmError
from cspd.errors import BackendError, BadRequest, Conflict, NotFound
from cspd.provider.base import (
    LV_TAG,
    Backend,
    io_device_name,
    new_id,
    reported_size,
    snapshot_lv_name,
)
from cspd.provider.volumes import VolumeService, _check_name
from cspd.store import SnapshotGroupRow, SnapshotRow, VolumeGroupRow, VolumeRow

if TYPE_CHECKING:
    from cspd.dm import DeviceMapper
    from cspd.lvm import ThinLv

log = logging.getLogger("cspd.provider")

T = TypeVar("T")

# Maximum time, in seconds, that a snapshot group may hold the I/O of its
# members, from the first suspend to the last resume. Linux initiators abort
# a SCSI command after 30 s by default; this stays well below that.
DEFAULT_HOLD_TIMEOUT = 15.0

# Seconds a replication partner has to respond to the liveness probe.
DEFAULT_PROBE_TIMEOUT = 2.0

# Namespace of the stable ids of configured replication partners.
_PARTNER_NAMESPACE = uuid.UUID("90c8c9b1-4350-44e6-aedb-042a33416be5")


def partner_id(name: str) -> str:
    """Return the id of the replication partner ``name``; the same on every start."""
    return uuid.uuid5(_PARTNER_NAMESPACE, name).hex


class GroupService:
    """Volume groups, snapshot groups and replication partners; see the module docstring.

    ``hold_timeout`` bounds how long a snapshot group holds I/O and
    ``probe_timeout`` how long a replication partner has to respond, both in
    seconds. ``last_hold`` is how long the last snapshot group held I/O, in
    seconds, and ``problems`` lists what ``recover`` could not repair.
    """

    def __init__(
        self,
        backend: Backend,
        volumes: VolumeService,
        dm: DeviceMapper,
        *,
        hold_timeout: float = DEFAULT_HOLD_TIMEOUT,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
    ) -> None:
        self.backend = backend
        self.store = backend.store
        self.lvm = backend.lvm
        self.volumes = volumes
        self.dm = dm
        self.hold_timeout = hold_timeout
        self.probe_timeout = probe_timeout
        self.last_hold: float | None = None
        self.problems: list[str] = []

    # -- volume groups ------------------------------------------------------------------

    async def list_volume_groups(self, name: str | None = None) -> list[wire.VolumeGroup]:
        """List volume groups; with ``name``, the one group of that name or NotFound.

        A lookup by name returns a list, as the lookups of volumes and
        snapshots by name do in the HPE CSI driver's client.
        """
        if name is not None:
            row = await self.store.get_volume_group_by_name(name)
            if row is None:
                raise NotFound(f"Volume group with name {name} not found.")
            rows = [row]
        else:
            rows = await self.store.list_volume_groups()
        members = _members_by_group(await self.store.list_volumes())
        return [_volume_group(row, members.get(row.id, [])) for row in rows]

    async def get_volume_group(self, group_id: str) -> wire.VolumeGroup:
        row = await self._require_volume_group(group_id)
        return _volume_group(row, await self.store.list_volumes_in_group(row.id))

    async def create_volume_group(self, request: wire.VolumeGroupCreate) -> wire.VolumeGroup:
        """Create a volume group; a create with the name of an existing group returns it."""
        _check_name(request.name, "volume group")
        existing = await self.store.get_volume_group_by_name(request.name)
        if existing is not None:
            return await self.get_volume_group(existing.id)
        row = VolumeGroupRow(
            id=new_id(),
            name=request.name,
            description=request.description or str(request.config.get("description", "")),
            config=request.config,
            created=int(time.time()),
        )
        try:
            await self.store.add_volume_group(row)
        except Conflict:
            # A concurrent create of the same name won, so return its group.
            winner = await self.store.get_volume_group_by_name(request.name)
            if winner is None:
                raise
            return await self.get_volume_group(winner.id)
        log.info(
            "volume group created",
            extra={"volume_group_id": row.id, "volume_group_name": row.name},
        )
        return _volume_group(row, [])

    async def delete_volume_group(self, group_id: str) -> None:
        """Delete a volume group; Conflict while it has volumes or snapshot groups."""
        async with self.backend.pool_lock:
            row = await self._require_volume_group(group_id)
            snapshot_groups = await self.store.list_snapshot_groups(row.id)
            if snapshot_groups:
                names = ", ".join(group.name for group in snapshot_groups[:5])
                raise Conflict(
                    f"Volume group {row.name} still has {len(snapshot_groups)} snapshot "
                    f"groups ({names}); delete them first."
                )
            await self.store.delete_volume_group(row.id)
        log.info(
            "volume group deleted", extra={"volume_group_id": row.id, "volume_group_name": row.name}
        )

    async def _require_volume_group(self, group_id: str) -> VolumeGroupRow:
        row = await self.store.get_volume_group(group_id)
        if row is None:
            raise NotFound(f"Volume group with id {group_id} not found.")
        return row

    # -- snapshot groups: reading ----------------------------------------------------------

    async def list_snapshot_groups(
        self, volume_group_id: str | None, name: str | None = None
    ) -> list[wire.SnapshotGroup]:
        """List the snapshot groups of a volume group; with ``name``, those of that name.

        Raises BadRequest without ``volume_group_id``, which the specification
        makes mandatory, NotFound for an unknown volume group, and NotFound
        when ``name`` matches no snapshot group.
        """
        if not volume_group_id:
            raise BadRequest("Missing mandatory query parameter 'volume_group_id'.")
        volume_group = await self._require_volume_group(volume_group_id)
        rows = await self.store.list_snapshot_groups(volume_group.id, name)
        if name is not None and not rows:
            raise NotFound(f"Snapshot group with name {name} not found.")
        return await self._snapshot_groups(rows)

    async def get_snapshot_group(self, group_id: str) -> wire.SnapshotGroup:
        row = await self._require_snapshot_group(group_id)
        return (await self._snapshot_groups([row]))[0]

    async def _require_snapshot_group(self, group_id: str) -> SnapshotGroupRow:
        row = await self.store.get_snapshot_group(group_id)
        if row is None:
            raise NotFound(f"Snapshot group with id {group_id} not found.")
        return row

    async def _snapshot_groups(self, rows: list[SnapshotGroupRow]) -> list[wire.SnapshotGroup]:
        if not rows:
            return []
        wanted = {row.id for row in rows}
        members: dict[str, list[SnapshotRow]] = {}
        for snapshot in await self.store.list_snapshots():
            if snapshot.snapshot_group_id in wanted:
                members.setdefault(snapshot.snapshot_group_id, []).append(snapshot)
        volume_names = {volume.id: volume.name for volume in await self.store.list_volumes()}
        group_names = {group.id: group.name for group in await self.store.list_volume_groups()}
        return [
            wire.SnapshotGroup(
                id=row.id,
                name=row.name,
                volume_group_id=row.volume_group_id,
                volume_group_name=group_names.get(row.volume_group_id, ""),
                creation_time=row.created,
                snapshots=[
                    wire.SnapshotRef(
                        id=snapshot.id,
                        name=snapshot.name,
                        volume_id=snapshot.volume_id,
                        volume_name=volume_names.get(snapshot.volume_id, ""),
                    )
                    for snapshot in members.get(row.id, [])
                ],
                config=row.config,
            )
            for row in rows
        ]

    # -- snapshot groups: creating -------------------------------------------------------

    async def create_snapshot_group(self, request: wire.SnapshotGroupCreate) -> wire.SnapshotGroup:
        """Take a crash-consistent snapshot of every volume in the volume group.

        A create with the name of an existing snapshot group of the same
        volume group returns that group. Each member snapshot is an ordinary
        snapshot named like the group. After a failure no member snapshot is
        left and no I/O is held.

        Raises BadRequest for a missing name or volume group id and for a
        volume group without volumes, and NotFound for an unknown volume
        group. Raises Conflict when a member already has a snapshot of that
        name or has no LV, and InsufficientSpace when the pool is past its
        limit. Raises BackendError when a step fails or the snapshots take
        longer than ``hold_timeout``.
        """
        _check_name(request.name, "snapshot group")
        if not request.volume_group_id:
            raise BadRequest("Missing mandatory field 'volume_group_id'.")
        async with self.backend.pool_lock:
            volume_group = await self._require_volume_group(request.volume_group_id)
            existing = await self.store.list_snapshot_groups(volume_group.id, request.name)
            if existing:
                return (await self._snapshot_groups(existing[:1]))[0]
            members = await self.store.list_volumes_in_group(volume_group.id)
            if not members:
                raise BadRequest(
                    f"Volume group {volume_group.name} has no volumes; add volumes to it "
                    "before taking a snapshot group."
                )
            async with contextlib.AsyncExitStack() as stack:
                # Publish, unpublish and resizes of a member change its I/O
                # device; they wait until the group is taken. The pool lock is
                # always taken before volume locks, as volume deletes do.
                for member in sorted(members, key=lambda volume: volume.id):
                    await stack.enter_async_context(self.backend.volume_lock(member.id))
                row = await self._create_locked(request, volume_group, members)
        return (await self._snapshot_groups([row]))[0]

    async def _create_locked(
        self, request: wire.SnapshotGroupCreate, volume_group: VolumeGroupRow,
        members: list[VolumeRow],
    ) -> SnapshotGroupRow:
        # Everything but the snapshots themselves happens before I/O is held,
        # because each LVM command under software emulation takes about a
        # second, and the hold should last no longer than the snapshots.
        lvs = {lv.name: lv for lv in await self.lvm.list_thin_lvs()}
        await self._check_members(request.name, volume_group, members, lvs)
        await self.backend.check_capacity("snapshot group create")
        extent_size = (await self.lvm.pool_usage()).extent_size
        exported = {export.volume_id for export in await self.store.list_exports()}
        devices = [io_device_name(member.lv_name) for member in members if member.id in exported]

        group = SnapshotGroupRow(
            id=new_id(),
            name=request.name,
            volume_group_id=volume_group.id,
            config=request.config,
            created=int(time.time()),
        )
        snapshots = []
        for member in members:
            snapshot_id = new_id()
            snapshots.append(SnapshotRow(
                id=snapshot_id,
                volume_id=member.id,
                name=request.name,
                lv_name=snapshot_lv_name(snapshot_id),
                size=reported_size(member.requested_size, lvs[member.lv_name].size, extent_size),
                description=f"Member of snapshot group {request.name}",
                config=request.config,
                snapshot_group_id=group.id,
                created=group.created,
            ))
        try:
            for snapshot in snapshots:
                await self.store.add_snapshot(snapshot)
            hold_seconds = await self._take_snapshots(group, members, snapshots, devices)
            # The record comes last: a group without one is an unfinished create.
            await self.store.add_snapshot_group(group)
        except BaseException:
            await self._discard(group.id, "a failed snapshot group create")
            raise
        log.info(
            "snapshot group created; I/O of %d published members held %.3f s",
            len(devices), hold_seconds,
            extra={"snapshot_group_id": group.id, "snapshot_group_name": group.name,
                   "volume_group_id": volume_group.id,
                   "snapshots": ",".join(snapshot.id for snapshot in snapshots),
                   "held_seconds": round(hold_seconds, 3)},
        )
        return group

    async def _check_members(
        self, name: str, volume_group: VolumeGroupRow, members: list[VolumeRow],
        lvs: dict[str, ThinLv],
    ) -> None:
        """Check what can be checked before any I/O is held."""
        for member in members:
            if member.lv_name not in lvs:
                raise Conflict(
                    f"Volume {member.name} ({member.id}) of volume group {volume_group.name} "
                    "has no LV; restore it or remove the volume from the group."
                )
            for snapshot in await self.store.list_snapshots(volume_id=member.id, name=name):
                if snapshot.snapshot_group_id and (
                    await self.store.get_snapshot_group(snapshot.snapshot_group_id) is None
                ):
                    # Left by an interrupted create of a group of this name.
                    await self._discard(snapshot.snapshot_group_id, "an unfinished snapshot group")
                    if await self.store.get_snapshot(snapshot.id) is None:
                        continue
                raise Conflict(
                    f"Volume {member.name} already has a snapshot named {name}; choose "
                    "another name for the snapshot group."
                )

    async def _take_snapshots(
        self, group: SnapshotGroupRow, members: list[VolumeRow], snapshots: list[SnapshotRow],
        devices: list[str],
    ) -> float:
        """Hold the I/O of ``devices``, snapshot every member, resume; return the hold in s.

        Raises what the suspend, a snapshot or the resume raised, and
        BackendError when the snapshots took longer than ``hold_timeout``.
        """
        started = time.monotonic()
        # A failed suspend resumes what it suspended before it raises.
        await self.dm.suspend(devices)
        work = asyncio.ensure_future(self._snapshot_members(members, snapshots))
        try:
            remaining = started + self.hold_timeout - time.monotonic()
            await asyncio.wait({work}, timeout=max(remaining, 0.0))
        finally:
            if not work.done():
                work.cancel()
            # Resuming must not be cut short, not even by a cancellation of
            # this call, which is passed on once I/O flows again.
            resumed, cancelled = await _settle(self.dm.resume(devices))
            hold_seconds = time.monotonic() - started
            self.last_hold = hold_seconds
            log.info(
                "I/O of snapshot group %s held for %.3f s", group.name, hold_seconds,
                extra={"snapshot_group_id": group.id, "devices": ",".join(devices),
                       "held_seconds": round(hold_seconds, 3)},
            )
            # A cancelled snapshot step finishes its lvcreate first; wait for
            # it, so that the caller's rollback finds every snapshot made.
            _, cancelled_again = await _settle(work)
            resume_error = resumed.exception()
            if resume_error is not None:
                raise resume_error
            if cancelled or cancelled_again:
                if not work.cancelled():
                    work.exception()
                raise asyncio.CancelledError
        if work.cancelled():
            raise BackendError(
                f"snapshot group {group.name} was not taken within {self.hold_timeout:g} s; "
                "I/O was resumed and the member snapshots removed"
            )
        error = work.exception()
        if error is not None:
            raise error
        return hold_seconds

    async def _snapshot_members(
        self, members: list[VolumeRow], snapshots: list[SnapshotRow]
    ) -> None:
        pairs = [
            (member.lv_name, snapshot.lv_name)
            for member, snapshot in zip(members, snapshots, strict=True)
        ]
        await self.lvm.create_snapshots(pairs, (LV_TAG,))

    async def _discard(self, group_id: str, reason: str) -> None:
        """Remove the member snapshots of a group that has no record; log what stays.

        Used under the pool lock, where no create is under way, so every
        snapshot of ``group_id`` belongs to a create that is over. A member
        with a clone is kept and listed in ``problems``.
        """
        for snapshot in await self.store.list_snapshots(snapshot_group_id=group_id):
            try:
                await self.volumes.check_snapshot_deletable(snapshot)
                await self.lvm.remove(snapshot.lv_name)
                await self.store.delete_snapshot(snapshot.id)
            except Exception as err:
                message = (
                    f"snapshot {snapshot.name} ({snapshot.id}) of {reason} could not be "
                    f"removed: {err}"
                )
                self.problems.append(message)
                log.error(
                    message, extra={"snapshot_group_id": group_id, "snapshot_id": snapshot.id}
                )
            else:
                log.warning(
                    "removed snapshot %s of %s", snapshot.id, reason,
                    extra={"snapshot_group_id": group_id, "snapshot_id": snapshot.id,
                           "lv": snapshot.lv_name},
                )

    # -- snapshot groups: deleting ------------------------------------------------------

    async def delete_snapshot_group(
        self, group_id: str, replication_partner: str | None = None
    ) -> None:
        """Delete a snapshot group and its member snapshots.

        Raises NotFound for an unknown group and Conflict, before anything is
        deleted, when a member snapshot has a clone. With
        ``replication_partner`` (the downstream copy on that partner), raises
        NotFound for a partner the configuration does not declare and
        BadRequest for a declared one: this array does not replicate, so no
        downstream copy exists, and the local group is kept.
        """
        async with self.backend.pool_lock:
            row = await self._require_snapshot_group(group_id)
            if replication_partner is not None:
                partner = self._partner(replication_partner)
                raise BadRequest(
                    f"Snapshot group {row.name} has no downstream copy on replication partner "
                    f"{partner.name}: this array does not replicate snapshot groups. Delete "
                    "the local snapshot group without 'replication_partner'."
                )
            members = await self.store.list_snapshots(snapshot_group_id=row.id)
            cloned: list[str] = []
            for snapshot in members:
                try:
                    await self.volumes.check_snapshot_deletable(snapshot)
                except Conflict:
                    cloned.append(snapshot.volume_id)
            if cloned:
                names = {volume.id: volume.name for volume in await self.store.list_volumes()}
                volumes = ", ".join(names.get(volume_id, volume_id) for volume_id in cloned)
                raise Conflict(
                    "The request could not be completed due to a conflict. Snapshot group "
                    f"{row.name} has a clone of its snapshot of volume {volumes}; delete the "
                    "clones first."
                )
            # Members first, the record last: a delete that fails half-way
            # leaves the group, and a repeated delete removes the rest.
            for snapshot in members:
                await self.lvm.remove(snapshot.lv_name)
                await self.store.delete_snapshot(snapshot.id)
            await self.store.delete_snapshot_group(row.id)
        log.info(
            "snapshot group deleted",
            extra={"snapshot_group_id": row.id, "snapshot_group_name": row.name,
                   "snapshots": ",".join(snapshot.id for snapshot in members)},
        )

    # -- replication partners --------------------------------------------------------------

    async def list_replication_partners(
        self, name: str | None = None
    ) -> list[wire.ReplicationPartner]:
        """List the configured replication partners, each probed for liveness.

        With ``name``, the one partner of that name or NotFound. A partner is
        alive when an HTTP GET of its URL gets any HTTP response within
        ``probe_timeout``. The probe carries no credentials, so it does not
        verify the partner's certificate.
        """
        partners = list(self.backend.config.replication_partners)
        if name is not None:
            partners = [self._partner(name)]
        if not partners:
            return []
        timeout = aiohttp.ClientTimeout(total=self.probe_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            alive = await asyncio.gather(
                *(_answers(session, partner.url) for partner in partners)
            )
        return [
            wire.ReplicationPartner(
                id=partner_id(partner.name),
                name=partner.name,
                partner_name=partner.name,
                repl_direction=partner.direction,
                is_alive=is_alive,
            )
            for partner, is_alive in zip(partners, alive, strict=True)
        ]

    def _partner(self, name: str) -> ReplicationPartnerConfig:
        for partner in self.backend.config.replication_partners:
            if partner.name == name:
                return partner
        raise NotFound(f"Replication partner with name {name} not found.")

    # -- start-up -----------------------------------------------------------------------

    async def recover(self) -> None:
        """Undo what a daemon stopped in the middle of a snapshot group left behind.

        First every suspended cspd I/O device is resumed, so initiators held by
        a group that never finished get their I/O back. Then the member
        snapshots of every group without a record (an unfinished create) are
        removed, except those with a clone, which are kept and reported. What
        cannot be repaired is logged and listed in ``problems``, and start-up
        goes on, so that volumes outside the failed group stay served.
        """
        # TODO: a daemon killed (with its children) inside an lvcreate of a
        # thin snapshot can leave the origin LV suspended by LVM itself. Only
        # cspd's own devices are resumed here; resuming LVM's would need the
        # LVM adapter to refresh the origin (lvchange --refresh).
        try:
            resumed = await self.dm.resume_all_suspended(DEVICE_PREFIX)
        except DmError as err:
            message = f"I/O devices left suspended could not be resumed: {err.message}"
            self.problems.append(message)
            log.error(message)
        else:
            if resumed:
                log.warning(
                    "resumed %d I/O devices that an unfinished snapshot group left suspended",
                    len(resumed), extra={"devices": ",".join(resumed)},
                )
        async with self.backend.pool_lock:
            snapshots = await self.store.list_snapshots()
            for group_id in sorted({s.snapshot_group_id for s in snapshots if s.snapshot_group_id}):
                if await self.store.get_snapshot_group(group_id) is not None:
                    continue
                log.warning(
                    "rolling back a snapshot group whose create did not finish",
                    extra={"snapshot_group_id": group_id},
                )
                await self._discard(group_id, "an unfinished snapshot group")


def _members_by_group(volumes: list[VolumeRow]) -> dict[str, list[VolumeRow]]:
    members: dict[str, list[VolumeRow]] = {}
    for volume in volumes:
        if volume.volume_group_id:
            members.setdefault(volume.volume_group_id, []).append(volume)
    return members


def _volume_group(row: VolumeGroupRow, members: list[VolumeRow]) -> wire.VolumeGroup:
    return wire.VolumeGroup(
        id=row.id,
        name=row.name,
        description=row.description,
        volumes=[wire.VolumeRef(id=volume.id, name=volume.name) for volume in members],
        creation_time=row.created,
        config=row.config,
    )


async def _answers(session: aiohttp.ClientSession, url: str) -> bool:
    """Return True when a GET of ``url`` gets any HTTP response, False on any failure."""
    try:
        async with session.get(url, ssl=False, allow_redirects=False):
            return True
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as err:
        log.debug("replication partner did not respond: %s", err, extra={"url": url})
        return False


async def _settle(step: Awaitable[T]) -> tuple[asyncio.Future[T], bool]:
    """Await ``step`` to its end even when the caller is cancelled meanwhile.

    Returns the finished future, for its result or exception, and whether the
    caller was cancelled while it waited; the caller passes that on.
    """
    future = asyncio.ensure_future(step)
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait({future})
        except asyncio.CancelledError:
            cancelled = True
    return future, cancelled
