"""Tests of the host checks behind ``cspd doctor``, on recorded system output."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cspd import doctor
from cspd.config import Config, parse_config
from cspd.errors import CommandError

NOW = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)

PROC_MODULES = """\
iscsi_target_mod 356352 1 - Live 0x0000000000000000
target_core_iblock 28672 0 - Live 0x0000000000000000
target_core_mod 450560 2 iscsi_target_mod,target_core_iblock, Live 0x0000000000000000
dm_thin_pool 94208 1 - Live 0x0000000000000000
"""

PROC_MOUNTS = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
configfs /sys/kernel/config configfs rw,nosuid,nodev,noexec,relatime 0 0
"""

VGS_JSON = """\
  {
      "report": [
          {
              "vg": [
                  {"vg_name":"cspd", "vg_size":"4290772992", "vg_free":"3217031168"}
              ]
          }
      ]
  }
"""

LVS_JSON = """\
  {
      "report": [
          {
              "lv": [
                  {"lv_name":"pool", "vg_name":"cspd", "lv_attr":"twi-aotz--",
                   "lv_size":"1073741824", "data_percent":"10.00", "metadata_percent":"11.04"},
                  {"lv_name":"vol-1", "vg_name":"cspd", "lv_attr":"Vwi-a-tz--",
                   "lv_size":"104857600", "data_percent":"100.00", "metadata_percent":""}
              ]
          }
      ]
  }
"""

PVS_JSON = """\
  {
      "report": [
          {
              "pv": [
                  {"pv_name":"/dev/vdb", "vg_name":"cspd"},
                  {"pv_name":"/dev/vda2", "vg_name":"system"}
              ]
          }
      ]
  }
"""

IP_ADDR_JSON = json.dumps(
    [
        {
            "ifindex": 1,
            "ifname": "lo",
            "addr_info": [
                {"family": "inet", "local": "127.0.0.1", "prefixlen": 8},
                {"family": "inet6", "local": "::1", "prefixlen": 128},
            ],
        },
        {
            "ifindex": 2,
            "ifname": "ens3",
            "addr_info": [
                {"family": "inet", "local": "10.0.2.15", "prefixlen": 24},
                {"family": "inet6", "local": "fe80::5054:ff:fe12:3456", "prefixlen": 64},
            ],
        },
        {"ifindex": 3, "ifname": "ens4", "addr_info": []},
    ]
)

# Two listeners on 3260 (0.0.0.0 and 10.0.2.15) and one on 22, recorded on x86-64.
PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0CBC 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 24811 1 0 100 0 0 10 0
   1: 0F02000A:0CBC 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 24812 1 0 100 0 0 10 0
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 19001 1 0 100 0 0 10 0
   3: 0F02000A:0016 0202000A:C350 01 00000000:00000000 02:00090000 00000000     0        0 31000 4 0 20 10 -1
"""  # noqa: E501

# [::1]:3260 listening and [::]:8443 listening.
PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0CBC 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 24900 1 0 100 0 0 10 0
   1: 00000000000000000000000000000000:20FB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 25000 1 0 100 0 0 10 0
"""  # noqa: E501


