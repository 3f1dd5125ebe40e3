"""The trainer container ran a full sweep into the stack with its own account."""

from __future__ import annotations

import os

import mlflow
import pandas as pd
import pytest
import requests
import yaml
from mlflow.exceptions import MlflowException

from stack import Stack, unique

EXPERIMENT = "bank-churn"
MODEL = "bank-churn-classifier"
METRICS = {"auc_roc", "precision", "recall", "f1", "accuracy", "log_loss"}
FIGURES = {"roc_curve.png", "precision_recall_curve.png", "confusion_matrix.png", "feature_importance.png"}
NEW_ROWS = pd.DataFrame(
    {
        "CreditScore": [580.0, 790.0, 655.0],
        "Age": [61, 27, 44],
        "Tenure": [2, 7, 5],
        "NumOfProducts": [3, 2, 1],
        "Balance": [142_000.5, 0.0, 88_000.0],
        "EstimatedSalary": [41_000.0, 150_000.0, 99_000.0],
        "HasCrCard": [True, False, True],
        "IsActiveMember": [False, True, True],
        "Geography": ["Germany", "France", "Spain"],
        "Gender": ["Female", "Male", "Female"],
    }
)


@pytest.fixture(scope="module")
def trained(stack: Stack, tracking: None) -> list:
    """Wait (bounded) for the trainer that `up` started, then return its runs."""
    code = stack.wait_exited("trainer", timeout=900)
    logs = stack.compose("logs", "--no-color", "trainer").stdout
    assert code == 0, f"trainer exited {code}:\n{logs}"
    assert "champion" in logs and "[bankchurn]" in logs, logs
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None, "the trainer's experiment does not exist"
    return client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'")


def test_at_least_three_complete_runs(trained: list) -> None:
    assert len(trained) >= 3
    client = mlflow.MlflowClient()
    for run in trained:
        assert METRICS <= set(run.data.metrics), run.data.metrics
        assert {"model", "data_version", "train_size", "test_size"} <= set(run.data.params)
        assert run.data.tags["model_type"] and run.data.tags["data_version"] and run.data.tags["code_version"]
        figures = {f.path.split("/")[-1] for f in client.list_artifacts(run.info.run_id, "figures")}
        assert figures == FIGURES
        top = {f.path for f in client.list_artifacts(run.info.run_id)}
        assert {"feature_importance.csv", "config"} <= top
        config = yaml.safe_load(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/config/config.yaml"))
        assert config["mlflow"]["experiment"] == EXPERIMENT
        assert config["data"]["version"] == run.data.tags["data_version"]
        datasets = run.inputs.dataset_inputs
        assert len(datasets) == 1 and datasets[0].dataset.digest
        version = run.data.tags["bankchurn.model_version"]
        mv = client.get_model_version(MODEL, version)
        assert mv.run_id == run.info.run_id
        info = mlflow.models.get_model_info(f"models:/{MODEL}/{version}")
        assert set(info.signature.inputs.input_names()) == set(NEW_ROWS.columns)


def test_champion_is_the_best_run_and_says_its_auc(trained: list) -> None:
    client = mlflow.MlflowClient()
    best = max(trained, key=lambda r: r.data.metrics["auc_roc"])
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id == best.info.run_id
    assert f"AUC {best.data.metrics['auc_roc']:.4f}" in champion.description
    assert best.data.tags["data_version"] in champion.description


def test_champion_predicts_churn_probabilities_and_enforces_schema(trained: list) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    proba = pd.DataFrame(model.predict(NEW_ROWS)).to_numpy()
    assert proba.shape == (3, 2)
    assert ((proba >= 0) & (proba <= 1)).all()
    assert abs(proba.sum(axis=1) - 1).max() < 1e-9
    assert proba[0, 1] > proba[1, 1]  # older, inactive, 3 products, Germany: likelier to leave
    with pytest.raises(MlflowException, match="(?i)missing inputs|schema"):
        model.predict(NEW_ROWS.drop(columns=["Age"]))
    with pytest.raises(MlflowException, match="(?i)incompatible input types|schema|failed to convert"):
        model.predict(NEW_ROWS.assign(Balance=["lots", "none", "some"]))


def test_second_run_with_nothing_changed_logs_nothing(stack: Stack, trained: list) -> None:
    client = mlflow.MlflowClient()
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    before = {r.info.run_id for r in client.search_runs([exp_id])}
    proc = stack.compose("run", "--rm", "trainer", timeout=900)
    assert "nothing changed" in proc.stdout
    assert {r.info.run_id for r in client.search_runs([exp_id])} == before


def test_trainer_account_is_not_an_admin(stack: Stack, trained: list, admin: tuple[str, str]) -> None:
    password = stack.compose("exec", "-T", "mlflow-server", "cat", "/run/secrets/trainer_password").stdout.strip()
    creds = ("trainer", password)
    r = requests.get(f"{stack.url}/api/2.0/mlflow/experiments/search?max_results=1", auth=creds, timeout=10)
    assert r.status_code == 200  # a working account...
    r = requests.post(
        f"{stack.url}/api/2.0/mlflow/users/create",
        json={"username": unique("sneaky"), "password": "Another-long-password-1"},
        auth=creds,
        timeout=10,
    )
    assert r.status_code == 403  # ...that can't manage users
    r = requests.get(f"{stack.url}/api/2.0/mlflow/users/get", params={"username": admin[0]}, auth=creds, timeout=10)
    assert r.status_code == 403
    assert os.environ.get("MLFLOW_TRACKING_USERNAME") != "trainer"
