"""Metric history comes from the stack's fast view (mlflow-server/stack_ops/server/history.py):
the same bytes MLflow's own view writes for the same stored points, every page, every
odd value, every error; for a teammate, the bytes a plain MLflow server with basic auth
(and its redactor) answers them, denied logged models or not; behind MLflow's
authorization; read back whole by MlflowClient."""

from __future__ import annotations

import json
import math
import random
import time
import urllib.parse

import pytest
import requests

import plain_mlflow
from stack import Stack, new_account, unique

HISTORY = "/api/2.0/mlflow/metrics/get-history"

# Runs MLflow's own view (not the stack's) inside the server container, on the
# stack's database, for each query string given on stdin.
MLFLOW_S_VIEW = """
import json, sys
from flask import Flask
from mlflow.server import handlers
from stack_ops.common import Settings
handlers._get_tracking_store(Settings.from_env().tracking_uri(), "s3://unused")
app = Flask("mlflow-s-view")
out = []
for qs in json.loads(sys.stdin.readline()):
    with app.test_request_context("/api/2.0/mlflow/metrics/get-history", query_string=qs):
        r = handlers._get_metric_history()
        out.append([r.status_code, r.get_data(as_text=True)])
print(json.dumps(out))
"""

MAX = 1.7976931348623157e308  # how MLflow stores an infinity
SPECIAL = [math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, 1e308, -1e-300, 1 / 3]


@pytest.fixture(scope="module")
def logged(tracking) -> dict:
    """A run with 3,000 points of `loss`: random values, the special ones, repeated
    timestamps and steps, negative steps; and a second key."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient()
    exp_id = client.create_experiment(unique("history"))
    run_id = client.create_run(exp_id).info.run_id
    rng = random.Random(42)
    now = int(time.time() * 1000)
    points = []
    for i in range(3000):
        value = SPECIAL[i % len(SPECIAL)] if i % 7 == 0 else rng.uniform(-1e3, 1e3)
        points.append(Metric("loss", value, now + i // 3, rng.randrange(-50, 5000)))
    for start in range(0, len(points), 1000):
        client.log_batch(run_id, metrics=points[start : start + 1000])
    client.log_batch(run_id, metrics=[Metric("acc", 0.5, now, 0)])
    return {"run_id": run_id, "experiment_id": exp_id, "points": points}


def mlflow_s_view(stack: Stack, queries: list[str]) -> list[list]:
    out = stack.compose(
        "exec", "-T", "mlflow-server", "python", "-c", MLFLOW_S_VIEW, input=json.dumps(queries) + "\n", timeout=300
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def stack_s_view(stack: Stack, http: requests.Session, query: str, prefix: str = "/api") -> list:
    r = http.get(f"{stack.url}{prefix}{HISTORY.removeprefix('/api')}?{query}", timeout=120)
    return [r.status_code, r.text]


def test_every_page_is_byte_for_byte_mlflow_s(stack: Stack, http: requests.Session, logged: dict) -> None:
    run_id = logged["run_id"]
    base = {"run_id": run_id, "metric_key": "loss"}
    queries = [urllib.parse.urlencode(base), urllib.parse.urlencode({**base, "max_results": 3000})]
    # Page through with 700 points a page, following the tokens the stack hands out.
    token, pages = None, []
    while True:
        q = {**base, "max_results": 700, **({"page_token": token} if token else {})}
        status, body = stack_s_view(stack, http, urllib.parse.urlencode(q))
        assert status == 200
        pages.append(json.loads(body))
        queries.append(urllib.parse.urlencode(q))
        token = pages[-1].get("next_page_token")
        if not token:
            break
    assert [len(p["metrics"]) for p in pages] == [700, 700, 700, 700, 200]
    queries += [
        urllib.parse.urlencode({"run_uuid": run_id, "metric_key": "acc"}),  # the older parameter name
        urllib.parse.urlencode({"run_id": run_id, "metric_key": "never-logged"}),
    ]
    theirs = mlflow_s_view(stack, queries)
    ours = [stack_s_view(stack, http, q) for q in queries]
    for q, mine, mlflow in zip(queries, ours, theirs, strict=True):
        assert mine == mlflow, q
    # The UI's path too.
    assert stack_s_view(stack, http, queries[0], prefix="/ajax-api") == theirs[0]
    # The special values came back as MLflow writes them.
    full = json.loads(ours[0][1])["metrics"]
    assert len(full) == 3000
    values = [m["value"] for m in full]
    assert "NaN" in values and MAX in values and -MAX in values


def test_bad_requests_get_mlflow_s_errors(stack: Stack, http: requests.Session, logged: dict) -> None:
    run_id = logged["run_id"]
    queries = [
        urllib.parse.urlencode({"run_id": run_id, "metric_key": "loss", "max_results": 0}),
        urllib.parse.urlencode({"run_id": run_id, "metric_key": "loss", "max_results": -3}),
        urllib.parse.urlencode({"run_id": run_id, "metric_key": "loss", "page_token": "not-a-token"}),
        urllib.parse.urlencode({"run_id": run_id}),
    ]
    theirs = mlflow_s_view(stack, queries)
    ours = [stack_s_view(stack, http, q) for q in queries]
    for q, mine, mlflow in zip(queries, ours, theirs, strict=True):
        assert 400 <= mine[0] < 500, (q, mine)
        assert mine == mlflow, q
        assert "error_code" in json.loads(mine[1])


def test_the_client_reads_every_point_back(tracking, logged: dict) -> None:
    from mlflow import MlflowClient

    got = MlflowClient().get_metric_history(logged["run_id"], "loss")
    assert len(got) == 3000
    stored = sorted((p.timestamp, p.step) for p in logged["points"])
    assert sorted((m.timestamp, m.step) for m in got) == stored
    assert sum(math.isnan(m.value) for m in got) == sum(math.isnan(p.value) for p in logged["points"])
    finite = sorted(p.value for p in logged["points"] if math.isfinite(p.value))
    assert sorted(m.value for m in got if math.isfinite(m.value) and abs(m.value) != MAX) == finite


def test_mlflow_s_authorization_still_decides(stack: Stack, http: requests.Session, logged: dict) -> None:
    name, password = unique("denied"), "D" + unique("pw").replace("-", "") * 3
    r = http.post(f"{stack.url}/api/2.0/mlflow/users/create", json={"username": name, "password": password})
    assert r.status_code == 200, r.text
    query = urllib.parse.urlencode({"run_id": logged["run_id"], "metric_key": "loss"})
    # The default permission (READ) lets a teammate read it...
    assert requests.get(f"{stack.url}{HISTORY}?{query}", auth=(name, password), timeout=60).status_code == 200
    grant = http.post(
        f"{stack.url}/api/3.0/mlflow/users/permissions/grant",
        json={
            "username": name,
            "resource_type": "experiment",
            "resource_id": logged["experiment_id"],
            "permission": "DENY",
        },
        timeout=30,
    )
    assert grant.status_code == 200, grant.text
    time.sleep(1)  # the change reaches every worker's permission cache
    denied = requests.get(f"{stack.url}{HISTORY}?{query}", auth=(name, password), timeout=60)
    assert denied.status_code == 403
    assert "metrics" not in denied.text
    assert requests.get(f"{stack.url}{HISTORY}?{query}", timeout=60).status_code == 401


@pytest.fixture(scope="module")
def linked(tracking, logged: dict) -> dict:
    """Points of `val` logged against a logged model of the run's experiment (what basic
    auth's history redactor would withhold from a user denied logged models)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient()
    model = client.create_logged_model(logged["experiment_id"], name="linked", source_run_id=logged["run_id"])
    now = int(time.time() * 1000)
    points = [Metric("val", i / 7, now + i, i, model_id=model.model_id, run_id=logged["run_id"]) for i in range(500)]
    client.log_batch(logged["run_id"], metrics=points)
    return {"model_id": model.model_id}


