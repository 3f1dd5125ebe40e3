"""Session fixtures: one live copy of the stack for the whole suite.

By default the suite brings up its own copy under a unique project name on a
free port (`up --wait`), and removes it with its volumes at the end. To run
against a stack that is already up instead, name its compose project:

    MLFLOW_STACK_PROJECT=mlflow-stack pytest tests

Set MLFLOW_STACK_KEEP=1 to leave the suite's own stack running afterwards.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

# scripts/stack.py: the one way to drive a stack (tests, bench and operator scripts).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
sys.path.insert(0, str(Path(__file__).parent))

from stack import ROOT, Stack, free_port  # noqa: E402

LOG_DIR = ROOT / "tests" / ".logs"


def pytest_runtest_makereport(item, call):  # record failures for the teardown
    if call.excinfo is not None and call.when in ("setup", "call"):
        item.session.stack_failed = True


@pytest.fixture(scope="session")
def stack(request) -> Iterator[Stack]:
    existing = os.environ.get("MLFLOW_STACK_PROJECT")
    if existing:
        yield Stack.attach(existing)
        return

    stack = Stack(
        project=f"mlflowtest{secrets.token_hex(3)}",
        port=free_port(),
        # A 128 MiB single-PUT limit (default 5 GiB) puts the boundary within
        # reach of test_artifacts.py: its two boundary files stay in this
        # shared stack, and every later test that copies the whole bucket
        # (backup and restore, store migration) copies them (1 GiB took
        # 2 GiB and ~5 minutes of the suite). test_artifacts.py's 64 MiB
        # round trip stays below it, so it goes straight to the store.
        env={"HTTP_BIND": "127.0.0.1", "ARTIFACT_DIRECT_MAX_UPLOAD_BYTES": str(128 << 20)},
    )
    stack.env["HTTP_PORT"] = str(stack.port)
    try:
        stack.up()
        # `up` starts the trainer's sweep; let it finish so every test sees the
        # same platform (its result is asserted in test_trainer.py).
        stack.wait_exited("trainer")
        yield stack
    finally:
        failed = getattr(request.session, "stack_failed", False) or request.session.testsfailed
        if failed:
            LOG_DIR.mkdir(parents=True, exist_ok=True)
            path = LOG_DIR / f"{stack.project}.log"
            path.write_text(stack.compose("ps", "--all", check=False).stdout + "\n" + stack.logs())
            print(f"\nstack logs saved to {path}")
        if os.environ.get("MLFLOW_STACK_KEEP") != "1":
            stack.down()


@pytest.fixture(scope="session")
def admin(stack: Stack) -> tuple[str, str]:
    username = stack.compose("exec", "-T", "mlflow-server", "printenv", "MLFLOW_ADMIN_USERNAME").stdout.strip()
    return username, stack.secret("mlflow_admin_password")


@pytest.fixture(scope="session")
def http(stack: Stack, admin: tuple[str, str]) -> requests.Session:
    """An authenticated HTTP session against nginx."""
    s = requests.Session()
    s.auth = admin
    return s


@pytest.fixture(scope="session")
def tracking(stack: Stack, admin: tuple[str, str]) -> Iterator[None]:
    """Point the MLflow client at the stack the way a teammate would."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(
        {
            "MLFLOW_TRACKING_URI": stack.url,
            "MLFLOW_TRACKING_USERNAME": admin[0],
            "MLFLOW_TRACKING_PASSWORD": admin[1],
        }
    )
    # The client must not hold S3 credentials: everything goes through the proxy.
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        os.environ.pop(k, None)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
