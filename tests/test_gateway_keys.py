"""MLflow's AI-gateway secrets (LLM provider keys) are encrypted at rest under
the stack's own key, never MLflow's built-in passphrase; the key survives a
restart, an upgrade moves old secrets onto it, and a restore into another
stack carries them with the old key given explicitly (tests/test_backup.py)."""

from __future__ import annotations

import json
import secrets

import pytest
import requests

from stack import Stack, unique

pytestmark = pytest.mark.slow  # other stacks, restarts: `-m "not slow"` leaves it out

# Run inside mlflow-server: decrypt one stored secret with each passphrase.
PROBE = """
import json, sys
from pathlib import Path
import sqlalchemy
from sqlalchemy.orm import Session
from mlflow.store.tracking.dbmodels.models import SqlGatewaySecret
from mlflow.utils.crypto import DEFAULT_KEK_PASSPHRASE, KEKManager, _decrypt_secret
from stack_ops.common import Settings

name, plaintext = sys.argv[1], sys.argv[2]
engine = sqlalchemy.create_engine(Settings.from_env().tracking_uri())
with Session(engine) as s:
    row = s.query(SqlGatewaySecret).filter_by(secret_name=name).one()

def opened(passphrase):
    try:
        kek = KEKManager(passphrase=passphrase, kek_version=row.kek_version)
        return _decrypt_secret(row.encrypted_value, row.wrapped_dek, kek, row.secret_id, row.secret_name)
    except Exception:
        return None

print(json.dumps({
    "stack": opened(Path("/run/secrets/kek_passphrase").read_text().strip()),
    "mlflow_default": opened(DEFAULT_KEK_PASSPHRASE),
    "plaintext_in_ciphertext": plaintext.encode() in bytes(row.encrypted_value) + bytes(row.wrapped_dek),
}))
"""

# Run inside mlflow-server with MLflow's built-in passphrase: how a secret was
# stored by a stack from before the stack set its own.
STORE_AS_BEFORE = """
import os, sys
os.environ.pop("MLFLOW_CRYPTO_KEK_PASSPHRASE", None)
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from stack_ops.common import Settings
store = SqlAlchemyStore(Settings.from_env().tracking_uri(), "mlflow-artifacts:/")
store.create_gateway_secret(secret_name=sys.argv[1], secret_value={"api_key": sys.argv[2]}, provider="openai")
"""


def create_secret(stack: Stack, admin: tuple[str, str]) -> tuple[str, str]:
    name, value = unique("provider-key"), "sk-test-" + secrets.token_urlsafe(24)
    r = requests.post(
        f"{stack.url}/api/3.0/mlflow/gateway/secrets/create",
        json={"secret_name": name, "secret_value": {"api_key": value}, "provider": "openai"},
        auth=admin,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert value not in r.text  # the API answers with a masked value only
    return name, value


def probe(stack: Stack, name: str, value: str) -> dict:
    out = stack.compose("exec", "-T", "mlflow-server", "python", "-c", PROBE, name, value).stdout
    return json.loads(out.strip().splitlines()[-1])


def kek_status(stack: Stack) -> dict:
    out = stack.compose("exec", "-T", "mlflow-server", "/opt/stack/entrypoint.sh", "kek", "status", check=False)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_gateway_secrets_are_encrypted_under_the_stacks_key(stack: Stack, admin: tuple[str, str]) -> None:
    name, value = create_secret(stack, admin)
    seen = probe(stack, name, value)
    assert seen["stack"] == {"api_key": value}
    # A database backup alone no longer opens it: MLflow's built-in passphrase fails.
    assert seen["mlflow_default"] is None
    assert seen["plaintext_in_ciphertext"] is False

    # Restarted, the server still holds the same key.
    stack.compose("restart", "mlflow-server")
    stack.compose("up", "--detach", "--wait", "--wait-timeout", "300", "mlflow-server", "nginx")
    assert probe(stack, name, value)["stack"] == {"api_key": value}
    assert kek_status(stack)["unreadable"] == []


def test_upgrade_moves_secrets_stored_under_mlflows_passphrase(stack: Stack) -> None:
    """A stack from before this release stored its gateway secrets under
    MLflow's built-in passphrase; the migrate job (every `up`) rewraps them."""
    name, value = unique("old-provider-key"), "sk-old-" + secrets.token_urlsafe(24)
    stack.compose("exec", "-T", "mlflow-server", "python", "-c", STORE_AS_BEFORE, name, value)
    before = probe(stack, name, value)
    assert before["mlflow_default"] == {"api_key": value} and before["stack"] is None

    migrate = stack.compose("run", "--rm", "--no-deps", "migrate")
    assert "moved from MLflow's built-in passphrase to the stack's" in migrate.stdout
    after = probe(stack, name, value)
    assert after["stack"] == {"api_key": value}
    assert after["mlflow_default"] is None
    # Idempotent: a second run finds nothing to move.
    again = stack.compose("run", "--rm", "--no-deps", "migrate")
    assert "moved from MLflow's built-in passphrase" not in again.stdout
