"""The S3 store: one setting picks it, no store runs over the other's data, and
moving a stack's artifacts to SeaweedFS is one command.

MinIO's server can't run on CI machines (no binary is reachable on any index),
so in the migration test MinIO's role is played by a second SeaweedFS
instance: the sibling stack's own store before the move. The command copies
every object out with its sha256, removes that store's volume, starts a fresh
SeaweedFS and imports the copy, exactly as it does from MinIO. What stays
unproven live is MinIO itself (its image and entrypoint), which
.ci/check_compose.py checks statically.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from stack import ROOT, Stack, unique

pytestmark = pytest.mark.slow  # other stacks, restarts: `-m "not slow"` leaves it out


def config(store: str) -> tuple[dict, str]:
    env = {**os.environ, "S3_STORE": store}
    proc = subprocess.run(
        ["docker", "compose", "config", "--format", "json"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_one_setting_picks_the_store() -> None:
    seaweedfs = os.environ.get("SEAWEEDFS_IMAGE", "chrislusf/seaweedfs:4.48")
    minio = os.environ.get("MINIO_IMAGE", "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z")
    for store, image, script in (("", seaweedfs, "seaweedfs"), ("seaweedfs", seaweedfs, "seaweedfs")):
        cfg, warnings = config(store)
        s3 = cfg["services"]["s3"]
        assert s3["image"] == image
        assert s3["user"] == "1000:1000" and s3["read_only"] is True
        mounts = {v["target"]: v["source"] for v in s3["volumes"]}
        assert mounts["/stack/entrypoint.sh"].endswith(f"{script}/entrypoint.sh")
        assert "CVE_2025_62506" not in warnings
    cfg, warnings = config("minio")
    s3 = cfg["services"]["s3"]
    assert s3["image"] == minio
    mounts = {v["target"]: v["source"] for v in s3["volumes"]}
    assert mounts["/stack/entrypoint.sh"].endswith("minio/entrypoint.sh")
    assert s3["healthcheck"]["test"] == ["CMD", "/bin/sh", "/stack/health.sh"]
    assert "mc ready local" in Path(mounts["/stack/health.sh"]).read_text()
    # Choosing MinIO prints a one-line warning naming its unfixed CVE on every command.
    assert "MINIO_UNFIXED_CVE_2025_62506_ACCEPTED" in warnings
    # Everything else is the same stack.
    assert sorted(cfg["services"]) == sorted(config("")[0]["services"])


def test_the_store_refuses_to_start_beside_an_old_store_container(stack: Stack) -> None:
    """A store container of an older release (service `minio` or `seaweedfs`)
    still running on the stack's network would serve the same volume: the
    store must not start beside it, and must say what to do. Without one, the
    name is not found (the running stack's own store started)."""
    image = next(c["Image"] for c in stack.containers() if c["Service"] == "s3")
    old = f"{stack.project}-old-minio"
    started = subprocess.run(
        ["docker", "run", "--detach", "--rm", "--name", old, "--network", f"{stack.project}_backend",
         "--network-alias", "minio", "--entrypoint", "sleep", image, "300"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        refused = stack.compose("run", "--rm", "--no-deps", "-T", "s3", check=False)
    finally:
        subprocess.run(["docker", "rm", "--force", old], capture_output=True)
    assert refused.returncode != 0
    said = refused.stdout + refused.stderr
    assert "the old 'minio' container still runs on this stack's network" in said
    assert "docker compose up -d --remove-orphans" in said
    # The stack's own store was left alone: it still answers.
    assert (
        stack.compose("exec", "-T", "s3", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9000/healthz").returncode
        == 0
    )


@pytest.fixture(scope="module")
def sibling(stack: Stack):
    """A second stack of this checkout, without the trainer."""
    with stack.sibling("mlflowstore").session("nginx", "gc") as s:
        yield s


def wait_for_log(s: Stack, service: str, text: str, timeout: float = 90) -> str:
    deadline, logs = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        logs = s.compose("logs", "--no-color", service, check=False).stdout
        if text in logs:
            return logs
        time.sleep(2)
    raise TimeoutError(f"{service} never logged {text!r}; last logs:\n{logs[-2000:]}")


def test_seaweedfs_refuses_a_volume_holding_minio_data(sibling: Stack) -> None:
    """A MinIO stack pulled to this release without S3_STORE=minio: SeaweedFS
    must not start over MinIO's files, and must say what to do."""
    s = sibling
    s.compose("exec", "-T", "s3", "mkdir", "/data/.minio.sys")
    s.compose("restart", "s3")
    logs = wait_for_log(s, "s3", "holds MinIO's data")
    assert "set S3_STORE=minio in .env" in logs and "scripts/migrate-store" in logs
    s.compose("run", "--rm", "--no-deps", "-T", "--entrypoint", "rmdir", "s3", "/data/.minio.sys")
    s.compose("up", "--detach", "--wait", "--wait-timeout", "300", "nginx", "gc")


def test_migrate_store_moves_every_artifact(sibling: Stack, monkeypatch, tmp_path: Path) -> None:
    s = sibling
    admin = ("admin", s.secret("mlflow_admin_password"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin[1])
    x = np.linspace(0, 1, 40).reshape(-1, 2)
    y = (x[:, 0] > 0.5).astype(int)
    files = {"blob.bin": os.urandom(3_000_017), "notes/readme.txt": b"written before the move\n"}
    mlflow.set_experiment(unique("move"))
    with mlflow.start_run() as run:
        for name, data in files.items():
            src = tmp_path / "src" / name
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_bytes(data)
            mlflow.log_artifact(str(src), artifact_path=str(Path(name).parent) if "/" in name else None)
        model = mlflow.sklearn.log_model(LogisticRegression().fit(x, y), name="model")
    before = s.bucket_objects("")["objects"]
    # A file of the old store's own, outside any bucket: gone once the volume is replaced.
    s.compose("exec", "-T", "s3", "touch", "/data/old-store-marker")
    env_file = tmp_path / "dotenv"
    env_file.write_text("HTTP_PORT=8080\nS3_STORE=minio\n")  # what a MinIO stack's .env says

    proc = s.script("migrate-store", "--keep", str(tmp_path / "copy"), "--env-file", str(env_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"all {len(before)} objects, sha256 checked" in proc.stdout
    assert env_file.read_text() == "HTTP_PORT=8080\nS3_STORE=seaweedfs\n"
    assert s.compose("exec", "-T", "s3", "test", "-e", "/data/old-store-marker", check=False).returncode != 0
    # The copy on the host is whole, and the new store holds exactly the same objects.
    kept = json.loads((tmp_path / "copy" / "objects.json").read_text())
    assert kept == before
    assert s.bucket_objects("")["objects"] == before

    # MLflow reads every old artifact, and the model still predicts.
    for name, data in files.items():
        out = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path=name, dst_path=str(tmp_path / "dl")
        )
        assert Path(out).read_bytes() == data, name
    loaded = mlflow.pyfunc.load_model(model.model_uri)
    assert list(loaded.predict(x)) == list(y)
