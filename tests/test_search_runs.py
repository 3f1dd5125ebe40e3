"""Run search comes from the stack's fast view and redactor (mlflow-server/stack_ops/server/search.py):
for every query, page and error, the bytes a plain MLflow server with basic auth answers the same user
on the same data; a user denied logged models gets their links withheld exactly as MLflow withholds
them; the client reads every run back."""

from __future__ import annotations

import json
import math
import time

import pytest
import requests

import plain_mlflow
from stack import Stack, new_account, unique

SEARCH = "/api/2.0/mlflow/runs/search"

ODD_VALUES = [math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, 1e308, 1 / 3, -42.125]
ODD_TEXT = ["plain", "ünïcødé ключ", 'quote"and\\slash', "tab\there", "emoji 🚀"]
RUNS = 30


@pytest.fixture(scope="module")
def seeded(stack: Stack, http: requests.Session, tracking) -> dict:
    """An experiment with runs of every shape: odd metric values and text, datasets, logged models
    with their metrics, deleted runs; a teammate, and a teammate denied logged models."""
    from mlflow import MlflowClient
    from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelOutput, Metric, Param, RunTag

    client = MlflowClient()
    exp = client.create_experiment(unique("search"))
    now = int(time.time() * 1000)
    runs, models = [], []
    for i in range(RUNS):
        rid = client.create_run(exp, run_name=ODD_TEXT[i % len(ODD_TEXT)] + str(i)).info.run_id
        client.log_batch(
            rid,
            metrics=[Metric("loss", ODD_VALUES[i % len(ODD_VALUES)], now + i, i), Metric("acc", i / RUNS, now, 0)],
            params=[Param("depth", str(i % 4)), Param("note", ODD_TEXT[(i + 1) % len(ODD_TEXT)])],
            tags=[RunTag("team", ODD_TEXT[(i + 2) % len(ODD_TEXT)])],
        )
        if i % 5 == 0:
            dataset = Dataset("train", f"d{i}", "local", '{"uri": "/data"}', '{"cols": 3}', '{"rows": 10}')
            client.log_inputs(rid, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])
        if i % 3 == 0:
            model = client.create_logged_model(exp, name=f"m{i}", source_run_id=rid)
            client.log_outputs(rid, [LoggedModelOutput(model.model_id, 0)])
            client.log_batch(rid, metrics=[Metric("auc", 0.9, now, 0, model_id=model.model_id)])
            models.append(model.model_id)
        if i % 11 == 10:
            client.delete_run(rid)
        runs.append(rid)
    everything = http.post(
        f"{stack.url}{SEARCH}", json={"experiment_ids": [exp], "max_results": 1000, "run_view_type": "ALL"}, timeout=60
    )
    # Each model as its run's output. (A search's runs carry their latest metrics without the
    # model id, and no model inputs: MLflow's store leaves those to get_run.)
    links = model_links(everything.text)
    assert links == len(models) == 10, everything.text[:2000]
    teammate = new_account(stack.url, http, "searcher")
    denied = new_account(stack.url, http, "nomodels")
    grant = http.post(
        f"{stack.url}/api/3.0/mlflow/users/permissions/grant",
        json={"username": denied[0], "resource_type": "logged_model", "resource_id": "*", "permission": "DENY"},
        timeout=30,
    )
    assert grant.status_code == 200, grant.text
    time.sleep(1)  # the grant reaches every worker's cache
    return {
        "experiment_id": exp,
        "runs": runs,
        "models": models,
        "links": links,
        "teammate": teammate,
        "denied": denied,
    }


def the_stack(stack: Stack, user: tuple[str, str], path: str, body: dict) -> list:
    r = requests.post(f"{stack.url}{path}", json=body, auth=user, timeout=120)
    return [r.status_code, r.text]


def model_links(answer: str) -> int:
    runs = json.loads(answer).get("runs", [])
    return sum(
        len(r.get("inputs", {}).get("model_inputs", []))
        + len(r.get("outputs", {}).get("model_outputs", []))
        + sum("model_id" in m for m in r["data"].get("metrics", []))
        for r in runs
    )


def queries(exp: str) -> list[dict]:
    base = {"experiment_ids": [exp]}
    return [
        base,
        {**base, "max_results": 1000, "run_view_type": "ALL"},
        {**base, "filter": "params.depth = '2'", "order_by": ["metrics.loss DESC"]},
        {**base, "filter": "metrics.acc > 0.5", "order_by": ["attributes.run_name", "start_time DESC"]},
        {**base, "filter": "tags.team LIKE '%ü%'", "run_view_type": "ACTIVE_ONLY"},
        {**base, "run_view_type": "DELETED_ONLY"},
        {**base, "filter": "params.depth = 'none'"},  # no runs: "{}"
    ]


def pages(stack: Stack, user: tuple[str, str], exp: str) -> list[dict]:
    """The bodies of a walk through every run, 7 a page, following the stack's tokens."""
    bodies, token = [], None
    while True:
        body = {"experiment_ids": [exp], "max_results": 7, "run_view_type": "ALL"}
        if token:
            body["page_token"] = token
        status, text = the_stack(stack, user, SEARCH, body)
        assert status == 200, text
        bodies.append(body)
        token = json.loads(text).get("next_page_token")
        if not token:
            return bodies


