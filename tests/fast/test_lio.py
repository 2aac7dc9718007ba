"""Fast tests of cspd.lio: pure helpers, the saved-file write, and LioAdapter's logic.

rtslib finds configfs through one class attribute, but pointing it at a
temporary folder does not give a usable tree: the kernel fills each new
configfs folder with attribute files and checks every write, and
BlockStorageObject queries udev for the device. So LioAdapter is tested here
through its ``rtslib`` seam, with ``FakeRtslib``: a module-shaped double that
keeps the kernel's state in ``FakeKernel`` and mirrors rtslib where the
adapter depends on it (lookup and create modes, lower-cased ACL names, LUN
deletion taking its mapped LUNs along, attribute files that exist or not,
dump() and restore()). The real rtslib and kernel are exercised by the lab
tests in the guest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cspd import lio
from cspd.command import CommandResult, CommandRunner
from cspd.config import IscsiConfig
from cspd.errors import LioError
from cspd.lio import (
    BackstoreInfo,
    Chap,
    LioAdapter,
    LioState,
    TargetInfo,
    check_chap,
    configfs_mounted,
    is_valid_iqn,
    naa_from_unit_serial,
    plain_portal_ip,
    plan_portals,
    portal_addresses,
    rtslib_portal_ip,
    select_missing,
    strip_unknown_arguments,
    write_private_file,
)
from tests.fakes.lio import FakeLio

# -- the rtslib double ----------------------------------------------------------------------


class FakeRTSLibError(Exception):
    pass


class FakeRTSLibNotInCFSError(FakeRTSLibError):
    pass


def _default_tpg_attributes() -> dict[str, str]:
    # Kernel defaults of a new iSCSI TPG (TA_* in iscsi_target_core.h).
    return {
        "authentication": "1",
        "generate_node_acls": "0",
        "cache_dynamic_acls": "0",
        "demo_mode_write_protect": "1",
        "demo_mode_discovery": "1",
    }


@dataclass
class AclState:
    attributes: dict[str, str] = field(default_factory=lambda: {"authentication": "-1"})
    userid: str = ""
    password: str = ""
    mutual_userid: str = ""
    mutual_password: str = ""
    mapped: dict[int, int] = field(default_factory=dict)


@dataclass
class TpgState:
    enable: bool = False
    attributes: dict[str, str] = field(default_factory=_default_tpg_attributes)
    portals: set[tuple[str, int]] = field(default_factory=set)
    luns: dict[int, str] = field(default_factory=dict)
    acls: dict[str, AclState] = field(default_factory=dict)


@dataclass
class TargetState:
    tpgs: dict[int, TpgState] = field(default_factory=dict)


@dataclass
class BackstoreState:
    dev: str
    wwn: str
    configured: bool = True


@dataclass
class FakeKernel:
    """The state configfs would show, plus switches that make it misbehave."""

    backstores: dict[str, BackstoreState] = field(default_factory=dict)
    targets: dict[str, TargetState] = field(default_factory=dict)
    # False: a kernel before Linux 6.0, whose ACLs have no authentication attribute.
    acl_authentication_attribute: bool = True
    # Constructor or method names whose next call raises FakeRTSLibError.
    failures: dict[str, int] = field(default_factory=dict)
    # TPG attribute writes that are accepted but do not change the value.
    ignored_tpg_attributes: set[str] = field(default_factory=set)
    # Unit serials written to a backstore are replaced by this value when set.
    forced_wwn: str | None = None
    cache_invalidations: int = 0
    # Seconds every constructor call sleeps, to widen race windows in tests.
    delay: float = 0.0
    active_calls: int = 0
    max_active_calls: int = 0
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, name: str, times: int = 1) -> None:
        self.failures[name] = self.failures.get(name, 0) + times

    def enter(self, name: str) -> None:
        with self._guard:
            self.active_calls += 1
            self.max_active_calls = max(self.max_active_calls, self.active_calls)
        try:
            if self.delay:
                time.sleep(self.delay)
            if self.failures.get(name, 0) > 0:
                self.failures[name] -= 1
                raise FakeRTSLibError(f"injected failure in {name}")
        finally:
            with self._guard:
                self.active_calls -= 1

    def clear(self) -> None:
        """Forget everything, as a reboot does."""
        self.backstores.clear()
        self.targets.clear()

    def tpg_state(self, iqn: str, tag: int = 1) -> TpgState:
        return self.targets[iqn].tpgs[tag]


class FakeFabric:
    name = "iscsi"

    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel


class FakeStorageObject:
    plugin = "block"

    def __init__(self, kernel: FakeKernel, name: str) -> None:
        self.kernel = kernel
        self.name = name

    def _state(self) -> BackstoreState:
        try:
            return self.kernel.backstores[self.name]
        except KeyError:
            raise FakeRTSLibNotInCFSError(f"no storage object {self.name}") from None

    @property
    def udev_path(self) -> str:
        return self._state().dev

    @property
    def wwn(self) -> str:
        state = self._state()
        if not state.configured:
            raise FakeRTSLibError("Cannot read a T10 WWN Unit Serial from an unconfigured object")
        return state.wwn

    @property
    def attached_luns(self) -> list[FakeLun]:
        found = []
        for iqn, target in self.kernel.targets.items():
            for tag, tpg in target.tpgs.items():
                for lun_id, name in tpg.luns.items():
                    if name == self.name:
                        found.append(FakeLun(FakeTpg(FakeTarget(self.kernel, iqn), tag), lun_id))
        return found

    def delete(self) -> None:
        self.kernel.enter("StorageObject.delete")
        for lun in self.attached_luns:
            lun.delete()
        self.kernel.backstores.pop(self.name, None)

    def dump(self) -> dict[str, Any]:
        state = self._state()
        return {
            "name": self.name,
            "plugin": "block",
            "dev": state.dev,
            "wwn": state.wwn,
            "readonly": False,
            "write_back": False,
            # Saved by newer rtslib releases only; BlockStorageObject below
            # takes no such argument, like older releases.
            "exclusive": True,
            "attributes": {"block_size": 512},
            "alua_tpgs": [],
        }


class FakeTarget:
    def __init__(self, kernel: FakeKernel, wwn: str) -> None:
        self.kernel = kernel
        self.wwn = wwn
        self.fabric_module = FakeFabric(kernel)

    def _state(self) -> TargetState:
        try:
            return self.kernel.targets[self.wwn]
        except KeyError:
            raise FakeRTSLibNotInCFSError(f"no target {self.wwn}") from None

    @property
    def tpgs(self) -> list[FakeTpg]:
        return [FakeTpg(self, tag) for tag in self._state().tpgs]

    def delete(self) -> None:
        self.kernel.enter("Target.delete")
        self._state()
        del self.kernel.targets[self.wwn]

    def dump(self) -> dict[str, Any]:
        return {
            "wwn": self.wwn,
            "fabric": "iscsi",
            "tpgs": [tpg.dump() for tpg in self.tpgs],
        }


class FakeTpg:
    def __init__(self, target: FakeTarget, tag: int) -> None:
        self.kernel = target.kernel
        self.parent_target = target
        self.tag = tag

    def _state(self) -> TpgState:
        try:
            return self.parent_target._state().tpgs[self.tag]
        except KeyError:
            raise FakeRTSLibNotInCFSError(f"no TPG {self.tag}") from None

    @property
    def enable(self) -> bool:
        return self._state().enable

    @enable.setter
    def enable(self, value: bool) -> None:
        self._state().enable = bool(value)

    def get_attribute(self, name: str) -> str:
        attributes = self._state().attributes
        if name not in attributes:
            raise FakeRTSLibError(f"Cannot find attribute: {name}")
        return attributes[name]

    def set_attribute(self, name: str, value: str) -> None:
        attributes = self._state().attributes
        if name not in attributes:
            raise FakeRTSLibError(f"Cannot find attribute: {name}")
        if name not in self.kernel.ignored_tpg_attributes:
            attributes[name] = str(value)

    @property
    def network_portals(self) -> list[FakePortal]:
        return [
            FakePortal(self, f"[{ip}]" if ":" in ip else ip, port)
            for ip, port in sorted(self._state().portals)
        ]

    @property
    def luns(self) -> list[FakeLun]:
        return [FakeLun(self, lun_id) for lun_id in sorted(self._state().luns)]

    @property
    def node_acls(self) -> list[FakeAcl]:
        return [FakeAcl(self, wwn) for wwn in sorted(self._state().acls)]

    def dump(self) -> dict[str, Any]:
        state = self._state()
        return {
            "tag": self.tag,
            "enable": state.enable,
            "attributes": dict(state.attributes),
            "portals": [{"ip_address": p.ip_address, "port": p.port} for p in self.network_portals],
            "luns": [
                {"index": lun_id, "storage_object": f"/backstores/block/{name}"}
                for lun_id, name in sorted(state.luns.items())
            ],
            "node_acls": [acl.dump() for acl in self.node_acls],
        }


class FakePortal:
    def __init__(self, tpg: FakeTpg, ip_address: str, port: int) -> None:
        self.tpg = tpg
        self.ip_address = ip_address
        self.port = port

    def _key(self) -> tuple[str, int]:
        return self.ip_address.strip("[]"), self.port

    def delete(self) -> None:
        self.tpg.kernel.enter("NetworkPortal.delete")
        self.tpg._state().portals.discard(self._key())


class FakeLun:
    def __init__(self, tpg: FakeTpg, lun: int) -> None:
        self.parent_tpg = tpg
        self.lun = lun

    @property
    def storage_object(self) -> FakeStorageObject:
        name = self.parent_tpg._state().luns[self.lun]
        if name not in self.parent_tpg.kernel.backstores:
            raise FakeRTSLibError("Broken LUN in configFS, no storage object")
        return FakeStorageObject(self.parent_tpg.kernel, name)

    def delete(self) -> None:
        self.parent_tpg.kernel.enter("LUN.delete")
        state = self.parent_tpg._state()
        for acl in state.acls.values():
            for mapped_id in [m for m, t in acl.mapped.items() if t == self.lun]:
                del acl.mapped[mapped_id]
        state.luns.pop(self.lun, None)


class FakeAcl:
    def __init__(self, tpg: FakeTpg, node_wwn: str) -> None:
        self.parent_tpg = tpg
        self.kernel = tpg.kernel
        self.node_wwn = node_wwn

    def _state(self) -> AclState:
        try:
            return self.parent_tpg._state().acls[self.node_wwn]
        except KeyError:
            raise FakeRTSLibNotInCFSError(f"no ACL {self.node_wwn}") from None

    def list_attributes(self) -> list[str]:
        return sorted(self._state().attributes)

    def get_attribute(self, name: str) -> str:
        attributes = self._state().attributes
        if name not in attributes:
            raise FakeRTSLibError(f"Cannot find attribute: {name}")
        return attributes[name]

    def set_attribute(self, name: str, value: str) -> None:
        attributes = self._state().attributes
        if name not in attributes:
            raise FakeRTSLibError(f"Cannot find attribute: {name}")
        if name == "authentication" and str(value) not in ("-1", "0", "1"):
            raise FakeRTSLibError("Cannot set attribute authentication: Invalid argument")
        attributes[name] = str(value)

    # rtslib reads "NULL" back as "" and writes "" as "NULL".
    @property
    def chap_userid(self) -> str:
        return self._state().userid

    @chap_userid.setter
    def chap_userid(self, value: str) -> None:
        self._check_auth_value(value)
        self._state().userid = value.strip()

    @property
    def chap_password(self) -> str:
        return self._state().password

    @chap_password.setter
    def chap_password(self, value: str) -> None:
        self._check_auth_value(value)
        self._state().password = value.strip()

    @property
    def chap_mutual_userid(self) -> str:
        return self._state().mutual_userid

    @chap_mutual_userid.setter
    def chap_mutual_userid(self, value: str) -> None:
        self._state().mutual_userid = value.strip()

    @property
    def chap_mutual_password(self) -> str:
        return self._state().mutual_password

    @chap_mutual_password.setter
    def chap_mutual_password(self, value: str) -> None:
        self._state().mutual_password = value.strip()

    @staticmethod
    def _check_auth_value(value: str) -> None:
        if value.strip() == "NULL":
            raise FakeRTSLibError("'NULL' is not a permitted value")
        if len(value.strip()) > 255:
            raise FakeRTSLibError("Value longer than maximum length of 255")

    @property
    def mapped_luns(self) -> list[FakeMappedLun]:
        return [FakeMappedLun(self, m) for m in sorted(self._state().mapped)]

    def delete(self) -> None:
        self.kernel.enter("NodeACL.delete")
        self.parent_tpg._state().acls.pop(self.node_wwn, None)

    def dump(self) -> dict[str, Any]:
        state = self._state()
        entry: dict[str, Any] = {
            "node_wwn": self.node_wwn,
            "attributes": {k: int(v) for k, v in state.attributes.items()},
            "mapped_luns": [
                {"index": m, "tpg_lun": t, "write_protect": False}
                for m, t in sorted(state.mapped.items())
            ],
        }
        if state.userid:
            entry["chap_userid"] = state.userid
        if state.password:
            entry["chap_password"] = state.password
        return entry


class FakeMappedLun:
    def __init__(self, acl: FakeAcl, mapped_lun: int) -> None:
        self.acl = acl
        self.mapped_lun = mapped_lun

    @property
    def tpg_lun(self) -> FakeLun:
        target_lun = self.acl._state().mapped[self.mapped_lun]
        if target_lun not in self.acl.parent_tpg._state().luns:
            raise FakeRTSLibError("Broken MappedLUN, no TPG LUN found")
        return FakeLun(self.acl.parent_tpg, target_lun)

    def delete(self) -> None:
        self.acl.kernel.enter("MappedLUN.delete")
        self.acl._state().mapped.pop(self.mapped_lun, None)


class FakeRoot:
    def __init__(self, lib: FakeRtslib) -> None:
        self.lib = lib
        self.kernel = lib.kernel

    @property
    def storage_objects(self) -> list[FakeStorageObject]:
        return [FakeStorageObject(self.kernel, name) for name in sorted(self.kernel.backstores)]

    @property
    def targets(self) -> list[FakeTarget]:
        return [FakeTarget(self.kernel, iqn) for iqn in sorted(self.kernel.targets)]

    def invalidate_caches(self) -> None:
        self.kernel.cache_invalidations += 1

    def dump(self) -> dict[str, Any]:
        return {
            "storage_objects": [so.dump() for so in self.storage_objects],
            "targets": [target.dump() for target in self.targets],
            "fabric_modules": [],
        }

    def restore(
        self, config: dict[str, Any], clear_existing: bool = False, abort_on_error: bool = False
    ) -> list[str]:
        """Recreate ``config``, with rtslib's refusal to restore over existing objects."""
        if clear_existing:
            self.kernel.clear()
        for entry in config.get("storage_objects", []):
            if entry["name"] in self.kernel.backstores:
                raise FakeRTSLibError(f"storageobject 'block:{entry['name']}' exist not restoring")
        for entry in config.get("targets", []):
            if entry["wwn"] in self.kernel.targets:
                raise FakeRTSLibError(f"target with wwn {entry['wwn']} exist, not restoring")

        errors: list[str] = []
        for entry in config.get("storage_objects", []):
            arguments = {
                key: value
                for key, value in entry.items()
                if key not in ("exists", "attributes", "plugin", "buffered_mode", "alua_tpgs")
            }
            try:
                self.lib.BlockStorageObject(**arguments)
            except Exception as err:
                errors.append(f"Could not create StorageObject {entry['name']}: {err}, skipped")

        for entry in config.get("targets", []):
            target = self.lib.Target(FakeFabric(self.kernel), entry["wwn"], mode="create")
            for tpg_entry in entry.get("tpgs", []):
                tpg = self.lib.TPG(target, tpg_entry["tag"], mode="create")
                tpg._state().attributes.update(
                    {k: str(v) for k, v in tpg_entry.get("attributes", {}).items()}
                )
                for lun_entry in tpg_entry.get("luns", []):
                    name = lun_entry["storage_object"].split("/")[-1]
                    if name not in self.kernel.backstores:
                        errors.append(
                            f"Could not find matching StorageObject for LUN {lun_entry['index']}"
                        )
                        continue
                    self.lib.LUN(
                        tpg, lun_entry["index"], storage_object=FakeStorageObject(self.kernel, name)
                    )
                for portal in tpg_entry.get("portals", []):
                    self.lib.NetworkPortal(tpg, portal["ip_address"], portal["port"], mode="create")
                for acl_entry in tpg_entry.get("node_acls", []):
                    acl = self.lib.NodeACL(tpg, acl_entry["node_wwn"], mode="create")
                    for name, value in acl_entry.get("attributes", {}).items():
                        acl.set_attribute(name, str(value))
                    acl.chap_userid = acl_entry.get("chap_userid", "")
                    acl.chap_password = acl_entry.get("chap_password", "")
                    for mapped in acl_entry.get("mapped_luns", []):
                        if mapped["tpg_lun"] in tpg._state().luns:
                            self.lib.MappedLUN(acl, mapped["index"], tpg_lun=mapped["tpg_lun"])
                tpg.enable = tpg_entry.get("enable", True)
        return errors


