"""Three MLflow server replicas behind nginx (MLFLOW_SERVER_REPLICAS=3), on one
sibling stack: the job-runner refusal, requests spread over every replica,
the lockout and a permission change holding across replicas, `gc` with
replicas, and logging under load while a replica is killed with SIGKILL.

Which replica answered a request is read from its uvicorn access log
(`"GET /api/... HTTP/1.1" 200`), counting lines that carry a name or id only
that request uses.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from stack import Stack, last_json, unique

REPLICAS = 3
SEARCH_BY_NAME = "/api/2.0/mlflow/experiments/get-by-name?experiment_name="
LOG_METRIC = "/api/2.0/mlflow/runs/log-metric"
# A change to accounts or grants reaches every worker of every replica by
# NOTIFY within milliseconds (docs/replicas.md); the TTL (60 s) is only the
# bound while a listener is down. One second is the documented settle time.
SETTLE = 1.0


@pytest.fixture(scope="module")
def replicas(stack: Stack) -> Iterator[Stack]:
    """A sibling with three server replicas (one uvicorn worker each: three
    server processes on a 2-core machine) and the job runner off, as
    MLFLOW_SERVER_REPLICAS above 1 requires."""
    sibling = stack.sibling(
        "mlflowreplicas",
        MLFLOW_SERVER_REPLICAS=str(REPLICAS),
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        MLFLOW_WORKERS="1",
    )
    with sibling.session("nginx", "gc", timeout=600) as s:
        yield s


@pytest.fixture(scope="module")
def admin(replicas: Stack) -> tuple[str, str]:
    return "admin", replicas.secret("mlflow_admin_password")


def access_log(s: Stack, container: str) -> list[str]:
    """The uvicorn access log lines of one replica (stdout)."""
    proc = subprocess.run(["docker", "logs", container], capture_output=True, text=True, check=True)
    return [line for line in proc.stdout.splitlines() if '"' in line and " HTTP/1.1" in line]


def answered(s: Stack, fragment: str, status: int | None = None) -> dict[str, int]:
    """Per replica: access log lines with `fragment` (and this status)."""
    counts = {}
    for name in s.replicas():
        lines = [line for line in access_log(s, name) if fragment in line]
        if status is not None:
            lines = [line for line in lines if f'" {status}' in line]
        counts[name] = len(lines)
    return counts


def new_user(s: Stack, admin: tuple[str, str]) -> tuple[str, str]:
    name, password = unique("rep").replace("-", "_"), "P" + unique("w").replace("-", "") * 3
    r = requests.post(
        f"{s.url}/api/2.0/mlflow/users/create", json={"username": name, "password": password}, auth=admin, timeout=30
    )
    assert r.status_code == 200, r.text
    return name, password


def test_three_replicas_run_and_the_job_runner_is_refused_beside_them(replicas: Stack) -> None:
    assert len(replicas.replicas()) == REPLICAS
    # The same server, told to run MLflow's job runner as one of three: it
    # refuses before starting anything, and says what to set.
    proc = replicas.compose(
        "run",
        "--rm",
        "--no-deps",
        "-T",
        "-e",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true",
        "mlflow-server",
        check=False,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "MLFLOW_SERVER_REPLICAS=3 needs MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in proc.stderr


def test_requests_are_spread_over_every_replica(replicas: Stack, admin: tuple[str, str]) -> None:
    marker = unique("spread")
    codes = [
        requests.get(replicas.url + SEARCH_BY_NAME + marker, auth=admin, timeout=30).status_code for _ in range(60)
    ]
    assert set(codes) == {404}, codes  # no such experiment: MLflow's own answer
    counts = answered(replicas, marker, 404)
    # Random rotation over three addresses: each gets about 20 of 60; fewer
    # than 5 happens about once in a million runs.
    assert sum(counts.values()) == 60, counts
    assert all(n >= 5 for n in counts.values()), counts


PROBE = """
import json, socket, sys, requests
url, user, password = json.loads(sys.argv[1])
def code(pw):  # a new connection each time: nginx picks a replica per request
    return requests.get(url, auth=(user, pw), timeout=30).status_code
