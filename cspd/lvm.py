"""LVM adapter: the thin LVs of one thin pool, managed through the lvm2 commands.

Volumes are thin LVs, snapshots are thin snapshots (read-only, skipped on
activation) and clones are writable thin snapshots that activate like any
volume. Every lvm2 command runs through ``CommandRunner`` with an argument
list, ``LC_ALL=C`` and the configured timeout. State is read from JSON reports
(``--reportformat json --units b --nosuffix --binary``), never from text.

When ``pool_devices`` is configured, every command gets a ``global_filter``
that accepts those devices only. LVM waits on a suspended device while it
scans, and the devices stacked above thin LVs are suspended while snapshots
are taken, so a scan of all block devices could hang behind them.

Changes to the pool are serialized by one asyncio lock per adapter; reads run
concurrently with them. After each change the adapter reads the LV back and
raises ``LvmError`` when it does not match what was requested. Every
``CommandError`` is translated into ``LvmError`` naming the operation and the
LV.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cspd.command import CommandResult, CommandRunner
from cspd.config import LVM_NAME_RE, LvmConfig
from cspd.errors import CommandError, ConfigError, LvmError

logger = logging.getLogger("cspd.lvm")

SECTOR_SIZE = 512

REPORT_OPTIONS = ("--reportformat", "json", "--units", "b", "--nosuffix", "--binary")

# One field list serves every lvs call, so one parser reads them all. The pool
# fields (lv_metadata_size, metadata_percent) are blank on thin LVs.
LV_FIELDS = (
    "lv_name",
    "lv_uuid",
    "segtype",
    "pool_lv",
    "origin",
    "lv_size",
    "data_percent",
    "lv_metadata_size",
    "metadata_percent",
    "lv_active_locally",
    "lv_skip_activation",
    "lv_tags",
    "lv_time",
    "vg_extent_size",
)
VG_FIELDS = ("vg_name", "vg_extent_size")

# Characters lvm(8) accepts in a tag.
TAG_RE = re.compile(r"^[A-Za-z0-9_+.\-/=!:&#]{1,1024}$")

# Characters accepted in a pool device path. Each is literal in LVM's filter
# regex except "." and "+", which get wrapped in a bracket expression. Quotes,
# backslashes and "|" (the filter's delimiter) are rejected.
_DEVICE_PATH_RE = re.compile(r"^/dev/[A-Za-z0-9/_.+:@=-]+$")


@dataclass(frozen=True)
class ThinLv:
    """A thin LV of the pool, as the last lvs report showed it.

    ``size`` is the virtual size in bytes, rounded up to whole extents.
    ``data_percent`` is the mapped share of that size; LVM can only read it
    from an active LV, so it is 0.0 for an inactive one (most snapshots).
    ``origin`` is the LV this one was snapshotted from, "" when none or when
    the origin has been removed. ``creation_time`` is in epoch seconds.
    """

    name: str
    uuid: str
    size: int
    data_percent: float
    origin: str
    active: bool
    activation_skip: bool
    tags: tuple[str, ...]
    creation_time: int

    @property
    def used_bytes(self) -> int:
        """Bytes of the virtual size that are mapped to pool chunks."""
        return round(self.size * self.data_percent / 100)


@dataclass(frozen=True)
class PoolUsage:
    """Fill level of the thin pool; sizes in bytes, percentages 0.0-100.0."""

    size: int
    data_percent: float
    metadata_size: int
    metadata_percent: float
    extent_size: int

    def data_percent_after(self, extra_bytes: int) -> float:
        """Return the data fill if ``extra_bytes`` more were mapped (may exceed 100)."""
        if self.size <= 0:
            return self.data_percent if extra_bytes <= 0 else float("inf")
        return self.data_percent + extra_bytes * 100 / self.size


class LvmBackend(Protocol):
    """Interface shared by ``LvmAdapter`` and the in-memory stand-in used by tests."""

    vg: str
    pool: str

    def device_path(self, name: str) -> str: ...
    async def check(self) -> PoolUsage: ...
    async def pool_usage(self) -> PoolUsage: ...
    async def list_thin_lvs(self) -> list[ThinLv]: ...
    async def get_thin_lv(self, name: str) -> ThinLv | None: ...
    async def create_thin(self, name: str, size: int, tags: Sequence[str] = ()) -> ThinLv: ...
    async def create_snapshot(
        self, origin: str, name: str, tags: Sequence[str] = (), *, writable: bool
    ) -> ThinLv: ...
    async def create_snapshots(
        self, pairs: Sequence[tuple[str, str]], tags: Sequence[str] = ()
    ) -> list[ThinLv]: ...
    async def extend(self, name: str, size: int) -> ThinLv: ...
    async def activate(self, name: str) -> None: ...
    async def remove(self, name: str) -> None: ...


def build_lvm_config(pool_devices: Sequence[str], *, epoch_time: bool) -> str:
    """Build the ``--config`` value for lvm2 commands, "" when nothing is needed.

    With ``pool_devices``, a ``global_filter`` accepts exactly those paths,
    anchored, and rejects every other device. With ``epoch_time``, reports
    print ``lv_time`` as epoch seconds. Raises ConfigError for a device path
    with characters that cannot be written safely into the filter.
    """
    sections = []
    if pool_devices:
        patterns = [f'"a|^{_device_regex(device)}$|"' for device in pool_devices]
        patterns.append('"r|.*|"')
        sections.append("devices { global_filter = [ " + ", ".join(patterns) + " ] }")
    if epoch_time:
        sections.append('report { time_format = "%s" }')
    return " ".join(sections)


def _device_regex(device: str) -> str:
    if not _DEVICE_PATH_RE.match(device):
        raise ConfigError(
            f"key 'lvm.pool_devices': {device!r} contains characters other than letters, "
            "digits and / _ . + : @ = -"
        )
    return "".join(f"[{char}]" if char in ".+" else char for char in device)


class LvmAdapter:
    """Thin LVs of the configured pool; see the module docstring for the rules."""

    def __init__(self, config: LvmConfig, runner: CommandRunner | None = None) -> None:
        self.vg = config.volume_group
        self.pool = config.thin_pool
        self._timeout = config.command_timeout
        self._runner = runner if runner is not None else CommandRunner()
        self.pool_devices = list(config.pool_devices)
        self._use_devices(self.pool_devices)
        self._lock = asyncio.Lock()

    def _use_devices(self, devices: Sequence[str]) -> None:
        self._report_config = build_lvm_config(devices, epoch_time=True)
        self._change_config = build_lvm_config(devices, epoch_time=False)

    def device_path(self, name: str) -> str:
        return f"/dev/{self.vg}/{name}"

    # Reads

    async def check(self) -> PoolUsage:
        """Check that the volume group and its thin pool exist; return the pool's usage.

        Raises LvmError naming the missing volume group or thin pool, or an
        LV of the pool's name that is not a thin pool.
        """
        vg_rows = await self._report(
            "vgs", VG_FIELDS, "vg", (), f"listing volume groups to find '{self.vg}'"
        )
        if not any(row.get("vg_name") == self.vg for row in vg_rows):
            raise LvmError(f"volume group '{self.vg}' not found")

        rows = await self._lv_rows(self.vg, f"listing LVs of volume group '{self.vg}'")
        pool_row = next((row for row in rows if row.get("lv_name") == self.pool), None)
        if pool_row is None:
            raise LvmError(f"thin pool '{self.pool}' not found in volume group '{self.vg}'")
        if pool_row.get("segtype") != "thin-pool":
            raise LvmError(
                f"LV '{self.pool}' in volume group '{self.vg}' is of type "
                f"'{pool_row.get('segtype')}', not a thin pool"
            )
        if not self.pool_devices:
            await self._find_pool_devices()
        return self._pool_usage(pool_row)

    async def _find_pool_devices(self) -> None:
        """Limit LVM's device scan to the volume group's physical volumes.

        Without a filter, LVM reads every block device, and a read of a
        device that a snapshot group holds suspended blocks until it resumes.
        """
        rows = await self._report(
            "pvs", ("pv_name", "vg_name"), "pv", (), f"listing physical volumes of '{self.vg}'"
        )
        devices = sorted(row["pv_name"] for row in rows if row.get("vg_name") == self.vg)
        if devices:
            self.pool_devices = devices
            self._use_devices(devices)
            logger.info(
                "LVM scans only the volume group's physical volumes",
                extra={"vg": self.vg, "devices": devices},
            )

    async def pool_usage(self) -> PoolUsage:
        """Return the pool's size and fill; raises LvmError when it is missing or inactive."""
        target = f"{self.vg}/{self.pool}"
        rows = await self._lv_rows(target, f"reading thin pool {target}")
        pool_row = next((row for row in rows if row.get("lv_name") == self.pool), None)
        if pool_row is None or pool_row.get("segtype") != "thin-pool":
            raise LvmError(f"thin pool '{self.pool}' not found in volume group '{self.vg}'")
        return self._pool_usage(pool_row)

    async def list_thin_lvs(self) -> list[ThinLv]:
        """Return every thin LV of the pool, from one lvs call."""
        rows = await self._lv_rows(self.vg, f"listing thin LVs of {self.vg}/{self.pool}")
        return [_thin_lv(row) for row in rows if self._is_our_thin_lv(row)]

    async def get_thin_lv(self, name: str) -> ThinLv | None:
        """Return the thin LV ``name`` of the pool, or None when there is none."""
        validate_name(name)
        row = await self._find_row(name, f"reading thin LV {self._ref(name)}")
        if row is None or not self._is_our_thin_lv(row):
            return None
        return _thin_lv(row)

    # Changes

    async def create_thin(self, name: str, size: int, tags: Sequence[str] = ()) -> ThinLv:
        """Create a thin LV of at least ``size`` bytes (LVM rounds up to extents).

        Raises LvmError when the name is taken, when lvcreate fails, or when
        the LV read back is missing or smaller than requested. An LV made by
        this call is removed again before the error is raised.
        """
        validate_name(name)
        validate_size(size)
        tag_args = _tag_args(validate_tags(tags))
        ref = self._ref(name)
        operation = f"creating thin LV {ref}"
        async with self._lock:
            await self._require_absent(name, operation)
            argv = self._command(
                "lvcreate",
                "-V",
                _size_arg(size),
                "-T",
                f"{self.vg}/{self.pool}",
                "-n",
                name,
                *tag_args,
            )
            await self._create(name, argv, operation)
            lv = await self._read_back(name, operation)
            if lv.size < size:
                await self._remove_after_failure(name, operation)
                raise LvmError(
                    f"{operation} failed: LVM reports {lv.size} bytes, {size} were requested"
                )
        logger.info(
            "created thin LV %s of %d bytes",
            ref,
            lv.size,
            extra={"vg": self.vg, "lv": name, "size_bytes": lv.size},
        )
        return lv

    async def create_snapshot(
        self, origin: str, name: str, tags: Sequence[str] = (), *, writable: bool
    ) -> ThinLv:
        """Create a thin snapshot of ``origin``.

        ``writable=False`` makes a snapshot: read-only, flagged to be skipped
        on activation, left inactive. ``writable=True`` makes a clone: the skip
        flag is cleared and the LV activated, so it comes back after a reboot
        like any volume. Raises LvmError when the origin is missing, the name
        is taken, a step fails or the result does not read back as expected.
        An LV made by this call is removed again before the error is raised.
        """
        validate_name(origin)
        validate_name(name)
        tag_args = _tag_args(validate_tags(tags))
        ref = self._ref(name)
        kind = "clone" if writable else "snapshot"
        operation = f"creating thin {kind} {ref} of {self._ref(origin)}"
        async with self._lock:
            rows = await self._rows_by_name(operation)
            origin_row = rows.get(origin)
            if origin_row is None or not self._is_our_thin_lv(origin_row):
                raise LvmError(f"{operation} failed: origin thin LV {self._ref(origin)} not found")
            if name in rows:
                raise LvmError(f"{operation} failed: an LV named {ref} already exists")

            mode_args = () if writable else ("--setactivationskip", "y", "--permission", "r")
            argv = self._command(
                "lvcreate", "-s", self._ref(origin), "-n", name, *mode_args, *tag_args
            )
            await self._create(name, argv, operation)
            if writable:
                try:
                    await self._run(
                        f"clearing the activation skip flag of clone {ref}",
                        self._command("lvchange", "--setactivationskip", "n", ref),
                    )
                    await self._run(
                        f"activating clone {ref}", self._command("lvchange", "-ay", "-K", ref)
                    )
                except LvmError:
                    await self._remove_after_failure(name, operation)
                    raise

            lv = await self._read_back(name, operation)
            problem = _snapshot_mismatch(lv, origin, writable)
            if problem:
                await self._remove_after_failure(name, operation)
                raise LvmError(f"{operation} failed: {problem}")
        logger.info(
            "created thin %s %s of %s",
            kind,
            ref,
            self._ref(origin),
            extra={"vg": self.vg, "lv": name, "origin": origin, "size_bytes": lv.size},
        )
        return lv

    async def create_snapshots(
        self, pairs: Sequence[tuple[str, str]], tags: Sequence[str] = ()
    ) -> list[ThinLv]:
        """Create read-only thin snapshots of several origins, as (origin, name) pairs.

        One ``lvs`` before and one after serve every snapshot, so a caller
        that suspends I/O while this runs keeps it suspended for little more
        than the ``lvcreate`` calls. On any failure every snapshot this call made is
        removed before LvmError is raised.
        """
        for origin, name in pairs:
            validate_name(origin)
            validate_name(name)
        tag_args = _tag_args(validate_tags(tags))
        names = ", ".join(name for _, name in pairs)
        operation = f"creating thin snapshots {names} in {self.vg}"
        made: list[str] = []
        async with self._lock:
            rows = await self._rows_by_name(operation)
            for origin, name in pairs:
                origin_row = rows.get(origin)
                if origin_row is None or not self._is_our_thin_lv(origin_row):
                    raise LvmError(
                        f"{operation} failed: origin thin LV {self._ref(origin)} not found"
                    )
                if name in rows:
                    raise LvmError(f"{operation} failed: an LV named {self._ref(name)} exists")
            try:
                for origin, name in pairs:
                    argv = self._command(
                        "lvcreate", "-s", self._ref(origin), "-n", name,
                        "--setactivationskip", "y", "--permission", "r", *tag_args,
                    )
                    await self._create(name, argv, operation)
                    made.append(name)
                rows = await self._rows_by_name(operation)
                created = []
                for origin, name in pairs:
                    row = rows.get(name)
                    if row is None:
                        raise LvmError(f"{operation} failed: {self._ref(name)} is missing")
                    lv = _thin_lv(row)
                    problem = _snapshot_mismatch(lv, origin, False)
                    if problem:
                        raise LvmError(f"{operation} failed: {problem}")
                    created.append(lv)
            except BaseException:
                for name in reversed(made):
                    await self._remove_after_failure(name, operation)
                raise
        logger.info(
            "created thin snapshots %s", names, extra={"vg": self.vg, "count": len(created)}
        )
        return created

    async def extend(self, name: str, size: int) -> ThinLv:
        """Grow thin LV ``name`` to at least ``size`` bytes and return it.

        The current size changes nothing; LVM rounds a larger one up to whole
        extents. Raises
        LvmError when the LV is missing, when ``size`` is below its current
        size, or when the LV read back is still smaller than ``size``.
        """
        validate_name(name)
        validate_size(size)
        ref = self._ref(name)
        operation = f"extending thin LV {ref} to {size} bytes"
        async with self._lock:
            row = await self._find_row(name, operation)
            if row is None or not self._is_our_thin_lv(row):
                raise LvmError(f"{operation} failed: thin LV {ref} not found")
            current = _thin_lv(row)
            if size < current.size:
                raise LvmError(
                    f"{operation} failed: the LV has {current.size} bytes and cannot shrink"
                )
            if size == current.size:
                return current

            await self._run(operation, self._command("lvextend", "-L", _size_arg(size), ref))
            lv = await self._read_back(name, operation)
            if lv.size < size:
                raise LvmError(f"{operation} failed: LVM reports {lv.size} bytes after lvextend")
        logger.info(
            "extended thin LV %s from %d to %d bytes",
            ref,
            current.size,
            lv.size,
            extra={"vg": self.vg, "lv": name, "size_bytes": lv.size},
        )
        return lv

    async def activate(self, name: str) -> None:
        """Activate thin LV ``name``, ignoring its activation skip flag.

        Raises LvmError when the LV is missing or is not active afterwards.
        """
        validate_name(name)
        ref = self._ref(name)
        operation = f"activating thin LV {ref}"
        async with self._lock:
            row = await self._find_row(name, operation)
            if row is None or not self._is_our_thin_lv(row):
                raise LvmError(f"{operation} failed: thin LV {ref} not found")
            await self._run(operation, self._command("lvchange", "-ay", "-K", ref))
            lv = await self._read_back(name, operation)
            if not lv.active:
                raise LvmError(f"{operation} failed: the LV is still inactive after lvchange")
        logger.info("activated thin LV %s", ref, extra={"vg": self.vg, "lv": name})

    async def remove(self, name: str) -> None:
        """Remove thin LV ``name``; an LV that does not exist is not an error.

        Raises LvmError when ``name`` is an LV of another kind or another
        pool, when lvremove fails, or when the LV still exists afterwards.
        """
        validate_name(name)
        ref = self._ref(name)
        operation = f"removing thin LV {ref}"
        async with self._lock:
            row = await self._find_row(name, operation)
            if row is None:
                logger.debug("thin LV %s is already gone", ref, extra={"vg": self.vg, "lv": name})
                return
            if not self._is_our_thin_lv(row):
                raise LvmError(f"{operation} failed: {ref} is not a thin LV of pool '{self.pool}'")
            try:
                await self._run(operation, self._command("lvremove", "-y", ref))
            except LvmError:
                # Another process may have removed it first; only that is fine.
                if await self._find_row(name, operation) is None:
                    return
                raise
            if await self._find_row(name, operation) is not None:
                raise LvmError(f"{operation} failed: the LV still exists after lvremove")
        logger.info("removed thin LV %s", ref, extra={"vg": self.vg, "lv": name})

    # Helpers

    def _ref(self, name: str) -> str:
        return f"{self.vg}/{name}"

    def _is_our_thin_lv(self, row: dict[str, str]) -> bool:
        return row.get("segtype") == "thin" and row.get("pool_lv") == self.pool

    def _command(self, program: str, *args: str, report: bool = False) -> list[str]:
        config = self._report_config if report else self._change_config
        config_args = ["--config", config] if config else []
        return [program, *config_args, *args]

    async def _run(self, operation: str, argv: list[str]) -> CommandResult:
        try:
            return await self._runner.run(argv, timeout=self._timeout)
        except CommandError as err:
            raise LvmError(f"{operation} failed: {_describe(err, self._timeout)}") from err

    async def _report(
        self, program: str, fields: Sequence[str], key: str, targets: Sequence[str], operation: str
    ) -> list[dict[str, str]]:
        argv = self._command(
            program, *REPORT_OPTIONS, "-o", ",".join(fields), *targets, report=True
        )
        result = await self._run(operation, argv)
        return _parse_report(result.stdout, key, operation)

    async def _lv_rows(self, target: str, operation: str) -> list[dict[str, str]]:
        return await self._report("lvs", LV_FIELDS, "lv", (target,), operation)

    async def _rows_by_name(self, operation: str) -> dict[str, dict[str, str]]:
        # The whole volume group is listed because "lvs vg/name" fails for a
        # missing LV, and telling that apart from other failures would mean
        # reading its error text.
        rows = await self._lv_rows(self.vg, operation)
        return {row.get("lv_name", ""): row for row in rows}

    async def _find_row(self, name: str, operation: str) -> dict[str, str] | None:
        return (await self._rows_by_name(operation)).get(name)

    async def _require_absent(self, name: str, operation: str) -> None:
        if await self._find_row(name, operation) is not None:
            raise LvmError(f"{operation} failed: an LV named {self._ref(name)} already exists")

    async def _read_back(self, name: str, operation: str) -> ThinLv:
        row = await self._find_row(name, operation)
        if row is None or not self._is_our_thin_lv(row):
            raise LvmError(f"{operation} failed: thin LV {self._ref(name)} not found afterwards")
        return _thin_lv(row)

    async def _create(self, name: str, argv: list[str], operation: str) -> None:
        """Run an lvcreate; if it fails but left the LV behind, remove that LV."""
        try:
            await self._run(operation, argv)
        except LvmError:
            # lvcreate can fail after committing the new LV to the metadata,
            # for example when its activation fails or it times out.
            try:
                left_behind = await self._find_row(name, operation) is not None
            except LvmError as err:
                logger.warning(
                    "could not check for a partly created LV %s: %s",
                    self._ref(name),
                    err.message,
                    extra={"vg": self.vg, "lv": name},
                )
                left_behind = False
            if left_behind:
                await self._remove_after_failure(name, operation)
            raise

    async def _remove_after_failure(self, name: str, operation: str) -> None:
        """Remove an LV this adapter just made; log, but do not raise, on failure."""
        ref = self._ref(name)
        try:
            await self._run(
                f"removing {ref} after a failed change", self._command("lvremove", "-y", ref)
            )
        except LvmError as err:
            logger.error(
                "%s failed and %s could not be removed: %s",
                operation,
                ref,
                err.message,
                extra={"vg": self.vg, "lv": name},
            )
            return
        logger.warning(
            "%s failed; removed %s again", operation, ref, extra={"vg": self.vg, "lv": name}
        )

    def _pool_usage(self, row: dict[str, str]) -> PoolUsage:
        data_percent = _percent_field(row, "data_percent")
        metadata_percent = _percent_field(row, "metadata_percent")
        if data_percent is None or metadata_percent is None:
            raise LvmError(
                f"thin pool {self.vg}/{self.pool} is inactive, so its fill level is unknown; "
                f"activate it with 'lvchange -ay {self.vg}/{self.pool}'"
            )
        return PoolUsage(
            size=_int_field(row, "lv_size"),
            data_percent=data_percent,
            metadata_size=_int_field(row, "lv_metadata_size"),
            metadata_percent=metadata_percent,
            extent_size=_int_field(row, "vg_extent_size"),
        )


