"""Data written by an MLflow 3.10 server survives the upgrade to the pinned version."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from sklearn.linear_model import LogisticRegression

from stack import Stack, free_port, unique

pytestmark = pytest.mark.slow  # other stacks, restarts: `-m "not slow"` leaves it out

OLD = "3.10.1"
ROWS = pd.DataFrame({"a": np.linspace(-1, 1, 30), "b": np.linspace(1, 3, 30) ** 0.5})


@pytest.fixture(scope="module")
def old_stack(stack: Stack):
    """A fresh stack whose server image is built on MLflow 3.10 (same Dockerfile, older pin)."""
    current = os.environ.get("MLFLOW_SERVER_IMAGE", "mlflow-stack/mlflow-server:0.1.0")
    s = Stack(project=unique("mlflowupgrade").replace("-", ""), port=free_port(), env=dict(stack.env))
    s.env.update(
        {
            "HTTP_PORT": str(s.port),
            "MLFLOW_SERVER_IMAGE": f"mlflow-stack/mlflow-server:mlflow-{OLD}",
            "MLFLOW_BUILD_VERSION": OLD,
        }
    )
    try:
        s.compose("build", "--quiet", "mlflow-server", timeout=1200)
        s.compose("up", "--detach", "--wait", "--wait-timeout", "300", "nginx")
        yield s, current
    finally:
        s.compose("down", "--volumes", check=False)


def snapshot(ids: dict, tmp: Path) -> dict:
    client = mlflow.MlflowClient()
    run = client.get_run(ids["run_id"])
    blob = mlflow.artifacts.download_artifacts(run_id=ids["run_id"], artifact_path="blob.bin", dst_path=str(tmp))
    model = mlflow.pyfunc.load_model(f"models:/{ids['model']}@champion")
    return {
        "params": run.data.params,
        "history": [(m.step, m.value) for m in client.get_metric_history(ids["run_id"], "acc")],
        "blob": hashlib.sha256(Path(blob).read_bytes()).hexdigest(),
        "alias": client.get_model_version_by_alias(ids["model"], "champion").version,
        "predictions": np.asarray(model.predict(ROWS)).tolist(),
    }


def test_upgrade_from_mlflow_3_10_keeps_everything(old_stack, monkeypatch, tmp_path: Path) -> None:
    s, current_image = old_stack
    admin = ("admin", s.secret("mlflow_admin_password"))
    assert requests.get(f"{s.url}/version", auth=admin, timeout=10).text.strip() == OLD
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin[1])

    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(1_000_003))
    name = unique("upgrade-model")
    mlflow.set_experiment(unique("upgrade"))
    with mlflow.start_run() as run:
        mlflow.log_param("written_by", f"mlflow-{OLD}")
        for step in range(12):
            mlflow.log_metric("acc", step / 12, step=step)
        mlflow.log_artifact(str(blob))
        mlflow.sklearn.log_model(
            LogisticRegression().fit(ROWS, ROWS["a"] > 0), name="model", registered_model_name=name
        )
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", "1")
    ids = {"run_id": run.info.run_id, "model": name}
    before = snapshot(ids, tmp_path / "before")

    # Switch to the pinned image: `up` recreates the server; `migrate` upgrades first.
    s.env["MLFLOW_SERVER_IMAGE"] = current_image
    s.env.pop("MLFLOW_BUILD_VERSION")
    s.compose("up", "--detach", "--wait", "--wait-timeout", "300", "nginx")
    migrate_log = s.compose("logs", "--no-color", "migrate").stdout
    assert "upgrading tracking schema" in migrate_log, migrate_log
    assert requests.get(f"{s.url}/version", auth=admin, timeout=10).text.strip() == "3.17.2"
    assert snapshot(ids, tmp_path / "after") == before
