"""Prometheus metrics: /metrics through nginx answers only the scrape token
(no credentials 401; a teammate, the admin or a wrong token 403, as MLflow's
JSON error), counts every request by route template over all workers, and a
real Prometheus (compose.monitoring.yaml, one sibling stack) scrapes it and
sees a request the test just made; nginx's own counters (stub_status, through
nginx-exporter) reach it too."""

from __future__ import annotations

import json
import os
import re
import secrets
import urllib.parse

import pytest
import requests

from stack import Stack, new_account, wait_for

JOB_ROUTE = "/ajax-api/3.0/jobs/{job_id}"  # a FastAPI route: MLflow's own exporter never sees it
MONITORING_FILE = "compose.monitoring.yaml"


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (Prometheus text format)."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1)))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def job_requests(stack: Stack, auth: tuple[str, str], n: int) -> int:
    """n requests for jobs that don't exist (each id unique); their status, the same every time."""
    codes = {
        requests.get(f"{stack.url}/ajax-api/3.0/jobs/{secrets.token_hex(8)}", auth=auth, timeout=30).status_code
        for _ in range(n)
    }
    assert len(codes) == 1 and 400 <= next(iter(codes)) < 500, codes  # a missing job: 4xx, never 500
    return next(iter(codes))


def test_metrics_need_the_scrape_token(stack: Stack, http: requests.Session, admin: tuple[str, str]) -> None:
    teammate = new_account(stack.url, http, "metrics")
    url = f"{stack.url}/metrics"
    wrong = {"Authorization": f"Bearer {secrets.token_urlsafe(36)}"}
    token_as_password = (admin[0], stack.secret("metrics_scrape_token"))
    cases = {
        "anonymous": (requests.get(url, timeout=30), 401),
        "teammate": (requests.get(url, auth=teammate, timeout=30), 403),
        "admin's password": (requests.get(url, auth=admin, timeout=30), 403),
        "wrong token": (requests.get(url, headers=wrong, timeout=30), 403),
        "token as a password": (requests.get(url, auth=token_as_password, timeout=30), 403),
    }
    for who, (r, status) in cases.items():
        assert r.status_code == status, (who, r.status_code, r.text[:300])
        assert r.headers["content-type"].startswith("application/json"), who
        assert set(r.json()) == {"error_code", "message"}, who
        assert "stack_http_requests" not in r.text and "mlflow_http_request" not in r.text, who


def test_the_token_reads_every_request_by_route_template(stack: Stack, admin: tuple[str, str]) -> None:
    headers = {"Authorization": f"Bearer {stack.secret('metrics_scrape_token')}"}

    def scrape() -> str:
        r = requests.get(f"{stack.url}/metrics", headers=headers, timeout=30)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text[:300]
        return r.text

    before = scrape()
    # Spread over the workers by nginx's keep-alive pool; every worker's count is summed.
    status = job_requests(stack, admin, 12)
    after = scrape()
    labels = {"method": "GET", "route": JOB_ROUTE, "status": str(status)}
    name = "stack_http_requests_total"
    assert sample(after, name, **labels) - sample(before, name, **labels) == 12
    assert sample(after, "stack_http_request_duration_seconds_count", method="GET", route=JOB_ROUTE) >= 12
    # Route templates, never raw paths: no job id (nor any run id) is a label value.
    assert not re.search(r'route="[^"]*[0-9a-f]{16}', after)
    # MLflow's own Flask counters are there too (--expose-prometheus).
    assert sample(after, "mlflow_http_request_total") > 0


@pytest.fixture(scope="module")
def monitored(stack: Stack):
    """The suite's stack if it runs compose.monitoring.yaml already; else one sibling stack with
    it (the server, nginx and Prometheus; no trainer sweep)."""
    if "prometheus" in stack.services():
        yield stack
        return
    files = os.environ.get("COMPOSE_FILE") or stack.env.get("COMPOSE_FILE") or "compose.yaml"
    other = stack.sibling(f"{stack.project}mon", COMPOSE_FILE=f"{files}:{MONITORING_FILE}")
    with other.session("nginx", "prometheus", timeout=600):
        yield other


