"""Configuration file of the daemon (TOML).

Every key has a safe default except where none exists, and
docs/configuration.md is the reference. ``load_config`` raises ``ConfigError``
naming the key and the problem, and ``cspd serve`` stops with that message.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import msgspec

from cspd.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/cspd/cspd.toml")

# RFC 3720 section 3.2.6.3.1: "iqn." + yyyy-mm + "." + reversed domain name.
IQN_PREFIX_RE = re.compile(r"^iqn\.\d{4}-(0[1-9]|1[0-2])\.[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")

# LV and VG names: lvm(8) "VALID NAMES".
LVM_NAME_RE = re.compile(r"^[A-Za-z0-9._+][A-Za-z0-9._+-]*$")


class ApiConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    listen: str = "0.0.0.0"
    port: int = 8443
    tls_cert: str = ""
    tls_key: str = ""
    plain_http: bool = False
    max_body_bytes: int = 1024 * 1024
    # Further names of this box that clients may send as array_ip, such as
    # the DNS name in the CSI driver's Secret. The host's own names and
    # addresses are always accepted.
    array_names: list[str] = msgspec.field(default_factory=list)


class StateConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    dir: str = "/var/lib/cspd"


class TokenConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    lifetime: int = 1800
    failed_login_delay: float = 1.0


class LvmConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    volume_group: str = "cspd"
    thin_pool: str = "pool"
    pool_devices: list[str] = msgspec.field(default_factory=list)
    max_data_percent: float = 95.0
    max_metadata_percent: float = 90.0
    command_timeout: float = 120.0


class IscsiConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # The stock HPE CSI node plugin logs in only to targets whose name has one
    # of its vendor strings (com.hpe among them) right before the colon.
    iqn_prefix: str = "iqn.2003-01.org.linux-iscsi.cspd.com.hpe"
    portals: list[str] = msgspec.field(default_factory=list)
    port: int = 3260


class ReplicationPartnerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    url: str
    direction: str = "downstream"


class LogConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    level: str = "info"


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    state: StateConfig = msgspec.field(default_factory=StateConfig)
    tokens: TokenConfig = msgspec.field(default_factory=TokenConfig)
    lvm: LvmConfig = msgspec.field(default_factory=LvmConfig)
    iscsi: IscsiConfig = msgspec.field(default_factory=IscsiConfig)
    replication_partners: list[ReplicationPartnerConfig] = msgspec.field(default_factory=list)
    log: LogConfig = msgspec.field(default_factory=LogConfig)

    @property
    def state_dir(self) -> Path:
        return Path(self.state.dir)


def load_config(path: Path | None) -> Config:
    """Read and validate the configuration file.

    A missing file at the default path gives the built-in defaults; a missing
    file that was named explicitly is an error.
    """
    if path is None:
        path = DEFAULT_CONFIG_PATH
        if not path.exists():
            return validate(Config())
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read configuration file {path}: {err.strerror}") from err
    return parse_config(raw, source=str(path))


def parse_config(raw: bytes | str, source: str = "<config>") -> Config:
    try:
        config = msgspec.toml.decode(raw, type=Config)
    except msgspec.ValidationError as err:
        raise ConfigError(f"{source}: {_describe_validation_error(err)}") from err
    except msgspec.DecodeError as err:
        raise ConfigError(f"{source}: invalid TOML: {err}") from err
    try:
        return validate(config)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err


def _describe_validation_error(err: msgspec.ValidationError) -> str:
    # msgspec reports "... - at `$.api.port`"; name the key as the file spells it.
    text = str(err)
    match = re.search(r" - at `\$\.?(.*)`$", text)
    if match:
        key = match.group(1)
        text = text[: match.start()]
        return f"key '{key}': {text}"
    return text


def validate(config: Config) -> Config:
    """Check the values that types alone cannot; raise ConfigError naming the key."""
    api = config.api
    if not 1 <= api.port <= 65535:
        raise ConfigError(f"key 'api.port': {api.port} is not a TCP port (1-65535)")
    _check_address("api.listen", api.listen)
    if bool(api.tls_cert) != bool(api.tls_key):
        raise ConfigError("keys 'api.tls_cert' and 'api.tls_key' must be set together")
    for name in api.array_names:
        if not name.strip() or any(c.isspace() for c in name):
            raise ConfigError(f"key 'api.array_names': {name!r} is not a host name or address")
    if api.max_body_bytes < 4096:
        raise ConfigError(f"key 'api.max_body_bytes': {api.max_body_bytes} is below 4096")

    if not config.state.dir.startswith("/"):
        raise ConfigError(f"key 'state.dir': {config.state.dir!r} is not an absolute path")

    tokens = config.tokens
    if tokens.lifetime < 60:
        raise ConfigError(f"key 'tokens.lifetime': {tokens.lifetime} s is below 60 s")
    if not 0 <= tokens.failed_login_delay <= 30:
        raise ConfigError("key 'tokens.failed_login_delay': must be between 0 and 30 seconds")

    lvm = config.lvm
    for key, value in (("lvm.volume_group", lvm.volume_group), ("lvm.thin_pool", lvm.thin_pool)):
        if not LVM_NAME_RE.match(value):
            raise ConfigError(f"key '{key}': {value!r} is not a valid LVM name")
    for key, percent in (
        ("lvm.max_data_percent", lvm.max_data_percent),
        ("lvm.max_metadata_percent", lvm.max_metadata_percent),
    ):
        if not 1 <= percent <= 100:
            raise ConfigError(f"key '{key}': {percent} is not a percentage between 1 and 100")
    for device in lvm.pool_devices:
        if not device.startswith("/dev/"):
            raise ConfigError(f"key 'lvm.pool_devices': {device!r} is not a /dev path")
    if lvm.command_timeout <= 0:
        raise ConfigError("key 'lvm.command_timeout': must be positive")

    iscsi = config.iscsi
    if not IQN_PREFIX_RE.match(iscsi.iqn_prefix):
        raise ConfigError(
            f"key 'iscsi.iqn_prefix': {iscsi.iqn_prefix!r} is not an iSCSI qualified name "
            "prefix such as 'iqn.2003-01.org.linux-iscsi.cspd' (lower case, no colon)"
        )
    for portal in iscsi.portals:
        _check_address("iscsi.portals", portal)
        if ipaddress.ip_address(portal).is_unspecified:
            raise ConfigError(
                f"key 'iscsi.portals': {portal!r} is a wildcard; list each address the "
                "initiators reach, because multipath logs in once per portal"
            )
    if not 1 <= iscsi.port <= 65535:
        raise ConfigError(f"key 'iscsi.port': {iscsi.port} is not a TCP port (1-65535)")

    names = set()
    for partner in config.replication_partners:
        if partner.name in names:
            raise ConfigError(f"key 'replication_partners': name {partner.name!r} appears twice")
        names.add(partner.name)
        if partner.direction not in ("upstream", "downstream"):
            raise ConfigError(
                f"key 'replication_partners.direction': {partner.direction!r} is not "
                "'upstream' or 'downstream'"
            )
        if not partner.url.startswith(("http://", "https://")):
            raise ConfigError(f"key 'replication_partners.url': {partner.url!r} is not a URL")

    if config.log.level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(
            f"key 'log.level': {config.log.level!r} is not debug, info, warning or error"
        )
    return config


def _check_address(key: str, value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError as err:
        raise ConfigError(f"key '{key}': {value!r} is not an IP address") from err
