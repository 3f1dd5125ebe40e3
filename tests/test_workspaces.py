"""MLflow's workspaces through the stack (MLFLOW_ENABLE_WORKSPACES=true), on
one sibling stack: two teams on one server, each blind to the other's
experiments, runs and artifacts; memberships granted and revoked with
`scripts/users`, enforced at once; the `default` workspace keeping what was
there before; gc sweeping every workspace; bad workspace names refused.

Teammates reach a workspace the way MLflow's client does: `MLFLOW_WORKSPACE`
in the environment, which the client sends as the `X-MLFLOW-WORKSPACE` header.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from stack import Stack, new_account, unique, wait_for

HEADER = "X-MLFLOW-WORKSPACE"


@pytest.fixture(scope="module")
def ws(stack: Stack) -> Iterator[Stack]:
    """A sibling with workspaces on (one worker, no job runner: it only has
    to answer these tests)."""
    sibling = stack.sibling(
        "mlflowworkspaces",
        MLFLOW_ENABLE_WORKSPACES="true",
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        MLFLOW_WORKERS="1",
    )
    with sibling.session("nginx", "gc", timeout=600) as s:
        yield s


@pytest.fixture(scope="module")
def admin_http(ws: Stack) -> requests.Session:
    session = requests.Session()
    session.auth = ("admin", ws.secret("mlflow_admin_password"))
    return session


def users(s: Stack, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The operator's command, exactly as documented: scripts/users ..."""
    return s.script("users", *args, check=check, timeout=300)


def create_workspace(s: Stack, admin_http: requests.Session, prefix: str) -> str:
    name = unique(prefix)
    r = admin_http.post(f"{s.url}/api/3.0/mlflow/workspaces", json={"name": name}, timeout=30)
    assert r.status_code == 201, r.text
    return name


def as_member(s: Stack, account: tuple[str, str], workspace: str | None) -> requests.Session:
    session = requests.Session()
    session.auth = account
    if workspace:
        session.headers[HEADER] = workspace
    return session


@pytest.fixture(scope="module")
def teams(ws: Stack, admin_http: requests.Session) -> dict:
    """Two workspaces, one member each (granted with scripts/users)."""
    out = {}
    for team in ("team-a", "team-b"):
        workspace = create_workspace(ws, admin_http, team)
        account = new_account(ws.url, admin_http, f"{team}-member")
        users(ws, "workspace-grant", account[0], workspace, "USE")
        out[team] = {"workspace": workspace, "account": account}
    return out


@pytest.fixture()
def client_in(monkeypatch: pytest.MonkeyPatch, ws: Stack):
    """An MLflow client signed in as `account`, in `workspace` (MLFLOW_WORKSPACE)."""

    def make(account: tuple[str, str], workspace: str) -> MlflowClient:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", account[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", account[1])
        monkeypatch.setenv("MLFLOW_WORKSPACE", workspace)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        return MlflowClient(ws.url)

    return make


