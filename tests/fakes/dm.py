"""In-memory stand-in for ``cspd.dm.DeviceMapper``, for API and provider tests.

``FakeDeviceMapper`` has the adapter's public interface and keeps the devices
in a dict: their lower device, size, UUID and whether they are suspended.
Like the real adapter it creates a device on the first ``ensure_linear``,
reloads it when the lower device's size changed, resumes what a failed
``suspend`` suspended, tries every device in ``resume`` and lists only
devices with cspd's UUID prefix.

Test controls: ``suspended`` is the set of suspended names, ``events`` the
ordered (action, name) steps and ``calls`` every call of the public
interface. ``fail_next(method, device=...)`` makes the next call fail, at
one device when named. ``add_foreign`` adds a device cspd did not make, and
``size_of`` returns the size of a lower device in sectors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cspd.dm import DEVICE_PREFIX, UUID_PREFIX, DmError, validate_name

FAILABLE_METHODS = frozenset(
    {"ensure_linear", "remove", "suspend", "resume", "list_suspended", "resume_all_suspended"}
)

DEFAULT_SECTORS = 2 * 1024 * 1024  # 1 GiB in 512-byte sectors


@dataclass
class FakeDevice:
    name: str
    uuid: str
    lower: str
    sectors: int
    suspended: bool = False
    open_count: int = 0


@dataclass
class _Failure:
    error: Exception
    device: str | None


@dataclass
class FakeDeviceMapper:
    """In-memory device-mapper devices with the public interface of ``DeviceMapper``."""

    size_of: Callable[[str], int] = field(default=lambda lower: DEFAULT_SECTORS)
    devices: dict[str, FakeDevice] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)
    calls: list[tuple[str, tuple[object, ...]]] = field(default_factory=list)
    _failures: dict[str, list[_Failure]] = field(default_factory=dict)

    # -- test controls ---------------------------------------------------------------

    @property
    def suspended(self) -> set[str]:
        return {name for name, device in self.devices.items() if device.suspended}

    def fail_next(
        self, method: str, error: Exception | None = None, *, device: str | None = None
    ) -> None:
        """Make the next call of ``method`` raise ``error`` (a DmError by default).

        With ``device``, the call fails when it reaches that device, after
        handling the ones before it, as a failing dmsetup in a loop would.
        Without, it fails before changing anything. Calls queue.
        """
        if method not in FAILABLE_METHODS:
            raise ValueError(f"{method!r} is not a method of the device-mapper adapter")
        target = f" at {device}" if device else ""
        injected = error if error is not None else DmError(f"{method}{target}: injected failure")
        self._failures.setdefault(method, []).append(_Failure(injected, device))

    def add_foreign(self, name: str, *, suspended: bool = False, uuid: str = "") -> None:
        """Add a device cspd did not make (LVM's, for example) to the table."""
        self.devices[name] = FakeDevice(
            name=name, uuid=uuid or f"LVM-{name}", lower="", sectors=1, suspended=suspended
        )

    def events_of(self, action: str) -> list[str]:
        return [name for done, name in self.events if done == action]

    # -- the adapter's interface ---------------------------------------------------------

    @staticmethod
    def device_path(name: str) -> str:
        return f"/dev/mapper/{name}"

    async def ensure_linear(self, name: str, lower_device: str) -> str:
        self._enter("ensure_linear", (name, lower_device))
        self._fail_at("ensure_linear", name)
        validate_name(name)
        sectors = self.size_of(lower_device)
        device = self.devices.get(name)
        if device is None:
            self.devices[name] = FakeDevice(name, UUID_PREFIX + name, lower_device, sectors)
            self.events.append(("create", name))
        elif (device.lower, device.sectors) != (lower_device, sectors):
            device.lower, device.sectors = lower_device, sectors
            # A reload swaps the table on resume, which ends any suspension.
            device.suspended = False
            self.events.append(("reload", name))
        return self.device_path(name)

    async def remove(self, name: str) -> None:
        self._enter("remove", (name,))
        self._fail_at("remove", name)
        validate_name(name)
        device = self.devices.get(name)
        if device is None:
            return
        if device.open_count:
            raise DmError(f"removing I/O device {name} failed: Device or resource busy")
        del self.devices[name]
        self.events.append(("remove", name))

    async def suspend(self, names: Sequence[str]) -> None:
        self._enter("suspend", (tuple(names),))
        done: list[str] = []
        try:
            for name in names:
                self._fail_at("suspend", name)
                device = self._require(name, f"suspending I/O device {name}")
                device.suspended = True
                self.events.append(("suspend", name))
                done.append(name)
        except BaseException:
            for name in done:
                self.devices[name].suspended = False
                self.events.append(("resume", name))
            raise

    async def resume(self, names: Sequence[str]) -> None:
        self._enter("resume", (tuple(names),))
        failed: list[str] = []
        first_error: Exception | None = None
        for name in names:
            try:
                self._fail_at("resume", name)
            except Exception as err:
                failed.append(name)
                first_error = first_error or err
                continue
            device = self.devices.get(name)
            if device is None:
                continue
            device.suspended = False
            self.events.append(("resume", name))
        if failed:
            raise DmError(f"resuming I/O devices failed; still suspended: {', '.join(failed)}")

    async def list_suspended(self, prefix: str = DEVICE_PREFIX) -> list[str]:
        self._enter("list_suspended", (prefix,))
        self._fail_at("list_suspended", None)
        return sorted(
            name
            for name, device in self.devices.items()
            if device.suspended and name.startswith(prefix) and device.uuid.startswith(UUID_PREFIX)
        )

    async def resume_all_suspended(self, prefix: str = DEVICE_PREFIX) -> list[str]:
        self._enter("resume_all_suspended", (prefix,))
        self._fail_at("resume_all_suspended", None)
        names = [
            name
            for name, device in sorted(self.devices.items())
            if device.suspended and name.startswith(prefix) and device.uuid.startswith(UUID_PREFIX)
        ]
        if names:
            await self.resume(names)
        return names

    # -- internals ---------------------------------------------------------------------

    def _enter(self, method: str, args: tuple[object, ...]) -> None:
        self.calls.append((method, args))
        queued = self._failures.get(method)
        if queued and queued[0].device is None:
            raise queued.pop(0).error

    def _fail_at(self, method: str, name: str | None) -> None:
        queued = self._failures.get(method)
        if queued and name is not None and queued[0].device == name:
            raise queued.pop(0).error

    def _require(self, name: str, action: str) -> FakeDevice:
        validate_name(name)
        device = self.devices.get(name)
        if device is None:
            raise DmError(f"{action} failed: No such device or address")
        return device
