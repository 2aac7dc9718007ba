"""Hosts, and publishing volumes to them through LIO iSCSI targets."""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial

from cspd import wire
from cspd.errors import BadRequest, NotFound
from cspd.lio import Chap, is_valid_iqn, naa_from_unit_serial
from cspd.provider.base import Backend, io_device_name, new_id
from cspd.store import HostRow, VolumeRow

log = logging.getLogger("cspd.provider")

SERVED_PROTOCOLS = ("iscsi",)
KNOWN_PROTOCOLS = ("iscsi", "fc", "nvmetcp")

# Suffix of the one target that group-scope volumes share.
GROUP_TARGET_SUFFIX = "group"

# RFC 1994 CHAP secrets in LIO: 12 to 16 characters keep the Microsoft and
# open-iscsi initiators happy; open-iscsi accepts up to 256.
MIN_CHAP_SECRET = 12
MAX_CHAP_SECRET = 255


def _host_response(row: HostRow) -> wire.Host:
    return wire.Host(
        id=row.id,
        uuid=row.uuid,
        name=row.name,
        iqns=row.iqns,
        networks=row.networks,
        wwpns=row.wwpns,
        nqns=row.nqns,
        chap_user=row.chap_user,
        access_protocol=row.access_protocol,
    )


def _validate_host(request: wire.HostRequest) -> None:
    if not request.uuid.strip():
        raise BadRequest("Missing mandatory field 'uuid'.")
    if not request.iqns and not request.wwpns:
        raise BadRequest("A host needs initiators: field 'iqns' or 'wwpns' must not be empty.")
    for iqn in request.iqns:
        if not is_valid_iqn(iqn):
            raise BadRequest(f"Invalid value in field 'iqns': {iqn!r} is not an iSCSI name.")
    for network in request.networks:
        try:
            ipaddress.ip_interface(network)
        except ValueError as err:
            raise BadRequest(
                f"Invalid value in field 'networks': {network!r} is not an address in CIDR form."
            ) from err
    if bool(request.chap_user) != bool(request.chap_password):
        raise BadRequest("Fields 'chap_user' and 'chap_password' must be given together.")
    if request.chap_password and not (
        MIN_CHAP_SECRET <= len(request.chap_password) <= MAX_CHAP_SECRET
    ):
        raise BadRequest(
            f"Invalid value for field 'chap_password': a CHAP secret needs {MIN_CHAP_SECRET} "
            f"to {MAX_CHAP_SECRET} characters."
        )


