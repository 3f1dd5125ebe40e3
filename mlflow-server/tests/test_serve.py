"""server/serve.py: the settings `mlflow server` is started with."""

from __future__ import annotations

import configparser
import os
import re
import stat
from pathlib import Path

import pytest
from mlflow.server.auth.config import read_auth_config
from sqlalchemy.engine import make_url

from stack_ops import common
from stack_ops.server import serve


def test_allowed_hosts_each_name_with_any_port_then_the_internal_names() -> None:
    assert serve.allowed_hosts(" MLflow.example.com, 10.0.0.5 ,,localhost") == ",".join(
        [
            "MLflow.example.com",
            "MLflow.example.com:*",
            "10.0.0.5",
            "10.0.0.5:*",
            "localhost",
            "localhost:*",
            "mlflow-server",
            "mlflow-server:*",
            "nginx",
            "nginx:*",
            "127.0.0.1",
            "127.0.0.1:*",
        ]
    )


def test_allowed_hosts_without_public_names() -> None:
    assert (
        serve.allowed_hosts("")
        == "mlflow-server,mlflow-server:*,nginx,nginx:*,127.0.0.1,127.0.0.1:*,localhost,localhost:*"
    )


@pytest.mark.parametrize(
    "source",
    [
        "runs:/0123456789abcdef/model",
        "models:/m-0123456789abcdef",
        "mlflow-artifacts:/1/models/m-1/artifacts",
        "s3://mlflow/1/abc/artifacts/model",
        "dummy-source",
        "prompt-template",
    ],
)
def test_source_regex_accepts_the_stack_s_own_sources(source: str) -> None:
    # MLflow applies it with re.search (mlflow/server/handlers.py, _create_model_version).
    assert re.search(serve.source_regex("mlflow"), source)


@pytest.mark.parametrize(
    "source",
    [
        "s3://other/1/model",
        "s3://mlflow-other/1/model",
        "s3://mlflow",  # the bucket itself, no key
        "file:///etc/passwd",
        "/var/lib/mlflow/model",
        "runs:/abc/../../../etc",
        "mlflow-artifacts:/1/../../secrets",
        "s3://mlflow/a/../../other/x",
        "dummy-source/../x",
        "prompt-templates",
        "http://evil/model",
    ],
)
def test_source_regex_refuses_everything_else(source: str) -> None:
    assert re.search(serve.source_regex("mlflow"), source) is None


def test_source_regex_escapes_the_bucket_name() -> None:
    regex = serve.source_regex("my.bucket")
    assert re.search(regex, "s3://my.bucket/x")
    assert re.search(regex, "s3://myxbucket/x") is None


@pytest.mark.parametrize(("cores", "workers"), [(None, 2), (1, 2), (2, 2), (3, 3), (4, 4), (64, 4)])
def test_default_workers_one_per_core_between_2_and_4(monkeypatch: pytest.MonkeyPatch, cores, workers) -> None:
    monkeypatch.setattr(serve.os, "cpu_count", lambda: cores)
    assert serve.default_workers() == workers


def test_ini_escape_doubles_percent_signs() -> None:
    assert serve.ini_escape("a%b%%c") == "a%%b%%%%c"
    assert serve.ini_escape("plain") == "plain"


