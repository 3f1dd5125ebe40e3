"""The benchmark's load generator: runs inside the `bench` container.

One workload per invocation, against one target; prints one JSON object (the
measurement) as its last line of stdout. scripts/bench drives it.

    load.py logging   TARGET --clients 20 --seconds 60 --metrics 10
    load.py seed      TARGET --runs 25000 --points 100000
    load.py search    TARGET --experiment-id ID --repeat 20
    load.py history   TARGET --run-id ID --repeat 5
    load.py artifacts TARGET --mib 1024
    load.py upload    TARGET --mib 5120
    load.py parallel  TARGET --clients 20 --mib 100
    load.py runs-load TARGET [--max-retries N]
    load.py chart     RESULTS.json OUT.png

TARGET is `stack` (nginx, basic auth), `server` (the stack's server without
nginx), `baseline` (plain `mlflow server`, no auth) or `s3` (the bucket,
directly with boto3; artifacts only). Logging, search and history call the
stack as a regular user (`--role teammate`, the default: a new account
without admin rights) or as the admin (`--role admin`); the rest as the admin.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass

import requests
from quantiles import pct
from urllib3.util.retry import Retry

from stack_ops.common import Settings, env, read_secret

CHUNK = 1 << 20  # 1 MiB pattern, repeated to make artifacts of any size


@dataclass
class Target:
    name: str
    url: str
    auth: tuple[str, str] | None


def target(name: str) -> Target:
    admin = (env("MLFLOW_ADMIN_USERNAME", "admin"), read_secret("mlflow_admin_password"))
    if name == "stack":
        return Target(name, "http://nginx:8080", admin)
    if name == "server":  # the stack's server without nginx in front: what auth alone costs
        return Target(name, "http://mlflow-server:5000", admin)
    if name == "baseline":
        # By IP: MLflow's default Host allow-list accepts private addresses,
        # not the compose service name, and the baseline keeps its defaults.
        return Target(name, f"http://{socket.gethostbyname('baseline')}:5000", None)
    raise SystemExit(f"unknown target {name!r}")


def teammate(t: Target, role: str) -> Target:
    """The target as a regular user (`role` "teammate"): a new account without
    admin rights, so every request pays for MLflow's permission checks as a
    team's requests do. The baseline has no accounts and stays as it is."""
    if role == "admin" or t.auth is None:
        return t
    name, password = f"bench-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18)
    s = session(t)
    r = s.post(f"{t.url}/api/2.0/mlflow/users/create", json={"username": name, "password": password}, timeout=60)
    r.raise_for_status()
    return Target(t.name, t.url, (name, password))


def session(t: Target, retry: bool = True) -> requests.Session:
    """Setup calls retry dropped connections and 5xx like MLflow's client does;
    measured calls (retry=False) count every failure as an error."""
    s = requests.Session()
    s.auth = t.auth
    retries = Retry(total=5, backoff_factor=1, status_forcelist=(502, 503, 504), allowed_methods=None) if retry else 0
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64, max_retries=retries)
    s.mount("http://", adapter)
    return s


def api(s: requests.Session, t: Target, method: str, path: str, **kw) -> dict:
    r = s.request(method, f"{t.url}/api/2.0/mlflow/{path}", timeout=300, **kw)
    r.raise_for_status()
    return r.json()


