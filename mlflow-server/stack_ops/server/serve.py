"""Start `mlflow server` with the stack's settings and secrets.

PostgreSQL backend store, artifacts proxied to the S3 bucket (clients never
need S3 credentials), MLflow's basic-auth app with its user store in its own
database, and a Host allow-list built from the hostnames the operator serves.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from stack_ops.common import Settings, StackError, die, env, log, read_secret, workspaces_enabled
from stack_ops.server.artifacts import Config as ArtifactConfig
from stack_ops.server.artifacts import parse_bool
from stack_ops.server.guard import addresses_with_recent_failures

JOB = "serve"
AUTH_INI = Path("/tmp/mlflow-auth/basic_auth.ini")
# prometheus_client's multiprocess files, one per worker and metric type (a
# tmpfs in compose.yaml, under /tmp so that any writable /tmp will do); wiped
# at every start, or a restarted server would add its dead workers' counts to
# the new ones forever.
METRICS_DIR = Path(os.environ.get("STACK_METRICS_DIR", "/tmp/prometheus"))
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")
# MLflow's own settings compose passes through; empty means MLflow's default.
TUNABLES = (
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
    "MLFLOW_SERVER_JOB_EXECUTION_ENGINE",
    "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE",
    "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW",
)


def default_workers() -> int:
    # One uvicorn worker per core, at least 2 (one slow request must not stall
    # the UI), at most 4 (each idles at about 250 MB).
    return min(4, max(2, os.cpu_count() or 2))


def allowed_hosts(hostnames: str) -> str:
    """Host header patterns MLflow accepts: each public name, with any port,
    plus the internal names the health check and the trainer (via nginx) use."""
    names = [h.strip() for h in hostnames.split(",") if h.strip()]
    names += ["mlflow-server", "nginx", "127.0.0.1", "localhost"]
    patterns: list[str] = []
    for name in dict.fromkeys(names):
        patterns += [name, f"{name}:*"]
    return ",".join(patterns)


def source_regex(bucket: str) -> str:
    # "dummy-source" and "prompt-template" are the placeholders MLflow's prompt
    # registry sends as a prompt version's source.
    return rf"^(?!.*\.\.)(runs:/|models:/|mlflow-artifacts:/|s3://{re.escape(bucket)}/|dummy-source$|prompt-template$)"


def pool_warning(threads: str, pool_size: str, max_overflow: str) -> str | None:
    """Why this worker's database pool will open and close connections under
    load, or None.

    MLflow's `log_batch` holds two connections at once (the run's session,
    then the metrics' own), so a worker running `threads` requests needs up to
    two per thread. With fewer, connections past the pool are opened and closed
    on every call: a fork and a SCRAM handshake in PostgreSQL each time
    (docs/performance.md, "Why each default"). Empty values are MLflow's
    defaults (5 and 10); a worker with 0 threads uses Starlette's 40."""
    pool = int(pool_size) if pool_size.strip().isdigit() else 5
    overflow = int(max_overflow) if max_overflow.strip().isdigit() else 10
    running = int(threads) if threads.isdigit() and int(threads) > 0 else 40
    if pool >= 2 * running:
        return None
    return (
        f"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE={pool} keeps fewer than 2 database connections for each of the "
        f"{running} MLFLOW_WORKER_THREADS: under load the other {2 * running - pool} "
        f"(up to MAX_OVERFLOW={overflow}) are opened and closed on every call"
    )


def replica_problem(replicas: str, job_execution: str) -> str | None:
    """Why this server must not start as one of MLFLOW_SERVER_REPLICAS, or None.

    MLflow's job runner cannot run on two servers at once: its executor engine
    starts the periodic-task consumer on every server (it ignores
    MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS), and each runner, when it starts,
    puts every job still RUNNING from before its own start back to PENDING, so
    a replica that restarts would run its neighbours' jobs a second time. A
    server with the runner off refuses job submissions, so "the runner on one
    replica only" is not possible with identical replicas either: the stack
    refuses to start instead (docs/replicas.md#the-job-runner)."""
    if not replicas.isdigit() or int(replicas) < 1:
        return f"MLFLOW_SERVER_REPLICAS={replicas} is not a whole number of at least 1"
    # MLflow's reading of the flag: unset or empty is its default, on.
    enabled = (job_execution.strip() or "true").lower() in ("true", "1")
    if int(replicas) > 1 and enabled:
        return (
            f"MLFLOW_SERVER_REPLICAS={replicas} needs MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: MLflow's job "
            "runner (server-side evaluation, scorers, prompt optimization) must run on one server only. "
            "Set MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false in .env, or keep one replica (docs/replicas.md)"
        )
    return None


def uvicorn_has_option(name: str) -> bool:
    import inspect

    import uvicorn

    return name in inspect.signature(uvicorn.Config).parameters


def ini_escape(value: str) -> str:
    return value.replace("%", "%%")  # configparser interpolation


def write_auth_config(settings: Settings, permission: str, cache_ttl: str, default_access: bool = True) -> None:
    AUTH_INI.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    AUTH_INI.write_text(
        "[mlflow]\n"
        f"default_permission = {permission}\n"
        f"database_uri = {ini_escape(settings.auth_uri())}\n"
        f"admin_username = {ini_escape(env('MLFLOW_ADMIN_USERNAME', 'admin'))}\n"
        f"admin_password = {ini_escape(read_secret('mlflow_admin_password'))}\n"
        # MLflow's basic auth wrapped with a lockout and an artifact-location
        # policy (stack_ops/server/guard.py).
        "authorization_function = stack_ops.server.guard:authenticate_request\n"
        f"auth_cache_ttl_seconds = {cache_ttl}\n"
        # Workspaces on: everyone keeps MLFLOW_DEFAULT_PERMISSION in the
        # `default` workspace (where everything logged before lives); any
        # other workspace is its members' only (docs/workspaces.md).
        f"grant_default_workspace_access = {str(default_access).lower()}\n"
    )
    AUTH_INI.chmod(0o600)


