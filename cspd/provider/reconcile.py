"""Start-up comparison of the store with LVM and LIO.

Mismatches are logged and returned, not repaired by guesswork: a record
without its LV is kept (an operator may restore the LV), and an LV that no
record describes is left alone. The one repair is finishing an unpublish that
stopped half-way, because its intent is recorded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cspd.provider.base import LV_TAG, Backend, io_device_name

log = logging.getLogger("cspd.reconcile")


@dataclass
class ReconcileReport:
    problems: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)

    def problem(self, message: str, **ids: str) -> None:
        self.problems.append(message)
        log.warning(message, extra=ids)

    def repair(self, message: str, **ids: str) -> None:
        self.repairs.append(message)
        log.info(message, extra=ids)


async def reconcile(backend: Backend) -> ReconcileReport:
    report = ReconcileReport()
    store = backend.store
    lvs = {lv.name: lv for lv in await backend.lvm.list_thin_lvs()}
    volumes = await store.list_volumes()
    snapshots = await store.list_snapshots()
    known_lvs = {v.lv_name for v in volumes} | {s.lv_name for s in snapshots}

    for volume in volumes:
        if volume.lv_name not in lvs:
            report.problem(
                f"volume {volume.name} ({volume.id}) has no LV {volume.lv_name}; it is hidden "
                "from the API until the LV is back or the record is removed",
                volume_id=volume.id,
            )
    for snapshot in snapshots:
        if snapshot.lv_name not in lvs:
            report.problem(
                f"snapshot {snapshot.name} ({snapshot.id}) has no LV {snapshot.lv_name}",
                snapshot_id=snapshot.id,
            )
    for name, lv in sorted(lvs.items()):
        if LV_TAG in lv.tags and name not in known_lvs:
            report.problem(
                f"LV {backend.lvm.vg}/{name} carries the cspd tag but no record describes it; "
                "remove it with lvremove once it is known to be unneeded",
                lv=name,
            )

    access = await store.list_access()
    published = {a.volume_id for a in access}
    state = await backend.lio.read_state()
    by_id = {v.id: v for v in volumes}
    exported_backstores: set[str] = set()
    for export in await store.list_exports():
        exported = by_id.get(export.volume_id)
        lv_name = exported.lv_name if exported else ""
        exported_backstores.add(lv_name)
        if export.volume_id not in published:
            # An unpublish stopped after removing the last access record.
            await backend.lio.remove_lun(export.target_iqn, export.lun_id)
            if await store.count_exports_on_target(export.target_iqn) == 1:
                await backend.lio.remove_target(export.target_iqn)
            if lv_name:
                await backend.lio.remove_backstore(lv_name)
                await backend.dm.remove(io_device_name(lv_name))
            await store.delete_export(export.volume_id)
            await backend.lio.save()
            report.repair(
                f"finished the unpublish of volume {export.volume_id} from target "
                f"{export.target_iqn}",
                volume_id=export.volume_id,
            )
            continue
        target = state.targets.get(export.target_iqn)
        if target is None or export.lun_id not in target.luns:
            report.problem(
                f"volume {export.volume_id} is published as LUN {export.lun_id} of "
                f"{export.target_iqn}, but LIO has no such LUN; publish it again to rebuild it",
                volume_id=export.volume_id,
            )
    for name in sorted(state.backstores):
        if name.startswith(("vol-", "snap-")) and name not in exported_backstores:
            report.problem(
                f"LIO backstore {name} belongs to no published volume",
                backstore=name,
            )

    if report.problems:
        log.warning("state reconciliation found %d problems", len(report.problems))
    else:
        log.info("state matches LVM and LIO", extra={"volumes": len(volumes),
                                                      "snapshots": len(snapshots)})
    return report
