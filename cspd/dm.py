"""Device-mapper adapter: the linear I/O devices that LIO exports above the thin LVs.

Each published volume gets a dm-linear device of cspd's own, named
``cspd-<lv name>``, that maps the whole thin LV one to one. LIO exports that
device instead of the LV, so a snapshot group can suspend the I/O of every
member (``dmsetup suspend`` waits for the writes in flight and queues new
ones) while LVM snapshots the LVs beneath, and resume them all afterwards.

cspd's devices carry the device-mapper UUID ``CSPD-<name>``. Listing and
resuming at start-up select devices by that UUID as well as by name, so LVM's
own devices are never touched, even in a volume group named "cspd", whose
device names also start with "cspd-".

Every dmsetup, blockdev and stat call runs through ``CommandRunner`` with an
argument list, ``LC_ALL=C`` and a timeout. ``CommandError`` is translated into
``DmError`` here, once, naming the operation and the device.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cspd.command import CommandResult, CommandRunner
from cspd.errors import BackendError, CommandError

logger = logging.getLogger("cspd.dm")

# Names of cspd's I/O devices start with this; see cspd.provider.base.io_device_name.
DEVICE_PREFIX = "cspd-"

# Device-mapper UUID prefix that marks a device as cspd's.
UUID_PREFIX = "CSPD-"

MAPPER_DIR = "/dev/mapper"

# Default timeout of one command, in seconds. A suspend waits for the writes in
# flight, which a healthy disk finishes well within this.
DEFAULT_TIMEOUT = 20.0

# dmsetup remove fails with "busy" while udev still has the new or changed
# device open for a moment, so a few short retries follow.
BUSY_RETRIES = 5
BUSY_DELAY = 0.2

# A failed resume is tried this many times before it is reported.
RESUME_ATTEMPTS = 3

# Device-mapper names are at most 127 bytes (DM_NAME_LEN includes the NUL).
# cspd's names come from LV names, so the LV name alphabet is enough.
_NAME_RE = re.compile(r"^[A-Za-z0-9._+][A-Za-z0-9._+-]{0,126}$")
_DEVICE_PATH_RE = re.compile(r"^/dev/[A-Za-z0-9/_.+:@=-]+$")

# dmsetup's messages for a device that does not exist: "... ioctl on NAME
# failed: No such device or address" (table, suspend, resume, remove) and
# "Device does not exist." (info NAME).
_MISSING_RE = re.compile(r"Device does not exist|No such device or address", re.IGNORECASE)
_BUSY_RE = re.compile(r"Device or resource busy", re.IGNORECASE)

# `dmsetup info -c` prints this, with exit code 0, when there are no devices at all.
_NO_DEVICES = "No devices found"


class DmError(BackendError):
    """A device-mapper operation failed or left a device in an unexpected state."""


@dataclass(frozen=True)
class LinearTable:
    """The one-line table of a linear device: ``0 <sectors> linear <major>:<minor> 0``."""

    sectors: int
    major: int
    minor: int

    def render(self) -> str:
        return f"0 {self.sectors} linear {self.major}:{self.minor} 0"


def parse_table(text: str) -> LinearTable | None:
    """Return the linear table that ``dmsetup table`` printed, None for any other table.

    dmsetup prints the lower device as ``major:minor`` whatever form the table
    was loaded with, so the comparison with the expected table is exact.
    """
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        return None
    fields = lines[0]
    if len(fields) != 5 or fields[0] != "0" or fields[2] != "linear" or fields[4] != "0":
        return None
    match = re.fullmatch(r"(\d+):(\d+)", fields[3])
    if not match or not fields[1].isdigit():
        return None
    return LinearTable(int(fields[1]), int(match.group(1)), int(match.group(2)))


def parse_info(text: str) -> list[tuple[str, str, bool]]:
    """Parse ``dmsetup info -c --noheadings --separator '|' -o name,uuid,suspended``.

    Returns (name, uuid, suspended) for each device. Raises DmError for a line
    without the three fields.
    """
    devices = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line == _NO_DEVICES:
            continue
        fields = line.split("|")
        if len(fields) != 3 or fields[2] not in ("Active", "Suspended"):
            raise DmError(f"listing device-mapper devices failed: unexpected line {line!r}")
        devices.append((fields[0], fields[1], fields[2] == "Suspended"))
    return devices


def validate_name(name: str) -> None:
    """Raise DmError unless ``name`` is a device name this adapter may use."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise DmError(
            f"invalid device-mapper name {name!r}: use up to 127 of A-Z a-z 0-9 . _ + -, "
            "not starting with -"
        )


