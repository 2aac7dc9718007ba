"""Choose QEMU's accelerator: KVM when it demonstrably works, else TCG (software emulation).

On some hosts /dev/kvm exists but a guest under KVM hangs at boot, so KVM is
used only after a probe boots the guest kernel under it and the kernel reaches
its panic (the probe gives it no root file system) within PROBE_TIMEOUT. The
outcome is cached per host kernel, QEMU version and guest kernel. Setting
CSPD_LAB_ACCEL to "tcg" or "kvm" skips the probe.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

from .errors import LabError
from .host import log

ACCEL_ENV = "CSPD_LAB_ACCEL"
PROBE_TIMEOUT = 20.0
QEMU = "qemu-system-x86_64"


def qemu_version() -> str:
    """Return the first line of ``qemu-system-x86_64 --version``."""
    result = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=30,
                            check=False)
    return result.stdout.splitlines()[0] if result.stdout else "unknown"


def _kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def _probe_kvm(kernel: Path) -> bool:
    """Boot ``kernel`` under KVM without a root file system and wait for its panic.

    NOTE: a full boot under KVM (``-cpu host``, with the fall-back to TCG in
    Guest.boot) has not run yet: on every host tried so far this probe failed.
    """
    argv = [
        QEMU, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults", "-display", "none",
        "-no-reboot", "-serial", "stdio", "-kernel", str(kernel),
        "-append", "console=ttyS0 panic=-1 loglevel=4",
    ]
    try:
        result = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        log.info("KVM probe: the guest kernel did not finish within %.0f s", PROBE_TIMEOUT)
        return False
    works = b"Kernel panic" in result.stdout
    log.info("KVM probe: %s", "works" if works else f"failed (exit status {result.returncode})")
    return works


def mark_kvm_broken(cache: Path, kernel: Path) -> None:
    """Record that a full boot under KVM failed although the probe passed."""
    _store(cache, _probe_key(kernel), False)


def _probe_key(kernel: Path) -> str:
    return f"{platform.release()}|{qemu_version()}|{kernel.resolve()}"


def _store(cache: Path, key: str, works: bool) -> None:
    path = cache / "kvm-probe.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        results = {}
    results[key] = works
    path.write_text(json.dumps(results, indent=1) + "\n")


def choose_accel(cache: Path, kernel: Path) -> str:
    """Return "kvm" or "tcg" for booting ``kernel``, probing KVM once per host and kernel."""
    forced = os.environ.get(ACCEL_ENV, "").strip().lower()
    if forced in ("tcg", "kvm"):
        return forced
    if forced not in ("", "auto"):
        raise LabError(f"{ACCEL_ENV}={forced!r} is invalid; use tcg, kvm or auto")
    if not _kvm_usable():
        return "tcg"
    key = _probe_key(kernel)
    try:
        known = json.loads((cache / "kvm-probe.json").read_text()).get(key)
    except (OSError, ValueError):
        known = None
    if known is None:
        known = _probe_kvm(kernel)
        _store(cache, key, known)
    return "kvm" if known else "tcg"
