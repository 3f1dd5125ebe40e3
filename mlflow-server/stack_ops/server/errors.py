"""MLflow's JSON error shape for every error of MLflow's APIs.

MLflow's Flask handlers answer errors as `{"error_code": ..., "message": ...}`,
which every MLflow client parses. Not everything in front of them does: the
basic-auth app answers a denial with plain text ("Permission denied", also on
Flask routes), a missing login with "You are not authenticated", Flask an
unknown API path with an HTML page, and MLflow's FastAPI routes (the OTLP
trace endpoint `/v1/traces`, the job API, the gateway) with FastAPI's
`{"detail": ...}` (422 for a missing `x-mlflow-experiment-id` header). This
ASGI wrapper rewrites those error bodies on the API paths into MLflow's shape,
with the same status and headers (a 401 keeps its `WWW-Authenticate`).
Successful answers, and errors already in MLflow's shape, pass through
untouched; the UI's pages and files are not touched at all.
"""

from __future__ import annotations

import json
from http import HTTPStatus

# MLflow's API paths (REST, the UI's ajax API, OTLP traces, the gateway).
PREFIXES = ("/api/", "/ajax-api/", "/v1/traces", "/gateway/")
MAX_ERROR_BODY = 64 * 1024  # larger error bodies pass through as they are
CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "RESOURCE_DOES_NOT_EXIST",
    409: "RESOURCE_ALREADY_EXISTS",
    422: "INVALID_PARAMETER_VALUE",
    429: "REQUEST_LIMIT_EXCEEDED",
    501: "NOT_IMPLEMENTED",
    503: "TEMPORARILY_UNAVAILABLE",
}


def error_code(status: int) -> str:
    if status in CODES:
        return CODES[status]
    return "INTERNAL_ERROR" if status >= 500 else "BAD_REQUEST"


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def _describe(detail) -> str:
    """FastAPI's `detail`: a string, or a list of validation errors ({loc, msg})."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body",))
                msg = str(item.get("msg", "invalid"))
                parts.append(f"{loc}: {msg}" if loc else msg)
            else:
                parts.append(str(item))
        return "; ".join(parts) or "Invalid request"
    return json.dumps(detail)


def reshape(status: int, content_type: str, body: bytes) -> bytes | None:
    """MLflow's JSON error for an error answer, or None when it already has that shape."""
    text = body.decode("utf-8", errors="replace").strip()
    if content_type.startswith("application/json"):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            if isinstance(parsed.get("error_code"), str) and "message" in parsed:
                return None
            if "detail" in parsed:
                text = _describe(parsed["detail"])
    if text.startswith("<"):  # a framework's HTML error page, not a message
        text = ""
    message = text or _phrase(status)
    return json.dumps({"error_code": error_code(status), "message": message}).encode()


class JsonErrors:
    """ASGI middleware: error answers on PREFIXES in MLflow's JSON error shape."""

    def __init__(self, app, prefixes: tuple[str, ...] = PREFIXES) -> None:
        self.app = app
        self.prefixes = prefixes

    def __getattr__(self, name: str):
        return getattr(self.app, name)  # the wrapped FastAPI app's `routes`, `router`, ...

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        held: dict | None = None  # an error's http.response.start, until its body is known
        chunks: list[bytes] = []
        size = 0

        async def send_reshaped(message) -> None:
            nonlocal held, size
            if message["type"] == "http.response.start":
                if message["status"] >= 400:
                    held = message
                    return
                await send(message)
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_ERROR_BODY:  # not an error message: let it through as it is
                start, held = held, None
                await send(start)
                await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": True})
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b""})
                return
            if message.get("more_body", False):
                return
            start, held = held, None
            body = b"".join(chunks)
            headers = [
                (k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-type", b"content-length")
            ]
            content_type = next(
                (v.decode("latin-1") for k, v in start.get("headers", []) if k.lower() == b"content-type"), ""
            )
            new = reshape(start["status"], content_type.lower(), body)
            if new is None:
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(new)).encode())]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": new})

        await self.app(scope, receive, send_reshaped)
