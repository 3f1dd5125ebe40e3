"""server/guard.py: the request policy (no database: the lockout is tested live)."""

from __future__ import annotations

import json

import pytest
from flask import Flask

from stack_ops.server import guard

OUTSIDE = "must be inside this stack's artifact store (mlflow-artifacts:/... or s3://mlflow/...)"
TRAVERSAL = "must not contain '..' segments, backslashes or NUL bytes"


@pytest.mark.parametrize(
    "location",
    [
        "",
        "mlflow-artifacts:/",
        "mlflow-artifacts:/experiments/7",
        "s3://mlflow",
        "s3://mlflow/",
        "s3://mlflow/team-a/experiments/7",
        "s3://mlflow/a/./b",
    ],
)
def test_locations_inside_the_store_are_accepted(location: str) -> None:
    assert guard.artifact_location_problem(location) is None


@pytest.mark.parametrize(
    "location",
    [
        "s3://other/experiments",
        "s3://mlflow-other/x",  # a bucket whose name merely starts with ours
        "s3://user@mlflow/x",
        "mlflow-artifacts://elsewhere/x",
        "file:///etc",
        "file:/var/lib/mlflow",
        "/var/lib/mlflow",
        "relative/dir",
        "http://mlflow/x",
    ],
)
def test_locations_outside_the_store_are_refused(location: str) -> None:
    assert guard.artifact_location_problem(location) == OUTSIDE


@pytest.mark.parametrize(
    "location",
    [
        "s3://mlflow/../other",
        "mlflow-artifacts:/a/../../b",
        "s3://mlflow/%2e%2e/other",
        "s3://mlflow/%2E%2E/other",
        "mlflow-artifacts:/..%2f..%2fsecrets",
        "s3://mlflow/a\\..\\b",
        "s3://mlflow/a%5cb",
        "s3://mlflow/a\x00b",
        "s3://mlflow/a%00b",
    ],
)
def test_traversal_backslash_and_nul_are_refused(location: str) -> None:
    assert guard.artifact_location_problem(location) == TRAVERSAL


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, True),
        (-2.5, True),
        (0, True),
        ("NaN", True),
        ("Infinity", True),
        ("-Infinity", True),
        (True, False),
        (False, False),
        ("1", False),
        ("abc", False),
        ("nan", False),
        (None, False),
        ([1], False),
    ],
)
def test_is_number(value, expected: bool) -> None:
    assert guard._is_number(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, True),
        (-3, True),
        ("12", True),
        ("-12", True),
        (True, False),
        (1.0, False),
        ("1.5", False),
        ("1e3", False),
        ("12\n", False),
        ("", False),
        ("abc", False),
        (None, False),
    ],
)
def test_is_integer(value, expected: bool) -> None:
    assert guard._is_integer(value) is expected


app = Flask(__name__)


def violation(path: str, body, method: str = "POST", content_type: str = "application/json"):
    """(status, error_code, message) of guard.policy_violation() for one request, or None."""
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    with app.test_request_context(path, method=method, data=data, content_type=content_type):
        response = guard.policy_violation()
        if response is None:
            return None
        payload = json.loads(response.get_data())
        return response.status_code, payload["error_code"], payload["message"]


LOG_BATCH = "/api/2.0/mlflow/runs/log-batch"


def batch(**metric) -> dict:
    return {"run_id": "r1", "metrics": [{"key": "loss", "value": 0.5, "timestamp": 1, "step": 0}, metric]}


def test_log_batch_with_a_text_value_is_refused() -> None:
    assert violation(LOG_BATCH, batch(key="acc", value="abc", timestamp=1, step=0)) == (
        400,
        "INVALID_PARAMETER_VALUE",
        'Invalid value: metrics[1].value must be a number (or "NaN", "Infinity", "-Infinity"), got \'abc\'.',
    )


def test_log_batch_with_a_bool_value_is_refused() -> None:
    result = violation("/ajax-api/2.0/mlflow/runs/log-batch", batch(key="acc", value=True, timestamp=1, step=0))
    assert result is not None and result[0] == 400 and "metrics[1].value must be a number" in result[2]
    assert result[2].endswith("got True.")


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", 3, 0.25])
def test_log_batch_with_numbers_and_special_values_passes(value) -> None:
    assert violation(LOG_BATCH, batch(key="acc", value=value, timestamp="1700000000000", step="7")) is None


def test_log_batch_with_a_text_step_is_refused() -> None:
    assert violation(LOG_BATCH, batch(key="acc", value=1, timestamp=1, step="seven")) == (
        400,
        "INVALID_PARAMETER_VALUE",
        "Invalid value: metrics[1].step must be an integer, got 'seven'.",
    )


def test_log_metric_is_checked_as_one_metric() -> None:
    result = violation("/api/2.0/mlflow/runs/log-metric", {"run_id": "r1", "key": "k", "value": 1, "timestamp": 1.5})
    assert result == (400, "INVALID_PARAMETER_VALUE", "Invalid value: metric.timestamp must be an integer, got 1.5.")


def test_malformed_json_is_refused() -> None:
    assert violation("/api/2.0/mlflow/runs/create", '{"experiment_id": "1",') == (
        400,
        "MALFORMED_REQUEST",
        "Malformed JSON in the request body.",
    )


