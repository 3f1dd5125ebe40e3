"""server/artifacts.py: the answer nginx gets before it streams artifact bytes.

First the pure pieces, then the whole decision in-process: the stack's app
(`stack_ops.server.app:create_app`, MLflow's basic-auth app on sqlite files)
asked the way nginx asks, for an admin, a user with the default READ, a user
denied on the experiment, and nobody.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from stack_ops.server import artifacts
from stack_ops.server.artifacts import Config, answer, as_error_json, error_json, store_key, upload_headers

GIB = 1024**3

# --- settings -----------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("TRUE", True), (" yes ", True), ("on", True)])
def test_parse_bool_true(value: str, expected: bool) -> None:
    assert artifacts.parse_bool("X", value) is expected


@pytest.mark.parametrize("value", ["0", "false", "No", "OFF"])
def test_parse_bool_false(value: str) -> None:
    assert artifacts.parse_bool("X", value) is False


@pytest.mark.parametrize("value", ["", "maybe", "2"])
def test_parse_bool_refuses_anything_else(value: str) -> None:
    with pytest.raises(ValueError, match=rf"^X={value!r} is not true or false$"):
        artifacts.parse_bool("X", value)


@pytest.mark.parametrize(("value", "expected"), [("1", 1), (" 1024 ", 1024), (str(5 * GIB), 5 * GIB)])
def test_parse_size_accepts_1_byte_to_5_gib(value: str, expected: int) -> None:
    assert artifacts.parse_size("S", value) == expected


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "1e9", "5GiB", "", "abc"])
def test_parse_size_refuses_garbage(value: str) -> None:
    with pytest.raises(ValueError, match=r"is not a positive whole number of bytes$"):
        artifacts.parse_size("S", value)


def test_parse_size_refuses_more_than_one_put_can_carry() -> None:
    with pytest.raises(ValueError, match=r"^S='5368709121' is above S3's single-PUT limit of 5368709120 bytes$"):
        artifacts.parse_size("S", str(5 * GIB + 1))


def test_config_from_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARTIFACT_DIRECT_TRANSFERS", raising=False)
    monkeypatch.delenv("ARTIFACT_DIRECT_MAX_UPLOAD_BYTES", raising=False)
    assert Config.from_env() == Config(direct=True, max_upload_bytes=5 * GIB)


def test_config_from_env_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTIFACT_DIRECT_TRANSFERS", "false")
    monkeypatch.setenv("ARTIFACT_DIRECT_MAX_UPLOAD_BYTES", "1048576")
    assert Config.from_env() == Config(direct=False, max_upload_bytes=1048576)


def test_config_from_env_names_the_bad_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTIFACT_DIRECT_MAX_UPLOAD_BYTES", "10G")
    with pytest.raises(ValueError, match=r"^ARTIFACT_DIRECT_MAX_UPLOAD_BYTES='10G' is not a positive whole number"):
        Config.from_env()


# --- requests and answers -------------------------------------------------------------


@pytest.mark.parametrize("api", ["/api", "/ajax-api"])
def test_split_original(api: str) -> None:
    raw = f"{api}/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/my%20file.txt"
    assert artifacts.split_original(f"{raw}?x=1") == (raw, unquote(raw), "x=1")


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "/api/2.0/mlflow-artifacts/artifacts/",  # the root itself
        "/api/2.0/mlflow-artifacts/artifacts",
        "/api/2.0/mlflow/runs/get?run_id=1",
        "/api/2.0/mlflow-artifacts/mpu/create/1/x",
        "/other/api/2.0/mlflow-artifacts/artifacts/1/x",
    ],
)
def test_split_original_refuses_other_uris(uri: str) -> None:
    assert artifacts.split_original(uri) is None


def test_error_json_uses_mlflow_s_codes() -> None:
    assert json.loads(error_json(404, "gone")) == {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "gone"}
    assert json.loads(error_json(418, "tea")) == {"error_code": "INTERNAL_ERROR", "message": "tea"}
    assert json.loads(error_json(400, "x", "BAD_REQUEST"))["error_code"] == "BAD_REQUEST"


@pytest.mark.parametrize(
    ("status", "body", "content_type", "expected"),
    [
        (403, b"Permission denied", "text/plain", {"error_code": "PERMISSION_DENIED", "message": "Permission denied"}),
        (
            400,
            b'{"error_code": "INVALID_PARAMETER_VALUE", "message": "Invalid path", "sqlstate": "KAM00"}',
            "application/json",
            {"error_code": "INVALID_PARAMETER_VALUE", "message": "Invalid path", "sqlstate": "KAM00"},
        ),
        (
            429,
            b'{"message": "slow down"}',
            "application/json",
            {"error_code": "TOO_MANY_REQUESTS", "message": "slow down"},
        ),
        (
            404,
            b'{"detail": "Not Found"}',
            "application/json",
            {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Not Found"},
        ),
        (400, b"{broken", "application/json", {"error_code": "INVALID_PARAMETER_VALUE", "message": "{broken"}),
        (502, b"", "text/html", {"error_code": "INTERNAL_ERROR", "message": "HTTP 502"}),
    ],
)
def test_as_error_json(status: int, body: bytes, content_type: str, expected: dict) -> None:
    assert json.loads(as_error_json(status, body, content_type)) == expected


def test_as_error_json_fills_an_empty_error_code() -> None:
    body = b'{"error_code": null, "message": "denied"}'
    assert json.loads(as_error_json(403, body, "application/json"))["error_code"] == "PERMISSION_DENIED"


@pytest.mark.parametrize(
    ("filename", "headers"),
    [
        ("metrics.csv", ("text/csv", "")),
        ("model.tar.gz", ("application/x-tar", "gzip")),
        ("weights.unknownext", ("", "")),
        ("MLmodel", ("", "")),
    ],
)
def test_upload_headers(filename: str, headers: tuple[str, str]) -> None:
    assert upload_headers(filename) == headers


@pytest.mark.parametrize(
    ("repo_uri", "path", "expected"),
    [
        ("s3://bucket/", "model.pkl", ("bucket", "model.pkl")),
        ("s3://bucket", "model.pkl", ("bucket", "model.pkl")),
        ("s3://bucket/", "1/abc/artifacts/dir/model.pkl", ("bucket", "1/abc/artifacts/dir/model.pkl")),
        ("s3://bucket/prefix", "1/abc/artifacts/x.txt", ("bucket", "prefix/1/abc/artifacts/x.txt")),
        ("s3://bucket/team/a/", "x.txt", ("bucket", "team/a/x.txt")),
    ],
)
def test_store_key(repo_uri: str, path: str, expected: tuple[str, str]) -> None:
    assert store_key(repo_uri, path) == expected


def test_store_key_refuses_other_stores() -> None:
    with pytest.raises(ValueError, match="not an S3 URI: file:///srv/artifacts"):
        store_key("file:///srv/artifacts", "x.txt")


class RecordingS3:
    """The two calls MLflow's S3 repository makes to move one file."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def upload_file(self, Filename: str, Bucket: str, Key: str, ExtraArgs: dict) -> None:
        self.calls.append(("upload", Bucket, Key))

    def download_file(self, bucket: str, key: str, local_path: str, **kwargs) -> None:
        self.calls.append(("download", bucket, key))


