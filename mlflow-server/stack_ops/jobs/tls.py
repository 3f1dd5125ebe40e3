"""Prepare nginx's HTTPS certificate (the TLS variant, compose.tls.yaml).

Operator certificates win: `server.crt` (leaf first, then any intermediates)
and `server.key` in the bind-mounted certs directory are validated (readable,
PEM, unencrypted key matching the certificate, currently valid) and handed to
nginx; an optional `ca.crt` next to them is checked against the chain and
published for clients. Without them, a self-signed CA is generated once (kept
in the `tls-ca` volume, reused on every later start) and signs a server
certificate for localhost, 127.0.0.1, nginx and every MLFLOW_PUBLIC_HOSTNAMES
name; the server certificate is reissued when those names change or it nears
expiry. Bad operator input fails the job with one line, before anything is
written, so nginx (which waits for this job) does not start.

Also writes the nginx snippet naming the public HTTPS port, for the HTTP->HTTPS
redirect. Runs as root with only CHOWN/DAC_OVERRIDE/FOWNER: it must read the
operator's key whatever its owner and give nginx's uid 101 the only copy.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stack_ops.common import StackError, die, env, log

JOB = "tls"
OPERATOR_DIR = Path(os.environ.get("TLS_OPERATOR_DIR", "/certs"))
# How the operator knows that folder (the host path compose mounts), for messages.
OPERATOR_LABEL = os.environ.get("TLS_CERTS_DIR", "").strip().rstrip("/") or str(OPERATOR_DIR)
CA_DIR = Path(os.environ.get("TLS_CA_DIR", "/tls-ca"))  # CA key: this job only
SERVER_DIR = Path(os.environ.get("TLS_SERVER_DIR", "/tls"))  # nginx's cert, key, snippet
PUBLIC_DIR = Path(os.environ.get("TLS_PUBLIC_DIR", "/tls-public"))  # ca.crt for clients
NGINX_UID = NGINX_GID = 101
INTERNAL_NAMES = ("localhost", "127.0.0.1", "nginx")
CA_DAYS = 3650
SERVER_DAYS = 397  # under the 398-day ceiling browsers enforce
RENEW_BEFORE = dt.timedelta(days=30)
CERTIFI_BUNDLE_HINT = "the public CA bundle (certifi)"


def key_usage(ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; the server certificate only signs its handshakes."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- settings -----------------------------------------------------------------


def https_port() -> int:
    value = env("HTTPS_PORT", "8443")
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise StackError(f"HTTPS_PORT={value} is not a port number (1-65535)")
    return int(value)


def server_names() -> list[str]:
    names = [h.strip().lower() for h in env("MLFLOW_PUBLIC_HOSTNAMES", "localhost,127.0.0.1").split(",")]
    return list(dict.fromkeys([n for n in names if n] + list(INTERNAL_NAMES)))


def general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def san_names(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {n.lower() for n in ext.get_values_for_type(x509.DNSName)} | {
        str(ip) for ip in ext.get_values_for_type(x509.IPAddress)
    }


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def same_key(cert: x509.Certificate, key) -> bool:
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


# --- files ----------------------------------------------------------------------


def write(path: Path, data: bytes, mode: int, uid: int = 0, gid: int = 0) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chown(tmp, uid, gid)
    tmp.chmod(mode)
    tmp.replace(path)


def prepare_dir(path: Path, mode: int, gid: int = 0) -> None:
    if not path.is_dir():
        raise StackError(f"{path} is not a directory: mount its volume there (compose.tls.yaml does)")
    os.chown(path, 0, gid)
    path.chmod(mode)


def shown(path: Path) -> str:
    """An operator file as the operator names it (the host folder, not /certs)."""
    return f"{OPERATOR_LABEL}/{path.name}"


def read_operator_file(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StackError(f"cannot read {shown(path)}: {e.strerror}") from None
    if not data.strip():
        raise StackError(f"{shown(path)} is empty")
    return data


def pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def pem_cert(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


# --- operator certificates ------------------------------------------------------


@dataclass(frozen=True)
class Material:
    chain: bytes  # PEM, leaf first
    key: bytes  # PEM, unencrypted
    public_ca: bytes  # what clients should trust, PEM
    leaf: x509.Certificate
    source: str


def load_operator() -> Material | None:
    crt_path, key_path, ca_path = OPERATOR_DIR / "server.crt", OPERATOR_DIR / "server.key", OPERATOR_DIR / "ca.crt"
    present = [p for p in (crt_path, key_path) if p.exists() or p.is_symlink()]
    if not present:
        return None
    if len(present) == 1:
        missing = key_path if present[0] == crt_path else crt_path
        raise StackError(
            f"{shown(present[0])} is there but {shown(missing)} is not: supply both, or neither to use the generated CA"
        )
    crt_data, key_data = read_operator_file(crt_path), read_operator_file(key_path)
    try:
        chain = x509.load_pem_x509_certificates(crt_data)
    except ValueError:
        raise StackError(f"{shown(crt_path)} is not a PEM certificate (-----BEGIN CERTIFICATE-----)") from None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise StackError(f"{shown(key_path)} is encrypted: nginx needs it without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        raise StackError(f"{shown(key_path)} is not a PEM private key (-----BEGIN ... PRIVATE KEY-----)") from None
    leaf = chain[0]
    if not same_key(leaf, key):
        raise StackError(
            f"{shown(key_path)} does not match {shown(crt_path)} (different public keys): "
            "supply the key of that certificate"
        )
    t = now()
    if leaf.not_valid_after_utc <= t:
        raise StackError(f"{shown(crt_path)} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: renew it")
    if leaf.not_valid_before_utc > t:
        raise StackError(f"{shown(crt_path)} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if ca_path.exists():
        ca_data = read_operator_file(ca_path)
        try:
            x509.load_pem_x509_certificates(ca_data)
        except ValueError:
            raise StackError(f"{shown(ca_path)} is not a PEM certificate") from None
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", str(ca_path), "-untrusted", str(crt_path), str(crt_path)],
            capture_output=True,
            text=True,
        )
        if verify.returncode != 0:
            lines = (verify.stderr + verify.stdout).strip().splitlines()
            reason = [line for line in lines if "depth lookup" in line] or lines
            raise StackError(
                f"{shown(crt_path)} does not chain to {shown(ca_path)}: "
                + (reason[-1] if reason else "openssl verify failed")
            )
        public_ca, source = ca_data, f"operator ({ca_path.name} published for clients)"
    else:
        import certifi

        public_ca, source = Path(certifi.where()).read_bytes(), f"operator (no ca.crt: {CERTIFI_BUNDLE_HINT} published)"
    missing = [n for n in server_names() if n not in san_names(leaf)]
    if missing:
        log(
            JOB,
            f"warning: {crt_path.name} does not cover {', '.join(missing)}: clients using those names will be refused",
        )
    return Material(pem_cert(*chain), pem_key(key), public_ca, leaf, source)


# --- the generated CA --------------------------------------------------------------


def load_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    crt_path, key_path = CA_DIR / "ca.crt", CA_DIR / "ca.key"
    if not (crt_path.exists() and key_path.exists()):
        return None
    cert = x509.load_pem_x509_certificate(crt_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not same_key(cert, key) or cert.not_valid_after_utc <= now() + RENEW_BEFORE:
        log(
            JOB,
            "the stored CA is unusable or about to expire: generating a new one (clients must fetch the new ca.crt)",
        )
        return None
    return cert, key


def generate_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mlflow-stack"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"mlflow-stack local CA {secrets.token_hex(4)}"),
        ]
    )
    t = now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(t - dt.timedelta(minutes=5))
        .not_valid_after(t + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            key_usage(ca=True),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    write(CA_DIR / "ca.key", pem_key(key), 0o400)
    write(CA_DIR / "ca.crt", pem_cert(cert), 0o444)
    log(JOB, f"generated a new CA: {cert.subject.rfc4514_string()}")
    return cert, key


def current_server(ca: x509.Certificate, names: list[str]) -> Material | None:
    """The server certificate already in the volume, if this CA issued it for these names and it is not due."""
    crt_path, key_path = SERVER_DIR / "server.crt", SERVER_DIR / "server.key"
    if not (crt_path.exists() and key_path.exists()):
        return None
    try:
        leaf = x509.load_pem_x509_certificate(crt_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return None
    if san_names(leaf) != set(names) or not same_key(leaf, key) or leaf.not_valid_after_utc <= now() + RENEW_BEFORE:
        return None
    return Material(crt_path.read_bytes(), key_path.read_bytes(), pem_cert(ca), leaf, "generated CA (kept)")


def issue_server(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, names: list[str]) -> Material:
    key = ec.generate_private_key(ec.SECP256R1())
    t = now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(t - dt.timedelta(minutes=5))
        .not_valid_after(min(t + dt.timedelta(days=SERVER_DAYS), ca.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([general_name(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            key_usage(ca=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Material(pem_cert(cert), pem_key(key), pem_cert(ca), cert, "generated CA (new server certificate)")


def self_signed(names: list[str]) -> tuple[Material, x509.Certificate]:
    loaded = load_ca()
    ca, ca_key = loaded if loaded else generate_ca()
    material = current_server(ca, names) if loaded else None
    return (material or issue_server(ca, ca_key, names)), ca


# --- main ---------------------------------------------------------------------------


def publish(material: Material, port: int) -> None:
    """Hand nginx its certificate and key (key readable by uid 101 only) and clients the CA."""
    write(SERVER_DIR / "server.key", material.key, 0o400, NGINX_UID, NGINX_GID)
    write(SERVER_DIR / "server.crt", material.chain, 0o444)
    suffix = "" if port == 443 else f":{port}"
    snippet = f'# Generated by the tls job from HTTPS_PORT (the redirect target).\nset $https_port_suffix "{suffix}";\n'
    write(SERVER_DIR / "https-port.conf", snippet.encode(), 0o444)
    write(PUBLIC_DIR / "ca.crt", material.public_ca, 0o444)


def main() -> int:
    try:
        port = https_port()
        names = server_names()
        # Preflight: validate the operator's files before writing anything.
        material = load_operator()
        prepare_dir(SERVER_DIR, 0o750, NGINX_GID)
        prepare_dir(PUBLIC_DIR, 0o755)
        ca = None
        if material is None:
            prepare_dir(CA_DIR, 0o700)
            material, ca = self_signed(names)
        publish(material, port)
    except StackError as e:
        return die(JOB, str(e))
    except OSError as e:
        return die(JOB, f"cannot write {e.filename}: {e.strerror}")

    leaf = material.leaf
    covered = ", ".join(sorted(san_names(leaf))) or leaf.subject.rfc4514_string()
    log(
        JOB,
        f"server certificate from the {material.source}: {covered}, valid until {leaf.not_valid_after_utc:%Y-%m-%d}",
    )
    if ca is not None:
        log(JOB, f"clients trust ca.crt ({ca.subject.rfc4514_string()}), SHA-256 {fingerprint(ca)}")
    log(JOB, f"HTTPS on port {port}; HTTP redirects there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
