"""The fast log_batch stores what MLflow's store stores, and answers what MLflow's view answers.

Both run on one MLflow SqlAlchemyStore (SQLite here; tests/test_tracking.py
checks the live path on PostgreSQL): each batch goes to one run through MLflow's
own `SqlAlchemyStore.log_batch` (or MLflow's view) and to a twin run through
`logbatch.write` (or the fast view), then every stored row of the two runs is
compared: the points and the latest values."""

from __future__ import annotations

import math
import random
import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import psycopg2
import psycopg2.errors
import pytest
from flask import Flask
from mlflow.entities import Metric
from mlflow.server import handlers
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from stack_ops.server import logbatch

INF = float("inf")
NAN = float("nan")
ODD = [0.0, -0.0, 1.0, -1.0, 0.5, 1 / 3, 5e-324, 1.7976931348623157e308, -2.5, 1e16, NAN, INF, -INF]


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory) -> Path:
    """A database MLflow has created and migrated, with nothing logged: made
    once, because MLflow's migrations take ~2 s per database."""
    root = tmp_path_factory.mktemp("template")
    SqlAlchemyStore(f"sqlite:///{root}/mlflow.db", str(root / "artifacts")).engine.dispose()
    return root / "mlflow.db"


@pytest.fixture
def store(tmp_path, empty_db: Path) -> SqlAlchemyStore:
    """A fresh store per test, on its own copy of the empty database."""
    shutil.copyfile(empty_db, tmp_path / "mlflow.db")
    return SqlAlchemyStore(f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "artifacts"))


def new_run(store: SqlAlchemyStore) -> str:
    exp = store.get_experiment_by_name("t") or store.get_experiment(store.create_experiment("t"))
    return store.create_run(exp.experiment_id, "u", 0, [], "r").info.run_id


def stored_rows(store: SqlAlchemyStore, run_id: str) -> tuple[list, list]:
    """Every point and every latest value of a run, as the database holds them."""
    db = sqlite3.connect(store.db_uri.removeprefix("sqlite:///"))
    try:
        cols = "key, value, timestamp, step, is_nan"
        pts = db.execute(f"SELECT {cols} FROM metrics WHERE run_uuid = ? ORDER BY 1, 2, 3, 4, 5", (run_id,))
        last = db.execute(f"SELECT {cols} FROM latest_metrics WHERE run_uuid = ? ORDER BY 1", (run_id,))
        return pts.fetchall(), last.fetchall()
    finally:
        db.close()


def metric_order(store: SqlAlchemyStore, run_id: str) -> list[str]:
    """The keys of a run's metrics in the order `get_run` returns them."""
    return [m.key for m in store.get_run(run_id).data._metric_objs]


def fast_write(store: SqlAlchemyStore, run_id: str, metrics: list[Metric]) -> bool:
    db = sqlite3.connect(store.db_uri.removeprefix("sqlite:///"))
    try:
        return logbatch.write(db, run_id, logbatch.points(metrics), "?", lock=False)
    finally:
        db.close()


def random_batches(rng: random.Random, count: int) -> list[list[Metric]]:
    """Batches with everything MLflow's store has rules for: NaN and infinities,
    points repeated within a batch and across batches, many points of one key
    at equal and unequal steps and times, and values that tie."""
    keys = ["loss", "acc", "a/b", "ünï"]
    logged: list[Metric] = []
    batches = []
    for _ in range(count):
        batch = []
        for _ in range(rng.randint(0, 12)):
            if logged and rng.random() < 0.2:
                batch.append(rng.choice(logged))  # already stored
                continue
            value = rng.choice(ODD) if rng.random() < 0.5 else round(rng.uniform(-5, 5), rng.randint(0, 3))
            batch.append(Metric(rng.choice(keys), value, rng.randint(0, 4), rng.randint(-2, 3)))
        if batch and rng.random() < 0.3:
            batch.append(batch[0])  # twice in one batch
        logged += batch
        batches.append(batch)
    return batches


def test_values_are_stored_as_mlflow_stores_them(store: SqlAlchemyStore) -> None:
    for value in [*ODD, 2.0**60, -(2.0**-1074)]:
        is_nan, expected = store.sanitize_metric_value(value)
        assert logbatch.stored(value) == (expected, is_nan)


@pytest.mark.parametrize("seed", range(30))
def test_batches_store_what_mlflow_s_store_stores(store: SqlAlchemyStore, seed: int) -> None:
    rng = random.Random(seed)
    theirs, ours = new_run(store), new_run(store)
    for batch in random_batches(rng, 12):
        store.log_batch(theirs, batch, [], [])
        assert fast_write(store, ours, batch) is True
        assert stored_rows(store, ours) == stored_rows(store, theirs)
        assert metric_order(store, ours) == metric_order(store, theirs)
    points, last = stored_rows(store, ours)
    assert points and last  # the seed logged something


