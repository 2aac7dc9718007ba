"""Size reporting, log formatting, local addresses, TLS and systemd notification."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from cspd.config import parse_config
from cspd.logs import FieldFormatter
from cspd.netinfo import default_portals, own_names, parse_ip_addr_json
from cspd.provider.base import reported_size
from cspd.sdnotify import notify
from cspd.tls import certificate_paths, server_context

EXTENT = 4 << 20

IP_ADDR_JSON = json.dumps(
    [
        {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1"},
                                       {"family": "inet6", "local": "::1"}]},
        {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "10.0.2.15"},
                                         {"family": "inet6", "local": "fe80::1"},
                                         {"family": "inet6", "local": "2001:db8::5"}]},
        {"ifname": "eth1", "addr_info": []},
    ]
)


def test_reported_size_keeps_request() -> None:
    assert reported_size(1000, EXTENT, EXTENT) == 1000
    assert reported_size(EXTENT, EXTENT, EXTENT) == EXTENT


def test_reported_size_follows_outside_change() -> None:
    assert reported_size(1000, 3 * EXTENT, EXTENT) == 3 * EXTENT


def test_field_formatter_appends_extra() -> None:
    record = logging.LogRecord("cspd.x", logging.INFO, "f", 1, "volume created", None, None)
    record.volume_id = "abc"
    record.note = "two words"
    line = FieldFormatter("%(name)s: %(message)s").format(record)
    assert line == 'cspd.x: volume created note="two words" volume_id=abc'


def test_parse_ip_addr() -> None:
    pairs = parse_ip_addr_json(IP_ADDR_JSON)
    assert ("eth0", "10.0.2.15") in pairs
    assert len(pairs) == 5


def test_default_portals_skip_loopback_and_link_local() -> None:
    addresses = [a for _, a in parse_ip_addr_json(IP_ADDR_JSON)]
    assert default_portals(addresses) == ["10.0.2.15", "2001:db8::5"]
    assert default_portals(["127.0.0.1"]) == ["127.0.0.1"]


def test_own_names_include_configured() -> None:
    names = own_names(["10.0.2.15"], ["Array01.Example"])
    assert "array01.example" in names
    assert "10.0.2.15" in names
    assert "localhost" in names
    assert "203.0.113.9" not in names


def test_self_signed_certificate_made_once(tmp_path: Path) -> None:
    config = parse_config(f'[state]\ndir = "{tmp_path / "state"}"\n')
    cert, key = certificate_paths(config, ["10.0.2.15"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = cert.read_bytes()
    loaded = x509.load_pem_x509_certificate(first)
    san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "10.0.2.15" in [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    again, _ = certificate_paths(config, ["10.0.2.15"])
    assert again.read_bytes() == first
    assert isinstance(server_context(cert, key), ssl.SSLContext)


def test_configured_certificate_used(tmp_path: Path) -> None:
    config = parse_config('[api]\ntls_cert = "/etc/c.pem"\ntls_key = "/etc/k.pem"\n')
    assert certificate_paths(config, []) == (Path("/etc/c.pem"), Path("/etc/k.pem"))


def test_sd_notify_sends_datagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        assert notify("READY=1") is True
        assert server.recv(64) == b"READY=1"
    finally:
        server.close()


def test_sd_notify_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
