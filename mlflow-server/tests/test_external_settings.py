"""compose.external.yaml's logic, without Docker: the database URIs with libpq's
TLS settings, the operator's credential files in the secrets job, migrate's
reading of connection errors, the bucket job's create arguments, and how the
backup runs its PostgreSQL client with and without a bundled postgres."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import stack_backup
from sqlalchemy.engine import make_url

from stack_ops.common import Settings, StackError
from stack_ops.jobs import bucket, migrate
from stack_ops.jobs import secrets as job

PASSWORD = "Zq7-tracking-password/with%odd:chars"


def settings(**changes: str) -> Settings:
    base = {
        "postgres_host": "db.example.internal",
        "postgres_port": "6432",
        "tracking_db": "tracking",
        "tracking_user": "tracker",
        "auth_db": "accounts",
        "auth_user": "gatekeeper",
        "s3_endpoint": "https://s3.eu-central-2.example.com",
        "bucket": "artifacts",
    }
    return Settings(**{**base, **changes})


def test_without_sslmode_the_uri_is_the_bundled_stack_s() -> None:
    uri = settings()._pg_uri("tracker", PASSWORD, "tracking")
    assert "?" not in uri
    url = make_url(uri)
    assert (url.drivername, url.username, url.password) == ("postgresql+psycopg2", "tracker", PASSWORD)
    assert (url.host, url.port, url.database) == ("db.example.internal", 6432, "tracking")


def test_verify_full_with_a_ca_file_reaches_the_driver(tmp_path: Path) -> None:
    ca = tmp_path / "postgres_ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    uri = settings(postgres_sslmode="verify-full", postgres_sslrootcert=str(ca))._pg_uri("tracker", PASSWORD, "t")
    # SQLAlchemy hands the query to psycopg2.connect as keyword arguments
    # (app.py's listener reads the same query).
    assert dict(make_url(uri).query) == {"sslmode": "verify-full", "sslrootcert": str(ca)}
    assert make_url(uri).password == PASSWORD
    assert parse_qs(urlsplit(uri).query) == {"sslmode": ["verify-full"], "sslrootcert": [str(ca)]}


@pytest.mark.parametrize("mode", ["verify-full", "verify-ca"])
def test_a_verifying_mode_without_its_ca_file_says_where_to_put_it(tmp_path: Path, mode: str) -> None:
    s = settings(postgres_sslmode=mode, postgres_sslrootcert=str(tmp_path / "absent.crt"))
    with pytest.raises(StackError, match=rf"POSTGRES_SSLMODE={mode} needs the CA .*postgres_ca.crt"):
        s._pg_uri("tracker", PASSWORD, "tracking")


def test_require_without_a_ca_file_encrypts_without_verifying(tmp_path: Path) -> None:
    s = settings(postgres_sslmode="require", postgres_sslrootcert=str(tmp_path / "absent.crt"))
    assert s.pg_ssl_params() == {"sslmode": "require"}


def test_an_unknown_sslmode_is_refused() -> None:
    with pytest.raises(StackError, match="POSTGRES_SSLMODE=verify is not one of disable, allow"):
        settings(postgres_sslmode="verify").pg_ssl_params()


def test_settings_read_the_tls_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_SSLMODE", "verify-full")
    monkeypatch.setenv("POSTGRES_SSLROOTCERT", "/run/secrets/postgres_ca.crt")
    s = Settings.from_env()
    assert (s.postgres_sslmode, s.postgres_sslrootcert) == ("verify-full", "/run/secrets/postgres_ca.crt")


# --- migrate: which connection errors stop at once --------------------------


@pytest.mark.parametrize(
    "error",
    [
        'connection to server at "managed-pg" failed: SSL error: certificate verify failed',
        'server certificate for "db.internal" does not match host name "managed-pg"',
        "server does not support SSL, but SSL was required",
        'root certificate file "/root/.postgresql/root.crt" does not exist',
    ],
)
def test_tls_failures_stop_migrate_at_once_and_say_what_to_check(error: str) -> None:
    problem = migrate.connection_problem(error + "\nDETAIL: more")
    assert problem is not None and problem.startswith(f"TLS to PostgreSQL failed: {error}.")
    assert "POSTGRES_HOST" in problem and "postgres_ca.crt" in problem


def test_a_wrong_password_stops_migrate_and_a_starting_server_is_waited_for() -> None:
    assert "refused the password" in migrate.connection_problem('password authentication failed for user "tracker"')
    assert migrate.connection_problem('connection to server at "managed-pg" failed: Connection refused') is None
    assert migrate.connection_problem("the database system is starting up") is None


# --- bucket: create arguments -------------------------------------------------


def test_outside_us_east_1_a_new_bucket_names_its_region() -> None:
    assert bucket.create_args("artifacts", "us-east-1") == {"Bucket": "artifacts"}
    assert bucket.create_args("artifacts", "eu-central-2") == {
        "Bucket": "artifacts",
        "CreateBucketConfiguration": {"LocationConstraint": "eu-central-2"},
    }


class FakeS3:
    def __init__(self, head_code: str, create_code: str | None = None) -> None:
        self.head_code, self.create_code = head_code, create_code
        self.created: list[dict] = []
        self.meta = type("Meta", (), {"region_name": "eu-central-2"})()

    def _error(self, code: str, op: str):
        from botocore.exceptions import ClientError

        return ClientError({"Error": {"Code": code, "Message": code}}, op)

    def head_bucket(self, Bucket: str) -> None:  # noqa: N803 (boto3's names)
        if self.head_code:
            raise self._error(self.head_code, "HeadBucket")

    def create_bucket(self, **args) -> None:
        if self.create_code:
            raise self._error(self.create_code, "CreateBucket")
        self.created.append(args)


def run_bucket_job(monkeypatch: pytest.MonkeyPatch, s3: FakeS3) -> int:
    monkeypatch.setattr(Settings, "s3_client", lambda self: s3)
    return bucket.main()


def test_an_existing_bucket_is_never_created(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    s3 = FakeS3(head_code="")
    assert run_bucket_job(monkeypatch, s3) == 0
    assert s3.created == [] and "exists" in capsys.readouterr().out


def test_a_missing_bucket_is_created_in_the_region(monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = FakeS3(head_code="404")
    assert run_bucket_job(monkeypatch, s3) == 0
    assert s3.created == [{"Bucket": "mlflow", "CreateBucketConfiguration": {"LocationConstraint": "eu-central-2"}}]


def test_credentials_that_may_not_create_it_are_told_to_create_it_elsewhere(
    monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    assert run_bucket_job(monkeypatch, FakeS3(head_code="NoSuchBucket", create_code="AccessDenied")) == 1
    err = capsys.readouterr().err
    assert "bucket 'mlflow' does not exist" in err and "AccessDenied" in err and "provider's tools" in err


# --- secrets job: the operator's credential files ------------------------------


CREDENTIALS = {
    "mlflow_db_password": "Zq7-managed-tracking-password",
    "auth_db_password": "Zq7-managed-auth-password",
    "s3_access_key": "AKIAMANAGEDSTORE0001",
    "s3_secret_key": "Zq7-managed-s3-secret-key-of-forty-chars",
}
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"


@pytest.fixture
def volumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(the secrets volume, the operator's folder with every file), no override set."""
    target, source = tmp_path / "secrets", tmp_path / "external"
    target.mkdir()
    source.mkdir()
    for name, value in CREDENTIALS.items():
        (source / name).write_text(value + "\n")
    (source / "postgres_ca.crt").write_text(CA + "\n")
    monkeypatch.setattr(job, "TARGET", target)
    monkeypatch.setattr(job, "EXTERNAL_SOURCE", source)
    monkeypatch.setattr(job, "SCRAPE_TOKEN_TARGET", tmp_path / "no-prometheus")
    for spec in job.SPECS:
        monkeypatch.delenv(spec.env, raising=False)
    monkeypatch.setenv("EXTERNAL_SECRETS_DIR", "/srv/mlflow-external")
    monkeypatch.setenv("POSTGRES_SSLMODE", "verify-full")
    return target, source


