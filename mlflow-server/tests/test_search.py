"""Run search writes what MLflow writes, byte for byte, and withholds what MLflow withholds.

search.render must equal message_to_json for every message; the fast view must equal
MLflow's `_search_runs` on the same store (a real SqlAlchemyStore on SQLite here, the
stack's PostgreSQL in tests/test_search_runs.py); the redactor must leave exactly what
MLflow's leaves, for a user denied logged models and for one who is not."""

from __future__ import annotations

import json
import math
import random
from types import SimpleNamespace

import pytest
from flask import Flask, Response
from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    LoggedModelInput,
    LoggedModelOutput,
    Metric,
    Param,
    Run,
    RunData,
    RunInfo,
    RunInputs,
    RunOutputs,
    RunTag,
)
from mlflow.protos.service_pb2 import SearchExperiments, SearchRuns, StartTraceV3
from mlflow.utils.proto_json_utils import message_to_json

from stack_ops.server import search

ODD_VALUES = [0.0, -0.0, 1.0, 0.1, 1 / 3, 1e-300, 5e-324, 1e16, 1e308, -42.125, math.nan, math.inf, -math.inf]
ODD_TEXT = ["plain", "ünïcødé ключ", 'quote"and\\slash', "tab\tnew\nline", "\u2028\x00\x1f", "emoji 🚀", ""]


def a_run(i: int, rng: random.Random, *, linked: bool = False) -> Run:
    info = RunInfo(
        run_id=f"{i:032x}",
        experiment_id=str(rng.randrange(1, 2**40)),
        user_id=rng.choice(ODD_TEXT),
        status=rng.choice(["RUNNING", "FINISHED", "FAILED", "KILLED", "SCHEDULED"]),
        start_time=rng.randrange(0, 2**62),
        end_time=None if i % 3 == 0 else rng.randrange(0, 2**62),
        lifecycle_stage=rng.choice(["active", "deleted"]),
        artifact_uri=f"s3://bucket/{i}/artifacts",
        run_name=None if i % 5 == 0 else rng.choice(ODD_TEXT),
    )
    metrics = [
        Metric(
            rng.choice(ODD_TEXT) + str(j),
            ODD_VALUES[(i + j) % len(ODD_VALUES)] if j % 2 else rng.uniform(-1e9, 1e9),
            rng.randrange(-(2**62), 2**62),
            rng.randrange(-(2**40), 2**40),
            model_id=f"m-{i}" if linked and j == 0 else None,
            dataset_name="train" if j == 1 else None,
            dataset_digest="abc123" if j == 1 else None,
            run_id=info.run_id if j == 2 else None,
        )
        for j in range(rng.randrange(0, 4))
    ]
    params = [Param(f"p{j}", rng.choice(ODD_TEXT)) for j in range(rng.randrange(0, 4))]
    tags = [RunTag(rng.choice(ODD_TEXT) + str(j), rng.choice(ODD_TEXT)) for j in range(rng.randrange(0, 3))]
    datasets = []
    if i % 4 == 1:
        dataset = Dataset("train", "d1g3st", "local", '{"uri": "/data"}', '{"cols": 3}', '{"rows": 10}')
        datasets = [DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])]
    model_inputs = [LoggedModelInput(f"m-in-{i}")] if linked else []
    model_outputs = [LoggedModelOutput(f"m-{i}", i)] if linked else []
    return Run(info, RunData(metrics, params, tags), RunInputs(datasets, model_inputs), RunOutputs(model_outputs))


def a_response(n: int, seed: int, *, linked: bool = False, token: str | None = None) -> SearchRuns.Response:
    rng = random.Random(seed)
    response = SearchRuns.Response()
    response.runs.extend([a_run(i, rng, linked=linked and i % 2 == 0).to_proto() for i in range(n)])
    if token is not None:
        response.next_page_token = token
    return response


@pytest.mark.parametrize("seed", range(8))
def test_render_is_message_to_json_for_runs_of_every_shape(seed: int) -> None:
    response = a_response(60, seed, linked=seed % 2 == 1, token="eyJvZmZzZXQiOiA2MH0=" if seed % 3 else None)
    assert search.render(response) == message_to_json(response)


def test_render_is_message_to_json_when_empty_and_for_a_token_alone() -> None:
    assert search.render(SearchRuns.Response()) == message_to_json(SearchRuns.Response()) == "{}"
    only_token = SearchRuns.Response(next_page_token="abc")
    assert search.render(only_token) == message_to_json(only_token)


def test_an_empty_nested_message_is_written_as_mlflow_writes_it() -> None:
    response = SearchRuns.Response()
    response.runs.add().inputs.SetInParent()  # "inputs": {} alone
    assert search.render(response) == message_to_json(response)


def test_other_messages_render_the_same() -> None:
    experiments = SearchExperiments.Response(next_page_token="t")
    for i, text in enumerate(ODD_TEXT):
        experiment = experiments.experiments.add(experiment_id=str(i), name=text + str(i), creation_time=2**50 + i)
        experiment.tags.add(key=text, value=text)
    assert search.render(experiments) == message_to_json(experiments)