def validate_name(name: str) -> None:
    """Raise LvmError unless ``name`` is a valid LV name."""
    if not isinstance(name, str) or not LVM_NAME_RE.match(name) or len(name) > 127:
        raise LvmError(f"invalid LV name {name!r}: use up to 127 of A-Z a-z 0-9 . _ + -")


def validate_size(size: int) -> None:
    """Raise LvmError unless ``size`` is a positive int (bytes)."""
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise LvmError(f"invalid LV size {size!r}: must be a positive number of bytes")


def validate_tags(tags: Sequence[str]) -> tuple[str, ...]:
    """Return ``tags`` as a tuple; raise LvmError for a tag lvm2 would not accept."""
    if isinstance(tags, str):
        raise LvmError(f"tags must be a sequence of strings, got the string {tags!r}")
    for tag in tags:
        if not isinstance(tag, str) or not TAG_RE.match(tag) or tag.startswith("-"):
            raise LvmError(
                f"invalid LV tag {tag!r}: use 1-1024 of A-Z a-z 0-9 _ + . - / = ! : & #, "
                "not starting with -"
            )
    return tuple(tags)


def _tag_args(tags: Sequence[str]) -> list[str]:
    args = []
    for tag in tags:
        args += ["--addtag", tag]
    return args


def _size_arg(size: int) -> str:
    """Return ``size`` for -L/-V in bytes, rounded up to whole 512-byte sectors.

    lvm2 rejects a byte count that is not a multiple of 512 ("Size is not a
    multiple of 512", tools/lvmcmdline.c). It rounds up to whole extents
    anyway, so rounding to sectors first changes no result.
    """
    return f"{-(-size // SECTOR_SIZE) * SECTOR_SIZE}b"