def test_a_later_point_replaces_the_latest_value_only_when_more_recent(store: SqlAlchemyStore) -> None:
    run = new_run(store)
    fast_write(store, run, [Metric("m", 1.0, 10, 5)])
    fast_write(store, run, [Metric("m", 9.0, 99, 4)])  # earlier step: stays
    assert stored_rows(store, run)[1] == [("m", 1.0, 10, 5, 0)]
    fast_write(store, run, [Metric("m", 0.5, 10, 5), Metric("m", 2.0, 10, 5), Metric("m", NAN, 11, 5)])
    assert stored_rows(store, run)[1] == [("m", 0.0, 11, 5, 1)]  # step ties: the later time wins, NaN as 0
    assert len(stored_rows(store, run)[0]) == 5


def test_equal_points_keep_the_first(store: SqlAlchemyStore) -> None:
    # NaN and 0.0 at one step and time tie on (step, timestamp, value): MLflow keeps the first.
    for first, second in ((NAN, 0.0), (0.0, NAN)):
        run = new_run(store)
        fast_write(store, run, [Metric("m", first, 1, 1), Metric("m", second, 1, 1)])
        assert stored_rows(store, run)[1] == [("m", 0.0, 1, 1, int(math.isnan(first)))]


def test_an_equal_point_in_a_later_batch_keeps_the_stored_latest(store: SqlAlchemyStore) -> None:
    # NaN is stored as 0: a later 0.0 at the same step and time ties, and MLflow keeps what it had.
    theirs, ours = new_run(store), new_run(store)
    for first, second in ((NAN, 0.0), (0.0, NAN)):
        for batch in ([Metric(str(first), first, 1, 1)], [Metric(str(first), second, 1, 1)]):
            store.log_batch(theirs, batch, [], [])
            fast_write(store, ours, batch)
    assert stored_rows(store, ours) == stored_rows(store, theirs)
    assert [is_nan for *_, is_nan in stored_rows(store, ours)[1]] == [0, 1]  # "0.0" first, then "nan"


def test_new_keys_come_back_in_the_order_the_batch_names_them(store: SqlAlchemyStore) -> None:
    # The UI's compare view charts a run's first metric: the trainer's auc_roc,
    # not the alphabet's accuracy.
    keys = ["auc_roc", "precision", "recall", "f1", "accuracy", "log_loss"]
    theirs, ours = new_run(store), new_run(store)
    for batch in ([Metric(k, 0.5, 1, 0) for k in keys], [Metric("z", 1.0, 1, 0), Metric("auc_roc", 0.9, 2, 1)]):
        store.log_batch(theirs, batch, [], [])
        fast_write(store, ours, batch)
    assert metric_order(store, ours) == metric_order(store, theirs) == [*keys, "z"]


class Recording:
    """A DB-API connection that records what `write` sends it."""

    def __init__(self, results: list[list]) -> None:
        self.sent: list[tuple[str, tuple]] = []
        self.results = results
        self.committed = False

    def cursor(self):
        return self

    def execute(self, sql: str, args) -> None:
        self.sent.append((sql, tuple(args)))

    def fetchall(self) -> list:
        return self.results.pop(0)

    def commit(self) -> None:
        self.committed = True

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_existing_latest_values_are_locked_in_key_order_before_the_upsert() -> None:
    # Two batches naming the same keys in opposite orders lock them in one
    # order (no deadlock), as MLflow's SELECT ... ORDER BY key FOR UPDATE does.
    rows = logbatch.points([Metric("b", 1.0, 1, 1), Metric("c", 1.0, 1, 1), Metric("a", 1.0, 1, 1)])
    db = Recording([[("active",)], [(*row, None)[:5] for row in rows]])
    assert logbatch.write(db, "R", rows) is True and db.committed
    statements = [sql.split(" ")[0] + " " + sql.split(" ")[2] for sql, _ in db.sent]
    assert statements == ["SELECT FROM", "INSERT metrics", "SELECT FROM", "INSERT latest_metrics"]
    lock_sql, lock_args = db.sent[2]
    assert lock_sql.endswith("ORDER BY key FOR UPDATE") and lock_args == ("R", "a", "b", "c")
    assert [db.sent[3][1][i] for i in (0, 6, 12)] == ["b", "c", "a"]  # new keys: the batch's order
    # SQLite, which has no FOR UPDATE: no lock statement.
    db = Recording([[("active",)], [(*row, None)[:5] for row in rows]])
    logbatch.write(db, "R", rows, "?", lock=False)
    assert len(db.sent) == 3 and "FOR UPDATE" not in " ".join(sql for sql, _ in db.sent)


