"""server/metrics.py and its start-up pieces: route templates (never raw paths),
per-request counts, latencies and errors, the scrape token on /metrics, the
sum over every worker's files, the wiped directory (serve.py) and the token's
copy for Prometheus (jobs/secrets.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from stack_ops.jobs import secrets as secrets_job
from stack_ops.server import metrics, serve

TOKEN = "unit-scrape-token-" + "t" * 30


def run_asgi(app, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http",
        "server": ("mlflow-server", 5000),
        "client": ("127.0.0.1", 40000),
        "raw_path": path.encode(),
        "method": method,
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    head = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], head, b"".join(m.get("body", b"") for m in sent[1:])


def count(method: str, route: str, status: str) -> float:
    labels = {"method": method, "route": route, "status": status}
    return REGISTRY.get_sample_value("stack_http_requests_total", labels) or 0.0


def errors(method: str, route: str) -> float:
    return REGISTRY.get_sample_value("stack_http_request_errors_total", {"method": method, "route": route}) or 0.0


def observations(method: str, route: str) -> float:
    labels = {"method": method, "route": route}
    return REGISTRY.get_sample_value("stack_http_request_duration_seconds_count", labels) or 0.0


@pytest.fixture(scope="module")
def mlflow_routes():
    """MLflow's real FastAPI app (the FastAPI routers + its Flask app), as the server builds it."""
    from mlflow.server import app as flask_app
    from mlflow.server.fastapi_app import create_fastapi_app

    return create_fastapi_app(flask_app), flask_app


def routed(fastapi_app, flask_app, method: str, path: str) -> tuple[str, int]:
    """Send one request through RequestMetrics around MLflow's app; the template it was counted under."""
    templates = metrics.RouteTemplates(flask_app.url_map, exact=("/metrics",))
    seen: dict[str, str] = {}

    def spy(scope) -> str:
        seen["route"] = templates(scope)
        return seen["route"]

    status, _, _ = run_asgi(metrics.RequestMetrics(fastapi_app, spy), method, path, {"host": "localhost"})
    return seen["route"], status


@pytest.mark.parametrize(
    ("method", "path", "template"),
    [
        # FastAPI-native routes: the ones MLflow's Flask exporter never sees.
        ("POST", "/v1/traces", "/v1/traces"),
        ("GET", "/ajax-api/3.0/jobs/0123abcd", "/ajax-api/3.0/jobs/{job_id}"),
        # Flask routes: the URL rule.
        ("GET", "/api/2.0/mlflow/runs/get", "/api/2.0/mlflow/runs/get"),
        ("GET", "/static-files/static/js/main.0123abcd.js", "/static-files/<path:path>"),
        # No route at all: one shared label.
        ("GET", "/no/such/0123abcd", metrics.UNMATCHED),
    ],
)
def test_requests_are_counted_under_their_route_template(mlflow_routes, method, path, template) -> None:
    fastapi_app, flask_app = mlflow_routes
    route, status = routed(fastapi_app, flask_app, method, path)
    assert route == template
    assert "0123abcd" not in route  # never a raw path segment
    before = count(method, template, str(status))
    routed(fastapi_app, flask_app, method, path)
    assert count(method, template, str(status)) == before + 1


def test_a_fastapi_route_refused_before_routing_keeps_its_template(mlflow_routes) -> None:
    # Once a worker has routed a request to a FastAPI route, a request that
    # never reached the router (e.g. a 401 from the auth middleware) gets the same label.
    fastapi_app, flask_app = mlflow_routes
    templates = metrics.RouteTemplates(flask_app.url_map)
    run_asgi(metrics.RequestMetrics(fastapi_app, templates), "GET", "/ajax-api/3.0/jobs/first", {"host": "localhost"})

    async def refuse(scope, receive, send):
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    before = count("GET", "/ajax-api/3.0/jobs/{job_id}", "401")
    run_asgi(metrics.RequestMetrics(refuse, templates), "GET", "/ajax-api/3.0/jobs/second")
    assert count("GET", "/ajax-api/3.0/jobs/{job_id}", "401") == before + 1