def make_certificate(
    not_after: dt.datetime, key: ec.EllipticCurvePrivateKey | None = None
) -> tuple[bytes, bytes]:
    """Return a self-signed certificate and its key, both PEM-encoded."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "array.example")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - dt.timedelta(days=400))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def make_stat(mode: int, uid: int = 0) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, 0, 4096, 0, 0, 0))


# -- kernel modules and configfs ------------------------------------------------


def test_parse_proc_modules_names() -> None:
    loaded = doctor.parse_proc_modules(PROC_MODULES)
    assert loaded == {"iscsi_target_mod", "target_core_iblock", "target_core_mod", "dm_thin_pool"}


def test_kernel_module_loaded() -> None:
    result = doctor.check_kernel_module("dm_thin_pool", {"dm_thin_pool"}, loadable=False)
    assert result.ok
    assert result.detail == "loaded"


def test_kernel_module_loadable() -> None:
    result = doctor.check_kernel_module("dm_thin_pool", set(), loadable=True)
    assert result.ok
    assert "modprobe finds it" in result.detail


def test_kernel_module_missing() -> None:
    result = doctor.check_kernel_module("iscsi_target_mod", set(), loadable=False)
    assert not result.ok
    assert "modprobe iscsi_target_mod" in result.fix
    assert "/etc/modules-load.d/cspd.conf" in result.fix


def test_configfs_mounted_with_target() -> None:
    result = doctor.check_configfs(PROC_MOUNTS, target_dir_exists=True)
    assert result.ok


def test_configfs_mounted_without_target() -> None:
    result = doctor.check_configfs(PROC_MOUNTS, target_dir_exists=False)
    assert not result.ok
    assert "modprobe target_core_mod" in result.fix


def test_configfs_not_mounted() -> None:
    mounts = PROC_MOUNTS.replace("configfs /sys/kernel/config configfs", "none /mnt tmpfs")
    result = doctor.check_configfs(mounts, target_dir_exists=True)
    assert not result.ok
    assert "mount -t configfs" in result.fix


# -- LVM -----------------------------------------------------------------------


def test_parse_lvm_report_rows() -> None:
    rows = doctor.parse_lvm_report(LVS_JSON, "lv")
    assert [row["lv_name"] for row in rows] == ["pool", "vol-1"]
    assert rows[0]["data_percent"] == "10.00"


def test_parse_lvm_report_rejects_other_json() -> None:
    with pytest.raises(ValueError, match="report"):
        doctor.parse_lvm_report('{"volumes": []}', "lv")


def test_volume_group_found() -> None:
    result = doctor.check_volume_group(doctor.parse_lvm_report(VGS_JSON, "vg"), "cspd")
    assert result.ok
    assert result.detail == "size 4.0 GiB, free 3.0 GiB"


def test_volume_group_missing() -> None:
    result = doctor.check_volume_group(doctor.parse_lvm_report(VGS_JSON, "vg"), "other")
    assert not result.ok
    assert "vgcreate other" in result.fix


def test_thin_pool_found() -> None:
    result = doctor.check_thin_pool(doctor.parse_lvm_report(LVS_JSON, "lv"), "cspd", "pool")
    assert result.ok
    assert result.detail == "size 1.0 GiB"


def test_thin_pool_missing() -> None:
    result = doctor.check_thin_pool(doctor.parse_lvm_report(LVS_JSON, "lv"), "cspd", "other")
    assert not result.ok
    assert "lvcreate --type thin-pool" in result.fix


def test_thin_pool_not_a_pool() -> None:
    result = doctor.check_thin_pool(doctor.parse_lvm_report(LVS_JSON, "lv"), "cspd", "vol-1")
    assert not result.ok
    assert "not a thin pool" in result.detail


def test_thin_pool_inactive() -> None:
    rows = [{"lv_name": "pool", "vg_name": "cspd", "lv_attr": "twi---tz--", "lv_size": "1024"}]
    result = doctor.check_thin_pool(rows, "cspd", "pool")
    assert not result.ok
    assert "lvchange -ay cspd/pool" in result.fix


def test_pool_fill_below_limits() -> None:
    row = {"data_percent": "10.00", "metadata_percent": "11.04"}
    result = doctor.check_pool_fill(row, "cspd", "pool", 95.0, 90.0)
    assert result.ok
    assert result.detail == "data 10.00% (limit 95%), metadata 11.04% (limit 90%)"


def test_pool_fill_data_at_limit() -> None:
    row = {"data_percent": "95.00", "metadata_percent": "11.04"}
    result = doctor.check_pool_fill(row, "cspd", "pool", 95.0, 90.0)
    assert not result.ok
    assert "lvextend -L +SIZE cspd/pool" in result.fix
    assert "poolmetadatasize" not in result.fix


def test_pool_fill_metadata_over_limit() -> None:
    row = {"data_percent": "1.00", "metadata_percent": "93.50"}
    result = doctor.check_pool_fill(row, "cspd", "pool", 95.0, 90.0)
    assert not result.ok
    assert "lvextend --poolmetadatasize +SIZE cspd/pool" in result.fix


def test_pool_fill_without_percentages() -> None:
    result = doctor.check_pool_fill({"data_percent": ""}, "cspd", "pool", 95.0, 90.0)
    assert not result.ok


def test_pool_devices_all_members() -> None:
    rows = doctor.parse_lvm_report(PVS_JSON, "pv")
    assert doctor.check_pool_devices(rows, "cspd", ["/dev/vdb"]).ok


def test_pool_devices_foreign_device() -> None:
    rows = doctor.parse_lvm_report(PVS_JSON, "pv")
    result = doctor.check_pool_devices(rows, "cspd", ["/dev/vdb", "/dev/vda2"])
    assert not result.ok
    assert result.detail == "not physical volumes of cspd: /dev/vda2"


# -- network -------------------------------------------------------------------


def test_parse_ip_addresses_all_families() -> None:
    addresses = {str(address) for address in doctor.parse_ip_addresses(IP_ADDR_JSON)}
    assert addresses == {"127.0.0.1", "::1", "10.0.2.15", "fe80::5054:ff:fe12:3456"}


def test_local_address_assigned() -> None:
    local = doctor.parse_ip_addresses(IP_ADDR_JSON)
    assert doctor.check_local_address("iscsi.portals", "10.0.2.15", local).ok


def test_local_address_ipv6_spelling() -> None:
    local = doctor.parse_ip_addresses(IP_ADDR_JSON)
    assert doctor.check_local_address("iscsi.portals", "FE80:0::5054:ff:fe12:3456", local).ok


def test_local_address_missing() -> None:
    local = doctor.parse_ip_addresses(IP_ADDR_JSON)
    result = doctor.check_local_address("iscsi.portals", "10.0.3.15", local)
    assert not result.ok
    assert "ip addr add 10.0.3.15/PREFIX" in result.fix


def test_local_address_wildcard() -> None:
    assert doctor.check_local_address("api.listen", "0.0.0.0", set()).ok
    assert doctor.check_local_address("api.listen", "::", set()).ok


def test_portals_listed() -> None:
    result = doctor.check_portals_configured(["10.0.2.15"], ["127.0.0.1"])
    assert result.ok
    assert result.detail == "10.0.2.15"


def test_portals_default_to_global_addresses() -> None:
    local = [str(address) for address in doctor.parse_ip_addresses(IP_ADDR_JSON)]
    result = doctor.check_portals_configured([], local)
    assert result.ok
    assert result.detail == "not set, so the daemon uses every global address: 10.0.2.15"


def test_portals_default_only_loopback() -> None:
    result = doctor.check_portals_configured([], ["127.0.0.1", "::1", "fe80::1"])
    assert not result.ok
    assert "would use 127.0.0.1" in result.detail


@pytest.mark.parametrize(
    "prefix",
    [
        "iqn.2003-01.org.linux-iscsi.cspd.com.hpe",
        "iqn.2011-08.org.truenas.ctl",
        "iqn.2005-10.org.freenas.ctl",
        "iqn.2007-11.com.nimblestorage",
        "iqn.2000-05.com.3pardata",
    ],
)
def test_iqn_prefix_accepted(prefix: str) -> None:
    assert doctor.check_iqn_prefix(prefix).ok


def test_iqn_prefix_without_vendor_rejected() -> None:
    result = doctor.check_iqn_prefix("iqn.2003-01.org.linux-iscsi.cspd")
    assert not result.ok
    assert "'iqn.2003-01.org.linux-iscsi.cspd.com.hpe'" in result.fix


def test_iqn_prefix_vendor_not_last() -> None:
    assert not doctor.check_iqn_prefix("iqn.2024-01.com.hpe.storage").ok


def test_parse_proc_net_tcp_listeners() -> None:
    listeners = doctor.parse_proc_net_tcp(PROC_NET_TCP, ipv6=False)
    assert listeners == [
        doctor.TcpListener("0.0.0.0", 3260, 24811),
        doctor.TcpListener("10.0.2.15", 3260, 24812),
        doctor.TcpListener("0.0.0.0", 22, 19001),
    ]


def test_parse_proc_net_tcp6_listeners() -> None:
    listeners = doctor.parse_proc_net_tcp(PROC_NET_TCP6, ipv6=True)
    assert listeners == [
        doctor.TcpListener("::1", 3260, 24900),
        doctor.TcpListener("::", 8443, 25000),
    ]


def test_iscsi_port_free() -> None:
    listeners = [doctor.TcpListener("0.0.0.0", 22, 19001)]
    result = doctor.check_iscsi_port(3260, listeners, {19001: ["sshd (pid 10)"]})
    assert result.ok
    assert result.detail == "free"


def test_iscsi_port_held_by_kernel() -> None:
    listeners = doctor.parse_proc_net_tcp(PROC_NET_TCP, ipv6=False)
    result = doctor.check_iscsi_port(3260, listeners, {19001: ["sshd (pid 10)"]})
    assert result.ok
    assert result.detail == "held by the kernel (LIO) on 0.0.0.0, 10.0.2.15"


def test_iscsi_port_held_by_process() -> None:
    listeners = doctor.parse_proc_net_tcp(PROC_NET_TCP, ipv6=False)
    result = doctor.check_iscsi_port(3260, listeners, {24811: ["tgtd (pid 321)"]})
    assert not result.ok
    assert result.detail == "held by tgtd (pid 321)"


# -- TLS -----------------------------------------------------------------------


def test_tls_valid_certificate() -> None:
    cert, key = make_certificate(NOW + dt.timedelta(days=200))
    result = doctor.check_tls("/etc/cspd/tls.crt", "/etc/cspd/tls.key", cert, key, NOW)
    assert result.ok
    assert "(200 days)" in result.detail


def test_tls_expiring_soon() -> None:
    cert, key = make_certificate(NOW + dt.timedelta(days=10))
    result = doctor.check_tls("/etc/cspd/tls.crt", "/etc/cspd/tls.key", cert, key, NOW)
    assert not result.ok
    assert "expires on" in result.detail
    assert "systemctl restart cspd" in result.fix


def test_tls_expired() -> None:
    cert, key = make_certificate(NOW - dt.timedelta(days=1))
    result = doctor.check_tls("/etc/cspd/tls.crt", "/etc/cspd/tls.key", cert, key, NOW)
    assert not result.ok
    assert "expired on" in result.detail


def test_tls_key_of_other_certificate() -> None:
    cert, _ = make_certificate(NOW + dt.timedelta(days=200))
    _, other_key = make_certificate(NOW + dt.timedelta(days=200))
    result = doctor.check_tls("/etc/cspd/tls.crt", "/etc/cspd/tls.key", cert, other_key, NOW)
    assert not result.ok
    assert "does not belong" in result.detail


def test_tls_not_pem() -> None:
    _, key = make_certificate(NOW + dt.timedelta(days=200))
    result = doctor.check_tls("/etc/cspd/tls.crt", "/etc/cspd/tls.key", b"garbage", key, NOW)
    assert not result.ok
    assert "not a PEM certificate" in result.detail


def test_tls_unreadable() -> None:
    result = doctor.check_tls(
        "/etc/cspd/tls.crt", "/etc/cspd/tls.key", None, None, NOW, "cannot read x"
    )
    assert not result.ok
    assert result.detail == "cannot read x"


# -- state folder --------------------------------------------------------------


def test_state_dir_private() -> None:
    result = doctor.check_state_dir("/var/lib/cspd", make_stat(stat.S_IFDIR | 0o700))
    assert result.ok


def test_state_dir_world_readable() -> None:
    result = doctor.check_state_dir("/var/lib/cspd", make_stat(stat.S_IFDIR | 0o755))
    assert not result.ok
    assert "mode 0755 gives others access" in result.detail
    assert "chmod 0700 /var/lib/cspd" in result.fix


def test_state_dir_not_root() -> None:
    result = doctor.check_state_dir("/var/lib/cspd", make_stat(stat.S_IFDIR | 0o700, uid=1000))
    assert not result.ok
    assert "owned by uid 1000" in result.detail


def test_state_dir_is_file() -> None:
    result = doctor.check_state_dir("/var/lib/cspd", make_stat(stat.S_IFREG | 0o600))
    assert not result.ok
    assert "not a folder" in result.detail


def test_state_dir_missing() -> None:
    result = doctor.check_state_dir("/var/lib/cspd", None, "missing")
    assert not result.ok
    assert "install -d -o root -g root -m 0700 /var/lib/cspd" in result.fix


# -- the whole run on a recorded host -------------------------------------------


class RecordedHost:
    """A host whose files and command outputs come from dictionaries."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {
            "/proc/modules": PROC_MODULES.encode(),
            "/proc/mounts": PROC_MOUNTS.encode(),
            "/proc/net/tcp": PROC_NET_TCP.encode(),
            "/proc/net/tcp6": PROC_NET_TCP6.encode(),
        }
        self.outputs: dict[str, str] = {
            "vgs": VGS_JSON,
            "lvs": LVS_JSON,
            "pvs": PVS_JSON,
            "ip": IP_ADDR_JSON,
        }
        self.existing = {"/sys/kernel/config/target"}
        self.stats = {"/var/lib/cspd": make_stat(stat.S_IFDIR | 0o700)}
        self.commands: list[list[str]] = []

    def read_text(self, path: Path) -> str:
        return self.read_bytes(path).decode()

    def read_bytes(self, path: Path) -> bytes:
        try:
            return self.files[str(path)]
        except KeyError:
            raise FileNotFoundError(2, "No such file or directory", str(path)) from None

    def exists(self, path: Path) -> bool:
        return str(path) in self.existing

    def stat(self, path: Path) -> os.stat_result:
        try:
            return self.stats[str(path)]
        except KeyError:
            raise FileNotFoundError(2, "No such file or directory", str(path)) from None

    def resolve(self, path: Path) -> str:
        return {"/dev/disk/by-id/virtio-pool": "/dev/vdb"}.get(str(path), str(path))

    def run(self, argv: list[str], timeout: float) -> str:
        self.commands.append(argv)
        if argv[0] not in self.outputs:
            raise CommandError(argv, None, f"{argv[0]}: not found")
        return self.outputs[argv[0]]

    def module_loadable(self, name: str) -> bool:
        return False

    def socket_owners(self, inodes: set[int]) -> dict[int, list[str]]:
        return {}

    def now(self) -> dt.datetime:
        return NOW