class FakeRtslib:
    """Module-shaped: LioAdapter reaches every class and error through attributes."""

    RTSLibError = FakeRTSLibError
    RTSLibNotInCFSError = FakeRTSLibNotInCFSError

    def __init__(self, kernel: FakeKernel | None = None) -> None:
        self.kernel = kernel or FakeKernel()

    def RTSRoot(self) -> FakeRoot:
        self.kernel.enter("RTSRoot")
        return FakeRoot(self)

    def FabricModule(self, name: str) -> FakeFabric:
        assert name == "iscsi"
        return FakeFabric(self.kernel)

    def Target(self, fabric: FakeFabric, wwn: str, mode: str = "any") -> FakeTarget:
        self.kernel.enter("Target")
        wwn = wwn.lower()
        exists = wwn in self.kernel.targets
        if mode == "lookup" and not exists:
            raise FakeRTSLibNotInCFSError(f"No such Target in configfs: {wwn}")
        if mode == "create" and exists:
            raise FakeRTSLibError("This Target already exists in configFS")
        self.kernel.targets.setdefault(wwn, TargetState())
        return FakeTarget(self.kernel, wwn)

    def TPG(self, target: FakeTarget, tag: int, mode: str = "any") -> FakeTpg:
        self.kernel.enter("TPG")
        tpgs = target._state().tpgs
        if mode == "lookup" and tag not in tpgs:
            raise FakeRTSLibNotInCFSError(f"No such TPG in configfs: {tag}")
        if mode == "create" and tag in tpgs:
            raise FakeRTSLibError("This TPG already exists in configFS")
        tpgs.setdefault(tag, TpgState())
        return FakeTpg(target, tag)

    def NetworkPortal(
        self, tpg: FakeTpg, ip_address: str, port: int, mode: str = "any"
    ) -> FakePortal:
        self.kernel.enter("NetworkPortal")
        key = (ip_address.strip("[]"), port)
        if ":" in key[0] and not ip_address.startswith("["):
            raise FakeRTSLibError(f"Could not create NetworkPortal in configFS: {ip_address}")
        portals = tpg._state().portals
        if mode == "create" and key in portals:
            raise FakeRTSLibError("This NetworkPortal already exists in configFS")
        portals.add(key)
        return FakePortal(tpg, ip_address, port)

    def BlockStorageObject(
        self,
        name: str,
        dev: str | None = None,
        wwn: str | None = None,
        readonly: bool = False,
        write_back: bool = False,
        index: int | None = None,
    ) -> FakeStorageObject:
        self.kernel.enter("BlockStorageObject")
        if dev is None:
            if name not in self.kernel.backstores:
                raise FakeRTSLibNotInCFSError(f"Storage object block/{name} not found")
            return FakeStorageObject(self.kernel, name)
        if name in self.kernel.backstores:
            raise FakeRTSLibError(f"Storage object block/{name} exists")
        if not dev.startswith("/dev/"):
            raise FakeRTSLibError(f"Device {dev} is not a TYPE_DISK block device")
        serial = self.kernel.forced_wwn if self.kernel.forced_wwn is not None else wwn
        self.kernel.backstores[name] = BackstoreState(dev=dev, wwn=serial or "generated")
        return FakeStorageObject(self.kernel, name)

    def LUN(
        self, tpg: FakeTpg, lun: int, storage_object: FakeStorageObject | None = None
    ) -> FakeLun:
        self.kernel.enter("LUN")
        luns = tpg._state().luns
        if storage_object is None:
            if lun not in luns:
                raise FakeRTSLibNotInCFSError(f"No such LUN in configfs: {lun}")
        else:
            if lun in luns:
                raise FakeRTSLibError("This LUN already exists in configFS")
            luns[lun] = storage_object.name
        return FakeLun(tpg, lun)

    def NodeACL(self, tpg: FakeTpg, node_wwn: str, mode: str = "any") -> FakeAcl:
        self.kernel.enter("NodeACL")
        node_wwn = node_wwn.lower()
        acls = tpg._state().acls
        if mode == "lookup" and node_wwn not in acls:
            raise FakeRTSLibNotInCFSError(f"No such NodeACL in configfs: {node_wwn}")
        if mode == "create" and node_wwn in acls:
            raise FakeRTSLibError("This NodeACL already exists in configFS")
        if node_wwn not in acls:
            state = AclState()
            if not self.kernel.acl_authentication_attribute:
                state.attributes.pop("authentication")
            acls[node_wwn] = state
        return FakeAcl(tpg, node_wwn)

    def MappedLUN(self, acl: FakeAcl, mapped_lun: int, tpg_lun: int | None = None) -> FakeMappedLun:
        self.kernel.enter("MappedLUN")
        mapped = acl._state().mapped
        if tpg_lun is None:
            if mapped_lun not in mapped:
                raise FakeRTSLibNotInCFSError(f"No such MappedLUN in configfs: {mapped_lun}")
        else:
            if mapped_lun in mapped:
                raise FakeRTSLibError("This MappedLUN already exists in configFS")
            if tpg_lun not in acl.parent_tpg._state().luns:
                raise FakeRTSLibError(f"LUN {tpg_lun} does not exist in this TPG")
            mapped[mapped_lun] = tpg_lun
        return FakeMappedLun(acl, mapped_lun)


