"""Wheels for the guest: cspd's dependencies from PyPI and a wheel of the working tree.

The guest runs Debian bookworm's CPython 3.11 on x86_64 with glibc 2.36, so it
takes cp311 wheels tagged manylinux_2_17 up to manylinux_2_36 and pure-Python
wheels. The guest has no network (QEMU's ``restrict=on``): it installs with
``pip install --no-index --find-links``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from .errors import LabError
from .host import log, run_host

GUEST_PYTHON_VERSION = "3.11"
GUEST_ABI = "cp311"
# Debian bookworm ships glibc 2.36: every manylinux_2_N tag up to N = 36 fits.
GUEST_GLIBC_MINOR = 36
PIP_TIMEOUT = 600


def guest_platform_tags() -> list[str]:
    """Return the wheel platform tags the guest accepts, newest first."""
    tags = [f"manylinux_2_{minor}_x86_64" for minor in range(GUEST_GLIBC_MINOR, 16, -1)]
    return [*tags, "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def project_dependencies(repo_root: Path) -> list[str]:
    """Return the run-time requirements listed in the project's pyproject.toml."""
    with open(repo_root / "pyproject.toml", "rb") as handle:
        project = tomllib.load(handle).get("project", {})
    return sorted(str(requirement) for requirement in project.get("dependencies", []))


def download_dependency_wheels(requirements: list[str], dest: Path) -> list[Path]:
    """Download wheels of ``requirements`` and their dependencies for the guest into ``dest``.

    Raises LabError when pip fails, for example when a requirement has no
    wheel for cp311 manylinux.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if not requirements:
        return []
    argv = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--only-binary=:all:", "--python-version", GUEST_PYTHON_VERSION,
        "--implementation", "cp", "--abi", GUEST_ABI, "--dest", str(dest),
    ]
    for tag in guest_platform_tags():
        argv += ["--platform", tag]
    run_host([*argv, *requirements], timeout=PIP_TIMEOUT)
    wheels = sorted(dest.glob("*.whl"))
    log.info("downloaded %d dependency wheels for the guest", len(wheels))
    return wheels


def _working_tree_files(repo_root: Path) -> list[str]:
    """List the files of the working tree that git tracks or would track."""
    try:
        result = subprocess.run(
            ["git", "-C", str(repo_root), "ls-files", "-z", "--cached", "--others",
             "--exclude-standard"],
            capture_output=True, check=True, timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [name for name in result.stdout.decode().split("\0") if name]


def build_cspd_wheel(repo_root: Path, dest: Path) -> Path:
    """Build a wheel of the working tree of cspd (uncommitted changes included) into ``dest``.

    The build runs on a copy of the tree, so the checkout gets no build/ or
    egg-info folders. Raises LabError when the build fails.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("cspd-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="cspd-wheel-") as scratch:
        source = Path(scratch) / "src"
        names = _working_tree_files(repo_root)
        if names:
            for name in names:
                origin = repo_root / name
                if not origin.is_file():
                    continue  # deleted in the working tree but still in the index
                target = source / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)
        else:
            shutil.copytree(
                repo_root, source,
                ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__",
                                              ".venv", ".mypy_cache", ".ruff_cache"),
            )
        run_host(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--wheel-dir", str(dest), str(source)],
            timeout=PIP_TIMEOUT,
        )
    wheels = sorted(dest.glob("cspd-*.whl"))
    if len(wheels) != 1:
        raise LabError(f"building the cspd wheel left {len(wheels)} cspd wheels in {dest}")
    log.info("built %s", wheels[0].name)
    return wheels[0]
