"""`log_batch` of metrics goes through the stack's one-transaction view
(mlflow-server/stack_ops/server/logbatch.py): on PostgreSQL, through nginx, as a
teammate, the same batches give the same answers as a plain MLflow server with basic
auth (MLflow's own views and store, on the stack's database) and store the same
points and latest values, NaN, infinities and repeated points included; bad input
gets MLflow's errors and stores nothing; MLflow's authorization still decides;
concurrent batches of one run lose nothing."""

from __future__ import annotations

import json
import math
import random
import threading

import pytest
import requests

import plain_mlflow
from stack import Stack, new_account, unique

LOG_BATCH = "/api/2.0/mlflow/runs/log-batch"
ODD = [0.0, -0.0, 1.0, 0.1, 1 / 3, 5e-324, 1e308, -1e-300, math.nan, math.inf, -math.inf]


def as_json(value: float):
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


@pytest.fixture(scope="module")
def writer(stack: Stack, http: requests.Session) -> dict:
    """A teammate and an experiment of theirs (they manage what they create)."""
    user = new_account(stack.url, http, "logger")
    r = requests.post(
        f"{stack.url}/api/2.0/mlflow/experiments/create", json={"name": unique("log-batch")}, auth=user, timeout=30
    )
    assert r.status_code == 200, r.text
    return {"user": user, "experiment_id": r.json()["experiment_id"]}


