"""Teammates who have not upgraded: an MLflow 2.x client and a 3.x client older
than the server, each in its own cached virtualenv (tests/.venvs/), log
params and metrics, upload an artifact (sha256 checked on the way back, and
again by the server's own client), log and register a scikit-learn model, load
it back by its registry URI and predict, through nginx as a non-admin user."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from stack import ROOT, Stack, sha256_file, unique

VENVS = ROOT / "tests" / ".venvs"
# Each client with the scikit-learn and numpy it is run with (exact pins; each
# installs on the suite's Python, 3.11 to 3.13).
CLIENTS = {
    "2.22.5": ["mlflow==2.22.5", "scikit-learn==1.9.1", "numpy==2.4.6", "pandas==2.3.3"],
    "3.4.0": ["mlflow==3.4.0", "scikit-learn==1.9.1", "numpy==2.4.6", "pandas==2.3.3"],
}

CLIENT_SCRIPT = """
import hashlib, json, os, sys, tempfile
import mlflow, numpy as np
from sklearn.linear_model import LogisticRegression

experiment, model_name, payload = sys.argv[1:4]
mlflow.set_experiment(experiment)
X = np.array([[0.0], [1.0], [2.0], [3.0]])
y = np.array([0, 0, 1, 1])
clf = LogisticRegression().fit(X, y)
with mlflow.start_run() as run:
    mlflow.log_params({"C": 1.0, "client": mlflow.__version__})
    for step in range(3):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    mlflow.log_artifact(payload, artifact_path="blobs")
    where = {"name": "model"} if mlflow.__version__.startswith("3.") else {"artifact_path": "model"}
    mlflow.sklearn.log_model(clf, registered_model_name=model_name, input_example=X[:1], **where)
with tempfile.TemporaryDirectory() as tmp:
    local = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="blobs/" + os.path.basename(payload), dst_path=tmp
    )
    with open(local, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
model = mlflow.pyfunc.load_model(f"models:/{model_name}/1")
prediction = [int(v) for v in model.predict(np.array([[0.0], [3.0]]))]
print(json.dumps({"run_id": run.info.run_id, "sha256": sha, "prediction": prediction, "version": mlflow.__version__}))
"""


def client_venv(version: str) -> Path:
    """The virtualenv of one client release: created on first use, reused after."""
    venv = VENVS / f"mlflow-{version}"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    want = " ".join(CLIENTS[version])
    if not stamp.exists() or stamp.read_text().strip() != want:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, *CLIENTS[version]], check=True, timeout=1800)
        stamp.write_text(want + "\n")
    return python


@pytest.fixture(scope="module")
def teammate(stack: Stack, http: requests.Session) -> tuple[str, str]:
    name, password = unique("oldclient"), secrets.token_urlsafe(18)
    r = http.post(f"{stack.url}/api/2.0/mlflow/users/create", json={"username": name, "password": password}, timeout=30)
    assert r.status_code == 200, r.text
    return name, password


@pytest.mark.parametrize("version", sorted(CLIENTS))
def test_an_older_client_logs_uploads_registers_and_loads(
    stack: Stack, http: requests.Session, teammate: tuple[str, str], tmp_path: Path, version: str
) -> None:
    python = client_venv(version)
    payload = tmp_path / f"payload-{version}.bin"
    payload.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    experiment, model_name = unique(f"client-{version}"), unique(f"client-model-{version}")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))},
        "MLFLOW_TRACKING_URI": stack.url,
        "MLFLOW_TRACKING_USERNAME": teammate[0],
        "MLFLOW_TRACKING_PASSWORD": teammate[1],
    }
    proc = subprocess.run(
        [str(python), "-c", CLIENT_SCRIPT, experiment, model_name, str(payload)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["version"] == version
    assert out["sha256"] == sha256_file(payload)  # the old client's round trip
    assert out["prediction"] == [0, 1]

    # What the server stored, as the server's own release reads it.
    run = http.get(f"{stack.url}/api/2.0/mlflow/runs/get", params={"run_id": out["run_id"]}, timeout=30).json()["run"]
    assert run["info"]["user_id"] == teammate[0]
    assert {p["key"]: p["value"] for p in run["data"]["params"]} == {"C": "1.0", "client": version}
    history = http.get(
        f"{stack.url}/api/2.0/mlflow/metrics/get-history",
        params={"run_id": out["run_id"], "metric_key": "loss"},
        timeout=30,
    ).json()["metrics"]
    assert [(m["step"], m["value"]) for m in sorted(history, key=lambda m: m["step"])] == [
        (0, 1.0),
        (1, 0.5),
        (2, pytest.approx(1 / 3)),
    ]
    blob = http.get(
        f"{stack.url}/get-artifact",
        params={"run_uuid": out["run_id"], "path": f"blobs/{payload.name}"},
        timeout=120,
    )
    assert blob.status_code == 200 and hashlib.sha256(blob.content).hexdigest() == sha256_file(payload)
    versions = http.get(
        f"{stack.url}/api/2.0/mlflow/model-versions/search", params={"filter": f"name='{model_name}'"}, timeout=30
    ).json()["model_versions"]
    assert [(v["version"], v["run_id"], v["status"]) for v in versions] == [("1", out["run_id"], "READY")]