def new_experiment(s: requests.Session, t: Target, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return api(s, t, "POST", "experiments/create", json={"name": name})["experiment_id"]


def new_run(s: requests.Session, t: Target, experiment_id: str) -> str:
    body = {"experiment_id": experiment_id, "start_time": int(time.time() * 1000)}
    return api(s, t, "POST", "runs/create", json=body)["run"]["info"]["run_id"]


# --- logging -----------------------------------------------------------------
def cmd_logging(a: argparse.Namespace) -> dict:
    t = teammate(target(a.target), a.role)
    s = session(t)
    exp = new_experiment(s, t, "bench-logging")
    runs = [new_run(s, t, exp) for _ in range(a.clients)]
    latencies: list[list[float]] = [[] for _ in runs]
    errors = [0] * len(runs)
    warm_errors = [0] * len(runs)
    url = f"{t.url}/api/2.0/mlflow/runs/log-batch"
    start = threading.Barrier(len(runs) + 1)

    def client(i: int) -> None:
        cs = session(t, retry=False)
        step = 0

        def send() -> bool:
            now = int(time.time() * 1000)
            metrics = [
                {"key": f"m{k}", "value": step * 0.001 + k, "timestamp": now, "step": step} for k in range(a.metrics)
            ]
            try:
                r = cs.post(url, json={"run_id": runs[i], "metrics": metrics}, timeout=120)
                return r.status_code == 200
            except requests.RequestException:
                return False

        # Warm-up, not measured: connections open, each worker past its first request.
        for _ in range(a.warmup):
            warm_errors[i] += not send()
            step += 1
        start.wait()
        deadline = time.monotonic() + a.seconds
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            ok = send()
            latencies[i].append(time.perf_counter() - t0)
            if not ok:
                errors[i] += 1
            step += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(runs))]
    for th in threads:
        th.start()
    start.wait()
    t0 = time.monotonic()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - t0
    lat = [x for lst in latencies for x in lst]
    n, err = len(lat), sum(errors)
    # Every successful call must have landed: count the stored points of one metric.
    stored = 0
    for run_id in runs:
        hist = api(s, t, "GET", "metrics/get-history", params={"run_id": run_id, "metric_key": "m0"})
        stored += len(hist.get("metrics", []))
    return {
        "requests": n,
        "errors": err,
        "seconds": round(elapsed, 2),
        "req_per_s": round(n / elapsed, 2),
        "metrics_per_s": round((n - err) * a.metrics / elapsed, 1),
        "p50_ms": round(pct(lat, 0.5) * 1000, 1),
        "p99_ms": round(pct(lat, 0.99) * 1000, 1),
        "error_rate": round(err / n, 5) if n else 1.0,
        "stored_points_m0": stored,
        "expected_points_m0": n - err + a.warmup * a.clients - sum(warm_errors),
        "clients": a.clients,
        "metrics_per_call": a.metrics,
        "role": a.role if t.auth else "no auth",
        "latencies_ms": [round(x * 1000, 1) for x in lat],  # scripts/bench merges rounds with these
    }


# --- seeding (bulk SQL, not HTTP) ----------------------------------------------
def db_uri(t: Target) -> str:
    if t.name == "baseline":
        os.environ["MLFLOW_DB_NAME"] = "mlflow_baseline"
    return Settings.from_env().tracking_uri()


def engine_for(t: Target):
    from sqlalchemy import create_engine

    return create_engine(db_uri(t))