# -- fixtures and values --------------------------------------------------------------------

TARGET = "iqn.2003-01.org.linux-iscsi.cspd:vol-1"
OTHER_TARGET = "iqn.2003-01.org.linux-iscsi.cspd:vol-2"
HOST_A = "iqn.1993-08.org.debian:01:hosta"
HOST_B = "iqn.1993-08.org.debian:01:hostb"
SERIAL = "f396bc6d-b59a-487b-95ce-708801234567"
OTHER_SERIAL = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
DEVICE = "/dev/cspd/vol-1"
OTHER_DEVICE = "/dev/cspd/vol-2"
SECRET = "s3cret-passw0rd"
CHAP = Chap("hosta", SECRET)


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


@pytest.fixture
def save_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "lio.json"


@pytest.fixture
def adapter(kernel: FakeKernel, save_path: Path, tmp_path: Path) -> LioAdapter:
    return LioAdapter(
        IscsiConfig(),
        save_path,
        configfs_root=str(tmp_path / "config" / "target"),
        rtslib=FakeRtslib(kernel),
    )


async def export(adapter: LioAdapter, *, chap: Chap | None = None) -> None:
    """Make the usual single export: backstore, target, LUN 0 and an ACL for HOST_A."""
    await adapter.ensure_backstore("vol-1", DEVICE, SERIAL)
    await adapter.ensure_target(TARGET, ["192.0.2.10"], 3260)
    await adapter.ensure_lun(TARGET, 0, "vol-1")
    await adapter.ensure_acl(TARGET, HOST_A, 0, chap)


# -- NAA identifier -------------------------------------------------------------------------


