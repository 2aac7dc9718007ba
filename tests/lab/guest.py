"""Boot, reach and stop one QEMU guest of the lab.

Each guest has a run folder ``<cache>/run/<name>``. It contains a copy-on-write
overlay of the cached root image and the guest's own sparse pool disk (/dev/vdb
in the guest, kept across guest reboots). Beside them are the serial console
log, QEMU's QMP socket and pid file, the SSH control socket and ``guest.json``,
which describes the guest.

Networking is QEMU user-mode networking with ``restrict=on``: the guest reaches
nothing outside, and the host reaches the guest's SSH (22), HTTPS API (8443)
and iSCSI (3260) ports through forwards bound to 127.0.0.1 on free ports.
A forwarded connection arrives in the guest at GUEST_ADDRESS, not at loopback.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .accel import QEMU, choose_accel, mark_kvm_broken
from .errors import GuestCommandError, GuestTimeoutError, LabError, tail
from .host import cache_root, free_loopback_ports, log, require_tools, run_host
from .image import HOST_KEY_ALIAS, Image, ssh_key
from .qmp import QmpError, qmp_command

GUEST_ADDRESS = "10.0.2.15"
GUEST_SSH_PORT = 22
GUEST_HTTPS_PORT = 8443
GUEST_ISCSI_PORT = 3260

MEMORY_MB = 2048
CPUS = 2
POOL_DISK_BYTES = 4 * 1024**3

# Under TCG on two host cores the guest reached SSH in about 30 s; the margin
# covers a loaded host. KVM gets a short limit before falling back to TCG.
BOOT_TIMEOUT_TCG = 600.0
BOOT_TIMEOUT_KVM = 120.0
POWER_OFF_TIMEOUT = 60.0
SSH_CONNECT_TIMEOUT = 10
DEFAULT_COMMAND_TIMEOUT = 120.0
STALE_RUN_DIR_SECONDS = 3600.0

# Releases what would make systemd wait at power-off: the daemon, the guest's
# own multipath maps and iSCSI sessions, LIO exports holding LVs open (live
# configuration only: saved configurations stay on disk) and the pool's LVs.
# Maps are flushed before the logout too, because a map that loses its last
# path queues I/O (queue_if_no_path).
RELEASE_STORAGE_SCRIPT = """
systemctl stop cspd.service 2>/dev/null
multipath -F >/dev/null 2>&1
iscsiadm -m node --logoutall=all >/dev/null 2>&1
multipath -F >/dev/null 2>&1
if [ -d /sys/kernel/config/target/core ]; then
    /opt/cspd/bin/python3 -c 'import rtslib_fb; rtslib_fb.RTSRoot().clear_existing(confirm=True)'
