"""The array playbook (ansible/site.yml) against the lab guest, over SSH on 127.0.0.1.

The guest already has the volume group "cspd" with the thin pool "pool" on
/dev/vdb and cspd in /opt/cspd. The playbook runs twice with the guest's own
configuration as inventory variables: the first run may change files, the
second must report no change. ``cspd doctor`` then checks the array the
playbook left behind.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab import Lab
from tests.lab.wheels import build_cspd_wheel

pytestmark = pytest.mark.lab

REPO_ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO_ROOT / "ansible"

# One playbook run under software emulation takes a few minutes.
PLAYBOOK_TIMEOUT = 1800

# The guest's wheelhouse of cspd's dependencies, which the image build fills.
GUEST_WHEELHOUSE = "/var/cache/cspd-wheels"

# Doctor checks that may fail in the lab guest; with the role's defaults, none.
DOCTOR_CHECKS_ALLOWED_TO_FAIL: set[str] = set()

RECAP_RE = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


def find_ansible_playbook() -> str:
    """Return ansible-playbook next to this Python or on PATH; skip (fail in CI) without it."""
    beside_python = Path(sys.executable).parent / "ansible-playbook"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("ansible-playbook")
    if found:
        return found
    message = "ansible-playbook is not installed; install the dev extras (pip install -e '.[dev]')"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def ssh_settings(lab: Lab) -> dict[str, str]:
    """Return Ansible connection variables equivalent to the lab's own ssh command line.

    The lab's connection-sharing options are left out: Ansible keeps its own.
    """
    argv = lab.guest.ssh_argv()[1:-1]  # without "ssh" and "root@127.0.0.1"
    settings = {"ansible_host": lab.host, "ansible_user": "root"}
    common_args: list[str] = []
    index = 0
    while index < len(argv):
        option, value = argv[index], argv[index + 1] if index + 1 < len(argv) else ""
        if option == "-i":
            settings["ansible_ssh_private_key_file"] = value
        elif option == "-p":
            settings["ansible_port"] = value
        elif option == "-o" and value.split("=", 1)[0] in ("ControlPath", "ControlMaster"):
            pass
        elif option in ("-o", "-F"):
            common_args += [option, value]
        else:
            index += 1  # a flag without a value
            continue
        index += 2
    settings["ansible_ssh_common_args"] = " ".join(common_args)
    return settings


def lab_config_variables(config: dict[str, Any]) -> dict[str, Any]:
    """Translate the guest's cspd.toml into the role's variables, key by key."""
    variables: dict[str, Any] = {}
    for section, keys in config.items():
        if section == "replication_partners":
            variables["cspd_array_replication_partners"] = keys
            continue
        for key, value in keys.items():
            variables[f"cspd_array_{section}_{key}"] = value
    if "cspd_array_lvm_pool_devices" in variables:
        variables["cspd_array_pool_devices"] = variables.pop("cspd_array_lvm_pool_devices")
    return variables


@pytest.fixture(scope="module")
def control_dir() -> Iterator[Path]:
    # A short path: Ansible's SSH control sockets live here, and socket paths
    # are limited to 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="cspd-ans-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def inventory(lab: Lab, control_dir: Path) -> Path:
    lab.ensure_cspd()
    config = tomllib.loads(lab.run(["cat", lab.config_path]).stdout)
    wheel_dir = control_dir / "wheels"
    build_cspd_wheel(REPO_ROOT, wheel_dir)
    unit_copy = control_dir / "cspd.service"
    shutil.copyfile(REPO_ROOT / "systemd" / "cspd.service", unit_copy)

    host_vars: dict[str, Any] = {
        **ssh_settings(lab),
        "ansible_python_interpreter": "/usr/bin/python3",
        **lab_config_variables(config),
        "cspd_array_user_name": "ansible-admin",
        "cspd_array_user_password": secrets.token_urlsafe(18),
        # A copy of the unit as the test starts: edits to the working tree
        # during the test must not show up as a change on the second run.
        "cspd_array_unit_src": str(unit_copy),
        "cspd_array_wheel_dir": str(wheel_dir),
        "cspd_array_wheel_cache": GUEST_WHEELHOUSE,
        # The guest has no network: every package must already be there.
        "cspd_array_apt_update_cache": False,
    }
    # JSON is YAML too, and Ansible's YAML inventory plugin reads it.
    path = control_dir / "inventory.yml"
    path.write_text(
        json.dumps({"all": {"children": {"cspd_arrays": {"hosts": {"lab": host_vars}}}}})
    )
    path.chmod(0o600)
    return path


def run_playbook(inventory: Path, control_dir: Path, playbook: str) -> tuple[str, dict[str, int]]:
    """Run a playbook; return its output and the recap counts of the host "lab"."""
    env = dict(
        os.environ,
        ANSIBLE_HOME=str(control_dir / "home"),
        ANSIBLE_LOCAL_TEMP=str(control_dir / "tmp"),
        ANSIBLE_SSH_CONTROL_PATH_DIR=str(control_dir / "cp"),
        ANSIBLE_PIPELINING="true",
        ANSIBLE_RETRY_FILES_ENABLED="false",
        ANSIBLE_NOCOLOR="true",
        ANSIBLE_FORCE_COLOR="false",
        ANSIBLE_TIMEOUT="60",
    )
    completed = subprocess.run(
        [find_ansible_playbook(), "-i", str(inventory), playbook],
        cwd=ANSIBLE_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PLAYBOOK_TIMEOUT,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, f"ansible-playbook {playbook} failed:\n{output[-20000:]}"
    recaps = {match["host"]: match for match in RECAP_RE.finditer(completed.stdout)}
    assert "lab" in recaps, f"no play recap for host lab:\n{output[-20000:]}"
    counts = {key: int(recaps["lab"][key]) for key in ("ok", "changed", "unreachable", "failed")}
    return output, counts


def changed_tasks(output: str) -> list[str]:
    """Return the names of the tasks that reported a change, from the default output."""
    names = []
    task = ""
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line[line.index("[") + 1 : line.rfind("]")]
        elif line.startswith("changed:"):
            names.append(task)
    return names


def test_array_playbook_idempotent(lab: Lab, inventory: Path, control_dir: Path) -> None:
    first_output, first = run_playbook(inventory, control_dir, "site.yml")
    assert first["failed"] == 0, first_output[-20000:]
    assert first["unreachable"] == 0, first_output[-20000:]

    second_output, second = run_playbook(inventory, control_dir, "site.yml")
    assert second["failed"] == 0, second_output[-20000:]
    assert second["changed"] == 0, f"changed on the second run: {changed_tasks(second_output)}"

    active = lab.run(["systemctl", "is-active", "cspd.service"], check=False).stdout.strip()
    assert active == "active", lab.journal()


def test_array_passes_doctor(lab: Lab, inventory: Path, control_dir: Path) -> None:
    result = lab.run([lab.cspd, "doctor", "--config", lab.config_path], check=False)
    lines = result.stdout.splitlines()
    failures = [
        line
        for line in lines
        if line.startswith("FAIL")
        and line.split(":", 1)[0].removeprefix("FAIL").strip() not in DOCTOR_CHECKS_ALLOWED_TO_FAIL
    ]
    assert failures == [], result.stdout
    assert any(line.startswith("OK    thin pool cspd/pool fill") for line in lines), result.stdout
    assert any(line.startswith("OK    iSCSI port 3260") for line in lines), result.stdout
