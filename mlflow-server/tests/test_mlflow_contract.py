"""The MLflow internals the stack depends on, so an MLflow upgrade fails here, loudly,
and not in production. Each entry: where the stack uses it, the parameter names it
relies on (the stack's calls pass them by position or keyword as listed)."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from stack_ops.jobs import migrate

SERVER_DIR = Path(__file__).resolve().parents[1]

# (module, attribute path, the parameters the stack's call relies on, in order), by stack module.
PRIVATE_API = [
    # jobs/migrate.py
    ("mlflow.store.db.utils", "_all_tables_exist", ["engine"]),
    ("mlflow.store.db.utils", "_get_latest_schema_revision", []),
    ("mlflow.store.db.utils", "_get_schema_version", ["engine"]),
    ("mlflow.store.db.utils", "_initialize_tables", ["engine"]),
    ("mlflow.store.db.utils", "_upgrade_db", ["engine"]),
    ("mlflow.store.db.utils", "create_sqlalchemy_engine_with_retry", ["db_uri"]),
    ("mlflow.server.auth.db.utils", "migrate", ["engine", "revision"]),
    # server/artifacts.py
    ("mlflow.server.auth", "add_fastapi_permission_middleware", ["app"]),
    ("mlflow.server.fastapi_app", "add_fastapi_workspace_middleware", ["fastapi_app"]),
    ("mlflow.server.handlers", "_content_disposition_attachment", ["filename"]),
    ("mlflow.server.handlers", "_get_artifact_repo_mlflow_artifacts", []),
    ("mlflow.server.handlers", "_get_workspace_scoped_repo_path_if_enabled", ["artifact_path"]),
    ("mlflow.utils.mime_type_utils", "_guess_mime_type", ["file_path"]),
    ("mlflow.utils.uri", "validate_path_is_safe", ["path"]),
    ("mlflow.store.artifact.s3_artifact_repo", "S3ArtifactRepository._get_s3_client", ["self"]),
    ("mlflow.exceptions", "MlflowException.get_http_status_code", ["self"]),
    ("mlflow.exceptions", "MlflowException.serialize_as_json", ["self"]),
    # server/store.py: the methods it overrides (compared with the override below too)
    (
        "mlflow.store.artifact.s3_artifact_repo",
        "S3ArtifactRepository._download_file",
        ["self", "remote_file_path", "local_path"],
    ),
    ("mlflow.store.artifact.s3_artifact_repo", "S3ArtifactRepository.list_artifacts", ["self", "path"]),
    (
        "mlflow.store.artifact.s3_artifact_repo",
        "S3ArtifactRepository.log_artifact",
        ["self", "local_file", "artifact_path"],
    ),
    (
        "mlflow.store.artifact.s3_artifact_repo",
        "S3ArtifactRepository.log_artifacts",
        ["self", "local_dir", "artifact_path"],
    ),
    ("mlflow.store.artifact.s3_artifact_repo", "S3ArtifactRepository.delete_artifacts", ["self", "artifact_path"]),
    # server/authcache.py: the lookups it caches and the functions it wraps
    ("mlflow.server.auth", "_run_requirement", ["run_id", "action"]),
    ("mlflow.server.auth", "_authenticate_cached", ["username", "password"]),
    ("mlflow.server.auth", "_auth_cache_key", ["username", "password"]),
    ("mlflow.server.auth.sqlalchemy_store", "SqlAlchemyStore.get_user", ["self", "username"]),
    (
        "mlflow.server.auth.sqlalchemy_store",
        "SqlAlchemyStore.list_grants",
        ["self", "user_id", "workspace", "resource_types"],
    ),
    # server/search.py: the view it copies, the search it calls, the redactor it runs first
    ("mlflow.server.handlers", "_search_runs", []),
    ("mlflow.server.handlers", "search_runs_impl", ["request_message"]),
    ("mlflow.server.auth", "_denied_sibling_tiers", ["username", "resource_types"]),
    ("mlflow.server.auth", "redact_search_runs_model_links", ["resp"]),
    # server/guard.py, server/app.py
    ("mlflow.server.auth", "authenticate_request_basic_auth", []),
    ("mlflow.server.auth", "create_app", ["app"]),
    # commands/users.py, jobs/accounts.py: the auth store, straight on the database
    ("mlflow.server.auth.sqlalchemy_store", "SqlAlchemyStore.init_db", ["self", "db_uri"]),
    ("mlflow.server.auth.sqlalchemy_store", "SqlAlchemyStore.has_user", ["self", "username"]),
    (
        "mlflow.server.auth.sqlalchemy_store",
        "SqlAlchemyStore.create_user",
        ["self", "username", "password", "is_admin"],
    ),
    ("mlflow.server.auth.sqlalchemy_store", "SqlAlchemyStore.authenticate_user", ["self", "username", "password"]),
    (
        "mlflow.server.auth.sqlalchemy_store",
        "SqlAlchemyStore.update_user",
        ["self", "username", "password", "is_admin"],
    ),
    ("mlflow.server.auth.sqlalchemy_store", "SqlAlchemyStore.list_users", ["self"]),
]


def resolve(module: str, attribute: str) -> Callable:
    obj = importlib.import_module(module)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize(("module", "attribute", "params"), PRIVATE_API, ids=[f"{m}.{a}" for m, a, _ in PRIVATE_API])
def test_mlflow_internal_the_stack_calls(module: str, attribute: str, params: list[str]) -> None:
    target = resolve(module, attribute)
    assert callable(target)
    signature = inspect.signature(target)
    assert list(signature.parameters)[: len(params)] == params
    # Anything after what the stack passes must have a default (or be keyword-only with one).
    for param in list(signature.parameters.values())[len(params) :]:
        assert param.default is not inspect.Parameter.empty or param.kind in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        ), f"{module}.{attribute} gained a required parameter {param.name!r}"


@pytest.mark.parametrize(
    "method", ["_download_file", "list_artifacts", "log_artifact", "log_artifacts", "delete_artifacts"]
)
def test_store_plugin_overrides_keep_mlflow_s_signatures(method: str) -> None:
    from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

    from stack_ops.server import store

    assert inspect.signature(getattr(store.S3ArtifactRepository, method)) == inspect.signature(
        getattr(S3ArtifactRepository, method)
    )


def test_error_codes_and_settings_the_stack_names_exist() -> None:
    from mlflow.environment_variables import MLFLOW_CREATE_MODEL_VERSION_SOURCE_VALIDATION_REGEX
    from mlflow.protos import databricks_pb2

    assert MLFLOW_CREATE_MODEL_VERSION_SOURCE_VALIDATION_REGEX.name == (
        "MLFLOW_CREATE_MODEL_VERSION_SOURCE_VALIDATION_REGEX"  # set by server/serve.py
    )
    for code in ("RESOURCE_DOES_NOT_EXIST", "TEMPORARILY_UNAVAILABLE"):  # raised by server/store.py
        assert isinstance(getattr(databricks_pb2, code), int)


def test_the_auth_cache_finds_what_it_wraps_and_rebuilds_mlflow_s_run_requirements(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cache hit must give exactly what MLflow's _run_requirement gives for that run."""
    from types import SimpleNamespace

    from mlflow.server import auth

    from stack_ops.server import authcache

    for name in ("store", "Requirement", "RESOURCE_TYPE_EXPERIMENT", "RESOURCE_TYPE_RUN", "_USER_AUTH_CACHE_LOCK"):
        assert hasattr(auth, name), name
    assert hasattr(auth, "_USER_AUTH_CACHE")  # a dict, or None when MLflow's credential cache is off

    run = SimpleNamespace(info=SimpleNamespace(experiment_id="17"))
    fetched = []
    tracking = SimpleNamespace(get_run=lambda run_id: fetched.append(run_id) or run)
    monkeypatch.setattr(auth, "_get_tracking_store", lambda: tracking)
    mlflow_s = auth._run_requirement("r1", "update")

    # A module proxy, so installing the cache leaves mlflow.server.auth itself untouched.
    proxy = SimpleNamespace(
        store=SimpleNamespace(get_user=lambda u: None, list_grants=lambda *a: []),
        _run_requirement=auth._run_requirement,
        Requirement=auth.Requirement,
        RESOURCE_TYPE_EXPERIMENT=auth.RESOURCE_TYPE_EXPERIMENT,
        RESOURCE_TYPE_RUN=auth.RESOURCE_TYPE_RUN,
        _USER_AUTH_CACHE=None,
    )
    cache = authcache.AuthCache(60)
    cache.live = True
    authcache.install(proxy, cache)
    miss = proxy._run_requirement("r1", "update")
    hit = proxy._run_requirement("r1", "update")
    assert fetched == ["r1", "r1"]  # MLflow's own lookup once, then the cache
    assert miss == mlflow_s and hit == mlflow_s