wrong = [code(password + "-wrong") for _ in range(12)]
right = [code(password) for _ in range(30)]
print(json.dumps({"wrong": wrong, "right": right, "address": socket.gethostbyname(socket.gethostname())}))
"""


def test_the_lockout_holds_across_replicas(replicas: Stack, admin: tuple[str, str]) -> None:
    user, password = new_user(replicas, admin)
    marker = unique("lockout")
    args = json.dumps([f"http://nginx:8080{SEARCH_BY_NAME}{marker}", user, password])
    out = replicas.compose(
        "run", "--rm", "--no-deps", "-T", "--entrypoint", "python", "trainer", "-c", PROBE, args, timeout=300
    ).stdout
    result = last_json(out)
    try:
        # MLFLOW_AUTH_MAX_FAILURES=10 wrong passwords, whichever replicas
        # answered them, lock the address out on all of them.
        assert result["wrong"] == [401] * 10 + [429, 429]
        assert result["right"] == [429] * 30  # even the right password, on every replica
        refused = answered(replicas, marker, 401)
        locked = answered(replicas, marker, 429)
        assert sum(refused.values()) == 10 and sum(1 for n in refused.values() if n) >= 2, refused
        # 32 requests at random over three replicas: each locked-out answer
        # came from every replica (one missing: about once in 50,000 runs).
        assert sum(locked.values()) == 32 and all(locked.values()), locked
    finally:
        unlocked = replicas.script("users", "unlock", result["address"], timeout=300)
    assert "forgotten" in unlocked.stdout, unlocked.stdout + unlocked.stderr


REVOKE_ON_ONE_REPLICA = """
import json, sys, requests
admin, password, body = json.loads(sys.argv[1])
r = requests.post("http://127.0.0.1:5000/api/3.0/mlflow/users/permissions/revoke",
                  json=body, auth=(admin, password), headers={"Host": "127.0.0.1"}, timeout=30)