@pytest.mark.parametrize("stage", ["missing", "deleted"])
def test_no_active_run_writes_nothing(store: SqlAlchemyStore, stage: str) -> None:
    run = new_run(store)
    if stage == "deleted":
        store.delete_run(run)
    else:
        run = "0" * 32
    assert fast_write(store, run, [Metric("m", 1.0, 1, 1)]) is False
    assert stored_rows(store, run) == ([], [])


# --- the view, next to MLflow's ----------------------------------------------


@pytest.fixture
def views(store: SqlAlchemyStore, monkeypatch: pytest.MonkeyPatch):
    """(MLflow's view, the fast view), both on `store`, and the calls the fast view
    left to MLflow's store."""
    monkeypatch.setattr(handlers, "_get_tracking_store", lambda *a, **k: store)
    monkeypatch.setattr(logbatch, "DIALECTS", ("postgresql", "sqlite"))
    left = []
    mlflow_s = SqlAlchemyStore.log_batch

    def spy(self, *args, **kwargs):
        left.append(kwargs.get("run_id", args[0] if args else None))
        return mlflow_s(self, *args, **kwargs)

    monkeypatch.setattr(SqlAlchemyStore, "log_batch", spy)
    return handlers._log_batch, logbatch.make_view(handlers._log_batch), left


def call(view, payload) -> tuple[int, str]:
    app = Flask("t")
    with app.test_request_context("/api/2.0/mlflow/runs/log-batch", method="POST", json=payload):
        response = view()
    return response.status_code, response.get_data(as_text=True)


def metric_json(m: Metric) -> dict:
    value = m.value if math.isfinite(m.value) else str(m.value).replace("inf", "Infinity").replace("nan", "NaN")
    return {"key": m.key, "value": value, "timestamp": m.timestamp, "step": m.step}


@pytest.mark.parametrize("seed", range(5))
def test_the_view_answers_and_stores_as_mlflow_s(store, views, seed: int) -> None:
    mlflow_s, fast, left = views
    theirs, ours = new_run(store), new_run(store)
    for batch in random_batches(random.Random(seed), 8):
        body = [metric_json(m) for m in batch]
        expected = call(mlflow_s, {"run_id": theirs, "metrics": body})
        assert call(fast, {"run_id": ours, "metrics": body}) == expected == (200, "{}")
        assert stored_rows(store, ours) == stored_rows(store, theirs)
    assert ours not in left  # all written by the fast path