class ExportService:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.store = backend.store
        self.lio = backend.lio
        self.config = backend.config

    # -- hosts --------------------------------------------------------------------

    async def register_host(self, request: wire.HostRequest) -> wire.Host:
        """Create or update the host with the request's uuid (the driver sends this
        before every publish)."""
        _validate_host(request)
        now = int(time.time())
        row = await self.store.upsert_host(
            HostRow(
                id=new_id(),
                uuid=request.uuid,
                name=request.name or request.uuid,
                iqns=sorted(set(request.iqns)),
                networks=request.networks,
                wwpns=request.wwpns,
                nqns=request.nqns,
                chap_user=request.chap_user,
                chap_password=request.chap_password,
                access_protocol=request.access_protocol,
                created=now,
                updated=now,
            )
        )
        log.info(
            "host registered",
            extra={"host_id": row.id, "host_uuid": row.uuid, "host_name": row.name,
                   "iqns": row.iqns, "chap": bool(row.chap_user)},
        )
        return _host_response(row)

    async def delete_host(self, host_id: str) -> None:
        row = await self.store.get_host(host_id)
        if row is None:
            raise NotFound(f"Host with id {host_id} not found.")
        await self.store.delete_host(row.id)
        log.info("host deleted", extra={"host_id": row.id, "host_uuid": row.uuid})

    async def _require_host(self, host_uuid: str) -> HostRow:
        if not host_uuid:
            raise BadRequest("Missing mandatory field 'host_uuid'.")
        row = await self.store.get_host(host_uuid)
        if row is None:
            raise NotFound(f"Host with uuid {host_uuid} not found; register it first.")
        return row

    # -- publish ---------------------------------------------------------------------

    def _target_iqn(self, volume: VolumeRow) -> str:
        prefix = self.config.iscsi.iqn_prefix
        if volume.target_scope == "group":
            return f"{prefix}:{GROUP_TARGET_SUFFIX}"
        return f"{prefix}:vol-{volume.id}"

    def _discovery_ips(self) -> list[str]:
        return list(self.config.iscsi.portals) or list(self.backend.portals)

    async def publish(self, volume_id: str, request: wire.PublishRequest) -> wire.PublishInfo:
        """Give the host's initiators access to the volume; publishing again is a no-op."""
        protocol = request.access_protocol or "iscsi"
        if protocol not in SERVED_PROTOCOLS:
            what = "an unknown" if protocol not in KNOWN_PROTOCOLS else "a"
            raise BadRequest(
                f"Invalid value for field 'access_protocol': {protocol!r} is {what} protocol "
                f"this array does not serve; it serves {', '.join(SERVED_PROTOCOLS)}."
            )
        host = await self._require_host(request.host_uuid)
        if not host.iqns:
            raise BadRequest(
                f"Host {host.name} has no iSCSI initiator names (iqns); register them first."
            )

        async with self.backend.volume_lock(volume_id):
            volume, lv = await self.backend.require_volume(volume_id)
            undo: list[tuple[str, Callable[[], Awaitable[None]]]] = []
            try:
                info = await self._publish_locked(volume, lv.name, host, undo)
            except BaseException:
                await self._run_undo(undo, volume_id)
                raise
        return info

    async def _publish_locked(
        self,
        volume: VolumeRow,
        lv_name: str,
        host: HostRow,
        undo: list[tuple[str, Callable[[], Awaitable[None]]]],
    ) -> wire.PublishInfo:
        export = await self.store.get_export(volume.id)
        new_export = export is None
        if export is None:
            export = await self.store.add_export(
                volume.id, self._target_iqn(volume), volume.target_scope
            )
            undo.append(("export record", partial(self.store.delete_export, volume.id)))

        target = export.target_iqn
        lun = export.lun_id
        chap = Chap(host.chap_user, host.chap_password) if host.chap_user else None

        if new_export:
            state = await self.lio.read_state()
            device = await self.backend.dm.ensure_linear(
                io_device_name(lv_name), self.backend.lvm.device_path(lv_name)
            )
            undo.append(("I/O device", partial(self.backend.dm.remove, io_device_name(lv_name))))
            await self.lio.ensure_backstore(lv_name, device, volume.unit_serial)
            if lv_name not in state.backstores:
                undo.append(("backstore", partial(self.lio.remove_backstore, lv_name)))
            await self.lio.ensure_target(target, self._discovery_ips(), self.config.iscsi.port)
            if target not in state.targets:
                undo.append(("target", partial(self.lio.remove_target, target)))
            await self.lio.ensure_lun(target, lun, lv_name)
            undo.append(("LUN", partial(self.lio.remove_lun, target, lun)))
        else:
            # A publish after a crash or a lost LIO configuration rebuilds what
            # is missing; each ensure step leaves what already matches alone.
            device = await self.backend.dm.ensure_linear(
                io_device_name(lv_name), self.backend.lvm.device_path(lv_name)
            )
            await self.lio.ensure_backstore(lv_name, device, volume.unit_serial)
            await self.lio.ensure_target(target, self._discovery_ips(), self.config.iscsi.port)
            await self.lio.ensure_lun(target, lun, lv_name)

        previous = await self.store.get_access(volume.id, host.id)
        granted = set(previous.iqns) if previous else set()
        for iqn in host.iqns:
            await self.lio.ensure_acl(target, iqn, lun, chap)
            if iqn not in granted:
                undo.append(("ACL", partial(self.lio.remove_acl_lun, target, iqn, lun)))
        # Initiator names the host no longer reports lose their access.
        for stale in sorted(granted - set(host.iqns)):
            await self.lio.remove_acl_lun(target, stale, lun)
        # The record comes last, so that a failed save leaves no access row
        # for ACLs that the undo then removes.
        await self.lio.save()
        await self.store.set_access(volume.id, host.id, host.iqns)

        if new_export or previous is None:
            log.info(
                "volume published",
                extra={"volume_id": volume.id, "host_id": host.id, "target": target,
                       "lun": lun, "iqns": host.iqns},
            )
        info = wire.PublishInfo(
            serial_number=naa_from_unit_serial(volume.unit_serial),
            access_protocol="iscsi",
            target_names=[target],
            discovery_ips=self._discovery_ips(),
            lun_id=lun,
        )
        if chap is not None:
            info.chap_user = chap.user
            info.chap_password = chap.password
        return info

    async def _run_undo(
        self, undo: list[tuple[str, Callable[[], Awaitable[None]]]], volume_id: str
    ) -> None:
        for what, step in reversed(undo):
            try:
                await step()
            except Exception:
                log.exception(
                    "undo of a failed publish: removing the %s failed", what,
                    extra={"volume_id": volume_id},
                )
        if undo:
            try:
                await self.lio.save()
            except Exception:
                log.exception("saving the LIO configuration after an undo failed")

    # -- unpublish ------------------------------------------------------------------

    async def unpublish(self, volume_id: str, request: wire.UnpublishRequest) -> None:
        """Remove the host's access; a host without access is a success that changes nothing."""
        host = await self._require_host(request.host_uuid)
        async with self.backend.volume_lock(volume_id):
            volume = await self.store.get_volume(volume_id)
            if volume is None:
                raise NotFound(f"Volume with id {volume_id} not found.")
            access = await self.store.get_access(volume_id, host.id)
            export = await self.store.get_export(volume_id)
            if access is None or export is None:
                return
            for iqn in access.iqns:
                await self.lio.remove_acl_lun(export.target_iqn, iqn, export.lun_id)
            await self.store.delete_access(volume_id, host.id)

            if not await self.store.list_access(volume_id):
                # Remove from LIO first and the record last, so that a crash in
                # between leaves a record that the next unpublish finishes.
                await self.lio.remove_lun(export.target_iqn, export.lun_id)
                if await self.store.count_exports_on_target(export.target_iqn) == 1:
                    await self.lio.remove_target(export.target_iqn)
                await self.lio.remove_backstore(volume.lv_name)
                await self.backend.dm.remove(io_device_name(volume.lv_name))
                await self.store.delete_export(volume_id)
            await self.lio.save()
        log.info(
            "volume unpublished",
            extra={"volume_id": volume_id, "host_id": host.id, "target": export.target_iqn},
        )

    # -- size changes and start-up ----------------------------------------------------

    async def refresh_size(self, volume_id: str) -> None:
        """Grow the I/O device of a published volume to its LV's new size."""
        async with self.backend.volume_lock(volume_id):
            volume = await self.store.get_volume(volume_id)
            if volume is None or await self.store.get_export(volume_id) is None:
                return
            await self.backend.dm.ensure_linear(
                io_device_name(volume.lv_name), self.backend.lvm.device_path(volume.lv_name)
            )

    async def recreate_io_devices(self) -> None:
        """Make the I/O device of every exported volume before LIO is restored.

        Device-mapper tables do not survive a reboot, and LIO's saved
        configuration names these devices as its backstores.
        """
        for export in await self.store.list_exports():
            volume = await self.store.get_volume(export.volume_id)
            if volume is None:
                log.warning(
                    "export record of a missing volume", extra={"volume_id": export.volume_id}
                )
                continue
            if await self.backend.lvm.get_thin_lv(volume.lv_name) is None:
                log.warning(
                    "exported volume has no LV; its LUN stays offline",
                    extra={"volume_id": volume.id, "lv": volume.lv_name},
                )
                continue
            await self.backend.lvm.activate(volume.lv_name)
            await self.backend.dm.ensure_linear(
                io_device_name(volume.lv_name), self.backend.lvm.device_path(volume.lv_name)
            )
