"""Build and cache the lab guest's disk image.

The image is Debian bookworm from Debian's own packages (``debootstrap
--variant=minbase``), turned into an ext4 file system image with ``mkfs.ext4
-d`` so that the host needs no loop device or mount. It carries a virtual
environment /opt/cspd with cspd's dependencies already installed; the working
tree of cspd itself is installed at each boot (see lab.py).

Images are cached under ``<cache>/images/<digest>``, where the digest covers
everything that shapes the image: the package list, cspd's dependencies from
pyproject.toml, the files in guest_files/, this module and wheels.py, and the
SSH key the guest trusts. A second run with the same recipe reuses the image; a
changed recipe builds a new one.

Building needs root (debootstrap and chroot) and network access to Debian's
mirror and PyPI.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .errors import LabError, LabUnavailableError
from .host import REPO_ROOT, cache_root, file_lock, log, require_tools, run_host
from .wheels import download_dependency_wheels, project_dependencies

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MIRROR_ENV = "CSPD_LAB_MIRROR"

# Debian packages on top of minbase. python3-venv makes /opt/cspd; libudev1
# (through udev) is what pyudev loads; the rest is the storage stack under
# test and the tools to look at it.
PACKAGES = (
    "linux-image-amd64",
    "systemd-sysv",
    "udev",
    "kmod",
    "dbus",
    "iproute2",
    "procps",
    "e2fsprogs",
    "openssh-server",
    "python3",
    "python3-venv",
    "lvm2",
    "thin-provisioning-tools",
    "open-iscsi",
    "multipath-tools",
    "libiscsi-bin",
    "sg3-utils",
)

# Units that only slow the guest down or write to the serial console.
MASKED_UNITS = (
    "serial-getty@ttyS0.service",
    "getty@tty1.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
)
ENABLED_UNITS = ("systemd-networkd.service", "cspd-lab-pool.service")

HOSTNAME = "cspd-lab"
ROOT_IMAGE_SIZE = "4G"
VENV = "/opt/cspd"
GUEST_WHEELHOUSE = "/var/cache/cspd-wheels"
# The name under which the guest's host key is stored in known_hosts, so that
# the changing forwarded port does not matter (ssh -o HostKeyAlias).
HOST_KEY_ALIAS = "cspd-lab"

GUEST_FILES = Path(__file__).parent / "guest_files"
# The modules whose source shapes the image; the runner's own modules do not.
BUILDER_SOURCES = (Path(__file__), Path(__file__).with_name("wheels.py"))

DEBOOTSTRAP_TIMEOUT = 40 * 60
CHROOT_TIMEOUT = 10 * 60
MKFS_TIMEOUT = 10 * 60
CHROOT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LC_ALL": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
}


@dataclass(frozen=True)
class Image:
    """A built guest image: a folder with the root disk, kernel, initrd and host key."""

    directory: Path

    @property
    def digest(self) -> str:
        return self.directory.name

    @property
    def root_disk(self) -> Path:
        return self.directory / "root.ext4"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def known_hosts(self) -> Path:
        """known_hosts file naming the guest's ed25519 host key under HOST_KEY_ALIAS."""
        return self.directory / "known_hosts"

    @property
    def manifest(self) -> Path:
        return self.directory / "manifest.json"

    def is_complete(self) -> bool:
        return all(
            path.is_file()
            for path in (self.root_disk, self.kernel, self.initrd, self.known_hosts, self.manifest)
        )


@dataclass(frozen=True)
class ImageResult:
    """The image to boot, and how long building it took (None when it came from the cache)."""

    image: Image
    build_seconds: float | None


def ssh_key(cache: Path) -> Path:
    """Return the private key the lab logs in with, generating it on first use."""
    key = cache / "ssh" / "id_ed25519"
    if not key.is_file() or not key.with_suffix(".pub").is_file():
        require_tools("ssh-keygen")
        key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key.unlink(missing_ok=True)
        key.with_suffix(".pub").unlink(missing_ok=True)
        run_host(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cspd-lab", "-f", key],
            timeout=60,
        )
    return key