def lab_config(extra: str = "") -> Config:
    return parse_config(
        "[iscsi]\n"
        'portals = ["10.0.2.15"]\n'
        'iqn_prefix = "iqn.2003-01.org.linux-iscsi.cspd.com.hpe"\n'
        "[lvm]\n"
        'pool_devices = ["/dev/disk/by-id/virtio-pool"]\n' + extra
    )


def test_collect_results_all_pass() -> None:
    results = doctor.collect_results(lab_config(), RecordedHost())
    failures = [result for result in results if not result.ok]
    assert failures == []
    names = [result.name for result in results]
    assert names == [
        "kernel module dm_thin_pool",
        "kernel module target_core_mod",
        "kernel module target_core_iblock",
        "kernel module iscsi_target_mod",
        "configfs",
        "volume group cspd",
        "thin pool cspd/pool",
        "thin pool cspd/pool fill",
        "lvm.pool_devices",
        "iscsi.portals",
        "api.listen 0.0.0.0",
        "iscsi.portals 10.0.2.15",
        "iscsi.iqn_prefix",
        "iSCSI port 3260",
        "TLS certificate",
        "state folder /var/lib/cspd",
    ]


def test_collect_results_lvm_commands_use_json() -> None:
    host = RecordedHost()
    doctor.collect_results(lab_config(), host)
    lvm_commands = [argv for argv in host.commands if argv[0] in ("vgs", "lvs", "pvs")]
    assert len(lvm_commands) == 3
    device_filter = 'devices { global_filter = [ "a|^/dev/disk/by-id/virtio-pool$|", "r|.*|" ] }'
    for argv in lvm_commands:
        assert argv[1:5] == ["--reportformat", "json", "--units", "b"]
        assert argv[argv.index("--config") + 1] == device_filter


