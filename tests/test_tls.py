"""The TLS variant (compose.tls.yaml) on the suite's live stack.

The module switches the running stack's nginx to HTTPS (the `tls` job, then
nginx with tls.conf) on a free port, checks what a user sees, and switches it
back to plain HTTP for the modules that run after it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import re
import socket
import ssl
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import certifi
import mlflow
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stack import ROOT, Stack, free_port, unique

pytestmark = pytest.mark.slow  # other stacks, restarts: `-m "not slow"` leaves it out

TLS_FILE = str(ROOT / "compose.tls.yaml")
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",
    "Referrer-Policy": "same-origin",
}


@dataclass
class Tls:
    stack: Stack  # the same project, with the TLS variant's compose files
    plain: Stack  # the same project, with its original compose files
    http_port: int
    https_port: int
    ca: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def project_files(stack: Stack) -> list[str]:
    """The compose files the running project was brought up with."""
    out = subprocess.run(
        ["docker", "compose", "ls", "--all", "--format", "json"], capture_output=True, text=True, check=True
    ).stdout
    for project in json.loads(out or "[]"):
        if project["Name"] == stack.project:
            return [f for f in project["ConfigFiles"].split(",") if not f.endswith("compose.tls.yaml")]
    raise AssertionError(f"compose project {stack.project} is not running")


def variant_env(stack: Stack) -> dict[str, str]:
    """What re-creating nginx needs to keep everything else as it is: the same
    published HTTP address and the images the running containers use."""
    env = dict(stack.env)
    bind, port = stack.compose("port", "nginx", "8080").stdout.strip().rsplit(":", 1)
    env.update({"HTTP_BIND": bind.strip("[]"), "HTTP_PORT": port})
    images = {c["Service"]: c["Image"] for c in stack.containers()}
    for service, var in (
        ("nginx", "NGINX_IMAGE"),
        ("mlflow-server", "MLFLOW_SERVER_IMAGE"),
        ("trainer", "TRAINER_IMAGE"),
    ):
        if service in images:
            env[var] = images[service]
    env["COMPOSE_FILE"] = ":".join(project_files(stack))
    return env


def wait_plain_http(stack: Stack) -> None:
    """The front door answers plain HTTP again: no redirect, the API reachable."""
    stack.wait_http_ok("/health", timeout=180)
    r = requests.get(stack.url + "/health", allow_redirects=False, timeout=10)
    assert r.status_code == 200 and r.text.strip() == "OK", (r.status_code, r.headers)


@pytest.fixture(scope="module")
def tls(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    base = variant_env(stack)
    plain = Stack(project=stack.project, port=stack.port, env=base)
    https_port = free_port()
    variant = Stack(
        project=stack.project,
        port=stack.port,
        env={
            **base,
            "COMPOSE_FILE": f"{base['COMPOSE_FILE']}:{TLS_FILE}",
            "HTTPS_PORT": str(https_port),
            "HTTPS_BIND": "127.0.0.1",
        },
    )
    # A sweep in flight would lose its connection when nginx is re-created.
    stack.wait_exited("trainer", timeout=900)
    try:
        variant.compose("up", "--detach", "--wait", "--wait-timeout", "300", "--no-deps", "tls", "nginx")
        # The command docs/security.md gives users to fetch the CA.
        pem = variant.compose("exec", "-T", "nginx", "cat", "/etc/nginx/tls-public/ca.crt").stdout
        assert pem.startswith("-----BEGIN CERTIFICATE-----"), pem[:200]
        ca = tmp_path_factory.mktemp("tls") / "mlflow-ca.crt"
        ca.write_text(pem)
        yield Tls(stack=variant, plain=plain, http_port=stack.port, https_port=https_port, ca=ca)
    finally:
        plain.compose("up", "--detach", "--wait", "--wait-timeout", "300", "--no-deps", "nginx", check=False)
        variant.compose("rm", "--force", "--stop", "tls", check=False)
        wait_plain_http(stack)


def test_https_with_the_ca_serves_the_api(tls: Tls, admin: tuple[str, str]) -> None:
    r = requests.get(tls.url + SEARCH, auth=admin, verify=str(tls.ca), timeout=30)
    assert r.status_code == 200, r.text
    assert "experiments" in r.json()
    # Without credentials, still refused (basic auth unchanged behind TLS).
    assert requests.get(tls.url + SEARCH, verify=str(tls.ca), timeout=30).status_code == 401


def test_certificate_names_and_protocol(tls: Tls) -> None:
    context = ssl.create_default_context(cafile=str(tls.ca))
    with socket.create_connection(("127.0.0.1", tls.https_port), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            assert conn.version() in ("TLSv1.2", "TLSv1.3")
            cert = conn.getpeercert()
    sans = {value for _, value in cert["subjectAltName"]}
    assert {"localhost", "127.0.0.1", "nginx"} <= sans, sans
    # TLS 1.1 and older are refused by the server (the client offers them:
    # security level 0 lifts OpenSSL's own client-side floor).
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(str(tls.ca))
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", tls.https_port), timeout=30) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            old.wrap_socket(raw, server_hostname="localhost")


def test_client_not_trusting_the_ca_is_refused(tls: Tls, admin: tuple[str, str]) -> None:
    # The public CAs only (what a fresh laptop trusts).
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(tls.url + SEARCH, auth=admin, verify=certifi.where(), timeout=30)


def test_http_redirects_to_the_https_port(tls: Tls, admin: tuple[str, str]) -> None:
    for method in ("GET", "POST"):
        r = requests.request(method, tls.http_url + SEARCH, auth=admin, allow_redirects=False, timeout=30)
        assert r.status_code in (301, 308), (method, r.status_code)
        assert r.headers["Location"] == tls.url + SEARCH
    # Followed with the CA, the redirect lands on the API.
    # (verify per request: a Session's verify loses to REQUESTS_CA_BUNDLE.)
    r = requests.get(tls.http_url + SEARCH, auth=admin, verify=str(tls.ca), timeout=30)
    assert r.url == tls.url + SEARCH and r.history[0].status_code in (301, 308)
    # nginx's own health check stays on plain HTTP (the container's health check).
    r = requests.get(tls.http_url + "/nginx-health", allow_redirects=False, timeout=30)
    assert (r.status_code, r.text.strip()) == (200, "OK")


@pytest.mark.parametrize("path", ["/", SEARCH, "/nginx-health"])
def test_hsts_and_security_headers(tls: Tls, path: str) -> None:
    r = requests.get(tls.url + path, verify=str(tls.ca), timeout=30)  # 200 or 401: headers either way
    hsts = r.headers.get("Strict-Transport-Security", "")
    match = re.fullmatch(r"max-age=(\d+)(;.*)?", hsts.strip())
    assert match and int(match.group(1)) >= 180 * 24 * 3600, (path, hsts)
    for name, value in SECURITY_HEADERS.items():
        # (MLflow sends some of them too: "nosniff, nosniff" is still nosniff.)
        values = {v.strip() for v in r.headers.get(name, "").split(",")}
        assert values == {value}, (path, name, r.headers)


def test_mlflow_client_logs_and_reads_back(
    tls: Tls, admin: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tls.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin[1])
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(tls.ca))
    monkeypatch.delenv("MLFLOW_TRACKING_INSECURE_TLS", raising=False)
    client = mlflow.MlflowClient(tracking_uri=tls.url)
    experiment_id = client.create_experiment(unique("tls"))
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "auc_roc", 0.8765, step=3)
    history = client.get_metric_history(run.info.run_id, "auc_roc")
    assert [(m.value, m.step) for m in history] == [(0.8765, 3)]
    # An artifact round trip goes through the HTTPS proxy too.
    payload = tmp_path / "payload.bin"
    payload.write_bytes(bytes(range(256)) * 4096)
    client.log_artifact(run.info.run_id, str(payload))
    out = Path(client.download_artifacts(run.info.run_id, "payload.bin", str(tmp_path / "down")))
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(payload.read_bytes()).hexdigest()


def test_trainer_runs_over_https(tls: Tls) -> None:
    proc = tls.stack.compose("run", "--rm", "--no-deps", "trainer", check=False, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[bankchurn] done:" in proc.stdout, proc.stdout
    # It reached nginx through https://nginx:8443, trusting only the published CA.
    env = tls.stack.compose("run", "--rm", "--no-deps", "--entrypoint", "env", "trainer").stdout
    assert "MLFLOW_TRACKING_URI=https://nginx:8443" in env


def make_certificate(
    names: list[str],
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    is_ca: bool = False,
    days: int = 30,
) -> x509.Certificate:
    """A certificate for `names` (the first is the CN), self-signed or signed by `issuer`."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = dt.datetime.now(dt.UTC)
    sans = [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n) for n in names]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=abs(days) + 1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if not is_ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_mismatched_operator_key_fails_the_job_and_keeps_nginx_down(
    tls: Tls, admin: tuple[str, str], tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "server.crt").write_bytes(pem(make_certificate(["localhost"], ec.generate_private_key(ec.SECP256R1()))))
    (certs / "server.key").write_bytes(pem_key(ec.generate_private_key(ec.SECP256R1())))
    bad = Stack(project=tls.stack.project, port=tls.stack.port, env={**tls.stack.env, "TLS_CERTS_DIR": str(certs)})
    try:
        # The job alone: one clear line, a failure exit code.
        job = bad.compose("run", "--rm", "--no-deps", "tls", check=False)
        assert job.returncode != 0
        errors = [line for line in job.stderr.splitlines() if line.startswith("[tls] error:")]
        assert len(errors) == 1 and "server.key does not match" in errors[0] and str(certs) in errors[0], job.stderr
        # Starting nginx behind it: `up` fails and nginx stays down.
        bad.compose("stop", "nginx")
        up = bad.compose("up", "--detach", "--wait", "--wait-timeout", "300", "--no-deps", "tls", "nginx", check=False)
        assert up.returncode != 0, up.stdout + up.stderr
        states = {c["Service"]: c["State"] for c in bad.containers()}
        assert states.get("nginx") != "running", states
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(tls.url + "/nginx-health", verify=str(tls.ca), timeout=10)
    finally:
        tls.stack.compose("up", "--detach", "--wait", "--wait-timeout", "300", "--no-deps", "tls", "nginx")
    # Back on the generated CA, unchanged: the failed run wrote nothing.
    r = requests.get(tls.url + SEARCH, auth=admin, verify=str(tls.ca), timeout=30)
    assert r.status_code == 200, r.text


