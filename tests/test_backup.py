"""Backup while serving, restore into a fresh stack, everything identical; bad archives refused."""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import tarfile
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow.server import get_app_client

from snapshots import populate, snapshot
from stack import Stack, unique
from test_gateway_keys import create_secret, probe

pytestmark = pytest.mark.slow  # other stacks, restarts: `-m "not slow"` leaves it out


def use(stack: Stack, user: str, password: str, monkeypatch) -> mlflow.MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    return mlflow.MlflowClient()


@pytest.fixture(scope="module")
def target(stack: Stack):
    """A second, fresh, empty stack (own project, own volumes): the restore target."""
    other = stack.sibling("mlflowrestore")
    try:
        other.compose("up", "--detach", "--wait", "--wait-timeout", "300", "nginx")  # no trainer: stays empty
        yield other
    finally:
        other.compose("down", "--volumes", check=False)


def test_backup_restore_round_trip(stack: Stack, target: Stack, admin, monkeypatch, tmp_path: Path) -> None:
    use(stack, *admin, monkeypatch)
    user, password = unique("carol"), secrets.token_urlsafe(16)
    get_app_client("basic-auth", tracking_uri=stack.url).create_user(username=user, password=password)
    ids = populate(tmp_path / "data", "backup")
    before = snapshot(ids, tmp_path / "before")
    gateway_secret = create_secret(stack, admin)

    made = stack.script("backup", "--out", str(tmp_path / "archives"))
    assert made.returncode == 0, made.stderr
    archive = next((tmp_path / "archives").glob("mlflow-backup-*.tar.gz"))

    # A truncated archive, a tampered one, and a non-empty target are all refused.
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(tampered, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name == "objects.json":
                data = data.replace(b"}", b" }", 1)
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    target_admin = ("admin", target.secret("mlflow_admin_password"))
    empty = requests.get(f"{target.url}/api/2.0/mlflow/experiments/search?max_results=10", auth=target_admin).json()
    for bad, message in ((truncated, "not a complete backup archive"), (tampered, "does not match the manifest")):
        refused = target.script("restore", str(bad))
        assert refused.returncode == 1
        assert message in refused.stderr
    refused = stack.script("restore", str(archive))
    assert refused.returncode == 1 and "not empty" in refused.stderr
    after_refusals = requests.get(f"{target.url}/api/2.0/mlflow/experiments/search?max_results=10", auth=target_admin)
    assert after_refusals.json() == empty  # untouched

    # The AI-gateway secrets in it stay encrypted under the source stack's key:
    # without that key the restore says so and changes nothing.
    refused = target.script("restore", str(archive))
    assert refused.returncode == 1
    assert "encrypted under another stack's key" in refused.stderr and "--kek-passphrase-file" in refused.stderr
    assert (
        requests.get(f"{target.url}/api/2.0/mlflow/experiments/search?max_results=10", auth=target_admin).json()
        == empty
    )
    key_file = tmp_path / "source-kek"
    key_file.write_text(stack.secret("kek_passphrase"))
    restored = target.script("restore", str(archive), "--kek-passphrase-file", str(key_file))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "restore verified" in restored.stdout
    # ... and the target opens them with its own key.
    assert probe(target, *gateway_secret)["stack"] == {"api_key": gateway_secret[1]}

    # The admin login is the target's own; everyone else's login came back.
    client = use(target, *target_admin, monkeypatch)
    assert snapshot(ids, tmp_path / "after") == before
    r = requests.get(f"{target.url}/api/2.0/mlflow/users/get", params={"username": user}, auth=(user, password))
    assert r.status_code == 200 and r.json()["user"]["username"] == user
    experiments = {e.name for e in client.search_experiments()}
    assert "bank-churn" in experiments  # the trainer's work came along


# The PostgreSQL a backup is taken on in the cross-version test: the previous
# major version (CI: its Debian look-alike, .ci/lookalikes.env).
OLD_POSTGRES_IMAGE = os.environ.get("OLD_POSTGRES_IMAGE", "postgres:15.14-bookworm")


def server_version(s: Stack) -> int:
    out = s.compose("exec", "-T", "postgres", "psql", "-U", "postgres", "-tAc", "SHOW server_version_num").stdout
    return int(out.strip()) // 10000


def test_postgresql_major_upgrade_by_backup_and_restore(stack: Stack, monkeypatch, tmp_path: Path) -> None:
    """scripts/backup + scripts/restore is the PostgreSQL major-version upgrade
    path, exactly as docs/operations.md gives it: back up on PostgreSQL 15,
    remove the database volume, start on 17, restore; every count and object
    verified, and MLflow reads everything back the same."""
    s = stack.sibling("mlflowpgup", POSTGRES_IMAGE=OLD_POSTGRES_IMAGE)
    try:
        s.compose("up", "--detach", "--wait", "--wait-timeout", "300", "nginx")
        assert server_version(s) == 15
        use(s, "admin", s.secret("mlflow_admin_password"), monkeypatch)
        ids = populate(tmp_path / "data", "pg-upgrade")
        before = snapshot(ids, tmp_path / "before")

        made = s.script("backup", "--out", str(tmp_path / "pg-upgrade"))
        assert made.returncode == 0, made.stderr
        archive = next((tmp_path / "pg-upgrade").glob("mlflow-backup-*.tar.gz"))
        s.compose("down")
        removed = subprocess.run(["docker", "volume", "rm", f"{s.project}_postgres-data"], capture_output=True)
        assert removed.returncode == 0, removed.stderr
        s.env["POSTGRES_IMAGE"] = stack.env.get("POSTGRES_IMAGE") or os.environ.get("POSTGRES_IMAGE", "")
        if not s.env["POSTGRES_IMAGE"]:
            del s.env["POSTGRES_IMAGE"]  # the default image
        s.compose("up", "--detach", "--wait", "--wait-timeout", "300", "nginx")
        assert server_version(s) == 17
        restored = s.script("restore", str(archive), "--force")
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert "restore verified" in restored.stdout  # every count and object, against the manifest

        use(s, "admin", s.secret("mlflow_admin_password"), monkeypatch)
        assert snapshot(ids, tmp_path / "after") == before
    finally:
        s.compose("down", "--volumes", check=False)