def cmd_seed(a: argparse.Namespace) -> dict:
    """An experiment with `runs` runs (3 params, 2 metrics, 1 tag each) and one
    run with a `points`-long metric history: through the API for the
    experiment and the history run (so permissions and artifact locations are
    what a user gets), rows in bulk straight into the tracking database."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag

    t = target(a.target)
    s = session(t)
    t0 = time.monotonic()
    exp = new_experiment(s, t, "bench-search")
    history_run = new_run(s, t, exp)
    artifact_root = api(s, t, "GET", "experiments/get", params={"experiment_id": exp})["experiment"][
        "artifact_location"
    ]
    engine = engine_for(t)
    now = int(time.time() * 1000)
    batch = 5000
    with engine.begin() as conn:
        for lo in range(0, a.runs, batch):
            runs, params, metrics, latest, tags = [], [], [], [], []
            for i in range(lo, min(lo + batch, a.runs)):
                rid = uuid.uuid4().hex
                ts = now - i
                runs.append(
                    {
                        "run_uuid": rid,
                        "name": f"seed-{i}",
                        "source_type": "LOCAL",
                        "source_name": "",
                        "entry_point_name": "",
                        "user_id": "bench",
                        "status": "FINISHED",
                        "start_time": ts,
                        "end_time": ts + 1000,
                        "source_version": "",
                        "lifecycle_stage": "active",
                        "artifact_uri": f"{artifact_root}/{rid}/artifacts",
                        "experiment_id": int(exp),
                    }
                )
                for k, v in (("model", "rf" if i % 2 else "gbm"), ("depth", str(i % 12)), ("lr", str(0.01 * (i % 7)))):
                    params.append({"key": k, "value": v, "run_uuid": rid})
                for k, v in (("auc", (i % 1000) / 1000), ("loss", 1 - (i % 1000) / 1000)):
                    row = {"key": k, "value": v, "timestamp": ts, "step": 0, "is_nan": False, "run_uuid": rid}
                    metrics.append(row)
                    latest.append(dict(row))
                tags.append({"key": "mlflow.runName", "value": f"seed-{i}", "run_uuid": rid})
            conn.execute(SqlRun.__table__.insert(), runs)
            conn.execute(SqlParam.__table__.insert(), params)
            conn.execute(SqlMetric.__table__.insert(), metrics)
            conn.execute(SqlLatestMetric.__table__.insert(), latest)
            conn.execute(SqlTag.__table__.insert(), tags)
        for lo in range(0, a.points, 20000):
            rows = [
                {
                    "key": "curve",
                    "value": 1.0 / (1 + j),
                    "timestamp": now + j,
                    "step": j,
                    "is_nan": False,
                    "run_uuid": history_run,
                }
                for j in range(lo, min(lo + 20000, a.points))
            ]
            conn.execute(SqlMetric.__table__.insert(), rows)
        last = a.points - 1
        conn.execute(
            SqlLatestMetric.__table__.insert(),
            [
                {
                    "key": "curve",
                    "value": 1.0 / (1 + last),
                    "timestamp": now + last,
                    "step": last,
                    "is_nan": False,
                    "run_uuid": history_run,
                }
            ],
        )
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
    return {
        "experiment_id": exp,
        "history_run_id": history_run,
        "runs": a.runs + 1,
        "points": a.points,
        "seconds": round(time.monotonic() - t0, 1),
    }


# --- search and metric history -------------------------------------------------
def timed_repeat(fn, repeat: int, warmup: int = 1) -> list[float]:
    # Warm-up: the first request a worker serves pays for imports and caches.
    # Requests go to whichever worker accepts first, so several warm-ups are
    # needed to reach every worker (the baseline has 4).
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def cmd_search(a: argparse.Namespace) -> dict:
    t = teammate(target(a.target), a.role)
    s = session(t, retry=False)
    want = min(1000, a.expect)

    def once() -> None:
        body = {"experiment_ids": [a.experiment_id], "max_results": 1000}
        got = len(api(s, t, "POST", "runs/search", json=body).get("runs", []))
        if got != want:
            raise SystemExit(f"search returned {got} runs, expected {want}")

    lat = timed_repeat(once, a.repeat, warmup=8)
    return {"repeat": a.repeat, "p50_ms": round(pct(lat, 0.5) * 1000, 1), "p95_ms": round(pct(lat, 0.95) * 1000, 1)}


def cmd_history(a: argparse.Namespace) -> dict:
    """The MLflow client's get_metric_history (what a user or the UI's chart calls)."""
    from mlflow import MlflowClient

    t = teammate(target(a.target), a.role)
    if t.auth:
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = t.auth
    client = MlflowClient(tracking_uri=t.url)

    def once() -> None:
        got = len(client.get_metric_history(a.run_id, "curve"))
        if got != a.points:
            raise SystemExit(f"history returned {got} points, expected {a.points}")

    lat = timed_repeat(once, a.repeat)
    return {
        "repeat": a.repeat,
        "points": a.points,
        "p50_ms": round(pct(lat, 0.5) * 1000, 1),
        "max_ms": round(max(lat) * 1000, 1),
        "breakdown": history_breakdown(t, a.run_id, a.points),
    }


def history_breakdown(t: Target, run_id: str, points: int) -> dict:
    """Where a full history's time goes: the calls MLflow's get-history handler
    makes (the store's query into Metric objects, then protobuf and JSON) and
    the client's parse, run here one 25,000-point page at a time, as the
    client pages. What is left of the HTTP time is transport, nginx and auth."""
    from mlflow.entities import Metric
    from mlflow.protos.service_pb2 import GetMetricHistory
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.utils.proto_json_utils import message_to_json, parse_dict

    store = SqlAlchemyStore(db_uri(t), "mlflow-artifacts:/")
    query = serialize = parse = 0.0
    got, size, token = 0, 0, None
    while True:
        t0 = time.perf_counter()
        page = store.get_metric_history(run_id, "curve", max_results=25000, page_token=token)
        t1 = time.perf_counter()
        response = GetMetricHistory.Response()
        response.metrics.extend([m.to_proto() for m in page])
        body = message_to_json(response)
        t2 = time.perf_counter()
        parsed = GetMetricHistory.Response()
        parse_dict(json.loads(body), parsed)
        got += len([Metric.from_proto(m) for m in parsed.metrics])
        t3 = time.perf_counter()
        query, serialize, parse, size = query + t1 - t0, serialize + t2 - t1, parse + t3 - t2, size + len(body)
        token = page.token
        if not token:
            break
    if got != points:
        raise SystemExit(f"history breakdown read {got} points, expected {points}")
    return {
        "store_query_ms": round(query * 1000, 1),
        "proto_json_ms": round(serialize * 1000, 1),
        "client_parse_ms": round(parse * 1000, 1),
        "json_mb": round(size / 1e6, 1),
    }


# --- artifacts -------------------------------------------------------------------
class Pattern:
    """A file-like body of `size` bytes (a repeated random MiB), never held in memory."""

    def __init__(self, size: int) -> None:
        self.size, self.pos = size, 0
        self.block = os.urandom(CHUNK)

    def __len__(self) -> int:
        return self.size

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.pos
        n = left if n is None or n < 0 else min(n, left)
        if n <= 0:
            return b""
        off = self.pos % CHUNK
        self.pos += n
        if off + n <= CHUNK:
            return self.block[off : off + n]
        parts, need = [self.block[off:]], n - (CHUNK - off)
        while need > 0:
            parts.append(self.block[: min(need, CHUNK)])
            need -= CHUNK
        return b"".join(parts)


class Sink:
    def __init__(self) -> None:
        self.n = 0

    def write(self, b: bytes) -> int:
        self.n += len(b)
        return len(b)


def transfer_http(t: Target, size: int, check_download: bool = True) -> dict:
    s = session(t, retry=False)
    path = f"bench/{uuid.uuid4().hex}/blob.bin"
    url = f"{t.url}/api/2.0/mlflow-artifacts/artifacts/{path}"
    t0 = time.perf_counter()
    r = s.put(url, data=Pattern(size), timeout=3600)
    r.raise_for_status()
    up = time.perf_counter() - t0
    out = {"mib": size >> 20, "upload_s": round(up, 2), "upload_mb_s": round(size / up / 1e6, 1)}
    if check_download:
        t0 = time.perf_counter()
        got = 0
        with s.get(url, stream=True, timeout=3600) as r:
            r.raise_for_status()
            for chunk in r.iter_content(CHUNK):
                got += len(chunk)
        down = time.perf_counter() - t0
        if got != size:
            raise SystemExit(f"downloaded {got} bytes, uploaded {size}")
        out.update({"download_s": round(down, 2), "download_mb_s": round(size / down / 1e6, 1)})
    s.delete(url, timeout=600)
    return out


def transfer_s3(size: int) -> dict:
    settings = Settings.from_env()
    s3 = settings.s3_client()
    key = f"bench/direct/{uuid.uuid4().hex}/blob.bin"
    t0 = time.perf_counter()
    s3.upload_fileobj(Pattern(size), settings.bucket, key)  # boto3 defaults: 8 MB parts, 10 threads
    up = time.perf_counter() - t0
    sink = Sink()
    t0 = time.perf_counter()
    s3.download_fileobj(settings.bucket, key, sink)
    down = time.perf_counter() - t0
    if sink.n != size:
        raise SystemExit(f"downloaded {sink.n} bytes, uploaded {size}")
    s3.delete_object(Bucket=settings.bucket, Key=key)
    return {
        "mib": size >> 20,
        "upload_s": round(up, 2),
        "upload_mb_s": round(size / up / 1e6, 1),
        "download_s": round(down, 2),
        "download_mb_s": round(size / down / 1e6, 1),
    }


def cmd_artifacts(a: argparse.Namespace) -> dict:
    size = a.mib << 20
    if a.target == "s3":
        return transfer_s3(size)
    return transfer_http(target(a.target), size)


def cmd_upload(a: argparse.Namespace) -> dict:
    return transfer_http(target(a.target), a.mib << 20, check_download=False)


def cmd_parallel(a: argparse.Namespace) -> dict:
    """`clients` concurrent downloads of one `mib` object, each a single
    stream (what MLflow's client does): aggregate MB/s over the wall time."""
    size = a.mib << 20
    if a.target == "s3":
        settings = Settings.from_env()
        s3 = settings.s3_client()
        key = f"bench/parallel/{uuid.uuid4().hex}/blob.bin"
        s3.upload_fileobj(Pattern(size), settings.bucket, key)

        def fetch() -> int:
            body = settings.s3_client().get_object(Bucket=settings.bucket, Key=key)["Body"]
            return sum(len(c) for c in iter(lambda: body.read(CHUNK), b""))

        def cleanup() -> None:
            s3.delete_object(Bucket=settings.bucket, Key=key)
    else:
        t = target(a.target)
        url = f"{t.url}/api/2.0/mlflow-artifacts/artifacts/bench/{uuid.uuid4().hex}/blob.bin"
        session(t).put(url, data=Pattern(size), timeout=3600).raise_for_status()

        def fetch() -> int:
            with session(t, retry=False).get(url, stream=True, timeout=3600) as r:
                r.raise_for_status()
                return sum(len(c) for c in r.iter_content(CHUNK))

        def cleanup() -> None:
            session(t).delete(url, timeout=600)

    got = [0] * a.clients
    start = threading.Barrier(a.clients + 1)

    def client(i: int) -> None:
        start.wait()
        got[i] = fetch()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    for th in threads:
        th.start()
    start.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    cleanup()
    if got != [size] * a.clients:
        raise SystemExit(f"downloads got {got}, expected {size} each")
    return {
        "clients": a.clients,
        "mib": a.mib,
        "seconds": round(wall, 2),
        "aggregate_mb_s": round(size * a.clients / wall / 1e6, 1),
    }


def cmd_runs_load(a: argparse.Namespace) -> dict:
    """The tutorials' way to load a model: `mlflow.pyfunc.load_model("runs:/<id>/model")`
    of a model logged MLflow-3 style (`log_model(..., name="model")`), timed."""
    t = target(a.target)
    os.environ["MLFLOW_TRACKING_URI"] = t.url
    if t.auth:
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = t.auth
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        os.environ.pop(k, None)
    if a.max_retries is not None:
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(a.max_retries)
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = np.linspace(0, 1, 40).reshape(-1, 2)
    y = (x[:, 0] > 0.5).astype(int)
    mlflow.set_experiment(f"bench-runs-load-{uuid.uuid4().hex[:8]}")
    with mlflow.start_run() as run:
        mlflow.sklearn.log_model(LogisticRegression().fit(x, y), name="model")
    t0 = time.perf_counter()
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    seconds = time.perf_counter() - t0
    if list(model.predict(x)) != list(y):
        raise SystemExit("the loaded model predicts differently")
    return {"seconds": round(seconds, 2), "max_retries": a.max_retries}


ROLE_HELP = "who calls a target with accounts: a new regular user (default) or the admin"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("logging")
    q.add_argument("target")
    q.add_argument("--clients", type=int, default=20)
    q.add_argument("--seconds", type=float, default=60)
    q.add_argument("--metrics", type=int, default=10)
    q.add_argument("--warmup", type=int, default=3, help="unmeasured calls per client first")
    q.add_argument("--role", choices=("teammate", "admin"), default="teammate", help=ROLE_HELP)
    q = sub.add_parser("seed")
    q.add_argument("target")
    q.add_argument("--runs", type=int, default=25000)
    q.add_argument("--points", type=int, default=100000)
    q = sub.add_parser("search")
    q.add_argument("target")
    q.add_argument("--experiment-id", required=True)
    q.add_argument("--expect", type=int, required=True)
    q.add_argument("--repeat", type=int, default=20)
    q.add_argument("--role", choices=("teammate", "admin"), default="teammate", help=ROLE_HELP)
    q = sub.add_parser("history")
    q.add_argument("target")
    q.add_argument("--run-id", required=True)
    q.add_argument("--points", type=int, required=True)
    q.add_argument("--repeat", type=int, default=5)
    q.add_argument("--role", choices=("teammate", "admin"), default="teammate", help=ROLE_HELP)
    for name in ("artifacts", "upload"):
        q = sub.add_parser(name)
        q.add_argument("target")
        q.add_argument("--mib", type=int, default=1024)
    q = sub.add_parser("parallel")
    q.add_argument("target")
    q.add_argument("--clients", type=int, default=20)
    q.add_argument("--mib", type=int, default=100)
    q = sub.add_parser("runs-load")
    q.add_argument("target")
    q.add_argument("--max-retries", type=int, help="MLFLOW_HTTP_REQUEST_MAX_RETRIES (default: MLflow's 5)")
    q = sub.add_parser("chart")
    q.add_argument("results")
    q.add_argument("out")
    a = p.parse_args()
    if a.cmd == "chart":
        from chart import render

        render(a.results, a.out)
        return 0
    handler = {
        "logging": cmd_logging,
        "seed": cmd_seed,
        "search": cmd_search,
        "history": cmd_history,
        "artifacts": cmd_artifacts,
        "upload": cmd_upload,
        "parallel": cmd_parallel,
        "runs-load": cmd_runs_load,
    }[a.cmd]
    result = handler(a)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