def test_collect_results_lvm_without_filter() -> None:
    host = RecordedHost()
    config = parse_config('[iscsi]\nportals = ["10.0.2.15"]\n')
    doctor.collect_results(config, host)
    lvm_commands = [argv for argv in host.commands if argv[0] in ("vgs", "lvs")]
    assert len(lvm_commands) == 2
    for argv in lvm_commands:
        assert "--config" not in argv


def test_collect_results_missing_volume_group_stops_lvm_checks() -> None:
    config = lab_config('volume_group = "other"\n')
    results = doctor.collect_results(config, RecordedHost())
    names = [result.name for result in results]
    assert "volume group other" in names
    assert "thin pool other/pool" not in names


def test_collect_results_lvm_missing() -> None:
    host = RecordedHost()
    del host.outputs["vgs"]
    results = {result.name: result for result in doctor.collect_results(lab_config(), host)}
    assert not results["volume group cspd"].ok
    assert "apt-get install lvm2" in results["volume group cspd"].fix


def test_collect_results_configured_certificate() -> None:
    host = RecordedHost()
    cert, key = make_certificate(NOW + dt.timedelta(days=5))
    host.files["/etc/cspd/tls.crt"] = cert
    host.files["/etc/cspd/tls.key"] = key
    config = lab_config('[api]\ntls_cert = "/etc/cspd/tls.crt"\ntls_key = "/etc/cspd/tls.key"\n')
    results = {result.name: result for result in doctor.collect_results(config, host)}
    assert not results["TLS certificate"].ok


