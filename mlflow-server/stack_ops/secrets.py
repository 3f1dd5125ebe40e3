"""Generate the stack's secrets once, idempotently, into the secrets volume.

A secret set in the environment (from `.env`) wins over the stored one; a
missing one is generated; an existing one is kept. Known default or weak
values are refused before anything is written.
"""

from __future__ import annotations

import os
import secrets
import string
import sys
from dataclasses import dataclass
from pathlib import Path

from stack_ops.common import die, log

JOB = "secrets"
TARGET = Path(os.environ.get("STACK_SECRETS_TARGET", "/secrets"))
MIN_LENGTH = 12
KNOWN_DEFAULTS = {
    "admin",
    "changeme",
    "minio123",
    "minioadmin",
    "mlflow",
    "password",
    "password1234",
    "postgres",
    "secret",
}


@dataclass(frozen=True)
class Spec:
    name: str  # file name in the secrets volume
    env: str  # environment variable that overrides it
    alphabet: str
    length: int


_URLSAFE = string.ascii_letters + string.digits
SPECS = (
    Spec("postgres_password", "POSTGRES_PASSWORD", _URLSAFE, 32),
    Spec("mlflow_db_password", "MLFLOW_DB_PASSWORD", _URLSAFE, 32),
    Spec("auth_db_password", "MLFLOW_AUTH_DB_PASSWORD", _URLSAFE, 32),
    Spec("s3_access_key", "S3_ACCESS_KEY", string.ascii_uppercase + string.digits, 20),
    Spec("s3_secret_key", "S3_SECRET_KEY", _URLSAFE, 40),
    Spec("mlflow_admin_password", "MLFLOW_ADMIN_PASSWORD", _URLSAFE, 24),
    Spec("flask_secret_key", "MLFLOW_FLASK_SECRET_KEY", _URLSAFE, 48),
    Spec("trainer_password", "MLFLOW_TRAINER_PASSWORD", _URLSAFE, 24),
)


def generate(spec: Spec) -> str:
    return "".join(secrets.choice(spec.alphabet) for _ in range(spec.length))


def weakness(value: str) -> str | None:
    if value.lower() in KNOWN_DEFAULTS:
        return "is a well-known default"
    if len(value) < MIN_LENGTH:
        return f"is shorter than {MIN_LENGTH} characters"
    if any(c.isspace() for c in value):
        return "contains whitespace"
    return None


def write(path: Path, value: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(value + "\n")
    tmp.chmod(0o440)
    tmp.replace(path)


def main() -> int:
    if not TARGET.is_dir():
        return die(JOB, f"{TARGET} is not a directory: mount the secrets volume there")

    # Preflight: refuse weak overrides before writing anything.
    overrides: dict[str, str] = {}
    for spec in SPECS:
        value = os.environ.get(spec.env, "").strip()
        if not value:
            continue
        problem = weakness(value)
        if problem:
            return die(
                JOB,
                f"{spec.env} {problem}; set a strong value in .env or remove it to have one generated",
            )
        overrides[spec.name] = value

    for spec in SPECS:
        path = TARGET / spec.name
        current = path.read_text().strip() if path.exists() else ""
        if spec.name in overrides:
            if overrides[spec.name] != current:
                write(path, overrides[spec.name])
                log(JOB, f"{spec.name}: set from {spec.env}")
            continue
        if current:
            continue
        write(path, generate(spec))
        log(JOB, f"{spec.name}: generated")
    log(JOB, f"secrets ready in the secrets volume ({len(SPECS)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