@pytest.mark.parametrize("repo_uri", ["s3://bucket/", "s3://bucket/prefix", "s3://bucket/team/a/"])
def test_store_key_is_where_mlflow_s_s3_repository_puts_the_file(
    repo_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

    repo = S3ArtifactRepository(repo_uri)
    s3 = RecordingS3()
    monkeypatch.setattr(repo, "_get_s3_client", lambda: s3)
    local = tmp_path / "model.pkl"
    local.write_bytes(b"x")
    repo.log_artifact(str(local), "1/abc/artifacts/dir")
    repo._download_file("1/abc/artifacts/dir/model.pkl", str(tmp_path / "copy"))
    bucket, key = store_key(repo.artifact_uri, "1/abc/artifacts/dir/model.pkl")
    assert s3.calls == [("upload", bucket, key), ("download", bucket, key)]


def test_target_headers_drop_empty_extras() -> None:
    assert artifacts.target_headers(
        "store", "http://s3:9000/b/k", "s3:9000", content_type="text/csv", content_encoding="", missing="{}"
    ) == {
        "X-Stack-Route": "store",
        "X-Stack-Target": "http://s3:9000/b/k",
        "X-Stack-Host": "s3:9000",
        "X-Stack-Content-Type": "text/csv",
        "X-Stack-Missing": "{}",
    }


def test_answer_200_passes_only_the_stack_headers() -> None:
    headers = {"x-stack-route": "store", "x-stack-target": "http://s3/x", "content-type": "application/json"}
    assert answer(200, {**headers, "set-cookie": "s=1"}, b"") == {
        "status_code": 200,
        "headers": {"x-stack-route": "store", "x-stack-target": "http://s3/x"},
    }


def test_answer_401_keeps_the_challenge() -> None:
    result = answer(401, {"www-authenticate": 'Basic realm="team"', "content-type": "text/plain"}, b"sign in")
    assert result == {
        "status_code": 401,
        "headers": {
            "WWW-Authenticate": 'Basic realm="team"',
            "X-Stack-Error": json.dumps({"error_code": "UNAUTHENTICATED", "message": "sign in"}),
        },
    }
    assert answer(401, {}, b"")["headers"]["WWW-Authenticate"] == 'Basic realm="mlflow"'


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (403, {"content-type": "text/plain"}, {"X-Stack-Status": "403"}),
        (404, {"content-type": "application/json"}, {"X-Stack-Status": "404"}),
        (429, {"retry-after": "17"}, {"X-Stack-Status": "429", "X-Stack-Retry-After": "17"}),
        (500, {}, {"X-Stack-Status": "500"}),
    ],
)
def test_answer_other_statuses_become_403_with_the_real_status(status: int, headers: dict, expected: dict) -> None:
    result = answer(status, headers, b"nope")
    assert result["status_code"] == 403
    error = json.loads(result["headers"].pop("X-Stack-Error"))
    assert result["headers"] == expected
    assert error["message"] == "nope"


