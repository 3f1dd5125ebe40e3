"""Experiments, runs, params, metric history, tags and log_batch round-trip."""

from __future__ import annotations

import time

import mlflow
from mlflow.entities import Metric, Param, RunTag

from stack import unique


def test_tracking_round_trip(tracking: None) -> None:
    client = mlflow.MlflowClient()
    name = unique("tracking")
    exp_id = client.create_experiment(name, tags={"team": "churn"})
    run = client.create_run(exp_id, run_name="round-trip", tags={"stage": "test"})
    run_id = run.info.run_id

    client.log_param(run_id, "learning_rate", "0.05")
    client.set_tag(run_id, "owner", "ci")
    for step in range(20):
        client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step, timestamp=1_700_000_000_000 + step)
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(f"m{i}", float(i) * 1.5, now, 0) for i in range(10)],
        params=[Param(f"p{i}", f"value-{i}") for i in range(5)],
        tags=[RunTag("batch", "yes")],
    )
    client.set_terminated(run_id, "FINISHED")

    exp = client.get_experiment_by_name(name)
    assert exp.experiment_id == exp_id
    assert exp.tags["team"] == "churn"
    assert exp.artifact_location.startswith("mlflow-artifacts:/")

    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert got.info.run_name == "round-trip"
    assert got.data.params == {"learning_rate": "0.05", **{f"p{i}": f"value-{i}" for i in range(5)}}
    assert {k: v for k, v in got.data.tags.items() if not k.startswith("mlflow.")} == {
        "stage": "test",
        "owner": "ci",
        "batch": "yes",
    }
    assert got.data.metrics == {"loss": 1.0 / 20, **{f"m{i}": float(i) * 1.5 for i in range(10)}}

    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value, m.timestamp) for m in sorted(history, key=lambda m: m.step)] == [
        (step, 1.0 / (step + 1), 1_700_000_000_000 + step) for step in range(20)
    ]

    found = client.search_runs([exp_id], filter_string="params.learning_rate = '0.05' and metrics.m3 > 4")
    assert [r.info.run_id for r in found] == [run_id]


def test_fluent_api_run(tracking: None) -> None:
    mlflow.set_experiment(unique("fluent"))
    with mlflow.start_run() as run:
        mlflow.log_params({"alpha": 0.5, "solver": "lbfgs"})
        mlflow.log_metrics({"auc": 0.91, "f1": 0.62}, step=3)
        mlflow.set_tags({"data_version": "v1"})
    got = mlflow.get_run(run.info.run_id)
    assert got.data.params == {"alpha": "0.5", "solver": "lbfgs"}
    assert got.data.metrics == {"auc": 0.91, "f1": 0.62}
    assert got.data.tags["data_version"] == "v1"