def test_two_workspaces_cannot_see_each_other(ws: Stack, teams: dict, client_in, tmp_path: Path) -> None:
    a, b = teams["team-a"], teams["team-b"]
    name = unique("churn")  # the same experiment name in both workspaces

    # Team A logs a run with a metric and an artifact, with MLflow's client.
    client = client_in(a["account"], a["workspace"])
    exp_a = client.create_experiment(name)
    run = client.create_run(exp_a)
    client.log_metric(run.info.run_id, "auc", 0.91)
    payload = os.urandom(256 * 1024)
    (tmp_path / "model.bin").write_bytes(payload)
    client.log_artifact(run.info.run_id, str(tmp_path / "model.bin"))
    client.set_terminated(run.info.run_id)
    # Its bytes are under the workspace's own prefix of the bucket.
    key = f"workspaces/{a['workspace']}/{exp_a}/{run.info.run_id}/artifacts/model.bin"
    objects = ws.bucket_objects(f"workspaces/{a['workspace']}/")["objects"]
    assert objects.get(key, {}).get("sha256") == hashlib.sha256(payload).hexdigest(), objects

    # Team B's experiment of the same name is its own.
    exp_b = client_in(b["account"], b["workspace"]).create_experiment(name)
    assert exp_b != exp_a

    # Team A reads its run back: metric and artifact, checksum for checksum.
    client = client_in(a["account"], a["workspace"])
    assert client.get_run(run.info.run_id).data.metrics == {"auc": 0.91}
    got = Path(client.download_artifacts(run.info.run_id, "model.bin", str(tmp_path / "a")))
    assert hashlib.sha256(got.read_bytes()).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert client.get_experiment_by_name(name).experiment_id == exp_a

    # Team B, in its workspace and in team A's, finds nothing of team A's.
    rid = run.info.run_id
    run_path = f"{a['workspace']}/{exp_a}/{rid}/artifacts/model.bin"
    for workspace in (b["workspace"], a["workspace"]):
        member = as_member(ws, b["account"], workspace)
        listed = member.post(f"{ws.url}/api/2.0/mlflow/experiments/search", json={"max_results": 1000}, timeout=30)
        assert listed.status_code == 200, listed.text
        assert exp_a not in {e["experiment_id"] for e in listed.json().get("experiments", [])}
        # Searching team A's experiment by its id finds nothing (or is refused).
        found = member.post(f"{ws.url}/api/2.0/mlflow/runs/search", json={"experiment_ids": [exp_a]}, timeout=30)
        assert found.status_code in (200, 403, 404), found.text
        assert found.status_code != 200 or not found.json().get("runs"), found.text[:300]
        for method, path, kwargs in (
            ("get", "/api/2.0/mlflow/experiments/get", {"params": {"experiment_id": exp_a}}),
            ("get", "/api/2.0/mlflow/runs/get", {"params": {"run_id": run.info.run_id}}),
            ("get", "/api/2.0/mlflow/metrics/get-history", {"params": {"run_id": rid, "metric_key": "auc"}}),
            ("get", f"/api/2.0/mlflow-artifacts/artifacts/workspaces/{run_path}", {}),
            ("post", "/api/2.0/mlflow/runs/log-metric", {"json": {"run_id": rid, "key": "x", "value": 1}}),
        ):  # fmt: skip
            r = getattr(member, method)(f"{ws.url}{path}", timeout=30, **kwargs)
            assert r.status_code in (403, 404), (workspace, path, r.status_code, r.text[:200])
            assert r.json()["error_code"] in ("PERMISSION_DENIED", "RESOURCE_DOES_NOT_EXIST"), r.text[:200]
            assert payload[:64] not in r.content
    # ... nor can it create anything in team A's workspace.
    r = as_member(ws, b["account"], a["workspace"]).post(
        f"{ws.url}/api/2.0/mlflow/experiments/create", json={"name": unique("intruder")}, timeout=30
    )
    assert r.status_code == 403, r.text
    # Team A's run is as it was.
    assert client.get_run(run.info.run_id).data.metrics == {"auc": 0.91}


def test_a_revoked_membership_is_enforced_at_once(ws: Stack, admin_http: requests.Session) -> None:
    workspace = create_workspace(ws, admin_http, "team-c")
    account = new_account(ws.url, admin_http, "team-c-member")
    member = as_member(ws, account, workspace)
    create = f"{ws.url}/api/2.0/mlflow/experiments/create"
    assert member.post(create, json={"name": unique("before")}, timeout=30).status_code == 403

    users(ws, "workspace-grant", account[0], workspace, "USE")
    r = member.post(create, json={"name": unique("member")}, timeout=30)
    assert r.status_code == 200, r.text
    experiment = r.json()["experiment_id"]

    users(ws, "workspace-revoke", account[0], workspace)
    # The auth caches are emptied by NOTIFY on every worker: no TTL to wait for.
    r = member.post(create, json={"name": unique("after")}, timeout=30)
    assert r.status_code == 403, r.text
    # The creator's own grant on its experiment stays (MLflow's rule), nothing else.
    r = member.get(f"{ws.url}/api/2.0/mlflow/experiments/get", params={"experiment_id": experiment}, timeout=30)
    assert r.status_code == 200, r.text