# --- the decision, in-process ---------------------------------------------------------------

ROOT = "/api/2.0/mlflow-artifacts/artifacts/"
RUN = "0123456789abcdef0123456789abcdef"
MAX_UPLOAD = 1000
USERS = {"alice": "alice-unit-" + "a" * 12, "bob": "bob-unit-" + "b" * 14}  # READ by default; DENY on experiment 1


@pytest.fixture(scope="module")
def stack_app(admin_password: str):
    """`mlflow server --app-name stack` without the server: the app factory MLflow
    would call, with the settings `mlflow server --serve-artifacts
    --artifacts-destination s3://bucket/` passes to its workers."""
    from mlflow.server import ARTIFACTS_DESTINATION_ENV_VAR, SERVE_ARTIFACTS_ENV_VAR, handlers

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ARTIFACTS_DESTINATION_ENV_VAR, "s3://bucket/")
        mp.setenv(SERVE_ARTIFACTS_ENV_VAR, "true")
        mp.setenv("_MLFLOW_SGI_NAME", "uvicorn")
        mp.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY", "unit-test-flask-key-" + "k" * 20)
        mp.setenv("MLFLOW_S3_ENDPOINT_URL", "http://s3:9000")
        mp.setenv("ARTIFACT_DIRECT_TRANSFERS", "true")
        mp.setenv("ARTIFACT_DIRECT_MAX_UPLOAD_BYTES", str(MAX_UPLOAD))
        mp.setattr(handlers, "_artifact_repo", None)
        from mlflow.server import auth

        from stack_ops.server.app import StackApp, create_app

        app = create_app()
        assert isinstance(app, StackApp) and isinstance(app.decider, artifacts.Decider)
        for name, password in USERS.items():
            auth.store.create_user(name, password, is_admin=False)
        auth.store.create_experiment_permission("1", "bob", "DENY")
        yield app