BAD_INPUT = {
    "expired": (
        "server.crt expired on",
        lambda key: {"server.crt": pem(make_certificate(["localhost"], key, days=-2))},
    ),
    "certificate only": ("server.key is not", lambda key: {"server.crt": pem(make_certificate(["localhost"], key))}),
    "encrypted key": (
        "server.key is encrypted",
        lambda key: {
            "server.crt": pem(make_certificate(["localhost"], key)),
            "server.key": key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"a passphrase"),
            ),
        },
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_operator_input_fails_the_job_with_one_line(tls: Tls, tmp_path: Path, case: str) -> None:
    expected, files = BAD_INPUT[case]
    key = ec.generate_private_key(ec.SECP256R1())
    certs = tmp_path / "certs"
    certs.mkdir()
    for name, data in {"server.key": pem_key(key), **files(key)}.items():
        (certs / name).write_bytes(data)
    if case == "certificate only":
        (certs / "server.key").unlink()
    bad = Stack(project=tls.stack.project, port=tls.stack.port, env={**tls.stack.env, "TLS_CERTS_DIR": str(certs)})
    job = bad.compose("run", "--rm", "--no-deps", "tls", check=False)
    assert job.returncode != 0
    errors = [line for line in job.stderr.splitlines() if line.startswith("[tls] error:")]
    assert len(errors) == 1 and expected in errors[0], job.stderr