def test_experiment_with_an_outside_artifact_location_is_refused() -> None:
    result = violation("/api/2.0/mlflow/experiments/create", {"name": "e", "artifact_location": "file:///etc"})
    assert result == (400, "INVALID_PARAMETER_VALUE", f"Invalid artifact_location 'file:///etc': {OUTSIDE}.")


def test_experiment_inside_the_store_passes() -> None:
    body = {"name": "e", "artifact_location": "s3://mlflow/team-a"}
    assert violation("/api/2.0/mlflow/experiments/create", body) is None


@pytest.mark.parametrize(
    ("path", "method", "content_type"),
    [
        ("/api/2.0/mlflow/runs/create", "GET", "application/json"),  # not a write
        ("/api/2.0/mlflow/runs/create", "POST", "text/plain"),  # not JSON: MLflow answers
        ("/api/2.0/mlflow-artifacts/artifacts/1/x.json", "PUT", "application/json"),  # artifact bytes
        ("/health", "POST", "application/json"),  # not the API
    ],
)
def test_requests_the_guard_does_not_read(path: str, method: str, content_type: str) -> None:
    assert violation(path, "{not json", method=method, content_type=content_type) is None


def test_an_empty_json_body_is_left_to_mlflow() -> None:
    assert violation("/api/2.0/mlflow/runs/create", "") is None


def test_a_param_value_longer_than_mlflow_keeps_is_refused() -> None:
    body = {"run_id": "r", "params": [{"key": "ok", "value": "x" * 10}, {"key": "notes", "value": "x" * 6001}]}
    status, code, message = violation(LOG_BATCH, body)
    assert (status, code) == (400, "INVALID_PARAMETER_VALUE")
    assert "params[1] 'notes'" in message and "6001 characters" in message and "at most 6000" in message
    one = violation("/api/2.0/mlflow/runs/log-parameter", {"run_id": "r", "key": "k", "value": "y" * 10_000})
    assert one is not None and one[0] == 400


def test_a_param_value_at_mlflows_limit_passes() -> None:
    body = {"run_id": "r", "params": [{"key": "k", "value": "x" * 6000}]}
    assert violation("/api/2.0/mlflow/runs/log-batch", body) is None
    assert violation("/api/2.0/mlflow/runs/log-parameter", {"run_id": "r", "key": "k", "value": "v"}) is None


# --- the lockout's failed sign-ins across workers and replicas ---------------------
def test_only_addresses_seen_failing_within_the_window_are_worth_a_query(clock) -> None:
    recent = guard.RecentFailures(300, clock)
    recent.reset([], live=True)
    assert not recent.worth_a_query("10.0.0.7")
    recent.add("10.0.0.7")
    clock.now += 299
    assert recent.worth_a_query("10.0.0.7") and not recent.worth_a_query("10.0.0.8")
    clock.now += 2
    assert not recent.worth_a_query("10.0.0.7")  # the window has passed
    assert recent.seen == {}


def test_every_address_is_worth_a_query_while_the_listener_is_down() -> None:
    recent = guard.RecentFailures(300)
    assert recent.worth_a_query("10.0.0.9")  # never connected yet
    recent.reset(["10.0.0.7"], live=True)
    assert recent.worth_a_query("10.0.0.7") and not recent.worth_a_query("10.0.0.9")
    recent.reset((), live=False)
    assert recent.worth_a_query("10.0.0.9")


def test_failures_of_other_replicas_arrive_over_the_auth_cache_listener(monkeypatch: pytest.MonkeyPatch) -> None:

    from test_authcache import FakeConnection, listening, wait_for

    from stack_ops.server.authcache import AuthCache

    recent = guard.RecentFailures(300)
    monkeypatch.setattr(guard, "RECENT", recent)
    # PostgreSQL already counts failures of 10.0.0.7 (another replica, before this worker started).
    first = FakeConnection(answers={"FROM stack_auth_failures": [("10.0.0.7",)]})
    second = FakeConnection(answers={"FROM stack_auth_failures": []})
    handed = [first, second]
    cache = AuthCache(60, connect=lambda: handed.pop(0))
    guard.listen_for_failures(cache)
    with listening(cache):
        wait_for(lambda: recent.live)
        assert f"LISTEN {guard.FAILED_CHANNEL}" in first.executed
        assert recent.worth_a_query("10.0.0.7") and not recent.worth_a_query("10.0.0.8")
        first.notify("10.0.0.8", channel=guard.FAILED_CHANNEL)  # a wrong password on another replica
        wait_for(lambda: recent.worth_a_query("10.0.0.8"))
        cache.cached(cache.users, "alice", lambda: "admin")
        assert cache.users.get("alice") == (True, "admin")  # a failure is no auth change

        first.closed = True  # the listener is lost: every address asks PostgreSQL
        first.wsock.send(b"x")
        wait_for(lambda: not handed)
        wait_for(lambda: recent.live)
        # Reconnected: what PostgreSQL holds now (the operator unlocked both meanwhile).
        assert not recent.worth_a_query("10.0.0.7") and not recent.worth_a_query("10.0.0.8")
    assert not recent.live and recent.worth_a_query("10.0.0.8")
