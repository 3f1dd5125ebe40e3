"""The server caches who a user is and what they may do (passwords, accounts,
grants, each run's experiment) in every worker. A change to any of them, by
the API or straight in the database, reaches every worker within a second:
revoked access stops, a granted one starts, an old password is refused."""

from __future__ import annotations

import threading
import time

import requests

from stack import Stack, unique

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=5"
LOG_METRIC = "/api/2.0/mlflow/runs/log-metric"
SETTLE = 1.0  # seconds a change may take to reach every worker
# Enough requests that each of the server's workers (2 to 4) is likely to answer
# several, and fewer refused sign-ins than lock an address out (10).
PROBES = 8


def create_user(stack: Stack, http: requests.Session) -> tuple[str, str]:
    name, password = unique("cache"), "P" + unique("w").replace("-", "") * 3
    r = http.post(f"{stack.url}/api/2.0/mlflow/users/create", json={"username": name, "password": password}, timeout=30)
    assert r.status_code == 200, r.text
    return name, password


def change_grant(stack: Stack, http: requests.Session, verb: str, user: str, experiment_id: str) -> None:
    body = {"username": user, "resource_type": "experiment", "resource_id": experiment_id}
    if verb == "grant":
        body["permission"] = "EDIT"
    r = http.post(f"{stack.url}/api/3.0/mlflow/users/permissions/{verb}", json=body, timeout=30)
    assert r.status_code == 200, r.text


def admin_run(stack: Stack, http: requests.Session) -> tuple[str, str]:
    """An experiment and a run the admin owns: a teammate's access is the grant alone."""
    exp = http.post(f"{stack.url}/api/2.0/mlflow/experiments/create", json={"name": unique("cache")}, timeout=30)
    exp_id = exp.json()["experiment_id"]
    run = http.post(f"{stack.url}/api/2.0/mlflow/runs/create", json={"experiment_id": exp_id}, timeout=30)
    return exp_id, run.json()["run"]["info"]["run_id"]


def log_metric(stack: Stack, session: requests.Session, run_id: str, step: int, auth=None) -> int:
    body = {"run_id": run_id, "key": "loss", "value": 0.5, "timestamp": int(time.time() * 1000), "step": step}
    return session.post(stack.url + LOG_METRIC, json=body, auth=auth, timeout=30).status_code


def statuses(stack: Stack, creds: tuple[str, str]) -> list[int]:
    return stack.sign_in_codes(creds[0], creds[1], PROBES)


def test_a_revoked_grant_stops_writes_on_every_worker_under_load(stack: Stack, http: requests.Session) -> None:
    user, password = create_user(stack, http)
    exp_id, run_id = admin_run(stack, http)
    change_grant(stack, http, "grant", user, exp_id)

    answers: list[tuple[float, int]] = []  # (when the request started, status)
    stop = threading.Event()

    def writer(worker: int) -> None:
        session = requests.Session()
        session.auth = (user, password)
        step = worker * 100_000
        while not stop.is_set():
            started = time.monotonic()
            status = log_metric(stack, session, run_id, step)
            answers.append((started, status))
            step += 1

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)  # every worker has cached the grant and the run's experiment
        change_grant(stack, http, "revoke", user, exp_id)
        revoked = time.monotonic()
        time.sleep(SETTLE + 2)
    finally:
        stop.set()
        for t in threads:
            t.join(60)

    before = [s for started, s in answers if started < revoked - 0.5]
    after = [s for started, s in answers if started > revoked + SETTLE]
    assert before and set(before) == {200}, sorted(set(before))
    assert len(after) >= 8 and set(after) == {403}, sorted(set(after))
    assert all(s in (200, 403) for _, s in answers)  # never a 5xx while the caches change
    # What was written before the revoke is all there, nothing after it.
    history = http.get(
        f"{stack.url}/api/2.0/mlflow/metrics/get-history",
        params={"run_id": run_id, "metric_key": "loss", "max_results": 100000},
        timeout=60,
    ).json()["metrics"]
    assert len(history) == sum(1 for _, s in answers if s == 200)


def test_a_new_grant_works_at_once_after_a_refusal(stack: Stack, http: requests.Session) -> None:
    user, password = create_user(stack, http)
    exp_id, run_id = admin_run(stack, http)

    def writes() -> set[int]:  # a new connection each, so they spread over the workers
        return {log_metric(stack, requests.Session(), run_id, step, (user, password)) for step in range(PROBES)}

    assert writes() == {403}  # refused on every worker first (each caches "no grant")
    change_grant(stack, http, "grant", user, exp_id)
    time.sleep(SETTLE)
    assert writes() == {200}


def test_a_changed_password_is_refused_on_every_worker(stack: Stack, http: requests.Session) -> None:
    user, old = create_user(stack, http)
    assert set(statuses(stack, (user, old))) == {200}  # cached on every worker
    new = old[::-1] + "x"
    r = http.patch(
        f"{stack.url}/api/2.0/mlflow/users/update-password", json={"username": user, "password": new}, timeout=30
    )
    assert r.status_code == 200, r.text
    time.sleep(SETTLE)
    assert set(statuses(stack, (user, old))) == {401}
    assert set(statuses(stack, (user, new))) == {200}


def test_a_deleted_account_is_refused_on_every_worker(stack: Stack, http: requests.Session) -> None:
    user, password = create_user(stack, http)
    assert set(statuses(stack, (user, password))) == {200}
    r = http.delete(f"{stack.url}/api/2.0/mlflow/users/delete", json={"username": user}, timeout=30)
    assert r.status_code == 200, r.text
    time.sleep(SETTLE)
    assert set(statuses(stack, (user, password))) == {401}


def test_a_password_reset_in_the_database_is_seen_by_every_worker(stack: Stack, http: requests.Session) -> None:
    """scripts/users writes the auth database directly, not through the server."""
    user, old = create_user(stack, http)
    assert set(statuses(stack, (user, old))) == {200}
    proc = stack.script("users", "reset-password", user, timeout=300)
    new = proc.stdout.strip().splitlines()[-1]
    time.sleep(SETTLE)
    assert set(statuses(stack, (user, old))) == {401}
    assert set(statuses(stack, (user, new))) == {200}