def test_operator_certificate_is_served(tls: Tls, admin: tuple[str, str], tmp_path: Path) -> None:
    """The operator's own certificate (from a private CA) replaces the generated one, and back."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = make_certificate(["operator test root"], ca_key, is_ca=True)
    leaf = make_certificate(["localhost", "127.0.0.1", "nginx"], key, issuer=(ca, ca_key))
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "server.crt").write_bytes(pem(leaf))
    (certs / "server.key").write_bytes(pem_key(key))
    (certs / "ca.crt").write_bytes(pem(ca))
    for f in certs.iterdir():
        f.chmod(0o600)  # the operator's own permissions: the job reads them anyway
    operator_ca = tmp_path / "operator-ca.crt"
    operator_ca.write_bytes(pem(ca))
    own = Stack(project=tls.stack.project, port=tls.stack.port, env={**tls.stack.env, "TLS_CERTS_DIR": str(certs)})
    up = ("up", "--detach", "--wait", "--wait-timeout", "300", "--no-deps", "--force-recreate", "tls", "nginx")
    try:
        own.compose(*up)
        r = requests.get(tls.url + SEARCH, auth=admin, verify=str(operator_ca), timeout=30)
        assert r.status_code == 200, r.text
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(tls.url + SEARCH, verify=str(tls.ca), timeout=30)
        published = own.compose("exec", "-T", "nginx", "cat", "/etc/nginx/tls-public/ca.crt").stdout
        assert published.encode() == pem(ca)
    finally:
        tls.stack.compose(*up)
    # Without operator files, the generated CA (kept in its volume) is back.
    r = requests.get(tls.url + SEARCH, auth=admin, verify=str(tls.ca), timeout=30)
    assert r.status_code == 200, r.text
