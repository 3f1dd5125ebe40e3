"""jobs/tls.py: operator certificates checked before use, the generated CA reused,
with certificates made here (cryptography) in tmp folders."""

from __future__ import annotations

import datetime as dt
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stack_ops.common import StackError
from stack_ops.jobs import tls

NOW = dt.datetime.now(dt.UTC)


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return tls.pem_key(self.key)


def issue(
    name: str,
    issuer: Issued | None = None,
    *,
    ca: bool = False,
    sans: list[str] | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - dt.timedelta(days=1))
        .not_valid_after(not_after or NOW + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(tls.key_usage(ca=True), critical=True)
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([tls.general_name(n) for n in sans]), critical=False
        )
    return Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


@pytest.fixture(scope="module")
def pki() -> dict[str, Issued]:
    """A root, an intermediate, and a leaf for the default names, signed in a chain."""
    root = issue("Unit Root CA", ca=True)
    intermediate = issue("Unit Intermediate CA", root, ca=True)
    leaf = issue("mlflow.example.com", intermediate, sans=["mlflow.example.com", "localhost", "127.0.0.1", "nginx"])
    return {"root": root, "intermediate": intermediate, "leaf": leaf}


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The job's four folders in tmp_path, named for messages as the operator's host folder ./certs."""
    folders = {name: tmp_path / name for name in ("certs", "tls-ca", "tls", "tls-public")}
    for path in folders.values():
        path.mkdir()
    monkeypatch.setattr(tls, "OPERATOR_DIR", folders["certs"])
    monkeypatch.setattr(tls, "OPERATOR_LABEL", "./certs")
    monkeypatch.setattr(tls, "CA_DIR", folders["tls-ca"])
    monkeypatch.setattr(tls, "SERVER_DIR", folders["tls"])
    monkeypatch.setattr(tls, "PUBLIC_DIR", folders["tls-public"])
    monkeypatch.setenv("MLFLOW_PUBLIC_HOSTNAMES", "mlflow.example.com")
    monkeypatch.delenv("HTTPS_PORT", raising=False)
    return folders


@pytest.fixture
def owners(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[int, int]]:
    """chown as root would do it, recorded (final file name -> uid, gid), so the tests run as anyone."""
    recorded: dict[str, tuple[int, int]] = {}

    def chown(path, uid: int, gid: int) -> None:
        name = Path(path).name  # tls.write() chowns its temporary file, `.<name>.tmp`
        recorded[name.removeprefix(".").removesuffix(".tmp")] = (uid, gid)

    monkeypatch.setattr(tls.os, "chown", chown)
    return recorded


def operator_files(folder: Path, chain: list[Issued], key: bytes, ca: Issued | None = None) -> None:
    (folder / "server.crt").write_bytes(b"".join(c.pem for c in chain))
    (folder / "server.key").write_bytes(key)
    if ca is not None:
        (folder / "ca.crt").write_bytes(ca.pem)


# --- settings -----------------------------------------------------------------------------


def test_server_names_public_ones_lower_cased_then_the_internal_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_PUBLIC_HOSTNAMES", " MLflow.Example.com, 10.0.0.5,,localhost")
    assert tls.server_names() == ["mlflow.example.com", "10.0.0.5", "localhost", "127.0.0.1", "nginx"]


def test_server_names_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_PUBLIC_HOSTNAMES", raising=False)
    assert tls.server_names() == ["localhost", "127.0.0.1", "nginx"]


@pytest.mark.parametrize(("value", "port"), [(None, 8443), ("443", 443), ("1", 1), ("65535", 65535)])
def test_https_port(monkeypatch: pytest.MonkeyPatch, value: str | None, port: int) -> None:
    if value is None:
        monkeypatch.delenv("HTTPS_PORT", raising=False)
    else:
        monkeypatch.setenv("HTTPS_PORT", value)
    assert tls.https_port() == port


@pytest.mark.parametrize("value", ["0", "65536", "-1", "https", "8443/tcp"])
def test_https_port_refuses_non_ports(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("HTTPS_PORT", value)
    with pytest.raises(StackError, match=rf"^HTTPS_PORT={value} is not a port number \(1-65535\)$"):
        tls.https_port()


# --- certificate checks ---------------------------------------------------------------------


def test_names_and_ip_addresses_in_the_san(pki: dict[str, Issued]) -> None:
    assert isinstance(tls.general_name("10.0.0.5"), x509.IPAddress)
    assert isinstance(tls.general_name("::1"), x509.IPAddress)
    assert isinstance(tls.general_name("mlflow.example.com"), x509.DNSName)
    mixed = issue("x", sans=["MLflow.Example.COM", "10.0.0.5", "::1"])
    assert tls.san_names(mixed.cert) == {"mlflow.example.com", "10.0.0.5", "::1"}
    assert tls.san_names(pki["root"].cert) == set()


def test_same_key(pki: dict[str, Issued]) -> None:
    assert tls.same_key(pki["leaf"].cert, pki["leaf"].key)
    assert not tls.same_key(pki["leaf"].cert, pki["intermediate"].key)


# --- operator certificates ---------------------------------------------------------------------


def test_no_operator_files_means_the_generated_ca(dirs: dict[str, Path]) -> None:
    assert tls.load_operator() is None


def test_operator_chain_with_its_ca_is_used_as_given(dirs: dict[str, Path], pki: dict[str, Issued]) -> None:
    operator_files(dirs["certs"], [pki["leaf"], pki["intermediate"]], pki["leaf"].key_pem, ca=pki["root"])
    material = tls.load_operator()
    assert material is not None
    assert material.chain == pki["leaf"].pem + pki["intermediate"].pem
    assert material.leaf == pki["leaf"].cert
    assert material.public_ca == pki["root"].pem
    assert material.source == "operator (ca.crt published for clients)"
    assert tls.same_key(material.leaf, tls.serialization.load_pem_private_key(material.key, password=None))


def test_operator_chain_without_ca_publishes_the_public_bundle(dirs: dict[str, Path], pki: dict[str, Issued]) -> None:
    import certifi

    operator_files(dirs["certs"], [pki["leaf"], pki["intermediate"]], pki["leaf"].key_pem)
    material = tls.load_operator()
    assert material is not None
    assert material.public_ca == Path(certifi.where()).read_bytes()
    assert "certifi" in material.source


def test_names_the_certificate_does_not_cover_are_warned_about(
    dirs: dict[str, Path], pki: dict[str, Issued], capsys: pytest.CaptureFixture[str]
) -> None:
    leaf = issue("other.example.com", pki["intermediate"], sans=["other.example.com", "localhost"])
    operator_files(dirs["certs"], [leaf, pki["intermediate"]], leaf.key_pem)
    assert tls.load_operator() is not None
    assert (
        "[tls] warning: server.crt does not cover mlflow.example.com, 127.0.0.1, nginx: "
        "clients using those names will be refused" in capsys.readouterr().out
    )


def write_key_only(folder: Path, pki: dict[str, Issued]) -> None:
    (folder / "server.key").write_bytes(pki["leaf"].key_pem)


def write_cert_only(folder: Path, pki: dict[str, Issued]) -> None:
    (folder / "server.crt").write_bytes(pki["leaf"].pem)


def write_empty_key(folder: Path, pki: dict[str, Issued]) -> None:
    operator_files(folder, [pki["leaf"]], b"\n")


def write_garbage_cert(folder: Path, pki: dict[str, Issued]) -> None:
    (folder / "server.crt").write_bytes(b"not a certificate\n")
    (folder / "server.key").write_bytes(pki["leaf"].key_pem)


def write_garbage_key(folder: Path, pki: dict[str, Issued]) -> None:
    operator_files(folder, [pki["leaf"]], b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")


def write_encrypted_key(folder: Path, pki: dict[str, Issued]) -> None:
    encrypted = pki["leaf"].key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    operator_files(folder, [pki["leaf"]], encrypted)


def write_other_key(folder: Path, pki: dict[str, Issued]) -> None:
    operator_files(folder, [pki["leaf"]], pki["intermediate"].key_pem)


def write_expired(folder: Path, pki: dict[str, Issued]) -> None:
    old = issue(
        "old", pki["intermediate"], not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(days=1)
    )
    operator_files(folder, [old], old.key_pem)


def write_future(folder: Path, pki: dict[str, Issued]) -> None:
    new = issue("new", pki["intermediate"], not_before=NOW + dt.timedelta(days=1))
    operator_files(folder, [new], new.key_pem)


def write_unrelated_ca(folder: Path, pki: dict[str, Issued]) -> None:
    operator_files(folder, [pki["leaf"], pki["intermediate"]], pki["leaf"].key_pem, ca=issue("Other CA", ca=True))


def write_garbage_ca(folder: Path, pki: dict[str, Issued]) -> None:
    operator_files(folder, [pki["leaf"], pki["intermediate"]], pki["leaf"].key_pem)
    (folder / "ca.crt").write_bytes(b"garbage\n")


REFUSALS = [
    (write_key_only, r"^\./certs/server\.key is there but \./certs/server\.crt is not: supply both"),
    (write_cert_only, r"^\./certs/server\.crt is there but \./certs/server\.key is not: supply both"),
    (write_empty_key, r"^\./certs/server\.key is empty$"),
    (write_garbage_cert, r"^\./certs/server\.crt is not a PEM certificate"),
    (write_garbage_key, r"^\./certs/server\.key is not a PEM private key"),
    (write_encrypted_key, r"^\./certs/server\.key is encrypted: nginx needs it without a passphrase$"),
    (write_other_key, r"^\./certs/server\.key does not match \./certs/server\.crt \(different public keys\)"),
    (write_expired, r"^\./certs/server\.crt expired on \d{4}-\d\d-\d\d \d\d:\d\d UTC: renew it$"),
    (write_future, r"^\./certs/server\.crt is not valid before \d{4}-\d\d-\d\d \d\d:\d\d UTC$"),
    (write_unrelated_ca, r"^\./certs/server\.crt does not chain to \./certs/ca\.crt: .*unable to get"),
    (write_garbage_ca, r"^\./certs/ca\.crt is not a PEM certificate$"),
]


@pytest.mark.parametrize(
    ("setup", "message"), [pytest.param(*r, id=r[0].__name__.removeprefix("write_")) for r in REFUSALS]
)
def test_bad_operator_files_are_refused_in_one_line(
    dirs: dict[str, Path], pki: dict[str, Issued], setup, message: str
) -> None:
    setup(dirs["certs"], pki)
    with pytest.raises(StackError, match=message) as caught:
        tls.load_operator()
    assert "\n" not in str(caught.value)


def test_a_bad_operator_file_stops_main_before_anything_is_written(
    dirs: dict[str, Path], pki: dict[str, Issued], owners, capsys: pytest.CaptureFixture[str]
) -> None:
    write_other_key(dirs["certs"], pki)
    assert tls.main() == 1
    assert "[tls] error: ./certs/server.key does not match" in capsys.readouterr().err
    assert [p for d in ("tls-ca", "tls", "tls-public") for p in dirs[d].iterdir()] == []


# --- the generated CA, end to end ---------------------------------------------------------------


def served(dirs: dict[str, Path]) -> x509.Certificate:
    return x509.load_pem_x509_certificate((dirs["tls"] / "server.crt").read_bytes())


def test_main_generates_a_ca_and_a_server_certificate(
    dirs: dict[str, Path], owners: dict[str, tuple[int, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert tls.main() == 0
    ca = x509.load_pem_x509_certificate((dirs["tls-ca"] / "ca.crt").read_bytes())
    leaf = served(dirs)
    leaf.verify_directly_issued_by(ca)
    assert tls.san_names(leaf) == {"mlflow.example.com", "localhost", "127.0.0.1", "nginx"}
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(days=398)
    assert (dirs["tls-public"] / "ca.crt").read_bytes() == (dirs["tls-ca"] / "ca.crt").read_bytes()
    key = serialization.load_pem_private_key((dirs["tls"] / "server.key").read_bytes(), password=None)
    assert tls.same_key(leaf, key)
    # Only nginx (uid 101) may read the server key; only this job the CA key.
    assert owners["server.key"] == (101, 101)
    assert stat.S_IMODE((dirs["tls"] / "server.key").stat().st_mode) == 0o400
    assert stat.S_IMODE((dirs["tls-ca"] / "ca.key").stat().st_mode) == 0o400
    assert (dirs["tls"] / "https-port.conf").read_text().endswith('set $https_port_suffix ":8443";\n')
    out = capsys.readouterr().out
    assert "generated a new CA" in out and "clients trust ca.crt" in out


def test_main_keeps_the_ca_and_the_certificate_on_the_next_start(
    dirs: dict[str, Path], owners, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tls.main() == 0
    first_ca, first_leaf = (dirs["tls-ca"] / "ca.crt").read_bytes(), served(dirs)
    capsys.readouterr()
    assert tls.main() == 0
    assert (dirs["tls-ca"] / "ca.crt").read_bytes() == first_ca
    assert served(dirs) == first_leaf
    assert "server certificate from the generated CA (kept)" in capsys.readouterr().out


def test_main_reissues_the_certificate_when_the_names_change(
    dirs: dict[str, Path], owners, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tls.main() == 0
    first_ca, first_leaf = (dirs["tls-ca"] / "ca.crt").read_bytes(), served(dirs)
    monkeypatch.setenv("MLFLOW_PUBLIC_HOSTNAMES", "mlflow.example.com,ml.example.org")
    monkeypatch.setenv("HTTPS_PORT", "443")
    capsys.readouterr()
    assert tls.main() == 0
    assert (dirs["tls-ca"] / "ca.crt").read_bytes() == first_ca  # clients keep trusting the same CA
    assert served(dirs) != first_leaf
    assert "ml.example.org" in tls.san_names(served(dirs))
    assert "new server certificate" in capsys.readouterr().out
    assert (dirs["tls"] / "https-port.conf").read_text().endswith('set $https_port_suffix "";\n')


def test_main_replaces_a_ca_about_to_expire(dirs: dict[str, Path], owners, capsys: pytest.CaptureFixture[str]) -> None:
    old = issue("old local CA", ca=True, not_after=NOW + dt.timedelta(days=10))
    (dirs["tls-ca"] / "ca.crt").write_bytes(old.pem)
    (dirs["tls-ca"] / "ca.key").write_bytes(old.key_pem)
    assert tls.main() == 0
    ca = x509.load_pem_x509_certificate((dirs["tls-ca"] / "ca.crt").read_bytes())
    assert ca != old.cert
    served(dirs).verify_directly_issued_by(ca)
    assert "about to expire: generating a new one" in capsys.readouterr().out


def test_main_serves_the_operator_certificate(
    dirs: dict[str, Path], pki: dict[str, Issued], owners, capsys: pytest.CaptureFixture[str]
) -> None:
    operator_files(dirs["certs"], [pki["leaf"], pki["intermediate"]], pki["leaf"].key_pem, ca=pki["root"])
    assert tls.main() == 0
    assert (dirs["tls"] / "server.crt").read_bytes() == pki["leaf"].pem + pki["intermediate"].pem
    assert (dirs["tls-public"] / "ca.crt").read_bytes() == pki["root"].pem
    assert list(dirs["tls-ca"].iterdir()) == []  # no CA generated
    assert "server certificate from the operator (ca.crt published for clients)" in capsys.readouterr().out
