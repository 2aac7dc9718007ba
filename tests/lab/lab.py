"""The lab: a booted guest plus cspd installed from the working tree and started lazily."""

from __future__ import annotations

import io
import json
import secrets
import shlex
import subprocess
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import LabError, tail
from .guest import GUEST_ADDRESS, Guest
from .host import REPO_ROOT, cache_root, log, wait_for_tcp
from .image import GUEST_WHEELHOUSE, VENV, ensure_image
from .wheels import build_cspd_wheel

GUEST_TOOLS = Path(__file__).parent / "guest_tools"
UNIT_FILE = REPO_ROOT / "systemd" / "cspd.service"

# Paths in the guest.
LIO_TOOL = "/usr/local/lib/cspd-lab/lio.py"
INSTALL_DIR = "/var/tmp/cspd-install"
CONFIG_PATH = "/etc/cspd/cspd.toml"
CSPD = f"{VENV}/bin/cspd"
PYTHON = f"{VENV}/bin/python3"

CSPD_USER = "admin"
CSPD_START_TIMEOUT = 300.0
API_PORT_TIMEOUT = 60.0


@dataclass
class Timings:
    """Seconds spent on each lab step; None for a step that did not run."""

    image_build: float | None = None
    image_cached: bool = False
    boot: float | None = None
    cspd_install: float | None = None
    shutdown: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [
            "image: cached" if self.image_cached
            else f"image build: {_seconds(self.image_build)}",
            f"boot: {_seconds(self.boot)}",
        ]
        if self.cspd_install is not None:
            parts.append(f"cspd install and start: {_seconds(self.cspd_install)}")
        parts += [f"{name}: {_seconds(value)}" for name, value in self.extra.items()]
        if self.shutdown is not None:
            parts.append(f"shutdown: {_seconds(self.shutdown)}")
        return ", ".join(parts)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