@pytest.fixture
def secrets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A secrets volume whose values are hard on an ini file and a database URI."""
    values = {"auth_db_password": "p@ss%w0rd:/?#x", "mlflow_admin_password": "50%-off-%(name)s-x"}
    folder = tmp_path / "secrets"
    folder.mkdir()
    for name, value in values.items():
        (folder / name).write_text(value + "\n")
    monkeypatch.setattr(common, "SECRETS_DIR", folder)
    return values


def test_write_auth_config_is_read_back_by_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secrets_dir: dict[str, str]
) -> None:
    ini = tmp_path / "mlflow-auth" / "basic_auth.ini"
    monkeypatch.setattr(serve, "AUTH_INI", ini)
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ini))
    monkeypatch.setenv("MLFLOW_ADMIN_USERNAME", "root%admin")
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("POSTGRES_HOST", "db")
    monkeypatch.setenv("MLFLOW_AUTH_DB_USER", "mlflow_auth")
    settings = common.Settings.from_env()

    serve.write_auth_config(settings, "NO_PERMISSIONS", "60")

    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    assert stat.S_IMODE(ini.parent.stat().st_mode) == 0o700
    config = read_auth_config()
    assert config.default_permission == "NO_PERMISSIONS"
    assert config.admin_username == "root%admin"
    assert config.admin_password == secrets_dir["mlflow_admin_password"]
    assert config.authorization_function == "stack_ops.server.guard:authenticate_request"
    assert config.auth_cache_ttl_seconds == 60
    assert config.grant_default_workspace_access is True
    url = make_url(config.database_uri)
    assert (url.drivername, url.host, url.username, url.database) == (
        "postgresql+psycopg2",
        "db",
        "mlflow_auth",
        "mlflow_auth",
    )
    assert url.password == secrets_dir["auth_db_password"]


def test_write_auth_config_without_the_admin_secret_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secrets_dir: dict[str, str]
) -> None:
    (common.SECRETS_DIR / "mlflow_admin_password").unlink()
    monkeypatch.setattr(serve, "AUTH_INI", tmp_path / "basic_auth.ini")
    with pytest.raises(common.StackError, match=r"mlflow_admin_password is missing: the `secrets` job must run first"):
        serve.write_auth_config(common.Settings.from_env(), "READ", "60")


def test_configparser_needs_the_escape() -> None:
    # Why ini_escape exists: unescaped, configparser reads "%(" as interpolation.
    parser = configparser.ConfigParser()
    parser.read_string(f"[mlflow]\nescaped = {serve.ini_escape('50%-off')}\nraw = 50%-off\n")
    assert parser["mlflow"]["escaped"] == "50%-off"
    with pytest.raises(configparser.InterpolationSyntaxError):
        parser["mlflow"]["raw"]


@pytest.mark.parametrize(
    ("replicas", "job_execution"),
    [("1", ""), ("1", "true"), ("1", "false"), ("3", "false"), ("3", "0"), ("2", " FALSE ")],
)
def test_replicas_start_with_one_server_or_without_the_job_runner(replicas: str, job_execution: str) -> None:
    assert serve.replica_problem(replicas, job_execution) is None


@pytest.mark.parametrize("job_execution", ["", "true", "TRUE", "1"])
def test_replicas_with_the_job_runner_on_are_refused(job_execution: str) -> None:
    problem = serve.replica_problem("3", job_execution)
    assert problem is not None
    assert problem.startswith("MLFLOW_SERVER_REPLICAS=3 needs MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false")


@pytest.mark.parametrize("replicas", ["0", "-1", "two", "1.5"])
def test_replica_counts_that_are_not_whole_numbers_are_refused(replicas: str) -> None:
    assert serve.replica_problem(replicas, "false") == (
        f"MLFLOW_SERVER_REPLICAS={replicas} is not a whole number of at least 1"
    )


def test_serve_refuses_replicas_with_the_job_runner_before_starting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLFLOW_SERVER_REPLICAS", "2")
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    started = []
    monkeypatch.setattr(serve.os, "execvp", lambda *a: started.append(a))
    assert serve.main() == 1
    assert started == []
    assert "needs MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in capsys.readouterr().err


def test_the_default_workspace_can_be_made_members_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secrets_dir: dict[str, str]
) -> None:
    ini = tmp_path / "basic_auth.ini"
    monkeypatch.setattr(serve, "AUTH_INI", ini)
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ini))
    monkeypatch.setenv("POSTGRES_HOST", "db")
    serve.write_auth_config(common.Settings.from_env(), "READ", "60", default_access=False)
    assert read_auth_config().grant_default_workspace_access is False


@pytest.mark.parametrize(
    ("value", "enabled"), [("", False), ("false", False), ("0", False), ("TRUE", True), (" 1 ", True)]
)
def test_workspaces_switch_reads_like_mlflow(monkeypatch: pytest.MonkeyPatch, value: str, enabled: bool) -> None:
    from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES

    monkeypatch.setenv("MLFLOW_ENABLE_WORKSPACES", value)
    assert common.workspaces_enabled() is enabled
    assert MLFLOW_ENABLE_WORKSPACES.get() is enabled  # what MLflow then reads


@pytest.mark.parametrize("value", ["yes", "on", "enabled", "tru"])
def test_workspaces_switch_refuses_anything_else(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_WORKSPACES", value)
    with pytest.raises(common.StackError, match="MLFLOW_ENABLE_WORKSPACES=.* is not true or false"):
        common.workspaces_enabled()


@pytest.mark.parametrize(
    ("threads", "pool", "overflow", "warns"),
    [
        ("8", "16", "4", False),  # compose's defaults: two connections per thread, kept
        ("8", "20", "", False),
        ("15", "5", "10", True),  # the old defaults: 15 threads on MLflow's 5 + 10
        ("8", "", "", True),  # MLflow's own 5 + 10
        ("0", "16", "4", True),  # 0: Starlette's 40 threads
        ("1", "2", "1", False),
        ("1", "1", "5", True),  # overflow connections are closed after use: not "kept"
    ],
)
def test_pool_warning_when_a_worker_would_churn_connections(threads, pool, overflow, warns):
    warning = serve.pool_warning(threads, pool, overflow)
    assert (warning is not None) == warns
    if warns:
        assert "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE" in warning and "MLFLOW_WORKER_THREADS" in warning


def test_mlflow_log_batch_holds_two_connections_at_once(tmp_path):
    """Why the pool keeps two connections per thread: MLflow's `log_batch`
    opens the metrics' session while the run's session still holds its
    connection. If a new MLflow stops doing that, this fails and the default
    can be halved (compose.yaml, docs/performance.md)."""
    from mlflow.entities import Metric, Param
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from sqlalchemy import event

    store = SqlAlchemyStore(f"sqlite:///{tmp_path}/m.db", str(tmp_path / "a"))
    run = store.create_run(store.create_experiment("pool"), "u", 0, [], "r")
    out, peak = [0], [0]

    def checkout(*_):
        out[0] += 1
        peak[0] = max(peak[0], out[0])

    def checkin(*_):
        out[0] -= 1

    event.listen(store.engine, "checkout", checkout)
    event.listen(store.engine, "checkin", checkin)
    store.log_batch(run.info.run_id, [Metric("m", 1.0, 1, 0)], [Param("p", "v")], [])
    assert peak[0] == 2
    assert out[0] == 0
    assert [m.value for m in store.get_metric_history(run.info.run_id, "m")] == [1.0]


def test_the_database_password_is_never_on_the_servers_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secrets_dir: dict[str, str]
) -> None:
    """Every user of the host sees a container's command lines in `ps`; the
    URI, password included, goes to `mlflow server` through its environment."""
    from mlflow.cli import server as mlflow_server

    for name in ("mlflow_db_password", "flask_secret_key", "kek_passphrase", "webhook_encryption_key"):
        (common.SECRETS_DIR / name).write_text(f"{name}-S3cret%@x\n")
    for name in ("s3_access_key", "s3_secret_key"):
        (common.SECRETS_DIR / name).write_text(f"{name}-value\n")
    monkeypatch.setattr(serve, "AUTH_INI", tmp_path / "basic_auth.ini")
    monkeypatch.setattr(serve, "METRICS_DIR", tmp_path / "prometheus")
    monkeypatch.setattr(serve, "addresses_with_recent_failures", lambda: 0)
    monkeypatch.setenv("POSTGRES_HOST", "db")
    monkeypatch.setenv("MLFLOW_SERVER_REPLICAS", "1")
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    started = []
    monkeypatch.setattr(serve.os, "execvp", lambda *a: started.append(a))
    serve.main()
    ((program, args),) = started
    uri = os.environ["MLFLOW_BACKEND_STORE_URI"]
    assert "mlflow_db_password-S3cret" in common.Settings.from_env().tracking_uri() and uri.startswith("postgresql")
    assert "--backend-store-uri" not in args
    assert not [a for a in args if "S3cret" in a or "postgresql" in a]
    # MLflow's `server` command takes it from there.
    i = args.index("--app-name")  # the `stack` app is an entry point of the image, not of this venv
    options = list(args[2:i] + args[i + 2 :])
    assert mlflow_server.make_context("server", options).params["backend_store_uri"] == uri