def reset_metrics_dir(path: Path) -> int:
    """Empty (or create) the metrics directory; returns how many files it removed."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    removed = 0
    for entry in path.iterdir():
        if entry.is_file() or entry.is_symlink():
            entry.unlink()
            removed += 1
    return removed


def main() -> int:
    settings = Settings.from_env()
    permission = env("MLFLOW_DEFAULT_PERMISSION", "READ").upper()
    if permission not in PERMISSIONS:
        return die(JOB, f"MLFLOW_DEFAULT_PERMISSION={permission} is not one of {', '.join(PERMISSIONS)}")
    cache_ttl = env("MLFLOW_AUTH_CACHE_TTL_SECONDS", "60")
    workers = env("MLFLOW_WORKERS", str(default_workers()))
    threads = env("MLFLOW_WORKER_THREADS", "8")
    for name, value in (
        ("MLFLOW_AUTH_CACHE_TTL_SECONDS", cache_ttl),
        ("MLFLOW_WORKERS", workers),
        ("MLFLOW_WORKER_THREADS", threads),
    ):
        if not value.isdigit():
            return die(JOB, f"{name}={value} is not a whole number")

    try:
        workspaces = workspaces_enabled()
        default_access = parse_bool("MLFLOW_WORKSPACES_DEFAULT_ACCESS", env("MLFLOW_WORKSPACES_DEFAULT_ACCESS", "true"))
    except (StackError, ValueError) as e:
        return die(JOB, str(e))

    problem = replica_problem(
        env("MLFLOW_SERVER_REPLICAS", "1"), os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "")
    )
    if problem:
        return die(JOB, problem)

    os.environ["MLFLOW_WORKER_THREADS"] = threads  # read by each worker (app.py)
    warning = pool_warning(
        threads,
        os.environ.get("MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", ""),
        os.environ.get("MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW", ""),
    )
    if warning:
        log(JOB, f"warning: {warning}")
    for name in TUNABLES:  # unset when empty: MLflow reads "" as an invalid number
        if not os.environ.get(name, "").strip():
            os.environ.pop(name, None)

    try:
        direct = ArtifactConfig.from_env()
    except ValueError as e:
        return die(JOB, str(e))

    try:
        write_auth_config(settings, permission, cache_ttl, default_access)
        locked = addresses_with_recent_failures()
        os.environ.update(settings.s3_env())
        os.environ["MLFLOW_FLASK_SERVER_SECRET_KEY"] = read_secret("flask_secret_key")
        # AI-gateway provider keys and webhook secrets: encrypted under the
        # stack's own keys, never MLflow's built-in passphrase.
        os.environ["MLFLOW_CRYPTO_KEK_PASSPHRASE"] = read_secret("kek_passphrase")
        os.environ["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"] = read_secret("webhook_encryption_key")
        tracking_uri = settings.tracking_uri()
    except StackError as e:
        return die(JOB, str(e))
    if locked:
        log(JOB, f"{locked} client address(es) with recent failed sign-ins: lockout counts kept")
    try:
        stale = reset_metrics_dir(METRICS_DIR)
    except OSError as e:
        return die(JOB, f"metrics directory {METRICS_DIR}: {e} (compose.yaml mounts a tmpfs there)")
    if stale:
        log(JOB, f"metrics: {stale} file(s) of a previous run removed from {METRICS_DIR}")
    # Read by prometheus_client in every worker (MLflow's exporter and metrics.py).
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(METRICS_DIR)
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(AUTH_INI)
    # Model versions may only point into this stack's artifact store (or at
    # runs/models MLflow resolves there); never file:, other buckets or `..`.
    os.environ["MLFLOW_CREATE_MODEL_VERSION_SOURCE_VALIDATION_REGEX"] = source_regex(settings.bucket)

    # The database URI holds its password: in the environment (which `mlflow
    # server` reads, and only this user can see), never on the command line,
    # which every user of the host sees in `ps`.
    os.environ["MLFLOW_BACKEND_STORE_URI"] = tracking_uri
    hosts = allowed_hosts(env("MLFLOW_PUBLIC_HOSTNAMES", "localhost,127.0.0.1"))
    args = [
        "mlflow", "server",
        "--host", "0.0.0.0",
        "--port", "5000",
        "--workers", workers,
        "--serve-artifacts",
        "--artifacts-destination", f"s3://{settings.bucket}/",
        # MLflow's basic-auth app plus the artifact decision nginx asks for
        # (stack_ops/server/app.py, registered as an `mlflow.app` entry point).
        "--app-name", "stack",
        "--allowed-hosts", hosts,
        # MLflow's Flask request metrics; the stack's own per-route metrics and
        # the token-guarded /metrics are in stack_ops/server/metrics.py.
        "--expose-prometheus", str(METRICS_DIR),
    ]  # fmt: skip
    if uvicorn_has_option("timeout_worker_healthcheck"):
        # uvicorn restarts a worker that misses a 5 s ping; a worker still
        # importing MLflow on a busy 2-core host misses it and is killed in a
        # loop, so the server never becomes healthy. Give it a minute.
        args += ["--uvicorn-opts", "--timeout-worker-healthcheck 60"]
    transfers = (
        f"direct up to {direct.max_upload_bytes} bytes per upload" if direct.direct else "through MLflow's proxy"
    )
    scope = ", workspaces on" if workspaces else ""
    log(
        JOB,
        f"starting mlflow server: {workers} workers, s3://{settings.bucket}/ ({transfers}), hosts {hosts}{scope}",
    )
    os.execvp(args[0], args)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
