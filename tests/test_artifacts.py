"""Artifacts go through the server's proxy into the bucket, byte for byte."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import mlflow

from stack import Stack, unique

SIZE = 64 * 1024 * 1024  # at least 50 MB, not a multiple of any chunk size below
SIZE += 12345


def write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def test_large_artifact_round_trip_without_s3_credentials(stack: Stack, tracking: None, tmp_path: Path) -> None:
    assert "AWS_SECRET_ACCESS_KEY" not in os.environ
    src = tmp_path / "weights.bin"
    digest = write_random(src, SIZE)

    mlflow.set_experiment(unique("artifacts"))
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(src), artifact_path="blobs")
        mlflow.log_dict({"answer": 42}, "meta/info.json")
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")

    client = mlflow.MlflowClient()
    listed = {f.path: f.file_size for f in client.list_artifacts(run.info.run_id, "blobs")}
    assert listed == {"blobs/weights.bin": SIZE}

    out = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="blobs/weights.bin", dst_path=str(tmp_path / "dl")
        )
    )
    assert out.stat().st_size == SIZE
    assert sha256_file(out) == digest
    assert mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/meta/info.json") == {"answer": 42}

    # The object really is in the bucket, under the run's artifact path.
    rel = run.info.artifact_uri.removeprefix("mlflow-artifacts:/").strip("/")
    probe = stack.bucket_objects(rel)
    key = f"{rel}/blobs/weights.bin"
    assert probe["objects"][key] == {"size": SIZE, "sha256": digest}
    assert f"{rel}/meta/info.json" in probe["objects"]


def test_server_advertises_proxied_transfers_only(stack: Stack, http) -> None:
    # Presigned URLs would send clients (and the UI) to the private S3 store.
    for prefix in ("api", "ajax-api"):
        info = http.get(f"{stack.url}/{prefix}/3.0/mlflow/server-info", timeout=10).json()
        assert info["multipart_uploads_enabled"] is False
        assert info["multipart_downloads_enabled"] is False
    r = http.get(f"{stack.url}/api/2.0/mlflow-artifacts/presigned/0/x/artifacts/a.bin", timeout=10)
    assert r.status_code == 501


def test_clients_that_force_multipart_fall_back_to_the_proxy(
    stack: Stack, tracking: None, tmp_path: Path, monkeypatch
) -> None:
    # Teammates who set MLflow's multipart switches (common advice for big
    # models) must still get their artifact stored and back, through the proxy:
    # the stack refuses presigned/multipart S3 transfers in the words MLflow's
    # client takes as "not supported here" instead of failing the upload.
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "true")
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "true")
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", str(1 << 20))
    monkeypatch.setenv("MLFLOW_MULTIPART_DOWNLOAD_MINIMUM_FILE_SIZE", str(1 << 20))
    size = 3 * (1 << 20) + 7
    src = tmp_path / "model.bin"
    digest = write_random(src, size)

    mlflow.set_experiment(unique("multipart"))
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(src))
    out = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="model.bin", dst_path=str(tmp_path / "dl")
        )
    )
    assert sha256_file(out) == digest

    rel = run.info.artifact_uri.removeprefix("mlflow-artifacts:/").strip("/")
    assert stack.bucket_objects(rel)["objects"] == {f"{rel}/model.bin": {"size": size, "sha256": digest}}
