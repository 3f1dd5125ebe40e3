"""Unit tests of the stack's own code: `stack_ops` (this folder's parent) and
scripts/stack_backup.py. The fast folder: pure logic, in seconds, with no Docker
and no network. The live stack is tested by `tests/` at the repository root.

Run from the repository root, with a Python that has the server image's
dependencies (mlflow-server/requirements.txt) and pytest:

    python -m venv .venv-unit && .venv-unit/bin/pip install -r mlflow-server/tests/requirements.txt
    .venv-unit/bin/python -m pytest mlflow-server/tests -q

`stack_ops` is imported from the source tree (it is not installed), and the
settings its modules read at import time are set below, before any test module
imports them: every path points into a throw-away folder, so a test that forgot
to point a module at its own tmp_path fails instead of touching /run/secrets,
/certs or /secrets. Any attempt to open a network connection fails the test.
Keep this folder in its own pytest run: the settings below are process-wide.

A test marked `xfail(strict=True)` shows a known bug in the code under test: it
reports as xfailed while the bug is there and fails once it is fixed, so that
the marker is removed with the fix.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

HERE = Path(__file__).resolve().parent
SERVER_DIR = HERE.parent  # mlflow-server/: holds the stack_ops package
REPO = SERVER_DIR.parent
sys.path.insert(0, str(SERVER_DIR))
sys.path.insert(0, str(REPO / "scripts"))  # stack_backup

# One folder for this session; removed at the end.
SANDBOX = Path(tempfile.mkdtemp(prefix="stack-ops-unit-"))
MISSING = SANDBOX / "not-mounted"  # never created
# MLflow's basic-auth app reads its ini when mlflow.server.auth is first imported
# (by the contract test or the artifact decision test, whichever runs first).
AUTH_INI = SANDBOX / "basic_auth.ini"
ADMIN_PASSWORD = secrets.token_urlsafe(18)
AUTH_INI.write_text(
    "[mlflow]\n"
    "default_permission = READ\n"
    f"database_uri = sqlite:///{SANDBOX / 'auth.db'}\n"
    "admin_username = admin\n"
    f"admin_password = {ADMIN_PASSWORD}\n"
    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
)

os.environ.update(
    {
        # stack_ops: read at import time.
        "S3_BUCKET": "mlflow",
        "STACK_SECRETS_DIR": str(MISSING / "secrets"),
        "STACK_SECRETS_TARGET": str(MISSING / "secrets-target"),
        "STACK_SECRETS_WRITE_DIR": str(MISSING / "secrets-write"),
        "STACK_SCRAPE_TOKEN_TARGET": str(MISSING / "metrics-token"),
        "STACK_METRICS_DIR": str(MISSING / "prometheus"),
        "TRAINER_CREDENTIALS_DIR": str(MISSING / "trainer-credentials"),
        "TLS_OPERATOR_DIR": str(MISSING / "certs"),
        "TLS_CA_DIR": str(MISSING / "tls-ca"),
        "TLS_SERVER_DIR": str(MISSING / "tls"),
        "TLS_PUBLIC_DIR": str(MISSING / "tls-public"),
        "MLFLOW_AUTH_MAX_FAILURES": "10",
        "MLFLOW_AUTH_LOCKOUT_SECONDS": "300",
        # MLflow: its auth app, and nothing sent anywhere.
        "MLFLOW_AUTH_CONFIG_PATH": str(AUTH_INI),
        "MLFLOW_TRACKING_URI": f"sqlite:///{SANDBOX / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        # boto3: fake credentials from the environment only (no ~/.aws, no instance metadata).
        "AWS_ACCESS_KEY_ID": "AKIAUNITTESTFAKE0000",
        "AWS_SECRET_ACCESS_KEY": "unit-test-fake-secret-not-a-credential",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(MISSING / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(MISSING / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
)

REQUIRED = ("mlflow", "boto3", "botocore", "cryptography", "flask", "fastapi", "sqlalchemy", "certifi")


def pytest_configure(config: pytest.Config) -> None:
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        raise pytest.UsageError(
            f"this Python lacks {', '.join(missing)}: install mlflow-server/tests/requirements.txt "
            "(the server image's dependencies and pytest) into the venv that runs these tests"
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SANDBOX, ignore_errors=True)


def _no_network(*args, **kwargs):
    raise AssertionError(f"unit tests must not touch the network: {args[1:]!r}")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unix sockets (none are used) stay allowed; anything else fails the test."""
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address) -> None:
        if sock.family == socket.AF_UNIX:
            return real_connect(sock, address)
        _no_network(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", lambda sock, address: _no_network(sock, address))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: _no_network(None, *a))


@pytest.fixture(scope="session")
def admin_password() -> str:
    """The admin password in the basic_auth.ini MLflow's auth app reads (generated per session)."""
    return ADMIN_PASSWORD


class Clock:
    """A clock the test moves by hand (`clock.now += 60`)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(monkeypatch: pytest.MonkeyPatch):
    """MLflow's basic-auth module, with who is asking and what they are denied set by
    the test (the redactor tests of search.py and history.py)."""
    from mlflow.server import auth

    who = SimpleNamespace(admin=False, denied=set(), asked=[])
    monkeypatch.setattr(auth, "sender_is_admin", lambda: who.admin)
    monkeypatch.setattr(auth, "authenticate_request", lambda: SimpleNamespace(username="alice"))

    def denied(username, types):
        who.asked.append((username, tuple(types)))
        return {t for t in types if t in who.denied}

    monkeypatch.setattr(auth, "_denied_sibling_tiers", denied)
    return SimpleNamespace(module=auth, who=who)