def test_fields_it_cannot_write_exactly_go_to_message_to_json(monkeypatch: pytest.MonkeyPatch) -> None:
    # A trace: a map (trace_metadata) and protobuf's Timestamp and Duration types.
    trace = StartTraceV3.Response()
    trace.trace.trace_info.trace_id = "tr-1"
    trace.trace.trace_info.request_time.FromMilliseconds(1_700_000_000_123)
    trace.trace.trace_info.trace_metadata["mlflow.sourceRun"] = "r-1"
    with pytest.raises(search.Unsupported):
        search._message(trace, 0)
    assert search.render(trace) == message_to_json(trace)


def test_a_deep_answer_of_1000_runs_is_identical() -> None:
    response = a_response(1000, 99, linked=True, token="next")
    assert search.render(response) == message_to_json(response)
    assert len(json.loads(search.render(response))["runs"]) == 1000


# --- the view ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real MLflow tracking store with runs of every kind: odd metric values, datasets,
    a logged model with its metrics, deleted runs."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    root = tmp_path_factory.mktemp("search")
    store = SqlAlchemyStore(f"sqlite:///{root}/m.db", str(root / "a"))
    exp = store.create_experiment("search")
    rng = random.Random(3)
    for i in range(30):
        name = RunTag("mlflow.runName", ODD_TEXT[i % len(ODD_TEXT)] + str(i))
        run = store.create_run(exp, "u", 1000 + i, [name], None)
        rid = run.info.run_id
        store.log_batch(
            rid,
            metrics=[Metric("loss", ODD_VALUES[i % len(ODD_VALUES)], 5 + i, i), Metric("acc", rng.random(), 5, 0)],
            params=[Param("depth", str(i % 4))],
            tags=[RunTag("team", ODD_TEXT[(i + 1) % len(ODD_TEXT)])],
        )
        if i % 5 == 0:
            dataset = Dataset("train", f"d{i}", "local", '{"uri": "/d"}', "{}", "{}")
            store.log_inputs(rid, [DatasetInput(dataset, [InputTag("mlflow.data.context", "train")])])
        if i % 7 == 0:
            model = store.create_logged_model(exp, name=f"m{i}", source_run_id=rid)
            store.log_outputs(rid, [LoggedModelOutput(model.model_id, 0)])
            store.log_batch(rid, metrics=[Metric("auc", 0.5, 7, 0, model_id=model.model_id)], params=[], tags=[])
        if i % 9 == 0:
            store.delete_run(rid)
    return SimpleNamespace(store=store, experiment_id=exp)


BODIES = [  # (request body, the status MLflow answers)
    ({}, 200),
    ({"max_results": 7}, 200),
    ({"max_results": 1000, "order_by": ["metrics.loss DESC", "start_time"]}, 200),
    ({"filter": "params.depth = '2'", "run_view_type": "ALL"}, 200),
    ({"filter": "metrics.loss > 0", "order_by": ["attributes.run_name"]}, 200),
    ({"run_view_type": "DELETED_ONLY"}, 200),
    ({"filter": "tags.team != ''"}, 200),
    ({"run_view_type": "SOMETIMES"}, 200),  # MLflow's parser drops an unknown enum name
    # Bad input: MLflow's 400s, in MLflow's words.
    ({"max_results": 0}, 400),
    ({"max_results": 50001}, 400),
    ({"max_results": "many"}, 400),
    ({"filter": 5}, 400),
    ({"filter": "params.depth === '2'"}, 400),
    ({"order_by": "start_time"}, 400),
    ({"order_by": ["nonsense.column"]}, 400),
    ({"page_token": "not-a-token"}, 400),
]


def call(view, store, body: dict) -> tuple[int, str]:
    app = Flask("t")
    with app.test_request_context("/api/2.0/mlflow/runs/search", method="POST", json=body):
        response = view()
        return response.status_code, response.get_data(as_text=True)


@pytest.mark.parametrize(("body", "status"), BODIES, ids=[json.dumps(b) for b, _ in BODIES])
def test_the_view_answers_what_mlflow_s_answers(store, monkeypatch, body: dict, status: int) -> None:
    from mlflow.server import handlers

    monkeypatch.setattr(handlers, "_get_tracking_store", lambda *a, **k: store.store)
    body = {"experiment_ids": [store.experiment_id], **body}
    mine = call(search.make_view(handlers._search_runs), store, body)
    theirs = call(handlers._search_runs, store, body)
    assert mine == theirs
    assert mine[0] == status
    if status == 200:
        assert json.loads(mine[1])["runs"], "the data set has runs for this query"
    else:
        assert json.loads(mine[1])["error_code"] == "INVALID_PARAMETER_VALUE"


