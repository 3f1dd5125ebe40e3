"""Hardening, proven against the live stack through nginx.

- every route of the running server's own route table answers 401 without
  credentials (only /health is public);
- permissions between teammates hold; accounts come from `scripts/users`;
- hostile artifact paths and locations are refused (4xx), nothing is read or
  written outside the bucket, the server stays healthy;
- security headers, Host allow-list, CORS;
- oversized / malformed / invalid requests are refused and write nothing;
- failed sign-ins lock the client address out;
- containers run without privileges; the databases' ports are unreachable.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from stack import ROOT, Stack, unique

PUBLIC = {"/health"}  # the load balancer probe: answers "OK", nothing else
# nginx's own subrequest target (the artifact decision): 404 from outside, for anyone.
INTERNAL = {"/_stack/artifact-access"}
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


# --- helpers ------------------------------------------------------------------


def users(stack: Stack, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The operator's command, exactly as documented: scripts/users ..."""
    return stack.script("users", *args, check=check, timeout=300)


def password_of(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout.strip().splitlines()[-1]


def route_table(stack: Stack) -> list[dict]:
    script = (ROOT / "tests" / "route_table.py").read_text()
    out = stack.compose("exec", "-T", "mlflow-server", "python", "-", input=script).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def concrete(path: str) -> str:
    """A request path for a route template: every parameter becomes a plain value."""
    path = re.sub(r"<path:[^>]+>", "x/y", path)
    path = re.sub(r"<[^>]+>", "x", path)
    path = re.sub(r"\{[^}:]+:path\}", "x/y", path)
    return re.sub(r"\{[^}]+\}", "x", path)


@pytest.fixture(scope="module")
def teammates(stack: Stack) -> dict[str, tuple[str, str]]:
    """Two non-admin accounts made with scripts/users."""
    made = {}
    for who in ("alice", "bob"):
        name = unique(who)
        made[who] = (name, password_of(users(stack, "add", name)))
    return made


def as_user(creds: tuple[str, str]) -> requests.Session:
    s = requests.Session()
    s.auth = creds
    return s


# --- authentication everywhere ------------------------------------------------


def test_route_table_comes_from_the_running_app(stack: Stack) -> None:
    routes = route_table(stack)
    paths = {r["path"] for r in routes}
    assert len(routes) > 300, len(routes)
    # Every family the issue names is in there: REST, ajax-api, graphql,
    # artifacts, traces, jobs, user management.
    for marker in (
        "/api/2.0/mlflow/",
        "/ajax-api/",
        "/graphql",
        "/mlflow-artifacts/",
        "/v1/traces",
        "/jobs/",
        "users/create",
    ):
        assert any(marker in p for p in paths), marker


def test_every_route_requires_authentication(stack: Stack) -> None:
    routes = route_table(stack)
    # Served or answered by nginx itself, never reaching those routes above.
    extra = [
        {"path": "/static-files/index.html", "methods": ["GET"]},
        {"path": "/favicon.ico", "methods": ["GET"]},
        {"path": "/api/2.0/mlflow-artifacts/presigned/x", "methods": ["GET"]},
        {"path": "/ajax-api/2.0/mlflow-artifacts/mpu/create/x", "methods": ["POST"]},
    ]
    s = requests.Session()
    wrong, checked = [], 0
    for route in routes + extra:
        path = concrete(route["path"])
        if path in PUBLIC:
            continue
        for method in route["methods"]:
            r = s.request(method, stack.url + path, json={} if method in ("POST", "PUT", "PATCH") else None, timeout=30)
            checked += 1
            if r.status_code != (404 if path in INTERNAL else 401):
                wrong.append(f"{method} {path} -> {r.status_code}")
    assert checked > 300
    assert not wrong, f"{len(wrong)} of {checked} requests without credentials were not refused:\n" + "\n".join(wrong)


def test_health_is_the_only_public_route_and_tells_nothing(stack: Stack) -> None:
    r = requests.get(stack.url + "/health", timeout=10)
    assert r.status_code == 200
    assert r.text.strip() == "OK"
    assert requests.get(stack.url + "/version", timeout=10).status_code == 401


# --- permissions --------------------------------------------------------------


@pytest.mark.slow
def test_users_command_makes_working_accounts_and_refuses_bad_input(stack: Stack, teammates) -> None:
    name, password = teammates["alice"]
    assert len(password) >= 24 and password.isalnum()
    assert as_user((name, password)).get(stack.url + SEARCH, timeout=10).status_code == 200
    listed = users(stack, "list").stdout
    assert name in listed and f"{name}  (admin)" not in listed
    quiet = users(stack, "list")
    assert "Warning" not in quiet.stderr and "deprecated" not in quiet.stderr, quiet.stderr  # only its own output

    # An admin, and a new password for a teammate (the old one stops working).
    boss = unique("carol")
    users(stack, "add", boss, "--admin")
    assert f"{boss}  (admin)" in users(stack, "list").stdout
    fresh = password_of(users(stack, "reset-password", name))
    assert fresh != password
    assert as_user((name, fresh)).get(stack.url + SEARCH, timeout=10).status_code == 200
    teammates["alice"] = (name, fresh)
    listed = users(stack, "list").stdout

    taken = users(stack, "add", name, check=False)
    assert taken.returncode != 0 and "already exists" in taken.stderr
    bad = users(stack, "add", "../evil name", check=False)
    assert bad.returncode != 0 and "invalid user name" in bad.stderr
    assert users(stack, "list").stdout == listed  # nothing changed


def test_default_permission_is_read_only_for_teammates(stack: Stack, teammates) -> None:
    alice, bob = as_user(teammates["alice"]), as_user(teammates["bob"])
    exp = alice.post(f"{stack.url}/api/2.0/mlflow/experiments/create", json={"name": unique("alice-exp")}, timeout=30)
    assert exp.status_code == 200, exp.text
    exp_id = exp.json()["experiment_id"]
    run = alice.post(f"{stack.url}/api/2.0/mlflow/runs/create", json={"experiment_id": exp_id}, timeout=30).json()
    run_id = run["run"]["info"]["run_id"]

    # MLFLOW_DEFAULT_PERMISSION=READ: teammates see each other's work ...
    r = bob.get(f"{stack.url}/api/2.0/mlflow/experiments/get", params={"experiment_id": exp_id}, timeout=30)
    assert r.status_code == 200
    # ... but cannot change it.
    r = bob.post(
        f"{stack.url}/api/2.0/mlflow/runs/log-metric",
        json={"run_id": run_id, "key": "m", "value": 1.0, "timestamp": 0},
        timeout=30,
    )
    assert r.status_code == 403
    r = bob.post(
        f"{stack.url}/api/2.0/mlflow/experiments/update", json={"experiment_id": exp_id, "new_name": "x"}, timeout=30
    )
    assert r.status_code == 403
    metrics = alice.get(f"{stack.url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=30).json()
    assert "metrics" not in metrics["run"]["data"]


def test_denied_teammate_cannot_read_an_experiment(stack: Stack, teammates, http: requests.Session) -> None:
    alice, bob = as_user(teammates["alice"]), as_user(teammates["bob"])
    exp_id = alice.post(
        f"{stack.url}/api/2.0/mlflow/experiments/create", json={"name": unique("private")}, timeout=30
    ).json()["experiment_id"]
    grant = http.post(
        f"{stack.url}/api/3.0/mlflow/users/permissions/grant",
        json={
            "username": teammates["bob"][0],
            "resource_type": "experiment",
            "resource_id": exp_id,
            # MLflow 3.17's per-resource "no permission" grant (NO_PERMISSIONS
            # is only a default); it overrides MLFLOW_DEFAULT_PERMISSION=READ.
            "permission": "DENY",
        },
        timeout=30,
    )
    assert grant.status_code == 200, grant.text
    r = bob.get(f"{stack.url}/api/2.0/mlflow/experiments/get", params={"experiment_id": exp_id}, timeout=30)
    assert r.status_code == 403
    assert alice.get(f"{stack.url}/api/2.0/mlflow/experiments/get", params={"experiment_id": exp_id}, timeout=30).ok


def test_teammates_cannot_manage_users(stack: Stack, teammates) -> None:
    bob = as_user(teammates["bob"])
    alice_name = teammates["alice"][0]
    attempts = [
        bob.post(f"{stack.url}/api/2.0/mlflow/users/create", json={"username": unique("x"), "password": "A" * 30}),
        bob.patch(
            f"{stack.url}/api/2.0/mlflow/users/update-admin", json={"username": teammates["bob"][0], "is_admin": True}
        ),
        bob.patch(
            f"{stack.url}/api/2.0/mlflow/users/update-password", json={"username": alice_name, "password": "B" * 30}
        ),
        bob.delete(f"{stack.url}/api/2.0/mlflow/users/delete", json={"username": alice_name}),
    ]
    assert [r.status_code for r in attempts] == [403] * 4
    # Alice's password still works: nothing changed.
    assert as_user(teammates["alice"]).get(stack.url + SEARCH, timeout=10).status_code == 200


def test_reset_admin_password(stack: Stack, admin: tuple[str, str]) -> None:
    old = admin[1]
    proc = users(stack, "reset-admin-password")
    new = password_of(proc)
    try:
        assert new != old and len(new) >= 24
        assert requests.get(stack.url + SEARCH, auth=(admin[0], new), timeout=10).status_code == 200
        assert stack.secret("mlflow_admin_password") == new  # gc and restore read it from there
        time.sleep(1)  # the auth database's notification empties every worker's caches
        assert set(stack.sign_in_codes(*admin, 8)) == {401}
    finally:
        # Put the session's admin password back for the rest of the suite.
        code = (
            "import sys; from pathlib import Path; from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore;"
            "from stack_ops.common import Settings; from stack_ops.jobs.secrets import write;"
            "s = SqlAlchemyStore(); s.init_db(Settings.from_env().auth_uri());"
            f"s.update_user({admin[0]!r}, password={old!r}); write(Path('/secrets/mlflow_admin_password'), {old!r})"
        )
        stack.compose(
            "--profile", "ops", "run", "--rm", "--no-deps", "-T", "--entrypoint", "python", "users", "-c", code
        )
    assert requests.get(stack.url + SEARCH, auth=admin, timeout=10).status_code == 200


# --- hostile paths ------------------------------------------------------------

TRAVERSALS = [
    "../../../../etc/passwd",
    "x/../../../etc/passwd",
    "..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%2e%2e/%2e%2e/etc/passwd",
    "%252e%252e%252fetc%252fpasswd",
    "..%255c..%255cetc%255cpasswd",
    "..%5c..%5cetc%5cpasswd",
    "..\\..\\etc\\passwd",
    "..;/..;/etc/passwd",
    "x;/../../etc/passwd",
    "x%3b/..%3b/etc/passwd",
    "x%23/../../etc/passwd",
    "%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
    "....//....//etc/passwd",
    "%2fetc%2fpasswd",
    "/etc/passwd",
    "x%00/../../etc/passwd",
    "file:///etc/passwd",
    "s3:%2f%2fother-bucket%2fsecret",
    "x/%2e%2e/%2e%2e/%2e%2e/etc/shadow",
    "..%2F..%2F..%2Fproc%2Fself%2Fenviron",
]


def raw(method: str, url: str, auth: tuple[str, str], data: bytes | None = None) -> requests.Response:
    """Send the path exactly as written (requests would normalise '..')."""
    s = requests.Session()
    req = requests.Request(method, url, auth=auth, data=data).prepare()
    req.url = url
    return s.send(req, timeout=30)


@pytest.fixture(scope="module")
def victim_run(tracking) -> str:
    import mlflow

    mlflow.set_experiment(unique("hostile"))
    with mlflow.start_run() as run:
        mlflow.log_text("fine", "ok.txt")
    return run.info.run_id


def test_hostile_artifact_paths_are_refused(stack: Stack, admin, victim_run: str) -> None:
    marker = f"hostile-{uuid.uuid4().hex}"
    before = stack.bucket_objects("")["objects"]
    answers = []
    for p in TRAVERSALS:
        base = stack.url
        answers += [
            ("download", p, raw("GET", f"{base}/api/2.0/mlflow-artifacts/artifacts/{p}", admin)),
            ("upload", p, raw("PUT", f"{base}/api/2.0/mlflow-artifacts/artifacts/{p}", admin, marker.encode())),
            ("list", p, raw("GET", f"{base}/api/2.0/mlflow-artifacts/artifacts?path={p}", admin)),
            ("run list", p, raw("GET", f"{base}/api/2.0/mlflow/artifacts/list?run_id={victim_run}&path={p}", admin)),
            ("get-artifact", p, raw("GET", f"{base}/get-artifact?run_id={victim_run}&path={p}", admin)),
            (
                "model get-artifact",
                p,
                raw("GET", f"{base}/model-versions/get-artifact?name=bank-churn-classifier&version=1&path={p}", admin),
            ),
        ]
    not_refused = [f"{kind} {p!r} -> {r.status_code}" for kind, p, r in answers if not 400 <= r.status_code < 500]
    assert not not_refused, "\n".join(not_refused)
    leaked = [f"{kind} {p!r}" for kind, p, r in answers if "root:" in r.text or "PATH=" in r.text]
    assert not leaked, leaked
    # Nothing was written: the bucket is as it was, no spooled upload survives.
    assert stack.bucket_objects("")["objects"] == before
    spooled = stack.compose("exec", "-T", "mlflow-server", "grep", "-rl", marker, "/tmp", check=False)
    assert spooled.stdout == ""
    assert requests.get(stack.url + "/health", timeout=10).status_code == 200
    assert requests.get(stack.url + SEARCH, auth=admin, timeout=10).status_code == 200


@pytest.mark.parametrize(
    "location",
    ["file:///etc", "/tmp/evil", "s3://other-bucket/x", "gs://b/x", "mlflow-artifacts:/../../x", "s3://mlflow/../x"],
)
def test_experiment_artifact_location_outside_the_bucket_is_refused(
    stack: Stack, http: requests.Session, location: str
) -> None:
    name = unique("loc")
    r = http.post(
        f"{stack.url}/api/2.0/mlflow/experiments/create", json={"name": name, "artifact_location": location}, timeout=30
    )
    assert r.status_code == 400, r.text
    assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    found = http.get(
        f"{stack.url}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name}, timeout=30
    )
    assert found.status_code == 404  # nothing created


@pytest.mark.parametrize(
    "source",
    [
        "file:///etc",
        "/etc/passwd",
        "http://evil.example/model",
        "https://evil.example/model",
        "s3://other-bucket/model",
        "s3://mlflow/../other/model",
        "mlflow-artifacts:/../../etc",
        "runs:/0123456789abcdef/../../../etc",
    ],
)
def test_model_version_source_outside_the_bucket_is_refused(stack: Stack, http: requests.Session, source: str) -> None:
    url = f"{stack.url}/api/2.0/mlflow/registered-models/get"
    before = http.get(url, params={"name": "bank-churn-classifier"}, timeout=30).json()
    r = http.post(
        f"{stack.url}/api/2.0/mlflow/model-versions/create",
        json={"name": "bank-churn-classifier", "source": source},
        timeout=30,
    )
    assert 400 <= r.status_code < 500, r.text
    after = http.get(url, params={"name": "bank-churn-classifier"}, timeout=30).json()
    assert after["registered_model"].get("latest_versions") == before["registered_model"].get("latest_versions")


# --- headers, hosts, CORS -----------------------------------------------------

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",
    "Content-Security-Policy": "frame-ancestors 'self'",
    "Referrer-Policy": "same-origin",
}


@pytest.mark.parametrize("path", [SEARCH, "/", "/static-files/index.html", "/no-such-page"])
def test_security_headers_on_every_answer(stack: Stack, admin, path: str) -> None:
    for auth in (admin, None):
        r = requests.get(stack.url + path, auth=auth, timeout=30)
        for name, value in SECURITY_HEADERS.items():
            # raw headers: exactly one copy (MLflow's own are replaced, not doubled)
            copies = [v for k, v in r.raw.headers.items() if k.lower() == name.lower()]
            assert copies == [value], f"{path} ({r.status_code}) {name}: {copies}"
        assert "nginx/" not in r.headers.get("Server", "")


def test_foreign_host_is_refused(stack: Stack, admin) -> None:
    for path in (SEARCH, "/"):
        r = requests.get(stack.url + path, auth=admin, headers={"Host": "evil.example"}, timeout=30)
        assert r.status_code == 403
        assert "Invalid Host header" in r.text


def test_foreign_origin_gets_no_cors_allowance(stack: Stack, admin) -> None:
    origin = {"Origin": "https://evil.example"}
    r = requests.get(stack.url + SEARCH, auth=admin, headers=origin, timeout=30)
    assert "Access-Control-Allow-Origin" not in r.headers
    pre = requests.options(
        f"{stack.url}/api/2.0/mlflow/runs/create",
        headers={**origin, "Access-Control-Request-Method": "POST"},
        timeout=30,
    )
    assert "Access-Control-Allow-Origin" not in pre.headers


# --- bad requests write nothing ---------------------------------------------


@pytest.fixture()
def fresh_run(http: requests.Session, stack: Stack) -> str:
    exp = http.post(f"{stack.url}/api/2.0/mlflow/experiments/create", json={"name": unique("bad-input")}, timeout=30)
    run = http.post(f"{stack.url}/api/2.0/mlflow/runs/create", json={"experiment_id": exp.json()["experiment_id"]})
    return run.json()["run"]["info"]["run_id"]


def run_data(http: requests.Session, stack: Stack, run_id: str) -> dict:
    return http.get(f"{stack.url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=30).json()["run"]["data"]


def test_oversized_api_body_is_413_with_a_clear_message(stack: Stack, http: requests.Session, fresh_run: str) -> None:
    metrics = [{"key": "m", "value": 1.0, "timestamp": 0, "step": i} for i in range(1_300_000)]
    body = json.dumps({"run_id": fresh_run, "metrics": metrics})
    assert len(body) > 64 * 1024 * 1024
    r = http.post(
        f"{stack.url}/api/2.0/mlflow/runs/log-batch",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=120,
    )
    assert r.status_code == 413
    assert r.json()["error_code"] == "REQUEST_TOO_LARGE"
    assert "64 MB" in r.json()["message"]
    assert "metrics" not in run_data(http, stack, fresh_run)


@pytest.mark.parametrize(
    "body", ['{"run_id": ', "not json at all", '{"run_id": "x", "metrics": [}', "\x00\x01\x02"], ids=range(4)
)
def test_malformed_json_is_400(stack: Stack, http: requests.Session, fresh_run: str, body: str) -> None:
    r = http.post(
        f"{stack.url}/api/2.0/mlflow/runs/log-batch",
        data=body.replace('"x"', json.dumps(fresh_run)),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400
    assert r.json()["error_code"] in ("MALFORMED_REQUEST", "INVALID_PARAMETER_VALUE")
    assert "metrics" not in run_data(http, stack, fresh_run)


@pytest.mark.parametrize(
    "batch",
    [
        {"metrics": [{"key": "ok", "value": 1, "timestamp": 0}, {"key": "a*b", "value": 1, "timestamp": 0}]},
        {"metrics": [{"key": "ok", "value": 1, "timestamp": 0}, {"key": "m", "value": "abc", "timestamp": 0}]},
        {"metrics": [{"key": "ok", "value": 1, "timestamp": 0}, {"key": "m", "value": 1, "timestamp": "yesterday"}]},
        {"params": [{"key": "ok", "value": "1"}, {"key": "p" * 300, "value": "1"}]},
        {"params": [{"key": "ok", "value": "1"}, {"key": "ok", "value": "2"}]},
        {"tags": [{"key": "ok", "value": "1"}, {"key": "a?b", "value": "1"}]},
        # MLflow would keep the first 6,000 characters and answer 200.
        {"params": [{"key": "ok", "value": "1"}, {"key": "notes", "value": "x" * (10 << 20)}]},
    ],
    ids=[
        "metric-name",
        "metric-value",
        "metric-timestamp",
        "param-key-length",
        "duplicate-param",
        "tag-key",
        "param-value-10MB",
    ],
)
def test_invalid_names_or_values_are_400_and_write_nothing(
    stack: Stack, http: requests.Session, fresh_run: str, batch: dict
) -> None:
    before = run_data(http, stack, fresh_run)
    r = http.post(f"{stack.url}/api/2.0/mlflow/runs/log-batch", json={"run_id": fresh_run, **batch}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert r.json()["message"]  # MLflow's own explanation
    assert run_data(http, stack, fresh_run) == before  # not even the valid half


# --- brute force --------------------------------------------------------------

PROBE = """
import json, requests
url = "http://nginx:8080/api/2.0/mlflow/experiments/search?max_results=1"
out = {"wrong": [requests.get(url, auth=("USER", f"guess-{i}"), timeout=30).status_code for i in range(12)]}
right = requests.get(url, auth=("USER", "PASSWORD"), timeout=30)
out["right"] = [right.status_code, right.headers.get("Retry-After"), right.text]
out["spoofed"] = requests.get(url, auth=("USER", "PASSWORD"), headers={"X-Real-IP": "10.1.2.3"}, timeout=30).status_code
out["address"] = __import__("socket").gethostbyname(__import__("socket").gethostname())
print(json.dumps(out))
"""


@contextlib.contextmanager
def client_on_the_network(stack: Stack):
    """One container, one address, for several probes (a lockout is per address)."""
    name = unique("probe")
    stack.compose("run", "-d", "--rm", "--no-deps", "--name", name, "--entrypoint", "sleep", "trainer", "900")

    def probe(code: str) -> dict:
        out = subprocess.run(["docker", "exec", name, "python", "-c", code], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    try:
        yield probe
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


@pytest.mark.slow
def test_failed_sign_ins_lock_the_address_out(stack: Stack, teammates) -> None:
    name, password = teammates["alice"]
    right = (
        "import json, requests; print(json.dumps({'s': requests.get("
        f"'http://nginx:8080{SEARCH}', auth=({name!r}, {password!r}), timeout=30).status_code}}))"
    )
    with client_on_the_network(stack) as probe:
        result = probe(PROBE.replace("USER", name).replace("PASSWORD", password))
        wrong = result["wrong"]
        assert wrong[:10] == [401] * 10  # MLFLOW_AUTH_MAX_FAILURES=10
        assert wrong[10:] == [429, 429]
        status, retry_after, text = result["right"]
        assert status == 429  # even the right password, while locked out: guessing stops paying
        assert 0 < int(retry_after) <= 300
        assert "Too many failed sign-in attempts" in text
        assert result["spoofed"] == 429  # nginx overwrites X-Real-IP
        # Other addresses are unaffected (this test process is one).
        assert as_user((name, password)).get(stack.url + SEARCH, timeout=10).status_code == 200
        # The count outlives a server restart: fresh workers load it from PostgreSQL.
        stack.compose("restart", "mlflow-server")
        stack.compose("up", "--detach", "--wait", "--wait-timeout", "300", "mlflow-server", "nginx")
        assert probe(right) == {"s": 429}
        # The operator can lift it early.
        unlocked = users(stack, "unlock", result["address"])
        assert "forgotten" in unlocked.stdout
        assert probe(right) == {"s": 200}


# --- containers ---------------------------------------------------------------

# The documented exceptions (docs/security.md): MinIO's image runs as root
# (with no capabilities) and writes outside /data; SeaweedFS, the default,
# runs as its own unprivileged user, read-only. The `tls` job (TLS variant,
# one-shot, no network) is root with exactly these capabilities, read-only.
ROOT_ALLOWED_MINIO = {"s3"}
TLS_JOB_CAPS = {"CHOWN", "DAC_OVERRIDE", "FOWNER"}


def inspect(stack: Stack, every: bool = False) -> dict[str, dict]:
    """Each service's container as `docker inspect` sees it; with every=True
    the exited one-shot jobs too (secrets, bucket, migrate, accounts, ui, trainer)."""
    ids = stack.compose("ps", "-q", *(["--all"] if every else [])).stdout.split()
    info = json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True).stdout)
    return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in info}


def test_containers_run_without_privileges(stack: Stack) -> None:
    containers = inspect(stack, every=True)
    assert {"postgres", "mlflow-server", "nginx", "gc", "s3"} <= set(containers)
    assert {"secrets", "bucket", "migrate", "accounts", "ui", "trainer"} <= set(containers)  # one-shot jobs too
    root_allowed = ROOT_ALLOWED_MINIO if stack.s3_store == "minio" else set()
    for service, c in containers.items():
        host = c["HostConfig"]
        user = c["Config"]["User"]
        caps = set(host.get("CapAdd") or [])
        if service == "tls":
            assert user.split(":")[0] in ("0", "root") and caps == TLS_JOB_CAPS, (user, caps)
            assert c["HostConfig"]["NetworkMode"] == "none"
        else:
            if service not in root_allowed:
                assert user and user.split(":")[0] not in ("", "0", "root"), f"{service} runs as root"
            assert not caps, f"{service} adds capabilities {caps}"
        assert "no-new-privileges:true" in (host.get("SecurityOpt") or []), service
        assert host.get("CapDrop") in (["ALL"], ["all"]), f"{service} keeps capabilities: {host.get('CapDrop')}"
        assert not host.get("Privileged"), service
        if service not in root_allowed:
            assert host.get("ReadonlyRootfs") is True, f"{service} has a writable root filesystem"


def test_nginx_cannot_read_an_operators_tls_key(stack: Stack) -> None:
    """nginx gets its config files one by one, never nginx/ as a whole: a key
    an operator keeps in nginx/certs is not in its container at all."""
    probe = ROOT / "nginx" / "certs" / "probe-server.key"
    probe.write_text("not a key, but where an operator's would be\n")
    try:
        mounts = inspect(stack)["nginx"]["Mounts"]
        assert not any(Path(m["Source"]).resolve() in (ROOT / "nginx", ROOT / "nginx" / "certs") for m in mounts)
        found = stack.compose(
            "exec", "-T", "nginx", "sh", "-c", "grep -rl 'where an operator' /etc 2>/dev/null", check=False
        )
        assert found.stdout.strip() == "", found.stdout
    finally:
        probe.unlink()


def test_only_nginx_publishes_a_port(stack: Stack) -> None:
    running = inspect(stack)
    published = {
        s
        for s, c in running.items()
        if any(c["NetworkSettings"]["Ports"].get(p) for p in c["NetworkSettings"]["Ports"] or {})
    }
    assert published == {"nginx"}


def speaks_postgres(address: str) -> bool:
    """True if a real PostgreSQL answers an SSLRequest at address:5432 (b'S' or b'N')."""
    try:
        with socket.create_connection((address, 5432), timeout=3) as s:
            s.settimeout(3)
            s.sendall(struct.pack("!ii", 8, 80877103))
            return s.recv(1) in (b"S", b"N")
    except OSError:
        return False


def speaks_s3(address: str) -> bool:
    """True if an S3 store (MinIO or SeaweedFS) answers HTTP at address:9000."""
    try:
        r = requests.get(f"http://{address}:9000/", timeout=3)
    except requests.RequestException:
        return False
    text = r.text + r.headers.get("Server", "")
    return any(s in text for s in ("SeaweedFS", "MinIO", "ListAllMyBucketsResult", "<Code>AccessDenied"))


def test_databases_are_unreachable_from_the_host(stack: Stack) -> None:
    # (Plain connect() is no proof here: some networks accept any TCP
    # connection. What must not answer is PostgreSQL or the S3 store.)
    running = inspect(stack)
    for net in running["postgres"]["NetworkSettings"]["Networks"].values():
        assert net["IPAddress"]
        assert not speaks_postgres(net["IPAddress"]), f"PostgreSQL answers the host at {net['IPAddress']}:5432"
    for net in running[stack.s3_service]["NetworkSettings"]["Networks"].values():
        assert not speaks_s3(net["IPAddress"]), f"the S3 store answers the host at {net['IPAddress']}:9000"
    assert not speaks_postgres("127.0.0.1") and not speaks_s3("127.0.0.1")
    # The probes do detect them where they are reachable: from inside the stack.
    check = (
        "import socket, struct; s = socket.create_connection(('postgres', 5432), timeout=5);"
        "s.sendall(struct.pack('!ii', 8, 80877103)); print(s.recv(1))"
    )
    assert stack.python_in("mlflow-server", check).strip() in ("b'N'", "b'S'")


def test_networks_keep_the_stores_inside(stack: Stack) -> None:
    """PostgreSQL only on `backend`; the S3 store on `backend` and on `storage`,
    which it shares with nginx alone (artifact bytes, presigned by MLflow);
    nginx never on `backend`. Both internal, no host address on either."""
    running = inspect(stack)
    prefix = f"{stack.project}_"

    def networks(service: str) -> set[str]:
        return {n.removeprefix(prefix) for n in running[service]["NetworkSettings"]["Networks"]}

    assert networks("postgres") == {"backend"}
    assert networks(stack.s3_service) == {"backend", "storage"}
    assert networks("nginx") == {"frontend", "storage"}
    # compose.monitoring.yaml adds `monitoring`: mlflow-server and Prometheus alone.
    monitored = "prometheus" in running
    assert networks("mlflow-server") == {"backend", "frontend"} | ({"monitoring"} if monitored else set())
    on_storage = {s for s in running if "storage" in networks(s)}
    assert on_storage == {"nginx", stack.s3_service}, on_storage
    if monitored:
        assert networks("prometheus") == {"monitoring"}
        assert {s for s in running if "monitoring" in networks(s)} == {"mlflow-server", "prometheus"}
    for name in ("backend", "storage", *(["monitoring"] if monitored else [])):
        net = json.loads(
            subprocess.run(["docker", "network", "inspect", prefix + name], capture_output=True, text=True).stdout
        )[0]
        assert net["Internal"] is True, name
        assert net["Options"].get("com.docker.network.bridge.inhibit_ipv4") == "true", name


READ_SECRETS = """
import json, pathlib
found = {}
for f in sorted(pathlib.Path("/run/secrets").iterdir()):
    try:
        value = f.read_text().strip()
    except (OSError, UnicodeDecodeError):
        continue
    if value and "\\n" not in value:
        found[f.name] = value
print(json.dumps(found))
"""


def command_lines() -> set[str]:
    """Every process's command line as any user of the host sees it (`ps`)."""
    lines = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            lines.add(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return lines


def test_no_secret_is_on_any_command_line(stack: Stack) -> None:
    """Any user of the host sees every container's command lines (not their
    environment). No secret of the stack may be on one: not the server's
    database URI, and not during a gc pass, which runs `mlflow gc` with it."""
    import threading
    from urllib.parse import quote

    secrets = json.loads(stack.python_in("mlflow-server", READ_SECRETS))
    assert {"mlflow_db_password", "auth_db_password", "mlflow_admin_password"} <= set(secrets), sorted(secrets)
    seen: set[str] = set()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.update(command_lines())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        proc = stack.compose(
            "exec", "-T", "gc", "/opt/stack/entrypoint.sh", "gc", "--once", "--older-than", "30d", timeout=300
        )
    finally:
        stop.set()
        sampler.join()
    assert "pass done" in proc.stdout + proc.stderr
    # The sampler saw this stack's server and the gc pass's own process.
    assert any("mlflow server" in line and "--app-name stack" in line for line in seen)
    assert any("STACK_GC_BACKEND_STORE_URI" in line for line in seen)
    leaked = sorted(
        name
        for name, value in secrets.items()
        if len(value) >= 8 and any(value in line or quote(value, safe="") in line for line in seen)
    )
    assert leaked == [], f"on a command line: {leaked}"


def test_mlflow_telemetry_stays_on_the_host(stack: Stack, http: requests.Session) -> None:
    """MLflow 3 sends usage telemetry to its collector by default; the stack
    turns it off (docs/security.md#what-leaves-the-host). The server tells the
    UI not to collect, and drops what a browser posts: `disabled` even for an
    empty post, which MLflow answers `success` whenever telemetry is on. The
    trainer, a client, has it off too."""
    url = f"{stack.url}/ajax-api/3.0/mlflow/ui-telemetry"
    config = http.get(url, timeout=30)
    assert config.status_code == 200 and config.json()["disable_ui_telemetry"] is True
    record = {
        "event_name": "ui_event",
        "timestamp_ns": time.time_ns(),
        "params": {"component": "test"},
        "installation_id": str(uuid.uuid4()),
        "session_id": str(uuid.uuid4()),
    }
    for body in ({"records": []}, {"records": [record]}):
        posted = http.post(url, json=body, timeout=30)
        assert posted.status_code == 200 and posted.json() == {"status": "disabled"}, body
    trainer = inspect(stack, every=True)["trainer"]  # the suite's stack ran it
    assert "MLFLOW_DISABLE_TELEMETRY=true" in trainer["Config"]["Env"]
