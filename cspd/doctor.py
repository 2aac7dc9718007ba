"""Pre-flight checks of a storage host: ``cspd doctor``.

Each check is a small function that takes the facts it needs (file contents,
parsed command output, a ``stat`` result) and returns a ``CheckResult``, so
tests call the checks with recorded inputs. ``SystemHost`` gathers those facts
from the running system and ``collect_results`` ties both together.
``run_doctor`` prints one line per check and, below each failure, the fix.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import logging
import os
import stat
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cspd.command import CommandRunner
from cspd.config import Config
from cspd.errors import CommandError
from cspd.lvm import build_lvm_config
from cspd.netinfo import default_portals, parse_ip_addr_json

log = logging.getLogger("cspd.doctor")

# Modules the daemon needs: the thin-pool target of device-mapper, the LIO core,
# its block backstore and its iSCSI fabric.
REQUIRED_MODULES = ("dm_thin_pool", "target_core_mod", "target_core_iblock", "iscsi_target_mod")

CONFIGFS_MOUNT_POINT = Path("/sys/kernel/config")

# A certificate that expires within this many days fails the check, which
# leaves time to replace it before the CSI driver's logins start failing.
CERTIFICATE_MIN_DAYS = 30

# /proc/net/tcp state code of a listening socket (TCP_LISTEN in the kernel).
TCP_LISTEN_STATE = "0A"

# Time limit of the helper commands that are not LVM commands.
COMMAND_TIMEOUT = 10.0

# The HPE CSI node plugin logs in only to targets whose IQN matches
# "iqn.*(VENDOR):.*" for one of these strings. They are targetVendorPatterns in
# linux/iscsi.go of hpe-storage/common-host-libs, where "com.hpe" came last, in
# 2024. A target IQN is "<iscsi.iqn_prefix>:<name>", so the prefix must end
# with one of them.
NODE_PLUGIN_VENDOR_STRINGS = (
    "com.nimblestorage",
    "com.3pardata",
    "org.truenas.ctl",
    "org.freenas.ctl",
    "com.hpe",
)


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check: what was found and, on failure, how to fix it."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def passed(name: str, detail: str) -> CheckResult:
    return CheckResult(name=name, ok=True, detail=detail)


def failed(name: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(name=name, ok=False, detail=detail, fix=fix)


# -- kernel modules and configfs ------------------------------------------------


def parse_proc_modules(text: str) -> set[str]:
    """Return the names of the loaded modules listed in /proc/modules."""
    return {line.split()[0] for line in text.splitlines() if line.strip()}


def check_kernel_module(name: str, loaded: set[str], loadable: bool) -> CheckResult:
    """Pass when the module is loaded, or when modprobe finds it (loadable or built in)."""
    check = f"kernel module {name}"
    if name in loaded:
        return passed(check, "loaded")
    if loadable:
        return passed(check, "not loaded as a module, and modprobe finds it (loadable or built in)")
    return failed(
        check,
        "not loaded, and modprobe cannot find it",
        "install the modules package of the running kernel (on Ubuntu "
        f"linux-modules-extra-$(uname -r)), run 'modprobe {name}', and list {name} "
        "in /etc/modules-load.d/cspd.conf to load it at boot",
    )


def check_configfs(mounts_text: str, target_dir_exists: bool) -> CheckResult:
    """Pass when configfs is mounted at /sys/kernel/config and LIO's target/ is in it.

    ``mounts_text`` is the content of /proc/mounts (or /proc/self/mounts).
    """
    check = "configfs"
    mount_point = str(CONFIGFS_MOUNT_POINT)
    mounted = False
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1] == mount_point and fields[2] == "configfs":
            mounted = True
            break
    if not mounted:
        return failed(
            check,
            f"configfs is not mounted at {mount_point}",
            f"run 'mount -t configfs configfs {mount_point}' "
            "(systemd mounts it at boot through sys-kernel-config.mount)",
        )
    if not target_dir_exists:
        return failed(
            check,
            f"{mount_point}/target is missing, so the LIO core is not loaded",
            "run 'modprobe target_core_mod' and list it in /etc/modules-load.d/cspd.conf",
        )
    return passed(check, f"mounted at {mount_point}, LIO target/ present")


# -- LVM -----------------------------------------------------------------------


def parse_lvm_report(text: str, section: str) -> list[dict[str, str]]:
    """Return the rows of one section ("vg", "lv" or "pv") of an LVM JSON report.

    Raises ValueError when the text is not an LVM JSON report.
    """
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("report"), list):
        raise ValueError("not an LVM JSON report: missing 'report' list")
    rows: list[dict[str, str]] = []
    for report in data["report"]:
        for row in report.get(section, []):
            rows.append({str(key): str(value) for key, value in row.items()})
    return rows


def check_volume_group(vg_rows: Sequence[Mapping[str, str]], vg_name: str) -> CheckResult:
    check = f"volume group {vg_name}"
    for row in vg_rows:
        if row.get("vg_name") == vg_name:
            return passed(
                check,
                f"size {_format_bytes(row.get('vg_size', ''))}, "
                f"free {_format_bytes(row.get('vg_free', ''))}",
            )
    return failed(
        check,
        "not found",
        f"create it on the pool disks: 'vgcreate {vg_name} /dev/DISK...' "
        "(the cspd_array Ansible role does this from its inventory)",
    )


def find_logical_volume(
    lv_rows: Sequence[Mapping[str, str]], vg_name: str, lv_name: str
) -> Mapping[str, str] | None:
    for row in lv_rows:
        if row.get("vg_name") == vg_name and row.get("lv_name") == lv_name:
            return row
    return None


def check_thin_pool(
    lv_rows: Sequence[Mapping[str, str]], vg_name: str, pool_name: str
) -> CheckResult:
    """Pass when VG/POOL exists and is a thin pool (lv_attr starts with 't')."""
    check = f"thin pool {vg_name}/{pool_name}"
    row = find_logical_volume(lv_rows, vg_name, pool_name)
    if row is None:
        return failed(
            check,
            "not found",
            f"create it: 'lvcreate --type thin-pool -l 90%FREE -n {pool_name} {vg_name}'",
        )
    attr = row.get("lv_attr", "")
    if not attr.startswith("t"):
        return failed(
            check,
            f"{vg_name}/{pool_name} exists but is not a thin pool (lv_attr {attr!r})",
            "set lvm.thin_pool to the name of a thin pool, or convert the volume with "
            f"'lvconvert --type thin-pool {vg_name}/{pool_name}' if it holds no data",
        )
    if len(attr) > 4 and attr[4] != "a":
        return failed(
            check,
            f"not active (lv_attr {attr!r})",
            f"run 'lvchange -ay {vg_name}/{pool_name}'",
        )
    return passed(check, f"size {_format_bytes(row.get('lv_size', ''))}")


def check_pool_fill(
    row: Mapping[str, str], vg_name: str, pool_name: str, max_data: float, max_metadata: float
) -> CheckResult:
    """Compare the pool's data and metadata use with lvm.max_data_percent and
    lvm.max_metadata_percent, the limits past which the daemon reports
    insufficient storage space."""
    check = f"thin pool {vg_name}/{pool_name} fill"
    try:
        data = float(row.get("data_percent", ""))
        metadata = float(row.get("metadata_percent", ""))
    except ValueError:
        return failed(
            check,
            "lvs reported no data_percent or metadata_percent for the pool",
            f"check that {vg_name}/{pool_name} is an active thin pool: 'lvs -a {vg_name}'",
        )
    detail = (
        f"data {data:.2f}% (limit {max_data:g}%), "
        f"metadata {metadata:.2f}% (limit {max_metadata:g}%)"
    )
    fixes = []
    if data >= max_data:
        fixes.append(
            f"grow the pool's data with 'lvextend -L +SIZE {vg_name}/{pool_name}' "
            "(add a disk first with 'vgextend' if the volume group is full) or delete volumes"
        )
    if metadata >= max_metadata:
        fixes.append(
            "grow the pool's metadata with "
            f"'lvextend --poolmetadatasize +SIZE {vg_name}/{pool_name}'"
        )
    if fixes:
        return failed(check, detail, "; ".join(fixes))
    return passed(check, detail)


def check_pool_devices(
    pv_rows: Sequence[Mapping[str, str]], vg_name: str, devices: Sequence[str]
) -> CheckResult:
    """Pass when every device of lvm.pool_devices is a physical volume of the volume group.

    ``devices`` must already be resolved to the names LVM reports (symlinks such
    as /dev/disk/by-id/... followed).
    """
    check = "lvm.pool_devices"
    members = {row.get("pv_name", "") for row in pv_rows if row.get("vg_name") == vg_name}
    missing = [device for device in devices if device not in members]
    if missing:
        return failed(
            check,
            f"not physical volumes of {vg_name}: {', '.join(missing)}",
            f"add them with 'vgextend {vg_name} DEVICE', or remove them from lvm.pool_devices",
        )
    return passed(check, f"all in {vg_name}: {', '.join(devices)}")


# -- network -------------------------------------------------------------------


def parse_ip_addresses(ip_json: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Return the local addresses in the output of ``ip -j addr``.

    Raises ValueError when the output is not that JSON.
    """
    try:
        pairs = parse_ip_addr_json(ip_json)
    except (AttributeError, TypeError) as err:
        raise ValueError(f"'ip -j addr' output has an unexpected shape: {err}") from err
    return {ipaddress.ip_address(address) for _, address in pairs}


