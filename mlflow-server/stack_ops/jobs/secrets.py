"""Generate the stack's secrets once, idempotently, into the secrets volume.

A secret set in the environment (from `.env`) wins over the stored one; a
missing one is generated; an existing one is kept. Known default or weak
values are refused before anything is written.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import string
import sys
from dataclasses import dataclass
from pathlib import Path

from stack_ops.common import VERIFYING, die, log

JOB = "secrets"
TARGET = Path(os.environ.get("STACK_SECRETS_TARGET", "/secrets"))
# compose.monitoring.yaml mounts Prometheus's own volume here: it gets a copy of
# the scrape token and nothing else of the secrets volume.
SCRAPE_TOKEN_TARGET = Path(os.environ.get("STACK_SCRAPE_TOKEN_TARGET", "/metrics-token"))
SCRAPE_TOKEN = "metrics_scrape_token"
# compose.external.yaml mounts the operator's folder (EXTERNAL_SECRETS_DIR) here:
# the credentials of a PostgreSQL and an S3 store the stack does not run, and
# the database's CA. Copied into the secrets volume on every `up`, where every
# service already reads its secrets.
EXTERNAL_SOURCE = Path(os.environ.get("STACK_EXTERNAL_SECRETS_SOURCE", "/external-secrets"))
EXTERNAL_CREDENTIALS = ("mlflow_db_password", "auth_db_password", "s3_access_key", "s3_secret_key")
EXTERNAL_CA = "postgres_ca.crt"
MIN_LENGTH = 12
# Values that ship as defaults somewhere (images, tutorials, MLflow itself) or
# are the first guess for a service, compared lower-cased. Kept as sha256 so the
# repository never holds a value that reads like a working credential; the
# comment says where each comes from.
KNOWN_DEFAULT_DIGESTS = {
    "8c6976e5b5410415bde908bd4dee15dfb167a9c873fc4bb8a81f6f2ab448a918",  # "admin"
    "057ba03d6c44104863dc7361fe4578965d1887360f90a0895882e58a6248fc86",  # the usual placeholder
    "179c076ac522159dbbd50d4f1d84faf05551fe5b59d7e5824a800d46559fb1d1",  # MinIO tutorials' secret
    "ad9858116e63b0c5a4d7dc7f50f034c7247e56838dae22c1832712ffde48e694",  # MinIO's root user and password
    "b1a8f0a4d2aae9e01582f244dadd434276725eb1db0cea11ca8bcfcbef640eb6",  # "mlflow"
    "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",  # "password"
    "b9c950640e1b3740e98acb93e669c65766f6670dd1609ba91ff41052ba48c6f3",  # MLflow's legacy admin password
    "a942b37ccfaf5a813b1432caa209a43b9d144e47ad0de1549c289c253e556cd5",  # "postgres"
    "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b",  # "secret"
    # MLflow's built-in KEK passphrase for AI-gateway secrets (mlflow/utils/crypto.py)
    "742bfdbc7ec2311e7e4e2817bc6113a67e43011995fcd069133657ffa734e901",
}


@dataclass(frozen=True)
class Spec:
    name: str  # file name in the secrets volume
    env: str  # environment variable that overrides it
    alphabet: str
    length: int
    fernet: bool = False  # a Fernet key (32 random bytes, url-safe base64) instead of text


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
    # Protect MLflow's stored AI-gateway provider keys and webhook secrets
    # (stack_ops/gateway_keys.py, docs/security.md).
    Spec("kek_passphrase", "MLFLOW_CRYPTO_KEK_PASSPHRASE", _URLSAFE, 48),
    Spec("webhook_encryption_key", "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", _URLSAFE + "-_=", 44, fernet=True),
    # Reads the server's Prometheus metrics (stack_ops/server/metrics.py).
    Spec(SCRAPE_TOKEN, "METRICS_SCRAPE_TOKEN", _URLSAFE, 48),
)


def generate(spec: Spec) -> str:
    if spec.fernet:
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    return "".join(secrets.choice(spec.alphabet) for _ in range(spec.length))


def format_problem(spec: Spec, value: str) -> str | None:
    """Why `value` can't be used for `spec` at all (beyond being weak)."""
    if spec.fernet:
        try:
            if len(base64.urlsafe_b64decode(value.encode())) != 32:
                raise ValueError
        except (ValueError, binascii.Error):
            return "is not a Fernet key (32 random bytes, url-safe base64: 44 characters ending in '=')"
    return None


def weakness(value: str) -> str | None:
    if hashlib.sha256(value.lower().encode()).hexdigest() in KNOWN_DEFAULT_DIGESTS:
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


