"""A plain MLflow server's answers on the stack's data: MLflow's own basic-auth app (its views,
its permission checks and its after-request redactors, none of the stack's app) on MLflow's
Flask app, run through Flask's test client inside the server container, on the stack's
databases, signed in as a given user. The stack's fast views (search, metric history) are
compared with it byte for byte."""

from __future__ import annotations

import json

from stack import Stack

SCRIPT = """
import base64, json, os, sys
from stack_ops.common import Settings, read_secret
from stack_ops.server import serve
os.environ["MLFLOW_FLASK_SERVER_SECRET_KEY"] = read_secret("flask_secret_key")
os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(serve.AUTH_INI)
from mlflow.server import app, handlers
from mlflow.server.auth import create_app
handlers._get_tracking_store(Settings.from_env().tracking_uri(), "s3://unused")
create_app(app)
client = app.test_client()
user, password, calls = json.loads(sys.stdin.readline())
headers = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
out = []
for method, path, payload in calls:
    if method == "GET":
        r = client.get(path, query_string=payload, headers=headers)
    else:
        r = client.open(path, method=method, json=payload, headers=headers)
    out.append([r.status_code, r.get_data(as_text=True)])
print(json.dumps(out))
"""

# What the server's app factory sets up, in the server's own environment: the view and the
# after-request redactor of an endpoint and route (their modules; None when the route has no
# redactor), and how many objects it moved out of the garbage collector's reach (app.frozen).
INSTALLED = """
import gc, json, os, sys
from stack_ops.common import read_secret
from stack_ops.server import serve
os.environ["MLFLOW_FLASK_SERVER_SECRET_KEY"] = read_secret("flask_secret_key")
os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(serve.AUTH_INI)
from mlflow.server import app, auth
from stack_ops.server.app import create_app
create_app()
endpoint, path, method = sys.argv[1:4]
redactor = auth.AFTER_REQUEST_HANDLERS.get((path, method))
print(json.dumps({
    "view": app.view_functions[endpoint].__module__,
    "redactor": redactor.__module__ if redactor else None,
    "frozen": gc.get_freeze_count(),
}))
"""


def answers(stack: Stack, user: tuple[str, str], calls: list[tuple[str, str, object]]) -> list[list]:
    """[status, body] for each (method, path, payload) call: a JSON body, or for GET a query string."""
    out = stack.compose(
        "exec",
        "-T",
        "mlflow-server",
        "python",
        "-c",
        SCRIPT,
        input=json.dumps([*user, calls]) + "\n",
        timeout=300,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def installed(stack: Stack, endpoint: str, path: str, method: str) -> dict:
    out = stack.compose(
        "exec", "-T", "mlflow-server", "python", "-c", INSTALLED, endpoint, path, method, timeout=120
    ).stdout
    return json.loads(out.strip().splitlines()[-1])
