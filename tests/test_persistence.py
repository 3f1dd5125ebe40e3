"""Data survives restarts of every stateful service, and down + up."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from stack import Stack, unique

pytestmark = pytest.mark.slow  # other stacks, restarts: `-m "not slow"` leaves it out

ROWS = pd.DataFrame({"a": np.arange(50, dtype=float), "b": np.arange(50, dtype=float) % 7})


def populate(tmp: Path) -> dict:
    exp_name, model_name = unique("persist"), unique("persist-model")
    blob = tmp / "blob.bin"
    blob.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    model = LogisticRegression(max_iter=1000).fit(ROWS, ROWS["a"] > 20)
    mlflow.set_experiment(exp_name)
    with mlflow.start_run() as run:
        mlflow.log_param("depth", "auto")
        for step in range(10):
            mlflow.log_metric("acc", step / 10, step=step)
        mlflow.log_artifact(str(blob))
        mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name=model_name,
            input_example=ROWS.head(2),
        )
    mlflow.MlflowClient().set_registered_model_alias(model_name, "prod", "1")
    return {"experiment": exp_name, "run_id": run.info.run_id, "model": model_name}


def snapshot(ids: dict, tmp: Path) -> dict:
    client = mlflow.MlflowClient()
    run = client.get_run(ids["run_id"])
    path = mlflow.artifacts.download_artifacts(run_id=ids["run_id"], artifact_path="blob.bin", dst_path=str(tmp))
    loaded = mlflow.pyfunc.load_model(f"models:/{ids['model']}@prod")
    return {
        "experiment_id": client.get_experiment_by_name(ids["experiment"]).experiment_id,
        "params": run.data.params,
        "metrics": run.data.metrics,
        "history": [(m.step, m.value) for m in client.get_metric_history(ids["run_id"], "acc")],
        "blob_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
        "alias_version": client.get_model_version_by_alias(ids["model"], "prod").version,
        "predictions": np.asarray(loaded.predict(ROWS)).tolist(),
    }


def test_data_survives_restarts_and_down_up(stack: Stack, tracking: None, tmp_path: Path) -> None:
    ids = populate(tmp_path)
    before = snapshot(ids, tmp_path / "before")
    assert before["history"] == [(s, s / 10) for s in range(10)]
    assert sum(before["predictions"]) > 0

    stack.compose("restart", "postgres", stack.s3_service, "mlflow-server")
    stack.up()
    stack.wait_http_ok()
    assert snapshot(ids, tmp_path / "after-restart") == before

    stack.compose("down")  # volumes kept
    stack.up()
    stack.wait_http_ok()
    assert snapshot(ids, tmp_path / "after-down-up") == before
