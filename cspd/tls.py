"""TLS for the API: the configured certificate, or a self-signed one made on first start."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cspd.config import Config

log = logging.getLogger("cspd.tls")

SELF_SIGNED_DAYS = 3650


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename.

    Readers see the old file or the new one, never a part, and a crash leaves
    no half-written key.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def make_self_signed(addresses: list[str]) -> tuple[bytes, bytes]:
    """Return (certificate PEM, key PEM) for this host's name and ``addresses``."""
    key = ec.generate_private_key(ec.SECP256R1())
    hostname = socket.gethostname()
    names: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost")]
    for text in sorted(set(addresses) | {"127.0.0.1", "::1"}):
        names.append(x509.IPAddress(ipaddress.ip_address(text)))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def certificate_paths(config: Config, addresses: list[str]) -> tuple[Path, Path]:
    """Return the certificate and key to serve, making a self-signed pair when none is set."""
    if config.api.tls_cert:
        return Path(config.api.tls_cert), Path(config.api.tls_key)
    cert_path = config.state_dir / "tls.crt"
    key_path = config.state_dir / "tls.key"
    if not (cert_path.exists() and key_path.exists()):
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert_pem, key_pem = make_self_signed(addresses)
        # The key first: a certificate without its key would be reused and fail.
        write_atomically(key_path, key_pem, 0o600)
        write_atomically(cert_path, cert_pem, 0o644)
        log.info("made a self-signed certificate", extra={"path": str(cert_path)})
    return cert_path, key_path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