def test_status_latency_and_errors(mlflow_routes) -> None:
    ticks = iter([10.0, 10.25])

    async def broken(scope, receive, send):
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b"down"})

    app = metrics.RequestMetrics(broken, lambda scope: "/unit/broken", clock=lambda: next(ticks))
    before = (count("PATCH", "/unit/broken", "503"), errors("PATCH", "/unit/broken"))
    sum_before = REGISTRY.get_sample_value(
        "stack_http_request_duration_seconds_sum", {"method": "PATCH", "route": "/unit/broken"}
    )
    assert run_asgi(app, "PATCH", "/unit/broken/1")[0] == 503
    assert count("PATCH", "/unit/broken", "503") == before[0] + 1
    assert errors("PATCH", "/unit/broken") == before[1] + 1
    sum_after = REGISTRY.get_sample_value(
        "stack_http_request_duration_seconds_sum", {"method": "PATCH", "route": "/unit/broken"}
    )
    assert sum_after - (sum_before or 0.0) == pytest.approx(0.25)


def test_an_exception_counts_as_a_500_and_still_propagates() -> None:
    async def crash(scope, receive, send):
        raise RuntimeError("boom")

    app = metrics.RequestMetrics(crash, lambda scope: "/unit/crash")
    before = (count("GET", "/unit/crash", "500"), errors("GET", "/unit/crash"), observations("GET", "/unit/crash"))
    with pytest.raises(RuntimeError, match="boom"):
        run_asgi(app, "GET", "/unit/crash")
    after = (count("GET", "/unit/crash", "500"), errors("GET", "/unit/crash"), observations("GET", "/unit/crash"))
    assert after == (before[0] + 1, before[1] + 1, before[2] + 1)


def test_a_request_is_counted_before_its_client_has_the_answer() -> None:
    """The app returns after its last bytes are sent (MLflow's WSGI bridge: a
    thread hop later); a client that reads /metrics right after its answer
    must find it counted."""
    seen_at_last_byte = []

    async def answer(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})
        await asyncio.sleep(0.01)  # the bridge's thread finishing

    async def client_side(message):
        if message["type"] == "http.response.body":
            seen_at_last_byte.append(count("GET", "/unit/early", "200"))

    before = count("GET", "/unit/early", "200")
    app = metrics.RequestMetrics(answer, lambda scope: "/unit/early")
    asyncio.run(app({"type": "http", "method": "GET", "path": "/unit/early"}, None, client_side))
    assert seen_at_last_byte == [before + 1]
    assert count("GET", "/unit/early", "200") == before + 1  # once, not again when the app returns


def test_unknown_methods_share_one_label() -> None:
    assert metrics.method_label("get") == "GET"
    assert metrics.method_label("PROPFIND") == "other"
    assert metrics.method_label("X" * 500) == "other"


@pytest.mark.parametrize(
    ("header", "status", "code"),
    [
        (None, 401, "UNAUTHENTICATED"),
        ("", 401, "UNAUTHENTICATED"),
        ("Basic YWRtaW46c2VjcmV0LXBhc3N3b3Jk", 403, "PERMISSION_DENIED"),  # any password: refused, never checked
        (f"Bearer {TOKEN}x", 403, "PERMISSION_DENIED"),
        (f"Bearer {TOKEN[:-1]}", 403, "PERMISSION_DENIED"),
        (f"Token {TOKEN}", 403, "PERMISSION_DENIED"),
    ],
)
def test_metrics_endpoint_refusals_are_mlflow_json(header, status, code) -> None:
    endpoint = metrics.MetricsEndpoint(TOKEN, render=lambda: b"secret_metric 1\n")
    headers = {} if header is None else {"Authorization": header}
    got, head, body = run_asgi(endpoint, "GET", "/metrics", headers)
    assert got == status
    assert json.loads(body)["error_code"] == code and b"secret_metric" not in body
    assert head["content-type"] == "application/json"
    assert ("www-authenticate" in head) == (status == 401)