def new_run(stack: Stack, writer: dict) -> str:
    r = requests.post(
        f"{stack.url}/api/2.0/mlflow/runs/create",
        json={"experiment_id": writer["experiment_id"], "start_time": 0},
        auth=writer["user"],
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()["run"]["info"]["run_id"]


def batches(seed: int, count: int) -> list[list[dict]]:
    """Metric batches with NaN and infinities, points repeated in a batch and
    across batches, many points of one key at equal steps and times, ties."""
    rng = random.Random(seed)
    sent: list[dict] = []
    out = []
    for _ in range(count):
        batch = []
        for _ in range(rng.randint(1, 15)):
            if sent and rng.random() < 0.2:
                batch.append(rng.choice(sent))
                continue
            value = rng.choice(ODD) if rng.random() < 0.5 else round(rng.uniform(-9, 9), rng.randint(0, 4))
            key = rng.choice(["loss", "acc", "val/f1", "ключ"])
            batch.append(
                {"key": key, "value": as_json(value), "timestamp": rng.randint(0, 4), "step": rng.randint(-2, 3)}
            )
        if rng.random() < 0.3:
            batch.append(batch[0])
        sent += batch
        out.append(batch)
    return out


def stored(stack: Stack, user, run_id: str) -> dict:
    """What a client reads back: every point of each key (sorted) and the run's latest values."""
    r = requests.get(f"{stack.url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, auth=user, timeout=30)
    assert r.status_code == 200, r.text
    latest = sorted(r.json()["run"]["data"].get("metrics", []), key=lambda m: m["key"])
    points = {}
    for m in latest:
        h = requests.get(
            f"{stack.url}/api/2.0/mlflow/metrics/get-history",
            params={"run_id": run_id, "metric_key": m["key"]},
            auth=user,
            timeout=60,
        )
        assert h.status_code == 200, h.text
        points[m["key"]] = sorted(json.dumps(p, sort_keys=True) for p in h.json()["metrics"])
    return {"latest": latest, "points": points}


def post(stack: Stack, user, payload: dict, path: str = LOG_BATCH) -> list:
    r = requests.post(f"{stack.url}{path}", json=payload, auth=user, timeout=60)
    return [r.status_code, r.text]


def test_a_run_s_metrics_come_back_in_the_order_a_plain_mlflow_gives(stack: Stack, writer: dict) -> None:
    # The order the first batch named its keys (the trainer's auc_roc first): the
    # UI's compare view charts a run's first metric.
    user = writer["user"]
    keys = ["auc_roc", "precision", "recall", "f1", "accuracy", "log_loss"]
    batch = [{"key": k, "value": 0.5 + i / 100, "timestamp": 1, "step": 0} for i, k in enumerate(keys)]
    theirs, ours = new_run(stack, writer), new_run(stack, writer)
    plain = plain_mlflow.answers(stack, user, [("POST", LOG_BATCH, {"run_id": theirs, "metrics": batch})])
    assert [post(stack, user, {"run_id": ours, "metrics": batch})] == plain == [[200, "{}"]]

    def order(run_id: str) -> list[str]:
        r = requests.get(f"{stack.url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, auth=user, timeout=30)
        assert r.status_code == 200, r.text
        return [m["key"] for m in r.json()["run"]["data"]["metrics"]]

    assert order(ours) == order(theirs) == keys


@pytest.mark.parametrize("seed", [1, 2])
def test_batches_answer_and_store_what_a_plain_mlflow_does(stack: Stack, writer: dict, seed: int) -> None:
    user = writer["user"]
    theirs, ours = new_run(stack, writer), new_run(stack, writer)
    sent = batches(seed, 25)
    plain = plain_mlflow.answers(stack, user, [("POST", LOG_BATCH, {"run_id": theirs, "metrics": b}) for b in sent])
    mine = []
    for i, batch in enumerate(sent):
        path = LOG_BATCH if i % 5 else LOG_BATCH.replace("/api/", "/ajax-api/")  # the UI's prefix too
        mine.append(post(stack, user, {"run_id": ours, "metrics": batch}, path))
    assert mine == plain == [[200, "{}"]] * len(sent)
    got, expected = stored(stack, user, ours), stored(stack, user, theirs)
    assert got == expected
    # Something of every kind was stored and read back.
    values = [json.loads(p)["value"] for pts in got["points"].values() for p in pts]
    assert "NaN" in values and 1.7976931348623157e308 in values and -1.7976931348623157e308 in values
    assert len(values) > 100


BAD = {
    "no timestamp": {"metrics": [{"key": "m", "value": 1}]},
    "a string value": {"metrics": [{"key": "m", "value": "high", "timestamp": 1}]},
    "a negative timestamp": {"metrics": [{"key": "m", "value": 1, "timestamp": -1}]},
    "a bad key": {"metrics": [{"key": "../m", "value": 1, "timestamp": 1}]},
    "too many metrics": {"metrics": [{"key": "m", "value": i, "timestamp": 1} for i in range(1001)]},
    "metrics not a list": {"metrics": {"key": "m", "value": 1, "timestamp": 1}},
}


def test_bad_input_gets_mlflow_s_errors_and_stores_nothing(stack: Stack, writer: dict, admin: tuple) -> None:
    user = writer["user"]
    theirs, ours, gone = new_run(stack, writer), new_run(stack, writer), new_run(stack, writer)
    r = requests.post(f"{stack.url}/api/2.0/mlflow/runs/delete", json={"run_id": gone}, auth=user, timeout=30)
    assert r.status_code == 200, r.text
    one = [{"key": "m", "value": 1, "timestamp": 1}]
    # (who, run, payload): the teammate on their own runs; a run id that names no
    # run is answered by basic auth's permission check for anyone but the admin.
    cases = [(user, "RUN", payload) for payload in BAD.values()]
    cases += [(user, gone, {"metrics": one})]
    cases += [(admin, run, {"metrics": one}) for run in ("0" * 32, "x/../y", None)]

    def calls(who, run_id: str) -> list:
        out = []
        for case_user, target, payload in cases:
            if case_user == who:
                run = run_id if target == "RUN" else target
                out.append(("POST", LOG_BATCH, {**payload, **({"run_id": run} if run else {})}))
        return out

    plain = plain_mlflow.answers(stack, user, calls(user, theirs)) + plain_mlflow.answers(
        stack, admin, calls(admin, theirs)
    )
    sent = [(user, call) for call in calls(user, ours)] + [(admin, call) for call in calls(admin, ours)]
    mine = [post(stack, who, payload) for who, (_, _, payload) in sent]
    for (_, call), got, expected in zip(sent, mine, plain, strict=True):
        assert 400 <= got[0] < 500, (call, got)
        assert [got[0], got[1].replace(ours, theirs)] == expected, call
        assert "error_code" in json.loads(got[1])
    assert "must be in the 'active' state" in mine[len(BAD)][1]
    assert "not found" in mine[len(BAD) + 1][1]
    assert stored(stack, user, ours) == stored(stack, user, theirs) == {"latest": [], "points": {}}


def test_mlflow_s_authorization_still_decides(stack: Stack, http: requests.Session, writer: dict) -> None:
    run_id = new_run(stack, writer)
    reader = new_account(stack.url, http, "onlyreads")  # the default permission: READ
    batch = {"run_id": run_id, "metrics": [{"key": "m", "value": 1, "timestamp": 1}]}
    assert post(stack, reader, batch)[0] == 403
    assert requests.post(f"{stack.url}{LOG_BATCH}", json=batch, timeout=30).status_code == 401
    assert stored(stack, writer["user"], run_id)["latest"] == []
    assert post(stack, writer["user"], batch) == [200, "{}"]
    assert [m["value"] for m in stored(stack, writer["user"], run_id)["latest"]] == [1]


def test_concurrent_batches_of_one_run_lose_nothing(stack: Stack, writer: dict) -> None:
    user, run_id = writer["user"], new_run(stack, writer)
    errors: list = []

    def client(n: int) -> None:
        with requests.Session() as s:
            s.auth = user
            for i in range(20):
                step = n * 20 + i
                metrics = [
                    {"key": k, "value": step / 10, "timestamp": 1000 + step, "step": step} for k in ("a", "b", "c")
                ]
                r = s.post(f"{stack.url}{LOG_BATCH}", json={"run_id": run_id, "metrics": metrics}, timeout=60)
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    got = stored(stack, user, run_id)
    assert {k: len(v) for k, v in got["points"].items()} == {"a": 160, "b": 160, "c": 160}
    assert [(m["key"], m["step"], m["value"]) for m in got["latest"]] == [(k, 159, 15.9) for k in "abc"]


def test_the_client_s_log_metrics_round_trip(tracking) -> None:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_experiment(unique("fluent-batches"))
    with mlflow.start_run() as run:
        for step in range(50):
            mlflow.log_metrics({"loss": 1 / (step + 1), "lr": 0.1}, step=step)
    client = MlflowClient()
    assert client.get_run(run.info.run_id).data.metrics == {"loss": 1 / 50, "lr": 0.1}
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, 1 / (s + 1)) for s in range(50)]


def test_the_server_serves_log_batch_with_the_stack_s_view(stack: Stack) -> None:
    got = plain_mlflow.installed(stack, "_log_batch", LOG_BATCH, "POST")
    assert got["view"] == "stack_ops.server.logbatch"
