"""A sweep logs complete runs, promotes the best, and is idempotent: file and sqlite stores."""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from bankchurn.config import load_config
from bankchurn.data import SCHEMA
from bankchurn.train import run_sweep

METRICS = {"auc_roc", "precision", "recall", "f1", "accuracy", "log_loss"}
FIGURES = {"roc_curve.png", "precision_recall_curve.png", "confusion_matrix.png", "feature_importance.png"}


@pytest.fixture(params=["file", "sqlite"])
def tracking_uri(request, tmp_path: Path) -> str:
    uri = f"file:{tmp_path / 'mlruns'}" if request.param == "file" else f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def test_sweep_logs_promotes_and_is_idempotent(write_config, tracking_uri: str) -> None:
    path = write_config()
    config = load_config(path)
    first = run_sweep(config, path, tracking_uri=tracking_uri, log=lambda _: None)
    assert not first.skipped
    assert len(first.run_ids) == 3

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("unit-churn")
    runs = client.search_runs([exp.experiment_id], order_by=["metrics.auc_roc DESC"])
    assert len(runs) == 3
    for run in runs:
        assert run.info.status == "FINISHED"
        assert METRICS <= set(run.data.metrics)
        assert 0.6 < run.data.metrics["auc_roc"] <= 1.0
        assert {"model", "data_version", "train_size", "test_size"} <= set(run.data.params)
        assert int(run.data.params["train_size"]) + int(run.data.params["test_size"]) == 1500
        assert run.data.tags["data_version"] == config.data.version
        arts = {f.path for f in client.list_artifacts(run.info.run_id, "figures")}
        assert {f"figures/{f}" for f in FIGURES} == arts
        top = {f.path for f in client.list_artifacts(run.info.run_id)}
        assert {"feature_importance.csv", "config"} <= top
        assert len(run.inputs.dataset_inputs) == 1
        assert run.inputs.dataset_inputs[0].dataset.digest

    name = config.mlflow.registered_model_name
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.run_id == runs[0].info.run_id
    assert f"{runs[0].data.metrics['auc_roc']:.4f}" in champion.description

    again = run_sweep(config, path, tracking_uri=tracking_uri, log=lambda _: None)
    assert again.skipped
    assert len(client.search_runs([exp.experiment_id])) == 3

    forced = run_sweep(config, path, tracking_uri=tracking_uri, force=True, log=lambda _: None)
    assert not forced.skipped
    assert len(client.search_runs([exp.experiment_id])) == 6


def test_champion_predicts_probabilities_and_enforces_schema(write_config, tracking_uri: str) -> None:
    path = write_config(**{"sweep": [{"max_depth": 4}]})
    run_sweep(load_config(path), path, tracking_uri=tracking_uri, log=lambda _: None)
    model = mlflow.pyfunc.load_model("models:/bank-churn-classifier@champion")
    rows = pd.DataFrame(
        {
            "CreditScore": [600.0, 820.0],
            "Age": [62, 25],
            "Tenure": [1, 8],
            "NumOfProducts": [3, 2],
            "Balance": [130_000.0, 0.0],
            "EstimatedSalary": [50_000.0, 120_000.0],
            "HasCrCard": [True, False],
            "IsActiveMember": [False, True],
            "Geography": ["Germany", "France"],
            "Gender": ["Female", "Male"],
        }
    )
    assert list(rows.columns) != [] and set(rows.columns) == set(SCHEMA)
    proba = pd.DataFrame(model.predict(rows)).to_numpy()
    assert proba.shape == (2, 2)
    assert ((proba >= 0) & (proba <= 1)).all()
    assert abs(proba.sum(axis=1) - 1).max() < 1e-9
    assert proba[0, 1] > proba[1, 1]  # the old, inactive German customer is likelier to leave
    with pytest.raises(MlflowException, match="(?i)missing inputs|schema"):
        model.predict(rows.drop(columns=["Age"]))
    with pytest.raises(MlflowException, match="(?i)incompatible input types|schema|failed to convert"):
        model.predict(rows.assign(Age=["sixty", "twenty"]))


def test_run_links_use_the_public_address_and_no_integer_hint(
    write_config, tracking_uri: str, monkeypatch, capsys
) -> None:
    """The tracking URI may be an address only containers reach (the stack's
    trainer uses http://nginx:8080): links go to the address people open, and
    MLflow's own link (with the container address) is not printed. MLflow's
    integer-column hint is not printed either (train.py says why)."""
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    path = write_config()
    logged: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_sweep(
            load_config(path), path, tracking_uri=tracking_uri, log=logged.append, public_url="https://mlflow.example/"
        )
    exp_id = mlflow.MlflowClient().get_experiment_by_name("unit-churn").experiment_id
    links = [line.split("] ", 1)[1] for line in logged if "https://mlflow.example" in line]
    assert links == [f"https://mlflow.example/#/experiments/{exp_id}/runs/{run_id}" for run_id in result.run_ids]
    assert not [(w.filename, w.lineno) for w in caught if "Inferred schema contains integer column" in str(w.message)]
