"""The MLflow UI, in a real browser, through nginx: what a teammate sees.

Headless Debian Chromium (tests/browser.py) signs in with basic auth and opens
the pages people use after a training sweep: the experiments list, the runs
of the trainer's experiment, a run with its params, metrics and ROC figure,
the comparison chart and the registered model with its `champion` alias,
and the traces tab of an experiment with a trace logged by `@mlflow.trace`.
Every page must load without a console error or a failed request.
The UI's bundle comes from nginx's disk (the `ui` job's copy), byte for byte
what MLflow serves, compressed once. Screenshots go to tests/.artifacts/ui/; with MLFLOW_UI_SCREENSHOT_DOCS=1 the
runs view is also written to docs/img/ui-runs.png (scripts/screenshot).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest
import requests
from browser import TIMEOUT_MS, close_assistant, launch, screenshot, visit
from playwright.sync_api import Page, expect, sync_playwright

from stack import Stack, unique

EXPERIMENT = "bank-churn"
MODEL = "bank-churn-classifier"
ROC_FIGURE = "figures/roc_curve.png"


@dataclass
class Sweep:
    experiment_id: str
    runs: list[dict]  # REST API run objects, newest first
    champion_version: str
    versions: list[str]


@pytest.fixture(scope="module")
def sweep(stack: Stack, http: requests.Session) -> Sweep:
    """The trainer's experiment, runs and model, as the REST API reports them."""
    code = stack.wait_exited("trainer", timeout=900)
    assert code == 0, stack.compose("logs", "--no-color", "trainer").stdout
    r = http.get(f"{stack.url}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": EXPERIMENT})
    r.raise_for_status()
    exp_id = r.json()["experiment"]["experiment_id"]
    r = http.post(
        f"{stack.url}/api/2.0/mlflow/runs/search",
        json={"experiment_ids": [exp_id], "order_by": ["start_time DESC"]},
    )
    r.raise_for_status()
    runs = r.json()["runs"]
    assert len(runs) >= 3 and all(r["info"]["status"] == "FINISHED" for r in runs), runs
    r = http.get(f"{stack.url}/api/2.0/mlflow/registered-models/alias", params={"name": MODEL, "alias": "champion"})
    r.raise_for_status()
    r2 = http.get(f"{stack.url}/api/2.0/mlflow/model-versions/search", params={"filter": f"name='{MODEL}'"})
    r2.raise_for_status()
    versions = [mv["version"] for mv in r2.json()["model_versions"]]
    return Sweep(exp_id, runs, r.json()["model_version"]["version"], versions)


expect.set_options(timeout=TIMEOUT_MS)
Check = Callable[[Page], None]
UI = Callable[[Check], None]


@pytest.fixture(scope="module")
def ui(stack: Stack, admin: tuple[str, str]) -> Iterator[UI]:
    """`ui(check)`: run `check` on a fresh page signed in as admin, through
    nginx; fails on any console error or failed request (tests/browser.py)."""
    with sync_playwright() as pw:
        browser = launch(pw)
        yield lambda check: visit(browser, stack.url, admin, check)
        browser.close()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def run_url(sweep: Sweep, run: dict) -> str:
    return f"/#/experiments/{sweep.experiment_id}/runs/{run['info']['run_id']}"


def test_experiments_list_shows_the_trainers_experiment(ui: UI, sweep: Sweep) -> None:
    def check(page: Page) -> None:
        page.goto("/#/experiments")
        # Search, as a user would once other tests' experiments fill the first page.
        search = page.get_by_placeholder("Search experiments")
        search.fill(EXPERIMENT)
        search.press("Enter")
        link = page.get_by_role("link", name=EXPERIMENT, exact=True)
        expect(link).to_be_visible()
        expect(link).to_have_attribute("href", f"#/experiments/{sweep.experiment_id}")
        close_assistant(page)
        screenshot(page, "experiments")

    ui(check)


def test_experiment_view_lists_the_sweep(ui: UI, sweep: Sweep) -> None:
    def check(page: Page) -> None:
        page.goto(f"/#/experiments/{sweep.experiment_id}/runs")
        for run in sweep.runs:
            expect(page.get_by_role("link", name=run["info"]["run_name"], exact=True)).to_be_visible()
        expect(page.get_by_text(f"{len(sweep.runs)} matching runs")).to_be_visible()
        close_assistant(page)
        # scripts/screenshot sets this to refresh the README's picture.
        screenshot(page, "ui-runs", docs=os.environ.get("MLFLOW_UI_SCREENSHOT_DOCS") == "1")

    ui(check)