def test_the_operator_s_files_become_the_stack_s_secrets(volumes: tuple[Path, Path]) -> None:
    target, _ = volumes
    assert job.main() == 0
    for name, value in CREDENTIALS.items():
        assert (target / name).read_text().strip() == value
    assert (target / "postgres_ca.crt").read_text().strip() == CA
    # The rest is generated as in the bundled stack.
    assert len((target / "mlflow_admin_password").read_text().strip()) == 24


def test_a_changed_file_replaces_the_stored_secret_on_the_next_up(volumes: tuple[Path, Path]) -> None:
    target, source = volumes
    assert job.main() == 0
    (source / "s3_secret_key").write_text("Zq7-rotated-by-the-provider-0000000000000\n")
    assert job.main() == 0
    assert (target / "s3_secret_key").read_text().strip() == "Zq7-rotated-by-the-provider-0000000000000"


@pytest.mark.parametrize("name", ["mlflow_db_password", "s3_access_key", "postgres_ca.crt"])
def test_a_missing_file_is_named_and_nothing_is_written(
    volumes: tuple[Path, Path], name: str, capsys: pytest.CaptureFixture
) -> None:
    target, source = volumes
    (source / name).unlink()
    assert job.main() == 1
    assert f"/srv/mlflow-external/{name} is missing" in capsys.readouterr().err
    assert list(target.iterdir()) == []