def test_the_default_workspace_keeps_what_was_there(ws: Stack, admin_http: requests.Session, teams: dict) -> None:
    # The trainer's account may still create experiments where it always did
    # (no header: the `default` workspace); the accounts job granted it USE.
    trainer = as_member(ws, ("trainer", ws.secret("trainer_password")), None)
    r = trainer.post(f"{ws.url}/api/2.0/mlflow/experiments/create", json={"name": unique("sweep")}, timeout=30)
    assert r.status_code == 200, r.text
    experiment = r.json()["experiment_id"]
    # Any teammate keeps MLFLOW_DEFAULT_PERMISSION (READ) there, as before
    # workspaces: reads, but neither writes nor creates.
    reader = as_member(ws, new_account(ws.url, admin_http, "reader"), None)
    r = reader.get(f"{ws.url}/api/2.0/mlflow/experiments/get", params={"experiment_id": experiment}, timeout=30)
    assert r.status_code == 200, r.text
    r = reader.post(f"{ws.url}/api/2.0/mlflow/experiments/create", json={"name": unique("no")}, timeout=30)
    assert r.status_code == 403, r.text
    # A member of team A sees `default`'s experiment too, but team A's
    # workspace lists only team A's.
    member = as_member(ws, teams["team-a"]["account"], teams["team-a"]["workspace"])
    listed = member.post(f"{ws.url}/api/2.0/mlflow/experiments/search", json={"max_results": 1000}, timeout=30)
    assert experiment not in {e["experiment_id"] for e in listed.json().get("experiments", [])}


def test_gc_purges_deleted_runs_in_every_workspace(ws: Stack, teams: dict, client_in, tmp_path: Path) -> None:
    a = teams["team-a"]
    client = client_in(a["account"], a["workspace"])
    experiment = client.create_experiment(unique("gc"))
    run = client.create_run(experiment)
    (tmp_path / "weights.bin").write_bytes(os.urandom(4096))
    client.log_artifact(run.info.run_id, str(tmp_path / "weights.bin"))
    prefix = f"workspaces/{a['workspace']}/{experiment}/{run.info.run_id}/"
    assert ws.bucket_objects(prefix)["objects"], "the artifact never reached the bucket"
    client.delete_run(run.info.run_id)

    out = ws.compose("exec", "-T", "gc", "/opt/stack/entrypoint.sh", "gc", "--once", "--older-than", "0s").stdout
    assert "1 deleted items purged" in out or run.info.run_id in out, out
    wait_for("the run's artifacts removed from the bucket", lambda: not ws.bucket_objects(prefix)["objects"], 60)
    with pytest.raises(Exception, match="RESOURCE_DOES_NOT_EXIST|not found"):
        client.get_run(run.info.run_id)


def test_bad_workspace_names_are_refused(ws: Stack, admin_http: requests.Session, teams: dict) -> None:
    before = admin_http.get(f"{ws.url}/api/3.0/mlflow/workspaces", timeout=30).json()["workspaces"]
    r = admin_http.post(f"{ws.url}/api/3.0/mlflow/workspaces", json={"name": "Bad Name!"}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert admin_http.get(f"{ws.url}/api/3.0/mlflow/workspaces", timeout=30).json()["workspaces"] == before

    member = teams["team-a"]["account"]
    for header, code in (("no-such-workspace", 404), ("Bad Name!", 400)):
        r = as_member(ws, member, header).post(
            f"{ws.url}/api/2.0/mlflow/experiments/create", json={"name": unique("x")}, timeout=30
        )
        assert r.status_code == code, (header, r.status_code, r.text)
        assert "error_code" in r.json(), r.text

    # scripts/users refuses what it can't do, with one line, and changes nothing.
    for args, message in (
        (("workspace-grant", member[0], "no-such-workspace", "USE"), "no workspace"),
        (("workspace-grant", "nobody-here", teams["team-a"]["workspace"], "USE"), "no user"),
        (("workspace-grant", member[0], teams["team-a"]["workspace"], "EDIT"), "is not one of"),
    ):
        proc = users(ws, *args, check=False)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)
