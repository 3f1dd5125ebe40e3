"""Artifact bytes at the object store's speed: nginx asks, MLflow decides.

For `GET` and `PUT /api/2.0/mlflow-artifacts/artifacts/<path>` (and the
`/ajax-api/` twin), nginx sends an `auth_request` subrequest to
`/_stack/artifact-access` with the original method and URI. This module
answers it:

1. **MLflow decides, with its own code.** The original request (method, path,
   query, headers; no body) is replayed into a small ASGI app built with
   MLflow's own `add_fastapi_workspace_middleware` and
   `add_fastapi_permission_middleware`, the two middlewares MLflow's server
   wraps its native artifact routes in. Authentication (through the stack's
   authorization function, `guard.py`, so the lockout applies), admin
   detection and the artifact-proxy validator are MLflow's, unchanged: READ,
   USE, EDIT, MANAGE, DENY, no permission and admin get exactly the answer
   MLflow's proxy would give them.
2. **Where the object lives.** For an allowed request, the object key is
   computed the way MLflow's artifact router computes it
   (`validate_path_is_safe`, the workspace prefix, the `--artifacts-destination`
   repository), and the answer carries a short-lived presigned URL for it. nginx
   proxies the body straight to or from the store. The client never sees the
   URL: nginx keeps it in a variable.
3. **What stays with MLflow.** An upload without a length, or larger than the
   store's single-PUT limit (`ARTIFACT_DIRECT_MAX_UPLOAD_BYTES`, 5 GiB as on
   AWS S3), a destination that is not S3, and everything when
   `ARTIFACT_DIRECT_TRANSFERS=false`, is routed to MLflow's own proxy, which
   uses multipart uploads.

The answer to nginx (`auth_request` passes only 2xx, 401 and 403):

- 200: allowed. `X-Stack-Route` (`store` or `mlflow`), `X-Stack-Target` (the
  URL nginx proxies to), `X-Stack-Host`, and for the store the headers MLflow
  itself would set: `X-Stack-Content-Type`, `X-Stack-Content-Encoding` (upload)
  or `X-Stack-Content-Disposition` (download).
- 401: not signed in; `WWW-Authenticate` and `X-Stack-Error` (JSON body).
- 403: any other refusal. `X-Stack-Status` is the status the client gets
  (400, 403, 404, 429, ...), `X-Stack-Error` its JSON body (MLflow's
  `{"error_code", "message"}` shape), `X-Stack-Retry-After` if any.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from mimetypes import guess_type
from urllib.parse import unquote, urlsplit

ENDPOINT = "/_stack/artifact-access"
# The two native MLflow artifact routes the fast path serves, as MLflow names them.
ROUTES = (
    "/api/2.0/mlflow-artifacts/artifacts/{artifact_path:path}",
    "/ajax-api/2.0/mlflow-artifacts/artifacts/{artifact_path:path}",
)
PREFIXES = tuple(r.split("{", 1)[0] for r in ROUTES)
METHODS = ("GET", "PUT")
SINGLE_PUT_LIMIT = 5 * 1024**3  # AWS S3's largest single PUT
PRESIGN_SECONDS = 300
# MLflow's error codes for the statuses a decision can end in.
ERROR_CODES = {
    400: "INVALID_PARAMETER_VALUE",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "RESOURCE_DOES_NOT_EXIST",
    405: "BAD_REQUEST",
    429: "TOO_MANY_REQUESTS",
    503: "TEMPORARILY_UNAVAILABLE",
}


@dataclass(frozen=True)
class Config:
    direct: bool
    max_upload_bytes: int

    @classmethod
    def from_env(cls) -> Config:
        return cls(
            direct=parse_bool("ARTIFACT_DIRECT_TRANSFERS", os.environ.get("ARTIFACT_DIRECT_TRANSFERS", "true")),
            max_upload_bytes=parse_size(
                "ARTIFACT_DIRECT_MAX_UPLOAD_BYTES",
                os.environ.get("ARTIFACT_DIRECT_MAX_UPLOAD_BYTES", str(SINGLE_PUT_LIMIT)),
            ),
        )


def parse_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={value!r} is not true or false")


def parse_size(name: str, value: str) -> int:
    v = value.strip()
    if not v.isdigit() or int(v) < 1:
        raise ValueError(f"{name}={value!r} is not a positive whole number of bytes")
    if int(v) > SINGLE_PUT_LIMIT:
        raise ValueError(f"{name}={value!r} is above S3's single-PUT limit of {SINGLE_PUT_LIMIT} bytes")
    return int(v)


def split_original(uri: str) -> tuple[str, str, str] | None:
    """(raw path, decoded path, query) of an artifact transfer URI, or None if it is not one."""
    parts = urlsplit(uri)
    raw = parts.path
    if not raw.startswith(PREFIXES) or raw.endswith(PREFIXES):
        return None
    return raw, unquote(raw), parts.query


def error_json(status: int, message: str, code: str | None = None) -> str:
    return json.dumps({"error_code": code or ERROR_CODES.get(status, "INTERNAL_ERROR"), "message": message})


def as_error_json(status: int, body: bytes, content_type: str) -> str:
    """MLflow answers some refusals in plain text ("Permission denied"); nginx
    always sends the JSON shape. JSON bodies pass through as they are."""
    text = body.decode("utf-8", errors="replace").strip()
    if "json" in content_type:
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and "message" in parsed:
            code = parsed.get("error_code") or ERROR_CODES.get(status, "INTERNAL_ERROR")
            return json.dumps({**parsed, "error_code": code})
        if isinstance(parsed, dict) and "detail" in parsed:  # FastAPI's HTTPException
            return error_json(status, str(parsed["detail"]))
    return error_json(status, text or f"HTTP {status}")


def upload_headers(filename: str) -> tuple[str, str]:
    """The Content-Type and Content-Encoding MLflow's S3 repository stores with
    an upload (`S3ArtifactRepository._upload_file`: mimetypes.guess_type)."""
    content_type, encoding = guess_type(filename)
    return content_type or "", encoding or ""


def store_key(repo_uri: str, artifact_path: str) -> tuple[str, str]:
    """(bucket, key) where MLflow's S3 repository rooted at `repo_uri` keeps
    `artifact_path` (`S3ArtifactRepository.log_artifact` / `_download_file`)."""
    parts = urlsplit(repo_uri)
    if parts.scheme != "s3":
        raise ValueError(f"not an S3 URI: {repo_uri}")
    head, tail = posixpath.split(artifact_path)
    prefix = parts.path.removeprefix("/")
    key = posixpath.join(prefix, head, tail) if head else posixpath.join(prefix, tail)
    return parts.netloc, key


def target_headers(route: str, target: str, host: str, **extra: str) -> dict[str, str]:
    headers = {"X-Stack-Route": route, "X-Stack-Target": target, "X-Stack-Host": host}
    headers.update({f"X-Stack-{k.replace('_', '-').title()}": v for k, v in extra.items() if v})
    return headers


class Decider:
    """MLflow's permission middleware around a route that says where the bytes go."""

    def __init__(self, config: Config | None = None) -> None:
        from fastapi import FastAPI
        from mlflow.server.auth import add_fastapi_permission_middleware
        from mlflow.server.fastapi_app import add_fastapi_workspace_middleware

        # What locate() imports, checked now: an MLflow without it (ImportError)
        # gets the PassThrough decision instead of a 500 on every transfer.
        from mlflow.server.handlers import (  # noqa: F401
            _content_disposition_attachment,
            _get_artifact_repo_mlflow_artifacts,
            _get_workspace_scoped_repo_path_if_enabled,
        )
        from mlflow.utils.mime_type_utils import _guess_mime_type  # noqa: F401
        from starlette.responses import Response

        self.config = config or Config.from_env()
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        # Same order as MLflow's create_fastapi_app + create_app: the permission
        # middleware is added last, so it runs first.
        add_fastapi_workspace_middleware(app)
        add_fastapi_permission_middleware(app)

        async def locate(request):  # a plain Starlette endpoint: MLflow's path converter
            path = request.path_params["artifact_path"]
            status, headers, body = self.locate(request.method, path, request.headers)
            return Response(content=body, status_code=status, headers=headers, media_type="application/json")

        for route in ROUTES:
            app.add_route(route, locate, methods=list(METHODS))
        self.app = app

    def locate(self, method: str, artifact_path: str, headers) -> tuple[int, dict[str, str], str]:
        """After MLflow allowed the request: where its bytes go (200), or why not (4xx)."""
        from mlflow.exceptions import MlflowException
        from mlflow.server.handlers import (
            _content_disposition_attachment,
            _get_artifact_repo_mlflow_artifacts,
            _get_workspace_scoped_repo_path_if_enabled,
        )
        from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository
        from mlflow.utils.mime_type_utils import _guess_mime_type
        from mlflow.utils.uri import validate_path_is_safe

        # The same steps, in the same order, as MLflow's artifact router.
        try:
            artifact_path = validate_path_is_safe(artifact_path)
            artifact_path = _get_workspace_scoped_repo_path_if_enabled(artifact_path)
        except MlflowException as e:
            return e.get_http_status_code(), {}, e.serialize_as_json()
        head, tail = posixpath.split(artifact_path)
        if not tail:
            if method == "PUT":
                return 400, {}, error_json(400, "Artifact path must include a filename (cannot end with '/').")
            return 404, {}, error_json(404, f"Artifact '{artifact_path}' is a directory, not a file.")
        # nginx's 404 body if the object turns out to be missing.
        missing = error_json(404, f"Artifact '{artifact_path}' does not exist.")
        original_uri = headers.get("x-original-uri", "")
        mlflow = target_headers("mlflow", f"http://mlflow{original_uri}", headers.get("host", ""), missing=missing)

        repo = _get_artifact_repo_mlflow_artifacts()
        if not self.config.direct or not isinstance(repo, S3ArtifactRepository):
            return 200, mlflow, ""
        bucket, key = store_key(repo.artifact_uri, artifact_path)
        # The client MLflow's own S3 repository uses: same endpoint, credentials, signature.
        s3 = repo._get_s3_client()
        if method == "PUT":
            length = headers.get("x-original-content-length", "")
            if not length.isdigit() or int(length) > self.config.max_upload_bytes:
                return 200, mlflow, ""  # chunked, or too big for one PUT: MLflow's multipart upload
            url = s3.generate_presigned_url(
                "put_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=PRESIGN_SECONDS
            )
            content_type, encoding = upload_headers(tail)
            return (
                200,
                target_headers(
                    "store", url, urlsplit(url).netloc, content_type=content_type, content_encoding=encoding
                ),
                "",
            )
        url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=PRESIGN_SECONDS)
        return (
            200,
            target_headers(
                "store",
                url,
                urlsplit(url).netloc,
                content_type=_guess_mime_type(tail),
                content_disposition=_content_disposition_attachment(tail),
                missing=missing,
            ),
            "",
        )

    async def decide(self, scope, receive, send) -> None:
        """The `/_stack/artifact-access` endpoint nginx's auth_request calls."""
        from starlette.datastructures import Headers
        from starlette.responses import Response

        incoming = Headers(scope=scope)
        method = incoming.get("x-original-method", "").upper()
        original = split_original(incoming.get("x-original-uri", ""))
        if original is None or method not in METHODS:
            # nginx only sends artifact transfers here; anything else is a misconfiguration.
            body = error_json(400, "Not an artifact transfer.")
            await Response(body, 403, {"X-Stack-Status": "400", "X-Stack-Error": body})(scope, receive, send)
            return
        raw_path, path, query = original
        replay = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": scope.get("http_version", "1.1"),
            "method": method,
            "scheme": scope.get("scheme", "http"),
            "path": path,
            "raw_path": raw_path.encode(),
            "root_path": "",
            "query_string": query.encode(),
            "headers": [(k, v) for k, v in scope["headers"] if k not in (b"content-length", b"transfer-encoding")],
            "client": scope.get("client"),
            "server": scope.get("server"),
            "state": {},
        }
        status, headers, body = await call_asgi(self.app, replay)
        await Response(b"", **answer(status, headers, body))(scope, receive, send)


def answer(status: int, headers: dict[str, str], body: bytes) -> dict:
    """The decider's result as nginx's auth_request needs it."""
    if status == 200:
        return {"status_code": 200, "headers": {k: v for k, v in headers.items() if k.lower().startswith("x-stack-")}}
    error = as_error_json(status, body, headers.get("content-type", ""))
    if status == 401:
        challenge = headers.get("www-authenticate", 'Basic realm="mlflow"')
        return {"status_code": 401, "headers": {"WWW-Authenticate": challenge, "X-Stack-Error": error}}
    out = {"X-Stack-Status": str(status), "X-Stack-Error": error}
    if "retry-after" in headers:
        out["X-Stack-Retry-After"] = headers["retry-after"]
    return {"status_code": 403, "headers": out}


async def call_asgi(app, scope) -> tuple[int, dict[str, str], bytes]:
    """Run one request through an ASGI app in-process: (status, headers, body)."""
    result = {"status": 500, "headers": {}}
    body = bytearray()

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            result["status"] = message["status"]
            result["headers"] = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(scope, receive, send)
    return result["status"], result["headers"], bytes(body)