def test_run_page_shows_params_metrics_and_roc_figure(
    ui: UI, sweep: Sweep, stack: Stack, http: requests.Session
) -> None:
    run = sweep.runs[0]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    metrics = {m["key"]: repr(m["value"]) for m in run["data"]["metrics"]}
    stored = http.get(f"{stack.url}/get-artifact", params={"path": ROC_FIGURE, "run_uuid": run["info"]["run_id"]})
    stored.raise_for_status()

    def check(page: Page) -> None:
        page.goto(run_url(sweep, run))
        expect(page.get_by_text(f"Parameters ({len(params)})", exact=True)).to_be_visible()
        expect(page.get_by_text(f"Metrics ({len(metrics)})", exact=True)).to_be_visible()
        # Both tables are [role=row] of [role=cell]: name, value, ...
        rows = page.eval_on_selector_all(
            "[role=row]",
            "rows => rows.map(r => Array.from(r.querySelectorAll('[role=cell]')).map(c => c.innerText.trim()))",
        )
        shown = {(cells[0], cells[1]) for cells in rows if len(cells) >= 2}
        missing = {kv for kv in [*params.items(), *metrics.items()] if kv not in shown}
        assert not missing, f"not shown on the run page: {sorted(missing)}"
        close_assistant(page)
        screenshot(page, "run")

        # The ROC figure, from the bucket through nginx and the server's proxy.
        wanted = quote(ROC_FIGURE, safe="")
        with page.expect_response(lambda r: "/get-artifact?" in r.url and wanted in r.url) as response:
            page.goto(f"{run_url(sweep, run)}/artifacts/{ROC_FIGURE}")
        assert response.value.status == 200, response.value.status
        img = page.locator(f'img[alt="{ROC_FIGURE}"]')
        expect(img).to_be_visible()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
        shown_size = tuple(img.evaluate("img => [img.naturalWidth, img.naturalHeight]"))
        assert shown_size == png_size(stored.content), "the page shows another image than the stored figure"
        screenshot(page, "run-roc-figure")

    ui(check)


def test_compare_view_charts_the_sweep(ui: UI, sweep: Sweep) -> None:
    ids = [r["info"]["run_id"] for r in sweep.runs]
    runs, experiments = (json.dumps(v, separators=(",", ":")) for v in (ids, [sweep.experiment_id]))
    url = f"/#/compare-runs?runs={runs}&experiments={experiments}"

    def check(page: Page) -> None:
        page.goto(url)
        expect(page.get_by_text(f"Comparing {len(ids)} Runs from 1 Experiment")).to_be_visible()
        plot = page.locator(".js-plotly-plot")
        expect(plot).to_be_visible()
        # Plotly's parallel-coordinates chart: an axis per selected param and
        # metric, one line per run drawn on its WebGL canvas.
        expect(plot.locator(".parcoords")).to_have_count(1)
        expect(plot.locator("text", has_text="auc_roc").first).to_be_visible()
        size = plot.locator("canvas.gl-canvas-focus").evaluate("c => [c.width, c.height]")
        assert size[0] > 0 and size[1] > 0, size
        # Every run is a column of the details table below the chart.
        for run_id in ids:
            expect(page.get_by_role("link", name=run_id, exact=True)).to_be_visible()
        close_assistant(page)
        screenshot(page, "compare")

    ui(check)


def test_registry_shows_the_champion_alias(ui: UI, sweep: Sweep) -> None:
    def check(page: Page) -> None:
        page.goto(f"/#/models/{MODEL}")
        expect(page.get_by_text(MODEL, exact=True).first).to_be_visible()
        for version in sweep.versions:
            link = page.get_by_role("link", name=f"Version {version}", exact=True)
            row = page.get_by_role("row").filter(has=link)
            expect(row).to_have_count(1)
            alias = row.locator('[role=status][title="champion"]')
            expect(alias).to_have_count(1 if version == sweep.champion_version else 0)
        close_assistant(page)
        screenshot(page, "registry")

    ui(check)


