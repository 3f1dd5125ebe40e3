"""The stack's authorization function: MLflow's basic auth, plus two guards.

MLflow's basic-auth app calls the function named in basic_auth.ini
(`authorization_function`) before every protected request, Flask and FastAPI
routes alike. This one wraps MLflow's own `authenticate_request_basic_auth`:

1. **Failed sign-ins lock the client address out.** After
   MLFLOW_AUTH_MAX_FAILURES wrong passwords from one address within
   MLFLOW_AUTH_LOCKOUT_SECONDS, every request from that address that carries
   credentials gets 429 *before* the password is checked, so guessing stops
   paying off (even the right password is refused until the window passes).
   The address is nginx's `X-Real-IP` (nginx overwrites whatever the client
   sent). Failures live in PostgreSQL (`stack_auth_failures` in the auth
   database), so every uvicorn worker of every replica sees the same count.
   nginx alone can't do this: it only learns that a password was wrong after
   the server has answered, and by then the guess has been checked.
2. **Requests MLflow would mishandle are refused with 400.** A malformed
   JSON body (MLflow answers some with a 500 HTML page), and metric values,
   timestamps or steps of the wrong type (MLflow stores a metric value of
   "abc" as 0.0), and param values longer than MLflow keeps (it would cut
   them to 6,000 characters and answer 200).
3. **Artifact locations stay in the bucket.** `experiments/create` with an
   `artifact_location` outside the stack's artifact store (`file:`, local
   paths, other buckets, `..` segments) is refused with 400, so no run can
   point the server at files it must not serve. Model-version sources are
   checked by MLflow itself (MLFLOW_CREATE_MODEL_VERSION_SOURCE_VALIDATION_REGEX,
   set by serve.py).
"""

from __future__ import annotations

import json
import os
import posixpath
import random
import re
import threading
import time
from urllib.parse import unquote, urlparse

from flask import Response, g, request

MAX_FAILURES = int(os.environ.get("MLFLOW_AUTH_MAX_FAILURES", "10"))
WINDOW_SECONDS = int(os.environ.get("MLFLOW_AUTH_LOCKOUT_SECONDS", "300"))
BUCKET = os.environ.get("S3_BUCKET", "mlflow")
# Every failed sign-in is announced on this channel (payload: the address) to
# every worker of every replica, over the auth cache's listener connection.
FAILED_CHANNEL = "stack_auth_failed"

TABLE_DDL = """
CREATE TABLE IF NOT EXISTS stack_auth_failures (
    address  text        NOT NULL,
    username text        NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS stack_auth_failures_address_at ON stack_auth_failures (address, at);
"""

_engine = None
_engine_lock = threading.Lock()


def _db():
    global _engine
    with _engine_lock:
        if _engine is None:
            import sqlalchemy

            from stack_ops.common import Settings

            _engine = sqlalchemy.create_engine(
                Settings.from_env().auth_uri(), pool_size=2, max_overflow=4, pool_pre_ping=True
            )
        return _engine


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error_code": code, "message": message})
    return Response(body, status=status, mimetype="application/json", headers=headers or {})


def client_address() -> str:
    return request.headers.get("X-Real-IP") or request.remote_addr or "unknown"


class RecentFailures:
    """The addresses with a failed sign-in within the window, as one worker
    knows them: its own failures, every other worker's and replica's (each
    announced by NOTIFY on FAILED_CHANNEL), and those in PostgreSQL when the
    listener (re)connected. Only these addresses are worth a lockout query.

    Trusted only while the listener is connected (`live`): a notification
    missed while it was down could hide a lockout, so until it is back every
    request with credentials asks PostgreSQL."""

    def __init__(self, window: float, clock=time.time) -> None:
        self.window, self.clock = window, clock
        self.lock = threading.Lock()
        self.seen: dict[str, float] = {}
        self.live = False

    def add(self, address: str) -> None:
        with self.lock:
            self.seen[address] = self.clock()

    def reset(self, addresses, live: bool) -> None:
        """The listener (re)connected (live) with these addresses from
        PostgreSQL, or went down (not live)."""
        now = self.clock()
        with self.lock:
            self.seen = dict.fromkeys(addresses, now)
            self.live = live

    def worth_a_query(self, address: str) -> bool:
        if not self.live:
            return True
        with self.lock:
            at = self.seen.get(address)
            if at is None:
                return False
            if self.clock() - at > self.window:
                del self.seen[address]
                return False
            return True


