"""Garbage collection: a deleted run past retention is purged, rows and objects; live runs stay."""

from __future__ import annotations

import os
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from stack import Stack, unique


def gc_once(stack: Stack, older_than: str) -> str:
    cmd = ["exec", "-T", "gc", "/opt/stack/entrypoint.sh", "gc", "--once", "--older-than", older_than]
    return stack.compose(*cmd).stdout


def prefix_of(run) -> str:
    return run.info.artifact_uri.removeprefix("mlflow-artifacts:/").strip("/")


@pytest.mark.slow
def test_gc_purges_only_deleted_runs_past_retention(stack: Stack, tracking: None, tmp_path: Path) -> None:
    client = mlflow.MlflowClient()
    exp_id = client.create_experiment(unique("gc"))
    runs = {}
    for name in ("doomed", "kept"):
        run = client.create_run(exp_id, run_name=name)
        client.log_metric(run.info.run_id, "loss", 0.5)
        blob = tmp_path / f"{name}.bin"
        blob.write_bytes(os.urandom(300_000))
        client.log_artifact(run.info.run_id, str(blob))
        client.set_terminated(run.info.run_id)
        runs[name] = client.get_run(run.info.run_id)
    kept_objects = stack.bucket_objects(prefix_of(runs["kept"]))["objects"]
    assert len(kept_objects) == 1
    assert len(stack.bucket_objects(prefix_of(runs["doomed"]))["objects"]) == 1

    client.delete_run(runs["doomed"].info.run_id)
    gc_once(stack, "1h")  # deleted seconds ago: within retention, kept
    assert client.get_run(runs["doomed"].info.run_id).info.lifecycle_stage == "deleted"
    assert len(stack.bucket_objects(prefix_of(runs["doomed"]))["objects"]) == 1

    time.sleep(2)
    out = gc_once(stack, "1s")  # now past retention
    assert runs["doomed"].info.run_id in out
    with pytest.raises(MlflowException, match="(?i)not found|RESOURCE_DOES_NOT_EXIST|No run"):
        client.get_run(runs["doomed"].info.run_id)
    assert stack.bucket_objects(prefix_of(runs["doomed"]))["objects"] == {}

    kept = client.get_run(runs["kept"].info.run_id)
    assert kept.info.lifecycle_stage == "active"
    assert kept.data.metrics == {"loss": 0.5}
    assert stack.bucket_objects(prefix_of(runs["kept"]))["objects"] == kept_objects


def test_gc_refuses_a_bad_retention(stack: Stack) -> None:
    cmd = ["exec", "-T", "gc", "/opt/stack/entrypoint.sh", "gc", "--once", "--older-than", "forever"]
    proc = stack.compose(*cmd, check=False)
    assert proc.returncode == 1
    assert "not like 30d" in proc.stderr