def test_without_verification_the_ca_is_optional_and_a_stale_copy_removed(volumes: tuple[Path, Path], monkeypatch):
    target, source = volumes
    assert job.main() == 0
    (source / "postgres_ca.crt").unlink()
    monkeypatch.setenv("POSTGRES_SSLMODE", "require")
    assert job.main() == 0
    assert not (target / "postgres_ca.crt").exists()


def test_a_ca_that_is_not_pem_and_a_weak_password_are_refused(volumes: tuple[Path, Path], capsys) -> None:
    _, source = volumes
    (source / "postgres_ca.crt").write_text("not a certificate")
    assert job.main() == 1
    assert "postgres_ca.crt is not a PEM certificate" in capsys.readouterr().err
    (source / "postgres_ca.crt").write_text(CA)
    (source / "auth_db_password").write_text("short")
    assert job.main() == 1
    assert "/srv/mlflow-external/auth_db_password is shorter than 12 characters" in capsys.readouterr().err


def test_a_file_and_an_env_override_of_one_secret_are_refused(volumes: tuple[Path, Path], monkeypatch, capsys) -> None:
    monkeypatch.setenv("MLFLOW_DB_PASSWORD", "Zq7-another-strong-password")
    assert job.main() == 1
    assert "MLFLOW_DB_PASSWORD is set and /srv/mlflow-external/mlflow_db_password exists" in capsys.readouterr().err


def test_an_unmounted_folder_is_named(volumes: tuple[Path, Path], monkeypatch, capsys) -> None:
    monkeypatch.setattr(job, "EXTERNAL_SOURCE", Path("/nonexistent-external-secrets"))
    assert job.main() == 1
    assert "EXTERNAL_SECRETS_DIR=/srv/mlflow-external is not mounted" in capsys.readouterr().err


# --- backup: the PostgreSQL client ---------------------------------------------


def test_backup_runs_pg_tools_in_the_bundled_postgres_or_in_pgclient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack_backup, "_bundled", True)
    assert stack_backup.pg("mlflow", "pg_dump", "-Fc") == [
        "exec", "-T", "postgres", "pg_dump", "-Fc", "-U", "postgres", "-d", "mlflow",
    ]  # fmt: skip
    monkeypatch.setattr(stack_backup, "_bundled", False)
    args = stack_backup.pg("mlflow_auth", "psql", "-tAc", "SELECT 1")
    assert args[:7] == ["run", "--rm", "--no-deps", "-T", "-e", "STACK_DB=mlflow_auth", "pgclient"]
    # A conninfo without a database: libpq takes it from pgclient's environment.
    assert args[7:] == ["psql", "-tAc", "SELECT 1", "-d", "application_name=mlflow-stack-backup"]


def test_counts_ask_each_database_once(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, str]] = []

    def sql(db: str, query: str) -> str:
        asked.append((db, query))
        return "|".join(str(i + 1) for i in range(query.count("count(*)")))

    monkeypatch.setattr(stack_backup, "sql", sql)
    found = stack_backup.counts()
    assert [db for db, _ in asked] == ["mlflow", "mlflow_auth"]
    assert found == {
        "experiments": 1,
        "runs": 2,
        "metrics": 3,
        "registered_models": 4,
        "model_versions": 5,
        "aliases": 6,
        "users": 1,
    }