RECENT = RecentFailures(WINDOW_SECONDS)

RECENT_ADDRESSES_SQL = (
    "SELECT DISTINCT address FROM stack_auth_failures WHERE at > now() - make_interval(secs => %(w)s)"
)


def listen_for_failures(cache) -> None:
    """Feed RECENT from the auth cache's listener (authcache.AuthCache): LISTEN
    on FAILED_CHANNEL on the same connection, load the addresses in the window
    at each connect, and forget them all while it is down."""

    def on_connect(conn) -> None:
        with conn.cursor() as cur:
            cur.execute(f"LISTEN {FAILED_CHANNEL}")  # before the query: nothing falls between
            cur.execute(RECENT_ADDRESSES_SQL, {"w": WINDOW_SECONDS})
            RECENT.reset([row[0] for row in cur.fetchall()], live=True)

    cache.on_connect.append(on_connect)
    cache.on_disconnect.append(lambda: RECENT.reset((), live=False))
    cache.channels[FAILED_CHANNEL] = RECENT.add


def seconds_locked(address: str) -> int:
    """0 if the address may try a password, else seconds until it may.

    PostgreSQL holds the count. An address no worker has seen fail within
    the window needs no query: the common case, a teammate with the right
    password, costs a dictionary lookup instead of a round trip."""
    import sqlalchemy

    if not RECENT.worth_a_query(address):
        return 0
    with _db().connect() as conn:
        row = conn.execute(
            sqlalchemy.text(
                "SELECT count(*), EXTRACT(EPOCH FROM (min(at) + make_interval(secs => :w) - now()))"
                " FROM stack_auth_failures WHERE address = :a AND at > now() - make_interval(secs => :w)"
            ),
            {"a": address, "w": WINDOW_SECONDS},
        ).one()
    count, remaining = row
    return max(1, int(remaining or 0) + 1) if count >= MAX_FAILURES else 0


def record_failure(address: str, username: str) -> None:
    """Count the failure in PostgreSQL and announce it to every worker of
    every replica in the same transaction (NOTIFY is delivered at commit)."""
    import sqlalchemy

    RECENT.add(address)
    with _db().begin() as conn:
        conn.execute(
            sqlalchemy.text("INSERT INTO stack_auth_failures (address, username) VALUES (:a, :u)"),
            {"a": address, "u": username[:200]},
        )
        conn.execute(sqlalchemy.text("SELECT pg_notify(:c, :a)"), {"c": FAILED_CHANNEL, "a": address})
        if random.random() < 0.02:  # keep the table small
            conn.execute(sqlalchemy.text("DELETE FROM stack_auth_failures WHERE at < now() - interval '1 day'"))


def addresses_with_recent_failures() -> int:
    """At server start: how many addresses failed within the window (each
    worker loads them itself when its listener connects). Also proves the
    table is there."""
    import sqlalchemy

    from stack_ops.common import StackError

    try:
        with _db().connect() as conn:
            rows = conn.execute(
                sqlalchemy.text(
                    "SELECT count(DISTINCT address) FROM stack_auth_failures"
                    " WHERE at > now() - make_interval(secs => :w)"
                ),
                {"w": WINDOW_SECONDS},
            ).scalar_one()
    except sqlalchemy.exc.SQLAlchemyError as e:
        raise StackError(f"cannot read failed sign-ins (stack_auth_failures; run the migrate job): {e}") from e
    return int(rows)


def artifact_location_problem(location: str) -> str | None:
    """Why an experiment's artifact_location is refused, or None if it is inside the store."""
    if not location:
        return None
    decoded = unquote(location)
    parsed = urlparse(decoded)
    segments = parsed.path.split("/")
    if ".." in segments or "\\" in decoded or "\x00" in decoded:
        return "must not contain '..' segments, backslashes or NUL bytes"
    if parsed.scheme == "mlflow-artifacts" and not parsed.netloc:
        return None
    if parsed.scheme == "s3" and parsed.netloc == BUCKET:
        normalized = posixpath.normpath(parsed.path or "/")
        if normalized.startswith("/"):
            return None
    return f"must be inside this stack's artifact store (mlflow-artifacts:/... or s3://{BUCKET}/...)"