@pytest.fixture(scope="module")
def traced(stack: Stack, tracking) -> tuple[str, str, str]:
    """An experiment with one trace of a `@mlflow.trace` function: (experiment id, trace id, its input)."""
    import mlflow

    exp_id = mlflow.create_experiment(unique("ui-traces"))
    mlflow.set_experiment(experiment_id=exp_id)
    question = unique("why-did-they-churn")

    @mlflow.trace(name="answer_question")
    def answer_question(question: str) -> str:
        return question.upper()

    answer_question(question)
    trace_id = mlflow.get_last_active_trace_id()
    mlflow.flush_trace_async_logging()
    assert mlflow.get_trace(trace_id) is not None
    return exp_id, trace_id, question


def test_traces_tab_shows_a_trace(ui: UI, traced: tuple[str, str, str]) -> None:
    exp_id, trace_id, question = traced

    def check(page: Page) -> None:
        page.goto(f"/#/experiments/{exp_id}/traces")
        # The trace's row: its request preview holds the function's input.
        row = page.get_by_text(question).first
        expect(row).to_be_visible()
        # MLflow 3.17 introduces its AI issue detection once, in a modal popover.
        got_it = page.get_by_role("button", name="Got it", exact=True)
        if got_it.count() and got_it.first.is_visible():
            got_it.first.click()
            got_it.first.wait_for(state="hidden")
        close_assistant(page)
        screenshot(page, "traces")
        # Its details: the span tree names the traced function, and the output is shown.
        row.click()
        expect(page.get_by_text("answer_question").first).to_be_visible()
        expect(page.get_by_text(question.upper()).first).to_be_visible()
        screenshot(page, "trace")

    ui(check)


# --- the UI bundle, from nginx's disk -----------------------------------------


def mlflow_bundle_sha256(stack: Stack, rel: str) -> str:
    """sha256 of a bundle file as MLflow itself holds it, in the server's image."""
    code = (
        "import hashlib, importlib.util, pathlib; "
        "root = pathlib.Path(importlib.util.find_spec('mlflow').origin).parent / 'server/js/build'; "
        f"print(hashlib.sha256((root / {rel!r}).read_bytes()).hexdigest())"
    )
    return stack.python_in("mlflow-server", code).strip()


def test_the_ui_bundle_comes_from_nginx_s_disk_as_mlflow_s_bytes_compressed_once(stack: Stack, admin) -> None:
    index = requests.get(f"{stack.url}/", auth=admin, timeout=30)
    assert index.status_code == 200
    main_js = re.search(r"static-files/(static/js/main\.[0-9a-f]+\.js)", index.text)
    assert main_js, index.text[:500]
    rel = main_js.group(1)
    url = f"{stack.url}/static-files/{rel}"
    want = mlflow_bundle_sha256(stack, rel)

    packed = requests.get(url, auth=admin, headers={"Accept-Encoding": "gzip"}, timeout=60, stream=True)
    assert packed.status_code == 200 and packed.headers["Content-Encoding"] == "gzip"
    body = packed.raw.read()
    assert hashlib.sha256(gzip.decompress(body)).hexdigest() == want
    assert packed.headers["Cache-Control"] == "max-age=2419200"  # MLflow's own max-age
    # nginx's ETag for a file: its modification time and size, here the .gz
    # copy's in the mlflow-ui volume. MLflow's own ETag has another shape.
    stat = stack.compose(
        "exec", "-T", "nginx", "stat", "-L", "-c", "%Y %s", f"/srv/mlflow-ui/current/static-files/{rel}.gz"
    ).stdout.split()
    mtime, size = int(stat[0]), int(stat[1])
    assert size == len(body)
    assert packed.headers["ETag"] == f'"{mtime:x}-{size:x}"'

    plain = requests.get(url, auth=admin, headers={"Accept-Encoding": "identity"}, timeout=60)
    assert plain.status_code == 200 and "Content-Encoding" not in plain.headers
    assert hashlib.sha256(plain.content).hexdigest() == want
    assert len(body) * 2 < len(plain.content)

    stranger = requests.get(url, headers={"Accept-Encoding": "gzip"}, timeout=30)
    assert stranger.status_code == 401 and len(stranger.content) < 1000

    # A file the bundle does not hold: MLflow's answer, not nginx's disk.
    missing = requests.get(f"{stack.url}/static-files/static/js/main.0000.js", auth=admin, timeout=30)
    assert missing.status_code == 404
    for path in ("/static-files/../../../../etc/passwd", "/static-files/%2e%2e/%2e%2e/%2e%2e/etc/passwd"):
        r = requests.get(stack.url + path, auth=admin, timeout=30)
        assert "root:" not in r.text, path