def _guest_file_entries() -> list[tuple[str, bool, bytes]]:
    entries = []
    for path in sorted(GUEST_FILES.rglob("*")):
        if path.is_file():
            executable = bool(path.stat().st_mode & stat.S_IXUSR)
            entries.append((str(path.relative_to(GUEST_FILES)), executable, path.read_bytes()))
    return entries


def recipe_digest(requirements: list[str], public_key: str) -> str:
    """Return the cache key of the image: a digest of everything that shapes it."""
    digest = hashlib.sha256()
    recipe = {
        "suite": SUITE,
        "packages": PACKAGES,
        "masked": MASKED_UNITS,
        "enabled": ENABLED_UNITS,
        "requirements": requirements,
        "public_key": public_key.strip(),
        "size": ROOT_IMAGE_SIZE,
    }
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    for source in BUILDER_SOURCES:
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    for name, executable, content in _guest_file_entries():
        digest.update(f"{name}\0{int(executable)}\0".encode() + content + b"\0")
    return digest.hexdigest()[:20]


def ensure_image(cache: Path | None = None, repo_root: Path = REPO_ROOT) -> ImageResult:
    """Return the cached image for the current recipe, building it first when missing.

    Raises LabUnavailableError when the host cannot build images (not root,
    missing tools) and LabError when a build step fails.
    """
    cache = cache or cache_root()
    key = ssh_key(cache)
    requirements = project_dependencies(repo_root)
    digest = recipe_digest(requirements, key.with_suffix(".pub").read_text())
    image = Image(cache / "images" / digest)
    if image.is_complete():
        log.info("image %s: cached", digest)
        return ImageResult(image, None)

    with file_lock(cache / "build.lock"):
        if image.is_complete():  # built by another process while this one waited
            return ImageResult(image, None)
        if os.geteuid() != 0:
            raise LabUnavailableError(
                "building the lab image needs root (debootstrap and chroot); run as root once "
                f"to fill the cache at {cache}"
            )
        require_tools("debootstrap", "mkfs.ext4", "chroot")
        started = time.monotonic()
        log.info("image %s: building (debootstrap of Debian %s takes a few minutes)",
                 digest, SUITE)
        _build(image, cache, requirements, key.with_suffix(".pub").read_text())
        seconds = time.monotonic() - started
        log.info("image %s: built in %.0f s", digest, seconds)
        prune_images(cache, keep=image)
    return ImageResult(image, seconds)


def _chroot(root: Path, *argv: str, timeout: float = CHROOT_TIMEOUT) -> str:
    result = run_host(["chroot", root, *argv], timeout=timeout, env=CHROOT_ENV)
    return result.stdout.decode()


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()]
    return [point for point in points if point.startswith(prefix)]


def _remove_tree(path: Path) -> None:
    """Delete a build folder, refusing when something is still mounted inside it."""
    if not path.exists():
        return
    mounted = _mounts_under(path)
    for point in sorted(mounted, reverse=True):
        run_host(["umount", point], timeout=60)
    shutil.rmtree(path)


def _build(image: Image, cache: Path, requirements: list[str], public_key: str) -> None:
    work = image.directory.with_name(f"{image.directory.name}.build")
    _remove_tree(work)
    root = work / "root"
    wheels = work / "wheels"
    mirror = os.environ.get(MIRROR_ENV, DEFAULT_MIRROR)
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    try:
        # PyPI and the Debian mirror are both network-bound: fetch in parallel.
        with ThreadPoolExecutor(max_workers=1) as executor:
            download = executor.submit(download_dependency_wheels, requirements, wheels)
            run_host(
                ["debootstrap", "--variant=minbase", f"--cache-dir={debs}",
                 f"--include={','.join(PACKAGES)}", SUITE, root, mirror],
                timeout=DEBOOTSTRAP_TIMEOUT,
            )
            download.result()
        _configure(root, wheels, requirements, public_key)
        _export(root, work)
        _remove_tree(root)
        shutil.rmtree(wheels, ignore_errors=True)
        _remove_tree(image.directory)
        work.rename(image.directory)
    except BaseException:
        _remove_tree(work)
        raise