def test_collect_results_self_signed_not_made_yet() -> None:
    results = {r.name: r for r in doctor.collect_results(lab_config(), RecordedHost())}
    assert results["TLS certificate"].ok
    assert "makes /var/lib/cspd/tls.crt on its first start" in results["TLS certificate"].detail


def test_collect_results_self_signed_checked() -> None:
    host = RecordedHost()
    cert, key = make_certificate(NOW + dt.timedelta(days=3))
    host.files["/var/lib/cspd/tls.crt"] = cert
    host.files["/var/lib/cspd/tls.key"] = key
    host.existing.update({"/var/lib/cspd/tls.crt", "/var/lib/cspd/tls.key"})
    results = {r.name: r for r in doctor.collect_results(lab_config(), host)}
    assert not results["TLS certificate"].ok
    assert "/var/lib/cspd/tls.crt expires on" in results["TLS certificate"].detail


def test_collect_results_ip_missing() -> None:
    host = RecordedHost()
    del host.outputs["ip"]
    results = {r.name: r for r in doctor.collect_results(lab_config(), host)}
    assert not results["local addresses"].ok
    assert "iproute2" in results["local addresses"].fix
    assert "iscsi.portals 10.0.2.15" not in results


def test_collect_results_missing_certificate_file() -> None:
    config = lab_config('[api]\ntls_cert = "/etc/cspd/tls.crt"\ntls_key = "/etc/cspd/tls.key"\n')
    results = {r.name: r for r in doctor.collect_results(config, RecordedHost())}
    assert not results["TLS certificate"].ok
    assert "cannot read /etc/cspd/tls.crt" in results["TLS certificate"].detail


