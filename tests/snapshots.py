"""What the tests write to a stack, and read back to compare: the data a team
would be upset to lose. One helper for every test that moves data between
versions, restarts, backups and stacks (persistence, backup, upgrade).

    ids = populate(tmp_path)                 a run (params, metric history, a blob,
                                             a registered sklearn model with an alias)
    before = snapshot(ids, tmp_path / "a")   everything read back, as plain values
    ...                                      (restart, restore, upgrade)
    assert snapshot(ids, tmp_path / "b") == before

Both act on the tracking server the MLflow client points at
(MLFLOW_TRACKING_URI and credentials in the environment).
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from stack import sha256_file, unique

ROWS = pd.DataFrame({"a": np.arange(50, dtype=float), "b": np.arange(50, dtype=float) % 7})
ALIAS = "champion"


def populate(tmp: Path, prefix: str = "data") -> dict:
    """One run with a param, a 10-step metric history, a 3 MB blob and a
    registered model with the alias `champion`; the ids to read them back."""
    exp_name, model_name = unique(prefix), unique(f"{prefix}-model")
    tmp.mkdir(parents=True, exist_ok=True)
    blob = tmp / "blob.bin"
    blob.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    model = LogisticRegression(max_iter=1000).fit(ROWS, ROWS["a"] > 20)
    mlflow.set_experiment(exp_name)
    with mlflow.start_run() as run:
        mlflow.log_param("depth", "auto")
        for step in range(10):
            mlflow.log_metric("acc", step / 10, step=step)
        mlflow.log_artifact(str(blob))
        mlflow.sklearn.log_model(model, name="model", registered_model_name=model_name, input_example=ROWS.head(2))
    mlflow.MlflowClient().set_registered_model_alias(model_name, ALIAS, "1")
    return {"experiment": exp_name, "run_id": run.info.run_id, "model": model_name}


def snapshot(ids: dict, tmp: Path) -> dict:
    """Everything populate() wrote, read back through the API and the model."""
    client = mlflow.MlflowClient()
    run = client.get_run(ids["run_id"])
    path = mlflow.artifacts.download_artifacts(run_id=ids["run_id"], artifact_path="blob.bin", dst_path=str(tmp))
    loaded = mlflow.pyfunc.load_model(f"models:/{ids['model']}@{ALIAS}")
    return {
        "experiment_id": client.get_experiment_by_name(ids["experiment"]).experiment_id,
        "params": run.data.params,
        "metrics": run.data.metrics,
        "history": [(m.step, m.value) for m in client.get_metric_history(ids["run_id"], "acc")],
        "blob_sha256": sha256_file(Path(path)),
        "alias_version": client.get_model_version_by_alias(ids["model"], ALIAS).version,
        "predictions": np.asarray(loaded.predict(ROWS)).tolist(),
    }