def test_the_view_follows_mlflow_s_page_tokens(store, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.server import handlers

    monkeypatch.setattr(handlers, "_get_tracking_store", lambda *a, **k: store.store)
    view = search.make_view(handlers._search_runs)
    token, seen = None, []
    while True:
        body = {"experiment_ids": [store.experiment_id], "max_results": 4, "run_view_type": "ALL"}
        if token:
            body["page_token"] = token
        mine, theirs = call(view, store, body), call(handlers._search_runs, store, body)
        assert mine == theirs and mine[0] == 200
        page = json.loads(mine[1])
        seen += [r["info"]["run_id"] for r in page["runs"]]
        token = page.get("next_page_token")
        if not token:
            break
    assert len(seen) == len(set(seen)) == 30


# --- the redactor -----------------------------------------------------------------------
def answer(linked: bool) -> Response:
    return Response(message_to_json(a_response(40, 5, linked=linked)), mimetype="application/json")


@pytest.mark.parametrize("admin", [False, True])
@pytest.mark.parametrize("denied", [False, True])
@pytest.mark.parametrize("linked", [False, True])
def test_the_redactor_leaves_what_mlflow_s_leaves(auth, admin: bool, denied: bool, linked: bool) -> None:
    module = auth.module
    auth.who.admin = admin
    auth.who.denied = {module.RESOURCE_TYPE_LOGGED_MODEL} if denied else set()
    mlflow_s = module.redact_search_runs_model_links
    fast = search.make_redactor(module, mlflow_s)
    theirs, mine = answer(linked), answer(linked)
    app = Flask("t")
    with app.test_request_context("/api/2.0/mlflow/runs/search", method="POST"):
        mlflow_s(theirs)
        fast(mine)
    assert mine.get_data() == theirs.get_data()
    withheld = denied and linked and not admin
    assert (mine.get_data() != answer(linked).get_data()) is withheld
    if withheld:
        runs = json.loads(mine.get_data())["runs"]
        assert not any(r["inputs"].get("model_inputs") or r["outputs"].get("model_outputs") for r in runs)
        assert not any("model_id" in m for r in runs for m in r["data"].get("metrics", []))


def test_the_redactor_asks_about_the_user_not_the_answer(auth) -> None:
    module = auth.module
    calls = []
    fast = search.make_redactor(module, calls.append)
    app = Flask("t")
    with app.test_request_context("/api/2.0/mlflow/runs/search", method="POST"):
        fast(answer(True))  # not denied: MLflow's redactor (which would parse it) is skipped
        assert calls == [] and auth.who.asked == [("alice", (module.RESOURCE_TYPE_LOGGED_MODEL,))]
        auth.who.denied = {module.RESOURCE_TYPE_LOGGED_MODEL}
        fast(answer(True))
        assert len(calls) == 1


# --- installing -------------------------------------------------------------------------
def test_install_swaps_the_view_and_the_redactor_and_the_switch_keeps_mlflow_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow.server import auth

    path = ("/api/2.0/mlflow/runs/search", "POST")
    ajax = ("/ajax-api/2.0/mlflow/runs/search", "POST")
    # MLflow's table, as MLflow builds it (another test's create_app may have installed ours).
    mlflow_s_table = {
        path: auth.redact_search_runs_model_links,
        ajax: auth.redact_search_runs_model_links,
        ("/api/2.0/mlflow/runs/get", "GET"): auth.redact_get_run_model_links,
        ("/api/2.0/mlflow/experiments/search", "GET"): auth.filter_search_experiments,
    }
    handlers_table = dict(mlflow_s_table)
    monkeypatch.setattr(auth, "AFTER_REQUEST_HANDLERS", handlers_table)

    def _search_runs():
        return "mlflow"

    app = Flask("t")
    app.add_url_rule("/s", search.ENDPOINT, _search_runs)
    monkeypatch.setenv("STACK_FAST_SEARCH_RUNS", "false")
    assert search.install(app, auth) is False
    assert app.view_functions[search.ENDPOINT] is _search_runs
    assert handlers_table[path] is auth.redact_search_runs_model_links
    monkeypatch.setenv("STACK_FAST_SEARCH_RUNS", "true")
    assert search.install(app, auth) is True
    assert app.view_functions[search.ENDPOINT] is not _search_runs
    assert handlers_table[path] is not auth.redact_search_runs_model_links
    assert handlers_table[ajax] is handlers_table[path]
    # Every other after-request handler is MLflow's, untouched.
    changed = {k[0] for k, v in handlers_table.items() if v is not mlflow_s_table[k]}
    assert changed == {"/api/2.0/mlflow/runs/search", "/ajax-api/2.0/mlflow/runs/search"}


def test_an_mlflow_without_the_pieces_keeps_its_own_search(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Flask("t")
    app.add_url_rule("/s", search.ENDPOINT, lambda: "mlflow")
    old_auth = SimpleNamespace(AFTER_REQUEST_HANDLERS={})  # no redactor, no sibling tiers (MLflow 3.10)
    assert search.install(app, old_auth) is False
    assert app.view_functions[search.ENDPOINT]() == "mlflow"