def test_naa_matches_lab_multipath_wwid() -> None:
    # The guest's multipath named the map of serial f396bc6d-b59a-487b-95ce-70880...
    # 36001405f396bc6db59a487b95ce70880; the WWID is "3" + the NAA identifier.
    assert "3" + naa_from_unit_serial(SERIAL) == "36001405f396bc6db59a487b95ce70880"


def test_naa_is_32_hex_digits() -> None:
    naa = naa_from_unit_serial(SERIAL)
    assert len(naa) == 32
    assert set(naa) <= set("0123456789abcdef")


def test_naa_lowercases_serial() -> None:
    assert naa_from_unit_serial(SERIAL.upper()) == naa_from_unit_serial(SERIAL)


def test_naa_skips_non_hex_characters() -> None:
    assert naa_from_unit_serial("f396bc6d:b59a/487b 95ce.70880") == (
        "6001405f396bc6db59a487b95ce70880"
    )


def test_naa_rejects_short_serial() -> None:
    with pytest.raises(ValueError, match="25 are needed"):
        naa_from_unit_serial("1234-5678")


# -- iSCSI names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "iqn.1993-08.org.debian:01:abcdef012345",
        "iqn.2003-01.org.linux-iscsi.cspd:vol-1",
        "iqn.1991-05.com.microsoft:host1.example.com",
        "iqn.2024-12.com.example.storage",
        "eui.02004567a425678d",
        "naa.52004567ba64678d",
        "naa.62004567ba64678d0123456789abcdef",
    ],
)
def test_valid_iscsi_names(name: str) -> None:
    assert is_valid_iqn(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "iqn.2003-13.org.example:x",
        "iqn.2003-00.org.example:x",
        "iqn.03-01.org.example:x",
        "IQN.2003-01.org.example:x",
        "iqn.2003-01.Org.Example:x",
        "iqn.2003-01.org.example:Host1",
        "iqn.2003-01.org_example.net:x",
        "iqn.2003-01.org.example:under_score",
        "iqn.2003-01.org.example:has space",
        "iqn.2003-01.localdomain:x",
        "iqn.2003-01.org.example.:x",
        "iqn.2003-01.org.-example:x",
        "eui.02004567a425678",
        "eui.02004567A425678D",
        "naa.1234",
        "naa.62004567ba64678d0123",
        "iqn.2003-01.org.example:" + "a" * 200,
    ],
)
def test_invalid_iscsi_names(name: str) -> None:
    assert not is_valid_iqn(name)


# -- CHAP -----------------------------------------------------------------------------------


def test_chap_repr_hides_password() -> None:
    assert SECRET not in repr(CHAP)
    assert "hosta" in repr(CHAP)


@pytest.mark.parametrize(
    "chap",
    [
        Chap("", SECRET),
        Chap("user", ""),
        Chap("NULL", SECRET),
        Chap("user", " " + SECRET),
        Chap("user", SECRET + "\n"),
        Chap("user", "x" * 256),
    ],
)
def test_check_chap_rejects_unstorable(chap: Chap) -> None:
    with pytest.raises(LioError) as raised:
        check_chap(chap, HOST_A)
    assert HOST_A in raised.value.message
    if chap.password.strip():
        assert chap.password.strip() not in raised.value.message


# -- portals --------------------------------------------------------------------------------


def test_portal_addresses_default_wildcard() -> None:
    assert portal_addresses([]) == ["0.0.0.0"]


def test_portal_addresses_canonical_and_deduplicated() -> None:
    given = ["192.0.2.10", "2001:db8:0:0::1", "192.0.2.10", "2001:db8::1"]
    assert portal_addresses(given) == ["192.0.2.10", "2001:db8::1"]


@pytest.mark.parametrize("portal", ["0.0.0.0", "::", "not-an-ip", "192.0.2.300"])
def test_portal_addresses_rejects(portal: str) -> None:
    with pytest.raises(LioError, match="portal"):
        portal_addresses(["192.0.2.10", portal])


def test_portal_ip_brackets_round_trip() -> None:
    assert rtslib_portal_ip("192.0.2.10") == "192.0.2.10"
    assert rtslib_portal_ip("2001:db8::1") == "[2001:db8::1]"
    assert plain_portal_ip("[2001:db8:0::1]") == "2001:db8::1"
    assert plain_portal_ip("192.0.2.10") == "192.0.2.10"


def test_plan_portals_diff() -> None:
    to_add, to_remove = plan_portals(
        [("0.0.0.0", 3260), ("192.0.2.10", 3260)], [("192.0.2.10", 3260), ("192.0.2.11", 3260)]
    )
    assert to_add == [("192.0.2.11", 3260)]
    assert to_remove == [("0.0.0.0", 3260)]


# -- saved file -----------------------------------------------------------------------------


def test_write_private_file_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "state" / "lio.json"
    old_umask = os.umask(0)
    try:
        write_private_file(path, b"{}\n")
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == b"{}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_write_private_file_tightens_existing_mode(tmp_path: Path) -> None:
    path = tmp_path / "lio.json"
    path.write_text("old")
    path.chmod(0o644)
    write_private_file(path, b"new")
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_write_private_file_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "lio.json"
    write_private_file(path, b"one")
    write_private_file(path, b"two")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lio.json"]


def test_write_private_file_failure_keeps_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "lio.json"
    path.write_text("old")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        write_private_file(path, b"new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lio.json"]


def test_write_private_file_syncs_file_and_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    write_private_file(tmp_path / "lio.json", b"data")
    assert len(synced) == 2
    assert synced[0].startswith(str(tmp_path / ".lio.json."))
    assert synced[1] == str(tmp_path)


# -- restore helpers ------------------------------------------------------------------------


def test_select_missing_splits_present() -> None:
    saved = {
        "storage_objects": [
            {"plugin": "block", "name": "vol-1"},
            {"plugin": "block", "name": "vol-2"},
            {"plugin": "fileio", "name": "vol-1"},
        ],
        "targets": [{"wwn": TARGET}, {"wwn": OTHER_TARGET}],
        "fabric_modules": [],
    }
    subset, kept_objects, kept_targets = select_missing(saved, {("block", "vol-1")}, {TARGET})
    assert subset["storage_objects"] == [
        {"plugin": "block", "name": "vol-2"},
        {"plugin": "fileio", "name": "vol-1"},
    ]
    assert subset["targets"] == [{"wwn": OTHER_TARGET}]
    assert subset["fabric_modules"] == []
    assert kept_objects == ["block/vol-1"]
    assert kept_targets == [TARGET]


def test_select_missing_rejects_malformed() -> None:
    with pytest.raises(ValueError, match="storage_objects"):
        select_missing({"storage_objects": ["vol-1"]}, set(), set())


def test_strip_unknown_arguments_for_older_rtslib() -> None:
    def old_constructor(
        name: str, dev: str | None = None, wwn: str | None = None, readonly: bool = False
    ) -> None:
        pass

    entry = {
        "name": "vol-1",
        "dev": DEVICE,
        "wwn": SERIAL,
        "readonly": False,
        "exclusive": True,
        "attributes": {"block_size": 512},
        "plugin": "block",
    }
    stripped = strip_unknown_arguments(entry, old_constructor)
    assert "exclusive" not in stripped
    assert stripped["attributes"] == {"block_size": 512}
    assert stripped["plugin"] == "block"
    assert stripped["wwn"] == SERIAL


def test_strip_unknown_arguments_keeps_all_for_kwargs() -> None:
    def flexible(name: str, **kwargs: object) -> None:
        pass

    entry = {"name": "vol-1", "exclusive": True}
    assert strip_unknown_arguments(entry, flexible) == entry


def test_configfs_mounted_parses_mounts() -> None:
    mounts = (
        "sysfs /sys sysfs rw,nosuid 0 0\nconfigfs /sys/kernel/config configfs rw,relatime 0 0\n"
    )
    assert configfs_mounted(mounts, "/sys/kernel/config")
    assert not configfs_mounted(mounts, "/sys/kernel")
    assert not configfs_mounted("sysfs /sys sysfs rw 0 0\n", "/sys/kernel/config")


# -- backstores -----------------------------------------------------------------------------


