"""State shared by every part of the provider: the adapters, the store and the locks."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cspd.config import Config
from cspd.errors import InsufficientSpace, NotFound
from cspd.store import SnapshotRow, Store, VolumeRow

if TYPE_CHECKING:
    from cspd.dm import DeviceMapper
    from cspd.lio import LioAdapter
    from cspd.lvm import LvmAdapter, ThinLv

log = logging.getLogger("cspd.provider")

# Every LV that cspd creates carries this tag, so start-up reconciliation can
# tell cspd's LVs from others in the same pool.
LV_TAG = "cspd"


def new_id() -> str:
    return uuid.uuid4().hex


def volume_lv_name(volume_id: str) -> str:
    # CSP names such as "snapshot-<uuid>" or names with ":" are not valid LV
    # names, so LV names come from the generated id instead.
    return f"vol-{volume_id}"


def snapshot_lv_name(snapshot_id: str) -> str:
    return f"snap-{snapshot_id}"


def io_device_name(lv_name: str) -> str:
    """Return the name of the device-mapper device that LIO exports for an LV.

    LIO exports a linear device above the thin LV rather than the LV itself,
    so that a snapshot group can suspend I/O on every member at once while
    LVM snapshots the LVs beneath.
    """
    return f"cspd-{lv_name}"


def reported_size(stored_size: int, lv_size: int, extent_size: int) -> int:
    """Return the size the API reports for an LV created or grown to ``stored_size``.

    LVM rounds sizes up to whole extents, but a retried create must get back
    the exact bytes it requested. The stored size is reported while the LV
    still has the size LVM gave it. After a change made outside cspd, the LV's
    own size is reported.
    """
    rounded = -(-stored_size // extent_size) * extent_size
    if lv_size in (stored_size, rounded):
        return stored_size
    return lv_size


@dataclass
class Backend:
    config: Config
    store: Store
    lvm: LvmAdapter
    lio: LioAdapter
    dm: DeviceMapper
    # Portal addresses found on the box at start, used when the configuration
    # lists none.
    portals: list[str] = field(default_factory=list)
    # Serializes creates, deletes and resizes of volumes and snapshots, so that
    # the name checks of idempotent creates and the clone checks of deletes see
    # a stable pool.
    pool_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _volume_locks: defaultdict[str, asyncio.Lock] = field(
        default_factory=lambda: defaultdict(asyncio.Lock)
    )

    def volume_lock(self, volume_id: str) -> asyncio.Lock:
        """Return the lock that serializes publish, unpublish and delete of one volume."""
        return self._volume_locks[volume_id]

    async def require_volume(self, volume_id: str) -> tuple[VolumeRow, ThinLv]:
        row = await self.store.get_volume(volume_id)
        if row is not None:
            lv = await self.lvm.get_thin_lv(row.lv_name)
            if lv is not None:
                return row, lv
            log.warning(
                "volume has a state record but no LV",
                extra={"volume_id": volume_id, "lv": row.lv_name},
            )
        raise NotFound(f"Volume with id {volume_id} not found.")

    async def require_snapshot(self, snapshot_id: str) -> tuple[SnapshotRow, ThinLv]:
        row = await self.store.get_snapshot(snapshot_id)
        if row is not None:
            lv = await self.lvm.get_thin_lv(row.lv_name)
            if lv is not None:
                return row, lv
            log.warning(
                "snapshot has a state record but no LV",
                extra={"snapshot_id": snapshot_id, "lv": row.lv_name},
            )
        raise NotFound(f"Snapshot with id {snapshot_id} not found.")

    async def check_capacity(self, operation: str) -> None:
        """Raise InsufficientSpace when the thin pool is past a configured fill limit.

        Creating a thin LV, a snapshot or a clone maps no data at once, so the
        check is on the pool's current fill: past the limit, writes to what
        already exists need the room that remains.
        """
        usage = await self.lvm.pool_usage()
        limits = self.config.lvm
        pool = f"{self.lvm.vg}/{self.lvm.pool}"
        if usage.data_percent >= limits.max_data_percent:
            raise InsufficientSpace(
                f"{operation} rejected: thin pool {pool} data is {usage.data_percent:.1f}% "
                f"full, the limit is {limits.max_data_percent:g}%"
            )
        if usage.metadata_percent >= limits.max_metadata_percent:
            raise InsufficientSpace(
                f"{operation} rejected: thin pool {pool} metadata is "
                f"{usage.metadata_percent:.1f}% full, the limit is "
                f"{limits.max_metadata_percent:g}%"
            )