@pytest.fixture
def declared_entry_points(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, str]]:
    """MLflow sees exactly the entry points mlflow-server/pyproject.toml declares, as if installed."""
    from mlflow.utils import plugins

    declared = tomllib.loads((SERVER_DIR / "pyproject.toml").read_text())["project"]["entry-points"]

    def entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
        return [importlib.metadata.EntryPoint(n, v, group) for n, v in declared.get(group, {}).items()]

    monkeypatch.setattr(plugins, "_get_entry_points", entry_points)
    return declared


def test_mlflow_finds_the_stack_app(declared_entry_points) -> None:
    import mlflow.server

    app = mlflow.server._find_app("stack")  # `mlflow server --app-name stack`
    assert app == "stack_ops.server.app:create_app"
    assert mlflow.server._is_factory(app)


def test_mlflow_uses_the_stack_s_s3_repository(declared_entry_points) -> None:
    from mlflow.store.artifact.artifact_repository_registry import ArtifactRepositoryRegistry

    from stack_ops.server import store

    registry = ArtifactRepositoryRegistry()
    registry.register_entrypoints()
    assert type(registry.get_artifact_repository("s3://mlflow/1/abc/artifacts")) is store.S3ArtifactRepository


def test_migrate_tracking_creates_then_leaves_a_current_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.store.db.utils import _get_latest_schema_revision

    uri = f"sqlite:///{tmp_path / 'tracking.db'}"
    head = _get_latest_schema_revision()
    migrate.migrate_tracking(uri)
    first = capsys.readouterr().out
    assert "[migrate] tracking database is empty: creating MLflow's tables" in first
    assert f"[migrate] tracking schema at {head}" in first
    migrate.migrate_tracking(uri)
    assert (
        capsys.readouterr().out
        == f"[migrate] tracking schema is current ({head})\n[migrate] tracking schema at {head}\n"
    )