def test_format_results_fix_line() -> None:
    lines = doctor.format_results(
        [
            doctor.CheckResult("configfs", True, "mounted"),
            doctor.CheckResult("state folder /x", False, "missing", "create it"),
        ]
    )
    assert lines == [
        "OK    configfs: mounted",
        "FAIL  state folder /x: missing",
        "      fix: create it",
    ]


def test_run_doctor_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor.run_doctor(lab_config(), RecordedHost()) == 0
    assert capsys.readouterr().out.endswith("16 checks, 0 failed\n")

    host = RecordedHost()
    host.stats.clear()
    assert doctor.run_doctor(lab_config(), host) == 1
    output = capsys.readouterr().out
    assert "FAIL  state folder /var/lib/cspd: missing" in output
    assert output.endswith("16 checks, 1 failed\n")


# -- running commands ------------------------------------------------------------


def test_run_command_pins_locale() -> None:
    assert doctor.run_command(["sh", "-c", "echo $LC_ALL"], 5) == "C\n"


def test_run_command_failure() -> None:
    with pytest.raises(CommandError) as info:
        doctor.run_command(["sh", "-c", "echo broken >&2; exit 3"], 5)
    assert info.value.returncode == 3
    assert str(info.value) == "sh failed with exit code 3: broken"


def test_run_command_missing_program() -> None:
    with pytest.raises(CommandError) as info:
        doctor.run_command(["cspd-no-such-program"], 5)
    assert info.value.returncode is None
    assert not info.value.timed_out


def test_run_command_timeout() -> None:
    with pytest.raises(CommandError) as info:
        doctor.run_command(["sleep", "5"], 0.2)
    assert info.value.timed_out
    assert "timed out" in str(info.value)
