"""server/errors.py: MLflow's API paths answer errors in MLflow's JSON shape."""

from __future__ import annotations

import asyncio
import json

import pytest

from stack_ops.server import errors


def answer(status: int, body: bytes, content_type: str, extra=(), chunks: int = 1):
    """An ASGI app answering `body` (in `chunks` pieces) with `status`."""

    async def app(scope, receive, send):
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        step = max(1, len(body) // chunks)
        pieces = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
        for n, piece in enumerate(pieces):
            await send({"type": "http.response.body", "body": piece, "more_body": n < len(pieces) - 1})

    return app


def call(app, path: str = "/v1/traces") -> tuple[int, dict[bytes, bytes], bytes]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    asyncio.run(errors.JsonErrors(app)(scope, receive, send))
    start = sent[0]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def test_fastapi_validation_error_becomes_mlflow_json() -> None:
    # What FastAPI answers when x-mlflow-experiment-id is missing (an admin: the auth middleware lets it through).
    detail = {"detail": [{"type": "missing", "loc": ["header", "x-mlflow-experiment-id"], "msg": "Field required"}]}
    status, headers, body = call(answer(422, json.dumps(detail).encode(), "application/json"))
    assert status == 422
    assert json.loads(body) == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "header.x-mlflow-experiment-id: Field required",
    }
    assert headers[b"content-length"] == str(len(body)).encode()


@pytest.mark.parametrize(
    ("status", "text", "code"),
    [
        (400, "Missing required header: X-Mlflow-Experiment-Id", "BAD_REQUEST"),
        (403, "Permission denied", "PERMISSION_DENIED"),
        (401, "You are not authenticated.", "UNAUTHENTICATED"),
        (500, "Internal Server Error", "INTERNAL_ERROR"),
    ],
)
def test_plain_text_errors_become_mlflow_json(status: int, text: str, code: str) -> None:
    extra = [(b"www-authenticate", b'Basic realm="mlflow"')] if status == 401 else []
    got, headers, body = call(answer(status, text.encode(), "text/plain; charset=utf-8", extra, chunks=3))
    assert got == status
    assert json.loads(body) == {"error_code": code, "message": text}
    assert headers[b"content-type"] == b"application/json"
    if status == 401:
        assert headers[b"www-authenticate"] == b'Basic realm="mlflow"'


def test_fastapi_string_detail_is_the_message() -> None:
    status, _, body = call(answer(404, b'{"detail": "Job not found"}', "application/json"))
    assert status == 404
    assert json.loads(body) == {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Job not found"}


def test_mlflow_shaped_errors_and_successes_pass_untouched() -> None:
    mlflow_error = b'{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such experiment"}'
    assert call(answer(404, mlflow_error, "application/json"))[2] == mlflow_error
    ok = b'{"partial_success": {}}'
    status, headers, body = call(answer(200, ok, "application/json"))
    assert (status, body, headers[b"content-length"]) == (200, ok, str(len(ok)).encode())


def test_flask_routes_denials_become_mlflow_json_too() -> None:
    # MLflow's basic auth answers a denied Flask API request in plain text.
    status, _, body = call(answer(403, b"Permission denied", "text/html; charset=utf-8"), "/api/2.0/mlflow/runs/get")
    assert status == 403
    assert json.loads(body) == {"error_code": "PERMISSION_DENIED", "message": "Permission denied"}
    status, _, body = call(answer(403, b"Permission denied", "text/plain"), "/ajax-api/2.0/mlflow/runs/get")
    assert json.loads(body) == {"error_code": "PERMISSION_DENIED", "message": "Permission denied"}


def test_an_html_error_page_becomes_its_status_phrase() -> None:
    page = b"<!doctype html><title>404 Not Found</title><h1>Not Found</h1>"
    status, _, body = call(answer(404, page, "text/html; charset=utf-8"), "/api/2.0/mlflow/no-such-route")
    assert status == 404
    assert json.loads(body) == {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Not Found"}


@pytest.mark.parametrize("path", ["/", "/static-files/index.html", "/health", "/metrics", "/apis/x"])
def test_other_paths_are_not_touched(path: str) -> None:
    page = b"<html>Not Found</html>"
    assert call(answer(404, page, "text/html"), path=path)[2] == page


def test_a_large_error_body_streams_through_as_it_is() -> None:
    big = b"x" * (errors.MAX_ERROR_BODY + 10)
    status, headers, body = call(answer(500, big, "text/plain", chunks=4))
    assert status == 500 and body == big and headers[b"content-type"] == b"text/plain"


def test_the_wrapped_app_s_attributes_show_through() -> None:
    class App:
        routes = ["a route"]

    assert errors.JsonErrors(App()).routes == ["a route"]
