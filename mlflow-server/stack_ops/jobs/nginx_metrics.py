"""nginx's own request metrics for Prometheus: compose.monitoring.yaml's
`nginx-exporter` service.

nginx's stub_status (nginx/status.conf, an internal listener only the
monitoring overlay mounts) counts connections and requests in a few lines of
text. This serves them on :9113/metrics in Prometheus's text format, under the
names NGINX's own exporter (nginx/nginx-prometheus-exporter) gives them, so
its dashboards and alerts work unchanged:

    nginx_up                       1 when stub_status answered this scrape, else 0
    nginx_http_requests_total      requests nginx has answered (counter)
    nginx_connections_accepted     client connections accepted (counter)
    nginx_connections_handled      client connections handled (counter)
    nginx_connections_active       open client connections, idle ones included
    nginx_connections_reading      ... reading a request header
    nginx_connections_writing      ... writing an answer
    nginx_connections_waiting      ... idle (keep-alive)

stub_status is read at each scrape, never cached: a scrape shows nginx as it
is. When nginx does not answer, the scrape still succeeds with `nginx_up 0`
only, the signal to alert on.

Why not that exporter's image: it is built FROM scratch, with nothing a
health check could run, and every long-running service of the stack has one.
This is the server image (already built) and the standard library only.

    nginx_metrics            serve until stopped (NGINX_STATUS_URL, NGINX_EXPORTER_PORT)
    nginx_metrics --health   exit 0 when this exporter answers (the health check)
"""

from __future__ import annotations

import re
import signal
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, wait
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from stack_ops.common import StackError, die, env, log

JOB = "nginx-metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATUS = re.compile(
    r"Active connections:\s*(?P<active>\d+)\s+"
    r"server accepts handled requests\s+(?P<accepted>\d+)\s+(?P<handled>\d+)\s+(?P<requests>\d+)\s+"
    r"Reading:\s*(?P<reading>\d+)\s+Writing:\s*(?P<writing>\d+)\s+Waiting:\s*(?P<waiting>\d+)"
)
# stub_status field -> (metric, type, help): the names and help texts of
# nginx/nginx-prometheus-exporter.
METRICS = {
    "accepted": ("nginx_connections_accepted", "counter", "Accepted client connections"),
    "active": ("nginx_connections_active", "gauge", "Active client connections"),
    "handled": ("nginx_connections_handled", "counter", "Handled client connections"),
    "reading": ("nginx_connections_reading", "gauge", "Connections where NGINX is reading the request header"),
    "waiting": ("nginx_connections_waiting", "gauge", "Idle client connections"),
    "writing": (
        "nginx_connections_writing",
        "gauge",
        "Connections where NGINX is writing the response back to the client",
    ),
    "requests": ("nginx_http_requests_total", "counter", "Total http requests"),
}


def parse(text: str) -> dict[str, int]:
    """stub_status's page as numbers; a ValueError when it is not that page."""
    match = STATUS.search(text)
    if not match:
        raise ValueError(f"not an nginx stub_status page: {text[:120]!r}")
    return {name: int(value) for name, value in match.groupdict().items()}


def render(status: dict[str, int] | None) -> str:
    """Prometheus's text format: every metric when nginx answered (status), else nginx_up 0 only."""
    lines = ["# HELP nginx_up Status of the last metric scrape", "# TYPE nginx_up gauge"]
    lines.append(f"nginx_up {0 if status is None else 1}")
    for field, (name, kind, help_text) in ({} if status is None else METRICS).items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {status[field]}"]
    return "\n".join(lines) + "\n"


# urlopen's timeout does not bound the name lookup: on an internal Docker
# network a name that is gone (nginx stopped) takes Docker's DNS 10 s to fail,
# as long as Prometheus waits for a whole scrape. So the read runs in a worker
# thread and is waited for `timeout` seconds at most, lookup included.
_READER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="stub-status")


def _read(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (the operator's setting)
        return r.read(4096).decode("utf-8", errors="replace")


def fetch(url: str, timeout: float = 3.0) -> dict[str, int] | None:
    """nginx's numbers now, or None (logged) when it does not answer with them within `timeout` s."""
    future = _READER.submit(_read, url, timeout)
    if not wait([future], timeout=timeout).done:
        log(JOB, f"stub_status at {url} did not answer within {timeout:g} s")
        return None
    try:
        return parse(future.result())
    except (OSError, ValueError) as e:  # URLError, refused connections and timeouts are OSErrors
        log(JOB, f"stub_status at {url} did not answer: {e}")
        return None


def handler(status_url: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "nginx-metrics"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/metrics":
                self._answer(200, render(fetch(status_url)), CONTENT_TYPE)
            elif self.path == "/health":
                self._answer(200, "ok\n", "text/plain; charset=utf-8")
            else:
                self._answer(404, "not found: /metrics, /health\n", "text/plain; charset=utf-8")

        def _answer(self, code: int, body: str, content_type: str) -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:  # noqa: A002
            pass  # one line per scrape would be noise; failures are logged by fetch()

    return Handler


def settings() -> tuple[str, int]:
    url = env("NGINX_STATUS_URL", "http://nginx:8081/stub_status")
    if not url.startswith(("http://", "https://")):
        raise StackError(f"NGINX_STATUS_URL={url} is not an http(s) URL")
    port = env("NGINX_EXPORTER_PORT", "9113")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise StackError(f"NGINX_EXPORTER_PORT={port} is not a port number")
    return url, int(port)


def health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as r:  # noqa: S310
            return 0 if r.status == 200 else 1
    except OSError as e:
        print(f"[{JOB}] not answering on :{port}: {e}", file=sys.stderr)
        return 1


def main(argv: list[str]) -> int:
    try:
        url, port = settings()
    except StackError as e:
        return die(JOB, str(e))
    if argv == ["--health"]:
        return health(port)
    if argv:
        return die(JOB, "usage: nginx_metrics [--health]")
    # As PID 1 the interpreter ignores SIGTERM unless asked (see gc.py).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("0.0.0.0", port), handler(url))  # noqa: S104 (the monitoring network only)
    log(JOB, f"serving nginx's stub_status ({url}) as Prometheus metrics on :{port}/metrics")
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