def credentials(user: str | None, admin_password: str) -> bytes | None:
    if user is None:
        return None
    password = admin_password if user == "admin" else USERS.get(user, "wrong-password-xyz")
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def request(app, path: str, headers: dict[str, str], auth: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if auth is not None:
        raw.append((b"authorization", auth))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": raw,
        "client": ("127.0.0.1", 40000),
        "server": ("mlflow-server", 5000),
    }
    return asyncio.run(artifacts.call_asgi(app, scope))


@pytest.fixture
def ask(stack_app, admin_password: str):
    """nginx's auth subrequest for METHOD URI as USER: (status, headers)."""

    def ask(method: str, uri: str, user: str | None = "admin", length: int | None = 10, app=None):
        headers = {"Host": "mlflow.example.com", "X-Original-Method": method, "X-Original-URI": uri}
        if length is not None:
            headers["X-Original-Content-Length"] = str(length)
        status, out, _ = request(app or stack_app, artifacts.ENDPOINT, headers, credentials(user, admin_password))
        return status, out  # nginx's auth_request reads only these

    return ask


def presigned(url: str) -> tuple[str, str, dict[str, list[str]]]:
    parts = urlsplit(url)
    return parts.netloc, unquote(parts.path), parse_qs(parts.query)


def test_admin_download_gets_a_presigned_url_for_the_object(ask) -> None:
    status, headers = ask("GET", f"{ROOT}1/{RUN}/artifacts/dir/model.pkl", length=None)
    assert status == 200
    assert {k for k in headers if not k.startswith("x-stack-")} <= {"content-length"}
    host, path, query = presigned(headers["x-stack-target"])
    assert (headers["x-stack-route"], headers["x-stack-host"], host) == ("store", "s3:9000", "s3:9000")
    assert path == f"/bucket/1/{RUN}/artifacts/dir/model.pkl"
    assert query["X-Amz-Expires"] == ["300"]
    assert query["X-Amz-Credential"][0].startswith("AKIAUNITTESTFAKE0000/")
    assert query["X-Amz-Signature"][0]
    assert headers["x-stack-content-type"] == "application/octet-stream"
    assert headers["x-stack-content-disposition"] == "attachment; filename=model.pkl"
    assert json.loads(headers["x-stack-missing"]) == {
        "error_code": "RESOURCE_DOES_NOT_EXIST",
        "message": f"Artifact '1/{RUN}/artifacts/dir/model.pkl' does not exist.",
    }


def test_admin_upload_gets_a_presigned_url_and_mlflow_s_headers(ask) -> None:
    status, headers = ask("PUT", f"/ajax-api/2.0/mlflow-artifacts/artifacts/1/{RUN}/artifacts/data%20set.tar.gz")
    assert status == 200 and headers["x-stack-route"] == "store"
    assert presigned(headers["x-stack-target"])[1] == f"/bucket/1/{RUN}/artifacts/data set.tar.gz"
    assert (headers["x-stack-content-type"], headers["x-stack-content-encoding"]) == ("application/x-tar", "gzip")
    assert "x-stack-missing" not in headers


@pytest.mark.parametrize("length", [None, MAX_UPLOAD + 1], ids=["chunked", "above-the-limit"])
def test_uploads_without_a_length_or_too_big_go_through_mlflow(ask, length: int | None) -> None:
    uri = f"{ROOT}1/{RUN}/artifacts/big.bin?x=1"
    status, headers = ask("PUT", uri, length=length)
    assert status == 200
    assert (headers["x-stack-route"], headers["x-stack-target"]) == ("mlflow", f"http://mlflow{uri}")
    assert headers["x-stack-host"] == "mlflow.example.com"