class Lab:
    """A running lab guest, as the ``lab`` fixture and ``python3 -m tests.lab`` use it.

    Attributes and methods:

    * ``run(cmd, check=True, timeout=120, input=None)``: run a shell command
      (a string) or an argument list as root in the guest. Returns a
      subprocess.CompletedProcess with ``returncode``, ``stdout`` and
      ``stderr`` as text. Raises GuestCommandError (a CalledProcessError) on a
      non-zero status when ``check`` is true, GuestTimeoutError on time-out.
    * ``put_file(path, data, mode=0o644)``: write a file in the guest.
    * ``host``: "127.0.0.1", where every forwarded port listens.
    * ``ssh_port``, ``https_port``, ``iscsi_port``: host ports forwarded to
      the guest's 22, 8443 and 3260.
    * ``guest_address``: the guest's own address (10.0.2.15), where
      connections forwarded from the host arrive; an iSCSI portal that the
      host's initiators use listens there.
    * ``initiator_name``: the guest's open-iscsi initiator name.
    * ``accel``: "kvm" or "tcg".
    * ``api_url``, ``username``, ``password``: the daemon's API
      (https://127.0.0.1:PORT/csp, self-signed certificate) and a user it
      accepts. Reading any of them installs and starts cspd first, once.
    * ``ensure_cspd()``, ``restart_cspd()``, ``stop_cspd()``: manage the
      cspd.service unit in the guest; start and restart return once the
      daemon reported READY=1 and its port answers on the host.
    * ``reboot(hard=False)``: reboot the guest, then wait for SSH and, when
      cspd was started, for cspd to be ready again.
    * ``lio_tool``: path of a helper in the guest that exports block devices
      through rtslib-fb (run it with ``python`` = /opt/cspd/bin/python3).
    * ``timings``: seconds spent on the image, the boot and later steps.
    """

    host = "127.0.0.1"
    guest_address = GUEST_ADDRESS
    lio_tool = LIO_TOOL
    python = PYTHON
    cspd = CSPD
    config_path = CONFIG_PATH

    def __init__(self, guest: Guest, timings: Timings | None = None) -> None:
        self.guest = guest
        self.timings = timings or Timings()
        self._initiator_name: str | None = None
        self._credentials: tuple[str, str] | None = None
        self._cspd_started = False
        self._load_state()

    # -- starting and stopping --

    @classmethod
    def start(cls, name: str, *, daemonize: bool, cache: Path | None = None) -> Lab:
        """Build or reuse the image, boot a guest called ``name`` and upload the test helpers.

        Raises LabError (LabUnavailableError when the host lacks something)
        when the guest cannot be built or booted.
        """
        cache = cache or cache_root()
        timings = Timings()
        result = ensure_image(cache)
        timings.image_build = result.build_seconds
        timings.image_cached = result.build_seconds is None
        started = time.monotonic()
        guest = Guest.boot(name, result.image, daemonize=daemonize, cache=cache)
        lab = cls(guest, timings)
        try:
            lab.guest.put_file(LIO_TOOL, (GUEST_TOOLS / "lio.py").read_bytes(), 0o755)
        except LabError:
            guest.kill()
            raise
        timings.boot = time.monotonic() - started
        log.info("guest %r ready after %.1f s under %s", name, timings.boot,
                 guest.info.accel.upper())
        return lab

    @classmethod
    def attach(cls, name: str, cache: Path | None = None) -> Lab:
        """Return the running lab called ``name``; raises LabError when none runs."""
        return cls(Guest.attach(name, cache))

    def stop(self) -> None:
        """Power the guest off and delete its run folder (overlay, pool disk, logs)."""
        self.timings.shutdown = self.guest.shutdown()
        self.guest.remove()

    # -- the guest --

    @property
    def ssh_port(self) -> int:
        return self.guest.ports.ssh

    @property
    def https_port(self) -> int:
        return self.guest.ports.https

    @property
    def iscsi_port(self) -> int:
        return self.guest.ports.iscsi

    @property
    def accel(self) -> str:
        return self.guest.info.accel

    def run(self, cmd: str | list[str], *, check: bool = True, timeout: float = 120.0,
            input: str | bytes | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` as root in the guest; see Guest.run."""
        return self.guest.run(cmd, check=check, timeout=timeout, input=input)

    def put_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        self.guest.put_file(path, data, mode)

    @property
    def initiator_name(self) -> str:
        """The InitiatorName from the guest's /etc/iscsi/initiatorname.iscsi."""
        if self._initiator_name is None:
            text = self.run("cat /etc/iscsi/initiatorname.iscsi").stdout
            names = [line.split("=", 1)[1].strip() for line in text.splitlines()
                     if line.startswith("InitiatorName=")]
            if not names:
                raise LabError("the guest's /etc/iscsi/initiatorname.iscsi has no InitiatorName")
            self._initiator_name = names[0]
        return self._initiator_name

    def reboot(self, *, hard: bool = False) -> None:
        """Reboot the guest; wait for SSH and, when cspd was started, for cspd to be ready."""
        started = time.monotonic()
        self.guest.reboot(hard=hard)
        if self._cspd_started:
            self._start_unit("start")
        self.timings.extra["last reboot"] = time.monotonic() - started

    # -- cspd --

    @property
    def api_url(self) -> str:
        self.ensure_cspd()
        return f"https://{self.host}:{self.https_port}/csp"

    @property
    def username(self) -> str:
        return self.ensure_cspd()[0]

    @property
    def password(self) -> str:
        return self.ensure_cspd()[1]

    def ensure_cspd(self) -> tuple[str, str]:
        """Install cspd from the working tree, add a user and start the service, once.

        Returns the user's name and password. Raises LabError with the
        daemon's journal when it does not start.
        """
        if self._credentials is not None and self._cspd_started:
            return self._credentials
        started = time.monotonic()
        self.install_cspd()
        if self._credentials is None:
            password = secrets.token_urlsafe(18)
            self.run([CSPD, "user", "add", CSPD_USER, "--config", CONFIG_PATH],
                     input=password + "\n", timeout=120)
            self._credentials = (CSPD_USER, password)
        self.run("systemctl enable cspd.service")
        self._start_unit("start")
        self._cspd_started = True
        self.timings.cspd_install = time.monotonic() - started
        self._save_state()
        return self._credentials

    def install_cspd(self) -> None:
        """Install the working tree's cspd, unit file and lab configuration into the guest."""
        wheel = build_cspd_wheel(REPO_ROOT, self.guest.run_dir / "wheels")
        if not UNIT_FILE.is_file():
            raise LabError(f"{UNIT_FILE} is missing")
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            tar.add(wheel, arcname=wheel.name)
            tar.add(UNIT_FILE, arcname="cspd.service")
            tar.add(GUEST_TOOLS / "cspd.toml", arcname="cspd.toml")
        script = f"""
set -e
rm -rf {INSTALL_DIR} && mkdir -p {INSTALL_DIR} && tar -x -C {INSTALL_DIR} -f -
{VENV}/bin/pip install --quiet --disable-pip-version-check --no-index \
    --find-links {GUEST_WHEELHOUSE} --no-deps --force-reinstall {INSTALL_DIR}/{wheel.name}
install -m 0644 {INSTALL_DIR}/cspd.service /etc/systemd/system/cspd.service
ln -sf {VENV}/bin/cspd /usr/local/bin/cspd
install -d -m 0750 /etc/cspd
install -m 0640 {INSTALL_DIR}/cspd.toml {CONFIG_PATH}
systemctl daemon-reload
"""
        self.run(script, input=archive.getvalue(), timeout=300)

    def restart_cspd(self) -> None:
        """Restart cspd.service (starting cspd first if it never ran) and wait until ready."""
        if not self._cspd_started:
            self.ensure_cspd()
            return
        self._start_unit("restart")

    def stop_cspd(self) -> None:
        """Stop cspd.service; the next restart_cspd() or reboot() starts it again."""
        self.run("systemctl stop cspd.service", timeout=120)

    def _start_unit(self, verb: str) -> None:
        # For a Type=notify unit, systemctl returns once the daemon sent READY=1.
        result = self.run(f"systemctl {verb} cspd.service", check=False,
                          timeout=CSPD_START_TIMEOUT)
        if result.returncode == 0 and wait_for_tcp(self.https_port, API_PORT_TIMEOUT):
            return
        status = self.run("systemctl status --no-pager --lines=0 cspd.service", check=False)
        journal = self.run("journalctl -b --no-pager --lines=80 -u cspd.service", check=False)
        reason = (result.stderr.strip() or
                  f"port {self.https_port} on 127.0.0.1 did not answer")
        raise LabError(
            f"cspd.service did not start ({reason})\n{status.stdout.strip()}\n"
            f"journal:\n{tail(journal.stdout)}"
        )

    def journal(self, unit: str = "cspd.service", lines: int = 200) -> str:
        """Return the last ``lines`` journal lines of ``unit`` from the current boot."""
        return self.run(
            f"journalctl -b --no-pager --lines={lines} -u {shlex.quote(unit)}", check=False
        ).stdout

    # -- state kept for 'python3 -m tests.lab' --

    @property
    def _state_path(self) -> Path:
        return self.guest.run_dir / "lab.json"

    def _save_state(self) -> None:
        state = {"cspd_started": self._cspd_started, "timings": asdict(self.timings)}
        if self._credentials is not None:
            state["username"], state["password"] = self._credentials
        self._state_path.touch(mode=0o600)
        self._state_path.write_text(json.dumps(state, indent=1) + "\n")

    def _load_state(self) -> None:
        try:
            state = json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            return
        if "username" in state and "password" in state:
            self._credentials = (state["username"], state["password"])
        self._cspd_started = bool(state.get("cspd_started"))

    def describe(self) -> dict[str, object]:
        """Return the facts a person needs to use this lab (without starting anything)."""
        facts: dict[str, object] = {
            "url": f"https://{self.host}:{self.https_port}/csp",
            "iscsi_port": self.iscsi_port,
            "ssh_port": self.ssh_port,
            "accel": self.accel,
            "run_dir": str(self.guest.run_dir),
        }
        if self._credentials is not None:
            facts["username"], facts["password"] = self._credentials
        return facts
