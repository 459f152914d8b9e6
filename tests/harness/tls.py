# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Certificates made by the tests: a CA with a loopback server certificate, and self-signed signing keys.

Nothing here is trusted outside the test that made it; keys are short-lived RSA 2048.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import pathlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_NAMES = ("127.0.0.1", "localhost")


@dataclasses.dataclass(frozen=True)
class CertificateFiles:
    """A certificate and its private key on disk, PEM encoded."""

    cert_path: pathlib.Path
    key_path: pathlib.Path
    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey


@dataclasses.dataclass(frozen=True)
class ServerTLS:
    """What a TLS server needs: its CA (for clients) and its certificate and key."""

    ca: CertificateFiles
    server: CertificateFiles


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write(directory: pathlib.Path, stem: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> CertificateFiles:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return CertificateFiles(cert_path, key_path, cert, key)


def _validity() -> tuple[datetime.datetime, datetime.datetime]:
    # Backdated a little so a clock a few seconds behind still accepts the certificate.
    now = datetime.datetime.now(datetime.timezone.utc)
    return now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)


def make_self_signed(directory: pathlib.Path, common_name: str, stem: str, *, is_ca: bool = True) -> CertificateFiles:
    """A self-signed certificate (a CA, or the token signer whose certificate is its own trust root)."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    not_before, not_after = _validity()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    cert = builder.sign(key, hashes.SHA256())
    return _write(directory, stem, cert, key)


def make_server_tls(directory: pathlib.Path, names: tuple[str, ...] = LOOPBACK_NAMES) -> ServerTLS:
    """A test CA and a server certificate it signed, valid for ``names`` (IP addresses or DNS names)."""
    ca = make_self_signed(directory, "selfhosted.registry test CA", "ca")
    key = _new_key()
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    not_before, not_after = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()), critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )
    return ServerTLS(ca=ca, server=_write(directory, "server", cert, key))
