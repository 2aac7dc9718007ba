"""Checks of the Ansible content in ansible/: lint, syntax and the rendered templates.

The tools come from the dev extras (ansible-core, ansible-lint). Outside CI a
missing tool skips these tests; in CI (CI=true) it fails them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from cspd.config import Config, parse_config, validate

REPO_ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO_ROOT / "ansible"
ARRAY_ROLE = ANSIBLE_DIR / "roles" / "cspd_array"
NODE_ROLE = ANSIBLE_DIR / "roles" / "cspd_node"

TOOL_TIMEOUT = 300


def find_tool(name: str) -> str:
    """Return the path of an Ansible program, next to this Python or on PATH.

    Skips the test when the program is missing, except in CI, where it fails.
    """
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed; install the dev extras (pip install -e '.[dev]')"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def ansible_env(tmp_path: Path) -> dict[str, str]:
    """Return an environment that keeps Ansible's files and output inside ``tmp_path``."""
    return dict(
        os.environ,
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
        ANSIBLE_HOME=str(tmp_path / "ansible-home"),
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
        ANSIBLE_NOCOLOR="true",
        ANSIBLE_FORCE_COLOR="false",
    )


def run_tool(argv: list[str], tmp_path: Path, cwd: Path = REPO_ROOT) -> str:
    completed = subprocess.run(
        argv,
        cwd=cwd,
        env=ansible_env(tmp_path),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, f"{' '.join(argv)} failed:\n{output}"
    return output


def render(template: Path, variables: Mapping[str, object], tmp_path: Path) -> str:
    """Render a role template with Ansible itself, on localhost, and return the text.

    ``variables`` are passed as extra variables on top of the role's defaults and vars.
    """
    role = template.parents[1]
    var_files = [str(path) for path in (role / "defaults/main.yml", role / "vars/main.yml")]
    playbook = tmp_path / "render.yml"
    output = tmp_path / "rendered"
    playbook.write_text(
        "- name: Render a template\n"
        "  hosts: localhost\n"
        "  connection: local\n"
        "  gather_facts: false\n"
        f"  vars_files: {[path for path in var_files if Path(path).exists()]!r}\n"
        "  tasks:\n"
        "    - name: Render\n"
        "      ansible.builtin.template:\n"
        f"        src: {str(template)!r}\n"
        f"        dest: {str(output)!r}\n"
        "        mode: '0644'\n"
    )
    extra_vars = tmp_path / "extra-vars.json"
    # The modules run on localhost under the Python that runs the tests.
    extra_vars.write_text(json.dumps({"ansible_python_interpreter": sys.executable, **variables}))
    run_tool(
        [
            find_tool("ansible-playbook"),
            "-i",
            "localhost,",
            "-e",
            f"@{extra_vars}",
            str(playbook),
        ],
        tmp_path,
    )
    return output.read_text()


def test_ansible_lint_passes(tmp_path: Path) -> None:
    lint = find_tool("ansible-lint")
    output = run_tool([lint, "--offline", "--profile", "production", "ansible/"], tmp_path)
    assert "Passed" in output


def test_unit_source_default_exists() -> None:
    defaults = (ARRAY_ROLE / "defaults/main.yml").read_text()
    line = next(line for line in defaults.splitlines() if line.startswith("cspd_array_unit_src:"))
    value = line.split(":", 1)[1].strip().strip('"')
    assert value.startswith("{{ role_path }}/")
    unit = Path(value.replace("{{ role_path }}", str(ARRAY_ROLE)))
    assert unit.resolve() == REPO_ROOT / "systemd" / "cspd.service"
    assert unit.is_file()


@pytest.mark.parametrize("playbook", ["site.yml", "node.yml"])
def test_playbook_syntax(playbook: str, tmp_path: Path) -> None:
    run_tool(
        [
            find_tool("ansible-playbook"),
            "-i",
            "inventory/example.yml",
            "--syntax-check",
            playbook,
        ],
        tmp_path,
        cwd=ANSIBLE_DIR,
    )


def test_config_template_defaults_match_daemon(tmp_path: Path) -> None:
    text = render(ARRAY_ROLE / "templates/cspd.toml.j2", {}, tmp_path)
    assert parse_config(text) == validate(Config())


def test_config_template_every_key(tmp_path: Path) -> None:
    variables: dict[str, object] = {
        "cspd_array_api_listen": "::",
        "cspd_array_api_port": 443,
        "cspd_array_tls_cert_src": "/controller/array.crt",
        "cspd_array_tls_key_src": "/controller/array.key",
        "cspd_array_api_plain_http": False,
        "cspd_array_api_max_body_bytes": 65536,
        "cspd_array_api_array_names": ["array01.example"],
        "cspd_array_state_dir": "/srv/cspd",
        "cspd_array_tokens_lifetime": 3600,
        "cspd_array_tokens_failed_login_delay": 2,
        "cspd_array_pool_devices": ["/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"],
        "cspd_array_lvm_volume_group": "storage",
        "cspd_array_lvm_thin_pool": "thin",
        "cspd_array_lvm_max_data_percent": 80,
        "cspd_array_lvm_max_metadata_percent": 75.5,
        "cspd_array_lvm_command_timeout": 60,
        "cspd_array_iscsi_iqn_prefix": "iqn.2003-01.org.linux-iscsi.cspd.com.hpe",
        "cspd_array_iscsi_portals": ["198.51.100.10", "2001:db8::10"],
        "cspd_array_iscsi_port": 3261,
        "cspd_array_replication_partners": [
            {"name": "dr-site", "url": "https://array2.example:8443"},
            {"name": "primary", "url": "https://array0.example:8443", "direction": "upstream"},
        ],
        "cspd_array_log_level": "debug",
    }
    config = parse_config(render(ARRAY_ROLE / "templates/cspd.toml.j2", variables, tmp_path))

    assert config.api.listen == "::"
    assert config.api.port == 443
    assert config.api.tls_cert == "/etc/cspd/tls/tls.crt"
    assert config.api.tls_key == "/etc/cspd/tls/tls.key"
    assert config.api.plain_http is False
    assert config.api.max_body_bytes == 65536
    assert config.api.array_names == ["array01.example"]
    assert config.state.dir == "/srv/cspd"
    assert config.tokens.lifetime == 3600
    assert config.tokens.failed_login_delay == 2.0
    assert config.lvm.volume_group == "storage"
    assert config.lvm.thin_pool == "thin"
    assert config.lvm.pool_devices == ["/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"]
    assert config.lvm.max_data_percent == 80.0
    assert config.lvm.max_metadata_percent == 75.5
    assert config.lvm.command_timeout == 60.0
    assert config.iscsi.iqn_prefix == "iqn.2003-01.org.linux-iscsi.cspd.com.hpe"
    assert config.iscsi.portals == ["198.51.100.10", "2001:db8::10"]
    assert config.iscsi.port == 3261
    assert [(p.name, p.url, p.direction) for p in config.replication_partners] == [
        ("dr-site", "https://array2.example:8443", "downstream"),
        ("primary", "https://array0.example:8443", "upstream"),
    ]
    assert config.log.level == "debug"


def test_multipath_template_lio_exception(tmp_path: Path) -> None:
    variables = {"cspd_node_multipath_extra_devices": [{"vendor": "Nimble"}]}
    text = render(NODE_ROLE / "templates/multipath.conf.j2", variables, tmp_path)
    lines = [line.strip() for line in text.splitlines()]

    assert "user_friendly_names no" in lines
    assert "find_multipaths     no" in lines
    exceptions = text[text.index("blacklist_exceptions {") :]
    assert 'vendor  "LIO-ORG"' in exceptions
    assert 'vendor  "Nimble"' in exceptions
    blacklist = text[text.index("blacklist {") : text.index("blacklist_exceptions {")]
    assert 'vendor  ".*"' in blacklist
