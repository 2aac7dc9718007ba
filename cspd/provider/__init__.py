"""Provider logic: what each CSP call does to the pool, the targets and the store."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from cspd import wire
from cspd.config import Config
from cspd.provider.base import Backend
from cspd.provider.exports import ExportService
from cspd.provider.groups import GroupService
from cspd.provider.reconcile import ReconcileReport, reconcile
from cspd.provider.volumes import VolumeService
from cspd.store import Store

if TYPE_CHECKING:
    from cspd.dm import DeviceMapper
    from cspd.lio import LioAdapter
    from cspd.lvm import LvmAdapter

log = logging.getLogger("cspd.provider")


class Provider:
    """The services behind the API, sharing one backend."""

    def __init__(
        self,
        config: Config,
        store: Store,
        lvm: LvmAdapter,
        lio: LioAdapter,
        dm: DeviceMapper,
        portals: list[str] | None = None,
    ) -> None:
        self.backend = Backend(
            config=config, store=store, lvm=lvm, lio=lio, dm=dm, portals=portals or []
        )
        self.volumes = VolumeService(self.backend)
        self.exports = ExportService(self.backend)
        self.groups = GroupService(self.backend, self.volumes, dm)
        self.report: ReconcileReport | None = None

    async def start(self) -> ReconcileReport:
        """Bring the box to its recorded state before the API serves a call.

        The order matters: suspended I/O devices are resumed first, then the
        I/O devices are recreated, LIO's configuration is restored on top of
        them, and last the store is compared with LVM and LIO.
        """
        backend = self.backend
        usage = await backend.lvm.check()
        log.info(
            "thin pool ready",
            extra={"vg": backend.lvm.vg, "pool": backend.lvm.pool,
                   "data_percent": usage.data_percent,
                   "metadata_percent": usage.metadata_percent},
        )
        await backend.lio.check()
        await self.groups.recover()
        await self.exports.recreate_io_devices()
        await backend.lio.restore()
        self.report = await reconcile(backend)
        return self.report

    async def edit_volume(self, volume_id: str, request: wire.VolumeEdit) -> wire.Volume:
        volume = await self.volumes.edit_volume(volume_id, request)
        if request.size is not None:
            await self.exports.refresh_size(volume_id)
        return volume
