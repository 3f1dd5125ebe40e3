"""Basic auth is on: no account, no access; the generated admin works."""

from __future__ import annotations

import secrets

import mlflow
import requests

from stack import Stack, unique

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=5"


def test_no_credentials_is_401(stack: Stack) -> None:
    r = requests.get(stack.url + SEARCH, timeout=10)
    assert r.status_code == 401
    assert "not authenticated" in r.text.lower()
    assert "experiments" not in r.text


def test_wrong_password_is_401(stack: Stack, admin: tuple[str, str]) -> None:
    r = requests.get(stack.url + SEARCH, auth=(admin[0], admin[1] + "x"), timeout=10)
    assert r.status_code == 401
    assert "experiments" not in r.text


def test_unknown_user_is_401(stack: Stack, admin: tuple[str, str]) -> None:
    r = requests.get(stack.url + SEARCH, auth=("nobody-here", admin[1]), timeout=10)
    assert r.status_code == 401


def test_admin_account_works(stack: Stack, http: requests.Session, admin: tuple[str, str]) -> None:
    r = http.get(f"{stack.url}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": "Default"})
    assert r.status_code == 200
    assert r.json()["experiment"]["experiment_id"] == "0"
    me = http.get(f"{stack.url}/api/2.0/mlflow/users/get", params={"username": admin[0]}, timeout=10)
    assert me.status_code == 200
    assert me.json()["user"]["is_admin"] is True


def test_client_with_env_credentials_works(tracking: None) -> None:
    client = mlflow.MlflowClient()
    assert client.get_experiment("0").name == "Default"


def test_generated_admin_password_is_strong(admin: tuple[str, str]) -> None:
    password = admin[1]
    assert len(password) >= 24
    assert password.isalnum()  # generated from letters and digits: URL- and shell-safe


def test_foreign_host_header_is_refused(stack: Stack, http: requests.Session) -> None:
    r = http.get(stack.url + SEARCH, headers={"Host": "evil.example"}, timeout=10)
    assert r.status_code == 403
    assert "Invalid Host header" in r.text


def test_admin_creates_a_teammate_who_can_log_runs(stack: Stack, admin: tuple[str, str], monkeypatch) -> None:
    # The README's recipe for adding a teammate.
    from mlflow.server import get_app_client

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin[1])
    auth = get_app_client("basic-auth", tracking_uri=stack.url)
    username, password = unique("alice"), secrets.token_urlsafe(18)
    auth.create_user(username=username, password=password)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    client = mlflow.MlflowClient()
    exp_id = client.create_experiment(unique("alice-exp"))
    run = client.create_run(exp_id)
    client.log_metric(run.info.run_id, "auc", 0.8)
    assert client.get_run(run.info.run_id).data.metrics == {"auc": 0.8}

    # A teammate is not an admin: managing users is refused.
    r = requests.get(
        f"{stack.url}/api/2.0/mlflow/users/get", params={"username": admin[0]}, auth=(username, password), timeout=10
    )
    assert r.status_code == 403