def prometheus_query(stack: Stack, query: str) -> list[dict]:
    url = "http://127.0.0.1:9090/api/v1/query?" + urllib.parse.urlencode({"query": query})
    out = stack.compose("exec", "-T", "prometheus", "wget", "-qO-", url).stdout
    answer = json.loads(out)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_prometheus_scrapes_the_server_and_sees_a_new_request(monitored: Stack) -> None:
    def up() -> list[dict]:
        return [r for r in prometheus_query(monitored, 'up{job="mlflow-server"}') if r["value"][1] == "1"]

    wait_for("Prometheus scrapes mlflow-server (up == 1)", up, every=3)
    query = f'sum(stack_http_requests_total{{route="{JOB_ROUTE}"}})'

    def value() -> float:
        result = prometheus_query(monitored, query)
        return float(result[0]["value"][1]) if result else 0.0

    # The count right now, from the server itself (Prometheus's last scrape may be older).
    headers = {"Authorization": f"Bearer {monitored.secret('metrics_scrape_token')}"}
    now = requests.get(f"{monitored.url}/metrics", headers=headers, timeout=30)
    assert now.status_code == 200
    before = sample(now.text, "stack_http_requests_total", route=JOB_ROUTE)
    admin = ("admin", monitored.secret("mlflow_admin_password"))
    job_requests(monitored, admin, 5)
    seen = wait_for("Prometheus sees the 5 new requests", lambda: (v := value()) >= before + 5 and v, every=3)
    assert seen == before + 5
    # The scrape used the token: Prometheus itself holds no other secret.
    mounts = monitored.compose("exec", "-T", "prometheus", "ls", "/run/metrics-token").stdout.split()
    assert mounts == ["metrics_scrape_token"]
    assert monitored.compose("exec", "-T", "prometheus", "ls", "/run/secrets", check=False).returncode != 0


def nginx_counters(s: Stack) -> dict[str, float]:
    """nginx-exporter's answer right now, read inside its own container (it
    publishes nothing): metric name -> value."""
    url = "http://127.0.0.1:9113/metrics"
    code = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode())"
    text = s.compose("exec", "-T", "nginx-exporter", "python", "-c", code).stdout
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split()
            values[name] = float(value)
    return values


def test_prometheus_scrapes_nginx_and_counts_new_requests(monitored: Stack) -> None:
    """nginx's own counters (stub_status, through nginx-exporter) reach
    Prometheus: 100 requests sent now are counted, on the connection they came
    on; nginx down reads nginx_up 0; stub_status is not reachable from outside."""

    def up() -> list[dict]:
        return [r for r in prometheus_query(monitored, 'up{job="nginx"}') if r["value"][1] == "1"]

    wait_for("Prometheus scrapes nginx-exporter (up == 1)", up, every=3)
    before = nginx_counters(monitored)
    assert before["nginx_up"] == 1
    with requests.Session() as client:  # one keep-alive connection for all 100
        codes = {client.get(f"{monitored.url}/nginx-health", timeout=30).status_code for _ in range(100)}
    assert codes == {200}
    after = nginx_counters(monitored)
    # Ours, plus the odd health check or scrape that fell in between (one each
    # per 5 s and 15 s) and the exporter's own read of stub_status.
    assert 100 <= after["nginx_http_requests_total"] - before["nginx_http_requests_total"] <= 110, (before, after)
    assert after["nginx_connections_accepted"] - before["nginx_connections_accepted"] <= 10, (before, after)

    def seen() -> float:
        result = prometheus_query(monitored, 'nginx_http_requests_total{job="nginx"}')
        value = float(result[0]["value"][1]) if result else 0.0
        return value >= after["nginx_http_requests_total"] and value

    wait_for("Prometheus sees the 100 new requests", seen, every=3)

    # Not from outside: no published port for it, and the front door has no such page.
    assert monitored.compose("port", "nginx", "8081", check=False).stdout.strip() in ("", ":0")
    outside = requests.get(f"{monitored.url}/stub_status", timeout=30)
    assert "Active connections" not in outside.text and "server accepts" not in outside.text

    # nginx stopped: the scrape still answers, with nginx_up 0 alone (what to alert on).
    monitored.compose("stop", "nginx")
    try:
        assert nginx_counters(monitored) == {"nginx_up": 0.0}
    finally:
        monitored.up("nginx", "prometheus")
    assert nginx_counters(monitored)["nginx_up"] == 1
