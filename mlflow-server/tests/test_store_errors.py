"""server/store.py: S3 store errors in MLflow's terms (404 / 503 instead of 500)."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from mlflow.exceptions import MlflowException

from stack_ops.server import store


def client_error(code: str, status: int, **error) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "from the store", **error}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


@pytest.mark.parametrize(("code", "status"), [("404", 404), ("NoSuchKey", 404), ("NotFound", 404)])
def test_missing_object_is_resource_does_not_exist(code: str, status: int) -> None:
    exc = store.translate(client_error(code, status), "1/abc/artifacts/model")
    assert exc is not None
    assert (exc.error_code, exc.get_http_status_code()) == ("RESOURCE_DOES_NOT_EXIST", 404)
    assert exc.message == "Artifact '1/abc/artifacts/model' does not exist."


def test_missing_bucket_is_temporarily_unavailable() -> None:
    exc = store.translate(client_error("NoSuchBucket", 404, BucketName="mlflow"), "x")
    assert exc is not None
    assert (exc.error_code, exc.get_http_status_code()) == ("TEMPORARILY_UNAVAILABLE", 503)
    assert exc.message == "The artifact store has no bucket 'mlflow' (run the bucket job)."


@pytest.mark.parametrize(("code", "status"), [("InternalError", 500), ("SlowDown", 503)])
def test_store_failure_is_temporarily_unavailable(code: str, status: int) -> None:
    exc = store.translate(client_error(code, status), "x")
    assert exc is not None
    assert (exc.error_code, exc.get_http_status_code()) == ("TEMPORARILY_UNAVAILABLE", 503)
    assert exc.message == f"The artifact store failed ({code}); try again."


@pytest.mark.parametrize(
    "exc",
    [
        EndpointConnectionError(endpoint_url="http://s3:9000/mlflow/x"),
        ReadTimeoutError(endpoint_url="http://s3:9000/mlflow/x"),
    ],
    ids=["connection", "timeout"],
)
def test_unreachable_store_is_temporarily_unavailable(exc: Exception) -> None:
    translated = store.translate(exc, "x")
    assert translated is not None
    assert (translated.error_code, translated.get_http_status_code()) == ("TEMPORARILY_UNAVAILABLE", 503)
    assert translated.message.startswith("The artifact store is unreachable: ")
    assert "http://s3:9000/mlflow/x" in translated.message


@pytest.mark.parametrize(
    "exc",
    [client_error("AccessDenied", 403), client_error("InvalidRange", 416), ValueError("x"), KeyError("x")],
    ids=["access-denied", "invalid-range", "value-error", "key-error"],
)
def test_other_errors_are_not_translated(exc: Exception) -> None:
    assert store.translate(exc, "x") is None


def test_store_errors_raises_the_translation_from_the_original() -> None:
    original = client_error("NoSuchKey", 404)
    with pytest.raises(MlflowException) as caught, store.store_errors("a/b.txt"):
        raise original
    assert caught.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert caught.value.__cause__ is original


@pytest.mark.parametrize(
    "exc",
    [client_error("AccessDenied", 403), MlflowException("mlflow's own"), KeyError("x")],
    ids=["access-denied", "mlflow-exception", "key-error"],
)
def test_store_errors_lets_other_errors_through_unchanged(exc: Exception) -> None:
    with pytest.raises(type(exc)) as caught, store.store_errors("x"):
        raise exc
    assert caught.value is exc


class EmptyPages:
    def paginate(self, **kwargs) -> list[dict]:
        return [{}]


class FailingS3:
    """An S3 client whose listing finds nothing and whose download fails."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def get_paginator(self, name: str) -> EmptyPages:
        return EmptyPages()

    def download_file(self, *args, **kwargs) -> None:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "status"),
    [(client_error("404", 404), 404), (EndpointConnectionError(endpoint_url="http://s3:9000"), 503)],
    ids=["missing", "unreachable"],
)
def test_the_repository_plugin_translates_downloads(
    exc: Exception, status: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = store.S3ArtifactRepository("s3://mlflow/1/abc/artifacts")
    monkeypatch.setattr(repo, "_get_s3_client", lambda: FailingS3(exc))
    with pytest.raises(MlflowException) as caught:
        repo.download_artifacts("model/MLmodel", str(tmp_path))
    assert caught.value.get_http_status_code() == status
