"""The UI workload: time to a usable page in a real browser (Debian's Chromium,
driven by Playwright from the test virtualenv: tests/browser.py).

Two pages, each opened `--repeat` times in a fresh browser context (no cache,
no cookies), the clock running from navigation to a named element visible:

- the experiment page of the seeded experiment (25,000 runs): the newest
  run's link (`seed-0`) in the runs table;
- the history run's "Model metrics" tab (100,000 points of `curve`): the
  chart's plotted line.

Signed in the way a browser is once its user has answered the sign-in
prompt: every request carries the `Authorization` header (`--login header`,
the default). Playwright's own `http_credentials` (`--login prompt`) is not
that: to answer challenges it pauses every request in Chromium's Fetch domain
until Playwright, in another process, lets it go on, and it turns the
browser's cache off for the page (Playwright's crNetworkManager,
`_updateProtocolRequestInterception`), so each of the page's ~30 requests
paid a round trip to Playwright that a user's browser never pays and the
unauthenticated baseline never paid. `--login prompt` is kept to reproduce
that comparison (docs/performance.md).

Prints one JSON line: {"experiment_s": median, "chart_s": median, samples}.
Run by bench/bench.py with .venv-tests/bin/python; host side.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "scripts")]

from browser import CHROMIUM, CHROMIUM_ARGS, VIEWPORT  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

TIMEOUT_MS = 180_000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--user", default="")
    p.add_argument("--password", default="")
    p.add_argument("--experiment-id", required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--login",
        choices=("header", "prompt"),
        default="header",
        help="how the browser signs in: the Authorization header on every request, "
        "or Playwright's http_credentials (request interception, cache off)",
    )
    a = p.parse_args()

    pages = {
        "experiment": (
            f"/#/experiments/{a.experiment_id}/runs",
            lambda page: page.get_by_role("link", name="seed-0", exact=True),
        ),
        "chart": (
            f"/#/experiments/{a.experiment_id}/runs/{a.run_id}/model-metrics",
            lambda page: page.locator(".js-plotly-plot .scatterlayer .trace path").first,
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in pages}
    sign_in: dict = {}
    if a.user and a.login == "header":
        token = base64.b64encode(f"{a.user}:{a.password}".encode()).decode()
        sign_in["extra_http_headers"] = {"Authorization": f"Basic {token}"}
    elif a.user:
        sign_in["http_credentials"] = {"username": a.user, "password": a.password}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for _ in range(a.repeat):
                for name, (path, element) in pages.items():
                    context = browser.new_context(base_url=a.url, viewport=VIEWPORT, **sign_in)
                    try:
                        page = context.new_page()
                        started = time.monotonic()
                        page.goto(path)
                        expect(element(page)).to_be_visible(timeout=TIMEOUT_MS)
                        samples[name].append(round(time.monotonic() - started, 3))
                    finally:
                        context.close()
        finally:
            browser.close()
    result = {f"{name}_s": round(statistics.median(v), 3) for name, v in samples.items()}
    print(json.dumps({**result, "login": a.login if a.user else "none", "samples": samples}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