def _is_number(value) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) or value in ("NaN", "Infinity", "-Infinity")


def _is_integer(value) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value) is not None)


def metric_problem(body: dict) -> str | None:
    metrics = body.get("metrics") if request.path.endswith("/log-batch") else [body]
    if not isinstance(metrics, list):
        return None  # MLflow's own validation answers this
    for i, metric in enumerate(metrics):
        if not isinstance(metric, dict):
            continue
        where = f"metrics[{i}]" if request.path.endswith("/log-batch") else "metric"
        if "value" in metric and not _is_number(metric["value"]):
            return f'{where}.value must be a number (or "NaN", "Infinity", "-Infinity"), got {metric["value"]!r}'
        for field in ("timestamp", "step"):
            if field in metric and not _is_integer(metric[field]):
                return f"{where}.{field} must be an integer, got {metric[field]!r}"
    return None


def param_problem(body: dict) -> str | None:
    """A param value longer than MLflow stores: MLflow would cut it to its
    limit and answer 200, so the client would never learn its value was lost."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    params = body.get("params") if request.path.endswith("/log-batch") else [body]
    if not isinstance(params, list):
        return None
    for i, param in enumerate(params):
        if not isinstance(param, dict) or not isinstance(param.get("value"), str):
            continue
        if len(param["value"]) > MAX_PARAM_VAL_LENGTH:
            where = f"params[{i}]" if request.path.endswith("/log-batch") else "param"
            return (
                f"{where} {param.get('key')!r} has a value of {len(param['value'])} characters; "
                f"MLflow stores at most {MAX_PARAM_VAL_LENGTH} (log longer text as an artifact)"
            )
    return None


def policy_violation() -> Response | None:
    if request.method not in ("POST", "PUT", "PATCH", "DELETE") or "/mlflow-artifacts/" in request.path:
        return None
    if not request.path.startswith(("/api/", "/ajax-api/")) or request.mimetype != "application/json":
        return None
    body = request.get_json(silent=True)  # cached: MLflow's handler reuses the parse
    if body is None and request.get_data(cache=True).strip():
        return _error(400, "MALFORMED_REQUEST", "Malformed JSON in the request body.")
    if not isinstance(body, dict):
        return None
    if request.path.endswith(("/mlflow/runs/log-batch", "/mlflow/runs/log-metric")):
        problem = metric_problem(body)
        if problem:
            return _error(400, "INVALID_PARAMETER_VALUE", f"Invalid value: {problem}.")
    if request.path.endswith(("/mlflow/runs/log-batch", "/mlflow/runs/log-parameter")):
        problem = param_problem(body)
        if problem:
            return _error(400, "INVALID_PARAMETER_VALUE", f"Param value too long: {problem}.")
    if not request.path.endswith("/mlflow/experiments/create"):
        return None
    location = body.get("artifact_location")
    if not isinstance(location, str):
        return None
    problem = artifact_location_problem(location)
    if problem:
        return _error(400, "INVALID_PARAMETER_VALUE", f"Invalid artifact_location {location!r}: {problem}.")
    return None


def authenticate_request():
    """MLflow calls this several times per request (its before-request hook, then
    `sender_is_admin()` and the permission validators each ask again): decide
    once per request, so the lockout query and the body checks run once."""
    if "stack_auth" not in g:
        g.stack_auth = _decide()
    return g.stack_auth


def _decide():
    from mlflow.server.auth import authenticate_request_basic_auth

    if request.authorization is None:
        return authenticate_request_basic_auth()  # the 401 challenge; not a failed attempt
    address = client_address()
    wait = seconds_locked(address)
    if wait:
        return _error(
            429,
            "TOO_MANY_REQUESTS",
            f"Too many failed sign-in attempts from {address}; try again in {wait} s.",
            {"Retry-After": str(wait)},
        )
    result = authenticate_request_basic_auth()
    if isinstance(result, Response):
        record_failure(address, request.authorization.username or "")
        return result
    return policy_violation() or result