def test_direct_transfers_off_sends_everything_through_mlflow(ask) -> None:
    decider = artifacts.Decider(Config(direct=False, max_upload_bytes=MAX_UPLOAD))
    status, headers = ask("GET", f"{ROOT}1/{RUN}/artifacts/x.txt", app=decider.decide)
    assert (status, headers["x-stack-route"]) == (200, "mlflow")


def test_a_reader_may_download_but_not_upload(ask) -> None:
    uri = f"{ROOT}1/{RUN}/artifacts/x.txt"
    assert ask("GET", uri, user="alice")[0] == 200
    status, headers = ask("PUT", uri, user="alice")
    assert (status, headers["x-stack-status"]) == (403, "403")
    assert json.loads(headers["x-stack-error"]) == {"error_code": "PERMISSION_DENIED", "message": "Permission denied"}


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_a_user_denied_on_the_experiment_gets_403(ask, method: str) -> None:
    status, headers = ask(method, f"{ROOT}1/{RUN}/artifacts/x.txt", user="bob")
    assert (status, headers["x-stack-status"]) == (403, "403")
    assert "x-stack-target" not in headers


@pytest.mark.parametrize("user", [None, "mallory"], ids=["anonymous", "wrong-password"])
@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_no_valid_credentials_get_the_challenge(ask, method: str, user: str | None) -> None:
    status, headers = ask(method, f"{ROOT}1/{RUN}/artifacts/x.txt", user=user)
    assert status == 401
    assert headers["www-authenticate"] == 'Basic realm="mlflow"'
    assert json.loads(headers["x-stack-error"])["error_code"] == "UNAUTHENTICATED"
    assert "x-stack-target" not in headers


def test_traversal_is_refused_even_for_the_admin(ask) -> None:
    status, headers = ask("GET", f"{ROOT}1/%2E%2E/%2E%2E/etc/passwd")
    assert (status, headers["x-stack-status"]) == (403, "400")
    assert json.loads(headers["x-stack-error"])["message"] == "Invalid path"


def test_a_directory_is_not_a_transfer(ask) -> None:
    get_status, get_headers = ask("GET", f"{ROOT}1/{RUN}/artifacts/dir/")
    put_status, put_headers = ask("PUT", f"{ROOT}1/{RUN}/artifacts/dir/")
    assert (get_status, get_headers["x-stack-status"], put_status, put_headers["x-stack-status"]) == (
        403,
        "404",
        403,
        "400",
    )
    assert json.loads(put_headers["x-stack-error"])["message"].startswith("Artifact path must include a filename")


@pytest.mark.parametrize(
    ("method", "uri"), [("DELETE", f"{ROOT}1/{RUN}/artifacts/x.txt"), ("GET", "/api/2.0/mlflow/experiments/search")]
)
def test_anything_but_an_artifact_transfer_is_a_misconfiguration(ask, method: str, uri: str) -> None:
    status, headers = ask(method, uri)
    assert (status, headers["x-stack-status"]) == (403, "400")
    assert json.loads(headers["x-stack-error"]) == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "Not an artifact transfer.",
    }


def test_every_other_path_goes_to_mlflow(stack_app) -> None:
    assert request(stack_app, "/health", {"Host": "mlflow-server:5000"})[::2] == (200, b"OK")


@pytest.mark.parametrize("name", ["_content_disposition_attachment", "_get_workspace_scoped_repo_path_if_enabled"])
def test_an_mlflow_without_what_locate_needs_fails_at_start(monkeypatch, name: str) -> None:
    """The upgrade drill runs this image on MLflow 3.10, which lacks some of
    locate()'s imports: that must show at start (create_app then falls back to
    MLflow's own proxy), not as a 500 on every transfer."""
    import mlflow.server.handlers

    monkeypatch.delattr(mlflow.server.handlers, name)
    with pytest.raises(ImportError, match=name):
        artifacts.Decider(Config(direct=True, max_upload_bytes=MAX_UPLOAD))
