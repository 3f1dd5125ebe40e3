"""Secrets: generated per stack, kept across runs, never weak, not world-readable."""

from __future__ import annotations

import json

import mlflow.server.auth as mlflow_auth
import pytest
from mlflow.utils.crypto import DEFAULT_KEK_PASSPHRASE

from stack import Stack

NAMES = (
    "postgres_password",
    "mlflow_db_password",
    "auth_db_password",
    "s3_access_key",
    "s3_secret_key",
    "mlflow_admin_password",
    "flask_secret_key",
    "trainer_password",
    "kek_passphrase",
    "webhook_encryption_key",
    "metrics_scrape_token",
)
DUMP = (
    "import json, pathlib; d = pathlib.Path('/secrets'); "
    "print(json.dumps({p.name: p.read_text().strip() for p in d.iterdir() if not p.name.startswith('.')}))"
)
MODES = (
    "import json, pathlib; d = pathlib.Path('/run/secrets'); "
    "print(json.dumps({p.name: oct(p.stat().st_mode & 0o777) for p in d.iterdir()}))"
)


@pytest.fixture
def other(stack: Stack):
    """A second, fresh copy of the stack's secrets job (own project, own volume)."""
    other = stack.sibling("mlflowsecrets")
    yield other
    other.compose("down", "--volumes", check=False)


def dump(s: Stack, *env: str) -> dict[str, str]:
    args = [a for e in env for a in ("-e", e)]
    s.compose("run", "--rm", "--no-deps", *args, "secrets")
    out = s.compose("run", "--rm", "--no-deps", "--entrypoint", "python", "secrets", "-c", DUMP).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_every_secret_generated_with_private_modes(stack: Stack) -> None:
    modes = json.loads(stack.python_in("mlflow-server", MODES))
    assert set(NAMES) <= set(modes)
    assert all(mode == "0o440" for mode in modes.values()), modes


def test_two_fresh_stacks_never_share_secrets(stack: Stack, other: Stack) -> None:
    mine = {name: stack.secret(name) for name in NAMES}
    theirs = dump(other)
    assert set(theirs) == set(NAMES)
    for name in NAMES:
        assert len(theirs[name]) >= 20
        assert theirs[name] != mine[name], f"{name} is shared between two fresh stacks"
    # Idempotent: running the job again keeps every value.
    assert dump(other) == theirs


# MLflow's own former default admin password (GHSA-gq3w-7jj3-x7gr), taken from the
# installed package rather than written out here.
MLFLOW_LEGACY_DEFAULT = mlflow_auth._LEGACY_DEFAULT_ADMIN_PASSWORD


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("MLFLOW_ADMIN_PASSWORD", MLFLOW_LEGACY_DEFAULT, "is a well-known default"),
        ("S3_SECRET_KEY", MLFLOW_LEGACY_DEFAULT.upper(), "is a well-known default"),
        ("POSTGRES_PASSWORD", "postgres", "is a well-known default"),
        ("MLFLOW_DB_PASSWORD", "short", "is shorter than 12 characters"),
        ("S3_ACCESS_KEY", "has a space in the middle", "contains whitespace"),
        # MLflow's built-in passphrase for AI-gateway secrets, from the installed package.
        ("MLFLOW_CRYPTO_KEK_PASSPHRASE", DEFAULT_KEK_PASSPHRASE, "is a well-known default"),
        ("MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", "long-enough-but-not-a-fernet-key", "is not a Fernet key"),
    ],
)
def test_weak_override_is_refused_and_changes_nothing(other: Stack, variable: str, value: str, reason: str) -> None:
    # (An empty value counts as unset: a strong one is generated instead.)
    first = dump(other)
    proc = other.compose("run", "--rm", "--no-deps", "-e", f"{variable}={value}", "secrets", check=False)
    assert proc.returncode != 0
    assert f"{variable} {reason}" in proc.stderr
    assert "generated" not in proc.stdout
    assert dump(other) == first


def test_strong_override_from_env_wins(other: Stack) -> None:
    first = dump(other)
    chosen = "Operator-Chosen-" + "x7Q" * 6
    after = dump(other, f"MLFLOW_ADMIN_PASSWORD={chosen}")
    assert after["mlflow_admin_password"] == chosen
    assert {k: v for k, v in after.items() if k != "mlflow_admin_password"} == {
        k: v for k, v in first.items() if k != "mlflow_admin_password"
    }