def test_metrics_endpoint_without_a_token_refuses_everyone() -> None:
    endpoint = metrics.MetricsEndpoint("", render=lambda: b"secret_metric 1\n")
    assert run_asgi(endpoint, "GET", "/metrics", {"Authorization": "Bearer "})[0] == 403
    assert run_asgi(endpoint, "GET", "/metrics", {"Authorization": "Bearer"})[0] == 403


def test_metrics_endpoint_serves_the_exposition_to_the_token() -> None:
    metrics.REQUESTS.labels("GET", "/unit/served", "200").inc()
    endpoint = metrics.MetricsEndpoint(TOKEN)
    status, head, body = run_asgi(endpoint, "GET", "/metrics", {"Authorization": f"bearer {TOKEN}"})
    assert status == 200 and head["content-type"].startswith("text/plain")
    assert 'stack_http_requests_total{method="GET",route="/unit/served",status="200"}' in body.decode()
    status, _, body = run_asgi(endpoint, "POST", "/metrics", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 405 and "error_code" in json.loads(body)


WORKER = """
import sys
from prometheus_client import Counter
c = Counter("unit_worker_requests", "requests", ["route"])
c.labels("/v1/traces").inc(int(sys.argv[1]))
"""


def test_exposition_sums_every_worker_s_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two worker processes write their own files; /metrics on any worker sums them.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for n in ("3", "4"):
        subprocess.run([sys.executable, "-c", WORKER, n], env=env, check=True)
    assert len(list(tmp_path.glob("counter_*.db"))) == 2
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    text = metrics.exposition().decode()
    assert 'unit_worker_requests_total{route="/v1/traces"} 7.0' in text


def test_reset_metrics_dir_wipes_a_previous_run(tmp_path: Path) -> None:
    directory = tmp_path / "prometheus"
    assert serve.reset_metrics_dir(directory) == 0 and directory.is_dir()
    (directory / "counter_123.db").write_bytes(b"old")
    (directory / "histogram_456.db").write_bytes(b"old")
    assert serve.reset_metrics_dir(directory) == 2
    assert list(directory.iterdir()) == []


@pytest.fixture
def volumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    target, copy = tmp_path / "secrets", tmp_path / "metrics-token"
    target.mkdir()
    monkeypatch.setattr(secrets_job, "TARGET", target)
    monkeypatch.setattr(secrets_job, "SCRAPE_TOKEN_TARGET", copy)
    for spec in secrets_job.SPECS:
        monkeypatch.delenv(spec.env, raising=False)
    return target, copy


def test_the_scrape_token_is_copied_only_where_prometheus_mounts_it(volumes) -> None:
    target, copy = volumes
    assert secrets_job.main() == 0
    assert not copy.exists()  # no monitoring overlay: no copy anywhere
    copy.mkdir()
    assert secrets_job.main() == 0
    token = (target / "metrics_scrape_token").read_text()
    assert [p.name for p in copy.iterdir()] == ["metrics_scrape_token"]
    assert (copy / "metrics_scrape_token").read_text() == token and len(token.strip()) == 48
    assert oct((copy / "metrics_scrape_token").stat().st_mode & 0o777) == "0o440"


def test_an_overridden_scrape_token_reaches_the_copy(volumes, monkeypatch: pytest.MonkeyPatch) -> None:
    target, copy = volumes
    copy.mkdir()
    assert secrets_job.main() == 0
    monkeypatch.setenv("METRICS_SCRAPE_TOKEN", "Zq7-operator-chosen-scrape-token")
    assert secrets_job.main() == 0
    assert (copy / "metrics_scrape_token").read_text().strip() == "Zq7-operator-chosen-scrape-token"
