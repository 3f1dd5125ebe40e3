"""Metric history without MLflow's per-point Python objects.

`GET /api/2.0/mlflow/metrics/get-history` (and its `/ajax-api/` twin, the
endpoint `MlflowClient.get_metric_history` pages through 25,000 points at a
time) spends most of its time in MLflow's Python, not in PostgreSQL: an ORM
object per point, then a `Metric` entity, then a protobuf message, then
`MessageToDict`, then pretty-printed JSON (docs/performance.md, profile).

This module swaps only the body of that Flask view. Everything around it is
MLflow's, unchanged: authentication, the permission check (MLflow's
`before_request` validator for the run), the stack's guard, request parsing
and validation (`_get_request_message` with MLflow's own schema), the page
token (`SearchUtils`), and error handling (`catch_mlflow_exception`). The
store query is the one MLflow's `SqlAlchemyStore.get_metric_history` runs,
same filter, order, offset and limit, read as plain rows; the JSON is written
straight from them, byte for byte what `message_to_json` gives (indent 2,
field order key, value, timestamp, step; NaN as the string "NaN";
infinities are stored as the largest double by MLflow and come back as
such). tests/test_history.py compares both paths on the same data.

Basic auth then hands every answer a teammate gets (anyone but an admin) to
its after-request `redact_metric_history_model_ids`, which parses the whole
page back (`resp.json`, then `parse_dict` into protobuf: ~190 ms of a
25,000-point page's ~300 ms on the server, profiled with py-spy) to clear
each point's `model_id` if the user is denied logged models. The fast view's
answers carry no `model_id`: `render` writes key, value, timestamp and step
only, as MLflow's store gives them for a run's metrics. So the redactor has
nothing to clear in them and is skipped for them (`make_redactor`); every
other answer (MLflow's own view, below) still goes through MLflow's.

It only answers for MLflow's plain `SqlAlchemyStore` on PostgreSQL (a
workspace-aware or other store goes to MLflow's view) and can be switched off with
`STACK_FAST_METRIC_HISTORY=false` (the view and the redactor both).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable

from stack_ops.common import swap_after_request, swap_view

_logger = logging.getLogger("stack_ops.server.history")

ENDPOINT = "_get_metric_history"  # the Flask endpoint of both paths
# Set on each answer the fast view writes: what render() wrote, no model_id in it.
WRITTEN_HERE = "stack_fast_metric_history"
SQL = (
    "SELECT value, timestamp, step, is_nan FROM metrics WHERE run_uuid = %s AND key = %s"
    " ORDER BY timestamp, step, value OFFSET %s"
)


def render(key: str, rows, next_page_token: str | None) -> str:
    """message_to_json(GetMetricHistory.Response) for these (value, timestamp,
    step, is_nan) rows, without building the message."""
    parts = []
    if rows:
        head = '    {\n      "key": ' + json.dumps(key) + ',\n      "value": '
        items = []
        append = items.append
        for value, timestamp, step, is_nan in rows:
            if is_nan or value != value:
                shown = '"NaN"'
            elif value in (math.inf, -math.inf):
                shown = '"Infinity"' if value > 0 else '"-Infinity"'
            else:
                shown = float.__repr__(float(value))
            append(f'{head}{shown},\n      "timestamp": {int(timestamp)},\n      "step": {int(step)}\n    }}')
        parts.append('  "metrics": [\n' + ",\n".join(items) + "\n  ]")
    if next_page_token:
        parts.append('  "next_page_token": ' + json.dumps(next_page_token))
    if not parts:
        return "{}"
    return "{\n" + ",\n".join(parts) + "\n}"


def make_view(original: Callable) -> Callable:
    """The fast view for `ENDPOINT`, falling back to `original` (MLflow's)."""
    from flask import Response
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
    from mlflow.protos.service_pb2 import GetMetricHistory
    from mlflow.server import handlers
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.utils.search_utils import SearchUtils

    @handlers.catch_mlflow_exception
    @handlers._disable_if_artifacts_only
    def get_metric_history():
        store = handlers._get_tracking_store()
        if type(store) is not SqlAlchemyStore or store.engine.dialect.name != "postgresql":
            return original()
        # Parsed and validated exactly as MLflow's view does it.
        request_message = handlers._get_request_message(
            GetMetricHistory(),
            schema={
                "run_id": [handlers._assert_string, handlers._assert_required],
                "metric_key": [handlers._assert_string, handlers._assert_required],
                "page_token": [handlers._assert_string],
            },
        )
        run_id = request_message.run_id or request_message.run_uuid
        max_results = request_message.max_results if request_message.HasField("max_results") else None
        if max_results is not None and max_results <= 0:
            raise MlflowException(
                f"Invalid value {max_results} for parameter 'max_results' supplied. It must be a positive integer.",
                error_code=INVALID_PARAMETER_VALUE,
            )
        offset = SearchUtils.parse_start_offset_from_page_token(request_message.page_token or None)
        sql, params = SQL, [run_id, request_message.metric_key, offset]
        if max_results is not None:
            sql, params = sql + " LIMIT %s", [*params, max_results + 1]

        connection = store.engine.raw_connection()
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                rows = cursor.fetchall()
            connection.commit()
        finally:
            connection.close()

        next_page_token = None
        if max_results is not None and len(rows) == max_results + 1:
            next_page_token = SearchUtils.create_page_token(offset + max_results).decode()
            rows = rows[:max_results]
        response = Response(mimetype="application/json")
        response.set_data(render(request_message.metric_key, rows, next_page_token))
        setattr(response, WRITTEN_HERE, True)
        return response

    get_metric_history.__name__ = ENDPOINT
    return get_metric_history


def make_redactor(original: Callable) -> Callable:
    """MLflow's history redactor, skipped for the fast view's answers: all it can
    withhold is a point's `model_id`, and render() never writes one."""

    def redact_metric_history_model_ids(resp) -> None:
        if getattr(resp, WRITTEN_HERE, False):
            return
        original(resp)

    return redact_metric_history_model_ids


def install(flask_app, auth) -> bool:
    """Serve metric history with the fast view (and basic auth's redactor
    skipping its answers); False when off or not possible."""
    if not swap_view(flask_app, ENDPOINT, "STACK_FAST_METRIC_HISTORY", make_view, _logger):
        return False
    redactor = getattr(auth, "redact_metric_history_model_ids", None)
    if redactor is None or not hasattr(auth, "AFTER_REQUEST_HANDLERS"):
        return True  # an MLflow without it (3.10) parses nothing after the view
    swap_after_request(auth, redactor, make_redactor(redactor))
    return True