async def test_ensure_backstore_creates(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await adapter.ensure_backstore("vol-1", DEVICE, SERIAL)
    assert kernel.backstores["vol-1"] == BackstoreState(DEVICE, SERIAL)


async def test_ensure_backstore_idempotent(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await adapter.ensure_backstore("vol-1", DEVICE, SERIAL)
    await adapter.ensure_backstore("vol-1", DEVICE, SERIAL)
    assert list(kernel.backstores) == ["vol-1"]


async def test_ensure_backstore_serial_mismatch(adapter: LioAdapter) -> None:
    await adapter.ensure_backstore("vol-1", DEVICE, SERIAL)
    with pytest.raises(LioError, match=r"backstore vol-1 exists on .* with unit serial"):
        await adapter.ensure_backstore("vol-1", DEVICE, OTHER_SERIAL)


async def test_ensure_backstore_device_mismatch(adapter: LioAdapter) -> None:
    await adapter.ensure_backstore("vol-1", DEVICE, SERIAL)
    with pytest.raises(LioError, match=OTHER_DEVICE):
        await adapter.ensure_backstore("vol-1", OTHER_DEVICE, SERIAL)


@pytest.mark.parametrize(
    ("name", "device", "serial", "message"),
    [
        ("vol/1", DEVICE, SERIAL, "backstore name"),
        ("vol 1", DEVICE, SERIAL, "backstore name"),
        ("vol-1", "cspd/vol-1", SERIAL, "not a /dev path"),
        ("vol-1", DEVICE, "1234", "hex digits"),
        ("vol-1", DEVICE, SERIAL + " x", "without spaces"),
        ("vol-1", DEVICE, "a" * 254, "longer than"),
    ],
)
async def test_ensure_backstore_rejects_input(
    adapter: LioAdapter, kernel: FakeKernel, name: str, device: str, serial: str, message: str
) -> None:
    with pytest.raises(LioError, match=message):
        await adapter.ensure_backstore(name, device, serial)
    assert kernel.backstores == {}


async def test_ensure_backstore_readback_mismatch_undone(
    adapter: LioAdapter, kernel: FakeKernel
) -> None:
    kernel.forced_wwn = OTHER_SERIAL
    with pytest.raises(LioError, match="unit serial"):
        await adapter.ensure_backstore("vol-1", DEVICE, SERIAL)
    assert kernel.backstores == {}


async def test_rtslib_error_translated(adapter: LioAdapter, kernel: FakeKernel) -> None:
    kernel.fail("BlockStorageObject")
    with pytest.raises(LioError) as raised:
        await adapter.ensure_backstore("vol-1", DEVICE, SERIAL)
    assert isinstance(raised.value.__cause__, FakeRTSLibError)
    assert "vol-1" in raised.value.message
    assert DEVICE in raised.value.message
    assert "injected failure" in raised.value.message


async def test_os_error_translated(adapter: LioAdapter, kernel: FakeKernel) -> None:
    def broken_root() -> FakeRoot:
        raise PermissionError(13, "Permission denied")

    adapter_lib = FakeRtslib(kernel)
    adapter_lib.RTSRoot = broken_root  # type: ignore[method-assign]
    broken = LioAdapter(IscsiConfig(), Path("/nonexistent/lio.json"), rtslib=adapter_lib)
    with pytest.raises(LioError, match="Permission denied") as raised:
        await broken.read_state()
    assert isinstance(raised.value.__cause__, PermissionError)


async def test_remove_backstore_refused_while_exported(adapter: LioAdapter) -> None:
    await export(adapter)
    with pytest.raises(LioError, match=f"still exported as LUN 0 of target {TARGET}"):
        await adapter.remove_backstore("vol-1")


async def test_remove_backstore_after_lun(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await export(adapter)
    await adapter.remove_lun(TARGET, 0)
    await adapter.remove_backstore("vol-1")
    assert kernel.backstores == {}


async def test_remove_backstore_missing_ok(adapter: LioAdapter) -> None:
    await adapter.remove_backstore("vol-1")


# -- targets --------------------------------------------------------------------------------


async def test_ensure_target_configures_tpg(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await adapter.ensure_target(TARGET, ["192.0.2.10", "2001:db8::10"], 3260)
    tpg = kernel.tpg_state(TARGET)
    assert tpg.enable
    assert tpg.attributes["generate_node_acls"] == "0"
    assert tpg.attributes["authentication"] == "0"
    assert tpg.attributes["demo_mode_write_protect"] == "1"
    assert tpg.attributes["cache_dynamic_acls"] == "0"
    assert tpg.portals == {("192.0.2.10", 3260), ("2001:db8::10", 3260)}


async def test_ensure_target_wildcard_without_portals(
    adapter: LioAdapter, kernel: FakeKernel
) -> None:
    await adapter.ensure_target(TARGET, [], 3260)
    assert kernel.tpg_state(TARGET).portals == {("0.0.0.0", 3260)}


async def test_ensure_target_replaces_portals(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await adapter.ensure_target(TARGET, [], 3260)
    await adapter.ensure_target(TARGET, ["192.0.2.10", "192.0.2.11"], 3260)
    assert kernel.tpg_state(TARGET).portals == {("192.0.2.10", 3260), ("192.0.2.11", 3260)}


async def test_ensure_target_idempotent(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await export(adapter)
    await adapter.ensure_target(TARGET, ["192.0.2.10"], 3260)
    tpg = kernel.tpg_state(TARGET)
    assert tpg.luns == {0: "vol-1"}
    assert list(tpg.acls) == [HOST_A]


async def test_ensure_target_enables_disabled_tpg(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await adapter.ensure_target(TARGET, ["192.0.2.10"], 3260)
    kernel.tpg_state(TARGET).enable = False
    kernel.tpg_state(TARGET).attributes["generate_node_acls"] = "1"
    await adapter.ensure_target(TARGET, ["192.0.2.10"], 3260)
    assert kernel.tpg_state(TARGET).enable
    assert kernel.tpg_state(TARGET).attributes["generate_node_acls"] == "0"


async def test_ensure_target_failure_removes_new_target(
    adapter: LioAdapter, kernel: FakeKernel
) -> None:
    kernel.fail("NetworkPortal")
    with pytest.raises(LioError, match=f"create iSCSI target {TARGET} failed"):
        await adapter.ensure_target(TARGET, ["192.0.2.10"], 3260)
    assert kernel.targets == {}


async def test_ensure_target_failure_keeps_existing_target(
    adapter: LioAdapter, kernel: FakeKernel
) -> None:
    await export(adapter)
    kernel.fail("NetworkPortal")
    with pytest.raises(LioError):
        await adapter.ensure_target(TARGET, ["192.0.2.11"], 3260)
    assert kernel.tpg_state(TARGET).luns == {0: "vol-1"}


async def test_ensure_target_readback_mismatch(adapter: LioAdapter, kernel: FakeKernel) -> None:
    kernel.ignored_tpg_attributes.add("authentication")
    with pytest.raises(LioError, match="attribute authentication is 1, not 0"):
        await adapter.ensure_target(TARGET, ["192.0.2.10"], 3260)
    assert kernel.targets == {}


@pytest.mark.parametrize(
    ("iqn", "portals", "port", "message"),
    [
        ("iqn.2003-01.org.example:Vol", [], 3260, "target name"),
        (TARGET, ["0.0.0.0"], 3260, "wildcard"),
        (TARGET, ["192.0.2.10"], 0, "not a TCP port"),
        (TARGET, ["192.0.2.10"], 65536, "not a TCP port"),
    ],
)
async def test_ensure_target_rejects_input(
    adapter: LioAdapter, kernel: FakeKernel, iqn: str, portals: list[str], port: int, message: str
) -> None:
    with pytest.raises(LioError, match=message):
        await adapter.ensure_target(iqn, portals, port)
    assert kernel.targets == {}


async def test_remove_target(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await export(adapter)
    await adapter.remove_target(TARGET)
    assert kernel.targets == {}
    assert list(kernel.backstores) == ["vol-1"]


async def test_remove_target_missing_ok(adapter: LioAdapter) -> None:
    await adapter.remove_target(TARGET)


# -- LUNs -----------------------------------------------------------------------------------


async def test_ensure_lun_creates_and_repeats(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await adapter.ensure_backstore("vol-1", DEVICE, SERIAL)
    await adapter.ensure_target(TARGET, [], 3260)
    await adapter.ensure_lun(TARGET, 3, "vol-1")
    await adapter.ensure_lun(TARGET, 3, "vol-1")
    assert kernel.tpg_state(TARGET).luns == {3: "vol-1"}


async def test_ensure_lun_id_taken_by_other_backstore(adapter: LioAdapter) -> None:
    await export(adapter)
    await adapter.ensure_backstore("vol-2", OTHER_DEVICE, OTHER_SERIAL)
    with pytest.raises(LioError, match=r"LUN 0 of target .* already used by backstore vol-1"):
        await adapter.ensure_lun(TARGET, 0, "vol-2")


async def test_ensure_lun_backstore_twice(adapter: LioAdapter) -> None:
    await export(adapter)
    with pytest.raises(LioError, match=r"vol-1 is already LUN 0 .* cannot also be LUN 1"):
        await adapter.ensure_lun(TARGET, 1, "vol-1")


async def test_ensure_lun_needs_target(adapter: LioAdapter) -> None:
    await adapter.ensure_backstore("vol-1", DEVICE, SERIAL)
    with pytest.raises(LioError, match=f"target {TARGET} does not exist"):
        await adapter.ensure_lun(TARGET, 0, "vol-1")


async def test_ensure_lun_needs_backstore(adapter: LioAdapter) -> None:
    await adapter.ensure_target(TARGET, [], 3260)
    with pytest.raises(LioError, match="backstore vol-1 does not exist"):
        await adapter.ensure_lun(TARGET, 0, "vol-1")


@pytest.mark.parametrize("lun", [-1, 65536, True])
async def test_ensure_lun_rejects_id(adapter: LioAdapter, lun: int) -> None:
    with pytest.raises(LioError, match="LUN id"):
        await adapter.ensure_lun(TARGET, lun, "vol-1")


async def test_remove_lun_takes_mappings_and_empty_acls(
    adapter: LioAdapter, kernel: FakeKernel
) -> None:
    await export(adapter)
    await adapter.ensure_backstore("vol-2", OTHER_DEVICE, OTHER_SERIAL)
    await adapter.ensure_lun(TARGET, 1, "vol-2")
    await adapter.ensure_acl(TARGET, HOST_A, 1, None)
    await adapter.ensure_acl(TARGET, HOST_B, 0, None)

    await adapter.remove_lun(TARGET, 0)

    tpg = kernel.tpg_state(TARGET)
    assert tpg.luns == {1: "vol-2"}
    assert list(tpg.acls) == [HOST_A]
    assert tpg.acls[HOST_A].mapped == {1: 1}


async def test_remove_lun_missing_ok(adapter: LioAdapter) -> None:
    await adapter.remove_lun(TARGET, 0)
    await adapter.ensure_target(TARGET, [], 3260)
    await adapter.remove_lun(TARGET, 0)


# -- ACLs and CHAP --------------------------------------------------------------------------


async def test_ensure_acl_without_chap(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await export(adapter)
    acl = kernel.tpg_state(TARGET).acls[HOST_A]
    assert acl.mapped == {0: 0}
    assert acl.attributes["authentication"] == "0"
    assert acl.userid == ""
    assert acl.password == ""


async def test_ensure_acl_with_chap(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await export(adapter, chap=CHAP)
    acl = kernel.tpg_state(TARGET).acls[HOST_A]
    assert acl.attributes["authentication"] == "1"
    assert acl.userid == "hosta"
    assert acl.password == SECRET
    assert kernel.tpg_state(TARGET).attributes["authentication"] == "0"


async def test_chap_and_plain_hosts_share_target(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await export(adapter, chap=CHAP)
    await adapter.ensure_acl(TARGET, HOST_B, 0, None)
    acls = kernel.tpg_state(TARGET).acls
    assert acls[HOST_A].attributes["authentication"] == "1"
    assert acls[HOST_B].attributes["authentication"] == "0"
    assert acls[HOST_B].userid == ""


async def test_ensure_acl_turns_chap_off(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await export(adapter, chap=CHAP)
    kernel.tpg_state(TARGET).acls[HOST_A].mutual_userid = "target"
    await adapter.ensure_acl(TARGET, HOST_A, 0, None)
    acl = kernel.tpg_state(TARGET).acls[HOST_A]
    assert acl.attributes["authentication"] == "0"
    assert acl.userid == ""
    assert acl.password == ""
    assert acl.mutual_userid == ""


async def test_ensure_acl_changes_secret(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await export(adapter, chap=CHAP)
    await adapter.ensure_acl(TARGET, HOST_A, 0, Chap("hosta", "another-s3cret"))
    assert kernel.tpg_state(TARGET).acls[HOST_A].password == "another-s3cret"


async def test_ensure_acl_adds_second_lun(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await export(adapter)
    await adapter.ensure_backstore("vol-2", OTHER_DEVICE, OTHER_SERIAL)
    await adapter.ensure_lun(TARGET, 1, "vol-2")
    await adapter.ensure_acl(TARGET, HOST_A, 1, None)
    assert kernel.tpg_state(TARGET).acls[HOST_A].mapped == {0: 0, 1: 1}


async def test_ensure_acl_failure_removes_new_acl(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await export(adapter)
    kernel.fail("MappedLUN")
    with pytest.raises(LioError, match=f"grant initiator {HOST_B} LUN 0 of target {TARGET}"):
        await adapter.ensure_acl(TARGET, HOST_B, 0, CHAP)
    assert list(kernel.tpg_state(TARGET).acls) == [HOST_A]


async def test_ensure_acl_failure_restores_chap(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await export(adapter)
    await adapter.ensure_backstore("vol-2", OTHER_DEVICE, OTHER_SERIAL)
    await adapter.ensure_lun(TARGET, 1, "vol-2")
    kernel.fail("MappedLUN")
    with pytest.raises(LioError):
        await adapter.ensure_acl(TARGET, HOST_A, 1, CHAP)
    acl = kernel.tpg_state(TARGET).acls[HOST_A]
    assert acl.mapped == {0: 0}
    assert acl.attributes["authentication"] == "0"
    assert acl.userid == ""


async def test_ensure_acl_old_kernel_rejects_chap(adapter: LioAdapter, kernel: FakeKernel) -> None:
    kernel.acl_authentication_attribute = False
    with pytest.raises(LioError, match=r"Linux 6.0 or later"):
        await export(adapter, chap=CHAP)
    assert kernel.tpg_state(TARGET).acls == {}


async def test_ensure_acl_old_kernel_plain_ok(adapter: LioAdapter, kernel: FakeKernel) -> None:
    kernel.acl_authentication_attribute = False
    await export(adapter)
    assert kernel.tpg_state(TARGET).acls[HOST_A].mapped == {0: 0}


async def test_ensure_acl_needs_lun(adapter: LioAdapter) -> None:
    await adapter.ensure_target(TARGET, [], 3260)
    with pytest.raises(LioError, match=f"LUN 0 of target {TARGET} does not exist"):
        await adapter.ensure_acl(TARGET, HOST_A, 0, None)


async def test_ensure_acl_mapped_id_conflict(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await export(adapter)
    await adapter.ensure_backstore("vol-2", OTHER_DEVICE, OTHER_SERIAL)
    await adapter.ensure_lun(TARGET, 1, "vol-2")
    kernel.tpg_state(TARGET).acls[HOST_A].mapped = {1: 0}
    with pytest.raises(LioError, match="mapped LUN 1 already points at LUN 0"):
        await adapter.ensure_acl(TARGET, HOST_A, 1, None)


async def test_ensure_acl_rejects_bad_initiator(adapter: LioAdapter) -> None:
    await export(adapter)
    with pytest.raises(LioError, match="initiator name"):
        await adapter.ensure_acl(TARGET, "iqn.1993-08.org.debian:01:HostA", 0, None)


async def test_remove_acl_lun_keeps_acl_with_other_lun(
    adapter: LioAdapter, kernel: FakeKernel
) -> None:
    await export(adapter)
    await adapter.ensure_backstore("vol-2", OTHER_DEVICE, OTHER_SERIAL)
    await adapter.ensure_lun(TARGET, 1, "vol-2")
    await adapter.ensure_acl(TARGET, HOST_A, 1, None)
    await adapter.remove_acl_lun(TARGET, HOST_A, 0)
    assert kernel.tpg_state(TARGET).acls[HOST_A].mapped == {1: 1}


async def test_remove_acl_lun_removes_empty_acl(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await export(adapter)
    await adapter.remove_acl_lun(TARGET, HOST_A, 0)
    assert kernel.tpg_state(TARGET).acls == {}
    assert kernel.tpg_state(TARGET).luns == {0: "vol-1"}


async def test_remove_acl_lun_missing_ok(adapter: LioAdapter) -> None:
    await adapter.remove_acl_lun(TARGET, HOST_A, 0)
    await export(adapter)
    await adapter.remove_acl_lun(TARGET, HOST_B, 0)
    await adapter.remove_acl_lun(TARGET, HOST_A, 5)


async def test_logs_never_contain_secret(
    adapter: LioAdapter, kernel: FakeKernel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await export(adapter, chap=CHAP)
    await adapter.ensure_acl(TARGET, HOST_A, 0, Chap("hosta", "second-s3cret"))
    await adapter.save()
    kernel.fail("MappedLUN")
    with pytest.raises(LioError) as raised:
        await adapter.ensure_acl(TARGET, HOST_B, 0, CHAP)
    assert SECRET not in raised.value.message
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        assert SECRET not in text
        assert "second-s3cret" not in text


# -- read_state -----------------------------------------------------------------------------


async def test_read_state(adapter: LioAdapter) -> None:
    await export(adapter, chap=CHAP)
    await adapter.ensure_acl(TARGET, HOST_B, 0, None)
    await adapter.ensure_backstore("vol-2", OTHER_DEVICE, OTHER_SERIAL)
    state = await adapter.read_state()
    assert state == LioState(
        backstores={
            "vol-1": BackstoreInfo(DEVICE, SERIAL),
            "vol-2": BackstoreInfo(OTHER_DEVICE, OTHER_SERIAL),
        },
        targets={
            TARGET: TargetInfo(
                luns={0: "vol-1"},
                acls={HOST_A: {0: 0}, HOST_B: {0: 0}},
                portals=[("192.0.2.10", 3260)],
                chap_users={HOST_A: "hosta"},
                enabled=True,
            )
        },
    )


async def test_read_state_unconfigured_backstore(adapter: LioAdapter, kernel: FakeKernel) -> None:
    kernel.backstores["half"] = BackstoreState(DEVICE, "", configured=False)
    state = await adapter.read_state()
    assert state.backstores["half"] == BackstoreInfo(DEVICE, "")


async def test_read_state_broken_lun_link(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await export(adapter)
    del kernel.backstores["vol-1"]
    state = await adapter.read_state()
    assert state.targets[TARGET].luns == {0: ""}


async def test_caches_invalidated_per_call(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await adapter.read_state()
    await adapter.read_state()
    assert kernel.cache_invalidations == 2


async def test_changes_are_serialized(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await adapter.ensure_target(TARGET, [], 3260)
    kernel.delay = 0.02
    await asyncio.gather(
        *(
            adapter.ensure_backstore(f"vol-{i}", f"/dev/cspd/vol-{i}", SERIAL[:-1] + str(i))
            for i in range(5)
        ),
        adapter.read_state(),
    )
    assert kernel.max_active_calls == 1
    assert len(kernel.backstores) == 5


async def test_cancelled_caller_keeps_thread_serialized(
    adapter: LioAdapter, kernel: FakeKernel
) -> None:
    kernel.delay = 0.05
    slow = asyncio.ensure_future(adapter.ensure_backstore("vol-1", DEVICE, SERIAL))
    await asyncio.sleep(0.01)
    slow.cancel()
    await adapter.ensure_backstore("vol-2", OTHER_DEVICE, OTHER_SERIAL)
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert kernel.max_active_calls == 1


# -- save and restore -----------------------------------------------------------------------


async def test_save_writes_private_dump(adapter: LioAdapter, save_path: Path) -> None:
    await export(adapter, chap=CHAP)
    await adapter.save()
    assert stat.S_IMODE(save_path.stat().st_mode) == 0o600
    saved = json.loads(save_path.read_text())
    assert [so["name"] for so in saved["storage_objects"]] == ["vol-1"]
    acl = saved["targets"][0]["tpgs"][0]["node_acls"][0]
    assert acl["node_wwn"] == HOST_A
    assert acl["chap_password"] == SECRET


async def test_restore_without_file(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await adapter.restore()
    assert kernel.targets == {}


async def test_restore_after_reboot(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await export(adapter, chap=CHAP)
    await adapter.ensure_acl(TARGET, HOST_B, 0, None)
    before = await adapter.read_state()
    await adapter.save()
    kernel.clear()

    await adapter.restore()

    assert await adapter.read_state() == before
    acls = kernel.tpg_state(TARGET).acls
    assert acls[HOST_A].password == SECRET
    assert acls[HOST_A].attributes["authentication"] == "1"
    assert acls[HOST_B].attributes["authentication"] == "0"


async def test_restore_keeps_present_objects(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await export(adapter)
    await adapter.ensure_backstore("vol-2", OTHER_DEVICE, OTHER_SERIAL)
    await adapter.ensure_target(OTHER_TARGET, ["192.0.2.10"], 3260)
    await adapter.ensure_lun(OTHER_TARGET, 0, "vol-2")
    await adapter.save()
    before = await adapter.read_state()
    # A restart without a reboot: vol-1 and its target survived and changed
    # since the save; vol-2's export was lost.
    await adapter.ensure_acl(TARGET, HOST_B, 0, None)
    await adapter.remove_target(OTHER_TARGET)
    await adapter.remove_backstore("vol-2")

    await adapter.restore()

    state = await adapter.read_state()
    assert state.targets[OTHER_TARGET] == before.targets[OTHER_TARGET]
    assert state.backstores["vol-2"] == BackstoreInfo(OTHER_DEVICE, OTHER_SERIAL)
    assert state.targets[TARGET].acls == {HOST_A: {0: 0}, HOST_B: {0: 0}}


async def test_restore_twice_is_harmless(adapter: LioAdapter, kernel: FakeKernel) -> None:
    await export(adapter)
    await adapter.save()
    before = await adapter.read_state()
    await adapter.restore()
    await adapter.restore()
    assert await adapter.read_state() == before


async def test_restore_logs_problems(
    adapter: LioAdapter, save_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await export(adapter)
    await adapter.save()
    saved = json.loads(save_path.read_text())
    saved["storage_objects"][0]["dev"] = "relative/path"
    save_path.write_text(json.dumps(saved))
    await adapter.remove_target(TARGET)
    await adapter.remove_backstore("vol-1")

    with caplog.at_level(logging.INFO, logger="cspd.lio"):
        await adapter.restore()

    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("Could not create StorageObject vol-1" in e for e in errors)
    assert any("restored 0 storage objects and 1 targets" in r.getMessage() for r in caplog.records)


async def test_restore_rejects_corrupt_file(adapter: LioAdapter, save_path: Path) -> None:
    save_path.parent.mkdir(parents=True)
    save_path.write_text("{not json")
    with pytest.raises(LioError, match="is not JSON"):
        await adapter.restore()


async def test_restore_rejects_malformed_file(adapter: LioAdapter, save_path: Path) -> None:
    save_path.parent.mkdir(parents=True)
    save_path.write_text(json.dumps({"targets": "iqn"}))
    with pytest.raises(LioError, match="section 'targets' is not a list"):
        await adapter.restore()


# -- check ----------------------------------------------------------------------------------


@dataclass
class RecordingRunner(CommandRunner):
    returncode: int = 0
    stderr: str = ""
    calls: list[list[str]] = field(default_factory=list)

    async def execute(
        self, argv: list[str], *, timeout: float, input: bytes | None
    ) -> CommandResult:
        self.calls.append(argv)
        return CommandResult(self.returncode, "", self.stderr, 0.01)


@pytest.fixture
def host_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A configfs mount point in tmp_path, listed in a fake mount table."""
    mount_point = tmp_path / "config"
    (mount_point / "target").mkdir(parents=True)
    mounts = tmp_path / "mounts"
    mounts.write_text(f"configfs {mount_point} configfs rw,relatime 0 0\n")
    modules = tmp_path / "module"
    (modules / "target_core_mod").mkdir(parents=True)
    monkeypatch.setattr(lio, "PROC_MOUNTS", mounts)
    monkeypatch.setattr(lio, "SYS_MODULE", modules)
    return tmp_path


def checking_adapter(host_files: Path, runner: RecordingRunner) -> LioAdapter:
    return LioAdapter(
        IscsiConfig(),
        host_files / "lio.json",
        configfs_root=str(host_files / "config" / "target"),
        rtslib=FakeRtslib(),
        runner=runner,
    )


async def test_check_loads_missing_module(host_files: Path) -> None:
    runner = RecordingRunner()
    await checking_adapter(host_files, runner).check()
    assert runner.calls == [["modprobe", "iscsi_target_mod"]]
    assert (host_files / "config" / "target" / "iscsi").is_dir()


async def test_check_reports_modprobe_failure(host_files: Path) -> None:
    runner = RecordingRunner(
        returncode=1, stderr="modprobe: FATAL: Module iscsi_target_mod not found"
    )
    with pytest.raises(LioError, match=r"iscsi_target_mod is not loaded .* Module iscsi_target_"):
        await checking_adapter(host_files, runner).check()


async def test_check_reports_unmounted_configfs(host_files: Path) -> None:
    (host_files / "mounts").write_text("sysfs /sys sysfs rw 0 0\n")
    with pytest.raises(LioError, match="mount -t configfs configfs"):
        await checking_adapter(host_files, RecordingRunner()).check()


async def test_check_reports_missing_target_folder(host_files: Path) -> None:
    (host_files / "config" / "target").rmdir()
    (host_files / "module" / "iscsi_target_mod").mkdir()
    with pytest.raises(LioError, match="does not exist although target_core_mod is loaded"):
        await checking_adapter(host_files, RecordingRunner()).check()


async def test_check_on_this_host_without_configfs(tmp_path: Path) -> None:
    if configfs_mounted(Path("/proc/self/mounts").read_text(), "/sys/kernel/config"):
        pytest.skip("this host has configfs mounted; the check would pass")
    adapter = LioAdapter(IscsiConfig(), tmp_path / "lio.json", runner=RecordingRunner())
    with pytest.raises(LioError, match="configfs is not mounted at /sys/kernel/config"):
        await adapter.check()


def test_module_imports_without_rtslib() -> None:
    code = "import sys, cspd.lio; print('rtslib_fb' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.stdout.strip() == "False"


# -- FakeLio matches the adapter ------------------------------------------------------------


Scenario = Callable[[Any], Awaitable[None]]


async def scenario_publish_two_hosts(lio_api: Any) -> None:
    await lio_api.ensure_backstore("vol-1", DEVICE, SERIAL)
    await lio_api.ensure_backstore("vol-2", OTHER_DEVICE, OTHER_SERIAL)
    await lio_api.ensure_target(TARGET, ["192.0.2.10", "2001:db8::10"], 3260)
    await lio_api.ensure_lun(TARGET, 0, "vol-1")
    await lio_api.ensure_lun(TARGET, 1, "vol-2")
    await lio_api.ensure_acl(TARGET, HOST_A, 0, CHAP)
    await lio_api.ensure_acl(TARGET, HOST_A, 1, CHAP)
    await lio_api.ensure_acl(TARGET, HOST_B, 1, None)


async def scenario_unpublish(lio_api: Any) -> None:
    await scenario_publish_two_hosts(lio_api)
    await lio_api.remove_acl_lun(TARGET, HOST_B, 1)
    await lio_api.remove_lun(TARGET, 1)
    await lio_api.remove_backstore("vol-2")
    await lio_api.remove_acl_lun(TARGET, HOST_A, 0)


async def scenario_errors(lio_api: Any) -> None:
    await scenario_publish_two_hosts(lio_api)
    for call in (
        lio_api.ensure_lun(TARGET, 0, "vol-2"),
        lio_api.ensure_lun(TARGET, 2, "vol-1"),
        lio_api.ensure_backstore("vol-1", DEVICE, OTHER_SERIAL),
        lio_api.remove_backstore("vol-1"),
        lio_api.ensure_acl(OTHER_TARGET, HOST_A, 0, None),
    ):
        with pytest.raises(LioError):
            await call
    await lio_api.remove_target(OTHER_TARGET)
    await lio_api.remove_target(TARGET)


@pytest.mark.parametrize(
    "scenario", [scenario_publish_two_hosts, scenario_unpublish, scenario_errors]
)
async def test_fake_lio_matches_adapter(
    adapter: LioAdapter, save_path: Path, scenario: Scenario
) -> None:
    fake = FakeLio(IscsiConfig())
    await scenario(adapter)
    await scenario(fake)
    assert await fake.read_state() == await adapter.read_state()


async def test_fake_lio_fail_next(save_path: Path) -> None:
    fake = FakeLio()
    await scenario_publish_two_hosts(fake)
    fake.fail_next("ensure_acl")
    with pytest.raises(LioError, match="injected failure in ensure_acl"):
        await fake.ensure_acl(TARGET, "iqn.2024-01.com.example:host-c", 0, None)
    assert "iqn.2024-01.com.example:host-c" not in fake.state().targets[TARGET].acls
    await fake.ensure_acl(TARGET, "iqn.2024-01.com.example:host-c", 0, None)


async def test_fake_lio_fail_next_custom_error() -> None:
    fake = FakeLio()
    fake.fail_next("save", OSError("disk full"), times=2)
    for _ in range(2):
        with pytest.raises(OSError, match="disk full"):
            await fake.save()
    await fake.save()
    assert fake.saves == 1


def test_fake_lio_fail_next_unknown_operation() -> None:
    with pytest.raises(ValueError, match="unknown operation"):
        FakeLio().fail_next("ensure_acls")


async def test_fake_lio_reboot_and_restore(save_path: Path) -> None:
    fake = FakeLio(IscsiConfig(), save_path)
    await scenario_publish_two_hosts(fake)
    await fake.save()
    before = fake.state()
    fake.reboot()
    assert fake.state() == LioState()
    await fake.restore()
    assert fake.state() == before
    assert fake.chap(TARGET, HOST_A) == CHAP
    assert stat.S_IMODE(save_path.stat().st_mode) == 0o600


async def test_fake_lio_restore_in_memory() -> None:
    fake = FakeLio()
    await scenario_publish_two_hosts(fake)
    await fake.save()
    await fake.remove_acl_lun(TARGET, HOST_B, 1)
    saved = fake.saved_state()
    assert saved is not None
    assert HOST_B in saved.targets[TARGET].acls
    fake.reboot()
    await fake.restore()
    assert HOST_B in fake.state().targets[TARGET].acls


async def test_fake_lio_old_kernel_rejects_chap() -> None:
    fake = FakeLio(per_acl_chap=False)
    await fake.ensure_backstore("vol-1", DEVICE, SERIAL)
    await fake.ensure_target(TARGET, [], 3260)
    await fake.ensure_lun(TARGET, 0, "vol-1")
    with pytest.raises(LioError, match=r"Linux 6.0 or later"):
        await fake.ensure_acl(TARGET, HOST_A, 0, CHAP)
    await fake.ensure_acl(TARGET, HOST_A, 0, None)


async def test_fake_lio_records_calls() -> None:
    fake = FakeLio()
    await fake.check()
    await fake.ensure_target(TARGET, ["192.0.2.10"], 3260)
    assert fake.checked
    assert fake.calls == [("check", ()), ("ensure_target", (TARGET, ("192.0.2.10",), 3260))]
