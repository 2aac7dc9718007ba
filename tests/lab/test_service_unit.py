"""systemd/cspd.service: its sandbox still lets LVM, device-mapper and LIO work.

The probe runs a shell script under a copy of the unit in which only the
service type and ExecStart differ, so every hardening setting applies to it
as it would to the daemon.
"""

from __future__ import annotations

import re
import shlex

import pytest

from .host import REPO_ROOT
from .lab import Lab
from .storage import TEST_IQN_PREFIX, VOLUME_GROUP, unique_name

UNIT_FILE = REPO_ROOT / "systemd" / "cspd.service"
PROBE_UNIT = "cspd-sandbox-probe.service"
PROBE_SCRIPT = "/usr/local/lib/cspd-lab/sandbox-probe.sh"
# Settings of the daemon's unit that make no sense for a one-shot probe.
DROPPED_SETTINGS = ("Restart", "RestartSec", "NotifyAccess", "WatchdogSec")


def probe_unit(unit_text: str) -> str:
    """Return the unit text with Type=oneshot and ExecStart running the probe script."""
    lines = []
    section = ""
    for line in unit_text.splitlines():
        header = re.fullmatch(r"\[(\w+)\]", line.strip())
        if header:
            section = header.group(1)
        if section == "Install":
            continue
        key = line.split("=", 1)[0].strip()
        if key in DROPPED_SETTINGS:
            continue
        if key == "Type":
            line = "Type=oneshot"
        elif key == "ExecStart":
            line = f"ExecStart=/bin/sh {PROBE_SCRIPT}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def probe_script(lab: Lab, name: str) -> str:
    lv = f"{VOLUME_GROUP}/{name}"
    target = f"{TEST_IQN_PREFIX}:{name}"
    lio = f"{lab.python} {lab.lio_tool}"
    return f"""set -eux
lvcreate --yes --virtualsize 32M --thin {VOLUME_GROUP}/pool --name {name}
lvcreate --yes --snapshot {lv} --name {name}-snap
lvchange --activate y --ignoreactivationskip {lv}-snap
lvs --reportformat json {VOLUME_GROUP}
dmsetup suspend /dev/{lv}
dmsetup resume /dev/{lv}
{lio} export --name {name} --device /dev/{lv} --target {target} --portal 127.0.0.1 \\
    --acl {TEST_IQN_PREFIX}:probe-initiator
{lio} show --target {target}
{lio} remove --name {name} --target {target}
lvremove --yes {lv}-snap {lv}
touch /etc/target/.sandbox-probe /var/lib/cspd/.sandbox-probe /etc/lvm/backup/.sandbox-probe
rm /etc/target/.sandbox-probe /var/lib/cspd/.sandbox-probe /etc/lvm/backup/.sandbox-probe
# The sandbox is in force: /usr, /etc/cspd and kernel tunables are read-only.
for path in /usr/.sandbox-probe /etc/cspd/.sandbox-probe; do
    if touch "$path" 2>/dev/null; then rm -f "$path"; echo "$path is writable"; exit 1; fi
done
tunable=/proc/sys/kernel/printk_ratelimit
if cat "$tunable" 2>/dev/null > "$tunable"; then echo "$tunable is writable"; exit 1; fi
echo SANDBOX-PROBE-PASSED
"""


@pytest.mark.lab
def test_unit_sandbox_allows_lvm_and_lio(lab: Lab) -> None:
    name = unique_name("labtest-sandbox")
    lab.put_file(f"/etc/systemd/system/{PROBE_UNIT}", probe_unit(UNIT_FILE.read_text()))
    lab.put_file(PROBE_SCRIPT, probe_script(lab, name), 0o755)
    lab.run("systemctl daemon-reload")
    try:
        started = lab.run(f"systemctl start {PROBE_UNIT}", check=False, timeout=300)
        journal = lab.run(f"journalctl -b --no-pager -o cat -u {PROBE_UNIT}", check=False).stdout
        assert started.returncode == 0, f"{started.stderr}\n{journal}"
        assert "SANDBOX-PROBE-PASSED" in journal, journal
    finally:
        lab.run(f"{lab.python} {lab.lio_tool} remove --name {name} "
                f"--target {TEST_IQN_PREFIX}:{name}", check=False)
        lab.run(f"lvremove --yes {VOLUME_GROUP}/{name}-snap {VOLUME_GROUP}/{name}", check=False)
        lab.run(f"rm -f /etc/systemd/system/{PROBE_UNIT} {shlex.quote(PROBE_SCRIPT)}; "
                "systemctl daemon-reload; systemctl reset-failed", check=False)


def test_unit_declares_notify_and_restart() -> None:
    unit = UNIT_FILE.read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    assert settings["Type"] == "notify"
    assert settings["Restart"] == "on-failure"
    assert settings["ExecStart"] == "/opt/cspd/bin/cspd serve --config /etc/cspd/cspd.toml"
    assert settings["StateDirectory"] == "cspd"
    assert settings["ConfigurationDirectory"] == "cspd"
