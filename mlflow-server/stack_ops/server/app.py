"""The app `mlflow server --app-name stack` runs: MLflow's basic-auth app, plus
one endpoint of the stack's, without changing MLflow's code.

Registered in pyproject.toml under MLflow's `mlflow.app` entry points. It is
`mlflow.server.auth:create_app` (the `basic-auth` app: users, permissions, the
stack's authorization function from basic_auth.ini) behind a small ASGI
router that sends one path elsewhere:

- `/_stack/artifact-access`: the decision nginx asks for before it streams an
  artifact to or from the S3 store itself (`artifacts.py`). nginx answers that
  path with 404 from outside; only its internal auth subrequest gets here.
- `/metrics`: Prometheus metrics for the holder of the scrape token
  (`metrics.py`), when serve.py turned MLflow's exporter on
  (PROMETHEUS_MULTIPROC_DIR); every request is then counted and timed by
  route template.

Each worker also puts caches in front of MLflow's auth lookups, emptied on
every worker when the auth database changes (`authcache.py`; the same
listener tells it of failed sign-ins on any replica, for the lockout in
`guard.py`), and runs at
most MLFLOW_WORKER_THREADS requests at once in MLflow's Flask app (the
thread pool Starlette runs it in; MLflow's `log_batch` holds two database
connections at once, so a pool of fewer than two per thread makes a worker
open and close connections under load: serve.py warns).

Metric history pages are written straight from the database rows, byte for
byte what MLflow's view writes, behind MLflow's own authorization, and
basic auth's redactor does not parse them back (they carry no `model_id`,
all it could clear; `history.py`; STACK_FAST_METRIC_HISTORY=false turns it
off). Run search
answers are written in one pass, byte for byte MLflow's, and MLflow's
logged-model redactor re-parses them only for a user it could change
something for (`search.py`; STACK_FAST_SEARCH_RUNS=false turns it off).
A `log_batch` of metrics alone is written in one transaction, the rows MLflow's
store writes, behind MLflow's own parsing, validation and authorization
(`logbatch.py`; STACK_FAST_LOG_BATCH=false turns it off).

Once built, each worker's app and everything imported to build it are moved
out of the garbage collector's reach (`frozen`; STACK_GC_FREEZE=false turns
it off).

Errors of the routes MLflow serves with FastAPI (`/v1/traces`, jobs, gateway)
come back in MLflow's JSON error shape (`errors.py`). An answer with a
Content-Length leaves with its headers and body together, so a server killed
mid-answer never leaves a client half an answer it cannot retry
(`answers.py`). Everything else goes to MLflow as it is. (Store errors in MLflow's terms, 404
for a missing object, come from the `s3` artifact repository plugin,
`store.py`.)
"""

from __future__ import annotations

import logging

from stack_ops.server.artifacts import ENDPOINT, Decider

_logger = logging.getLogger("stack_ops.server")


class StackApp:
    """ASGI: `/_stack/artifact-access` goes to the decider, everything else to MLflow."""

    def __init__(self, mlflow_app, decider: Decider, threads: int = 0, metrics=None) -> None:
        self.mlflow_app = mlflow_app
        self.decider = decider
        self.threads = threads  # 0: Starlette's default (40)
        self.metrics = metrics  # the /metrics endpoint (metrics.MetricsEndpoint), or None

    async def __call__(self, scope, receive, send) -> None:
        if self.threads:  # the limiter belongs to the event loop: set it from inside
            import anyio.to_thread

            anyio.to_thread.current_default_thread_limiter().total_tokens = self.threads
            self.threads = 0
        if scope["type"] == "http" and scope.get("path") == ENDPOINT:
            await self.decider.decide(scope, receive, send)
            return
        if self.metrics is not None and scope["type"] == "http" and scope.get("path") == "/metrics":
            await self.metrics(scope, receive, send)
            return
        await self.mlflow_app(scope, receive, send)