def _configure(root: Path, wheels: Path, requirements: list[str], public_key: str) -> None:
    # Files of the lab: networkd, sshd, multipath, LVM filter, pool unit.
    for path in sorted(GUEST_FILES.rglob("*")):
        target = root / path.relative_to(GUEST_FILES)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            target.chmod(0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644)

    (root / "etc/hostname").write_text(f"{HOSTNAME}\n")
    (root / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n"
                                    "::1\tlocalhost ip6-localhost ip6-loopback\n")
    (root / "etc/fstab").write_text("/dev/vda\t/\text4\trw,errors=remount-ro\t0\t1\n")

    # rtslib-fb points LIO's database root (persistent reservations, ALUA
    # state) at /etc/target and fails when that folder is missing.
    (root / "etc/target").mkdir(mode=0o700, exist_ok=True)

    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    authorized = ssh_dir / "authorized_keys"
    authorized.write_text(public_key.strip() + "\n")
    authorized.chmod(0o600)

    wheelhouse = root / GUEST_WHEELHOUSE.lstrip("/")
    wheelhouse.mkdir(parents=True, exist_ok=True)
    for wheel in wheels.glob("*.whl"):
        shutil.copyfile(wheel, wheelhouse / wheel.name)
    _chroot(root, "python3", "-m", "venv", VENV)
    if requirements:
        _chroot(root, f"{VENV}/bin/pip", "install", "--quiet", "--disable-pip-version-check",
                "--no-index", "--find-links", GUEST_WHEELHOUSE, *requirements)

    _chroot(root, "systemctl", "enable", *ENABLED_UNITS)
    _chroot(root, "systemctl", "mask", *MASKED_UNITS)

    # Package caches are of no use in a guest without network.
    for cache_dir in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (root / cache_dir).glob("*"):
            if entry.is_file():
                entry.unlink()


def _export(root: Path, work: Path) -> None:
    """Copy the kernel, initrd and host key out of ``root`` and write the disk image."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise LabError(
            f"expected one kernel and one initrd in {root / 'boot'}, found "
            f"{[path.name for path in kernels + initrds]}"
        )
    shutil.copyfile(kernels[0], work / "vmlinuz")
    shutil.copyfile(initrds[0], work / "initrd.img")

    host_key = (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
    (work / "known_hosts").write_text(f"{HOST_KEY_ALIAS} {host_key[0]} {host_key[1]}\n")

    packages = _chroot(root, "dpkg-query", "--show", "--showformat=${Package} ${Version}\\n")
    wheels = sorted(path.name for path in (root / GUEST_WHEELHOUSE.lstrip("/")).glob("*.whl"))
    manifest = {
        "suite": SUITE,
        "kernel": kernels[0].name.removeprefix("vmlinuz-"),
        "packages": packages.split("\n")[:-1],
        "wheels": wheels,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }

    run_host(
        ["mkfs.ext4", "-q", "-F", "-L", "cspd-root", "-d", root, work / "root.ext4",
         ROOT_IMAGE_SIZE],
        timeout=MKFS_TIMEOUT,
    )
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def prune_images(cache: Path, keep: Image) -> None:
    """Delete cached images other than ``keep`` that no running guest boots from."""
    from .guest import images_in_use  # guest.py records which guests are running

    in_use = images_in_use(cache)
    for directory in sorted((cache / "images").glob("*")):
        if directory == keep.directory or directory.resolve() in in_use:
            continue
        if directory.name.endswith(".build"):
            continue  # another process may be building it; it cleans up after itself
        log.info("deleting the outdated image %s", directory.name)
        _remove_tree(directory)