fi
vgchange --activate n cspd >/dev/null 2>&1
true
"""

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM this child when the process that started it exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class Ports:
    """Host ports on 127.0.0.1 forwarded to the guest."""

    ssh: int
    https: int
    iscsi: int


@dataclass
class GuestInfo:
    """What guest.json records about a running guest."""

    name: str
    image: str
    accel: str
    ports: Ports
    pid: int
    booted_at: float


def run_root(cache: Path) -> Path:
    return cache / "run"


def _pid_is_qemu(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"qemu-system" in cmdline.split(b"\0", 1)[0]


def _read_info(run_dir: Path) -> GuestInfo | None:
    try:
        raw = json.loads((run_dir / "guest.json").read_text())
        raw["ports"] = Ports(**raw["ports"])
        return GuestInfo(**raw)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def images_in_use(cache: Path) -> set[Path]:
    """Return the image folders that running guests boot from."""
    used = set()
    for run_dir in run_root(cache).glob("*"):
        info = _read_info(run_dir)
        if info and _pid_is_qemu(info.pid):
            used.add(Path(info.image).resolve())
    return used


def prune_run_dirs(cache: Path) -> None:
    """Delete the run folders of guests that are no longer running."""
    for run_dir in run_root(cache).glob("*"):
        info = _read_info(run_dir)
        if info is None:
            # A guest still starting has no guest.json yet: leave young folders alone.
            if time.time() - run_dir.stat().st_mtime > STALE_RUN_DIR_SECONDS:
                shutil.rmtree(run_dir, ignore_errors=True)
        elif not _pid_is_qemu(info.pid):
            shutil.rmtree(run_dir, ignore_errors=True)


class Guest:
    """One running QEMU guest and the SSH connection to it."""

    def __init__(self, run_dir: Path, info: GuestInfo, image: Image, ssh_key_path: Path,
                 process: subprocess.Popen[bytes] | None = None) -> None:
        self.run_dir = run_dir
        self.info = info
        self.image = image
        self.ssh_key = ssh_key_path
        self._process = process
        self._master_lock = threading.Lock()

    # -- starting and finding guests --

    @classmethod
    def boot(cls, name: str, image: Image, *, daemonize: bool,
             cache: Path | None = None) -> Guest:
        """Start a guest from ``image`` and wait until it accepts SSH and has finished booting.

        ``daemonize`` lets QEMU outlive this process (for ``python3 -m
        tests.lab up``); otherwise QEMU is killed when this process exits.
        Under KVM, a boot that does not finish in BOOT_TIMEOUT_KVM is retried
        under TCG. Raises LabError when the guest cannot boot.
        """
        require_tools(QEMU, "qemu-img", "ssh")
        cache = cache or cache_root()
        prune_run_dirs(cache)
        run_dir = run_root(cache) / name
        if run_dir.exists():
            info = _read_info(run_dir)
            if info and _pid_is_qemu(info.pid):
                raise LabError(
                    f"a lab guest named {name!r} is already running (pid {info.pid}); stop it "
                    "with 'python3 -m tests.lab down'"
                )
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)

        accel = choose_accel(cache, image.kernel)
        guest = cls._start_qemu(run_dir, name, image, accel, daemonize, cache)
        try:
            guest.wait_ready(BOOT_TIMEOUT_KVM if accel == "kvm" else BOOT_TIMEOUT_TCG)
        except LabError as err:
            guest.kill()
            if accel != "kvm":
                raise
            log.warning("boot under KVM failed (%s); booting again under TCG", err)
            mark_kvm_broken(cache, image.kernel)
            shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True)
            guest = cls._start_qemu(run_dir, name, image, "tcg", daemonize, cache)
            try:
                guest.wait_ready(BOOT_TIMEOUT_TCG)
            except LabError:
                guest.kill()
                raise
        return guest

    @classmethod
    def _start_qemu(cls, run_dir: Path, name: str, image: Image, accel: str, daemonize: bool,
                    cache: Path) -> Guest:
        overlay = run_dir / "root.qcow2"
        run_host(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                  "-b", image.root_disk, overlay], timeout=60)
        pool_disk = run_dir / "pool.raw"
        with open(pool_disk, "wb") as handle:
            handle.truncate(POOL_DISK_BYTES)  # sparse

        ssh_port, https_port, iscsi_port = free_loopback_ports(3)
        ports = Ports(ssh=ssh_port, https=https_port, iscsi=iscsi_port)
        forwards = ",".join(
            f"hostfwd=tcp:127.0.0.1:{host}-:{guest}"
            for host, guest in ((ssh_port, GUEST_SSH_PORT), (https_port, GUEST_HTTPS_PORT),
                                (iscsi_port, GUEST_ISCSI_PORT))
        )
        accel_args = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else [
            "-accel", "tcg,thread=multi"]
        argv = [
            QEMU, "-name", f"cspd-lab-{name}", "-machine", "pc", *accel_args,
            "-m", str(MEMORY_MB), "-smp", str(CPUS), "-nodefaults", "-display", "none",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd),
            "-append", "console=ttyS0 root=/dev/vda rw",
            "-drive", f"file={overlay},if=none,id=root,format=qcow2,cache=unsafe,discard=unmap",
            "-device", "virtio-blk-pci,drive=root,serial=cspd-root",
            "-drive", f"file={pool_disk},if=none,id=pool,format=raw,discard=unmap",
            "-device", "virtio-blk-pci,drive=pool,serial=cspd-pool",
            "-netdev", f"user,id=net0,restrict=on,net=10.0.2.0/24,dhcpstart={GUEST_ADDRESS},"
                       f"hostname=cspd-lab,{forwards}",
            # No option ROM: the kernel is loaded directly, nothing boots from the network.
            "-device", "virtio-net-pci,netdev=net0,romfile=",
            "-device", "virtio-rng-pci",
            "-serial", f"file:{run_dir / 'console.log'}",
            "-qmp", f"unix:{run_dir / 'qmp.sock'},server=on,wait=off",
            "-pidfile", str(run_dir / "qemu.pid"),
        ]
        log.info("booting guest %r under %s (ssh on 127.0.0.1:%d)", name, accel.upper(), ssh_port)
        process = None
        with open(run_dir / "qemu.log", "wb") as qemu_log:
            if daemonize:
                result = subprocess.run([*argv, "-daemonize"], stdin=subprocess.DEVNULL,
                                        stdout=qemu_log, stderr=qemu_log, timeout=120,
                                        check=False)
                if result.returncode != 0:
                    raise LabError(f"QEMU failed to start:\n{tail(_read(run_dir / 'qemu.log'))}")
                pid = int((run_dir / "qemu.pid").read_text().strip())
            else:
                process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qemu_log,
                                           stderr=qemu_log, preexec_fn=_die_with_parent)
                pid = process.pid
        info = GuestInfo(name=name, image=str(image.directory), accel=accel, ports=ports,
                         pid=pid, booted_at=time.time())
        guest = cls(run_dir, info, image, ssh_key(cache), process)
        guest._write_info()
        return guest

    @classmethod
    def attach(cls, name: str, cache: Path | None = None) -> Guest:
        """Return the running guest called ``name``; raises LabError when there is none."""
        cache = cache or cache_root()
        run_dir = run_root(cache) / name
        info = _read_info(run_dir)
        if info is None or not _pid_is_qemu(info.pid):
            raise LabError(f"no lab guest named {name!r} is running")
        return cls(run_dir, info, Image(Path(info.image)), ssh_key(cache))

    def _write_info(self) -> None:
        path = self.run_dir / "guest.json"
        path.write_text(json.dumps(asdict(self.info), indent=1) + "\n")

    # -- state --

    @property
    def ports(self) -> Ports:
        return self.info.ports

    def is_running(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        return _pid_is_qemu(self.info.pid)

    def console_tail(self, limit: int = 3000) -> str:
        """Return the end of the guest's serial console log."""
        return tail(_read(self.run_dir / "console.log"), limit)

    # -- SSH --

    @property
    def _control_path(self) -> str:
        path = str(self.run_dir / "ssh.sock")
        if len(path) > 100:  # unix socket paths are limited to 108 bytes
            path = os.path.join(tempfile.gettempdir(), f"cspd-lab-{self.info.pid}.sock")
        return path

    def ssh_argv(self, *, master: bool = False) -> list[str]:
        """Return the ssh command line that logs in to the guest as root (without a command)."""
        argv = [
            "ssh", "-F", "/dev/null", "-i", str(self.ssh_key), "-p", str(self.ports.ssh),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.image.known_hosts}",
            "-o", f"HostKeyAlias={HOST_KEY_ALIAS}", "-o", "HostKeyAlgorithms=ssh-ed25519",
            "-o", f"ConnectTimeout={SSH_CONNECT_TIMEOUT}",
            "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=6",
            "-o", "LogLevel=ERROR", "-o", f"ControlPath={self._control_path}",
        ]
        if master:
            argv += ["-o", "ControlMaster=yes", "-o", "ControlPersist=yes", "-f", "-N"]
        else:
            argv += ["-o", "ControlMaster=no"]
        return [*argv, "root@127.0.0.1"]

    def _master_alive(self) -> bool:
        if not os.path.exists(self._control_path):
            return False
        check = subprocess.run([*self.ssh_argv()[:-1], "-O", "check", "root@127.0.0.1"],
                               capture_output=True, timeout=10, check=False)
        return check.returncode == 0

    def _ensure_master(self) -> None:
        """Start the shared SSH connection that later commands reuse, if it is not up."""
        with self._master_lock:  # tests may run guest commands from several threads
            if self._master_alive():
                return
            Path(self._control_path).unlink(missing_ok=True)
            with open(self.run_dir / "ssh-master.log", "ab") as errors:
                subprocess.run(self.ssh_argv(master=True), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=errors, timeout=60,
                               check=False)

    def close_ssh(self) -> None:
        """Stop the shared SSH connection."""
        if os.path.exists(self._control_path):
            subprocess.run([*self.ssh_argv()[:-1], "-O", "exit", "root@127.0.0.1"],
                           capture_output=True, timeout=10, check=False)
            Path(self._control_path).unlink(missing_ok=True)

    def run(self, cmd: str | list[str], *, check: bool = True,
            timeout: float = DEFAULT_COMMAND_TIMEOUT,
            input: str | bytes | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` as root in the guest and return its exit status and output.

        A string runs through the guest's shell; a list is quoted word by word.
        Raises GuestCommandError for a non-zero exit status when ``check`` is
        true, and GuestTimeoutError after ``timeout`` seconds.
        """
        command = cmd if isinstance(cmd, str) else shlex.join(cmd)
        self._ensure_master()
        data = input.encode() if isinstance(input, str) else input
        try:
            result = subprocess.run([*self.ssh_argv(), "--", command], input=data,
                                    stdin=None if data is not None else subprocess.DEVNULL,
                                    capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as err:
            raise GuestTimeoutError(
                f"guest command {command!r} timed out after {timeout:.0f} s\n{tail(err.stderr)}"
            ) from err
        completed = subprocess.CompletedProcess(
            command, result.returncode, result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace"),
        )
        if check and completed.returncode != 0:
            raise GuestCommandError(completed.returncode, command, completed.stdout,
                                    completed.stderr)
        return completed

    def put_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        """Write ``data`` to ``path`` in the guest, creating its folder."""
        folder = os.path.dirname(path) or "/"
        self.run(f"mkdir -p {shlex.quote(folder)} && cat > {shlex.quote(path)} && "
                 f"chmod {mode:o} {shlex.quote(path)}", input=data)

    def _try_ssh(self) -> bool:
        result = subprocess.run([*self.ssh_argv(), "--", "true"], stdin=subprocess.DEVNULL,
                                capture_output=True, timeout=SSH_CONNECT_TIMEOUT + 20,
                                check=False)
        return result.returncode == 0

    # -- lifecycle --

    def wait_ready(self, timeout: float) -> None:
        """Wait until SSH accepts the lab's key and systemd has finished starting the guest.

        Raises LabError, quoting the console, when QEMU exits or ``timeout``
        passes first, or when the lab's pool unit failed.
        """
        deadline = time.monotonic() + timeout
        Path(self._control_path).unlink(missing_ok=True)
        while True:
            if not self.is_running():
                raise LabError(
                    f"QEMU exited during boot\nqemu: {tail(_read(self.run_dir / 'qemu.log'))}\n"
                    f"console:\n{self.console_tail()}"
                )
            try:
                if self._try_ssh():
                    break
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() >= deadline:
                raise LabError(
                    f"the guest did not accept SSH within {timeout:.0f} s\n"
                    f"console:\n{self.console_tail()}"
                )
            time.sleep(2)

        remaining = max(deadline - time.monotonic(), 30.0)
        state = self.run("systemctl is-system-running --wait", check=False,
                         timeout=remaining).stdout.strip()
        if state != "running":
            failed = self.run("systemctl --failed --no-legend --plain", check=False).stdout
            log.warning("guest finished booting %s; failed units:\n%s", state, failed.strip())
        pool = self.run("systemctl is-active cspd-lab-pool.service", check=False)
        if pool.stdout.strip() != "active":
            journal = self.run("journalctl -b -u cspd-lab-pool.service --no-pager", check=False)
            raise LabError(f"the lab's thin pool was not created:\n{tail(journal.stdout)}")

    def boot_id(self) -> str:
        return self.run("cat /proc/sys/kernel/random/boot_id").stdout.strip()

    def reboot(self, *, hard: bool = False, timeout: float | None = None) -> None:
        """Reboot the guest and wait until it is ready again.

        A soft reboot (the default) first releases the storage stack with
        RELEASE_STORAGE_SCRIPT, then runs ``systemctl reboot``. ``hard=True``
        resets the virtual machine at once, as a power failure would.
        """
        timeout = timeout or (BOOT_TIMEOUT_KVM if self.info.accel == "kvm" else BOOT_TIMEOUT_TCG)
        previous = self.boot_id()
        if hard:
            qmp_command(self.run_dir / "qmp.sock", "system_reset")
        else:
            self.run(RELEASE_STORAGE_SCRIPT, check=False, timeout=120)
            self.run("systemctl reboot --no-block", check=False, timeout=30)
        self.close_ssh()
        deadline = time.monotonic() + timeout
        # Until systemd has stopped sshd, the old boot may still accept logins.
        while self._current_boot_id() in (previous, None):
            if time.monotonic() >= deadline or not self.is_running():
                raise LabError(f"the guest did not come back within {timeout:.0f} s of a reboot\n"
                               f"console:\n{self.console_tail()}")
            time.sleep(2)
        self.wait_ready(max(deadline - time.monotonic(), 60.0))

    def _current_boot_id(self) -> str | None:
        """Return the guest's boot id over a fresh SSH connection, None when the login fails."""
        try:
            result = subprocess.run(
                [*self.ssh_argv(), "--", "cat /proc/sys/kernel/random/boot_id"],
                stdin=subprocess.DEVNULL, capture_output=True,
                timeout=SSH_CONNECT_TIMEOUT + 20, check=False,
            )
        except subprocess.TimeoutExpired:
            return None
        return result.stdout.decode().strip() if result.returncode == 0 else None

    def shutdown(self, timeout: float = POWER_OFF_TIMEOUT) -> float:
        """Power the guest off cleanly, or from outside after ``timeout``; return the seconds taken.

        Releases the storage stack first so that systemd does not wait for
        devices at power-off.
        """
        started = time.monotonic()
        if self.is_running():
            try:
                self.run(RELEASE_STORAGE_SCRIPT, check=False, timeout=120)
                self.run("systemctl poweroff --no-block", check=False, timeout=30)
            except LabError as err:
                log.warning("clean power-off failed: %s", err)
            self.close_ssh()
            if not self._wait_exit(timeout):
                log.warning("the guest did not power off within %.0f s; stopping QEMU", timeout)
                self.kill()
        self.close_ssh()
        return time.monotonic() - started

    def _wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.is_running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)
        if self._process is not None:
            self._process.wait()
        return True

    def kill(self) -> None:
        """Stop QEMU at once: QMP ``quit``, then SIGKILL."""
        if self.is_running():
            with contextlib.suppress(QmpError):
                qmp_command(self.run_dir / "qmp.sock", "quit", timeout=5)
            if not self._wait_exit(10):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.info.pid, signal.SIGKILL)
                self._wait_exit(10)
        self.close_ssh()

    def remove(self) -> None:
        """Delete the run folder of a guest that is no longer running."""
        if self.is_running():
            raise LabError(f"guest {self.info.name!r} is still running")
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
