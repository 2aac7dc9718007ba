"""Configuration parsing and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from cspd.config import load_config, parse_config
from cspd.errors import ConfigError


def test_defaults_are_valid() -> None:
    config = parse_config(b"")
    assert config.api.port == 8443
    assert config.api.plain_http is False
    assert config.state.dir == "/var/lib/cspd"
    assert config.tokens.lifetime == 1800
    assert config.lvm.volume_group == "cspd"
    assert config.iscsi.portals == []


def test_full_file_parses() -> None:
    config = parse_config(
        b"""
[api]
listen = "::"
port = 443
[lvm]
volume_group = "vg0"
thin_pool = "thin"
pool_devices = ["/dev/sdb"]
[iscsi]
iqn_prefix = "iqn.2000-05.com.hpe.cspd"
portals = ["192.0.2.1", "2001:db8::1"]
[[replication_partners]]
name = "dr"
url = "https://127.0.0.1:9443"
"""
    )
    assert config.api.port == 443
    assert config.lvm.pool_devices == ["/dev/sdb"]
    assert config.replication_partners[0].direction == "downstream"


def test_array_names_parse() -> None:
    config = parse_config('[api]\narray_names = ["Array01.example", "203.0.113.7"]')
    assert config.api.array_names == ["Array01.example", "203.0.113.7"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[api]\nport = "x"', "api.port"),
        ("[api]\nport = 70000", "api.port"),
        ('[api]\nlisten = "example.com"', "api.listen"),
        ('[api]\ntls_cert = "/a"', "api.tls_cert"),
        ('[state]\ndir = "relative"', "state.dir"),
        ("[tokens]\nlifetime = 5", "tokens.lifetime"),
        ('[lvm]\nvolume_group = "bad name"', "lvm.volume_group"),
        ('[lvm]\nthin_pool = "-x"', "lvm.thin_pool"),
        ("[lvm]\nmax_data_percent = 150", "lvm.max_data_percent"),
        ('[lvm]\npool_devices = ["sdb"]', "lvm.pool_devices"),
        ('[iscsi]\niqn_prefix = "iqn.2026-12.io.example:x"', "iscsi.iqn_prefix"),
        ('[iscsi]\niqn_prefix = "cspd"', "iscsi.iqn_prefix"),
        ('[iscsi]\nportals = ["0.0.0.0"]', "iscsi.portals"),
        ('[iscsi]\nportals = ["host"]', "iscsi.portals"),
        ('[log]\nlevel = "loud"', "log.level"),
        ('[api]\narray_names = ["two words"]', "api.array_names"),
        ('[[replication_partners]]\nname = "a"\nurl = "x"', "replication_partners.url"),
    ],
)
def test_bad_value_names_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert key in str(caught.value)


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config('[api]\nlisten_addr = "0.0.0.0"')
    assert "listen_addr" in str(caught.value)


def test_invalid_toml() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("[api")
    assert "invalid TOML" in str(caught.value)


def test_named_missing_file_is_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "none.toml")
    assert "none.toml" in str(caught.value)


def test_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "cspd.toml"
    path.write_text("[api]\nport = 0\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