BAD = {
    "no run id": {"metrics": [{"key": "m", "value": 1, "timestamp": 1}]},
    "no timestamp": {"run_id": "RUN", "metrics": [{"key": "m", "value": 1}]},
    "no value": {"run_id": "RUN", "metrics": [{"key": "m", "timestamp": 1}]},
    "a string value": {"run_id": "RUN", "metrics": [{"key": "m", "value": "high", "timestamp": 1}]},
    "a negative timestamp": {"run_id": "RUN", "metrics": [{"key": "m", "value": 1, "timestamp": -1}]},
    "a bad key": {"run_id": "RUN", "metrics": [{"key": "../m", "value": 1, "timestamp": 1}]},
    "a long key": {"run_id": "RUN", "metrics": [{"key": "k" * 251, "value": 1, "timestamp": 1}]},
    "metrics not a list": {"run_id": "RUN", "metrics": {"key": "m"}},
    "too many metrics": {"run_id": "RUN", "metrics": [{"key": "m", "value": i, "timestamp": 1} for i in range(1001)]},
    "a malformed run id": {"run_id": "x/../y", "metrics": [{"key": "m", "value": 1, "timestamp": 1}]},
    "a run that does not exist": {"run_id": "f" * 32, "metrics": [{"key": "m", "value": 1, "timestamp": 1}]},
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_mlflow_s_error_and_changes_nothing(store, views, case: str) -> None:
    mlflow_s, fast, _ = views
    theirs, ours = new_run(store), new_run(store)
    expected = call(mlflow_s, _with_run(BAD[case], theirs))
    got = call(fast, _with_run(BAD[case], ours))
    assert 400 <= expected[0] < 500
    assert (got[0], got[1].replace(ours, theirs)) == expected
    assert stored_rows(store, ours) == stored_rows(store, theirs) == ([], [])


def _with_run(payload: dict, run_id: str) -> dict:
    return {**payload, "run_id": run_id} if payload.get("run_id") == "RUN" else payload


def test_a_deleted_run_gets_mlflow_s_error(store, views) -> None:
    mlflow_s, fast, _ = views
    theirs, ours = new_run(store), new_run(store)
    store.delete_run(theirs)
    store.delete_run(ours)
    body = [{"key": "m", "value": 1, "timestamp": 1}]
    expected = call(mlflow_s, {"run_id": theirs, "metrics": body})
    got = call(fast, {"run_id": ours, "metrics": body})
    assert expected[0] == 400 and "must be in the 'active' state" in expected[1]
    assert (got[0], got[1].replace(ours, theirs)) == expected


@pytest.mark.parametrize(
    "extra",
    [
        {"params": [{"key": "lr", "value": "0.1"}]},
        {"tags": [{"key": "t", "value": "v"}]},
        {"metrics": [{"key": "m", "value": 1, "timestamp": 1, "model_id": "m-1"}]},
    ],
    ids=["params", "tags", "a logged model's metric"],
)
def test_params_tags_and_model_metrics_go_to_mlflow_s_store(store, views, extra: dict) -> None:
    _, fast, left = views
    run = new_run(store)
    payload = {"run_id": run, "metrics": [{"key": "m", "value": 1, "timestamp": 1}], **extra}
    status, _ = call(fast, payload)
    assert left == [run]
    if "model_id" not in str(extra):  # MLflow refuses a metric of a logged model that does not exist
        assert status == 200
        got = store.get_run(run).data
        assert got.metrics == {"m": 1.0}
        assert got.params == {p["key"]: p["value"] for p in extra.get("params", [])}
        assert {t["key"]: t["value"] for t in extra.get("tags", [])}.items() <= got.tags.items()


def test_other_stores_get_mlflow_s_view(store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "_get_tracking_store", lambda *a, **k: store)  # SQLite: not PostgreSQL
    view = logbatch.make_view(lambda: "mlflow's view")
    assert call_raw(view) == "mlflow's view"


def call_raw(view):
    app = Flask("t")
    with app.test_request_context("/api/2.0/mlflow/runs/log-batch", method="POST", json={"run_id": "r"}):
        return view()


def test_the_switch_keeps_mlflow_s_view(monkeypatch: pytest.MonkeyPatch) -> None:
    def _log_batch():
        return "mlflow's"

    for value, swapped in (("false", False), ("0", False), ("", True), ("true", True)):
        app = Flask("t")
        app.view_functions[logbatch.ENDPOINT] = _log_batch
        monkeypatch.setenv("STACK_FAST_LOG_BATCH", value)
        assert logbatch.install(app) is swapped
        assert (app.view_functions[logbatch.ENDPOINT] is _log_batch) is not swapped


class FailingConnection:
    """A database connection whose first statement fails with `error`."""

    def __init__(self, error: Exception, attempts: list) -> None:
        self.error, self.attempts = error, attempts

    def cursor(self):
        def execute(*_):
            self.attempts.append(type(self.error).__name__)
            raise self.error

        return SimpleNamespace(execute=execute, close=lambda: None)

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("errors", "status", "code", "tries"),
    [
        ([psycopg2.errors.DeadlockDetected("deadlock detected")] * 2, 200, None, 3),
        ([psycopg2.errors.DeadlockDetected("deadlock detected")] * 3, 503, "TEMPORARILY_UNAVAILABLE", 3),
        ([psycopg2.OperationalError("server closed the connection")], 503, "TEMPORARILY_UNAVAILABLE", 1),
        ([psycopg2.DataError("out of range")], 400, "BAD_REQUEST", 1),
        ([psycopg2.IntegrityError("violates foreign key")], 200, None, 1),
    ],
    ids=["deadlock, then written", "deadlock each time", "database gone", "data error", "refused point"],
)
def test_database_errors_are_retried_or_answered_as_mlflow_does(
    store, views, monkeypatch: pytest.MonkeyPatch, errors: list, status: int, code: str | None, tries: int
) -> None:
    _, fast, left = views
    run = new_run(store)
    attempts: list = []
    queue = list(errors)
    real = store.engine

    def raw_connection():
        if queue:
            return FailingConnection(queue.pop(0), attempts)
        return real.raw_connection()

    monkeypatch.setattr(store, "engine", SimpleNamespace(dialect=real.dialect, raw_connection=raw_connection))
    monkeypatch.setattr(logbatch.time, "sleep", lambda s: None)
    got_status, body = call(fast, {"run_id": run, "metrics": [{"key": "m", "value": 1, "timestamp": 1}]})
    assert got_status == status, body
    assert (code is None) == (got_status == 200) and (code is None or f'"{code}"' in body)
    assert len(attempts) == min(tries, len(errors))
    if status == 200:
        monkeypatch.setattr(store, "engine", real)
        assert store.get_run(run).data.metrics == {"m": 1.0}
    # A refused point is handed to MLflow's store, which answers for it.
    assert (left == [run]) == (errors[0].__class__ is psycopg2.IntegrityError)
