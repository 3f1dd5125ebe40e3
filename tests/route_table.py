"""Print the running server's route table as JSON (tests/test_security.py).

Not part of the image: the test pipes this file into `python -` inside the
mlflow-server container. Builds the application exactly as
`mlflow server --app-name stack` does under uvicorn (MLflow's FastAPI app
with the Flask app mounted in it, behind the stack's router) and lists
every route: Flask rules (REST, ajax-api, graphql, artifacts, auth) and
FastAPI routes (artifacts, traces, jobs, gateway, assistant, ...), with their
methods. One JSON object per line: {"app": ..., "path": ..., "methods": [...]}.
"""

from __future__ import annotations

import json
import os
import sys


def fastapi_routes(routes, prefix: str = ""):
    for route in routes:
        kind = type(route).__name__
        if kind == "_IncludedRouter":  # FastAPI >= 0.120 wraps included routers
            inner_prefix = getattr(route.include_context, "prefix", "") or ""
            yield from fastapi_routes(route.original_router.routes, prefix + inner_prefix)
        elif kind == "Mount":
            continue  # the Flask app, listed from its own url_map
        elif getattr(route, "path", None) is not None:
            yield prefix + route.path, sorted(getattr(route, "methods", None) or ["GET"])


def main() -> int:
    from stack_ops.common import read_secret

    os.environ.setdefault("MLFLOW_AUTH_CONFIG_PATH", "/tmp/mlflow-auth/basic_auth.ini")
    os.environ.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", read_secret("flask_secret_key"))
    os.environ["_MLFLOW_SGI_NAME"] = "uvicorn"  # what `mlflow server` sets: the factory returns FastAPI

    from mlflow.server import app as flask_app

    from stack_ops.server.app import create_app

    stack_app = create_app()
    asgi = stack_app.mlflow_app
    for rule in flask_app.url_map.iter_rules():
        methods = sorted(rule.methods - {"HEAD", "OPTIONS"})
        print(json.dumps({"app": "flask", "path": rule.rule, "methods": methods}))
    for path, methods in fastapi_routes(asgi.routes):
        print(json.dumps({"app": "fastapi", "path": path, "methods": methods}))
    print(json.dumps({"app": "stack", "path": "/_stack/artifact-access", "methods": ["GET"]}))
    print(json.dumps({"app": "stack", "path": "/metrics", "methods": ["GET"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