class DeviceMapper:
    """cspd's dm-linear I/O devices; see the module docstring for the rules.

    ``timeout`` bounds each command, in seconds.
    """

    def __init__(
        self, runner: CommandRunner | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self._runner = runner if runner is not None else CommandRunner()
        self._timeout = timeout
        self.busy_retries = BUSY_RETRIES
        self.busy_delay = BUSY_DELAY

    @staticmethod
    def device_path(name: str) -> str:
        return f"{MAPPER_DIR}/{name}"

    # -- changes ------------------------------------------------------------------

    async def ensure_linear(self, name: str, lower_device: str) -> str:
        """Make ``name`` a linear map of all of ``lower_device``; return its /dev/mapper path.

        A missing device is created. A device whose table differs, because the
        lower device grew or is another device, is reloaded: the new table
        takes over without failing I/O. A matching device is left alone.
        Raises DmError when the lower device cannot be read, a command fails
        or the table read back differs from the expected one.
        """
        validate_name(name)
        if not isinstance(lower_device, str) or not _DEVICE_PATH_RE.match(lower_device):
            raise DmError(f"invalid lower device {lower_device!r} for {name}: not a /dev path")
        action = f"mapping {self.device_path(name)} onto {lower_device}"
        expected = await self._linear_table(lower_device, action)
        current = await self._table(name, action)

        if current is None:
            await self._dmsetup(
                action, "create", name, "--uuid", UUID_PREFIX + name, "--table", expected.render()
            )
            logger.info(
                "created I/O device %s", name,
                extra={"device": name, "lower": lower_device, "sectors": expected.sectors},
            )
        elif current != expected:
            await self._dmsetup(action, "reload", name, "--table", expected.render())
            await self._dmsetup(action, "resume", name)
            logger.info(
                "reloaded I/O device %s", name,
                extra={"device": name, "lower": lower_device, "sectors": expected.sectors,
                       "previous_sectors": current.sectors},
            )
        else:
            return self.device_path(name)

        after = await self._table(name, action)
        if after != expected:
            raise DmError(
                f"{action} failed: the device's table reads "
                f"{after.render() if after else 'as missing or not linear'}, "
                f"not {expected.render()}"
            )
        return self.device_path(name)

    async def remove(self, name: str) -> None:
        """Remove device ``name``; one that does not exist is not an error.

        A device that is busy (still open) is retried a few times, because
        udev opens a device briefly after each change. Raises DmError when it
        stays busy or the removal fails otherwise.
        """
        validate_name(name)
        action = f"removing I/O device {name}"
        for attempt in range(self.busy_retries + 1):
            result = await self._dmsetup(action, "remove", name, check=False)
            if result.returncode == 0:
                logger.info("removed I/O device %s", name, extra={"device": name})
                return
            if _MISSING_RE.search(result.stderr):
                logger.debug("I/O device %s is already gone", name, extra={"device": name})
                return
            if not _BUSY_RE.search(result.stderr) or attempt == self.busy_retries:
                raise DmError(f"{action} failed: {_last_line(result)}")
            await asyncio.sleep(self.busy_delay * (attempt + 1))

    async def suspend(self, names: Sequence[str]) -> None:
        """Suspend each device in turn: writes in flight finish, new I/O is queued.

        When one fails, the devices this call suspended are resumed again
        before DmError is raised, so a failed call leaves no I/O queued.
        """
        names = _checked(names)
        done: list[str] = []
        current = ""
        try:
            for name in names:
                current = name
                await self._dmsetup(f"suspending I/O device {name}", "suspend", name)
                done.append(name)
                current = ""
        except BaseException as err:
            # A suspend that timed out or was cancelled may still have taken
            # effect in the kernel, so the device it was working on is resumed
            # too, unless it does not exist at all.
            undo = list(done)
            if current and not (isinstance(err, DmError) and _MISSING_RE.search(err.message)):
                undo.append(current)
            if undo:
                try:
                    await self.resume(undo)
                except DmError as resume_err:
                    logger.error(
                        "resuming after a failed suspend failed: %s", resume_err.message
                    )
            raise
        logger.debug("suspended I/O devices", extra={"devices": ",".join(names)})

    async def resume(self, names: Sequence[str]) -> None:
        """Resume each device; resuming a device that is not suspended changes nothing.

        Every device is tried, each up to RESUME_ATTEMPTS times, even when an
        earlier one fails. A device that no longer exists is skipped with a
        warning. Raises DmError naming every device that stayed suspended.
        """
        names = _checked(names)
        failed: list[str] = []
        for name in names:
            action = f"resuming I/O device {name}"
            for attempt in range(1, RESUME_ATTEMPTS + 1):
                result = await self._dmsetup(action, "resume", name, check=False)
                if result.returncode == 0:
                    break
                if _MISSING_RE.search(result.stderr):
                    logger.warning("cannot resume %s: it no longer exists", name,
                                   extra={"device": name})
                    break
                logger.warning(
                    "%s failed (attempt %d of %d): %s", action, attempt, RESUME_ATTEMPTS,
                    _last_line(result), extra={"device": name},
                )
            else:
                failed.append(name)
        if failed:
            raise DmError(
                f"resuming I/O devices failed; still suspended: {', '.join(failed)}; "
                f"run 'dmsetup resume NAME' for each"
            )
        logger.debug("resumed I/O devices", extra={"devices": ",".join(names)})

    # -- start-up ---------------------------------------------------------------------

    async def list_suspended(self, prefix: str = DEVICE_PREFIX) -> list[str]:
        """Return the names of cspd's suspended devices whose name starts with ``prefix``.

        Only devices with cspd's UUID prefix count, whatever their name.
        """
        result = await self._dmsetup(
            "listing device-mapper devices",
            "info", "-c", "--noheadings", "--separator", "|", "-o", "name,uuid,suspended",
        )
        return sorted(
            name
            for name, uuid, suspended in parse_info(result.stdout)
            if suspended and name.startswith(prefix) and uuid.startswith(UUID_PREFIX)
        )

    async def resume_all_suspended(self, prefix: str = DEVICE_PREFIX) -> list[str]:
        """Resume every suspended device of cspd's under ``prefix``; return their names.

        Meant for start-up: a daemon stopped while a snapshot group had its
        members suspended leaves them so, and their initiators waiting.
        Raises DmError naming the devices that could not be resumed.
        """
        names = await self.list_suspended(prefix)
        if names:
            await self.resume(names)
            logger.info(
                "resumed %d I/O devices left suspended", len(names),
                extra={"devices": ",".join(names)},
            )
        return names

    # -- helpers ------------------------------------------------------------------------

    async def _linear_table(self, lower_device: str, action: str) -> LinearTable:
        size = await self._run(action, ["blockdev", "--getsz", lower_device])
        numbers = await self._run(action, ["stat", "-L", "--format", "%t:%T", lower_device])
        try:
            sectors = int(size.stdout.strip())
            major_hex, minor_hex = numbers.stdout.strip().split(":")
            major, minor = int(major_hex, 16), int(minor_hex, 16)
        except ValueError:
            raise DmError(
                f"{action} failed: unexpected size {size.stdout.strip()!r} or device number "
                f"{numbers.stdout.strip()!r} of {lower_device}"
            ) from None
        if sectors <= 0:
            raise DmError(f"{action} failed: {lower_device} has no sectors")
        return LinearTable(sectors, major, minor)

    async def _table(self, name: str, action: str) -> LinearTable | None:
        """Return the device's live table; None when the device does not exist.

        Raises DmError when the device exists but is not one linear segment,
        because this adapter makes no other kind of device.
        """
        result = await self._dmsetup(action, "table", name, check=False)
        if result.returncode != 0:
            if _MISSING_RE.search(result.stderr):
                return None
            raise DmError(f"{action} failed: {_last_line(result)}")
        table = parse_table(result.stdout)
        if table is None:
            raise DmError(
                f"{action} failed: device {name} exists with a table cspd did not make: "
                f"{result.stdout.strip()!r}"
            )
        return table

    async def _dmsetup(self, action: str, *args: str, check: bool = True) -> CommandResult:
        return await self._run(action, ["dmsetup", *args], check=check)

    async def _run(self, action: str, argv: list[str], *, check: bool = True) -> CommandResult:
        try:
            result = await self._runner.run(argv, timeout=self._timeout, check=False)
        except CommandError as err:
            if err.timed_out:
                reason = f"{argv[0]} {argv[1]} timed out after {self._timeout:g} s"
            else:
                reason = err.message
            raise DmError(f"{action} failed: {reason}") from err
        if check and result.returncode != 0:
            raise DmError(f"{action} failed: {_last_line(result)}")
        return result


def _checked(names: Sequence[str]) -> list[str]:
    if isinstance(names, str):
        raise DmError(f"device names must be a sequence of names, got the string {names!r}")
    for name in names:
        validate_name(name)
    return list(names)


def _last_line(result: CommandResult) -> str:
    # dmsetup ends most failures with "Command failed.", after the line with the reason.
    lines = [
        line.strip() for line in result.stderr.splitlines()
        if line.strip() and line.strip() != "Command failed."
    ]
    if lines:
        return lines[-1]
    return f"exit code {result.returncode}"
