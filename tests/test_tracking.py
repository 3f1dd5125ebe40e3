"""Experiments, runs, params, metric history, tags and log_batch round-trip."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import mlflow
import requests
from mlflow.entities import Metric, Param, RunTag

from stack import Stack, unique


def test_tracking_round_trip(tracking: None) -> None:
    client = mlflow.MlflowClient()
    name = unique("tracking")
    exp_id = client.create_experiment(name, tags={"team": "churn"})
    run = client.create_run(exp_id, run_name="round-trip", tags={"stage": "test"})
    run_id = run.info.run_id

    client.log_param(run_id, "learning_rate", "0.05")
    client.set_tag(run_id, "owner", "ci")
    for step in range(20):
        client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step, timestamp=1_700_000_000_000 + step)
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(f"m{i}", float(i) * 1.5, now, 0) for i in range(10)],
        params=[Param(f"p{i}", f"value-{i}") for i in range(5)],
        tags=[RunTag("batch", "yes")],
    )
    client.set_terminated(run_id, "FINISHED")

    exp = client.get_experiment_by_name(name)
    assert exp.experiment_id == exp_id
    assert exp.tags["team"] == "churn"
    assert exp.artifact_location.startswith("mlflow-artifacts:/")

    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert got.info.run_name == "round-trip"
    assert got.data.params == {"learning_rate": "0.05", **{f"p{i}": f"value-{i}" for i in range(5)}}
    assert {k: v for k, v in got.data.tags.items() if not k.startswith("mlflow.")} == {
        "stage": "test",
        "owner": "ci",
        "batch": "yes",
    }
    assert got.data.metrics == {"loss": 1.0 / 20, **{f"m{i}": float(i) * 1.5 for i in range(10)}}

    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value, m.timestamp) for m in sorted(history, key=lambda m: m.step)] == [
        (step, 1.0 / (step + 1), 1_700_000_000_000 + step) for step in range(20)
    ]

    found = client.search_runs([exp_id], filter_string="params.learning_rate = '0.05' and metrics.m3 > 4")
    assert [r.info.run_id for r in found] == [run_id]


def test_fluent_api_run(tracking: None) -> None:
    mlflow.set_experiment(unique("fluent"))
    with mlflow.start_run() as run:
        mlflow.log_params({"alpha": 0.5, "solver": "lbfgs"})
        mlflow.log_metrics({"auc": 0.91, "f1": 0.62}, step=3)
        mlflow.set_tags({"data_version": "v1"})
    got = mlflow.get_run(run.info.run_id)
    assert got.data.params == {"alpha": "0.5", "solver": "lbfgs"}
    assert got.data.metrics == {"auc": 0.91, "f1": 0.62}
    assert got.data.tags["data_version"] == "v1"


def tracking_sessions(stack: Stack) -> tuple[int, int]:
    """(connections ever opened to the tracking database, connections open
    now), from PostgreSQL's own statistics. A connection's count reaches
    pg_stat_database when it closes, or within 10 s of going idle: wait that out."""
    time.sleep(11)
    out = stack.compose(
        "exec",
        "-T",
        "postgres",
        "psql",
        "-U",
        "postgres",
        "-tA",
        "-F",
        " ",
        "-c",
        "SELECT (SELECT sessions FROM pg_stat_database WHERE datname = 'mlflow'),"
        " (SELECT count(*) FROM pg_stat_activity WHERE datname = 'mlflow')",
    ).stdout.split()
    return int(out[0]), int(out[1])


# Inside mlflow-server: open connections to the tracking database as its
# user until that user holds PEAK at once; print how many it held.
HOLD_CONNECTIONS = """
import json, sys
import psycopg2, sqlalchemy
from stack_ops.common import Settings

url = sqlalchemy.engine.make_url(Settings.from_env().tracking_uri())
peak = int(sys.argv[1])
held, refused = [], None
try:
    while refused is None:
        try:
            c = psycopg2.connect(
                host=url.host, port=url.port, user=url.username, password=url.password, dbname=url.database
            )
        except psycopg2.OperationalError as e:
            refused = str(e).strip()
            break
        c.autocommit = True  # each count its own snapshot of pg_stat_activity
        held.append(c)
        with c.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = current_user")
            if cur.fetchone()[0] >= peak:
                break
    with held[0].cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = current_user")
        at_once = cur.fetchone()[0]
finally:
    for c in held:
        c.close()