print(json.dumps({"status": r.status_code, "text": r.text}))
"""


def test_a_permission_change_on_one_replica_is_enforced_by_all(replicas: Stack, admin: tuple[str, str]) -> None:
    user, password = new_user(replicas, admin)
    exp = requests.post(
        f"{replicas.url}/api/2.0/mlflow/experiments/create", json={"name": unique("perm")}, auth=admin, timeout=30
    )
    exp_id = exp.json()["experiment_id"]
    run = requests.post(
        f"{replicas.url}/api/2.0/mlflow/runs/create", json={"experiment_id": exp_id}, auth=admin, timeout=30
    )
    run_id = run.json()["run"]["info"]["run_id"]
    grant = {"username": user, "resource_type": "experiment", "resource_id": exp_id}
    r = requests.post(
        f"{replicas.url}/api/3.0/mlflow/users/permissions/grant",
        json={**grant, "permission": "EDIT"},
        auth=admin,
        timeout=30,
    )
    assert r.status_code == 200, r.text

    def write(step: int) -> int:  # a new connection each time: a replica at random
        body = {"run_id": run_id, "key": "loss", "value": 0.5, "timestamp": int(time.time() * 1000), "step": step}
        return requests.post(replicas.url + LOG_METRIC, json=body, auth=(user, password), timeout=30).status_code

    # Every replica has cached the grant (and the run's experiment).
    assert [write(step) for step in range(30)] == [200] * 30
    before = answered(replicas, "POST /api/2.0/mlflow/runs/log-metric", 403)

    # The revocation goes to the first replica only, on its own address.
    body = json.dumps(["admin", admin[1], grant])
    out = replicas.compose(
        "exec", "-T", "--index", "1", "mlflow-server", "python", "-c", REVOKE_ON_ONE_REPLICA, body, timeout=120
    ).stdout
    assert last_json(out)["status"] == 200, out
    time.sleep(SETTLE)

    assert [write(step) for step in range(100, 160)] == [403] * 60
    after = answered(replicas, "POST /api/2.0/mlflow/runs/log-metric", 403)
    refused_by = {name: after[name] - before.get(name, 0) for name in after}
    assert sum(refused_by.values()) == 60 and all(refused_by.values()), refused_by
    # The store's side: only the 30 writes made before the revocation.
    points = requests.get(
        f"{replicas.url}/api/2.0/mlflow/metrics/get-history",
        params={"run_id": run_id, "metric_key": "loss"},
        auth=admin,
        timeout=30,
    ).json()["metrics"]
    assert sorted(int(p.get("step", 0)) for p in points) == list(range(30))


def test_gc_purges_through_any_replica(replicas: Stack, admin: tuple[str, str]) -> None:
    exp = requests.post(
        f"{replicas.url}/api/2.0/mlflow/experiments/create", json={"name": unique("gc")}, auth=admin, timeout=30
    )
    exp_id = exp.json()["experiment_id"]
    run_ids = []
    for _ in range(3):
        r = requests.post(
            f"{replicas.url}/api/2.0/mlflow/runs/create", json={"experiment_id": exp_id}, auth=admin, timeout=30
        )
        run_ids.append(r.json()["run"]["info"]["run_id"])
    for run_id in run_ids:
        r = requests.post(f"{replicas.url}/api/2.0/mlflow/runs/delete", json={"run_id": run_id}, auth=admin, timeout=30)
        assert r.status_code == 200, r.text
    proc = replicas.compose(
        "exec", "-T", "gc", "/opt/stack/entrypoint.sh", "gc", "--once", "--older-than", "0s", check=False, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for run_id in run_ids:
        r = requests.get(f"{replicas.url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, auth=admin, timeout=30)
        assert r.status_code == 404, r.text


def test_logging_under_load_survives_a_replica_killed_with_sigkill(
    replicas: Stack, admin: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin[1])
    client = MlflowClient(replicas.url)
    exp_id = client.create_experiment(unique("kill"))
    run_id = client.create_run(exp_id).info.run_id

    writers, batch = 6, 10
    acknowledged: dict[str, list[int]] = {f"w{i}": [] for i in range(writers)}
    acked_at: list[float] = []
    errors: list[str] = []
    stop = threading.Event()

    def writer(key: str) -> None:
        own = MlflowClient(replicas.url)
        step = 0
        while not stop.is_set():
            steps = list(range(step, step + batch))
            metrics = [Metric(key, float(s), 1_700_000_000_000 + s, s) for s in steps]
            try:
                own.log_batch(run_id, metrics=metrics)
            except Exception as e:  # noqa: BLE001 (any client error fails the test below)
                errors.append(f"{key} steps {steps[0]}-{steps[-1]}: {e!r}"[:300])
            else:
                acknowledged[key] += steps
                acked_at.append(time.monotonic())
            step += batch

    threads = [threading.Thread(target=writer, args=(key,)) for key in acknowledged]
    for t in threads:
        t.start()
    try:
        time.sleep(4)
        victim = list(replicas.replicas())[1]
        subprocess.run(["docker", "kill", "-s", "KILL", victim], check=True, capture_output=True)
        killed = time.monotonic()
        time.sleep(12)
    finally:
        stop.set()
        for t in threads:
            t.join(300)

    # Every 502 of the killed replica absorbed by the client's retries, and no
    # half answer (headers without their body, which the client cannot retry):
    # the server writes an answer's headers and body back to back (answers.py).
    assert errors == [], errors[:5]
    assert any(at > killed + 6 for at in acked_at), "no batch was acknowledged after the kill"
    total = 0
    for key, steps in acknowledged.items():
        history = client.get_metric_history(run_id, key)
        stored = sorted(m.step for m in history)
        assert stored == sorted(steps), f"{key}: {len(stored)} stored, {len(steps)} acknowledged"
        assert all(m.value == float(m.step) for m in history)
        total += len(stored)
    assert total >= writers * batch * 10, total  # load, not a trickle
    after = sum(1 for at in acked_at if at > killed)
    print(f"\n{total} points in {len(acked_at)} acknowledged batches, {after} of them after the SIGKILL")

    # Back to three: Docker's restart policy, or compose if it does not apply to a kill.
    replicas.compose("up", "--detach", "--wait", "--wait-timeout", "300", "nginx", timeout=600)
    assert len(replicas.replicas()) == REPLICAS
