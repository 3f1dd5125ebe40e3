"""The fast metric-history view writes what MLflow's view writes, byte for byte.

MLflow's view: store rows -> Metric entities -> GetMetricHistory.Response ->
message_to_json. history.render must give the same text for the same rows
(tests/test_metric_history.py checks the live path on PostgreSQL)."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
from flask import Flask, Response
from mlflow.entities import Metric
from mlflow.protos.service_pb2 import GetMetricHistory
from mlflow.utils.proto_json_utils import message_to_json
from mlflow.utils.search_utils import SearchUtils

from stack_ops.server import history

MAX = 1.7976931348623157e308  # how MLflow stores +Infinity (and -MAX for -Infinity)


def mlflow_s(key: str, rows, token: str | None) -> str:
    """What MLflow's _get_metric_history writes for these stored rows."""
    response = GetMetricHistory.Response()
    metrics = [
        Metric(key=key, value=value if not is_nan else float("nan"), timestamp=ts, step=step)
        for value, ts, step, is_nan in rows
    ]
    response.metrics.extend([m.to_proto() for m in metrics])
    if token:
        response.next_page_token = token
    return message_to_json(response)


ODD_VALUES = [0.0, -0.0, 1.0, -1.0, 0.1, 1 / 3, 1e-300, 5e-324, 1e16, 123456789.0, MAX, -MAX, 2.5e-7, -42.125]


def rows_of(values, rng: random.Random):
    return [(v, rng.randrange(0, 2**62), rng.randrange(-(2**40), 2**40), False) for v in values]


@pytest.mark.parametrize("key", ["loss", "val/acc@1", 'quote"and\\slash', "ünïcødé ключ", "tab\tkey"])
def test_render_matches_message_to_json(key: str) -> None:
    rng = random.Random(7)
    rows = rows_of(ODD_VALUES + [rng.uniform(-1e6, 1e6) for _ in range(200)], rng)
    rows.append((0.0, 5, 5, True))  # NaN: MLflow stores value 0 and is_nan
    assert history.render(key, rows, None) == mlflow_s(key, rows, None)


def test_render_matches_with_a_page_token_and_when_empty() -> None:
    token = SearchUtils.create_page_token(25000).decode()
    rows = rows_of([0.5, 0.25], random.Random(1))
    assert history.render("m", rows, token) == mlflow_s("m", rows, token)
    assert history.render("m", [], None) == mlflow_s("m", [], None) == "{}"
    assert history.render("m", [], token) == mlflow_s("m", [], token)


def test_infinite_values_read_back_are_written_as_mlflow_writes_them() -> None:
    # MLflow clamps infinities before storing them; should a raw infinity ever be read, it is
    # written the way protobuf's JSON writes one.
    rows = [(math.inf, 1, 1, False), (-math.inf, 2, 2, False)]
    assert history.render("m", rows, None) == mlflow_s("m", rows, None)


