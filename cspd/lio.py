"""LIO iSCSI target adapter: backstores, targets, LUNs and initiator ACLs in configfs.

Every change goes through rtslib-fb, runs in a worker thread and is serialized
by one lock, so two requests never edit configfs at the same time. rtslib and
kernel errors are translated into ``LioError`` here, once, with a message that
names the object. After each change the object is read back, and a mismatch
raises LioError too. rtslib is imported on first use, so this module imports
on a host without configfs or LIO.

How CHAP is required per initiator (Linux 6.0 and later, read from
drivers/target/iscsi):

* The TPG attribute ``authentication`` is a switch for the whole TPG, and
  setting it to 1 also removes ``None`` from the AuthMethod values the TPG
  offers (``iscsit_ta_authentication``). An initiator without CHAP then fails
  negotiation whatever its ACL allows. The TPG therefore stays at 0.
* Each node ACL has its own ``attrib/authentication``: -1 (the default)
  inherits the TPG value, 0 lets the ACL log in without CHAP, 1 requires CHAP.
  ``iscsi_conn_auth_required`` reads it for a normal session on an explicit
  ACL. The adapter pins every ACL to 0 or 1, so one target can serve a CHAP
  host and a host without CHAP at the same time.
* The CHAP credentials checked for a normal session are the ACL's own
  ``auth/userid`` and ``auth/password``.

Kernels before 6.0 have no per-ACL attribute; there an ACL without CHAP works
(it inherits the TPG's 0), and an ACL with CHAP is rejected with LioError,
because CHAP could not be enforced for it.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import ipaddress
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cspd.command import CommandRunner
from cspd.config import IscsiConfig
from cspd.errors import CommandError, LioError

log = logging.getLogger("cspd.lio")

T = TypeVar("T")

DEFAULT_CONFIGFS_ROOT = "/sys/kernel/config/target"

# Every target cspd makes has exactly one TPG, with this tag.
TPG_TAG = 1

# The kernel's NAA designator for a LIO device: NAA type 6, the IEEE company
# id 0x001405 (LIO's default, configfs wwn/company_id), then 25 hex digits of
# vendor-specific id taken from the unit serial (spc_gen_naa_6h_vendor_specific
# in drivers/target/target_core_spc.c).
NAA_PREFIX = "6001405"
NAA_SERIAL_DIGITS = 25

# The kernel keeps a unit serial in a 254-byte buffer (INQUIRY_VPD_SERIAL_LEN),
# including the terminating NUL.
MAX_UNIT_SERIAL = 253

# rtslib rejects longer CHAP values (its auth attribute setter).
MAX_CHAP_FIELD = 255

MAX_LUN = 65535

# RFC 3720 section 3.2.6.3: at most 223 bytes.
MAX_ISCSI_NAME = 223

# TPG attributes the adapter keeps on every target. Demo mode is off: only
# initiators with an explicit ACL log in, read-only if a dynamic ACL ever
# appears. Authentication is decided per ACL (see the module docstring).
# NOTE: demo_mode_discovery=0 would hide a target from SendTargets for
# initiators without an ACL, but the kernel's SendTargets code takes a mutex
# under a spinlock on that path (reported on target-devel in August 2021), so
# it stays at the kernel default of 1 and discovery lists every target.
TPG_ATTRIBUTES = {
    "authentication": "0",
    "generate_node_acls": "0",
    "cache_dynamic_acls": "0",
    "demo_mode_write_protect": "1",
}

REQUIRED_MODULES = ("target_core_mod", "iscsi_target_mod")
MODPROBE_TIMEOUT = 60.0

# Module attributes rather than literals, so tests can point them elsewhere.
PROC_MOUNTS = Path("/proc/self/mounts")
SYS_MODULE = Path("/sys/module")

_IQN_RE = re.compile(
    r"iqn\.\d{4}-(0[1-9]|1[0-2])"
    r"\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+"
    r"(:[a-z0-9.:-]+)?"
)
_EUI_RE = re.compile(r"eui\.[0-9a-f]{16}")
_NAA_RE = re.compile(r"naa\.([0-9a-f]{16}|[0-9a-f]{32})")
_HEX_DIGITS = frozenset("0123456789abcdef")
_BACKSTORE_NAME_RE = re.compile(r"[A-Za-z0-9._+-]{1,128}")


# -- names and identifiers -------------------------------------------------------


def naa_from_unit_serial(unit_serial: str) -> str:
    """Return the NAA identifier that a LIO LUN with this unit serial reports in VPD page 0x83.

    It is ``6001405`` followed by the first 25 hex digits of the serial, in
    lower case. Like the kernel, this skips every character that is not a hex
    digit, such as the dashes of a UUID. The host's multipath WWID is ``3``
    followed by this value. Raises ValueError when the serial has fewer than 25
    hex digits, because the kernel would then pad the identifier with zeros.
    """
    digits = [char for char in unit_serial.lower() if char in _HEX_DIGITS]
    if len(digits) < NAA_SERIAL_DIGITS:
        raise ValueError(
            f"unit serial {unit_serial!r} has {len(digits)} hex digits; "
            f"{NAA_SERIAL_DIGITS} are needed for a unique NAA identifier"
        )
    return NAA_PREFIX + "".join(digits[:NAA_SERIAL_DIGITS])


def is_valid_iqn(name: str) -> bool:
    """Tell whether ``name`` is an iSCSI name in its normalized form.

    Accepted: ``iqn.yyyy-mm.reversed.domain[:unique]`` (RFC 3720 section
    3.2.6.3.1, with a domain of at least two labels, as rtslib requires),
    ``eui.`` with 16 hex digits, and ``naa.`` with 16 or 32 hex digits. Only
    lower case is accepted: RFC 3722 normalizes iSCSI names to lower case,
    rtslib stores ACL names in lower case, and the kernel compares an
    initiator's name with its ACL names exactly.
    """
    if not name or len(name.encode()) > MAX_ISCSI_NAME:
        return False
    return any(pattern.fullmatch(name) for pattern in (_IQN_RE, _EUI_RE, _NAA_RE))


def check_iscsi_name(kind: str, name: str) -> None:
    """Raise LioError unless ``name`` is a valid iSCSI name; ``kind`` names its role."""
    if not is_valid_iqn(name):
        raise LioError(
            f"{kind} name {name!r} is not a lower-case iSCSI name "
            "(iqn.yyyy-mm.domain[:unique], eui.<16 hex digits> or naa.<16 or 32 hex digits>)"
        )


def check_lun_id(lun: int) -> None:
    if isinstance(lun, bool) or not isinstance(lun, int) or not 0 <= lun <= MAX_LUN:
        raise LioError(f"LUN id {lun!r} is not an integer from 0 to {MAX_LUN}")


def check_backstore_name(name: str) -> None:
    # configfs directory names: rtslib rejects "/" and white space; LV names
    # are the intended values, so the LVM character set is enforced.
    if not _BACKSTORE_NAME_RE.fullmatch(name):
        raise LioError(
            f"backstore name {name!r} is invalid: use 1 to 128 characters from A-Z a-z 0-9 . _ + -"
        )


def check_unit_serial(unit_serial: str) -> None:
    if not unit_serial.isascii() or not unit_serial.isprintable() or " " in unit_serial:
        raise LioError(f"unit serial {unit_serial!r} must be printable ASCII without spaces")
    if len(unit_serial) > MAX_UNIT_SERIAL:
        raise LioError(f"unit serial {unit_serial!r} is longer than {MAX_UNIT_SERIAL} characters")
    try:
        naa_from_unit_serial(unit_serial)
    except ValueError as err:
        raise LioError(str(err)) from err


@dataclass(frozen=True)
class Chap:
    """One-way CHAP credentials an initiator must present; the password never appears in repr."""

    user: str
    password: str = field(repr=False)


def check_chap(chap: Chap, initiator_iqn: str) -> None:
    """Raise LioError when LIO cannot store these credentials; the message omits the secret."""
    for label, value in (("user", chap.user), ("secret", chap.password)):
        if not value:
            raise LioError(f"CHAP {label} for initiator {initiator_iqn} is empty")
        if value != value.strip() or not value.isprintable():
            raise LioError(
                f"CHAP {label} for initiator {initiator_iqn} has leading or trailing white "
                "space or unprintable characters"
            )
        if value == "NULL":
            # configfs reads "NULL" as "no value" for auth attributes.
            raise LioError(f"CHAP {label} for initiator {initiator_iqn} may not be 'NULL'")
        if len(value) > MAX_CHAP_FIELD:
            raise LioError(
                f"CHAP {label} for initiator {initiator_iqn} is longer than "
                f"{MAX_CHAP_FIELD} characters"
            )


def portal_addresses(portals: Sequence[str]) -> list[str]:
    """Return the portal IPs for a target: the configured ones, or 0.0.0.0 when none is.

    Addresses come back in canonical form, duplicates removed. Raises LioError
    for a value that is not an IP address, and for a wildcard in a non-empty
    list, because multipath initiators need one portal per real address.
    """
    if not portals:
        return ["0.0.0.0"]
    addresses: list[str] = []
    for portal in portals:
        try:
            address = ipaddress.ip_address(portal)
        except ValueError as err:
            raise LioError(f"portal {portal!r} is not an IP address") from err
        if address.is_unspecified:
            raise LioError(
                f"portal {portal!r} is a wildcard address; list each address initiators reach"
            )
        if str(address) not in addresses:
            addresses.append(str(address))
    return addresses


def rtslib_portal_ip(address: str) -> str:
    """Return the address as rtslib names a NetworkPortal: IPv6 inside brackets."""
    return f"[{address}]" if ":" in address else address


def plain_portal_ip(rtslib_ip: str) -> str:
    """Return the canonical address for an rtslib NetworkPortal address."""
    text = rtslib_ip.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def plan_portals(
    current: Iterable[tuple[str, int]], desired: Iterable[tuple[str, int]]
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Return (to_add, to_remove), both sorted, that turn ``current`` into ``desired``."""
    current_set = set(current)
    desired_set = set(desired)
    return sorted(desired_set - current_set), sorted(current_set - desired_set)


