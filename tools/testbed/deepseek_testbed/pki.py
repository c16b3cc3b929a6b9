"""Certificates and kubeconfigs for the test control plane (the `cryptography` package, no openssl CLI).

One CA signs the API server's serving certificate and every client certificate (the API server trusts it as
`--client-ca-file`). A second CA exists only for the aggregation layer's front proxy. The service-account
signing key is a separate EC key pair. ECDSA P-256 everywhere: key generation is instant on a small machine.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=365)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its PEM private key on disk."""

    cert: Path
    key: Path


class CertificateAuthority:
    """A self-signed CA that can issue serving and client certificates."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, cert_path: Path) -> None:
        self._key = key
        self._cert = cert
        self.cert_path = cert_path

    @classmethod
    def create(cls, directory: Path, name: str, common_name: str) -> CertificateAuthority:
        key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        cert_path = directory / f"{name}.crt"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(directory / f"{name}.key", _key_pem(key))
        return cls(key, cert, cert_path)

    @classmethod
    def load(cls, directory: Path, name: str) -> CertificateAuthority:
        cert_path = directory / f"{name}.crt"
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key((directory / f"{name}.key").read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{directory / name}.key is not an EC key")
        return cls(key, cert, cert_path)

    @property
    def key_path(self) -> Path:
        return self.cert_path.with_suffix(".key")

    def issue(
        self,
        directory: Path,
        name: str,
        common_name: str,
        *,
        organizations: Sequence[str] = (),
        server: bool = False,
        client: bool = False,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> CertPair:
        """Issue a leaf certificate (server and/or client usage) and write `<name>.crt` / `<name>.key`."""
        key = _new_key()
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        now = dt.datetime.now(dt.UTC)
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        pair = CertPair(directory / f"{name}.crt", directory / f"{name}.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(pair.key, _key_pem(key))
        return pair


@dataclass(frozen=True)
class Pki:
    """Everything the control plane's processes need, as files under one directory."""

    directory: Path
    ca: CertificateAuthority
    front_proxy_ca: CertificateAuthority
    serving: CertPair
    front_proxy_client: CertPair
    sa_private_key: Path
    sa_public_key: Path

    @classmethod
    def create(cls, directory: Path) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        ca = CertificateAuthority.create(directory, "ca", "deepseek-testbed-ca")
        front = CertificateAuthority.create(directory, "front-proxy-ca", "deepseek-testbed-front-proxy-ca")
        serving = ca.issue(
            directory,
            "apiserver",
            "kube-apiserver",
            server=True,
            dns_names=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
            ip_addresses=["127.0.0.1", "10.96.0.1"],
        )
        proxy_client = front.issue(directory, "front-proxy-client", "front-proxy-client", client=True)
        sa_key = _new_key()
        sa_private = directory / "sa.key"
        _write_private(sa_private, _key_pem(sa_key))
        sa_public = directory / "sa.pub"
        sa_public.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return cls(directory, ca, front, serving, proxy_client, sa_private, sa_public)

    @classmethod
    def load(cls, directory: Path) -> Pki:
        """The PKI that `create` wrote into `directory` (to mint more client certificates later)."""
        return cls(
            directory,
            CertificateAuthority.load(directory, "ca"),
            CertificateAuthority.load(directory, "front-proxy-ca"),
            CertPair(directory / "apiserver.crt", directory / "apiserver.key"),
            CertPair(directory / "front-proxy-client.crt", directory / "front-proxy-client.key"),
            directory / "sa.key",
            directory / "sa.pub",
        )

    def client_cert(self, user: str, groups: Sequence[str] = ()) -> CertPair:
        """A client certificate for `user` (CN) in `groups` (O), signed by the cluster CA."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in user)
        return self.ca.issue(self.directory, f"client-{safe}", user, organizations=groups, client=True)


def kubeconfig_dict(
    server: str,
    ca_file: Path,
    user: str,
    *,
    client: CertPair | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    """A single-context kubeconfig; credentials are a client certificate or a bearer token (file paths stay
    absolute so the file works from any directory)."""
    creds: dict[str, str] = {}
    if client is not None:
        creds = {"client-certificate": str(client.cert), "client-key": str(client.key)}
    if token is not None:
        creds["token"] = token
    context: dict[str, str] = {"cluster": "testbed", "user": user}
    if namespace:
        context["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": "testbed", "context": context}],
        "current-context": "testbed",
    }


def write_kubeconfig(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, yaml.safe_dump(config, sort_keys=False).encode())
    return path