def _describe(err: CommandError, timeout: float) -> str:
    if err.timed_out:
        return f"{err.argv[0]} timed out after {timeout:g} s"
    lines = err.stderr.strip().splitlines()
    if err.returncode is None:
        reason = lines[-1] if lines else "unknown reason"
        return f"{err.argv[0]} could not be started: {reason}"
    if lines:
        return lines[-1].strip()
    return f"{err.argv[0]} exited with code {err.returncode}"


def _parse_report(stdout: str, key: str, operation: str) -> list[dict[str, str]]:
    """Return the rows of an lvm2 JSON report: ``{"report": [{key: [rows]}]}``."""
    try:
        document = json.loads(stdout)
    except json.JSONDecodeError as err:
        raise LvmError(f"{operation} failed: the report is not valid JSON ({err})") from err
    sections = document.get("report") if isinstance(document, dict) else None
    if not isinstance(sections, list):
        raise LvmError(f"{operation} failed: the report has no 'report' list")
    rows: list[dict[str, str]] = []
    for section in sections:
        entries = section.get(key, []) if isinstance(section, dict) else None
        if not isinstance(entries, list):
            raise LvmError(f"{operation} failed: the report's '{key}' entry is not a list")
        for entry in entries:
            if not isinstance(entry, dict) or not all(
                isinstance(value, str) for value in entry.values()
            ):
                raise LvmError(f"{operation} failed: unexpected report row {entry!r}")
            rows.append(entry)
    return rows


