"""Settings and secrets shared by the stack's jobs.

Every setting comes from the environment compose passes in; every secret from
a file the `secrets` job wrote into the secrets volume.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

SECRETS_DIR = Path(os.environ.get("STACK_SECRETS_DIR", "/run/secrets"))


def log(job: str, message: str) -> None:
    print(f"[{job}] {message}", flush=True)


def die(job: str, message: str) -> int:
    print(f"[{job}] error: {message}", file=sys.stderr, flush=True)
    return 1


class StackError(Exception):
    """A problem the operator must fix; its message says how."""


def read_secret(name: str) -> str:
    path = SECRETS_DIR / name
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        raise StackError(
            f"secret {path} is missing: the `secrets` job must run first (docker compose up runs it)"
        ) from None
    if not value:
        raise StackError(f"secret {path} is empty")
    return value


def env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def switch_on(name: str) -> bool:
    """A stack switch that is on unless set to false, 0, no or off (any case)."""
    return os.environ.get(name, "true").strip().lower() not in ("false", "0", "no", "off")


def swap_view(flask_app, endpoint: str, switch: str, make_view, logger) -> bool:
    """Serve Flask `endpoint` with make_view(MLflow's view) unless the stack
    switch `switch` is off or this MLflow has no such endpoint; whether it did."""
    if not switch_on(switch):
        logger.info("%s: MLflow's own view (%s=false)", endpoint, switch)
        return False
    original = flask_app.view_functions.get(endpoint)
    if original is None:
        logger.warning("%s: MLflow's own view (this MLflow has no such endpoint)", endpoint)
        return False
    flask_app.view_functions[endpoint] = make_view(original)
    return True


def swap_after_request(auth, original, replacement) -> None:
    """Put `replacement` wherever basic auth's after-request table has `original`."""
    for key, handler in list(auth.AFTER_REQUEST_HANDLERS.items()):
        if handler is original:
            auth.AFTER_REQUEST_HANDLERS[key] = replacement


def workspaces_enabled() -> bool:
    """MLFLOW_ENABLE_WORKSPACES (true/false/1/0, any case; empty or unset: off),
    left in the environment as `true` or `false`, the way this process's MLflow
    and its subprocesses read it. Anything else is refused rather than guessed."""
    value = os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").strip().lower()
    if value not in ("", "false", "0", "true", "1"):
        raise StackError(f"MLFLOW_ENABLE_WORKSPACES={value!r} is not true or false")
    enabled = value in ("true", "1")
    os.environ["MLFLOW_ENABLE_WORKSPACES"] = str(enabled).lower()
    return enabled


# libpq's sslmode values; the last two check the server's certificate against
# a CA (POSTGRES_SSLROOTCERT), verify-full its name too.
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
VERIFYING = ("verify-ca", "verify-full")


@dataclass(frozen=True)
class Settings:
    postgres_host: str
    postgres_port: str
    tracking_db: str
    tracking_user: str
    auth_db: str
    auth_user: str
    s3_endpoint: str
    bucket: str
    # TLS to PostgreSQL (compose.external.yaml): libpq's sslmode, empty for the
    # driver's default, and the CA file that verifies the server's certificate.
    postgres_sslmode: str = ""
    postgres_sslrootcert: str = ""

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            postgres_host=env("POSTGRES_HOST", "postgres"),
            postgres_port=env("POSTGRES_PORT", "5432"),
            tracking_db=env("MLFLOW_DB_NAME", "mlflow"),
            tracking_user=env("MLFLOW_DB_USER", "mlflow"),
            auth_db=env("MLFLOW_AUTH_DB_NAME", "mlflow_auth"),
            auth_user=env("MLFLOW_AUTH_DB_USER", "mlflow_auth"),
            s3_endpoint=env("S3_ENDPOINT_URL", "http://s3:9000"),
            bucket=env("S3_BUCKET", "mlflow"),
            postgres_sslmode=env("POSTGRES_SSLMODE", ""),
            postgres_sslrootcert=env("POSTGRES_SSLROOTCERT", ""),
        )

    def pg_ssl_params(self) -> dict[str, str]:
        """libpq's TLS parameters for the database URIs; a StackError when the
        settings can't give a verified connection."""
        mode = self.postgres_sslmode
        if not mode:
            return {}
        if mode not in SSLMODES:
            raise StackError(f"POSTGRES_SSLMODE={mode} is not one of {', '.join(SSLMODES)}")
        params = {"sslmode": mode}
        ca = self.postgres_sslrootcert
        if ca and Path(ca).is_file():
            params["sslrootcert"] = ca
        elif mode in VERIFYING:
            where = ca or "POSTGRES_SSLROOTCERT (unset)"
            raise StackError(
                f"POSTGRES_SSLMODE={mode} needs the CA of the PostgreSQL server's certificate, and {where} "
                "is not a file: put it in EXTERNAL_SECRETS_DIR as postgres_ca.crt (docs/configuration.md)"
            )
        return params

    def _pg_uri(self, user: str, password: str, db: str) -> str:
        # SQLAlchemy 2.1 defaults to psycopg 3 for postgresql://; name psycopg2.
        query = urlencode(self.pg_ssl_params(), safe="/")
        return (
            f"postgresql+psycopg2://{quote(user, safe='')}:{quote(password, safe='')}"
            f"@{self.postgres_host}:{self.postgres_port}/{db}" + (f"?{query}" if query else "")
        )

    def tracking_uri(self) -> str:
        return self._pg_uri(self.tracking_user, read_secret("mlflow_db_password"), self.tracking_db)

    def auth_uri(self) -> str:
        return self._pg_uri(self.auth_user, read_secret("auth_db_password"), self.auth_db)

    def s3_env(self) -> dict[str, str]:
        """What boto3 (and MLflow's S3 artifact repository) needs to reach the store."""
        return {
            "AWS_ACCESS_KEY_ID": read_secret("s3_access_key"),
            "AWS_SECRET_ACCESS_KEY": read_secret("s3_secret_key"),
            "AWS_DEFAULT_REGION": env("AWS_DEFAULT_REGION", "us-east-1"),
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
        }

    def s3_client(self):  # -> botocore client; boto3 is imported lazily
        import boto3
        from botocore.config import Config

        creds = self.s3_env()
        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
            region_name=creds["AWS_DEFAULT_REGION"],
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
        )
