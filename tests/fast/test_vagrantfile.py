"""Checks of vagrant/Vagrantfile that need Ruby but no Vagrant and no virtual machine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VAGRANTFILE = REPO_ROOT / "vagrant" / "Vagrantfile"


def find_ruby() -> str:
    """Return the ruby program; skip without it, except in CI (CI=true), where it fails."""
    ruby = shutil.which("ruby")
    if ruby:
        return ruby
    message = "ruby is not installed (apt-get install ruby)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def test_vagrantfile_syntax() -> None:
    completed = subprocess.run(
        [find_ruby(), "-c", str(VAGRANTFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "Syntax OK"


def test_vagrantfile_playbooks_exist() -> None:
    text = VAGRANTFILE.read_text()
    playbooks = re.findall(r'provision\([^,]+, "([^"]+\.yml)"', text)
    assert sorted(set(playbooks)) == ["node.yml", "site.yml"]
    for playbook in playbooks:
        assert (REPO_ROOT / "ansible" / playbook).is_file()