def test_the_switch_keeps_mlflow_s_view_and_redactor(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Flask("t")

    def _get_metric_history():
        return "mlflow"

    def redact_metric_history_model_ids(resp):
        pass

    def redact_get_run_model_links(resp):
        pass

    path, ajax, run = (
        ("/api/2.0/mlflow/metrics/get-history", "GET"),
        ("/ajax-api/2.0/mlflow/metrics/get-history", "GET"),
        ("/api/2.0/mlflow/runs/get", "GET"),
    )
    table = {path: redact_metric_history_model_ids, ajax: redact_metric_history_model_ids}
    table[run] = redact_get_run_model_links
    auth = SimpleNamespace(redact_metric_history_model_ids=redact_metric_history_model_ids)
    auth.AFTER_REQUEST_HANDLERS = table
    app.add_url_rule("/h", history.ENDPOINT, _get_metric_history)
    monkeypatch.setenv("STACK_FAST_METRIC_HISTORY", "false")
    assert history.install(app, auth) is False
    assert app.view_functions[history.ENDPOINT] is _get_metric_history
    assert table[path] is table[ajax] is redact_metric_history_model_ids
    monkeypatch.setenv("STACK_FAST_METRIC_HISTORY", "true")
    assert history.install(app, auth) is True
    assert app.view_functions[history.ENDPOINT] is not _get_metric_history
    assert table[path] is table[ajax] is not redact_metric_history_model_ids
    assert table[run] is redact_get_run_model_links  # every other handler stays MLflow's


def test_an_mlflow_without_the_redactor_still_gets_the_view(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Flask("t")
    app.add_url_rule("/h", history.ENDPOINT, lambda: "mlflow")
    monkeypatch.setenv("STACK_FAST_METRIC_HISTORY", "true")
    assert history.install(app, SimpleNamespace(AFTER_REQUEST_HANDLERS={})) is True


# --- basic auth's redactor --------------------------------------------------------------
def fast_answer(rows) -> Response:
    """An answer as the fast view writes it."""
    response = Response(history.render("loss", rows, "tok"), mimetype="application/json")
    setattr(response, history.WRITTEN_HERE, True)
    return response


def linked_answer() -> Response:
    """An answer naming a logged model on each point (MLflow's view for a store that kept them)."""
    message = GetMetricHistory.Response()
    message.metrics.extend([Metric("loss", i / 3, i, i, model_id="m-1").to_proto() for i in range(20)])
    return Response(message_to_json(message), mimetype="application/json")


@pytest.mark.parametrize("admin", [False, True])
@pytest.mark.parametrize("denied", [False, True])
def test_mlflow_s_redactor_leaves_a_fast_answer_as_it_is(auth, admin: bool, denied: bool) -> None:
    """What the skip rests on: MLflow's redactor, run on what render() writes, changes nothing,
    whoever asks."""
    auth.who.admin, rng = admin, random.Random(3)
    auth.who.denied = {auth.module.RESOURCE_TYPE_LOGGED_MODEL} if denied else set()
    rows = rows_of(ODD_VALUES * 50, rng) + [(0.0, 1, 2, True)]
    theirs, mine = fast_answer(rows), fast_answer(rows)
    fast = history.make_redactor(auth.module.redact_metric_history_model_ids)
    with Flask("t").test_request_context("/api/2.0/mlflow/metrics/get-history"):
        auth.module.redact_metric_history_model_ids(theirs)
        fast(mine)
    assert mine.get_data() == theirs.get_data() == fast_answer(rows).get_data()


@pytest.mark.parametrize("denied", [False, True])
def test_any_other_answer_goes_through_mlflow_s_redactor(auth, denied: bool) -> None:
    auth.who.denied = {auth.module.RESOURCE_TYPE_LOGGED_MODEL} if denied else set()
    theirs, mine = linked_answer(), linked_answer()
    fast = history.make_redactor(auth.module.redact_metric_history_model_ids)
    with Flask("t").test_request_context("/api/2.0/mlflow/metrics/get-history"):
        auth.module.redact_metric_history_model_ids(theirs)
        fast(mine)
    assert mine.get_data() == theirs.get_data()
    assert ('"model_id"' in mine.get_data(as_text=True)) is not denied


def test_the_redactor_skips_only_the_fast_view_s_answers() -> None:
    calls = []
    fast = history.make_redactor(calls.append)
    fast(fast_answer([(1.0, 1, 1, False)]))
    assert calls == []
    plain = linked_answer()
    fast(plain)
    assert calls == [plain]


def test_other_stores_get_mlflow_s_view(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from mlflow.server import handlers
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(f"sqlite:///{tmp_path}/m.db", str(tmp_path / "a"))  # not PostgreSQL
    monkeypatch.setattr(handlers, "_get_tracking_store", lambda *a, **k: store)
    view = history.make_view(lambda: "mlflow's view")
    app = Flask("t")
    with app.test_request_context("/api/2.0/mlflow/metrics/get-history?run_id=r&metric_key=m"):
        assert view() == "mlflow's view"
