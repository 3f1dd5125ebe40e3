"""jobs/nginx_metrics.py: nginx's stub_status as Prometheus metrics, under the
names of NGINX's own exporter; `nginx_up 0` alone when nginx does not answer.
No sockets (the unit tests touch no network): urlopen is replaced, and the
HTTP handler reads and writes in memory. tests/test_metrics.py runs it live."""

from __future__ import annotations

import io
import re
import threading
import time
import urllib.error

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stack_ops.common import StackError
from stack_ops.jobs import nginx_metrics

# What nginx 1.26 answers on a stub_status location (trailing spaces included).
PAGE = (
    "Active connections: 291 \n"
    "server accepts handled requests\n"
    " 16630948 16630947 31070465 \n"
    "Reading: 6 Writing: 179 Waiting: 106 \n"
)
STATUS_URL = "http://nginx:8081/stub_status"


def exposed(text: str) -> dict[str, tuple[str, float]]:
    """name -> (type, value) exactly as the lines name them, once
    prometheus_client's parser (what Prometheus reads) has accepted the text."""
    list(text_string_to_metric_families(text))  # raises on anything Prometheus would refuse
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    return {name: (types[name], float(value)) for name, value in re.findall(r"^([a-z_]+) (\S+)$", text, re.M)}


class Answer:
    """What urlopen returns, as far as fetch() reads it."""

    def __init__(self, body: str, status: int = 200) -> None:
        self.status, self._body = status, body.encode()

    def read(self, limit: int = -1) -> bytes:
        return self._body[:limit] if limit >= 0 else self._body

    def __enter__(self) -> Answer:
        return self

    def __exit__(self, *exc) -> None:
        pass


@pytest.fixture
def nginx(monkeypatch: pytest.MonkeyPatch) -> dict:
    """urlopen answers `state["page"]` for STATUS_URL, or raises `state["error"]`."""
    state: dict = {"page": PAGE, "error": None, "asked": []}

    def urlopen(url: str, timeout: float) -> Answer:
        state["asked"].append((url, timeout))
        if state["error"] is not None:
            raise state["error"]
        return Answer(state["page"])

    monkeypatch.setattr(nginx_metrics.urllib.request, "urlopen", urlopen)
    return state


class Connection:
    """A socket as BaseHTTPRequestHandler uses one: the request in, the answer out."""

    def __init__(self, request: bytes) -> None:
        self._in, self.out = io.BytesIO(request), bytearray()

    def makefile(self, mode: str, *args) -> io.BytesIO:
        return self._in

    def sendall(self, data: bytes) -> None:
        self.out += data


def get(path: str) -> tuple[int, dict[str, str], str]:
    """GET `path` from the exporter's handler, in memory: (status, headers, body)."""
    conn = Connection(f"GET {path} HTTP/1.1\r\nHost: nginx-exporter\r\n\r\n".encode())
    nginx_metrics.handler(STATUS_URL)(conn, ("127.0.0.1", 50000), None)
    head, _, body = bytes(conn.out).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body.decode()


def test_parse_reads_every_number_of_the_page() -> None:
    assert nginx_metrics.parse(PAGE) == {
        "active": 291,
        "accepted": 16630948,
        "handled": 16630947,
        "requests": 31070465,
        "reading": 6,
        "writing": 179,
        "waiting": 106,
    }


@pytest.mark.parametrize("text", ["", "<html>404 Not Found</html>", "Active connections: 1 \n", PAGE[:60]])
def test_anything_else_is_not_a_status_page(text: str) -> None:
    with pytest.raises(ValueError, match="not an nginx stub_status page"):
        nginx_metrics.parse(text)


def test_render_uses_the_official_exporter_names_and_types() -> None:
    assert exposed(nginx_metrics.render(nginx_metrics.parse(PAGE))) == {
        "nginx_up": ("gauge", 1.0),
        "nginx_connections_accepted": ("counter", 16630948.0),
        "nginx_connections_handled": ("counter", 16630947.0),
        "nginx_connections_active": ("gauge", 291.0),
        "nginx_connections_reading": ("gauge", 6.0),
        "nginx_connections_writing": ("gauge", 179.0),
        "nginx_connections_waiting": ("gauge", 106.0),
        "nginx_http_requests_total": ("counter", 31070465.0),
    }


