"""`log_batch` of metrics in one transaction, without MLflow's ORM.

`POST /api/2.0/mlflow/runs/log-batch` (and its `/ajax-api/` twin) is what
`mlflow.log_metric(s)` and every training loop call. MLflow's
`SqlAlchemyStore.log_batch` spends most of a call in SQLAlchemy and in round
trips to PostgreSQL (docs/performance.md, profile): two sessions on two pooled
connections, each pre-pinged; the run read twice; the metrics inserted
through the ORM's unit of work; the run's latest values read, then read again
and locked, then updated; two commits.

This module swaps only the body of that Flask view, and only for a batch of
metrics alone (no params, no tags, no metric linked to a logged model), which
is what a training loop sends. Everything around it is MLflow's, unchanged:
authentication and the permission check (MLflow's `before_request` validator
for the run), the stack's guard, request parsing and validation (the size
limit, `_get_request_message` with MLflow's own schema, then MLflow's
`_validate_run_id`, `_validate_batch_log_data` and `_validate_batch_log_limits`,
so bad input gets MLflow's error, word for word), and error handling
(`catch_mlflow_exception`). What it writes is what MLflow's store writes:

- each metric as MLflow stores it (`sanitize_metric_value`: NaN as 0 with
  `is_nan`, infinities as the largest double), a point already stored (same
  key, timestamp, step and value) skipped rather than an error, as MLflow's
  store recovers from that;
- per key, the run's latest value replaced by the batch's most recent new
  point when it is more recent by (step, timestamp, value), the first of equal
  ones winning, as `_update_latest_metrics_if_necessary` decides it. In SQL it
  is the run's existing latest values locked in key order (MLflow's
  `SELECT ... FOR UPDATE ... ORDER BY key`, so concurrent batches of one run
  do not deadlock), then one upsert whose condition PostgreSQL checks against
  the row as it stands, so concurrent batches keep the most recent value. New
  keys are added in the order the batch first names them, as MLflow's store
  adds them: the order the run's metrics come back in, and the metric the
  UI's compare view charts first.

It takes one connection, five statements and one commit. A run that does not
exist or is not active, a batch with params, tags or logged-model metrics, a
point that the database refuses (such as a run deleted meanwhile), and any
store other than MLflow's plain `SqlAlchemyStore` on PostgreSQL go to MLflow's
own store, whose answer (or error) the client gets. A deadlock is retried as
MLflow retries it; any other database error is answered as MLflow's session
answers it (503 when the database is unavailable, 400 otherwise). `STACK_FAST_LOG_BATCH=false` switches it off.
mlflow-server/tests/test_logbatch.py and tests/test_tracking.py compare both
paths on the same batches: the answers and every stored row.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence

from stack_ops.common import swap_view

_logger = logging.getLogger("stack_ops.server.logbatch")

ENDPOINT = "_log_batch"  # the Flask endpoint of both paths
MAX = 1.7976931348623157e308  # how MLflow stores +Infinity (and -MAX for -Infinity)
# The stores it writes to: MLflow's plain SqlAlchemyStore on these databases
# (the unit tests add SQLite).
DIALECTS = ("postgresql",)
# Deadlock retries after the first attempt (MLflow's _DB_WRITE_MAX_DEADLOCK_RETRIES).
DEADLOCK_RETRIES = 2

ACTIVE_RUN = "SELECT lifecycle_stage FROM runs WHERE run_uuid = {p}"
INSERT_METRICS = (
    "INSERT INTO metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES {rows}"
    " ON CONFLICT DO NOTHING RETURNING key, value, timestamp, step, is_nan"
)
UPSERT_LATEST = (
    "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES {rows}"
    " ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value, timestamp = excluded.timestamp,"
    " step = excluded.step, is_nan = excluded.is_nan"
    " WHERE (excluded.step, excluded.timestamp, excluded.value)"
    " > (latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)"
)
# SQLite (the unit tests) has no row locks: a writer holds the whole database.
LOCK_LATEST = "SELECT key FROM latest_metrics WHERE run_uuid = {p} AND key IN ({keys}) ORDER BY key FOR UPDATE"


def stored(value: float) -> tuple[float, bool]:
    """(value, is_nan) as MLflow's store writes a metric's value."""
    if math.isnan(value):
        return 0.0, True
    if math.isinf(value):
        return (MAX if value > 0 else -MAX), False
    return value, False


def points(metrics: Iterable) -> list[tuple]:
    """The rows a batch adds to `metrics`, (key, value, timestamp, step, is_nan),
    in batch order, each stored identity once (two NaN points of one key, time
    and step are one row, as in MLflow's store)."""
    rows = {}
    for m in metrics:
        value, is_nan = stored(m.value)
        row = (m.key, value, int(m.timestamp), int(m.step), is_nan)
        rows.setdefault(row, None)
    return list(rows)


def latest(rows: Sequence[tuple]) -> list[tuple]:
    """Per key, the most recent of these rows by (step, timestamp, value), the
    first of equal ones, as MLflow picks a batch's candidate for
    `latest_metrics`; keys in the order the rows first name them (the order
    MLflow's store adds new keys in)."""
    best: dict[str, tuple] = {}
    for row in rows:
        key, value, timestamp, step, _ = row
        held = best.get(key)
        if held is None or (step, timestamp, value) > (held[3], held[2], held[1]):
            best[key] = row
    return list(best.values())


def values_clause(count: int, width: int, placeholder: str) -> str:
    one = "(" + ", ".join([placeholder] * width) + ")"
    return ", ".join([one] * count)


def write(connection, run_id: str, rows: Sequence[tuple], placeholder: str = "%s", lock: bool = True) -> bool:
    """Write one batch's rows (from `points`) for an active run in one
    transaction on a DB-API connection; False, with nothing written, when the
    run does not exist or is not active (MLflow's store then says why).
    `lock`: lock the run's existing latest values first (False only for
    SQLite, which has no `FOR UPDATE`)."""
    cursor = connection.cursor()
    try:
        cursor.execute(ACTIVE_RUN.format(p=placeholder), (run_id,))
        found = cursor.fetchall()
        if len(found) != 1 or found[0][0] != "active":
            connection.rollback()
            return False
        if rows:
            flat = [v for row in rows for v in (*row, run_id)]
            cursor.execute(INSERT_METRICS.format(rows=values_clause(len(rows), 6, placeholder)), flat)
            added = {(k, float(v), int(t), int(s), bool(n)) for k, v, t, s, n in cursor.fetchall()}
            candidates = latest([row for row in rows if row in added])
            if candidates:
                if lock:
                    keys = sorted({row[0] for row in candidates})
                    sql = LOCK_LATEST.format(p=placeholder, keys=", ".join([placeholder] * len(keys)))
                    cursor.execute(sql, (run_id, *keys))
                flat = [v for row in candidates for v in (*row, run_id)]
                cursor.execute(UPSERT_LATEST.format(rows=values_clause(len(candidates), 6, placeholder)), flat)
        connection.commit()
        return True
    except BaseException:
        try:
            connection.rollback()
        except Exception:  # a broken connection: the pool discards it
            pass
        raise
    finally:
        try:
            cursor.close()
        except Exception:
            pass


def make_view(original: Callable) -> Callable:
    """The fast view for `ENDPOINT`, falling back to `original` (MLflow's)."""
    import psycopg2
    from flask import Response
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST, TEMPORARILY_UNAVAILABLE
    from mlflow.protos.service_pb2 import LogBatch
    from mlflow.server import handlers
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.utils.proto_json_utils import message_to_json
    from mlflow.utils.validation import _validate_batch_log_data, _validate_batch_log_limits, _validate_run_id

    answer = message_to_json(LogBatch.Response())

    def required(name: str, keys: tuple[str, ...]) -> Callable:
        def check(items) -> None:
            for idx, item in enumerate(items):
                for key in keys:
                    handlers._assert_required(item.get(key), path=f"{name}[{idx}].{key}")

        return check

    schema = {
        "run_id": [handlers._assert_string, handlers._assert_required],
        "metrics": [handlers._assert_array, required("metrics", ("key", "value", "timestamp"))],
        "params": [handlers._assert_array, required("params", ("key",))],
        "tags": [handlers._assert_array, required("tags", ("key",))],
    }

    def fast(store, run_id: str, metrics: list) -> bool:
        """True once written; False: MLflow's store is to write (and answer) it."""
        _validate_run_id(run_id)
        _validate_batch_log_data(metrics, [], [])
        _validate_batch_log_limits(metrics, [], [])
        rows = points(metrics)
        sqlite = store.engine.dialect.name == "sqlite"  # the unit tests'
        placeholder, lock = ("?", False) if sqlite else ("%s", True)
        for attempt in range(DEADLOCK_RETRIES + 1):
            connection = store.engine.raw_connection()
            try:
                return write(connection, run_id, rows, placeholder, lock)
            except psycopg2.errors.DeadlockDetected as e:
                if attempt >= DEADLOCK_RETRIES:
                    raise MlflowException(message=str(e), error_code=TEMPORARILY_UNAVAILABLE) from e
            except psycopg2.IntegrityError:
                return False  # e.g. the run was deleted meanwhile: MLflow's store says so
            except psycopg2.OperationalError as e:
                raise MlflowException(message=str(e), error_code=TEMPORARILY_UNAVAILABLE) from e
            except psycopg2.Error as e:  # as MLflow's session answers any other database error
                raise MlflowException(message=str(e), error_code=BAD_REQUEST) from e
            finally:
                connection.close()
            time.sleep((2**attempt) - 1 + random.uniform(0, 1))  # MLflow's backoff
        return False  # not reached

    @handlers.catch_mlflow_exception
    @handlers._disable_if_artifacts_only
    def log_batch():
        store = handlers._get_tracking_store()
        if type(store) is not SqlAlchemyStore or store.engine.dialect.name not in DIALECTS:
            return original()
        # Parsed and validated exactly as MLflow's view does it.
        handlers._validate_batch_log_api_req(handlers._get_request_json())
        request_message = handlers._get_request_message(LogBatch(), schema=schema)
        metrics = [Metric.from_proto(m) for m in request_message.metrics]
        params = [Param.from_proto(p) for p in request_message.params]
        tags = [RunTag.from_proto(t) for t in request_message.tags]
        run_id = request_message.run_id
        alone = not params and not tags and all(m.model_id is None for m in metrics)
        if not (alone and fast(store, run_id, metrics)):
            store.log_batch(run_id=run_id, metrics=metrics, params=params, tags=tags)
        response = Response(mimetype="application/json")
        response.set_data(answer)
        return response

    log_batch.__name__ = ENDPOINT
    return log_batch


def install(flask_app) -> bool:
    """Serve log_batch with the fast view; False when off or not possible."""
    return swap_view(flask_app, ENDPOINT, "STACK_FAST_LOG_BATCH", make_view, _logger)