@pytest.fixture(scope="module")
def readers(stack: Stack, http: requests.Session) -> dict:
    """A teammate with the default permissions, and one denied every logged model."""
    denied = new_account(stack.url, http, "nomodels")
    grant = {"username": denied[0], "resource_type": "logged_model", "resource_id": "*", "permission": "DENY"}
    r = http.post(f"{stack.url}/api/3.0/mlflow/users/permissions/grant", json=grant, timeout=30)
    assert r.status_code == 200, r.text
    time.sleep(1)  # the grant reaches every worker's cache
    return {"teammate": new_account(stack.url, http, "reader"), "denied": denied}


@pytest.mark.parametrize("who", ["teammate", "denied"])
def test_a_teammate_gets_what_a_plain_mlflow_answers_them(
    stack: Stack, logged: dict, linked: dict, readers: dict, who: str
) -> None:
    user, run_id = readers[who], logged["run_id"]
    queries = [
        urllib.parse.urlencode({"run_id": run_id, "metric_key": "val"}),
        urllib.parse.urlencode({"run_id": run_id, "metric_key": "val", "max_results": 200}),
        urllib.parse.urlencode({"run_id": run_id, "metric_key": "loss", "max_results": 3000}),
        urllib.parse.urlencode({"run_id": run_id, "metric_key": "loss", "max_results": 0}),  # an error
    ]
    first = json.loads(requests.get(f"{stack.url}{HISTORY}?{queries[1]}", auth=user, timeout=60).text)
    queries.append(
        urllib.parse.urlencode({"run_id": run_id, "metric_key": "val", "page_token": first["next_page_token"]})
    )
    calls = [("GET", HISTORY, q) for q in queries] + [("GET", "/ajax-api/2.0/mlflow/metrics/get-history", queries[0])]
    theirs = plain_mlflow.answers(stack, user, calls)
    ours = []
    for _, path, query in calls:
        r = requests.get(f"{stack.url}{path}?{query}", auth=user, timeout=120)
        ours.append([r.status_code, r.text])
    for call, mine, mlflow in zip(calls, ours, theirs, strict=True):
        assert mine == mlflow, call
    assert [status for status, _ in ours] == [200, 200, 200, 400, 200, 200]
    points = json.loads(ours[0][1])["metrics"]
    assert len(points) == 500 and [p["step"] for p in points] == list(range(500))
    assert len(json.loads(ours[2][1])["metrics"]) == 3000
    assert len(json.loads(ours[1][1])["metrics"]) + len(json.loads(ours[4][1])["metrics"]) == 500
    assert linked["model_id"] not in "".join(body for _, body in ours)


def test_the_server_serves_history_with_the_stack_s_view_and_redactor(stack: Stack) -> None:
    got = plain_mlflow.installed(stack, "_get_metric_history", HISTORY, "GET")
    assert (got["view"], got["redactor"]) == ("stack_ops.server.history", "stack_ops.server.history")
