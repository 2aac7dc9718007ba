"""In-memory stand-in for ``cspd.lvm.LvmAdapter``, for API and provider tests.

``FakeLvm`` has the adapter's public interface and imitates LVM's thin
pool. Sizes round up to whole extents. Snapshots share their origin's chunks
until either side is written, and the pool fills as chunks are mapped.
Duplicate or missing LVs raise ``LvmError`` with the adapter's wording. Like
LVM, it reports ``data_percent`` 0.0 for an inactive LV.

Test controls:

* ``fail_next(method)`` makes the next call of that method raise before it
  changes anything.
* ``write()`` maps chunks as I/O through an exported LV would.
* ``set_data_percent()`` and ``set_pool_usage()`` set fill levels directly.
* ``reboot()`` deactivates what autoactivation would skip.
* ``vg_present`` and ``pool_present`` make ``check()`` fail.
* ``calls`` (method names) and ``call_args`` (names with arguments) record
  every call of the public interface.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import random
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cspd.config import LvmConfig
from cspd.errors import LvmError
from cspd.lvm import PoolUsage, ThinLv, validate_name, validate_size, validate_tags

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# Public methods whose next call ``fail_next`` can make fail.
FAILABLE_METHODS = frozenset(
    {
        "check",
        "pool_usage",
        "list_thin_lvs",
        "get_thin_lv",
        "create_thin",
        "create_snapshot",
        "extend",
        "activate",
        "remove",
    }
)


@dataclass
class _Lv:
    name: str
    uuid: str
    size: int
    origin: str
    active: bool
    activation_skip: bool
    writable: bool
    tags: tuple[str, ...]
    creation_time: int
    # Virtual chunk index -> physical chunk id in the pool.
    chunks: dict[int, int] = field(default_factory=dict)


class FakeLvm:
    """In-memory thin pool with the public interface of ``LvmAdapter``."""

    def __init__(
        self,
        config: LvmConfig | None = None,
        *,
        pool_size: int = 16 * GiB,
        metadata_size: int = 16 * MiB,
        extent_size: int = 4 * MiB,
        chunk_size: int = 64 * KiB,
        clock: Callable[[], float] = time.time,
    ) -> None:
        config = config if config is not None else LvmConfig()
        self.vg = config.volume_group
        self.pool = config.thin_pool
        self.pool_size = pool_size
        self.metadata_size = metadata_size
        self.extent_size = extent_size
        self.chunk_size = chunk_size
        self.metadata_percent = 10.0
        self.vg_present = True
        self.pool_present = True
        self.calls: list[str] = []
        self.call_args: list[tuple[str, tuple[object, ...]]] = []
        self._clock = clock
        self._lvs: dict[str, _Lv] = {}
        self._refcounts: dict[int, int] = {}
        # Pool data that belongs to no LV of this fake; see set_pool_usage.
        self._outside_bytes = 0
        self._chunk_ids = itertools.count(1)
        self._failures: dict[str, list[Exception]] = {}
        self._lock = asyncio.Lock()

    # Test controls

    def fail_next(self, method: str, error: Exception | None = None) -> None:
        """Make the next call of ``method`` raise ``error`` (an LvmError by default).

        The failing call changes nothing, as the real adapter removes what a
        failed create made. Calls queue: two ``fail_next`` make two calls fail.
        """
        if method not in FAILABLE_METHODS:
            raise ValueError(f"{method!r} is not a method of the LVM adapter")
        injected = error if error is not None else LvmError(f"{method} failed: injected failure")
        self._failures.setdefault(method, []).append(injected)

    def write(self, name: str, offset: int, length: int) -> None:
        """Map the chunks of ``name`` covering ``length`` bytes from ``offset``.

        A chunk shared with a snapshot or an origin gets a private copy, as
        thin provisioning does on the first write after a snapshot. Raises
        OSError: ENXIO for an inactive LV, EROFS for a read-only snapshot and
        ENOSPC when the pool has no free chunk left. Raises LvmError for a
        missing LV and ValueError for a range outside the LV.
        """
        lv = self._require(name, f"writing to thin LV {self._ref(name)}")
        if not lv.active:
            raise OSError(errno.ENXIO, f"{self.device_path(name)} is inactive")
        if not lv.writable:
            raise OSError(errno.EROFS, f"{self.device_path(name)} is read-only")
        if offset < 0 or length < 0 or offset + length > lv.size:
            raise ValueError(f"range {offset}+{length} is outside {name} ({lv.size} bytes)")
        if length == 0:
            return
        first = offset // self.chunk_size
        last = (offset + length - 1) // self.chunk_size
        for index in range(first, last + 1):
            self._map_private(lv, index)

    def set_data_percent(self, name: str, percent: float) -> None:
        """Map or unmap chunks of ``name`` until ``percent`` of its size is mapped.

        Unlike ``write``, this works on inactive and read-only LVs. The share is
        exact to one chunk (64 KiB by default). Raises OSError(ENOSPC) when the
        pool runs out of chunks and LvmError for a missing LV.
        """
        lv = self._require(name, f"setting the data of thin LV {self._ref(name)}")
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be between 0 and 100, got {percent}")
        total = -(-lv.size // self.chunk_size)
        target_chunks = min(total, round(lv.size * percent / 100 / self.chunk_size))
        for index in sorted(lv.chunks):
            if index >= target_chunks:
                self._release(lv.chunks.pop(index))
        for index in range(target_chunks):
            if index not in lv.chunks:
                self._map_private(lv, index)

    def set_pool_usage(
        self, *, data_percent: float | None = None, metadata_percent: float | None = None
    ) -> None:
        """Make the pool report these fill levels; None leaves a level as it is.

        The data beyond what the fake's own LVs map counts as data of LVs this
        fake does not list, so later writes raise the level further.
        """
        if data_percent is not None:
            mapped = self._used_chunks() * self.chunk_size
            self._outside_bytes = max(0, round(self.pool_size * data_percent / 100) - mapped)
        if metadata_percent is not None:
            self.metadata_percent = metadata_percent

    def reboot(self) -> None:
        """Deactivate and reactivate everything as autoactivation at boot would."""
        for lv in self._lvs.values():
            lv.active = not lv.activation_skip

    def names(self) -> list[str]:
        """Return the names of all thin LVs, sorted as lvs sorts them."""
        return sorted(self._lvs)

    # The adapter's interface

    def device_path(self, name: str) -> str:
        return f"/dev/{self.vg}/{name}"

    async def check(self) -> PoolUsage:
        self._enter("check", ())
        if not self.vg_present:
            raise LvmError(f"volume group '{self.vg}' not found")
        return self._usage()

    async def pool_usage(self) -> PoolUsage:
        self._enter("pool_usage", ())
        return self._usage()

    async def list_thin_lvs(self) -> list[ThinLv]:
        self._enter("list_thin_lvs", ())
        return [self._thin_lv(self._lvs[name]) for name in sorted(self._lvs)]

    async def get_thin_lv(self, name: str) -> ThinLv | None:
        self._enter("get_thin_lv", (name,))
        validate_name(name)
        lv = self._lvs.get(name)
        return self._thin_lv(lv) if lv is not None else None

    async def create_thin(self, name: str, size: int, tags: Sequence[str] = ()) -> ThinLv:
        self._enter("create_thin", (name, size, tuple(tags)))
        validate_name(name)
        validate_size(size)
        checked_tags = validate_tags(tags)
        operation = f"creating thin LV {self._ref(name)}"
        async with self._lock:
            await asyncio.sleep(0)
            self._require_pool(operation)
            self._require_absent(name, operation)
            lv = _Lv(
                name=name,
                uuid=_lv_uuid(),
                size=self._round_up(size),
                origin="",
                active=True,
                activation_skip=False,
                writable=True,
                tags=checked_tags,
                creation_time=int(self._clock()),
            )
            self._lvs[name] = lv
            return self._thin_lv(lv)

    async def create_snapshot(
        self, origin: str, name: str, tags: Sequence[str] = (), *, writable: bool
    ) -> ThinLv:
        self._enter("create_snapshot", (origin, name, tuple(tags), writable))
        validate_name(origin)
        validate_name(name)
        checked_tags = validate_tags(tags)
        kind = "clone" if writable else "snapshot"
        operation = f"creating thin {kind} {self._ref(name)} of {self._ref(origin)}"
        async with self._lock:
            await asyncio.sleep(0)
            self._require_pool(operation)
            source = self._lvs.get(origin)
            if source is None:
                raise LvmError(f"{operation} failed: origin thin LV {self._ref(origin)} not found")
            self._require_absent(name, operation)
            for chunk in source.chunks.values():
                self._refcounts[chunk] += 1
            lv = _Lv(
                name=name,
                uuid=_lv_uuid(),
                size=source.size,
                origin=origin,
                active=writable,
                activation_skip=not writable,
                writable=writable,
                tags=checked_tags,
                creation_time=int(self._clock()),
                chunks=dict(source.chunks),
            )
            self._lvs[name] = lv
            return self._thin_lv(lv)

    async def create_snapshots(
        self, pairs: Sequence[tuple[str, str]], tags: Sequence[str] = ()
    ) -> list[ThinLv]:
        """Create read-only snapshots one by one; remove those made when one fails."""
        made: list[ThinLv] = []
        try:
            for origin, name in pairs:
                made.append(await self.create_snapshot(origin, name, tags, writable=False))
        except BaseException:
            for lv in reversed(made):
                await self.remove(lv.name)
            raise
        return made

    async def extend(self, name: str, size: int) -> ThinLv:
        self._enter("extend", (name, size))
        validate_name(name)
        validate_size(size)
        operation = f"extending thin LV {self._ref(name)} to {size} bytes"
        async with self._lock:
            await asyncio.sleep(0)
            lv = self._require(name, operation)
            if size < lv.size:
                raise LvmError(f"{operation} failed: the LV has {lv.size} bytes and cannot shrink")
            lv.size = max(lv.size, self._round_up(size))
            return self._thin_lv(lv)

    async def activate(self, name: str) -> None:
        self._enter("activate", (name,))
        validate_name(name)
        async with self._lock:
            await asyncio.sleep(0)
            lv = self._require(name, f"activating thin LV {self._ref(name)}")
            lv.active = True

    async def remove(self, name: str) -> None:
        self._enter("remove", (name,))
        validate_name(name)
        async with self._lock:
            await asyncio.sleep(0)
            lv = self._lvs.pop(name, None)
            if lv is None:
                return
            for chunk in lv.chunks.values():
                self._release(chunk)
            # LVM clears the origin of thin snapshots whose origin is removed.
            for other in self._lvs.values():
                if other.origin == name:
                    other.origin = ""

    # Internals

    def _enter(self, method: str, args: tuple[object, ...]) -> None:
        self.calls.append(method)
        self.call_args.append((method, args))
        queued = self._failures.get(method)
        if queued:
            raise queued.pop(0)

    def _ref(self, name: str) -> str:
        return f"{self.vg}/{name}"

    def _require_pool(self, operation: str) -> None:
        if not self.vg_present:
            raise LvmError(f'{operation} failed: Volume group "{self.vg}" not found')
        if not self.pool_present:
            raise LvmError(f"{operation} failed: thin pool '{self.pool}' not found")

    def _require(self, name: str, operation: str) -> _Lv:
        lv = self._lvs.get(name)
        if lv is None:
            raise LvmError(f"{operation} failed: thin LV {self._ref(name)} not found")
        return lv

    def _require_absent(self, name: str, operation: str) -> None:
        if name in self._lvs or name == self.pool:
            raise LvmError(f"{operation} failed: an LV named {self._ref(name)} already exists")

    def _round_up(self, size: int) -> int:
        return -(-size // self.extent_size) * self.extent_size

    def _map_private(self, lv: _Lv, index: int) -> None:
        """Give chunk ``index`` of ``lv`` a pool chunk of its own (copy on write)."""
        current = lv.chunks.get(index)
        if current is not None and self._refcounts[current] == 1:
            return
        if self._used_bytes() + self.chunk_size > self.pool_size:
            raise OSError(errno.ENOSPC, f"thin pool {self.vg}/{self.pool} is full")
        if current is not None:
            self._release(current)
        chunk = next(self._chunk_ids)
        self._refcounts[chunk] = 1
        lv.chunks[index] = chunk

    def _release(self, chunk: int) -> None:
        self._refcounts[chunk] -= 1
        if self._refcounts[chunk] == 0:
            del self._refcounts[chunk]

    def _used_chunks(self) -> int:
        return len(self._refcounts)

    def _used_bytes(self) -> int:
        return self._used_chunks() * self.chunk_size + self._outside_bytes

    def _usage(self) -> PoolUsage:
        if not self.vg_present:
            raise LvmError(f"volume group '{self.vg}' not found")
        if not self.pool_present:
            raise LvmError(f"thin pool '{self.pool}' not found in volume group '{self.vg}'")
        used = self._used_bytes()
        return PoolUsage(
            size=self.pool_size,
            data_percent=round(used * 100 / self.pool_size, 2),
            metadata_size=self.metadata_size,
            metadata_percent=self.metadata_percent,
            extent_size=self.extent_size,
        )

    def _thin_lv(self, lv: _Lv) -> ThinLv:
        mapped = min(len(lv.chunks) * self.chunk_size, lv.size)
        # LVM reads the mapped share from the kernel, so it has none to give
        # for an inactive LV and prints a blank, which the adapter turns to 0.0.
        percent = round(mapped * 100 / lv.size, 2) if lv.active else 0.0
        return ThinLv(
            name=lv.name,
            uuid=lv.uuid,
            size=lv.size,
            data_percent=percent,
            origin=lv.origin,
            active=lv.active,
            activation_skip=lv.activation_skip,
            tags=lv.tags,
            creation_time=lv.creation_time,
        )


def _lv_uuid() -> str:
    """Return a random UUID in LVM's 6-4-4-4-4-4-6 layout."""
    alphabet = string.ascii_letters + string.digits
    text = "".join(random.choices(alphabet, k=32))
    widths = (6, 4, 4, 4, 4, 4, 6)
    parts = []
    start = 0
    for width in widths:
        parts.append(text[start : start + width])
        start += width
    return "-".join(parts)