def _int_field(row: dict[str, str], field: str) -> int:
    value = row.get(field, "")
    try:
        return int(value)
    except ValueError:
        raise LvmError(
            f"unexpected value {value!r} of field {field} for LV {row.get('lv_name', '?')}"
        ) from None


def _percent_field(row: dict[str, str], field: str) -> float | None:
    """Return a percentage, or None where LVM leaves it blank (an inactive LV)."""
    value = row.get(field, "")
    if value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise LvmError(
            f"unexpected value {value!r} of field {field} for LV {row.get('lv_name', '?')}"
        ) from None


def _flag_field(row: dict[str, str], field: str) -> bool:
    # With --binary, LVM prints "1" or "0", and "-1" where it cannot tell.
    return row.get(field, "") == "1"


def _thin_lv(row: dict[str, str]) -> ThinLv:
    tags = row.get("lv_tags", "")
    lv_time = row.get("lv_time", "")
    return ThinLv(
        name=row.get("lv_name", ""),
        uuid=row.get("lv_uuid", ""),
        size=_int_field(row, "lv_size"),
        data_percent=_percent_field(row, "data_percent") or 0.0,
        origin=row.get("origin", ""),
        active=_flag_field(row, "lv_active_locally"),
        activation_skip=_flag_field(row, "lv_skip_activation"),
        tags=tuple(tag for tag in tags.split(",") if tag),
        creation_time=_int_field(row, "lv_time") if lv_time else 0,
    )


def _snapshot_mismatch(lv: ThinLv, origin: str, writable: bool) -> str:
    """Describe how a new snapshot or clone differs from the request, "" if it does not."""
    if lv.origin != origin:
        return f"LVM reports origin {lv.origin!r} instead of {origin!r}"
    if writable and lv.activation_skip:
        return "the clone still has the activation skip flag"
    if writable and not lv.active:
        return "the clone is inactive"
    if not writable and not lv.activation_skip:
        return "the snapshot lacks the activation skip flag"
    return ""