def external_files(host_dir: str, source: Path, sslmode: str) -> dict[str, str]:
    """The external services' credentials and CA from the operator's folder
    (`host_dir` as named on the host, for messages), or a ValueError saying
    which file is missing or unusable."""
    if not source.is_dir():
        raise ValueError(f"EXTERNAL_SECRETS_DIR={host_dir} is not mounted at {source} (compose.external.yaml)")

    def read(name: str) -> str:
        try:
            return (source / name).read_text().strip()
        except FileNotFoundError:
            raise ValueError(f"{host_dir}/{name} is missing (compose.external.yaml needs {name})") from None
        except PermissionError:
            raise ValueError(f"{host_dir}/{name} is not readable by uid {os.getuid()} (chown it to 10001)") from None

    found: dict[str, str] = {}
    for name in EXTERNAL_CREDENTIALS:
        found[name] = read(name)
        if not found[name]:
            raise ValueError(f"{host_dir}/{name} is empty")
    if (source / EXTERNAL_CA).exists():
        pem = read(EXTERNAL_CA)
        if not pem.startswith("-----BEGIN CERTIFICATE-----"):
            raise ValueError(f"{host_dir}/{EXTERNAL_CA} is not a PEM certificate")
        found[EXTERNAL_CA] = pem
    elif sslmode in VERIFYING:
        raise ValueError(
            f"{host_dir}/{EXTERNAL_CA} is missing: POSTGRES_SSLMODE={sslmode} checks the database's certificate "
            "against that CA (your provider's CA bundle)"
        )
    return found


def main() -> int:
    if not TARGET.is_dir():
        return die(JOB, f"{TARGET} is not a directory: mount the secrets volume there")

    # compose.external.yaml: the managed services' credentials come from files.
    external: dict[str, str] = {}
    host_dir = os.environ.get("EXTERNAL_SECRETS_DIR", "").strip()
    if host_dir:
        try:
            external = external_files(host_dir, EXTERNAL_SOURCE, os.environ.get("POSTGRES_SSLMODE", "").strip())
        except ValueError as e:
            return die(JOB, str(e))

    # Preflight: refuse weak overrides before writing anything.
    overrides: dict[str, str] = {}
    for spec in SPECS:
        value = os.environ.get(spec.env, "").strip()
        if not value:
            continue
        problem = format_problem(spec, value) or weakness(value)
        if problem:
            return die(
                JOB,
                f"{spec.env} {problem}; set a strong value in .env or remove it to have one generated",
            )
        overrides[spec.name] = value
    for spec in SPECS:
        if spec.name not in external:
            continue
        if spec.name in overrides:
            return die(JOB, f"{spec.env} is set and {host_dir}/{spec.name} exists: keep one of them")
        problem = weakness(external[spec.name])
        if problem:
            return die(JOB, f"{host_dir}/{spec.name} {problem}")
        overrides[spec.name] = external[spec.name]

    for spec in SPECS:
        path = TARGET / spec.name
        current = path.read_text().strip() if path.exists() else ""
        if spec.name in overrides:
            if overrides[spec.name] != current:
                write(path, overrides[spec.name])
                source = f"{host_dir}/{spec.name}" if spec.name in external else spec.env
                log(JOB, f"{spec.name}: set from {source}")
            continue
        if current:
            continue
        write(path, generate(spec))
        log(JOB, f"{spec.name}: generated")
    ca = TARGET / EXTERNAL_CA
    if EXTERNAL_CA in external:
        if not ca.exists() or ca.read_text().strip() != external[EXTERNAL_CA]:
            write(ca, external[EXTERNAL_CA])
            log(JOB, f"{EXTERNAL_CA}: copied from {host_dir}")
    elif ca.exists():
        ca.unlink()  # no longer given: never verify against a stale CA
        log(JOB, f"{EXTERNAL_CA}: removed (not in EXTERNAL_SECRETS_DIR)")
    if external:
        log(JOB, f"external services' credentials from {host_dir}")
    log(JOB, f"secrets ready in the secrets volume ({len(SPECS)} files)")
    # Only where compose.monitoring.yaml mounts Prometheus's volume: the image's
    # own empty folder sits on the read-only root in the base stack.
    if SCRAPE_TOKEN_TARGET.is_dir() and os.access(SCRAPE_TOKEN_TARGET, os.W_OK):
        token = (TARGET / SCRAPE_TOKEN).read_text().strip()
        copy = SCRAPE_TOKEN_TARGET / SCRAPE_TOKEN
        if not copy.exists() or copy.read_text().strip() != token:
            write(copy, token)
            log(JOB, f"{SCRAPE_TOKEN}: copied for Prometheus ({SCRAPE_TOKEN_TARGET})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