# -- state read back from configfs ---------------------------------------------------


@dataclass(frozen=True)
class BackstoreInfo:
    """A block backstore: the device it exports and its T10 unit serial."""

    device: str
    unit_serial: str


@dataclass(frozen=True)
class TargetInfo:
    """An iSCSI target's TPG 1.

    ``luns`` maps TPG LUN id to backstore name (empty when the LUN's link to
    its backstore is broken). ``acls`` maps initiator name to {mapped LUN id:
    TPG LUN id}. ``chap_users`` maps the initiators whose ACL requires CHAP to
    their CHAP user; secrets are never part of the state.
    """

    luns: dict[int, str] = field(default_factory=dict)
    acls: dict[str, dict[int, int]] = field(default_factory=dict)
    portals: list[tuple[str, int]] = field(default_factory=list)
    chap_users: dict[str, str] = field(default_factory=dict)
    enabled: bool = True


@dataclass(frozen=True)
class LioState:
    """Contents of configfs: block backstores by name and iSCSI targets by IQN."""

    backstores: dict[str, BackstoreInfo] = field(default_factory=dict)
    targets: dict[str, TargetInfo] = field(default_factory=dict)


# -- the saved configuration ---------------------------------------------------------


def write_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically, readable by its owner only (mode 0600).

    The data goes to a temporary file in the same folder, which is flushed
    to disk and renamed over ``path``. The folder is then synced, so the
    rename survives a crash. A failure leaves the old file as it was and
    removes the temporary one.
    """
    folder = path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp creates the file with mode 0600 whatever the umask.
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as stream:
            os.fchmod(stream.fileno(), 0o600)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)


def select_missing(
    saved: dict[str, Any], present_backstores: set[tuple[str, str]], present_targets: set[str]
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Split a saved rtslib configuration into what is missing and what is present.

    Returns (configuration with only the missing storage objects and targets,
    names of the storage objects already present, IQNs of the targets already
    present). Storage objects are keyed by (plugin, name), as rtslib does.
    """
    for section in ("storage_objects", "targets"):
        entries = saved.get(section, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ValueError(f"section {section!r} is not a list of objects")
    missing_objects: list[dict[str, Any]] = []
    present_objects: list[str] = []
    for entry in saved.get("storage_objects", []):
        key = (str(entry.get("plugin", "")), str(entry.get("name", "")))
        if key in present_backstores:
            present_objects.append(f"{key[0]}/{key[1]}")
        else:
            missing_objects.append(entry)
    missing_targets: list[dict[str, Any]] = []
    skipped_targets: list[str] = []
    for entry in saved.get("targets", []):
        if entry.get("wwn") in present_targets:
            skipped_targets.append(str(entry["wwn"]))
        else:
            missing_targets.append(entry)
    subset = dict(saved)
    subset["storage_objects"] = missing_objects
    subset["targets"] = missing_targets
    return subset, present_objects, skipped_targets


def strip_unknown_arguments(entry: dict[str, Any], factory: Callable[..., Any]) -> dict[str, Any]:
    """Drop the keys of a saved storage object that ``factory`` cannot take.

    Newer rtslib releases save keys (such as ``exclusive``) that older ones
    pass to a constructor without that parameter, which makes them skip the
    whole storage object. Keys rtslib removes itself before the call stay.
    """
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return entry
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return entry
    handled_by_rtslib = {"exists", "attributes", "plugin", "buffered_mode", "alua_tpgs"}
    return {
        key: value for key, value in entry.items() if key in parameters or key in handled_by_rtslib
    }


def configfs_mounted(mounts: str, mount_point: str) -> bool:
    """Tell whether the /proc/mounts text lists a configfs file system at ``mount_point``."""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "configfs" and fields[1] == mount_point:
            return True
    return False


# -- rtslib access -------------------------------------------------------------------


class _Configfs:
    """Lookups in configfs through one rtslib module (the real one or a test double)."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        self.root = lib.RTSRoot()

    def invalidate_caches(self) -> None:
        # rtslib caches backstore indexes per process; another program (an
        # operator's targetcli, a restore) may have changed configfs since.
        invalidate = getattr(self.root, "invalidate_caches", None)
        if callable(invalidate):
            invalidate()

    def iscsi(self) -> Any:
        return self.lib.FabricModule("iscsi")

    def target(self, iqn: str) -> Any | None:
        try:
            return self.lib.Target(self.iscsi(), iqn, mode="lookup")
        except self.lib.RTSLibNotInCFSError:
            return None

    def tpg(self, target: Any) -> Any | None:
        try:
            return self.lib.TPG(target, TPG_TAG, mode="lookup")
        except self.lib.RTSLibNotInCFSError:
            return None

    def target_tpg(self, iqn: str) -> tuple[Any, Any] | None:
        target = self.target(iqn)
        if target is None:
            return None
        tpg = self.tpg(target)
        if tpg is None:
            return None
        return target, tpg

    def backstore(self, name: str) -> Any | None:
        for storage_object in self.root.storage_objects:
            if storage_object.plugin == "block" and storage_object.name == name:
                return storage_object
        return None

    @staticmethod
    def lun(tpg: Any, lun_id: int) -> Any | None:
        for lun in tpg.luns:
            if lun.lun == lun_id:
                return lun
        return None

    @staticmethod
    def acl(tpg: Any, initiator_iqn: str) -> Any | None:
        for acl in tpg.node_acls:
            if acl.node_wwn == initiator_iqn:
                return acl
        return None

    @staticmethod
    def mapped_lun(acl: Any, mapped_id: int) -> Any | None:
        for mapped in acl.mapped_luns:
            if mapped.mapped_lun == mapped_id:
                return mapped
        return None

    def lun_backstore_name(self, lun: Any) -> str:
        try:
            storage_object = lun.storage_object
        except self.lib.RTSLibError:
            return ""
        return str(storage_object.name) if storage_object.plugin == "block" else ""


def _acl_authentication(acl: Any) -> str | None:
    """Return the ACL's authentication attribute, or None on a kernel without it."""
    if "authentication" not in acl.list_attributes():
        return None
    return str(acl.get_attribute("authentication")).strip()


def _read_chap(acl: Any) -> tuple[str, str, str | None]:
    return str(acl.chap_userid or ""), str(acl.chap_password or ""), _acl_authentication(acl)


def _write_chap(acl: Any, userid: str, password: str, authentication: str | None) -> None:
    """Set the ACL's CHAP credentials and its authentication attribute.

    An empty userid clears the credentials. Credentials are written before
    the attribute turns CHAP on and cleared after it turns CHAP off, so no
    moment requires CHAP with missing credentials.
    """
    has_attribute = "authentication" in acl.list_attributes()
    if authentication == "1" and not has_attribute:
        raise LioError(
            f"initiator {acl.node_wwn}: this kernel has no per-ACL authentication "
            "attribute (Linux 6.0 or later is needed), so CHAP cannot be required "
            "for one initiator only"
        )
    if userid:
        acl.chap_userid = userid
        acl.chap_password = password
    if has_attribute and authentication is not None:
        acl.set_attribute("authentication", authentication)
    if not userid:
        acl.chap_userid = ""
        acl.chap_password = ""


def _apply_chap(acl: Any, chap: Chap | None) -> None:
    if chap is None:
        _write_chap(acl, "", "", "0")
    else:
        _write_chap(acl, chap.user, chap.password, "1")
    # One-way CHAP only: mutual CHAP credentials left from elsewhere would make
    # the target expect a challenge the initiator never sends.
    if acl.chap_mutual_userid:
        acl.chap_mutual_userid = ""
        acl.chap_mutual_password = ""


def _read_target(fs: _Configfs, target: Any) -> TargetInfo:
    tpg = fs.tpg(target)
    if tpg is None:
        return TargetInfo(enabled=False)
    luns = {int(lun.lun): fs.lun_backstore_name(lun) for lun in tpg.luns}
    acls: dict[str, dict[int, int]] = {}
    chap_users: dict[str, str] = {}
    for acl in tpg.node_acls:
        mapped: dict[int, int] = {}
        for mapped_lun in acl.mapped_luns:
            try:
                mapped[int(mapped_lun.mapped_lun)] = int(mapped_lun.tpg_lun.lun)
            except fs.lib.RTSLibError:
                mapped[int(mapped_lun.mapped_lun)] = -1
        acls[str(acl.node_wwn)] = mapped
        userid, _, authentication = _read_chap(acl)
        if userid and authentication == "1":
            chap_users[str(acl.node_wwn)] = userid
    portals = sorted(
        (plain_portal_ip(portal.ip_address), int(portal.port)) for portal in tpg.network_portals
    )
    return TargetInfo(
        luns=luns, acls=acls, portals=portals, chap_users=chap_users, enabled=bool(tpg.enable)
    )


def _read_backstore(fs: _Configfs, storage_object: Any) -> BackstoreInfo:
    # A backstore left unconfigured by a crash has no readable unit serial.
    try:
        unit_serial = str(storage_object.wwn)
    except fs.lib.RTSLibError:
        unit_serial = ""
    return BackstoreInfo(device=str(storage_object.udev_path), unit_serial=unit_serial)


def _read_state(fs: _Configfs) -> LioState:
    backstores = {
        str(so.name): _read_backstore(fs, so)
        for so in fs.root.storage_objects
        if so.plugin == "block"
    }
    targets = {
        str(target.wwn): _read_target(fs, target)
        for target in fs.root.targets
        if target.fabric_module.name == "iscsi"
    }
    return LioState(backstores=backstores, targets=targets)


def _same_device(configured: str, expected: str) -> bool:
    return configured == expected or os.path.realpath(configured) == os.path.realpath(expected)


# -- the adapter ---------------------------------------------------------------------


class LioAdapter:
    """Creates and removes LIO iSCSI exports through rtslib-fb.

    Every ``ensure_*`` call is idempotent: what already matches is left alone,
    so a retried publish completes instead of failing half-way. Every
    ``remove_*`` call succeeds when the object is already gone. Each call
    raises LioError when rtslib or the kernel refuses the change, or when the
    object read back afterwards differs from the request.

    ``rtslib`` replaces the rtslib_fb module, for tests that cannot reach a
    kernel's configfs; ``runner`` runs modprobe.
    """

    def __init__(
        self,
        config: IscsiConfig,
        save_path: Path,
        *,
        configfs_root: str = DEFAULT_CONFIGFS_ROOT,
        rtslib: Any = None,
        runner: CommandRunner | None = None,
    ) -> None:
        self.config = config
        self.save_path = Path(save_path)
        self.configfs_root = Path(configfs_root)
        self._lib = rtslib
        self._runner = runner or CommandRunner()
        # The asyncio lock queues callers on the event loop. The thread lock
        # keeps configfs changes one at a time even when a cancelled caller
        # has released the asyncio lock while its worker thread still runs.
        self._lock = asyncio.Lock()
        self._thread_lock = threading.Lock()

    # -- plumbing --

    def _library(self) -> Any:
        if self._lib is None:
            try:
                lib = importlib.import_module("rtslib_fb")
            except ImportError as err:
                raise LioError(
                    f"rtslib-fb cannot be imported ({err}); install the rtslib-fb package"
                ) from err
            node_class = getattr(getattr(lib, "node", None), "CFSNode", None)
            if node_class is not None and str(self.configfs_root) != DEFAULT_CONFIGFS_ROOT:
                # rtslib finds configfs through this one class attribute.
                node_class.configfs_dir = str(self.configfs_root)
            self._lib = lib
        return self._lib

    def _in_thread(self, action: str, work: Callable[[_Configfs], T]) -> T:
        with self._thread_lock:
            lib = self._library()
            try:
                fs = _Configfs(lib)
                fs.invalidate_caches()
                return work(fs)
            except LioError:
                raise
            except (lib.RTSLibError, OSError, ValueError) as err:
                raise LioError(f"{action} failed: {err}") from err

    async def _run(self, action: str, work: Callable[[_Configfs], T]) -> T:
        async with self._lock:
            return await asyncio.to_thread(self._in_thread, action, work)

    # -- start-up --

    async def check(self) -> None:
        """Make sure configfs is mounted and the LIO modules are loaded.

        Loads a missing module with modprobe. Raises LioError saying what to
        fix when configfs is not mounted, a module cannot be loaded, rtslib
        is missing or rtslib cannot set up its database folder.
        """
        mount_point = str(self.configfs_root.parent)
        try:
            mounts = PROC_MOUNTS.read_text()
        except OSError as err:
            raise LioError(f"cannot read {PROC_MOUNTS}: {err.strerror}") from err
        if not configfs_mounted(mounts, mount_point):
            raise LioError(
                f"configfs is not mounted at {mount_point}: mount it with "
                f"'mount -t configfs configfs {mount_point}' (systemd does this through "
                "sys-kernel-config.mount)"
            )

        for module in REQUIRED_MODULES:
            if (SYS_MODULE / module).is_dir():
                continue
            log.info("loading kernel module %s", module, extra={"module": module})
            try:
                await self._runner.run(["modprobe", module], timeout=MODPROBE_TIMEOUT)
            except CommandError as err:
                raise LioError(
                    f"kernel module {module} is not loaded and '{' '.join(err.argv)}' failed "
                    f"({err.message}); install the kernel's LIO target modules"
                ) from err

        if not self.configfs_root.is_dir():
            raise LioError(
                f"{self.configfs_root} does not exist although target_core_mod is loaded; "
                "check the kernel log for LIO errors"
            )
        await self._run("check rtslib and the iSCSI fabric", self._check_fabric)

    def _check_fabric(self, fs: _Configfs) -> None:
        # Creating the fabric folder registers the iSCSI fabric with LIO, as
        # rtslib does on first use.
        (self.configfs_root / "iscsi").mkdir(exist_ok=True)
        list(fs.root.targets)

    async def restore(self) -> None:
        """Bring back the saved configuration, as at boot when configfs is empty.

        Storage objects and targets already in configfs (the daemon restarted
        without a reboot) are left alone, because the live configuration is
        the newer one and tearing it down would drop sessions. Missing ones
        are created from the save file. Objects rtslib could not restore (a
        removed LV, for example) are logged as errors. The caller's reconcile
        repairs them. Raises LioError when the save file is unreadable.
        """
        if not self.save_path.exists():
            log.info(
                "no saved LIO configuration; nothing to restore",
                extra={"path": str(self.save_path)},
            )
            return
        await self._run(f"restore the LIO configuration from {self.save_path}", self._restore)

    def _restore(self, fs: _Configfs) -> None:
        try:
            saved = json.loads(self.save_path.read_text())
        except json.JSONDecodeError as err:
            raise LioError(f"saved LIO configuration {self.save_path} is not JSON: {err}") from err
        if not isinstance(saved, dict):
            raise LioError(f"saved LIO configuration {self.save_path} is not a JSON object")

        present_backstores = {(str(so.plugin), str(so.name)) for so in fs.root.storage_objects}
        present_targets = {str(target.wwn) for target in fs.root.targets}
        subset, kept_objects, kept_targets = select_missing(
            saved, present_backstores, present_targets
        )
        block_factory = getattr(fs.lib, "BlockStorageObject", None)
        if block_factory is not None:
            subset["storage_objects"] = [
                strip_unknown_arguments(entry, block_factory)
                if entry.get("plugin") == "block"
                else entry
                for entry in subset["storage_objects"]
            ]

        problems = fs.root.restore(subset, clear_existing=False, abort_on_error=False) or []
        for problem in problems:
            log.error(
                "restoring the LIO configuration: %s", problem, extra={"path": str(self.save_path)}
            )

        fs.invalidate_caches()
        now_backstores = {(str(so.plugin), str(so.name)) for so in fs.root.storage_objects}
        now_targets = {str(target.wwn) for target in fs.root.targets}
        restored_objects = sorted(
            f"{entry.get('plugin')}/{entry.get('name')}"
            for entry in subset["storage_objects"]
            if (str(entry.get("plugin")), str(entry.get("name"))) in now_backstores
        )
        restored_targets = sorted(
            str(entry.get("wwn")) for entry in subset["targets"] if entry.get("wwn") in now_targets
        )
        log.info(
            "restored %d storage objects and %d targets from %s; %d and %d were already present",
            len(restored_objects),
            len(restored_targets),
            self.save_path,
            len(kept_objects),
            len(kept_targets),
            extra={
                "path": str(self.save_path),
                "restored_backstores": restored_objects,
                "restored_targets": restored_targets,
                "present_backstores": kept_objects,
                "present_targets": kept_targets,
                "problems": len(problems),
            },
        )

    # -- backstores --

    async def ensure_backstore(self, name: str, device: str, unit_serial: str) -> None:
        """Make a block backstore ``name`` on ``device`` with T10 unit serial ``unit_serial``.

        An existing backstore with the same device and serial is accepted.
        Raises LioError when one with that name has another device or serial,
        because changing either would change what initiators see.
        """
        check_backstore_name(name)
        check_unit_serial(unit_serial)
        if not device.startswith("/dev/"):
            raise LioError(f"backstore {name}: device {device!r} is not a /dev path")

        def work(fs: _Configfs) -> None:
            existing = fs.backstore(name)
            if existing is not None:
                _check_backstore(existing, name, device, unit_serial)
                return
            created = fs.lib.BlockStorageObject(name, dev=device, wwn=unit_serial)
            try:
                found = fs.backstore(name)
                if found is None:
                    raise LioError(f"backstore {name} is missing right after its creation")
                _check_backstore(found, name, device, unit_serial)
            except BaseException:
                with suppress(Exception):
                    created.delete()
                raise
            log.info(
                "created block backstore %s on %s",
                name,
                device,
                extra={"backstore": name, "device": device, "unit_serial": unit_serial},
            )

        await self._run(f"create block backstore {name} on {device}", work)

    async def remove_backstore(self, name: str) -> None:
        """Remove block backstore ``name``; a missing one is not an error.

        Raises LioError while a LUN still exports it, so that removing a
        backstore never cuts off an initiator by surprise: remove its LUNs first.
        """
        check_backstore_name(name)

        def work(fs: _Configfs) -> None:
            existing = fs.backstore(name)
            if existing is None:
                return
            users = [
                f"LUN {lun.lun} of target {lun.parent_tpg.parent_target.wwn}"
                for lun in existing.attached_luns
            ]
            if users:
                raise LioError(f"backstore {name} is still exported as {', '.join(users)}")
            existing.delete()
            if fs.backstore(name) is not None:
                raise LioError(f"backstore {name} is still present after its removal")
            log.info("removed block backstore %s", name, extra={"backstore": name})

        await self._run(f"remove block backstore {name}", work)

    # -- targets --

    async def ensure_target(self, iqn: str, portals: Sequence[str], port: int) -> None:
        """Make iSCSI target ``iqn`` with an enabled TPG 1 listening on ``portals``.

        One NetworkPortal is made per address, or one on 0.0.0.0 when
        ``portals`` is empty, and portals not listed are removed. Demo mode
        is off and authentication is decided per ACL. A target made by this
        call is removed again if a later step fails.
        """
        check_iscsi_name("target", iqn)
        if not 1 <= port <= 65535:
            raise LioError(f"target {iqn}: port {port} is not a TCP port")
        desired = [(address, port) for address in portal_addresses(portals)]

        def work(fs: _Configfs) -> None:
            target = fs.target(iqn)
            created = target is None
            if target is None:
                target = fs.lib.Target(fs.iscsi(), iqn, mode="create")
            try:
                _configure_target(fs, target, desired)
                _check_target(fs, iqn, desired)
            except BaseException:
                if created:
                    with suppress(Exception):
                        target.delete()
                raise
            if created:
                log.info(
                    "created iSCSI target %s",
                    iqn,
                    extra={"target_iqn": iqn, "portals": [f"{a}:{p}" for a, p in desired]},
                )

        await self._run(f"create iSCSI target {iqn}", work)

    async def remove_target(self, iqn: str) -> None:
        """Remove target ``iqn`` with its LUNs, ACLs and portals; a missing one is not an error.

        Sessions on the target are dropped.
        """
        check_iscsi_name("target", iqn)

        def work(fs: _Configfs) -> None:
            target = fs.target(iqn)
            if target is None:
                return
            target.delete()
            if fs.target(iqn) is not None:
                raise LioError(f"target {iqn} is still present after its removal")
            log.info("removed iSCSI target %s", iqn, extra={"target_iqn": iqn})

        await self._run(f"remove iSCSI target {iqn}", work)

    # -- LUNs --

    async def ensure_lun(self, target_iqn: str, lun: int, backstore: str) -> None:
        """Export block backstore ``backstore`` as LUN ``lun`` in TPG 1 of ``target_iqn``.

        Raises LioError when the target or the backstore does not exist, when
        LUN ``lun`` already exports another backstore, or when this backstore
        is already another LUN of the target (the host would see the disk twice).
        """
        check_iscsi_name("target", target_iqn)
        check_lun_id(lun)
        check_backstore_name(backstore)

        def work(fs: _Configfs) -> None:
            found = fs.target_tpg(target_iqn)
            if found is None:
                raise LioError(f"target {target_iqn} does not exist; create it before its LUNs")
            _, tpg = found
            storage_object = fs.backstore(backstore)
            if storage_object is None:
                raise LioError(
                    f"LUN {lun} of target {target_iqn}: backstore {backstore} does not exist"
                )
            existing = fs.lun(tpg, lun)
            if existing is not None:
                current = fs.lun_backstore_name(existing)
                if current != backstore:
                    raise LioError(
                        f"LUN {lun} of target {target_iqn} is already used by backstore "
                        f"{current or '(broken link)'}, not {backstore}"
                    )
                return
            for other in tpg.luns:
                if fs.lun_backstore_name(other) == backstore:
                    raise LioError(
                        f"backstore {backstore} is already LUN {other.lun} of target "
                        f"{target_iqn}; it cannot also be LUN {lun}"
                    )
            created = fs.lib.LUN(tpg, lun, storage_object=storage_object)
            try:
                check = fs.lun(tpg, lun)
                if check is None or fs.lun_backstore_name(check) != backstore:
                    raise LioError(
                        f"LUN {lun} of target {target_iqn} does not point at backstore "
                        f"{backstore} after its creation"
                    )
            except BaseException:
                with suppress(Exception):
                    created.delete()
                raise
            log.info(
                "created LUN %d of target %s on backstore %s",
                lun,
                target_iqn,
                backstore,
                extra={"target_iqn": target_iqn, "lun": lun, "backstore": backstore},
            )

        await self._run(f"create LUN {lun} of target {target_iqn} on backstore {backstore}", work)

    async def remove_lun(self, target_iqn: str, lun: int) -> None:
        """Remove LUN ``lun`` of ``target_iqn``; a missing LUN or target is not an error.

        Mapped LUNs that point at it go with it, and so do ACLs left with no
        mapped LUN. The target itself stays.
        """
        check_iscsi_name("target", target_iqn)
        check_lun_id(lun)

        def work(fs: _Configfs) -> None:
            found = fs.target_tpg(target_iqn)
            if found is None:
                return
            _, tpg = found
            existing = fs.lun(tpg, lun)
            if existing is None:
                return
            # rtslib removes the mapped LUNs that point at a LUN with it.
            existing.delete()
            removed_acls = _remove_empty_acls(tpg)
            if fs.lun(tpg, lun) is not None:
                raise LioError(f"LUN {lun} of target {target_iqn} is still present after removal")
            log.info(
                "removed LUN %d of target %s",
                lun,
                target_iqn,
                extra={"target_iqn": target_iqn, "lun": lun, "removed_acls": removed_acls},
            )

        await self._run(f"remove LUN {lun} of target {target_iqn}", work)

    # -- ACLs --

    async def ensure_acl(
        self, target_iqn: str, initiator_iqn: str, lun: int, chap: Chap | None
    ) -> None:
        """Give ``initiator_iqn`` access to TPG LUN ``lun`` of ``target_iqn`` as mapped LUN ``lun``.

        Creates the initiator's ACL if needed. With ``chap``, the ACL gets
        those credentials and the initiator must log in with CHAP. Without,
        the ACL alone admits it. CHAP applies to the whole ACL, so it covers
        every LUN the initiator has on this target. Raises LioError when the
        target or LUN is missing, or when the initiator's mapped LUN ``lun``
        already points at another TPG LUN. On failure, the ACL and mapping
        made by this call are removed and the previous CHAP settings restored.
        """
        check_iscsi_name("target", target_iqn)
        check_iscsi_name("initiator", initiator_iqn)
        check_lun_id(lun)
        if chap is not None:
            check_chap(chap, initiator_iqn)

        def work(fs: _Configfs) -> None:
            found = fs.target_tpg(target_iqn)
            if found is None:
                raise LioError(f"target {target_iqn} does not exist; create it before its ACLs")
            _, tpg = found
            if fs.lun(tpg, lun) is None:
                raise LioError(
                    f"initiator {initiator_iqn}: LUN {lun} of target {target_iqn} does not exist"
                )

            acl = fs.acl(tpg, initiator_iqn)
            created_acl = acl is None
            if acl is None:
                acl = fs.lib.NodeACL(tpg, initiator_iqn, mode="create")
            previous_chap = _read_chap(acl)
            created_mapping: Any = None
            try:
                _apply_chap(acl, chap)
                chap_changed = not created_acl and _read_chap(acl) != previous_chap
                mapped = fs.mapped_lun(acl, lun)
                if mapped is None:
                    created_mapping = fs.lib.MappedLUN(acl, lun, tpg_lun=lun)
                elif int(mapped.tpg_lun.lun) != lun:
                    raise LioError(
                        f"initiator {initiator_iqn} on target {target_iqn}: mapped LUN {lun} "
                        f"already points at LUN {mapped.tpg_lun.lun}"
                    )
                _check_acl(fs, tpg, target_iqn, initiator_iqn, lun, chap)
            except BaseException:
                with suppress(Exception):
                    if created_acl:
                        acl.delete()
                    else:
                        if created_mapping is not None:
                            created_mapping.delete()
                        _write_chap(acl, *previous_chap)
                raise

            if chap_changed:
                log.info(
                    "changed the CHAP settings of initiator %s on target %s",
                    initiator_iqn,
                    target_iqn,
                    extra={
                        "target_iqn": target_iqn,
                        "initiator_iqn": initiator_iqn,
                        "chap": chap is not None,
                    },
                )
            if created_acl or created_mapping is not None:
                log.info(
                    "granted initiator %s LUN %d of target %s",
                    initiator_iqn,
                    lun,
                    target_iqn,
                    extra={
                        "target_iqn": target_iqn,
                        "initiator_iqn": initiator_iqn,
                        "lun": lun,
                        "chap": chap is not None,
                    },
                )

        await self._run(f"grant initiator {initiator_iqn} LUN {lun} of target {target_iqn}", work)

    async def remove_acl_lun(self, target_iqn: str, initiator_iqn: str, lun: int) -> None:
        """Take mapped LUN ``lun`` away from ``initiator_iqn`` on ``target_iqn``.

        The ACL goes too once it maps nothing else, which ends the initiator's
        session on the target. Missing objects are not an error.
        """
        check_iscsi_name("target", target_iqn)
        check_iscsi_name("initiator", initiator_iqn)
        check_lun_id(lun)

        def work(fs: _Configfs) -> None:
            found = fs.target_tpg(target_iqn)
            if found is None:
                return
            _, tpg = found
            acl = fs.acl(tpg, initiator_iqn)
            if acl is None:
                return

            mapped = fs.mapped_lun(acl, lun)
            if mapped is not None:
                mapped.delete()
            acl_removed = False
            if not list(acl.mapped_luns):
                acl.delete()
                acl_removed = True

            left = fs.acl(tpg, initiator_iqn)
            if left is not None and (acl_removed or fs.mapped_lun(left, lun) is not None):
                raise LioError(
                    f"initiator {initiator_iqn} still has LUN {lun} of target {target_iqn} "
                    "after its removal"
                )
            if mapped is not None or acl_removed:
                log.info(
                    "revoked initiator %s LUN %d of target %s",
                    initiator_iqn,
                    lun,
                    target_iqn,
                    extra={
                        "target_iqn": target_iqn,
                        "initiator_iqn": initiator_iqn,
                        "lun": lun,
                        "acl_removed": acl_removed,
                    },
                )

        await self._run(f"revoke initiator {initiator_iqn} LUN {lun} of target {target_iqn}", work)

    # -- whole configuration --

    async def read_state(self) -> LioState:
        """Read every block backstore and iSCSI target from configfs.

        Holds the change lock, so the result never shows a change half-made.
        """
        return await self._run("read the LIO configuration", _read_state)

    async def save(self) -> None:
        """Write the whole LIO configuration (rtslib's dump) to the save file.

        The file is replaced atomically and has mode 0600, because it
        contains the CHAP secrets.
        """

        def work(fs: _Configfs) -> None:
            dump = fs.root.dump()
            data = (json.dumps(dump, sort_keys=True, indent=2) + "\n").encode()
            write_private_file(self.save_path, data)
            log.debug(
                "saved the LIO configuration to %s",
                self.save_path,
                extra={
                    "path": str(self.save_path),
                    "targets": len(dump.get("targets", [])),
                    "storage_objects": len(dump.get("storage_objects", [])),
                },
            )

        await self._run(f"save the LIO configuration to {self.save_path}", work)


# -- steps shared by the adapter's changes --------------------------------------------


def _check_backstore(storage_object: Any, name: str, device: str, unit_serial: str) -> None:
    current_device = str(storage_object.udev_path)
    current_serial = str(storage_object.wwn)
    if not _same_device(current_device, device) or current_serial != unit_serial:
        raise LioError(
            f"backstore {name} exists on {current_device} with unit serial {current_serial}, "
            f"not on {device} with unit serial {unit_serial}"
        )


def _configure_target(fs: _Configfs, target: Any, desired: list[tuple[str, int]]) -> None:
    tpg = fs.tpg(target)
    if tpg is None:
        tpg = fs.lib.TPG(target, TPG_TAG, mode="create")
    for attribute, value in TPG_ATTRIBUTES.items():
        if str(tpg.get_attribute(attribute)).strip() != value:
            tpg.set_attribute(attribute, value)

    current = {
        (plain_portal_ip(portal.ip_address), int(portal.port)): portal
        for portal in tpg.network_portals
    }
    to_add, to_remove = plan_portals(current, desired)
    # Stale portals go first, because Linux refuses to bind an address and
    # port while a wildcard portal listens on that port (EADDRINUSE).
    for key in to_remove:
        current[key].delete()
    for address, port in to_add:
        fs.lib.NetworkPortal(tpg, rtslib_portal_ip(address), port, mode="create")

    if not tpg.enable:
        tpg.enable = True


def _check_target(fs: _Configfs, iqn: str, desired: list[tuple[str, int]]) -> None:
    found = fs.target_tpg(iqn)
    if found is None:
        raise LioError(f"target {iqn} or its TPG {TPG_TAG} is missing after the change")
    _, tpg = found
    if not tpg.enable:
        raise LioError(f"TPG {TPG_TAG} of target {iqn} is not enabled after the change")
    for attribute, value in TPG_ATTRIBUTES.items():
        current = str(tpg.get_attribute(attribute)).strip()
        if current != value:
            raise LioError(
                f"TPG {TPG_TAG} of target {iqn}: attribute {attribute} is {current}, not {value}"
            )
    portals = sorted(
        (plain_portal_ip(portal.ip_address), int(portal.port)) for portal in tpg.network_portals
    )
    if portals != sorted(desired):
        raise LioError(f"target {iqn} listens on {portals} after the change, not {sorted(desired)}")


def _check_acl(
    fs: _Configfs, tpg: Any, target_iqn: str, initiator_iqn: str, lun: int, chap: Chap | None
) -> None:
    acl = fs.acl(tpg, initiator_iqn)
    if acl is None:
        raise LioError(f"ACL of initiator {initiator_iqn} on target {target_iqn} is missing")
    mapped = fs.mapped_lun(acl, lun)
    if mapped is None or int(mapped.tpg_lun.lun) != lun:
        raise LioError(
            f"initiator {initiator_iqn} on target {target_iqn} has no mapped LUN {lun} "
            f"pointing at LUN {lun} after the change"
        )
    userid, password, authentication = _read_chap(acl)
    if chap is None:
        if userid or authentication not in (None, "0"):
            raise LioError(
                f"ACL of initiator {initiator_iqn} on target {target_iqn} still requires CHAP"
            )
    elif userid != chap.user or password != chap.password or authentication != "1":
        raise LioError(
            f"ACL of initiator {initiator_iqn} on target {target_iqn} does not have the "
            "requested CHAP settings after the change"
        )


def _remove_empty_acls(tpg: Any) -> list[str]:
    removed: list[str] = []
    for acl in list(tpg.node_acls):
        if not list(acl.mapped_luns):
            removed.append(str(acl.node_wwn))
            acl.delete()
    return removed
