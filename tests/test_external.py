"""compose.external.yaml: the stack on a PostgreSQL and an S3 store it does not run.

The module plays "managed services" on a Docker network of its own: a
PostgreSQL (the stack's postgres image) that accepts TLS connections only,
with a certificate from a CA made here for the name `managed-pg`, and a
SeaweedFS whose bucket exists beforehand and whose credentials for the stack
may read, write and list that bucket but not create buckets. The stack comes
up beside them as its own project with the overlay (no postgres, no s3
container), with its credentials and the CA from a folder of files, non-default
database and role names and an explicit region. A user then sees the tracking
and artifact round trips, gc, a backup and a restore work through them, and a
wrong CA stop `migrate` with a message saying what to check.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stack import ROOT, Stack, free_port, unique, wait_for

pytestmark = pytest.mark.slow  # its own services and stack: `-m "not slow"` leaves it out

PG_HOST = "managed-pg"  # the name in the database's certificate and on the network
S3_HOST = "managed-s3"
REGION = "eu-central-2"
# Non-default names: the settings reach every container and the backup.
TRACKING_DB, TRACKING_USER = "tracking", "tracker"
AUTH_DB, AUTH_USER = "accounts", "gatekeeper"
PG_IMAGE = os.environ.get("POSTGRES_IMAGE", "postgres:17.6-bookworm")
S3_IMAGE = os.environ.get("SEAWEEDFS_IMAGE", "chrislusf/seaweedfs:4.48")


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:4])} failed: {proc.stderr.strip()[-1500:]}")
    return proc


def password() -> str:
    return secrets.token_urlsafe(24)


def make_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def server_cert(ca_key, ca_cert, host: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for `host`, signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def world_readable(folder: Path) -> Path:
    """The managed services' containers run as their own users: they read these files."""
    folder.chmod(0o755)
    for p in folder.iterdir():
        p.chmod(0o644)
    return folder


def owned_by_stack(folder: Path) -> Path:
    """How docs/operations.md says to keep the credential folder: uid 10001 only."""
    for p in [folder, *folder.iterdir()]:
        if os.geteuid() == 0:
            os.chown(p, 10001, 10001)
            p.chmod(0o700 if p.is_dir() else 0o400)
        else:  # not root: readable by all, the best this user can do
            p.chmod(0o755 if p.is_dir() else 0o644)
    return folder


PG_INIT = """
# Runs once, as postgres, on the empty data directory (the image's initdb hook).
cp /managed/server.crt /managed/server.key "$PGDATA"/
chmod 600 "$PGDATA/server.key"
cat >> "$PGDATA/postgresql.conf" <<EOF
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
EOF
# TCP clients: TLS or nothing.
cat > "$PGDATA/pg_hba.conf" <<EOF
local all all trust
hostssl all all all scram-sha-256
hostnossl all all all reject
EOF
psql -v ON_ERROR_STOP=1 -U postgres -d postgres -f /managed/roles.sql
"""


@dataclass
class Managed:
    network: str
    pg: str  # container names
    s3: str
    bucket: str
    secrets_dir: Path
    wrong_ca: Path

    def pg_sql(self, db: str, query: str) -> str:
        """A query as the superuser, over the container's socket (not the stack's way in)."""
        out = docker("exec", self.pg, "psql", "-U", "postgres", "-d", db, "-tAc", query).stdout
        return out.strip()

    def s3_object(self, key: str) -> bytes | None:
        """An object's bytes as the store itself holds them (its filer), or None."""
        proc = subprocess.run(
            ["docker", "exec", self.s3, "wget", "-q", "-O", "-", f"http://127.0.0.1:8888/buckets/{self.bucket}/{key}"],
            capture_output=True,
            timeout=60,
        )
        return proc.stdout if proc.returncode == 0 else None