def check_local_address(
    key: str,
    address: str,
    local: set[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> CheckResult:
    """Pass when ``address`` is assigned to a local interface (wildcards always pass)."""
    check = f"{key} {address}"
    parsed = ipaddress.ip_address(address)
    if parsed.is_unspecified:
        return passed(check, "wildcard address, listens on every interface")
    if parsed in local:
        return passed(check, "assigned to a local interface")
    return failed(
        check,
        "not assigned to any local interface, so the daemon cannot listen on it",
        f"assign it ('ip addr add {address}/PREFIX dev IFACE' or the distribution's "
        f"network configuration), or change {key} in the configuration file",
    )


def check_portals_configured(portals: Sequence[str], local_addresses: Sequence[str]) -> CheckResult:
    """Check the portal list, or the addresses the daemon picks when the list is empty.

    Without iscsi.portals the daemon uses every global address of the host,
    and 127.0.0.1 when there is none, which no other machine can reach.
    """
    check = "iscsi.portals"
    if portals:
        return passed(check, ", ".join(portals))
    chosen = default_portals(list(local_addresses))
    if all(ipaddress.ip_address(address).is_loopback for address in chosen):
        return failed(
            check,
            f"not set, and the host has no global address, so the daemon would use {chosen[0]}",
            "list in iscsi.portals the addresses of this host that the Kubernetes nodes "
            "reach for iSCSI, one per network path",
        )
    return passed(check, f"not set, so the daemon uses every global address: {', '.join(chosen)}")


def check_iqn_prefix(prefix: str) -> CheckResult:
    """Pass when target IQNs made from ``prefix`` pass the HPE node plugin's filter."""
    check = "iscsi.iqn_prefix"
    if prefix.endswith(NODE_PLUGIN_VENDOR_STRINGS):
        return passed(check, f"{prefix} ends with a vendor string the HPE CSI node plugin accepts")
    return failed(
        check,
        f"{prefix} does not end with {', '.join(NODE_PLUGIN_VENDOR_STRINGS)}, so the HPE CSI "
        "node plugin ignores this array's targets",
        f"set iscsi.iqn_prefix to, for example, '{prefix}.com.hpe' (node plugins built before "
        "late 2024 accept 'org.truenas.ctl' but not 'com.hpe'), then restart cspd",
    )


@dataclass(frozen=True)
class TcpListener:
    """A listening TCP socket from /proc/net/tcp or /proc/net/tcp6."""

    address: str
    port: int
    inode: int


def parse_proc_net_tcp(text: str, ipv6: bool) -> list[TcpListener]:
    """Return the listening sockets of /proc/net/tcp (``ipv6`` False) or tcp6.

    Addresses are printed there as hexadecimal 32-bit words in host byte
    order and ports in network byte order.
    """
    listeners = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != TCP_LISTEN_STATE:
            continue
        address_hex, port_hex = fields[1].split(":")
        raw = bytes.fromhex(address_hex)
        if sys.byteorder == "little":
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
        address = str(ipaddress.IPv6Address(raw) if ipv6 else ipaddress.IPv4Address(raw))
        listeners.append(TcpListener(address=address, port=int(port_hex, 16), inode=int(fields[9])))
    return listeners


def check_iscsi_port(
    port: int, listeners: Sequence[TcpListener], owners: Mapping[int, Sequence[str]]
) -> CheckResult:
    """Pass when nothing listens on the iSCSI port, or only the kernel (LIO) does.

    LIO's listening sockets belong to the kernel, so no process has them open.
    ``owners`` maps socket inodes to the processes ("NAME (pid N)") that have
    them open. A user-space listener (tgtd, another target) keeps LIO from binding.
    """
    check = f"iSCSI port {port}"
    on_port = [listener for listener in listeners if listener.port == port]
    if not on_port:
        return passed(check, "free")
    user_space = sorted(
        {process for listener in on_port for process in owners.get(listener.inode, ())}
    )
    if user_space:
        return failed(
            check,
            f"held by {', '.join(user_space)}",
            f"stop and disable that service (for example 'systemctl disable --now tgt'), "
            f"because LIO must own port {port}",
        )
    addresses = ", ".join(sorted({listener.address for listener in on_port}))
    return passed(check, f"held by the kernel (LIO) on {addresses}")


# -- TLS -----------------------------------------------------------------------


def check_tls(
    cert_path: str,
    key_path: str,
    cert_pem: bytes | None,
    key_pem: bytes | None,
    now: dt.datetime,
    read_error: str = "",
) -> CheckResult:
    """Check the configured certificate and key: readable, matching, not expiring soon.

    ``cert_pem`` or ``key_pem`` is None when the file could not be read, and
    ``read_error`` then gives the reason. ``now`` must be timezone-aware.
    """
    check = "TLS certificate"
    if cert_pem is None or key_pem is None:
        return failed(
            check,
            read_error or f"cannot read {cert_path} or {key_path}",
            "check that api.tls_cert and api.tls_key name readable PEM files",
        )
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as err:
        return failed(
            check,
            f"{cert_path} is not a PEM certificate: {err}",
            "point api.tls_cert at a PEM-encoded X.509 certificate",
        )
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as err:
        return failed(
            check,
            f"{key_path} is not an unencrypted PEM private key: {err}",
            "point api.tls_key at the certificate's private key in PEM form, without a passphrase",
        )
    public_format = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    key_public = key.public_key().public_bytes(encoding, public_format)
    if key_public != certificate.public_key().public_bytes(encoding, public_format):
        return failed(
            check,
            f"the key in {key_path} does not belong to the certificate in {cert_path}",
            "install the private key that was used to request this certificate",
        )
    expires = certificate.not_valid_after_utc
    remaining = expires - now
    if remaining < dt.timedelta(days=CERTIFICATE_MIN_DAYS):
        state = "expired" if remaining.total_seconds() <= 0 else "expires"
        return failed(
            check,
            f"{cert_path} {state} on {expires:%Y-%m-%d %H:%M} UTC",
            "renew the certificate, then restart cspd ('systemctl restart cspd')",
        )
    return passed(check, f"{cert_path} valid until {expires:%Y-%m-%d} ({remaining.days} days)")


# -- state folder --------------------------------------------------------------


def check_state_dir(path: str, st: os.stat_result | None, error: str = "") -> CheckResult:
    """Pass when the state folder is a folder owned by root with no access for others.

    It contains the password hashes and token hashes, so no other user may read
    it. ``st`` is None when ``os.stat`` failed, and ``error`` then gives the reason.
    """
    check = f"state folder {path}"
    fix = f"run 'install -d -o root -g root -m 0700 {path}'"
    if st is None:
        return failed(check, error or "missing", fix)
    if not stat.S_ISDIR(st.st_mode):
        return failed(check, "exists but is not a folder", f"move the file away, then {fix}")
    problems = []
    if st.st_uid != 0:
        problems.append(f"owned by uid {st.st_uid}, not root")
    if st.st_mode & 0o007:
        problems.append(f"mode {stat.S_IMODE(st.st_mode):04o} gives others access")
    if problems:
        fix = f"run 'chown root:root {path} && chmod 0700 {path}'"
        return failed(check, "; ".join(problems), fix)
    return passed(check, f"owned by root, mode {stat.S_IMODE(st.st_mode):04o}")


# -- gathering facts from the system --------------------------------------------


class Host(Protocol):
    """The facts ``collect_results`` reads; ``SystemHost`` reads the real ones."""

    def read_text(self, path: Path) -> str: ...

    def read_bytes(self, path: Path) -> bytes: ...

    def exists(self, path: Path) -> bool: ...

    def stat(self, path: Path) -> os.stat_result: ...

    def resolve(self, path: Path) -> str: ...

    def run(self, argv: list[str], timeout: float) -> str: ...

    def module_loadable(self, name: str) -> bool: ...

    def socket_owners(self, inodes: set[int]) -> dict[int, list[str]]: ...

    def now(self) -> dt.datetime: ...


def run_command(argv: list[str], timeout: float) -> str:
    """Run a program through the daemon's command runner and return its standard output.

    The runner pins LC_ALL=C and logs each run. Raises CommandError when the
    program is missing, fails or times out. Must not be called from a running
    event loop.
    """
    result = asyncio.run(CommandRunner().run(argv, timeout=timeout))
    return result.stdout


class SystemHost:
    """Reads the facts of the machine the doctor runs on."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc

    def read_text(self, path: Path) -> str:
        return path.read_text()

    def read_bytes(self, path: Path) -> bytes:
        return path.read_bytes()

    def exists(self, path: Path) -> bool:
        return path.exists()

    def stat(self, path: Path) -> os.stat_result:
        return path.stat()

    def resolve(self, path: Path) -> str:
        return str(path.resolve())

    def run(self, argv: list[str], timeout: float) -> str:
        return run_command(argv, timeout)

    def module_loadable(self, name: str) -> bool:
        """Ask modprobe for a dry run; without modprobe, ask modinfo."""
        for argv in (["modprobe", "--dry-run", "--quiet", name], ["modinfo", name]):
            try:
                run_command(argv, COMMAND_TIMEOUT)
            except CommandError as err:
                if err.returncode is None and not err.timed_out:
                    continue  # program not installed; try the next one
                return False
            return True
        return False

    def socket_owners(self, inodes: set[int]) -> dict[int, list[str]]:
        """Find the processes that hold the given socket inodes open (as ``ss -p`` does)."""
        owners: dict[int, list[str]] = {}
        if not inodes:
            return owners
        inode_by_link = {f"socket:[{inode}]": inode for inode in inodes}
        for pid_dir in self.proc.iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                links = [os.readlink(fd) for fd in (pid_dir / "fd").iterdir()]
                name = (pid_dir / "comm").read_text().strip()
            except OSError:
                continue  # the process ended, or a file descriptor closed meanwhile
            for link in links:
                if link in inode_by_link:
                    process = f"{name} (pid {pid_dir.name})"
                    owners.setdefault(inode_by_link[link], []).append(process)
        return owners

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


def _format_bytes(value: str) -> str:
    try:
        size = float(value)
    except ValueError:
        return value or "unknown"
    if size < 1024:
        return f"{int(size)} B"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} TiB"


def _command_failure(check: str, err: CommandError, fix: str) -> CheckResult:
    return failed(check, str(err), fix)


def _module_results(host: Host) -> list[CheckResult]:
    try:
        loaded = parse_proc_modules(host.read_text(Path("/proc/modules")))
    except OSError:
        loaded = set()  # no module support: every module must then be loadable or built in
    return [
        check_kernel_module(name, loaded, name in loaded or host.module_loadable(name))
        for name in REQUIRED_MODULES
    ]


def _configfs_result(host: Host) -> CheckResult:
    try:
        mounts = host.read_text(Path("/proc/mounts"))
    except OSError as err:
        return failed("configfs", f"cannot read /proc/mounts: {err.strerror}", "mount /proc")
    return check_configfs(mounts, host.exists(CONFIGFS_MOUNT_POINT / "target"))


def _lvm_results(config: Config, host: Host) -> list[CheckResult]:
    lvm = config.lvm
    vg, pool = lvm.volume_group, lvm.thin_pool
    report_options = ["--reportformat", "json", "--units", "b", "--nosuffix"]
    # The daemon's device filter: a scan of every device could block on one
    # that a snapshot group holds suspended.
    lvm_config = build_lvm_config(lvm.pool_devices, epoch_time=False)
    if lvm_config:
        report_options += ["--config", lvm_config]
    install_fix = "install lvm2 ('apt-get install lvm2') and run the doctor as root"
    vgs = ["vgs", *report_options, "-o", "vg_name,vg_size,vg_free"]
    try:
        vg_rows = parse_lvm_report(host.run(vgs, lvm.command_timeout), "vg")
    except CommandError as err:
        return [_command_failure(f"volume group {vg}", err, install_fix)]
    except ValueError as err:
        return [failed(f"volume group {vg}", f"unreadable vgs output: {err}", install_fix)]
    results = [check_volume_group(vg_rows, vg)]
    if not results[0].ok:
        return results

    lv_fields = "lv_name,vg_name,lv_attr,lv_size,data_percent,metadata_percent"
    try:
        lv_rows = parse_lvm_report(
            host.run(["lvs", *report_options, "-o", lv_fields, vg], lvm.command_timeout), "lv"
        )
    except CommandError as err:
        return [*results, _command_failure(f"thin pool {vg}/{pool}", err, install_fix)]
    except ValueError as err:
        detail = f"unreadable lvs output: {err}"
        return [*results, failed(f"thin pool {vg}/{pool}", detail, install_fix)]
    pool_result = check_thin_pool(lv_rows, vg, pool)
    results.append(pool_result)
    row = find_logical_volume(lv_rows, vg, pool)
    if pool_result.ok and row is not None:
        results.append(
            check_pool_fill(row, vg, pool, lvm.max_data_percent, lvm.max_metadata_percent)
        )

    if lvm.pool_devices:
        try:
            pv_rows = parse_lvm_report(
                host.run(["pvs", *report_options, "-o", "pv_name,vg_name"], lvm.command_timeout),
                "pv",
            )
        except (CommandError, ValueError) as err:
            results.append(failed("lvm.pool_devices", f"pvs failed: {err}", install_fix))
        else:
            devices = [host.resolve(Path(device)) for device in lvm.pool_devices]
            results.append(check_pool_devices(pv_rows, vg, devices))
    return results


def _network_results(config: Config, host: Host) -> list[CheckResult]:
    results: list[CheckResult] = []
    ip_fix = "install iproute2 ('apt-get install iproute2')"
    try:
        local = parse_ip_addresses(host.run(["ip", "-j", "addr"], COMMAND_TIMEOUT))
    except CommandError as err:
        results.append(_command_failure("local addresses", err, ip_fix))
    except ValueError as err:
        results.append(failed("local addresses", f"unreadable 'ip -j addr' output: {err}", ip_fix))
    else:
        portals = config.iscsi.portals
        results.append(check_portals_configured(portals, [str(address) for address in local]))
        results.append(check_local_address("api.listen", config.api.listen, local))
        results.extend(check_local_address("iscsi.portals", p, local) for p in portals)
    results.append(check_iqn_prefix(config.iscsi.iqn_prefix))

    listeners: list[TcpListener] = []
    for name, ipv6 in (("tcp", False), ("tcp6", True)):
        try:
            listeners.extend(parse_proc_net_tcp(host.read_text(Path("/proc/net") / name), ipv6))
        except OSError:
            continue  # tcp6 is missing on hosts without IPv6
    on_port = {listener.inode for listener in listeners if listener.port == config.iscsi.port}
    results.append(check_iscsi_port(config.iscsi.port, listeners, host.socket_owners(on_port)))
    return results


def _tls_result(config: Config, host: Host) -> CheckResult:
    api = config.api
    if api.plain_http:
        return passed("TLS certificate", "api.plain_http is true, so the API serves plain HTTP")
    if api.tls_cert:
        cert_path, key_path = Path(api.tls_cert), Path(api.tls_key)
    else:
        # The daemon makes a self-signed pair in the state folder on its first start.
        cert_path, key_path = config.state_dir / "tls.crt", config.state_dir / "tls.key"
        if not (host.exists(cert_path) and host.exists(key_path)):
            return passed(
                "TLS certificate",
                f"api.tls_cert is not set, and the daemon makes {cert_path} on its first start",
            )
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    error = ""
    try:
        cert_pem = host.read_bytes(cert_path)
        key_pem = host.read_bytes(key_path)
    except OSError as err:
        error = f"cannot read {err.filename}: {err.strerror}"
    return check_tls(str(cert_path), str(key_path), cert_pem, key_pem, host.now(), error)


def _state_dir_result(config: Config, host: Host) -> CheckResult:
    path = config.state_dir
    try:
        return check_state_dir(str(path), host.stat(path))
    except FileNotFoundError:
        return check_state_dir(str(path), None, "missing")
    except OSError as err:
        return check_state_dir(str(path), None, f"cannot stat: {err.strerror}")


def collect_results(config: Config, host: Host) -> list[CheckResult]:
    """Run every check against ``host``, in the order they are printed."""
    results = _module_results(host)
    results.append(_configfs_result(host))
    results.extend(_lvm_results(config, host))
    results.extend(_network_results(config, host))
    results.append(_tls_result(config, host))
    results.append(_state_dir_result(config, host))
    return results


def format_results(results: Iterable[CheckResult]) -> list[str]:
    """Render one line per check, with an indented fix line under each failure."""
    lines = []
    for result in results:
        lines.append(f"{'OK' if result.ok else 'FAIL':<4}  {result.name}: {result.detail}")
        if not result.ok and result.fix:
            lines.append(f"      fix: {result.fix}")
    return lines


def run_doctor(config: Config, host: Host | None = None) -> int:
    """Check the host for everything the daemon needs and print the outcome.

    Returns 0 when every check passed and 1 otherwise. Reading LVM state and
    the processes that hold sockets needs root.
    """
    results = collect_results(config, host if host is not None else SystemHost())
    for line in format_results(results):
        print(line)
    failures = sum(1 for result in results if not result.ok)
    print(f"{len(results)} checks, {failures} failed")
    return 0 if failures == 0 else 1


__all__ = [
    "CheckResult",
    "Host",
    "SystemHost",
    "TcpListener",
    "check_configfs",
    "check_iqn_prefix",
    "check_iscsi_port",
    "check_kernel_module",
    "check_local_address",
    "check_pool_devices",
    "check_pool_fill",
    "check_portals_configured",
    "check_state_dir",
    "check_thin_pool",
    "check_tls",
    "check_volume_group",
    "collect_results",
    "format_results",
    "parse_ip_addresses",
    "parse_lvm_report",
    "parse_proc_modules",
    "parse_proc_net_tcp",
    "run_doctor",
]