print(json.dumps({"at_once": at_once, "refused": refused}))
"""


def test_postgres_admits_three_replicas_of_four_workers_at_their_pools_peak(stack: Stack) -> None:
    """Each worker's pool can hold pool + overflow tracking connections; three
    replicas (docs/replicas.md) of four workers (the most serve.py starts) hold
    240 at peak. PostgreSQL's own limit of 100 refused the 101st, and the
    request that needed it failed. With the pools at that peak the bundled
    database must admit them all, and still have room (auth store, jobs)."""

    def setting(name: str) -> int:
        return int(stack.compose("exec", "-T", "mlflow-server", "printenv", name).stdout)

    peak = 3 * 4 * (setting("MLFLOW_SQLALCHEMYSTORE_POOL_SIZE") + setting("MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"))
    assert peak == 240  # the defaults docs/scaling.md counts with
    out = stack.compose("exec", "-T", "mlflow-server", "python", "-c", HOLD_CONNECTIONS, str(peak), timeout=300).stdout
    held = json.loads(out.strip().splitlines()[-1])
    assert held["refused"] is None and held["at_once"] >= peak, held
    limit = stack.compose(
        "exec", "-T", "postgres", "psql", "-U", "postgres", "-tA", "-c", "SHOW max_connections"
    ).stdout.strip()
    assert int(limit) >= peak + 40, limit  # room beside the peak: auth store, job runner, gc, operators


def test_concurrent_logging_keeps_its_database_connections(
    stack: Stack, admin: tuple[str, str], http: requests.Session, tracking: None
) -> None:
    """MLflow's log_batch holds two database connections at once. With fewer
    than two pooled per thread (MLflow's own 5 + 10 against 15 threads, the old
    default), a worker under load opened and closed a connection on most calls,
    and PostgreSQL forked a backend and ran a SCRAM handshake for each one
    (docs/performance.md). 16 clients logging at once (every thread of two
    workers) must open no connection that is not kept, and lose no point. Each
    batch carries a tag, so that MLflow's store writes it (metrics alone take
    the stack's one-connection path, tests/test_log_batch.py)."""
    base = f"{stack.url}/api/2.0/mlflow"
    exp = http.post(f"{base}/experiments/create", json={"name": unique("pool")}, timeout=60).json()["experiment_id"]
    runs = [
        http.post(f"{base}/runs/create", json={"experiment_id": exp}, timeout=60).json()["run"]["info"]["run_id"]
        for _ in range(16)
    ]

    def log(run_id: str, first: int, calls: int) -> list[int]:
        c = requests.Session()
        c.auth = admin
        statuses = []
        for step in range(first, first + calls):
            metrics = [
                {"key": f"m{k}", "value": step + k / 10, "timestamp": 1_700_000_000_000 + step, "step": step}
                for k in range(10)
            ]
            batch = {"run_id": run_id, "metrics": metrics, "tags": [{"key": "phase", "value": f"step {step}"}]}
            r = c.post(f"{base}/runs/log-batch", json=batch, timeout=120)
            statuses.append(r.status_code)
        return statuses

    with ThreadPoolExecutor(16) as pool:  # fills every worker's pool to what this load needs
        assert {st for f in [pool.submit(log, r, 0, 10) for r in runs] for st in f.result()} == {200}
    opened_before, open_before = tracking_sessions(stack)
    with ThreadPoolExecutor(16) as pool:
        assert {st for f in [pool.submit(log, r, 10, 30) for r in runs] for st in f.result()} == {200}
    opened_after, open_after = tracking_sessions(stack)
    # A connection a worker needed for the first time under this load is kept
    # (open_after grows with it); one opened and closed again is churn. 5 is
    # room for other processes' short connections meanwhile (MLflow's job
    # runner runs each job in a subprocess with its own); the old defaults
    # churned 204 here.
    churned = (opened_after - opened_before) - max(0, open_after - open_before)
    assert churned <= 5, (
        f"{opened_after - opened_before} connections opened during 480 log_batch calls, "
        f"{open_after - open_before} of them kept"
    )

    client = mlflow.MlflowClient(tracking_uri=stack.url)
    for run_id in (runs[0], runs[-1]):
        history = client.get_metric_history(run_id, "m3")
        assert sorted((m.step, m.value) for m in history) == [(step, step + 0.3) for step in range(40)]
        assert client.get_run(run_id).data.metrics["m9"] == 39.9
        assert client.get_run(run_id).data.tags["phase"] == "step 39"