class PassThrough:
    """The decision on an MLflow too old for `Decider` (upgrade drills from 3.10):
    every transfer goes to MLflow's own proxy, which authorizes it itself."""

    async def decide(self, scope, receive, send) -> None:
        from starlette.datastructures import Headers
        from starlette.responses import Response

        headers = Headers(scope=scope)
        target = f"http://mlflow{headers.get('x-original-uri', '')}"
        answer = {"X-Stack-Route": "mlflow", "X-Stack-Target": target, "X-Stack-Host": headers.get("host", "")}
        await Response(b"", 200, answer)(scope, receive, send)


def auth_db_connect():
    """A psycopg2 connection to the auth database (the auth cache's listener)."""
    import psycopg2
    import sqlalchemy
    from mlflow.server import auth

    url = sqlalchemy.engine.make_url(auth.auth_config.database_uri)
    return psycopg2.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        dbname=url.database,
        keepalives=1,
        keepalives_idle=30,
        **{k: v if isinstance(v, str) else v[-1] for k, v in url.query.items()},
    )


def create_app() -> StackApp:
    import os

    from mlflow.server import app as flask_app
    from mlflow.server import auth
    from mlflow.server.auth import create_app as create_basic_auth_app

    from stack_ops.server import authcache, guard, history, logbatch, search
    from stack_ops.server.answers import WholeAnswers
    from stack_ops.server.errors import JsonErrors

    # Errors of MLflow's FastAPI routes (/v1/traces, jobs, gateway) in MLflow's
    # JSON shape; a sized answer's headers leave with its body.
    mlflow_app = WholeAnswers(JsonErrors(create_basic_auth_app()))
    history.install(flask_app, auth)
    search.install(flask_app, auth)
    logbatch.install(flask_app)
    # An older MLflow (the upgrade test builds this image on 3.10) lacks the
    # auth cache setting or the lookups the caches wrap: it runs uncached.
    # The lockout's failed sign-ins ride on the cache's listener; with the
    # caches off (TTL 0 or an older MLflow) every signed request asks
    # PostgreSQL about lockouts.
    try:
        authcache.start(auth, auth.auth_config.auth_cache_ttl_seconds, auth_db_connect, (guard.listen_for_failures,))
    except AttributeError as e:
        _logger.warning("no stack auth caches: this MLflow lacks %s", e)
    try:
        decider = Decider()
    except (ImportError, AttributeError) as e:
        _logger.warning("artifact transfers go through MLflow's proxy: this MLflow lacks %s", e)
        decider = PassThrough()
    threads = int(os.environ.get("MLFLOW_WORKER_THREADS") or 0)
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return frozen(StackApp(mlflow_app, decider, threads))
    from stack_ops.common import StackError, read_secret
    from stack_ops.server import metrics

    try:
        token = read_secret("metrics_scrape_token")
    except StackError as e:  # /metrics then refuses everyone (403)
        _logger.warning("metrics: no scrape token (%s): /metrics refuses every request", e)
        token = ""
    templates = metrics.RouteTemplates(flask_app.url_map, exact=(ENDPOINT, metrics.ENDPOINT))
    stack = StackApp(mlflow_app, decider, threads, metrics.MetricsEndpoint(token))
    return frozen(metrics.RequestMetrics(stack, templates))


def frozen(app):
    """The app, with every object that exists once it is built (MLflow's modules,
    the app itself, ~320,000 objects) moved out of Python's garbage collector's
    reach: they live as long as the worker. A full collection otherwise walks
    them all (~165 ms each time, measured in the server image), and a request
    that builds many objects (a search of 1,000 runs) sets one off every few
    requests. STACK_GC_FREEZE=false leaves the collector as Python sets it."""
    import gc

    from stack_ops.common import switch_on

    if not switch_on("STACK_GC_FREEZE"):
        return app
    gc.collect()
    gc.freeze()
    return app