@pytest.mark.parametrize("who", ["admin", "teammate", "denied"])
def test_every_answer_is_byte_for_byte_a_plain_mlflow_s(stack: Stack, admin, seeded: dict, who: str) -> None:
    user = admin if who == "admin" else seeded[who]
    exp = seeded["experiment_id"]
    walk = pages(stack, user, exp)
    assert len(walk) == math.ceil(RUNS / 7)
    bodies = [(SEARCH, b) for b in queries(exp) + walk]
    bodies.append(("/ajax-api/2.0/mlflow/runs/search", queries(exp)[1]))  # the UI's path
    theirs = plain_mlflow.answers(stack, user, [("POST", path, body) for path, body in bodies])
    ours = [the_stack(stack, user, path, body) for path, body in bodies]
    for (path, body), mine, mlflow in zip(bodies, ours, theirs, strict=True):
        assert mine == mlflow, (path, body)
    everything = json.loads(ours[1][1])
    assert len(everything["runs"]) == RUNS
    assert ours[6] == [200, "{}"]
    # What a user sees of the logged models: all of them, unless denied them.
    links = model_links(ours[1][1])
    assert links == (0 if who == "denied" else seeded["links"])


def test_the_server_serves_search_with_the_stack_s_view_and_redactor(stack: Stack) -> None:
    got = plain_mlflow.installed(stack, "_search_runs", SEARCH, "POST")
    assert (got["view"], got["redactor"]) == ("stack_ops.server.search", "stack_ops.server.search")
    # MLflow's modules and the app (~320,000 objects) are out of the collector's reach: a full
    # collection walked them all, about 165 ms, every few searches (app.frozen).
    assert got["frozen"] > 100_000, got


def test_bad_searches_get_mlflow_s_errors_and_change_nothing(stack: Stack, seeded: dict) -> None:
    user, exp = seeded["teammate"], seeded["experiment_id"]
    bad = [
        {"experiment_ids": [exp], "max_results": 50001},
        {"experiment_ids": [exp], "max_results": "many"},
        # (Not a bad comparator: MLflow lists the valid ones from a set, in a per-process order.)
        {"experiment_ids": [exp], "filter": "colour.depth = '2'"},
        {"experiment_ids": [exp], "filter": "params.depth = "},
        {"experiment_ids": [exp], "order_by": ["nonsense.column"]},
        {"experiment_ids": [exp], "page_token": "not-a-token"},
        {"experiment_ids": exp},
    ]
    before = the_stack(stack, user, SEARCH, {"experiment_ids": [exp], "run_view_type": "ALL"})
    theirs = plain_mlflow.answers(stack, user, [("POST", SEARCH, b) for b in bad])
    for body, mlflow in zip(bad, theirs, strict=True):
        mine = the_stack(stack, user, SEARCH, body)
        assert mine == mlflow, body
        assert mine[0] == 400 and json.loads(mine[1])["error_code"] == "INVALID_PARAMETER_VALUE", body
    assert the_stack(stack, user, SEARCH, {"experiment_ids": [exp], "run_view_type": "ALL"}) == before


def test_the_client_reads_every_run_back(tracking, seeded: dict) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    got = MlflowClient().search_runs([seeded["experiment_id"]], run_view_type=ViewType.ALL, max_results=1000)
    assert sorted(r.info.run_id for r in got) == sorted(seeded["runs"])
    losses = {r.info.run_name: r.data.metrics["loss"] for r in got}
    for i in range(RUNS):
        want, value = ODD_VALUES[i % len(ODD_VALUES)], losses[ODD_TEXT[i % len(ODD_TEXT)] + str(i)]
        assert (math.isnan(value) and math.isnan(want)) or value == want or abs(want) == math.inf
    assert sum(len(r.inputs.dataset_inputs) for r in got) == len(range(0, RUNS, 5))
    assert sorted(o.model_id for r in got for o in r.outputs.model_outputs) == sorted(seeded["models"])


def test_a_revoked_logged_model_denial_shows_the_links_again(stack: Stack, http: requests.Session, seeded) -> None:
    name, password = new_account(stack.url, http, "revoked")
    exp = seeded["experiment_id"]
    body = {"experiment_ids": [exp], "max_results": 1000, "run_view_type": "ALL"}
    grant = {"username": name, "resource_type": "logged_model", "resource_id": "*", "permission": "DENY"}
    assert http.post(f"{stack.url}/api/3.0/mlflow/users/permissions/grant", json=grant, timeout=30).ok
    time.sleep(1)
    assert model_links(the_stack(stack, (name, password), SEARCH, body)[1]) == 0
    revoke = http.post(f"{stack.url}/api/3.0/mlflow/users/permissions/revoke", json=grant, timeout=30)
    assert revoke.status_code == 200, revoke.text
    time.sleep(1)
    assert model_links(the_stack(stack, (name, password), SEARCH, body)[1]) == seeded["links"]
