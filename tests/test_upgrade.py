"""Data written by an MLflow 3.10 server survives the upgrade to the pinned version."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from snapshots import populate, snapshot
from stack import Stack

pytestmark = pytest.mark.slow  # other stacks, restarts: `-m "not slow"` leaves it out

OLD = "3.10.1"


@pytest.fixture(scope="module")
def old_stack(stack: Stack):
    """A fresh stack whose server image is built on MLflow 3.10 (same Dockerfile, older pin)."""
    current = os.environ.get("MLFLOW_SERVER_IMAGE", "mlflow-stack/mlflow-server:0.1.0")
    s = stack.sibling(
        "mlflowupgrade", MLFLOW_SERVER_IMAGE=f"mlflow-stack/mlflow-server:mlflow-{OLD}", MLFLOW_BUILD_VERSION=OLD
    )
    s.compose("build", "--quiet", "mlflow-server", timeout=1200)
    with s.session("nginx"):
        yield s, current


def test_upgrade_from_mlflow_3_10_keeps_everything(old_stack, monkeypatch, tmp_path: Path) -> None:
    s, current_image = old_stack
    admin = ("admin", s.secret("mlflow_admin_password"))
    assert requests.get(f"{s.url}/version", auth=admin, timeout=10).text.strip() == OLD
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin[1])

    ids = populate(tmp_path / "data", "upgrade")
    before = snapshot(ids, tmp_path / "before")

    # Switch to the pinned image: `up` recreates the server; `migrate` upgrades first.
    s.env["MLFLOW_SERVER_IMAGE"] = current_image
    s.env.pop("MLFLOW_BUILD_VERSION")
    s.compose("up", "--detach", "--wait", "--wait-timeout", "300", "nginx")
    migrate_log = s.compose("logs", "--no-color", "migrate").stdout
    assert "upgrading tracking schema" in migrate_log, migrate_log
    assert requests.get(f"{s.url}/version", auth=admin, timeout=10).text.strip() == "3.17.2"
    assert snapshot(ids, tmp_path / "after") == before
