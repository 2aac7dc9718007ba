"""FakeLio: an in-memory stand-in for cspd.lio.LioAdapter, for API and provider tests.

It has the adapter's public methods and follows their rules. It runs the same
name and CHAP checks, and its ``ensure_*`` calls are idempotent. A LUN id taken
by another backstore raises LioError, removing something already gone is no
error, and ACLs left without mapped LUNs are removed. Tests can make the next
call of a method fail (``fail_next``), look at the live and saved state, and
simulate a reboot that loses the live configuration.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cspd.config import IscsiConfig
from cspd.errors import LioError
from cspd.lio import (
    DEFAULT_CONFIGFS_ROOT,
    BackstoreInfo,
    Chap,
    LioState,
    TargetInfo,
    check_backstore_name,
    check_chap,
    check_iscsi_name,
    check_lun_id,
    check_unit_serial,
    portal_addresses,
    write_private_file,
)

OPERATIONS = frozenset(
    {
        "check",
        "restore",
        "ensure_backstore",
        "ensure_target",
        "ensure_lun",
        "ensure_acl",
        "remove_acl_lun",
        "remove_lun",
        "remove_target",
        "remove_backstore",
        "read_state",
        "save",
    }
)


@dataclass
class _Acl:
    mapped: dict[int, int] = field(default_factory=dict)
    chap: Chap | None = None


@dataclass
class _Target:
    portals: list[tuple[str, int]] = field(default_factory=list)
    luns: dict[int, str] = field(default_factory=dict)
    acls: dict[str, _Acl] = field(default_factory=dict)


class FakeLio:
    """In-memory LIO configuration with the public interface of LioAdapter.

    ``per_acl_chap=False`` behaves like a kernel before Linux 6.0, where an
    ACL cannot require CHAP on its own and ``ensure_acl`` with CHAP fails.
    With ``save_path``, ``save`` writes a JSON file there (mode 0600) and
    ``restore`` reads it; without, both use a copy kept in memory.
    """

    def __init__(
        self,
        config: IscsiConfig | None = None,
        save_path: Path | None = None,
        *,
        configfs_root: str = DEFAULT_CONFIGFS_ROOT,
        per_acl_chap: bool = True,
    ) -> None:
        self.config = config or IscsiConfig()
        self.save_path = save_path
        self.configfs_root = configfs_root
        self.per_acl_chap = per_acl_chap
        self.checked = False
        self.saves = 0
        self.restores = 0
        # Each call as (method name, arguments); CHAP objects are kept as given.
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._backstores: dict[str, BackstoreInfo] = {}
        self._targets: dict[str, _Target] = {}
        self._saved: dict[str, Any] | None = None
        self._faults: dict[str, list[BaseException]] = {}
        self._lock = asyncio.Lock()

    # -- test controls --

    def fail_next(self, operation: str, error: BaseException | None = None, times: int = 1) -> None:
        """Make the next ``times`` calls of ``operation`` raise ``error`` before changing anything.

        The default error is a LioError naming the operation.
        """
        if operation not in OPERATIONS:
            raise ValueError(
                f"unknown operation {operation!r}; expected one of {sorted(OPERATIONS)}"
            )
        failure = error or LioError(f"injected failure in {operation}")
        self._faults.setdefault(operation, []).extend([failure] * times)

    def state(self) -> LioState:
        """Return a copy of the live configuration, as read_state would."""
        return self._snapshot()

    def saved_state(self) -> LioState | None:
        """Return the configuration the last ``save`` stored, or None before any save."""
        if self._saved is None:
            return None
        backstores, targets = _decode(self._saved)
        return _to_state(backstores, targets)

    def chap(self, target_iqn: str, initiator_iqn: str) -> Chap | None:
        """Return the CHAP credentials an initiator's ACL requires, or None."""
        return self._targets[target_iqn].acls[initiator_iqn].chap

    def reboot(self) -> None:
        """Lose the live configuration, as a reboot does; the saved one stays."""
        self._backstores.clear()
        self._targets.clear()

    def _enter(self, operation: str, *arguments: Any) -> None:
        self.calls.append((operation, arguments))
        pending = self._faults.get(operation)
        if pending:
            raise pending.pop(0)

    # -- the adapter's interface --

    async def check(self) -> None:
        async with self._lock:
            self._enter("check")
            self.checked = True

    async def restore(self) -> None:
        async with self._lock:
            self._enter("restore")
            saved = self._load_saved()
            if saved is None:
                return
            backstores, targets = _decode(saved)
            for name, info in backstores.items():
                self._backstores.setdefault(name, info)
            for iqn, target in targets.items():
                if iqn not in self._targets:
                    # Like rtslib, a LUN whose backstore is missing is skipped.
                    target.luns = {
                        lun: name for lun, name in target.luns.items() if name in self._backstores
                    }
                    for acl in target.acls.values():
                        acl.mapped = {m: t for m, t in acl.mapped.items() if t in target.luns}
                    self._targets[iqn] = target
            self.restores += 1

    async def ensure_backstore(self, name: str, device: str, unit_serial: str) -> None:
        async with self._lock:
            self._enter("ensure_backstore", name, device, unit_serial)
            check_backstore_name(name)
            check_unit_serial(unit_serial)
            if not device.startswith("/dev/"):
                raise LioError(f"backstore {name}: device {device!r} is not a /dev path")
            existing = self._backstores.get(name)
            if existing is not None:
                if existing != BackstoreInfo(device, unit_serial):
                    raise LioError(
                        f"backstore {name} exists on {existing.device} with unit serial "
                        f"{existing.unit_serial}, not on {device} with unit serial {unit_serial}"
                    )
                return
            self._backstores[name] = BackstoreInfo(device, unit_serial)

    async def remove_backstore(self, name: str) -> None:
        async with self._lock:
            self._enter("remove_backstore", name)
            check_backstore_name(name)
            if name not in self._backstores:
                return
            users = [
                f"LUN {lun} of target {iqn}"
                for iqn, target in sorted(self._targets.items())
                for lun, backstore in sorted(target.luns.items())
                if backstore == name
            ]
            if users:
                raise LioError(f"backstore {name} is still exported as {', '.join(users)}")
            del self._backstores[name]

    async def ensure_target(self, iqn: str, portals: Sequence[str], port: int) -> None:
        async with self._lock:
            self._enter("ensure_target", iqn, tuple(portals), port)
            check_iscsi_name("target", iqn)
            if not 1 <= port <= 65535:
                raise LioError(f"target {iqn}: port {port} is not a TCP port")
            desired = sorted((address, port) for address in portal_addresses(portals))
            target = self._targets.setdefault(iqn, _Target())
            target.portals = desired

    async def remove_target(self, iqn: str) -> None:
        async with self._lock:
            self._enter("remove_target", iqn)
            check_iscsi_name("target", iqn)
            self._targets.pop(iqn, None)

    async def ensure_lun(self, target_iqn: str, lun: int, backstore: str) -> None:
        async with self._lock:
            self._enter("ensure_lun", target_iqn, lun, backstore)
            check_iscsi_name("target", target_iqn)
            check_lun_id(lun)
            check_backstore_name(backstore)
            target = self._targets.get(target_iqn)
            if target is None:
                raise LioError(f"target {target_iqn} does not exist; create it before its LUNs")
            if backstore not in self._backstores:
                raise LioError(
                    f"LUN {lun} of target {target_iqn}: backstore {backstore} does not exist"
                )
            current = target.luns.get(lun)
            if current is not None:
                if current != backstore:
                    raise LioError(
                        f"LUN {lun} of target {target_iqn} is already used by backstore "
                        f"{current}, not {backstore}"
                    )
                return
            for other, name in target.luns.items():
                if name == backstore:
                    raise LioError(
                        f"backstore {backstore} is already LUN {other} of target "
                        f"{target_iqn}; it cannot also be LUN {lun}"
                    )
            target.luns[lun] = backstore

    async def remove_lun(self, target_iqn: str, lun: int) -> None:
        async with self._lock:
            self._enter("remove_lun", target_iqn, lun)
            check_iscsi_name("target", target_iqn)
            check_lun_id(lun)
            target = self._targets.get(target_iqn)
            if target is None or lun not in target.luns:
                return
            del target.luns[lun]
            for acl in target.acls.values():
                acl.mapped = {m: t for m, t in acl.mapped.items() if t != lun}
            target.acls = {iqn: acl for iqn, acl in target.acls.items() if acl.mapped}

    async def ensure_acl(
        self, target_iqn: str, initiator_iqn: str, lun: int, chap: Chap | None
    ) -> None:
        async with self._lock:
            self._enter("ensure_acl", target_iqn, initiator_iqn, lun, chap)
            check_iscsi_name("target", target_iqn)
            check_iscsi_name("initiator", initiator_iqn)
            check_lun_id(lun)
            if chap is not None:
                check_chap(chap, initiator_iqn)
            target = self._targets.get(target_iqn)
            if target is None:
                raise LioError(f"target {target_iqn} does not exist; create it before its ACLs")
            if lun not in target.luns:
                raise LioError(
                    f"initiator {initiator_iqn}: LUN {lun} of target {target_iqn} does not exist"
                )
            if chap is not None and not self.per_acl_chap:
                raise LioError(
                    f"initiator {initiator_iqn}: this kernel has no per-ACL authentication "
                    "attribute (Linux 6.0 or later is needed), so CHAP cannot be required "
                    "for one initiator only"
                )
            acl = target.acls.get(initiator_iqn)
            if acl is not None and acl.mapped.get(lun, lun) != lun:
                raise LioError(
                    f"initiator {initiator_iqn} on target {target_iqn}: mapped LUN {lun} "
                    f"already points at LUN {acl.mapped[lun]}"
                )
            if acl is None:
                acl = target.acls[initiator_iqn] = _Acl()
            acl.chap = chap
            acl.mapped[lun] = lun

    async def remove_acl_lun(self, target_iqn: str, initiator_iqn: str, lun: int) -> None:
        async with self._lock:
            self._enter("remove_acl_lun", target_iqn, initiator_iqn, lun)
            check_iscsi_name("target", target_iqn)
            check_iscsi_name("initiator", initiator_iqn)
            check_lun_id(lun)
            target = self._targets.get(target_iqn)
            if target is None:
                return
            acl = target.acls.get(initiator_iqn)
            if acl is None:
                return
            acl.mapped.pop(lun, None)
            if not acl.mapped:
                del target.acls[initiator_iqn]

    async def read_state(self) -> LioState:
        async with self._lock:
            self._enter("read_state")
            return self._snapshot()

    async def save(self) -> None:
        async with self._lock:
            self._enter("save")
            encoded = _encode(self._backstores, self._targets)
            if self.save_path is not None:
                data = (json.dumps(encoded, sort_keys=True, indent=2) + "\n").encode()
                write_private_file(self.save_path, data)
            self._saved = encoded
            self.saves += 1

    # -- helpers --

    def _snapshot(self) -> LioState:
        return _to_state(self._backstores, self._targets)

    def _load_saved(self) -> dict[str, Any] | None:
        if self.save_path is None:
            return copy.deepcopy(self._saved)
        if not self.save_path.exists():
            return None
        try:
            loaded = json.loads(self.save_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise LioError(
                f"saved LIO configuration {self.save_path} is unreadable: {err}"
            ) from err
        if not isinstance(loaded, dict):
            raise LioError(f"saved LIO configuration {self.save_path} is not a JSON object")
        return loaded


def _to_state(backstores: dict[str, BackstoreInfo], targets: dict[str, _Target]) -> LioState:
    return LioState(
        backstores=dict(backstores),
        targets={
            iqn: TargetInfo(
                luns=dict(target.luns),
                acls={name: dict(acl.mapped) for name, acl in target.acls.items()},
                portals=sorted(target.portals),
                chap_users={
                    name: acl.chap.user for name, acl in target.acls.items() if acl.chap is not None
                },
                enabled=True,
            )
            for iqn, target in targets.items()
        },
    )


def _encode(backstores: dict[str, BackstoreInfo], targets: dict[str, _Target]) -> dict[str, Any]:
    return {
        "backstores": {
            name: {"device": info.device, "unit_serial": info.unit_serial}
            for name, info in backstores.items()
        },
        "targets": {
            iqn: {
                "portals": [[address, port] for address, port in target.portals],
                "luns": {str(lun): name for lun, name in target.luns.items()},
                "acls": {
                    name: {
                        "mapped": {str(m): t for m, t in acl.mapped.items()},
                        "chap": None
                        if acl.chap is None
                        else {"user": acl.chap.user, "password": acl.chap.password},
                    }
                    for name, acl in target.acls.items()
                },
            }
            for iqn, target in targets.items()
        },
    }


def _decode(saved: dict[str, Any]) -> tuple[dict[str, BackstoreInfo], dict[str, _Target]]:
    backstores = {
        name: BackstoreInfo(entry["device"], entry["unit_serial"])
        for name, entry in saved.get("backstores", {}).items()
    }
    targets: dict[str, _Target] = {}
    for iqn, entry in saved.get("targets", {}).items():
        acls = {
            name: _Acl(
                mapped={int(m): int(t) for m, t in acl["mapped"].items()},
                chap=None if acl["chap"] is None else Chap(**acl["chap"]),
            )
            for name, acl in entry.get("acls", {}).items()
        }
        targets[iqn] = _Target(
            portals=[(str(address), int(port)) for address, port in entry.get("portals", [])],
            luns={int(lun): str(name) for lun, name in entry.get("luns", {}).items()},
            acls=acls,
        )
    return backstores, targets