def start_managed(tmp: Path) -> Managed:
    tag = secrets.token_hex(3)
    m = Managed(
        network=f"extnet{tag}",
        pg=f"extpg{tag}",
        s3=f"exts3{tag}",
        bucket=f"managed-{tag}",
        secrets_dir=tmp / "credentials",
        wrong_ca=tmp / "wrong" / "ca.crt",
    )
    ca_key, ca = make_ca("managed postgres CA")
    crt, key = server_cert(ca_key, ca, PG_HOST)
    _, other = make_ca("some other CA")
    creds = {
        "mlflow_db_password": password(),
        "auth_db_password": password(),
        "s3_access_key": "STACK" + secrets.token_hex(8).upper(),
        "s3_secret_key": password(),
    }
    admin_key, admin_secret = "ADMIN" + secrets.token_hex(8).upper(), password()

    pg_dir = tmp / "pg"
    pg_dir.mkdir()
    (pg_dir / "server.crt").write_bytes(crt)
    (pg_dir / "server.key").write_bytes(key)
    (pg_dir / "init.sh").write_text(PG_INIT)
    (pg_dir / "roles.sql").write_text(
        f"CREATE ROLE {TRACKING_USER} LOGIN PASSWORD '{creds['mlflow_db_password']}';\n"
        f"CREATE ROLE {AUTH_USER} LOGIN PASSWORD '{creds['auth_db_password']}';\n"
        f"CREATE DATABASE {TRACKING_DB} OWNER {TRACKING_USER};\n"
        f"CREATE DATABASE {AUTH_DB} OWNER {AUTH_USER};\n"
        f"REVOKE ALL ON DATABASE {TRACKING_DB} FROM PUBLIC;\n"
        f"REVOKE ALL ON DATABASE {AUTH_DB} FROM PUBLIC;\n"
    )
    world_readable(pg_dir)

    # The stack's identity may use its bucket, not create buckets.
    s3_dir = tmp / "s3"
    s3_dir.mkdir()
    scoped = [f"{a}:{m.bucket}" for a in ("Read", "Write", "List", "Tagging")]
    identities = [
        {"name": "admin", "credentials": [{"accessKey": admin_key, "secretKey": admin_secret}], "actions": ["Admin"]},
        {
            "name": "mlflow",
            "credentials": [{"accessKey": creds["s3_access_key"], "secretKey": creds["s3_secret_key"]}],
            "actions": scoped,
        },
    ]
    (s3_dir / "s3.json").write_text(json.dumps({"identities": identities}))
    world_readable(s3_dir)

    m.secrets_dir.mkdir()
    for name, value in creds.items():
        (m.secrets_dir / name).write_text(value + "\n")
    (m.secrets_dir / "postgres_ca.crt").write_bytes(pem(ca))
    owned_by_stack(m.secrets_dir)
    m.wrong_ca.parent.mkdir()
    m.wrong_ca.write_bytes(pem(other))
    world_readable(m.wrong_ca.parent)

    docker("network", "create", m.network)
    docker(
        "run", "--detach", "--name", m.pg, "--network", m.network, "--network-alias", PG_HOST,
        "-e", f"POSTGRES_PASSWORD={password()}",
        "-v", f"{pg_dir}:/managed:ro", "-v", f"{pg_dir / 'init.sh'}:/docker-entrypoint-initdb.d/10-managed.sh:ro",
        PG_IMAGE,
    )  # fmt: skip
    docker(
        "run", "--detach", "--name", m.s3, "--network", m.network, "--network-alias", S3_HOST,
        "--user", "1000:1000", "-v", f"{s3_dir}:/managed:ro",
        "--entrypoint", "weed", S3_IMAGE,
        "mini", "-dir=/data", "-ip.bind=0.0.0.0", "-s3.port=8333", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
        "-s3.config=/managed/s3.json", f"-bucket={m.bucket}",
    )  # fmt: skip

    def pg_ready() -> bool:
        # TCP on the container's own address: the init-time server only has the socket.
        ready = docker("exec", m.pg, "pg_isready", "-h", "127.0.0.1", "-U", "postgres", check=False)
        return ready.returncode == 0

    wait_for("the managed PostgreSQL accepting connections", pg_ready, timeout=120)

    def bucket_exists() -> bool:
        listing = subprocess.run(
            ["docker", "exec", m.s3, "wget", "-q", "-O", "-", "--header", "Accept: application/json",
             "http://127.0.0.1:8888/buckets/"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return f'"/buckets/{m.bucket}"' in listing.stdout

    wait_for(f"the managed S3 store's bucket {m.bucket}", bucket_exists, timeout=120)
    return m


def stop_managed(m: Managed) -> None:
    for container in (m.pg, m.s3):
        docker("rm", "--force", "--volumes", container, check=False)
    docker("network", "rm", m.network, check=False)


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Managed]:
    m = start_managed(tmp_path_factory.mktemp("managed"))
    try:
        yield m
    finally:
        stop_managed(m)


def external_env(m: Managed) -> dict[str, str]:
    files = os.environ.get("COMPOSE_FILE") or "compose.yaml"
    return {
        "COMPOSE_FILE": f"{files}:compose.external.yaml",
        "HTTP_BIND": "127.0.0.1",
        "POSTGRES_HOST": PG_HOST,
        "MLFLOW_DB_NAME": TRACKING_DB,
        "MLFLOW_DB_USER": TRACKING_USER,
        "MLFLOW_AUTH_DB_NAME": AUTH_DB,
        "MLFLOW_AUTH_DB_USER": AUTH_USER,
        "S3_ENDPOINT_URL": f"http://{S3_HOST}:8333",
        "S3_REGION": REGION,
        "S3_BUCKET": m.bucket,
        "EXTERNAL_SECRETS_DIR": str(m.secrets_dir),
        "EXTERNAL_NETWORK": m.network,
        # One small server: this stack runs beside the suite's own.
        "MLFLOW_WORKERS": "1",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }


@pytest.fixture(scope="module")
def ext(managed: Managed) -> Iterator[Stack]:
    s = Stack(project=unique("extstack").replace("-", ""), port=free_port(), env=external_env(managed))
    s.env["HTTP_PORT"] = str(s.port)
    with s.session("nginx", "gc", timeout=600):
        yield s


@pytest.fixture
def client(ext: Stack, monkeypatch) -> mlflow.MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ext.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ext.secret("mlflow_admin_password"))
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    return mlflow.MlflowClient()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_missing_setting_fails_at_once_with_its_name() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("POSTGRES_HOST", "COMPOSE_FILE")}
    # Everything else is set: only the database's host is missing.
    env.update(S3_ENDPOINT_URL="https://s3.example.com", EXTERNAL_SECRETS_DIR="/nonexistent", EXTERNAL_NETWORK="none")
    proc = subprocess.run(
        [
            "docker",
            "compose",
            "-p",
            unique("extmissing"),
            "-f",
            "compose.yaml",
            "-f",
            "compose.external.yaml",
            "up",
            "--detach",
            "--wait",
            "--no-build",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "needs POSTGRES_HOST, your PostgreSQL's host name" in proc.stderr, proc.stderr


def test_no_bundled_store_runs_and_the_jobs_used_the_external_ones(ext: Stack, managed: Managed) -> None:
    services = {c["Service"]: c for c in ext.containers()}
    assert "postgres" not in services and "s3" not in services, sorted(services)
    for job in ("secrets", "bucket", "migrate", "accounts"):
        assert services[job]["State"] == "exited" and int(services[job]["ExitCode"]) == 0, services[job]
    # The bucket existed, and these credentials may not create one: the job
    # only looked (head_bucket), it never tried to create it.
    assert f"bucket '{managed.bucket}' exists at http://{S3_HOST}:8333" in ext.logs("bucket")
    assert "PostgreSQL at managed-pg:5432 answers (TLS)" in ext.logs("migrate")
    # The schemas and the trainer's account are in the managed databases.
    assert managed.pg_sql(TRACKING_DB, "SELECT count(*) FROM alembic_version") == "1"
    assert managed.pg_sql(AUTH_DB, "SELECT username FROM users WHERE username = 'trainer'") == "trainer"
    # The operator's account command reaches the external user store too.
    listed = ext.script("users", "list")
    assert listed.returncode == 0 and "trainer" in listed.stdout, listed.stdout + listed.stderr


def test_every_connection_is_verified_tls(ext: Stack, managed: Managed, client: mlflow.MlflowClient) -> None:
    client.search_experiments(max_results=1)  # the server holds pooled connections now
    rows = managed.pg_sql(
        "postgres",
        "SELECT a.usename, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
        f"WHERE a.usename IN ('{TRACKING_USER}', '{AUTH_USER}') ORDER BY 1, 2",
    ).splitlines()
    users = {line.split("|")[0] for line in rows}
    assert users == {TRACKING_USER, AUTH_USER}, rows
    assert all(line.endswith("|t") for line in rows), rows
    # The same job with another CA refuses the server's certificate, at once
    # and saying what to check.
    proc = ext.compose(
        "run", "--rm", "--no-deps", "-T",
        "-e", "POSTGRES_SSLROOTCERT=/wrong/ca.crt", "-v", f"{managed.wrong_ca.parent}:/wrong:ro",
        "migrate", check=False, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "TLS to PostgreSQL failed" in proc.stderr and "certificate verify failed" in proc.stderr, proc.stderr


def test_tracking_and_artifacts_round_trip(
    ext: Stack, managed: Managed, client: mlflow.MlflowClient, tmp_path: Path
) -> None:
    experiment = client.create_experiment(unique("external"))
    run = client.create_run(experiment).info.run_id
    client.log_param(run, "store", "managed")
    for step, value in enumerate((0.5, 0.7, 0.9)):
        client.log_metric(run, "auc", value, step=step)
    data = secrets.token_bytes(3 << 20)
    (tmp_path / "weights.bin").write_bytes(data)
    client.log_artifact(run, str(tmp_path / "weights.bin"), "model")
    client.set_terminated(run)

    fetched = client.get_run(run)
    assert fetched.data.params == {"store": "managed"}
    assert [m.value for m in client.get_metric_history(run, "auc")] == [0.5, 0.7, 0.9]
    assert managed.pg_sql(TRACKING_DB, f"SELECT count(*) FROM metrics WHERE run_uuid = '{run}'") == "3"

    down = Path(client.download_artifacts(run, "model/weights.bin", str(tmp_path / "down")))
    assert sha256(down.read_bytes()) == sha256(data)
    # In the external bucket itself, byte for byte.
    key = f"{experiment}/{run}/artifacts/model/weights.bin"
    stored = managed.s3_object(key)
    assert stored is not None and sha256(stored) == sha256(data), key


def test_gc_purges_rows_and_artifacts_in_the_external_stores(
    ext: Stack, managed: Managed, client: mlflow.MlflowClient, tmp_path: Path
) -> None:
    experiment = client.create_experiment(unique("gc"))
    run = client.create_run(experiment).info.run_id
    (tmp_path / "old.txt").write_text("to be purged")
    client.log_artifact(run, str(tmp_path / "old.txt"))
    key = f"{experiment}/{run}/artifacts/old.txt"
    assert managed.s3_object(key) == b"to be purged"
    client.delete_run(run)
    ext.compose("exec", "-T", "gc", "/opt/stack/entrypoint.sh", "gc", "--once", "--older-than", "0s", timeout=300)
    assert managed.pg_sql(TRACKING_DB, f"SELECT count(*) FROM runs WHERE run_uuid = '{run}'") == "0"
    assert managed.s3_object(key) is None


def test_backup_and_restore_through_the_external_services(
    ext: Stack, managed: Managed, client: mlflow.MlflowClient, tmp_path: Path
) -> None:
    experiment = client.create_experiment(unique("backup"))
    run = client.create_run(experiment).info.run_id
    client.log_metric(run, "loss", 0.25)
    data = secrets.token_bytes(1 << 20)
    (tmp_path / "table.bin").write_bytes(data)
    client.log_artifact(run, str(tmp_path / "table.bin"))

    made = ext.script("backup", "--out", str(tmp_path / "archives"))
    assert made.returncode == 0, made.stdout + made.stderr
    archive = next((tmp_path / "archives").glob("mlflow-backup-*.tar.gz"))
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("manifest.json"))
        key = f"{experiment}/{run}/artifacts/table.bin"
        assert sha256(tar.extractfile(f"objects/{key}").read()) == sha256(data)
    assert {"mlflow.dump", "mlflow_auth.dump", "objects.json"} <= names, names
    runs = int(managed.pg_sql(TRACKING_DB, "SELECT count(*) FROM runs"))
    assert manifest["counts"]["runs"] == runs and runs >= 1, manifest["counts"]

    # Lose the run and its file, then restore the archive over the same services.
    client.delete_run(run)
    ext.compose("exec", "-T", "gc", "/opt/stack/entrypoint.sh", "gc", "--once", "--older-than", "0s", timeout=300)
    assert managed.s3_object(key) is None
    restored = ext.script("restore", str(archive), "--force")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "restore verified" in restored.stdout + restored.stderr
    assert client.get_run(run).data.metrics == {"loss": 0.25}
    stored = managed.s3_object(key)
    assert stored is not None and sha256(stored) == sha256(data)
    down = Path(client.download_artifacts(run, "table.bin", str(tmp_path / "down")))
    assert sha256(down.read_bytes()) == sha256(data)
    shutil.rmtree(tmp_path / "archives")