def test_nginx_down_is_nginx_up_0_and_nothing_else() -> None:
    assert exposed(nginx_metrics.render(None)) == {"nginx_up": ("gauge", 0.0)}


def test_metrics_are_what_nginx_answers_at_each_scrape(nginx: dict) -> None:
    status, headers, body = get("/metrics")
    assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert int(headers["Content-Length"]) == len(body.encode())
    assert exposed(body)["nginx_http_requests_total"] == ("counter", 31070465.0)
    nginx["page"] = PAGE.replace("31070465", "31070466")  # one request later: never a cached answer
    assert exposed(get("/metrics")[2])["nginx_http_requests_total"] == ("counter", 31070466.0)
    assert nginx["asked"] == [(STATUS_URL, 3.0), (STATUS_URL, 3.0)]


@pytest.mark.parametrize(
    "error",
    [
        urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")),
        urllib.error.HTTPError(STATUS_URL, 404, "Not Found", {}, io.BytesIO(b"")),
        TimeoutError("timed out"),
    ],
    ids=["refused", "404", "timeout"],
)
def test_nginx_not_answering_is_nginx_up_0(nginx: dict, error: Exception, capsys) -> None:
    nginx["error"] = error
    status, _, body = get("/metrics")
    assert status == 200 and exposed(body) == {"nginx_up": ("gauge", 0.0)}  # the scrape itself succeeds
    assert f"[nginx-metrics] stub_status at {STATUS_URL} did not answer: " in capsys.readouterr().out


def test_a_hanging_lookup_is_cut_short(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Like a name Docker's DNS takes 10 s to give up on: fetch waits `timeout` only."""
    release = threading.Event()
    monkeypatch.setattr(nginx_metrics.urllib.request, "urlopen", lambda url, timeout: release.wait(30))
    started = time.monotonic()
    try:
        assert nginx_metrics.fetch(STATUS_URL, timeout=0.2) is None
    finally:
        release.set()
    assert time.monotonic() - started < 2
    assert f"stub_status at {STATUS_URL} did not answer within 0.2 s" in capsys.readouterr().out


def test_another_page_is_nginx_up_0(nginx: dict) -> None:
    nginx["page"] = "<html><body>Welcome to nginx!</body></html>"
    assert exposed(get("/metrics")[2]) == {"nginx_up": ("gauge", 0.0)}


def test_health_and_nothing_else(nginx: dict) -> None:
    assert get("/health")[0::2] == (200, "ok\n")
    for path in ("/stub_status", "/", "/metrics/extra"):
        assert get(path)[0] == 404
    assert nginx["asked"] == []  # neither reads nginx


def test_health_command_asks_the_exporter(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    asked = []

    def urlopen(url: str, timeout: float) -> Answer:
        asked.append(url)
        if url.endswith(":9113/health"):
            return Answer("ok\n")
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(nginx_metrics.urllib.request, "urlopen", urlopen)
    assert nginx_metrics.health(9113) == 0
    assert nginx_metrics.health(9114) == 1
    assert asked == ["http://127.0.0.1:9113/health", "http://127.0.0.1:9114/health"]
    assert "[nginx-metrics] not answering on :9114" in capsys.readouterr().err


def test_settings_default_to_the_stack_and_refuse_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NGINX_STATUS_URL", raising=False)
    monkeypatch.delenv("NGINX_EXPORTER_PORT", raising=False)
    assert nginx_metrics.settings() == (STATUS_URL, 9113)
    monkeypatch.setenv("NGINX_STATUS_URL", "nginx:8081/stub_status")
    with pytest.raises(StackError, match=r"^NGINX_STATUS_URL=nginx:8081/stub_status is not an http\(s\) URL$"):
        nginx_metrics.settings()
    monkeypatch.setenv("NGINX_STATUS_URL", STATUS_URL)
    for port in ("0", "70000", "http", "-1"):
        monkeypatch.setenv("NGINX_EXPORTER_PORT", port)
        with pytest.raises(StackError, match=f"^NGINX_EXPORTER_PORT={port} is not a port number$"):
            nginx_metrics.settings()


def test_main_refuses_unknown_arguments(capsys) -> None:
    assert nginx_metrics.main(["--once"]) == 1
    assert "usage: nginx_metrics [--health]" in capsys.readouterr().err
