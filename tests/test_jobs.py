"""MLflow's job runner (on by default, executor engine): a teammate's server-side
evaluation runs end to end through nginx, its results stored where the UI shows
them; what it must refuse, it refuses with a 4xx and creates nothing."""

from __future__ import annotations

import json

import pytest
import requests

from stack import Stack, new_account, unique, wait_for

INVOKE = "/ajax-api/3.0/mlflow/genai/evaluate/invoke"
JOB = "/ajax-api/3.0/jobs/{}"


@pytest.fixture(scope="module")
def traced(stack: Stack, http: requests.Session, tracking, request) -> dict:
    """A teammate's experiment with two traces logged by @mlflow.trace."""
    import mlflow

    user = new_account(stack.url, http, "jobs")
    mp = pytest.MonkeyPatch()
    request.addfinalizer(mp.undo)
    mp.setenv("MLFLOW_TRACKING_USERNAME", user[0])
    mp.setenv("MLFLOW_TRACKING_PASSWORD", user[1])
    exp_id = mlflow.create_experiment(unique("jobs"))
    mlflow.set_experiment(experiment_id=exp_id)
    answers = {"short?": "yes", "long?": "a" * 300}

    @mlflow.trace
    def answer(question: str) -> str:
        return answers[question]

    trace_ids = []
    for question in answers:
        answer(question)
        trace_ids.append(mlflow.get_last_active_trace_id())
    client = mlflow.MlflowClient()
    for tid in trace_ids:
        wait_for(
            f"trace {tid} stored", lambda tid=tid: client.get_trace(tid) if _exists(client, tid) else None, timeout=240
        )
    return {"user": user, "experiment_id": exp_id, "trace_ids": trace_ids}


def _exists(client, trace_id: str) -> bool:
    try:
        client.get_trace(trace_id)
        return True
    except Exception:  # noqa: BLE001 (not there yet)
        return False


def response_length() -> str:
    from mlflow.genai.scorers import ResponseLength

    return json.dumps(ResponseLength(max_length=100).model_dump())  # a built-in scorer that needs no LLM


def test_a_teammate_s_server_side_evaluation_runs_end_to_end(stack: Stack, traced: dict) -> None:
    from mlflow import MlflowClient

    as_user = requests.Session()
    as_user.auth = traced["user"]
    body = {
        "experiment_id": traced["experiment_id"],
        "trace_ids": traced["trace_ids"],
        "serialized_scorers": [response_length()],
    }
    r = as_user.post(stack.url + INVOKE, json=body, timeout=60)
    assert r.status_code == 200, r.text
    job_id, run_id = r.json()["job_id"], r.json()["run_id"]

    def finished():
        job = as_user.get(stack.url + JOB.format(job_id), timeout=30).json()
        return job if job["status"] in ("SUCCEEDED", "FAILED", "TIMEOUT", "CANCELED") else None

    job = wait_for(f"job {job_id}", finished, timeout=240)
    assert job["status"] == "SUCCEEDED", job.get("error_message")
    assert job["result"]["run_id"] == run_id and job["result"]["total_traces"] == 2

    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == traced["experiment_id"]
    # Each trace carries the scorer's verdict: the short answer passes, the long one fails.
    verdicts = {}
    for tid in traced["trace_ids"]:
        found = [a for a in client.get_trace(tid).info.assessments if a.name == "response_length"]
        assert len(found) == 1, tid
        verdicts[tid] = found[0].value
    short, long_ = traced["trace_ids"]
    assert verdicts[short] != verdicts[long_]


def test_what_the_runner_must_refuse_is_a_4xx(stack: Stack, http: requests.Session, traced: dict) -> None:
    owner = requests.Session()
    owner.auth = traced["user"]
    other = requests.Session()
    other.auth = new_account(stack.url, http, "jobs")  # READ on everything (the default), no more
    runs_before = _runs(http, stack, traced["experiment_id"])

    # A reader may not start an evaluation (it writes a run).
    body = {"experiment_id": traced["experiment_id"], "trace_ids": traced["trace_ids"][:1]}
    r = other.post(stack.url + INVOKE, json={**body, "serialized_scorers": [response_length()]}, timeout=60)
    assert r.status_code == 403, r.text
    # Code the server would have to run (a @scorer function) is refused: MLflow blocks it by default.
    decorator = json.dumps({"name": "mine", "call_source": "return True", "call_signature": "(outputs)"})
    for bad in (
        {**body, "serialized_scorers": [decorator]},
        {**body, "serialized_scorers": []},
        {**body, "trace_ids": [], "serialized_scorers": [response_length()]},
        {**body, "serialized_scorers": ["{not json"]},
    ):
        r = owner.post(stack.url + INVOKE, json=bad, timeout=60)
        assert 400 <= r.status_code < 500, (bad, r.status_code, r.text)
        assert "error_code" in r.json()
    assert _runs(http, stack, traced["experiment_id"]) == runs_before  # nothing was created
    r = owner.get(stack.url + JOB.format("no-such-job"), timeout=30)
    assert 400 <= r.status_code < 500, r.text


def _runs(http: requests.Session, stack: Stack, experiment_id: str) -> int:
    r = http.post(
        f"{stack.url}/api/2.0/mlflow/runs/search", json={"experiment_ids": [experiment_id], "max_results": 1000}
    )
    return len(r.json().get("runs", []))
