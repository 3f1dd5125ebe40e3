"""The stack is up, healthy, and shows only its front door."""

from __future__ import annotations

import subprocess

import requests

from stack import LONG_RUNNING, ONE_SHOT, Stack


def test_every_service_healthy_and_jobs_succeeded(stack: Stack) -> None:
    by_service = {c["Service"]: c for c in stack.containers()}
    for name in (*LONG_RUNNING, stack.s3_service):
        assert name in by_service, f"{name} is not running"
        assert by_service[name]["State"] == "running", by_service[name]
        assert by_service[name]["Health"] == "healthy", by_service[name]
    for name in ONE_SHOT:
        assert by_service[name]["State"] == "exited", by_service[name]
        assert by_service[name]["ExitCode"] == 0, by_service[name]


def test_only_nginx_publishes_a_port(stack: Stack) -> None:
    published = {
        c["Service"]: [p for p in (c.get("Publishers") or []) if p.get("PublishedPort")] for c in stack.containers()
    }
    assert [s for s, ports in published.items() if ports] == ["nginx"]
    assert {p["TargetPort"] for p in published["nginx"]} == {8080}


def test_health_through_nginx(stack: Stack) -> None:
    r = requests.get(f"{stack.url}/health", timeout=10)
    assert r.status_code == 200
    assert r.text.strip() == "OK"


def test_version_is_pinned(stack: Stack, http: requests.Session) -> None:
    r = http.get(f"{stack.url}/version", timeout=10)
    assert r.status_code == 200
    assert r.text.strip() == "3.17.2"


def test_stores_are_reachable_only_where_they_must_be(stack: Stack) -> None:
    # nginx is on frontend and storage: it reaches the S3 store (artifact
    # bytes MLflow has authorized), never PostgreSQL. Anything else that
    # comes in on the frontend network (the trainer's network) reaches neither.
    assert stack.compose("exec", "-T", "nginx", "getent", "hosts", "postgres", check=False).returncode != 0
    assert stack.compose("exec", "-T", "nginx", "getent", "hosts", "s3", check=False).returncode == 0
    image = stack.compose("config", "--images").stdout.split()
    server_image = next(i for i in image if "mlflow-server" in i)
    for host in ("s3", "postgres"):
        proc = subprocess.run(
            ["docker", "run", "--rm", "--network", f"{stack.project}_frontend", "--entrypoint", "getent"]
            + [server_image, "hosts", host],
            capture_output=True,
            text=True,
        )
        assert proc.returncode != 0, f"a container on the frontend network resolves {host}: {proc.stdout}"
