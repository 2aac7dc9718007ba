"""Fixtures of the lab tier: tests on the real kernel storage stack in a QEMU guest.

Mark such tests ``@pytest.mark.lab`` and request ``lab`` (guest only) or
``lab_cspd`` (guest with cspd running). The guest boots once per test session
and is powered off at its end. When it cannot be built or booted, the tests
that use it fail with the reason when the environment has CI=true, and are
skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .errors import LabError
from .lab import Lab

REASON_LIMIT = 3000


@dataclass
class _SessionReport:
    lab: Lab | None = None
    error: str | None = None
    test_seconds: float = 0.0
    tests: int = 0


_report = _SessionReport()


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def _unavailable(reason: str) -> None:
    """Fail (under CI) or skip the requesting test because the lab is unusable."""
    if len(reason) > REASON_LIMIT:
        reason = reason[:REASON_LIMIT] + " ..."
    if _in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The lab guest: Debian bookworm under QEMU with LVM thin, LIO, open-iscsi and multipath.

    Booted once per session (image built or taken from the cache first) and
    powered off at the end. cspd is not started until a test requests it.

    * ``lab.run(cmd, check=True, timeout=120, input=None)``: run a command as
      root in the guest. ``cmd`` is a shell string or an argument list.
      Returns subprocess.CompletedProcess with ``returncode``, ``stdout`` and
      ``stderr`` (text). Raises GuestCommandError on a non-zero status when
      ``check``, GuestTimeoutError after ``timeout`` seconds.
    * ``lab.put_file(path, data, mode=0o644)``: write a file in the guest.
    * ``lab.host``: "127.0.0.1"; ``lab.iscsi_port``, ``lab.https_port``,
      ``lab.ssh_port``: host ports forwarded to the guest's 3260, 8443, 22.
    * ``lab.guest_address``: the guest's address, 10.0.2.15. Connections
      forwarded from the host arrive there, so a portal for the host's
      initiators must listen on it.
    * ``lab.initiator_name``: the guest's own initiator IQN.
    * ``lab.api_url`` (https://127.0.0.1:PORT/csp, self-signed certificate),
      ``lab.username``, ``lab.password``: reading one installs the working
      tree's cspd, adds the user and starts cspd.service, once.
    * ``lab.ensure_cspd()``, ``lab.restart_cspd()``, ``lab.stop_cspd()``,
      ``lab.journal(unit="cspd.service")``.
    * ``lab.reboot(hard=False)``: reboot; returns when SSH works again and,
      if cspd was started, cspd is ready. ``hard=True`` resets the machine.
    * ``lab.lio_tool`` with ``lab.python``: a helper in the guest that
      exports a block device through rtslib-fb (export/remove/show).
    * Volume group ``cspd`` with thin pool ``pool`` (about 3 GiB) on /dev/vdb.
      Tests clean up what they create: the guest is shared by the session.
    """
    if _report.error is not None:
        _unavailable(_report.error)
    try:
        instance = Lab.start(f"pytest-{os.getpid()}", daemonize=False)
    except (LabError, OSError, subprocess.SubprocessError) as err:
        _report.error = f"the lab guest cannot boot: {err}"
        _unavailable(_report.error)
        raise  # not reached: _unavailable raises
    _report.lab = instance
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def lab_cspd(lab: Lab) -> Lab:
    """The ``lab`` guest with cspd installed from the working tree and cspd.service running."""
    try:
        lab.ensure_cspd()
    except LabError as err:
        pytest.fail(f"cspd did not start in the lab guest: {err}", pytrace=False)
    return lab


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and "lab" in report.keywords:
        _report.test_seconds += report.duration
        _report.tests += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _report.lab is None and _report.error is None:
        return
    terminalreporter.section("lab")
    if _report.lab is not None:
        terminalreporter.write_line(
            f"lab under {_report.lab.accel.upper()}: {_report.lab.timings.summary()}"
        )
        terminalreporter.write_line(
            f"lab tests: {_report.tests} ran in {_report.test_seconds:.1f} s (test bodies)"
        )
    if _report.error is not None:
        terminalreporter.write_line(_report.error.splitlines()[0])
