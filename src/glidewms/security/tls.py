"""TLS: what services serve with, what clients verify against, and the
private CA `glidewms up --tls` makes for a one-machine installation.

A service serves HTTPS when its configuration names `tls_cert` and
`tls_key`. A client verifies the server against the PEM bundle of its
`ca_file` alone when it has one (a private CA: nothing else is trusted),
else against the system store (OpenSSL's default paths, which
``SSL_CERT_FILE`` can move), never with verification off. Pilots get the
factory's `ca_file` on their command line (`pilot_ca_argument`): a worker
node needs no copy distributed beforehand, and the bundle is public.

The loopback CA (`loopback_tls`) signs one server certificate for
127.0.0.1, ::1 and localhost, used by all three services, and is then
thrown away: its private key is never written, so nothing on the machine
can sign another certificate that the installation's clients would trust.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import ssl
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MIB = 1024 * 1024
CA_FILE_ENV = "GLIDEWMS_CA_FILE"
PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


class TlsError(ValueError):
    """A certificate, key or CA bundle is missing or unusable; the message names the file."""


def tls_pair(cert: Path | None, key: Path | None) -> Path | None:
    """Validate a configuration's `tls_cert`/`tls_key` pair: both or neither."""
    if (cert is None) != (key is None):
        raise ValueError("tls_cert and tls_key go together: give both, or neither")
    return key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server's context, loaded now so that a bad file stops the service
    at start with a message, not at the first client's handshake."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"tls_cert {cert} / tls_key {key}: cannot be used: {exc}") from None
    return context


def client_context(ca_file: Path | str | None) -> ssl.SSLContext:
    """What a client verifies servers with: `ca_file` only, else the system
    store. For httpx's `verify=` (its own default is certifi's bundle, which
    knows no site CA installed in the system store)."""
    if ca_file is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"ca_file {ca_file}: cannot be used: {exc}") from None


def read_ca_bundle(path: Path) -> bytes:
    """The PEM bundle at `path`, refused unless it holds at least one certificate."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(f"ca_file {path}: cannot read: {exc.strerror}") from None
    if PEM_CERTIFICATE not in data:
        raise TlsError(f"ca_file {path}: no PEM certificate in it")
    try:
        ssl.create_default_context(cadata=data.decode("ascii"))
    except (UnicodeDecodeError, ssl.SSLError) as exc:
        raise TlsError(f"ca_file {path}: not a usable PEM bundle: {exc}") from None
    return data


def pilot_ca_argument(path: Path) -> str:
    """The bundle as the bootstrap's `--ca-cert` wants it: base64 of the PEM
    text. Read again when the file changes (a renewed CA reaches new pilots)."""
    info = os.stat(path)
    return _encoded(str(path), info.st_mtime_ns, info.st_size)


@lru_cache(maxsize=8)
def _encoded(path: str, _mtime_ns: int, _size: int) -> str:
    return base64.b64encode(read_ca_bundle(Path(path))).decode("ascii")


def discover_ca_file(state_dir: Path, explicit: Path | None = None) -> Path | None:
    """A client's CA bundle: `explicit`, else ``$GLIDEWMS_CA_FILE``, else the
    `ca_file` of `glidewms up`'s client.json in `state_dir`; None: the system store."""
    if explicit is not None:
        return explicit
    if os.environ.get(CA_FILE_ENV):
        return Path(os.environ[CA_FILE_ENV])
    try:
        saved = json.loads((state_dir / "client.json").read_text())
    except (OSError, ValueError):
        return None
    ca = saved.get("ca_file") if isinstance(saved, dict) else None
    return Path(ca) if ca else None


@dataclass(frozen=True)
class LoopbackTls:
    """The files of a one-machine installation's TLS: `ca` for clients and
    pilots, `cert` and `key` for every service."""

    ca: Path
    cert: Path
    key: Path


LOOPBACK_NAMES = ("localhost",)
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")


def loopback_tls(directory: Path, days: int = 365) -> LoopbackTls:
    """A private CA and a server certificate for this machine's loopback
    names, made unless `directory` already holds ones still valid for a day
    (so pilots and clients keep trusting a restarted installation)."""
    files = LoopbackTls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    if _still_valid(files.cert) and files.ca.is_file() and files.key.is_file():
        return files
    now = datetime.datetime.now(datetime.timezone.utc)
    start = now - datetime.timedelta(minutes=5)  # clocks of a VM may lag a little
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "glidewms loopback CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in LOOPBACK_NAMES]
    names += [x509.IPAddress(ip_address(a)) for a in LOOPBACK_ADDRESSES]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write(
        files.key,
        0o600,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write(files.cert, 0o644, cert.public_bytes(serialization.Encoding.PEM))
    _write(files.ca, 0o644, ca.public_bytes(serialization.Encoding.PEM))
    return files


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _still_valid(cert: Path) -> bool:
    try:
        loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError):
        return False
    margin = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    return loaded.not_valid_after_utc > margin


def _write(path: Path, mode: int, data: bytes) -> None:
    """Replace `path` with `data`, created with `mode` (a key is never readable by others)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
